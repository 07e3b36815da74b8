//! The fleet's [`StateStore`] on Redis (6.2 or newer, or a compatible
//! server such as Valkey), or on a Redis Cluster (7.0 or newer; below).
//!
//! Every key lives under a prefix (`wsgate:` unless the constructor is given
//! another), and every key expires on the server's clock, so Redis never
//! holds more than the live state:
//!
//! | key | value | expiry |
//! |---|---|---|
//! | `{prefix}exchange:{sid}` | a hash: `s` the sealed SCRAM exchange state (`store/seal.rs`), `g` its quota group | `PEXPIREAT deadline`; stored and taken (atomic take-once) by Lua scripts, below |
//! | `{prefix}exchange-index` | a sorted set: every live exchange's sid, scored by its deadline (Redis clock, ms) | `PEXPIREAT` the latest deadline |
//! | `{prefix}exchange-group:{group}` | the same, for the exchanges of one quota group (an IP or IPv6 prefix) | `PEXPIREAT` the group's latest deadline |
//! | `{prefix}session:{id}` | the [`SealedSession`]'s bytes (no session key in clear: sealed by the node) | `SET … PXAT expires_at` |
//! | `{prefix}failures:{key}` | the failure count | a Lua script: `INCR`, then `PEXPIRE window` on the first failure; returns the count and `PTTL` |
//!
//! **Exchange quotas are exact.** `put_exchange` is one script: it reads
//! Redis's clock (`TIME`), drops the index members whose deadline has
//! passed (`ZREMRANGEBYSCORE`), refuses if the group or the whole index
//! already holds its quota (`ZCARD`), and otherwise writes the hash and
//! adds the sid to both sorted sets. `take_exchange` is one script too:
//! it reads and deletes the hash and removes the sid from both sets, so a
//! consumed exchange stops counting at once, and one never consumed stops
//! counting at its deadline. Neither needs a node's clock, and concurrent
//! nodes cannot overshoot a quota: every script runs alone. (The take
//! script names the group's set from the hash, not from `KEYS`: on a
//! cluster every exchange key is in one slot, so that set is too.) An
//! exchange key that is a plain string — written by a node of an
//! earlier version during a rolling upgrade — is still taken (`GETDEL`),
//! outside the quotas.
//!
//! **Failure limits are checked and counted in one step.**
//! `record_failure_within` is one script over all its counters: if any
//! holds its limit it counts nothing and returns the longest `PTTL` among
//! the full ones, else it `INCR`s every one. Concurrent logins of a fleet
//! therefore never count (or evaluate) more than the limit.
//!
//! Fan-out uses two pub/sub channels:
//!
//! * `{prefix}revocations`: `revoke_session` deletes the session key and
//!   publishes `<origin> <session id>` in one `MULTI`, where `<origin>` is
//!   the publishing store's random id in 32 hex digits. A message that is
//!   only a session id (an operator's `PUBLISH wsgate:revocations <id>`) is
//!   accepted too.
//! * `{prefix}events`: `publish_event` publishes a binary frame: the 16-byte
//!   origin id, the channel name's length (u16 big-endian), the channel name
//!   (UTF-8) and the payload.
//!
//! A store hands its own revocations and events to its watchers directly,
//! before `revoke_session` / `publish_event` return, and ignores their echo
//! from Redis; the others arrive through a background task that holds a
//! dedicated pub/sub connection, subscribed before
//! [`connect`](RedisStateStore::connect) returns. When that connection
//! drops, the task reconnects with backoff forever; once it is subscribed
//! again every watcher gets `RecvError::Lagged` (the trait's "you may have
//! missed some; re-check" notice), because whatever was published meanwhile
//! is lost. The notice is made by overrunning the watchers' bounded channel
//! with fillers — empty session ids and events with an empty channel name —
//! which watchers skip; a message that arrives before a watcher has skipped
//! them all overruns it once more (another `Lagged`, then the message).
//! [`is_healthy`](StateStore::is_healthy) is false from the moment the task
//! notices the loss (at once when the connection is reset; within 7 s when
//! it hangs, checked by a `PING` every 5 s and right after any failed
//! command) until it is subscribed again.
//!
//! Commands go through a [`ConnectionManager`] (one multiplexed connection,
//! re-established on demand) and each has a deadline (2 s), so while Redis
//! is away calls fail fast with [`StoreError::Unavailable`] and work again
//! as soon as it is back, without recreating the store.
//!
//! `rediss://` speaks TLS (rustls), trusting the system's CAs, or only the
//! CA in `?ca_file=/path/to/ca.pem`.
//!
//! ## Redis Cluster
//!
//! [`connect_cluster`](RedisStateStore::connect_cluster)
//! (`redis+cluster://host:port,host:port,…`, Redis 7.0 or newer) runs the
//! same scripts on a cluster (`cluster.rs`: the client, the sharded feed).
//! Every step stays in one hash slot, because the key layout tags them:
//!
//! | keys | slot |
//! |---|---|
//! | `{prefix}{c:<channel>}:stream`, `…:stream-log`, `…:presence`, `…:presence-who`, `…:presence-count`, and the shard channel `…:fanout` | the channel's: a publish, its history and its fan-out are one script on one shard |
//! | `{prefix}session:{<id>}` | the session's: sessions spread over every shard |
//! | `{prefix}{exchanges}:exchange:<sid>`, `…:exchange-index`, `…:exchange-group:<group>` | one slot, so the exchange quotas stay exact (two small scripts per login) |
//! | `{prefix}{failures}:<key>` | one slot, so a check over several counters stays one step |
//! | `{prefix}{presence}:channels` | one slot: the index the presence sweep walks, kept by separate commands (a channel emptied and joined at once is put back by its member's next refresh) |
//!
//! Fan-out is **sharded pub/sub**: one shard channel per wsgate channel
//! (`SPUBLISH` from the publish and presence scripts, a kind byte — `e`
//! event, `s` stream event, `p` presence — before the frames described
//! above), so each shard carries only its channels' traffic. A node
//! subscribes (`SSUBSCRIBE`) to a channel when its hub gets the channel's
//! first subscriber, before the SUBSCRIBE is confirmed
//! ([`watch_channel`](StateStore::watch_channel)), and unsubscribes when
//! the last one leaves: one subscription per channel per node, however
//! many connections hold it. Revocations go over one shard channel,
//! `{prefix}{revocations}`, which every node subscribes to; `revoke_session`
//! deletes the session and then publishes (two slots, two commands).
//!
//! A failover: while a shard has no master, its commands fail within their
//! deadline ([`StoreError::Unavailable`]; the client retries `MOVED` and
//! lost connections inside it) and the store reports unhealthy. Once every
//! master answers `PING` again, the feed subscribes to its shard channels
//! again (wherever their slots are now) and tells every watcher it may
//! have missed events (`Lagged`), so history channels are caught up.
//! Streams are tied to the node that wrote them (`CLUSTER MYID`): found on
//! another node — a promoted replica, which may lack the newest events — a
//! stream continues in a new epoch, and its subscribers resync.

mod cluster;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub, PubSubSink};
use redis::{Client, FromRedisValue, RedisError, Script};

use self::cluster::Conn;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use super::memory::{EVENT_CHANNEL_CAPACITY, REVOCATION_CHANNEL_CAPACITY};
use super::{
    ExchangeAdmission, ExchangeQuota, FailureLimit, HistoryEvent, HistoryPolicy, HistoryRead,
    Position, PresenceChange, PresenceList, PresenceMember, SealedSession, StateStore, StoreError,
    StoreEvent, StreamAt, store_location, unix_now,
};

/// The deadline of every command, including waiting for a reconnection.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// The key prefix unless the constructor is given another.
pub(crate) const DEFAULT_PREFIX: &str = "wsgate:";

/// How long establishing a connection may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the pub/sub connection is checked with a `PING` (a connection
/// that died silently, without a reset, is noticed within about this long).
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Backoff between attempts to restore the pub/sub connection.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Length of a store's random origin id.
const ORIGIN_LEN: usize = 16;

/// Expiries are clamped to the end of year 9999 (unix milliseconds).
const MAX_UNIX_MS: u64 = 253_402_300_799_000;

/// Counts a failure in a window fixed at the first one. `KEYS[1]`: the
/// counter; `ARGV[1]`: the window in milliseconds. Returns `{count, pttl}`.
/// A counter that somehow has no expiry gets one, so no key lives forever.
const RECORD_FAILURE_LUA: &str = r"
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
";

/// Checks and counts failures in one step. `KEYS`: the counters;
/// `ARGV[1]`: the window in milliseconds; `ARGV[1 + i]`: the limit of
/// `KEYS[i]`. Returns -1 when every counter was under its limit and each
/// was counted; else the longest time left (ms) among the full ones, having
/// counted nothing.
const RECORD_FAILURE_WITHIN_LUA: &str = r"
local window = tonumber(ARGV[1])
local wait = -1
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  if count >= tonumber(ARGV[i + 1]) then
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then
      redis.call('PEXPIRE', key, window)
      ttl = window
    end
    if ttl > wait then wait = ttl end
  end
