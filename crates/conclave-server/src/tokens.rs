//! Access and refresh tokens.
//!
//! An access token is `ca1.<claims>.<mac>`: base64url JSON claims and an
//! HMAC-SHA256 over `ca1.<claims>` with the server's signing key. It names
//! the user, the device and the device's token epoch; the server checks the
//! epoch against the device row, so kicking a device (epoch + 1) or revoking
//! it invalidates its tokens at once, before they expire.
//!
//! A document token is `cd1.<claims>.<mac>`, built the same way with the
//! same key: it opens one collaborative document (`/collab/<name>`) for one
//! user, read-write or read-only, until it expires. The prefix is part of
//! what is signed, so neither kind of token passes for the other.
//!
//! Share codes are built the same way too: `cu1.` resolves to a user (a
//! share card), `cg1.` invites to a group (and carries the group's code
//! epoch, so bumping the epoch revokes every code issued before).
//!
//! A file download URL carries `exp` (unix milliseconds) and `sig`, the
//! base64url HMAC-SHA256 of `cf1.<file id>.<exp>` with the same key: it
//! lets anyone holding it read that one file until it expires.
//!
//! A refresh token is 32 random bytes (base64url). Only its SHA-256 is
//! stored; each use replaces it. An upload token is made and stored the same
//! way, and is spent when its upload completes.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use conclave_core::{DeviceId, DocumentId, FileId, GroupId, UserId};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const ACCESS_PREFIX: &str = "ca1.";
const DOCUMENT_PREFIX: &str = "cd1.";
const USER_CARD_PREFIX: &str = "cu1.";
const GROUP_INVITE_PREFIX: &str = "cg1.";
const FILE_DOWNLOAD_PREFIX: &str = "cf1.";

/// A token longer than this is garbage; refusing it early bounds the work an
/// unauthenticated request can cause.
pub(crate) const TOKEN_LEN_MAX_BYTES: usize = 1024;

/// Refresh and upload tokens: 32 random bytes.
const RANDOM_TOKEN_LEN_BYTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct AccessClaims {
    #[serde(rename = "u")]
    pub user_id: UserId,
    #[serde(rename = "d")]
    pub device_id: DeviceId,
    #[serde(rename = "e")]
    pub epoch: i64,
    /// Expiry, unix seconds.
    #[serde(rename = "x")]
    pub expires_at_secs: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Not a token we issued, or tampered with.
    Invalid,
    Expired,
}

/// What a document token grants.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct DocumentClaims {
    #[serde(rename = "d")]
    pub document_id: DocumentId,
    #[serde(rename = "u")]
    pub user_id: UserId,
    /// Edits from the connection are dropped.
    #[serde(rename = "r")]
    pub read_only: bool,
    /// Expiry, unix milliseconds.
    #[serde(rename = "x")]
    pub expires_at_ms: i64,
}

/// Whether `token` looks like an access token (it may still be invalid).
pub(crate) fn is_access_token(token: &str) -> bool {
    token.starts_with(ACCESS_PREFIX)
}

pub(crate) fn issue_access(key: &[u8], claims: &AccessClaims) -> String {
    issue(ACCESS_PREFIX, key, claims)
}

