//! The SDK's TCP+Noise (XK, IK) and QUIC transports against the real
//! server, started in-process.

use std::sync::Arc;
use std::time::Duration;

use conclave_client::api::account::{
    AuthGrant, DeviceKick, DeviceList, UserDetail, UserProfile, UserUpdate,
};
use conclave_client::api::events;
use conclave_client::{
    Ack, ClientError, CloseReason, ConnectOptions, Connection, Encoding, HttpClient, Keypair,
    NoiseOptions, Pattern, generate_device_keypair, server_info,
};
use conclave_config::Config;
use conclave_core::DeviceId;
use conclave_server::ServerHandle;
use serde_json::json;

const PASSWORD: &str = "correct horse battery staple";

/// How long a test waits for something that should happen promptly.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a test listens to conclude that an event is not coming. The
/// event would follow the response that triggered it within milliseconds.
const QUIET_PERIOD: Duration = Duration::from_millis(300);
/// How soon a kicked session must be closed.
const KICK_TIMEOUT: Duration = Duration::from_secs(1);

/// The realtime transports under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp(Pattern),
    Quic,
}

const TRANSPORTS: [Transport; 3] = [
    Transport::Tcp(Pattern::Xk),
    Transport::Tcp(Pattern::Ik),
    Transport::Quic,
];

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Self::Tcp(Pattern::Xk) => "xk",
            Self::Tcp(Pattern::Ik) => "ik",
            Self::Quic => "quic",
        }
    }
}

struct TestServer {
    handle: ServerHandle,
    base_url: String,
    noise_public_key: [u8; 32],
    _data_dir: tempfile::TempDir,
}

/// A logged-in device and its Noise key pair.
struct Device {
    grant: AuthGrant,
    keypair: Keypair,
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
        let info = server_info(&base_url).await.expect("server info");
        assert_eq!(info.quic_cert_sha256, handle.quic_cert_sha256);
        assert_eq!(info.protocol_version, 1);
        assert_eq!(info.name, "conclave");
        Self {
            handle,
            base_url,
            noise_public_key: info.noise_public_key,
            _data_dir: data_dir,
        }
    }

    fn http(&self) -> HttpClient {
        HttpClient::new(&self.base_url)
    }

    /// Registers `username`, its first device with a fresh key pair.
    async fn register(&self, username: &str) -> Device {
        let keypair = generate_device_keypair().expect("a key pair");
        let grant = self
            .http()
            .register_with_noise_key(username, PASSWORD, Some("laptop"), &keypair.public)
            .await
            .expect("register");
        Device { grant, keypair }
    }

    /// Logs `username` in as another device with a fresh key pair.
    async fn add_device(&self, username: &str) -> Device {
        let keypair = generate_device_keypair().expect("a key pair");
        let grant = self
            .http()
            .login_with_noise_key(username, PASSWORD, Some("phone"), None, &keypair.public)
            .await
            .expect("login");
        Device { grant, keypair }
    }

    fn noise(&self, pattern: Pattern, keypair: &Keypair, device_id: DeviceId) -> NoiseOptions {
        NoiseOptions {
            pattern,
            device_keypair: keypair.clone(),
            server_public_key: self.noise_public_key,
            device_id,
        }
    }

    async fn try_connect(
        &self,
        transport: Transport,
        device: &Device,
    ) -> Result<(Connection, Ack), ClientError> {
        self.try_connect_with(transport, device, ConnectOptions::default())
            .await
    }

    async fn try_connect_with(
        &self,
        transport: Transport,
        device: &Device,
        timings: ConnectOptions,
    ) -> Result<(Connection, Ack), ClientError> {
        match transport {
            Transport::Tcp(pattern) => {
                let options = self.noise(pattern, &device.keypair, device.grant.device_id);
                Connection::connect_tcp_with(self.handle.tcp_addr, options, timings).await
            }
            Transport::Quic => {
                Connection::connect_quic_with(
                    self.handle.quic_addr,
                    &device.grant.token,
                    &self.handle.quic_cert_sha256,
                    timings,
                )
                .await
            }
        }
    }

    async fn connect(&self, transport: Transport, device: &Device) -> Connection {
        let (conn, ack) = self
            .try_connect(transport, device)
            .await
            .unwrap_or_else(|err| panic!("{transport:?} connection: {err}"));
        assert_eq!(ack.user_id, device.grant.user_id, "{transport:?}");
        assert_eq!(ack.device_id, device.grant.device_id, "{transport:?}");
        assert_eq!(ack.protocol_version, 1, "{transport:?}");
        assert!(ack.heartbeat_interval_ms > 0, "{transport:?}");
        assert_eq!(conn.encoding(), Encoding::Binary);
        conn
    }

    async fn stop(self) {
        self.handle.shutdown();
        tokio::time::timeout(STEP_TIMEOUT, self.handle.stopped())
            .await
            .expect("the server stops");
    }
}