end
if wait >= 0 then return wait end
for _, key in ipairs(KEYS) do
  redis.call('INCR', key)
  if redis.call('PTTL', key) < 0 then redis.call('PEXPIRE', key, window) end
end
return -1
";

/// Takes back one failure of `KEYS[1]`: a count of 1 is deleted, a higher
/// one decremented (`DECR` keeps the expiry).
const FORGIVE_FAILURE_LUA: &str = r"
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count > 1 then
  redis.call('DECR', KEYS[1])
elseif count == 1 then
  redis.call('DEL', KEYS[1])
end
return count
";

/// The current time of Redis in milliseconds, in a script.
const LUA_NOW_MS: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
";

/// A stream's epoch, in a script whose `KEYS` are the stream's hash and log
/// — or none, making the caller start a new epoch, when the stream was
/// written on another node of a cluster (`cluster` is `1`). Redis
/// replicates asynchronously: a replica promoted after its master died
/// may lack the newest events, and their offsets would be handed out again
/// to other events. So a stream is tied to the node (`CLUSTER MYID`) that
/// wrote it; wherever else it is found — after a failover, or a slot
/// migration — it continues in a new epoch, and subscribers are told to
/// resync (protocol.md §6.5) rather than given an (epoch, offset) that names
/// two events.
const LUA_STREAM_ON_THIS_NODE: &str = r"
local node = ''
local function stream_epoch(cluster)
  if cluster == '1' then node = redis.call('CLUSTER', 'MYID') end
  local epoch = redis.call('HGET', KEYS[1], 'e')
  if epoch and node ~= '' and redis.call('HGET', KEYS[1], 'n') ~= node then
    return false
  end
  return epoch
end
local function new_stream(epoch)
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0, 'b', 0)
  if node ~= '' then redis.call('HSET', KEYS[1], 'n', node) end
end
";

/// Publishes to a channel's stream (protocol.md §6.5) and fans the event
/// out, in one step. `KEYS`: the stream's hash (`e` epoch, `o` offset, `b`
/// payload bytes kept), the stream of events (ids `0-<offset>`). `ARGV`:
/// a new epoch (used if the stream does not exist), events to keep, TTL
/// (ms), payload bytes to keep, the payload, the pub/sub channel, the
/// frame's head (origin, channel length, channel), the publishing command
/// (`PUBLISH`, or `SPUBLISH` on a cluster), `1` on a cluster (see
/// [`LUA_STREAM_ON_THIS_NODE`]). Trims exactly, oldest first, until both
/// bounds hold. Returns `{epoch, offset}`.
const PUBLISH_AT_LUA: &str = r"
local epoch = stream_epoch(ARGV[9])
if not epoch then
  epoch = ARGV[1]
  new_stream(epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
redis.call('XADD', KEYS[2], '0-' .. offset, 'd', ARGV[5])
local bytes = redis.call('HINCRBY', KEYS[1], 'b', #ARGV[5])
local len = redis.call('XLEN', KEYS[2])
local keep = tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[4])
while len > 0 and (len > keep or bytes > max_bytes) do
  local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
  redis.call('XDEL', KEYS[2], oldest[1])
  bytes = redis.call('HINCRBY', KEYS[1], 'b', -#oldest[2][2])
  len = len - 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local hi = math.floor(offset / 4294967296)
local frame = ARGV[7] .. string.char(#epoch) .. epoch
  .. struct.pack('>I4I4', hi, offset - hi * 4294967296) .. ARGV[5]
redis.call(ARGV[8], ARGV[6], frame)
return {epoch, offset}
";

/// Reads a channel's stream. `KEYS` as for [`PUBLISH_AT_LUA`]. `ARGV`: a
/// new epoch (a stream that does not exist is created with it), TTL (ms),
/// `since`'s epoch (empty: none), `since`'s offset, the most events to
/// return, `1` on a cluster. Returns `{epoch, offset, continues, offset₁,
/// payload₁, …}`, oldest first: after `since` if it continues the stream,
/// else the last.
const READ_HISTORY_LUA: &str = r"
local epoch = stream_epoch(ARGV[6])
if not epoch then
  epoch = ARGV[1]
  new_stream(epoch)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local offset = tonumber(redis.call('HGET', KEYS[1], 'o'))
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
local oldest = 0
if first then oldest = tonumber(string.match(first[1], '^0%-(%d+)$')) end
local limit = tonumber(ARGV[5])
local continues = 0
local entries = {}
if ARGV[3] ~= '' then
  local s = tonumber(ARGV[4])
  if ARGV[3] == epoch and s <= offset and (s == offset or (oldest > 0 and oldest <= s + 1)) then
    continues = 1
    entries = redis.call('XRANGE', KEYS[2], '(0-' .. ARGV[4], '+', 'COUNT', limit)
  end
end
if continues == 0 then
  local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', limit)
  for i = #newest, 1, -1 do table.insert(entries, newest[i]) end
end
local out = {epoch, offset, continues}
for _, entry in ipairs(entries) do
  table.insert(out, tonumber(string.match(entry[1], '^0%-(%d+)$')))
  table.insert(out, entry[2][2])
end
return out
";

/// Adds or refreshes a presence member (protocol.md §6.6). `KEYS`: the
/// channel's members (sorted set, scored by expiry ms), member → user
/// (hash), user → live members (hash), the index of presence channels.
/// `ARGV`: member, user, TTL (ms), the pub/sub channel, the frame's head
/// (origin, channel length, channel), the channel, the publishing command.
/// A new member whose user had none joins: announced in the same step.
/// Returns 1 on a join.
const PRESENCE_ADD_LUA: &str = r"
local expires = now_ms() + tonumber(ARGV[3])
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], expires, ARGV[1])
redis.call('ZADD', KEYS[4], expires, ARGV[6])
if known then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if redis.call('HINCRBY', KEYS[3], ARGV[2], 1) == 1 then
  redis.call(ARGV[7], ARGV[4], ARGV[5] .. '\1' .. ARGV[2])
  return 1
end
return 0
";

/// Refreshes (or re-adds) many presence members in one step, as
/// [`PRESENCE_ADD_LUA`] does one. `KEYS[1]`: the index of presence
/// channels. `ARGV`: the key prefix, TTL (ms), the pub/sub channel, this
/// store's origin, then `channel, user, member` for each member. (It names
/// keys from its arguments: one Redis only; a cluster runs
/// [`PRESENCE_REFRESH_CHANNEL_LUA`] per channel.)
const PRESENCE_REFRESH_LUA: &str = r"
local expires = now_ms() + tonumber(ARGV[2])
for i = 5, #ARGV, 3 do
  local ch, user, member = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local members = ARGV[1] .. 'presence:' .. ch
  local known = redis.call('ZSCORE', members, member)
  redis.call('ZADD', members, expires, member)
  redis.call('ZADD', KEYS[1], expires, ch)
  if not known then
    redis.call('HSET', ARGV[1] .. 'presence-who:' .. ch, member, user)
    if redis.call('HINCRBY', ARGV[1] .. 'presence-count:' .. ch, user, 1) == 1 then
      redis.call('PUBLISH', ARGV[3], ARGV[4] .. struct.pack('>I2', #ch) .. ch .. '\1' .. user)
    end
  end
end
return 0
";

/// Members one refresh script carries.
const PRESENCE_REFRESH_BATCH: usize = 500;

/// Removes a presence member. `KEYS` as for [`PRESENCE_ADD_LUA`] (without
/// the index). `ARGV`: member, the pub/sub channel, the frame's head, the
/// publishing command.
/// The user's last member leaves: announced in the same step. Returns 1
/// on a leave.
const PRESENCE_REMOVE_LUA: &str = r"
local user = redis.call('HGET', KEYS[2], ARGV[1])
if not user then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then
  redis.call('HDEL', KEYS[3], user)
  redis.call(ARGV[4], ARGV[2], ARGV[3] .. '\2' .. user)
  return 1
end
return 0
";

/// Removes every expired presence member of every channel in the index
/// (`KEYS[1]`), announcing the leaves. `ARGV`: the key prefix, the pub/sub
/// channel, this store's origin. Runs alone, so each member is removed and
/// each leave announced once, whichever node sweeps. (It names keys from
/// the index: one Redis only; a cluster runs
/// [`PRESENCE_SWEEP_CHANNEL_LUA`] per channel.)
const PRESENCE_SWEEP_LUA: &str = r"
local now = now_ms()
for _, ch in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local members = ARGV[1] .. 'presence:' .. ch
  local who = ARGV[1] .. 'presence-who:' .. ch
  local counts = ARGV[1] .. 'presence-count:' .. ch
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', members, '-inf', now)) do
    local user = redis.call('HGET', who, m)
    redis.call('ZREM', members, m)
    redis.call('HDEL', who, m)
    if user and redis.call('HINCRBY', counts, user, -1) <= 0 then
      redis.call('HDEL', counts, user)
      redis.call('PUBLISH', ARGV[2], ARGV[3] .. struct.pack('>I2', #ch) .. ch .. '\2' .. user)
    end
  end
  if redis.call('ZCARD', members) == 0 then
    redis.call('ZREM', KEYS[1], ch)
    redis.call('DEL', who, counts)
  end
end
return 0
";

/// Adds or refreshes members of one channel, on a cluster (every key of a
/// channel in its slot; the index of presence channels, in another slot,
/// is kept by separate commands). `KEYS`: as for [`PRESENCE_REMOVE_LUA`].
/// `ARGV`: TTL (ms), the shard channel, the frame's head, the publishing
/// command, then `user, member` for each member. Returns the joins.
const PRESENCE_REFRESH_CHANNEL_LUA: &str = r"
local expires = now_ms() + tonumber(ARGV[1])
local joins = 0
for i = 5, #ARGV, 2 do
  local user, member = ARGV[i], ARGV[i + 1]
  local known = redis.call('ZSCORE', KEYS[1], member)
  redis.call('ZADD', KEYS[1], expires, member)
  if not known then
    redis.call('HSET', KEYS[2], member, user)
    if redis.call('HINCRBY', KEYS[3], user, 1) == 1 then
      redis.call(ARGV[4], ARGV[2], ARGV[3] .. '\1' .. user)
      joins = joins + 1
    end
  end
end
return joins
";

/// Removes the expired members of one channel, on a cluster, announcing
/// the leaves. `KEYS`: as for [`PRESENCE_REMOVE_LUA`]. `ARGV`: the shard
/// channel, the frame's head, the publishing command. Returns the members
/// left.
const PRESENCE_SWEEP_CHANNEL_LUA: &str = r"
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms())) do
  local user = redis.call('HGET', KEYS[2], m)
  redis.call('ZREM', KEYS[1], m)
  redis.call('HDEL', KEYS[2], m)
  if user and redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then
    redis.call('HDEL', KEYS[3], user)
    redis.call(ARGV[3], ARGV[1], ARGV[2] .. '\2' .. user)
  end
end
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then redis.call('DEL', KEYS[2], KEYS[3]) end
return left
";

/// The users with live members on a channel. `KEYS`: members, member →
/// user. `ARGV`: the most users to return. Returns `{total, user₁, n₁, …}`.
const PRESENCE_LIST_LUA: &str = r"
local counts = {}
local users = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now_ms(), '+inf')) do
  local u = redis.call('HGET', KEYS[2], m)
  if u then
    if not counts[u] then table.insert(users, u); counts[u] = 0 end
    counts[u] = counts[u] + 1
  end
end
table.sort(users)
local out = {#users}
for i = 1, math.min(#users, tonumber(ARGV[1])) do
  table.insert(out, users[i])
  table.insert(out, counts[users[i]])
end
return out
";

/// Stores an exchange within its quotas. `KEYS`: the exchange, the index,
/// the group's set. `ARGV`: state, TTL (ms), max per group, max total, sid,
/// group, the prefix of group-set keys. Returns `{0}` (stored), `{1, ms}`
/// (group full; ms until its oldest expires) or `{2, ms}` (store full).
/// Members whose deadline is before now are gone; a key lives while
/// `now <= deadline` (Redis's rule), and so does its member.
const PUT_EXCHANGE_LUA: &str = r"
local now = now_ms()
local ttl = tonumber(ARGV[2])
local sid = ARGV[5]
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  local old = redis.call('HGET', KEYS[1], 'g')
  if old then redis.call('ZREM', ARGV[7] .. old, sid) end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], sid)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. now)
