//! The configuration schema and its defaults.
//!
//! Every struct denies unknown fields (a typo must be an error, not a
//! silently ignored setting) and takes its defaults from `Default`, so a
//! file only needs the fields it changes.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use crate::secret::{Secret, SecretUrl};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the embedded database, generated secrets and local files live.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub messaging: MessagingConfig,
    pub documents: DocumentsConfig,
    pub file: FileConfig,
    pub tls: TlsConfig,
    pub cluster: ClusterConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./conclave-data"),
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            messaging: MessagingConfig::default(),
            documents: DocumentsConfig::default(),
            file: FileConfig::default(),
            tls: TlsConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address every listener binds to.
    pub bind: IpAddr,
    /// HTTP: JSON API, realtime WebSocket, collaborative documents, files.
    pub http_port: u16,
    /// Operations: `/health`, `/ready`, `/metrics`.
    pub admin_port: u16,
    /// gRPC collaboration service.
    pub grpc_port: u16,
    /// Binary frames inside a Noise session over TCP.
    pub tcp_port: u16,
    /// Binary frames over QUIC (UDP).
    pub quic_port: u16,
    /// Concurrent client connections accepted across all transports.
    pub max_connections: u32,
    /// After SIGINT/SIGTERM, how long in-flight requests may take to finish
    /// before they are cut off.
    pub shutdown_deadline_ms: u64,
    /// Longest time one HTTP request may take before it is answered 503.
    /// Upload chunks are exempt: they end when their bytes stop arriving
    /// for `limits.idle_timeout_ms`.
    pub request_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            http_port: 8080,
            admin_port: 9090,
            grpc_port: 8081,
            tcp_port: 8082,
            quic_port: 8083,
            max_connections: 100_000,
            shutdown_deadline_ms: 10_000,
            request_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://...`. Unset means the embedded default:
    /// `conclave.db` inside `data_dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<SecretUrl>,
    /// Connections in the pool.
    pub max_connections: u32,
    /// How long a writer waits for SQLite's lock before failing.
    pub busy_timeout_ms: u64,
    /// How long a request waits for a pooled connection.
    pub acquire_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 8,
            busy_timeout_ms: 5_000,
            acquire_timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A level (`trace`, `debug`, `info`, `warn`, `error`, `off`) or a
    /// comma-separated list of `target=level` directives.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Compact,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Multi-line, colored, for a developer's terminal.
    Pretty,
    /// One human-readable line per event.
    Compact,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Lifetime of an access token.
    pub access_token_ttl_secs: u64,
    /// Lifetime of a refresh token.
    pub refresh_token_ttl_secs: u64,
    /// Hex-encoded key (32 to 64 bytes) that signs tokens. Unset means a key
    /// generated on first start and kept in `data_dir`; set it when several
    /// nodes must accept each other's tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_signing_key: Option<Secret>,
    /// Active devices one account may have.
    pub max_devices_per_user: u32,
    /// Argon2id memory cost per password hash, in KiB.
    pub password_hash_memory_kib: u32,
    /// Argon2id passes per password hash.
    pub password_hash_iterations: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 30 * 24 * 60 * 60,
            token_signing_key: None,
            max_devices_per_user: 10,
            // OWASP's minimum recommendation for argon2id.
            password_hash_memory_kib: 19_456,
            password_hash_iterations: 2,
        }
    }
}

