//! The same realtime scenario over every transport, against the real binary:
//! two users with two devices each, all four sessions connected, routes
//! called, one event pushed to all four; then kick and revoke close live
//! sessions within a second and their tokens stop working at once.

mod support;

use std::time::Duration;

use conclave_client::api::account::{
    AuthGrant, DeviceKick, DeviceList, DeviceRevoke, Login, Register, UserDetail,
};
use conclave_client::api::messaging::{Content, DirectGetOrCreate, MessageSend};
use conclave_client::{
    Connection, Encoding, HttpClient, Keypair, NoiseOptions, Pattern, ServerInfo,
};
use support::Server;

/// Kicks and revokes must reach live sessions within this time.
const CLOSE_WITHIN: Duration = Duration::from_secs(1);
const EVENT_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
enum Via {
    WsJson,
    WsBinary,
    TcpXk,
    TcpIk,
    Quic,
}

struct Device {
    grant: AuthGrant,
    keypair: Keypair,
}

fn start(dir: &std::path::Path) -> Server {
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        "[auth]\npassword_hash_memory_kib = 64\npassword_hash_iterations = 1\n",
    )
    .unwrap();
    Server::start(
        dir,
        &["--config", config.to_str().unwrap(), "--data-dir", "d"],
    )
}

async fn devices(http: &HttpClient, username: &str) -> (Device, Device) {
    let first_key = conclave_client::generate_device_keypair().unwrap();
    let first = http
        .call(&Register {
            username: username.to_owned(),
            password: "a long password".to_owned(),
            display_name: None,
            device_name: Some("laptop".to_owned()),
            noise_public_key: Some(hex::encode(first_key.public)),
        })
        .await
        .unwrap();
    let second_key = conclave_client::generate_device_keypair().unwrap();
    let second = http
        .call(&Login {
            username: username.to_owned(),
            password: "a long password".to_owned(),
            device_name: Some("phone".to_owned()),
            device_id: None,
            noise_public_key: Some(hex::encode(second_key.public)),
        })
        .await
        .unwrap();
    (
        Device {
            grant: first,
            keypair: first_key,
        },
        Device {
            grant: second,
            keypair: second_key,
        },
    )
}

async fn connect(
    server: &Server,
    info: &ServerInfo,
    via: Via,
    device: &Device,
) -> Result<Connection, conclave_client::ClientError> {
    let base = format!("http://{}", server.http);
    let noise = |pattern| NoiseOptions {
        pattern,
        device_keypair: device.keypair.clone(),
        server_public_key: info.noise_public_key,
        device_id: device.grant.device_id,
    };
    match via {
        Via::WsJson => Connection::connect_ws(&base, &device.grant.token, Encoding::Json).await,
        Via::WsBinary => Connection::connect_ws(&base, &device.grant.token, Encoding::Binary).await,
        Via::TcpXk => Connection::connect_tcp(server.tcp, noise(Pattern::Xk))
            .await
            .map(|(c, _)| c),
        Via::TcpIk => Connection::connect_tcp(server.tcp, noise(Pattern::Ik))
            .await
            .map(|(c, _)| c),
        Via::Quic => {
            Connection::connect_quic(server.quic, &device.grant.token, &info.quic_cert_sha256)
                .await
                .map(|(c, _)| c)
        }
    }
}

