//! The room against clients built on `yrs`: the byte vectors from the notes
//! (yjs 13.6.33 / y-protocols 1.0.7), convergence of concurrent edits, late
//! joiners, awareness, read-only connections and malformed input.

use std::collections::BTreeMap;

use conclave_docs::message::{self, Message};
use conclave_docs::{
    AWARENESS_CLIENTS_PER_CONNECTION_MAX, AWARENESS_TIMEOUT_MS, Access, ConnectionId, DocError,
    Effects, Recipients, Room, awareness,
};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, TextRef, Transact, Update};

const PROTOCOL_DOC: &str = include_str!("../../../docs/PROTOCOL.md");

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).expect("hex byte"))
        .collect()
}

fn frames(effects: &Effects, to: Recipients) -> Vec<Vec<u8>> {
    effects
        .send
        .iter()
        .filter(|out| out.to == to)
        .map(|out| out.frame.to_vec())
        .collect()
}

/// A Yjs peer as the y-websocket client behaves: it answers sync step 1,
/// applies step 2 and updates, and keeps the awareness states it hears.
struct Client {
    conn: ConnectionId,
    doc: Doc,
    text: TextRef,
    awareness_clock: u64,
    seen: BTreeMap<u64, Option<String>>,
    synced: bool,
}

impl Client {
    fn new(conn: u64, client_id: u64) -> Self {
        let doc = Doc::with_client_id(client_id);
        let text = doc.get_or_insert_text("t");
        Self {
            conn: ConnectionId(conn),
            doc,
            text,
            awareness_clock: 0,
            seen: BTreeMap::new(),
            synced: false,
        }
    }

    fn client_id(&self) -> u64 {
        self.doc.client_id().get()
    }

    /// A local edit, as the frame the provider would send.
    fn insert(&self, index: u32, chunk: &str) -> Vec<u8> {
        let mut txn = self.doc.transact_mut();
        self.text.insert(&mut txn, index, chunk);
        message::update(&txn.encode_update_v1())
    }

    fn delete(&self, index: u32, len: u32) -> Vec<u8> {
        let mut txn = self.doc.transact_mut();
        self.text.remove_range(&mut txn, index, len);
        message::update(&txn.encode_update_v1())
    }

    fn content(&self) -> String {
        self.text.get_string(&self.doc.transact())
    }

    fn sync_step1(&self) -> Vec<u8> {
        message::sync_step1(&self.doc.transact().state_vector().encode_v1())
    }

    fn set_awareness(&mut self, state: Option<&str>) -> Vec<u8> {
        self.awareness_clock += 1;
        message::awareness(&awareness::encode_update([(
            self.client_id(),
            self.awareness_clock,
            state,
        )]))
    }

    /// Handles a frame from the server; returns the replies.
    fn handle(&mut self, frame: &[u8]) -> Vec<Vec<u8>> {
        let mut replies = Vec::new();
        for message in message::decode_frame(frame).expect("the server sends valid frames") {
            match message {
                Message::SyncStep1(sv) => {
                    let sv = StateVector::decode_v1(sv).unwrap();
                    let diff = self.doc.transact().encode_state_as_update_v1(&sv);
                    replies.push(message::sync_step2(&diff));
                }
                Message::SyncStep2(update) | Message::Update(update) => {
                    if matches!(message, Message::SyncStep2(_)) {
                        self.synced = true;
                    }
                    self.doc
                        .transact_mut()
                        .apply_update(Update::decode_v1(update).unwrap())
                        .unwrap();
                }
                Message::Awareness(bytes) => {
                    for entry in awareness::decode_update(bytes).unwrap() {
                        self.seen.insert(entry.client_id, entry.state);
                    }
                }
                other => panic!("unexpected message from the server: {other:?}"),
            }
        }
        replies
    }
}

/// A room and its clients, with the server's routing of effects and a log
/// standing in for storage.
struct Net {
    room: Room,
    clients: Vec<Client>,
    log: Vec<Vec<u8>>,
    now_ms: u64,
}

