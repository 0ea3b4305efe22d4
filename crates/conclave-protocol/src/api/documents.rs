//! Collaborative documents: creating one, getting the token that opens it
//! over the y-websocket endpoint `/collab/<name>`, and its named versions.

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

/// Longest version label, in characters.
pub const VERSION_LABEL_MAX_CHARS: usize = 100;

/// Most versions one document may keep.
pub const VERSIONS_PER_DOCUMENT_MAX: usize = 1_000;

/// Saves the document's current content as a named version. Anyone who may
/// open the document may save one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocVersionCreate {
    /// The document.
    pub name: String,
    /// 1 to 100 characters; need not be unique.
    pub label: String,
}

/// A saved version, without its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionView {
    /// 1 for the document's first version, then 2, 3...
    pub version: u64,
    pub label: String,
    pub created_by: conclave_core::UserId,
    pub created_at_ms: i64,
    /// Bytes of the saved state.
    pub size_bytes: u64,
}
route!(DocVersionCreate, "doc/version/create", VersionView);

/// The document's versions, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocVersionList {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionList {
    pub versions: Vec<VersionView>,
}
route!(DocVersionList, "doc/version/list", VersionList);

/// One version's content: the whole document as it was, as a Yjs update
/// (v1, base64) a client can apply to an empty `Y.Doc` to show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocVersionGet {
    pub name: String,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionContent {
    pub version: VersionView,
    /// Base64 (standard) of the v1 update.
    pub state: String,
}
route!(DocVersionGet, "doc/version/get", VersionContent);

/// Makes the document read like a saved version again, for everyone
/// editing it. The current content is saved first as a new version
/// ("before restoring version N"), so a restore can itself be undone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocVersionRestore {
    pub name: String,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRestored {
    /// The version holding the content from just before the restore.
    pub saved: VersionView,
}
route!(DocVersionRestore, "doc/version/restore", VersionRestored);

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
