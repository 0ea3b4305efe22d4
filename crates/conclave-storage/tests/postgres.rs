//! The conformance suite on PostgreSQL, plus what is specific to it:
//! several server processes ("nodes") sharing one database, and migrations
//! on a server that outlives the process.
//!
//! Runs against the server named by `CONCLAVE_TEST_POSTGRES_URL` (for
//! example `postgres://postgres@127.0.0.1:5432/test`), on which the tests
//! may create databases: each test gets a fresh database of its own, dropped
//! when it ends. Without the variable every test says it is skipped and
//! passes.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use conclave_core::{DeviceId, UserId};
use conclave_storage::{
    AppliedMigration, DeviceLogin, NewMessage, NewUser, OpenOptions, PostgresOptions, SendOutcome,
    Storage, StorageError,
};
use sqlx::Connection as _;

const URL_VAR: &str = "CONCLAVE_TEST_POSTGRES_URL";

/// The server to test against, or `None` (with a notice) to skip.
fn server_url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            eprintln!("skipping: {URL_VAR} is not set");
            None
        }
    }
}

/// `url` with its database replaced by `name` (user, host and parameters
/// kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, params) = match url.split_once('?') {
        Some((base, params)) => (base, Some(params)),
        None => (url, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let mut out = format!("{}/{name}", &base[..path]);
    if let Some(params) = params {
        out.push('?');
        out.push_str(params);
    }
    out
}

/// A name no other test (in this process or another) is using.
fn unique_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded randomly per process; the rest separates the
    // databases of one process.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("conclave_test_{:016x}", hasher.finish())
}

/// A fresh, empty database, dropped (with whatever is still connected to
/// it) when this is.
struct ScratchDb {
    server: String,
    name: String,
    url: String,
}

