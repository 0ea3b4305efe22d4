//! Rules that types alone cannot express.

use crate::schema::{BusKind, Config, StorageKind};

const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// A shutdown that waits longer than this is indistinguishable from a hang
/// to an orchestrator.
const SHUTDOWN_DEADLINE_MAX_MS: u64 = 60 * 60 * 1000;

/// More pooled connections than this exhausts a typical PostgreSQL server's
/// `max_connections` with a handful of nodes.
const DATABASE_CONNECTIONS_MAX: u32 = 1024;

/// Below this a client's first sync step (a state vector and an awareness
/// state) may not fit; above it one message can hold a server's memory
/// hostage.
const DOCUMENT_MESSAGE_MIN_BYTES: u32 = 1024;
const DOCUMENT_MESSAGE_MAX_BYTES: u32 = 256 * 1024 * 1024;

/// The longest a gRPC collaboration session may stay silent: a day.
const GRPC_SESSION_TIMEOUT_MAX_SECS: u64 = 24 * 3600;

/// Returns `(field, reason)` for every rule the configuration breaks.
pub(crate) fn validate(config: &Config) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    let mut fail = |field: &str, reason: String| errors.push((field.to_owned(), reason));

    if config.data_dir.as_os_str().is_empty() {
        fail("data_dir", "must not be empty".to_owned());
    }

    let server = &config.server;
    // QUIC listens on UDP, so it may share a number with a TCP listener.
    let tcp_ports = [
        ("server.http_port", server.http_port),
        ("server.admin_port", server.admin_port),
        ("server.grpc_port", server.grpc_port),
        ("server.tcp_port", server.tcp_port),
    ];
    for (i, (field, port)) in tcp_ports.iter().enumerate() {
        if *port == 0 {
            continue; // 0 asks the OS for a free port; never a clash.
        }
        if let Some((other, _)) = tcp_ports[..i].iter().find(|(_, p)| p == port) {
            fail(field, format!("port {port} is already used by {other}"));
        }
    }
    if server.max_connections == 0 {
        fail("server.max_connections", "must be at least 1".to_owned());
    }
    if !(1..=SHUTDOWN_DEADLINE_MAX_MS).contains(&server.shutdown_deadline_ms) {
        fail(
            "server.shutdown_deadline_ms",
            format!("must be between 1 and {SHUTDOWN_DEADLINE_MAX_MS}"),
        );
    }
    if server.request_timeout_ms == 0 {
        fail("server.request_timeout_ms", "must be at least 1".to_owned());
    }

    let database = &config.database;
    if !(1..=DATABASE_CONNECTIONS_MAX).contains(&database.max_connections) {
        fail(
            "database.max_connections",
            format!("must be between 1 and {DATABASE_CONNECTIONS_MAX}"),
        );
    }
    if let Some(url) = &database.url {
        match url.scheme().as_deref() {
            Some("sqlite" | "postgres" | "postgresql") => {}
            _ => fail(
                "database.url",
                format!("`{url}` must start with sqlite:// or postgres://"),
            ),
        }
    }

    if let Err(reason) = check_log_level(&config.log.level) {
        fail("log.level", reason);
    }

    let auth = &config.auth;
    if auth.access_token_ttl_secs == 0 {
        fail(
            "auth.access_token_ttl_secs",
            "must be at least 1".to_owned(),
        );
    }
    if auth.refresh_token_ttl_secs < auth.access_token_ttl_secs {
        fail(
            "auth.refresh_token_ttl_secs",
            "must not be shorter than auth.access_token_ttl_secs".to_owned(),
        );
    }
    if let Some(key) = &auth.token_signing_key {
        let key = key.expose();
        let hex_ok = key.len() % 2 == 0 && key.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_ok || !(64..=128).contains(&key.len()) {
            fail(
                "auth.token_signing_key",
                "must be 32 to 64 bytes written as hex (64 to 128 hex digits)".to_owned(),
            );
        }
    }

    if auth.max_devices_per_user == 0 {
        fail("auth.max_devices_per_user", "must be at least 1".to_owned());
    }
    // Below 8 KiB argon2 refuses to run; above 1 GiB one login can exhaust
    // a small server.
    if !(8..=1_048_576).contains(&auth.password_hash_memory_kib) {
        fail(
            "auth.password_hash_memory_kib",
            "must be between 8 and 1048576".to_owned(),
        );
    }
    if !(1..=16).contains(&auth.password_hash_iterations) {
        fail(
            "auth.password_hash_iterations",
            "must be between 1 and 16".to_owned(),
        );
    }

    let limits = &config.limits;
    let positive = [
        ("limits.auth_timeout_ms", limits.auth_timeout_ms),
        ("limits.idle_timeout_ms", limits.idle_timeout_ms),
        ("limits.heartbeat_interval_ms", limits.heartbeat_interval_ms),
        ("limits.write_timeout_ms", limits.write_timeout_ms),
        (
            "limits.session_send_queue_frames",
            u64::from(limits.session_send_queue_frames),
        ),
        (
            "limits.session_requests_in_flight",
            u64::from(limits.session_requests_in_flight),
        ),
        (
            "limits.requests_per_ip_per_sec",
            u64::from(limits.requests_per_ip_per_sec),
        ),
        (
            "limits.requests_per_ip_burst",
            u64::from(limits.requests_per_ip_burst),
        ),
        (
            "limits.requests_per_user_per_sec",
            u64::from(limits.requests_per_user_per_sec),
        ),
        (
            "limits.requests_per_user_burst",
            u64::from(limits.requests_per_user_burst),
        ),
    ];
    for (field, value) in positive {
        if value == 0 {
            fail(field, "must be at least 1".to_owned());
        }
    }
    if limits.heartbeat_interval_ms >= limits.idle_timeout_ms {
        fail(
            "limits.heartbeat_interval_ms",
            "must be shorter than limits.idle_timeout_ms, or idle clients are cut off between pings".to_owned(),
        );
    }

    let messaging = &config.messaging;
    if messaging.sync_gap_max_events == 0 {
        fail(
            "messaging.sync_gap_max_events",
            "must be at least 1".to_owned(),
        );
    }
    if !(1..=1_048_576).contains(&messaging.text_len_max_bytes) {
        fail(
            "messaging.text_len_max_bytes",
            "must be between 1 and 1048576".to_owned(),
        );
    }
    if !(2..=1_000_000).contains(&messaging.group_member_cap_max) {
        fail(
            "messaging.group_member_cap_max",
            "must be between 2 and 1000000".to_owned(),
        );
    }
    if !(60..=30 * 24 * 3600).contains(&messaging.invite_code_ttl_secs) {
        fail(
            "messaging.invite_code_ttl_secs",
            "must be between 60 and 2592000 (30 days)".to_owned(),
        );
    }

    let documents = &config.documents;
    if documents.token_ttl_secs == 0 {
        fail("documents.token_ttl_secs", "must be at least 1".to_owned());
    }
    if !(DOCUMENT_MESSAGE_MIN_BYTES..=DOCUMENT_MESSAGE_MAX_BYTES)
        .contains(&documents.update_max_bytes)
    {
        fail(
            "documents.update_max_bytes",
            format!(
                "must be between {DOCUMENT_MESSAGE_MIN_BYTES} and {DOCUMENT_MESSAGE_MAX_BYTES}"
            ),
        );
    }
    if documents.max_document_bytes < u64::from(documents.update_max_bytes) {
        fail(
            "documents.max_document_bytes",
            "must be at least documents.update_max_bytes".to_owned(),
        );
    }
    if documents.max_connections_per_document == 0 {
        fail(
            "documents.max_connections_per_document",
            "must be at least 1".to_owned(),
        );
    }
    if !(1..=1_000).contains(&documents.max_documents_per_socket) {
        fail(
            "documents.max_documents_per_socket",
            "must be between 1 and 1000".to_owned(),
        );
    }
    if documents.compact_every_bytes == 0 {
        fail(
            "documents.compact_every_bytes",
            "must be at least 1".to_owned(),
        );
    }
    if documents.unload_after_idle_secs > 24 * 60 * 60 {
        fail(
            "documents.unload_after_idle_secs",
            "must be at most 86400 (a day)".to_owned(),
        );
    }
    if documents.compact_every_updates == 0 {
        fail(
            "documents.compact_every_updates",
            "must be at least 1".to_owned(),
        );
    }
    if !(1..=GRPC_SESSION_TIMEOUT_MAX_SECS).contains(&documents.grpc_session_timeout_secs) {
        fail(
            "documents.grpc_session_timeout_secs",
            format!("must be between 1 and {GRPC_SESSION_TIMEOUT_MAX_SECS} (a day)"),
        );
    }

    check_files(config, &mut fail);

    match (&config.tls.cert_path, &config.tls.key_path) {
        (Some(_), None) => fail(
            "tls.key_path",
            "is required when tls.cert_path is set".to_owned(),
        ),
        (None, Some(_)) => fail(
            "tls.cert_path",
            "is required when tls.key_path is set".to_owned(),
        ),
        _ => {}
    }

    let cluster = &config.cluster;
    let bus_url = |url: &Option<crate::SecretUrl>, schemes: &[&str]| match url {
        None => Err("is required by the chosen cluster.bus".to_owned()),
        Some(url) if url.scheme().is_some_and(|s| schemes.contains(&s.as_str())) => Ok(()),
        Some(url) => Err(format!(
            "`{url}` must start with {}://",
            schemes.join(":// or ")
        )),
    };
    match cluster.bus {
        BusKind::Local => {}
        BusKind::Redis => {
            if let Err(reason) = bus_url(&cluster.redis_url, &["redis", "rediss"]) {
                fail("cluster.redis_url", reason);
            }
        }
        BusKind::Nats => {
            if let Err(reason) = bus_url(&cluster.nats_url, &["nats", "tls"]) {
                fail("cluster.nats_url", reason);
            }
            // The presence and session directory lives in Redis.
            if let Err(reason) = bus_url(&cluster.redis_url, &["redis", "rediss"]) {
                fail(
                    "cluster.redis_url",
                    format!("{reason} (the presence directory lives in Redis)"),
                );
            }
        }
    }
    if cluster.bus != BusKind::Local {
        if config.auth.token_signing_key.is_none() {
            fail(
                "auth.token_signing_key",
                "is required when cluster.bus is not local: every node must sign tokens with the same key".to_owned(),
            );
        }
        if config.database_url().scheme().as_deref() == Some("sqlite") {
            fail(
                "database.url",
                "must be a shared postgres:// database when cluster.bus is not local".to_owned(),
            );
        }
    }
    if !(1_000..=600_000).contains(&cluster.heartbeat_ttl_ms) {
        fail(
            "cluster.heartbeat_ttl_ms",
            "must be between 1000 and 600000".to_owned(),
        );
    }
    let namespace_ok = !cluster.namespace.is_empty()
        && cluster.namespace.len() <= 64
        && cluster
            .namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !namespace_ok {
        fail(
            "cluster.namespace",
            "must be 1 to 64 letters, digits, `_` or `-`".to_owned(),
        );
    }
    errors
}

