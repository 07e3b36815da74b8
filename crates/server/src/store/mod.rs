//! The gateway's two stores (protocol.md §6.4).
//!
//! * [`CredentialStore`]: per user only what SCRAM needs — `salt`,
//!   `iterations`, `StoredKey`, `ServerKey` — never a password. SQLite by
//!   default ([`SqliteCredentialStore`]), PostgreSQL for fleets
//!   ([`PostgresCredentialStore`]), [`MemoryCredentialStore`] for tests and
//!   embedding.
//! * [`StateStore`]: everything short-lived that every node of a fleet must
//!   see — SCRAM exchanges between the two login requests, sessions, failure
//!   counters for rate limiting, session revocations and channel events.
//!   In-process by default ([`MemoryStateStore`]), Redis for fleets
//!   ([`RedisStateStore`]).
//!
//! [`open_state`] and [`open_credentials`] pick a backend from the
//! configuration's `state` and `credentials` strings.
//!
//! Every backend runs the same conformance suite (`store/tests.rs`); the
//! Redis and PostgreSQL ones against real servers that the tests start
//! (`store/test_servers.rs`).
//!
//! **State records are sealed** (`store/seal.rs`): a node holds its state
//! store behind one AEAD boundary keyed from `server_secret`, and the
//! [`StateStore`] trait only carries sealed sessions ([`SealedSession`]) and
//! sealed exchange bytes. Whoever can read a backend finds no session or
//! exchange key; whoever can write one cannot plant a session: a record that
//! does not open is treated as absent.

mod history;
mod memory;
mod persist;
mod postgres;
mod presence;
mod redact;
mod redis;
mod seal;
mod sqlite;

#[cfg(test)]
pub(crate) mod test_servers;
#[cfg(test)]
pub(crate) mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

pub use self::history::{HistoryEvent, HistoryPolicy, HistoryRead, Position, StreamAt};
pub use self::postgres::PostgresCredentialStore;
pub use self::presence::{DEFAULT_PRESENCE_TTL, PresenceChange, PresenceList, PresenceMember};
pub use self::redact::redact_url;
pub(crate) use self::redact::store_location;
pub use self::redis::RedisStateStore;
pub use memory::{MemoryCredentialStore, MemoryStateStore};
pub use persist::PersistentSessions;
pub(crate) use seal::{SealedState, to_json_zeroizing};
pub use sqlite::SqliteCredentialStore;
pub use wsgate_proto::scram::Verifier;

/// What the credential store keeps per user (protocol.md §4): never the password.
///
/// `name` is the SASLprep'd (stored-strings rules) user name, exactly as it
/// is looked up and as `user` appears in replies.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The stored (SASLprep'd) user name.
    pub name: String,
    /// The SCRAM salt (≥ 16 bytes).
    pub salt: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// `StoredKey = SHA-256(ClientKey)`.
    pub stored_key: [u8; 32],
    /// `ServerKey = HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl UserRecord {
    /// A record read back from a store's columns, refusing keys that are not
    /// 32 bytes; `corrupt` turns what is wrong (`user "name": …`) into the
    /// store's error.
    pub(crate) fn from_stored(
        name: String,
        salt: Vec<u8>,
        iterations: u32,
        stored_key: &[u8],
        server_key: &[u8],
        corrupt: impl Fn(String) -> StoreError,
    ) -> Result<Self, StoreError> {
        let key = |column: &str, bytes: &[u8]| {
            <[u8; 32]>::try_from(bytes).map_err(|_| {
                corrupt(format!(
                    "user {name:?}: {column} is {} bytes, expected 32",
                    bytes.len()
                ))
            })
        };
        Ok(Self {
            stored_key: key("stored_key", stored_key)?,
            server_key: key("server_key", server_key)?,
            name,
            salt,
            iterations,
        })
    }

    /// A record from a verifier computed with
    /// [`wsgate_proto::scram::derive_verifier`].
    pub fn from_verifier(
        name: impl Into<String>,
        salt: Vec<u8>,
        iterations: u32,
        verifier: &Verifier,
    ) -> Self {
        Self {
            name: name.into(),
            salt,
            iterations,
            stored_key: verifier.stored_key,
            server_key: *verifier.server_key,
        }
    }

    /// The SCRAM verifier of this user.
    pub fn verifier(&self) -> Verifier {
        Verifier {
            stored_key: self.stored_key,
            server_key: Zeroizing::new(self.server_key),
        }
    }
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("salt_len", &self.salt.len())
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `add_user` for a name that is already taken.
    #[error(
        "user {0:?} already exists; remove it first or choose another name \
         (setting a new password replaces the user instead of adding it)"
    )]
    UserExists(String),
    /// The backend could not be reached or refused to work (IO error, lock
    /// held too long, connection lost). Retrying may help.
    #[error("the store is unavailable: {0}; check that it is reachable and writable, then retry")]
    Unavailable(String),
    /// The backend answered with data wsgate cannot use.
    #[error("the store holds invalid data: {0}; repair the store or restore it from a backup")]
    Corrupt(String),
}