impl ScratchDb {
    async fn create(server: &str) -> Self {
        let name = unique_name();
        let mut admin = sqlx::PgConnection::connect(server)
            .await
            .unwrap_or_else(|err| panic!("cannot connect to {URL_VAR}: {err}"));
        // template0 takes no connections, so concurrent creations never
        // find their template busy.
        sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE template0"))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        Self {
            server: server.to_owned(),
            url: with_database(server, &name),
            name,
        }
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let server = self.server.clone();
        let drop_sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop runs inside the test's runtime, which cannot be blocked on;
        // a thread of its own with a runtime of its own can.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&server).await.ok()?;
                let dropped = sqlx::query(&drop_sql).execute(&mut admin).await.is_ok();
                let _ = admin.close().await;
                dropped.then_some(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

fn options() -> OpenOptions {
    OpenOptions {
        postgres: PostgresOptions {
            max_connections: 8,
            ..PostgresOptions::default()
        },
        ..OpenOptions::default()
    }
}

/// A store on a scratch database that goes away with the store.
struct Scratch {
    store: Arc<dyn Storage>,
    // Dropped after `store`, so the pool goes first.
    _db: ScratchDb,
}

#[async_trait]
impl Storage for Scratch {
    fn backend(&self) -> &'static str {
        self.store.backend()
    }
    async fn ping(&self) -> Result<(), StorageError> {
        self.store.ping().await
    }
    async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, StorageError> {
        self.store.applied_migrations().await
    }
    async fn check_integrity(&self) -> Result<(), StorageError> {
        self.store.check_integrity().await
    }
    async fn close(&self) {
        self.store.close().await;
    }
    fn meta(&self) -> &dyn conclave_storage::MetaStore {
        self.store.meta()
    }
    fn accounts(&self) -> &dyn conclave_storage::AccountStore {
        self.store.accounts()
    }
    fn messages(&self) -> &dyn conclave_storage::MessageStore {
        self.store.messages()
    }
    fn inbox(&self) -> &dyn conclave_storage::InboxStore {
        self.store.inbox()
    }
    fn documents(&self) -> &dyn conclave_storage::DocumentStore {
        self.store.documents()
    }
    fn social(&self) -> &dyn conclave_storage::SocialStore {
        self.store.social()
    }
    fn groups(&self) -> &dyn conclave_storage::GroupStore {
        self.store.groups()
    }
    fn files(&self) -> &dyn conclave_storage::FileStore {
        self.store.files()
    }
}

async fn fresh() -> Option<Arc<dyn Storage>> {
    let server = server_url()?;
    let db = ScratchDb::create(&server).await;
    let store = conclave_storage::open(&db.url, options()).await.unwrap();
    assert_eq!(store.backend(), "postgres");
    Some(Arc::new(Scratch { store, _db: db }))
}

conclave_storage::conformance_tests!(fresh().await);

async fn user(storage: &Arc<dyn Storage>, name: &str) -> UserId {
    storage
        .accounts()
        .create_user(NewUser {
            username: name,
            password_hash: "hash",
            display_name: name,
            now_ms: 1,
        })
        .await
        .unwrap()
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sending_into_one_channel_keep_pts_exact() {
    let Some(server) = server_url() else { return };
    let db = ScratchDb::create(&server).await;
    let nodes = [
        conclave_storage::open(&db.url, options()).await.unwrap(),
        conclave_storage::open(&db.url, options()).await.unwrap(),
    ];
    let mut streams = [
        nodes[0].messages().commits().unwrap(),
        nodes[1].messages().commits().unwrap(),
    ];
    let (a, b) = (user(&nodes[0], "ann").await, user(&nodes[1], "ben").await);
    let channel = nodes[0]
        .messages()
        .direct_channel(a, b, 5)
        .await
        .unwrap()
        .0
        .id;

    const TASKS: usize = 4;
    const SENDS: usize = 50;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let node = task % 2;
        let storage = nodes[node].clone();
        tasks.push(tokio::spawn(async move {
            let mut stored = Vec::with_capacity(SENDS);
            for i in 0..SENDS {
                let id = format!("t{task}-{i}");
                let sender = if i % 2 == 0 { a } else { b };
                let outcome = storage
                    .messages()
                    .send_message(NewMessage {
                        channel_id: channel,
                        sender_id: sender,
                        sender_device_id: DeviceId::new(1),
                        client_msg_id: &id,
                        content: "{}",
                        search_text: Some("hello"),
                        reply_to: None,
                        mentions: "{}",
                        now_ms: 10,
                        origin_session: None,
                    })
                    .await
                    .unwrap();
                let SendOutcome::Sent(event) = outcome else {
                    panic!("{id} is not a retry");
                };
                stored.push(event.pts);
            }
            (node, stored)
        }));
    }
    let mut by_node: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    for task in tasks {
        let (node, stored) = task.await.unwrap();
        by_node[node].extend(stored);
    }
    let total = (TASKS * SENDS) as u64;
    let mut all: Vec<u64> = by_node.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=total).collect::<Vec<_>>(), "no holes, no reuse");
    for node in &nodes {
        assert_eq!(
            node.messages().channel(channel).await.unwrap().unwrap().pts,
            total,
            "both nodes see one head"
        );
    }
    let (events, head) = nodes[1]
        .messages()
        .events_after(channel, 0, 1_000)
        .await
        .unwrap();
    assert_eq!(head, total);
    assert_eq!(
        events.iter().map(|e| e.pts).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "the log has every event once, in order"
    );

    // Each node streams exactly the events it committed, each once; every
    // send was acknowledged, so its event is in the stream already.
    let mut streamed_anywhere = HashSet::new();
    for (node, stream) in streams.iter_mut().enumerate() {
        let mut streamed = Vec::new();
        while let Ok(committed) = stream.try_recv() {
            assert_eq!(committed.event.channel_id, channel);
            assert_eq!(committed.recipients.len(), 2);
            streamed.push(committed.event.pts);
        }
        let unique: HashSet<u64> = streamed.iter().copied().collect();
        assert_eq!(
            unique.len(),
            streamed.len(),
            "node {node} sent an event twice"
        );
        let committed_here: HashSet<u64> = by_node[node].iter().copied().collect();
        assert_eq!(
            unique, committed_here,
            "node {node} streams what it committed"
        );
        for pts in unique {
            assert!(
                streamed_anywhere.insert(pts),
                "pts {pts} streamed by both nodes"
            );
        }
    }
    assert_eq!(streamed_anywhere.len() as u64, total);
    for node in &nodes {
        node.check_integrity().await.unwrap();
        node.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_agree_on_every_unique_thing() {
    let Some(server) = server_url() else { return };
    let db = ScratchDb::create(&server).await;
    let nodes = [
        conclave_storage::open(&db.url, options()).await.unwrap(),
        conclave_storage::open(&db.url, options()).await.unwrap(),
    ];

    // One installation id, one account per name, one direct channel per
    // pair, one pending friend request per direction.
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let storage = nodes[i as usize % 2].clone();
        tasks.push(tokio::spawn(async move {
            let id = storage
                .meta()
                .get_or_insert("installation_id", &format!("node-{i}"), 0)
                .await
                .unwrap();
            let created = storage
                .accounts()
                .create_user(NewUser {
                    username: "Zoe",
                    password_hash: "x",
                    display_name: "z",
                    now_ms: 1,
                })
                .await;
            (id, created)
        }));
    }
    let mut ids = HashSet::new();
    let mut accounts = 0;
    for task in tasks {
        let (id, created) = task.await.unwrap();
        ids.insert(id);
        match created {
            Ok(_) => accounts += 1,
            Err(StorageError::Conflict(_)) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(ids.len(), 1, "every node sees the same installation id");
    assert_eq!(accounts, 1, "one account per name");

    let (a, b) = (user(&nodes[0], "ann").await, user(&nodes[1], "ben").await);
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let storage = nodes[i as usize % 2].clone();
        tasks.push(tokio::spawn(async move {
            let (x, y) = if i % 2 == 0 { (a, b) } else { (b, a) };
            let channel = storage.messages().direct_channel(x, y, 5).await.unwrap();
            let request = storage.social().request_friend(a, b, None, 6).await;
            (channel, request.is_ok())
        }));
    }
    let mut channels = HashSet::new();
    let (mut created, mut requested) = (0, 0);
    for task in tasks {
        let ((channel, was_created), was_requested) = task.await.unwrap();
        channels.insert(channel.id);
        created += usize::from(was_created);
        requested += usize::from(was_requested);
    }
    assert_eq!(channels.len(), 1, "one direct channel per pair");
    assert_eq!(created, 1, "created once");
    assert_eq!(requested, 1, "one pending request per direction");
    let channel = *channels.iter().next().unwrap();
    assert_eq!(nodes[0].messages().members(channel).await.unwrap().len(), 2);

    // Crossing requests accepted from both sides at once: friends once.
    nodes[1]
        .social()
        .request_friend(b, a, None, 7)
        .await
        .unwrap();
    let (one, other) = (nodes[0].clone(), nodes[1].clone());
    let (first, second) = tokio::join!(
        one.social().accept_request(a, b, channel, 8),
        other.social().accept_request(b, a, channel, 8),
    );
    let accepted = usize::from(first.unwrap().is_some()) + usize::from(second.unwrap().is_some());
    assert_eq!(accepted, 1, "the crossing requests are accepted once");
    assert!(nodes[0].social().relation(a, b).await.unwrap().friends);
    assert!(
        nodes[0]
            .social()
            .pending_requests(a)
            .await
            .unwrap()
            .is_empty()
    );

    // The device cap holds across nodes.
    let mut tasks = Vec::new();
    for i in 0..10u8 {
        let storage = nodes[usize::from(i) % 2].clone();
        tasks.push(tokio::spawn(async move {
            storage
                .accounts()
                .login_device(DeviceLogin {
                    user_id: a,
                    existing: None,
                    name: "phone",
                    noise_public_key: None,
                    refresh_hash: [i; 32],
                    refresh_expires_at_ms: 10_000,
                    max_devices: 3,
                    now_ms: 2_000,
                })
                .await
        }));
    }
    let mut logged_in = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(_) => logged_in.push(i as u8),
            Err(StorageError::LimitReached(_)) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(logged_in.len(), 3, "at most max_devices devices");
    assert_eq!(nodes[1].accounts().devices_of(a).await.unwrap().len(), 3);

    // One refresh token, rotated on both nodes at once: used once.
    let (one, other) = (nodes[0].clone(), nodes[1].clone());
    let token = [logged_in[0]; 32];
    let (first, second) = tokio::join!(
        one.accounts()
            .rotate_refresh(token, [100; 32], 20_000, 3_000),
        other
            .accounts()
            .rotate_refresh(token, [101; 32], 20_000, 3_000),
    );
    let rotated = usize::from(first.unwrap().is_some()) + usize::from(second.unwrap().is_some());
    assert_eq!(rotated, 1, "a refresh token is used once");

    for node in &nodes {
        node.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_changes_and_sends_from_two_nodes_stay_consistent() {
    let Some(server) = server_url() else { return };
    let db = ScratchDb::create(&server).await;
    let nodes = [
        conclave_storage::open(&db.url, options()).await.unwrap(),
        conclave_storage::open(&db.url, options()).await.unwrap(),
    ];
    let owner = user(&nodes[0], "olga").await;
    let mut members = Vec::new();
    for i in 0..6 {
        members.push(user(&nodes[0], &format!("m{i}")).await);
    }
    let (group, _) = nodes[0]
        .groups()
        .create_group(conclave_storage::NewGroup {
            owner,
            name: "club",
            description: "",
            members: &members[..3],
            member_cap: 6,
            now_ms: 1,
            origin_session: None,
        })
        .await
        .unwrap();

    // Four joins (one of a member) race for two free seats while members send, kicks happen
    // and the group is renamed, from both nodes.
    let mut tasks = Vec::new();
    for (i, joiner) in members[3..].iter().copied().chain([members[0]]).enumerate() {
        let storage = nodes[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            storage
                .groups()
                .change_group(
                    group.id,
                    owner,
                    &[(owner, Some("owner".to_owned()))],
                    conclave_storage::GroupChange::Join {
                        users: vec![joiner],
                        via: "invite".to_owned(),
                        request: None,
                    },
                    10,
                    None,
                )
                .await
                .map(|_| ())
        }));
    }
    let mut sends = Vec::new();
    for (i, sender) in members[..3].iter().copied().enumerate() {
        let storage = nodes[(i + 1) % 2].clone();
        sends.push(tokio::spawn(async move {
            let mut refused = 0;
            for n in 0..10 {
                let id = format!("s{i}-{n}");
                match storage
                    .messages()
                    .send_message(NewMessage {
                        channel_id: group.channel_id,
                        sender_id: sender,
                        sender_device_id: DeviceId::new(1),
                        client_msg_id: &id,
                        content: "{}",
                        search_text: None,
                        reply_to: None,
                        mentions: "{}",
                        now_ms: 11,
                        origin_session: None,
                    })
                    .await
                {
                    Ok(SendOutcome::Sent(_)) => {}
                    Err(StorageError::NotFound(_)) => refused += 1,
                    other => panic!("{other:?}"),
                }
            }
            refused
        }));
    }
    let kick = {
        let storage = nodes[1].clone();
        let kicked = members[1];
        tokio::spawn(async move {
            storage
                .groups()
                .change_group(
                    group.id,
                    owner,
                    &[(kicked, Some("member".to_owned()))],
                    conclave_storage::GroupChange::Leave {
                        user: kicked,
                        kicked: true,
                    },
                    12,
                    None,
                )
                .await
                .unwrap()
        })
    };
    let mut joined = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => joined += 1,
            Err(StorageError::LimitReached(_) | StorageError::Conflict(_)) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    let kicked = kick.await.unwrap();
    for send in sends {
        send.await.unwrap();
    }
    // Two seats were free; the kick may have freed a third before a join.
    assert!((2..=3).contains(&joined), "{joined} joined");
    let now = nodes[1].groups().group(group.id).await.unwrap().unwrap();
    assert!(now.member_count <= 6, "the cap holds: {}", now.member_count);

    let (events, head) = nodes[0]
        .messages()
        .events_after(group.channel_id, 0, 1_000)
        .await
        .unwrap();
    assert_eq!(
        events.iter().map(|e| e.pts).collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>(),
        "one contiguous log"
    );
    // Nobody speaks after leaving; every new member sees its log from its
    // own join event on.
    let kicked_at = kicked.event.pts;
    assert!(
        events
            .iter()
            .filter(|e| e.kind == "message" && e.actor_id == members[1])
            .all(|e| e.pts < kicked_at),
        "a removed member's message came after the removal"
    );
    for member in nodes[0].messages().members(group.channel_id).await.unwrap() {
        if member.joined_pts == 0 {
            continue;
        }
        let join = &events[member.joined_pts as usize];
        assert_eq!(join.kind, "group/member_joined", "{member:?}");
        let body: serde_json::Value = serde_json::from_str(&join.body).unwrap();
        let joined_ids = body["user_ids"].as_array().unwrap();
        assert!(
            joined_ids.contains(&serde_json::json!(member.user_id)),
            "{member:?} joined by {body}"
        );
    }
    for node in &nodes {
        node.check_integrity().await.unwrap();
        node.close().await;
    }
}

#[tokio::test]
async fn reopening_keeps_data_and_does_not_rerun_migrations() {
    let Some(server) = server_url() else { return };
    let db = ScratchDb::create(&server).await;
    let store = conclave_storage::open(&db.url, options()).await.unwrap();
    store
        .meta()
        .get_or_insert("installation_id", "abc", 0)
        .await
        .unwrap();
    let migrations = store.applied_migrations().await.unwrap();
    assert_eq!(
        migrations,
        conclave_storage::PostgresStorage::known_migrations(),
        "a new database gets every migration this build knows"
    );
    store.close().await;

    let store = conclave_storage::open(&db.url, options()).await.unwrap();
    assert_eq!(
        store
            .meta()
            .get("installation_id")
            .await
            .unwrap()
            .as_deref(),
        Some("abc")
    );
    assert_eq!(store.applied_migrations().await.unwrap(), migrations);
    let (runs,): (i64,) = {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let count = sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        count
    };
    assert_eq!(
        runs as usize,
        migrations.len(),
        "each migration recorded once"
    );
    store.close().await;
}

#[tokio::test]
async fn a_database_from_a_newer_build_is_refused() {
    let Some(server) = server_url() else { return };
    let db = ScratchDb::create(&server).await;
    let store = conclave_storage::open(&db.url, options()).await.unwrap();
    store.close().await;
    // Pretend a later build applied a migration this build does not know.
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time) \
         VALUES (99999, 'from the future', now(), TRUE, '\\x00', 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let err = conclave_storage::open(&db.url, options()).await.err();
    assert!(
        matches!(err, Some(StorageError::Migration(_))),
        "opening a newer database must fail, not guess: {err:?}"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_reported_as_unavailable() {
    // A port nothing listens on: connecting fails at once.
    let options = OpenOptions {
        postgres: PostgresOptions {
            max_connections: 1,
            acquire_timeout_ms: 300,
        },
        ..OpenOptions::default()
    };
    let err = conclave_storage::open("postgres://conclave@127.0.0.1:1/none", options)
        .await
        .err()
        .expect("nothing listens on port 1");
    assert!(matches!(err, StorageError::Unavailable(_)), "{err:?}");
}
