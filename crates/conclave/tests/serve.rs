//! `conclave serve` as an operator meets it: zero-setup start, stable
//! secrets, operations endpoints, JSON errors, connection limits, metrics
//! that Prometheus accepts, and a clean exit on SIGTERM under load.

mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{Server, client, conclave, run, stdout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_with_no_configuration_and_keeps_its_secrets_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let http = client();

    let ready = http.get(server.admin_url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    let health = http.get(server.admin_url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let data = dir.path().join("conclave-data");
    assert!(
        data.join("conclave.db").is_file(),
        "embedded database in ./conclave-data"
    );
    let identity = server.wait_for_log("server identity", Duration::from_secs(5));
    let fingerprint = identity["token_key_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let noise_key = identity["noise_public_key"].as_str().unwrap().to_owned();
    let installation = identity["installation_id"].as_str().unwrap().to_owned();
    assert_eq!(fingerprint.len(), 16);
    assert_eq!(noise_key.len(), 64);

    let info: serde_json::Value = http
        .get(server.http_url("/v1/server-info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        info["noise_public_key"],
        noise_key.as_str(),
        "the pinning key is published"
    );

    assert!(server.stop().success());

    let mut again = Server::start(dir.path(), &[]);
    let identity = again.wait_for_log("server identity", Duration::from_secs(5));
    assert_eq!(identity["token_key_fingerprint"], fingerprint.as_str());
    assert_eq!(identity["noise_public_key"], noise_key.as_str());
    assert_eq!(identity["installation_id"], installation.as_str());
    assert!(again.stop().success());

    let shown = stdout(&run(conclave(dir.path()).arg("show-config")));
    assert!(
        shown.contains(&fingerprint),
        "show-config names the same key:\n{shown}"
    );
    let secret_file = std::fs::read_to_string(data.join("secrets/token_signing.key")).unwrap();
    assert!(
        !shown.contains(secret_file.trim()),
        "show-config printed the key itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_get_json_errors_with_request_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--data-dir", "d"]);
    let http = client();

    let response = http
        .get(server.http_url("/no/such/thing"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.headers().contains_key("x-request-id"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_route");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/no/such/thing")
    );

    let response = http
        .post(server.http_url("/v1/server-info"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");

    let response = http.get(server.admin_url("/nope")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_valid_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--data-dir", "d"]);
    let http = client();
    for path in ["/", "/missing"] {
        http.get(server.http_url(path)).send().await.unwrap();
    }
    http.get(server.admin_url("/ready")).send().await.unwrap();
    let response = http.get(server.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "Prometheus text content type"
    );
    let text = response.text().await.unwrap();
    for expected in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "conclave_connections{transport=\"http\"}",
        "conclave_requests_total{outcome=\"ok\",route=\"/\",transport=\"http\"} 1",
        "conclave_requests_total{outcome=\"client_error\",route=\"unmatched\",transport=\"http\"} 1",
        "conclave_request_duration_seconds_bucket",
        "conclave_db_query_duration_seconds_bucket{backend=\"sqlite\",op=\"ping\",outcome=\"ok\"",
        "conclave_build_info{version=",
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }

    match which("promtool") {
        Some(promtool) => {
            let mut child = std::process::Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "promtool rejected /metrics:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI must install promtool (Debian package `prometheus`)");
        }
        None => eprintln!("NOTICE: promtool not installed; skipping `promtool check metrics`"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--data-dir", "d", "--max-connections", "2"]);
    let request = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", server.http);

    // Two keep-alive connections hold both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(server.http).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    // A third is closed without an answer.
    let mut third = TcpStream::connect(server.http).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = third.write_all(request.as_bytes());
    let mut buf = [0u8; 512];
    let n = third.read(&mut buf).unwrap_or(0);
    assert_eq!(
        n,
        0,
        "an over-limit connection must be closed, got {:?}",
        String::from_utf8_lossy(&buf[..n])
    );

    let metrics = client()
        .get(server.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("conclave_connections{transport=\"http\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("conclave_connections_rejected_total{transport=\"http\"} 1"),
        "{metrics}"
    );

    // Freeing a slot admits the next client.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = client().get(server.http_url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_and_exits_zero_within_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let deadline_ms: u64 = 3_000;
    let config = dir.path().join("conclave.toml");
    std::fs::write(
        &config,
        format!("[server]\nshutdown_deadline_ms = {deadline_ms}\n"),
    )
    .unwrap();
    let mut server = Server::start(
        dir.path(),
        &["--config", config.to_str().unwrap(), "--data-dir", "d"],
    );

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..8 {
        let url = if worker % 2 == 0 {
            server.admin_url("/ready")
        } else {
            server.http_url("/v1/server-info")
        };
        let (stop, answered, bad) = (stop.clone(), answered.clone(), bad.clone());
        workers.push(tokio::spawn(async move {
            let http = client();
            while !stop.load(Ordering::Relaxed) {
                match http.get(&url).send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        // A complete JSON answer or a clean "draining" 503:
                        // never a torn response, never a server error.
                        let body = response.json::<serde_json::Value>().await;
                        let clean = body.is_ok()
                            && (status == 200 || (status == 503 && url.ends_with("/ready")));
                        if clean {
                            answered.fetch_add(1, Ordering::Relaxed);
                        } else {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // Refused once the listener has closed: expected.
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(
        answered.load(Ordering::Relaxed) > 0,
        "load never reached the server"
    );

    let signalled = Instant::now();
    server.signal("TERM");
    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(Duration::from_secs(30));
        (status, server)
    })
    .await
    .unwrap();
    let (status, server) = status;
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    assert!(status.success(), "exit status {status:?}");
    assert!(
        took < Duration::from_millis(deadline_ms) + Duration::from_secs(5),
        "took {took:?} with a {deadline_ms} ms deadline"
    );
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "torn or failed responses during shutdown"
    );
    let messages: Vec<String> = server
        .logs()
        .iter()
        .filter_map(|l| l["message"].as_str().map(str::to_owned))
        .collect();
    assert!(
        messages.iter().any(|m| m == "shutting down"),
        "{messages:?}"
    );
    assert_eq!(
        messages.last().map(String::as_str),
        Some("stopped"),
        "{messages:?}"
    );

    // The database was closed cleanly: WAL folded in, consistent, intact.
    let db = dir.path().join("d/conclave.db");
    let wal_len = std::fs::metadata(db.with_extension("db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(wal_len, 0, "clean shutdown checkpoints the WAL");
    let storage = conclave_storage::open(
        &format!("sqlite://{}", db.display()),
        conclave_storage::OpenOptions::default(),
    )
    .await
    .unwrap();
    storage.check_integrity().await.unwrap();
    assert!(
        storage
            .meta()
            .get("installation_id")
            .await
            .unwrap()
            .is_some()
    );
    storage.close().await;
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|path| path.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_speaks_is_closed_and_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[limits]\nauth_timeout_ms = 300\n").unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            "d",
            "--max-connections",
            "1",
        ],
    );
    let mut silent = TcpStream::connect(server.http).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the server closes a silent connection");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "closed by the deadline, not the test timeout"
    );
    // Its slot is free again: with max_connections = 1, a real client gets in.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = client().get(server.http_url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_messages_flow_keeps_every_acknowledged_message() {
    use conclave_client::HttpClient;
    use conclave_client::api::messaging::{Content, DirectGetOrCreate, GetDifference, MessageSend};

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("conclave.toml");
    std::fs::write(
        &config,
        "[server]\nshutdown_deadline_ms = 3000\n\
         [auth]\npassword_hash_memory_kib = 64\npassword_hash_iterations = 1\n\
         [limits]\nrequests_per_ip_per_sec = 100000\nrequests_per_ip_burst = 100000\n\
         requests_per_user_per_sec = 100000\nrequests_per_user_burst = 100000\n",
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap(), "--data-dir", "d"];
    let mut server = Server::start(dir.path(), &args);
    let base = format!("http://{}", server.http);
    let http = HttpClient::new(&base);
    let alice = http
        .register("alice", "a long password", None)
        .await
        .unwrap();
    let bob = http.register("bob", "a long password", None).await.unwrap();
    let alice_http = HttpClient::new(&base).with_token(alice.token.clone());
    let channel = alice_http
        .call(&DirectGetOrCreate {
            user_id: bob.user_id,
        })
        .await
        .unwrap()
        .channel_id;

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let (stop, sender) = (stop.clone(), alice_http.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("w{writer}-{n}");
                let sent = sender
                    .call(&MessageSend {
                        channel_id: channel,
                        client_msg_id: id.clone(),
                        content: Content::Text { text: id.clone() },
                        reply_to: None,
                        mentions: None,
                    })
                    .await;
                match sent {
                    Ok(sent) => acked.push((id, sent.pts)),
                    // Refused or cut off once shutdown starts: not acknowledged.
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    server.signal("TERM");
    let (status, _server) = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(Duration::from_secs(30));
        (status, server)
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await.unwrap());
    }
    assert!(status.success(), "exit status {status:?}");
    assert!(
        acked.len() > 10,
        "the load wrote something: {}",
        acked.len()
    );

    // After a restart on the same data, every acknowledged message is there
    // with its pts, and the log has no holes.
    let _again = Server::start(dir.path(), &args);
    let base = format!("http://{}", _again.http);
    let alice = HttpClient::new(&base)
        .login("alice", "a long password", None)
        .await
        .unwrap();
    let alice_http = HttpClient::new(&base).with_token(alice.token);
    let mut events = Vec::new();
    let mut last = 0;
    loop {
        let page = alice_http
            .call(&GetDifference {
                channel_id: channel,
                last_pts: last,
                limit: Some(1000),
            })
            .await
            .unwrap();
        last = page
            .current_pts
            .min(page.events.last().map_or(last, |e| e.pts));
        events.extend(page.events);
        if !page.has_more {
            break;
        }
    }
    let pts: Vec<u64> = events.iter().map(|e| e.pts).collect();
    assert_eq!(
        pts,
        (1..=pts.len() as u64).collect::<Vec<_>>(),
        "contiguous pts"
    );
    for (id, at) in &acked {
        let event = events
            .iter()
            .find(|e| e.pts == *at)
            .unwrap_or_else(|| panic!("acknowledged {id} at pts {at} is missing"));
        assert_eq!(event.body["client_msg_id"], id.as_str());
    }
}

/// Signal handlers are in place before the server announces itself, so a
/// SIGTERM the moment it says "listening" still shuts it down cleanly.
#[test]
fn sigterm_right_after_startup_is_graceful() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..5 {
        let mut server = Server::start(dir.path(), &["--data-dir", "d"]);
        let status = server.stop();
        assert!(status.success(), "round {round}: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_device_was_last_connected_survives_a_restart() {
    use conclave_client::api::account::DeviceList;
    use conclave_client::{Connection, Encoding, HttpClient};

    let dir = tempfile::tempdir().unwrap();
    let config = support::write_fast_config(dir.path(), "");
    let mut server = support::start_server(dir.path(), &config);
    let base = format!("http://{}", server.http);
    let alice = HttpClient::new(&base)
        .register("alice", "a long password", None)
        .await
        .unwrap();
    let alice_http = HttpClient::new(&base).with_token(alice.token.clone());
    let last_seen = |http: HttpClient| async move {
        let listed = http.call(&DeviceList {}).await.unwrap();
        assert_eq!(listed.devices.len(), 1);
        listed.devices[0].last_seen_at_ms
    };
    let at_login = last_seen(alice_http.clone()).await;

    tokio::time::sleep(Duration::from_millis(20)).await;
    let session = Connection::connect_ws(&base, &alice.token, Encoding::Json)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before_close = unix_ms();
    session.close().await;
    // The session's end is seen at once, before it is written.
    let deadline = Instant::now() + Duration::from_secs(5);
    let seen = loop {
        let seen = last_seen(alice_http.clone()).await;
        if seen >= before_close || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        seen >= before_close && seen > at_login,
        "last seen {seen}, closed at {before_close}, logged in at {at_login}"
    );

    // Stopped right away: the time is written on the way out.
    assert!(server.stop().success());
    let again = support::start_server(dir.path(), &config);
    let base = format!("http://{}", again.http);
    let alice_http = HttpClient::new(&base).with_token(alice.token.clone());
    assert_eq!(last_seen(alice_http).await, seen, "kept across the restart");
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
