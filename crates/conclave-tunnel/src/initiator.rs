//! The client's side of the handshake.

use conclave_protocol::{Frame, FrameType};
use snow::HandshakeState;

use crate::SUPPORTED_PROTOCOL_VERSIONS;
use crate::error::TunnelError;
use crate::keys::{KEY_LEN_BYTES, Keypair};
use crate::messages::{
    AcceptPayload, AuthPayload, ClaimPayload, HelloPayload, decode_handshake_hex, expect_frame,
    frame_json, handshake_frame, noise_payload_json, refusal_from_goaway,
};
use crate::noise;
use crate::pattern::Pattern;
use crate::transport::Transport;

/// Where an initiator is in its handshake.
enum State {
    /// `Hello` sent; waiting for the server's `Auth` or `Goaway`.
    AwaitingAuth(Box<HandshakeState>),
    /// The handshake is finished on our side.
    Complete(Box<HandshakeState>),
    /// A step failed; the connection must be closed.
    Failed,
}

/// The client's handshake state machine (used by the Rust SDK and tests).
///
/// [`start`](Self::start) produces the `Hello` frame; feed the server's
/// answer to [`on_auth`](Self::on_auth), send the frame it returns (XK),
/// then switch to [`into_transport`](Self::into_transport).
pub struct InitiatorHandshake {
    state: State,
    pattern: Pattern,
    protocol_version: Option<u32>,
}

impl std::fmt::Debug for InitiatorHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::AwaitingAuth(_) => "awaiting_auth",
            State::Complete(_) => "complete",
            State::Failed => "failed",
        };
        f.debug_struct("InitiatorHandshake")
            .field("state", &state)
            .field("pattern", &self.pattern)
            .field("protocol_version", &self.protocol_version)
            .finish()
    }
}

impl InitiatorHandshake {
    /// Begins a handshake as `device_id` with the device's static key,
    /// authenticating the server by its pinned `server_public` key.
    /// Returns the `Hello` frame to send.
    ///
    /// # Errors
    ///
    /// `internal` if the Noise backend fails locally.
    pub fn start(
        pattern: Pattern,
        device: &Keypair,
        server_public: &[u8; KEY_LEN_BYTES],
        device_id: u64,
    ) -> Result<(Self, Frame), TunnelError> {
        let mut state = noise::build_initiator(pattern, &device.private, server_public)?;
        let claim = ClaimPayload {
            device_id: device_id.to_string(),
            supported_versions: SUPPORTED_PROTOCOL_VERSIONS.to_vec(),
        };
        let payload = serde_json::to_vec(&claim).map_err(|_| TunnelError::Backend)?;
        let message = noise::write(&mut state, &payload)?;
        let hello = handshake_frame(
            FrameType::Hello,
            &HelloPayload {
                pattern: pattern.as_str().to_owned(),
                handshake: hex::encode(message),
            },
        )?;
        let initiator = Self {
            state: State::AwaitingAuth(Box::new(state)),
            pattern,
            protocol_version: None,
        };
        Ok((initiator, hello))
    }

    /// Handles the server's answer to `Hello`.
    ///
    /// Returns the `Auth` frame carrying Noise message 3 for XK, which must
    /// be sent before any transport data, and `None` for IK, which is
    /// complete after two messages and must not send a third.
    ///
    /// # Errors
    ///
    /// A `Goaway` becomes [`TunnelError::Refused`] with the server's code
    /// and message. Otherwise `invalid_json`, `unsupported_version`, or
    /// `handshake_failed` (a wrong frame, bad hex, a message Noise rejects,
    /// e.g. because the server is not the pinned one).
    pub fn on_auth(&mut self, frame: &Frame) -> Result<Option<Frame>, TunnelError> {
        let State::AwaitingAuth(mut state) = std::mem::replace(&mut self.state, State::Failed)
        else {
            return Err(TunnelError::InvalidState(
                "on_auth called outside the awaiting-auth step",
            ));
        };
        if frame.frame_type == FrameType::Goaway {
            return Err(refusal_from_goaway(frame));
        }
        expect_frame(frame, FrameType::Auth)?;
        let body: AuthPayload = frame_json(frame)?;
        let message = decode_handshake_hex(&body.handshake)?;
        let payload = noise::read(&mut state, &message)?;
        let accepted: AcceptPayload = noise_payload_json(&payload)?;
        if !SUPPORTED_PROTOCOL_VERSIONS.contains(&accepted.protocol_version) {
            return Err(TunnelError::UnsupportedVersion);
        }

        let reply = match self.pattern {
            Pattern::Ik => None,
            Pattern::Xk => {
                let message = noise::write(&mut state, &[])?;
                Some(handshake_frame(
                    FrameType::Auth,
                    &AuthPayload {
                        handshake: hex::encode(message),
                    },
                )?)
            }
        };
        if !state.is_handshake_finished() {
            return Err(TunnelError::InvalidState(
                "noise handshake unfinished after the last message",
            ));
        }
        self.protocol_version = Some(accepted.protocol_version);
        self.state = State::Complete(state);
        Ok(reply)
    }

    /// The version the server chose, once its `Auth` was accepted.
    #[must_use]
    pub fn protocol_version(&self) -> Option<u32> {
        self.protocol_version
    }

    /// The handshake this client runs.
    #[must_use]
    pub fn pattern(&self) -> Pattern {
        self.pattern
    }

    /// Whether the handshake is finished on this side.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        matches!(self.state, State::Complete(_))
    }

    /// Switches to transport mode.
    ///
    /// # Errors
    ///
    /// `internal` if the handshake is not complete.
    pub fn into_transport(self) -> Result<Transport, TunnelError> {
        match self.state {
            State::Complete(state) => noise::into_transport(*state, self.pattern == Pattern::Xk),
            _ => Err(TunnelError::InvalidState(
                "into_transport called before the handshake completed",
            )),
        }
    }
}
