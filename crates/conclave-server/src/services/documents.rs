//! Collaborative documents: creating one, the token that opens it over
//! `/collab/<name>` (the WebSocket itself is `transport::collab`), and its
//! named versions.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use conclave_core::{DocumentId, ErrorCode, UserId};
use conclave_protocol::api::documents::*;
use conclave_storage::{DocumentRecord, VersionRecord};

use crate::api_error::ApiError;
use crate::permissions::{document_access, may_open_document, member_of};
use crate::rpc::{RouteTable, RpcContext};
use crate::state::AppState;
use crate::tokens::{self, DocumentClaims};
use conclave_docs::Access;

pub(crate) fn register(table: &mut RouteTable) {
    table.add(create);
    table.add(token);
    table.add(version_create);
    table.add(version_list);
    table.add(version_get);
    table.add(version_restore);
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

async fn version_create(ctx: RpcContext, req: DocVersionCreate) -> Result<VersionView, ApiError> {
    let caller = ctx.caller()?;
    let (document, _) = openable(&ctx.state, &req.name, caller.user_id).await?;
    let label = req.label.trim();
    if label.is_empty() || label.chars().count() > VERSION_LABEL_MAX_CHARS {
        return Err(ApiError::bad_request(format!(
            "label: 1 to {VERSION_LABEL_MAX_CHARS} characters"
        )));
    }
    save_version(&ctx.state, document.id, label, caller.user_id)
        .await
        .map(version_view)
}

async fn version_list(ctx: RpcContext, req: DocVersionList) -> Result<VersionList, ApiError> {
    let caller = ctx.caller()?;
    let (document, _) = openable(&ctx.state, &req.name, caller.user_id).await?;
    let versions = ctx.state.storage.documents().versions(document.id).await?;
    Ok(VersionList {
        versions: versions.into_iter().map(version_view).collect(),
    })
}

async fn version_get(ctx: RpcContext, req: DocVersionGet) -> Result<VersionContent, ApiError> {
    let caller = ctx.caller()?;
    let (document, _) = openable(&ctx.state, &req.name, caller.user_id).await?;
    let (record, state) = saved(&ctx.state, &document, req.version).await?;
    Ok(VersionContent {
        version: version_view(record),
        state: BASE64.encode(state),
    })
}

async fn version_restore(
    ctx: RpcContext,
    req: DocVersionRestore,
) -> Result<VersionRestored, ApiError> {
    let caller = ctx.caller()?;
    let (document, access) = openable(&ctx.state, &req.name, caller.user_id).await?;
    if access != Access::ReadWrite {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "you may read this document but not edit it, so not restore it",
        ));
    }
    let (_, past) = saved(&ctx.state, &document, req.version).await?;
    // What is there now is kept, so the restore can be undone.
    let saved = save_version(
        &ctx.state,
        document.id,
        &format!("before restoring version {}", req.version),
        caller.user_id,
    )
    .await?;
    let restorer = restorer_client_id()?;
    ctx.state
        .documents
        .apply_server_edit(&*ctx.state.storage, document.id, |current| {
            conclave_docs::history::restore_update(current, &past, restorer)
        })
        .await
        .map_err(|cause| ApiError::new(cause.error, cause.message))?;
    Ok(VersionRestored {
        saved: version_view(saved),
    })
}

/// Saves the document's stored state (every acknowledged edit is stored
/// before anyone sees it) as a new version.
async fn save_version(
    state: &AppState,
    document: DocumentId,
    label: &str,
    user: UserId,
) -> Result<VersionRecord, ApiError> {
    let documents = state.storage.documents();
    if documents.versions(document).await?.len() >= VERSIONS_PER_DOCUMENT_MAX {
        return Err(ApiError::new(
            ErrorCode::LimitExceeded,
            format!("a document keeps at most {VERSIONS_PER_DOCUMENT_MAX} versions"),
        ));
    }
    let stored = documents.load(document).await?;
    let whole = conclave_docs::history::merged_state(
        stored.snapshot.as_deref(),
        stored.updates.iter().map(|(_, update)| update.as_slice()),
    )
    .map_err(|err| {
        tracing::error!(document = %document, error = %err, "a stored document does not load");
        ApiError::new(ErrorCode::Internal, "the stored document is unreadable")
    })?;
    Ok(documents
        .create_version(
            document,
            label,
            user,
            &whole,
            stored.head_seq(),
            crate::unix_ms(),
        )
        .await?)
}

/// A saved version with its state, or `not_found`.
async fn saved(
    state: &AppState,
    document: &DocumentRecord,
    version: u64,
) -> Result<(VersionRecord, Vec<u8>), ApiError> {
    state
        .storage
        .documents()
        .version_state(document.id, version)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("document `{}` has no version {version}", document.name),
            )
        })
}

/// A fresh Yjs client id for the items a restore inserts (1 to 2^53 - 1):
/// random, as an editor picks one per session.
fn restorer_client_id() -> Result<u64, ApiError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|_| ApiError::new(ErrorCode::Internal, "no randomness available"))?;
    Ok(u64::from_le_bytes(bytes) % ((1 << 53) - 1) + 1)
}

/// The document named `name` if the user may open it, and what they may
/// do to it.
async fn openable(
    state: &AppState,
    name: &str,
    user: UserId,
) -> Result<(DocumentRecord, Access), ApiError> {
    check_name(name)?;
    let document = find(state, name).await?;
    let access = document_access(state, &document, user).await?;
    Ok((document, access))
}

fn version_view(record: VersionRecord) -> VersionView {
    VersionView {
        version: record.version,
        label: record.name,
        created_by: record.created_by,
        created_at_ms: record.created_at_ms,
        size_bytes: record.size_bytes,
    }
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
