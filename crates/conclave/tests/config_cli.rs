//! The configuration commands as an operator uses them.

mod support;

use support::{conclave, run, stderr, stdout};

#[test]
fn generated_config_validates_and_is_not_overwritten_by_accident() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(conclave(dir.path()).args(["generate-config", "conclave.toml"]));
    assert!(output.status.success(), "{}", stderr(&output));
    let text = std::fs::read_to_string(dir.path().join("conclave.toml")).unwrap();
    assert!(
        text.contains("http_port = 8080") && text.contains("# "),
        "commented example"
    );

    let output = run(conclave(dir.path()).args(["validate-config", "conclave.toml"]));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("is valid"));

    let output = run(conclave(dir.path()).args(["generate-config", "conclave.toml"]));
    assert!(!output.status.success(), "refuses to overwrite");
    assert!(stderr(&output).contains("--force"));
    let output = run(conclave(dir.path()).args(["generate-config", "conclave.toml", "--force"]));
    assert!(output.status.success());
}

#[test]
fn validate_config_names_every_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "[server]\nhttp_port = \"eighty\"\nadmin_port = 99999\nturbo = true\n[log]\nformat = \"xml\"\n",
    )
    .unwrap();
    let output = run(conclave(dir.path()).args(["validate-config", "bad.toml"]));
    assert_eq!(output.status.code(), Some(2));
    let report = stderr(&output);
    for (field, reason) in [
        ("server.http_port", "invalid type"),
        ("server.admin_port", "99999"),
        ("server.turbo", "unknown field"),
        ("log.format", "xml"),
    ] {
        let line = report
            .lines()
            .find(|l| l.contains(field))
            .unwrap_or_else(|| panic!("{field} not reported:\n{report}"));
        assert!(line.contains(reason), "{line}");
    }

    let output = run(conclave(dir.path()).args(["validate-config", "missing.toml"]));
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("cannot read"));
}

#[test]
fn serve_refuses_an_invalid_configuration_before_touching_anything() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(conclave(dir.path())
        .args(["serve", "--data-dir", "d"])
        .env("CONCLAVE_SERVER__HTTP_PORT", "70000"));
    assert_eq!(output.status.code(), Some(2));
    let report = stderr(&output);
    assert!(report.contains("server.http_port"), "{report}");
    assert!(
        report.contains("CONCLAVE_SERVER__HTTP_PORT"),
        "names the variable: {report}"
    );
    assert!(!dir.path().join("d").exists(), "nothing created");
}

#[test]
fn flags_beat_environment_beat_file_beat_defaults() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "[server]\nhttp_port = 1001\nadmin_port = 1002\ngrpc_port = 1003\n",
    )
    .unwrap();
    let output = run(conclave(dir.path())
        .args(["show-config", "--config", "c.toml", "--http-port", "3001"])
        .env("CONCLAVE_SERVER__HTTP_PORT", "2001")
        .env("CONCLAVE_SERVER__ADMIN_PORT", "2002"));
    assert!(output.status.success(), "{}", stderr(&output));
    let shown: toml::Table = stdout(&output).parse().unwrap();
    let server = shown["server"].as_table().unwrap();
    assert_eq!(server["http_port"].as_integer(), Some(3001));
    assert_eq!(server["admin_port"].as_integer(), Some(2002));
    assert_eq!(server["grpc_port"].as_integer(), Some(1003));
    assert_eq!(server["tcp_port"].as_integer(), Some(8082));
}

#[test]
fn dotenv_is_loaded_but_real_environment_wins() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "CONCLAVE_SERVER__GRPC_PORT=4444\nCONCLAVE_SERVER__TCP_PORT=5555\n",
    )
    .unwrap();
    let output = run(conclave(dir.path())
        .arg("show-config")
        .env("CONCLAVE_SERVER__TCP_PORT", "6666"));
    assert!(output.status.success(), "{}", stderr(&output));
    let shown: toml::Table = stdout(&output).parse().unwrap();
    assert_eq!(shown["server"]["grpc_port"].as_integer(), Some(4444));
    assert_eq!(shown["server"]["tcp_port"].as_integer(), Some(6666));
}

#[test]
fn show_config_never_prints_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let key = "5e".repeat(32);
    let output = run(conclave(dir.path())
        .arg("show-config")
        .env(
            "DATABASE_URL",
            "postgres://app:s3cr3t-pw@db:5432/conclave?password=s3cr3t-q",
        )
        .env("CONCLAVE_AUTH__TOKEN_SIGNING_KEY", &key)
        .env("CONCLAVE_CLUSTER__BUS", "redis")
        .env("REDIS_URL", "redis://:s3cr3t-redis@cache:6379"));
    assert!(output.status.success(), "{}", stderr(&output));
    let shown = stdout(&output) + &stderr(&output);
    for secret in ["s3cr3t-pw", "s3cr3t-q", "s3cr3t-redis", key.as_str()] {
        assert!(!shown.contains(secret), "leaked {secret}:\n{shown}");
    }
    assert!(
        shown.contains("postgres://app:<redacted>@db:5432/conclave"),
        "{shown}"
    );
    assert!(
        shown.contains("token_signing_key = \"<redacted>\""),
        "{shown}"
    );
}

#[test]
fn migrate_creates_the_schema_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let output = run(conclave(dir.path()).args(["migrate", "--data-dir", "d"]));
        assert!(output.status.success(), "{}", stderr(&output));
        let text = stdout(&output);
        assert!(text.contains("up to date"), "{text}");
        assert!(text.contains("meta"), "lists applied migrations: {text}");
    }
    assert!(dir.path().join("d/conclave.db").is_file());
}

#[test]
fn help_and_version_describe_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(conclave(dir.path()).arg("--version"));
    assert!(output.status.success());
    assert!(stdout(&output).starts_with("conclave "));
    let output = run(conclave(dir.path()).args(["serve", "--help"]));
    let help = stdout(&output);
    for flag in [
        "--config",
        "--dev",
        "--quiet",
        "--data-dir",
        "--bind",
        "--http-port",
        "--admin-port",
        "--grpc-port",
        "--tcp-port",
        "--quic-port",
        "--log-level",
        "--log-format",
        "--max-connections",
    ] {
        assert!(help.contains(flag), "{flag} missing from serve --help");
    }
}
