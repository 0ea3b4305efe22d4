//! Password hashing with argon2id, off the async threads.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Longest password accepted, in bytes: long passphrases are fine, but a
/// megabyte "password" would only burn CPU.
pub(crate) const PASSWORD_LEN_MAX_BYTES: usize = 256;
pub(crate) const PASSWORD_LEN_MIN_CHARS: usize = 8;

#[derive(Debug, Clone, Copy)]
pub(crate) struct HashCost {
    pub memory_kib: u32,
    pub iterations: u32,
}

pub(crate) async fn hash(password: String, cost: HashCost) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let params = Params::new(cost.memory_kib, cost.iterations, 1, None)
            .map_err(|err| anyhow::anyhow!("argon2 parameters: {err}"))?;
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt)
            .map_err(|err| anyhow::anyhow!("OS randomness unavailable: {err}"))?;
        let salt = SaltString::encode_b64(&salt).map_err(|err| anyhow::anyhow!("salt: {err}"))?;
        let hash = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes(), &salt)
            .map_err(|err| anyhow::anyhow!("hashing: {err}"))?;
        Ok(hash.to_string())
    })
    .await?
}

/// Whether `password` matches `stored`. With no stored hash (unknown user) a
/// dummy hash is still checked, so response time does not reveal which
/// usernames exist.
pub(crate) async fn verify(
    password: String,
    stored: Option<String>,
    cost: HashCost,
) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || {
        let Some(stored) = stored else {
            let params = Params::new(cost.memory_kib, cost.iterations, 1, None)
                .map_err(|err| anyhow::anyhow!("argon2 parameters: {err}"))?;
            let salt =
                SaltString::encode_b64(&[0u8; 16]).map_err(|err| anyhow::anyhow!("salt: {err}"))?;
            let _ = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(password.as_bytes(), &salt);
            return Ok(false);
        };
        let parsed = PasswordHash::new(&stored)
            .map_err(|err| anyhow::anyhow!("stored hash is unreadable: {err}"))?;
        // The parameters come from the stored hash, so raising the cost later
        // keeps old passwords working.
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: HashCost = HashCost {
        memory_kib: 64,
        iterations: 1,
    };

    #[tokio::test]
    async fn the_right_password_verifies_and_others_do_not() {
        let stored = hash("correct horse".to_owned(), CHEAP).await.unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert!(
            verify("correct horse".to_owned(), Some(stored.clone()), CHEAP)
                .await
                .unwrap()
        );
        assert!(
            !verify("wrong horse".to_owned(), Some(stored), CHEAP)
                .await
                .unwrap()
        );
        assert!(!verify("anything".to_owned(), None, CHEAP).await.unwrap());
    }
}
