//! The configuration contract: defaults, layering, validation, redaction.

use std::io::Write;

use conclave_config::{
    BusKind, Config, ConfigSources, EXAMPLE_TOML, LogFormat, Origin, StorageKind, load,
};

fn file_with(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn sources(file: Option<&tempfile::NamedTempFile>, env: &[(&str, &str)]) -> ConfigSources {
    ConfigSources {
        file: file.map(|f| f.path().to_path_buf()),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        flags: Vec::new(),
    }
}

#[test]
fn nothing_at_all_gives_the_defaults() {
    assert_eq!(load(&ConfigSources::default()).unwrap(), Config::default());
}

#[test]
fn the_example_file_is_exactly_the_defaults_and_names_every_field() {
    let file = file_with(EXAMPLE_TOML);
    assert_eq!(load(&sources(Some(&file), &[])).unwrap(), Config::default());

    // Optional fields appear commented out; every other field appears live.
    let example: toml::Table = EXAMPLE_TOML.parse().unwrap();
    let defaults = toml::Value::try_from(Config::default()).unwrap();
    for (section, value) in defaults.as_table().unwrap() {
        match value {
            toml::Value::Table(fields) => {
                for field in fields.keys() {
                    assert!(
                        example[section].get(field).is_some(),
                        "{section}.{field} missing from the example"
                    );
                }
            }
            _ => assert!(example.contains_key(section), "{section} missing"),
        }
    }
    for section in [
        "server",
        "database",
        "log",
        "auth",
        "limits",
        "messaging",
        "documents",
        "file",
        "tls",
        "cluster",
    ] {
        assert!(
            example.contains_key(section),
            "[{section}] missing from the example"
        );
    }
    for commented in [
        "url",
        "token_signing_key",
        "redis_url",
        "nats_url",
        "cert_path",
        "key_path",
    ] {
        assert!(
            EXAMPLE_TOML.contains(&format!("# {commented} = ")),
            "{commented}"
        );
    }
}

#[test]
fn precedence_is_flags_then_env_then_file_then_defaults() {
    let file = file_with("[server]\nhttp_port = 1001\nadmin_port = 1002\ngrpc_port = 1003\n");
    let env = [
        ("CONCLAVE_SERVER__HTTP_PORT", "2001"),
        ("CONCLAVE_SERVER__ADMIN_PORT", "2002"),
    ];
    let mut sources = sources(Some(&file), &env);
    sources.flag("server.http_port", "--http-port", 3001);
    let config = load(&sources).unwrap();
    assert_eq!(config.server.http_port, 3001, "flag beats env");
    assert_eq!(config.server.admin_port, 2002, "env beats file");
    assert_eq!(config.server.grpc_port, 1003, "file beats default");
    assert_eq!(config.server.tcp_port, 8082, "default when nobody says");
}

#[test]
fn env_values_are_typed_by_the_schema() {
    let env = [
        ("CONCLAVE_DATA_DIR", "/srv/conclave"),
        ("CONCLAVE_LOG__FORMAT", "json"),
        ("CONCLAVE_CLUSTER__BUS", "redis"),
        ("REDIS_URL", "redis://:pw@127.0.0.1:6379"),
        ("DATABASE_URL", "postgres://u:pw@db/conclave"),
        (
            "CONCLAVE_AUTH__TOKEN_SIGNING_KEY",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
        ("CONCLAVE_TEST_POSTGRES_URL", "ignored: not a setting"),
        ("CONCLAVE_CONFIG", "ignored: names the file"),
        ("PATH", "/usr/bin"),
    ];
    let config = load(&sources(None, &env)).unwrap();
    assert_eq!(config.data_dir.to_str(), Some("/srv/conclave"));
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.cluster.bus, BusKind::Redis);
    assert_eq!(
        config.database.url.unwrap().expose(),
        "postgres://u:pw@db/conclave"
    );
}

#[test]
fn every_error_is_reported_with_its_field_and_origin() {
    let file = file_with(
        "[server]\nhttp_port = \"eighty\"\nadmin_port = 70000\nunknown_knob = true\n\
         [log]\nlevel = \"loud\"\n[cluster]\nbus = \"carrier-pigeon\"\n",
    );
    let env = [("CONCLAVE_SERVER__TCP_PORT", "not-a-port")];
    let errors = load(&sources(Some(&file), &env)).unwrap_err().0;
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    for expected in [
        "server.http_port",
        "server.admin_port",
        "server.unknown_knob",
        "server.tcp_port",
        "log.level",
        "cluster.bus",
    ] {
        assert!(fields.contains(&expected), "{expected} not in {fields:?}");
    }
    let tcp = errors
        .iter()
        .find(|e| e.field == "server.tcp_port")
        .unwrap();
    assert_eq!(
        tcp.origin,
        Origin::Env("CONCLAVE_SERVER__TCP_PORT".to_owned())
    );
    let admin = errors
        .iter()
        .find(|e| e.field == "server.admin_port")
        .unwrap();
    assert!(admin.reason.contains("70000"), "{}", admin.reason);
    assert!(matches!(admin.origin, Origin::File(_)));
}

#[test]
fn unknown_sections_and_top_level_keys_are_errors() {
    let file = file_with("colour = \"blue\"\n[servr]\nhttp_port = 1\n");
    let errors = load(&sources(Some(&file), &[])).unwrap_err().0;
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert!(fields.contains(&"colour"), "{fields:?}");
    assert!(fields.contains(&"servr"), "{fields:?}");
    let env = [("CONCLAVE_SERVER__HTTP_PROT", "1")];
    let errors = load(&sources(None, &env)).unwrap_err().0;
    assert_eq!(errors[0].field, "server.http_prot");
}

#[test]
fn semantic_rules_name_their_fields() {
    let file = file_with(
        "[server]\nhttp_port = 9000\nadmin_port = 9000\nmax_connections = 0\n\
         [database]\nurl = \"mysql://x\"\n[cluster]\nbus = \"nats\"\n\
         [auth]\ntoken_signing_key = \"abc\"\n\
         [documents]\nupdate_max_bytes = 1\nmax_connections_per_document = 0\n\
         grpc_session_timeout_secs = 0\n",
    );
    let errors = load(&sources(Some(&file), &[])).unwrap_err().0;
    let find = |field: &str| {
        errors
            .iter()
            .find(|e| e.field == field)
            .map(|e| e.reason.clone())
    };
    assert!(
        find("server.admin_port")
            .unwrap()
            .contains("server.http_port")
    );
    assert!(find("server.max_connections").is_some());
    assert!(find("database.url").is_some());
    assert!(find("cluster.nats_url").unwrap().contains("required"));
    assert!(find("auth.token_signing_key").is_some());
    assert!(find("documents.update_max_bytes").is_some());
    assert!(find("documents.max_connections_per_document").is_some());
    assert!(find("documents.grpc_session_timeout_secs").is_some());
}

#[test]
fn a_cluster_needs_a_shared_database_a_shared_key_and_redis() {
    let file = file_with(
        "[cluster]\nbus = \"nats\"\nnats_url = \"nats://127.0.0.1:4222\"\n\
         namespace = \"has space\"\nheartbeat_ttl_ms = 10\n",
    );
    let errors = load(&sources(Some(&file), &[])).unwrap_err().0;
    let find = |field: &str| {
        errors
            .iter()
            .find(|e| e.field == field)
            .map(|e| e.reason.clone())
    };
    assert!(find("database.url").unwrap().contains("postgres"));
    assert!(find("auth.token_signing_key").unwrap().contains("same key"));
    assert!(find("cluster.redis_url").unwrap().contains("presence"));
    assert!(find("cluster.namespace").is_some());
    assert!(find("cluster.heartbeat_ttl_ms").is_some());

    // The same with everything a cluster needs is accepted.
    let file = file_with(
        "[database]\nurl = \"postgres://db/conclave\"\n\
         [auth]\ntoken_signing_key = \"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"\n\
         [cluster]\nbus = \"nats\"\nnats_url = \"nats://127.0.0.1:4222\"\n\
         redis_url = \"redis://127.0.0.1:6379\"\nnamespace = \"eu-1\"\n",
    );
    let config = load(&sources(Some(&file), &[])).unwrap();
    assert_eq!(config.cluster.namespace, "eu-1");
    assert_eq!(config.cluster.heartbeat_ttl_ms, 15_000);
}

#[test]
fn syntax_errors_point_at_the_file() {
    let file = file_with("[server\nhttp_port = 1\n");
    let errors = load(&sources(Some(&file), &[])).unwrap_err().0;
    assert_eq!(errors[0].field, "(file)");
    assert!(errors[0].reason.contains("line 1"), "{}", errors[0].reason);
}

#[test]
fn redacted_output_never_contains_secrets() {
    let key = "ab".repeat(32);
    let env = [
        (
            "DATABASE_URL",
            "postgres://app:hunter2@db/conclave?password=hunter3",
        ),
        ("CONCLAVE_AUTH__TOKEN_SIGNING_KEY", key.as_str()),
        ("CONCLAVE_CLUSTER__BUS", "redis"),
        ("REDIS_URL", "redis://:hunter4@cache:6379"),
    ];
    let config = load(&sources(None, &env)).unwrap();
    let shown = config.to_redacted_toml();
    for secret in ["hunter2", "hunter3", "hunter4", key.as_str()] {
        assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
    }
    assert!(
        shown.contains("postgres://app:<redacted>@db/conclave"),
        "{shown}"
    );
    assert!(!format!("{config:?}").contains("hunter2"));
}

#[test]
fn files_default_to_one_local_source_in_the_data_dir() {
    let config = Config::default();
    assert_eq!(config.file.max_file_size_bytes, 100 * 1024 * 1024);
    assert_eq!(config.file.user_quota_bytes, 10 * 1024 * 1024 * 1024);
    assert_eq!(config.file.upload_token_ttl_secs, 3600);
    assert_eq!(config.file.download_url_ttl_secs, 3600);
    assert!(config.file.allowed_mime_prefixes.is_empty());
    assert_eq!(config.file.default_source, "local");
    let [source] = config.file.storage_sources.as_slice() else {
        panic!("{:?}", config.file.storage_sources);
    };
    assert_eq!(
        (source.id.as_str(), source.kind),
        ("local", StorageKind::Local)
    );
    assert_eq!(
        config.local_files_dir(source),
        std::path::Path::new("./conclave-data/files")
    );
}

#[test]
fn storage_sources_come_from_the_file_with_secrets_redacted() {
    let file = file_with(
        "[file]\n\
         default_source = \"s3\"\n\
         allowed_mime_prefixes = [\"image/\"]\n\
         [[file.storage_sources]]\n\
         id = \"disk\"\n\
         kind = \"local\"\n\
         root = \"/srv/files\"\n\
         [[file.storage_sources]]\n\
         id = \"s3\"\n\
         kind = \"s3\"\n\
         bucket = \"b\"\n\
         endpoint = \"http://127.0.0.1:9000\"\n\
         access_key_id = \"AKID\"\n\
         secret_access_key = \"hunter5\"\n",
    );
    let config = load(&sources(Some(&file), &[])).unwrap();
    let sources = &config.file.storage_sources;
    assert_eq!(sources.len(), 2);
    assert_eq!(
        config.local_files_dir(&sources[0]),
        std::path::Path::new("/srv/files")
    );
    assert_eq!(sources[1].kind, StorageKind::S3);
    assert_eq!(
        sources[1].secret_access_key.as_ref().unwrap().expose(),
        "hunter5"
    );
    assert_eq!(config.file.allowed_mime_prefixes, vec!["image/".to_owned()]);
    let shown = config.to_redacted_toml();
    assert!(!shown.contains("hunter5"), "{shown}");
    assert!(!format!("{config:?}").contains("hunter5"));
}

#[test]
fn file_settings_are_checked() {
    let file = file_with(
        "[file]\n\
         max_file_size_bytes = 0\n\
         upload_token_ttl_secs = 0\n\
         download_url_ttl_secs = 9999999\n\
         allowed_mime_prefixes = [\"Image/\"]\n\
         default_source = \"nowhere\"\n\
         [[file.storage_sources]]\n\
         id = \"a\"\n\
         kind = \"s3\"\n\
         endpoint = \"ftp://x\"\n\
         access_key_id = \"AKID\"\n\
         [[file.storage_sources]]\n\
         id = \"a\"\n\
         kind = \"local\"\n\
         bucket = \"b\"\n",
    );
    let errors = load(&sources(Some(&file), &[])).unwrap_err().0;
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    for expected in [
        "file.max_file_size_bytes",
        "file.upload_token_ttl_secs",
        "file.download_url_ttl_secs",
        "file.allowed_mime_prefixes",
        "file.default_source",
        "file.storage_sources.0.bucket",
        "file.storage_sources.0.endpoint",
        "file.storage_sources.0.secret_access_key",
        "file.storage_sources.1.id",
        "file.storage_sources.1.bucket",
    ] {
        assert!(fields.contains(&expected), "{expected} not in {fields:?}");
    }
    let unknown_kind = file_with("[[file.storage_sources]]\nid = \"x\"\nkind = \"ftp\"\n");
    let errors = load(&sources(Some(&unknown_kind), &[])).unwrap_err().0;
    assert!(
        errors[0].field.starts_with("file.storage_sources"),
        "{errors:?}"
    );
}

#[test]
fn image_settings_are_checked() {
    let config = load(&sources(None, &[])).unwrap();
    assert_eq!(config.file.image_max_source_bytes, 50 * 1024 * 1024);
    assert_eq!(config.file.image_max_pixels, 50_000_000);
    assert_eq!(config.file.image_max_dimension, 16_384);
    assert_eq!(config.file.image_max_decode_bytes, 256 * 1024 * 1024);
    assert_eq!(config.file.thumbnail_max_edge, 320);
    let off = file_with("[file]\nimage_max_source_bytes = 0\n");
    assert!(load(&sources(Some(&off), &[])).is_ok(), "0 reads no image");
    let file = file_with(
        "[file]\n\
         image_max_pixels = 0\n\
         image_max_dimension = 70000\n\
         image_max_decode_bytes = 0\n\
         thumbnail_max_edge = 8\n",
    );
    let errors = load(&sources(Some(&file), &[])).unwrap_err().0;
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    for expected in [
        "file.image_max_pixels",
        "file.image_max_dimension",
        "file.image_max_decode_bytes",
        "file.thumbnail_max_edge",
    ] {
        assert!(fields.contains(&expected), "{expected} not in {fields:?}");
    }
}
