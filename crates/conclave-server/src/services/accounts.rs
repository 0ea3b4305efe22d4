//! Accounts, authentication and devices.

use conclave_core::limits::{DISPLAY_NAME_LEN_MAX_BYTES, USERNAME_LEN_MAX_BYTES};
use conclave_core::{DeviceId, ErrorCode, UserId};
use conclave_protocol::api::account::*;
use conclave_protocol::api::{Empty, events};
use conclave_storage::{DeviceLogin, DeviceRecord, NewUser, ProfileUpdate, UserRecord};

use crate::api_error::ApiError;
use crate::passwords::{self, HashCost, PASSWORD_LEN_MAX_BYTES, PASSWORD_LEN_MIN_CHARS};
use crate::rpc::{RouteTable, RpcContext};
use crate::sessions::PushEvent;
use crate::state::AppState;
use crate::tokens::{self, AccessClaims};

const USERNAME_LEN_MIN_CHARS: usize = 3;
const DEVICE_NAME_LEN_MAX_BYTES: usize = 64;
const BIO_LEN_MAX_BYTES: usize = 512;
const FILE_ID_LEN_MAX_BYTES: usize = 128;
const DEFAULT_DEVICE_NAME: &str = "unnamed device";

pub(crate) fn register(table: &mut RouteTable) {
    table.add(register_user);
    table.add(login);
    table.add(refresh);
    table.add(logout);
    table.add(user_detail);
    table.add(user_update);
    table.add(device_list);
    table.add(device_revoke);
    table.add(device_revoke_all);
    table.add(device_update_name);
    table.add(device_kick);
    table.add(device_kick_others);
}

async fn register_user(ctx: RpcContext, req: Register) -> Result<AuthGrant, ApiError> {
    let username = valid_username(&req.username)?;
    valid_password(&req.password)?;
    let display_name = match &req.display_name {
        Some(name) => valid_text("display_name", name, DISPLAY_NAME_LEN_MAX_BYTES, false)?,
        None => username.clone(),
    };
    let device_name = valid_device_name(req.device_name.as_deref())?;
    let noise_key = parse_noise_key(req.noise_public_key.as_deref())?;
    let state = &ctx.state;
    let hash = passwords::hash(req.password, hash_cost(state)).await?;
    let now = crate::unix_ms();
    let user = state
        .storage
        .accounts()
        .create_user(NewUser {
            username: &username,
            password_hash: &hash,
            display_name: &display_name,
            now_ms: now,
        })
        .await?;
    tracing::info!(user = %user.id, "account registered");
    grant_device(state, user.id, None, &device_name, noise_key, now).await
}

async fn login(ctx: RpcContext, req: Login) -> Result<AuthGrant, ApiError> {
    let device_name = valid_device_name(req.device_name.as_deref())?;
    let noise_key = parse_noise_key(req.noise_public_key.as_deref())?;
    let state = &ctx.state;
    let refused = || ApiError::new(ErrorCode::InvalidCredentials, "wrong username or password");
    if req.username.len() > USERNAME_LEN_MAX_BYTES || req.password.len() > PASSWORD_LEN_MAX_BYTES {
        return Err(refused());
    }
    let user = state
        .storage
        .accounts()
        .user_by_username(&req.username)
        .await?;
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    if !passwords::verify(req.password, stored, hash_cost(state)).await? {
        return Err(refused());
    }
    let user = user.ok_or_else(refused)?;
    let now = crate::unix_ms();
    let grant = grant_device(state, user.id, req.device_id, &device_name, noise_key, now).await?;
    let body = serde_json::json!({ "device_id": grant.device_id, "name": device_name });
    crate::services::inbox::deliver(state, user.id, events::DEVICE_ADDED, body, None).await?;
    Ok(grant)
}

