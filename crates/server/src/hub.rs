//! Channel fan-out on one node.
//!
//! Every node watches the state store's event feed (fleet-wide: Redis
//! pub/sub in a fleet, a broadcast in-process) from start-up on, so a
//! subscription registered here receives every publish made after it — the
//! condition for answering SUBSCRIBE (protocol.md §6.2). The hub hands each event
//! to the local subscribers' queues; each connection seals and writes its
//! own copy (sensitive events are encrypted per connection).
//!
//! Queues are bounded per connection, in events (`[limits] send_queue`) and
//! in bytes (`send_queue_bytes`): a subscriber whose queue is full by either
//! gets one final `Overflow` message and is dropped from the hub, so a slow
//! consumer is disconnected and never slows the others, and the events it
//! holds back from being freed stay within `send_queue_bytes` (rather than
//! `send_queue` × `max_message_size`, about 1 GiB by default). An empty
//! queue takes one event of any size, so a single event larger than the
//! byte bound is delivered rather than disconnecting every subscriber.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::channels::ChannelTable;
use crate::metrics::Counter;
use crate::store::{
    HistoryEvent, HistoryPolicy, HistoryRead, Position, StateStore, StoreError, StoreEvent,
    StreamAt,
};

/// Most events one gap fill reads from a stream; a longer gap is announced
/// with RESYNC instead.
const MAX_GAP_FILL: usize = 10_000;

/// How long a failed stream read for a gap fill or a catch-up is retried
/// before the gap is given up on (RESYNC) or left for the next event.
const READ_RETRY_FOR: Duration = Duration::from_secs(5);

/// What a connection receives from the hub. Every variant is one thin
/// pointer, so a queued message (and a queue's spare slot) is 16 bytes.
#[derive(Debug)]
pub(crate) enum HubMessage {
    /// An event on a subscribed channel.
    Event(Arc<StoreEvent>),
    /// Presence changes of this channel wait for the connection
    /// ([`Hub::take_presence`]): changes are coalesced per user while they
    /// wait, so a burst of joins costs one entry per user, not one queued
    /// message per change.
    PresencePending(Arc<String>),
    /// Events of a history channel up to this position may have been
    /// missed on this node, and history could not fill the gap
    /// (protocol.md §6.5): subscribers that had not seen up to it get
    /// RESYNC.
    Resync(Box<(Arc<str>, Position)>),
    /// The queue overflowed: the connection must close (4429).
    Overflow,
}

const _: () = assert!(std::mem::size_of::<HubMessage>() <= 16);

/// What an event costs in a queue: its payload and channel name (the
/// frame sealed from it is these and a few dozen bytes).
fn event_bytes(event: &StoreEvent) -> usize {
    event.payload.len().saturating_add(event.channel.len())
}

/// A connection's queue: the hub pushes, the connection's task pops. A
/// `VecDeque` (no allocation until used) and a `Notify` rather than an mpsc
/// channel, whose first block of 32 slots and cache-padded halves every
/// subscribed connection would hold while idle (≈ 1 KiB each).
#[derive(Debug, Default)]
struct Inbox {
    messages: Mutex<VecDeque<HubMessage>>,
    /// How many `messages` holds, so that looking into an empty inbox (the
    /// connection does before every wait) takes no lock.
    len: AtomicUsize,
    ready: tokio::sync::Notify,
    /// The mailbox is gone: messages are dropped.
    closed: AtomicBool,
    /// Events queued and their bytes (the hub adds, the mailbox takes away).
    events: AtomicUsize,
    bytes: AtomicUsize,
}

impl Inbox {
    fn messages(&self) -> std::sync::MutexGuard<'_, VecDeque<HubMessage>> {
        self.messages.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Queues kept after a burst up to this many slots; a larger one is given
/// back once it is empty.
const KEPT_QUEUE_CAPACITY: usize = 16;

/// A connection's mailbox.
#[derive(Debug)]
pub(crate) struct Mailbox {
    pub(crate) id: u64,
    inbox: Arc<Inbox>,
}

impl Mailbox {
    /// Waits for the next message and frees its place in the queue.
    pub(crate) async fn recv(&mut self) -> HubMessage {
        loop {
            if let Some(msg) = self.try_recv() {
                return msg;
            }
            // A push after the check above left a permit: no lost wake-up.
            self.inbox.ready.notified().await;
        }
    }

