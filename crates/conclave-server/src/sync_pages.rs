//! Pages of `sync/get_difference` answered recently, kept to answer the same
//! page again without reading and rendering it again.
//!
//! When many devices come back at once (a restart, a network outage), the
//! members of a channel ask for the same events from the same pts. A page is
//! identified by its channel, first pts and size, and it is valid only for
//! the channel head it was read at: every change that could alter a page
//! (a new event, a revoke, a pin) appends an event and so moves the head,
//! also when it happens on another node. A lookup names the head the caller
//! just read, so a stale page is never served; it is only left to age out.
//!
//! Devices that come back together also miss together: a reader of a page
//! that is not kept first takes [`SyncPages::reading`], so the other askers
//! of that page wait for the one read and then find it kept, instead of
//! each reading and encoding it again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use conclave_core::ChannelId;

use crate::rpc::Answer;

/// The JSON bytes all kept pages may take together.
pub(crate) const SYNC_PAGES_BUDGET_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    channel: ChannelId,
    from: u64,
    limit: u32,
}

/// One answered page.
pub(crate) struct Page {
    /// The channel's head when the page was read.
    pub head: u64,
    /// The encoded answer, handed out again as it is.
    pub answer: Answer,
}

impl Page {
    /// What the page counts against the budget.
    fn bytes(&self) -> usize {
        self.answer.get().len()
    }
}

struct Kept {
    page: Arc<Page>,
    /// Which insertion this is, so an old queue entry does not evict a
    /// newer page under the same key.
    seq: u64,
}

#[derive(Default)]
struct Inner {
    pages: HashMap<Key, Kept>,
    /// Keys in insertion order, oldest first.
    order: VecDeque<(Key, u64)>,
    bytes: usize,
    next_seq: u64,
}

/// How many pages can be read at once; more than the database has readers.
const READ_STRIPES: usize = 64;

pub(crate) struct SyncPages {
    inner: Mutex<Inner>,
    budget_bytes: usize,
    /// Reads of one page take the same stripe, so they happen one at a time.
    reads: [tokio::sync::Mutex<()>; READ_STRIPES],
}

impl SyncPages {
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            budget_bytes,
            reads: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
        }
    }

    /// Held while reading the page of `channel` after `from` of at most
    /// `limit` events: look it up again once this is held, as a read that
    /// went before may have kept it meanwhile.
    pub async fn reading(
        &self,
        channel: ChannelId,
        from: u64,
        limit: u32,
    ) -> tokio::sync::MutexGuard<'_, ()> {
        let key = Key {
            channel,
            from,
            limit,
        };
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&key, &mut hasher);
        let stripe = std::hash::Hasher::finish(&hasher) as usize % READ_STRIPES;
        self.reads[stripe].lock().await
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The page of `channel` after `from` of at most `limit` events, if one
    /// was read when the channel's head was `head`.
    pub fn get(&self, channel: ChannelId, from: u64, limit: u32, head: u64) -> Option<Arc<Page>> {
        let key = Key {
            channel,
            from,
            limit,
        };
        self.lock()
            .pages
            .get(&key)
            .filter(|kept| kept.page.head == head)
            .map(|kept| kept.page.clone())
    }

    /// Keeps `page`, dropping the oldest pages beyond the budget. A page
    /// larger than the whole budget is not kept.
    pub fn put(&self, channel: ChannelId, from: u64, limit: u32, page: Page) {
        if page.bytes() > self.budget_bytes {
            return;
        }
        let key = Key {
            channel,
            from,
            limit,
        };
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.bytes += page.bytes();
        if let Some(old) = inner.pages.insert(
            key,
            Kept {
                page: Arc::new(page),
                seq,
            },
        ) {
            inner.bytes -= old.page.bytes();
        }
        inner.order.push_back((key, seq));
        while inner.bytes > self.budget_bytes {
            let Some((oldest, seq)) = inner.order.pop_front() else {
                break;
            };
            if inner.pages.get(&oldest).is_some_and(|kept| kept.seq == seq) {
                if let Some(old) = inner.pages.remove(&oldest) {
                    inner.bytes -= old.page.bytes();
                }
            }
        }
        // Keys replaced in place leave their old queue entries behind; drop
        // them once they outnumber the pages.
        if inner.order.len() > 2 * inner.pages.len() + 64 {
            let Inner { pages, order, .. } = &mut *inner;
            order.retain(|(key, seq)| pages.get(key).is_some_and(|kept| kept.seq == *seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page whose answer is `bytes` long.
    fn page(head: u64, bytes: usize) -> Page {
        let text = format!("\"{}\"", "x".repeat(bytes - 2));
        Page {
            head,
            answer: serde_json::value::RawValue::from_string(text).unwrap(),
        }
    }

    #[tokio::test]
    async fn askers_of_one_page_read_it_one_at_a_time() {
        let pages = SyncPages::new(1_000);
        let channel = ChannelId::new(1);
        let first = pages.reading(channel, 0, 500).await;
        let same = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            pages.reading(channel, 0, 500),
        )
        .await;
        assert!(same.is_err(), "waits while the page is being read");
        drop(first);
        let _second = pages.reading(channel, 0, 500).await;
    }

    #[test]
    fn a_page_is_served_only_for_the_head_it_was_read_at() {
        let pages = SyncPages::new(1_000);
        let channel = ChannelId::new(1);
        pages.put(channel, 0, 500, page(10, 100));
        assert_eq!(pages.get(channel, 0, 500, 10).map(|p| p.head), Some(10));
        assert!(pages.get(channel, 0, 500, 11).is_none(), "the head moved");
        assert!(pages.get(channel, 1, 500, 10).is_none(), "another start");
        assert!(pages.get(channel, 0, 100, 10).is_none(), "another size");
        assert!(pages.get(ChannelId::new(2), 0, 500, 10).is_none());
    }

    #[test]
    fn the_oldest_pages_go_first_when_over_budget() {
        let pages = SyncPages::new(250);
        let channel = ChannelId::new(1);
        pages.put(channel, 0, 500, page(10, 100));
        pages.put(channel, 10, 500, page(20, 100));
        pages.put(channel, 20, 500, page(30, 100));
        assert!(pages.get(channel, 0, 500, 10).is_none());
        assert!(pages.get(channel, 10, 500, 20).is_some());
        assert!(pages.get(channel, 20, 500, 30).is_some());
        // Too large to keep at all.
        pages.put(channel, 30, 500, page(40, 251));
        assert!(pages.get(channel, 30, 500, 40).is_none());
    }

    #[test]
    fn a_page_read_again_replaces_the_old_one() {
        let pages = SyncPages::new(250);
        let channel = ChannelId::new(1);
        pages.put(channel, 0, 500, page(10, 100));
        pages.put(channel, 0, 500, page(11, 100));
        pages.put(channel, 10, 500, page(20, 100));
        assert!(pages.get(channel, 0, 500, 11).is_some());
        assert_eq!(pages.lock().bytes, 200);
        // Over budget: the first insertion's queue entry names a page that
        // is gone, so the replacement (the oldest page kept) goes instead
        // of the newer ones.
        pages.put(channel, 20, 500, page(30, 100));
        assert!(pages.get(channel, 0, 500, 11).is_none());
        assert!(pages.get(channel, 10, 500, 20).is_some());
        assert!(pages.get(channel, 20, 500, 30).is_some());
        assert_eq!(pages.lock().bytes, 200);
    }
}
