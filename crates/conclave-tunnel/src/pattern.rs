//! The two Noise handshakes a client may choose.

use std::fmt;
use std::str::FromStr;

use snow::params::NoiseParams;

use crate::error::TunnelError;

/// Which Noise handshake the client runs.
///
/// Both authenticate the server by its pinned static key and the device by
/// its registered static key. XK takes three messages and reveals the
/// device's static key only after the server proved itself; IK takes two
/// (the client can send data one round trip earlier) at the price of
/// sending the static key in the first message, encrypted to the server's
/// key only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// `Noise_XK_25519_ChaChaPoly_BLAKE2s`: three messages.
    Xk,
    /// `Noise_IK_25519_ChaChaPoly_BLAKE2s`: two messages.
    Ik,
}

impl Pattern {
    /// The value of the Hello frame's `pattern` field.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Xk => "XK",
            Self::Ik => "IK",
        }
    }

    /// The full Noise protocol name, which both sides hash into the
    /// handshake, so a peer running another suite fails at the first MAC.
    #[must_use]
    pub const fn noise_name(self) -> &'static str {
        match self {
            Self::Xk => "Noise_XK_25519_ChaChaPoly_BLAKE2s",
            Self::Ik => "Noise_IK_25519_ChaChaPoly_BLAKE2s",
        }
    }

    /// Number of Noise messages in the handshake.
    #[must_use]
    pub const fn message_count(self) -> usize {
        match self {
            Self::Xk => 3,
            Self::Ik => 2,
        }
    }

    pub(crate) fn noise_params(self) -> Result<NoiseParams, TunnelError> {
        // Only fails if snow was built without the primitives we name,
        // which is a build problem, not a peer problem.
        self.noise_name().parse().map_err(|_| TunnelError::Backend)
    }
}

impl FromStr for Pattern {
    type Err = TunnelError;

    /// Exact, case-sensitive names only: one spelling per pattern.
    fn from_str(name: &str) -> Result<Self, TunnelError> {
        match name {
            "XK" => Ok(Self::Xk),
            "IK" => Ok(Self::Ik),
            other => Err(TunnelError::UnsupportedPattern(
                other
                    .chars()
                    .take(UNSUPPORTED_NAME_SHOWN_MAX_CHARS)
                    .collect(),
            )),
        }
    }
}

/// How much of an unknown pattern name is kept in the error: enough to
/// recognise it in a log, never a copy of an arbitrarily long string.
const UNSUPPORTED_NAME_SHOWN_MAX_CHARS: usize = 32;

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for pattern in [Pattern::Xk, Pattern::Ik] {
            assert_eq!(pattern.as_str().parse::<Pattern>(), Ok(pattern));
            assert!(pattern.noise_params().is_ok());
        }
    }

    #[test]
    fn other_names_are_unsupported() {
        for name in ["xk", "ik", "XX", "NK", "", " XK", "XK "] {
            let err = name.parse::<Pattern>().expect_err(name);
            assert_eq!(err.code(), "unsupported_pattern");
        }
        let long = "Z".repeat(10_000);
        match long.parse::<Pattern>() {
            Err(TunnelError::UnsupportedPattern(shown)) => assert_eq!(shown.len(), 32),
            other => panic!("{other:?}"),
        }
    }
}
