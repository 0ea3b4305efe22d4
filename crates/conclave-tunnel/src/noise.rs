//! Thin wrappers around snow's handshake state that fix our suite, our
//! prologue and our buffer sizes, and map its errors onto ours.

use snow::HandshakeState;

use crate::error::TunnelError;
use crate::keys::{KEY_LEN_BYTES, key_from_slice};
use crate::pattern::Pattern;
use crate::transport::Transport;
use crate::{NOISE_MESSAGE_MAX_BYTES, PROLOGUE};

/// A responder (server) handshake state for `pattern`.
pub(crate) fn build_responder(
    pattern: Pattern,
    server_private: &[u8; KEY_LEN_BYTES],
) -> Result<HandshakeState, TunnelError> {
    snow::Builder::new(pattern.noise_params()?)
        .prologue(PROLOGUE)
        .and_then(|builder| builder.local_private_key(server_private))
        .and_then(snow::Builder::build_responder)
        .map_err(|_| TunnelError::Backend)
}

/// An initiator (client) handshake state for `pattern`.
pub(crate) fn build_initiator(
    pattern: Pattern,
    device_private: &[u8; KEY_LEN_BYTES],
    server_public: &[u8; KEY_LEN_BYTES],
) -> Result<HandshakeState, TunnelError> {
    snow::Builder::new(pattern.noise_params()?)
        .prologue(PROLOGUE)
        .and_then(|builder| builder.local_private_key(device_private))
        .and_then(|builder| builder.remote_public_key(server_public))
        .and_then(snow::Builder::build_initiator)
        .map_err(|_| TunnelError::Backend)
}

/// Writes the next handshake message carrying `payload`.
pub(crate) fn write(state: &mut HandshakeState, payload: &[u8]) -> Result<Vec<u8>, TunnelError> {
    let mut message = vec![0_u8; NOISE_MESSAGE_MAX_BYTES];
    // Our payloads are tiny and the turn order is enforced by our own state
    // machines, so a failure here is local, not the peer's doing.
    let len = state
        .write_message(payload, &mut message)
        .map_err(|_| TunnelError::Backend)?;
    message.truncate(len);
    Ok(message)
}

/// Reads the peer's next handshake message and returns its payload.
pub(crate) fn read(state: &mut HandshakeState, message: &[u8]) -> Result<Vec<u8>, TunnelError> {
    if message.len() > NOISE_MESSAGE_MAX_BYTES {
        return Err(TunnelError::HandshakeFailed);
    }
    // The payload is never longer than the message that carries it.
    let mut payload = vec![0_u8; message.len()];
    let len = state
        .read_message(message, &mut payload)
        .map_err(|_| TunnelError::HandshakeFailed)?;
    payload.truncate(len);
    Ok(payload)
}

/// The peer's static key once the handshake has revealed it.
pub(crate) fn remote_static(state: &HandshakeState) -> Option<[u8; KEY_LEN_BYTES]> {
    state.get_remote_static().and_then(key_from_slice)
}

/// Switches a finished handshake to transport mode. `refusal_may_follow`
/// is set for an XK client, whose handshake ends with its own message: the
/// server's verdict on that message can only arrive afterwards, as a
/// plaintext `Goaway` where the first ciphertext would be.
pub(crate) fn into_transport(
    state: HandshakeState,
    refusal_may_follow: bool,
) -> Result<Transport, TunnelError> {
    if !state.is_handshake_finished() {
        return Err(TunnelError::InvalidState(
            "the noise handshake is not finished",
        ));
    }
    let handshake_hash = state
        .get_handshake_hash()
        .try_into()
        .map_err(|_| TunnelError::Backend)?;
    let remote_static = remote_static(&state);
    let transport = state
        .into_stateless_transport_mode()
        .map_err(|_| TunnelError::Backend)?;
    Ok(Transport::new(
        transport,
        handshake_hash,
        remote_static,
        refusal_may_follow,
    ))
}