local function oldest(key)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] then return math.max(tonumber(first[2]) - now, 0) end
  return ttl
end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then return {1, oldest(KEYS[3])} end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return {2, oldest(KEYS[2])} end
local deadline = now + ttl
redis.call('HSET', KEYS[1], 's', ARGV[1], 'g', ARGV[6])
redis.call('PEXPIREAT', KEYS[1], deadline)
for i = 2, 3 do
  redis.call('ZADD', KEYS[i], deadline, sid)
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIREAT', KEYS[i], deadline) end
end
return {0}
";

/// Takes an exchange. `KEYS`: the exchange, the index. `ARGV`: sid, the
/// prefix of group-set keys. Returns the state, or nil.
const TAKE_EXCHANGE_LUA: &str = r"
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return false end
if kind ~= 'hash' then return redis.call('GETDEL', KEYS[1]) end
local v = redis.call('HMGET', KEYS[1], 's', 'g')
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if v[2] then redis.call('ZREM', ARGV[2] .. v[2], ARGV[1]) end
return v[1]
";

/// Live exchanges: the index members whose deadline has not passed.
/// `KEYS[1]`: the index. Read-only.
const LIVE_EXCHANGES_LUA: &str = r"
return redis.call('ZCOUNT', KEYS[1], now_ms(), '+inf')
";

/// The scripts of the store.
struct Scripts {
    record_failure: Script,
    record_failure_within: Script,
    forgive_failure: Script,
    put_exchange: Script,
    take_exchange: Script,
    live_exchanges: Script,
    publish_at: Script,
    read_history: Script,
    presence_add: Script,
    presence_remove: Script,
    presence_refresh: Script,
    presence_sweep: Script,
    presence_list: Script,
    presence_refresh_channel: Script,
    presence_sweep_channel: Script,
}

impl Scripts {
    fn new() -> Self {
        let with_now = |body: &str| Script::new(&format!("{LUA_NOW_MS}{body}"));
        Self {
            record_failure: Script::new(RECORD_FAILURE_LUA),
            record_failure_within: Script::new(RECORD_FAILURE_WITHIN_LUA),
            forgive_failure: Script::new(FORGIVE_FAILURE_LUA),
            put_exchange: with_now(PUT_EXCHANGE_LUA),
            take_exchange: Script::new(TAKE_EXCHANGE_LUA),
            live_exchanges: with_now(LIVE_EXCHANGES_LUA),
            publish_at: Script::new(&format!("{LUA_STREAM_ON_THIS_NODE}{PUBLISH_AT_LUA}")),
            read_history: Script::new(&format!("{LUA_STREAM_ON_THIS_NODE}{READ_HISTORY_LUA}")),
            presence_add: with_now(PRESENCE_ADD_LUA),
            presence_remove: Script::new(PRESENCE_REMOVE_LUA),
            presence_refresh: with_now(PRESENCE_REFRESH_LUA),
            presence_sweep: with_now(PRESENCE_SWEEP_LUA),
            presence_list: with_now(PRESENCE_LIST_LUA),
            presence_refresh_channel: with_now(PRESENCE_REFRESH_CHANNEL_LUA),
            presence_sweep_channel: with_now(PRESENCE_SWEEP_CHANNEL_LUA),
        }
    }
}

/// The kinds of fan-out frame on a cluster's per-channel shard channel,
/// its first byte (one Redis has a pub/sub channel per kind instead).
const KIND_EVENT: u8 = b'e';
const KIND_STREAM: u8 = b's';
const KIND_PRESENCE: u8 = b'p';

/// Where one fan-out frame goes ([`Keys::outlet`]).
struct Outlet<'a> {
    /// The pub/sub channel.
    to: Cow<'a, str>,
    /// `PUBLISH`, or `SPUBLISH` on a cluster.
    command: &'static str,
    /// The frame, or its head when a script appends the rest.
    frame: Vec<u8>,
}

