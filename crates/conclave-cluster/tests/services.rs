//! The bus and the directory against real Redis and NATS servers, from
//! `CONCLAVE_TEST_REDIS_URL` and `CONCLAVE_TEST_NATS_URL`; each test skips
//! with a notice when its server is not configured.

use std::time::Duration;

use bytes::Bytes;
use conclave_cluster::{BusKind, Directory, NodeId, RedisDirectory, SessionEntry, connect_bus};
use conclave_core::{DeviceId, UserId};
use tokio_util::sync::CancellationToken;

fn env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            eprintln!("skipping: {name} is not set");
            None
        }
    }
}

fn namespace() -> String {
    format!("test_{}", NodeId::random().unwrap())
}

async fn two_nodes_hear_each_other_but_not_themselves(kind: BusKind, url: &str) {
    let ns = namespace();
    let stop = CancellationToken::new();
    let (a, mut from_a_view) =
        connect_bus(kind, Some(url), &ns, NodeId::new("node-a"), stop.clone())
            .await
            .unwrap();
    let (b, mut from_b_view) =
        connect_bus(kind, Some(url), &ns, NodeId::new("node-b"), stop.clone())
            .await
            .unwrap();
    // Subscriptions settle asynchronously; publish until the first arrives.
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            a.publish(Bytes::from_static(b"hello")).await.unwrap();
            if let Ok(Some(got)) =
                tokio::time::timeout(Duration::from_millis(100), from_b_view.recv()).await
            {
                return got;
            }
        }
    })
    .await
    .expect("node b hears node a");
    assert_eq!(first, Bytes::from_static(b"hello"));
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(200), from_b_view.recv()).await
    {}

    // In order, each once, and never echoed to the publisher.
    for i in 0..50u32 {
        a.publish(Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .unwrap();
    }
    for i in 0..50u32 {
        let got = tokio::time::timeout(Duration::from_secs(5), from_b_view.recv())
            .await
            .expect("the next message")
            .unwrap();
        assert_eq!(got.as_ref(), i.to_be_bytes());
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), from_a_view.recv())
            .await
            .is_err(),
        "a node does not receive its own messages"
    );
    b.publish(Bytes::from_static(b"back")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), from_a_view.recv())
        .await
        .expect("node a hears node b")
        .unwrap();
    assert_eq!(got, Bytes::from_static(b"back"));
    stop.cancel();
}

#[tokio::test]
async fn the_redis_bus_carries_messages_between_nodes() {
    let Some(url) = env("CONCLAVE_TEST_REDIS_URL") else {
        return;
    };
    two_nodes_hear_each_other_but_not_themselves(BusKind::Redis, &url).await;
}

#[tokio::test]
async fn the_nats_bus_carries_messages_between_nodes() {
    let Some(url) = env("CONCLAVE_TEST_NATS_URL") else {
        return;
    };
    two_nodes_hear_each_other_but_not_themselves(BusKind::Nats, &url).await;
}

#[tokio::test]
async fn an_unreachable_bus_fails_to_connect_with_a_clear_error() {
    let err = connect_bus(
        BusKind::Redis,
        Some("redis://127.0.0.1:1"),
        "x",
        NodeId::new("n"),
        CancellationToken::new(),
    )
    .await
    .err()
    .expect("nothing listens on port 1");
    assert!(err.to_string().contains("redis"), "{err}");
}

fn entry(session: u64, user: u64, device: u64) -> SessionEntry {
    SessionEntry {
        session,
        user: UserId::new(user),
        device: DeviceId::new(device),
    }
}

#[tokio::test]
async fn the_directory_sees_other_nodes_sessions_until_they_end_or_expire() {
    let Some(url) = env("CONCLAVE_TEST_REDIS_URL") else {
        return;
    };
    let ns = namespace();
    let ttl = Duration::from_millis(600);
    let a = RedisDirectory::connect(&url, &ns, NodeId::new("a"), ttl)
        .await
        .unwrap();
    let b = RedisDirectory::connect(&url, &ns, NodeId::new("b"), ttl)
        .await
        .unwrap();
    a.heartbeat(&[]).await.unwrap();
    b.heartbeat(&[]).await.unwrap();

    a.opened(entry(1, 10, 100)).await.unwrap();
    a.opened(entry(2, 10, 101)).await.unwrap();
    assert!(b.online_elsewhere(UserId::new(10)).await.unwrap());
    assert!(
        !a.online_elsewhere(UserId::new(10)).await.unwrap(),
        "a node answers for its own sessions itself"
    );
    assert_eq!(
        b.device_sessions_elsewhere(DeviceId::new(100))
            .await
            .unwrap(),
        1
    );
    assert!(!b.online_elsewhere(UserId::new(11)).await.unwrap());

    a.closed(entry(1, 10, 100), false).await.unwrap();
    assert_eq!(
        b.device_sessions_elsewhere(DeviceId::new(100))
            .await
            .unwrap(),
        0
    );
    assert!(b.online_elsewhere(UserId::new(10)).await.unwrap());

    // Node a stops heartbeating (it died): after the TTL its sessions are
    // gone, and exactly one reaper gets its users.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    b.heartbeat(&[]).await.unwrap();
    assert!(!b.online_elsewhere(UserId::new(10)).await.unwrap());
    let reaped = b.reap_dead_nodes().await.unwrap();
    assert_eq!(reaped, vec![UserId::new(10)]);
    assert!(b.reap_dead_nodes().await.unwrap().is_empty(), "reaped once");

    // A clean leave removes the node at once.
    b.leave().await.unwrap();
    let c = RedisDirectory::connect(&url, &ns, NodeId::new("c"), ttl)
        .await
        .unwrap();
    assert!(c.reap_dead_nodes().await.unwrap().is_empty());
}
