//! Hostile and broken input against the real binary: every case gets its
//! stable error code, protocol violations close that connection only, and
//! the server keeps serving everyone else.

mod support;

use std::time::Duration;

use conclave_client::api::account::Register;
use conclave_client::{Connection, Encoding, HttpClient};
use conclave_protocol::{Decoded, Frame, FrameType, decode_frame, varint};
use futures_util::{SinkExt as _, StreamExt as _};
use support::Server;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

fn fast_config(dir: &std::path::Path) -> String {
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        "[auth]\npassword_hash_memory_kib = 64\npassword_hash_iterations = 1\n",
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

async fn register(
    server: &Server,
    name: &str,
    noise_key: Option<[u8; 32]>,
) -> conclave_client::api::account::AuthGrant {
    HttpClient::new(&format!("http://{}", server.http))
        .call(&Register {
            username: name.to_owned(),
            password: "long enough password".to_owned(),
            display_name: None,
            device_name: Some("test".to_owned()),
            noise_public_key: noise_key.map(hex::encode),
        })
        .await
        .unwrap()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(server: &Server, token: &str, encoding: &str) -> Ws {
    let url = format!(
        "ws://{}/v1/ws?token={token}&encoding={encoding}",
        server.http
    );
    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .unwrap()
        .0
}

/// Reads until a Goaway frame (binary) or goaway object (text) arrives;
/// returns its code, then checks the server closes the socket.
async fn goaway_code(socket: &mut Ws) -> String {
    let code = tokio::time::timeout(WAIT, async {
        while let Some(Ok(message)) = socket.next().await {
            match message {
                Message::Binary(bytes) => {
                    if let Ok(Decoded::Frame { frame, .. }) = decode_frame(&bytes) {
                        if frame.frame_type == FrameType::Goaway {
                            let payload: serde_json::Value =
                                serde_json::from_slice(&frame.payload).unwrap();
                            return payload["code"].as_str().unwrap().to_owned();
                        }
                    }
                }
                Message::Text(text) => {
                    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                    if let Some(code) = value["goaway"]["code"].as_str() {
                        return code.to_owned();
                    }
                }
                _ => {}
            }
        }
        panic!("connection ended without a goaway");
    })
    .await
    .expect("a goaway in time");
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert_eq!(
        closed,
        Ok(true),
        "the server closes after a protocol violation"
    );
    code
}

/// The next JSON text reply.
async fn json_reply(socket: &mut Ws) -> serde_json::Value {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Ok(Message::Text(text))) = socket.next().await {
                return serde_json::from_str::<serde_json::Value>(&text).unwrap();
            }
        }
    })
    .await
    .unwrap()
}

