//! The collaborative-document endpoint byte by byte, against the real
//! binary: the y-websocket exchange with the vectors from the notes
//! (yjs 13.6.33 / y-protocols 1.0.7), relaying rules, every refusal's close
//! code, and the `doc/create` and `doc/token` routes. Real Yjs editors are
//! in `collab_node.rs`.

mod support;

use std::time::Duration;

use conclave_client::api::documents::{DocCreate, DocScope, DocToken};
use futures_util::{SinkExt as _, StreamExt as _};
use support::collab::CollabEnv;
use tokio_tungstenite::tungstenite::Message;

/// How long a test waits for something that should happen promptly.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to listen to conclude that nothing more is coming; relayed
/// frames take milliseconds on loopback.
const QUIET_PERIOD: Duration = Duration::from_millis(500);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).expect("hex byte"))
        .collect()
}

/// The notes' vectors, as y-websocket frames.
const SYNC_STEP_1_EMPTY: &str = "00 00 01 00";
const SYNC_STEP_2_EMPTY: &str = "00 01 02 00 00";
const UPDATE_HI: &str = "00 02 0c 01 01 01 00 04 01 01 74 02 68 69 00";
const AWARENESS_USER_A: &str = "01 10 01 01 01 0c 7b 22 75 73 65 72 22 3a 22 61 22 7d";
const AWARENESS_LEAVE: &str = "01 08 01 01 02 04 6e 75 6c 6c";

async fn connect(env: &CollabEnv, name: &str, token: Option<&str>) -> Socket {
    let mut url = format!("{}/{name}", env.collab_url());
    if let Some(token) = token {
        url.push_str(&format!("?token={token}"));
    }
    let (socket, _) = tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("the upgrade succeeds");
    socket
}

