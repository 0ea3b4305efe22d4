//! What every handler can reach.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use conclave_config::Config;
use conclave_storage::Storage;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{Cluster, ClusterLink};
use crate::collab::DocumentRooms;
use crate::files::Files;
use crate::last_seen::LastSeen;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;
use crate::rpc::RouteTable;
use crate::secrets::ServerSecrets;
use crate::sessions::SessionManager;
use crate::sync_pages::{SYNC_PAGES_BUDGET_BYTES, SyncPages};

/// Who this server is: its keys and the names clients pin.
pub(crate) struct ServerIdentity {
    pub secrets: ServerSecrets,
    pub installation_id: String,
    /// SHA-256 (hex) of the QUIC certificate, published for pinning.
    pub quic_cert_sha256: String,
}

#[derive(Clone)]
pub(crate) struct AppState(Arc<Inner>);

pub(crate) struct Inner {
    pub config: Config,
    pub storage: Arc<dyn Storage>,
    pub metrics: Arc<Metrics>,
    pub secrets: ServerSecrets,
    pub installation_id: String,
    pub quic_cert_sha256: String,
    pub routes: RouteTable,
    pub rate_limits: RateLimits,
    pub sessions: Arc<SessionManager>,
    /// This node among the others (a no-op on a single node).
    pub cluster: Arc<Cluster>,
    /// The collaborative documents open now.
    pub documents: DocumentRooms,
    /// Where file bytes are stored, and the uploads in progress here.
    pub files: Files,
    /// Sync pages answered recently, to answer them again cheaply.
    pub sync_pages: SyncPages,
    /// When devices were last connected, until it is written.
    pub last_seen: Arc<LastSeen>,
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
        identity: ServerIdentity,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        cluster: ClusterLink,
    ) -> anyhow::Result<Self> {
        let ClusterLink {
            cluster,
            session_changes,
        } = cluster;
        let sessions = SessionManager::new(
            config.limits.session_send_queue_frames as usize,
            metrics.connections.clone(),
            session_changes,
        );
        // Opens every file storage source (creating local directories).
        let files = Files::open(&config)?;
        let documents = DocumentRooms::new(
            &config.documents,
            config.limits.session_send_queue_frames,
            cluster.clone(),
            storage.clone(),
        );
        Ok(Self(Arc::new(Inner {
            rate_limits: RateLimits::new(&config.limits),
            documents,
            files,
            sync_pages: SyncPages::new(SYNC_PAGES_BUDGET_BYTES),
            last_seen: Arc::default(),
            routes: RouteTable::new(),
            sessions,
            cluster,
            config,
            storage,
            metrics,
            secrets: identity.secrets,
            installation_id: identity.installation_id,
            quic_cert_sha256: identity.quic_cert_sha256,
            shutdown,
            tasks,
            draining: AtomicBool::new(false),
        })))
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
