//! The server's side of the handshake.

use conclave_protocol::{Frame, FrameType};
use snow::HandshakeState;

use crate::SUPPORTED_PROTOCOL_VERSIONS;
use crate::error::TunnelError;
use crate::keys::{KEY_LEN_BYTES, keys_equal};
use crate::messages::{
    AcceptPayload, AuthPayload, ClaimPayload, HelloPayload, SUPPORTED_VERSIONS_MAX_COUNT,
    decode_handshake_hex, expect_frame, frame_json, handshake_frame, noise_payload_json,
    parse_device_id,
};
use crate::noise;
use crate::pattern::Pattern;
use crate::transport::Transport;

/// What the client claims in its first message, before anything is proven
/// beyond "someone who knows the server's public key sent this".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientClaim {
    /// The handshake the client chose.
    pub pattern: Pattern,
    /// The device the client says it is; look its registered key up and
    /// pass it to [`ResponderHandshake::accept`].
    pub device_id: u64,
    /// Protocol versions the client speaks, as sent.
    pub supported_versions: Vec<u32>,
    /// IK only: the static key the client presented, already proven (the
    /// message decrypted under `ss`). `None` for XK, where the key arrives
    /// in message 3.
    pub remote_static: Option<[u8; KEY_LEN_BYTES]>,
}

/// Where a responder is in its handshake.
enum State {
    /// Message 1 read; waiting for the I/O layer's device lookup.
    AwaitingAccept(Box<HandshakeState>),
    /// XK: message 2 sent; waiting for message 3 from the device whose
    /// registered key is kept here.
    AwaitingFinish {
        noise: Box<HandshakeState>,
        registered_key: [u8; KEY_LEN_BYTES],
    },
    /// The device proved the registered key; ready for transport mode.
    Complete(Box<HandshakeState>),
    /// A step failed. The connection must end with a `Goaway`; no further
    /// step is possible.
    Failed,
}

/// The server's handshake state machine.
///
/// Sans-IO: the caller moves frames and performs the device lookup. The
/// sequence is [`start`](Self::start) with the client's `Hello`, then
/// [`accept`](Self::accept) with the claimed device's registered key (its
/// result is the `Auth` frame to send), then for XK
/// [`finish`](Self::finish) with the client's `Auth`. Any error leaves the
/// machine failed; answer it with [`TunnelError::to_goaway`] and close.
pub struct ResponderHandshake {
    state: State,
    pattern: Pattern,
    device_id: u64,
    protocol_version: u32,
}

impl std::fmt::Debug for ResponderHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::AwaitingAccept(_) => "awaiting_accept",
            State::AwaitingFinish { .. } => "awaiting_finish",
            State::Complete(_) => "complete",
            State::Failed => "failed",
        };
        f.debug_struct("ResponderHandshake")
            .field("state", &state)
            .field("pattern", &self.pattern)
            .field("device_id", &self.device_id)
            .field("protocol_version", &self.protocol_version)
            .finish()
    }
}

impl ResponderHandshake {
    /// Reads the client's `Hello` (Noise message 1) and returns what the
    /// client claims.
    ///
    /// Versions are negotiated here, so a client that shares none is
    /// refused before the server spends a database lookup on it.
    ///
    /// # Errors
    ///
    /// `invalid_json`, `unsupported_pattern`, `unsupported_version`, or
    /// `handshake_failed`: a wrong frame, bad or oversized hex, a bad device
    /// id or too many versions, or a message Noise rejects (e.g. the client
    /// pinned another server key).
    pub fn start(
        server_private: &[u8; KEY_LEN_BYTES],
        hello: &Frame,
    ) -> Result<(Self, ClientClaim), TunnelError> {
        expect_frame(hello, FrameType::Hello)?;
        let body: HelloPayload = frame_json(hello)?;
        let pattern: Pattern = body.pattern.parse()?;
        let message = decode_handshake_hex(&body.handshake)?;

        let mut state = noise::build_responder(pattern, server_private)?;
        let payload = noise::read(&mut state, &message)?;
        let claim: ClaimPayload = noise_payload_json(&payload)?;
        let device_id = parse_device_id(&claim.device_id)?;
        if claim.supported_versions.len() > SUPPORTED_VERSIONS_MAX_COUNT {
            return Err(TunnelError::MalformedHandshake(
                "supported_versions lists too many versions",
            ));
        }
        let protocol_version = SUPPORTED_PROTOCOL_VERSIONS
            .iter()
            .copied()
            .filter(|version| claim.supported_versions.contains(version))
            .max()
            .ok_or(TunnelError::UnsupportedVersion)?;

        let remote_static = match pattern {
            Pattern::Ik => Some(noise::remote_static(&state).ok_or(TunnelError::HandshakeFailed)?),
            Pattern::Xk => None,
        };
        let claim = ClientClaim {
            pattern,
            device_id,
            supported_versions: claim.supported_versions,
            remote_static,
        };
        let responder = Self {
            state: State::AwaitingAccept(Box::new(state)),
            pattern,
            device_id,
            protocol_version,
        };
        Ok((responder, claim))
    }