/// Longest an upload token or a download URL may live: a week.
const FILE_TTL_MAX_SECS: u64 = 7 * 24 * 3600;

/// Byte counts are stored as signed 64-bit integers.
const BYTES_MAX: u64 = i64::MAX as u64;

/// The most pixels an image may be allowed to declare: a billion.
const IMAGE_PIXELS_MAX: u64 = 1_000_000_000;
/// The largest width or height an image may be allowed to declare (what
/// JPEG and WebP can say).
const IMAGE_DIMENSION_MAX: u64 = 65_535;
/// The most one image's decoding may be allowed to allocate: 16 GiB.
const IMAGE_DECODE_BYTES_MAX: u64 = 16 * 1024 * 1024 * 1024;
const THUMBNAIL_EDGE_MIN: u32 = 16;
const THUMBNAIL_EDGE_MAX: u32 = 4096;

fn check_files(config: &Config, fail: &mut impl FnMut(&str, String)) {
    let file = &config.file;
    for (field, value) in [
        ("file.max_file_size_bytes", file.max_file_size_bytes),
        ("file.user_quota_bytes", file.user_quota_bytes),
    ] {
        if !(1..=BYTES_MAX).contains(&value) {
            fail(field, format!("must be between 1 and {BYTES_MAX}"));
        }
    }
    for (field, value) in [
        ("file.upload_token_ttl_secs", file.upload_token_ttl_secs),
        ("file.download_url_ttl_secs", file.download_url_ttl_secs),
    ] {
        if !(1..=FILE_TTL_MAX_SECS).contains(&value) {
            fail(
                field,
                format!("must be between 1 and {FILE_TTL_MAX_SECS} (7 days)"),
            );
        }
    }
    for prefix in &file.allowed_mime_prefixes {
        let ok = !prefix.is_empty()
            && prefix.len() <= 127
            && prefix.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'/' | b'.' | b'+' | b'-' | b'_')
            });
        if !ok {
            fail(
                "file.allowed_mime_prefixes",
                format!(
                    "`{prefix}` is not a lower-case MIME type prefix (like `image/` or `application/pdf`)"
                ),
            );
        }
    }
    if file.image_max_source_bytes > BYTES_MAX {
        fail(
            "file.image_max_source_bytes",
            format!("must be at most {BYTES_MAX}"),
        );
    }
    for (field, value, max) in [
        (
            "file.image_max_pixels",
            file.image_max_pixels,
            IMAGE_PIXELS_MAX,
        ),
        (
            "file.image_max_decode_bytes",
            file.image_max_decode_bytes,
            IMAGE_DECODE_BYTES_MAX,
        ),
        (
            "file.image_max_dimension",
            u64::from(file.image_max_dimension),
            IMAGE_DIMENSION_MAX,
        ),
    ] {
        if !(1..=max).contains(&value) {
            fail(field, format!("must be between 1 and {max}"));
        }
    }
    if !(THUMBNAIL_EDGE_MIN..=THUMBNAIL_EDGE_MAX).contains(&file.thumbnail_max_edge) {
        fail(
            "file.thumbnail_max_edge",
            format!("must be between {THUMBNAIL_EDGE_MIN} and {THUMBNAIL_EDGE_MAX}"),
        );
    }
    if file.storage_sources.is_empty() {
        fail(
            "file.storage_sources",
            "must name at least one source".to_owned(),
        );
    }
    for (i, source) in file.storage_sources.iter().enumerate() {
        let field = |name: &str| format!("file.storage_sources.{i}.{name}");
        let id_ok = !source.id.is_empty()
            && source.id.len() <= 64
            && source
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !id_ok {
            fail(
                &field("id"),
                "must be 1 to 64 letters, digits, `_` or `-`".to_owned(),
            );
        }
        if file.storage_sources[..i].iter().any(|s| s.id == source.id) {
            fail(&field("id"), format!("`{}` is used twice", source.id));
        }
        match source.kind {
            StorageKind::Local => {
                let s3_only = [
                    ("bucket", source.bucket.is_some()),
                    ("endpoint", source.endpoint.is_some()),
                    ("region", source.region.is_some()),
                    ("access_key_id", source.access_key_id.is_some()),
                    ("secret_access_key", source.secret_access_key.is_some()),
                ];
                for (name, set) in s3_only {
                    if set {
                        fail(&field(name), "applies to kind = \"s3\" only".to_owned());
                    }
                }
                if source
                    .root
                    .as_ref()
                    .is_some_and(|root| root.as_os_str().is_empty())
                {
                    fail(&field("root"), "must not be empty".to_owned());
                }
            }
            StorageKind::S3 => {
                if source.bucket.as_deref().is_none_or(str::is_empty) {
                    fail(&field("bucket"), "is required for kind = \"s3\"".to_owned());
                }
                if let Some(endpoint) = &source.endpoint {
                    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                        fail(
                            &field("endpoint"),
                            format!("`{endpoint}` must start with http:// or https://"),
                        );
                    }
                }
                if source.access_key_id.is_some() != source.secret_access_key.is_some() {
                    fail(
                        &field("secret_access_key"),
                        "access_key_id and secret_access_key are set together or not at all"
                            .to_owned(),
                    );
                }
            }
        }
    }
    if !file
        .storage_sources
        .iter()
        .any(|source| source.id == file.default_source)
    {
        fail(
            "file.default_source",
            format!("`{}` names no storage source", file.default_source),
        );
    }
}

/// Accepts what the log filter accepts: a level, or `target=level`
/// directives separated by commas.
fn check_log_level(level: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "`{level}` is not a log level ({}) or a list of target=level directives",
            LOG_LEVELS.join(", ")
        )
    };
    if level.trim().is_empty() {
        return Err(bad());
    }
    for directive in level.split(',') {
        let directive = directive.trim();
        let level_part = match directive.split_once('=') {
            Some((target, level)) => {
                let target_ok = !target.is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-'));
                if !target_ok {
                    return Err(bad());
                }
                level
            }
            None => directive,
        };
        if !LOG_LEVELS.contains(&level_part.to_ascii_lowercase().as_str()) {
            return Err(bad());
        }
    }
    Ok(())
}
