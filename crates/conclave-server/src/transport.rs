//! Transports: each turns its own wire into calls on the one route table and
//! delivers pushed events back. They share the frame handling in `frames`.

pub(crate) mod collab;
pub(crate) mod doc_socket;
pub(crate) mod files;
pub(crate) mod framed;
pub(crate) mod frames;
pub(crate) mod hocuspocus;
pub(crate) mod http_api;
pub(crate) mod json_docs;
pub(crate) mod quic;
pub(crate) mod requests;
pub(crate) mod tcp;
pub(crate) mod ws;

use axum::http::HeaderMap;

/// `Authorization: Bearer <token>`.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// Records the device as seen now (presence's last-seen time).
pub(crate) fn touch(state: &crate::state::AppState, caller: crate::rpc::Caller) {
    state
        .last_seen
        .note(caller.user_id, caller.device_id, crate::unix_ms());
}
