//! In-process stores: the default [`StateStore`] of a single node, and a
//! [`CredentialStore`] for tests and embedding.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::history::select;
use super::{
    CredentialStore, ExchangeAdmission, ExchangeQuota, FailureLimit, HistoryEvent, HistoryPolicy,
    HistoryRead, Position, PresenceChange, PresenceList, PresenceMember, SealedSession, StateStore,
    StoreError, StoreEvent, StreamAt, UserRecord, unix_now,
};

/// How many revocations a slow watcher may fall behind before it sees
/// `RecvError::Lagged`. A power of two (tokio rounds up to one anyway), so
/// the Redis store's lag notice knows exactly how many fillers to send.
pub(super) const REVOCATION_CHANNEL_CAPACITY: usize = 1024;

/// How many events a slow watcher may fall behind before it sees
/// `RecvError::Lagged`; a power of two, like
/// [`REVOCATION_CHANNEL_CAPACITY`]. Memory held for a lagging watcher is at
/// most this many events.
pub(super) const EVENT_CHANNEL_CAPACITY: usize = 4096;

/// A map sweeps its expired entries when it has grown to this many entries
/// or to twice its size after the previous sweep, whichever is larger: the
/// sweep cost is amortized O(1) per insert and the map never holds more
/// than about twice its live entries.
const MIN_SWEEP_LEN: usize = 64;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the maps consistent, so a panic in
    // another thread holding the lock is no reason to fail here.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A map whose entries expire, swept on insert.
struct ExpiringMap<V> {
    entries: HashMap<String, V>,
    next_sweep_len: usize,
}

impl<V> ExpiringMap<V> {
    fn new() -> Self {
        Self {
            entries: HashMap::new(),
            next_sweep_len: MIN_SWEEP_LEN,
        }
    }

    /// Inserts, first sweeping entries for which `expired` holds if the map
    /// has grown enough since the last sweep.
    fn insert(&mut self, key: String, value: V, expired: impl Fn(&V) -> bool) {
        if self.entries.len() >= self.next_sweep_len {
            self.sweep(expired);
        }
        self.entries.insert(key, value);
    }

    fn sweep(&mut self, expired: impl Fn(&V) -> bool) {
        self.entries.retain(|_, v| !expired(v));
        self.entries.shrink_to(self.entries.len() * 2);
        self.next_sweep_len = (self.entries.len() * 2).max(MIN_SWEEP_LEN);
    }
}

struct Exchange {
    /// Deadline and insertion number: the exchange's place in the indexes.
    slot: Slot,
    group: String,
    state: Zeroizing<Vec<u8>>,
}

/// An exchange's deadline, made unique by an insertion number.
type Slot = (Instant, u64);

/// The live exchanges, indexed so that every count is exact at every call:
/// expired ones are dropped (oldest first, O(log n) each) before anything
/// is read or counted, and a taken one leaves every index at once. Memory
/// is bounded by the quotas of `put_exchange`, never by the traffic.
#[derive(Default)]
struct Exchanges {
    by_sid: HashMap<String, Exchange>,
    /// Every live exchange by deadline: the next to expire first.
    by_deadline: BTreeMap<Slot, String>,
    /// The live exchanges of each group, by deadline; no empty sets.
    groups: HashMap<String, BTreeSet<Slot>>,
    next_seq: u64,
}

impl Exchanges {
    /// Drops every exchange whose deadline is `now` or earlier.
    fn expire(&mut self, now: Instant) {
        while let Some(entry) = self.by_deadline.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let sid = entry.remove();
            self.remove(&sid);
        }
    }

    /// Removes `sid` from every index.
    fn remove(&mut self, sid: &str) -> Option<Exchange> {
        let exchange = self.by_sid.remove(sid)?;
        self.by_deadline.remove(&exchange.slot);
        if let Some(group) = self.groups.get_mut(&exchange.group) {
            group.remove(&exchange.slot);
            if group.is_empty() {
                self.groups.remove(&exchange.group);
            }
        }
        Some(exchange)
    }

    fn insert(&mut self, sid: &str, deadline: Instant, group: &str, state: Zeroizing<Vec<u8>>) {
        self.remove(sid);
        let slot = (deadline, self.next_seq);
        self.next_seq += 1;
        self.by_deadline.insert(slot, sid.to_owned());
        self.groups
            .entry(group.to_owned())
            .or_default()
            .insert(slot);
        let exchange = Exchange {
            slot,
            group: group.to_owned(),
            state,
        };
        self.by_sid.insert(sid.to_owned(), exchange);
    }

    fn group_len(&self, group: &str) -> usize {
        self.groups.get(group).map_or(0, BTreeSet::len)
    }
}