/// The key and channel names under one prefix, for one Redis or, with hash
/// tags that keep each multi-key step in one slot, for a cluster.
#[derive(Clone, Debug)]
struct Keys {
    prefix: String,
    /// The cluster layout (hash tags, per-channel shard channels).
    cluster: bool,
    revocations: String,
    events: String,
    /// Events of channels with history, published by [`PUBLISH_AT_LUA`].
    stream_events: String,
    /// Presence joins and leaves.
    presence_events: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            cluster: false,
            revocations: format!("{prefix}revocations"),
            events: format!("{prefix}events"),
            stream_events: format!("{prefix}stream-events"),
            presence_events: format!("{prefix}presence-events"),
        }
    }

    /// The cluster layout: `{prefix}{c:<channel>}:…` for a channel's keys and
    /// its shard channel, `{prefix}session:{<id>}`, and one slot each for
    /// the exchanges (`{exchanges}`: their quotas are exact), the failure
    /// counters (`{failures}`: one check spans several) and the index of
    /// presence channels.
    fn cluster(prefix: &str) -> Self {
        Self {
            cluster: true,
            revocations: format!("{prefix}{{revocations}}"),
            ..Self::new(prefix)
        }
    }

    /// Where a `kind` frame of `channel` from `origin` goes: the pub/sub
    /// channel, the command that publishes to it, and the frame — origin,
    /// channel length (u16 BE), channel, then `tail` (after the kind byte
    /// on a cluster).
    fn outlet(
        &self,
        kind: u8,
        origin: &[u8; ORIGIN_LEN],
        channel: &str,
        tail: &[u8],
    ) -> Result<Outlet<'_>, StoreError> {
        let len = u16::try_from(channel.len()).map_err(|_| {
            StoreError::Unavailable(format!(
                "channel name of {} bytes is too long to publish (at most 65535)",
                channel.len()
            ))
        })?;
        let mut frame = Vec::with_capacity(1 + ORIGIN_LEN + 2 + channel.len() + tail.len());
        if self.cluster {
            frame.push(kind);
        }
        frame.extend_from_slice(origin);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(channel.as_bytes());
        frame.extend_from_slice(tail);
        let (to, command) = if self.cluster {
            (Cow::Owned(self.shard_channel(channel)), "SPUBLISH")
        } else {
            let global = match kind {
                KIND_STREAM => &self.stream_events,
                KIND_PRESENCE => &self.presence_events,
                _ => &self.events,
            };
            (Cow::Borrowed(global.as_str()), "PUBLISH")
        };
        Ok(Outlet { to, command, frame })
    }

    /// A channel's shard channel on a cluster (every kind of its frames).
    fn shard_channel(&self, channel: &str) -> String {
        self.of_channel("fanout", channel)
    }

    /// A key of `channel`: `{prefix}{name}:{channel}`, or on a cluster
    /// `{prefix}{c:{channel}}:{name}`.
    fn of_channel(&self, name: &str, channel: &str) -> String {
        if self.cluster {
            // `c:` keeps the tag from being empty (`{}` tags nothing); a
            // `}` in the name cuts the tag, the same for all of its keys.
            format!("{}{{c:{channel}}}:{name}", self.prefix)
        } else {
            format!("{}{name}:{channel}", self.prefix)
        }
    }

    /// A channel's presence keys: members, member → user, user → count.
    fn presence(&self, channel: &str) -> [String; 3] {
        [
            self.of_channel("presence", channel),
            self.of_channel("presence-who", channel),
            self.of_channel("presence-count", channel),
        ]
    }

    fn presence_index(&self) -> String {
        if self.cluster {
            format!("{}{{presence}}:channels", self.prefix)
        } else {
            format!("{}presence-channels", self.prefix)
        }
    }

    fn stream(&self, channel: &str) -> String {
        self.of_channel("stream", channel)
    }

    fn stream_log(&self, channel: &str) -> String {
        self.of_channel("stream-log", channel)
    }

    /// Where the exchanges live: `{prefix}`, or one slot on a cluster.
    fn exchanges(&self) -> String {
        if self.cluster {
            format!("{}{{exchanges}}:", self.prefix)
        } else {
            self.prefix.clone()
        }
    }

    fn exchange(&self, sid: &str) -> String {
        format!("{}exchange:{sid}", self.exchanges())
    }

    fn exchange_index(&self) -> String {
        format!("{}exchange-index", self.exchanges())
    }

    /// The prefix of the group sets; a group's set is this and its name.
    fn exchange_group_prefix(&self) -> String {
        format!("{}exchange-group:", self.exchanges())
    }

    fn session(&self, id: &str) -> String {
        if self.cluster {
            format!("{}session:{{{id}}}", self.prefix)
        } else {
            format!("{}session:{id}", self.prefix)
        }
    }

    fn failures(&self, key: &str) -> String {
        if self.cluster {
            format!("{}{{failures}}:{key}", self.prefix)
        } else {
            format!("{}failures:{key}", self.prefix)
        }
    }
}

/// What the store and its pub/sub task share.
struct Fanout {
    revocations: broadcast::Sender<String>,
    events: broadcast::Sender<StoreEvent>,
    /// Whether the pub/sub connection is up and subscribed.
    up: AtomicBool,
    /// Asks the pub/sub task to check its connection now (a command failed).
    check_now: Notify,
    origin: [u8; ORIGIN_LEN],
    keys: Keys,
}

impl Fanout {
    /// Tells every watcher it may have missed messages: overruns each
    /// bounded channel with fillers, so every receiver's next `recv` is
    /// `Err(Lagged)`. Fillers cost no allocation and carry nothing.
    fn notify_lag(&self) {
        for _ in 0..=REVOCATION_CHANNEL_CAPACITY {
            let _ = self.revocations.send(String::new());
        }
        for _ in 0..=EVENT_CHANNEL_CAPACITY {
            let _ = self.events.send(StoreEvent {
                channel: String::new(),
                payload: Bytes::new(),
                at: None,
                presence: None,
            });
        }
    }

    /// Hands a message from Redis to the watchers, unless this store sent it
    /// (it delivered it itself) or it is malformed.
    fn dispatch(&self, msg: &redis::Msg) {
        let channel = msg.get_channel_name();
        let payload = msg.get_payload_bytes();
        if channel == self.keys.revocations {
            if let Some(id) = self.parse_revocation(payload) {
                let _ = self.revocations.send(id);
            }
        } else if channel == self.keys.events
            && let Some(event) = self.parse_event(payload)
        {
            let _ = self.events.send(event);
        } else if channel == self.keys.presence_events
            && let Some(event) = parse_presence_event(payload)
        {
            // This store's own too, as for stream events.
            let _ = self.events.send(event);
        } else if channel == self.keys.stream_events
            && let Some(event) = parse_stream_event(payload)
        {
            // This store's own too: Redis's order is the offsets' order,
            // and its echo is how a publisher's node gets the event.
            let _ = self.events.send(event);
        }
    }

    /// Hands a sharded message (on a cluster) to the watchers: a
    /// revocation, or a channel's fan-out frame after its kind byte.
    fn dispatch_shard(&self, channel: &[u8], payload: &[u8]) {
        if channel == self.keys.revocations.as_bytes() {
            if let Some(id) = self.parse_revocation(payload) {
                let _ = self.revocations.send(id);
            }
            return;
        }
        let Some((kind, frame)) = payload.split_first() else {
            return;
        };
        // Stream and presence frames of this store too, as on one Redis.
        let event = match *kind {
            KIND_EVENT => self.parse_event(frame),
            KIND_STREAM => parse_stream_event(frame),
            KIND_PRESENCE => parse_presence_event(frame),
            _ => {
                tracing::warn!(kind, "ignoring a fan-out frame of an unknown kind");
                None
            }
        };
        if let Some(event) = event {
            let _ = self.events.send(event);
        }
    }

    fn parse_revocation(&self, payload: &[u8]) -> Option<String> {
        let Ok(text) = std::str::from_utf8(payload) else {
            tracing::warn!(
                len = payload.len(),
                "ignoring a revocation message that is not UTF-8"
            );
            return None;
        };
        let id = match text.split_once(' ') {
            Some((origin, id)) if is_origin_hex(origin) => {
                if origin == hex(&self.origin) {
                    return None;
                }
                id
            }
            _ => text,
        };
        (!id.is_empty()).then(|| id.to_owned())
    }

    fn parse_event(&self, frame: &[u8]) -> Option<StoreEvent> {
        let Some((origin, channel, payload)) = split_frame(frame) else {
            tracing::warn!(len = frame.len(), "ignoring a malformed event frame");
            return None;
        };
        if *origin == self.origin {
            return None;
        }
        (!channel.is_empty()).then(|| StoreEvent {
            channel: channel.to_owned(),
            payload: Bytes::copy_from_slice(payload),
            at: None,
            presence: None,
        })
    }
}

/// The head every fan-out frame starts with — origin, channel length (u16
/// BE), channel (UTF-8) — and the rest; `None` if it is malformed.
fn split_frame(frame: &[u8]) -> Option<(&[u8; ORIGIN_LEN], &str, &[u8])> {
    let (origin, rest) = frame.split_first_chunk::<ORIGIN_LEN>()?;
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let (channel, rest) = rest.split_at_checked(usize::from(u16::from_be_bytes(*len)))?;
    Some((origin, std::str::from_utf8(channel).ok()?, rest))
}

/// An event of a channel with history, as [`PUBLISH_AT_LUA`] frames it:
/// origin, channel length (u16 BE), channel, epoch length (u8), epoch,
/// offset (u64 BE), payload.
fn parse_stream_event(frame: &[u8]) -> Option<StoreEvent> {
    let parsed = split_frame(frame).and_then(|(_, channel, rest)| {
        let (epoch_len, rest) = rest.split_first()?;
        let (epoch, rest) = rest.split_at_checked(usize::from(*epoch_len))?;
        let (offset, payload) = rest.split_first_chunk::<8>()?;
        Some((channel, std::str::from_utf8(epoch).ok()?, *offset, payload))
    });
    let Some((channel, epoch, offset, payload)) = parsed else {
        tracing::warn!(len = frame.len(), "ignoring a malformed stream event frame");
        return None;
    };
    (!channel.is_empty()).then(|| StoreEvent {
        channel: channel.to_owned(),
        payload: Bytes::copy_from_slice(payload),
        at: Some(StreamAt {
            epoch: epoch.into(),
            offset: u64::from_be_bytes(offset),
        }),
        presence: None,
    })
}

