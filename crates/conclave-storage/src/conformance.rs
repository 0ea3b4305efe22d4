//! The behaviour every storage backend must show.
//!
//! Each check takes a freshly opened, empty store. A backend's test file
//! instantiates all of them with [`conformance_tests!`](crate::conformance_tests),
//! so adding a check here runs it against every backend.

use std::sync::Arc;

use conclave_core::{DeviceId, UserId};

use crate::{DeviceLogin, NewUser, ProfileUpdate, Storage, StorageError};

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

async fn alice(storage: &Arc<dyn Storage>) -> crate::UserRecord {
    storage
        .accounts()
        .create_user(NewUser {
            username: "Alice",
            password_hash: "hash",
            display_name: "Alice A.",
            now_ms: 1_000,
        })
        .await
        .unwrap()
}

fn login(user: UserId, existing: Option<DeviceId>, refresh: u8) -> DeviceLogin<'static> {
    DeviceLogin {
        user_id: user,
        existing,
        name: "phone",
        noise_public_key: Some([7; 32]),
        refresh_hash: [refresh; 32],
        refresh_expires_at_ms: 10_000,
        max_devices: 2,
        now_ms: 2_000,
    }
}

pub async fn usernames_are_unique_ignoring_case(storage: Arc<dyn Storage>) {
    let user = alice(&storage).await;
    assert_eq!(user.username, "Alice", "the spelling is kept");
    let accounts = storage.accounts();
    let taken = accounts
        .create_user(NewUser {
            username: "ALICE",
            password_hash: "x",
            display_name: "imposter",
            now_ms: 1,
        })
        .await;
    assert!(matches!(taken, Err(StorageError::Conflict(_))), "{taken:?}");
    let found = accounts.user_by_username("aLiCe").await.unwrap().unwrap();
    assert_eq!(found, user);
    assert_eq!(accounts.user_by_id(user.id).await.unwrap().unwrap(), user);
    assert_eq!(accounts.user_by_username("bob").await.unwrap(), None);
    assert_eq!(
        accounts.user_by_id(UserId::new(u64::MAX)).await.unwrap(),
        None
    );
}

pub async fn profile_updates_change_only_given_fields(storage: Arc<dyn Storage>) {
    let user = alice(&storage).await;
    let accounts = storage.accounts();
    let update = ProfileUpdate {
        bio: Some("hello".to_owned()),
        avatar_file_id: Some(Some("f1".to_owned())),
        ..ProfileUpdate::default()
    };
    let updated = accounts
        .update_profile(user.id, update, 5_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.display_name, "Alice A.");
    assert_eq!(updated.bio, "hello");
    assert_eq!(updated.avatar_file_id.as_deref(), Some("f1"));
    assert_eq!(updated.updated_at_ms, 5_000);
    let cleared = ProfileUpdate {
        avatar_file_id: Some(None),
        ..ProfileUpdate::default()
    };
    let updated = accounts
        .update_profile(user.id, cleared, 6_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.avatar_file_id, None);
    assert_eq!(updated.bio, "hello");
    let missing = accounts
        .update_profile(UserId::new(999_999), ProfileUpdate::default(), 1)
        .await
        .unwrap();
    assert_eq!(missing, None);
}

pub async fn devices_are_capped_renewed_and_listed(storage: Arc<dyn Storage>) {
    let user = alice(&storage).await;
    let accounts = storage.accounts();
    let phone = accounts
        .login_device(login(user.id, None, 1))
        .await
        .unwrap();
    assert_eq!(phone.noise_public_key, Some([7; 32]));
    assert_eq!(phone.token_epoch, 0);
    let laptop = accounts
        .login_device(login(user.id, None, 2))
        .await
        .unwrap();
    let third = accounts.login_device(login(user.id, None, 3)).await;
    assert!(
        matches!(third, Err(StorageError::LimitReached(_))),
        "{third:?}"
    );

    // Logging in again on a known device renews it instead of adding one.
    let mut again = login(user.id, Some(phone.id), 4);
    again.noise_public_key = None;
    let renewed = accounts.login_device(again).await.unwrap();
    assert_eq!(renewed.id, phone.id);
    assert_eq!(
        renewed.noise_public_key,
        Some([7; 32]),
        "key kept when none given"
    );

    let listed: Vec<DeviceId> = accounts
        .devices_of(user.id)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(listed, vec![phone.id, laptop.id]);
    assert!(
        accounts
            .rename_device(user.id, laptop.id, "work laptop")
            .await
            .unwrap()
    );
    assert_eq!(
        accounts.device(laptop.id).await.unwrap().unwrap().name,
        "work laptop"
    );
    assert!(
        !accounts
            .rename_device(UserId::new(999_999), laptop.id, "x")
            .await
            .unwrap()
    );
}

pub async fn refresh_tokens_are_single_use_and_expire(storage: Arc<dyn Storage>) {
    let user = alice(&storage).await;
    let accounts = storage.accounts();
    let phone = accounts
        .login_device(login(user.id, None, 1))
        .await
        .unwrap();
    let rotated = accounts
        .rotate_refresh([1; 32], [9; 32], 20_000, 3_000)
        .await
        .unwrap();
    assert_eq!(rotated.map(|d| d.id), Some(phone.id));
    assert_eq!(
        accounts
            .rotate_refresh([1; 32], [8; 32], 20_000, 3_000)
            .await
            .unwrap(),
        None,
        "reuse"
    );
    assert_eq!(
        accounts
            .rotate_refresh([9; 32], [8; 32], 30_000, 20_000)
            .await
            .unwrap(),
        None,
        "expired at 20 000"
    );
}

pub async fn ending_sessions_invalidates_tokens_and_revoking_removes(storage: Arc<dyn Storage>) {
    let user = alice(&storage).await;
    let accounts = storage.accounts();
    let phone = accounts
        .login_device(login(user.id, None, 1))
        .await
        .unwrap();
    let laptop = accounts
        .login_device(login(user.id, None, 2))
        .await
        .unwrap();

    let kicked = accounts
        .end_device_sessions(user.id, &[phone.id], false, 4_000)
        .await
        .unwrap();
    assert_eq!(kicked, vec![phone.id]);
    let phone_now = accounts.device(phone.id).await.unwrap().unwrap();
    assert_eq!(phone_now.token_epoch, 1);
    assert!(phone_now.is_active());
    assert_eq!(
        accounts
            .rotate_refresh([1; 32], [5; 32], 20_000, 4_000)
            .await
            .unwrap(),
        None
    );

    let stranger = UserId::new(999_999);
    let none = accounts
        .end_device_sessions(stranger, &[laptop.id], true, 5_000)
        .await
        .unwrap();
    assert!(none.is_empty(), "another user's device is untouched");
    let revoked = accounts
        .end_device_sessions(user.id, &[laptop.id], true, 5_000)
        .await
        .unwrap();
    assert_eq!(revoked, vec![laptop.id]);
    assert!(
        !accounts
            .device(laptop.id)
            .await
            .unwrap()
            .unwrap()
            .is_active()
    );
    let listed: Vec<DeviceId> = accounts
        .devices_of(user.id)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(listed, vec![phone.id]);
    // A revoked device cannot be logged into again; a new one is made.
    let fresh = accounts
        .login_device(login(user.id, Some(laptop.id), 6))
        .await
        .unwrap();
    assert_ne!(fresh.id, laptop.id);
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
            usernames_are_unique_ignoring_case,
            profile_updates_change_only_given_fields,
            devices_are_capped_renewed_and_listed,
            refresh_tokens_are_single_use_and_expire,
            ending_sessions_invalidates_tokens_and_revoking_removes,
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