struct FailureWindow {
    count: u32,
    window_end: Instant,
}

struct State {
    exchanges: Exchanges,
    sessions: ExpiringMap<SealedSession>,
    failures: ExpiringMap<FailureWindow>,
    streams: Streams,
    presence: HashMap<String, ChannelPresence>,
}

/// One channel's presence: live members and each user's member count.
#[derive(Default)]
struct ChannelPresence {
    /// member → (user, expiry).
    members: HashMap<String, (String, Instant)>,
    counts: HashMap<String, u32>,
}

impl ChannelPresence {
    /// Adds or refreshes `member`; true if its user was not present.
    fn add(&mut self, user: &str, member: &str, expires: Instant) -> bool {
        if let Some(m) = self.members.get_mut(member) {
            m.1 = expires;
            return false;
        }
        self.members
            .insert(member.to_owned(), (user.to_owned(), expires));
        let count = self.counts.entry(user.to_owned()).or_insert(0);
        *count += 1;
        *count == 1
    }

    /// Removes `member`; its user if that was their last member.
    fn remove(&mut self, member: &str) -> Option<String> {
        let (user, _) = self.members.remove(member)?;
        let count = self.counts.get_mut(&user)?;
        *count -= 1;
        if *count == 0 {
            self.counts.remove(&user);
            return Some(user);
        }
        None
    }
}

/// One channel's stream: an epoch chosen when it is created (so a restarted
/// node starts new epochs: its history is gone, and subscribers are told),
/// the offset, and the kept events, oldest first, offsets consecutive.
struct Stream {
    epoch: Arc<str>,
    offset: u64,
    events: VecDeque<HistoryEvent>,
    bytes: usize,
    /// Forgotten after this (the policy's TTL after the last publish).
    expires: Instant,
}

impl Stream {
    fn new(now: Instant, ttl: Duration) -> Self {
        Self {
            epoch: wsgate_proto::continuity::new_epoch(&mut rand::rng()).into(),
            offset: 0,
            events: VecDeque::new(),
            bytes: 0,
            expires: now + ttl,
        }
    }

    fn position(&self) -> Position {
        Position {
            epoch: self.epoch.to_string(),
            offset: self.offset,
        }
    }

    /// Drops the oldest events until both bounds of `policy` hold.
    fn trim(&mut self, policy: &HistoryPolicy) {
        while self.events.len() > policy.keep
            || (self.bytes > policy.max_bytes && !self.events.is_empty())
        {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.payload.len();
            }
        }
    }
}

/// Every channel's stream; expired ones are dropped when touched and swept
/// as the map grows.
struct Streams {
    by_channel: HashMap<String, Stream>,
    next_sweep_len: usize,
}

impl Streams {
    /// The live stream of `channel`, created (new epoch) if it has none or
    /// its old one expired.
    fn get(&mut self, channel: &str, now: Instant, ttl: Duration) -> &mut Stream {
        if self.by_channel.len() >= self.next_sweep_len {
            self.by_channel.retain(|_, s| s.expires > now);
            self.next_sweep_len = (self.by_channel.len() * 2).max(MIN_SWEEP_LEN);
        }
        let stream = self
            .by_channel
            .entry(channel.to_owned())
            .or_insert_with(|| Stream::new(now, ttl));
        if stream.expires <= now {
            *stream = Stream::new(now, ttl);
        }
        stream
    }
}

/// The in-process [`StateStore`] of a single node.
///
/// Exchange and failure-window TTLs run on [`tokio::time::Instant`] (so tests
/// can pause time); session expiry on the wall clock
/// ([`SealedSession::expires_at`]). Expired exchanges are dropped before
/// every exchange call, so the quotas of `put_exchange` count exactly the
/// live ones; other expired entries are dropped when read and swept as the
/// maps grow, so memory stays proportional to the live entries;
/// [`sweep_expired`](Self::sweep_expired) sweeps on demand. Every call
/// runs under one lock, so each is atomic.
pub struct MemoryStateStore {
    state: Mutex<State>,
    revocations: broadcast::Sender<String>,
    events: broadcast::Sender<StoreEvent>,
}

impl MemoryStateStore {
    /// Fans a presence change out to the watchers (called under the lock,
    /// so changes reach them in the order they happened).
    fn announce(&self, channel: &str, change: PresenceChange) {
        let _ = self.events.send(StoreEvent {
            channel: channel.to_owned(),
            payload: bytes::Bytes::new(),
            at: None,
            presence: Some(change),
        });
    }

