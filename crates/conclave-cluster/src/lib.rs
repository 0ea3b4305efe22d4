//! How several Conclave nodes serve one community.
//!
//! - The [`Bus`] carries what one node must tell the others (committed
//!   channel events, pushes to a user, presence changes, device kicks). It
//!   is best effort and unordered across publishers: durable state lives in
//!   the database, and the [`Sequencer`] restores each channel's pts order
//!   (filling gaps from the database) before anything reaches a session.
//! - The [`Directory`] knows which users and devices have sessions on other
//!   nodes, kept alive by heartbeats with a TTL, so presence is right when a
//!   node dies.
//!
//! On a single node both are in-process and cost nothing.

mod bus;
mod directory;
mod sequencer;

pub use bus::{Bus, connect_bus};
pub use directory::{Directory, LocalDirectory, RedisDirectory, SessionEntry};
pub use sequencer::{Sequencer, Verdict};

/// Which bus implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    Local,
    Redis,
    Nats,
}

/// Identifies one running node. A restarted process is a new node; what the
/// old one left in the directory expires with its heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeId(String);

impl NodeId {
    /// A fresh random id (16 hex digits).
    pub fn random() -> Result<Self, ClusterError> {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes)
            .map_err(|err| ClusterError::Invalid(format!("no randomness for a node id: {err}")))?;
        Ok(Self(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// A given id (from configuration or a test).
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("nats: {0}")]
    Nats(String),
    #[error("{0}")]
    Invalid(String),
}
