//! Awareness: the ephemeral per-client state (cursor, user name...) that
//! Yjs peers share beside a document (y-protocols `awareness.js`).
//!
//! An update is `varUint(n) • n × (varUint(clientID) • varUint(clock) •
//! varString(JSON))`, with the JSON `null` for a client that left. A state
//! replaces the known one when its clock is newer, or when it is `null` with
//! the same clock (the owner leaving).

use std::collections::BTreeMap;

use crate::DocError;
use crate::lib0::{self, Reader};

/// A state not renewed for this long is dropped (y-protocols
/// `outdatedTimeout`). Clients renew theirs every 15 s.
pub const AWARENESS_TIMEOUT_MS: u64 = 30_000;

/// The smallest entry on the wire: one byte each for client id, clock and
/// string length. Bounds the allocation a claimed entry count may cause.
const ENTRY_MIN_BYTES: usize = 3;

const NULL_STATE: &str = "null";

/// One client's state as it travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwarenessEntry {
    pub client_id: u64,
    pub clock: u64,
    /// JSON text; `None` is the JSON `null` (the client left).
    pub state: Option<String>,
}

/// Decodes an awareness update. Every state must be valid JSON, because
/// each peer parses the states it receives and one bad state would break
/// them all.
pub fn decode_update(bytes: &[u8]) -> Result<Vec<AwarenessEntry>, DocError> {
    let mut reader = Reader::new(bytes);
    let count = usize::try_from(reader.var_uint()?)
        .map_err(|_| DocError::Malformed("an awareness entry count does not fit in memory"))?;
    let mut entries = Vec::with_capacity(count.min(bytes.len() / ENTRY_MIN_BYTES));
    for _ in 0..count {
        let client_id = reader.var_uint()?;
        let clock = reader.var_uint()?;
        let json = reader.var_string()?;
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|_| DocError::Malformed("an awareness state is not JSON"))?;
        entries.push(AwarenessEntry {
            client_id,
            clock,
            state: (!value.is_null()).then(|| json.to_owned()),
        });
    }
    if reader.has_content() {
        return Err(DocError::Malformed("bytes after the last awareness entry"));
    }
    Ok(entries)
}

/// Encodes entries in the given order.
pub fn encode_update<'a>(
    entries: impl IntoIterator<Item = (u64, u64, Option<&'a str>)>,
) -> Vec<u8> {
    let entries: Vec<_> = entries.into_iter().collect();
    let mut out = Vec::new();
    lib0::write_var_uint(&mut out, entries.len() as u64);
    for (client_id, clock, state) in entries {
        lib0::write_var_uint(&mut out, client_id);
        lib0::write_var_uint(&mut out, clock);
        lib0::write_var_string(&mut out, state.unwrap_or(NULL_STATE));
    }
    out
}

/// What applying an update changed, by client id, in update order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Clients that had no state and now have one.
    pub added: Vec<u64>,
    /// Clients whose state was renewed (changed or not).
    pub updated: Vec<u64>,
    /// Clients whose state became `null`.
    pub removed: Vec<u64>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty()
    }

    /// Every changed client: added, then updated, then removed.
    pub fn all(&self) -> Vec<u64> {
        let mut all =
            Vec::with_capacity(self.added.len() + self.updated.len() + self.removed.len());
        all.extend(&self.added);
        all.extend(&self.updated);
        all.extend(&self.removed);
        all
    }
}

#[derive(Debug, Clone)]
struct ClientState {
    clock: u64,
    state: Option<String>,
    last_updated_ms: u64,
}

/// The awareness states of one document.
///
/// Memory is bounded by what callers let in: a `null` state for a client
/// never seen is not recorded, and the record of a removed client is
/// forgotten after [`AWARENESS_TIMEOUT_MS`].
#[derive(Debug, Default)]
pub struct AwarenessTable {
    clients: BTreeMap<u64, ClientState>,
}

impl AwarenessTable {
    /// Applies entries by the y-protocols clock rule.
    pub fn apply(&mut self, entries: Vec<AwarenessEntry>, now_ms: u64) -> Changes {
        let mut changes = Changes::default();
        for entry in entries {
            match self.clients.get_mut(&entry.client_id) {
                Some(known) => {
                    let owner_leaves = known.clock == entry.clock
                        && entry.state.is_none()
                        && known.state.is_some();
                    if known.clock >= entry.clock && !owner_leaves {
                        continue;
                    }
                    match (known.state.is_some(), entry.state.is_some()) {
                        (true, false) => changes.removed.push(entry.client_id),
                        (false, true) => changes.added.push(entry.client_id),
                        (true, true) => changes.updated.push(entry.client_id),
                        (false, false) => {}
                    }
                    known.clock = entry.clock;
                    known.state = entry.state;
                    known.last_updated_ms = now_ms;
                }
                None => {
                    // An unknown client counts as clock 0 (y-protocols), so
                    // a first state with clock 0 is not taken.
                    if entry.clock == 0 || entry.state.is_none() {
                        continue;
                    }
                    changes.added.push(entry.client_id);
                    self.clients.insert(
                        entry.client_id,
                        ClientState {
                            clock: entry.clock,
                            state: entry.state,
                            last_updated_ms: now_ms,
                        },
                    );
                }
            }
        }
        changes
    }

    /// Marks these clients as gone, as their owner would: `null` with the
    /// clock one higher, so every peer takes it. Returns those that had a
    /// state.
    pub fn remove(&mut self, clients: impl IntoIterator<Item = u64>, now_ms: u64) -> Vec<u64> {
        let mut removed = Vec::new();
        for client_id in clients {
            if let Some(known) = self.clients.get_mut(&client_id) {
                if known.state.take().is_some() {
                    known.clock += 1;
                    known.last_updated_ms = now_ms;
                    removed.push(client_id);
                }
            }
        }
        removed
    }

