//! The server's own secrets: the key that signs tokens and the Noise static
//! key that identifies the server to tunnel clients.
//!
//! Both are generated on first start and kept in `<data_dir>/secrets/` with
//! 0600 permissions, so restarts keep issued tokens valid and pinned Noise
//! keys stable.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use conclave_config::Secret;
use sha2::{Digest, Sha256};

const SECRETS_DIR: &str = "secrets";
const TOKEN_KEY_FILE: &str = "token_signing.key";
const NOISE_KEY_FILE: &str = "noise_static.key";
const TOKEN_KEY_LEN_BYTES: usize = 32;
const NOISE_KEY_LEN_BYTES: usize = 32;

#[derive(Clone)]
pub struct ServerSecrets {
    token_signing_key: Vec<u8>,
    noise_private: [u8; NOISE_KEY_LEN_BYTES],
    noise_public: [u8; NOISE_KEY_LEN_BYTES],
}

impl std::fmt::Debug for ServerSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSecrets")
            .field("token_key_fingerprint", &self.token_key_fingerprint())
            .field("noise_public", &self.noise_public_hex())
            .finish_non_exhaustive()
    }
}

impl ServerSecrets {
    /// Reads the secrets from `data_dir`, generating any that are missing.
    /// A configured signing key takes the place of the stored one.
    pub fn load_or_generate(
        data_dir: &Path,
        configured_token_key: Option<&Secret>,
    ) -> anyhow::Result<Self> {
        let dir = data_dir.join(SECRETS_DIR);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        set_mode(&dir, 0o700)?;

        let token_signing_key = match configured_token_key {
            Some(key) => hex::decode(key.expose()).context("auth.token_signing_key is not hex")?,
            None => load_or_create(&dir.join(TOKEN_KEY_FILE), TOKEN_KEY_LEN_BYTES)?,
        };
        let noise = load_or_create(&dir.join(NOISE_KEY_FILE), NOISE_KEY_LEN_BYTES)?;
        let noise_private: [u8; NOISE_KEY_LEN_BYTES] = noise
            .as_slice()
            .try_into()
            .context("the Noise static key file has the wrong length")?;
        let noise_public =
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(noise_private))
                .to_bytes();
        Ok(Self {
            token_signing_key,
            noise_private,
            noise_public,
        })
    }

    /// Reads the secrets only if they exist; never creates anything.
    pub fn peek(data_dir: &Path) -> Option<Self> {
        let dir = data_dir.join(SECRETS_DIR);
        let token_signing_key = read_key(&dir.join(TOKEN_KEY_FILE), TOKEN_KEY_LEN_BYTES).ok()?;
        let noise_private: [u8; NOISE_KEY_LEN_BYTES] =
            read_key(&dir.join(NOISE_KEY_FILE), NOISE_KEY_LEN_BYTES)
                .ok()?
                .try_into()
                .ok()?;
        let noise_public =
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(noise_private))
                .to_bytes();
        Some(Self {
            token_signing_key,
            noise_private,
            noise_public,
        })
    }

    pub fn token_signing_key(&self) -> &[u8] {
        &self.token_signing_key
    }

    pub fn noise_private_key(&self) -> &[u8; NOISE_KEY_LEN_BYTES] {
        &self.noise_private
    }

    pub fn noise_public_key(&self) -> &[u8; NOISE_KEY_LEN_BYTES] {
        &self.noise_public
    }

    pub fn noise_public_hex(&self) -> String {
        hex::encode(self.noise_public)
    }

    /// A short, non-reversible name for the signing key, safe to log: the
    /// first 8 bytes of its SHA-256.
    pub fn token_key_fingerprint(&self) -> String {
        let digest = Sha256::digest(&self.token_signing_key);
        hex::encode(&digest[..8])
    }
}

/// `len` random bytes as hex.
pub fn random_hex(len: usize) -> anyhow::Result<String> {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes)
        .map_err(|err| anyhow::anyhow!("OS randomness unavailable: {err}"))?;
    Ok(hex::encode(bytes))
}

fn load_or_create(path: &Path, len: usize) -> anyhow::Result<Vec<u8>> {
    match read_key(path, len) {
        Ok(key) => {
            warn_if_exposed(path);
            Ok(key)
        }
        Err(err) if is_not_found(&err) => {
            let mut key = vec![0u8; len];
            getrandom::fill(&mut key)
                .map_err(|err| anyhow::anyhow!("OS randomness unavailable: {err}"))?;
            write_private(path, &hex::encode(&key))?;
            tracing::info!(file = %path.display(), "generated a new secret");
            // Another process may have won a race to create it; theirs counts.
            read_key(path, len)
        }
        Err(err) => Err(err),
    }
}

fn read_key(path: &Path, len: usize) -> anyhow::Result<Vec<u8>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let key = hex::decode(text.trim()).with_context(|| format!("{} is not hex", path.display()))?;
    if key.len() != len {
        bail!(
            "{} holds {} bytes, expected {len}",
            path.display(),
            key.len()
        );
    }
    Ok(key)
}

fn is_not_found(err: &anyhow::Error) -> bool {
    err.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
}

/// Writes `contents` to a new file readable only by its owner. The file is
/// written under a temporary name and linked into place without replacing an
/// existing file, so concurrent first starts cannot overwrite each other.
pub(crate) fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let tmp: PathBuf = path.with_extension(format!("tmp-{}", std::process::id()));
    {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
    }
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err).with_context(|| format!("storing {}", path.display())),
    }
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("restricting permissions of {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

fn warn_if_exposed(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(file = %path.display(), "secret file is readable by other users; chmod 600 it");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_generated_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = ServerSecrets::load_or_generate(dir.path(), None).unwrap();
        let second = ServerSecrets::load_or_generate(dir.path(), None).unwrap();
        assert_eq!(first.token_signing_key(), second.token_signing_key());
        assert_eq!(first.noise_public_key(), second.noise_public_key());
        assert_ne!(first.noise_public_key(), &[0u8; 32]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for file in [TOKEN_KEY_FILE, NOISE_KEY_FILE] {
                let mode = fs::metadata(dir.path().join(SECRETS_DIR).join(file))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{file}");
            }
        }
        let peeked = ServerSecrets::peek(dir.path()).unwrap();
        assert_eq!(
            peeked.token_key_fingerprint(),
            first.token_key_fingerprint()
        );
    }

    #[test]
    fn a_configured_key_replaces_the_stored_one_and_debug_hides_keys() {
        let dir = tempfile::tempdir().unwrap();
        let key = "11".repeat(32);
        let secrets =
            ServerSecrets::load_or_generate(dir.path(), Some(&Secret::new(key.clone()))).unwrap();
        assert_eq!(secrets.token_signing_key(), &[0x11u8; 32][..]);
        let shown = format!("{secrets:?}");
        assert!(!shown.contains(&key), "{shown}");
        assert!(!dir.path().join(SECRETS_DIR).join(TOKEN_KEY_FILE).exists());
    }

    #[test]
    fn a_truncated_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        ServerSecrets::load_or_generate(dir.path(), None).unwrap();
        fs::write(dir.path().join(SECRETS_DIR).join(NOISE_KEY_FILE), "abcd").unwrap();
        let err = ServerSecrets::load_or_generate(dir.path(), None).unwrap_err();
        assert!(err.to_string().contains("expected 32"), "{err}");
    }
}
