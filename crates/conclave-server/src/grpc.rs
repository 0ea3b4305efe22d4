//! The gRPC collaboration service on `server.grpc_port`
//! (`proto/collaboration.proto`, docs/PROTOCOL.md section 14.2): the seed's
//! `collaboration.CollaborationService`, served by tonic, on the same live
//! document rooms as y-websocket and Hocuspocus (`crate::collab`), so the
//! three kinds of client edit together.
//!
//! - `Collaborate` (`stream.rs`): one bidirectional stream per client, any
//!   number of documents on it, each joined as a session
//!   `(document, client_id)` with its own room connection.
//! - `GetDocumentState`: the state vector and whole state, from the live
//!   room when the document is open here, else from storage.
//! - `GetActiveUsers`: the gRPC sessions on the document, on this node
//!   (`sessions.rs`).
//!
//! Every call authenticates with the metadata `authorization: Bearer
//! <token>` (an access token or a document token); a call without a valid
//! one is refused with `UNAUTHENTICATED` before anything else. Whether the
//! token opens a document is checked when the document is named
//! (`authorize_any`), the way `/collab` checks it.

mod sessions;
mod stream;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener as _;
use conclave_core::{DocumentId, ErrorCode, UserId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::collab::CloseCause;
use crate::listener::{CountedStream, CountingListener};
use crate::state::AppState;
use crate::tokens::{self, TokenError};
use crate::transport::collab::authorize_any;
use proto::collaboration_service_server::{CollaborationService, CollaborationServiceServer};
use proto::{
    ClientMessage, DocumentState, ErrorType, GetActiveUsersRequest, GetActiveUsersResponse,
    GetDocumentStateRequest, GetDocumentStateResponse, ServerMessage,
};
use sessions::Sessions;

/// The code generated from `proto/collaboration.proto` (see `build.rs`).
#[allow(clippy::all, clippy::pedantic)]
pub(crate) mod proto {
    include!(concat!(env!("OUT_DIR"), "/collaboration.rs"));
}

/// Concurrent calls (streams) one HTTP/2 connection may carry. A client
/// needs one `Collaborate` stream for all its documents.
const STREAMS_PER_CONNECTION: u32 = 100;

/// Longest a document read from storage may take (as the rooms allow).
const STORAGE_TIMEOUT: Duration = Duration::from_secs(15);

/// Serves the collaboration service on `listener` until shutdown; the
/// connections count against `server.max_connections` like every other
/// transport's.
pub(crate) async fn serve(state: AppState, listener: CountingListener) {
    let limits = &state.config.limits;
    let service = CollaborationServiceServer::new(Service {
        state: state.clone(),
        sessions: Arc::new(Sessions::default()),
    })
    .max_decoding_message_size(state.config.documents.update_max_bytes as usize);
    let incoming = futures_util::stream::unfold(listener, |mut listener| async move {
        let (io, _) = listener.accept().await;
        Some((Ok::<_, io::Error>(GrpcIo(io)), listener))
    });
    let result = tonic::transport::Server::builder()
        // HTTP/2 pings find connections whose peer vanished; their streams
        // end and their sessions leave.
        .http2_keepalive_interval(Some(Duration::from_millis(limits.heartbeat_interval_ms)))
        .http2_keepalive_timeout(Some(Duration::from_millis(limits.write_timeout_ms)))
        .max_concurrent_streams(STREAMS_PER_CONNECTION)
        .serve_with_incoming_shutdown(service, incoming, state.shutdown.clone().cancelled_owned())
        .await;
    if let Err(err) = result {
        tracing::error!(error = %err, "gRPC listener failed");
    }
}

/// A counted connection as tonic takes it.
struct GrpcIo(CountedStream);

impl tonic::transport::server::Connected for GrpcIo {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for GrpcIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

struct Service {
    state: AppState,
    sessions: Arc<Sessions>,
}

#[tonic::async_trait]
impl CollaborationService for Service {
    type CollaborateStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn collaborate(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::CollaborateStream>, Status> {
        let principal = authenticate(&self.state, request.metadata()).await?;
        Ok(Response::new(stream::start(
            self.state.clone(),
            self.sessions.clone(),
            principal,
            request.into_inner(),
        )))
    }

    async fn get_document_state(
        &self,
        request: Request<GetDocumentStateRequest>,
    ) -> Result<Response<GetDocumentStateResponse>, Status> {
        let principal = authenticate(&self.state, request.metadata()).await?;
        let name = &request.get_ref().document_id;
        let (document, _) = authorize_any(&self.state, name, Some(&principal.token))
            .await
            .map_err(|cause| status_of(&cause))?;
        let (state_vector, document_data) = document_state(&self.state, document.id)
            .await
            .map_err(|cause| status_of(&cause))?;
        Ok(Response::new(GetDocumentStateResponse {
            document_state: Some(DocumentState {
                state_vector: state_vector.into(),
                document_data: document_data.into(),
                active_users: self.sessions.active_users(document.id),
                last_modified: self
                    .sessions
                    .last_modified(document.id)
                    .unwrap_or(document.created_at_ms),
            }),
        }))
    }

    async fn get_active_users(
        &self,
        request: Request<GetActiveUsersRequest>,
    ) -> Result<Response<GetActiveUsersResponse>, Status> {
        let principal = authenticate(&self.state, request.metadata()).await?;
        let name = &request.get_ref().document_id;
        let (document, _) = authorize_any(&self.state, name, Some(&principal.token))
            .await
            .map_err(|cause| status_of(&cause))?;
        Ok(Response::new(GetActiveUsersResponse {
            active_users: self.sessions.active_users(document.id),
        }))
    }
}

/// Who is calling: the account behind the call's token, and the token, for
/// the per-document checks.
#[derive(Clone)]
pub(crate) struct Principal {
    pub user_id: UserId,
    pub token: String,
}

/// Checks the call's `authorization: Bearer <token>`: an access token
/// (signature, expiry, device) or a document token (signature, expiry).
async fn authenticate(state: &AppState, metadata: &MetadataMap) -> Result<Principal, Status> {
    let token = metadata
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(bearer)
        .ok_or_else(|| {
            Status::unauthenticated(
                "unauthenticated: send the metadata `authorization: Bearer <token>` with an \
                 access token or a document token (doc/token)",
            )
        })?;
    if tokens::is_access_token(token) {
        let caller = crate::rpc::authenticate(state, token, crate::unix_ms() / 1000)
            .await
            .map_err(|err| match err.code {
                ErrorCode::Unavailable | ErrorCode::Internal => {
                    Status::unavailable("unavailable: the database is unavailable; retry")
                }
                code => Status::unauthenticated(format!("{code}: {}", err.message)),
            })?;
        return Ok(Principal {
            user_id: caller.user_id,
            token: token.to_owned(),
        });
    }
    match tokens::verify_document(state.secrets.token_signing_key(), token, crate::unix_ms()) {
        Ok(claims) => Ok(Principal {
            user_id: claims.user_id,
            token: token.to_owned(),
        }),
        Err(TokenError::Expired) => Err(Status::unauthenticated(
            "token_expired: the document token has expired; get a new one",
        )),
        Err(TokenError::Invalid) => Err(Status::unauthenticated(
            "unauthenticated: the token is neither a valid access token nor a valid document token",
        )),
    }
}

/// `Bearer <token>`, the scheme in any case.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The document's state vector and whole state (v1): from its room when it
/// is open on this node, else rebuilt from storage.
async fn document_state(
    state: &AppState,
    document: DocumentId,
) -> Result<(Vec<u8>, Vec<u8>), CloseCause> {
    if let Some(live) = state.documents.live_state(document).await? {
        return Ok(live);
    }
    let unavailable = || {
        CloseCause::new(
            crate::collab::close::INTERNAL,
            ErrorCode::Unavailable,
            "the database is unavailable; retry",
        )
    };
    let stored = tokio::time::timeout(STORAGE_TIMEOUT, state.storage.documents().load(document))
        .await
        .map_err(|_| unavailable())?
        .map_err(|err| {
            tracing::warn!(document = %document, error = %err, "loading a document failed");
            unavailable()
        })?;
    let room = conclave_docs::Room::load(
        stored.snapshot.as_deref(),
        stored.updates.iter().map(|(_, bytes)| bytes.as_slice()),
    )
    .map_err(|err| {
        tracing::error!(document = %document, error = %err, "stored document does not load");
        CloseCause::new(
            crate::collab::close::INTERNAL,
            ErrorCode::Internal,
            "the stored document is unreadable",
        )
    })?;
    Ok((room.state_vector(), room.encode_state()))
}

/// The `ErrorType` a client branches on, for an error code.
fn error_type(code: ErrorCode) -> ErrorType {
    match code {
        ErrorCode::Unauthenticated
        | ErrorCode::TokenExpired
        | ErrorCode::SessionKicked
        | ErrorCode::DeviceRevoked => ErrorType::AuthenticationError,
        ErrorCode::Forbidden | ErrorCode::NotMember => ErrorType::AuthorizationError,
        ErrorCode::NotFound => ErrorType::DocumentNotFound,
        ErrorCode::InvalidUpdate | ErrorCode::PayloadTooLarge => ErrorType::InvalidUpdate,
        ErrorCode::LimitExceeded | ErrorCode::RateLimited => ErrorType::RateLimitExceeded,
        ErrorCode::BadRequest | ErrorCode::Conflict => ErrorType::UnknownError,
        _ => ErrorType::ConnectionError,
    }
}

/// The gRPC status that ends a call for `cause`; its message starts with
/// the error code.
fn status_of(cause: &CloseCause) -> Status {
    let message = format!("{}: {}", cause.error.as_str(), cause.message);
    match cause.error {
        ErrorCode::Unauthenticated
        | ErrorCode::TokenExpired
        | ErrorCode::SessionKicked
        | ErrorCode::DeviceRevoked => Status::unauthenticated(message),
        ErrorCode::Forbidden | ErrorCode::NotMember => Status::permission_denied(message),
        ErrorCode::NotFound => Status::not_found(message),
        ErrorCode::InvalidUpdate | ErrorCode::BadRequest => Status::invalid_argument(message),
        ErrorCode::LimitExceeded
        | ErrorCode::RateLimited
        | ErrorCode::PayloadTooLarge
        | ErrorCode::SlowConsumer => Status::resource_exhausted(message),
        ErrorCode::Internal => Status::internal(message),
        _ => Status::unavailable(message),
    }
}
