//! The behaviour every storage backend must show.
//!
//! Each check takes a freshly opened, empty store. A backend's test file
//! instantiates all of them with [`conformance_tests!`](crate::conformance_tests),
//! so adding a check here runs it against every backend.

use std::sync::Arc;

use conclave_core::{DeviceId, MessageId, UserId};

use crate::{
    Audience, ChunkOutcome, DeviceLogin, FileStatus, MemberFlag, NewMessage, NewUpload, NewUser,
    PrivacyRecord, ProfileUpdate, ReactionOp, SendOutcome, Storage, StorageError,
};

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

/// Alice logged in on her phone, then her laptop (the device limit is two).
async fn alice_on_two_devices(
    storage: &Arc<dyn Storage>,
) -> (crate::UserRecord, crate::DeviceRecord, crate::DeviceRecord) {
    let user = alice(storage).await;
    let accounts = storage.accounts();
    let phone = accounts
        .login_device(login(user.id, None, 1))
        .await
        .unwrap();
    let laptop = accounts
        .login_device(login(user.id, None, 2))
        .await
        .unwrap();
    (user, phone, laptop)
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

pub async fn devices_are_seen_in_batches_and_never_back_in_time(storage: Arc<dyn Storage>) {
    let (user, phone, laptop) = alice_on_two_devices(&storage).await;
    let accounts = storage.accounts();
    accounts.touch_devices(&[]).await.unwrap();
    assert_eq!(accounts.last_seen(user.id).await.unwrap(), Some(2_000));

    // One batch: a device listed twice keeps its latest time; an unknown
    // device is skipped without failing the others.
    accounts
        .touch_devices(&[
            (phone.id, 5_000),
            (DeviceId::new(999_999), 7_000),
            (laptop.id, 3_000),
            (phone.id, 4_000),
        ])
        .await
        .unwrap();
    let seen = |device: DeviceId| {
        let accounts = storage.accounts();
        async move {
            accounts
                .device(device)
                .await
                .unwrap()
                .unwrap()
                .last_seen_at_ms
        }
    };
    assert_eq!(seen(phone.id).await, 5_000);
    assert_eq!(seen(laptop.id).await, 3_000);
    assert_eq!(accounts.last_seen(user.id).await.unwrap(), Some(5_000));

    // A late batch with older times moves nothing back.
    accounts
        .touch_devices(&[(phone.id, 4_500), (laptop.id, 6_000)])
        .await
        .unwrap();
    assert_eq!(seen(phone.id).await, 5_000);
    assert_eq!(seen(laptop.id).await, 6_000);
    assert_eq!(accounts.last_seen(user.id).await.unwrap(), Some(6_000));
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
    let (user, phone, laptop) = alice_on_two_devices(&storage).await;
    let accounts = storage.accounts();

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

/// A text message from `sender`'s first device, searchable by its body.
pub fn text<'a>(
    channel: conclave_core::ChannelId,
    sender: UserId,
    client_msg_id: &'a str,
    body: &'a str,
) -> NewMessage<'a> {
    NewMessage {
        channel_id: channel,
        sender_id: sender,
        sender_device_id: DeviceId::new(1),
        client_msg_id,
        content: body,
        search_text: Some(body),
        reply_to: None,
        mentions: "{}",
        now_ms: 10,
        origin_session: None,
    }
}

async fn send(storage: &Arc<dyn Storage>, message: NewMessage<'_>) -> crate::EventRecord {
    match storage.messages().send_message(message).await.unwrap() {
        SendOutcome::Sent(event) => event,
        SendOutcome::Duplicate(_) => panic!("unexpected duplicate"),
    }
}

pub async fn direct_channels_are_one_per_pair(storage: Arc<dyn Storage>) {
    let (a, b) = (user(&storage, "ann").await, user(&storage, "ben").await);
    let messages = storage.messages();
    let (first, created) = messages.direct_channel(a, b, 5).await.unwrap();
    assert!(created);
    let (again, created_again) = messages.direct_channel(b, a, 6).await.unwrap();
    assert_eq!(again.id, first.id, "(a, b) and (b, a) are the same channel");
    assert!(!created_again);
    let members: Vec<UserId> = messages
        .members(first.id)
        .await
        .unwrap()
        .iter()
        .map(|m| m.user_id)
        .collect();
    assert_eq!(members.len(), 2);
    assert!(members.contains(&a) && members.contains(&b));
}

pub async fn sends_get_contiguous_pts_and_retries_create_nothing(storage: Arc<dyn Storage>) {
    let (a, b) = (user(&storage, "ann").await, user(&storage, "ben").await);
    let stranger = user(&storage, "cat").await;
    let messages = storage.messages();
    let mut commits = messages
        .commits()
        .expect("the commit stream can be taken once");
    assert!(messages.commits().is_none());
    let (channel, _) = messages.direct_channel(a, b, 5).await.unwrap();
    let mut seen = Vec::new();
    for i in 0..20 {
        let id = format!("c{i}");
        let event = send(
            &storage,
            text(channel.id, if i % 2 == 0 { a } else { b }, &id, "hello"),
        )
        .await;
        seen.push(event.pts);
    }
    assert_eq!(seen, (1..=20).collect::<Vec<u64>>(), "pts are contiguous");
    let retry = messages
        .send_message(text(channel.id, a, "c0", "hello"))
        .await
        .unwrap();
    let SendOutcome::Duplicate(original) = retry else {
        panic!("a retry with the same client_msg_id must not create a message");
    };
    assert_eq!(original.pts, 1);
    assert_eq!(messages.channel(channel.id).await.unwrap().unwrap().pts, 20);

    for expected in 1..=20u64 {
        let committed = commits.recv().await.unwrap();
        assert_eq!(
            committed.event.pts, expected,
            "the stream follows commit order"
        );
        assert_eq!(committed.recipients.len(), 2);
    }
    let refused = messages
        .send_message(text(channel.id, stranger, "x", "hi"))
        .await;
    assert!(
        matches!(refused, Err(StorageError::NotFound(_))),
        "non-members cannot send"
    );
    let (other, _) = messages.direct_channel(a, stranger, 5).await.unwrap();
    let elsewhere = send(&storage, text(other.id, a, "o1", "elsewhere")).await;
    let mut reply = text(channel.id, b, "r1", "re");
    reply.reply_to = elsewhere.message_id;
    let refused = messages.send_message(reply).await;
    assert!(
        matches!(refused, Err(StorageError::Invalid(_))),
        "replies stay in their channel"
    );
}

pub async fn difference_returns_events_in_order_with_the_head(storage: Arc<dyn Storage>) {
    let (a, b) = (user(&storage, "ann").await, user(&storage, "ben").await);
    let messages = storage.messages();
    let (channel, _) = messages.direct_channel(a, b, 5).await.unwrap();
    for i in 0..10 {
        send(
            &storage,
            text(channel.id, a, &format!("m{i}"), &format!("text {i}")),
        )
        .await;
    }
    let (events, head) = messages.events_after(channel.id, 3, 4).await.unwrap();
    assert_eq!(head, 10);
    assert_eq!(
        events.iter().map(|e| e.pts).collect::<Vec<_>>(),
        vec![4, 5, 6, 7]
    );
    let message = events[0].message.as_ref().unwrap();
    assert_eq!(message.content.as_deref(), Some("text 3"));
    let (none, head) = messages.events_after(channel.id, 10, 50).await.unwrap();
    assert!(none.is_empty());
    assert_eq!(head, 10);
    let missing = conclave_core::ChannelId::new(channel.id.get() + 1000);
    let refused = messages.events_after(missing, 0, 5).await;
    assert!(
        matches!(refused, Err(StorageError::NotFound(_))),
        "{refused:?}"
    );
}

pub async fn read_cursors_only_move_forward(storage: Arc<dyn Storage>) {
    let (a, b) = (user(&storage, "ann").await, user(&storage, "ben").await);
    let messages = storage.messages();
    let (channel, _) = messages.direct_channel(a, b, 5).await.unwrap();
    for i in 0..5 {
        send(&storage, text(channel.id, a, &format!("m{i}"), "x")).await;
    }
    assert_eq!(messages.unread_count(channel.id, b).await.unwrap(), 5);
    assert_eq!(
        messages.unread_count(channel.id, a).await.unwrap(),
        0,
        "own messages are read"
    );
    let (cursor, event) = messages
        .mark_read(channel.id, b, 3, 20, None)
        .await
        .unwrap();
    assert_eq!(cursor, 3);
    let event = event.unwrap();
    assert_eq!(event.kind, "read");
    assert_eq!(
        event.audience,
        Audience::Members,
        "a direct sender learns of the read"
    );
    assert_eq!(messages.unread_count(channel.id, b).await.unwrap(), 2);
    let (cursor, event) = messages
        .mark_read(channel.id, b, 1, 21, None)
        .await
        .unwrap();
    assert_eq!(
        (cursor, event.is_none()),
        (3, true),
        "an older cursor never rolls back"
    );
    let (cursor, _) = messages
        .mark_read(channel.id, b, 10_000, 22, None)
        .await
        .unwrap();
    assert_eq!(
        cursor, 6,
        "the cursor stops at the head (5 messages + 1 read event)"
    );
    assert_eq!(messages.unread_count(channel.id, b).await.unwrap(), 0);
    assert_eq!(messages.readers(channel.id, 5).await.unwrap(), vec![b]);
}

