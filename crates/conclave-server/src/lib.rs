//! The Conclave server: binds the listeners, wires storage, metrics and
//! secrets together, and shuts everything down in order.
//!
//! Startup: data directory -> secrets -> storage (migrations) -> listeners.
//! Shutdown (SIGINT/SIGTERM or [`ServerHandle::shutdown`]): stop accepting,
//! let in-flight requests finish up to `server.shutdown_deadline_ms`, then
//! close storage (which flushes the SQLite WAL) and return.

mod admin;
mod api_error;
mod cluster;
mod collab;
mod fanout;
mod files;
mod grpc;
mod http;
mod last_seen;
mod listener;
pub mod logging;
mod mailbox;
mod metrics;
mod passwords;
mod permissions;
mod ratelimit;
mod rpc;
pub mod secrets;
mod services;
mod sessions;
mod shutdown;
mod state;
mod sync_pages;
mod tls;
mod tokens;
mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use conclave_config::Config;
use conclave_storage::{OpenOptions, PostgresOptions, SqliteOptions, Storage};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use api_error::ApiError;
pub use shutdown::ShutdownSignals;

use crate::listener::CountingListener;
use crate::metrics::Metrics;
use crate::secrets::ServerSecrets;
use crate::state::{AppState, ServerIdentity};

/// Key under which the installation id is kept in storage.
const INSTALLATION_ID_KEY: &str = "installation_id";

/// A running server.
pub struct ServerHandle {
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// UDP address of the QUIC endpoint.
    pub quic_addr: SocketAddr,
    /// TCP address of the Noise-encrypted binary transport.
    pub tcp_addr: SocketAddr,
    /// TCP address of the gRPC collaboration service.
    pub grpc_addr: SocketAddr,
    /// SHA-256 (hex) of the QUIC certificate, for clients to pin.
    pub quic_cert_sha256: String,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    storage: Arc<dyn Storage>,
    last_seen: Arc<last_seen::LastSeen>,
    deadline: Duration,
}

impl ServerHandle {
    /// Asks the server to stop accepting work (idempotent).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits for shutdown to be requested, drains in-flight work up to the
    /// deadline, and closes storage.
    pub async fn stopped(self) {
        self.shutdown.cancelled().await;
        tracing::info!(
            deadline_ms = self.deadline.as_millis() as u64,
            "shutting down"
        );
        self.tasks.close();
        if tokio::time::timeout(self.deadline, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "in-flight work did not finish before the shutdown deadline; cutting it off"
            );
        }
        // Sessions noted their end while draining.
        self.last_seen.flush(&*self.storage).await;
        self.storage.close().await;
        tracing::info!("stopped");
    }
}

/// Opens the storage the configuration names (running migrations).
pub async fn open_storage(config: &Config) -> anyhow::Result<Arc<dyn Storage>> {
    let url = config.database_url();
    if url.scheme().as_deref() == Some("sqlite") && config.database.url.is_none() {
        create_private_dir(&config.data_dir)?;
    }
    let options = OpenOptions {
        sqlite: SqliteOptions {
            max_connections: config.database.max_connections,
            busy_timeout_ms: config.database.busy_timeout_ms,
            acquire_timeout_ms: config.database.acquire_timeout_ms,
        },
        postgres: PostgresOptions {
            max_connections: config.database.max_connections,
            acquire_timeout_ms: config.database.acquire_timeout_ms,
        },
    };
    conclave_storage::open(url.expose(), options)
        .await
        .with_context(|| format!("opening database {url}"))
}