impl Net {
    fn new() -> Self {
        Self {
            room: Room::new(),
            clients: Vec::new(),
            log: Vec::new(),
            now_ms: 1_000,
        }
    }

    /// Connects a client the way y-websocket does: the server greets, the
    /// client sends its sync step 1.
    fn join(&mut self, client: Client, access: Access) -> usize {
        let index = self.clients.len();
        let conn = client.conn;
        self.clients.push(client);
        let greeting = self.room.connect(conn, access);
        self.route(conn, greeting);
        let step1 = self.clients[index].sync_step1();
        self.send(index, &step1);
        index
    }

    /// A frame from client `index`, and everything it sets off.
    fn send(&mut self, index: usize, frame: &[u8]) -> Effects {
        let conn = self.clients[index].conn;
        let effects = self.room.receive(conn, frame, self.now_ms);
        self.log.extend(effects.persist.iter().cloned());
        let echo = Effects {
            send: effects.send.clone(),
            ..Effects::default()
        };
        self.route(conn, echo);
        effects
    }

    fn leave(&mut self, index: usize) {
        let client = self.clients.remove(index);
        let effects = self.room.disconnect(client.conn, self.now_ms);
        self.route(client.conn, effects);
    }

    fn route(&mut self, from: ConnectionId, effects: Effects) {
        let mut replies = Vec::new();
        for out in &effects.send {
            for (i, client) in self.clients.iter_mut().enumerate() {
                let hit = match out.to {
                    Recipients::Sender => client.conn == from,
                    Recipients::Others => client.conn != from,
                    Recipients::Everyone => true,
                };
                if hit {
                    for reply in client.handle(&out.frame) {
                        replies.push((i, reply));
                    }
                }
            }
        }
        for (i, reply) in replies {
            self.send(i, &reply);
        }
    }
}

#[test]
fn the_handshake_matches_the_vectors() {
    let mut room = Room::new();
    let greeting = room.connect(ConnectionId(1), Access::ReadWrite);
    assert_eq!(
        frames(&greeting, Recipients::Sender),
        [hex("00 00 01 00")],
        "sync step 1 of an empty document, and no awareness yet"
    );
    let answer = room.receive(ConnectionId(1), &hex("00 00 01 00"), 0);
    assert_eq!(
        frames(&answer, Recipients::Sender),
        [hex("00 01 02 00 00"), hex("00 00 01 00")],
        "sync step 2, then the server's own step 1"
    );
    assert!(answer.persist.is_empty() && answer.error.is_none());
}

#[test]
fn an_update_is_persisted_and_relayed_byte_for_byte() {
    let vector = hex("00 02 0c 01 01 01 00 04 01 01 74 02 68 69 00");
    let client = Client::new(1, 1);
    assert_eq!(client.insert(0, "hi"), vector, "yrs encodes as yjs does");

    let mut room = Room::new();
    room.connect(ConnectionId(1), Access::ReadWrite);
    room.connect(ConnectionId(2), Access::ReadWrite);
    let effects = room.receive(ConnectionId(1), &vector, 0);
    assert_eq!(effects.error, None);
    assert_eq!(effects.persist, [vector[3..].to_vec()]);
    assert_eq!(
        frames(&effects, Recipients::Others),
        std::slice::from_ref(&vector)
    );
    assert!(frames(&effects, Recipients::Sender).is_empty());
    assert_eq!(room.state_vector(), hex("01 01 02"));

    let again = room.receive(ConnectionId(2), &vector, 0);
    assert!(
        again.persist.is_empty() && again.send.is_empty(),
        "an update the room already has changes nothing"
    );
}