async fn refresh(ctx: RpcContext, req: Refresh) -> Result<AuthGrant, ApiError> {
    let state = &ctx.state;
    let invalid = || ApiError::new(ErrorCode::Unauthenticated, "the refresh token is not valid");
    if req.refresh_token.len() > tokens::TOKEN_LEN_MAX_BYTES {
        return Err(invalid());
    }
    let (refresh_token, new_hash) = tokens::new_refresh_token()?;
    let now = crate::unix_ms();
    let expires = now + ttl_ms(state.config.auth.refresh_token_ttl_secs);
    let device = state
        .storage
        .accounts()
        .rotate_refresh(
            tokens::hash_refresh_token(&req.refresh_token),
            new_hash,
            expires,
            now,
        )
        .await?
        .ok_or_else(invalid)?;
    Ok(access_grant(state, &device, refresh_token, now))
}

async fn logout(ctx: RpcContext, _req: Logout) -> Result<Empty, ApiError> {
    let caller = ctx.caller()?;
    end_devices(&ctx, &[caller.device_id], false).await?;
    Ok(Empty {})
}

async fn user_detail(ctx: RpcContext, req: UserDetail) -> Result<UserProfile, ApiError> {
    let caller = ctx.caller()?;
    let target = req.user_id.unwrap_or(caller.user_id);
    let user = ctx
        .state
        .storage
        .accounts()
        .user_by_id(target)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no user {target}")))?;
    Ok(profile(&user))
}

async fn user_update(ctx: RpcContext, req: UserUpdate) -> Result<UserProfile, ApiError> {
    let caller = ctx.caller()?;
    let update = ProfileUpdate {
        display_name: req
            .display_name
            .as_deref()
            .map(|name| valid_text("display_name", name, DISPLAY_NAME_LEN_MAX_BYTES, false))
            .transpose()?,
        avatar_file_id: match req.avatar_file_id {
            Some(Some(id)) => Some(Some(valid_text(
                "avatar_file_id",
                &id,
                FILE_ID_LEN_MAX_BYTES,
                false,
            )?)),
            other => other,
        },
        bio: req
            .bio
            .as_deref()
            .map(|bio| valid_text("bio", bio, BIO_LEN_MAX_BYTES, true))
            .transpose()?,
    };
    let user = ctx
        .state
        .storage
        .accounts()
        .update_profile(caller.user_id, update, crate::unix_ms())
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "the account no longer exists"))?;
    let shown = profile(&user);
    let event = PushEvent::new(
        events::USER_UPDATED,
        serde_json::to_value(&shown).unwrap_or_default(),
    );
    ctx.state.cluster.push_to_user(
        &ctx.state.sessions,
        caller.user_id,
        &event,
        caller.session_id,
    );
    Ok(shown)
}

async fn device_list(ctx: RpcContext, _req: DeviceList) -> Result<DeviceListResponse, ApiError> {
    let caller = ctx.caller()?;
    let devices = ctx
        .state
        .storage
        .accounts()
        .devices_of(caller.user_id)
        .await?;
    let mut listed = Vec::with_capacity(devices.len());
    for device in &devices {
        listed.push(DeviceInfo {
            device_id: device.id,
            name: device.name.clone(),
            created_at_ms: device.created_at_ms,
            last_seen_at_ms: ctx
                .state
                .last_seen
                .of_device(device.id)
                .map_or(device.last_seen_at_ms, |held| {
                    held.max(device.last_seen_at_ms)
                }),
            current: device.id == caller.device_id,
            has_noise_key: device.noise_public_key.is_some(),
            online_sessions: ctx
                .state
                .cluster
                .device_session_count(&ctx.state.sessions, device.id)
                .await,
        });
    }
    Ok(DeviceListResponse { devices: listed })
}

async fn device_revoke(ctx: RpcContext, req: DeviceRevoke) -> Result<DevicesEnded, ApiError> {
    let ended = end_devices(&ctx, &[req.device_id], true).await?;
    if ended.is_empty() {
        return Err(no_such_device(req.device_id));
    }
    Ok(DevicesEnded { device_ids: ended })
}

