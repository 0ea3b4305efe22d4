//! Transport mode: CCP-1 frames as a byte stream, cut into chunks that
//! are each one Noise transport message behind a `u16` length.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use conclave_protocol::{Decoded, Frame, FrameDecoder, NOISE_PLAINTEXT_MAX_BYTES, decode_frame};
use snow::StatelessTransportState;

use crate::error::TunnelError;
use crate::keys::KEY_LEN_BYTES;
use crate::messages::parse_refusal;
use crate::{
    CHUNK_LEN_PREFIX_BYTES, CIPHERTEXT_BUFFER_MAX_BYTES, HANDSHAKE_HASH_LEN_BYTES,
    NOISE_TAG_LEN_BYTES,
};

/// Bytes a chunk adds to the plaintext it carries: the length prefix and
/// the authentication tag.
pub const CHUNK_OVERHEAD_BYTES: usize = CHUNK_LEN_PREFIX_BYTES + NOISE_TAG_LEN_BYTES;

/// Noise reserves the last nonce (2^64 - 1) for rekeying; no message may
/// use it.
const NONCE_LIMIT: u64 = u64::MAX;

/// The encrypted transport of one connection.
///
/// Noise transport nonces are implicit counters, one per direction, so each
/// direction must see its messages exactly once and in order. The two
/// directions are independent: [`Transport::split`] gives a [`Sealer`] for
/// the writer task and an [`Opener`] for the reader task, and neither needs
/// a lock (they share the immutable cipher keys behind an `Arc`).
#[derive(Debug)]
pub struct Transport {
    sealer: Sealer,
    opener: Opener,
    handshake_hash: [u8; HANDSHAKE_HASH_LEN_BYTES],
    remote_static: Option<[u8; KEY_LEN_BYTES]>,
}

impl Transport {
    pub(crate) fn new(
        noise: StatelessTransportState,
        handshake_hash: [u8; HANDSHAKE_HASH_LEN_BYTES],
        remote_static: Option<[u8; KEY_LEN_BYTES]>,
        refusal_may_follow: bool,
    ) -> Self {
        let noise = Arc::new(noise);
        Self {
            sealer: Sealer {
                noise: Arc::clone(&noise),
                nonce: 0,
                failed: false,
            },
            opener: Opener {
                noise,
                nonce: 0,
                ciphertext: BytesMut::new(),
                pending: Bytes::new(),
                decoder: FrameDecoder::new(),
                poisoned: None,
                refusal_may_follow,
            },
            handshake_hash,
            remote_static,
        }
    }

    /// Encrypts the encoded bytes of one or more frames, appending
    /// `u16 len | ciphertext` chunks to `out`. See [`Sealer::seal`].
    ///
    /// # Errors
    ///
    /// See [`Sealer::seal`].
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), TunnelError> {
        self.sealer.seal(plaintext, out)
    }

    /// Encodes `frame` and seals it. See [`Sealer::seal_frame`].
    ///
    /// # Errors
    ///
    /// See [`Sealer::seal_frame`].
    pub fn seal_frame(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), TunnelError> {
        self.sealer.seal_frame(frame, out)
    }

    /// Feeds received bytes. See [`Opener::push_ciphertext`].
    ///
    /// # Errors
    ///
    /// See [`Opener::push_ciphertext`].
    pub fn push_ciphertext(&mut self, data: &[u8]) -> Result<(), TunnelError> {
        self.opener.push_ciphertext(data)
    }

    /// Returns the next decrypted frame. See [`Opener::next_frame`].
    ///
    /// # Errors
    ///
    /// See [`Opener::next_frame`].
    pub fn next_frame(&mut self) -> Result<Option<Frame>, TunnelError> {
        self.opener.next_frame()
    }

    /// How many bytes [`Transport::push_ciphertext`] accepts right now.
    #[must_use]
    pub fn remaining_ciphertext_capacity(&self) -> usize {
        self.opener.remaining_ciphertext_capacity()
    }

    /// Transport messages sent so far. See [`Sealer::messages_sealed`].
    #[must_use]
    pub fn messages_sealed(&self) -> u64 {
        self.sealer.messages_sealed()
    }

    /// Transport messages decrypted so far. See [`Opener::messages_opened`].
    #[must_use]
    pub fn messages_opened(&self) -> u64 {
        self.opener.messages_opened()
    }

    /// The Noise handshake hash: a value unique to this session that both
    /// sides know, for binding other credentials to the tunnel.
    #[must_use]
    pub fn handshake_hash(&self) -> &[u8; HANDSHAKE_HASH_LEN_BYTES] {
        &self.handshake_hash
    }

    /// The peer's static key: the device key on the server, the server key
    /// on the client.
    #[must_use]
    pub fn remote_static(&self) -> Option<&[u8; KEY_LEN_BYTES]> {
        self.remote_static.as_ref()
    }

    /// Splits into independent send and receive halves.
    #[must_use]
    pub fn split(self) -> (Sealer, Opener) {
        (self.sealer, self.opener)
    }
}

