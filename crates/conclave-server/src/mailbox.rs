//! A bounded queue with many senders and one receiver whose storage grows
//! with use and is given back once drained.
//!
//! Every session has two: the events pushed to it and the replies of its
//! in-flight requests. Most sessions are idle most of the time, so an empty
//! queue should cost a few dozen bytes, not a preallocated block of slots.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

/// Storage above this many slots is released when the queue runs empty, so
/// a burst does not leave an idle session holding its high-water mark.
const KEEP_SLOTS: usize = 8;

pub(crate) struct Mailbox<T> {
    state: Mutex<State<T>>,
    ready: Notify,
    capacity: usize,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

/// Why [`Mailbox::try_send`] gave the item back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused<T> {
    Full(T),
    Closed(T),
}

impl<T> Mailbox<T> {
    /// A queue holding at most `capacity` items (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
            }),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item` without waiting.
    pub fn try_send(&self, item: T) -> Result<(), Refused<T>> {
        {
            let mut state = self.lock();
            if state.closed {
                return Err(Refused::Closed(item));
            }
            if state.items.len() >= self.capacity {
                return Err(Refused::Full(item));
            }
            state.items.push_back(item);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// The next item, waiting for one; `None` once closed and empty.
    /// Cancel-safe: an item is taken only by the poll that returns it.
    pub async fn recv(&self) -> Option<T> {
        loop {
            {
                let mut state = self.lock();
                if let Some(item) = take(&mut state.items) {
                    return Some(item);
                }
                if state.closed {
                    return None;
                }
            }
            // A send between the check and this wait left a permit behind,
            // so the wait ends at once (one receiver).
            self.ready.notified().await;
        }
    }

    /// Moves waiting items to `out` until it holds `max`, without waiting.
    pub fn drain_into(&self, out: &mut Vec<T>, max: usize) {
        let mut state = self.lock();
        while out.len() < max {
            match take(&mut state.items) {
                Some(item) => out.push(item),
                None => break,
            }
        }
    }

    /// Refuses further items; those queued can still be received.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }
}

fn take<T>(items: &mut VecDeque<T>) -> Option<T> {
    let item = items.pop_front();
    if items.is_empty() && items.capacity() > KEEP_SLOTS {
        items.shrink_to(KEEP_SLOTS);
    }
    item
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn items_arrive_in_order_and_a_full_queue_refuses() {
        let mailbox = Mailbox::new(2);
        assert_eq!(mailbox.try_send(1), Ok(()));
        assert_eq!(mailbox.try_send(2), Ok(()));
        assert_eq!(mailbox.try_send(3), Err(Refused::Full(3)));
        assert_eq!(mailbox.recv().await, Some(1));
        assert_eq!(mailbox.try_send(3), Ok(()));
        let mut out = Vec::new();
        mailbox.drain_into(&mut out, 10);
        assert_eq!(out, vec![2, 3]);
    }

    #[tokio::test]
    async fn a_closed_queue_refuses_but_still_hands_out_what_it_holds() {
        let mailbox = Mailbox::new(4);
        mailbox.try_send("a").unwrap();
        mailbox.close();
        assert_eq!(mailbox.try_send("b"), Err(Refused::Closed("b")));
        assert_eq!(mailbox.recv().await, Some("a"));
        assert_eq!(mailbox.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_send_from_another_task() {
        let mailbox = Arc::new(Mailbox::new(4));
        let sender = mailbox.clone();
        let send = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            sender.try_send(7).unwrap();
        });
        let got = tokio::time::timeout(Duration::from_secs(5), mailbox.recv()).await;
        assert_eq!(got, Ok(Some(7)));
        send.await.unwrap();
    }

    #[tokio::test]
    async fn a_cancelled_receive_loses_nothing() {
        let mailbox = Mailbox::new(4);
        // A receive that gives up before anything arrives...
        let gave_up = tokio::time::timeout(Duration::from_millis(10), mailbox.recv()).await;
        assert!(gave_up.is_err());
        // ...takes nothing from the items sent after it.
        mailbox.try_send(1).unwrap();
        mailbox.try_send(2).unwrap();
        assert_eq!(mailbox.recv().await, Some(1));
        assert_eq!(mailbox.recv().await, Some(2));
    }

    #[test]
    fn a_drained_queue_gives_back_its_storage() {
        let mailbox = Mailbox::new(1_000);
        for i in 0..500 {
            mailbox.try_send(i).unwrap();
        }
        assert!(mailbox.lock().items.capacity() >= 500);
        let mut out = Vec::new();
        mailbox.drain_into(&mut out, 1_000);
        assert_eq!(out.len(), 500);
        assert!(mailbox.lock().items.capacity() <= KEEP_SLOTS);
    }
}