pub async fn revoked_content_is_erased_everywhere(storage: Arc<dyn Storage>) {
    let (a, b) = (user(&storage, "ann").await, user(&storage, "ben").await);
    let outsider = user(&storage, "cat").await;
    let messages = storage.messages();
    let (channel, _) = messages.direct_channel(a, b, 5).await.unwrap();
    let sent = send(
        &storage,
        text(channel.id, a, "m1", "the secret launch code"),
    )
    .await;
    let id = sent.message_id.unwrap();
    let words = vec!["launch".to_owned()];
    assert_eq!(messages.search(b, &words, None, 10).await.unwrap().len(), 1);
    assert!(
        messages
            .search(outsider, &words, None, 10)
            .await
            .unwrap()
            .is_empty(),
        "search is scoped to membership"
    );
    messages
        .react(id, b, "👍", ReactionOp::Add, 11, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        messages.reactions(id).await.unwrap(),
        vec![("👍".to_owned(), vec![b])]
    );
    assert!(
        messages
            .react(id, b, "👍", ReactionOp::Add, 12, None)
            .await
            .unwrap()
            .is_none(),
        "no change, no event"
    );

    let revoke = messages
        .revoke_message(id, a, 30, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoke.kind, "revoke");
    assert!(
        messages
            .revoke_message(id, a, 31, None)
            .await
            .unwrap()
            .is_none(),
        "revoking twice does nothing"
    );
    let stored = messages.message(id).await.unwrap().unwrap();
    assert_eq!(stored.content, None);
    assert_eq!(stored.revoked_by, Some(a));
    assert!(
        messages
            .search(b, &words, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let (events, _) = messages.events_after(channel.id, 0, 10).await.unwrap();
    assert_eq!(
        events[0].message.as_ref().unwrap().content,
        None,
        "sync no longer serves it"
    );
    assert!(messages.reactions(id).await.unwrap().is_empty());
}

pub async fn the_conversation_list_orders_pins_and_hides(storage: Arc<dyn Storage>) {
    let me = user(&storage, "ann").await;
    let (b, c, d) = (
        user(&storage, "ben").await,
        user(&storage, "cat").await,
        user(&storage, "dan").await,
    );
    let messages = storage.messages();
    let mut ids = Vec::new();
    for (i, peer) in [b, c, d].into_iter().enumerate() {
        let (channel, _) = messages.direct_channel(me, peer, 5).await.unwrap();
        let mut message = text(channel.id, peer, "hi", "hi");
        message.now_ms = 100 + i as i64;
        send(&storage, message).await;
        ids.push(channel.id);
    }
    let order =
        |list: Vec<crate::ChannelSummary>| list.iter().map(|s| s.channel.id).collect::<Vec<_>>();
    assert_eq!(
        order(messages.channel_list(me, false).await.unwrap()),
        vec![ids[2], ids[1], ids[0]]
    );
    assert!(
        messages
            .set_member_flag(ids[0], me, MemberFlag::Pinned(true))
            .await
            .unwrap()
    );
    assert!(
        messages
            .set_member_flag(ids[2], me, MemberFlag::Hidden)
            .await
            .unwrap()
    );
    let list = messages.channel_list(me, false).await.unwrap();
    assert_eq!(
        order(list.clone()),
        vec![ids[0], ids[1]],
        "pinned first; hidden left out"
    );
    assert_eq!(list[0].unread_count, 1);
    assert_eq!(list[0].peer_user_id, Some(b));
    assert_eq!(
        list[0].last_message.as_ref().unwrap().content.as_deref(),
        Some("hi")
    );
    assert_eq!(messages.channel_list(me, true).await.unwrap().len(), 3);
    let mut again = text(ids[2], d, "hi again", "hi again");
    again.now_ms = 200;
    send(&storage, again).await;
    assert_eq!(
        order(messages.channel_list(me, false).await.unwrap()),
        vec![ids[0], ids[2], ids[1]],
        "a new message unhides"
    );
    assert_eq!(messages.channel_heads(me).await.unwrap().len(), 3);
}

pub async fn inbox_events_get_contiguous_pts_per_user(storage: Arc<dyn Storage>) {
    let (a, b) = (user(&storage, "ann").await, user(&storage, "ben").await);
    let inbox = storage.inbox();
    for i in 1..=5u64 {
        let event = inbox
            .append_inbox(a, "device/added", &format!("{{\"n\":{i}}}"), 10)
            .await
            .unwrap();
        assert_eq!(event.pts, i);
    }
    assert_eq!(
        inbox
            .append_inbox(b, "device/added", "{}", 10)
            .await
            .unwrap()
            .pts,
        1,
        "per-user pts"
    );
    let (events, head) = inbox.inbox_after(a, 2, 2).await.unwrap();
    assert_eq!(head, 5);
    assert_eq!(events.iter().map(|e| e.pts).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!(events[0].body, "{\"n\":3}");
    let missing = inbox.append_inbox(UserId::new(999_999), "x", "{}", 1).await;
    assert!(matches!(missing, Err(StorageError::NotFound(_))));
}

pub async fn concurrent_inbox_appends_stay_contiguous(storage: Arc<dyn Storage>) {
    let (a, b) = (user(&storage, "ann").await, user(&storage, "ben").await);
    let mut tasks = Vec::new();
    for i in 0..32u32 {
        let storage = storage.clone();
        let owner = if i % 4 == 3 { b } else { a };
        tasks.push(tokio::spawn(async move {
            let event = storage
                .inbox()
                .append_inbox(owner, "device/added", &format!("{{\"n\":{i}}}"), 10)
                .await
                .unwrap();
            (owner, event.pts)
        }));
    }
    let mut for_a = Vec::new();
    for task in tasks {
        let (owner, pts) = task.await.unwrap();
        if owner == a {
            for_a.push(pts);
        }
    }
    for_a.sort_unstable();
    assert_eq!(for_a, (1..=24).collect::<Vec<u64>>(), "no holes, no reuse");
    let (events, head) = storage.inbox().inbox_after(a, 0, 100).await.unwrap();
    assert_eq!(head, 24);
    assert_eq!(
        events.iter().map(|e| e.pts).collect::<Vec<_>>(),
        (1..=24).collect::<Vec<u64>>()
    );
    let (_, head) = storage.inbox().inbox_after(b, 0, 100).await.unwrap();
    assert_eq!(head, 8, "each user counts on its own");
}

pub async fn concurrent_sends_stay_exact_when_some_are_refused(storage: Arc<dyn Storage>) {
    let (a, b) = (user(&storage, "ann").await, user(&storage, "ben").await);
    let outsider = user(&storage, "cat").await;
    let (channel, _) = storage.messages().direct_channel(a, b, 5).await.unwrap();
    let channel = channel.id;
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            // Every fourth send comes from a non-member; every fifth repeats
            // an earlier client_msg_id.
            let sender = if i % 4 == 3 { outsider } else { a };
            let id = if i % 5 == 4 {
                format!("m{}", i - 1)
            } else {
                format!("m{i}")
            };
            let result = storage
                .messages()
                .send_message(text(channel, sender, &id, "hi"))
                .await;
            (sender, id, result)
        }));
    }
    let mut stored = Vec::new();
    for task in tasks {
        let (sender, id, result) = task.await.unwrap();
        match (sender == outsider, result) {
            (true, Err(StorageError::NotFound(_))) => {}
            (false, Ok(SendOutcome::Sent(event))) => stored.push((id, event.pts)),
            (false, Ok(SendOutcome::Duplicate(original))) => assert_eq!(original.client_msg_id, id),
            (_, other) => panic!("{id} from {sender}: {other:?}"),
        }
    }
    let mut pts: Vec<u64> = stored.iter().map(|(_, p)| *p).collect();
    pts.sort_unstable();
    assert_eq!(
        pts,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "no holes, no reuse"
    );
    let head = storage
        .messages()
        .channel(channel)
        .await
        .unwrap()
        .unwrap()
        .pts;
    assert_eq!(
        head,
        stored.len() as u64,
        "refused sends left nothing behind"
    );
    let mut ids: Vec<&String> = stored.iter().map(|(id, _)| id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), stored.len(), "each client_msg_id stored once");
}