/// The sending half of a [`Transport`].
pub struct Sealer {
    noise: Arc<StatelessTransportState>,
    nonce: u64,
    failed: bool,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("nonce", &self.nonce)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// Encrypts `plaintext` (the encoded bytes of one or more frames) and
    /// appends it to `out` as chunks of `u16 BE ciphertext length |
    /// ciphertext`, each carrying at most [`NOISE_PLAINTEXT_MAX_BYTES`] of
    /// plaintext. Chunk boundaries need not match frame boundaries; the
    /// receiver reassembles the stream. Empty input appends nothing.
    ///
    /// # Errors
    ///
    /// `internal` if the nonce space is exhausted or encryption fails. On
    /// error `out` is left as it was and the sealer refuses all further
    /// work, since the peer would now be out of step.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), TunnelError> {
        if self.failed {
            return Err(TunnelError::InvalidState("the sealer failed earlier"));
        }
        let start_len = out.len();
        let result = self.seal_chunks(plaintext, out);
        if result.is_err() {
            out.truncate(start_len);
            self.failed = true;
        }
        result
    }

    /// Encodes `frame` and seals its bytes.
    ///
    /// # Errors
    ///
    /// The frame's limit errors (`frame_too_large`, `payload_too_large`),
    /// leaving the sealer usable, or those of [`Sealer::seal`].
    pub fn seal_frame(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), TunnelError> {
        let encoded = frame.encode()?;
        self.seal(&encoded, out)
    }

    /// Transport messages sent so far (the next nonce).
    #[must_use]
    pub fn messages_sealed(&self) -> u64 {
        self.nonce
    }

    fn seal_chunks(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), TunnelError> {
        let chunk_count = plaintext.len().div_ceil(NOISE_PLAINTEXT_MAX_BYTES);
        out.reserve(
            plaintext
                .len()
                .saturating_add(chunk_count.saturating_mul(CHUNK_OVERHEAD_BYTES)),
        );
        for chunk in plaintext.chunks(NOISE_PLAINTEXT_MAX_BYTES) {
            if self.nonce == NONCE_LIMIT {
                return Err(TunnelError::NonceExhausted);
            }
            let ciphertext_len = chunk.len().saturating_add(NOISE_TAG_LEN_BYTES);
            // At most 65,519 + 16 = 65,535, so the prefix always fits.
            let prefix = u16::try_from(ciphertext_len).map_err(|_| TunnelError::Backend)?;
            out.extend_from_slice(&prefix.to_be_bytes());
            let at = out.len();
            out.resize(at.saturating_add(ciphertext_len), 0);
            let destination = out.get_mut(at..).unwrap_or_default();
            let written = self
                .noise
                .write_message(self.nonce, chunk, destination)
                .map_err(|_| TunnelError::Backend)?;
            if written != ciphertext_len {
                return Err(TunnelError::Backend);
            }
            self.nonce = self.nonce.saturating_add(1);
        }
        Ok(())
    }
}

