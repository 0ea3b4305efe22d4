//! Restores each channel's pts order before events reach sessions.
//!
//! Events arrive from this node's own commits and from the bus. Across
//! nodes (and across concurrent transactions on PostgreSQL) a channel's
//! events may arrive out of order, twice, or not at all (a dropped bus
//! connection). Because pts are allocated under the channel's row lock, an
//! event with pts `p` is committed only after every pts below `p` is: so
//! when `p` arrives ahead of `p - 1`, the missing events are already in the
//! database, and the fan-out reads them from there first.
//!
//! The sequencer only decides; the caller does the reading and delivering.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use conclave_core::ChannelId;

/// What to do with an arriving event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The next one: deliver it.
    Deliver,
    /// Already delivered (or older than what was): drop it.
    Stale,
    /// Events in `(after, pts)` were not delivered yet: read them from the
    /// database, deliver them, then this one.
    FillFrom { after: u64 },
    /// The first event of this channel seen here (since start or since the
    /// channel went idle): events just before it may still be on their way,
    /// so deliver the recent ones in `(after, pts)` that are fresher than
    /// `Sequencer::FIRST_SIGHT_FRESHNESS`, then this one.
    FirstSight { after: u64 },
}

struct Cursor {
    delivered: u64,
    touched: Instant,
}

pub struct Sequencer {
    cursors: HashMap<ChannelId, Cursor>,
    /// Sources that are ordered and complete (one node on SQLite) need no
    /// sequencing: everything is delivered as it comes.
    passthrough: bool,
}

impl Sequencer {
    /// How far back a first sight looks for events still in flight.
    pub const FIRST_SIGHT_WINDOW: u64 = 32;
    /// Events older than this at a first sight were delivered by whoever
    /// saw them, or are fetched by clients' sync.
    pub const FIRST_SIGHT_FRESHNESS: Duration = Duration::from_secs(5);
    /// A channel without events for this long is forgotten. Much longer than
    /// any bus delay, so an event still in flight never meets a forgotten
    /// cursor.
    pub const IDLE_AFTER: Duration = Duration::from_secs(600);

    pub fn new() -> Self {
        Self {
            cursors: HashMap::new(),
            passthrough: false,
        }
    }

    /// For a single ordered source.
    pub fn passthrough() -> Self {
        Self {
            cursors: HashMap::new(),
            passthrough: true,
        }
    }

    pub fn offer(&mut self, channel: ChannelId, pts: u64, now: Instant) -> Verdict {
        if self.passthrough {
            return Verdict::Deliver;
        }
        let Some(cursor) = self.cursors.get_mut(&channel) else {
            self.cursors.insert(
                channel,
                Cursor {
                    delivered: pts,
                    touched: now,
                },
            );
            return match pts.saturating_sub(1 + Self::FIRST_SIGHT_WINDOW) {
                _ if pts <= 1 => Verdict::Deliver,
                after => Verdict::FirstSight { after },
            };
        };
        cursor.touched = now;
        if pts <= cursor.delivered {
            return Verdict::Stale;
        }
        let after = cursor.delivered;
        cursor.delivered = pts;
        if pts == after + 1 {
            Verdict::Deliver
        } else {
            Verdict::FillFrom { after }
        }
    }

    /// Forgets channels idle for [`Self::IDLE_AFTER`].
    pub fn forget_idle(&mut self, now: Instant) {
        self.cursors
            .retain(|_, cursor| now.duration_since(cursor.touched) < Self::IDLE_AFTER);
    }

    /// Channels remembered now.
    pub fn len(&self) -> usize {
        self.cursors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cursors.is_empty()
    }
}

impl Default for Sequencer {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(id: u64) -> ChannelId {
        ChannelId::new(id)
    }

    #[test]
    fn in_order_events_are_delivered_and_repeats_dropped() {
        let mut seq = Sequencer::new();
        let now = Instant::now();
        assert_eq!(seq.offer(ch(1), 1, now), Verdict::Deliver);
        assert_eq!(seq.offer(ch(1), 2, now), Verdict::Deliver);
        assert_eq!(seq.offer(ch(1), 2, now), Verdict::Stale);
        assert_eq!(seq.offer(ch(1), 1, now), Verdict::Stale);
        assert_eq!(seq.offer(ch(1), 3, now), Verdict::Deliver);
    }

    #[test]
    fn a_gap_asks_for_the_missing_range_and_late_arrivals_are_dropped() {
        let mut seq = Sequencer::new();
        let now = Instant::now();
        assert_eq!(seq.offer(ch(1), 1, now), Verdict::Deliver);
        assert_eq!(seq.offer(ch(1), 4, now), Verdict::FillFrom { after: 1 });
        assert_eq!(seq.offer(ch(1), 2, now), Verdict::Stale);
        assert_eq!(seq.offer(ch(1), 3, now), Verdict::Stale);
        assert_eq!(seq.offer(ch(1), 5, now), Verdict::Deliver);
    }

    #[test]
    fn channels_are_independent() {
        let mut seq = Sequencer::new();
        let now = Instant::now();
        assert_eq!(seq.offer(ch(1), 1, now), Verdict::Deliver);
        assert_eq!(seq.offer(ch(2), 1, now), Verdict::Deliver);
        assert_eq!(seq.offer(ch(2), 2, now), Verdict::Deliver);
        assert_eq!(seq.offer(ch(1), 2, now), Verdict::Deliver);
    }

    #[test]
    fn a_first_sight_looks_back_a_bounded_window() {
        let mut seq = Sequencer::new();
        let now = Instant::now();
        assert_eq!(seq.offer(ch(1), 3, now), Verdict::FirstSight { after: 0 });
        assert_eq!(seq.offer(ch(1), 2, now), Verdict::Stale);
        assert_eq!(
            seq.offer(ch(2), 1000, now),
            Verdict::FirstSight { after: 967 }
        );
    }

    #[test]
    fn idle_channels_are_forgotten() {
        let mut seq = Sequencer::new();
        let start = Instant::now();
        seq.offer(ch(1), 1, start);
        seq.offer(ch(2), 1, start + Sequencer::IDLE_AFTER);
        seq.forget_idle(start + Sequencer::IDLE_AFTER + Duration::from_secs(1));
        assert_eq!(seq.len(), 1);
        assert_eq!(
            seq.offer(ch(1), 5, start + Sequencer::IDLE_AFTER),
            Verdict::FirstSight { after: 0 }
        );
    }

    #[test]
    fn passthrough_delivers_everything() {
        let mut seq = Sequencer::passthrough();
        let now = Instant::now();
        assert_eq!(seq.offer(ch(1), 5, now), Verdict::Deliver);
        assert_eq!(seq.offer(ch(1), 5, now), Verdict::Deliver);
        assert!(seq.is_empty());
    }
}