/// Sends in flight together are stored batch after batch (on SQLite, one
/// batch while the one before is answered) and other writers' events land
/// in between, while the commit stream is full now and then: it must still
/// hand out each channel's events in pts order, every one exactly once.
/// For SQLite only: PostgreSQL's stream may be slightly out of pts order
/// (the server's sequencer repairs it).
pub async fn the_commit_stream_keeps_pts_order_under_concurrent_writes(storage: Arc<dyn Storage>) {
    // More than the stream buffers, so that publishing has to wait.
    const SENDS: u64 = 5_000;
    const REACTIONS: u64 = 100;
    let (a, b) = (user(&storage, "ann").await, user(&storage, "ben").await);
    let mut commits = storage.messages().commits().expect("the commit stream");
    let (channel, _) = storage.messages().direct_channel(a, b, 5).await.unwrap();
    let channel = channel.id;
    let first = send(&storage, text(channel, a, "first", "react to me")).await;
    let target = first.message_id.expect("a message event names its message");
    let total = 1 + SENDS + REACTIONS;
    let reader = tokio::spawn(async move {
        let mut streamed = Vec::new();
        while (streamed.len() as u64) < total {
            let next = tokio::time::timeout(std::time::Duration::from_secs(30), commits.recv());
            let committed = next
                .await
                .expect("every committed event reaches the stream")
                .expect("the stream stays open");
            assert_eq!(committed.event.channel_id, channel);
            streamed.push(committed.event.pts);
            if streamed.len() % 8 == 0 {
                // A slow reader: let the stream fill up.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        streamed
    });
    let mut tasks = Vec::new();
    for i in 0..SENDS {
        let sending = storage.clone();
        tasks.push(tokio::spawn(async move {
            let sender = if i % 2 == 0 { a } else { b };
            let id = format!("m{i}");
            let sent = sending
                .messages()
                .send_message(text(channel, sender, &id, "hi"))
                .await;
            assert!(matches!(sent, Ok(SendOutcome::Sent(_))), "{id}: {sent:?}");
        }));
        if i % (SENDS / REACTIONS) == 0 {
            let reacting = storage.clone();
            tasks.push(tokio::spawn(async move {
                // Spread over the run, to land between batches.
                tokio::time::sleep(std::time::Duration::from_micros(i * 100)).await;
                let emoji = format!("e{i}");
                let reacted = reacting
                    .messages()
                    .react(target, b, &emoji, ReactionOp::Add, 11, None)
                    .await;
                assert!(matches!(reacted, Ok(Some(_))), "{emoji}: {reacted:?}");
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(
        reader.await.unwrap() == (1..=total).collect::<Vec<_>>(),
        "the stream follows pts order, with no event twice or missing"
    );
}

/// A send's retry gets the original back even after the sender left the
/// channel; a new message from them is refused.
pub async fn a_retry_after_leaving_still_finds_the_original(storage: Arc<dyn Storage>) {
    let owner = user(&storage, "olga").await;
    let member = user(&storage, "max").await;
    let group = group_with(&storage, owner, &[member], 4).await;
    let channel = group.channel_id;
    let sent = send(&storage, text(channel, member, "once", "before leaving")).await;
    storage
        .groups()
        .change_group(
            group.id,
            member,
            &[],
            crate::GroupChange::Leave {
                user: member,
                kicked: false,
            },
            20,
            None,
        )
        .await
        .unwrap();
    let retry = storage
        .messages()
        .send_message(text(channel, member, "once", "before leaving"))
        .await;
    match retry {
        Ok(SendOutcome::Duplicate(original)) => {
            assert_eq!(Some(original.id), sent.message_id);
            assert_eq!(original.pts, sent.pts);
        }
        other => panic!("a retry must find its original: {other:?}"),
    }
    let new = storage
        .messages()
        .send_message(text(channel, member, "after", "after leaving"))
        .await;
    assert!(
        matches!(new, Err(StorageError::NotFound(_))),
        "only members send: {new:?}"
    );
}

pub async fn documents_have_unique_names_and_an_optional_channel(storage: Arc<dyn Storage>) {
    let (a, b) = (user(&storage, "ann").await, user(&storage, "ben").await);
    let (channel, _) = storage.messages().direct_channel(a, b, 5).await.unwrap();
    let documents = storage.documents();
    let notes = documents
        .create_document("notes", a, None, 10)
        .await
        .unwrap();
    assert_eq!(
        (
            notes.name.as_str(),
            notes.owner_id,
            notes.channel_id,
            notes.created_at_ms
        ),
        ("notes", a, None, 10)
    );
    let shared = documents
        .create_document("shared", b, Some(channel.id), 11)
        .await
        .unwrap();
    assert_eq!(shared.channel_id, Some(channel.id));
    assert_ne!(shared.id, notes.id);
    let taken = documents.create_document("notes", b, None, 12).await;
    assert!(matches!(taken, Err(StorageError::Conflict(_))), "{taken:?}");
    assert_eq!(
        documents.document_by_name("shared").await.unwrap(),
        Some(shared.clone())
    );
    assert_eq!(documents.document(notes.id).await.unwrap(), Some(notes));
    assert_eq!(
        documents.document_by_name("Notes").await.unwrap(),
        None,
        "names are exact"
    );
}

pub async fn document_updates_get_contiguous_seqs_and_load_in_order(storage: Arc<dyn Storage>) {
    let owner = user(&storage, "ann").await;
    let documents = storage.documents();
    let doc = documents
        .create_document("d", owner, None, 1)
        .await
        .unwrap();
    let other = documents
        .create_document("e", owner, None, 1)
        .await
        .unwrap();
    assert_eq!(
        documents.load(doc.id).await.unwrap(),
        crate::StoredDocument::default()
    );
    for i in 1..=3u8 {
        assert_eq!(
            documents
                .append_update(doc.id, &[i, 0, i], 20)
                .await
                .unwrap(),
            u64::from(i)
        );
    }
    assert_eq!(
        documents.append_update(other.id, &[9], 20).await.unwrap(),
        1,
        "each document counts on its own"
    );
    let loaded = documents.load(doc.id).await.unwrap();
    assert_eq!(loaded.snapshot, None);
    assert_eq!(
        loaded.updates,
        vec![(1, vec![1, 0, 1]), (2, vec![2, 0, 2]), (3, vec![3, 0, 3])]
    );
    assert_eq!(loaded.head_seq(), 3);
    let missing = conclave_core::DocumentId::new(999_999);
    assert!(matches!(
        documents.append_update(missing, &[1], 1).await,
        Err(StorageError::NotFound(_))
    ));
    assert!(matches!(
        documents.load(missing).await,
        Err(StorageError::NotFound(_))
    ));
}

pub async fn compaction_replaces_a_prefix_of_the_log(storage: Arc<dyn Storage>) {
    let owner = user(&storage, "ann").await;
    let documents = storage.documents();
    let doc = documents
        .create_document("d", owner, None, 1)
        .await
        .unwrap();
    for i in 1..=5u8 {
        documents.append_update(doc.id, &[i], 2).await.unwrap();
    }
    assert!(documents.compact(doc.id, b"S3", 3, 3).await.unwrap());
    let loaded = documents.load(doc.id).await.unwrap();
    assert_eq!(loaded.snapshot.as_deref(), Some(&b"S3"[..]));
    assert_eq!(loaded.snapshot_seq, 3);
    assert_eq!(loaded.updates, vec![(4, vec![4]), (5, vec![5])]);

    assert!(
        !documents.compact(doc.id, b"S2", 2, 4).await.unwrap(),
        "an older snapshot never replaces a newer one"
    );
    assert!(!documents.compact(doc.id, b"S3'", 3, 4).await.unwrap());
    assert!(matches!(
        documents.compact(doc.id, b"S9", 9, 4).await,
        Err(StorageError::Invalid(_))
    ));
    assert_eq!(
        documents.load(doc.id).await.unwrap(),
        loaded,
        "refusals change nothing"
    );

    assert_eq!(
        documents.append_update(doc.id, &[6], 5).await.unwrap(),
        6,
        "sequence numbers are never reused"
    );
    assert!(documents.compact(doc.id, b"S6", 6, 6).await.unwrap());
    let loaded = documents.load(doc.id).await.unwrap();
    assert_eq!(loaded.snapshot.as_deref(), Some(&b"S6"[..]));
    assert!(loaded.updates.is_empty());
    assert_eq!(loaded.head_seq(), 6);
}

/// The ids (ascending) of the messages `user` finds by `word`.
async fn found(storage: &Arc<dyn Storage>, user: UserId, word: &str, limit: u32) -> Vec<MessageId> {
    let words = [word.to_owned()];
    let hits = storage.messages().search(user, &words, None, limit).await;
    let mut ids: Vec<_> = hits.unwrap().iter().map(|m| m.id).collect();
    ids.sort_unstable();
    ids
}

pub async fn search_indexes_every_message_of_a_group_and_no_refused_one(storage: Arc<dyn Storage>) {
    let (a, b) = (user(&storage, "ann").await, user(&storage, "ben").await);
    let outsider = user(&storage, "cat").await;
    let (channel, _) = storage.messages().direct_channel(a, b, 5).await.unwrap();
    let channel = channel.id;
    // All at once, so backends that commit in groups store them together:
    // a member's messages, an outsider's refused ones, and retries.
    let mut tasks = Vec::new();
    for i in 0..60u32 {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            let (sender, id) = match i % 3 {
                0 => (outsider, format!("refused{i}")),
                1 => (a, format!("kept{i}")),
                _ => (a, format!("kept{}", i - 1)),
            };
            let body = format!("word{i} {id}");
            (
                i,
                storage
                    .messages()
                    .send_message(text(channel, sender, &id, &body))
                    .await,
            )
        }));
    }
    let mut kept = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (i, Ok(SendOutcome::Sent(event))) if i % 3 == 1 || i % 3 == 2 => {
                kept.push(event.message_id.unwrap());
            }
            (i, Ok(SendOutcome::Duplicate(_))) if i % 3 != 0 => {}
            (i, Err(StorageError::NotFound(_))) if i % 3 == 0 => {}
            (i, other) => panic!("send {i}: {other:?}"),
        }
    }
    kept.sort_unstable();
    assert_eq!(kept.len(), 20, "one message per client id");

    for i in (1..60u32).step_by(3) {
        let hits = found(&storage, b, &format!("kept{i}"), 100).await;
        assert_eq!(hits.len(), 1, "kept{i} is found once: {hits:?}");
    }
    let mut all = Vec::new();
    for i in 0..60u32 {
        let hits = found(&storage, b, &format!("word{i}"), 100).await;
        match i % 3 {
            0 => assert!(
                hits.is_empty(),
                "a refused message is not indexed: {hits:?}"
            ),
            _ => all.extend(hits),
        }
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all, kept, "every stored message is found by its own words");
}

pub async fn search_finds_every_message_however_many_were_sent(storage: Arc<dyn Storage>) {
    let (a, b) = (user(&storage, "ann").await, user(&storage, "ben").await);
    let (channel, _) = storage.messages().direct_channel(a, b, 5).await.unwrap();
    let channel = channel.id;
    // Waves of concurrent sends, one in five revoked at once: enough for a
    // backend that indexes in bulk (SQLite: every 256 or so) to do so on
    // its own, with some left over for the search to index first.
    let (waves, per_wave) = (9u32, 50u32);
    let mut revoked = Vec::new();
    let mut kept = Vec::new();
    for wave in 0..waves {
        let mut tasks = Vec::new();
        for i in 0..per_wave {
            let storage = storage.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("w{wave}n{i}");
                let body = format!("common {id}");
                let sent = send(&storage, text(channel, a, &id, &body)).await;
                (i, sent.message_id.unwrap())
            }));
        }
        for task in tasks {
            let (i, id) = task.await.unwrap();
            if i % 5 == 0 {
                storage
                    .messages()
                    .revoke_message(id, a, 10, None)
                    .await
                    .unwrap()
                    .unwrap();
                revoked.push((format!("w{wave}n{i}"), id));
            } else {
                kept.push((format!("w{wave}n{i}"), id));
            }
        }
    }
    let found_all = found(&storage, b, "common", 1_000).await;
    let mut expected: Vec<_> = kept.iter().map(|(_, id)| *id).collect();
    expected.sort_unstable();
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !found_all.contains(id))
        .collect();
    let unwanted: Vec<_> = found_all
        .iter()
        .filter(|id| !expected.contains(id))
        .collect();
    assert!(
        missing.is_empty() && unwanted.is_empty(),
        "every kept message and none revoked: missing {missing:?}, unwanted {unwanted:?}"
    );
    for (word, id) in kept.iter().step_by(37) {
        assert_eq!(found(&storage, b, word, 10).await, [*id], "{word}");
    }
    for (word, _) in revoked.iter().step_by(7) {
        let hits = found(&storage, b, word, 10).await;
        assert!(hits.is_empty(), "{word} was revoked: {hits:?}");
    }
}