/// Checks the signature and expiry. The caller still has to check the epoch
/// against the device.
pub(crate) fn verify_access(
    key: &[u8],
    token: &str,
    now_secs: i64,
) -> Result<AccessClaims, TokenError> {
    let claims: AccessClaims = verify(ACCESS_PREFIX, key, token)?;
    if claims.expires_at_secs <= now_secs {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

pub(crate) fn issue_document(key: &[u8], claims: &DocumentClaims) -> String {
    issue(DOCUMENT_PREFIX, key, claims)
}

/// Checks the signature and expiry. The caller still has to check that the
/// document is the one asked for and that the user may still open it.
pub(crate) fn verify_document(
    key: &[u8],
    token: &str,
    now_ms: i64,
) -> Result<DocumentClaims, TokenError> {
    let claims: DocumentClaims = verify(DOCUMENT_PREFIX, key, token)?;
    if claims.expires_at_ms <= now_ms {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// A share card: resolves to a user until it expires.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct UserCardClaims {
    #[serde(rename = "u")]
    pub user_id: UserId,
    /// Expiry, unix milliseconds.
    #[serde(rename = "x")]
    pub expires_at_ms: i64,
}

/// A group invitation: joins a group while its epoch is current.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct GroupInviteClaims {
    #[serde(rename = "g")]
    pub group_id: GroupId,
    /// Who issued it.
    #[serde(rename = "i")]
    pub issuer_id: UserId,
    /// The group's code epoch when issued.
    #[serde(rename = "e")]
    pub epoch: i64,
    /// Expiry, unix milliseconds.
    #[serde(rename = "x")]
    pub expires_at_ms: i64,
}

pub(crate) fn issue_user_card(key: &[u8], claims: &UserCardClaims) -> String {
    issue(USER_CARD_PREFIX, key, claims)
}

pub(crate) fn verify_user_card(
    key: &[u8],
    token: &str,
    now_ms: i64,
) -> Result<UserCardClaims, TokenError> {
    let claims: UserCardClaims = verify(USER_CARD_PREFIX, key, token)?;
    if claims.expires_at_ms <= now_ms {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

pub(crate) fn issue_group_invite(key: &[u8], claims: &GroupInviteClaims) -> String {
    issue(GROUP_INVITE_PREFIX, key, claims)
}

/// Checks the signature and expiry; the caller checks the epoch.
pub(crate) fn verify_group_invite(
    key: &[u8],
    token: &str,
    now_ms: i64,
) -> Result<GroupInviteClaims, TokenError> {
    let claims: GroupInviteClaims = verify(GROUP_INVITE_PREFIX, key, token)?;
    if claims.expires_at_ms <= now_ms {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// The `sig` of a download URL for `file` valid until `expires_at_ms`.
pub(crate) fn sign_download(key: &[u8], file: FileId, expires_at_ms: i64) -> String {
    URL_SAFE_NO_PAD.encode(sign(key, download_claim(file, expires_at_ms).as_bytes()))
}

/// Checks a download URL's signature, then its expiry.
pub(crate) fn verify_download(
    key: &[u8],
    file: FileId,
    expires_at_ms: i64,
    sig: &str,
    now_ms: i64,
) -> Result<(), TokenError> {
    if sig.len() > TOKEN_LEN_MAX_BYTES {
        return Err(TokenError::Invalid);
    }
    let mac = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| TokenError::Invalid)?;
    verify_mac(key, download_claim(file, expires_at_ms).as_bytes(), &mac)?;
    if expires_at_ms <= now_ms {
        return Err(TokenError::Expired);
    }
    Ok(())
}

fn download_claim(file: FileId, expires_at_ms: i64) -> String {
    format!("{FILE_DOWNLOAD_PREFIX}{file}.{expires_at_ms}")
}

fn issue(prefix: &str, key: &[u8], claims: &impl serde::Serialize) -> String {
    let json = serde_json::to_vec(claims).unwrap_or_default();
    let mut token = String::with_capacity(prefix.len() + json.len() * 2);
    token.push_str(prefix);
    URL_SAFE_NO_PAD.encode_string(&json, &mut token);
    let mac = sign(key, token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(mac, &mut token);
    token
}

fn verify<T: serde::de::DeserializeOwned>(
    prefix: &str,
    key: &[u8],
    token: &str,
) -> Result<T, TokenError> {
    if token.len() > TOKEN_LEN_MAX_BYTES || !token.starts_with(prefix) {
        return Err(TokenError::Invalid);
    }
    let (signed, mac_b64) = token.rsplit_once('.').ok_or(TokenError::Invalid)?;
    let mac = URL_SAFE_NO_PAD
        .decode(mac_b64)
        .map_err(|_| TokenError::Invalid)?;
    verify_mac(key, signed.as_bytes(), &mac)?;
    let claims_b64 = signed.strip_prefix(prefix).ok_or(TokenError::Invalid)?;
    let json = URL_SAFE_NO_PAD
        .decode(claims_b64)
        .map_err(|_| TokenError::Invalid)?;
    serde_json::from_slice(&json).map_err(|_| TokenError::Invalid)
}

fn verify_mac(key: &[u8], data: &[u8], mac: &[u8]) -> Result<(), TokenError> {
    let mut verifier =
        <Hmac<Sha256> as Mac>::new_from_slice(key).map_err(|_| TokenError::Invalid)?;
    verifier.update(data);
    // Constant-time comparison: a timing oracle on the MAC would let an
    // attacker forge tokens byte by byte.
    verifier.verify_slice(mac).map_err(|_| TokenError::Invalid)
}

fn sign(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// A new refresh token and the hash to store for it.
pub(crate) fn new_refresh_token() -> anyhow::Result<(String, [u8; 32])> {
    new_random_token()
}

pub(crate) fn hash_refresh_token(token: &str) -> [u8; 32] {
    hash_random_token(token)
}

/// A new upload token and the hash to store for it.
pub(crate) fn new_upload_token() -> anyhow::Result<(String, [u8; 32])> {
    new_random_token()
}

pub(crate) fn hash_upload_token(token: &str) -> [u8; 32] {
    hash_random_token(token)
}

fn new_random_token() -> anyhow::Result<(String, [u8; 32])> {
    let mut raw = [0u8; RANDOM_TOKEN_LEN_BYTES];
    getrandom::fill(&mut raw).map_err(|err| anyhow::anyhow!("OS randomness unavailable: {err}"))?;
    let token = URL_SAFE_NO_PAD.encode(raw);
    let hash = hash_random_token(&token);
    Ok((token, hash))
}

fn hash_random_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(expires_at_secs: i64) -> AccessClaims {
        AccessClaims {
            user_id: UserId::new(7),
            device_id: DeviceId::new(9),
            epoch: 2,
            expires_at_secs,
        }
    }

    #[test]
    fn a_token_verifies_with_its_key_until_it_expires() {
        let key = [1u8; 32];
        let token = issue_access(&key, &claims(1_000));
        assert_eq!(verify_access(&key, &token, 999), Ok(claims(1_000)));
        assert_eq!(verify_access(&key, &token, 1_000), Err(TokenError::Expired));
        assert_eq!(
            verify_access(&[2u8; 32], &token, 0),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn tampered_or_garbage_tokens_are_invalid() {
        let key = [1u8; 32];
        let token = issue_access(&key, &claims(1_000));
        let forged = issue_access(
            &[3u8; 32],
            &AccessClaims {
                user_id: UserId::new(1),
                ..claims(1_000)
            },
        );
        let (_, forged_mac) = forged.rsplit_once('.').unwrap();
        let (signed, _) = token.rsplit_once('.').unwrap();
        let swapped_mac = format!("{signed}.{forged_mac}");
        let (_, honest_mac) = token.rsplit_once('.').unwrap();
        let (forged_claims, _) = forged.rsplit_once('.').unwrap();
        let swapped_claims = format!("{forged_claims}.{honest_mac}");
        for bad in [
            "",
            "ca1.",
            "ca1..",
            "bearer",
            &swapped_mac,
            &swapped_claims,
            &"x".repeat(TOKEN_LEN_MAX_BYTES + 1),
        ] {
            assert_eq!(
                verify_access(&key, bad, 0),
                Err(TokenError::Invalid),
                "{bad}"
            );
        }
    }

    #[test]
    fn document_tokens_expire_and_are_not_access_tokens() {
        let key = [1u8; 32];
        let granted = DocumentClaims {
            document_id: DocumentId::new(4),
            user_id: UserId::new(7),
            read_only: true,
            expires_at_ms: 5_000,
        };
        let token = issue_document(&key, &granted);
        assert!(token.starts_with("cd1."));
        assert_eq!(verify_document(&key, &token, 4_999), Ok(granted));
        assert_eq!(
            verify_document(&key, &token, 5_000),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify_document(&[2u8; 32], &token, 0),
            Err(TokenError::Invalid)
        );
        assert_eq!(verify_access(&key, &token, 0), Err(TokenError::Invalid));
        let access = issue_access(&key, &claims(1_000));
        assert_eq!(verify_document(&key, &access, 0), Err(TokenError::Invalid));
        let relabelled = format!("cd1.{}", access.strip_prefix("ca1.").unwrap());
        assert_eq!(
            verify_document(&key, &relabelled, 0),
            Err(TokenError::Invalid),
            "the prefix is signed"
        );
    }

    #[test]
    fn download_signatures_bind_the_file_and_the_expiry() {
        let key = [1u8; 32];
        let file = FileId::new(42);
        let sig = sign_download(&key, file, 5_000);
        assert_eq!(verify_download(&key, file, 5_000, &sig, 4_999), Ok(()));
        assert_eq!(
            verify_download(&key, file, 5_000, &sig, 5_000),
            Err(TokenError::Expired)
        );
        for (key, file, expires, sig) in [
            (&[2u8; 32][..], file, 5_000, sig.as_str()),
            (&key[..], FileId::new(43), 5_000, sig.as_str()),
            (&key[..], file, 6_000, sig.as_str()),
            (&key[..], file, 5_000, ""),
            (&key[..], file, 5_000, "not base64!"),
            (&key[..], file, 5_000, &sig[1..]),
        ] {
            assert_eq!(
                verify_download(key, file, expires, sig, 0),
                Err(TokenError::Invalid),
                "{file} {expires} {sig}"
            );
        }
        // An expired URL with a forged signature is invalid, not expired.
        assert_eq!(
            verify_download(&key, file, 1, &sig, 10),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn upload_tokens_are_random_and_hashed() {
        let (a, hash) = new_upload_token().unwrap();
        let (b, _) = new_upload_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(hash_upload_token(&a), hash);
    }

    #[test]
    fn refresh_tokens_are_random_and_only_their_hash_is_kept() {
        let (a, hash_a) = new_refresh_token().unwrap();
        let (b, _) = new_refresh_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(hash_refresh_token(&a), hash_a);
        assert_eq!(a.len(), 43);
    }
}
