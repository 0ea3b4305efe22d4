//! Collaborative documents: creating one and getting the token that opens
//! it over the y-websocket endpoint `/collab/<name>`.

use conclave_core::{ChannelId, DocumentId};
use serde::{Deserialize, Serialize};

/// Longest document name, in bytes.
pub const DOCUMENT_NAME_MAX_BYTES: usize = 128;

/// Whether `name` may name a document: 1 to 128 of `A-Z a-z 0-9 - _ . ~`.
/// y-websocket puts the name into the URL path unescaped, so only
/// characters that need no escaping are allowed.
pub fn is_valid_document_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= DOCUMENT_NAME_MAX_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
        && name != "."
        && name != ".."
}

/// Creates a document owned by the caller. With a channel, the caller must
/// be a member, and the channel's members may open the document too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocCreate {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<ChannelId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentView {
    pub document_id: DocumentId,
    pub name: String,
    pub owner_id: conclave_core::UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<ChannelId>,
    pub created_at_ms: i64,
}
route!(DocCreate, "doc/create", DocumentView);

/// What a document token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DocScope {
    #[serde(rename = "read-write")]
    ReadWrite,
    /// Syncs and shares awareness; edits are dropped by the server.
    #[serde(rename = "read-only")]
    ReadOnly,
}

/// A signed, expiring token for `GET /collab/<name>?token=...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocToken {
    pub name: String,
    pub scope: DocScope,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocTokenGrant {
    pub token: String,
    /// Unix milliseconds; connecting later is refused (close code 4401).
    pub expires_at_ms: i64,
}
route!(DocToken, "doc/token", DocTokenGrant);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_names_are_url_safe() {
        for good in ["notes", "a", "Q3-plan_v2.draft~1", &"x".repeat(128)] {
            assert!(is_valid_document_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "ü",
            "a?b",
            "a%20",
            &"x".repeat(129),
        ] {
            assert!(!is_valid_document_name(bad), "{bad}");
        }
    }

    #[test]
    fn scopes_are_spelled_like_hocuspocus() {
        assert_eq!(
            serde_json::to_string(&DocScope::ReadWrite).unwrap(),
            "\"read-write\""
        );
        let req: DocToken = serde_json::from_str(r#"{"name":"n","scope":"read-only"}"#).unwrap();
        assert_eq!(req.scope, DocScope::ReadOnly);
    }
}