pub async fn mixed_writes_commit_together_and_refusals_stay_alone(storage: Arc<dyn Storage>) {
    let (a, b) = (user(&storage, "ann").await, user(&storage, "ben").await);
    let (channel, _) = storage.messages().direct_channel(a, b, 5).await.unwrap();
    let channel = channel.id;
    let doc = storage
        .documents()
        .create_document("d", a, None, 1)
        .await
        .unwrap();
    let missing = conclave_core::DocumentId::new(doc.id.get() + 1000);
    // Sends, updates to a document and updates to a missing one, all at
    // once, so backends that commit in groups mix them in one group.
    let mut tasks = Vec::new();
    for i in 0..90u32 {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            match i % 3 {
                0 => {
                    let id = format!("m{i}");
                    let body = format!("text {i}");
                    let sent = storage
                        .messages()
                        .send_message(text(channel, a, &id, &body))
                        .await;
                    match sent {
                        Ok(SendOutcome::Sent(event)) => (i, Some(event), None),
                        other => panic!("send {i}: {other:?}"),
                    }
                }
                1 => {
                    let seq = storage
                        .documents()
                        .append_update(doc.id, &[i as u8], 2)
                        .await
                        .unwrap();
                    (i, None, Some(seq))
                }
                _ => {
                    let refused = storage.documents().append_update(missing, &[0], 2).await;
                    assert!(
                        matches!(refused, Err(StorageError::NotFound(_))),
                        "{refused:?}"
                    );
                    (i, None, None)
                }
            }
        }));
    }
    let mut events = Vec::new();
    let mut seqs = Vec::new();
    for task in tasks {
        let (i, event, seq) = task.await.unwrap();
        if let Some(event) = event {
            events.push((i, event));
        }
        seqs.extend(seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=30).collect::<Vec<u64>>(), "updates: no holes");
    let mut pts: Vec<u64> = events.iter().map(|(_, e)| e.pts).collect();
    pts.sort_unstable();
    assert_eq!(pts, (1..=30).collect::<Vec<u64>>(), "messages: no holes");
    // What a send answers is what was stored, and what sync serves.
    let (log, head) = storage
        .messages()
        .events_after(channel, 0, 100)
        .await
        .unwrap();
    assert_eq!(head, 30);
    for (i, event) in &events {
        let message = event
            .message
            .as_ref()
            .expect("a message event has its message");
        assert_eq!(
            message.content.as_deref(),
            Some(format!("text {i}").as_str())
        );
        assert_eq!(message.pts, event.pts);
        let stored = storage.messages().message(message.id).await.unwrap();
        assert_eq!(stored.as_ref(), Some(message));
        let logged = log.iter().find(|e| e.pts == event.pts).unwrap();
        assert_eq!(logged.message.as_ref(), Some(message));
        assert_eq!(logged.kind, "message");
    }
    let channel = storage.messages().channel(channel).await.unwrap().unwrap();
    assert_eq!((channel.pts, channel.last_message_pts), (30, 30));
    let loaded = storage.documents().load(doc.id).await.unwrap();
    assert_eq!(loaded.updates.len(), 30);
}

pub async fn write_context_reads_what_single_reads_do(storage: Arc<dyn Storage>) {
    let (a, b, c) = (
        user(&storage, "ann").await,
        user(&storage, "ben").await,
        user(&storage, "cat").await,
    );
    let messages = storage.messages();
    let social = storage.social();
    let (direct, _) = messages.direct_channel(a, b, 5).await.unwrap();
    let group = group_with(&storage, a, &[b], 10).await;
    // What a backend answers must match the single reads, whatever the
    // relation and privacy look like.
    let expected = |who: UserId, channel: conclave_core::ChannelId| {
        let storage = storage.clone();
        async move {
            let messages = storage.messages();
            let member = messages.member(channel, who).await.unwrap()?;
            let record = messages.channel(channel).await.unwrap()?;
            let (group, peer) = match record.kind {
                crate::ChannelKind::Group => {
                    let group = storage.groups().group_by_channel(channel).await.unwrap();
                    (group.as_ref().map(crate::GroupRules::of), None)
                }
                crate::ChannelKind::Direct => {
                    let members = messages.members(channel).await.unwrap();
                    let peer = members.iter().find(|m| m.user_id != who)?.user_id;
                    let peer = crate::PeerContext {
                        user_id: peer,
                        relation: storage.social().relation(who, peer).await.unwrap(),
                        privacy: storage.social().privacy(peer).await.unwrap(),
                    };
                    (None, Some(peer))
                }
            };
            Some(crate::WriteContext {
                channel: record,
                member,
                group,
                peer,
            })
        }
    };
    let check = |who: UserId, channel: conclave_core::ChannelId| {
        let storage = storage.clone();
        let expected = expected(who, channel);
        async move {
            let got = storage.write_context(channel, who).await.unwrap();
            assert_eq!(got, expected.await, "user {who} in channel {channel}");
            got
        }
    };

    let plain = check(a, direct.id).await.unwrap();
    assert_eq!(
        messages.membership(direct.id, a).await.unwrap(),
        Some((plain.channel.clone(), plain.member.clone()))
    );
    assert_eq!(messages.membership(direct.id, c).await.unwrap(), None);
    let peer = plain.peer.unwrap();
    assert_eq!((peer.user_id, peer.relation), (b, Default::default()));
    assert_eq!(peer.privacy, social.privacy(b).await.unwrap());
    let in_group = check(a, group.channel_id).await.unwrap();
    assert!(in_group.peer.is_none());
    let rules = in_group.group.expect("the group's rules");
    assert_eq!((rules.group_id, rules.mute_all), (group.id, false));
    assert!(plain.group.is_none(), "no group rules in a direct channel");
    assert!(check(c, direct.id).await.is_none(), "not a member");
    assert!(
        check(a, conclave_core::ChannelId::new(direct.id.get() + 1000))
            .await
            .is_none(),
        "no such channel"
    );

    social.request_friend(b, a, None, 10).await.unwrap();
    social.block(b, a, 11).await.unwrap();
    let privacy = PrivacyRecord {
        direct_messages: "friends".into(),
        searchable_by: "nobody".into(),
        group_invites: "friends".into(),
        last_seen: "nobody".into(),
    };
    social.set_privacy(b, &privacy, 12).await.unwrap();
    let strict = check(a, direct.id).await.unwrap().peer.unwrap();
    assert!(strict.relation.b_blocked_a && !strict.relation.a_blocked_b);
    assert_eq!(strict.privacy, Some(privacy));
    let other_side = check(b, direct.id).await.unwrap().peer.unwrap();
    assert_eq!(other_side.user_id, a);
    assert!(other_side.relation.a_blocked_b);

    let mute = crate::GroupPatch {
        mute_all: Some(true),
        ..Default::default()
    };
    storage
        .groups()
        .change_group(group.id, a, &[], crate::GroupChange::Update(mute), 20, None)
        .await
        .unwrap();
    let muted = check(b, group.channel_id).await.unwrap().group.unwrap();
    assert!(muted.mute_all);
}

pub async fn concurrent_document_appends_lose_nothing(storage: Arc<dyn Storage>) {
    let owner = user(&storage, "ann").await;
    let doc = storage
        .documents()
        .create_document("d", owner, None, 1)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            storage
                .documents()
                .append_update(doc.id, &[i], 1)
                .await
                .unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=16).collect::<Vec<u64>>());
    let loaded = storage.documents().load(doc.id).await.unwrap();
    let mut bytes: Vec<u8> = loaded.updates.iter().map(|(_, b)| b[0]).collect();
    bytes.sort_unstable();
    assert_eq!(bytes, (0..16).collect::<Vec<u8>>());
}

