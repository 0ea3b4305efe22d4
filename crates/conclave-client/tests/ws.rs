//! The SDK against the real server, started in-process, in both WebSocket
//! encodings.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use conclave_client::api::account::{
    AuthGrant, DeviceKick, DeviceList, Login, UserDetail, UserProfile, UserUpdate,
};
use conclave_client::api::events;
use conclave_client::{ClientError, CloseReason, ConnectOptions, Connection, Encoding, HttpClient};
use conclave_config::Config;
use conclave_server::ServerHandle;
use serde_json::json;

const ENCODINGS: [Encoding; 2] = [Encoding::Json, Encoding::Binary];
const PASSWORD: &str = "correct horse battery staple";

/// How long a test waits for something that should happen promptly.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a test listens to conclude that an event is not coming. The
/// event would follow the response that triggered it within milliseconds.
const QUIET_PERIOD: Duration = Duration::from_millis(300);
/// Polling interval while waiting for the server's bookkeeping to settle.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

struct TestServer {
    handle: ServerHandle,
    base_url: String,
    _data_dir: tempfile::TempDir,
}

impl TestServer {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let data_dir = tempfile::tempdir().expect("a temporary directory");
        let mut config = Config {
            data_dir: data_dir.path().join("data"),
            ..Config::default()
        };
        config.server.bind = [127, 0, 0, 1].into();
        // Every listener on an ephemeral port, so tests can run in parallel.
        config.server.http_port = 0;
        config.server.admin_port = 0;
        config.server.grpc_port = 0;
        config.server.tcp_port = 0;
        config.server.quic_port = 0;
        config.auth.password_hash_memory_kib = 64;
        config.auth.password_hash_iterations = 1;
        adjust(&mut config);
        let handle = conclave_server::start(config)
            .await
            .expect("the server starts");
        let base_url = format!("http://{}", handle.http_addr);
        Self {
            handle,
            base_url,
            _data_dir: data_dir,
        }
    }

    fn http(&self) -> HttpClient {
        HttpClient::new(&self.base_url)
    }

    async fn connect(&self, token: &str, encoding: Encoding) -> Connection {
        Connection::connect_ws(&self.base_url, token, encoding)
            .await
            .unwrap_or_else(|err| panic!("{encoding:?} connection: {err}"))
    }

    async fn stop(self) {
        self.handle.shutdown();
        tokio::time::timeout(STEP_TIMEOUT, self.handle.stopped())
            .await
            .expect("the server stops");
    }
}

/// A user with two devices, both logged in over HTTP.
async fn user_with_two_devices(server: &TestServer, username: &str) -> (AuthGrant, AuthGrant) {
    let http = server.http();
    let first = http
        .register(username, PASSWORD, Some("laptop"))
        .await
        .expect("register");
    let second = http
        .login(username, PASSWORD, Some("phone"))
        .await
        .expect("login a second device");
    assert_eq!(first.user_id, second.user_id);
    assert_ne!(first.device_id, second.device_id);
    (first, second)
}

fn username(base: &str, encoding: Encoding) -> String {
    format!("{base}_{}", encoding.as_str())
}