async fn scenario(via: Via) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let base = format!("http://{}", server.http);
    let http = HttpClient::new(&base);
    let info = conclave_client::server_info(&base).await.unwrap();
    let (alice_laptop, alice_phone) = devices(&http, "alice").await;
    let (bob_laptop, bob_phone) = devices(&http, "bob").await;

    let mut sessions = Vec::new();
    for (name, device) in [
        ("alice", &alice_laptop),
        ("alice", &alice_phone),
        ("bob", &bob_laptop),
        ("bob", &bob_phone),
    ] {
        let connection = connect(&server, &info, via, device).await.unwrap();
        let me = connection.call(&UserDetail::default()).await.unwrap();
        assert_eq!(me.username, name, "{via:?}");
        sessions.push(connection);
    }
    let listed = sessions[0].call(&DeviceList {}).await.unwrap();
    assert_eq!(listed.devices.len(), 2, "{via:?}");
    assert!(
        listed.devices.iter().all(|d| d.online_sessions == 1),
        "{via:?}: {listed:?}"
    );

    // Alice writes to bob over plain HTTP: all four live sessions hear it.
    let alice_http = http.clone().with_token(alice_laptop.grant.token.clone());
    let channel = alice_http
        .call(&DirectGetOrCreate {
            user_id: bob_laptop.grant.user_id,
        })
        .await
        .unwrap()
        .channel_id;
    let sent = alice_http
        .call(&MessageSend {
            channel_id: channel,
            client_msg_id: "hello-1".to_owned(),
            content: Content::Text {
                text: format!("hello over {via:?}"),
            },
            reply_to: None,
            mentions: None,
        })
        .await
        .unwrap();
    for (i, session) in sessions.iter_mut().enumerate() {
        let event = loop {
            let event = session
                .next_event_timeout(EVENT_WAIT)
                .await
                .unwrap()
                .unwrap();
            if event.name == "message/new" {
                break event;
            }
        };
        assert_eq!(event.channel_id, Some(channel), "{via:?} session {i}");
        assert_eq!(event.pts, Some(sent.pts), "{via:?} session {i}");
        assert_eq!(event.body()["client_msg_id"], "hello-1");
        assert_eq!(
            event.body()["content"]["text"],
            format!("hello over {via:?}")
        );
    }

    // Bob's laptop kicks bob's phone: its session closes within a second and
    // its token stops working at once.
    let bob_phone_session = sessions.pop().unwrap();
    sessions[2]
        .call(&DeviceKick {
            device_id: bob_phone.grant.device_id,
        })
        .await
        .unwrap();
    let reason = tokio::time::timeout(CLOSE_WITHIN, bob_phone_session.closed())
        .await
        .unwrap_or_else(|_| panic!("{via:?}: a kicked session must close within {CLOSE_WITHIN:?}"));
    assert_eq!(reason.code(), Some("session_kicked"), "{via:?}");
    let err = http
        .clone()
        .with_token(bob_phone.grant.token.clone())
        .call(&UserDetail::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("session_kicked"), "{via:?}");
    // A kicked device cannot reconnect (any transport) until it logs in again.
    let Err(refused) = connect(&server, &info, via, &bob_phone).await else {
        panic!("{via:?}: a kicked device must not reconnect");
    };
    assert!(
        matches!(refused.code(), Some("session_kicked" | "device_revoked")),
        "{via:?}: {refused:?}"
    );

    // Alice's laptop revokes alice's phone: closed, and gone from the list.
    let alice_phone_session = sessions.remove(1);
    sessions[0]
        .call(&DeviceRevoke {
            device_id: alice_phone.grant.device_id,
        })
        .await
        .unwrap();
    let reason = tokio::time::timeout(CLOSE_WITHIN, alice_phone_session.closed())
        .await
        .unwrap_or_else(|_| {
            panic!("{via:?}: a revoked session must close within {CLOSE_WITHIN:?}")
        });
    assert_eq!(reason.code(), Some("device_revoked"), "{via:?}");
    let err = http
        .clone()
        .with_token(alice_phone.grant.token.clone())
        .call(&UserDetail::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("device_revoked"), "{via:?}");
    let listed = sessions[0].call(&DeviceList {}).await.unwrap();
    assert_eq!(listed.devices.len(), 1, "{via:?}");

    // The others are untouched.
    for session in &sessions {
        session.call(&UserDetail::default()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_websocket_json() {
    scenario(Via::WsJson).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_websocket_binary() {
    scenario(Via::WsBinary).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tcp_noise_xk() {
    scenario(Via::TcpXk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tcp_noise_ik() {
    scenario(Via::TcpIk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quic() {
    scenario(Via::Quic).await;
}

/// A session is registered before the client learns it is connected, so an
/// event caused the moment `connect` returns is never missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_caused_right_after_connecting_is_never_missed() {
    use conclave_client::api::account::UserUpdate;

    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let base = format!("http://{}", server.http);
    let http = HttpClient::new(&base);
    let (laptop, phone) = devices(&http, "eve").await;
    let laptop_http = http.clone().with_token(laptop.grant.token.clone());
    for round in 0..30 {
        let encoding = if round % 2 == 0 {
            Encoding::Json
        } else {
            Encoding::Binary
        };
        let mut session = Connection::connect_ws(&base, &phone.grant.token, encoding)
            .await
            .unwrap();
        let bio = format!("round {round}");
        laptop_http
            .call(&UserUpdate {
                bio: Some(bio.clone()),
                ..UserUpdate::default()
            })
            .await
            .unwrap();
        let event = session
            .next_event_timeout(EVENT_WAIT)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the event was missed"))
            .unwrap();
        assert_eq!(event.name, "user/updated");
        assert_eq!(event.body()["bio"], bio.as_str());
        session.close().await;
    }
}

/// A session connected with `hold_events` gets nothing live until it calls
/// `sync/session_ready`, then everything that was held, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_events_are_released_by_session_ready() {
    use conclave_client::api::account::UserUpdate;
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let base = format!("http://{}", server.http);
    let http = HttpClient::new(&base);
    let (laptop, phone) = devices(&http, "hal").await;
    let url = format!(
        "ws://{}/v1/ws?token={}&hold_events=true",
        server.http, phone.grant.token
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let laptop_http = http.clone().with_token(laptop.grant.token.clone());
    for bio in ["first", "second"] {
        laptop_http
            .call(&UserUpdate {
                bio: Some(bio.to_owned()),
                ..UserUpdate::default()
            })
            .await
            .unwrap();
    }
    // Nothing arrives while held.
    let early = tokio::time::timeout(Duration::from_millis(500), socket.next()).await;
    assert!(
        early.is_err(),
        "an event leaked before session_ready: {early:?}"
    );

    socket
        .send(Message::Text(
            r#"{"id":1,"route":"sync/session_ready","body":{}}"#.into(),
        ))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let message = tokio::time::timeout(EVENT_WAIT, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            seen.push(serde_json::from_str::<serde_json::Value>(&text).unwrap());
        }
    }
    assert_eq!(seen[0]["id"], 1, "the answer comes first: {seen:?}");
    assert_eq!(seen[0]["ok"], true);
    assert_eq!(seen[1]["event"], "user/updated");
    assert_eq!(seen[1]["body"]["bio"], "first");
    assert_eq!(seen[2]["body"]["bio"], "second");
}

/// Pages of sync and history are bounded by size as well as count: large
/// messages give smaller pages (with `has_more`), never an oversized answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_page_by_size_instead_of_failing() {
    use conclave_client::api::messaging::{GetDifference, HistoryGet};

    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let base = format!("http://{}", server.http);
    let http = HttpClient::new(&base);
    let (alice, _) = devices(&http, "ada").await;
    let (bob, _) = devices(&http, "bea").await;
    let alice_http = http.clone().with_token(alice.grant.token.clone());
    let channel = alice_http
        .call(&DirectGetOrCreate {
            user_id: bob.grant.user_id,
        })
        .await
        .unwrap()
        .channel_id;
    let big = "x".repeat(8 * 1024);
    for i in 0..100 {
        alice_http
            .call(&MessageSend {
                channel_id: channel,
                client_msg_id: format!("big-{i}"),
                content: Content::Text { text: big.clone() },
                reply_to: None,
                mentions: None,
            })
            .await
            .unwrap();
    }
    let bob_http = http.clone().with_token(bob.grant.token.clone());
    let (mut last, mut pages, mut seen) = (0, 0, Vec::new());
    loop {
        let page = bob_http
            .call(&GetDifference {
                channel_id: channel,
                last_pts: last,
                limit: Some(1000),
            })
            .await
            .expect("a page, not payload_too_large");
        pages += 1;
        seen.extend(page.events.iter().map(|e| e.pts));
        last = page.events.last().map_or(last, |e| e.pts);
        if !page.has_more {
            break;
        }
    }
    assert!(pages > 1, "800 KiB of events cannot fit one page");
    assert_eq!(seen, (1..=100).collect::<Vec<u64>>());

    let history = bob_http
        .call(&HistoryGet {
            channel_id: channel,
            before_pts: None,
            limit: Some(200),
        })
        .await
        .expect("a history page, not payload_too_large");
    assert!(history.has_more);
    assert!(!history.messages.is_empty() && history.messages.len() < 100);
    assert_eq!(
        history.messages.last().unwrap().pts,
        100,
        "the page ends at the newest"
    );
}

/// A client may pipeline far more requests than the session runs at once
/// (`limits.session_requests_in_flight`, 32): 300 requests in one binary
/// message are all answered, none lost and the session not stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_many_requests_gets_every_answer() {
    use conclave_protocol::{Decoded, Frame, FrameType, decode_frame};
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    const REQUESTS: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let http = HttpClient::new(&format!("http://{}", server.http));
    let (alice, _) = devices(&http, "ada").await;

    let url = format!(
        "ws://{}/v1/ws?encoding=binary&token={}",
        server.http, alice.grant.token
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut message = Vec::new();
    for id in 1..=REQUESTS {
        let payload = serde_json::json!({ "route": "device/list", "body": {} }).to_string();
        let frame = Frame::new(FrameType::RpcRequest, 0, id, payload.into_bytes());
        message.extend_from_slice(&frame.encode().unwrap());
    }
    socket.send(Message::Binary(message.into())).await.unwrap();

    let mut answered = std::collections::BTreeSet::new();
    while (answered.len() as u64) < REQUESTS {
        let next = tokio::time::timeout(EVENT_WAIT, socket.next())
            .await
            .unwrap_or_else(|_| panic!("stuck after {} answers", answered.len()));
        let Some(Ok(Message::Binary(bytes))) = next else {
            panic!(
                "the session ended after {} answers: {next:?}",
                answered.len()
            );
        };
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let Ok(Decoded::Frame { frame, consumed }) = decode_frame(rest) else {
                panic!("a whole frame");
            };
            rest = &rest[consumed..];
            if frame.frame_type != FrameType::RpcResponse {
                continue;
            }
            let reply: serde_json::Value = serde_json::from_slice(&frame.payload).unwrap();
            // Answered, one way or the other (the rate limit may refuse some).
            assert!(
                reply["ok"] == true || reply["error"]["code"] == "rate_limited",
                "{reply}"
            );
            assert!(
                answered.insert(frame.sequence),
                "answered twice: {}",
                frame.sequence
            );
        }
    }
    assert_eq!(answered, (1..=REQUESTS).collect());
}
