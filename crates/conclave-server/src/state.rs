//! What every handler can reach.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use conclave_config::Config;
use conclave_storage::Storage;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;
use crate::rpc::RouteTable;
use crate::secrets::ServerSecrets;
use crate::sessions::SessionManager;

#[derive(Clone)]
pub(crate) struct AppState(Arc<Inner>);

pub(crate) struct Inner {
    pub config: Config,
    pub storage: Arc<dyn Storage>,
    pub metrics: Arc<Metrics>,
    pub secrets: ServerSecrets,
    pub installation_id: String,
    pub routes: RouteTable,
    pub rate_limits: RateLimits,
    pub sessions: Arc<SessionManager>,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// Every task the server spawns, so shutdown can wait for them.
    pub tasks: TaskTracker,
    draining: AtomicBool,
}

impl AppState {
    pub fn new(
        config: Config,
        storage: Arc<dyn Storage>,
        metrics: Arc<Metrics>,
        secrets: ServerSecrets,
        installation_id: String,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        let sessions = SessionManager::new(
            config.limits.session_send_queue_frames as usize,
            metrics.connections.clone(),
        );
        Self(Arc::new(Inner {
            rate_limits: RateLimits::new(&config.limits),
            routes: RouteTable::new(),
            sessions,
            config,
            storage,
            metrics,
            secrets,
            installation_id,
            shutdown,
            tasks,
            draining: AtomicBool::new(false),
        }))
    }

    pub fn start_draining(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::SeqCst)
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
