//! What every scenario shares: the server under test, accounts and devices,
//! connecting, and the progress display.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use conclave_client::api::account::AuthGrant;
use conclave_client::api::messaging::{BatchGetChannelPts, Difference, GetDifference};
use conclave_client::{
    ClientError, ConnectOptions, Connection, Encoding, HttpClient, Keypair, NoiseOptions, Pattern,
    ServerInfo,
};
use conclave_core::ChannelId;
use futures_util::StreamExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// The password of every account the benchmark creates.
pub const PASSWORD: &str = "conclave-bench password (not a secret)";

/// Registrations and logins in flight at once while setting up. Each costs
/// the server an Argon2 hash and a database write.
pub const SETUP_CONCURRENCY: usize = 32;

/// How many connections one source address opens at most when
/// `--source-ips` is automatic. The ephemeral port range has about 28 000
/// ports per source address; staying well below it leaves room for
/// `TIME_WAIT` sockets of earlier runs.
pub const CONNECTIONS_PER_SOURCE_IP: usize = 20_000;

/// How often progress bars redraw and progress counters are read.
pub const PROGRESS_TICK: Duration = Duration::from_millis(250);

/// How long a scenario waits for the server's answer to a single setup or
/// verification call over HTTP (the SDK bounds it too; this names it).
pub const SETUP_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Which transport carries the realtime sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The WebSocket (`/v1/ws`) in CCP-1 binary mode.
    Ws,
    /// TCP inside a Noise IK tunnel (needs `--tcp`).
    Tcp,
}

impl Transport {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ws => "ws",
            Self::Tcp => "tcp",
        }
    }
}

/// The server under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// E.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// The TCP+Noise listener, for `--transport tcp`.
    pub tcp_addr: Option<SocketAddr>,
    /// The operations listener (`/metrics`), e.g. `http://127.0.0.1:9090`.
    pub admin_url: Option<String>,
    /// The server's process id, to read its memory and CPU from `/proc`.
    pub server_pid: Option<u32>,
    /// What `GET /v1/server-info` said.
    pub info: ServerInfo,
    /// A shared HTTP client (one connection pool).
    pub http: HttpClient,
}

/// The server's identity as recorded in a report.
#[derive(Debug, Clone, Serialize)]
pub struct ServerFacts {
    pub base_url: String,
    pub tcp_addr: Option<String>,
    pub admin_url: Option<String>,
    pub pid: Option<u32>,
    pub name: String,
    pub version: String,
    pub protocol_version: u32,
    pub installation_id: String,
}

impl Target {
    /// Asks the server who it is; fails when it cannot be reached.
    ///
    /// # Errors
    ///
    /// When `GET /v1/server-info` fails.
    pub async fn connect(
        base_url: &str,
        tcp_addr: Option<SocketAddr>,
        admin_url: Option<String>,
        server_pid: Option<u32>,
    ) -> anyhow::Result<Self> {
        let http = HttpClient::with_http_client(
            base_url,
            reqwest::Client::builder()
                .pool_max_idle_per_host(SETUP_CONCURRENCY * 2)
                .build()
                .context("building the HTTP client")?,
        );
        let info = http
            .server_info()
            .await
            .with_context(|| format!("asking {base_url} for /v1/server-info"))?;
        Ok(Self {
            base_url: http.base_url().to_owned(),
            tcp_addr,
            admin_url: admin_url.map(|url| url.trim_end_matches('/').to_owned()),
            server_pid,
            info,
            http,
        })
    }

    #[must_use]
    pub fn facts(&self) -> ServerFacts {
        ServerFacts {
            base_url: self.base_url.clone(),
            tcp_addr: self.tcp_addr.map(|addr| addr.to_string()),
            admin_url: self.admin_url.clone(),
            pid: self.server_pid,
            name: self.info.name.clone(),
            version: self.info.version.clone(),
            protocol_version: self.info.protocol_version,
            installation_id: self.info.installation_id.clone(),
        }
    }

    /// Checks that `transport` can be used against this server.
    ///
    /// # Errors
    ///
    /// TCP without `--tcp`.
    pub fn require(&self, transport: Transport) -> anyhow::Result<()> {
        if transport == Transport::Tcp && self.tcp_addr.is_none() {
            anyhow::bail!("--transport tcp needs the server's TCP+Noise address (--tcp HOST:PORT)");
        }
        Ok(())
    }

