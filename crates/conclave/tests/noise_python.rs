//! The real `conclave` binary against an independent Noise implementation:
//! the Python `noiseprotocol` package plays a device
//! (`tests/python/noise_client.py`) that registers over HTTP, pins the key
//! from `/v1/server-info`, runs the XK or IK handshake on the TCP port and
//! makes RPC calls through the encrypted tunnel, including a request large
//! enough to cross two Noise messages. A device proving a key other than
//! the one it registered must be refused with `key_mismatch`. The servers
//! ping every 250 ms and cut idle sessions after 2 s, so the exchange also
//! shows that the server's Pings arrive through the tunnel and that the
//! client's Pongs keep its session alive.

mod support;

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Server, conclave};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/noise_client.py");

/// Generous: the script registers an account (a password hash) and makes a
/// handful of round trips on loopback.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

/// Short heartbeats so that a test sees several Pings, and an idle timeout
/// that only answered Pings can outlast.
const HEARTBEAT_INTERVAL_MS: &str = "250";
const IDLE_TIMEOUT_MS: &str = "2000";
/// How long the client idles, answering Pings, before its last request.
const IDLE_WAIT_SECS: &str = "3";

/// The Noise plaintext limit of one transport message (PROTOCOL.md 4).
const NOISE_PLAINTEXT_MAX_BYTES: u64 = 65_519;

/// Whether python3 with `noiseprotocol` can run; panics under CI if not.
fn python_noise_available() -> bool {
    let available = Command::new("python3")
        .args(["-c", "import noise"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !available {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 with the noiseprotocol package is required under CI (pip install noiseprotocol)"
        );
        println!("NOTICE: python noiseprotocol not installed; skipping");
    }
    available
}

struct ScriptRun {
    success: bool,
    status: String,
    stdout: String,
    stderr: String,
}

/// Runs the client script against `server` with `extra` arguments, killing
/// it after the timeout.
fn run_script(server: &Server, pattern: &str, username: &str, extra: &[&str]) -> ScriptRun {
    let mut child = Command::new("python3")
        .arg(SCRIPT)
        .args(["--http", &server.http.to_string()])
        .args(["--tcp", &server.tcp.to_string()])
        .args(["--pattern", pattern])
        .args(["--username", username])
        .args(["--password", "correct horse battery"])
        .args(extra)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for python3") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    ScriptRun {
        success: status.is_some_and(|s| s.success()),
        status: status.map_or_else(
            || format!("killed after {SCRIPT_TIMEOUT:?}"),
            |s| s.to_string(),
        ),
        stdout,
        stderr,
    }
}

/// Runs the script and returns its JSON summary, failing the test unless
/// it passed.
fn passing_summary(
    server: &Server,
    pattern: &str,
    username: &str,
    extra: &[&str],
) -> serde_json::Value {
    let run = run_script(server, pattern, username, extra);
    assert!(
        run.success,
        "python client failed ({}):\nstderr:\n{}\nstdout:\n{}\nserver logs:\n{:#?}",
        run.status,
        run.stderr,
        run.stdout,
        server.logs()
    );
    let line = run.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|err| panic!("summary is not JSON ({err}):\n{}", run.stdout))
}

/// A fresh server in its own directory, with short heartbeats.
fn start_server(dir: &tempfile::TempDir) -> Server {
    let mut cmd = conclave(dir.path());
    cmd.env(
        "CONCLAVE_LIMITS__HEARTBEAT_INTERVAL_MS",
        HEARTBEAT_INTERVAL_MS,
    )
    .env("CONCLAVE_LIMITS__IDLE_TIMEOUT_MS", IDLE_TIMEOUT_MS);
    Server::start_with(cmd, dir.path(), &["--data-dir", "d"])
}