pub async fn document_versions_are_numbered_listed_and_read_back(storage: Arc<dyn Storage>) {
    let (ann, ben) = (user(&storage, "ann").await, user(&storage, "ben").await);
    let documents = storage.documents();
    let doc = documents.create_document("d", ann, None, 1).await.unwrap();
    let other = documents.create_document("e", ann, None, 1).await.unwrap();
    assert_eq!(documents.versions(doc.id).await.unwrap(), vec![]);
    assert_eq!(documents.version_state(doc.id, 1).await.unwrap(), None);
    for i in 1..=3u8 {
        documents.append_update(doc.id, &[i], 2).await.unwrap();
    }
    let first = documents
        .create_version(doc.id, "draft", ann, b"state one", 2, 10)
        .await
        .unwrap();
    assert_eq!(
        first,
        crate::VersionRecord {
            document_id: doc.id,
            version: 1,
            name: "draft".into(),
            created_by: ann,
            created_at_ms: 10,
            covers_seq: 2,
            size_bytes: 9,
        }
    );
    let long_name = "é".repeat(crate::VERSION_NAME_MAX_CHARS);
    let second = documents
        .create_version(doc.id, &long_name, ben, b"", 3, 11)
        .await
        .unwrap();
    assert_eq!((second.version, second.size_bytes), (2, 0));
    assert_eq!(second.name, long_name, "a name is counted in characters");
    let third = documents
        .create_version(doc.id, "draft", ann, &[0, 255, 7], 3, 12)
        .await
        .unwrap();
    assert_eq!(third.version, 3, "names are not unique");
    assert_eq!(
        documents
            .create_version(other.id, "draft", ann, b"x", 0, 13)
            .await
            .unwrap()
            .version,
        1,
        "each document counts on its own"
    );

    assert_eq!(
        documents.versions(doc.id).await.unwrap(),
        vec![third.clone(), second.clone(), first.clone()],
        "newest first"
    );
    assert_eq!(
        documents.version_state(doc.id, 1).await.unwrap(),
        Some((first.clone(), b"state one".to_vec()))
    );
    assert_eq!(
        documents.version_state(doc.id, 3).await.unwrap(),
        Some((third.clone(), vec![0, 255, 7]))
    );
    assert_eq!(documents.version_state(doc.id, 4).await.unwrap(), None);
    assert_eq!(documents.version_state(doc.id, 0).await.unwrap(), None);
    assert_eq!(
        documents.version_state(doc.id, u64::MAX).await.unwrap(),
        None
    );

    // Compaction and further updates leave versions alone.
    assert!(documents.compact(doc.id, b"S3", 3, 20).await.unwrap());
    documents.append_update(doc.id, &[4], 21).await.unwrap();
    assert_eq!(
        documents.versions(doc.id).await.unwrap(),
        vec![third, second, first]
    );
}

pub async fn document_version_refusals_change_nothing(storage: Arc<dyn Storage>) {
    let ann = user(&storage, "ann").await;
    let documents = storage.documents();
    let doc = documents.create_document("d", ann, None, 1).await.unwrap();
    documents.append_update(doc.id, &[1], 2).await.unwrap();
    let too_long = "x".repeat(crate::VERSION_NAME_MAX_CHARS + 1);
    for name in ["", too_long.as_str()] {
        let refused = documents
            .create_version(doc.id, name, ann, b"s", 1, 3)
            .await;
        assert!(
            matches!(refused, Err(StorageError::Invalid(_))),
            "{name:?}: {refused:?}"
        );
    }
    let ahead = documents.create_version(doc.id, "v", ann, b"s", 2, 3).await;
    assert!(
        matches!(ahead, Err(StorageError::Invalid(_))),
        "a state cannot cover updates that do not exist: {ahead:?}"
    );
    let missing = conclave_core::DocumentId::new(999_999);
    assert!(matches!(
        documents
            .create_version(missing, "v", ann, b"s", 0, 3)
            .await,
        Err(StorageError::NotFound(_))
    ));
    assert!(matches!(
        documents.versions(missing).await,
        Err(StorageError::NotFound(_))
    ));
    assert!(matches!(
        documents.version_state(missing, 1).await,
        Err(StorageError::NotFound(_))
    ));
    assert_eq!(documents.versions(doc.id).await.unwrap(), vec![]);
    assert_eq!(
        documents
            .create_version(doc.id, "v", ann, b"s", 1, 4)
            .await
            .unwrap()
            .version,
        1,
        "refused versions took no number"
    );
}

pub async fn concurrent_document_versions_get_distinct_numbers(storage: Arc<dyn Storage>) {
    let owner = user(&storage, "ann").await;
    let doc = storage
        .documents()
        .create_document("d", owner, None, 1)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..12u8 {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            storage
                .documents()
                .create_version(doc.id, &format!("v{i}"), owner, &[i], 0, 1)
                .await
                .unwrap()
        }));
    }
    let mut numbers = Vec::new();
    for task in tasks {
        let record = task.await.unwrap();
        assert_eq!(record.size_bytes, 1);
        numbers.push(record.version);
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=12).collect::<Vec<u64>>());
    let listed = storage.documents().versions(doc.id).await.unwrap();
    assert_eq!(
        listed.iter().map(|v| v.version).collect::<Vec<_>>(),
        (1..=12).rev().collect::<Vec<u64>>()
    );
    for record in listed {
        let (_, state) = storage
            .documents()
            .version_state(doc.id, record.version)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            record.name,
            format!("v{}", state[0]),
            "each name kept its state"
        );
    }
}

pub async fn friend_requests_are_single_and_accepting_makes_friends(storage: Arc<dyn Storage>) {
    let (a, b) = (user(&storage, "ann").await, user(&storage, "ben").await);
    let social = storage.social();
    let request = social.request_friend(a, b, Some("hi"), 10).await.unwrap();
    assert_eq!((request.from_id, request.to_id), (a, b));
    assert_eq!(request.status, "pending");
    assert!(matches!(
        social.request_friend(a, b, None, 11).await,
        Err(StorageError::Conflict(_))
    ));
    let relation = social.relation(a, b).await.unwrap();
    assert!(relation.a_requested_b && !relation.b_requested_a && !relation.friends);
    let reverse = social.relation(b, a).await.unwrap();
    assert!(reverse.b_requested_a && !reverse.a_requested_b);
    assert_eq!(
        social.pending_requests(b).await.unwrap(),
        vec![request.clone()]
    );

    let (channel, _) = storage.messages().direct_channel(a, b, 12).await.unwrap();
    let accepted = social
        .accept_request(a, b, channel.id, 13)
        .await
        .unwrap()
        .expect("a pending request is accepted");
    assert_eq!(accepted.status, "accepted");
    assert!(
        social
            .accept_request(a, b, channel.id, 14)
            .await
            .unwrap()
            .is_none()
    );
    assert!(social.pending_requests(a).await.unwrap().is_empty());
    for (one, other) in [(a, b), (b, a)] {
        assert!(social.relation(one, other).await.unwrap().friends);
        let friends = social.friends(one).await.unwrap();
        assert_eq!(friends.len(), 1);
        assert_eq!(friends[0].friend.id, other);
        assert_eq!(friends[0].channel_id, Some(channel.id));
    }
    assert!(social.set_alias(a, b, Some("Benny")).await.unwrap());
    assert_eq!(
        social.friends(a).await.unwrap()[0].alias.as_deref(),
        Some("Benny")
    );
    assert_eq!(
        social.friends(b).await.unwrap()[0].alias,
        None,
        "aliases are per side"
    );

    assert!(social.remove_friend(b, a).await.unwrap());
    assert!(!social.remove_friend(a, b).await.unwrap());
    assert!(social.friends(a).await.unwrap().is_empty());
    assert!(!social.set_alias(a, b, Some("x")).await.unwrap());
    // A closed request can be made again; closing needs a pending one.
    social.request_friend(b, a, None, 20).await.unwrap();
    let recalled = social.close_request(b, a, "recalled", 21).await.unwrap();
    assert_eq!(recalled.map(|r| r.status), Some("recalled".to_owned()));
    assert!(
        social
            .close_request(b, a, "recalled", 22)
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn blocks_withdraw_requests_and_privacy_rows_exist(storage: Arc<dyn Storage>) {
    let (a, b) = (user(&storage, "ann").await, user(&storage, "ben").await);
    let social = storage.social();
    let defaults = social
        .privacy(a)
        .await
        .unwrap()
        .expect("created with the account");
    assert_eq!(
        (
            defaults.direct_messages.as_str(),
            defaults.searchable_by.as_str(),
            defaults.group_invites.as_str(),
            defaults.last_seen.as_str()
        ),
        ("everyone", "everyone", "everyone", "everyone")
    );
    let stricter = crate::PrivacyRecord {
        direct_messages: "friends".to_owned(),
        searchable_by: "nobody".to_owned(),
        group_invites: "friends".to_owned(),
        last_seen: "nobody".to_owned(),
    };
    social.set_privacy(a, &stricter, 5).await.unwrap();
    assert_eq!(social.privacy(a).await.unwrap(), Some(stricter));
    assert_eq!(social.privacy(UserId::new(999_999)).await.unwrap(), None);

    social.request_friend(b, a, None, 10).await.unwrap();
    let closed = social
        .block(a, b, 11)
        .await
        .unwrap()
        .expect("newly blocked");
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].status, "rejected");
    assert!(
        social.block(a, b, 12).await.unwrap().is_none(),
        "already blocked"
    );
    let relation = social.relation(b, a).await.unwrap();
    assert!(relation.b_blocked_a && !relation.a_blocked_b && !relation.a_requested_b);
    let blocked = social.blocked(a).await.unwrap();
    assert_eq!(blocked.len(), 1);
    assert_eq!((blocked[0].0.id, blocked[0].1), (b, 11));
    assert!(social.unblock(a, b).await.unwrap());
    assert!(!social.unblock(a, b).await.unwrap());
    assert!(!social.relation(a, b).await.unwrap().a_blocked_b);
}