    /// An empty store.
    pub fn new() -> Self {
        let (revocations, _) = broadcast::channel(REVOCATION_CHANNEL_CAPACITY);
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        Self {
            state: Mutex::new(State {
                exchanges: Exchanges::default(),
                sessions: ExpiringMap::new(),
                failures: ExpiringMap::new(),
                streams: Streams {
                    by_channel: HashMap::new(),
                    next_sweep_len: MIN_SWEEP_LEN,
                },
                presence: HashMap::new(),
            }),
            revocations,
            events,
        }
    }

    /// Drops every expired exchange, session and failure window now (a node
    /// may call this periodically; writes also sweep as the maps grow).
    pub fn sweep_expired(&self) {
        let now = Instant::now();
        let unix = unix_now();
        let mut state = lock(&self.state);
        state.exchanges.expire(now);
        state.sessions.sweep(|s| s.is_expired_at(unix));
        state.failures.sweep(|f| f.window_end <= now);
    }

    /// Number of entries held (live or not yet swept): exchanges, sessions,
    /// failure windows. For metrics and tests.
    pub fn entry_counts(&self) -> (usize, usize, usize) {
        let state = lock(&self.state);
        (
            state.exchanges.by_sid.len(),
            state.sessions.entries.len(),
            state.failures.entries.len(),
        )
    }
}

impl Default for MemoryStateStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (exchanges, sessions, failures) = self.entry_counts();
        f.debug_struct("MemoryStateStore")
            .field("exchanges", &exchanges)
            .field("sessions", &sessions)
            .field("failure_windows", &failures)
            .field("watchers", &self.revocations.receiver_count())
            .field("event_watchers", &self.events.receiver_count())
            .finish()
    }
}

#[async_trait::async_trait]
impl StateStore for MemoryStateStore {
    async fn put_exchange(
        &self,
        sid: &str,
        state: Vec<u8>,
        ttl: Duration,
        quota: ExchangeQuota<'_>,
    ) -> Result<ExchangeAdmission, StoreError> {
        let state = Zeroizing::new(state);
        let now = Instant::now();
        let mut guard = lock(&self.state);
        let exchanges = &mut guard.exchanges;
        exchanges.expire(now);
        // A sid stored again replaces its exchange: that one does not count.
        let replaced = exchanges.by_sid.get(sid);
        let in_group = exchanges.group_len(quota.group)
            - usize::from(replaced.is_some_and(|e| e.group == quota.group));
        let in_store = exchanges.by_sid.len() - usize::from(replaced.is_some());
        let left = |slot: Option<&Slot>| slot.map_or(ttl, |(deadline, _)| *deadline - now);
        if in_group >= usize::try_from(quota.max_per_group).unwrap_or(usize::MAX) {
            let oldest = exchanges.groups.get(quota.group).and_then(BTreeSet::first);
            return Ok(ExchangeAdmission::GroupFull {
                retry_after: left(oldest),
            });
        }
        if in_store >= usize::try_from(quota.max_total).unwrap_or(usize::MAX) {
            let oldest = exchanges.by_deadline.keys().next();
            return Ok(ExchangeAdmission::StoreFull {
                retry_after: left(oldest),
            });
        }
        if ttl.is_zero() {
            // Expired at once: nothing to keep, but an older one must go.
            exchanges.remove(sid);
        } else {
            exchanges.insert(sid, now + ttl, quota.group, state);
        }
        Ok(ExchangeAdmission::Stored)
    }

    async fn take_exchange(&self, sid: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let now = Instant::now();
        let mut guard = lock(&self.state);
        guard.exchanges.expire(now);
        Ok(guard
            .exchanges
            .remove(sid)
            .map(|mut e| std::mem::take(&mut *e.state)))
    }

    async fn live_exchanges(&self) -> Result<u64, StoreError> {
        let mut guard = lock(&self.state);
        guard.exchanges.expire(Instant::now());
        Ok(u64::try_from(guard.exchanges.by_sid.len()).unwrap_or(u64::MAX))
    }

    async fn put_session(&self, id: &str, record: &SealedSession) -> Result<(), StoreError> {
        let now = unix_now();
        if record.expires_at().is_none() {
            // No sealed record: nothing that could ever open, or expire.
            lock(&self.state).sessions.entries.remove(id);
            return Ok(());
        }
        lock(&self.state)
            .sessions
            .insert(id.to_owned(), record.clone(), |s| s.is_expired_at(now));
        Ok(())
    }

