//! In-process stores: the default [`StateStore`] of a single node, and a
//! [`CredentialStore`] for tests and embedding.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::{
    CredentialStore, SessionRecord, StateStore, StoreError, StoreEvent, UserRecord, unix_now,
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
    deadline: Instant,
    state: Zeroizing<Vec<u8>>,
}

struct FailureWindow {
    count: u32,
    window_end: Instant,
}

struct State {
    exchanges: ExpiringMap<Exchange>,
    sessions: ExpiringMap<SessionRecord>,
    failures: ExpiringMap<FailureWindow>,
}

/// The in-process [`StateStore`] of a single node.
///
/// Exchange and failure-window TTLs run on [`tokio::time::Instant`] (so tests
/// can pause time); session expiry on the wall clock
/// ([`SessionRecord::expires_at`]). Expired entries are dropped when read and
/// swept as the maps grow, so memory stays proportional to the live entries;
/// [`sweep_expired`](Self::sweep_expired) sweeps on demand.
pub struct MemoryStateStore {
    state: Mutex<State>,
    revocations: broadcast::Sender<String>,
    events: broadcast::Sender<StoreEvent>,
}

impl MemoryStateStore {
    /// An empty store.
    pub fn new() -> Self {
        let (revocations, _) = broadcast::channel(REVOCATION_CHANNEL_CAPACITY);
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        Self {
            state: Mutex::new(State {
                exchanges: ExpiringMap::new(),
                sessions: ExpiringMap::new(),
                failures: ExpiringMap::new(),
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
        state.exchanges.sweep(|e| e.deadline <= now);
        state.sessions.sweep(|s| s.is_expired_at(unix));
        state.failures.sweep(|f| f.window_end <= now);
    }

    /// Number of entries held (live or not yet swept): exchanges, sessions,
    /// failure windows. For metrics and tests.
    pub fn entry_counts(&self) -> (usize, usize, usize) {
        let state = lock(&self.state);
        (
            state.exchanges.entries.len(),
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
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let exchange = Exchange {
            deadline: now + ttl,
            state: Zeroizing::new(state),
        };
        lock(&self.state)
            .exchanges
            .insert(sid.to_owned(), exchange, |e| e.deadline <= now);
        Ok(())
    }

    async fn take_exchange(&self, sid: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let now = Instant::now();
        let taken = lock(&self.state).exchanges.entries.remove(sid);
        Ok(taken
            .filter(|e| e.deadline > now)
            .map(|mut e| std::mem::take(&mut *e.state)))
    }

    async fn put_session(&self, id: &str, record: &SessionRecord) -> Result<(), StoreError> {
        let now = unix_now();
        lock(&self.state)
            .sessions
            .insert(id.to_owned(), record.clone(), |s| s.is_expired_at(now));
        Ok(())
    }

    async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
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
            });
        }
        Ok(())
    }

    fn watch_events(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
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