/// Where user verifiers live. Implementations must be cheap to share
/// (`Arc<dyn CredentialStore>`).
#[async_trait::async_trait]
pub trait CredentialStore: Send + Sync + fmt::Debug + 'static {
    /// The user named exactly `name` (no further mapping), if any.
    async fn get_user(&self, name: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Adds a user; [`StoreError::UserExists`] if the name is taken.
    async fn add_user(&self, record: UserRecord) -> Result<(), StoreError>;
    /// Adds or replaces a user.
    async fn set_user(&self, record: UserRecord) -> Result<(), StoreError>;
    /// Removes a user; `true` if it existed.
    async fn remove_user(&self, name: &str) -> Result<bool, StoreError>;
    /// Every user name, sorted by bytes (`str` order).
    async fn list_users(&self) -> Result<Vec<String>, StoreError>;
}

/// A login session (protocol.md §4.5): every node accepts it.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct SessionRecord {
    /// The stored user name.
    pub user: String,
    /// The observed IP at login, in the protocol's text form.
    pub ip: String,
    /// `fp` of the server key the login was bound to.
    pub key_fp: String,
    /// The session key; serialized as b64u.
    #[serde(with = "b64u_key")]
    pub session_key: Zeroizing<[u8; 32]>,
    /// Absolute expiry, unix seconds. The session is valid while
    /// `now < expires_at`.
    pub expires_at: u64,
}

impl SessionRecord {
    /// Whether the session has expired at `now` (unix seconds).
    pub fn is_expired_at(&self, now: u64) -> bool {
        now >= self.expires_at
    }

    /// Whole seconds left at `now` (unix seconds); 0 once expired.
    pub fn expires_in_at(&self, now: u64) -> u64 {
        self.expires_at.saturating_sub(now)
    }
}

impl fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRecord")
            .field("user", &self.user)
            .field("ip", &self.ip)
            .field("key_fp", &self.key_fp)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A session record as a [`StateStore`] keeps it: sealed (AES-256-GCM under
/// a key derived from `server_secret`, the session id in the AAD) by the
/// node before it reaches the backend. Opaque to the backend, except for
/// the clear `expires_at` in its header ([`expires_at`](Self::expires_at)),
/// which the seal authenticates.
///
/// `Debug` shows its length only.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSession(Vec<u8>);

impl SealedSession {
    /// A record as read back from a backend (any bytes: whether they open is
    /// decided when the node opens them).
    pub fn from_stored(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The clear expiry (unix seconds) of the header; None for bytes that
    /// are no sealed record of this version (a backend may drop them).
    pub fn expires_at(&self) -> Option<u64> {
        seal::header_expires_at(&self.0)
    }

    /// Whether the record has expired at `now` (unix seconds). Bytes
    /// without a header do not: they are handed to the node, which refuses
    /// (and counts) them.
    pub fn is_expired_at(&self, now: u64) -> bool {
        self.expires_at().is_some_and(|e| now >= e)
    }
}

impl fmt::Debug for SealedSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedSession")
            .field("expires_at", &self.expires_at())
            .field("len", &self.0.len())
            .finish()
    }
}

