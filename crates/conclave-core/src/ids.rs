//! Typed identifiers.
//!
//! Every id is a `u64` inside a distinct type so that a `UserId` can never be
//! passed where a `ChannelId` is expected. On the JSON wire ids are strings,
//! because JavaScript numbers lose precision above 2^53.

use std::fmt;
use std::str::FromStr;

/// Why an id could not be parsed from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: expected a decimal 64-bit unsigned integer")]
pub struct ParseIdError {
    kind: &'static str,
}

macro_rules! define_id {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(u64);

        impl $name {
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }

            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse::<u64>().map(Self).map_err(|_| ParseIdError { kind: $kind })
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_any(IdVisitor::<$name>::new($kind, $name))
            }
        }
    };
}

/// Accepts an id as a decimal string (the canonical form) or as a JSON
/// integer, which hand-written clients and shell users send naturally.
struct IdVisitor<T> {
    kind: &'static str,
    make: fn(u64) -> T,
}

impl<T> IdVisitor<T> {
    fn new(kind: &'static str, make: fn(u64) -> T) -> Self {
        Self { kind, make }
    }
}

impl<T> serde::de::Visitor<'_> for IdVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} as a decimal string", self.kind)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        v.parse::<u64>()
            .map(self.make)
            .map_err(|_| E::custom(ParseIdError { kind: self.kind }))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        Ok((self.make)(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
        u64::try_from(v)
            .map(self.make)
            .map_err(|_| E::custom(ParseIdError { kind: self.kind }))
    }
}

define_id!(
    /// A registered account.
    UserId,
    "user id"
);
define_id!(
    /// One logged-in installation of a client (a phone, a laptop...).
    DeviceId,
    "device id"
);
define_id!(
    /// A conversation: direct, group, and later call or document channels.
    ChannelId,
    "channel id"
);
define_id!(
    /// A message inside a channel's event log.
    MessageId,
    "message id"
);
define_id!(
    /// One live connection of a device (a device may hold several).
    SessionId,
    "session id"
);
define_id!(
    /// A collaborative (Yjs) document.
    DocumentId,
    "document id"
);
define_id!(
    /// A group: its settings and roles around one group channel.
    GroupId,
    "group id"
);
define_id!(
    /// A pending request: a friend request or a request to join a group.
    RequestId,
    "request id"
);
define_id!(
    /// An uploaded file (its bytes live in a blob store, named by their
    /// SHA-256).
    FileId,
    "file id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_strings_on_the_json_wire() {
        let id = UserId::new(u64::MAX);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"18446744073709551615\"");
        let back: UserId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
    }

    #[test]
    fn ids_accept_json_integers_but_not_negatives_or_garbage() {
        let id: ChannelId = serde_json::from_str("42").unwrap();
        assert_eq!(id.get(), 42);
        assert!(serde_json::from_str::<ChannelId>("-1").is_err());
        let err = serde_json::from_str::<ChannelId>("\"4x\"").unwrap_err();
        assert!(err.to_string().contains("invalid channel id"), "{err}");
        assert!(serde_json::from_str::<ChannelId>("1.5").is_err());
    }
}
