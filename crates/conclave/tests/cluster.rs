//! Several `conclave serve` nodes sharing one PostgreSQL database and a
//! cluster bus (Redis or NATS), serving one community: users on different
//! nodes chat in direct and group channels, every device receives every
//! event once and in pts order, presence and typing cross nodes, a device
//! revoked on one node is cut off on another, and a node killed mid-send
//! loses no acknowledged message.
//!
//! Needs `CONCLAVE_TEST_POSTGRES_URL`, `CONCLAVE_TEST_REDIS_URL` (and
//! `CONCLAVE_TEST_NATS_URL` for the NATS run); each test skips with a notice
//! when what it needs is unset.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave_client::api::account::{AuthGrant, DeviceRevoke};
use conclave_client::api::groups::GroupCreate;
use conclave_client::api::messaging::{
    Content, DirectGetOrCreate, GetDifference, MessageSend, MessageSent,
};
use conclave_client::api::presence::{StatusGet, Subscribe, Typing, TypingState};
use conclave_client::{Connection, Encoding, Event, HttpClient};
use conclave_core::ChannelId;
use support::{Server, conclave};

const PASSWORD: &str = "correct horse battery staple";
const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// Short, so a dead node's users go offline quickly in the fault test.
const HEARTBEAT_TTL_MS: u64 = 1_500;

/// Three nodes on one database and one bus namespace.
struct ClusterEnv {
    _dirs: Vec<tempfile::TempDir>,
    nodes: Vec<Server>,
}

impl ClusterEnv {
    /// `None` (with a notice) when the services the bus needs are not
    /// configured.
    fn start(bus: &str, count: usize) -> Option<ClusterEnv> {
        let (dirs, nodes) = support::start_cluster(bus, count, HEARTBEAT_TTL_MS)?;
        Some(ClusterEnv { _dirs: dirs, nodes })
    }

    fn base(&self, node: usize) -> String {
        format!("http://{}", self.nodes[node].http)
    }

    fn http(&self, node: usize) -> HttpClient {
        HttpClient::new(&self.base(node))
    }

    async fn register(&self, node: usize, name: &str) -> AuthGrant {
        self.http(node)
            .register(name, PASSWORD, Some(&format!("{name}-phone")))
            .await
            .unwrap_or_else(|err| panic!("register {name}: {err}"))
    }

    async fn connect(&self, node: usize, grant: &AuthGrant) -> Connection {
        Connection::connect_ws(&self.base(node), &grant.token, Encoding::Json)
            .await
            .unwrap_or_else(|err| panic!("connect to node {node}: {err}"))
    }
}

fn text(body: &str) -> Content {
    Content::Text {
        text: body.to_owned(),
    }
}

/// Sends `count` messages into `channel`, returning each acknowledgement.
async fn send_many(
    connection: Arc<Connection>,
    channel: ChannelId,
    tag: String,
    count: usize,
) -> Vec<MessageSent> {
    let mut acks = Vec::with_capacity(count);
    for i in 0..count {
        let sent = connection
            .call(&MessageSend {
                channel_id: channel,
                client_msg_id: format!("{tag}-{i}"),
                content: text(&format!("{tag} says {i}")),
                reply_to: None,
                mentions: None,
            })
            .await
            .unwrap_or_else(|err| panic!("{tag} send {i}: {err}"));
        acks.push(sent);
    }
    acks
}

/// Collects `message/new` events per channel until every channel in
/// `expected` has received at least its expected number, or the timeout.
async fn collect_messages(
    connection: &mut Connection,
    expected: &HashMap<ChannelId, usize>,
) -> HashMap<ChannelId, Vec<u64>> {
    let mut seen: HashMap<ChannelId, Vec<u64>> = HashMap::new();
    let deadline = Instant::now() + STEP_TIMEOUT;
    let done = |seen: &HashMap<ChannelId, Vec<u64>>| {
        expected
            .iter()
            .all(|(channel, count)| seen.get(channel).map_or(0, Vec::len) >= *count)
    };
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(event)) = connection.next_event_timeout(left).await else {
            break;
        };
        if event.name == "message/new"
            && let (Some(channel), Some(pts)) = (event.channel_id, event.pts)
        {
            seen.entry(channel).or_default().push(pts);
        }
    }
    // Anything arriving late would be a duplicate: give it a moment to show.
    while let Ok(Some(event)) = connection
        .next_event_timeout(Duration::from_millis(300))
        .await
    {
        if event.name == "message/new"
            && let (Some(channel), Some(pts)) = (event.channel_id, event.pts)
        {
            seen.entry(channel).or_default().push(pts);
        }
    }
    seen
}