/// The receiving half of a [`Transport`].
///
/// Memory is bounded: at most [`CIPHERTEXT_BUFFER_MAX_BYTES`] of
/// ciphertext, one chunk of decrypted plaintext
/// ([`NOISE_PLAINTEXT_MAX_BYTES`]) and the frame decoder's own bound
/// ([`conclave_protocol::DECODER_BUFFER_MAX_BYTES`]). The first error
/// poisons it: every later call returns that error again.
pub struct Opener {
    noise: Arc<StatelessTransportState>,
    nonce: u64,
    /// Received bytes not yet decrypted: at most one whole chunk plus the
    /// start of the next once [`Opener::next_frame`] has returned `None`.
    ciphertext: BytesMut,
    /// Decrypted bytes the frame decoder had no room for yet.
    pending: Bytes,
    decoder: FrameDecoder,
    poisoned: Option<TunnelError>,
    /// XK client: until the first chunk decrypts, the server may still
    /// refuse our message 3 with a plaintext `Goaway`.
    refusal_may_follow: bool,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("nonce", &self.nonce)
            .field("ciphertext_len", &self.ciphertext.len())
            .field("pending_len", &self.pending.len())
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Opener {
    /// Appends received ciphertext bytes, which may cut chunks anywhere.
    ///
    /// Read at most [`Opener::remaining_ciphertext_capacity`] bytes from the
    /// socket before each push, and drain [`Opener::next_frame`] until it
    /// returns `None` before reading again; that capacity is then never
    /// zero.
    ///
    /// # Errors
    ///
    /// `frame_too_large` if `data` exceeds the remaining capacity (nothing
    /// is appended), or the error that poisoned the opener.
    pub fn push_ciphertext(&mut self, data: &[u8]) -> Result<(), TunnelError> {
        if let Some(err) = &self.poisoned {
            return Err(err.clone());
        }
        let len = self.ciphertext.len().saturating_add(data.len());
        if len > CIPHERTEXT_BUFFER_MAX_BYTES {
            return Err(self.poison(TunnelError::CiphertextBufferFull {
                len,
                max: CIPHERTEXT_BUFFER_MAX_BYTES,
            }));
        }
        self.ciphertext.extend_from_slice(data);
        Ok(())
    }

    /// Decrypts complete chunks as needed and returns the next complete
    /// frame, or `None` once everything received so far is consumed.
    ///
    /// # Errors
    ///
    /// `malformed_frame` for a chunk length below the tag size,
    /// `decrypt_failed` for a chunk that fails authentication (tampered,
    /// replayed, reordered or preceded by a lost one), any CCP-1 framing
    /// error of the decrypted stream, `internal` once 2^64 - 1 messages
    /// arrived; all fatal.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, TunnelError> {
        if let Some(err) = &self.poisoned {
            return Err(err.clone());
        }
        match self.advance() {
            Ok(frame) => Ok(frame),
            Err(err) => Err(self.poison(err)),
        }
    }

    /// How many bytes [`Opener::push_ciphertext`] accepts right now; zero
    /// once poisoned.
    #[must_use]
    pub fn remaining_ciphertext_capacity(&self) -> usize {
        if self.poisoned.is_some() {
            0
        } else {
            CIPHERTEXT_BUFFER_MAX_BYTES.saturating_sub(self.ciphertext.len())
        }
    }

    /// Transport messages decrypted so far. Non-zero proves the peer
    /// completed the handshake live: for IK the server's handshake ends
    /// after a message 1 that could be a replay, and only a decrypted
    /// transport message shows the client holds the session keys.
    #[must_use]
    pub fn messages_opened(&self) -> u64 {
        self.nonce
    }

    /// The error that ended decryption, if any.
    #[must_use]
    pub fn error(&self) -> Option<&TunnelError> {
        self.poisoned.as_ref()
    }

