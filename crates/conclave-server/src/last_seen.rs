//! When each device was last connected, written in batches.
//!
//! Every session notes the time it starts and ends. Writing each note at
//! once cost a transaction per connect, and every write makes the database's
//! readers drop their page caches: when thousands of devices reconnect
//! together, that is thousands of writes while they all read. Notes are kept
//! here instead and written together, one transaction per
//! [`FLUSH_INTERVAL`], and once more when the server stops. Until a note is
//! written, [`LastSeen::latest_of`] still sees it, so this node's answers
//! never go back in time; other nodes see it after the next write.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use conclave_core::{DeviceId, UserId};
use conclave_storage::Storage;

/// How often noted times are written.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Notes {
    /// Noted since the last write began: device -> (its user, time).
    pending: HashMap<DeviceId, (UserId, i64)>,
    /// Being written now; still read until the write is done.
    writing: HashMap<DeviceId, (UserId, i64)>,
}

#[derive(Default)]
pub(crate) struct LastSeen {
    notes: Mutex<Notes>,
    /// One write at a time, so `writing` belongs to exactly one of them.
    flushing: tokio::sync::Mutex<()>,
}

impl LastSeen {
    fn lock(&self) -> MutexGuard<'_, Notes> {
        self.notes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `device` of `user` was connected at `at_ms`.
    pub fn note(&self, user: UserId, device: DeviceId, at_ms: i64) {
        keep_latest(&mut self.lock().pending, device, (user, at_ms));
    }

    /// The latest time noted for any of `user`'s devices and not yet
    /// written, if any.
    pub fn latest_of(&self, user: UserId) -> Option<i64> {
        let notes = self.lock();
        notes
            .pending
            .values()
            .chain(notes.writing.values())
            .filter(|(owner, _)| *owner == user)
            .map(|(_, at_ms)| *at_ms)
            .max()
    }

    /// The time noted for `device` and not yet written, if any.
    pub fn of_device(&self, device: DeviceId) -> Option<i64> {
        let notes = self.lock();
        let pending = notes.pending.get(&device).map(|(_, at_ms)| *at_ms);
        let writing = notes.writing.get(&device).map(|(_, at_ms)| *at_ms);
        pending.max(writing)
    }

    /// Writes every note taken so far in one transaction. Notes whose write
    /// fails are kept for the next attempt.
    pub async fn flush(&self, storage: &dyn Storage) {
        let _one_at_a_time = self.flushing.lock().await;
        let batch: Vec<(DeviceId, i64)> = {
            let mut notes = self.lock();
            let taken = std::mem::take(&mut notes.pending);
            notes.writing = taken;
            notes
                .writing
                .iter()
                .map(|(device, (_, at_ms))| (*device, *at_ms))
                .collect()
        };
        if batch.is_empty() {
            return;
        }
        let written = storage.accounts().touch_devices(&batch).await;
        let mut notes = self.lock();
        let done = std::mem::take(&mut notes.writing);
        if let Err(err) = written {
            tracing::warn!(error = %err, devices = batch.len(), "could not record devices as seen; retrying");
            for (device, seen) in done {
                keep_latest(&mut notes.pending, device, seen);
            }
        }
    }

    /// Writes notes every [`FLUSH_INTERVAL`] until `stop`; the final write
    /// is the server's, after its sessions have ended.
    pub async fn run(&self, storage: &dyn Storage, stop: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(FLUSH_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = every.tick() => self.flush(storage).await,
            }
        }
    }
}

fn keep_latest(
    notes: &mut HashMap<DeviceId, (UserId, i64)>,
    device: DeviceId,
    seen: (UserId, i64),
) {
    notes
        .entry(device)
        .and_modify(|kept| kept.1 = kept.1.max(seen.1))
        .or_insert(seen);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_note_of_any_device_counts() {
        let seen = LastSeen::default();
        let (alice, bob) = (UserId::new(1), UserId::new(2));
        seen.note(alice, DeviceId::new(10), 500);
        seen.note(alice, DeviceId::new(11), 700);
        seen.note(alice, DeviceId::new(10), 400);
        seen.note(bob, DeviceId::new(20), 900);
        assert_eq!(seen.latest_of(alice), Some(700));
        assert_eq!(seen.latest_of(bob), Some(900));
        assert_eq!(seen.latest_of(UserId::new(3)), None);
        assert_eq!(seen.of_device(DeviceId::new(11)), Some(700));
        assert_eq!(seen.of_device(DeviceId::new(12)), None);
        let notes = seen.lock();
        assert_eq!(
            notes.pending[&DeviceId::new(10)],
            (alice, 500),
            "never back in time"
        );
    }

    #[tokio::test]
    async fn notes_are_written_together_and_kept_while_writes_fail() {
        use conclave_storage::{DeviceLogin, NewUser};

        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("seen.db").display());
        let storage = conclave_storage::open(&url, Default::default())
            .await
            .unwrap();
        let accounts = storage.accounts();
        let user = accounts
            .create_user(NewUser {
                username: "alice",
                password_hash: "hash",
                display_name: "Alice",
                now_ms: 1_000,
            })
            .await
            .unwrap();
        let mut devices = Vec::new();
        for refresh in 1..=2 {
            let device = accounts
                .login_device(DeviceLogin {
                    user_id: user.id,
                    existing: None,
                    name: "phone",
                    noise_public_key: None,
                    refresh_hash: [refresh; 32],
                    refresh_expires_at_ms: 10_000,
                    max_devices: 5,
                    now_ms: 1_000,
                })
                .await
                .unwrap();
            devices.push(device.id);
        }

        let seen = LastSeen::default();
        seen.note(user.id, devices[0], 5_000);
        seen.note(user.id, devices[1], 6_000);
        assert_eq!(accounts.last_seen(user.id).await.unwrap(), Some(1_000));
        seen.flush(&*storage).await;
        assert_eq!(seen.latest_of(user.id), None, "written, so no longer held");
        for (device, at_ms) in [(devices[0], 5_000), (devices[1], 6_000)] {
            let stored = accounts.device(device).await.unwrap().unwrap();
            assert_eq!(stored.last_seen_at_ms, at_ms);
        }

        // A failed write loses nothing: the note stays visible and is
        // written by a later flush.
        storage.close().await;
        seen.note(user.id, devices[0], 9_000);
        seen.flush(&*storage).await;
        assert_eq!(seen.latest_of(user.id), Some(9_000));
        let reopened = conclave_storage::open(&url, Default::default())
            .await
            .unwrap();
        seen.flush(&*reopened).await;
        assert_eq!(seen.latest_of(user.id), None);
        assert_eq!(
            reopened.accounts().last_seen(user.id).await.unwrap(),
            Some(9_000)
        );
    }
}
