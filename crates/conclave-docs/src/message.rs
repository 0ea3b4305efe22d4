//! y-websocket framing: one WebSocket message holds one or more messages,
//! each an outer type followed by its body (y-websocket `src/y-websocket.js`,
//! y-protocols `sync.js`, `awareness.js`, `auth.js`).
//!
//! ```text
//! 0 • 0 • varUint8Array(state vector)   sync step 1
//! 0 • 1 • varUint8Array(update v1)      sync step 2
//! 0 • 2 • varUint8Array(update v1)      update
//! 1 • varUint8Array(awareness update)   awareness
//! 2 • 0 • varString(reason)             auth: permission denied
//! 3                                     query awareness
//! ```

use crate::DocError;
use crate::lib0::{self, Reader};

pub const MESSAGE_SYNC: u64 = 0;
pub const MESSAGE_AWARENESS: u64 = 1;
pub const MESSAGE_AUTH: u64 = 2;
pub const MESSAGE_QUERY_AWARENESS: u64 = 3;

pub const SYNC_STEP_1: u64 = 0;
pub const SYNC_STEP_2: u64 = 1;
pub const SYNC_UPDATE: u64 = 2;

/// y-protocols `auth.js`: the only auth message it defines.
pub const AUTH_PERMISSION_DENIED: u64 = 0;

/// One decoded message, borrowing its body from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// The sender's state vector (v1), still encoded.
    SyncStep1(&'a [u8]),
    /// What the receiver lacks (a v1 update), still encoded.
    SyncStep2(&'a [u8]),
    /// A v1 update, still encoded.
    Update(&'a [u8]),
    /// An awareness update, still encoded.
    Awareness(&'a [u8]),
    /// `permissionDenied` with its reason.
    AuthDenied(&'a str),
    QueryAwareness,
    /// An outer type this server does not know. Its length cannot be known,
    /// so it ends the frame: everything after it is skipped.
    Unknown(u64),
}

/// Splits a frame into its messages. A message that is cut short or has an
/// unknown sync or auth sub-type makes the whole frame malformed.
pub fn decode_frame(frame: &[u8]) -> Result<Vec<Message<'_>>, DocError> {
    let mut reader = Reader::new(frame);
    let mut messages = Vec::new();
    if !reader.has_content() {
        return Err(DocError::Malformed("an empty message"));
    }
    while reader.has_content() {
        let message = match reader.var_uint()? {
            MESSAGE_SYNC => match reader.var_uint()? {
                SYNC_STEP_1 => Message::SyncStep1(reader.var_bytes()?),
                SYNC_STEP_2 => Message::SyncStep2(reader.var_bytes()?),
                SYNC_UPDATE => Message::Update(reader.var_bytes()?),
                _ => return Err(DocError::Malformed("unknown sync message type")),
            },
            MESSAGE_AWARENESS => Message::Awareness(reader.var_bytes()?),
            MESSAGE_AUTH => match reader.var_uint()? {
                AUTH_PERMISSION_DENIED => Message::AuthDenied(reader.var_string()?),
                _ => return Err(DocError::Malformed("unknown auth message type")),
            },
            MESSAGE_QUERY_AWARENESS => Message::QueryAwareness,
            other => {
                messages.push(Message::Unknown(other));
                break;
            }
        };
        messages.push(message);
    }
    Ok(messages)
}

/// `0 • 0 • sv`: the sender's state vector (v1).
pub fn sync_step1(state_vector: &[u8]) -> Vec<u8> {
    sync(SYNC_STEP_1, state_vector)
}

/// `0 • 1 • update`: what the receiver lacks (v1).
pub fn sync_step2(update: &[u8]) -> Vec<u8> {
    sync(SYNC_STEP_2, update)
}

/// `0 • 2 • update` (v1).
pub fn update(update: &[u8]) -> Vec<u8> {
    sync(SYNC_UPDATE, update)
}

/// `1 • awareness update`.
pub fn awareness(awareness_update: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(awareness_update.len() + 4);
    lib0::write_var_uint(&mut out, MESSAGE_AWARENESS);
    lib0::write_var_bytes(&mut out, awareness_update);
    out
}

/// `2 • 0 • reason`: the y-protocols permission-denied message.
pub fn auth_denied(reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(reason.len() + 4);
    lib0::write_var_uint(&mut out, MESSAGE_AUTH);
    lib0::write_var_uint(&mut out, AUTH_PERMISSION_DENIED);
    lib0::write_var_string(&mut out, reason);
    out
}

/// `3`: asks the receiver for every awareness state it knows.
pub fn query_awareness() -> Vec<u8> {
    let mut out = Vec::with_capacity(1);
    lib0::write_var_uint(&mut out, MESSAGE_QUERY_AWARENESS);
    out
}

fn sync(kind: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 6);
    lib0::write_var_uint(&mut out, MESSAGE_SYNC);
    lib0::write_var_uint(&mut out, kind);
    lib0::write_var_bytes(&mut out, body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_vectors::hex;

    #[test]
    fn the_vectors_from_the_notes() {
        assert_eq!(sync_step1(&[0x00]), hex("00 00 01 00"));
        assert_eq!(sync_step2(&[0x00, 0x00]), hex("00 01 02 00 00"));
        assert_eq!(query_awareness(), hex("03"));
        assert_eq!(
            decode_frame(&hex("00 02 0c 01 01 01 00 04 01 01 74 02 68 69 00")).unwrap(),
            [Message::Update(&hex("01 01 01 00 04 01 01 74 02 68 69 00"))]
        );
    }

    #[test]
    fn several_messages_in_one_frame_are_all_read() {
        let mut frame = sync_step1(&[0x00]);
        frame.extend(query_awareness());
        frame.extend(auth_denied("no"));
        frame.extend(awareness(&[0x00]));
        assert_eq!(
            decode_frame(&frame).unwrap(),
            [
                Message::SyncStep1(&[0x00]),
                Message::QueryAwareness,
                Message::AuthDenied("no"),
                Message::Awareness(&[0x00]),
            ]
        );
    }

    #[test]
    fn an_unknown_outer_type_ends_the_frame() {
        let mut frame = query_awareness();
        frame.extend([0x09, 0x01, 0x02]);
        assert_eq!(
            decode_frame(&frame).unwrap(),
            [Message::QueryAwareness, Message::Unknown(9)]
        );
    }

    #[test]
    fn truncated_or_unknown_sub_types_are_malformed() {
        for bad in [
            "",
            "00",
            "00 00",
            "00 00 02 00",
            "00 03 00",
            "01 05 00",
            "02 01",
            "00 00 01 00 00",
        ] {
            assert!(
                decode_frame(&hex(bad)).is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}