/// Bounds on what one client may hold or ask for.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// From accepting a connection until it is authenticated.
    pub auth_timeout_ms: u64,
    /// A connection that sends nothing (not even a pong) for this long is
    /// closed.
    pub idle_timeout_ms: u64,
    /// How often the server pings an idle connection.
    pub heartbeat_interval_ms: u64,
    /// A write to a client that does not complete in this time (the client
    /// stopped reading) ends the session as a slow consumer.
    pub write_timeout_ms: u64,
    /// Frames queued for one session. A session that falls this far behind
    /// is disconnected and catches up by sync when it returns.
    pub session_send_queue_frames: u32,
    /// Requests one session may have in progress; more wait their turn.
    pub session_requests_in_flight: u32,
    /// Sustained requests per second from one IP address.
    pub requests_per_ip_per_sec: u32,
    /// Requests one IP address may make in a burst above the sustained rate.
    pub requests_per_ip_burst: u32,
    /// Sustained requests per second from one user, over all devices.
    pub requests_per_user_per_sec: u32,
    pub requests_per_user_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            auth_timeout_ms: 10_000,
            idle_timeout_ms: 90_000,
            heartbeat_interval_ms: 30_000,
            write_timeout_ms: 10_000,
            session_send_queue_frames: 1_024,
            session_requests_in_flight: 32,
            requests_per_ip_per_sec: 200,
            requests_per_ip_burst: 400,
            requests_per_user_per_sec: 100,
            requests_per_user_burst: 200,
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessagingConfig {
    /// How long a sender may revoke its own message. Owners and admins of a
    /// group may revoke any message at any time.
    pub revoke_window_secs: u64,
    /// A `sync/get_difference` that would have to replay more events than
    /// this answers `resync_required` instead.
    pub sync_gap_max_events: u64,
    /// Longest text message, in bytes.
    pub text_len_max_bytes: u32,
    /// Most members a group may have: the cap of a new group, and the
    /// highest cap its owner or admins may set.
    pub group_member_cap_max: u32,
    /// How long share cards and group invitation codes stay valid when the
    /// issuer does not say (seconds); the longest they may be asked for is
    /// 30 days.
    pub invite_code_ttl_secs: u64,
}

impl Default for MessagingConfig {
    fn default() -> Self {
        Self {
            revoke_window_secs: 120,
            sync_gap_max_events: 50_000,
            text_len_max_bytes: 16 * 1024,
            group_member_cap_max: 2_000,
            invite_code_ttl_secs: 7 * 24 * 3600,
        }
    }
}

/// Collaborative documents (Yjs over y-websocket at `/collab/<name>`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DocumentsConfig {
    /// Lifetime of a document token (`doc/token`). A client reconnecting
    /// after it expires must fetch a new one.
    pub token_ttl_secs: u64,
    /// Largest WebSocket message a document connection may send (an update,
    /// a sync step or an awareness update). Larger ones close the
    /// connection with code 1009.
    pub update_max_bytes: u32,
    /// Connections one document may have at once; one more is closed with
    /// code 1013.
    pub max_connections_per_document: u32,
    /// Largest a document may grow, in stored bytes (its snapshot and log).
    /// A full document can still be read and edited by deletion; a message
    /// adding content to it closes its connection with code 1008.
    pub max_document_bytes: u64,
    /// Documents one Hocuspocus connection (`/hocuspocus`) may have open at
    /// once; opening one more is refused with permission denied.
    pub max_documents_per_socket: u32,
    /// After this many logged updates, a document's log is folded into a
    /// snapshot.
    pub compact_every_updates: u32,
    /// ... or after this many bytes of logged updates, whichever comes
    /// first.
    pub compact_every_bytes: u64,
    /// A document nobody has open stays loaded this long (seconds), so a
    /// client that reconnects at once does not reload it; 0 unloads it as
    /// the last connection leaves. Memory is bounded by the documents open
    /// within this window.
    pub unload_after_idle_secs: u64,
    /// A gRPC collaboration session (a document joined on a `Collaborate`
    /// stream) that sends nothing, not even a heartbeat, for this long is
    /// removed: its user leaves the document.
    pub grpc_session_timeout_secs: u64,
}

impl Default for DocumentsConfig {
    fn default() -> Self {
        Self {
            token_ttl_secs: 60 * 60,
            update_max_bytes: 8 * 1024 * 1024,
            max_connections_per_document: 256,
            max_document_bytes: 64 * 1024 * 1024,
            max_documents_per_socket: 100,
            compact_every_updates: 1_000,
            compact_every_bytes: 4 * 1024 * 1024,
            unload_after_idle_secs: 10,
            grpc_session_timeout_secs: 60,
        }
    }
}