/// The current wall-clock time in unix seconds, the clock of
/// [`SessionRecord::expires_at`]. A clock before 1970 reads as 0.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The longest user name, in bytes of its SASLprep'd (stored) form, that a
/// login may name (protocol.md §4.2); a longer one is refused with
/// `e=invalid-encoding` before anything is stored.
pub const MAX_USER_NAME_LEN: usize = 256;

/// The bounds a [`StateStore::put_exchange`] checks, in the same atomic
/// step as the insert, against the exchanges live at that moment (taken and
/// expired ones no longer count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeQuota<'a> {
    /// The group the exchange counts against: the client's IP (IPv4) or IP
    /// prefix (IPv6). Any string; not secret.
    pub group: &'a str,
    /// Live exchanges one group may hold.
    pub max_per_group: u32,
    /// Live exchanges the whole store may hold (every group, every node).
    pub max_total: u32,
}

impl<'a> ExchangeQuota<'a> {
    /// No bound worth the name (tests, tools): `u32::MAX` both ways.
    pub fn unbounded(group: &'a str) -> Self {
        Self {
            group,
            max_per_group: u32::MAX,
            max_total: u32::MAX,
        }
    }
}

/// What [`StateStore::put_exchange`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum ExchangeAdmission {
    /// Stored.
    Stored,
    /// Not stored: the group already holds `max_per_group` live exchanges.
    /// `retry_after`: until its oldest one expires (at most the TTL).
    GroupFull {
        /// Time until a slot of the group frees by expiry.
        retry_after: Duration,
    },
    /// Not stored: the store already holds `max_total` live exchanges.
    StoreFull {
        /// Time until a slot frees by expiry.
        retry_after: Duration,
    },
}

/// One counter of [`StateStore::record_failure_within`]: `key` may count
/// `limit` failures per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureLimit<'a> {
    /// The counter, as for [`StateStore::record_failure`].
    pub key: &'a str,
    /// Failures the window may count; the one that would make it
    /// `limit + 1` is refused.
    pub limit: u32,
}

