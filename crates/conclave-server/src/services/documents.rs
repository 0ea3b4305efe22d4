//! Collaborative documents: creating one, and the token that opens it over
//! `/collab/<name>` (the WebSocket itself is `transport::collab`).

use conclave_core::ErrorCode;
use conclave_protocol::api::documents::*;
use conclave_storage::DocumentRecord;

use crate::api_error::ApiError;
use crate::permissions::{may_open_document, member_of};
use crate::rpc::{RouteTable, RpcContext};
use crate::state::AppState;
use crate::tokens::{self, DocumentClaims};

pub(crate) fn register(table: &mut RouteTable) {
    table.add(create);
    table.add(token);
}

async fn create(ctx: RpcContext, req: DocCreate) -> Result<DocumentView, ApiError> {
    let caller = ctx.caller()?;
    check_name(&req.name)?;
    if let Some(channel) = req.channel_id {
        member_of(&ctx.state, channel, caller.user_id).await?;
    }
    let record = ctx
        .state
        .storage
        .documents()
        .create_document(&req.name, caller.user_id, req.channel_id, crate::unix_ms())
        .await?;
    Ok(view(record))
}

async fn token(ctx: RpcContext, req: DocToken) -> Result<DocTokenGrant, ApiError> {
    let caller = ctx.caller()?;
    check_name(&req.name)?;
    let document = find(&ctx.state, &req.name).await?;
    // Everyone who may open a document may write it, for now; the scope
    // lets a client ask for less (a viewer).
    may_open_document(&ctx.state, &document, caller.user_id).await?;
    let ttl_ms = ctx
        .state
        .config
        .documents
        .token_ttl_secs
        .saturating_mul(1000);
    let expires_at_ms = crate::unix_ms().saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
    let token = tokens::issue_document(
        ctx.state.secrets.token_signing_key(),
        &DocumentClaims {
            document_id: document.id,
            user_id: caller.user_id,
            read_only: req.scope == DocScope::ReadOnly,
            expires_at_ms,
        },
    );
    Ok(DocTokenGrant {
        token,
        expires_at_ms,
    })
}

/// The document named `name`, or `not_found`.
pub(crate) async fn find(state: &AppState, name: &str) -> Result<DocumentRecord, ApiError> {
    state
        .storage
        .documents()
        .document_by_name(name)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no document named `{name}`")))
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if is_valid_document_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "name: 1 to {DOCUMENT_NAME_MAX_BYTES} of A-Z a-z 0-9 - _ . ~"
        )))
    }
}

fn view(record: DocumentRecord) -> DocumentView {
    DocumentView {
        document_id: record.id,
        name: record.name,
        owner_id: record.owner_id,
        channel_id: record.channel_id,
        created_at_ms: record.created_at_ms,
    }
}