    /// Opens a realtime session as `device`.
    ///
    /// # Errors
    ///
    /// Whatever the SDK reports.
    pub async fn open(
        &self,
        device: &Device,
        transport: Transport,
        options: ConnectOptions,
    ) -> Result<Connection, ClientError> {
        match transport {
            Transport::Ws => {
                Connection::connect_ws_with(
                    &self.base_url,
                    &device.grant.token,
                    Encoding::Binary,
                    options,
                )
                .await
            }
            Transport::Tcp => {
                let addr = self.tcp_addr.ok_or_else(|| {
                    ClientError::Protocol("no TCP+Noise address (--tcp)".to_owned())
                })?;
                let keypair = device.keypair.clone().ok_or_else(|| {
                    ClientError::Protocol("the device has no Noise key pair".to_owned())
                })?;
                let noise = NoiseOptions {
                    pattern: Pattern::Ik,
                    device_keypair: keypair,
                    server_public_key: self.info.noise_public_key,
                    device_id: device.grant.device_id,
                };
                Connection::connect_tcp_with(addr, noise, options)
                    .await
                    .map(|(connection, _ack)| connection)
            }
        }
    }

    /// The HTTP client, authenticated as `device`.
    #[must_use]
    pub fn http_as(&self, device: &Device) -> HttpClient {
        self.http.clone().with_token(device.grant.token.clone())
    }
}

/// One logged-in device of a benchmark account.
#[derive(Debug, Clone)]
pub struct Device {
    /// Which account (index into the list [`create_accounts`] returns).
    pub user: usize,
    pub username: String,
    pub grant: AuthGrant,
    /// Its Noise static key pair, when created for TCP.
    pub keypair: Option<Keypair>,
}

/// A prefix for this run's usernames, so that runs against the same server
/// never collide: `b` and the time in milliseconds, base 36.
#[must_use]
pub fn run_prefix() -> String {
    let mut millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    while millis > 0 {
        out.push(digits[(millis % 36) as usize]);
        millis /= 36;
    }
    out.reverse();
    format!("b{}", String::from_utf8_lossy(&out))
}

