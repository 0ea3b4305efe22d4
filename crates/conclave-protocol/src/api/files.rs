//! Files: asking for an upload token, completing an upload and getting a
//! signed download URL. The bytes themselves travel over plain HTTP
//! (`PUT /v1/files/<id>/content`, `GET /v1/files/<id>?exp=..&sig=..`).

use conclave_core::{ChannelId, FileId, UserId};
use serde::{Deserialize, Serialize};

/// Longest file name, in bytes.
pub const FILE_NAME_MAX_BYTES: usize = 255;

/// Longest MIME type, in bytes (RFC 6838 allows 127 for each half).
pub const MIME_MAX_BYTES: usize = 255;

/// Whether `name` may name a file: 1 to 255 bytes, not only spaces, no
/// control characters and no path separators.
pub fn is_valid_file_name(name: &str) -> bool {
    !name.trim().is_empty()
        && name.len() <= FILE_NAME_MAX_BYTES
        && !name
            .chars()
            .any(|c| c.is_control() || c == '/' || c == '\\')
}

/// Whether `mime` is a lower-case `type/subtype` of RFC 6838 characters
/// (no parameters).
pub fn is_valid_mime(mime: &str) -> bool {
    let token = |part: &str| {
        !part.is_empty()
            && part.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(
                        b,
                        b'!' | b'#' | b'$' | b'&' | b'-' | b'^' | b'_' | b'.' | b'+'
                    )
            })
    };
    mime.len() <= MIME_MAX_BYTES
        && mime
            .split_once('/')
            .is_some_and(|(kind, subtype)| token(kind) && token(subtype))
}

/// `image_error`: the image's declared size (its bytes, width, height or
/// pixels) is past the server's limits, so it was not decoded.
pub const IMAGE_TOO_LARGE: &str = "image_too_large";

/// `image_error`: the bytes are not an image the server can read (not PNG,
/// JPEG, GIF or WebP, or damaged).
pub const IMAGE_UNREADABLE: &str = "image_unreadable";

