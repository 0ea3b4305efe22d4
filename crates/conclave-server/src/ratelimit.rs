//! Per-IP and per-user request rate limits (token buckets).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use conclave_config::LimitsConfig;
use conclave_core::{ChannelId, ErrorCode, UserId};
use governor::clock::{Clock as _, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::api_error::ApiError;

/// How often idle buckets are dropped, so the key maps stay as small as the
/// set of recently active clients.
pub(crate) const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

type Keyed<K> = RateLimiter<K, HashMapStateStore<K>, DefaultClock>;

/// Typing notices one user may send per second in one channel, and the
/// burst above that: a keyboard produces far more keystrokes, and clients
/// are expected to send `start` once and refresh it every few seconds.
const TYPING_PER_SEC: u32 = 2;
const TYPING_BURST: u32 = 4;

pub(crate) struct RateLimits {
    per_ip: Keyed<IpAddr>,
    per_user: Keyed<UserId>,
    typing: Keyed<(UserId, ChannelId)>,
    clock: DefaultClock,
}

impl RateLimits {
    pub fn new(limits: &LimitsConfig) -> Self {
        let quota = |per_sec: u32, burst: u32| {
            // Validation guarantees both are at least 1.
            Quota::per_second(NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
        };
        Self {
            per_ip: RateLimiter::hashmap(quota(
                limits.requests_per_ip_per_sec,
                limits.requests_per_ip_burst,
            )),
            per_user: RateLimiter::hashmap(quota(
                limits.requests_per_user_per_sec,
                limits.requests_per_user_burst,
            )),
            typing: RateLimiter::hashmap(quota(TYPING_PER_SEC, TYPING_BURST)),
            clock: DefaultClock::default(),
        }
    }

    /// Bounds typing notices per user and channel.
    pub fn check_typing(&self, user: UserId, channel: ChannelId) -> Result<(), ApiError> {
        self.typing
            .check_key(&(user, channel))
            .map_err(|wait| self.refusal(wait))
    }

    /// Takes one token from the IP's bucket and, for a known user, from the
    /// user's; refuses with `rate_limited` and the wait when either is empty.
    pub fn check(&self, ip: IpAddr, user: Option<UserId>) -> Result<(), ApiError> {
        self.per_ip
            .check_key(&ip)
            .map_err(|wait| self.refusal(wait))?;
        if let Some(user) = user {
            self.per_user
                .check_key(&user)
                .map_err(|wait| self.refusal(wait))?;
        }
        Ok(())
    }

    fn refusal(
        &self,
        not_until: governor::NotUntil<<DefaultClock as governor::clock::Clock>::Instant>,
    ) -> ApiError {
        let wait = not_until.wait_time_from(self.clock.now());
        let mut err = ApiError::new(ErrorCode::RateLimited, "too many requests; slow down");
        err.retry_after_ms = Some(wait.as_millis().max(1) as u64);
        err
    }

    pub fn prune(&self) {
        self.per_ip.retain_recent();
        self.per_ip.shrink_to_fit();
        self.per_user.retain_recent();
        self.per_user.shrink_to_fit();
        self.typing.retain_recent();
        self.typing.shrink_to_fit();
    }
}