/// A presence change as the presence scripts frame it: origin, channel
/// length (u16 BE), channel, 1 (join) or 2 (leave), user.
fn parse_presence_event(frame: &[u8]) -> Option<StoreEvent> {
    let parsed = split_frame(frame).and_then(|(_, channel, rest)| {
        let (kind, user) = rest.split_first()?;
        let user = std::str::from_utf8(user).ok()?.to_owned();
        let change = match kind {
            1 => PresenceChange::Join(user),
            2 => PresenceChange::Leave(user),
            _ => return None,
        };
        Some((channel, change))
    });
    let Some((channel, change)) = parsed else {
        tracing::warn!(len = frame.len(), "ignoring a malformed presence frame");
        return None;
    };
    (!channel.is_empty()).then(|| StoreEvent {
        channel: channel.to_owned(),
        payload: Bytes::new(),
        at: None,
        presence: Some(change),
    })
}

/// The largest offset a `since` may carry into a script: Lua's numbers are
/// doubles, exact up to 2^53. A larger one is past any real stream.
const MAX_LUA_OFFSET: u64 = 1 << 53;

/// The reply of [`READ_HISTORY_LUA`], at most `limit` events of it.
fn parse_history_reply(reply: Vec<redis::Value>, limit: usize) -> Result<HistoryRead, StoreError> {
    let corrupt = || StoreError::Corrupt("the stream read script answered oddly".into());
    let mut items = reply.into_iter();
    let (Some(epoch), Some(offset), Some(continues)) = (items.next(), items.next(), items.next())
    else {
        return Err(corrupt());
    };
    let epoch: String = redis::from_redis_value(epoch).map_err(|_| corrupt())?;
    let offset: u64 = redis::from_redis_value(offset).map_err(|_| corrupt())?;
    let continues: u8 = redis::from_redis_value(continues).map_err(|_| corrupt())?;
    let mut events = Vec::new();
    while let (Some(at), Some(payload)) = (items.next(), items.next()) {
        let offset: u64 = redis::from_redis_value(at).map_err(|_| corrupt())?;
        let payload: Vec<u8> = redis::from_redis_value(payload).map_err(|_| corrupt())?;
        events.push(HistoryEvent {
            offset,
            payload: Bytes::from(payload),
        });
    }
    events.truncate(limit);
    Ok(HistoryRead {
        position: Position { epoch, offset },
        events,
        continues: continues == 1,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_origin_hex(text: &str) -> bool {
    text.len() == ORIGIN_LEN * 2 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A [`StateStore`] in Redis, shared by every node of a fleet.
///
/// Must be created and used within a tokio runtime (it spawns its pub/sub
/// task); dropping it stops that task.
pub struct RedisStateStore {
    conn: Conn,
    fanout: Arc<Fanout>,
    location: Arc<str>,
    scripts: Scripts,
    feed: JoinHandle<()>,
    /// On a cluster: the per-channel shard subscriptions.
    shards: Option<cluster::Shards>,
}

impl fmt::Debug for RedisStateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStateStore")
            .field("location", &self.location)
            .field("cluster", &self.fanout.keys.cluster)
            .field("prefix", &self.fanout.keys.prefix)
            .field("healthy", &self.is_healthy())
            .field("watchers", &self.fanout.revocations.receiver_count())
            .field("event_watchers", &self.fanout.events.receiver_count())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisStateStore {
    fn drop(&mut self) {
        self.feed.abort();
    }
}

impl RedisStateStore {
    /// Connects to the Redis at `url` (`redis://[user:password@]host[:port][/db]`,
    /// `rediss://…` for TLS — trusting the system's CAs, or the one in
    /// `?ca_file=/path/to/ca.pem` — or `redis+unix:///path/to/socket`), with keys under
    /// `wsgate:`. Fails fast, with a message saying what to check,
    /// if Redis cannot be reached, refuses the credentials or is too old.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_prefix(url, DEFAULT_PREFIX).await
    }

    /// Like [`connect`](Self::connect), with every key and channel under
    /// `prefix` (several fleets, or tests, may then share one Redis).
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let location: Arc<str> = store_location(url).into();
        let client = open_client(url, &location)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            // Reconnect on demand without long backoff: while Redis is away,
            // each call fails fast on its own; when it is back, the next
            // call reconnects.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(200));
        let conn = match tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(connect_error(&location, &e)),
            Err(_) => return Err(timeout_error(&location, "connecting")),
        };
        check_version(&mut conn.clone(), &location).await?;

        let keys = Keys::new(prefix);
        let pubsub = subscribe(&client, &keys, &location).await?;
        let (revocations, _) = broadcast::channel(REVOCATION_CHANNEL_CAPACITY);
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let fanout = Arc::new(Fanout {
            revocations,
            events,
            up: AtomicBool::new(true),
            check_now: Notify::new(),
            origin: rand::random(),
            keys,
        });
        let feed = tokio::spawn(feed_loop(
            client,
            Arc::clone(&location),
            Arc::clone(&fanout),
            pubsub,
        ));
        Ok(Self {
            conn: Conn::Single(conn),
            fanout,
            location,
            scripts: Scripts::new(),
            feed,
            shards: None,
        })
    }

    /// Connects to the Redis Cluster named by some of its nodes,
    /// `redis+cluster://[user:password@]host:port,host:port,…`
    /// (`rediss+cluster://…` for TLS, `?ca_file=/path/to/ca.pem` for a
    /// private CA), with keys under `wsgate:`. Needs Redis 7.0 or newer
    /// (sharded pub/sub). The topology is discovered from the nodes named
    /// and followed through resharding and failover.
    pub async fn connect_cluster(url: &str) -> Result<Self, StoreError> {
        Self::connect_cluster_with_prefix(url, DEFAULT_PREFIX).await
    }

    /// Like [`connect_cluster`](Self::connect_cluster), with every key and
    /// channel under `prefix`, which may not hold `{` or `}` (they would
    /// change the keys' hash slots).
    pub async fn connect_cluster_with_prefix(url: &str, prefix: &str) -> Result<Self, StoreError> {
        if prefix.contains(['{', '}']) {
            return Err(StoreError::Unavailable(format!(
                "the key prefix {prefix:?} holds a brace, which Redis Cluster reads as a \
                 hash tag; choose a prefix without {{ or }}"
            )));
        }
        let location: Arc<str> = store_location(url).into();
        let seeds = cluster::seed_urls(url, &location)?;
        let commands = cluster::connect(
            &cluster::cluster_client(&seeds, &location, None)?,
            &location,
        )
        .await?;
        let (push_tx, push_rx) = tokio::sync::mpsc::unbounded_channel();
        let feed_client = cluster::cluster_client(&seeds, &location, Some(push_tx))?;
        let mut feed_conn = cluster::connect(&feed_client, &location).await?;
        let keys = Keys::cluster(prefix);
        match tokio::time::timeout(CONNECT_TIMEOUT, feed_conn.ssubscribe(&keys.revocations)).await {
            Ok(Ok(())) => {}
            Ok(Err(e))
                if e.to_string()
                    .to_ascii_lowercase()
                    .contains("unknown command") =>
            {
                return Err(StoreError::Unavailable(format!(
                    "the Redis Cluster at {location} has no sharded pub/sub (SSUBSCRIBE): \
                     wsgate needs Redis 7.0 or newer on a cluster; upgrade Redis"
                )));
            }
            Ok(Err(e)) => return Err(connect_error(&location, &e)),
            Err(_) => return Err(timeout_error(&location, "SSUBSCRIBE")),
        }
        let (revocations, _) = broadcast::channel(REVOCATION_CHANNEL_CAPACITY);
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let fanout = Arc::new(Fanout {
            revocations,
            events,
            up: AtomicBool::new(true),
            check_now: Notify::new(),
            origin: rand::random(),
            keys,
        });
        let (ops_tx, ops_rx) = tokio::sync::mpsc::unbounded_channel();
        let feed = tokio::spawn(cluster::feed_loop(
            feed_conn,
            Arc::clone(&location),
            Arc::clone(&fanout),
            ops_rx,
            push_rx,
        ));
        Ok(Self {
            conn: Conn::Cluster(commands),
            fanout,
            location,
            scripts: Scripts::new(),
            feed,
            shards: Some(cluster::Shards::new(ops_tx)),
        })
    }

    /// Whether this store speaks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.fanout.keys.cluster
    }

    /// Where the store lives: the URL without credentials.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The prefix of every key and channel.
    pub fn prefix(&self) -> &str {
        &self.fanout.keys.prefix
    }

    /// Runs one command (or pipeline, or script) with the deadline.
    async fn run<T, F>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        F: AsyncFnOnce(&mut Conn) -> redis::RedisResult<T>,
    {
        let mut conn = self.conn.clone();
        let result = tokio::time::timeout(COMMAND_TIMEOUT, f(&mut conn)).await;
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                let err = command_error(&self.location, what, &e);
                if matches!(err, StoreError::Unavailable(_)) {
                    self.fanout.check_now.notify_one();
                }
                Err(err)
            }
            Err(_) => {
                self.fanout.check_now.notify_one();
                Err(timeout_error(&self.location, what))
            }
        }
    }

    async fn query<T: FromRedisValue>(
        &self,
        what: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        self.run(what, async |conn| cmd.query_async(conn).await)
            .await
    }

    /// Runs `script` with `keys` and `args` (as Redis strings).
    async fn eval<T: FromRedisValue>(
        &self,
        what: &str,
        script: &Script,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<T, StoreError> {
        self.run(what, async |conn| {
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(*key);
            }
            for arg in args {
                invocation.arg(*arg);
            }
            invocation.invoke_async(conn).await
        })
        .await
    }

    async fn query_pipe<T: FromRedisValue>(
        &self,
        what: &str,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        self.run(what, async |conn| pipe.query_async(conn).await)
            .await
    }
}

