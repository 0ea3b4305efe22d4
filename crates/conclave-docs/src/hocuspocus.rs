//! The Hocuspocus framing (`@hocuspocus/provider` and server 2 to 4): many
//! documents over one WebSocket. Every message starts with its address, the
//! document's name as a `varString` (with the provider's session awareness,
//! `name • "\0" • session id`), then a type:
//!
//! ```text
//! address • 0 • sync message            as y-websocket
//! address • 1 • varUint8Array(awareness) as y-websocket
//! address • 2 • 0 • token [• version]   auth: the client's token
//! address • 2 • 1 • reason              auth: permission denied
//! address • 2 • 2 • scope               auth: authenticated, "read-write" | "readonly"
//! address • 3                           query awareness
//! address • 4 • sync message            sync reply (not answered with another step 1)
//! address • 5 • varString(payload)      stateless
//! address • 6 • ...                     broadcast stateless (server-internal)
//! address • 7 • [varString(reason)]     close this document
//! address • 8 • varUint(0 | 1)          sync status: the update was stored, or refused
//! 09 / 0a                               ping / pong, one byte without an address
//! ```
//!
//! The auth sub-types are Hocuspocus's own and differ from y-protocols'
//! (`auth.js` has only `0 = permission denied`).
//!
//! Types 0, 1 and 3 are exactly the y-websocket messages after the address,
//! so a [`Room`](crate::Room)'s frames travel with the address put in
//! front ([`addressed`]).

use std::borrow::Cow;

use bytes::Bytes;

use crate::DocError;
use crate::lib0::{self, Reader};
use crate::message;

pub const MESSAGE_SYNC: u64 = 0;
pub const MESSAGE_AWARENESS: u64 = 1;
pub const MESSAGE_AUTH: u64 = 2;
pub const MESSAGE_QUERY_AWARENESS: u64 = 3;
pub const MESSAGE_SYNC_REPLY: u64 = 4;
pub const MESSAGE_STATELESS: u64 = 5;
pub const MESSAGE_BROADCAST_STATELESS: u64 = 6;
pub const MESSAGE_CLOSE: u64 = 7;
pub const MESSAGE_SYNC_STATUS: u64 = 8;

pub const AUTH_TOKEN: u64 = 0;
pub const AUTH_PERMISSION_DENIED: u64 = 1;
pub const AUTH_AUTHENTICATED: u64 = 2;

/// The connection-level ping: one byte, no address. The provider answers
/// with [`PONG`].
pub const PING: [u8; 1] = [9];
pub const PONG: [u8; 1] = [10];

/// Longest address accepted, in bytes: a document name and a session id.
pub const ADDRESS_MAX_BYTES: usize = 512;

/// One message from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming<'a> {
    Ping,
    Pong,
    Document {
        /// The address as sent: the document name, maybe with a session.
        address: &'a str,
        message: DocumentMessage<'a>,
    },
}

impl Incoming<'_> {
    /// The document an address names (the part before a `\0`).
    pub fn document_name(address: &str) -> &str {
        address.split('\0').next().unwrap_or(address)
    }
}