/// The common part of every summary, and the server's own record of the
/// registration.
fn check_identity(server: &Server, summary: &serde_json::Value, pattern: &str, username: &str) {
    assert_eq!(summary["pattern"], pattern);
    assert_eq!(summary["username"], username);
    let user_id = summary["user_id"].as_str().expect("user_id is a string");
    assert!(
        summary["device_id"].as_str().is_some(),
        "device_id is a string"
    );
    let registered = server.wait_for_log("account registered", Duration::from_secs(5));
    assert_eq!(
        registered["user"], user_id,
        "the server logged the same user"
    );
}

fn exchange(pattern: &str, username: &str) {
    if !python_noise_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(&dir);
    let summary = passing_summary(
        &server,
        pattern,
        username,
        &["--heartbeat-wait", IDLE_WAIT_SECS],
    );

    check_identity(&server, &summary, pattern, username);
    assert_eq!(summary["wrong_key"], false);
    let ack = &summary["ack"];
    assert_eq!(
        ack["user_id"], summary["user_id"],
        "Ack names the registered user"
    );
    assert_eq!(
        ack["device_id"], summary["device_id"],
        "Ack names the registered device"
    );
    assert_eq!(ack["protocol_version"], 1);
    assert_eq!(ack["heartbeat_interval_ms"], 250);
    assert!(ack["session_id"].is_u64() || ack["session_id"].is_string());
    assert_eq!(
        summary["handshake_hash"].as_str().map(str::len),
        Some(64),
        "a 32-byte BLAKE2s handshake hash"
    );
    assert!(
        summary["large_request_bytes"].as_u64().unwrap() > NOISE_PLAINTEXT_MAX_BYTES,
        "the large request crosses a Noise message boundary"
    );
    assert_eq!(summary["large_stream_chunks"], 2);
    assert_eq!(
        summary["responses"]["2"]["error"]["code"], "payload_too_large",
        "the oversized bio got a clean error response"
    );
    assert_eq!(
        summary["responses"]["3"], true,
        "the valid update behind it worked"
    );
    assert!(
        summary["server_pings"].as_u64().unwrap() >= 2,
        "the server's Pings came through the tunnel"
    );
    assert_eq!(
        summary["alive_after_idle"], true,
        "answering Pings kept the session past the idle timeout"
    );
    // The pipelined Ping and request, the two-chunk stream, two more
    // requests, and a Pong per server Ping.
    assert!(summary["chunks_sent"].as_u64().unwrap() >= 5);
    // Ack, Pong, five responses (chunks may carry several frames).
    assert!(summary["chunks_received"].as_u64().unwrap() >= 3);
    assert_eq!(summary["closed_cleanly"], true);

    assert!(
        server.stop().success(),
        "the server exits cleanly afterwards"
    );
}

fn refused(pattern: &str, username: &str, at: &str, extra: &[&str]) {
    if !python_noise_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(&dir);
    let mut args = vec!["--wrong-key"];
    args.extend_from_slice(extra);
    let summary = passing_summary(&server, pattern, username, &args);

    check_identity(&server, &summary, pattern, username);
    assert_eq!(summary["wrong_key"], true);
    assert_eq!(summary["refused"], "key_mismatch");
    assert_eq!(summary["refused_at"], at);
    assert!(summary.get("ack").is_none(), "no session was opened");

    assert!(
        server.stop().success(),
        "the server exits cleanly afterwards"
    );
}

#[test]
fn python_xk_client_talks_to_the_server() {
    exchange("XK", "py_xk_alice");
}

#[test]
fn python_ik_client_talks_to_the_server() {
    exchange("IK", "py_ik_bob");
}

#[test]
fn python_xk_client_with_the_wrong_key_is_refused_after_message_3() {
    refused("XK", "py_xk_mallory", "message_3", &[]);
}

#[test]
fn python_xk_client_with_the_wrong_key_is_refused_even_if_it_sends_data_at_once() {
    refused("XK", "py_xk_hasty", "message_3", &["--pipeline"]);
}

#[test]
fn python_ik_client_with_the_wrong_key_is_refused_before_message_2() {
    refused("IK", "py_ik_eve", "message_2", &[]);
}
