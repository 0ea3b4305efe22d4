//! Runs the real `conclave` binary for tests: ephemeral ports, a private
//! data directory, a scrubbed environment, JSON logs parsed as they arrive.

#![allow(dead_code)] // each test file uses a different part of this module

pub mod collab;
pub mod node;
pub mod postgres;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a server may take to bind its listeners. Generous: CI machines
/// build and start other tests at the same time.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Variables from the host that would change what the binary does.
fn is_host_setting(name: &str) -> bool {
    name.starts_with("CONCLAVE_")
        || matches!(name, "DATABASE_URL" | "REDIS_URL" | "NATS_URL" | "RUST_LOG")
}

/// `conclave ARGS` in `cwd`, with the host's Conclave settings removed.
pub fn conclave(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_conclave"));
    cmd.current_dir(cwd);
    for (name, _) in std::env::vars() {
        if is_host_setting(&name) {
            cmd.env_remove(name);
        }
    }
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run conclave")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[derive(Default)]
struct Logs {
    lines: Vec<serde_json::Value>,
    closed: bool,
}

/// A running `conclave serve`.
pub struct Server {
    child: Child,
    logs: Arc<(Mutex<Logs>, Condvar)>,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub tcp: SocketAddr,
    pub quic: SocketAddr,
    /// The gRPC collaboration service.
    pub grpc: SocketAddr,
    pub quic_cert_sha256: String,
    pub cwd: PathBuf,
}

impl Server {
    /// Starts `conclave serve` on loopback with ephemeral ports, JSON logs
    /// and `extra` arguments, in `cwd`.
    pub fn start(cwd: &Path, extra: &[&str]) -> Server {
        Server::start_with(conclave(cwd), cwd, extra)
    }

    pub fn start_with(mut cmd: Command, cwd: &Path, extra: &[&str]) -> Server {
        cmd.args([
            "serve",
            "--bind",
            "127.0.0.1",
            "--http-port",
            "0",
            "--admin-port",
            "0",
            "--tcp-port",
            "0",
            "--grpc-port",
            "0",
            "--quic-port",
            "0",
            "--log-format",
            "json",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn conclave serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs: Arc<(Mutex<Logs>, Condvar)> = Arc::default();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
                let (lock, cvar) = &*sink;
                lock.lock().unwrap().lines.push(value);
                cvar.notify_all();
            }
            let (lock, cvar) = &*sink;
            lock.lock().unwrap().closed = true;
            cvar.notify_all();
        });
        let mut server = Server {
            child,
            logs,
            http: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            tcp: "0.0.0.0:0".parse().unwrap(),
            quic: "0.0.0.0:0".parse().unwrap(),
            grpc: "0.0.0.0:0".parse().unwrap(),
            quic_cert_sha256: String::new(),
            cwd: cwd.to_path_buf(),
        };
        let listening = server.wait_for_log("listening", STARTUP_TIMEOUT);
        server.http = listening["http_addr"].as_str().unwrap().parse().unwrap();
        server.admin = listening["admin_addr"].as_str().unwrap().parse().unwrap();
        server.tcp = listening["tcp_addr"].as_str().unwrap().parse().unwrap();
        server.quic = listening["quic_addr"].as_str().unwrap().parse().unwrap();
        server.grpc = listening["grpc_addr"].as_str().unwrap().parse().unwrap();
        server.quic_cert_sha256 = listening["quic_cert_sha256"].as_str().unwrap().to_owned();
        server
    }

    /// The first log event whose message is `message`, waiting for it.
    pub fn wait_for_log(&self, message: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.logs;
        let mut logs = lock.lock().unwrap();
        loop {
            if let Some(line) = logs.lines.iter().find(|l| l["message"] == message) {
                return line.clone();
            }
            let now = Instant::now();
            if logs.closed || now >= deadline {
                panic!(
                    "no `{message}` log line; the server said:\n{:#?}",
                    logs.lines
                );
            }
            logs = cvar.wait_timeout(logs, deadline - now).unwrap().0;
        }
    }

    /// How many log events have `message`, waiting up to `timeout` for at
    /// least `at_least` of them: the server's output is read as it is
    /// written, so a line can reach the test a moment after its effect.
    pub fn count_logs(&self, message: &str, at_least: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.logs;
        let mut logs = lock.lock().unwrap();
        loop {
            let count = logs
                .lines
                .iter()
                .filter(|l| l["message"] == message)
                .count();
            let now = Instant::now();
            if count >= at_least || logs.closed || now >= deadline {
                return count;
            }
            logs = cvar.wait_timeout(logs, deadline - now).unwrap().0;
        }
    }

    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.logs.0.lock().unwrap().lines.clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit, failing the test after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("server did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(30))
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A configuration file (`dir/conclave.toml`) for tests that make many
/// requests from one address: fast password hashing and rate limits out of
/// the way, plus `extra` TOML.
///
/// With `CONCLAVE_TEST_BACKEND=postgres` (and `CONCLAVE_TEST_POSTGRES_URL`)
/// the server keeps its data in a fresh PostgreSQL database instead of
/// SQLite, so the same black-box suites run against both backends.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let extra = match std::env::var("CONCLAVE_TEST_BACKEND").as_deref() {
        Ok("postgres") => {
            let url = postgres::fresh_database()
                .expect("CONCLAVE_TEST_BACKEND=postgres needs CONCLAVE_TEST_POSTGRES_URL");
            format!("{extra}\n[database]\nurl = \"{url}\"\n")
        }
        _ => extra.to_owned(),
    };
    write_fast_config(dir, &extra)
}