#[test]
fn awareness_matches_the_vectors_and_clears_on_disconnect() {
    let join = hex("01 10 01 01 01 0c 7b 22 75 73 65 72 22 3a 22 61 22 7d");
    let leave = hex("01 08 01 01 02 04 6e 75 6c 6c");
    let mut room = Room::new();
    room.connect(ConnectionId(1), Access::ReadWrite);
    room.connect(ConnectionId(2), Access::ReadWrite);
    let effects = room.receive(ConnectionId(1), &join, 0);
    assert_eq!(
        frames(&effects, Recipients::Everyone),
        std::slice::from_ref(&join),
        "awareness goes to everyone, the sender included"
    );
    let greeting = room.connect(ConnectionId(3), Access::ReadOnly);
    assert_eq!(
        frames(&greeting, Recipients::Sender),
        [hex("00 00 01 00"), join],
        "a newcomer gets sync step 1 and the current states"
    );
    let effects = room.disconnect(ConnectionId(1), 0);
    assert_eq!(frames(&effects, Recipients::Others), [leave]);
    assert_eq!(room.connection_count(), 2);
}

#[test]
fn two_clients_converge_and_a_late_joiner_gets_everything() {
    let mut net = Net::new();
    let a = net.join(Client::new(1, 101), Access::ReadWrite);
    let b = net.join(Client::new(2, 102), Access::ReadWrite);
    assert!(net.clients[a].synced && net.clients[b].synced);

    let first = net.clients[a].insert(0, "hello");
    net.send(a, &first);
    assert_eq!(net.clients[b].content(), "hello");

    // Concurrent edits: both made before either hears of the other.
    let from_a = net.clients[a].insert(5, " world");
    let from_b = net.clients[b].insert(0, ">> ");
    net.send(b, &from_b);
    net.send(a, &from_a);
    let delete = net.clients[b].delete(0, 1);
    net.send(b, &delete);
    assert_eq!(net.clients[a].content(), net.clients[b].content());
    assert_eq!(net.clients[a].content(), "> hello world");

    let c = net.join(Client::new(3, 103), Access::ReadWrite);
    assert_eq!(net.clients[c].content(), "> hello world");
    assert_eq!(net.log.len(), 4, "one logged update per edit");

    // The log alone rebuilds the document.
    let rebuilt = Room::load(None, net.log.iter().map(Vec::as_slice)).unwrap();
    assert_eq!(rebuilt.encode_state(), net.room.encode_state());
    let snapshot = net.room.encode_state();
    let from_snapshot = Room::load(Some(&snapshot), []).unwrap();
    assert_eq!(from_snapshot.state_vector(), net.room.state_vector());
}

#[test]
fn offline_edits_arrive_through_sync_step_2() {
    let mut net = Net::new();
    let a = net.join(Client::new(1, 101), Access::ReadWrite);
    let frame = net.clients[a].insert(0, "online");
    net.send(a, &frame);

    let offline = Client::new(2, 102);
    let _ = offline.insert(0, "offline ");
    let b = net.join(offline, Access::ReadWrite);
    assert_eq!(net.clients[a].content(), net.clients[b].content());
    assert!(net.clients[a].content().contains("offline "));
    assert!(net.clients[b].content().contains("online"));
}