    /// Continues after the device lookup and returns the `Auth` frame
    /// (Noise message 2) to send.
    ///
    /// `registered_key` is the key the claimed device registered, or `None`
    /// if the device is unknown or revoked. For IK the presented key is
    /// checked here, before anything is sent, and the handshake is then
    /// complete; for XK the check happens in [`finish`](Self::finish).
    ///
    /// # Errors
    ///
    /// `device_revoked` (no registered key), `key_mismatch` (IK), `internal` if called out of
    /// order.
    pub fn accept(
        &mut self,
        registered_key: Option<&[u8; KEY_LEN_BYTES]>,
    ) -> Result<Frame, TunnelError> {
        let State::AwaitingAccept(mut state) = std::mem::replace(&mut self.state, State::Failed)
        else {
            return Err(TunnelError::InvalidState(
                "accept called outside the awaiting-accept step",
            ));
        };
        let registered_key = *registered_key.ok_or(TunnelError::UnknownDevice)?;
        if self.pattern == Pattern::Ik {
            let presented = noise::remote_static(&state).ok_or(TunnelError::HandshakeFailed)?;
            if !keys_equal(&presented, &registered_key) {
                return Err(TunnelError::KeyMismatch);
            }
        }

        let payload = serde_json::to_vec(&AcceptPayload {
            protocol_version: self.protocol_version,
        })
        .map_err(|_| TunnelError::Backend)?;
        let message = noise::write(&mut state, &payload)?;
        let frame = handshake_frame(
            FrameType::Auth,
            &AuthPayload {
                handshake: hex::encode(message),
            },
        )?;

        self.state = match self.pattern {
            Pattern::Ik => State::Complete(state),
            Pattern::Xk => State::AwaitingFinish {
                noise: state,
                registered_key,
            },
        };
        Ok(frame)
    }

    /// XK only: reads the client's `Auth` frame (Noise message 3) and
    /// checks that the static key it proves is the registered one.
    ///
    /// # Errors
    ///
    /// `invalid_json`, `handshake_failed` (wrong frame, bad hex, a message
    /// Noise rejects, a non-empty payload), `key_mismatch`; `internal` if
    /// called for IK or out of order.
    pub fn finish(&mut self, auth: &Frame) -> Result<(), TunnelError> {
        let State::AwaitingFinish {
            noise: mut state,
            registered_key,
        } = std::mem::replace(&mut self.state, State::Failed)
        else {
            return Err(TunnelError::InvalidState(
                "finish called outside the XK awaiting-finish step",
            ));
        };
        expect_frame(auth, FrameType::Auth)?;
        let body: AuthPayload = frame_json(auth)?;
        let message = decode_handshake_hex(&body.handshake)?;
        let payload = noise::read(&mut state, &message)?;
        if !payload.is_empty() {
            // Nothing is defined to go here; refusing keeps it that way
            // until a version says otherwise.
            return Err(TunnelError::MalformedHandshake(
                "message 3 must carry an empty payload",
            ));
        }
        let presented = noise::remote_static(&state).ok_or(TunnelError::HandshakeFailed)?;
        if !keys_equal(&presented, &registered_key) {
            return Err(TunnelError::KeyMismatch);
        }
        self.state = State::Complete(state);
        Ok(())
    }

    /// Whether the device has proven its registered key and transport mode
    /// may begin.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        matches!(self.state, State::Complete(_))
    }

    /// Whether a step failed; the connection must be closed.
    #[must_use]
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// The handshake the client chose.
    #[must_use]
    pub fn pattern(&self) -> Pattern {
        self.pattern
    }

    /// The device the client claims to be (proven once complete).
    #[must_use]
    pub fn device_id(&self) -> u64 {
        self.device_id
    }

    /// The negotiated protocol version.
    #[must_use]
    pub fn protocol_version(&self) -> u32 {
        self.protocol_version
    }

    /// Switches to transport mode.
    ///
    /// # Errors
    ///
    /// `internal` if the handshake is not complete.
    pub fn into_transport(self) -> Result<Transport, TunnelError> {
        match self.state {
            State::Complete(state) => noise::into_transport(*state, false),
            _ => Err(TunnelError::InvalidState(
                "into_transport called before the handshake completed",
            )),
        }
    }
}