async fn device_revoke_all(
    ctx: RpcContext,
    _req: DeviceRevokeAll,
) -> Result<DevicesEnded, ApiError> {
    let others = other_devices(&ctx).await?;
    Ok(DevicesEnded {
        device_ids: end_devices(&ctx, &others, true).await?,
    })
}

async fn device_update_name(ctx: RpcContext, req: DeviceUpdateName) -> Result<Empty, ApiError> {
    let caller = ctx.caller()?;
    let name = valid_text("name", &req.name, DEVICE_NAME_LEN_MAX_BYTES, false)?;
    let renamed = ctx
        .state
        .storage
        .accounts()
        .rename_device(caller.user_id, req.device_id, &name)
        .await?;
    if !renamed {
        return Err(no_such_device(req.device_id));
    }
    Ok(Empty {})
}

async fn device_kick(ctx: RpcContext, req: DeviceKick) -> Result<DevicesEnded, ApiError> {
    let ended = end_devices(&ctx, &[req.device_id], false).await?;
    if ended.is_empty() {
        return Err(no_such_device(req.device_id));
    }
    Ok(DevicesEnded { device_ids: ended })
}

async fn device_kick_others(
    ctx: RpcContext,
    _req: DeviceKickOthers,
) -> Result<DevicesEnded, ApiError> {
    let others = other_devices(&ctx).await?;
    Ok(DevicesEnded {
        device_ids: end_devices(&ctx, &others, false).await?,
    })
}

/// Ends the logins of the caller's `devices` (revoking them for good when
/// `revoke`), closes their live sessions, and tells the user's remaining
/// sessions.
async fn end_devices(
    ctx: &RpcContext,
    devices: &[DeviceId],
    revoke: bool,
) -> Result<Vec<DeviceId>, ApiError> {
    let caller = ctx.caller()?;
    let state = &ctx.state;
    let ended = state
        .storage
        .accounts()
        .end_device_sessions(caller.user_id, devices, revoke, crate::unix_ms())
        .await?;
    if ended.is_empty() {
        return Ok(ended);
    }
    let (code, message) = if revoke {
        (
            ErrorCode::DeviceRevoked,
            "this device was removed from the account",
        )
    } else {
        (ErrorCode::SessionKicked, "this device was signed out")
    };
    state
        .cluster
        .close_devices(&state.sessions, &ended, code, message, caller.session_id);
    let body = serde_json::json!({ "device_ids": ended, "revoked": revoke });
    crate::services::inbox::deliver(
        state,
        caller.user_id,
        events::DEVICE_ENDED,
        body,
        caller.session_id,
    )
    .await?;
    tracing::info!(user = %caller.user_id, devices = ?ended, revoke, "device logins ended");
    Ok(ended)
}

async fn other_devices(ctx: &RpcContext) -> Result<Vec<DeviceId>, ApiError> {
    let caller = ctx.caller()?;
    let devices = ctx
        .state
        .storage
        .accounts()
        .devices_of(caller.user_id)
        .await?;
    Ok(devices
        .into_iter()
        .map(|d| d.id)
        .filter(|id| *id != caller.device_id)
        .collect())
}

async fn grant_device(
    state: &AppState,
    user: UserId,
    existing: Option<DeviceId>,
    device_name: &str,
    noise_key: Option<[u8; 32]>,
    now: i64,
) -> Result<AuthGrant, ApiError> {
    let (refresh_token, refresh_hash) = tokens::new_refresh_token()?;
    let device = state
        .storage
        .accounts()
        .login_device(DeviceLogin {
            user_id: user,
            existing,
            name: device_name,
            noise_public_key: noise_key,
            refresh_hash,
            refresh_expires_at_ms: now + ttl_ms(state.config.auth.refresh_token_ttl_secs),
            max_devices: state.config.auth.max_devices_per_user,
            now_ms: now,
        })
        .await?;
    Ok(access_grant(state, &device, refresh_token, now))
}