#[test]
fn read_only_connections_sync_but_cannot_write() {
    let mut net = Net::new();
    let writer = net.join(Client::new(1, 101), Access::ReadWrite);
    let frame = net.clients[writer].insert(0, "shared");
    net.send(writer, &frame);

    let viewer = Client::new(2, 102);
    let _ = viewer.insert(0, "offline edit ");
    let viewer_index = net.clients.len();
    let step1 = viewer.sync_step1();
    net.clients.push(viewer);
    let greeting = net.room.connect(ConnectionId(2), Access::ReadOnly);
    net.route(ConnectionId(2), greeting);
    let answer = net.send(viewer_index, &step1);
    assert_eq!(
        frames(&answer, Recipients::Sender).len(),
        2,
        "step 1 is answered"
    );
    assert!(net.clients[viewer_index].content().contains("shared"));

    let edit = net.clients[viewer_index].insert(0, "vandal ");
    let effects = net.send(viewer_index, &edit);
    assert_eq!(effects.dropped_read_only, 1);
    assert!(effects.persist.is_empty() && effects.send.is_empty());
    assert_eq!(net.clients[writer].content(), "shared");
    assert_eq!(net.log.len(), 1, "only the writer's edit was logged");

    let hello = net.clients[viewer_index].set_awareness(Some(r#"{"user":"viewer"}"#));
    net.send(viewer_index, &hello);
    assert!(
        net.clients[writer].seen.contains_key(&102),
        "read-only peers still share awareness"
    );
}

#[test]
fn a_malformed_frame_is_refused_whole_and_hurts_only_its_sender() {
    let mut net = Net::new();
    let a = net.join(Client::new(1, 101), Access::ReadWrite);
    let b = net.join(Client::new(2, 102), Access::ReadWrite);

    // A good update followed by a truncated one: neither may be applied.
    let mut frame = net.clients[a].insert(0, "lost");
    frame.extend(hex("00 02 05 01 01"));
    let effects = net.send(a, &frame);
    assert!(matches!(effects.error, Some(DocError::Malformed(_))));
    assert!(effects.persist.is_empty() && effects.send.is_empty());

    // Framing is fine but the update inside is garbage.
    let effects = net.send(a, &message::update(&hex("05 ff ff ff")));
    assert!(matches!(effects.error, Some(DocError::InvalidUpdate(_))));
    let effects = net.send(a, &hex("00 00 03 ff ff ff"));
    assert!(matches!(effects.error, Some(DocError::Malformed(_))));

    let frame = net.clients[b].insert(0, "fine");
    let effects = net.send(b, &frame);
    assert_eq!(effects.error, None);
    assert_eq!(net.room.connection_count(), 2);
    assert_eq!(net.log.len(), 1);
}

#[test]
fn awareness_between_peers() {
    let mut net = Net::new();
    let a = net.join(Client::new(1, 101), Access::ReadWrite);
    let b = net.join(Client::new(2, 102), Access::ReadWrite);
    let hello = net.clients[a].set_awareness(Some(r#"{"user":"a"}"#));
    net.send(a, &hello);
    let hello = net.clients[b].set_awareness(Some(r#"{"user":"b"}"#));
    net.send(b, &hello);
    assert_eq!(
        net.clients[a].seen[&102].as_deref(),
        Some(r#"{"user":"b"}"#)
    );
    assert_eq!(
        net.clients[b].seen[&101].as_deref(),
        Some(r#"{"user":"a"}"#)
    );
    assert!(
        net.clients[a].seen.contains_key(&101),
        "the sender hears its own state"
    );

    // Query awareness: the sender gets every state.
    let effects = net.send(a, &message::query_awareness());
    let states = awareness::decode_update(&frames(&effects, Recipients::Sender)[0][2..]).unwrap();
    assert_eq!(states.len(), 2);

    // A renewal with the same state still echoes (the client's liveness).
    net.clients[a].seen.clear();
    net.now_ms += 15_000;
    let renew = net.clients[a].set_awareness(Some(r#"{"user":"a"}"#));
    let effects = net.send(a, &renew);
    assert_eq!(frames(&effects, Recipients::Everyone).len(), 1);

    // b stops renewing: 30 s after its last state the sweep removes it for
    // everyone (y-protocols: outdated when now - lastUpdated >= 30 s).
    let b_renewed_at = net.now_ms - 15_000;
    let effects = net.room.sweep(b_renewed_at + AWARENESS_TIMEOUT_MS - 1);
    assert!(effects.send.is_empty(), "not yet 30 s");
    net.now_ms = b_renewed_at + AWARENESS_TIMEOUT_MS;
    let effects = net.room.sweep(net.now_ms);
    assert_eq!(frames(&effects, Recipients::Everyone).len(), 1);
    net.route(ConnectionId(0), effects);
    assert_eq!(
        net.clients[a].seen[&102], None,
        "b was not renewed for 30 s"
    );
    assert!(
        net.clients[a].seen[&101].is_some(),
        "a renewed 15 s ago and stays"
    );

    let hello = net.clients[b].set_awareness(Some(r#"{"user":"b2"}"#));
    net.send(b, &hello);
    net.leave(b);
    assert_eq!(
        net.clients[a].seen[&102], None,
        "b's state is null once b leaves"
    );
    assert_eq!(net.room.awareness().present().collect::<Vec<_>>(), [101]);
}

#[test]
fn a_connection_may_introduce_only_so_many_awareness_clients() {
    let mut room = Room::new();
    room.connect(ConnectionId(1), Access::ReadWrite);
    let max = AWARENESS_CLIENTS_PER_CONNECTION_MAX as u64;
    let flood = awareness::encode_update((1..=max + 1).map(|id| (id, 1, Some("{}"))));
    let effects = room.receive(ConnectionId(1), &message::awareness(&flood), 0);
    assert_eq!(effects.error, Some(DocError::TooManyAwarenessClients));
    let shown = awareness::decode_update(&frames(&effects, Recipients::Everyone)[0][2..]).unwrap();
    assert_eq!(shown.len() as u64, max, "the extra state is never shown");
    assert_eq!(room.awareness().present().count() as u64, max);
}

#[test]
fn stored_garbage_is_reported_as_corrupt() {
    assert!(matches!(
        Room::load(Some(&hex("ff ff")), []),
        Err(DocError::Corrupt(_))
    ));
    assert!(matches!(
        Room::new().receive(ConnectionId(9), &hex("03"), 0).error,
        Some(DocError::UnknownConnection)
    ));
}

#[test]
fn protocol_md_shows_the_bytes_the_room_produces() {
    let doc = PROTOCOL_DOC
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let show = |bytes: &[u8]| {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut room = Room::new();
    let greeting = room.connect(ConnectionId(1), Access::ReadWrite);
    let answer = room.receive(ConnectionId(1), &hex("00 00 01 00"), 0);
    let client = Client::new(2, 1);
    let typed = client.insert(0, "hi");
    let mut awareness_room = Room::new();
    awareness_room.connect(ConnectionId(1), Access::ReadWrite);
    awareness_room.connect(ConnectionId(2), Access::ReadWrite);
    let joined = awareness_room.receive(
        ConnectionId(1),
        &message::awareness(&awareness::encode_update([(1, 1, Some(r#"{"user":"a"}"#))])),
        0,
    );
    let left = awareness_room.disconnect(ConnectionId(1), 0);
    for bytes in [
        &greeting.send[0].frame[..],
        &answer.send[0].frame[..],
        &typed[..],
        &joined.send[0].frame[..],
        &left.send[0].frame[..],
    ] {
        let shown = show(bytes);
        assert!(
            doc.contains(&shown),
            "docs/PROTOCOL.md does not show {shown}"
        );
    }
}

#[test]
fn an_update_stored_elsewhere_reaches_everyone_here_once_and_is_not_persisted_again() {
    // The same bytes as the vector above: "hi" typed by client 1, as
    // another server of the cluster stored it (the update without the
    // y-websocket framing).
    let update = hex("01 01 01 00 04 01 01 74 02 68 69 00");
    let mut room = Room::new();
    room.connect(ConnectionId(1), Access::ReadWrite);
    room.connect(ConnectionId(2), Access::ReadOnly);
    let effects = room.apply_stored(&update);
    assert_eq!(effects.error, None);
    assert!(effects.persist.is_empty(), "stored already");
    let mut framed = hex("00 02 0c");
    framed.extend_from_slice(&update);
    assert_eq!(frames(&effects, Recipients::Everyone), vec![framed]);
    assert_eq!(room.state_vector(), hex("01 01 02"));

    let again = room.apply_stored(&update);
    assert!(again.send.is_empty(), "a repeat changes nothing");
    assert!(room.apply_stored(b"\xff\xff").error.is_some());
}

#[test]
fn awareness_travels_between_servers_without_echoes() {
    // The vectors: client 1 says {"user":"a"} at clock 1, then leaves.
    let join = hex("01 10 01 01 01 0c 7b 22 75 73 65 72 22 3a 22 61 22 7d");
    let leave = hex("01 08 01 01 02 04 6e 75 6c 6c");
    // The awareness update inside the frames (after `1 • length`).
    let join_update = join[2..].to_vec();
    let leave_update = leave[2..].to_vec();

    // Server A: its editor's state is handed out for the other servers.
    let mut a = Room::new();
    a.connect(ConnectionId(1), Access::ReadWrite);
    let said = a.receive(ConnectionId(1), &join, 0);
    assert_eq!(said.awareness_changed.as_deref(), Some(&join_update[..]));

    // Server B applies it: its editors see it, and it is not handed out
    // again (no echo between servers).
    let mut b = Room::new();
    b.connect(ConnectionId(7), Access::ReadWrite);
    let heard = b.apply_remote_awareness(&join_update, 0);
    assert_eq!(
        frames(&heard, Recipients::Everyone),
        std::slice::from_ref(&join)
    );
    assert_eq!(heard.awareness_changed, None);
    assert_eq!(b.awareness().state(1), Some(r#"{"user":"a"}"#));
    // A newcomer on B gets it in its greeting.
    let greeting = b.connect(ConnectionId(8), Access::ReadOnly);
    assert_eq!(frames(&greeting, Recipients::Sender)[1], join);
    // The same state again (a repeat on the bus) changes nothing.
    assert!(b.apply_remote_awareness(&join_update, 0).send.is_empty());

    // The editor leaves A: the removal is handed out, and B clears it.
    let left = a.disconnect(ConnectionId(1), 0);
    assert_eq!(left.awareness_changed.as_deref(), Some(&leave_update[..]));
    let cleared = b.apply_remote_awareness(&leave_update, 0);
    assert_eq!(frames(&cleared, Recipients::Everyone), [leave]);
    assert_eq!(b.awareness().state(1), None);

    // A state nobody renews expires on B by itself.
    b.apply_remote_awareness(&hex("01 02 03 0c 7b 22 75 73 65 72 22 3a 22 62 22 7d"), 0);
    assert_eq!(b.awareness().state(2), Some(r#"{"user":"b"}"#));
    let swept = b.sweep(conclave_docs::AWARENESS_TIMEOUT_MS + 1);
    assert_eq!(frames(&swept, Recipients::Everyone).len(), 1);
    assert_eq!(b.awareness().state(2), None);
    assert!(b.apply_remote_awareness(b"\xff", 0).error.is_some());
}

#[test]
fn only_new_items_grow_a_document() {
    // "hi" by client 1, as an update frame.
    let hi = hex("00 02 0c 01 01 01 00 04 01 01 74 02 68 69 00");
    let mut room = Room::new();
    room.connect(ConnectionId(1), Access::ReadWrite);
    assert!(room.grows(&hi), "new items grow an empty document");
    room.receive(ConnectionId(1), &hi, 0);
    assert!(!room.grows(&hi), "what it has already does not");
    // Sync step 2 of an editor that has nothing new: the empty update.
    assert!(!room.grows(&hex("00 01 02 00 00")));
    assert!(!room.grows(&hex(
        "01 10 01 01 01 0c 7b 22 75 73 65 72 22 3a 22 61 22 7d"
    )));
    assert!(!room.grows(&hex("00 02 05 ff ff")), "garbage grows nothing");

    // A later edit by the same client (its items start past clock 0).
    use yrs::{GetString as _, ReadTxn as _, Text as _, Transact as _};
    let editor = yrs::Doc::with_client_id(5);
    let text = editor.get_or_insert_text("t");
    for round in 0..3 {
        let before = editor.transact().state_vector();
        {
            let mut txn = editor.transact_mut();
            let len = text.get_string(&txn).len() as u32;
            text.insert(&mut txn, len, "more");
        }
        let update = editor.transact().encode_state_as_update_v1(&before);
        let mut frame = vec![0, 2, update.len() as u8];
        frame.extend_from_slice(&update);
        assert!(room.grows(&frame), "round {round}");
        room.receive(ConnectionId(1), &frame, 0);
        assert!(!room.grows(&frame), "round {round}, again");
    }
}
