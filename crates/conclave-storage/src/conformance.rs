//! The behaviour every storage backend must show.
//!
//! Each check takes a freshly opened, empty store. A backend's test file
//! instantiates all of them with [`conformance_tests!`](crate::conformance_tests),
//! so adding a check here runs it against every backend.

use std::sync::Arc;

use crate::{Storage, StorageError};

pub async fn ping_answers(storage: Arc<dyn Storage>) {
    storage.ping().await.expect("a fresh store answers ping");
    storage
        .check_integrity()
        .await
        .expect("a fresh store is consistent");
}

pub async fn migrations_are_applied_in_order(storage: Arc<dyn Storage>) {
    let applied = storage.applied_migrations().await.unwrap();
    assert!(!applied.is_empty(), "no migrations applied");
    assert!(
        applied.windows(2).all(|w| w[0].version < w[1].version),
        "migrations out of order: {applied:?}"
    );
}

pub async fn meta_first_writer_wins(storage: Arc<dyn Storage>) {
    let meta = storage.meta();
    assert_eq!(meta.get("installation_id").await.unwrap(), None);
    let first = meta
        .get_or_insert("installation_id", "one", 1)
        .await
        .unwrap();
    assert_eq!(first, "one");
    let second = meta
        .get_or_insert("installation_id", "two", 2)
        .await
        .unwrap();
    assert_eq!(second, "one", "a stored value is never replaced");
    assert_eq!(
        meta.get("installation_id").await.unwrap().as_deref(),
        Some("one")
    );
}

pub async fn meta_concurrent_writers_agree(storage: Arc<dyn Storage>) {
    let mut tasks = Vec::new();
    for i in 0..16 {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            storage
                .meta()
                .get_or_insert("race", &format!("writer-{i}"), i)
                .await
                .unwrap()
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        winners.push(task.await.unwrap());
    }
    winners.dedup();
    assert_eq!(winners.len(), 1, "writers disagree: {winners:?}");
}

pub async fn closed_store_refuses_work(storage: Arc<dyn Storage>) {
    storage.meta().get_or_insert("k", "v", 0).await.unwrap();
    storage.close().await;
    storage.close().await; // closing twice is harmless
    assert!(matches!(storage.ping().await, Err(StorageError::Closed)));
    assert!(matches!(
        storage.meta().get("k").await,
        Err(StorageError::Closed)
    ));
}

/// Generates one `#[tokio::test]` per conformance check. `$open` is an async
/// expression that yields a fresh `Arc<dyn Storage>` (and may `return` early
/// to skip when the backend's server is not configured).
#[macro_export]
macro_rules! conformance_tests {
    ($open:expr) => {
        $crate::conformance_tests!(@each $open;
            ping_answers,
            migrations_are_applied_in_order,
            meta_first_writer_wins,
            meta_concurrent_writers_agree,
            closed_store_refuses_work,
        );
    };
    (@each $open:expr; $($check:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(storage) = $open else { return };
                $crate::conformance::$check(storage).await;
            }
        )*
    };
}
