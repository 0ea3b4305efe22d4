//! Values that must never be printed.

use std::fmt;

/// Text shown in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// A secret string (a signing key, a password). `Debug`, `Display` and
/// `Serialize` all print [`REDACTED`]; only [`Secret::expose`] reveals it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// A connection URL that may carry credentials
/// (`postgres://user:password@host/db`). It prints with the password and any
/// `password=` query parameter replaced by [`REDACTED`].
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The scheme before `://`, lower-cased, if there is one.
    pub fn scheme(&self) -> Option<String> {
        self.0
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
            .or_else(|| {
                // `sqlite:relative/path.db` has no `//`.
                self.0
                    .split_once(':')
                    .map(|(scheme, _)| scheme.to_ascii_lowercase())
            })
    }

    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl serde::Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:{REDACTED}@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = redact_query_passwords(tail);
    match scheme {
        Some(scheme) => format!("{scheme}://{authority}{tail}"),
        None => format!("{authority}{tail}"),
    }
}

fn redact_query_passwords(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.to_ascii_lowercase().contains("pass") => {
                format!("{key}={REDACTED}")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords_when_printed() {
        let cases = [
            (
                "postgres://app:hunter2@db:5432/chat",
                "postgres://app:<redacted>@db:5432/chat",
            ),
            (
                "redis://:hunter2@cache:6379",
                "redis://:<redacted>@cache:6379",
            ),
            ("nats://user@bus:4222", "nats://user@bus:4222"),
            (
                "postgres://db/chat?user=a&password=hunter2",
                "postgres://db/chat?user=a&password=<redacted>",
            ),
            ("sqlite://./data/conclave.db", "sqlite://./data/conclave.db"),
        ];
        for (raw, shown) in cases {
            let url = SecretUrl::new(raw);
            assert_eq!(url.redacted(), shown);
            assert_eq!(format!("{url:?}"), format!("SecretUrl({shown})"));
            assert_eq!(url.expose(), raw);
        }
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        let mut out = String::new();
        serde::Serialize::serialize(&secret, toml::ser::ValueSerializer::new(&mut out)).unwrap();
        assert!(!out.contains("hunter2"));
    }
}