/// [`write_config`] without the backend switch: `extra` alone chooses the
/// database.
pub fn write_fast_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("conclave.toml");
    let text = format!(
        "[auth]\n\
         password_hash_memory_kib = 64\n\
         password_hash_iterations = 1\n\
         \n\
         [limits]\n\
         requests_per_ip_per_sec = 100000\n\
         requests_per_ip_burst = 100000\n\
         requests_per_user_per_sec = 100000\n\
         requests_per_user_burst = 100000\n\
         \n\
         {extra}"
    );
    std::fs::write(&path, text).expect("write the config file");
    path
}

/// A server in `dir` on `config`, keeping its data in `dir/d`.
pub fn start_server(dir: &Path, config: &Path) -> Server {
    Server::start(
        dir,
        &[
            "--config",
            config.to_str().expect("a UTF-8 path"),
            "--data-dir",
            "d",
        ],
    )
}

fn env_or_notice(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            eprintln!("skipping: {name} is not set");
            None
        }
    }
}

/// Starts `count` nodes sharing a fresh PostgreSQL database, one bus
/// (`redis` or `nats`) namespace and one token signing key, each with its
/// own data directory. `None` (with a notice) when
/// `CONCLAVE_TEST_POSTGRES_URL`, `CONCLAVE_TEST_REDIS_URL` (or, for NATS,
/// `CONCLAVE_TEST_NATS_URL`) is unset.
pub fn start_cluster(
    bus: &str,
    count: usize,
    heartbeat_ttl_ms: u64,
) -> Option<(Vec<tempfile::TempDir>, Vec<Server>)> {
    let redis = env_or_notice("CONCLAVE_TEST_REDIS_URL")?;
    let nats = match bus {
        "nats" => Some(env_or_notice("CONCLAVE_TEST_NATS_URL")?),
        _ => None,
    };
    let database = postgres::fresh_database()?;
    let unique = format!(
        "{:x}{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
        std::process::id()
    );
    let namespace = format!("test_{unique}");
    let key: String = unique.chars().cycle().take(64).collect();
    let mut cluster = format!(
        "[database]\nurl = \"{database}\"\n\n[cluster]\nbus = \"{bus}\"\nredis_url = \"{redis}\"\n\
         namespace = \"{namespace}\"\nheartbeat_ttl_ms = {heartbeat_ttl_ms}\n"
    );
    if let Some(nats) = nats {
        cluster.push_str(&format!("nats_url = \"{nats}\"\n"));
    }
    let mut dirs = Vec::new();
    let mut nodes = Vec::new();
    for _ in 0..count {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // The nodes share the cluster's database whatever backend the rest
        // of the suite runs on.
        let config = write_fast_config(dir.path(), &cluster);
        let mut cmd = conclave(dir.path());
        cmd.env("CONCLAVE_AUTH__TOKEN_SIGNING_KEY", &key);
        nodes.push(Server::start_with(
            cmd,
            dir.path(),
            &[
                "--config",
                config.to_str().expect("a UTF-8 path"),
                "--data-dir",
                "d",
            ],
        ));
        dirs.push(dir);
    }
    Some((dirs, nodes))
}