/// Waits until `check` holds, polling; fails the test after `STEP_TIMEOUT`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn online_sessions(conn: &Connection) -> Vec<(conclave_core::DeviceId, u32)> {
    let list = conn.call(&DeviceList {}).await.expect("device/list");
    list.devices
        .iter()
        .map(|d| (d.device_id, d.online_sessions))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_see_each_other_and_profile_updates_reach_the_others() {
    let server = TestServer::start().await;
    for encoding in ENCODINGS {
        let name = username("alice", encoding);
        let (first, second) = user_with_two_devices(&server, &name).await;
        let mut conn1 = server.connect(&first.token, encoding).await;
        let mut conn2 = server.connect(&second.token, encoding).await;
        assert_eq!(conn1.encoding(), encoding);

        let me = conn1.call(&UserDetail::default()).await.expect("detail");
        assert_eq!(me.user_id, first.user_id);
        assert_eq!(me.username, name);

        let list = conn1.call(&DeviceList {}).await.expect("device/list");
        assert_eq!(list.devices.len(), 2, "{list:?}");
        for device in &list.devices {
            assert_eq!(device.online_sessions, 1, "{device:?}");
            assert_eq!(device.current, device.device_id == first.device_id);
        }

        // A second live session of device 1 is counted, and, not being the
        // session that makes the update, is told about it.
        let mut conn1b = server.connect(&first.token, encoding).await;
        let mut counts = online_sessions(&conn2).await;
        counts.sort();
        let mut expected = vec![(first.device_id, 2), (second.device_id, 1)];
        expected.sort();
        assert_eq!(counts, expected);

        let bio = format!("written over {}", encoding.as_str());
        let updated = conn1
            .call(&UserUpdate {
                bio: Some(bio.clone()),
                ..UserUpdate::default()
            })
            .await
            .expect("update");
        assert_eq!(updated.bio, bio);

        for (who, conn) in [
            ("device 2", &mut conn2),
            ("device 1's other session", &mut conn1b),
        ] {
            let event = conn
                .next_event_timeout(STEP_TIMEOUT)
                .await
                .unwrap_or_else(|err| panic!("{who}: {err}"))
                .unwrap_or_else(|| panic!("{who}: connection closed"));
            assert_eq!(event.name, events::USER_UPDATED, "{who}");
            assert_eq!(event.body()["bio"], json!(bio), "{who}");
            assert_eq!((event.channel_id, event.pts), (None, None), "{who}");
            let profile: UserProfile = event.body_as().expect("a profile");
            assert_eq!(profile, updated, "{who}");
        }
        // The sender's own session is excluded.
        match conn1.next_event_timeout(QUIET_PERIOD).await {
            Err(ClientError::Timeout(_)) => {}
            other => panic!("the updating session got {other:?}"),
        }

        conn1b.close().await;
        eventually("the closed session is no longer counted", || async {
            online_sessions(&conn1)
                .await
                .contains(&(first.device_id, 1))
        })
        .await;
        conn1.close().await;
        conn2.close().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_device_is_closed_at_once_and_may_log_in_again() {
    let server = TestServer::start().await;
    for encoding in ENCODINGS {
        let name = username("bob", encoding);
        let (first, second) = user_with_two_devices(&server, &name).await;
        let conn1 = server.connect(&first.token, encoding).await;
        let mut conn1b = server.connect(&first.token, encoding).await;
        let mut conn2 = server.connect(&second.token, encoding).await;

        let ended = conn1
            .call(&DeviceKick {
                device_id: second.device_id,
            })
            .await
            .expect("kick");
        assert_eq!(ended.device_ids, vec![second.device_id]);

        let reason = tokio::time::timeout(Duration::from_secs(1), conn2.closed())
            .await
            .expect("the kicked session closes within a second");
        assert_eq!(reason.code(), Some("session_kicked"), "{reason:?}");
        let goaway = conn2.goaway().expect("a goaway");
        assert_eq!(goaway.code, "session_kicked");
        assert!(!goaway.message.is_empty());
        assert!(conn2.is_closed());

        // The event announcing the kick arrives before the end of events.
        let event = conn2.next_event_timeout(STEP_TIMEOUT).await.expect("event");
        assert_eq!(
            event.map(|e| e.name),
            Some(events::SESSION_KICKED.to_owned())
        );
        assert_eq!(conn2.next_event_timeout(STEP_TIMEOUT).await, Ok(None));
        let err = conn2
            .call(&UserDetail::default())
            .await
            .expect_err("a closed connection refuses calls");
        assert!(matches!(err, ClientError::Closed(Some(_))), "{err:?}");
        assert_eq!(err.code(), Some("session_kicked"));

        // The user's other sessions (not the kicking one) learn it from the
        // inbox entry, which devices that were offline get by sync.
        let changed = conn1b
            .next_event_timeout(STEP_TIMEOUT)
            .await
            .expect("event");
        let changed = changed.expect("still open");
        assert_eq!(changed.name, events::INBOX_NEW);
        assert_eq!(changed.body()["event"], events::DEVICE_ENDED);
        assert_eq!(
            changed.body()["body"]["device_ids"],
            json!([second.device_id])
        );
        let inbox = conn1b
            .call(&conclave_client::api::messaging::GetInboxDifference {
                last_pts: 0,
                limit: None,
            })
            .await
            .unwrap();
        let last = inbox.events.last().unwrap();
        assert_eq!(last.pts, changed.body()["pts"].as_u64().unwrap());
        assert_eq!(last.event, events::DEVICE_ENDED);
        assert_eq!(inbox.current_pts, last.pts);
        assert!(!inbox.has_more);

        // The old token is dead everywhere.
        let old = server.http().with_token(&second.token);
        let err = old
            .call(&UserDetail::default())
            .await
            .expect_err("old token");
        assert_eq!(err.code(), Some("session_kicked"));
        let err = Connection::connect_ws(&server.base_url, &second.token, encoding)
            .await
            .expect_err("old token on the WebSocket");
        assert_eq!(err.code(), Some("session_kicked"));

        // Logging in again on the same device works.
        let again = server
            .http()
            .call(&Login {
                username: name.clone(),
                password: PASSWORD.to_owned(),
                device_name: Some("phone".to_owned()),
                device_id: Some(second.device_id),
                noise_public_key: None,
            })
            .await
            .expect("log in again");
        assert_eq!(again.device_id, second.device_id);
        let conn2 = server.connect(&again.token, encoding).await;
        let me = conn2.call(&UserDetail::default()).await.expect("detail");
        assert_eq!(me.username, name);
        let me = server
            .http()
            .with_token(&again.token)
            .call(&UserDetail::default())
            .await
            .expect("detail over HTTP");
        assert_eq!(me.user_id, first.user_id);

        conn1.close().await;
        conn1b.close().await;
        conn2.close().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_their_codes_and_leave_the_connection_usable() {
    let server = TestServer::start().await;
    for encoding in ENCODINGS {
        let name = username("carol", encoding);
        let grant = server
            .http()
            .register(&name, PASSWORD, None)
            .await
            .expect("register");
        let conn = server.connect(&grant.token, encoding).await;

        let err = conn
            .call_raw("no/such/route", json!({}))
            .await
            .expect_err("unknown route");
        assert!(
            matches!(&err, ClientError::Api { code, .. } if code == "unknown_route"),
            "{err:?}"
        );

        let err = conn
            .call_raw("device/kick", json!({ "device_id": true }))
            .await
            .expect_err("wrong type");
        assert_eq!(err.code(), Some("bad_request"), "{err:?}");
        assert!(err.to_string().contains("device_id"), "{err}");

        let err = conn
            .call_raw("account/user/detail", json!([1, 2]))
            .await
            .expect_err("not an object");
        assert_eq!(err.code(), Some("bad_request"), "{err:?}");

        let me = conn
            .call(&UserDetail::default())
            .await
            .expect("the connection survives refusals");
        assert_eq!(me.username, name);

        let err = Connection::connect_ws(&server.base_url, "not-a-token", encoding)
            .await
            .expect_err("bad token");
        assert!(
            matches!(&err, ClientError::Api { code, .. } if code == "unauthenticated"),
            "{err:?}"
        );
        conn.close().await;
    }

    // The same refusals over plain HTTP.
    let http = server.http();
    let err = http
        .login("nobody_here", PASSWORD, None)
        .await
        .expect_err("unknown user");
    assert_eq!(err.code(), Some("invalid_credentials"));
    let err = http
        .call(&UserDetail::default())
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Some("unauthenticated"));
    let err = http
        .with_token("not-a-token")
        .call_raw("no/such/route", json!({}))
        .await
        .expect_err("bad token");
    assert_eq!(err.code(), Some("unauthenticated"));
    let err = server
        .http()
        .call_raw("no/such/route", json!({}))
        .await
        .expect_err("unknown route");
    assert_eq!(err.code(), Some("unknown_route"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_on_one_connection_get_their_own_responses() {
    const CALLS: usize = 100;
    let server = TestServer::start().await;
    for encoding in ENCODINGS {
        let name = username("dave", encoding);
        let grant = server
            .http()
            .register(&name, PASSWORD, None)
            .await
            .expect("register");
        let conn = Arc::new(server.connect(&grant.token, encoding).await);
        // Two routes with differently shaped answers, interleaved, each call
        // on its own task (as a load generator would make them), so that a
        // response handed to the wrong call would show.
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..CALLS {
            let route = if i % 2 == 0 {
                "account/user/detail"
            } else {
                "device/list"
            };
            let conn = Arc::clone(&conn);
            calls.spawn(async move { (route, conn.call_raw(route, json!({})).await) });
        }
        let results = calls.join_all().await;
        assert_eq!(results.len(), CALLS);
        for (route, result) in results {
            let body = result.unwrap_or_else(|err| panic!("{route}: {err}"));
            if route == "device/list" {
                assert_eq!(body["devices"][0]["device_id"], json!(grant.device_id));
            } else {
                assert_eq!(body["username"], json!(name));
            }
        }
        let conn = Arc::into_inner(conn).expect("every task is done");
        conn.close().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_hold_off_the_idle_timeout() {
    // The server checks for idleness once a second and wants to have heard
    // from us within the last 600 ms, so only the client's own keepalives
    // can keep a connection past the first check.
    let server = TestServer::start_with(|config| {
        config.limits.idle_timeout_ms = 600;
        config.limits.heartbeat_interval_ms = 1_000;
    })
    .await;
    for encoding in ENCODINGS {
        let grant = server
            .http()
            .register(&username("erin", encoding), PASSWORD, None)
            .await
            .expect("register");
        let quiet = ConnectOptions {
            keepalive_interval: Duration::from_secs(60),
            ..ConnectOptions::default()
        };
        let chatty = ConnectOptions {
            keepalive_interval: Duration::from_millis(200),
            ..ConnectOptions::default()
        };
        let idle = Connection::connect_ws_with(&server.base_url, &grant.token, encoding, quiet)
            .await
            .expect("connect");
        let alive = Connection::connect_ws_with(&server.base_url, &grant.token, encoding, chatty)
            .await
            .expect("connect");

        let reason = tokio::time::timeout(STEP_TIMEOUT, idle.closed())
            .await
            .expect("the idle connection is closed");
        // The session would say `idle_timeout`, but the HTTP listener's own
        // read deadline (the same `idle_timeout_ms`) always fires first and
        // drops the TCP connection without a goodbye.
        assert!(
            reason.code() == Some("idle_timeout") || matches!(reason, CloseReason::Disconnected(_)),
            "{reason:?}"
        );
        let err = idle.call(&UserDetail::default()).await.expect_err("closed");
        assert!(matches!(err, ClientError::Closed(_)), "{err:?}");

        // Well past several of the server's checks.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(alive.close_reason(), None);
        alive
            .call(&UserDetail::default())
            .await
            .expect("the kept-alive connection still works");
        alive.close().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_shutdown_says_goodbye_and_closes_sessions() {
    let server = TestServer::start().await;
    let mut connections = Vec::new();
    for encoding in ENCODINGS {
        let grant = server
            .http()
            .register(&username("frank", encoding), PASSWORD, None)
            .await
            .expect("register");
        connections.push(server.connect(&grant.token, encoding).await);
    }
    server.handle.shutdown();
    for mut conn in connections {
        let reason = tokio::time::timeout(STEP_TIMEOUT, conn.closed())
            .await
            .expect("closed on shutdown");
        assert_eq!(reason.code(), Some("shutting_down"), "{reason:?}");
        assert_eq!(conn.next_event_timeout(STEP_TIMEOUT).await, Ok(None));
    }
    tokio::time::timeout(STEP_TIMEOUT, server.handle.stopped())
        .await
        .expect("the server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_may_come_from_a_chosen_local_address() {
    let server = TestServer::start().await;
    let grant = server
        .http()
        .register("from_elsewhere", PASSWORD, Some("laptop"))
        .await
        .expect("register");
    for (i, encoding) in ENCODINGS.into_iter().enumerate() {
        let options = ConnectOptions {
            local_addr: Some([127, 0, 0, 2 + i as u8].into()),
            ..ConnectOptions::default()
        };
        let conn = Connection::connect_ws_with(&server.base_url, &grant.token, encoding, options)
            .await
            .unwrap_or_else(|err| panic!("{encoding:?} from a chosen address: {err}"));
        let me = conn.call(&UserDetail::default()).await.expect("detail");
        assert_eq!(me.user_id, grant.user_id);
        conn.close().await;
    }
    server.stop().await;
}