pub async fn user_search_matches_prefixes_in_order_and_pages(storage: Arc<dyn Storage>) {
    let searcher = user(&storage, "anchor").await;
    for name in ["Anna", "annie", "ann", "bob", "an_x"] {
        user(&storage, name).await;
    }
    let social = storage.social();
    let names = |found: Vec<crate::SearchCandidate>| -> Vec<String> {
        found.into_iter().map(|c| c.user.username).collect()
    };
    let all = names(social.search_users(searcher, "an", None, 10).await.unwrap());
    assert_eq!(
        all,
        ["an_x", "ann", "Anna", "annie"],
        "the searcher is left out"
    );
    let first = names(social.search_users(searcher, "an", None, 2).await.unwrap());
    assert_eq!(first, ["an_x", "ann"]);
    let rest = names(
        social
            .search_users(searcher, "an", Some("ann"), 10)
            .await
            .unwrap(),
    );
    assert_eq!(rest, ["Anna", "annie"]);
    assert!(
        social
            .search_users(searcher, "zz", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Pattern characters are plain text.
    assert_eq!(
        names(
            social
                .search_users(searcher, "an_", None, 10)
                .await
                .unwrap()
        ),
        ["an_x"]
    );
    let found = social
        .search_users(searcher, "bob", None, 10)
        .await
        .unwrap();
    assert_eq!(
        found[0].privacy.as_ref().map(|p| p.searchable_by.as_str()),
        Some("everyone")
    );
}

async fn group_with(
    storage: &Arc<dyn Storage>,
    owner: UserId,
    members: &[UserId],
    cap: u32,
) -> crate::GroupRecord {
    let (group, event) = storage
        .groups()
        .create_group(crate::NewGroup {
            owner,
            name: "club",
            description: "",
            members,
            member_cap: cap,
            now_ms: 100,
            origin_session: None,
        })
        .await
        .unwrap();
    assert_eq!((event.kind.as_str(), event.pts), ("group/created", 1));
    group
}

fn role(role: &str) -> Option<String> {
    Some(role.to_owned())
}

pub async fn group_changes_are_checked_events_in_the_channel_log(storage: Arc<dyn Storage>) {
    let owner = user(&storage, "olga").await;
    let (m1, m2, late) = (
        user(&storage, "max").await,
        user(&storage, "mia").await,
        user(&storage, "lou").await,
    );
    let groups = storage.groups();
    let messages = storage.messages();
    let mut commits = messages.commits().expect("the commit stream");
    assert!(matches!(
        groups
            .create_group(crate::NewGroup {
                owner,
                name: "too big",
                description: "",
                members: &[m1, m2],
                member_cap: 2,
                now_ms: 1,
                origin_session: None,
            })
            .await,
        Err(StorageError::LimitReached(_))
    ));
    let group = group_with(&storage, owner, &[m1, m2, m1], 4).await;
    assert_eq!(group.member_count, 3, "duplicates are added once");
    assert_eq!(
        groups.group_by_channel(group.channel_id).await.unwrap(),
        Some(group.clone())
    );
    let created = commits.recv().await.unwrap();
    assert_eq!(created.event.kind, "group/created");
    assert_eq!(created.recipients.len(), 3);
    let roles: Vec<(UserId, String)> = messages
        .members(group.channel_id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.user_id, m.role))
        .collect();
    assert!(roles.contains(&(owner, "owner".to_owned())));
    assert!(roles.contains(&(m1, "member".to_owned())));

    // A decision taken on a stale membership is refused, and changes nothing.
    let stale = groups
        .change_group(
            group.id,
            m1,
            &[(m1, role("admin"))],
            crate::GroupChange::Leave {
                user: m2,
                kicked: true,
            },
            200,
            None,
        )
        .await;
    assert!(matches!(stale, Err(StorageError::Conflict(_))));
    assert_eq!(
        messages
            .channel(group.channel_id)
            .await
            .unwrap()
            .unwrap()
            .pts,
        1
    );
    assert!(
        messages
            .member(group.channel_id, m2)
            .await
            .unwrap()
            .is_some()
    );

    let changed = groups
        .change_group(
            group.id,
            owner,
            &[(owner, role("owner")), (late, None)],
            crate::GroupChange::Join {
                users: vec![late],
                via: "invite".to_owned(),
                request: None,
            },
            300,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (changed.event.kind.as_str(), changed.event.pts),
        ("group/member_joined", 2)
    );
    assert_eq!(changed.group.member_count, 4);
    let joined = messages
        .member(group.channel_id, late)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        joined.joined_pts, 1,
        "a new member sees the log from its joining on"
    );
    let full = groups
        .change_group(
            group.id,
            owner,
            &[],
            crate::GroupChange::Join {
                users: vec![user(&storage, "extra").await],
                via: "invite".to_owned(),
                request: None,
            },
            301,
            None,
        )
        .await;
    assert!(matches!(full, Err(StorageError::LimitReached(_))));

    let kicked = groups
        .change_group(
            group.id,
            owner,
            &[(owner, role("owner")), (m2, role("member"))],
            crate::GroupChange::Leave {
                user: m2,
                kicked: true,
            },
            400,
            None,
        )
        .await
        .unwrap();
    assert_eq!(kicked.removed, vec![m2]);
    assert_eq!(kicked.event.kind, "group/member_removed");
    assert!(
        messages
            .member(group.channel_id, m2)
            .await
            .unwrap()
            .is_none()
    );
    let _joined = commits.recv().await.unwrap();
    let removal = commits.recv().await.unwrap();
    assert!(
        removal.recipients.contains(&m2),
        "the removed member hears it live"
    );

    let muted = groups
        .change_group(
            group.id,
            owner,
            &[],
            crate::GroupChange::Mute {
                user: m1,
                until_ms: Some(9_000),
            },
            500,
            None,
        )
        .await
        .unwrap();
    assert_eq!(muted.event.kind, "group/member_muted");
    let member = messages
        .member(group.channel_id, m1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(member.send_muted_until_ms, Some(9_000));

    let not_owner = groups
        .change_group(
            group.id,
            m1,
            &[],
            crate::GroupChange::TransferOwner { to: m1 },
            600,
            None,
        )
        .await;
    assert!(matches!(not_owner, Err(StorageError::Conflict(_))));
    let transferred = groups
        .change_group(
            group.id,
            owner,
            &[(owner, role("owner")), (m1, role("member"))],
            crate::GroupChange::TransferOwner { to: m1 },
            700,
            None,
        )
        .await
        .unwrap();
    assert_eq!(transferred.group.owner_id, m1);
    let old = messages
        .member(group.channel_id, owner)
        .await
        .unwrap()
        .unwrap();
    let new = messages
        .member(group.channel_id, m1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((old.role.as_str(), new.role.as_str()), ("admin", "owner"));

    let patch = crate::GroupPatch {
        name: Some("renamed".to_owned()),
        join_approval: Some(true),
        announcement: Some(Some("hello".to_owned())),
        bump_qr_epoch: true,
        ..crate::GroupPatch::default()
    };
    let updated = groups
        .change_group(
            group.id,
            m1,
            &[],
            crate::GroupChange::Update(patch),
            800,
            None,
        )
        .await
        .unwrap();
    assert_eq!(updated.group.name, "renamed");
    assert!(updated.group.join_approval);
    assert_eq!(updated.group.announcement.as_deref(), Some("hello"));
    assert_eq!(updated.group.qr_epoch, group.qr_epoch + 1);
    assert_eq!(
        messages
            .channel(group.channel_id)
            .await
            .unwrap()
            .unwrap()
            .title
            .as_deref(),
        Some("renamed")
    );

    let (events, head) = messages
        .events_after(group.channel_id, 0, 100)
        .await
        .unwrap();
    let pts: Vec<u64> = events.iter().map(|e| e.pts).collect();
    assert_eq!(pts, (1..=head).collect::<Vec<u64>>(), "one contiguous log");

    let dissolved = groups
        .change_group(group.id, m1, &[], crate::GroupChange::Dissolve, 900, None)
        .await
        .unwrap();
    assert_eq!(dissolved.removed.len(), 3);
    assert!(groups.group(group.id).await.unwrap().is_none());
    assert!(messages.members(group.channel_id).await.unwrap().is_empty());
    assert!(groups.groups_of(m1).await.unwrap().is_empty());
}

pub async fn join_requests_are_one_per_user_and_settle_once(storage: Arc<dyn Storage>) {
    let owner = user(&storage, "olga").await;
    let (asker, other) = (user(&storage, "ann").await, user(&storage, "ben").await);
    let groups = storage.groups();
    let group = group_with(&storage, owner, &[], 10).await;
    let first = groups
        .request_join(group.id, asker, Some(owner), "qrcode", 10)
        .await
        .unwrap();
    let again = groups
        .request_join(group.id, asker, None, "invite", 11)
        .await
        .unwrap();
    assert_eq!(again, first, "one pending request per user");
    let second = groups
        .request_join(group.id, other, Some(owner), "invite", 12)
        .await
        .unwrap();
    assert_eq!(
        groups.join_requests(group.id).await.unwrap(),
        vec![first.clone(), second.clone()]
    );

    let approve = |request| crate::GroupChange::Join {
        users: vec![asker],
        via: "qrcode".to_owned(),
        request: Some(request),
    };
    groups
        .change_group(
            group.id,
            owner,
            &[(asker, None)],
            approve(first.id),
            20,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        groups
            .join_request(first.id)
            .await
            .unwrap()
            .map(|r| r.status),
        Some("approved".to_owned())
    );
    assert!(matches!(
        groups
            .change_group(group.id, owner, &[], approve(first.id), 21, None)
            .await,
        Err(StorageError::Conflict(_))
    ));
    assert!(groups.decline_join(second.id, owner, 22).await.unwrap());
    assert!(!groups.decline_join(second.id, owner, 23).await.unwrap());
    assert!(groups.join_requests(group.id).await.unwrap().is_empty());
}

fn upload<'a>(owner: UserId, name: &'a str, size: u64, token: u8, now_ms: i64) -> NewUpload<'a> {
    NewUpload {
        owner,
        name,
        mime: "application/octet-stream",
        size,
        declared_sha256: None,
        source_id: "local",
        token_hash: [token; 32],
        expires_at_ms: now_ms + 1_000,
        quota_bytes: 1_000,
        now_ms,
    }
}