    /// Removes states not renewed within [`AWARENESS_TIMEOUT_MS`] (as
    /// [`remove`](Self::remove) does) and forgets removed clients older than
    /// that. Returns the clients removed now.
    pub fn sweep(&mut self, now_ms: u64) -> Vec<u64> {
        let outdated = |state: &ClientState| {
            now_ms.saturating_sub(state.last_updated_ms) >= AWARENESS_TIMEOUT_MS
        };
        self.clients
            .retain(|_, state| state.state.is_some() || !outdated(state));
        let stale: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, state)| state.state.is_some() && outdated(state))
            .map(|(client_id, _)| *client_id)
            .collect();
        self.remove(stale, now_ms)
    }

    /// The current entries of these clients (unknown ones are skipped).
    pub fn encode(&self, clients: &[u64]) -> Vec<u8> {
        encode_update(clients.iter().filter_map(|client_id| {
            self.clients
                .get(client_id)
                .map(|known| (*client_id, known.clock, known.state.as_deref()))
        }))
    }

    /// Every client that has a state, or `None` when there is none.
    pub fn encode_present(&self) -> Option<Vec<u8>> {
        let present: Vec<u64> = self.present().collect();
        (!present.is_empty()).then(|| self.encode(&present))
    }

    /// Clients that have a state, in id order.
    pub fn present(&self) -> impl Iterator<Item = u64> + '_ {
        self.clients
            .iter()
            .filter(|(_, known)| known.state.is_some())
            .map(|(client_id, _)| *client_id)
    }

    /// A client's state (JSON), if it has one.
    pub fn state(&self, client_id: u64) -> Option<&str> {
        self.clients.get(&client_id)?.state.as_deref()
    }

    /// A client's clock, if it is known.
    pub fn clock(&self, client_id: u64) -> Option<u64> {
        self.clients.get(&client_id).map(|known| known.clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_vectors::hex;

    fn entry(client_id: u64, clock: u64, state: Option<&str>) -> AwarenessEntry {
        AwarenessEntry {
            client_id,
            clock,
            state: state.map(str::to_owned),
        }
    }

    #[test]
    fn the_vectors_from_the_notes() {
        // The notes' frames carry the outer type 1 and a length first.
        let join = hex("01 01 01 0c 7b 22 75 73 65 72 22 3a 22 61 22 7d");
        assert_eq!(
            decode_update(&join).unwrap(),
            [entry(1, 1, Some(r#"{"user":"a"}"#))]
        );
        assert_eq!(encode_update([(1, 1, Some(r#"{"user":"a"}"#))]), join);
        let leave = hex("01 01 02 04 6e 75 6c 6c");
        assert_eq!(decode_update(&leave).unwrap(), [entry(1, 2, None)]);
        assert_eq!(encode_update([(1, 2, None)]), leave);
    }

    #[test]
    fn bad_updates_are_refused() {
        for bad in [
            "",
            "01 01 01",
            "01 01 01 02 7b 7d 00", // trailing byte
            "01 01 01 03 7b 7b 7d", // not JSON
            "ff ff ff 0f",          // a huge count, no entries
        ] {
            assert!(
                decode_update(&hex(bad)).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn the_clock_rule() {
        let mut table = AwarenessTable::default();
        let changes = table.apply(vec![entry(1, 0, Some("{}"))], 0);
        assert!(
            changes.is_empty(),
            "an unknown client at clock 0 counts as known"
        );
        let changes = table.apply(vec![entry(2, 5, None)], 0);
        assert!(changes.is_empty(), "null for an unknown client is nothing");
        assert_eq!(table.clock(2), None, "and leaves no record");

        let changes = table.apply(vec![entry(1, 1, Some(r#"{"a":1}"#))], 0);
        assert_eq!(changes.added, [1]);
        let changes = table.apply(vec![entry(1, 1, Some(r#"{"a":2}"#))], 0);
        assert!(changes.is_empty(), "same clock, a state: old news");
        let changes = table.apply(vec![entry(1, 2, Some(r#"{"a":1}"#))], 0);
        assert_eq!(changes.updated, [1], "a renewal counts even when unchanged");
        let changes = table.apply(vec![entry(1, 1, None)], 0);
        assert!(changes.is_empty(), "an older null is ignored");
        let changes = table.apply(vec![entry(1, 2, None)], 0);
        assert_eq!(
            changes.removed,
            [1],
            "null at the same clock: the owner left"
        );
        assert_eq!(table.state(1), None);
        let changes = table.apply(vec![entry(1, 3, Some("{}"))], 0);
        assert_eq!(changes.added, [1], "back again with a newer clock");
    }

    #[test]
    fn removal_bumps_the_clock_and_sweep_drops_stale_states() {
        let mut table = AwarenessTable::default();
        table.apply(vec![entry(1, 4, Some("{}")), entry(2, 1, Some("{}"))], 0);
        assert_eq!(table.remove([1, 3], 10), [1]);
        assert_eq!(table.encode(&[1]), encode_update([(1, 5, None)]));

        table.apply(vec![entry(2, 2, Some("{}"))], 20_000);
        assert!(table.sweep(29_999).is_empty(), "nothing is 30 s old yet");
        assert_eq!(table.clock(1), Some(5), "the removed client is remembered");
        assert_eq!(table.sweep(30_010), Vec::<u64>::new());
        assert_eq!(table.clock(1), None, "then forgotten");
        assert_eq!(table.sweep(50_000), [2], "30 s without renewal");
        assert_eq!(table.encode(&[2]), encode_update([(2, 3, None)]));
        assert_eq!(table.encode_present(), None);
    }
}