/// Short-lived state shared by every node of a fleet.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync + fmt::Debug + 'static {
    /// Stores a SCRAM exchange (sealed by the node: opaque bytes here) for
    /// `ttl`, unless `quota` is full: the check
    /// and the insert are one atomic step, so concurrent calls never hold
    /// more than `quota.max_per_group` live exchanges in one group, nor
    /// `quota.max_total` in the store. Exactly one `take_exchange` gets a
    /// stored exchange (atomic take-once); later ones and expired ones get
    /// None. Storing a `sid` again replaces its exchange.
    async fn put_exchange(
        &self,
        sid: &str,
        state: Vec<u8>,
        ttl: Duration,
        quota: ExchangeQuota<'_>,
    ) -> Result<ExchangeAdmission, StoreError>;
    /// Takes the exchange `sid`: `Some` at most once, `None` if unknown,
    /// already taken or expired. A taken exchange stops counting against
    /// its group and the store at once.
    async fn take_exchange(&self, sid: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Exchanges live now, in the whole store (on Redis: every node's).
    async fn live_exchanges(&self) -> Result<u64, StoreError>;
    /// Stores a sealed session; it lives until its
    /// [`expires_at`](SealedSession::expires_at) (one without is not kept).
    async fn put_session(&self, id: &str, record: &SealedSession) -> Result<(), StoreError>;
    /// The sealed session `id` exactly as stored; None if unknown, expired or
    /// revoked. Whether it opens is the node's business, not the backend's.
    async fn get_session(&self, id: &str) -> Result<Option<SealedSession>, StoreError>;
    /// Removes the session and notifies every watcher (later: every node),
    /// whether or not this store knew it.
    async fn revoke_session(&self, id: &str) -> Result<(), StoreError>;
    /// Session ids revoked from now on, anywhere in the fleet. A receiver
    /// that may have missed some — it fell behind, or this node lost its
    /// connection to the fleet's fan-out for a while — gets
    /// `RecvError::Lagged`; it should then re-check its sessions with
    /// [`get_session`](Self::get_session), which returns None for revoked
    /// ones. An empty id names no session (the filler of such a notice):
    /// skip it. Expiry is not announced here: holders of a session close it
    /// at `expires_at` themselves.
    fn watch_revocations(&self) -> tokio::sync::broadcast::Receiver<String>;
    /// Counts one failure for `key` in a fixed window that starts at the
    /// key's first failure; returns (count including this one, time left in
    /// the window).
    async fn record_failure(
        &self,
        key: &str,
        window: Duration,
    ) -> Result<(u32, Duration), StoreError>;
    /// Counts one failure for every counter of `limits` (windows as for
    /// [`record_failure`](Self::record_failure)) in one atomic step — unless
    /// one of them already holds its `limit`: then nothing is counted and
    /// the result is `Some(time left)`, the longest window left among the
    /// full ones. Concurrent calls never count past a limit, so at most
    /// `limit` attempts per window get `None` (the check-and-count a rate
    /// limit needs; `failures` then `record_failure` would race).
    async fn record_failure_within(
        &self,
        limits: &[FailureLimit<'_>],
        window: Duration,
    ) -> Result<Option<Duration>, StoreError>;
    /// Takes back one failure of `key` (an attempt counted in advance that
    /// turned out well); nothing if it counts none. Keeps the window.
    async fn forgive_failure(&self, key: &str) -> Result<(), StoreError>;
    /// (count, time left in the window) for `key`; (0, 0) if none.
    async fn failures(&self, key: &str) -> Result<(u32, Duration), StoreError>;
    /// Forgets the failures of `key`.
    async fn reset_failures(&self, key: &str) -> Result<(), StoreError>;
    /// Publishes an event to every node (including this one). Delivery is at
    /// most once; a node that lags loses events (bounded memory).
    ///
    /// Events of one publisher (one store, calls awaited one after the other)
    /// reach every watcher in publication order. When this returns `Ok`, the
    /// event has been handed to this node's watchers. An empty `channel`
    /// names no channel (it is the filler of a lag notice, see
    /// [`watch_events`](Self::watch_events)): such an event is dropped.
    async fn publish_event(&self, channel: &str, payload: &[u8]) -> Result<(), StoreError>;
    /// Events published anywhere from now on. Once this returns, every later
    /// `publish_event` anywhere in the fleet reaches the receiver (unless it
    /// lags).
    ///
    /// A receiver that may have missed events — it fell behind, or this node
    /// lost its connection to the fleet's fan-out for a while — gets
    /// `RecvError::Lagged`. Events with an empty `channel` are fillers of
    /// such a notice and carry nothing: skip them.
    fn watch_events(&self) -> tokio::sync::broadcast::Receiver<StoreEvent>;
    /// Publishes to a channel with history (protocol.md §6.5): assigns the
    /// next offset, appends the event to the channel's stream (trimmed to
    /// `policy`) and fans it out to every node's
    /// [`watch_events`](Self::watch_events), with its [`StreamAt`], in one
    /// atomic step; returns its position. Concurrent publishers anywhere
    /// never get one offset twice, and watchers see a channel's events in
    /// offset order (or a gap they can fill with
    /// [`read_history`](Self::read_history)).
    async fn publish_at(
        &self,
        channel: &str,
        payload: &[u8],
        policy: &HistoryPolicy,
    ) -> Result<Position, StoreError> {
        let _ = (channel, payload, policy);
        Err(StoreError::Unavailable(
            "this state store keeps no channel history".into(),
        ))
    }
    /// Reads a channel's stream: its position and, with `since` in the
    /// current epoch and every event after it kept, up to `limit` events
    /// after it; otherwise up to `limit` of the last kept events
    /// ([`HistoryRead`]). A stream that does not exist is created, empty,
    /// with a new epoch, so the position a subscriber is told stays valid.
    async fn read_history(
        &self,
        channel: &str,
        since: Option<&Position>,
        limit: usize,
        policy: &HistoryPolicy,
    ) -> Result<HistoryRead, StoreError> {
        let _ = (channel, since, limit, policy);
        Err(StoreError::Unavailable(
            "this state store keeps no channel history".into(),
        ))
    }
    /// Adds `member` to its channel's presence, alive for `ttl` (until its
    /// node refreshes it). If it is the user's first live member, the user
    /// joins: a [`PresenceChange::Join`] is fanned out to every node (in
    /// the same atomic step) and the result is `true`.
    async fn presence_add(
        &self,
        member: &PresenceMember,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let _ = (member, ttl);
        Err(StoreError::Unavailable(
            "this state store keeps no presence".into(),
        ))
    }
    /// Removes `member`; if it was the user's last live member, the user
    /// leaves: a [`PresenceChange::Leave`] is fanned out and the result is
    /// `true`. Removing an unknown member does nothing.
    async fn presence_remove(&self, member: &PresenceMember) -> Result<bool, StoreError> {
        let _ = member;
        Err(StoreError::Unavailable(
            "this state store keeps no presence".into(),
        ))
    }
    /// Keeps `members` (this node's) alive for another `ttl`; one that
    /// expired meanwhile is added again (and its user may join again).
    async fn presence_refresh(
        &self,
        members: &[PresenceMember],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let _ = (members, ttl);
        Err(StoreError::Unavailable(
            "this state store keeps no presence".into(),
        ))
    }
    /// Removes every expired member, on every channel, fanning out the
    /// leaves it causes; each is removed (and each leave announced) by
    /// exactly one sweep, whichever node runs it first.
    async fn presence_sweep(&self) -> Result<(), StoreError> {
        Err(StoreError::Unavailable(
            "this state store keeps no presence".into(),
        ))
    }
    /// The users present on `channel` now, sorted, at most `limit`.
    async fn presence_list(&self, channel: &str, limit: usize) -> Result<PresenceList, StoreError> {
        let _ = (channel, limit);
        Err(StoreError::Unavailable(
            "this state store keeps no presence".into(),
        ))
    }
    /// Makes sure this node receives `channel`'s events from now on: called
    /// before a SUBSCRIBE is confirmed. A store whose fan-out is per channel
    /// (Redis Cluster: one sharded pub/sub channel each) subscribes to it
    /// and returns once it is subscribed; the others deliver every channel
    /// already. Cheap when the channel is watched.
    async fn watch_channel(&self, channel: &str) -> Result<(), StoreError> {
        let _ = channel;
        Ok(())
    }
    /// This node has no subscriber of `channel` any more: a store with
    /// per-channel fan-out may stop receiving it. Must not block (called
    /// with the hub's lock held, so a later watch is ordered after it).
    fn unwatch_channel(&self, channel: &str) {
        let _ = channel;
    }
    /// Whether the backend is reachable right now, as far as this node
    /// knows (Redis: false while the connection is down). A node reports it
    /// and may refuse work early while it is false; calls made meanwhile fail
    /// with [`StoreError::Unavailable`] anyway.
    fn is_healthy(&self) -> bool {
        true
    }
}

/// An event published with [`StateStore::publish_event`].
///
/// `Debug` shows the payload's length, never its bytes (they may be
/// sensitive).
#[derive(Clone, PartialEq, Eq)]
pub struct StoreEvent {
    /// The channel (protocol.md §6.2); empty only in the filler of a lag notice.
    pub channel: String,
    /// The event body, exactly as published.
    pub payload: bytes::Bytes,
    /// Its stream position, for a channel with history
    /// ([`StateStore::publish_at`]); `None` otherwise.
    pub at: Option<StreamAt>,
    /// A presence change instead of a published event (protocol.md §6.6;
    /// `payload` is then empty).
    pub presence: Option<PresenceChange>,
}

impl fmt::Debug for StoreEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreEvent")
            .field("channel", &self.channel)
            .field("payload_len", &self.payload.len())
            .field("at", &self.at)
            .field("presence", &self.presence)
            .finish()
    }
}