fn username(base: &str, transport: Transport) -> String {
    format!("{base}_{}", transport.name())
}

/// Fails unless `result` is a refusal with `code` by the server.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, ClientError>, code: &str, what: &str) {
    match result {
        Err(ClientError::Api { code: got, .. }) if got == code => {}
        other => panic!("{what}: expected a `{code}` refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_events_travel_over_every_transport() {
    const CALLS: usize = 50;
    let server = TestServer::start().await;
    for transport in TRANSPORTS {
        let name = username("alice", transport);
        let laptop = server.register(&name).await;
        let phone = server.add_device(&name).await;
        let mut conn = server.connect(transport, &laptop).await;

        let me = conn.call(&UserDetail::default()).await.expect("detail");
        assert_eq!(me.user_id, laptop.grant.user_id);
        assert_eq!(me.username, name);

        // Concurrent calls, each on its own task, two routes with
        // differently shaped answers: a response handed to the wrong call
        // would show.
        let shared = Arc::new(conn);
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..CALLS {
            let route = if i % 2 == 0 {
                "account/user/detail"
            } else {
                "device/list"
            };
            let conn = Arc::clone(&shared);
            calls.spawn(async move { (route, conn.call_raw(route, json!({})).await) });
        }
        let results = calls.join_all().await;
        assert_eq!(results.len(), CALLS);
        for (route, result) in results {
            let body = result.unwrap_or_else(|err| panic!("{transport:?} {route}: {err}"));
            if route == "device/list" {
                let current: Vec<_> = body["devices"]
                    .as_array()
                    .expect("devices")
                    .iter()
                    .filter(|d| d["current"] == json!(true))
                    .map(|d| d["device_id"].clone())
                    .collect();
                assert_eq!(current, vec![json!(laptop.grant.device_id)]);
            } else {
                assert_eq!(body["username"], json!(name));
            }
        }
        conn = Arc::into_inner(shared).expect("every task is done");

        // The user's other device, on the same transport, updates the
        // profile; this session is told.
        let other = server.connect(transport, &phone).await;
        let bio = format!("written over {}", transport.name());
        let updated = other
            .call(&UserUpdate {
                bio: Some(bio.clone()),
                ..UserUpdate::default()
            })
            .await
            .expect("update");
        let event = conn
            .next_event_timeout(STEP_TIMEOUT)
            .await
            .expect("an event in time")
            .expect("still open");
        assert_eq!(event.name, events::USER_UPDATED, "{transport:?}");
        assert_eq!((event.channel_id, event.pts), (None, None));
        let profile: UserProfile = event.body_as().expect("a profile");
        assert_eq!(profile, updated);
        assert_eq!(profile.bio, bio);

        // And the other way round, from a WebSocket session of the laptop.
        let mut other = other;
        let mut ws = Connection::connect_ws(&server.base_url, &laptop.grant.token, Encoding::Json)
            .await
            .expect("WebSocket");
        ws.call(&UserUpdate {
            bio: Some("from the WebSocket".to_owned()),
            ..UserUpdate::default()
        })
        .await
        .expect("update");
        for (who, session) in [("laptop", &mut conn), ("phone", &mut other)] {
            let event = session
                .next_event_timeout(STEP_TIMEOUT)
                .await
                .unwrap_or_else(|err| panic!("{transport:?} {who}: {err}"))
                .unwrap_or_else(|| panic!("{transport:?} {who}: closed"));
            assert_eq!(event.name, events::USER_UPDATED);
            assert_eq!(event.body()["bio"], json!("from the WebSocket"));
        }
        // The updating session's own event is not echoed to it.
        match ws.next_event_timeout(QUIET_PERIOD).await {
            Err(ClientError::Timeout(_)) => {}
            other => panic!("the updating session got {other:?}"),
        }

        ws.close().await;
        other.close().await;
        conn.close().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_noise_handshake_binds_the_device_to_its_registered_key() {
    let server = TestServer::start().await;
    let bob = server.register("bob").await;
    let stranger = generate_device_keypair().expect("a key pair");
    for pattern in [Pattern::Xk, Pattern::Ik] {
        let what = |case: &str| format!("{pattern:?}: {case}");

        let options = server.noise(pattern, &stranger, bob.grant.device_id);
        let refused = Connection::connect_tcp(server.handle.tcp_addr, options).await;
        assert_refused(refused, "key_mismatch", &what("another key"));

        let options = server.noise(pattern, &bob.keypair, DeviceId::new(987_654_321));
        let refused = Connection::connect_tcp(server.handle.tcp_addr, options).await;
        assert_refused(refused, "device_revoked", &what("an unknown device"));

        // A client that pinned another server key: the server cannot read
        // message 1.
        let mut options = server.noise(pattern, &bob.keypair, bob.grant.device_id);
        options.server_public_key = stranger.public;
        let refused = Connection::connect_tcp(server.handle.tcp_addr, options).await;
        assert_refused(refused, "handshake_failed", &what("another server key"));

        // The right key still works after all that.
        let options = server.noise(pattern, &bob.keypair, bob.grant.device_id);
        let (conn, ack) = Connection::connect_tcp(server.handle.tcp_addr, options)
            .await
            .unwrap_or_else(|err| panic!("{}: {err}", what("the registered key")));
        assert_eq!(ack.device_id, bob.grant.device_id);
        let me = conn.call(&UserDetail::default()).await.expect("detail");
        assert_eq!(me.username, "bob");
        conn.close().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_pins_the_certificate_and_checks_the_token() {
    let server = TestServer::start().await;
    let carol = server.register("carol").await;
    let addr = server.handle.quic_addr;

    let wrong = "00".repeat(32);
    let refused = tokio::time::timeout(
        STEP_TIMEOUT,
        Connection::connect_quic(addr, &carol.grant.token, &wrong),
    )
    .await
    .expect("a wrong pin fails promptly, not by timing out");
    match refused {
        Err(ClientError::Transport(why)) => {
            assert!(why.contains("not the pinned one"), "{why}");
        }
        other => panic!("a wrong pin: {other:?}"),
    }

    let refused = Connection::connect_quic(addr, &carol.grant.token, "not a fingerprint").await;
    assert!(
        matches!(refused, Err(ClientError::Transport(_))),
        "{refused:?}"
    );

    let refused = Connection::connect_quic(addr, "not-a-token", &server.handle.quic_cert_sha256)
        .await
        .map(|(_, ack)| ack);
    assert_refused(refused, "unauthenticated", "a bad token");

    // Upper-case pins are the same pin.
    let pin = server.handle.quic_cert_sha256.to_uppercase();
    let (conn, ack) = Connection::connect_quic(addr, &carol.grant.token, &pin)
        .await
        .expect("the right pin");
    assert_eq!(ack.device_id, carol.grant.device_id);
    conn.call(&DeviceList {}).await.expect("device/list");
    conn.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_device_is_closed_at_once_and_must_log_in_again() {
    let server = TestServer::start().await;
    for transport in TRANSPORTS {
        let name = username("dave", transport);
        let laptop = server.register(&name).await;
        let phone = server.add_device(&name).await;
        let mut kicked = server.connect(transport, &phone).await;

        let ended = server
            .http()
            .with_token(&laptop.grant.token)
            .call(&DeviceKick {
                device_id: phone.grant.device_id,
            })
            .await
            .expect("kick");
        assert_eq!(ended.device_ids, vec![phone.grant.device_id]);

        let reason = tokio::time::timeout(KICK_TIMEOUT, kicked.closed())
            .await
            .unwrap_or_else(|_| panic!("{transport:?}: the kicked session closes within 1 s"));
        assert_eq!(reason.code(), Some("session_kicked"), "{reason:?}");
        let goaway = kicked.goaway().expect("a goaway");
        assert!(!goaway.message.is_empty());
        let event = kicked
            .next_event_timeout(STEP_TIMEOUT)
            .await
            .expect("events end promptly");
        assert_eq!(
            event.map(|e| e.name),
            Some(events::SESSION_KICKED.to_owned())
        );
        assert_eq!(kicked.next_event_timeout(STEP_TIMEOUT).await, Ok(None));
        let err = kicked
            .call(&UserDetail::default())
            .await
            .expect_err("a closed connection refuses calls");
        assert_eq!(err.code(), Some("session_kicked"), "{err:?}");

        // Until the device logs in again, it cannot open a session.
        let refused = server.try_connect(transport, &phone).await;
        // Signed out is not removed: every transport says "log in again".
        let code = "session_kicked";
        assert_refused(refused, code, &format!("{transport:?} after the kick"));

        // Logging in again on the same device (same key) works.
        let again = server
            .http()
            .login_with_noise_key(
                &name,
                PASSWORD,
                Some("phone"),
                Some(phone.grant.device_id),
                &phone.keypair.public,
            )
            .await
            .expect("log in again");
        assert_eq!(again.device_id, phone.grant.device_id);
        let phone = Device {
            grant: again,
            keypair: phone.keypair,
        };
        let conn = server.connect(transport, &phone).await;
        let me = conn.call(&UserDetail::default()).await.expect("detail");
        assert_eq!(me.username, name);
        conn.close().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_at_once_all_get_their_answers() {
    // Far more than the server runs at once per session (32): the frames
    // arrive together, and the session must keep answering while it still
    // has requests to read.
    const CALLS: usize = 256;
    let server = TestServer::start_with(|config| {
        config.limits.requests_per_user_per_sec = 100_000;
        config.limits.requests_per_user_burst = 100_000;
        config.limits.requests_per_ip_per_sec = 100_000;
        config.limits.requests_per_ip_burst = 100_000;
    })
    .await;
    for transport in TRANSPORTS {
        let fay = server.register(&username("fay", transport)).await;
        let conn = server.connect(transport, &fay).await;
        let calls = (0..CALLS).map(|_| conn.call(&DeviceList {}));
        let answers = tokio::time::timeout(STEP_TIMEOUT, futures_util::future::join_all(calls))
            .await
            .unwrap_or_else(|_| panic!("{transport:?}: the calls were not all answered"));
        for answer in answers {
            let listed = answer.unwrap_or_else(|err| panic!("{transport:?}: {err}"));
            assert_eq!(listed.devices.len(), 1, "{transport:?}");
        }
        assert_eq!(conn.close_reason(), None, "{transport:?}");
        conn.close().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_requests_cross_several_noise_messages() {
    // A bio the server refuses only after reading all of it: 100 KB, two
    // Noise messages of at most 65,519 bytes of plaintext.
    const BIG_BIO_BYTES: usize = 100 * 1024;
    // Still a legal JSON payload (256 KiB at most), four Noise messages.
    const BIG_BODY_BYTES: usize = 200 * 1024;
    // Over the JSON payload limit: never sent.
    const TOO_BIG_BODY_BYTES: usize = 300 * 1024;
    let server = TestServer::start().await;
    for transport in TRANSPORTS {
        let erin = server.register(&username("erin", transport)).await;
        let conn = server.connect(transport, &erin).await;

        let err = conn
            .call(&UserUpdate {
                bio: Some("b".repeat(BIG_BIO_BYTES)),
                ..UserUpdate::default()
            })
            .await
            .expect_err("too long a bio");
        assert_eq!(
            err.code(),
            Some("payload_too_large"),
            "{transport:?} {err:?}"
        );

        let err = conn
            .call_raw(
                "no/such/route",
                json!({ "filler": "f".repeat(BIG_BODY_BYTES) }),
            )
            .await
            .expect_err("unknown route");
        assert_eq!(err.code(), Some("unknown_route"), "{transport:?} {err:?}");

        let err = conn
            .call_raw(
                "account/user/update",
                json!({ "bio": "f".repeat(TOO_BIG_BODY_BYTES) }),
            )
            .await
            .expect_err("over the frame's JSON limit");
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");

        // The connection is still in step (nonces, framing) after all that.
        let bio = "short again".to_owned();
        let updated = conn
            .call(&UserUpdate {
                bio: Some(bio.clone()),
                ..UserUpdate::default()
            })
            .await
            .expect("a normal update");
        assert_eq!(updated.bio, bio);
        assert_eq!(conn.close_reason(), None);
        conn.close().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_hold_off_the_idle_timeout() {
    // The server pings once a second but wants to have heard from us within
    // the last 600 ms, so only the client's own keepalives keep a session.
    let server = TestServer::start_with(|config| {
        config.limits.idle_timeout_ms = 600;
        config.limits.heartbeat_interval_ms = 1_000;
    })
    .await;
    for transport in TRANSPORTS {
        let frank = server.register(&username("frank", transport)).await;
        let quiet = ConnectOptions {
            keepalive_interval: Duration::from_secs(60),
            ..ConnectOptions::default()
        };
        let chatty = ConnectOptions {
            keepalive_interval: Duration::from_millis(200),
            ..ConnectOptions::default()
        };
        let (idle, _) = server
            .try_connect_with(transport, &frank, quiet)
            .await
            .expect("connect");
        let (alive, _) = server
            .try_connect_with(transport, &frank, chatty)
            .await
            .expect("connect");

        let reason = tokio::time::timeout(STEP_TIMEOUT, idle.closed())
            .await
            .expect("the idle connection is closed");
        // On QUIC the transport's own idle timeout (the same 600 ms) may
        // fire first and end the connection without a goaway.
        assert!(
            reason.code() == Some("idle_timeout")
                || (transport == Transport::Quic && matches!(reason, CloseReason::Disconnected(_))),
            "{transport:?}: {reason:?}"
        );

        // Well past several of the server's checks.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(alive.close_reason(), None, "{transport:?}");
        alive
            .call(&UserDetail::default())
            .await
            .expect("the kept-alive connection still works");
        alive.close().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_shutdown_says_goodbye_on_every_transport() {
    let server = TestServer::start().await;
    let mut connections = Vec::new();
    for transport in TRANSPORTS {
        let grace = server.register(&username("grace", transport)).await;
        connections.push((transport, server.connect(transport, &grace).await));
    }
    server.handle.shutdown();
    for (transport, mut conn) in connections {
        let reason = tokio::time::timeout(STEP_TIMEOUT, conn.closed())
            .await
            .expect("closed on shutdown");
        // The server closes its QUIC endpoint as soon as shutdown begins,
        // racing the sessions' goaways, so a QUIC client may only see the
        // connection end.
        assert!(
            reason.code() == Some("shutting_down")
                || (transport == Transport::Quic && matches!(reason, CloseReason::Disconnected(_))),
            "{transport:?}: {reason:?}"
        );
        assert_eq!(conn.next_event_timeout(STEP_TIMEOUT).await, Ok(None));
    }
    tokio::time::timeout(STEP_TIMEOUT, server.handle.stopped())
        .await
        .expect("the server stops");
}
