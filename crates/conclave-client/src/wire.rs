//! Wire formats and the sockets under them.
//!
//! - [`json`]: JSON envelopes in WebSocket text messages.
//! - [`framed`]: CCP-1 frames over any [`framed::FrameTransport`]; the
//!   WebSocket binary mode is one such transport ([`ws::WsFrames`]), TCP
//!   with a Noise tunnel ([`noise::NoiseFrames`]) and a QUIC stream
//!   ([`quic::QuicFrames`]) are the others, sharing all of the RPC and
//!   event handling.

pub(crate) mod framed;
pub(crate) mod json;
pub(crate) mod noise;
pub(crate) mod quic;
pub(crate) mod ws;