/// Opens the state store named by the configuration's `state` value:
/// `"memory"` (or empty) for the in-process store of a single node,
/// `redis://[:password@]host[:port][/db]` (or `rediss://` for TLS) for a
/// fleet's shared Redis, `redis+cluster://host:port,host:port,…` (or
/// `rediss+cluster://`) for a Redis Cluster named by some of its nodes.
pub async fn open_state(url: &str) -> Result<Arc<dyn StateStore>, StoreError> {
    let trimmed = url.trim();
    if trimmed.is_empty() || trimmed == "memory" {
        return Ok(Arc::new(MemoryStateStore::new()));
    }
    match scheme_of(trimmed) {
        Some("redis" | "rediss" | "redis+unix" | "unix") => {
            Ok(Arc::new(RedisStateStore::connect(trimmed).await?))
        }
        Some("redis+cluster" | "rediss+cluster") => {
            Ok(Arc::new(RedisStateStore::connect_cluster(trimmed).await?))
        }
        _ => Err(StoreError::Unavailable(format!(
            "unknown state store {:?}; use \"memory\" (one node), \
             \"redis://[:password@]host[:port][/db]\" (a fleet; \"rediss://\" for TLS) or \
             \"redis+cluster://host:port,host:port,…\" (a fleet on Redis Cluster)",
            redact_url(trimmed)
        ))),
    }
}