    /// A message that is already queued, without waiting.
    pub(crate) fn try_recv(&mut self) -> Option<HubMessage> {
        if self.inbox.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let msg = {
            let mut messages = self.inbox.messages();
            let msg = messages.pop_front();
            if msg.is_some() {
                self.inbox.len.fetch_sub(1, Ordering::Release);
            }
            if messages.is_empty() && messages.capacity() > KEPT_QUEUE_CAPACITY {
                messages.shrink_to_fit();
            }
            msg
        };
        if let Some(HubMessage::Event(event)) = &msg {
            self.inbox.events.fetch_sub(1, Ordering::Relaxed);
            self.inbox
                .bytes
                .fetch_sub(event_bytes(event), Ordering::Relaxed);
        }
        msg
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.inbox.closed.store(true, Ordering::Relaxed);
        let mut messages = self.inbox.messages();
        messages.clear();
        self.inbox.len.store(0, Ordering::Release);
    }
}

/// One subscriber's presence changes of one channel, waiting to be sent:
/// per user only the net change (a join and a leave of one user cancel
/// out: the subscriber already had it right), in the order users first
/// changed.
#[derive(Debug, Default)]
struct PendingPresence {
    next: u64,
    by_seq: std::collections::BTreeMap<u64, (String, bool)>,
    by_user: HashMap<String, u64>,
}

impl PendingPresence {
    fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }

    fn push(&mut self, change: &crate::store::PresenceChange) {
        use crate::store::PresenceChange;
        let (user, joined) = match change {
            PresenceChange::Join(u) => (u, true),
            PresenceChange::Leave(u) => (u, false),
        };
        if let Some(seq) = self.by_user.remove(user)
            && let Some((_, pending)) = self.by_seq.remove(&seq)
            && pending != joined
        {
            // Opposite changes: nothing to tell.
            return;
        }
        let seq = self.next;
        self.next += 1;
        self.by_seq.insert(seq, (user.clone(), joined));
        self.by_user.insert(user.clone(), seq);
    }