/// Uploaded files: limits, lifetimes of upload tokens and download links,
/// and where the bytes are stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Largest file one upload may declare, in bytes.
    pub max_file_size_bytes: u64,
    /// Bytes one user's files may take in all (complete files and uploads in
    /// progress, by declared size).
    pub user_quota_bytes: u64,
    /// Lifetime of an upload token; an upload not finished by then is
    /// abandoned and its bytes deleted.
    pub upload_token_ttl_secs: u64,
    /// Lifetime of a signed download URL (`file/get_url`).
    pub download_url_ttl_secs: u64,
    /// MIME type prefixes an upload may declare (`image/`, `application/pdf`);
    /// empty means every type.
    pub allowed_mime_prefixes: Vec<String>,
    /// The `id` of the storage source new uploads go to.
    pub default_source: String,
    /// Where file bytes are stored.
    pub storage_sources: Vec<StorageSourceConfig>,
    /// Uploaded images (declared `image/*`, and PNG, JPEG, GIF or WebP by
    /// their first bytes) are read when they complete, for their size and a
    /// thumbnail: not those larger than this, in bytes (0: no image is read).
    pub image_max_source_bytes: u64,
    /// Nor those whose header declares more pixels than this...
    pub image_max_pixels: u64,
    /// ...or a width or height above this.
    pub image_max_dimension: u32,
    /// Memory one image's decoding may allocate, in bytes; a decoder that
    /// would need more stops.
    pub image_max_decode_bytes: u64,
    /// The longer edge of a thumbnail, in pixels.
    pub thumbnail_max_edge: u32,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            max_file_size_bytes: 100 * 1024 * 1024,
            user_quota_bytes: 10 * 1024 * 1024 * 1024,
            upload_token_ttl_secs: 60 * 60,
            download_url_ttl_secs: 60 * 60,
            allowed_mime_prefixes: Vec::new(),
            default_source: "local".to_owned(),
            storage_sources: vec![StorageSourceConfig::local("local")],
            image_max_source_bytes: 50 * 1024 * 1024,
            image_max_pixels: 50_000_000,
            image_max_dimension: 16_384,
            image_max_decode_bytes: 256 * 1024 * 1024,
            thumbnail_max_edge: 320,
        }
    }
}

/// One place file bytes can be stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSourceConfig {
    /// Name of the source; stored with every file, so never rename one that
    /// holds files.
    pub id: String,
    pub kind: StorageKind,
    /// `local`: the directory (unset: `files` inside `data_dir`). `s3`: a key
    /// prefix inside the bucket (unset: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// `s3`: the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// `s3`: the service URL (unset: AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `s3`: the region (unset: `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `s3`: credentials; unset, they come from the usual AWS environment
    /// variables and files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<Secret>,
}

impl StorageSourceConfig {
    /// A local source in the default directory.
    pub fn local(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            kind: StorageKind::Local,
            root: None,
            bucket: None,
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// A directory on this machine.
    Local,
    /// An S3-compatible object store.
    S3,
}

/// The certificate QUIC presents (TLS 1.3). Unset: a self-signed
/// certificate generated in `data_dir/tls` on first start, for development;
/// clients then pin it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_path: Option<PathBuf>,
    /// PEM private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// How nodes exchange events: `local` (one node), `redis` or `nats`.
    pub bus: BusKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<SecretUrl>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<SecretUrl>,
    /// Prefix of every Redis key and bus channel/subject, so several
    /// clusters can share one Redis or NATS.
    pub namespace: String,
    /// A node's sessions count as gone when it has not refreshed them for
    /// this long (it heartbeats three times per TTL).
    pub heartbeat_ttl_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            bus: BusKind::Local,
            redis_url: None,
            nats_url: None,
            namespace: "conclave".to_owned(),
            heartbeat_ttl_ms: 15_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    Local,
    Redis,
    Nats,
}

impl Config {
    /// The effective configuration as TOML, with every secret redacted.
    pub fn to_redacted_toml(&self) -> String {
        // Serialization cannot fail: the schema has only TOML-representable
        // types and secrets serialize as a fixed placeholder.
        toml::to_string_pretty(self).unwrap_or_else(|err| format!("# unprintable: {err}\n"))
    }

    /// The SQLite URL used when `database.url` is unset.
    pub fn embedded_database_url(&self) -> String {
        format!("sqlite://{}", self.data_dir.join("conclave.db").display())
    }

    /// The directory of a local storage source: its `root`, or `files`
    /// inside `data_dir`.
    pub fn local_files_dir(&self, source: &StorageSourceConfig) -> PathBuf {
        source
            .root
            .clone()
            .unwrap_or_else(|| self.data_dir.join("files"))
    }

    /// `database.url`, or the embedded default.
    pub fn database_url(&self) -> SecretUrl {
        self.database
            .url
            .clone()
            .unwrap_or_else(|| SecretUrl::new(self.embedded_database_url()))
    }
}
