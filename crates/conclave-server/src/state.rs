//! What every handler can reach.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use conclave_config::Config;
use conclave_storage::Storage;

use crate::metrics::Metrics;
use crate::secrets::ServerSecrets;

#[derive(Clone)]
pub(crate) struct AppState(Arc<Inner>);

pub(crate) struct Inner {
    pub config: Config,
    pub storage: Arc<dyn Storage>,
    pub metrics: Arc<Metrics>,
    pub secrets: ServerSecrets,
    pub installation_id: String,
    draining: AtomicBool,
}

impl AppState {
    pub fn new(
        config: Config,
        storage: Arc<dyn Storage>,
        metrics: Arc<Metrics>,
        secrets: ServerSecrets,
        installation_id: String,
    ) -> Self {
        Self(Arc::new(Inner {
            config,
            storage,
            metrics,
            secrets,
            installation_id,
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
