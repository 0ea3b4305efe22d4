//! The conformance suite on the embedded SQLite backend, plus what is
//! specific to SQLite (files on disk, WAL, reopening).

use std::sync::Arc;

use conclave_core::{ChannelId, MessageId, UserId};
use conclave_storage::conformance::text;
use conclave_storage::{NewUser, OpenOptions, SendOutcome, Storage};

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

/// Rows of `sql` (one integer column) in the database file at `path`.
fn integers(path: &std::path::Path, sql: &str) -> Vec<i64> {
    let connection = rusqlite::Connection::open(path).unwrap();
    let mut statement = connection.prepare(sql).unwrap();
    let rows = statement.query_map([], |row| row.get(0)).unwrap();
    rows.map(Result::unwrap).collect()
}

/// A store at `url` with users ann and ben and their direct channel.
async fn ann_and_ben(url: &str) -> (Arc<dyn Storage>, [UserId; 2], ChannelId) {
    let store = conclave_storage::open(url, OpenOptions::default())
        .await
        .unwrap();
    let mut users = [UserId::new(0); 2];
    for (at, name) in ["ann", "ben"].into_iter().enumerate() {
        let new = NewUser {
            username: name,
            password_hash: "hash",
            display_name: name,
            now_ms: 1,
        };
        users[at] = store.accounts().create_user(new).await.unwrap().id;
    }
    let (channel, _) = store
        .messages()
        .direct_channel(users[0], users[1], 1)
        .await
        .unwrap();
    (store, users, channel.id)
}

#[tokio::test]
async fn search_text_waits_across_a_restart_and_a_revoked_one_is_never_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let url = format!("sqlite://{}", path.display());
    let (store, [a, b], channel) = ann_and_ben(&url).await;
    let mut ids = Vec::new();
    for (id, body) in [("m1", "the secret plan"), ("m2", "lunch at noon")] {
        match store
            .messages()
            .send_message(text(channel, a, id, body))
            .await
            .unwrap()
        {
            SendOutcome::Sent(event) => ids.push(event.message_id.unwrap()),
            other => panic!("{other:?}"),
        }
    }
    // Revoked while its text still waits to be indexed.
    store
        .messages()
        .revoke_message(ids[0], a, 3, None)
        .await
        .unwrap()
        .unwrap();
    store.close().await;

    let waiting = "SELECT message_id FROM search_backlog";
    let indexed = |word: &str| {
        integers(
            &path,
            &format!("SELECT rowid FROM messages_fts WHERE messages_fts MATCH '{word}'"),
        )
    };
    let id = |message: MessageId| i64::try_from(message.get()).unwrap();
    assert_eq!(integers(&path, waiting), [id(ids[1])], "m1 was forgotten");
    assert!(
        indexed("lunch").is_empty(),
        "nothing searched, nothing indexed"
    );

    // A search after a restart still finds what waited.
    let store = conclave_storage::open(&url, OpenOptions::default())
        .await
        .unwrap();
    let found = store
        .messages()
        .search(b, &["lunch".to_owned()], None, 10)
        .await
        .unwrap();
    assert_eq!(found.iter().map(|m| m.id).collect::<Vec<_>>(), [ids[1]]);
    store.close().await;
    assert!(integers(&path, waiting).is_empty());
    assert_eq!(indexed("lunch"), [id(ids[1])]);
    assert!(indexed("secret").is_empty(), "revoked text never indexed");
}

#[tokio::test]
async fn the_writer_indexes_the_search_backlog_without_a_search() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let url = format!("sqlite://{}", path.display());
    let (store, [a, _], channel) = ann_and_ben(&url).await;
    let sends = 600;
    for i in 0..sends {
        let (id, body) = (format!("m{i}"), format!("note {i}"));
        store
            .messages()
            .send_message(text(channel, a, &id, &body))
            .await
            .unwrap();
    }
    store.close().await;
    let waiting = integers(&path, "SELECT COUNT(*) FROM search_backlog")[0];
    let indexed = integers(
        &path,
        "SELECT COUNT(*) FROM messages_fts WHERE messages_fts MATCH 'note'",
    )[0];
    assert_eq!(waiting + indexed, sends, "every text is in one of the two");
    assert!(
        indexed >= sends / 2 && waiting < sends / 2,
        "the writer moved most of them into the index: {indexed} indexed, {waiting} waiting"
    );
}