/// Registers `devices_per_user.len()` accounts named `{prefix}_{role}{i}`
/// and logs in `devices_per_user[i]` devices for account `i` (the first is
/// the registration's), with a Noise key pair each when `noise_keys`.
/// Returns the devices of each account.
///
/// # Errors
///
/// The first registration or login that fails.
pub async fn create_accounts(
    target: &Target,
    prefix: &str,
    role: &str,
    devices_per_user: &[usize],
    noise_keys: bool,
    progress: &Progress,
) -> anyhow::Result<Vec<Vec<Device>>> {
    let total: usize = devices_per_user.iter().sum();
    let bar = progress.bar(total as u64, "registering devices");
    let key = || -> anyhow::Result<Option<Keypair>> {
        if noise_keys {
            Ok(Some(conclave_client::generate_device_keypair()?))
        } else {
            Ok(None)
        }
    };

    // First every account with its first device...
    let registrations = futures_util::stream::iter(0..devices_per_user.len())
        .map(|user| {
            let username = format!("{prefix}_{role}{user}");
            let bar = bar.clone();
            async move {
                let keypair = key()?;
                let grant = match &keypair {
                    Some(pair) => {
                        target
                            .http
                            .register_with_noise_key(
                                &username,
                                PASSWORD,
                                Some("bench"),
                                &pair.public,
                            )
                            .await
                    }
                    None => {
                        target
                            .http
                            .register(&username, PASSWORD, Some("bench"))
                            .await
                    }
                }
                .with_context(|| format!("registering {username}"))?;
                bar.inc(1);
                anyhow::Ok(Device {
                    user,
                    username,
                    grant,
                    keypair,
                })
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let mut accounts = Vec::with_capacity(devices_per_user.len());
    for registered in registrations {
        accounts.push(vec![registered?]);
    }

    // ...then the other devices of every account.
    let logins: Vec<(usize, String)> = accounts
        .iter()
        .zip(devices_per_user)
        .flat_map(|(devices, &count)| {
            let first = devices.first();
            (1..count).filter_map(move |_| first.map(|d| (d.user, d.username.clone())))
        })
        .collect();
    let logged_in = futures_util::stream::iter(logins)
        .map(|(user, username)| {
            let bar = bar.clone();
            async move {
                let keypair = key()?;
                let grant = match &keypair {
                    Some(pair) => {
                        target
                            .http
                            .login_with_noise_key(
                                &username,
                                PASSWORD,
                                Some("bench"),
                                None,
                                &pair.public,
                            )
                            .await
                    }
                    None => target.http.login(&username, PASSWORD, Some("bench")).await,
                }
                .with_context(|| format!("logging in another device of {username}"))?;
                bar.inc(1);
                anyhow::Ok(Device {
                    user,
                    username,
                    grant,
                    keypair,
                })
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    for device in logged_in {
        let device = device?;
        if let Some(devices) = accounts.get_mut(device.user) {
            devices.push(device);
        }
    }
    bar.finish_and_clear();
    Ok(accounts)
}

/// The `index`-th source address of `count`: 127.0.0.2, 127.0.0.3, ...
/// (127.0.0.1 is left to everything else). `None` when `count` is 0.
#[must_use]
pub fn source_ip(index: usize, count: usize) -> Option<IpAddr> {
    if count == 0 {
        return None;
    }
    let k = index % count;
    // 250 addresses per /24, skipping .0, .1 and the top ones.
    let third = u8::try_from(k / 250).unwrap_or(u8::MAX);
    let fourth = u8::try_from(2 + k % 250).unwrap_or(u8::MAX);
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, third, fourth)))
}

/// Splits `total` items over `parts` as evenly as possible.
#[must_use]
pub fn spread(total: usize, parts: usize) -> Vec<usize> {
    let parts = parts.max(1);
    (0..parts)
        .map(|i| total / parts + usize::from(i < total % parts))
        .collect()
}

/// One page of `sync/get_difference`, asking for `limit` events and halving
/// the limit while the server answers `payload_too_large` (a page of many
/// events may not fit in one 256 KiB response). Returns the page and how
/// many times the limit had to be halved.
///
/// # Errors
///
/// The first other error, or `payload_too_large` even for one event.
pub async fn get_difference(
    connection: &Connection,
    channel_id: ChannelId,
    last_pts: u64,
    limit: u32,
) -> Result<(Difference, u32), ClientError> {
    let mut limit = limit.max(1);
    let mut halved = 0;
    loop {
        let asked = connection
            .call(&GetDifference {
                channel_id,
                last_pts,
                limit: Some(limit),
            })
            .await;
        match asked {
            Err(err) if err.code() == Some("payload_too_large") && limit > 1 => {
                limit /= 2;
                halved += 1;
            }
            other => return other.map(|page| (page, halved)),
        }
    }
}

/// The head (pts) of `channel` as `connection`'s session sees it; 0 for a
/// channel without events. Once this answers, the session is registered
/// for the channel's pushes.
///
/// # Errors
///
/// Whatever the call reports.
pub async fn channel_head(connection: &Connection, channel: ChannelId) -> Result<u64, ClientError> {
    let heads = connection
        .call(&BatchGetChannelPts {
            channel_ids: Some(vec![channel]),
        })
        .await?;
    Ok(heads
        .channels
        .iter()
        .find(|head| head.channel_id == channel)
        .map_or(0, |head| head.pts))
}

/// Progress bars on standard error, or nothing (tests, `--no-progress`).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    enabled: bool,
}

impl Progress {
    #[must_use]
    pub fn new(enabled: bool) -> Self {
        Self { enabled }
    }

    #[must_use]
    pub fn hidden() -> Self {
        Self::new(false)
    }

    /// A bar counting to `len`.
    #[must_use]
    pub fn bar(&self, len: u64, what: &str) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:>26} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        ) {
            bar.set_style(style);
        }
        bar.set_message(what.to_owned());
        bar.enable_steady_tick(PROGRESS_TICK);
        bar
    }

    /// Prints a line above any bar (or nothing when hidden).
    pub fn note(&self, line: &str) {
        if self.enabled {
            eprintln!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_even_and_complete() {
        assert_eq!(spread(10, 3), vec![4, 3, 3]);
        assert_eq!(spread(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(spread(5, 0), vec![5]);
    }

    #[test]
    fn source_addresses_stay_in_loopback() {
        assert_eq!(source_ip(0, 0), None);
        assert_eq!(source_ip(0, 3), Some([127, 0, 0, 2].into()));
        assert_eq!(source_ip(4, 3), Some([127, 0, 0, 3].into()));
        assert_eq!(source_ip(250, 300), Some([127, 0, 1, 2].into()));
    }

    #[test]
    fn prefixes_are_valid_usernames() {
        let prefix = run_prefix();
        assert!(prefix.len() < 16, "{prefix}");
        assert!(prefix.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
