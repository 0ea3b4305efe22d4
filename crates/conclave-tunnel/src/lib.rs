//! Sans-IO Noise tunnel for Conclave's TCP transport.
//!
//! Two handshakes, `Noise_XK_25519_ChaChaPoly_BLAKE2s` and
//! `Noise_IK_25519_ChaChaPoly_BLAKE2s` with the prologue `conclave/1`,
//! authenticate the server by the static key clients pin and the device by
//! the static key it registered at login: the server refuses any handshake
//! whose proven static key is not the claimed device's registered key.
//! After the handshake, CCP-1 frames travel as a byte stream cut into Noise
//! transport messages of at most [`NOISE_PLAINTEXT_MAX_BYTES`] plaintext,
//! each behind a big-endian `u16` length.
//!
//! Like `conclave-protocol`, this crate performs no I/O and reads no clock:
//! callers move frames and bytes and do the device lookup. The only
//! randomness is the Noise ephemeral keys that snow draws internally (and
//! [`generate_keypair`] for clients and tests). Every buffer fed by the
//! peer is bounded by a constant below, and nothing a peer sends can make
//! it panic. The wire format is specified in `docs/PROTOCOL.md`, section 12.

mod error;
mod initiator;
mod keys;
mod messages;
mod noise;
mod pattern;
mod responder;
mod transport;

pub use conclave_protocol::NOISE_PLAINTEXT_MAX_BYTES;
pub use error::TunnelError;
pub use initiator::InitiatorHandshake;
pub use keys::{KEY_LEN_BYTES, Keypair, generate_keypair, public_key_from_private};
pub use messages::{GOAWAY_MESSAGE_MAX_BYTES, SUPPORTED_VERSIONS_MAX_COUNT, goaway};
pub use pattern::Pattern;
pub use responder::{ClientClaim, ResponderHandshake};
pub use transport::{CHUNK_OVERHEAD_BYTES, Opener, Sealer, Transport};

/// Hashed into every handshake, so a peer speaking another protocol (or
/// another version of this one) fails at the first authentication tag
/// instead of being misread.
pub const PROLOGUE: &[u8] = b"conclave/1";

/// Protocol versions this implementation speaks, offered by clients in
/// message 1 and chosen from by servers (the highest common one).
pub const SUPPORTED_PROTOCOL_VERSIONS: &[u32] = &[conclave_protocol::PROTOCOL_VERSION];

/// Largest Noise message of any kind: 65,535 bytes (the Noise spec's limit,
/// which is also what a `u16` length prefix can express).
pub const NOISE_MESSAGE_MAX_BYTES: usize = 65_535;

/// The ChaChaPoly authentication tag on every encrypted Noise payload.
pub const NOISE_TAG_LEN_BYTES: usize = 16;

/// Longest `handshake` hex string accepted: two digits per byte of the
/// largest Noise message. Checked before decoding, so a huge string costs
/// no allocation beyond the frame that carried it.
pub const HANDSHAKE_HEX_MAX_BYTES: usize = 2 * NOISE_MESSAGE_MAX_BYTES;

/// The length prefix in front of each transport ciphertext.
pub const CHUNK_LEN_PREFIX_BYTES: usize = 2;

/// Most ciphertext an [`Opener`] buffers: one maximal chunk and its prefix,
/// 65,537 bytes.
pub const CIPHERTEXT_BUFFER_MAX_BYTES: usize = CHUNK_LEN_PREFIX_BYTES + NOISE_MESSAGE_MAX_BYTES;

/// Length of the BLAKE2s handshake hash.
pub const HANDSHAKE_HASH_LEN_BYTES: usize = 32;