/// The client for `url`; a `rediss://` URL may name the CA to trust instead
/// of the system's roots with `?ca_file=/path/to/ca.pem`.
fn open_client(url: &str, location: &str) -> Result<Client, StoreError> {
    let invalid = |e: RedisError| {
        StoreError::Unavailable(format!(
            "{location} is not a usable Redis URL ({e}); write \
             redis://[user:password@]host[:port][/db], or rediss://… for TLS \
             (with ?ca_file=/path/to/ca.pem for a private CA)"
        ))
    };
    let Some(ca_file) = query_param(url, "ca_file") else {
        return Client::open(url).map_err(invalid);
    };
    let root_cert = std::fs::read(&ca_file).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot read the CA certificate {ca_file} named by the Redis URL ({e}); \
             check the path and that wsgate may read it"
        ))
    })?;
    Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        },
    )
    .map_err(invalid)
}

/// The percent-decoded value of the query parameter `name` of `url`.
fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or_default();
    let raw = query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))?;
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        let hex = tail
            .get(..2)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(decoded)) => {
                bytes.push(decoded);
                rest = tail.get(2..).unwrap_or_default();
            }
            (b'+', _) => {
                bytes.push(b' ');
                rest = tail;
            }
            _ => {
                bytes.push(b);
                rest = tail;
            }
        }
    }
    String::from_utf8(bytes).ok()
}

/// Checks that the server has the commands this store uses. A server that
/// does not tell its version (`INFO` renamed or forbidden) is trusted.
async fn check_version(conn: &mut ConnectionManager, location: &str) -> Result<(), StoreError> {
    let info = tokio::time::timeout(
        COMMAND_TIMEOUT,
        redis::cmd("INFO").arg("server").query_async::<String>(conn),
    )
    .await;
    let info = match info {
        Ok(Ok(info)) => info,
        Ok(Err(e)) if e.kind() == redis::ErrorKind::AuthenticationFailed => {
            return Err(connect_error(location, &e));
        }
        Ok(Err(e)) if matches!(e.code(), Some("NOAUTH" | "WRONGPASS")) => {
            return Err(connect_error(location, &e));
        }
        Ok(Err(_)) => return Ok(()),
        Err(_) => return Err(timeout_error(location, "INFO")),
    };
    let Some(version) = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .map(str::trim)
    else {
        return Ok(());
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (6, 2) {
        return Err(StoreError::Unavailable(format!(
            "Redis at {location} is version {version}; wsgate needs 6.2 or newer \
             (GETDEL, SET PXAT): upgrade Redis"
        )));
    }
    Ok(())
}

/// A pub/sub connection subscribed to the fan-out channels.
async fn subscribe(client: &Client, keys: &Keys, location: &str) -> Result<PubSub, StoreError> {
    let attempt = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub
            .subscribe(&[
                keys.revocations.as_str(),
                keys.events.as_str(),
                keys.stream_events.as_str(),
                keys.presence_events.as_str(),
            ])
            .await?;
        Ok::<_, RedisError>(pubsub)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(pubsub)) => Ok(pubsub),
        Ok(Err(e)) => Err(connect_error(location, &e)),
        Err(_) => Err(timeout_error(location, "subscribing")),
    }
}

/// Feeds the watchers from the pub/sub connection, forever: when it drops,
/// reconnects with backoff and, once subscribed again, tells every watcher
/// it may have missed messages.
async fn feed_loop(client: Client, location: Arc<str>, fanout: Arc<Fanout>, first: PubSub) {
    let mut pubsub = Some(first);
    let mut backoff = MIN_BACKOFF;
    loop {
        let current = match pubsub.take() {
            Some(current) => current,
            None => match subscribe(&client, &fanout.keys, &location).await {
                Ok(current) => {
                    tracing::info!(
                        redis = %location,
                        "Redis subscription restored; sessions are re-checked, \
                         channel events published meanwhile are lost"
                    );
                    fanout.up.store(true, Ordering::SeqCst);
                    fanout.notify_lag();
                    current
                }
                Err(e) => {
                    tracing::debug!(error = %e, retry_in = ?backoff, "Redis still unreachable");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        fanout.up.store(true, Ordering::SeqCst);
        backoff = MIN_BACKOFF;
        let why = pump(current, &fanout).await;
        fanout.up.store(false, Ordering::SeqCst);
        tracing::warn!(
            redis = %location,
            reason = %why,
            "lost the Redis subscription: revocations and channel events from other \
             nodes are not received until it is back; reconnecting"
        );
    }
}

/// Forwards messages until the connection fails; returns why.
async fn pump(pubsub: PubSub, fanout: &Fanout) -> String {
    let (mut sink, mut stream) = pubsub.split();
    let mut ticker = tokio::time::interval(PING_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.reset();
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => fanout.dispatch(&msg),
                None => return "the connection closed".to_owned(),
            },
            _ = ticker.tick() => {
                if let Err(why) = ping(&mut sink).await {
                    return why;
                }
            }
            () = fanout.check_now.notified() => {
                if let Err(why) = ping(&mut sink).await {
                    return why;
                }
            }
        }
    }
}

async fn ping(sink: &mut PubSubSink) -> Result<(), String> {
    match tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("PING failed: {e}")),
        Err(_) => Err(format!("no answer to PING within {COMMAND_TIMEOUT:?}")),
    }
}

fn connect_error(location: &str, e: &RedisError) -> StoreError {
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
    {
        return StoreError::Unavailable(format!(
            "Redis at {location} refused wsgate ({e}); check the user and password in the \
             URL and the ACL of that user"
        ));
    }
    let text = e.to_string();
    if location.starts_with("rediss://") && text.contains("certificate") {
        return StoreError::Unavailable(format!(
            "Redis at {location} has a TLS certificate wsgate does not trust ({e}); for a \
             private CA add ?ca_file=/path/to/ca.pem to the URL"
        ));
    }
    StoreError::Unavailable(format!(
        "cannot reach Redis at {location}: {e}; is redis-server running and reachable \
         from this node?"
    ))
}

fn timeout_error(location: &str, what: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "Redis at {location} did not answer {what} within {COMMAND_TIMEOUT:?}; is it \
         running, reachable from this node and not overloaded?"
    ))
}

fn command_error(location: &str, what: &str, e: &RedisError) -> StoreError {
    match e.kind() {
        redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType => {
            StoreError::Corrupt(format!(
                "Redis at {location} answered {what} with unexpected data ({e}); is another \
                 program writing under the same key prefix?"
            ))
        }
        redis::ErrorKind::Io if e.is_timeout() => timeout_error(location, what),
        redis::ErrorKind::Io => StoreError::Unavailable(format!(
            "cannot reach Redis at {location} ({what}: {e}); is redis-server running and \
             reachable from this node?"
        )),
        _ if matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM")) => {
            connect_error(location, e)
        }
        _ => StoreError::Unavailable(format!("Redis at {location} refused {what}: {e}")),
    }
}

/// The stream scripts' last argument: whether streams are tied to the
/// node that wrote them (a cluster; see [`LUA_STREAM_ON_THIS_NODE`]).
fn on_node(keys: &Keys) -> &'static [u8] {
    if keys.cluster { b"1" } else { b"0" }
}

/// Milliseconds of `d`, at least 1 (Redis refuses a zero expiry).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_UNIX_MS)
}

#[async_trait::async_trait]
impl StateStore for RedisStateStore {
    async fn put_exchange(
        &self,
        sid: &str,
        state: Vec<u8>,
        ttl: Duration,
        quota: ExchangeQuota<'_>,
    ) -> Result<ExchangeAdmission, StoreError> {
        let state = Zeroizing::new(state);
        if ttl.is_zero() {
            // Expired at once: nothing to keep, but an older one must go.
            self.take_exchange(sid).await.map(drop)?;
            return Ok(ExchangeAdmission::Stored);
        }
        let keys = &self.fanout.keys;
        let ttl_ms = millis(ttl);
        let number = |n: u64| n.to_string().into_bytes();
        let (ttl_arg, group_max, total_max) = (
            number(ttl_ms),
            number(quota.max_per_group.into()),
            number(quota.max_total.into()),
        );
        let group_prefix = keys.exchange_group_prefix();
        let reply: Vec<u64> = self
            .eval(
                "the exchange quota script",
                &self.scripts.put_exchange,
                &[
                    &keys.exchange(sid),
                    &keys.exchange_index(),
                    &format!("{group_prefix}{}", quota.group),
                ],
                &[
                    &state[..],
                    &ttl_arg,
                    &group_max,
                    &total_max,
                    sid.as_bytes(),
                    quota.group.as_bytes(),
                    group_prefix.as_bytes(),
                ],
            )
            .await?;
        let retry_after = || Duration::from_millis(reply.get(1).copied().unwrap_or(ttl_ms));
        match reply.first() {
            Some(0) => Ok(ExchangeAdmission::Stored),
            Some(1) => Ok(ExchangeAdmission::GroupFull {
                retry_after: retry_after(),
            }),
            Some(2) => Ok(ExchangeAdmission::StoreFull {
                retry_after: retry_after(),
            }),
            _ => Err(StoreError::Corrupt(format!(
                "Redis at {} answered the exchange quota script with {reply:?}",
                self.location
            ))),
        }
    }

