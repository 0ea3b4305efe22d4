//! X25519 static keys.

use std::fmt;

use zeroize::Zeroize;

use crate::error::TunnelError;
use crate::pattern::Pattern;

/// Length of an X25519 private or public key.
pub const KEY_LEN_BYTES: usize = 32;

/// An X25519 static key pair: the server's, or one device's.
///
/// The private half is wiped when the value is dropped, and `Debug` shows
/// only the public half, so logging a keypair cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Keypair {
    /// The secret scalar, as Noise and `x25519-dalek` store it (unclamped
    /// bytes; clamping happens at every use).
    pub private: [u8; KEY_LEN_BYTES],
    /// The public key, i.e. what the server registers or publishes.
    pub public: [u8; KEY_LEN_BYTES],
}

impl Keypair {
    /// Rebuilds a keypair from its private half.
    #[must_use]
    pub fn from_private(private: [u8; KEY_LEN_BYTES]) -> Self {
        let public = public_key_from_private(&private);
        Self { private, public }
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("public", &hex::encode(self.public))
            .finish_non_exhaustive()
    }
}

impl Drop for Keypair {
    fn drop(&mut self) {
        self.private.zeroize();
    }
}

/// Generates a fresh static keypair from OS randomness.
///
/// Meant for clients registering a device and for tests; the server's own
/// key is made by its secrets module. This is the only place in the crate
/// that asks for randomness explicitly (Noise ephemerals are drawn inside
/// snow).
///
/// # Errors
///
/// [`TunnelError::Backend`] if the random source or the DH implementation is
/// unavailable.
pub fn generate_keypair() -> Result<Keypair, TunnelError> {
    let generated = snow::Builder::new(Pattern::Xk.noise_params()?)
        .generate_keypair()
        .map_err(|_| TunnelError::Backend)?;
    let private: [u8; KEY_LEN_BYTES] = generated
        .private
        .as_slice()
        .try_into()
        .map_err(|_| TunnelError::Backend)?;
    let public: [u8; KEY_LEN_BYTES] = generated
        .public
        .as_slice()
        .try_into()
        .map_err(|_| TunnelError::Backend)?;
    let mut generated_private = generated.private;
    generated_private.zeroize();
    Ok(Keypair { private, public })
}

/// The X25519 public key of `private` (base point times clamped scalar),
/// exactly as Noise computes it.
#[must_use]
pub fn public_key_from_private(private: &[u8; KEY_LEN_BYTES]) -> [u8; KEY_LEN_BYTES] {
    let secret = x25519_dalek::StaticSecret::from(*private);
    x25519_dalek::PublicKey::from(&secret).to_bytes()
}

/// Compares two public keys without an early exit.
///
/// Public keys are not secret, but a timing-independent comparison costs
/// nothing and keeps a probing client from learning how many leading bytes
/// of a registered key it guessed.
pub(crate) fn keys_equal(a: &[u8; KEY_LEN_BYTES], b: &[u8; KEY_LEN_BYTES]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0_u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Copies a key that snow hands out as a slice.
pub(crate) fn key_from_slice(slice: &[u8]) -> Option<[u8; KEY_LEN_BYTES]> {
    slice.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_public_matches_derived_public() {
        let keypair = generate_keypair().expect("keygen");
        assert_eq!(public_key_from_private(&keypair.private), keypair.public);
        assert_eq!(Keypair::from_private(keypair.private), keypair);
        assert_ne!(keypair.private, [0; KEY_LEN_BYTES]);
    }

    #[test]
    fn rfc7748_test_vector() {
        // RFC 7748 section 6.1, Alice's key pair.
        let private: [u8; 32] =
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .expect("hex")
                .try_into()
                .expect("len");
        assert_eq!(
            hex::encode(public_key_from_private(&private)),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn debug_hides_the_private_key() {
        let keypair = Keypair::from_private([7; KEY_LEN_BYTES]);
        let shown = format!("{keypair:?}");
        assert!(shown.contains(&hex::encode(keypair.public)));
        assert!(!shown.contains(&hex::encode(keypair.private)));
        assert!(!shown.contains("private"));
    }

    #[test]
    fn key_comparison() {
        let a = [1; KEY_LEN_BYTES];
        let mut b = a;
        assert!(keys_equal(&a, &b));
        b[31] ^= 0x80;
        assert!(!keys_equal(&a, &b));
    }
}