/// Starts every listener and returns once they are bound.
pub async fn start(config: Config) -> anyhow::Result<ServerHandle> {
    create_private_dir(&config.data_dir)?;
    let secrets =
        ServerSecrets::load_or_generate(&config.data_dir, config.auth.token_signing_key.as_ref())?;
    let storage = open_storage(&config).await?;
    let default_source_is_local = config.file.storage_sources.iter().any(|s| {
        s.id == config.file.default_source && s.kind == conclave_config::StorageKind::Local
    });
    if config.cluster.bus != conclave_config::BusKind::Local && default_source_is_local {
        tracing::warn!(
            source = %config.file.default_source,
            "files go to a local directory while several nodes serve this installation; \
             other nodes cannot read them: configure an s3 storage source"
        );
    }
    let installation_id = storage
        .meta()
        .get_or_insert(INSTALLATION_ID_KEY, &secrets::random_hex(16)?, unix_ms())
        .await
        .context("reading the installation id")?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        installation_id = %installation_id,
        database = %config.database_url(),
        data_dir = %config.data_dir.display(),
        token_key_fingerprint = %secrets.token_key_fingerprint(),
        noise_public_key = %secrets.noise_public_hex(),
        "server identity"
    );

    let tls =
        tls::TlsIdentity::load_or_generate(&config).context("preparing the QUIC certificate")?;
    let quic_cert_sha256 = tls.fingerprint();
    let metrics = Metrics::shared();
    // One pool of connection slots for every transport:
    // `server.max_connections` counts them all.
    let slots = Arc::new(tokio::sync::Semaphore::new(
        config.server.max_connections as usize,
    ));
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut cluster =
        cluster::Cluster::start(&config, metrics.bus_dropped.clone(), shutdown.clone()).await?;
    let (session_changes, session_changes_rx) = cluster.changes.take().unzip();
    let state = AppState::new(
        config.clone(),
        storage.clone(),
        metrics.clone(),
        ServerIdentity {
            secrets,
            installation_id,
            quic_cert_sha256: quic_cert_sha256.clone(),
        },
        shutdown.clone(),
        tasks.clone(),
        cluster::ClusterLink {
            cluster: cluster.cluster.clone(),
            session_changes,
        },
    )?;
    rpc::register_metrics();

    let bind = config.server.bind;
    let http_listener = CountingListener::bind(
        SocketAddr::new(bind, config.server.http_port),
        "http",
        slots.clone(),
        metrics.clone(),
        listener::ReadDeadlines {
            first_byte: Duration::from_millis(config.limits.auth_timeout_ms),
            // A backstop behind the sessions' own idle check (which says
            // goodbye properly): only a peer that is silent for twice as
            // long is cut off at this level.
            idle: Duration::from_millis(config.limits.idle_timeout_ms.saturating_mul(2)),
        },
    )
    .await
    .with_context(|| {
        format!(
            "binding the HTTP listener on {bind}:{}",
            config.server.http_port
        )
    })?;
    let admin_listener = listener::bind_tcp(SocketAddr::new(bind, config.server.admin_port))
        .with_context(|| {
            format!(
                "binding the admin listener on {bind}:{}",
                config.server.admin_port
            )
        })?;
    let quic_endpoint = transport::quic::bind(
        SocketAddr::new(bind, config.server.quic_port),
        tls,
        config.limits.idle_timeout_ms,
    )?;
    let tcp_listener = listener::bind_tcp(SocketAddr::new(bind, config.server.tcp_port))
        .with_context(|| {
            format!(
                "binding the TCP listener on {bind}:{}",
                config.server.tcp_port
            )
        })?;
    // gRPC connections count against server.max_connections like the
    // others; HTTP/2 pings keep live ones from looking idle.
    let grpc_listener = CountingListener::bind(
        SocketAddr::new(bind, config.server.grpc_port),
        "grpc",
        slots.clone(),
        metrics.clone(),
        listener::ReadDeadlines {
            first_byte: Duration::from_millis(config.limits.auth_timeout_ms),
            idle: Duration::from_millis(config.limits.idle_timeout_ms.saturating_mul(2)),
        },
    )
    .await
    .with_context(|| {
        format!(
            "binding the gRPC listener on {bind}:{}",
            config.server.grpc_port
        )
    })?;
    let http_addr = http_listener.local_addr()?;
    let grpc_addr = grpc_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let quic_addr = quic_endpoint.local_addr()?;
    let tcp_addr = tcp_listener.local_addr()?;
    tasks.spawn(transport::tcp::serve(
        state.clone(),
        tcp_listener,
        slots.clone(),
    ));
    tasks.spawn(transport::quic::serve(
        state.clone(),
        quic_endpoint,
        slots.clone(),
    ));
    tasks.spawn(grpc::serve(state.clone(), grpc_listener));

    let app = http::router(state.clone());
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let app = app.into_make_service_with_connect_info::<listener::PeerAddr>();
        if let Err(err) = axum::serve(http_listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %err, "HTTP listener failed");
        }
    });
    let admin_app = admin::router(state.clone());
    let stop = shutdown.clone();
    tasks.spawn(async move {
        if let Err(err) = axum::serve(admin_listener, admin_app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %err, "admin listener failed");
        }
    });
    // Readiness flips to 503 the moment shutdown starts, so load balancers
    // stop sending new work while in-flight requests drain.
    let draining = state.clone();
    let stop = shutdown.clone();
    tasks.spawn(async move {
        stop.cancelled().await;
        draining.start_draining();
    });

    let commits = storage
        .messages()
        .commits()
        .context("the storage commit stream was already taken")?;
    // One node on SQLite commits each channel's events in order, so its
    // fan-out needs no sequencing; anything else may reorder.
    let sequencer = if !cluster.cluster.is_clustered() && storage.backend() == "sqlite" {
        conclave_cluster::Sequencer::passthrough()
    } else {
        conclave_cluster::Sequencer::new()
    };
    tasks.spawn(cluster.publisher);
    if let Some(changes) = session_changes_rx {
        tasks.spawn(cluster::run_directory(
            cluster.cluster.clone(),
            state.sessions.clone(),
            changes,
            shutdown.clone(),
        ));
    }
    tasks.spawn(fanout::run(
        state.clone(),
        commits,
        cluster.inbound,
        sequencer,
    ));

    let pruned = state.clone();
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let mut every = tokio::time::interval(ratelimit::PRUNE_INTERVAL);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = every.tick() => pruned.rate_limits.prune(),
            }
        }
    });

    let swept = state.clone();
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let mut every = tokio::time::interval(collab::AWARENESS_SWEEP_INTERVAL);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = every.tick() => {
                    swept.documents.sweep(&*swept.storage).await;
                    swept
                        .metrics
                        .documents_open
                        .set(swept.documents.open_count() as i64);
                }
            }
        }
    });

    tasks.spawn(files::run_collector(state.clone()));

    let seen = state.clone();
    let stop = shutdown.clone();
    tasks.spawn(async move { seen.last_seen.run(&*seen.storage, stop).await });

    tracing::info!(%http_addr, %admin_addr, %grpc_addr, %tcp_addr, %quic_addr, quic_cert_sha256 = %quic_cert_sha256, "listening");
    Ok(ServerHandle {
        http_addr,
        admin_addr,
        quic_addr,
        tcp_addr,
        grpc_addr,
        quic_cert_sha256,
        shutdown,
        tasks,
        storage,
        last_seen: state.last_seen.clone(),
        deadline: Duration::from_millis(config.server.shutdown_deadline_ms),
    })
}

/// Runs the server until SIGINT/SIGTERM, then shuts down gracefully.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Before anything is bound or logged: a signal must never find the
    // process without its handlers.
    let signals = ShutdownSignals::install().context("listening for SIGINT/SIGTERM")?;
    let handle = start(config).await?;
    let trigger = handle.shutdown.clone();
    handle.tasks.spawn(async move {
        tokio::select! {
            () = signals.recv() => trigger.cancel(),
            () = trigger.cancelled() => {}
        }
    });
    handle.stopped().await;
    Ok(())
}

fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 && mode & 0o7777 == 0o755 {
            // A directory we just created with the default umask: tighten it.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

pub(crate) fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