    async fn take_exchange(&self, sid: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let keys = &self.fanout.keys;
        let group_prefix = keys.exchange_group_prefix();
        self.eval(
            "the exchange take script",
            &self.scripts.take_exchange,
            &[&keys.exchange(sid), &keys.exchange_index()],
            &[sid.as_bytes(), group_prefix.as_bytes()],
        )
        .await
    }

    async fn live_exchanges(&self) -> Result<u64, StoreError> {
        self.eval(
            "the live exchange count",
            &self.scripts.live_exchanges,
            &[&self.fanout.keys.exchange_index()],
            &[],
        )
        .await
    }

    async fn put_session(&self, id: &str, record: &SealedSession) -> Result<(), StoreError> {
        let key = self.fanout.keys.session(id);
        let expires_at = match record.expires_at() {
            Some(at) if at > unix_now() => at,
            _ => return self.query::<()>("DEL", redis::cmd("DEL").arg(&key)).await,
        };
        let expires_at_ms = expires_at.saturating_mul(1000).min(MAX_UNIX_MS);
        self.query::<()>(
            "SET",
            redis::cmd("SET")
                .arg(&key)
                .arg(record.as_bytes())
                .arg("PXAT")
                .arg(expires_at_ms),
        )
        .await
    }

    async fn get_session(&self, id: &str) -> Result<Option<SealedSession>, StoreError> {
        let key = self.fanout.keys.session(id);
        let bytes: Option<Vec<u8>> = self.query("GET", redis::cmd("GET").arg(&key)).await?;
        // Whatever is there (a record of an earlier version, a forgery) is
        // handed up as is: the node opens it, or treats it as absent.
        let Some(record) = bytes.map(SealedSession::from_stored) else {
            return Ok(None);
        };
        // Node clocks may run ahead of Redis's: never hand out an expired one.
        Ok((!record.is_expired_at(unix_now())).then_some(record))
    }

    async fn revoke_session(&self, id: &str) -> Result<(), StoreError> {
        let keys = &self.fanout.keys;
        let message = format!("{} {id}", hex(&self.fanout.origin));
        if keys.cluster {
            // The session's slot and the revocations' differ: deleted
            // first, so a node that hears of it finds it gone.
            self.query::<()>("DEL", redis::cmd("DEL").arg(keys.session(id)))
                .await?;
            self.query::<()>(
                "SPUBLISH",
                redis::cmd("SPUBLISH").arg(&keys.revocations).arg(message),
            )
            .await?;
        } else {
            self.query_pipe::<()>(
                "DEL + PUBLISH",
                redis::pipe()
                    .atomic()
                    .del(keys.session(id))
                    .ignore()
                    .publish(&keys.revocations, message)
                    .ignore(),
            )
            .await?;
        }
        if !id.is_empty() {
            // No watcher is not an error.
            let _ = self.fanout.revocations.send(id.to_owned());
        }
        Ok(())
    }

    fn watch_revocations(&self) -> broadcast::Receiver<String> {
        self.fanout.revocations.subscribe()
    }

    async fn record_failure(
        &self,
        key: &str,
        window: Duration,
    ) -> Result<(u32, Duration), StoreError> {
        let key = self.fanout.keys.failures(key);
        let window_ms = millis(window);
        let (count, ttl): (u64, i64) = self
            .run("the failure counter script", async |conn| {
                self.scripts
                    .record_failure
                    .key(&key)
                    .arg(window_ms)
                    .invoke_async(conn)
                    .await
            })
            .await?;
        let left = u64::try_from(ttl).unwrap_or(window_ms).min(window_ms);
        Ok((
            u32::try_from(count).unwrap_or(u32::MAX),
            Duration::from_millis(left),
        ))
    }

