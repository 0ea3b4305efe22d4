//! Conclave's storage layer.
//!
//! The server talks to storage only through the traits in this crate, one
//! per concern. Two backends implement all of them: embedded SQLite (the
//! default, for a single server process) and PostgreSQL (for several server
//! processes sharing one database). Both must pass the same
//! [`conformance`] suite; each has its own append-only migrations, SQL files
//! under `migrations/<backend>/`.

mod accounts;
pub mod conformance;
mod documents;
mod error;
mod files;
mod groups;
mod inbox;
mod messaging;
mod metrics;
pub use metrics::register as register_metrics;
mod postgres;
mod social;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use conclave_core::{ChannelId, GroupId, UserId};

pub use accounts::{AccountStore, DeviceLogin, DeviceRecord, NewUser, ProfileUpdate, UserRecord};
pub use documents::{
    DocumentRecord, DocumentStore, StoredDocument, VERSION_NAME_MAX_CHARS, VersionRecord,
};
pub use error::StorageError;
pub use files::{
    ChunkOutcome, FileRecord, FileStatus, FileStore, NewImage, NewThumbnail, NewUpload, PartRecord,
    UploadRecord,
};
pub use groups::{
    GroupChange, GroupChanged, GroupPatch, GroupRecord, GroupStore, JoinRequestRecord, NewGroup,
};
pub use inbox::{InboxEvent, InboxStore};
pub use messaging::{
    Audience, ChannelKind, ChannelRecord, ChannelSummary, Committed, EventRecord, MemberFlag,
    MemberRecord, MessageRecord, MessageStore, NewMessage, ReactionOp, SendOutcome,
};
pub use postgres::{PostgresOptions, PostgresStorage};
pub use social::{
    FriendRecord, FriendRequestRecord, PrivacyRecord, Relation, SearchCandidate, SocialStore,
};
pub use sqlite::{SqliteOptions, SqliteStorage};

/// One applied schema migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: i64,
    pub description: String,
}

/// What every backend provides: the connection lifecycle and health.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Short backend name for logs and metrics (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;

    /// Succeeds when the database answers a trivial query.
    async fn ping(&self) -> Result<(), StorageError>;

    /// Migrations applied to this database, oldest first.
    async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, StorageError>;

    /// Checks the database's own consistency (SQLite `integrity_check`).
    async fn check_integrity(&self) -> Result<(), StorageError>;

    /// Flushes what the backend buffers (the SQLite WAL is checkpointed into
    /// the main file) and closes every connection. Later calls fail with
    /// [`StorageError::Closed`].
    async fn close(&self);

    fn meta(&self) -> &dyn MetaStore;

    fn accounts(&self) -> &dyn AccountStore;

    fn messages(&self) -> &dyn MessageStore;

    fn inbox(&self) -> &dyn InboxStore;

    fn documents(&self) -> &dyn DocumentStore;

    fn social(&self) -> &dyn SocialStore;

    fn groups(&self) -> &dyn GroupStore;

    fn files(&self) -> &dyn FileStore;

    /// What deciding whether `user` may write to `channel` needs, read at
    /// once: the channel, the membership, in a group channel the group's
    /// rules, and in a direct channel the peer with the relation to them and
    /// their privacy. `None` when `user` is
    /// not a member (or the channel does not exist). Backends may answer it
    /// with one query; this default composes the single reads.
    async fn write_context(
        &self,
        channel: ChannelId,
        user: UserId,
    ) -> Result<Option<WriteContext>, StorageError> {
        let messages = self.messages();
        let Some((channel, member)) = messages.membership(channel, user).await? else {
            return Ok(None);
        };
        let (group, peer) = match channel.kind {
            ChannelKind::Group => {
                let group = self.groups().group_by_channel(channel.id).await?;
                (group.map(|g| GroupRules::of(&g)), None)
            }
            ChannelKind::Direct => {
                let members = messages.members(channel.id).await?;
                let peer = match members.iter().find(|m| m.user_id != user) {
                    Some(peer) => Some(PeerContext {
                        user_id: peer.user_id,
                        relation: self.social().relation(user, peer.user_id).await?,
                        privacy: self.social().privacy(peer.user_id).await?,
                    }),
                    None => None,
                };
                (None, peer)
            }
        };
        Ok(Some(WriteContext {
            channel,
            member,
            group,
            peer,
        }))
    }
}

/// See [`Storage::write_context`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteContext {
    pub channel: ChannelRecord,
    pub member: MemberRecord,
    /// The rules of a group channel's group (`None` in a direct channel, or
    /// once the group is dissolved).
    pub group: Option<GroupRules>,
    /// The other member of a direct channel (`None` in a group, or in a
    /// direct channel whose peer is gone).
    pub peer: Option<PeerContext>,
}

/// What of a group its permission rules read: who may write to its
/// channel and who may invite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRules {
    pub group_id: GroupId,
    /// Only the owner and admins may write.
    pub mute_all: bool,
    /// Plain members may invite (the invite policy is `members`), not only
    /// the owner and admins.
    pub members_invite: bool,
}

impl GroupRules {
    #[must_use]
    pub fn new(group_id: GroupId, mute_all: bool, invite_policy: &str) -> Self {
        Self {
            group_id,
            mute_all,
            members_invite: invite_policy == "members",
        }
    }

    #[must_use]
    pub fn of(group: &GroupRecord) -> Self {
        Self::new(group.id, group.mute_all, &group.invite_policy)
    }
}

/// The other side of a direct channel, as the writer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerContext {
    pub user_id: UserId,
    /// The writer's relation to the peer (`a` = the writer).
    pub relation: Relation,
    pub privacy: Option<PrivacyRecord>,
}

/// Write-once facts about the installation.
#[async_trait]
pub trait MetaStore: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<String>, StorageError>;

    /// Stores `value` under `key` unless the key already has a value, and
    /// returns the value that is stored now. Concurrent callers (several
    /// nodes starting at once) all get the same winner.
    async fn get_or_insert(
        &self,
        key: &str,
        value: &str,
        now_ms: i64,
    ) -> Result<String, StorageError>;
}

/// Tuning for whichever backend [`open`] picks; the other's is ignored.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    pub sqlite: SqliteOptions,
    pub postgres: PostgresOptions,
}

/// Opens the backend named by `url`'s scheme (`sqlite://`, `postgres://` or
/// `postgresql://`) and brings its schema up to date.
pub async fn open(url: &str, options: OpenOptions) -> Result<Arc<dyn Storage>, StorageError> {
    let scheme = url
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match scheme.as_str() {
        "sqlite" => Ok(Arc::new(SqliteStorage::open(url, options.sqlite).await?)),
        "postgres" | "postgresql" => Ok(Arc::new(
            PostgresStorage::open(url, options.postgres).await?,
        )),
        other => Err(StorageError::Unsupported(format!(
            "unknown database scheme `{other}` (expected sqlite:// or postgres://)"
        ))),
    }
}
