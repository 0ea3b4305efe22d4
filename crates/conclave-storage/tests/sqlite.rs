//! The conformance suite on the embedded SQLite backend, plus what is
//! specific to SQLite (files on disk, WAL, reopening).

use std::sync::Arc;

use conclave_storage::{OpenOptions, Storage};

async fn fresh() -> Option<Arc<dyn Storage>> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    // The directory must outlive the store; leak it for the test's duration.
    std::mem::forget(dir);
    Some(
        conclave_storage::open(&url, OpenOptions::default())
            .await
            .unwrap(),
    )
}

conclave_storage::conformance_tests!(fresh().await);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commit_stream_keeps_pts_order_under_concurrent_writes() {
    let storage = fresh().await.unwrap();
    conclave_storage::conformance::the_commit_stream_keeps_pts_order_under_concurrent_writes(
        storage,
    )
    .await;
}

#[tokio::test]
async fn reopening_keeps_data_and_does_not_rerun_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("c.db").display());
    let store = conclave_storage::open(&url, OpenOptions::default())
        .await
        .unwrap();
    store
        .meta()
        .get_or_insert("installation_id", "abc", 0)
        .await
        .unwrap();
    let migrations = store.applied_migrations().await.unwrap();
    store.close().await;
    assert_eq!(
        std::fs::metadata(dir.path().join("c.db-wal"))
            .map(|m| m.len())
            .unwrap_or(0),
        0,
        "a clean close leaves no WAL content behind"
    );

    let store = conclave_storage::open(&url, OpenOptions::default())
        .await
        .unwrap();
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
    store.close().await;
}

#[tokio::test]
async fn a_database_from_a_newer_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("c.db").display());
    let store = conclave_storage::open(&url, OpenOptions::default())
        .await
        .unwrap();
    store.close().await;
    // Pretend a later build applied a migration this build does not know.
    assert!(
        insert_future_migration(dir.path().join("c.db")).await,
        "could not tamper with the migrations table"
    );
    let err = conclave_storage::open(&url, OpenOptions::default())
        .await
        .err();
    assert!(
        err.is_some(),
        "opening a newer database must fail, not guess"
    );
}

#[tokio::test]
async fn unknown_schemes_are_refused_with_a_clear_reason() {
    let err = conclave_storage::open("mysql://x", OpenOptions::default())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("mysql"), "{err}");
}

/// Records a migration this build does not know, as a later build would.
async fn insert_future_migration(path: std::path::PathBuf) -> bool {
    use sqlx::Connection;
    let url = format!("sqlite://{}", path.display());
    let Ok(mut conn) = sqlx::SqliteConnection::connect(&url).await else {
        return false;
    };
    let inserted = sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time) \
         VALUES (99999, 'from the future', CURRENT_TIMESTAMP, 1, x'00', 0)",
    )
    .execute(&mut conn)
    .await
    .is_ok();
    conn.close().await.is_ok() && inserted
}