    async fn record_failure_within(
        &self,
        limits: &[FailureLimit<'_>],
        window: Duration,
    ) -> Result<Option<Duration>, StoreError> {
        if limits.is_empty() {
            return Ok(None);
        }
        let keys: Vec<String> = limits
            .iter()
            .map(|l| self.fanout.keys.failures(l.key))
            .collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let window_ms = millis(window);
        let mut args = vec![window_ms.to_string().into_bytes()];
        args.extend(limits.iter().map(|l| l.limit.to_string().into_bytes()));
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let wait: i64 = self
            .eval(
                "the failure limit script",
                &self.scripts.record_failure_within,
                &keys,
                &args,
            )
            .await?;
        Ok(u64::try_from(wait)
            .ok()
            .map(|ms| Duration::from_millis(ms.min(window_ms))))
    }

    async fn forgive_failure(&self, key: &str) -> Result<(), StoreError> {
        let key = self.fanout.keys.failures(key);
        self.eval::<i64>(
            "the failure forgiving script",
            &self.scripts.forgive_failure,
            &[&key],
            &[],
        )
        .await
        .map(drop)
    }

    async fn failures(&self, key: &str) -> Result<(u32, Duration), StoreError> {
        let key = self.fanout.keys.failures(key);
        let (count, ttl): (Option<u64>, i64) = self
            .query_pipe("GET + PTTL", redis::pipe().atomic().get(&key).pttl(&key))
            .await?;
        match (count, u64::try_from(ttl)) {
            (Some(count), Ok(left)) if count > 0 && left > 0 => Ok((
                u32::try_from(count).unwrap_or(u32::MAX),
                Duration::from_millis(left),
            )),
            _ => Ok((0, Duration::ZERO)),
        }
    }

    async fn reset_failures(&self, key: &str) -> Result<(), StoreError> {
        let key = self.fanout.keys.failures(key);
        self.query::<()>("DEL", redis::cmd("DEL").arg(&key)).await
    }

    async fn publish_event(&self, channel: &str, payload: &[u8]) -> Result<(), StoreError> {
        if channel.is_empty() {
            return Ok(());
        }
        let out = self
            .fanout
            .keys
            .outlet(KIND_EVENT, &self.fanout.origin, channel, payload)?;
        self.query::<()>(
            out.command,
            redis::cmd(out.command).arg(&*out.to).arg(out.frame),
        )
        .await?;
        let _ = self.fanout.events.send(StoreEvent {
            channel: channel.to_owned(),
            payload: Bytes::copy_from_slice(payload),
            at: None,
            presence: None,
        });
        Ok(())
    }

    fn watch_events(&self) -> broadcast::Receiver<StoreEvent> {
        self.fanout.events.subscribe()
    }

    async fn publish_at(
        &self,
        channel: &str,
        payload: &[u8],
        policy: &HistoryPolicy,
    ) -> Result<Position, StoreError> {
        let keys = &self.fanout.keys;
        let out = keys.outlet(KIND_STREAM, &self.fanout.origin, channel, b"")?;
        let (stream, log) = (keys.stream(channel), keys.stream_log(channel));
        let epoch = wsgate_proto::continuity::new_epoch(&mut rand::rng());
        let (keep, ttl, max_bytes) = (
            policy.keep.to_string(),
            millis(policy.ttl).to_string(),
            policy.max_bytes.to_string(),
        );
        let (epoch, offset): (String, u64) = self
            .eval(
                "the stream publish script",
                &self.scripts.publish_at,
                &[&stream, &log],
                &[
                    epoch.as_bytes(),
                    keep.as_bytes(),
                    ttl.as_bytes(),
                    max_bytes.as_bytes(),
                    payload,
                    out.to.as_bytes(),
                    &out.frame,
                    out.command.as_bytes(),
                    on_node(keys),
                ],
            )
            .await?;
        Ok(Position { epoch, offset })
    }

    async fn presence_add(
        &self,
        member: &PresenceMember,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let keys = &self.fanout.keys;
        let out = keys.outlet(KIND_PRESENCE, &self.fanout.origin, &member.channel, b"")?;
        let [members, who, counts] = keys.presence(&member.channel);
        let index = keys.presence_index();
        if keys.cluster {
            let ttl_ms = millis(ttl);
            let joins: u32 = self
                .eval(
                    "the presence refresh script",
                    &self.scripts.presence_refresh_channel,
                    &[&members, &who, &counts],
                    &[
                        ttl_ms.to_string().as_bytes(),
                        out.to.as_bytes(),
                        &out.frame,
                        out.command.as_bytes(),
                        member.user.as_bytes(),
                        member.member.as_bytes(),
                    ],
                )
                .await?;
            self.index_presence(&[member.channel.as_str()], ttl_ms)
                .await?;
            return Ok(joins == 1);
        }
        let ttl = millis(ttl).to_string();
        let joined: u8 = self
            .eval(
                "the presence add script",
                &self.scripts.presence_add,
                &[&members, &who, &counts, &index],
                &[
                    member.member.as_bytes(),
                    member.user.as_bytes(),
                    ttl.as_bytes(),
                    out.to.as_bytes(),
                    &out.frame,
                    member.channel.as_bytes(),
                    out.command.as_bytes(),
                ],
            )
            .await?;
        Ok(joined == 1)
    }

    async fn presence_remove(&self, member: &PresenceMember) -> Result<bool, StoreError> {
        let keys = &self.fanout.keys;
        let out = keys.outlet(KIND_PRESENCE, &self.fanout.origin, &member.channel, b"")?;
        let [members, who, counts] = keys.presence(&member.channel);
        let left: u8 = self
            .eval(
                "the presence remove script",
                &self.scripts.presence_remove,
                &[&members, &who, &counts],
                &[
                    member.member.as_bytes(),
                    out.to.as_bytes(),
                    &out.frame,
                    out.command.as_bytes(),
                ],
            )
            .await?;
        Ok(left == 1)
    }

    async fn presence_refresh(
        &self,
        members: &[PresenceMember],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let keys = &self.fanout.keys;
        if keys.cluster {
            return self.presence_refresh_by_channel(members, ttl).await;
        }
        let index = keys.presence_index();
        let ttl = millis(ttl).to_string();
        for batch in members.chunks(PRESENCE_REFRESH_BATCH) {
            let mut args: Vec<&[u8]> = vec![
                keys.prefix.as_bytes(),
                ttl.as_bytes(),
                keys.presence_events.as_bytes(),
                &self.fanout.origin,
            ];
            for m in batch {
                args.extend([m.channel.as_bytes(), m.user.as_bytes(), m.member.as_bytes()]);
            }
            let _: i64 = self
                .eval(
                    "the presence refresh script",
                    &self.scripts.presence_refresh,
                    &[&index],
                    &args,
                )
                .await?;
        }
        Ok(())
    }

    async fn presence_sweep(&self) -> Result<(), StoreError> {
        let keys = &self.fanout.keys;
        if keys.cluster {
            return self.presence_sweep_by_channel().await;
        }
        let index = keys.presence_index();
        let _: i64 = self
            .eval(
                "the presence sweep script",
                &self.scripts.presence_sweep,
                &[&index],
                &[
                    keys.prefix.as_bytes(),
                    keys.presence_events.as_bytes(),
                    &self.fanout.origin,
                ],
            )
            .await?;
        Ok(())
    }

    async fn presence_list(&self, channel: &str, limit: usize) -> Result<PresenceList, StoreError> {
        let [members, who, _] = self.fanout.keys.presence(channel);
        let count = limit.to_string();
        let reply: Vec<redis::Value> = self
            .eval(
                "the presence list script",
                &self.scripts.presence_list,
                &[&members, &who],
                &[count.as_bytes()],
            )
            .await?;
        let corrupt = || StoreError::Corrupt("the presence list script answered oddly".into());
        let mut items = reply.into_iter();
        let total: usize = items
            .next()
            .map(redis::from_redis_value)
            .transpose()
            .map_err(|_| corrupt())?
            .ok_or_else(corrupt)?;
        let mut users = Vec::new();
        while let (Some(user), Some(n)) = (items.next(), items.next()) {
            let user: String = redis::from_redis_value(user).map_err(|_| corrupt())?;
            let n: u32 = redis::from_redis_value(n).map_err(|_| corrupt())?;
            users.push((user, n));
        }
        // Lua sorts by its locale; the protocol sorts by bytes.
        users.sort();
        Ok(PresenceList {
            truncated: total > users.len(),
            users,
        })
    }

    async fn read_history(
        &self,
        channel: &str,
        since: Option<&Position>,
        limit: usize,
        policy: &HistoryPolicy,
    ) -> Result<HistoryRead, StoreError> {
        let keys = &self.fanout.keys;
        let (stream, log) = (keys.stream(channel), keys.stream_log(channel));
        let epoch = wsgate_proto::continuity::new_epoch(&mut rand::rng());
        let ttl = millis(policy.ttl).to_string();
        // A `since` past what Lua counts exactly is past every stream: sent
        // as an epoch that matches none.
        let (since_epoch, since_offset) = match since {
            Some(p) if p.offset <= MAX_LUA_OFFSET => (p.epoch.as_str(), p.offset.to_string()),
            Some(_) => ("-", "0".to_owned()),
            None => ("", "0".to_owned()),
        };
        let count = limit.max(1).to_string();
        let reply: Vec<redis::Value> = self
            .eval(
                "the stream read script",
                &self.scripts.read_history,
                &[&stream, &log],
                &[
                    epoch.as_bytes(),
                    ttl.as_bytes(),
                    since_epoch.as_bytes(),
                    since_offset.as_bytes(),
                    count.as_bytes(),
                    on_node(keys),
                ],
            )
            .await?;
        parse_history_reply(reply, limit)
    }

    async fn watch_channel(&self, channel: &str) -> Result<(), StoreError> {
        let Some(shards) = &self.shards else {
            return Ok(());
        };
        shards
            .watch(&self.fanout.keys.shard_channel(channel), &self.location)
            .await
    }

    fn unwatch_channel(&self, channel: &str) {
        if let Some(shards) = &self.shards {
            shards.unwatch(&self.fanout.keys.shard_channel(channel));
        }
    }

    fn is_healthy(&self) -> bool {
        self.fanout.up.load(Ordering::SeqCst)
    }
}

/// Presence on a cluster, where a step spans one channel's slot at most.
impl RedisStateStore {
    /// Adds `channels` to the index of presence channels (which the sweep
    /// walks), scored by when their members expire at the latest.
    async fn index_presence(&self, channels: &[&str], ttl_ms: u64) -> Result<(), StoreError> {
        let expires = unix_now().saturating_mul(1000).saturating_add(ttl_ms);
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(self.fanout.keys.presence_index());
        for channel in channels {
            cmd.arg(expires).arg(*channel);
        }
        self.query::<()>("ZADD", &cmd).await
    }

    /// [`presence_refresh`](StateStore::presence_refresh) one channel (and
    /// batch) per script.
    async fn presence_refresh_by_channel(
        &self,
        members: &[PresenceMember],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let keys = &self.fanout.keys;
        let ttl_ms = millis(ttl);
        let ttl_arg = ttl_ms.to_string();
        let mut by_channel: std::collections::BTreeMap<&str, Vec<&PresenceMember>> =
            std::collections::BTreeMap::new();
        for m in members {
            by_channel.entry(m.channel.as_str()).or_default().push(m);
        }
        for (channel, members) in &by_channel {
            let out = keys.outlet(KIND_PRESENCE, &self.fanout.origin, channel, b"")?;
            let [set, who, counts] = keys.presence(channel);
            for batch in members.chunks(PRESENCE_REFRESH_BATCH) {
                let mut args: Vec<&[u8]> = vec![
                    ttl_arg.as_bytes(),
                    out.to.as_bytes(),
                    &out.frame,
                    out.command.as_bytes(),
                ];
                for m in batch {
                    args.extend([m.user.as_bytes(), m.member.as_bytes()]);
                }
                let _: u32 = self
                    .eval(
                        "the presence refresh script",
                        &self.scripts.presence_refresh_channel,
                        &[&set, &who, &counts],
                        &args,
                    )
                    .await?;
            }
        }
        let channels: Vec<&str> = by_channel.keys().copied().collect();
        for chunk in channels.chunks(PRESENCE_REFRESH_BATCH) {
            self.index_presence(chunk, ttl_ms).await?;
        }
        Ok(())
    }

    /// [`presence_sweep`](StateStore::presence_sweep) one channel per
    /// script. A channel found empty leaves the index; should a member
    /// join it between the two steps, the member's next refresh puts the
    /// channel back (until then its expiry is not announced).
    async fn presence_sweep_by_channel(&self) -> Result<(), StoreError> {
        let keys = &self.fanout.keys;
        let index = keys.presence_index();
        let channels: Vec<String> = self
            .query("ZRANGE", redis::cmd("ZRANGE").arg(&index).arg(0).arg(-1))
            .await?;
        for channel in channels {
            let out = keys.outlet(KIND_PRESENCE, &self.fanout.origin, &channel, b"")?;
            let [set, who, counts] = keys.presence(&channel);
            let left: u64 = self
                .eval(
                    "the presence sweep script",
                    &self.scripts.presence_sweep_channel,
                    &[&set, &who, &counts],
                    &[out.to.as_bytes(), &out.frame, out.command.as_bytes()],
                )
                .await?;
            if left == 0 {
                self.query::<()>("ZREM", redis::cmd("ZREM").arg(&index).arg(&channel))
                    .await?;
            }
        }
        Ok(())
    }
}
