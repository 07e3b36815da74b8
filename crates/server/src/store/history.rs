//! Channel streams (protocol.md §6.5): what a state store keeps of the
//! events of a channel with history, and the shapes its calls trade in.
//!
//! A stream is an epoch and an offset (the events published in that epoch)
//! plus the last events themselves, at most `keep` of them and at most
//! `max_bytes` of payload, trimmed exactly. A publish assigns the next
//! offset, appends to the stream and fans the event out in one atomic step,
//! so two publishers never make two events with one offset and no node
//! ever sees an event the stream lacks. A stream nobody publishes to for
//! `ttl` is forgotten: the next publish starts a new epoch.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
pub use wsgate_proto::continuity::Position;

/// How a channel pattern keeps history (`history`, `history_ttl_secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Events kept per channel (≥ 1).
    pub keep: usize,
    /// A stream nobody publishes to for this long is forgotten.
    pub ttl: Duration,
    /// Payload bytes kept per channel; older events are trimmed first.
    pub max_bytes: usize,
}

/// The stream position of an event fanned out from a channel with history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAt {
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// The event's offset in it (≥ 1).
    pub offset: u64,
}

/// One kept event.
#[derive(Clone, PartialEq, Eq)]
pub struct HistoryEvent {
    /// Its offset (≥ 1).
    pub offset: u64,
    /// Its body, as published.
    pub payload: Bytes,
}

impl std::fmt::Debug for HistoryEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Payloads may be sensitive: their length only.
        f.debug_struct("HistoryEvent")
            .field("offset", &self.offset)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// What [`StateStore::read_history`](super::StateStore::read_history) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRead {
    /// The stream's position now (a stream that did not exist is created,
    /// empty, with a new epoch).
    pub position: Position,
    /// With `since` continuing: the first `limit` events after it, oldest
    /// first. Otherwise: the last `limit` kept events.
    pub events: Vec<HistoryEvent>,
    /// Whether `since` was in the current epoch, not past its offset, and
    /// every event after it still kept: `events` then continue it exactly
    /// (up to `limit`).
    pub continues: bool,
}

impl HistoryRead {
    /// Whether the events after `since` are all here: it continues and
    /// `limit` did not cut them short.
    pub fn is_complete_after(&self, since: &Position) -> bool {
        self.continues
            && self.position.offset.saturating_sub(since.offset) == self.events.len() as u64
    }
}

/// Shared by the stores: which kept events a read returns, and whether
/// `since` continues the stream. `kept` is oldest first, offsets
/// consecutive, the last one `position.offset` (if any are kept). Only the
/// events returned are cloned, and the ones before `since` are skipped by
/// position, not looked at: a replay of M events from a stream keeping N
/// costs O(M), not O(N), under the store's lock.
pub(crate) fn select<'a>(
    position: &Position,
    kept: impl DoubleEndedIterator<Item = &'a HistoryEvent> + ExactSizeIterator,
    oldest_kept: Option<u64>,
    since: Option<&Position>,
    limit: usize,
) -> (Vec<HistoryEvent>, bool) {
    let continues = since.is_some_and(|s| {
        s.epoch == position.epoch
            && s.offset <= position.offset
            // Every event after `s` is kept: the oldest kept one is at most
            // s + 1 (or nothing after `s` exists at all).
            && (s.offset == position.offset
                || oldest_kept.is_some_and(|o| o <= s.offset.saturating_add(1)))
    });
    match (since, continues) {
        (Some(s), true) => {
            let after = s.offset;
            // Offsets are consecutive from the oldest kept one, so the first
            // event after `s` is `after + 1 - oldest` places in.
            let skip = oldest_kept.map_or(0, |o| after.saturating_add(1).saturating_sub(o));
            let events = kept
                .skip(usize::try_from(skip).unwrap_or(usize::MAX))
                .filter(|e| e.offset > after)
                .take(limit)
                .cloned()
                .collect();
            (events, true)
        }
        _ => {
            let len = kept.len();
            let events = kept.skip(len.saturating_sub(limit)).cloned().collect();
            (events, false)
        }
    }
}