    fn advance(&mut self) -> Result<Option<Frame>, TunnelError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            if !self.pending.is_empty() {
                // Hand the decoder only what it can hold: the tail of a
                // chunk may start frames it has no room for until the
                // current one has been taken out.
                // A full decoder with no complete frame cannot happen with
                // valid frames; pushing everything then lets the decoder
                // report its own `frame_too_large`.
                let room = self.decoder.remaining_capacity();
                let take = if room == 0 {
                    self.pending.len()
                } else {
                    room.min(self.pending.len())
                };
                let piece = self.pending.split_to(take);
                self.decoder.push(&piece)?;
                continue;
            }
            if self.refusal_may_follow && self.nonce == 0 {
                self.check_plaintext_refusal()?;
            }
            match self.open_chunk()? {
                Some(plaintext) => self.pending = plaintext,
                None => return Ok(None),
            }
        }
    }

    /// Reports a plaintext `Goaway` sitting where the first ciphertext
    /// should be. Read as a chunk it would look like a length prefix of
    /// thousands of bytes that never come, and the client would see a
    /// silent close instead of the server's reason. Random ciphertext
    /// cannot plausibly form a Goaway frame with a JSON `code`, and an
    /// on-path attacker who forges one could as well cut the connection, so
    /// believing it costs nothing.
    fn check_plaintext_refusal(&self) -> Result<(), TunnelError> {
        if let Ok(Decoded::Frame { frame, .. }) = decode_frame(&self.ciphertext) {
            if let Some(refusal) = parse_refusal(&frame) {
                return Err(refusal);
            }
        }
        Ok(())
    }

    /// Decrypts the chunk at the front of the buffer, if it is complete.
    fn open_chunk(&mut self) -> Result<Option<Bytes>, TunnelError> {
        let Some(prefix) = self.ciphertext.get(..CHUNK_LEN_PREFIX_BYTES) else {
            return Ok(None);
        };
        let prefix: [u8; CHUNK_LEN_PREFIX_BYTES] = prefix
            .try_into()
            .map_err(|_| TunnelError::InvalidState("chunk prefix slice has the wrong length"))?;
        let ciphertext_len = usize::from(u16::from_be_bytes(prefix));
        // Checked as soon as the prefix is readable, not when the chunk
        // is complete: no reason to wait for bytes we will refuse anyway.
        if ciphertext_len < NOISE_TAG_LEN_BYTES {
            return Err(TunnelError::MalformedChunk {
                len: ciphertext_len,
            });
        }
        if self.ciphertext.len() < CHUNK_LEN_PREFIX_BYTES.saturating_add(ciphertext_len) {
            return Ok(None);
        }
        if self.nonce == NONCE_LIMIT {
            return Err(TunnelError::NonceExhausted);
        }
        self.ciphertext.advance(CHUNK_LEN_PREFIX_BYTES);
        let ciphertext = self.ciphertext.split_to(ciphertext_len);
        let mut plaintext = vec![0_u8; ciphertext_len.saturating_sub(NOISE_TAG_LEN_BYTES)];
        let len = self
            .noise
            .read_message(self.nonce, &ciphertext, &mut plaintext)
            .map_err(|_| TunnelError::DecryptFailed)?;
        plaintext.truncate(len);
        self.nonce = self.nonce.saturating_add(1);
        Ok(Some(Bytes::from(plaintext)))
    }

    fn poison(&mut self, err: TunnelError) -> TunnelError {
        // Nothing buffered will ever be delivered; do not hold on to it.
        self.ciphertext = BytesMut::new();
        self.pending = Bytes::new();
        self.decoder = FrameDecoder::new();
        self.poisoned = Some(err.clone());
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn halves_can_move_to_other_threads() {
        assert_send_sync::<Transport>();
        assert_send_sync::<Sealer>();
        assert_send_sync::<Opener>();
    }

    #[test]
    fn constants_agree_with_noise() {
        assert_eq!(
            NOISE_PLAINTEXT_MAX_BYTES + NOISE_TAG_LEN_BYTES,
            usize::from(u16::MAX)
        );
        assert_eq!(CHUNK_OVERHEAD_BYTES, 18);
        assert_eq!(CIPHERTEXT_BUFFER_MAX_BYTES, 65_537);
    }
}
