//! The one table of error codes that may appear on the wire.
//!
//! Codes are stable snake_case strings: clients branch on them, so a code is
//! never renamed or reused for a different meaning. Messages beside them are
//! for humans and may change.

use std::fmt;

macro_rules! error_codes {
    ($($variant:ident => ($code:literal, $status:literal, $doc:literal),)*) => {
        /// A stable, client-visible error code and the HTTP status it maps to.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $(#[doc = $doc] $variant,)*
        }

        impl ErrorCode {
            /// Every code, in table order (used by docs and tests).
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The snake_case string sent on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            /// The HTTP status used when the error travels over plain HTTP.
            pub const fn http_status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                }
            }

            /// A one-line description for documentation.
            pub const fn description(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $doc,)*
                }
            }

            /// Looks a code up by its wire string.
            pub fn from_wire(code: &str) -> Option<ErrorCode> {
                match code {
                    $($code => Some(ErrorCode::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    BadRequest => ("bad_request", 400, "The request is malformed: wrong JSON types, missing or invalid fields."),
    InvalidJson => ("invalid_json", 400, "The body is not valid JSON or not a JSON object."),
    MalformedFrame => ("malformed_frame", 400, "A binary frame violates the framing rules; the connection is closed."),
    UnknownFrameType => ("unknown_frame_type", 400, "A binary frame carries a type number this server does not know."),
    WrongPayloadKind => ("wrong_payload_kind", 400, "A frame's payload is not of the kind its type requires (JSON expected)."),
    UnsupportedFrame => ("unsupported_frame", 400, "A known frame type that a client may not send on this connection."),
    HandshakeFailed => ("handshake_failed", 401, "The Noise handshake failed: a message was malformed, tampered with or out of order."),
    UnsupportedPattern => ("unsupported_pattern", 400, "The Noise pattern requested is neither XK nor IK."),
    UnsupportedVersion => ("unsupported_version", 400, "Client and server share no protocol version."),
    KeyMismatch => ("key_mismatch", 401, "The static key proven in the Noise handshake is not the one registered for the device."),
    DecryptFailed => ("decrypt_failed", 400, "A Noise transport message failed to decrypt (tampered, replayed or reordered)."),
    Unauthenticated => ("unauthenticated", 401, "No access token was presented, or it is not valid."),
    TokenExpired => ("token_expired", 401, "The access token has expired; refresh it."),
    SessionKicked => ("session_kicked", 401, "The device was signed out (kicked or logged out); its tokens no longer work."),
    DeviceRevoked => ("device_revoked", 401, "The device was removed from the account; log in again as a new device."),
    AuthTimeout => ("auth_timeout", 408, "The connection did not authenticate in time."),
    IdleTimeout => ("idle_timeout", 408, "The connection sent nothing, not even a heartbeat, for too long."),
    InvalidCredentials => ("invalid_credentials", 401, "Username or password is wrong."),
    Forbidden => ("forbidden", 403, "The caller may not perform this action."),
    NotMember => ("not_member", 403, "The caller is not a member of the channel."),
    Muted => ("muted", 403, "The caller is muted in this channel and may not send."),
    Blocked => ("blocked", 403, "One of the two users has blocked the other; the action is not possible between them."),
    PrivacyRestricted => ("privacy_restricted", 403, "The other user's privacy settings do not allow this (direct messages, group invitations, search)."),
    GroupFull => ("group_full", 403, "The group has reached its member cap."),
    LinkInvalid => ("link_invalid", 400, "A QR code or share link was not issued by this server, was tampered with, or names something that is gone."),
    LinkExpired => ("link_expired", 410, "A QR code or share link has expired or was revoked."),
    RevokeWindowExpired => ("revoke_window_expired", 403, "The sender's window for revoking this message has passed."),
    NotFound => ("not_found", 404, "The addressed object does not exist (or is not visible to the caller)."),
    UnknownRoute => ("unknown_route", 404, "No RPC route or HTTP path has this name."),
    MethodNotAllowed => ("method_not_allowed", 405, "The HTTP method is not supported on this path."),
    Conflict => ("conflict", 409, "The request conflicts with existing state (for example a taken username)."),
    ResyncRequired => ("resync_required", 409, "The gap since last_pts is too large to replay; reload the channel."),
    OffsetMismatch => ("offset_mismatch", 409, "An upload chunk does not start at the upload's current offset; resume from the offset given."),
    UploadIncomplete => ("upload_incomplete", 409, "The upload has not received all its bytes yet."),
    LimitExceeded => ("limit_exceeded", 403, "A configured cap is reached (for example devices per account)."),
    QuotaExceeded => ("quota_exceeded", 403, "The upload would take the user's stored files past their quota."),
    PayloadTooLarge => ("payload_too_large", 413, "A body, JSON payload or field exceeds its limit."),
    FrameTooLarge => ("frame_too_large", 413, "A binary frame exceeds 16 MiB; the connection is closed."),
    InvalidUpdate => ("invalid_update", 400, "A collaborative-document message does not decode (framing, Yjs update or awareness); the connection is closed."),
    ChecksumMismatch => ("checksum_mismatch", 422, "The uploaded bytes do not have the SHA-256 declared for them; nothing was stored."),
    RangeNotSatisfiable => ("range_not_satisfiable", 416, "The requested byte range lies outside the file."),
    RateLimited => ("rate_limited", 429, "Too many requests; retry after the indicated delay."),
    Internal => ("internal", 500, "The server failed; details are in its log, never on the wire."),
    Unavailable => ("unavailable", 503, "The server is starting, shutting down or cannot reach its database."),
    SlowConsumer => ("slow_consumer", 503, "The connection fell too far behind its events; reconnect and catch up by sync."),
    ShuttingDown => ("shutting_down", 503, "The server is shutting down; reconnect (to another node)."),
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_snake_case_and_round_trip() {
        let mut seen = HashSet::new();
        for &code in ErrorCode::ALL {
            let wire = code.as_str();
            assert!(seen.insert(wire), "duplicate code {wire}");
            assert!(
                wire.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{wire} is not snake_case"
            );
            assert_eq!(ErrorCode::from_wire(wire), Some(code));
            assert!((400..600).contains(&code.http_status()));
        }
        assert_eq!(ErrorCode::from_wire("no_such_code"), None);
    }
}