fn frame_bytes(frame_type: u8, payload: &[u8]) -> Vec<u8> {
    // Channel 0, sequence 0: what handshake frames must carry.
    let mut body = vec![frame_type, 0, 0];
    varint::encode_u64(payload.len() as u64, &mut body);
    body.extend_from_slice(payload);
    let mut out = Vec::new();
    varint::encode_u64(body.len() as u64, &mut out);
    out.extend(body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_websocket_traffic_gets_stable_codes_and_spares_other_connections() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path());
    let server = Server::start(dir.path(), &["--config", &config, "--data-dir", "d"]);
    let grant = register(&server, "mallory", None).await;
    let base = format!("http://{}", server.http);
    // A well-behaved client that must not notice anything.
    let bystander = Connection::connect_ws(&base, &grant.token, Encoding::Json)
        .await
        .unwrap();

    // Binary protocol violations: goaway with the code, then close.
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "unknown frame type",
            frame_bytes(0x7f, b"{}"),
            "unknown_frame_type",
        ),
        (
            "frame_len of 32 MiB",
            {
                let mut bytes = Vec::new();
                varint::encode_u64(32 * 1024 * 1024, &mut bytes);
                bytes.push(0x20);
                bytes
            },
            "frame_too_large",
        ),
        ("empty frame", vec![0x00], "malformed_frame"),
        (
            "payload_len lies",
            vec![0x05, 0x20, 0x00, 0x01, 0x09, b'{'],
            "malformed_frame",
        ),
        ("varint overflow", vec![0xff; 11], "malformed_frame"),
        (
            "a frame cut short",
            frame_bytes(0x20, b"{\"route\":\"x\"}")[..5].to_vec(),
            "malformed_frame",
        ),
        (
            "a client sending media here",
            frame_bytes(0x05, b"raw"),
            "unsupported_frame",
        ),
    ];
    for (what, bytes, expected) in cases {
        let mut socket = ws(&server, &grant.token, "binary").await;
        socket.send(Message::Binary(bytes.into())).await.unwrap();
        assert_eq!(goaway_code(&mut socket).await, expected, "{what}");
    }

    // A JSON payload problem spoils one request, not the connection.
    let mut socket = ws(&server, &grant.token, "binary").await;
    socket
        .send(Message::Binary(frame_bytes(0x20, b"not json").into()))
        .await
        .unwrap();
    socket
        .send(Message::Binary(
            Frame::json(
                FrameType::RpcRequest,
                0,
                2,
                &serde_json::json!({"route": "account/user/detail", "body": {}}),
            )
            .unwrap()
            .encode()
            .unwrap()
            .to_vec()
            .into(),
        ))
        .await
        .unwrap();
    let mut answers = Vec::new();
    while answers.len() < 2 {
        if let Some(Ok(Message::Binary(bytes))) =
            tokio::time::timeout(WAIT, socket.next()).await.unwrap()
        {
            let Ok(Decoded::Frame { frame, .. }) = decode_frame(&bytes) else {
                continue;
            };
            if frame.frame_type == FrameType::RpcResponse {
                let payload: serde_json::Value = serde_json::from_slice(&frame.payload).unwrap();
                answers.push((frame.sequence, payload));
            }
        }
    }
    answers.sort_by_key(|(sequence, _)| *sequence);
    assert_eq!(answers[0].1["error"]["code"], "invalid_json");
    assert_eq!(answers[1].1["ok"], true, "the connection still works");

    // JSON mode: bad requests are answered, the connection stays.
    let mut socket = ws(&server, &grant.token, "json").await;
    for (request, expected) in [
        ("not json at all", "invalid_json"),
        (
            r#"{"id": 1, "route": "no/such/route", "body": {}}"#,
            "unknown_route",
        ),
        (
            r#"{"id": 2, "route": "device/kick", "body": {"device_id": true}}"#,
            "bad_request",
        ),
        (
            r#"{"id": 3, "route": "device/list", "body": [1, 2]}"#,
            "bad_request",
        ),
        (r#"{"id": "four", "route": "device/list"}"#, "bad_request"),
    ] {
        socket.send(Message::Text(request.into())).await.unwrap();
        let reply = json_reply(&mut socket).await;
        assert_eq!(reply["ok"], false, "{request}");
        assert_eq!(reply["error"]["code"], expected, "{request}");
    }
    socket
        .send(Message::Text(
            r#"{"id": 9, "route": "device/list", "body": {}}"#.into(),
        ))
        .await
        .unwrap();
    assert_eq!(json_reply(&mut socket).await["ok"], true);
    // An oversized JSON message ends the connection.
    let huge = format!(
        r#"{{"id": 10, "route": "device/list", "body": {{"x": "{}"}}}}"#,
        "x".repeat(300 * 1024)
    );
    socket.send(Message::Text(huge.into())).await.unwrap();
    assert_eq!(goaway_code(&mut socket).await, "payload_too_large");

    // The bystander saw nothing and still works.
    let me: serde_json::Value = bystander
        .call_raw("account/user/detail", serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(me["username"], "mallory");
    assert!(
        !server
            .logs()
            .iter()
            .any(|line| line.to_string().contains("panicked"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_expired_and_forged_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // One-second access tokens, so one expires during the test.
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[auth]\npassword_hash_memory_kib = 64\npassword_hash_iterations = 1\naccess_token_ttl_secs = 1\n",
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let server = Server::start(dir.path(), &["--config", &config, "--data-dir", "d"]);
    let grant = register(&server, "tom", None).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", server.http);

    let refused = |status: u16, body: serde_json::Value, code: &str| {
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
    };
    let response = http
        .post(format!("{base}/api/v1/device/list"))
        .send()
        .await
        .unwrap();
    refused(
        response.status().as_u16(),
        response.json().await.unwrap(),
        "unauthenticated",
    );
    let forged = format!("{}x", grant.token);
    let response = http
        .post(format!("{base}/api/v1/device/list"))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    refused(
        response.status().as_u16(),
        response.json().await.unwrap(),
        "unauthenticated",
    );
    for token in ["", "garbage", forged.as_str()] {
        let err = Connection::connect_ws(&base, token, Encoding::Json)
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), Some("unauthenticated"), "{token}");
    }

    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let response = http
        .post(format!("{base}/api/v1/device/list"))
        .bearer_auth(&grant.token)
        .send()
        .await
        .unwrap();
    refused(
        response.status().as_u16(),
        response.json().await.unwrap(),
        "token_expired",
    );
    let err = Connection::connect_ws(&base, &grant.token, Encoding::Binary)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some("token_expired"));
    // The refresh token still works and yields a fresh access token.
    let refreshed: serde_json::Value = http
        .post(format!("{base}/api/v1/account/auth/refresh"))
        .json(&serde_json::json!({ "refresh_token": grant.refresh_token }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fresh = refreshed["token"].as_str().unwrap();
    let response = http
        .post(format!("{base}/api/v1/device/list"))
        .bearer_auth(fresh)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Reads one plaintext frame from a raw TCP connection.
async fn read_frame(stream: &mut tokio::net::TcpStream) -> Option<Frame> {
    let mut buffer = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(Decoded::Frame { frame, .. }) = decode_frame(&buffer) {
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .unwrap()
}

async fn tcp_refusal(server: &Server, bytes: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(server.tcp).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let frame = read_frame(&mut stream).await.expect("a goaway frame");
    assert_eq!(frame.frame_type, FrameType::Goaway);
    let payload: serde_json::Value = serde_json::from_slice(&frame.payload).unwrap();
    // Then the server closes.
    let mut rest = [0u8; 64];
    let n = tokio::time::timeout(WAIT, stream.read(&mut rest))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed after the goaway");
    payload["code"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_tampered_noise_handshakes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path());
    let server = Server::start(dir.path(), &["--config", &config, "--data-dir", "d"]);
    let device = conclave_tunnel::generate_keypair().unwrap();
    let grant = register(&server, "trudy", Some(device.public)).await;
    let info: serde_json::Value = reqwest::get(format!("http://{}/v1/server-info", server.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let server_key: [u8; 32] = hex::decode(info["noise_public_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();

    assert_eq!(
        tcp_refusal(&server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await,
        "unknown_frame_type"
    );
    assert_eq!(
        tcp_refusal(
            &server,
            &frame_bytes(0x01, b"{\"pattern\":\"NN\",\"handshake\":\"00\"}")
        )
        .await,
        "unsupported_pattern"
    );
    assert_eq!(
        tcp_refusal(&server, &frame_bytes(0x01, b"[not an object]")).await,
        "invalid_json"
    );
    assert_eq!(
        tcp_refusal(&server, &frame_bytes(0x20, b"{}")).await,
        "handshake_failed"
    );

    // A genuine Hello with one hex digit of the Noise message changed.
    let (_, hello) = conclave_tunnel::InitiatorHandshake::start(
        conclave_tunnel::Pattern::Xk,
        &device,
        &server_key,
        grant.device_id.get(),
    )
    .unwrap();
    let mut payload: serde_json::Value = serde_json::from_slice(&hello.payload).unwrap();
    let mut message = payload["handshake"].as_str().unwrap().to_owned();
    let flipped = if message.ends_with('0') { '1' } else { '0' };
    message.pop();
    message.push(flipped);
    payload["handshake"] = serde_json::Value::String(message);
    let tampered = Frame::json(FrameType::Hello, 0, 0, &payload)
        .unwrap()
        .encode()
        .unwrap();
    assert_eq!(tcp_refusal(&server, &tampered).await, "handshake_failed");

    // IK with a key that is not the device's registered one.
    let stranger = conclave_tunnel::generate_keypair().unwrap();
    let (_, hello) = conclave_tunnel::InitiatorHandshake::start(
        conclave_tunnel::Pattern::Ik,
        &stranger,
        &server_key,
        grant.device_id.get(),
    )
    .unwrap();
    assert_eq!(
        tcp_refusal(&server, &hello.encode().unwrap()).await,
        "key_mismatch"
    );

    // A replayed Hello of a real device cannot get further than message 2:
    // without the device's keys nothing after it can be produced. And the
    // server is unharmed.
    let response = reqwest::get(format!("http://{}/health", server.admin))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