    async fn get_session(&self, id: &str) -> Result<Option<SealedSession>, StoreError> {
        let now = unix_now();
        let mut state = lock(&self.state);
        match state.sessions.entries.get(id) {
            Some(s) if s.is_expired_at(now) => {
                state.sessions.entries.remove(id);
                Ok(None)
            }
            found => Ok(found.cloned()),
        }
    }

    async fn revoke_session(&self, id: &str) -> Result<(), StoreError> {
        lock(&self.state).sessions.entries.remove(id);
        // No watcher is not an error.
        let _ = self.revocations.send(id.to_owned());
        Ok(())
    }

    fn watch_revocations(&self) -> broadcast::Receiver<String> {
        self.revocations.subscribe()
    }

    async fn record_failure(
        &self,
        key: &str,
        window: Duration,
    ) -> Result<(u32, Duration), StoreError> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        if let Some(f) = state.failures.entries.get_mut(key)
            && f.window_end > now
        {
            f.count = f.count.saturating_add(1);
            return Ok((f.count, f.window_end - now));
        }
        let fresh = FailureWindow {
            count: 1,
            window_end: now + window,
        };
        state
            .failures
            .insert(key.to_owned(), fresh, |f| f.window_end <= now);
        Ok((1, window))
    }

    async fn record_failure_within(
        &self,
        limits: &[FailureLimit<'_>],
        window: Duration,
    ) -> Result<Option<Duration>, StoreError> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        // Check every counter, then count in every one, under one lock.
        let mut wait: Option<Duration> = None;
        for limit in limits {
            if let Some(f) = state.failures.entries.get(limit.key)
                && f.window_end > now
                && f.count >= limit.limit
            {
                let left = f.window_end - now;
                wait = Some(wait.map_or(left, |w| w.max(left)));
            }
        }
        if wait.is_some() {
            return Ok(wait);
        }
        for limit in limits {
            match state.failures.entries.get_mut(limit.key) {
                Some(f) if f.window_end > now => f.count = f.count.saturating_add(1),
                _ => {
                    let fresh = FailureWindow {
                        count: 1,
                        window_end: now + window,
                    };
                    state
                        .failures
                        .insert(limit.key.to_owned(), fresh, |f| f.window_end <= now);
                }
            }
        }
        Ok(None)
    }

    async fn forgive_failure(&self, key: &str) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        if let Some(f) = state.failures.entries.get_mut(key) {
            if f.window_end > now && f.count > 1 {
                f.count -= 1;
            } else {
                state.failures.entries.remove(key);
            }
        }
        Ok(())
    }

    async fn failures(&self, key: &str) -> Result<(u32, Duration), StoreError> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        match state.failures.entries.get(key) {
            Some(f) if f.window_end > now => Ok((f.count, f.window_end - now)),
            Some(_) => {
                state.failures.entries.remove(key);
                Ok((0, Duration::ZERO))
            }
            None => Ok((0, Duration::ZERO)),
        }
    }

    async fn reset_failures(&self, key: &str) -> Result<(), StoreError> {
        lock(&self.state).failures.entries.remove(key);
        Ok(())
    }

    async fn publish_event(&self, channel: &str, payload: &[u8]) -> Result<(), StoreError> {
        if !channel.is_empty() {
            // No watcher is not an error.
            let _ = self.events.send(StoreEvent {
                channel: channel.to_owned(),
                payload: bytes::Bytes::copy_from_slice(payload),
                at: None,
                presence: None,
            });
        }
        Ok(())
    }

    fn watch_events(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    async fn publish_at(
        &self,
        channel: &str,
        payload: &[u8],
        policy: &HistoryPolicy,
    ) -> Result<Position, StoreError> {
        if channel.is_empty() {
            return Err(StoreError::Unavailable("an empty channel name".into()));
        }
        let now = Instant::now();
        let payload = bytes::Bytes::copy_from_slice(payload);
        let mut state = lock(&self.state);
        let stream = state.streams.get(channel, now, policy.ttl);
        stream.offset += 1;
        stream.expires = now + policy.ttl;
        stream.bytes += payload.len();
        stream.events.push_back(HistoryEvent {
            offset: stream.offset,
            payload: payload.clone(),
        });
        stream.trim(policy);
        let position = stream.position();
        // Sent under the lock: watchers see offsets in the order they were
        // given out.
        let _ = self.events.send(StoreEvent {
            channel: channel.to_owned(),
            payload,
            at: Some(StreamAt {
                epoch: stream.epoch.clone(),
                offset: stream.offset,
            }),
            presence: None,
        });
        Ok(position)
    }

    async fn presence_add(
        &self,
        member: &PresenceMember,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let expires = Instant::now() + ttl;
        let mut state = lock(&self.state);
        let joined = state
            .presence
            .entry(member.channel.clone())
            .or_default()
            .add(&member.user, &member.member, expires);
        if joined {
            self.announce(&member.channel, PresenceChange::Join(member.user.clone()));
        }
        Ok(joined)
    }

    async fn presence_remove(&self, member: &PresenceMember) -> Result<bool, StoreError> {
        let mut state = lock(&self.state);
        let Some(channel) = state.presence.get_mut(&member.channel) else {
            return Ok(false);
        };
        let left = channel.remove(&member.member);
        if channel.members.is_empty() {
            state.presence.remove(&member.channel);
        }
        match left {
            Some(user) => {
                self.announce(&member.channel, PresenceChange::Leave(user));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn presence_refresh(
        &self,
        members: &[PresenceMember],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let expires = Instant::now() + ttl;
        let mut state = lock(&self.state);
        for m in members {
            let joined = state
                .presence
                .entry(m.channel.clone())
                .or_default()
                .add(&m.user, &m.member, expires);
            if joined {
                self.announce(&m.channel, PresenceChange::Join(m.user.clone()));
            }
        }
        Ok(())
    }

    async fn presence_sweep(&self) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let mut emptied = Vec::new();
        for (name, channel) in &mut state.presence {
            let expired: Vec<String> = channel
                .members
                .iter()
                .filter(|(_, (_, expires))| *expires <= now)
                .map(|(member, _)| member.clone())
                .collect();
            for member in expired {
                if let Some(user) = channel.remove(&member) {
                    self.announce(name, PresenceChange::Leave(user));
                }
            }
            if channel.members.is_empty() {
                emptied.push(name.clone());
            }
        }
        for name in emptied {
            state.presence.remove(&name);
        }
        Ok(())
    }

    async fn presence_list(&self, channel: &str, limit: usize) -> Result<PresenceList, StoreError> {
        let now = Instant::now();
        let state = lock(&self.state);
        let Some(presence) = state.presence.get(channel) else {
            return Ok(PresenceList::default());
        };
        let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
        for (user, expires) in presence.members.values() {
            if *expires > now {
                *counts.entry(user).or_insert(0) += 1;
            }
        }
        let truncated = counts.len() > limit;
        Ok(PresenceList {
            users: counts
                .into_iter()
                .take(limit)
                .map(|(u, n)| (u.to_owned(), n))
                .collect(),
            truncated,
        })
    }

    async fn read_history(
        &self,
        channel: &str,
        since: Option<&Position>,
        limit: usize,
        policy: &HistoryPolicy,
    ) -> Result<HistoryRead, StoreError> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let stream = state.streams.get(channel, now, policy.ttl);
        let position = stream.position();
        let oldest = stream.events.front().map(|e| e.offset);
        let (events, continues) = select(&position, stream.events.iter(), oldest, since, limit);
        Ok(HistoryRead {
            position,
            events,
            continues,
        })
    }
}

/// An in-process [`CredentialStore`], for tests and embedding.
#[derive(Default)]
pub struct MemoryCredentialStore {
    users: Mutex<BTreeMap<String, UserRecord>>,
}

impl MemoryCredentialStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl fmt::Debug for MemoryCredentialStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCredentialStore")
            .field("users", &lock(&self.users).len())
            .finish()
    }
}

#[async_trait::async_trait]
impl CredentialStore for MemoryCredentialStore {
    async fn get_user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        Ok(lock(&self.users).get(name).cloned())
    }

    async fn add_user(&self, record: UserRecord) -> Result<(), StoreError> {
        use std::collections::btree_map::Entry;
        match lock(&self.users).entry(record.name.clone()) {
            Entry::Occupied(_) => Err(StoreError::UserExists(record.name)),
            Entry::Vacant(slot) => {
                slot.insert(record);
                Ok(())
            }
        }
    }

    async fn set_user(&self, record: UserRecord) -> Result<(), StoreError> {
        lock(&self.users).insert(record.name.clone(), record);
        Ok(())
    }

    async fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        Ok(lock(&self.users).remove(name).is_some())
    }

    async fn list_users(&self) -> Result<Vec<String>, StoreError> {
        Ok(lock(&self.users).keys().cloned().collect())
    }
}