/// What a client says about one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentMessage<'a> {
    /// The token opening the document.
    Auth { token: &'a str },
    /// A y-websocket frame for the document's room (sync, awareness or
    /// query awareness); a sync reply becomes a plain sync message.
    Room(Cow<'a, [u8]>),
    /// A message for the document's other connections.
    Stateless(&'a str),
    /// The provider is done with the document.
    Close,
    /// A type clients do not send (the server's own, or unknown).
    Ignored(u64),
}

/// Decodes one WebSocket message. The room decodes the sync and awareness
/// bodies itself, strictly; here only the address, the type and the auth
/// and stateless bodies are read.
pub fn decode(frame: &[u8]) -> Result<Incoming<'_>, DocError> {
    match frame {
        [9] => return Ok(Incoming::Ping),
        [10] => return Ok(Incoming::Pong),
        _ => {}
    }
    let mut reader = Reader::new(frame);
    let address = reader.var_string()?;
    if address.len() > ADDRESS_MAX_BYTES {
        return Err(DocError::Malformed("the document address is too long"));
    }
    let body_start = frame.len() - reader.remaining();
    let kind = reader.var_uint()?;
    let message = match kind {
        MESSAGE_SYNC | MESSAGE_AWARENESS | MESSAGE_QUERY_AWARENESS => {
            DocumentMessage::Room(Cow::Borrowed(&frame[body_start..]))
        }
        MESSAGE_SYNC_REPLY => {
            let rest = &frame[frame.len() - reader.remaining()..];
            let mut room = Vec::with_capacity(rest.len() + 1);
            lib0::write_var_uint(&mut room, message::MESSAGE_SYNC);
            room.extend_from_slice(rest);
            DocumentMessage::Room(Cow::Owned(room))
        }
        MESSAGE_AUTH => match reader.var_uint()? {
            // A provider version may follow; it is not needed.
            AUTH_TOKEN => DocumentMessage::Auth {
                token: reader.var_string()?,
            },
            _ => return Err(DocError::Malformed("clients send only auth tokens")),
        },
        MESSAGE_STATELESS => DocumentMessage::Stateless(reader.var_string()?),
        MESSAGE_CLOSE => DocumentMessage::Close,
        other => DocumentMessage::Ignored(other),
    };
    Ok(Incoming::Document { address, message })
}

/// Splits a server message into its address and the room frame behind it.
pub fn split_address(frame: &[u8]) -> Result<(&str, &[u8]), DocError> {
    let mut reader = Reader::new(frame);
    let address = reader.var_string()?;
    Ok((address, &frame[frame.len() - reader.remaining()..]))
}

/// The encoded address that starts every message about `address`.
pub fn address(address: &str) -> Bytes {
    let mut out = Vec::with_capacity(address.len() + 2);
    lib0::write_var_string(&mut out, address);
    Bytes::from(out)
}

/// A room's y-websocket frame for one connection, behind its address.
pub fn addressed(address: &[u8], frame: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(address.len() + frame.len());
    out.extend_from_slice(address);
    out.extend_from_slice(frame);
    Bytes::from(out)
}

/// `address • 2 • 2 • scope`: the token was accepted.
pub fn authenticated(address: &[u8], read_only: bool) -> Bytes {
    let scope = if read_only { "readonly" } else { "read-write" };
    auth(address, AUTH_AUTHENTICATED, scope)
}

/// `address • 2 • 1 • reason`: the document stays closed to this socket.
pub fn permission_denied(address: &[u8], reason: &str) -> Bytes {
    auth(address, AUTH_PERMISSION_DENIED, reason)
}

/// `address • 8 • 1` when the client's update is stored (or changed
/// nothing), `address • 8 • 0` when it was refused.
pub fn sync_status(address: &[u8], stored: bool) -> Bytes {
    let mut out = address.to_vec();
    lib0::write_var_uint(&mut out, MESSAGE_SYNC_STATUS);
    lib0::write_var_uint(&mut out, u64::from(stored));
    Bytes::from(out)
}

/// `5 • payload`, to put behind each recipient's address.
pub fn stateless(payload: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    lib0::write_var_uint(&mut out, MESSAGE_STATELESS);
    lib0::write_var_string(&mut out, payload);
    out
}

/// Whether a room frame carries document content from the client (sync
/// step 2 or update), which Hocuspocus answers with a sync status.
pub fn carries_update(room_frame: &[u8]) -> bool {
    matches!(
        room_frame,
        [0, 1, ..] | [0, 2, ..] // sync step 2, update (single-byte varUints)
    )
}

fn auth(address: &[u8], kind: u64, text: &str) -> Bytes {
    let mut out = Vec::with_capacity(address.len() + text.len() + 4);
    out.extend_from_slice(address);
    lib0::write_var_uint(&mut out, MESSAGE_AUTH);
    lib0::write_var_uint(&mut out, kind);
    lib0::write_var_string(&mut out, text);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_vectors::hex;

    #[test]
    fn the_provider_auth_message_decodes() {
        // docs/notes vector: token "tok", document "doc", version "4.8.0".
        let frame = hex("03 64 6f 63 02 00 03 74 6f 6b 05 34 2e 38 2e 30");
        assert_eq!(
            decode(&frame).unwrap(),
            Incoming::Document {
                address: "doc",
                message: DocumentMessage::Auth { token: "tok" }
            }
        );
        // Without the version too.
        let frame = hex("03 64 6f 63 02 00 03 74 6f 6b");
        assert!(matches!(
            decode(&frame).unwrap(),
            Incoming::Document {
                message: DocumentMessage::Auth { token: "tok" },
                ..
            }
        ));
    }

    #[test]
    fn replies_match_the_vectors() {
        let doc = address("doc");
        assert_eq!(
            authenticated(&doc, false).as_ref(),
            hex("03 64 6f 63 02 02 0a 72 65 61 64 2d 77 72 69 74 65")
        );
        assert_eq!(sync_status(&doc, true).as_ref(), hex("03 64 6f 63 08 01"));
        assert_eq!(
            addressed(&doc, &message::sync_step1(&[0])).as_ref(),
            hex("03 64 6f 63 00 00 01 00")
        );
        assert_eq!(
            permission_denied(&doc, "no").as_ref(),
            hex("03 64 6f 63 02 01 02 6e 6f")
        );
    }

    #[test]
    fn room_messages_keep_their_bytes_and_sync_replies_become_sync() {
        let step1 = hex("03 64 6f 63 00 00 01 00");
        assert_eq!(
            decode(&step1).unwrap(),
            Incoming::Document {
                address: "doc",
                message: DocumentMessage::Room(Cow::Borrowed(&hex("00 00 01 00")[..]))
            }
        );
        let reply = hex("03 64 6f 63 04 01 02 00 00");
        let Incoming::Document {
            message: DocumentMessage::Room(room),
            ..
        } = decode(&reply).unwrap()
        else {
            panic!("a sync reply is a room message");
        };
        assert_eq!(room.as_ref(), hex("00 01 02 00 00"));
        assert!(carries_update(&room));
        assert!(!carries_update(&hex("00 00 01 00")));
    }

    #[test]
    fn server_messages_split_into_address_and_room_frame() {
        let frame = addressed(&address("pad"), &message::update(&[0, 0]));
        assert_eq!(
            split_address(&frame).unwrap(),
            ("pad", &hex("00 02 02 00 00")[..])
        );
        assert!(split_address(&hex("05 70 61")).is_err());
    }

    #[test]
    fn pings_stateless_close_and_sessions() {
        assert_eq!(decode(&PING).unwrap(), Incoming::Ping);
        assert_eq!(decode(&PONG).unwrap(), Incoming::Pong);
        let mut frame = address("doc\0s1").to_vec();
        frame.extend(stateless("hello"));
        let Incoming::Document { address, message } = decode(&frame).unwrap() else {
            panic!("a document message");
        };
        assert_eq!(Incoming::document_name(address), "doc");
        assert_eq!(message, DocumentMessage::Stateless("hello"));
        assert_eq!(
            decode(&hex("03 64 6f 63 07")).unwrap(),
            Incoming::Document {
                address: "doc",
                message: DocumentMessage::Close
            }
        );
        assert_eq!(
            decode(&hex("03 64 6f 63 06 00")).unwrap(),
            Incoming::Document {
                address: "doc",
                message: DocumentMessage::Ignored(MESSAGE_BROADCAST_STATELESS)
            }
        );
    }

    #[test]
    fn broken_messages_are_errors() {
        for bad in [
            "",                        // nothing
            "05 64 6f",                // address cut short
            "03 64 6f 63",             // no type
            "03 64 6f 63 02",          // auth without a sub-type
            "03 64 6f 63 02 01 00",    // a client may not deny
            "03 64 6f 63 02 00 09 74", // token cut short
            "03 64 6f 63 05 04 61",    // stateless cut short
            "02 ff fe 00",             // address is not UTF-8
        ] {
            assert!(decode(&hex(bad)).is_err(), "{bad}");
        }
        let mut long = address(&"a".repeat(ADDRESS_MAX_BYTES + 1)).to_vec();
        long.push(0);
        assert!(decode(&long).is_err());
    }
}