/// The next binary message (pings are answered by tungstenite itself).
async fn next_binary(socket: &mut Socket) -> Vec<u8> {
    loop {
        let message = tokio::time::timeout(STEP_TIMEOUT, socket.next())
            .await
            .expect("a message in time");
        match message {
            Some(Ok(Message::Binary(bytes))) => return bytes.to_vec(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a binary message, got {other:?}"),
        }
    }
}

/// Binary messages until the server closes: `(code, reason, messages)`.
async fn closed(socket: &mut Socket) -> (u16, String, Vec<Vec<u8>>) {
    let mut before = Vec::new();
    loop {
        let message = tokio::time::timeout(STEP_TIMEOUT, socket.next())
            .await
            .expect("a close in time");
        match message {
            Some(Ok(Message::Binary(bytes))) => before.push(bytes.to_vec()),
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string(), before);
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Nothing but pings for the quiet period.
async fn quiet(socket: &mut Socket) {
    let deadline = tokio::time::Instant::now() + QUIET_PERIOD;
    while let Ok(message) = tokio::time::timeout_at(deadline, socket.next()).await {
        match message {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }
}

async fn send(socket: &mut Socket, frame: &[u8]) {
    socket
        .send(Message::Binary(frame.to_vec().into()))
        .await
        .expect("send a frame");
}

/// A server with one user who owns document `doc`, and a token for it.
async fn owner_with_doc(extra: &str) -> (CollabEnv, String) {
    let env = CollabEnv::start(extra);
    let owner = env.register("owner").await;
    env.create_doc(&owner, "doc", None).await;
    let token = env.token(&owner, "doc", DocScope::ReadWrite).await;
    (env, token)
}

#[tokio::test]
async fn the_exchange_matches_the_y_websocket_vectors() {
    let (env, token) = owner_with_doc("").await;
    let mut a = connect(&env, "doc", Some(&token)).await;
    assert_eq!(
        next_binary(&mut a).await,
        hex(SYNC_STEP_1_EMPTY),
        "greeting"
    );
    send(&mut a, &hex(SYNC_STEP_1_EMPTY)).await;
    assert_eq!(next_binary(&mut a).await, hex(SYNC_STEP_2_EMPTY));
    assert_eq!(next_binary(&mut a).await, hex(SYNC_STEP_1_EMPTY));

    let mut b = connect(&env, "doc", Some(&token)).await;
    assert_eq!(next_binary(&mut b).await, hex(SYNC_STEP_1_EMPTY));

    // An update goes to every other connection as it came, not back.
    send(&mut a, &hex(UPDATE_HI)).await;
    assert_eq!(next_binary(&mut b).await, hex(UPDATE_HI));
    quiet(&mut a).await;

    // Awareness goes to everyone, the sender included.
    send(&mut a, &hex(AWARENESS_USER_A)).await;
    assert_eq!(next_binary(&mut a).await, hex(AWARENESS_USER_A));
    assert_eq!(next_binary(&mut b).await, hex(AWARENESS_USER_A));

    // A newcomer gets the state vector after "hi" and the awareness.
    let mut c = connect(&env, "doc", Some(&token)).await;
    assert_eq!(next_binary(&mut c).await, hex("00 00 03 01 01 02"));
    assert_eq!(next_binary(&mut c).await, hex(AWARENESS_USER_A));
    send(&mut c, &hex(SYNC_STEP_1_EMPTY)).await;
    let step2 = next_binary(&mut c).await;
    assert_eq!(&step2[..2], &[0x00, 0x01], "sync step 2");
    assert_eq!(&step2[3..], &hex(UPDATE_HI)[3..], "holding exactly \"hi\"");
    assert_eq!(next_binary(&mut c).await, hex("00 00 03 01 01 02"));

    // Query awareness: every known state, to the asker only.
    send(&mut c, &hex("03")).await;
    assert_eq!(next_binary(&mut c).await, hex(AWARENESS_USER_A));

    // a vanishes without saying goodbye: the others see it leave.
    drop(a);
    assert_eq!(next_binary(&mut b).await, hex(AWARENESS_LEAVE));
    assert_eq!(next_binary(&mut c).await, hex(AWARENESS_LEAVE));
}

#[tokio::test]
async fn a_malformed_message_closes_only_its_sender() {
    let (env, token) = owner_with_doc("").await;
    let mut bad = connect(&env, "doc", Some(&token)).await;
    let mut good = connect(&env, "doc", Some(&token)).await;
    next_binary(&mut bad).await;
    next_binary(&mut good).await;

    // A valid update and a truncated one in one message: neither applies.
    let mut frame = hex(UPDATE_HI);
    frame.extend(hex("00 02 05 01"));
    send(&mut bad, &frame).await;
    let (code, reason, _) = closed(&mut bad).await;
    assert_eq!((code, reason.as_str()), (1007, "invalid_update"));

    quiet(&mut good).await;
    send(&mut good, &hex("00 00 01 00")).await;
    assert_eq!(
        next_binary(&mut good).await,
        hex(SYNC_STEP_2_EMPTY),
        "the document is still empty and the connection still works"
    );

    let mut texty = connect(&env, "doc", Some(&token)).await;
    next_binary(&mut texty).await;
    texty.send(Message::Text("hello".into())).await.unwrap();
    let (code, _, _) = closed(&mut texty).await;
    assert_eq!(code, 1003, "y-websocket is binary");
}

#[tokio::test]
async fn refusals_have_close_codes() {
    let env = CollabEnv::start(
        "[documents]\n\
         token_ttl_secs = 1\n\
         update_max_bytes = 1024\n\
         max_connections_per_document = 2\n",
    );
    let owner = env.register("owner").await;
    let stranger = env.register("stranger").await;
    env.create_doc(&owner, "doc", None).await;
    env.create_doc(&owner, "elsewhere", None).await;
    // Tokens live one second here: each is fetched right before its use.
    let fresh = || env.token(&owner, "doc", DocScope::ReadWrite);

    // No token, a forged one, an access token: unauthorized, after
    // y-protocols' permission-denied message.
    for bad in [None, Some("cd1.e30.AAAA"), Some(owner.token.as_str())] {
        let mut socket = connect(&env, "doc", bad).await;
        let (code, reason, before) = closed(&mut socket).await;
        assert_eq!(
            (code, reason.as_str()),
            (4401, "unauthenticated"),
            "{bad:?}"
        );
        assert_eq!(&before[0][..2], &[0x02, 0x00], "auth: permission denied");
    }
    // A token for another document: forbidden.
    let mut socket = connect(&env, "elsewhere", Some(&fresh().await)).await;
    let (code, reason, _) = closed(&mut socket).await;
    assert_eq!((code, reason.as_str()), (4403, "forbidden"));
    let mut socket = connect(&env, "no-such-doc", Some(&fresh().await)).await;
    assert_eq!(closed(&mut socket).await.0, 4403);

    // Too many connections: try again later.
    let mut first = connect(&env, "doc", Some(&fresh().await)).await;
    let mut second = connect(&env, "doc", Some(&fresh().await)).await;
    next_binary(&mut first).await;
    next_binary(&mut second).await;
    let mut third = connect(&env, "doc", Some(&fresh().await)).await;
    let (code, reason, _) = closed(&mut third).await;
    assert_eq!((code, reason.as_str()), (1013, "limit_exceeded"));

    // A message of exactly the limit is taken; one byte more is 1009.
    let at_limit = awareness_frame_of_len(1024);
    send(&mut first, &at_limit).await;
    assert_eq!(next_binary(&mut first).await, at_limit, "relayed");
    assert_eq!(next_binary(&mut second).await, at_limit);
    send(&mut first, &vec![0x03; 1025]).await;
    let (code, reason, _) = closed(&mut first).await;
    assert_eq!((code, reason.as_str()), (1009, "payload_too_large"));
    drop(second);

    // A stranger cannot get a token at all.
    let refused = env
        .as_user(&stranger)
        .call(&DocToken {
            name: "doc".to_owned(),
            scope: DocScope::ReadOnly,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("forbidden"));

    // Tokens expire.
    let token = fresh().await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let mut socket = connect(&env, "doc", Some(&token)).await;
    let (code, reason, _) = closed(&mut socket).await;
    assert_eq!((code, reason.as_str()), (4401, "token_expired"));
}

/// An awareness message (client 7, clock 1) padded to exactly `len` bytes
/// (between 200 and 16 000).
fn awareness_frame_of_len(len: usize) -> Vec<u8> {
    // 1 (type) + 2 (length) + 3 (count, client, clock) + 2 (string length)
    // + the JSON.
    let json_len = len - 8;
    let json = format!("{{\"p\":\"{}\"}}", "x".repeat(json_len - 8));
    let mut inner = vec![0x01, 0x07, 0x01];
    push_var_uint(&mut inner, json.len());
    inner.extend(json.as_bytes());
    let mut frame = vec![0x01];
    push_var_uint(&mut frame, inner.len());
    frame.extend(inner);
    assert_eq!(frame.len(), len);
    frame
}

fn push_var_uint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[tokio::test]
async fn read_only_connections_are_answered_but_never_relayed() {
    let env = CollabEnv::start("");
    let owner = env.register("owner").await;
    env.create_doc(&owner, "doc", None).await;
    let writer_token = env.token(&owner, "doc", DocScope::ReadWrite).await;
    let viewer_token = env.token(&owner, "doc", DocScope::ReadOnly).await;
    let mut writer = connect(&env, "doc", Some(&writer_token)).await;
    let mut viewer = connect(&env, "doc", Some(&viewer_token)).await;
    next_binary(&mut writer).await;
    next_binary(&mut viewer).await;

    send(&mut viewer, &hex(UPDATE_HI)).await;
    send(
        &mut viewer,
        &hex("00 01 0c 01 01 01 00 04 01 01 74 02 68 69 00"),
    )
    .await;
    send(&mut viewer, &hex(SYNC_STEP_1_EMPTY)).await;
    assert_eq!(
        next_binary(&mut viewer).await,
        hex(SYNC_STEP_2_EMPTY),
        "step 1 is answered, and the document is still empty"
    );
    assert_eq!(next_binary(&mut viewer).await, hex(SYNC_STEP_1_EMPTY));
    quiet(&mut writer).await;

    // Awareness from a viewer is shared.
    send(&mut viewer, &hex(AWARENESS_USER_A)).await;
    assert_eq!(next_binary(&mut writer).await, hex(AWARENESS_USER_A));

    // And the writer's edits reach the viewer.
    send(&mut writer, &hex(UPDATE_HI)).await;
    assert_eq!(next_binary(&mut viewer).await, hex(AWARENESS_USER_A));
    assert_eq!(next_binary(&mut viewer).await, hex(UPDATE_HI));
}

/// The error code of a refused call.
fn code<T>(result: Result<T, conclave_client::ClientError>) -> Option<String> {
    result.err().and_then(|err| err.code().map(str::to_owned))
}

#[tokio::test]
async fn doc_routes_check_names_members_and_owners() {
    let env = CollabEnv::start("");
    let (ann, ben, cat) = (
        env.register("ann").await,
        env.register("ben").await,
        env.register("cat").await,
    );
    let channel = env.direct(&ann, &ben).await;
    let create = |name: &str, channel_id| DocCreate {
        name: name.to_owned(),
        channel_id,
    };

    let view = env
        .as_user(&ann)
        .call(&create("plan.v1", Some(channel)))
        .await
        .expect("doc/create");
    assert_eq!(
        (view.owner_id, view.channel_id),
        (ann.user_id, Some(channel))
    );
    for bad in ["", "a/b", "white space", "..", &"x".repeat(129)] {
        let refused = env.as_user(&ann).call(&create(bad, None)).await;
        assert_eq!(code(refused).as_deref(), Some("bad_request"), "{bad:?}");
    }
    let taken = env.as_user(&ben).call(&create("plan.v1", None)).await;
    assert_eq!(code(taken).as_deref(), Some("conflict"));
    let outsider = env.as_user(&cat).call(&create("mine", Some(channel))).await;
    assert_eq!(code(outsider).as_deref(), Some("not_member"));
    let anonymous = env.http().call(&create("anon", None)).await;
    assert_eq!(code(anonymous).as_deref(), Some("unauthenticated"));

    let token = |name: &str| DocToken {
        name: name.to_owned(),
        scope: DocScope::ReadWrite,
    };
    let grant = env
        .as_user(&ben)
        .call(&token("plan.v1"))
        .await
        .expect("a channel member gets a token");
    assert!(grant.token.starts_with("cd1."));
    assert!(grant.expires_at_ms > 0);
    let missing = env.as_user(&ann).call(&token("nothing")).await;
    assert_eq!(code(missing).as_deref(), Some("not_found"));
    let stranger = env.as_user(&cat).call(&token("plan.v1")).await;
    assert_eq!(code(stranger).as_deref(), Some("forbidden"));

    // The channel member's token opens the document.
    let mut socket = connect(&env, "plan.v1", Some(&grant.token)).await;
    assert_eq!(next_binary(&mut socket).await, hex(SYNC_STEP_1_EMPTY));
}

/// A document nobody has open stays loaded for `unload_after_idle_secs`
/// (an editor reconnecting at once finds it in memory), then is unloaded;
/// the next editor loads it from storage with everything in it.
#[tokio::test]
async fn an_idle_document_stays_loaded_for_a_while_then_unloads() {
    let (env, token) = owner_with_doc(
        "[log]\nlevel = \"info,conclave_server::collab=debug\"\n\
         [documents]\nunload_after_idle_secs = 2\n",
    )
    .await;
    let loads = || {
        env.server
            .logs()
            .iter()
            .filter(|line| line["message"] == "document loaded")
            .count()
    };
    let unloads = || {
        env.server
            .logs()
            .iter()
            .filter(|line| line["message"] == "document unloaded")
            .count()
    };
    let mut first = connect(&env, "doc", Some(&token)).await;
    assert_eq!(next_binary(&mut first).await, hex(SYNC_STEP_1_EMPTY));
    send(&mut first, &hex(UPDATE_HI)).await;
    // Its own step 1 is answered, so the update before it was handled.
    send(&mut first, &hex(SYNC_STEP_1_EMPTY)).await;
    next_binary(&mut first).await;
    first.close(None).await.expect("close");
    drop(first);

    // Back at once: the document is still in memory.
    let mut again = connect(&env, "doc", Some(&token)).await;
    assert_eq!(next_binary(&mut again).await, hex("00 00 03 01 01 02"));
    again.close(None).await.expect("close");
    drop(again);
    assert_eq!(loads(), 1, "not loaded a second time");
    assert_eq!(unloads(), 0, "not unloaded while someone came back at once");

    env.server
        .wait_for_log("document unloaded", Duration::from_secs(20));
    let mut later = connect(&env, "doc", Some(&token)).await;
    assert_eq!(
        next_binary(&mut later).await,
        hex("00 00 03 01 01 02"),
        "loaded from storage with the edit"
    );
    assert_eq!(
        env.server
            .count_logs("document loaded", 2, Duration::from_secs(5)),
        2
    );
}

/// In a group's document the group's rules apply: while the group is muted
/// for everyone but its moderators, a plain member's connection is read-only
/// whatever its token says, and may not restore versions; the owner still
/// edits.
#[tokio::test]
async fn a_muted_group_reads_its_documents_but_does_not_edit_them() {
    use conclave_client::api::documents::DocVersionRestore;
    use conclave_client::api::groups::{GroupCreate, MuteAll};

    let env = CollabEnv::start("");
    let owner = env.register("owner").await;
    let member = env.register("member").await;
    let group = env
        .as_user(&owner)
        .call(&GroupCreate {
            name: "Writers".to_owned(),
            description: None,
            member_ids: vec![member.user_id],
        })
        .await
        .expect("group/group/create");
    env.create_doc(&owner, "doc", Some(group.channel_id)).await;
    let member_token = env.token(&member, "doc", DocScope::ReadWrite).await;
    let owner_token = env.token(&owner, "doc", DocScope::ReadWrite).await;
    let mut owner_socket = connect(&env, "doc", Some(&owner_token)).await;
    assert_eq!(next_binary(&mut owner_socket).await, hex(SYNC_STEP_1_EMPTY));
    let owner_http = env.as_user(&owner);
    owner_http
        .call(&MuteAll {
            group_id: group.group_id,
            muted: true,
        })
        .await
        .expect("mute all");
    let mut muted = connect(&env, "doc", Some(&member_token)).await;
    assert_eq!(next_binary(&mut muted).await, hex(SYNC_STEP_1_EMPTY));
    send(&mut muted, &hex(UPDATE_HI)).await;
    quiet(&mut owner_socket).await;
    let refused = env
        .as_user(&member)
        .call(&DocVersionRestore {
            name: "doc".to_owned(),
            version: 1,
        })
        .await;
    assert_eq!(refused.unwrap_err().code(), Some("forbidden"));

    owner_http
        .call(&MuteAll {
            group_id: group.group_id,
            muted: false,
        })
        .await
        .expect("unmute");
    let mut member_socket = connect(&env, "doc", Some(&member_token)).await;
    assert_eq!(
        next_binary(&mut member_socket).await,
        hex(SYNC_STEP_1_EMPTY)
    );
    send(&mut member_socket, &hex(UPDATE_HI)).await;
    assert_eq!(next_binary(&mut owner_socket).await, hex(UPDATE_HI));
}

// ---------------------------------------------------------------------------
// The JSON protocol (`/ws`)

mod json {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use serde_json::{Value, json};
    use yrs::updates::decoder::Decode as _;
    use yrs::{GetString as _, ReadTxn as _, Text as _, Transact as _};

    use super::*;

    async fn connect_json(env: &CollabEnv, token: &str) -> Socket {
        let url = format!("ws://{}/ws?token={token}", env.server.http);
        let (socket, _) = tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("the upgrade succeeds");
        socket
    }

    async fn request(socket: &mut Socket, message: Value) {
        socket
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("send a request");
    }

    /// The next text message, as JSON.
    async fn next_json(socket: &mut Socket) -> Value {
        loop {
            let message = tokio::time::timeout(STEP_TIMEOUT, socket.next())
                .await
                .expect("a message in time");
            match message {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text).expect("JSON from the server");
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    fn b64(bytes: &[u8]) -> String {
        BASE64.encode(bytes)
    }

    fn unb64(value: &Value) -> Vec<u8> {
        BASE64
            .decode(value.as_str().expect("a base64 string"))
            .expect("valid base64")
    }

    /// An editor's change: client `client` appends `chunk` to text "t" of
    /// `doc` (which holds what it has seen); returns the update.
    fn edit(doc: &yrs::Doc, chunk: &str) -> Vec<u8> {
        let text = doc.get_or_insert_text("t");
        let before = doc.transact().state_vector();
        let mut txn = doc.transact_mut();
        let len = text.get_string(&txn).len() as u32;
        text.insert(&mut txn, len, chunk);
        drop(txn);
        doc.transact().encode_state_as_update_v1(&before)
    }

    fn text_of(update: &[u8]) -> String {
        let doc = yrs::Doc::new();
        let text = doc.get_or_insert_text("t");
        doc.transact_mut()
            .apply_update(yrs::Update::decode_v1(update).expect("a v1 update"))
            .expect("the update applies");
        text.get_string(&doc.transact())
    }

    /// JSON clients and a y-websocket editor share a document: syncs
    /// answer with the diff and the server's state vector, updates reach
    /// every other client whatever its protocol, and a read-only token's
    /// updates reach nobody.
    #[tokio::test]
    async fn json_clients_edit_with_y_websocket_editors() {
        let env = CollabEnv::start("");
        let owner = env.register("owner").await;
        let reader = env.register("reader").await;
        let channel = env.direct(&owner, &reader).await;
        env.create_doc(&owner, "doc", Some(channel)).await;
        let doc_token = env.token(&owner, "doc", DocScope::ReadWrite).await;
        let read_only = env.token(&reader, "doc", DocScope::ReadOnly).await;

        // An access token opens every document its user may open.
        let mut a = connect_json(&env, &owner.token).await;
        request(&mut a, json!({"doc_id": "doc", "type": "sync"})).await;
        let reply = next_json(&mut a).await;
        assert_eq!(reply["type"], "sync");
        assert_eq!(reply["doc_id"], "doc");
        assert_eq!(unb64(&reply["update"]), [0, 0], "an empty document");
        assert_eq!(unb64(&reply["state_vector"]), [0]);

        let mut y = connect(&env, "doc", Some(&doc_token)).await;
        assert_eq!(next_binary(&mut y).await, hex(SYNC_STEP_1_EMPTY));

        let a_doc = yrs::Doc::with_client_id(7);
        let hello = edit(&a_doc, "hello");
        request(
            &mut a,
            json!({"doc_id": "doc", "type": "update", "update": b64(&hello)}),
        )
        .await;
        let relayed = next_binary(&mut y).await;
        let mut expected = vec![0, 2, hello.len() as u8];
        expected.extend_from_slice(&hello);
        assert_eq!(relayed, expected, "the y-websocket editor gets the update");

        // A second JSON client, read-only, syncs from nothing and from a
        // state vector.
        let mut b = connect_json(&env, &read_only).await;
        request(&mut b, json!({"doc_id": "doc", "type": "sync"})).await;
        let reply = next_json(&mut b).await;
        assert_eq!(text_of(&unb64(&reply["update"])), "hello");
        let server_sv = unb64(&reply["state_vector"]);
        assert_eq!(
            yrs::StateVector::decode_v1(&server_sv).unwrap(),
            a_doc.transact().state_vector()
        );
        request(
            &mut b,
            json!({"doc_id": "doc", "type": "sv", "update": b64(&server_sv)}),
        )
        .await;
        let reply = next_json(&mut b).await;
        assert_eq!(unb64(&reply["update"]), [0, 0], "nothing is missing");

        // The y-websocket editor's change reaches both JSON clients.
        let y_doc = yrs::Doc::with_client_id(9);
        y_doc
            .transact_mut()
            .apply_update(yrs::Update::decode_v1(&hello).unwrap())
            .unwrap();
        let world = edit(&y_doc, " world");
        let mut frame = vec![0, 2, world.len() as u8];
        frame.extend_from_slice(&world);
        send(&mut y, &frame).await;
        for client in [&mut a, &mut b] {
            let update = next_json(client).await;
            assert_eq!(update["type"], "update");
            assert_eq!(update["doc_id"], "doc");
            assert_eq!(unb64(&update["update"]), world);
        }

        // The read-only client's edit is refused, and nobody gets it.
        let b_doc = yrs::Doc::with_client_id(11);
        let vandal = edit(&b_doc, "VANDAL");
        request(
            &mut b,
            json!({"doc_id": "doc", "type": "update", "update": b64(&vandal)}),
        )
        .await;
        let refused = next_json(&mut b).await;
        assert_eq!(refused["type"], "error");
        assert_eq!(refused["code"], "forbidden");
        quiet(&mut y).await;

        // What the server holds is exactly the two accepted edits.
        request(&mut a, json!({"doc_id": "doc", "type": "sync"})).await;
        let reply = next_json(&mut a).await;
        assert_eq!(text_of(&unb64(&reply["update"])), "hello world");
    }

    /// A document at `documents.max_document_bytes` stays readable and
    /// syncable, but content that would grow it is refused: a y-websocket
    /// editor is closed with 1008, a JSON client told `limit_exceeded`.
    #[tokio::test]
    async fn a_full_document_stays_readable_but_does_not_grow() {
        let (env, token) =
            owner_with_doc("[documents]\nupdate_max_bytes = 1024\nmax_document_bytes = 1024\n")
                .await;
        let editor = yrs::Doc::with_client_id(5);
        let mut y = connect(&env, "doc", Some(&token)).await;
        assert_eq!(next_binary(&mut y).await, hex(SYNC_STEP_1_EMPTY));
        // 300-byte chunks: the fourth would pass 1,024 stored bytes.
        let chunk = "x".repeat(300);
        let mut accepted = 0;
        // A JSON client on the document hears every update that is stored.
        let mut json = connect_json(&env, &token).await;
        request(&mut json, json!({"doc_id": "doc", "type": "sync"})).await;
        assert_eq!(next_json(&mut json).await["type"], "sync");
        for _ in 0..10 {
            let update = edit(&editor, &chunk);
            let mut frame = vec![0, 2];
            frame.extend(varint(update.len()));
            frame.extend_from_slice(&update);
            send(&mut y, &frame).await;
            match tokio::time::timeout(QUIET_PERIOD * 4, next_json(&mut json)).await {
                Ok(relayed) => {
                    assert_eq!(relayed["type"], "update", "{relayed}");
                    accepted += 1;
                }
                Err(_) => break,
            }
        }
        assert!((2..4).contains(&accepted), "{accepted} chunks stored");
        let (code, reason, _) = closed(&mut y).await;
        assert_eq!((code, reason.as_str()), (1008, "limit_exceeded"));
        request(&mut json, json!({"doc_id": "doc", "type": "sync"})).await;
        let stored = text_of(&unb64(&next_json(&mut json).await["update"]));
        assert_eq!(
            stored,
            chunk.repeat(accepted),
            "nothing of the refused chunk"
        );

        // A new editor syncs the full document (its sync step 2 adds
        // nothing, so it is not refused).
        let mut reader = connect(&env, "doc", Some(&token)).await;
        next_binary(&mut reader).await;
        send(&mut reader, &hex(SYNC_STEP_2_EMPTY)).await;
        send(&mut reader, &hex(SYNC_STEP_1_EMPTY)).await;
        let step2 = next_binary(&mut reader).await;
        assert_eq!(&step2[..2], &[0, 1], "sync step 2 with the document");

        // A JSON client is told, and keeps its socket.
        let grow = edit(&yrs::Doc::with_client_id(6), &chunk);
        request(
            &mut json,
            json!({"doc_id": "doc", "type": "update", "update": b64(&grow)}),
        )
        .await;
        let refused = next_json(&mut json).await;
        assert_eq!(refused["code"], "limit_exceeded", "{refused}");
        request(&mut json, json!({"doc_id": "doc", "type": "sync"})).await;
        assert_eq!(next_json(&mut json).await["type"], "sync");
    }

    fn varint(mut value: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
        out
    }

    /// Every bad request is answered with an error code and the socket
    /// stays usable; a refused document leaves the others alone.
    #[tokio::test]
    async fn json_errors_have_codes_and_keep_the_socket() {
        let env = CollabEnv::start("");
        let owner = env.register("owner").await;
        let stranger = env.register("stranger").await;
        env.create_doc(&owner, "doc", None).await;
        env.create_doc(&owner, "other", None).await;
        let doc_token = env.token(&owner, "doc", DocScope::ReadWrite).await;

        let mut socket = connect_json(&env, &doc_token).await;
        let cases = [
            (Value::String("not json".to_owned()), "invalid_json"),
            (json!({"doc_id": "doc", "type": "shout"}), "bad_request"),
            (json!({"doc_id": "doc", "type": "update"}), "bad_request"),
            (
                json!({"doc_id": "doc", "type": "update", "update": "!!"}),
                "bad_request",
            ),
            (
                json!({"doc_id": "doc", "type": "update", "update": b64(&[0xff, 0xff, 0xff])}),
                "invalid_update",
            ),
            (json!({"doc_id": "other", "type": "sync"}), "forbidden"),
        ];
        for (message, code) in cases {
            let text = match &message {
                Value::String(raw) => raw.clone(),
                other => other.to_string(),
            };
            socket.send(Message::Text(text.into())).await.expect("send");
            let reply = next_json(&mut socket).await;
            assert_eq!(reply["type"], "error", "{message}");
            assert_eq!(reply["code"], code, "{message}: {reply}");
        }
        // Still usable, and the broken update changed nothing.
        request(&mut socket, json!({"doc_id": "doc", "type": "sync"})).await;
        let reply = next_json(&mut socket).await;
        assert_eq!(reply["type"], "sync", "{reply}");
        assert_eq!(unb64(&reply["update"]), [0, 0]);

        let mut outsider = connect_json(&env, &stranger.token).await;
        request(&mut outsider, json!({"doc_id": "doc", "type": "sync"})).await;
        assert_eq!(next_json(&mut outsider).await["code"], "forbidden");
        request(&mut outsider, json!({"doc_id": "nothing", "type": "sync"})).await;
        assert_eq!(next_json(&mut outsider).await["code"], "not_found");
        let mut forged = connect_json(&env, "ca1.e30.AAAA").await;
        request(&mut forged, json!({"doc_id": "doc", "type": "sync"})).await;
        assert_eq!(next_json(&mut forged).await["code"], "unauthenticated");
    }
}