pub async fn upload_tokens_open_one_upload_until_it_completes(storage: Arc<dyn Storage>) {
    let owner = user(&storage, "ann").await;
    let files = storage.files();
    let created = files
        .create_upload(NewUpload {
            declared_sha256: Some("ab"),
            mime: "image/png",
            ..upload(owner, "cat.png", 10, 1, 100)
        })
        .await
        .unwrap();
    assert_eq!(created.status, FileStatus::Pending);
    assert_eq!(created.sha256, None);
    assert_eq!(created.declared_sha256.as_deref(), Some("ab"));
    assert_eq!(created.mime, "image/png");
    assert_eq!(created.expires_at_ms, 1_100);
    assert_eq!(files.file(created.id).await.unwrap(), Some(created.clone()));

    let found = files.upload_by_token([1; 32]).await.unwrap().unwrap();
    assert_eq!(found.file, created);
    assert_eq!((found.received, found.used_at_ms), (0, None));
    assert_eq!(found.expires_at_ms, 1_100);
    assert_eq!(files.upload_by_token([2; 32]).await.unwrap(), None);
    assert_eq!(files.upload(created.id).await.unwrap(), Some(found));

    // A second upload may not reuse a token.
    let reused = files.create_upload(upload(owner, "again", 1, 1, 100)).await;
    assert!(reused.is_err(), "{reused:?}");

    // Completion spends the token: no chunk is accepted after it.
    assert_eq!(
        files
            .commit_chunk(created.id, 0, 10, "p0", 200)
            .await
            .unwrap(),
        ChunkOutcome::Committed { received: 10 }
    );
    assert!(
        files
            .complete_file(created.id, "aa", "aa", 300)
            .await
            .unwrap()
    );
    let spent = files.upload_by_token([1; 32]).await.unwrap().unwrap();
    assert_eq!(spent.used_at_ms, Some(300));
    assert_eq!(spent.file.status, FileStatus::Complete);
    let after = files.commit_chunk(created.id, 10, 10, "late", 301).await;
    assert!(matches!(after, Err(StorageError::NotFound(_))), "{after:?}");

    // An expired upload takes no chunk either.
    let late = files
        .create_upload(upload(owner, "late", 5, 3, 100))
        .await
        .unwrap();
    let expired = files.commit_chunk(late.id, 0, 5, "p", 1_100).await;
    assert!(
        matches!(expired, Err(StorageError::NotFound(_))),
        "{expired:?}"
    );
}

pub async fn upload_offsets_only_move_forward(storage: Arc<dyn Storage>) {
    let owner = user(&storage, "ann").await;
    let files = storage.files();
    let file = files
        .create_upload(upload(owner, "log.txt", 10, 1, 100))
        .await
        .unwrap();
    assert_eq!(
        files.commit_chunk(file.id, 0, 4, "a", 101).await.unwrap(),
        ChunkOutcome::Committed { received: 4 }
    );
    // A repeat of the same chunk, a gap and a step back are all stale.
    for (start, end) in [(0, 4), (5, 8), (2, 6)] {
        assert_eq!(
            files
                .commit_chunk(file.id, start, end, "x", 102)
                .await
                .unwrap(),
            ChunkOutcome::Stale { received: 4 },
            "{start}..{end}"
        );
    }
    for (start, end) in [(4, 4), (4, 11)] {
        let bad = files.commit_chunk(file.id, start, end, "x", 102).await;
        assert!(matches!(bad, Err(StorageError::Invalid(_))), "{bad:?}");
    }
    let unknown = files
        .commit_chunk(conclave_core::FileId::new(999), 0, 1, "x", 102)
        .await;
    assert!(
        matches!(unknown, Err(StorageError::NotFound(_))),
        "{unknown:?}"
    );

    // Only one of two writers racing for the same offset is recorded.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            storage
                .files()
                .commit_chunk(file.id, 4, 7, &format!("race-{i}"), 103)
                .await
                .unwrap()
        }));
    }
    let mut committed = 0;
    for task in tasks {
        match task.await.unwrap() {
            ChunkOutcome::Committed { received } => {
                assert_eq!(received, 7);
                committed += 1;
            }
            ChunkOutcome::Stale { received } => assert_eq!(received, 7),
        }
    }
    assert_eq!(committed, 1, "one writer wins the offset");
    let incomplete = files.complete_file(file.id, "s", "s", 104).await;
    assert!(
        matches!(incomplete, Err(StorageError::Invalid(_))),
        "{incomplete:?}"
    );
    files.commit_chunk(file.id, 7, 10, "c", 105).await.unwrap();
    let parts = files.parts(file.id).await.unwrap();
    assert_eq!(
        parts.iter().map(|p| (p.start, p.end)).collect::<Vec<_>>(),
        vec![(0, 4), (4, 7), (7, 10)]
    );
    assert_eq!(parts[0].key, "a");
    assert!(parts[1].key.starts_with("race-"));
    assert_eq!(files.upload(file.id).await.unwrap().unwrap().received, 10);
}

pub async fn completing_sets_the_checksum_once(storage: Arc<dyn Storage>) {
    let owner = user(&storage, "ann").await;
    let files = storage.files();
    let file = files
        .create_upload(upload(owner, "a.bin", 3, 1, 100))
        .await
        .unwrap();
    files.commit_chunk(file.id, 0, 3, "p", 101).await.unwrap();
    assert!(
        files
            .complete_file(file.id, "sha-1", "key-1", 200)
            .await
            .unwrap()
    );
    assert!(
        !files
            .complete_file(file.id, "sha-2", "key-2", 300)
            .await
            .unwrap(),
        "completing twice changes nothing"
    );
    let done = files.file(file.id).await.unwrap().unwrap();
    assert_eq!(done.status, FileStatus::Complete);
    assert_eq!(done.sha256.as_deref(), Some("sha-1"));
    assert_eq!(done.content_key.as_deref(), Some("key-1"));
    assert_eq!(done.completed_at_ms, Some(200));
    assert!(
        files.parts(file.id).await.unwrap().is_empty(),
        "parts are forgotten"
    );
    // A complete file is never deleted as an upload.
    assert!(!files.delete_upload(file.id).await.unwrap());
    assert!(files.file(file.id).await.unwrap().is_some());
    let unknown = files
        .complete_file(conclave_core::FileId::new(999), "s", "k", 1)
        .await;
    assert!(
        matches!(unknown, Err(StorageError::NotFound(_))),
        "{unknown:?}"
    );
}

pub async fn identical_content_is_found_by_its_key(storage: Arc<dyn Storage>) {
    let (a, b) = (user(&storage, "ann").await, user(&storage, "ben").await);
    let files = storage.files();
    assert_eq!(files.file_by_content_key("local", "k").await.unwrap(), None);
    let first = files
        .create_upload(upload(a, "x", 2, 1, 100))
        .await
        .unwrap();
    files.commit_chunk(first.id, 0, 2, "p", 101).await.unwrap();
    // Pending files are not content yet.
    assert_eq!(files.file_by_content_key("local", "k").await.unwrap(), None);
    files.complete_file(first.id, "k", "k", 102).await.unwrap();
    let second = files
        .create_upload(upload(b, "y", 2, 2, 100))
        .await
        .unwrap();
    files.commit_chunk(second.id, 0, 2, "q", 101).await.unwrap();
    files.complete_file(second.id, "k", "k", 103).await.unwrap();
    let found = files
        .file_by_content_key("local", "k")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, first.id, "the oldest holder of the content");
    assert_eq!(files.file_by_content_key("s3", "k").await.unwrap(), None);
    assert_eq!(
        files.file_by_content_key("local", "other").await.unwrap(),
        None
    );
}

pub async fn usage_sums_an_owners_live_files_and_caps_uploads(storage: Arc<dyn Storage>) {
    let (a, b) = (user(&storage, "ann").await, user(&storage, "ben").await);
    let files = storage.files();
    assert_eq!(files.usage(a, 100).await.unwrap(), 0);
    let done = files
        .create_upload(upload(a, "done", 300, 1, 100))
        .await
        .unwrap();
    files.commit_chunk(done.id, 0, 300, "p", 101).await.unwrap();
    files.complete_file(done.id, "s", "s", 102).await.unwrap();
    // Pending until 1_100.
    files
        .create_upload(upload(a, "pending", 200, 2, 100))
        .await
        .unwrap();
    files
        .create_upload(upload(b, "other", 900, 3, 100))
        .await
        .unwrap();
    assert_eq!(files.usage(a, 500).await.unwrap(), 500);
    assert_eq!(files.usage(b, 500).await.unwrap(), 900);
    // An expired upload no longer counts; a complete file always does.
    assert_eq!(files.usage(a, 1_100).await.unwrap(), 300);

    // Quota 1_000: 500 used, 500 fits, 501 does not.
    let over = files.create_upload(upload(a, "big", 501, 4, 500)).await;
    assert!(
        matches!(over, Err(StorageError::LimitReached(_))),
        "{over:?}"
    );
    files
        .create_upload(upload(a, "fits", 500, 5, 500))
        .await
        .unwrap();
    assert_eq!(files.usage(a, 500).await.unwrap(), 1_000);

    // Racing uploads cannot overshoot the quota together.
    let c = user(&storage, "cat").await;
    let mut tasks = Vec::new();
    for i in 0..6u8 {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("f{i}");
            storage
                .files()
                .create_upload(upload(c, &name, 300, 10 + i, 100))
                .await
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(StorageError::LimitReached(_)) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(accepted, 3, "3 x 300 fit in 1_000, a fourth does not");
    assert_eq!(files.usage(c, 100).await.unwrap(), 900);
}

pub async fn expired_uploads_are_listed_and_deleted(storage: Arc<dyn Storage>) {
    let owner = user(&storage, "ann").await;
    let files = storage.files();
    let early = files
        .create_upload(NewUpload {
            expires_at_ms: 500,
            ..upload(owner, "early", 1, 1, 100)
        })
        .await
        .unwrap();
    let later = files
        .create_upload(upload(owner, "later", 1, 2, 100))
        .await
        .unwrap();
    let done = files
        .create_upload(NewUpload {
            expires_at_ms: 400,
            ..upload(owner, "done", 1, 3, 100)
        })
        .await
        .unwrap();
    files.commit_chunk(done.id, 0, 1, "p", 101).await.unwrap();
    files.complete_file(done.id, "s", "s", 102).await.unwrap();
    files.commit_chunk(early.id, 0, 1, "e", 101).await.unwrap();

    assert!(files.expired_uploads(500, 10).await.unwrap().is_empty());
    let expired = files.expired_uploads(501, 10).await.unwrap();
    assert_eq!(
        expired.iter().map(|f| f.id).collect::<Vec<_>>(),
        vec![early.id]
    );
    let both = files.expired_uploads(2_000, 10).await.unwrap();
    assert_eq!(
        both.iter().map(|f| f.id).collect::<Vec<_>>(),
        vec![early.id, later.id],
        "oldest first; complete files never"
    );
    assert_eq!(files.expired_uploads(2_000, 1).await.unwrap().len(), 1);

    assert!(files.delete_upload(early.id).await.unwrap());
    assert!(
        !files.delete_upload(early.id).await.unwrap(),
        "deleted once"
    );
    assert_eq!(files.file(early.id).await.unwrap(), None);
    assert_eq!(files.upload_by_token([1; 32]).await.unwrap(), None);
    assert!(files.parts(early.id).await.unwrap().is_empty());
    assert_eq!(
        files
            .expired_uploads(2_000, 10)
            .await
            .unwrap()
            .iter()
            .map(|f| f.id)
            .collect::<Vec<_>>(),
        vec![later.id]
    );
}

pub async fn file_references_admit_current_channel_members(storage: Arc<dyn Storage>) {
    let (a, b, c) = (
        user(&storage, "ann").await,
        user(&storage, "ben").await,
        user(&storage, "cat").await,
    );
    let files = storage.files();
    let file = files
        .create_upload(upload(a, "x", 1, 1, 100))
        .await
        .unwrap();
    let (channel, _) = storage.messages().direct_channel(a, b, 5).await.unwrap();
    assert!(!files.referenced_for(file.id, b).await.unwrap());
    files.add_reference(file.id, channel.id, 6).await.unwrap();
    files.add_reference(file.id, channel.id, 7).await.unwrap(); // idempotent
    assert!(files.referenced_for(file.id, a).await.unwrap());
    assert!(files.referenced_for(file.id, b).await.unwrap());
    assert!(!files.referenced_for(file.id, c).await.unwrap());
    assert!(
        !files
            .referenced_for(conclave_core::FileId::new(999), b)
            .await
            .unwrap()
    );
}

fn thumbnail(content_key: &str) -> crate::NewThumbnail<'_> {
    crate::NewThumbnail {
        name: "cat.thumb.jpg",
        mime: "image/jpeg",
        size: 7,
        sha256: content_key,
        content_key,
        width: 320,
        height: 192,
    }
}