/// Opens the credential store named by the configuration's `credentials`
/// value: `"sqlite"` (or empty) for `default_sqlite` (the data directory's
/// file), `sqlite://PATH` for another SQLite file, or
/// `postgres://user[:password]@host[:port]/database` (also `postgresql://`)
/// for a fleet's shared PostgreSQL.
pub async fn open_credentials(
    url: &str,
    default_sqlite: &Path,
) -> Result<Arc<dyn CredentialStore>, StoreError> {
    let trimmed = url.trim();
    let sqlite_path = if trimmed.is_empty() || trimmed == "sqlite" {
        Some(default_sqlite.to_path_buf())
    } else {
        trimmed.strip_prefix("sqlite://").map(PathBuf::from)
    };
    if let Some(path) = sqlite_path {
        if path.as_os_str().is_empty() {
            return Err(StoreError::Unavailable(
                "\"sqlite://\" names no file; write sqlite:///absolute/path or \
                 sqlite://relative/path, or \"sqlite\" for the data directory's file"
                    .to_owned(),
            ));
        }
        let store = tokio::task::spawn_blocking(move || SqliteCredentialStore::open(&path))
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("the SQLite worker task failed ({e})"))
            })??;
        return Ok(Arc::new(store));
    }
    match scheme_of(trimmed) {
        Some("postgres" | "postgresql") => {
            Ok(Arc::new(PostgresCredentialStore::connect(trimmed).await?))
        }
        _ => Err(StoreError::Unavailable(format!(
            "unknown credential store {:?}; use \"sqlite\" (the data directory's file), \
             \"sqlite:///path/to/file\" or \
             \"postgres://user[:password]@host[:port]/database\"",
            redact_url(trimmed)
        ))),
    }
}

/// The scheme of `url` (the part before `://`), if it has one.
fn scheme_of(url: &str) -> Option<&str> {
    url.split_once("://").map(|(scheme, _)| scheme)
}

/// Creates `path` as an empty file only its owner may read or write (0600 on
/// Unix), unless it exists: SQLite then opens it and keeps its mode.
pub(crate) fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    match options.open(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Serde for the session key as b64u, so the JSON sealed into a
/// [`SealedSession`] stays compact and strict.
mod b64u_key {
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};
    use wsgate_proto::b64;
    use zeroize::Zeroizing;

    pub(super) fn serialize<S: Serializer>(
        key: &Zeroizing<[u8; 32]>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&Zeroizing::new(b64::encode_b64u(&key[..])))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Zeroizing<[u8; 32]>, D::Error> {
        let text = Zeroizing::new(String::deserialize(deserializer)?);
        b64::decode_b64u_array::<32>(&text)
            .map(Zeroizing::new)
            .map_err(|_| D::Error::custom("session_key must be 32 bytes of b64u"))
    }
}