fn access_grant(
    state: &AppState,
    device: &DeviceRecord,
    refresh_token: String,
    now_ms: i64,
) -> AuthGrant {
    let ttl = state.config.auth.access_token_ttl_secs;
    let claims = AccessClaims {
        user_id: device.user_id,
        device_id: device.id,
        epoch: device.token_epoch,
        expires_at_secs: now_ms / 1000 + i64::try_from(ttl).unwrap_or(i64::MAX / 2),
    };
    AuthGrant {
        user_id: device.user_id,
        device_id: device.id,
        token: tokens::issue_access(state.secrets.token_signing_key(), &claims),
        token_expires_in_secs: ttl,
        refresh_token,
    }
}

fn profile(user: &UserRecord) -> UserProfile {
    UserProfile {
        user_id: user.id,
        username: user.username.clone(),
        display_name: user.display_name.clone(),
        avatar_file_id: user.avatar_file_id.clone(),
        bio: user.bio.clone(),
        created_at_ms: user.created_at_ms,
    }
}

fn hash_cost(state: &AppState) -> HashCost {
    HashCost {
        memory_kib: state.config.auth.password_hash_memory_kib,
        iterations: state.config.auth.password_hash_iterations,
    }
}

fn ttl_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2)
}

fn no_such_device(device: DeviceId) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no active device {device} on this account"),
    )
}

/// Usernames: 3 to 32 characters of ASCII letters, digits, `_`, `.`, `-`,
/// starting with a letter or digit, so they are unambiguous in mentions and
/// URLs.
fn valid_username(username: &str) -> Result<String, ApiError> {
    let max = USERNAME_LEN_MAX_BYTES.min(32);
    let ok = (USERNAME_LEN_MIN_CHARS..=max).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && username
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(username.to_owned())
    } else {
        Err(ApiError::bad_request(format!(
            "username: {USERNAME_LEN_MIN_CHARS} to {max} letters, digits, '_', '.' or '-', starting with a letter or digit"
        )))
    }
}

fn valid_password(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < PASSWORD_LEN_MIN_CHARS {
        return Err(ApiError::bad_request(format!(
            "password: at least {PASSWORD_LEN_MIN_CHARS} characters"
        )));
    }
    if password.len() > PASSWORD_LEN_MAX_BYTES {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("password: at most {PASSWORD_LEN_MAX_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn valid_device_name(name: Option<&str>) -> Result<String, ApiError> {
    match name {
        Some(name) => valid_text("device_name", name, DEVICE_NAME_LEN_MAX_BYTES, false),
        None => Ok(DEFAULT_DEVICE_NAME.to_owned()),
    }
}

/// Trims, bounds and rejects control characters in user-visible text.
pub(crate) fn valid_text(
    field: &str,
    text: &str,
    max_bytes: usize,
    allow_empty: bool,
) -> Result<String, ApiError> {
    let trimmed = text.trim();
    if trimmed.len() > max_bytes {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("{field}: at most {max_bytes} bytes"),
        ));
    }
    if !allow_empty && trimmed.is_empty() {
        return Err(ApiError::bad_request(format!("{field}: must not be empty")));
    }
    if trimmed.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::bad_request(format!(
            "{field}: must not contain control characters"
        )));
    }
    Ok(trimmed.to_owned())
}

fn parse_noise_key(hex_key: Option<&str>) -> Result<Option<[u8; 32]>, ApiError> {
    let Some(hex_key) = hex_key else {
        return Ok(None);
    };
    let invalid =
        || ApiError::bad_request("noise_public_key: 64 hex digits (an X25519 public key)");
    if hex_key.len() != 64 {
        return Err(invalid());
    }
    let bytes = hex::decode(hex_key).map_err(|_| invalid())?;
    let key: [u8; 32] = bytes.try_into().map_err(|_| invalid())?;
    // The all-zero key is the identity point: it would "prove" anything.
    if key == [0u8; 32] {
        return Err(invalid());
    }
    Ok(Some(key))
}
