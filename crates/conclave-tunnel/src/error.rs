//! The one error type of the tunnel and its wire codes.

use conclave_core::ErrorCode;
use conclave_protocol::{CodecError, FrameType};
use thiserror::Error;

/// Everything that can end a tunnel, during the handshake or afterwards.
///
/// Every variant ends the connection: a failed handshake leaves no keys to
/// talk with, and a transport error means the encrypted stream can no
/// longer be trusted (Noise nonces are implicit counters, so one lost or
/// rejected message desynchronises the rest). The server reports it with a
/// plaintext `Goaway` ([`TunnelError::to_goaway`]) during the handshake.
///
/// `Display` texts are for logs and the human part of a `Goaway`; they never
/// contain key material. Clients branch on [`TunnelError::code`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TunnelError {
    /// Noise rejected a handshake message: a wrong authentication tag,
    /// wrong length or an invalid public key (e.g. a client that pinned
    /// the wrong server key ends up here).
    #[error("noise handshake message rejected")]
    HandshakeFailed,
    /// The static key proven in the handshake is not the one registered
    /// for the claimed device.
    #[error("the device's static key does not match its registered key")]
    KeyMismatch,
    /// The claimed device has no registered key (unknown or revoked).
    #[error("the device is unknown or revoked")]
    UnknownDevice,
    /// The `pattern` field names a handshake we do not speak.
    #[error("unsupported noise pattern {0:?}")]
    UnsupportedPattern(String),
    /// The peers share no protocol version.
    #[error("no protocol version is supported by both sides")]
    UnsupportedVersion,
    /// A handshake field is structurally wrong: bad or oversized hex, a
    /// device id that is not a canonical decimal `u64`, a non-empty final
    /// payload.
    #[error("malformed handshake: {0}")]
    MalformedHandshake(&'static str),
    /// A handshake frame's JSON payload (or the JSON inside a Noise
    /// payload) is not an object of the expected shape.
    #[error("invalid handshake JSON: {0}")]
    InvalidJson(String),
    /// A frame arrived that this step of the handshake does not expect
    /// (wrong type, or not on channel 0 with sequence 0).
    #[error(
        "unexpected {got:?} frame on channel {channel_id} sequence {sequence}, expected {expected:?}"
    )]
    UnexpectedFrame {
        /// The frame type this step needs.
        expected: FrameType,
        /// The frame type that arrived.
        got: FrameType,
        /// Channel of the frame that arrived.
        channel_id: u64,
        /// Sequence of the frame that arrived.
        sequence: u64,
    },
    /// The server refused the handshake with a `Goaway` (client side only).
    #[error("server refused the handshake: {code}: {message}")]
    Refused {
        /// The server's error code, as sent.
        code: String,
        /// The server's human-readable explanation.
        message: String,
    },
    /// A transport ciphertext failed authentication: tampering, replay,
    /// reordering or a message lost in between.
    #[error("transport message failed to decrypt")]
    DecryptFailed,
    /// A transport chunk declares a ciphertext length that cannot hold
    /// even the authentication tag.
    #[error("transport chunk of {len} bytes is shorter than the authentication tag")]
    MalformedChunk {
        /// The declared ciphertext length.
        len: usize,
    },
    /// More ciphertext was pushed than
    /// [`crate::Opener::remaining_ciphertext_capacity`] allowed.
    #[error("ciphertext buffer would hold {len} bytes, more than the maximum of {max}")]
    CiphertextBufferFull {
        /// Bytes the buffer would have held.
        len: usize,
        /// Limit of the buffer.
        max: usize,
    },
    /// The decrypted byte stream violates CCP-1 framing.
    #[error("framing error inside the tunnel: {0}")]
    Codec(#[from] CodecError),
    /// 2^64 - 1 messages went one way; Noise forbids reusing a nonce.
    #[error("noise nonce space exhausted")]
    NonceExhausted,
    /// The API was used out of order (a bug in the caller, not the peer).
    #[error("invalid tunnel state: {0}")]
    InvalidState(&'static str),
    /// The crypto backend failed locally (key generation, encryption).
    #[error("noise backend failure")]
    Backend,
}

impl TunnelError {
    /// The wire error code, from the one table in `conclave-core`.
    ///
    /// Several variants share a code on purpose: the peer needs the class
    /// of failure, the structural detail belongs in our log (`Display`).
    /// For [`TunnelError::Refused`] this is the server's code when the table
    /// knows it and `handshake_failed` otherwise, so a client can branch on
    /// the code alone whichever side detected the problem.
    #[must_use]
    pub fn error_code(&self) -> ErrorCode {
        match self {
            // Malformed and out-of-order handshake messages are the same
            // class of failure as a bad MAC: the handshake cannot go on.
            Self::HandshakeFailed | Self::MalformedHandshake(_) | Self::UnexpectedFrame { .. } => {
                ErrorCode::HandshakeFailed
            }
            Self::KeyMismatch => ErrorCode::KeyMismatch,
            Self::UnknownDevice => ErrorCode::DeviceRevoked,
            Self::UnsupportedPattern(_) => ErrorCode::UnsupportedPattern,
            Self::UnsupportedVersion => ErrorCode::UnsupportedVersion,
            Self::InvalidJson(_) => ErrorCode::InvalidJson,
            Self::Refused { code, .. } => {
                ErrorCode::from_wire(code).unwrap_or(ErrorCode::HandshakeFailed)
            }
            Self::DecryptFailed => ErrorCode::DecryptFailed,
            Self::MalformedChunk { .. } => ErrorCode::MalformedFrame,
            Self::CiphertextBufferFull { .. } => ErrorCode::FrameTooLarge,
            Self::Codec(err) => err.code(),
            // Exhaustion, misuse and backend failures are ours, not the
            // peer's; it learns only that the server failed.
            Self::NonceExhausted | Self::InvalidState(_) | Self::Backend => ErrorCode::Internal,
        }
    }

    /// Stable snake_case code for the wire (`Goaway.code`):
    /// [`TunnelError::error_code`] as a string.
    #[must_use]
    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }

    /// The plaintext `Goaway` frame that reports this error to the peer.
    #[must_use]
    pub fn to_goaway(&self) -> conclave_protocol::Frame {
        crate::goaway(self.code(), &self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_local_error() -> Vec<TunnelError> {
        vec![
            TunnelError::HandshakeFailed,
            TunnelError::KeyMismatch,
            TunnelError::UnknownDevice,
            TunnelError::UnsupportedPattern("NN".to_owned()),
            TunnelError::UnsupportedVersion,
            TunnelError::MalformedHandshake("x"),
            TunnelError::InvalidJson("x".to_owned()),
            TunnelError::UnexpectedFrame {
                expected: FrameType::Hello,
                got: FrameType::Ping,
                channel_id: 0,
                sequence: 0,
            },
            TunnelError::DecryptFailed,
            TunnelError::MalformedChunk { len: 3 },
            TunnelError::CiphertextBufferFull { len: 1, max: 0 },
            TunnelError::Codec(CodecError::EmptyFrame),
            TunnelError::Codec(CodecError::UnknownFrameType(0)),
            TunnelError::Codec(CodecError::ControlTooLarge { len: 1, max: 0 }),
            TunnelError::NonceExhausted,
            TunnelError::InvalidState("x"),
            TunnelError::Backend,
        ]
    }

    #[test]
    fn every_code_is_in_the_wire_table() {
        for err in every_local_error() {
            let code = err.code();
            assert_eq!(
                ErrorCode::from_wire(code),
                Some(err.error_code()),
                "{err:?}"
            );
        }
    }

    #[test]
    fn codes_the_protocol_names() {
        assert_eq!(TunnelError::HandshakeFailed.code(), "handshake_failed");
        assert_eq!(TunnelError::KeyMismatch.code(), "key_mismatch");
        assert_eq!(TunnelError::UnknownDevice.code(), "device_revoked");
        assert_eq!(
            TunnelError::UnsupportedPattern(String::new()).code(),
            "unsupported_pattern"
        );
        assert_eq!(
            TunnelError::UnsupportedVersion.code(),
            "unsupported_version"
        );
        assert_eq!(TunnelError::DecryptFailed.code(), "decrypt_failed");
        assert_eq!(
            TunnelError::MalformedChunk { len: 0 }.code(),
            "malformed_frame"
        );
        assert_eq!(
            TunnelError::InvalidJson(String::new()).code(),
            "invalid_json"
        );
    }

    #[test]
    fn refusals_map_known_codes_back() {
        let refused = |code: &str| TunnelError::Refused {
            code: code.to_owned(),
            message: String::new(),
        };
        assert_eq!(refused("key_mismatch").code(), "key_mismatch");
        assert_eq!(refused("device_revoked").code(), "device_revoked");
        assert_eq!(refused("something_new").code(), "handshake_failed");
        assert_eq!(refused("").code(), "handshake_failed");
    }
}