    fn take(self) -> Vec<crate::store::PresenceChange> {
        use crate::store::PresenceChange;
        self.by_seq
            .into_values()
            .map(|(user, joined)| {
                if joined {
                    PresenceChange::Join(user)
                } else {
                    PresenceChange::Leave(user)
                }
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
struct Subscriber {
    inbox: Arc<Inbox>,
}

impl Subscriber {
    /// Queues `msg` for the connection (dropped if its mailbox is gone).
    fn send(&self, msg: HubMessage) {
        if self.inbox.closed.load(Ordering::Relaxed) {
            return;
        }
        {
            let mut messages = self.inbox.messages();
            messages.push_back(msg);
            self.inbox.len.fetch_add(1, Ordering::Release);
        }
        self.inbox.ready.notify_one();
    }

    /// Takes a place in the queue for an event of `bytes`: false if the
    /// queue is full by count or by bytes (an empty queue takes any one
    /// event). Only the dispatch task adds, so check-then-add is not racy;
    /// the mailbox only ever frees.
    fn admit(&self, bytes: usize, max_events: usize, max_bytes: usize) -> bool {
        let events = self.inbox.events.load(Ordering::Relaxed);
        let held = self.inbox.bytes.load(Ordering::Relaxed);
        if events >= max_events || (events > 0 && held.saturating_add(bytes) > max_bytes) {
            return false;
        }
        self.inbox.events.fetch_add(1, Ordering::Relaxed);
        self.inbox.bytes.fetch_add(bytes, Ordering::Relaxed);
        true
    }
}

#[derive(Debug, Default)]
struct Inner {
    channels: Mutex<HashMap<String, HashMap<u64, Subscriber>>>,
    /// For each history channel with subscribers here: the last position
    /// this node delivered, so that a jump in offsets (events this node
    /// never got, e.g. while its Redis connection was down) is filled from
    /// the stream before newer events (protocol.md §6.5).
    streams: Mutex<HashMap<String, (Arc<str>, u64)>>,
    /// Mailboxes that asked for PRESENCE_EVENTs, per channel.
    presence_listeners: Mutex<HashMap<String, std::collections::HashSet<u64>>>,
    /// Presence changes not yet taken, per (mailbox, channel).
    pending_presence: Mutex<HashMap<(u64, String), PendingPresence>>,
    mailboxes: Mutex<HashMap<u64, Subscriber>>,
    next_id: AtomicU64,
    /// The state store, once started: told when a channel loses its last
    /// subscriber here (a store with per-channel fan-out stops receiving it).
    state: OnceLock<Arc<dyn StateStore>>,
    queue_limit: AtomicUsize,
    queue_bytes_limit: AtomicUsize,
}

/// The node's subscriptions.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hub {
    inner: Arc<Inner>,
}

impl Inner {
    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<u64, Subscriber>>> {
        // Critical sections are single map operations; a poisoned lock holds consistent data.
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mailboxes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Subscriber>> {
        self.mailboxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Arc<str>, u64)>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn presence_listeners(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, std::collections::HashSet<u64>>> {
        self.presence_listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn pending_presence(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(u64, String), PendingPresence>> {
        self.pending_presence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A presence change goes to the subscribers that asked for presence
    /// events. It is not queued as a message: it joins the subscriber's
    /// pending changes of that channel (coalesced per user), and one
    /// `PresencePending` notice is queued when there were none.
    fn dispatch_presence(&self, event: &StoreEvent) {
        let Some(change) = &event.presence else {
            return;
        };
        let listeners: Vec<u64> = match self.presence_listeners().get(&event.channel) {
            Some(ids) => ids.iter().copied().collect(),
            None => return,
        };
        let channel = Arc::new(event.channel.clone());
        let subs: Vec<(u64, Subscriber)> = match self.channels().get(&event.channel) {
            Some(subs) => listeners
                .into_iter()
                .filter_map(|id| subs.get(&id).map(|s| (id, s.clone())))
                .collect(),
            None => return,
        };
        for (id, sub) in subs {
            let was_empty = {
                let mut pending = self.pending_presence();
                let entry = pending.entry((id, event.channel.clone())).or_default();
                let was_empty = entry.is_empty();
                entry.push(change);
                was_empty
            };
            if was_empty {
                sub.send(HubMessage::PresencePending(channel.clone()));
            }
        }
    }

    /// Sends `message` to every subscriber of `channel` (not queue-counted:
    /// a notice is small and rare).
    fn notify(&self, channel: &str, message: impl Fn() -> HubMessage) {
        if let Some(subs) = self.channels().get(channel) {
            for sub in subs.values() {
                sub.send(message());
            }
        }
    }

    fn dispatch(&self, event: StoreEvent) {
        let limit = self.queue_limit.load(Ordering::Relaxed).max(1);
        let bytes_limit = self.queue_bytes_limit.load(Ordering::Relaxed).max(1);
        let bytes = event_bytes(&event);
        let event = Arc::new(event);
        let mut overflowed = Vec::new();
        if let Some(subs) = self.channels().get(&event.channel) {
            for (id, sub) in subs {
                if !sub.admit(bytes, limit, bytes_limit) {
                    overflowed.push(*id);
                    continue;
                }
                sub.send(HubMessage::Event(event.clone()));
            }
        }
        for id in overflowed {
            if let Some(sub) = self.mailboxes().remove(&id) {
                sub.send(HubMessage::Overflow);
            }
            self.channels().values_mut().for_each(|subs| {
                subs.remove(&id);
            });
        }
    }
}

/// The hub's task: the feed, and the stream positions it fills gaps of.
struct Feed {
    inner: Arc<Inner>,
    state: Arc<dyn StateStore>,
    channels: ChannelTable,
    gaps_filled: Arc<Counter>,
}

impl Feed {
    /// One event from the feed: plain ones go straight out; an event of a
    /// history channel is first checked against the last position this node
    /// delivered, and a gap before it filled from the stream (or, if the
    /// stream no longer has it, announced with RESYNC).
    async fn on_event(&self, event: StoreEvent) {
        if event.presence.is_some() {
            self.inner.dispatch_presence(&event);
            return;
        }
        let Some(at) = event.at.clone() else {
            self.inner.dispatch(event);
            return;
        };
        let last = self.inner.streams().get(&event.channel).cloned();
        match last {
            // Not tracked: nobody here subscribes to it (or just began to).
            None => {}
            Some((epoch, offset)) if epoch == at.epoch => {
                if at.offset <= offset {
                    // Already delivered (filled from the stream earlier).
                    return;
                }
                if at.offset > offset + 1 {
                    self.fill(&event.channel, &epoch, offset, at.offset - 1)
                        .await;
                }
            }
            // A new epoch: the old one's last events may be lost.
            // Subscribers see the epoch change on the event itself and are
            // told (RESYNC); what the new epoch holds before this event
            // (published before this node heard of it: after a failover,
            // say) is filled first, so only the old epoch's tail is missed.
            Some(_) if at.offset > 1 => {
                self.fill(&event.channel, &at.epoch, 0, at.offset - 1).await;
            }
            Some(_) => {}
        }
        self.advance(&event.channel, &at);
        self.inner.dispatch(event);
    }

    /// Records that `channel` was delivered up to `at` (if still tracked).
    fn advance(&self, channel: &str, at: &StreamAt) {
        if let Some(last) = self.inner.streams().get_mut(channel) {
            let newer = last.0 != at.epoch || at.offset > last.1;
            if newer {
                *last = (at.epoch.clone(), at.offset);
            }
        }
    }

    /// Delivers the events of `channel` after `from` up to `to` (one epoch)
    /// from its stream; if the stream no longer has them all, tells the
    /// subscribers they may have missed events up to `to`.
    async fn fill(&self, channel: &str, epoch: &Arc<str>, from: u64, to: u64) {
        let Some(policy) = self.channels.lookup(channel).and_then(|m| m.rule.history) else {
            return;
        };
        let since = Position {
            epoch: epoch.to_string(),
            offset: from,
        };
        let wanted = usize::try_from(to - from).unwrap_or(usize::MAX);
        let read = if wanted <= MAX_GAP_FILL {
            let deadline = tokio::time::Instant::now() + READ_RETRY_FOR;
            match self
                .read_stream(channel, &since, wanted, &policy, deadline)
                .await
            {
                Ok(read) => Some(read),
                Err(e) => {
                    tracing::warn!(error = %e, channel, "cannot fill a gap from the stream");
                    None
                }
            }
        } else {
            None
        };
        let events: Vec<HistoryEvent> = match read {
            Some(read) if read.continues => {
                read.events.into_iter().filter(|e| e.offset <= to).collect()
            }
            _ => Vec::new(),
        };
        let complete = events.len() as u64 == to - from;
        if complete {
            self.gaps_filled.inc();
            for e in events {
                let at = StreamAt {
                    epoch: epoch.clone(),
                    offset: e.offset,
                };
                self.advance(channel, &at);
                self.inner.dispatch(StoreEvent {
                    channel: channel.to_owned(),
                    payload: e.payload,
                    at: Some(at),
                    presence: None,
                });
            }
        } else {
            let position = Position {
                epoch: epoch.to_string(),
                offset: to,
            };
            let name: Arc<str> = channel.into();
            self.advance(
                channel,
                &StreamAt {
                    epoch: epoch.clone(),
                    offset: to,
                },
            );
            self.inner.notify(channel, || {
                HubMessage::Resync(Box::new((name.clone(), position.clone())))
            });
        }
    }

    /// Reads `channel`'s stream after `since`, retrying a failed read until
    /// `deadline` (protocol.md §6.5: only what the stream no longer holds
    /// becomes a RESYNC). A read right after the feed reconnects usually
    /// meets the command connection's dead socket first (it reconnects only
    /// once a command has failed on it), so one failure says little.
    async fn read_stream(
        &self,
        channel: &str,
        since: &Position,
        limit: usize,
        policy: &HistoryPolicy,
        deadline: tokio::time::Instant,
    ) -> Result<HistoryRead, StoreError> {
        let mut pause = Duration::from_millis(50);
        loop {
            match self
                .state
                .read_history(channel, Some(since), limit, policy)
                .await
            {
                Ok(read) => return Ok(read),
                Err(e) if tokio::time::Instant::now() + pause < deadline => {
                    tracing::debug!(error = %e, channel, retry_in = ?pause, "a stream read failed");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// After a lag notice (this node may have missed events anywhere):
    /// brings every tracked stream up to its current position.
    async fn catch_up(&self) {
        // One retry budget for the whole pass: if the store stays away, the
        // next reconnection's lag notice starts another.
        let deadline = tokio::time::Instant::now() + READ_RETRY_FOR;
        let tracked: Vec<(String, (Arc<str>, u64))> = self
            .inner
            .streams()
            .iter()
            .map(|(c, p)| (c.clone(), p.clone()))
            .collect();
        for (channel, (epoch, offset)) in tracked {
            let Some(policy) = self.channels.lookup(&channel).and_then(|m| m.rule.history) else {
                continue;
            };
            let since = Position {
                epoch: epoch.to_string(),
                offset,
            };
            match self
                .read_stream(&channel, &since, 0, &policy, deadline)
                .await
            {
                Ok(read) if read.position.epoch == *epoch => {
                    if read.position.offset > offset {
                        self.fill(&channel, &epoch, offset, read.position.offset)
                            .await;
                    }
                }
                Ok(read) => {
                    // A new epoch: everything of the old one after `offset`
                    // may be lost. The new one is delivered from its start
                    // where the stream still holds it (subscribers are told
                    // RESYNC by its first event), else from its head.
                    let epoch: Arc<str> = read.position.epoch.as_str().into();
                    let head = read.position.offset;
                    if head > 0 {
                        self.advance(
                            &channel,
                            &StreamAt {
                                epoch: epoch.clone(),
                                offset: 0,
                            },
                        );
                        self.fill(&channel, &epoch, 0, head).await;
                        continue;
                    }
                    self.advance(&channel, &StreamAt { epoch, offset: 0 });
                    let name: Arc<str> = channel.as_str().into();
                    let position = read.position;
                    self.inner.notify(&channel, || {
                        HubMessage::Resync(Box::new((name.clone(), position.clone())))
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, channel, "cannot check a stream after a lag");
                }
            }
        }
    }
}

impl Hub {
    /// Starts consuming the store's event feed (once). Must run before the
    /// node accepts connections, so no SUBSCRIBE is answered early. A
    /// connection's queue holds at most `limits.send_queue` events and
    /// `limits.send_queue_bytes` bytes of them.
    pub(crate) fn start(
        &self,
        state: &Arc<dyn StateStore>,
        limits: &crate::config::Limits,
        channels: &ChannelTable,
        gaps_filled: &Arc<Counter>,
    ) {
        if self.inner.state.set(state.clone()).is_err() {
            return;
        }
        self.inner
            .queue_limit
            .store(limits.send_queue, Ordering::Relaxed);
        self.inner
            .queue_bytes_limit
            .store(limits.send_queue_bytes, Ordering::Relaxed);
        let mut rx = state.watch_events();
        let feed = Feed {
            inner: self.inner.clone(),
            state: state.clone(),
            channels: channels.clone(),
            gaps_filled: gaps_filled.clone(),
        };
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(event) => feed.on_event(event).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "event feed lagged; events were dropped on this node (history channels are caught up from their streams)"
                        );
                        feed.catch_up().await;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    /// A mailbox for a new connection.
    pub(crate) fn mailbox(&self) -> Mailbox {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let inbox = Arc::new(Inbox::default());
        self.inner.mailboxes().insert(
            id,
            Subscriber {
                inbox: inbox.clone(),
            },
        );
        Mailbox { id, inbox }
    }

    /// Adds mailbox `id` to `channel`. Returns false if the mailbox is gone
    /// (it overflowed).
    pub(crate) fn subscribe(&self, id: u64, channel: &str) -> bool {
        let Some(sub) = self.inner.mailboxes().get(&id).cloned() else {
            return false;
        };
        self.inner
            .channels()
            .entry(channel.to_owned())
            .or_default()
            .insert(id, sub);
        true
    }

    /// Whether mailbox `id` gets `channel`'s presence events.
    pub(crate) fn listen_presence(&self, id: u64, channel: &str, on: bool) {
        let mut listeners = self.inner.presence_listeners();
        if on {
            listeners.entry(channel.to_owned()).or_default().insert(id);
        } else if let Some(ids) = listeners.get_mut(channel) {
            ids.remove(&id);
            if ids.is_empty() {
                listeners.remove(channel);
            }
        }
    }

    /// The presence changes of `channel` waiting for mailbox `id`, oldest
    /// first (after a `PresencePending` notice); empty if none.
    pub(crate) fn take_presence(
        &self,
        id: u64,
        channel: &str,
    ) -> Vec<crate::store::PresenceChange> {
        self.inner
            .pending_presence()
            .remove(&(id, channel.to_owned()))
            .map(PendingPresence::take)
            .unwrap_or_default()
    }

    /// Removes mailbox `id` from `channel`.
    pub(crate) fn unsubscribe(&self, id: u64, channel: &str) {
        self.listen_presence(id, channel, false);
        self.inner
            .pending_presence()
            .remove(&(id, channel.to_owned()));
        let mut channels = self.inner.channels();
        if let Some(subs) = channels.get_mut(channel) {
            subs.remove(&id);
            if subs.is_empty() {
                channels.remove(channel);
                self.inner.streams().remove(channel);
                // Under the lock: a SUBSCRIBE after this (which watches the
                // channel again) is ordered after the unwatch.
                if let Some(state) = self.inner.state.get() {
                    state.unwatch_channel(channel);
                }
            }
        }
    }

    /// A subscriber of history channel `channel` here knows it up to
    /// `position` (its SUBSCRIBE read the stream): the node starts tracking
    /// the stream there if it did not yet. A tracked position is never
    /// moved forward from here: events up to a later one may still be on
    /// their way to the other subscribers.
    pub(crate) fn note_position(&self, channel: &str, position: &Position) {
        self.inner
            .streams()
            .entry(channel.to_owned())
            .or_insert_with(|| (position.epoch.as_str().into(), position.offset));
    }

    /// Forgets a connection and its subscriptions.
    pub(crate) fn remove(&self, id: u64, channels: impl IntoIterator<Item = String>) {
        self.inner.mailboxes().remove(&id);
        for channel in channels {
            self.unsubscribe(id, &channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::store::MemoryStateStore;

    fn limits(send_queue: usize, send_queue_bytes: usize) -> Limits {
        Limits {
            send_queue,
            send_queue_bytes,
            ..Limits::default()
        }
    }

    /// Everything waiting in `mailbox` now (waiting briefly for the feed).
    async fn drain(mailbox: &mut Mailbox) -> Vec<HubMessage> {
        let mut got = Vec::new();
        while let Ok(m) =
            tokio::time::timeout(std::time::Duration::from_millis(200), mailbox.recv()).await
        {
            got.push(m);
        }
        got
    }

    #[tokio::test]
    async fn a_burst_of_presence_changes_is_one_notice_and_coalesced_per_user() {
        use crate::store::{PresenceChange, PresenceMember};
        let state: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
        let hub = Hub::default();
        // A queue of 2 events: the burst below would overflow it if each
        // change were queued.
        hub.start(
            &state,
            &limits(2, 1 << 20),
            &ChannelTable::default(),
            &Arc::default(),
        );
        let mut watcher = hub.mailbox();
        assert!(hub.subscribe(watcher.id, "room"));
        hub.listen_presence(watcher.id, "room", true);
        let member = |user: &str, n: u32| PresenceMember {
            channel: "room".into(),
            user: user.into(),
            member: format!("n:{n}"),
        };
        let ttl = std::time::Duration::from_secs(30);
        for i in 0..100 {
            state
                .presence_add(&member(&format!("u{i:03}"), i), ttl)
                .await
                .unwrap();
        }
        // bob joins and leaves before the watcher reads: nothing to tell.
        state.presence_add(&member("bob", 900), ttl).await.unwrap();
        state.presence_remove(&member("bob", 900)).await.unwrap();
        state.presence_remove(&member("u007", 7)).await.unwrap();
        let got = drain(&mut watcher).await;
        assert!(
            matches!(got.as_slice(), [HubMessage::PresencePending(c)] if &**c == "room"),
            "one notice, no overflow: {got:?}"
        );
        let changes = hub.take_presence(watcher.id, "room");
        let expected: Vec<PresenceChange> = (0..100)
            .filter(|i| *i != 7)
            .map(|i| PresenceChange::Join(format!("u{i:03}")))
            .collect();
        assert_eq!(
            changes, expected,
            "in order, u007's join and leave cancelled, bob's too"
        );
        assert!(hub.take_presence(watcher.id, "room").is_empty());
        // The next change queues a new notice.
        state.presence_remove(&member("u001", 1)).await.unwrap();
        assert!(matches!(
            drain(&mut watcher).await.as_slice(),
            [HubMessage::PresencePending(_)]
        ));
        assert_eq!(
            hub.take_presence(watcher.id, "room"),
            [PresenceChange::Leave("u001".into())]
        );
    }

    #[tokio::test]
    async fn a_queue_is_bounded_in_bytes_and_an_empty_one_takes_any_one_event() {
        let state: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
        let hub = Hub::default();
        // 1000 events, but only 10 000 bytes.
        hub.start(
            &state,
            &limits(1000, 10_000),
            &ChannelTable::default(),
            &Arc::default(),
        );
        let mut slow = hub.mailbox();
        let mut big = hub.mailbox();
        assert!(hub.subscribe(slow.id, "c"));
        assert!(hub.subscribe(big.id, "big"));
        // 3000-byte events (+ 1 for the name): three fit, the fourth overflows.
        for _ in 0..5 {
            state.publish_event("c", &[0; 3000]).await.unwrap();
        }
        let got = drain(&mut slow).await;
        let kinds: Vec<_> = got
            .iter()
            .map(|m| matches!(m, HubMessage::Event(_)))
            .collect();
        assert_eq!(kinds, [true, true, true, false], "{got:?}");
        assert!(matches!(got[3], HubMessage::Overflow));
        // Freed as taken: nothing is counted once the queue is read.
        assert_eq!(slow.inbox.bytes.load(Ordering::Relaxed), 0);
        // One event over the bound, into an empty queue: delivered.
        state.publish_event("big", &[0; 50_000]).await.unwrap();
        let got = drain(&mut big).await;
        assert!(matches!(got.as_slice(), [HubMessage::Event(_)]), "{got:?}");
        assert_eq!(big.inbox.events.load(Ordering::Relaxed), 0);
        // Two of them: the second does not fit behind the first.
        state.publish_event("big", &[0; 50_000]).await.unwrap();
        state.publish_event("big", &[0; 50_000]).await.unwrap();
        let got = drain(&mut big).await;
        assert!(
            matches!(got.as_slice(), [HubMessage::Event(_), HubMessage::Overflow]),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn events_reach_subscribers_and_overflow_disconnects_only_the_slow_one() {
        let state: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
        let hub = Hub::default();
        hub.start(
            &state,
            &limits(2, 1 << 20),
            &ChannelTable::default(),
            &Arc::default(),
        );
        let mut fast = hub.mailbox();
        let mut slow = hub.mailbox();
        assert!(hub.subscribe(fast.id, "news"));
        assert!(hub.subscribe(slow.id, "news"));
        for i in 0..4u8 {
            state.publish_event("news", &[i]).await.unwrap();
            // The fast consumer keeps up.
            match tokio::time::timeout(std::time::Duration::from_secs(2), fast.recv())
                .await
                .unwrap()
            {
                HubMessage::Event(e) => assert_eq!(&e.payload[..], &[i]),
                other => panic!("{other:?}"),
            }
        }
        let mut got = Vec::new();
        while let Ok(m) =
            tokio::time::timeout(std::time::Duration::from_millis(200), slow.recv()).await
        {
            got.push(m);
        }
        assert!(
            matches!(
                got.as_slice(),
                [
                    HubMessage::Event(_),
                    HubMessage::Event(_),
                    HubMessage::Overflow
                ]
            ),
            "{got:?}"
        );
        assert!(
            !hub.subscribe(slow.id, "news"),
            "an overflowed mailbox is gone"
        );
        hub.unsubscribe(fast.id, "news");
        state.publish_event("news", b"x").await.unwrap();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(100), fast.recv())
                .await
                .is_err()
        );
    }
}