pub async fn images_are_recorded_once_with_their_thumbnail(storage: Arc<dyn Storage>) {
    use crate::NewImage;
    let owner = user(&storage, "ann").await;
    let files = storage.files();
    let image = files
        .create_upload(NewUpload {
            mime: "image/png",
            ..upload(owner, "cat.png", 10, 1, 100)
        })
        .await
        .unwrap();
    assert_eq!(
        (image.width, image.height, image.thumbnail_file_id),
        (None, None, None)
    );
    assert!(!image.image_known());
    let read = |thumb| NewImage::Read {
        width: 1000,
        height: 600,
        thumbnail: thumb,
    };
    // A pending upload has no image yet; an unknown file none at all.
    let pending = files.record_image(image.id, read(None), 150).await;
    assert!(
        matches!(pending, Err(StorageError::Invalid(_))),
        "{pending:?}"
    );
    let unknown = files
        .record_image(conclave_core::FileId::new(999), read(None), 150)
        .await;
    assert!(
        matches!(unknown, Err(StorageError::NotFound(_))),
        "{unknown:?}"
    );

    files.commit_chunk(image.id, 0, 10, "p", 101).await.unwrap();
    files
        .complete_file(image.id, "img", "img", 102)
        .await
        .unwrap();
    let recorded = files
        .record_image(image.id, read(Some(thumbnail("thumb-1"))), 200)
        .await
        .unwrap();
    assert_eq!((recorded.width, recorded.height), (Some(1000), Some(600)));
    assert_eq!(recorded.image_error, None);
    assert!(recorded.image_known());
    assert_eq!(files.file(image.id).await.unwrap(), Some(recorded.clone()));
    let thumb_id = recorded.thumbnail_file_id.expect("a thumbnail");
    let thumb = files.file(thumb_id).await.unwrap().unwrap();
    assert_eq!(thumb.owner_id, owner);
    assert_eq!(thumb.status, FileStatus::Complete);
    assert_eq!(
        (thumb.name.as_str(), thumb.mime.as_str(), thumb.size),
        ("cat.thumb.jpg", "image/jpeg", 7)
    );
    assert_eq!(thumb.sha256.as_deref(), Some("thumb-1"));
    assert_eq!(thumb.content_key.as_deref(), Some("thumb-1"));
    assert_eq!(thumb.source_id, "local");
    assert_eq!(thumb.completed_at_ms, Some(200));
    assert_eq!((thumb.width, thumb.height), (Some(320), Some(192)));
    assert_eq!(thumb.thumbnail_file_id, None);
    assert_eq!(
        files
            .file_by_content_key("local", "thumb-1")
            .await
            .unwrap()
            .map(|f| f.id),
        Some(thumb_id),
        "a thumbnail is content like any other"
    );
    // A thumbnail counts against its owner's quota.
    assert_eq!(files.usage(owner, 300).await.unwrap(), 17);

    // The first record wins: nothing changes, no second thumbnail.
    let again = files
        .record_image(
            image.id,
            NewImage::Read {
                width: 1,
                height: 1,
                thumbnail: Some(thumbnail("thumb-2")),
            },
            300,
        )
        .await
        .unwrap();
    assert_eq!(again, recorded);
    let refused = files
        .record_image(
            image.id,
            NewImage::Unread {
                error: "image_unreadable",
            },
            300,
        )
        .await
        .unwrap();
    assert_eq!(refused, recorded);
    assert_eq!(
        files.file_by_content_key("local", "thumb-2").await.unwrap(),
        None
    );

    // An image that could not be read says why, and keeps no size.
    let bomb = files
        .create_upload(NewUpload {
            mime: "image/png",
            ..upload(owner, "bomb.png", 5, 2, 100)
        })
        .await
        .unwrap();
    files.commit_chunk(bomb.id, 0, 5, "p", 101).await.unwrap();
    files
        .complete_file(bomb.id, "bomb", "bomb", 102)
        .await
        .unwrap();
    let unread = files
        .record_image(
            bomb.id,
            NewImage::Unread {
                error: "image_too_large",
            },
            200,
        )
        .await
        .unwrap();
    assert_eq!(unread.image_error.as_deref(), Some("image_too_large"));
    assert_eq!(
        (unread.width, unread.height, unread.thumbnail_file_id),
        (None, None, None)
    );
    assert!(unread.image_known());
    let later = files
        .record_image(bomb.id, read(Some(thumbnail("thumb-3"))), 300)
        .await
        .unwrap();
    assert_eq!(later, unread);

    // Racing recorders: one wins, one thumbnail exists.
    let raced = files
        .create_upload(NewUpload {
            mime: "image/png",
            ..upload(owner, "race.png", 3, 3, 100)
        })
        .await
        .unwrap();
    files.commit_chunk(raced.id, 0, 3, "p", 101).await.unwrap();
    files
        .complete_file(raced.id, "race", "race", 102)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("race-thumb-{i}");
            storage
                .files()
                .record_image(
                    raced.id,
                    NewImage::Read {
                        width: 10 + i,
                        height: 10,
                        thumbnail: Some(thumbnail(&key)),
                    },
                    200,
                )
                .await
                .unwrap()
        }));
    }
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "every racer sees the winner: {seen:?}"
    );
    let mut thumbnails = 0;
    for i in 0..6 {
        let key = format!("race-thumb-{i}");
        if let Some(found) = files.file_by_content_key("local", &key).await.unwrap() {
            assert_eq!(Some(found.id), seen[0].thumbnail_file_id);
            assert_eq!(seen[0].width, Some(10 + i));
            thumbnails += 1;
        }
    }
    assert_eq!(thumbnails, 1, "one thumbnail for the winner only");
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
            devices_are_seen_in_batches_and_never_back_in_time,
            refresh_tokens_are_single_use_and_expire,
            ending_sessions_invalidates_tokens_and_revoking_removes,
            direct_channels_are_one_per_pair,
            sends_get_contiguous_pts_and_retries_create_nothing,
            difference_returns_events_in_order_with_the_head,
            read_cursors_only_move_forward,
            revoked_content_is_erased_everywhere,
            the_conversation_list_orders_pins_and_hides,
            inbox_events_get_contiguous_pts_per_user,
            concurrent_inbox_appends_stay_contiguous,
            concurrent_sends_stay_exact_when_some_are_refused,
            a_retry_after_leaving_still_finds_the_original,
            documents_have_unique_names_and_an_optional_channel,
            document_updates_get_contiguous_seqs_and_load_in_order,
            compaction_replaces_a_prefix_of_the_log,
            concurrent_document_appends_lose_nothing,
            mixed_writes_commit_together_and_refusals_stay_alone,
            search_indexes_every_message_of_a_group_and_no_refused_one,
            search_finds_every_message_however_many_were_sent,
            write_context_reads_what_single_reads_do,
            document_versions_are_numbered_listed_and_read_back,
            document_version_refusals_change_nothing,
            concurrent_document_versions_get_distinct_numbers,
            friend_requests_are_single_and_accepting_makes_friends,
            blocks_withdraw_requests_and_privacy_rows_exist,
            user_search_matches_prefixes_in_order_and_pages,
            group_changes_are_checked_events_in_the_channel_log,
            join_requests_are_one_per_user_and_settle_once,
            upload_tokens_open_one_upload_until_it_completes,
            upload_offsets_only_move_forward,
            completing_sets_the_checksum_once,
            identical_content_is_found_by_its_key,
            usage_sums_an_owners_live_files_and_caps_uploads,
            expired_uploads_are_listed_and_deleted,
            file_references_admit_current_channel_members,
            images_are_recorded_once_with_their_thumbnail,
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