async fn wait_for_event(
    connection: &mut Connection,
    what: &str,
    matches: impl Fn(&Event) -> bool,
) -> Event {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match connection.next_event_timeout(left).await {
            Ok(Some(event)) if matches(&event) => return event,
            Ok(Some(_)) => continue,
            _ => panic!("no {what} within {STEP_TIMEOUT:?}"),
        }
    }
}

async fn three_nodes_serve_one_community(bus: &str) {
    let Some(cluster) = ClusterEnv::start(bus, 3) else {
        return;
    };
    let (a, b, c) = (0, 1, 2);
    let alice = cluster.register(a, "alice").await;
    let bob = cluster.register(b, "bob").await;
    let carol = cluster.register(c, "carol").await;
    let dave = cluster.register(b, "dave").await;
    // Alice's second device lives on node C.
    let alice2 = cluster
        .http(c)
        .login("alice", PASSWORD, Some("alice-laptop"))
        .await
        .expect("alice logs in on a second device");

    // Presence crosses nodes: carol (on C) watches dave, who connects on B.
    let mut carol_c = cluster.connect(c, &carol).await;
    let statuses = carol_c
        .call(&Subscribe {
            user_ids: vec![dave.user_id],
        })
        .await
        .expect("presence/subscribe");
    assert!(!statuses.statuses[0].online, "dave is not connected yet");
    let dave_b = cluster.connect(b, &dave).await;
    let online = wait_for_event(&mut carol_c, "dave online", |e| {
        e.name == "presence/changed" && e.body()["user_id"] == dave.user_id.to_string()
    })
    .await;
    assert_eq!(online.body()["online"], true, "{online:?}");
    let status = cluster
        .http(a)
        .with_token(&alice.token)
        .call(&StatusGet {
            user_id: dave.user_id,
        })
        .await
        .expect("presence/status/get on node A");
    assert!(status.online, "node A sees dave online on node B");
    dave_b.close().await;
    let offline = wait_for_event(&mut carol_c, "dave offline", |e| {
        e.name == "presence/changed" && e.body()["user_id"] == dave.user_id.to_string()
    })
    .await;
    assert_eq!(offline.body()["online"], false, "{offline:?}");

    let mut alice_a = cluster.connect(a, &alice).await;
    let mut alice_c = cluster.connect(c, &alice2).await;
    let bob_b = cluster.connect(b, &bob).await;

    let direct = alice_a
        .call(&DirectGetOrCreate {
            user_id: bob.user_id,
        })
        .await
        .expect("direct channel")
        .channel_id;
    let group = alice_a
        .call(&GroupCreate {
            name: "Across nodes".to_owned(),
            description: None,
            member_ids: vec![bob.user_id, carol.user_id],
        })
        .await
        .expect("group/group/create")
        .channel_id;

    // Typing on node B reaches both of alice's devices (nodes A and C).
    bob_b
        .call(&Typing {
            channel_id: direct,
            state: TypingState::Start,
        })
        .await
        .expect("presence/typing");
    for (name, connection) in [("alice on A", &mut alice_a), ("alice on C", &mut alice_c)] {
        let typing = wait_for_event(connection, &format!("typing for {name}"), |e| {
            e.name == "typing"
        })
        .await;
        assert_eq!(typing.body()["user_id"], bob.user_id.to_string(), "{name}");
    }

    // Everyone sends at once, from every node.
    let alice_a = Arc::new(alice_a);
    let alice_c = Arc::new(alice_c);
    let bob_b = Arc::new(bob_b);
    let carol_c = Arc::new(carol_c);
    const EACH: usize = 25;
    let plan: Vec<(&str, Arc<Connection>, ChannelId)> = vec![
        ("alice-a-group", alice_a.clone(), group),
        ("alice-a-direct", alice_a.clone(), direct),
        ("alice-c-group", alice_c.clone(), group),
        ("bob-group", bob_b.clone(), group),
        ("bob-direct", bob_b.clone(), direct),
        ("carol-group", carol_c.clone(), group),
    ];
    let mut sends = Vec::new();
    for (tag, connection, channel) in plan {
        sends.push((
            tag,
            channel,
            tokio::spawn(send_many(connection, channel, tag.to_owned(), EACH)),
        ));
    }
    // Every message's pts, and which sender device acknowledged it.
    let mut acked: BTreeMap<ChannelId, BTreeMap<u64, &str>> = BTreeMap::new();
    for (tag, channel, task) in sends {
        for ack in task.await.expect("a sender") {
            let previous = acked.entry(channel).or_default().insert(ack.pts, tag);
            assert!(previous.is_none(), "pts {} given twice", ack.pts);
        }
    }
    for (channel, messages) in &acked {
        let pts: Vec<u64> = messages.keys().copied().collect();
        let first = pts[0];
        assert_eq!(
            pts,
            (first..first + pts.len() as u64).collect::<Vec<_>>(),
            "channel {channel}: the sends' pts are contiguous"
        );
    }

    // Each device receives every message it did not send, once, in order.
    let devices: Vec<(&str, Arc<Connection>, Vec<ChannelId>, &str)> = vec![
        ("alice on A", alice_a, vec![group, direct], "alice-a"),
        ("alice on C", alice_c, vec![group, direct], "alice-c"),
        ("bob on B", bob_b, vec![group, direct], "bob"),
        ("carol on C", carol_c, vec![group], "carol"),
    ];
    for (name, connection, channels, own) in devices {
        let mut connection = Arc::try_unwrap(connection)
            .unwrap_or_else(|_| panic!("{name}: a sender still holds the connection"));
        let expected: HashMap<ChannelId, BTreeSet<u64>> = channels
            .iter()
            .map(|channel| {
                let pts = acked[channel]
                    .iter()
                    .filter(|(_, tag)| !tag.starts_with(own))
                    .map(|(pts, _)| *pts)
                    .collect();
                (*channel, pts)
            })
            .collect();
        let counts = expected.iter().map(|(c, p)| (*c, p.len())).collect();
        let seen = collect_messages(&mut connection, &counts).await;
        for (channel, want) in &expected {
            let got = seen.get(channel).cloned().unwrap_or_default();
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "{name}, channel {channel}: events out of order or repeated: {got:?}"
            );
            let got: BTreeSet<u64> = got.into_iter().collect();
            assert_eq!(
                &got, want,
                "{name}, channel {channel}: every message from the others, once"
            );
        }
        // Put the connection back for the revocation step.
        if name == "alice on A" {
            // Revoking alice's laptop (connected to node C) from node A
            // cuts it off there.
            connection
                .call(&DeviceRevoke {
                    device_id: alice2.device_id,
                })
                .await
                .expect("device/revoke");
        }
        if name == "alice on C" {
            let reason = tokio::time::timeout(STEP_TIMEOUT, connection.closed())
                .await
                .expect("the revoked device's session on node C ends");
            assert_eq!(reason.code(), Some("device_revoked"), "{reason:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_on_redis_serve_one_community() {
    three_nodes_serve_one_community("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_on_nats_serve_one_community() {
    three_nodes_serve_one_community("nats").await;
}

/// Kills one node (SIGKILL) while its clients send. They reconnect to
/// another node and retry what was not acknowledged; afterwards the channel
/// holds every acknowledged message exactly once, with contiguous pts, and
/// the dead node's users go offline after the heartbeat TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_node_loses_no_acknowledged_message() {
    let Some(mut cluster) = ClusterEnv::start("redis", 3) else {
        return;
    };
    let (a, b, c) = (0, 1, 2);
    let alice = cluster.register(a, "alice").await;
    let bob = cluster.register(b, "bob").await;
    let carol = cluster.register(c, "carol").await;
    let dave = cluster.register(b, "dave").await;

    let mut carol_c = cluster.connect(c, &carol).await;
    carol_c
        .call(&Subscribe {
            user_ids: vec![dave.user_id],
        })
        .await
        .expect("presence/subscribe");
    let _dave_b = cluster.connect(b, &dave).await;
    wait_for_event(&mut carol_c, "dave online", |e| {
        e.name == "presence/changed" && e.body()["online"] == true
    })
    .await;

    let alice_a = Arc::new(cluster.connect(a, &alice).await);
    let group = alice_a
        .call(&GroupCreate {
            name: "Resilient".to_owned(),
            description: None,
            member_ids: vec![bob.user_id, carol.user_id],
        })
        .await
        .expect("group/group/create")
        .channel_id;

    const TOTAL: usize = 60;
    const KILL_AFTER: usize = 20;
    let alice_sends = tokio::spawn(send_many(alice_a.clone(), group, "alice".into(), TOTAL));

    // Bob sends through node B until it dies, then through node C, retrying
    // the send that failed with the same client_msg_id.
    let mut bob_conn = cluster.connect(b, &bob).await;
    let mut bob_acks: Vec<(String, MessageSent)> = Vec::new();
    let mut i = 0;
    let mut moved = false;
    while i < TOTAL {
        if i == KILL_AFTER && !moved {
            cluster.nodes[b].signal("KILL");
            cluster.nodes[b].wait_exit(Duration::from_secs(10));
        }
        let client_msg_id = format!("bob-{i}");
        let sent = bob_conn
            .call(&MessageSend {
                channel_id: group,
                client_msg_id: client_msg_id.clone(),
                content: text(&format!("bob says {i}")),
                reply_to: None,
                mentions: None,
            })
            .await;
        match sent {
            Ok(sent) => {
                bob_acks.push((client_msg_id, sent));
                i += 1;
            }
            Err(err) => {
                assert!(!moved, "sending through node C failed: {err}");
                // The node is gone: reconnect elsewhere and retry this one.
                bob_conn = cluster.connect(c, &bob).await;
                moved = true;
            }
        }
    }
    assert!(moved, "bob's node was killed while he was sending");
    let alice_acks = alice_sends.await.expect("alice's sender");

    // The log is contiguous from 1, and each acknowledged message is in it
    // once, at the pts it was acknowledged with.
    let reader = cluster.http(c).with_token(&carol.token);
    let mut events = Vec::new();
    let mut last = 0;
    loop {
        let page = reader
            .call(&GetDifference {
                channel_id: group,
                last_pts: last,
                limit: Some(100),
            })
            .await
            .expect("sync/get_difference");
        events.extend(page.events.iter().cloned());
        last = page.events.last().map_or(last, |e| e.pts);
        if !page.has_more {
            break;
        }
    }
    let pts: Vec<u64> = events.iter().map(|e| e.pts).collect();
    assert_eq!(
        pts,
        (1..=pts.len() as u64).collect::<Vec<_>>(),
        "the channel's events have contiguous pts"
    );
    let mut by_client_id: HashMap<String, Vec<u64>> = HashMap::new();
    for event in events.iter().filter(|e| e.event == "message/new") {
        let id = event.body["client_msg_id"].as_str().unwrap_or_default();
        by_client_id
            .entry(id.to_owned())
            .or_default()
            .push(event.pts);
    }
    let acknowledged = bob_acks
        .iter()
        .map(|(id, sent)| (id.clone(), sent.pts))
        .chain(
            alice_acks
                .iter()
                .enumerate()
                .map(|(i, sent)| (format!("alice-{i}"), sent.pts)),
        );
    let mut count = 0;
    for (id, pts) in acknowledged {
        assert_eq!(
            by_client_id.get(&id),
            Some(&vec![pts]),
            "{id} is stored exactly once, at its acknowledged pts"
        );
        count += 1;
    }
    assert_eq!(count, 2 * TOTAL);

    // Dave was only on the dead node: he goes offline after the TTL, and
    // carol (on C) is told.
    let offline = wait_for_event(&mut carol_c, "dave offline after the TTL", |e| {
        e.name == "presence/changed"
            && e.body()["user_id"] == dave.user_id.to_string()
            && e.body()["online"] == false
    })
    .await;
    assert_eq!(offline.body()["online"], false);
    let status = cluster
        .http(a)
        .with_token(&alice.token)
        .call(&StatusGet {
            user_id: dave.user_id,
        })
        .await
        .expect("presence/status/get");
    assert!(!status.online, "dave is offline once his node is gone");
}

/// Configuration alone chooses the cluster: a clustered bus on the embedded
/// SQLite default is refused with a clear error, before anything starts.
#[test]
fn a_cluster_on_sqlite_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("conclave.toml");
    std::fs::write(
        &config,
        "[cluster]\nbus = \"redis\"\nredis_url = \"redis://127.0.0.1:1\"\n",
    )
    .unwrap();
    let output = support::run(
        conclave(dir.path())
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("CONCLAVE_AUTH__TOKEN_SIGNING_KEY", "ab".repeat(32)),
    );
    assert!(!output.status.success());
    let stderr = support::stderr(&output);
    assert!(
        stderr.contains("database.url") && stderr.contains("postgres"),
        "{stderr}"
    );
}