/// Whether `sha256` is 64 lower-case hex digits.
pub fn is_valid_sha256(sha256: &str) -> bool {
    sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Asks to upload a file: its name, exact size and type, optionally the
/// SHA-256 its bytes must have and the channel it is meant for (the caller
/// must be a member).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestUploadToken {
    pub name: String,
    pub size: u64,
    pub mime: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<ChannelId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadTokenGrant {
    pub file_id: FileId,
    /// Where to `PUT` the bytes, relative to the server's HTTP address.
    pub upload_url: String,
    /// Sent as `Authorization: Bearer <token>` (or `?token=`) with every
    /// chunk; spent when the upload completes.
    pub token: String,
    /// Unix milliseconds; an upload not finished by then is abandoned.
    pub expires_at_ms: i64,
}
route!(
    RequestUploadToken,
    "file/request_upload_token",
    UploadTokenGrant
);

/// Completes an upload whose bytes have all arrived (idempotent for the
/// uploader) and returns the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadCallback {
    pub file_id: FileId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileStatus {
    Pending,
    Complete,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileView {
    pub file_id: FileId,
    pub owner_id: UserId,
    pub name: String,
    pub mime: String,
    pub size: u64,
    /// Lower-case hex; present once complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub status: FileStatus,
    pub created_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at_ms: Option<i64>,
    /// An image's width and height in pixels (as displayed: EXIF orientation
    /// applied), once the server has read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// A small JPEG (PNG when the image has transparency) of an image, itself
    /// a complete file of the same owner, downloadable like any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_file_id: Option<FileId>,
    /// Why an uploaded image has no dimensions nor thumbnail: one of the
    /// `IMAGE_*` codes (new ones may appear). The file itself is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_error: Option<String>,
}
route!(UploadCallback, "file/upload_callback", FileView);

/// Where an upload stands: the answer to each chunk
/// (`PUT /v1/files/<id>/content`) and to `GET /v1/files/<id>/status`.
/// `offset` is where the next chunk must start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadProgress {
    pub file_id: FileId,
    pub offset: u64,
    pub size: u64,
    pub status: FileStatus,
    /// Lower-case hex; present once complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// An image's width and height in pixels (as displayed: EXIF orientation
    /// applied), once the server has read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// A small JPEG (PNG when the image has transparency) of an image, itself
    /// a complete file of the same owner, downloadable like any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_file_id: Option<FileId>,
    /// Why an uploaded image has no dimensions nor thumbnail: one of the
    /// `IMAGE_*` codes (new ones may appear). The file itself is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_error: Option<String>,
}

/// A signed, expiring download URL, for the uploader and for current
/// members of a channel where a message referencing the file was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetUrl {
    pub file_id: FileId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileUrl {
    /// Relative to the server's HTTP address; anyone holding it may
    /// download until it expires.
    pub url: String,
    /// Unix milliseconds.
    pub expires_at_ms: i64,
    /// An image's width and height in pixels (as displayed: EXIF orientation
    /// applied), once the server has read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// A small JPEG (PNG when the image has transparency) of an image, itself
    /// a complete file of the same owner, downloadable like any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_file_id: Option<FileId>,
}
route!(GetUrl, "file/get_url", FileUrl);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_mimes_and_checksums_are_checked() {
        for good in [
            "a.png",
            "Quarterly report (final).pdf",
            "ü.txt",
            &"x".repeat(255),
        ] {
            assert!(is_valid_file_name(good), "{good}");
        }
        for bad in ["", "  ", "a/b", "a\\b", "a\nb", "\u{7f}", &"x".repeat(256)] {
            assert!(!is_valid_file_name(bad), "{bad:?}");
        }
        for good in ["image/png", "application/vnd.api+json", "text/plain"] {
            assert!(is_valid_mime(good), "{good}");
        }
        for bad in [
            "",
            "image",
            "image/",
            "/png",
            "Image/PNG",
            "text/plain; charset=utf-8",
            "a/b/c",
        ] {
            assert!(!is_valid_mime(bad), "{bad}");
        }
        assert!(is_valid_sha256(&"ab".repeat(32)));
        for bad in [
            "",
            "AB".repeat(32).as_str(),
            &"a".repeat(63),
            &"g".repeat(64),
        ] {
            assert!(!is_valid_sha256(bad), "{bad}");
        }
    }

    #[test]
    fn requests_use_string_ids_and_refuse_unknown_fields() {
        let req: RequestUploadToken = serde_json::from_str(
            r#"{"name":"a.png","size":3,"mime":"image/png","channel_id":"7"}"#,
        )
        .unwrap();
        assert_eq!(req.channel_id, Some(ChannelId::new(7)));
        assert!(serde_json::from_str::<GetUrl>(r#"{"file_id":"1","x":1}"#).is_err());
        let view = serde_json::to_value(FileStatus::Complete).unwrap();
        assert_eq!(view, "complete");
    }

    #[test]
    fn image_fields_are_optional_both_ways() {
        // An answer from before images were read still parses...
        let old: UploadProgress = serde_json::from_str(
            r#"{"file_id":"3","offset":5,"size":5,"status":"complete","sha256":"ab"}"#,
        )
        .unwrap();
        assert_eq!(
            (old.width, old.thumbnail_file_id, old.image_error.as_deref()),
            (None, None, None)
        );
        // ...and a file that is no image says nothing of one.
        let plain = serde_json::to_value(&old).unwrap();
        for field in ["width", "height", "thumbnail_file_id", "image_error"] {
            assert!(plain.get(field).is_none(), "{field}: {plain}");
        }
        let image = UploadProgress {
            width: Some(1000),
            height: Some(600),
            thumbnail_file_id: Some(FileId::new(4)),
            ..old
        };
        let json = serde_json::to_value(&image).unwrap();
        assert_eq!(json["width"], 1000);
        assert_eq!(json["thumbnail_file_id"], "4", "ids are strings");
        let url: FileUrl =
            serde_json::from_str(r#"{"url":"/v1/files/3?exp=1&sig=x","expires_at_ms":1}"#).unwrap();
        assert_eq!(url.height, None);
    }
}
