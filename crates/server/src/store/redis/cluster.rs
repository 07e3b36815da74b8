//! Redis Cluster for [`RedisStateStore`](super::RedisStateStore): the
//! seed-node URL, one connection type for both deployments, and the feed of
//! sharded pub/sub channels (`SSUBSCRIBE`, Redis ≥ 7.0).
//!
//! The client is `redis`'s `cluster_async` (the crate this store already
//! speaks): it discovers the topology from the seed nodes, follows
//! `MOVED`/`ASK`, refreshes the slot map after a failover and re-issues
//! every `SSUBSCRIBE` to the shard that serves its slot now. What it cannot
//! give back are the messages published while a shard had no master; the
//! feed below turns every resubscription into the trait's "you may have
//! missed events" notice (`RecvError::Lagged`), so history channels are
//! caught up from their streams (protocol.md §6.5).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, PushInfo, PushKind, RedisFuture, Value};
use tokio::sync::{mpsc, oneshot};

use super::{
    COMMAND_TIMEOUT, CONNECT_TIMEOUT, Fanout, MAX_BACKOFF, MIN_BACKOFF, command_error,
    connect_error, query_param, timeout_error,
};
use crate::store::StoreError;

/// How long the feed waits, after a resubscription, for more of them before
/// it tells the watchers once: a failover resubscribes every channel of the
/// lost shard, one push each (and the client may resubscribe a channel
/// several times while it finds the new master), and each notice makes
/// every node re-check all its sessions.
const LAG_SETTLE: Duration = Duration::from_millis(500);

/// The connection commands go through: one Redis, or a cluster.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The seed nodes of a `redis+cluster://[user:password@]host:port,host:port,…[/?ca_file=…]`
/// URL (`rediss+cluster://` for TLS), as one `redis://` (or `rediss://`)
/// URL each, with the credentials and query of the whole.
pub(super) fn seed_urls(url: &str, location: &str) -> Result<Vec<String>, StoreError> {
    let invalid = |why: &str| {
        StoreError::Unavailable(format!(
            "{location} is not a usable Redis Cluster URL ({why}); write \
             redis+cluster://[user:password@]host:port,host:port,… naming some of the \
             cluster's nodes (rediss+cluster://… for TLS, with ?ca_file=/path/to/ca.pem \
             for a private CA)"
        ))
    };
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        ("rediss", rest)
    } else {
        return Err(invalid(
            "it must start with redis+cluster:// or rediss+cluster://",
        ));
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !(tail.is_empty() || tail == "/" || tail.starts_with("/?") || tail.starts_with('?')) {
        return Err(invalid(
            "a cluster has no databases: nothing may follow the nodes but ?…",
        ));
    }
    let query = tail.split_once('?').map(|(_, q)| q);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let mut seeds = Vec::new();
    for host in hosts.split(',') {
        let host = host.trim();
        if host.is_empty() {
            continue;
        }
        if !host.contains(':') {
            return Err(invalid(&format!("node {host:?} has no port")));
        }
        let mut seed = format!("{scheme}://");
        if let Some(userinfo) = userinfo {
            seed.push_str(userinfo);
            seed.push('@');
        }
        seed.push_str(host);
        if let Some(query) = query {
            seed.push_str("/?");
            seed.push_str(query);
        }
        seeds.push(seed);
    }
    if seeds.is_empty() {
        return Err(invalid("it names no node"));
    }
    Ok(seeds)
}

/// A cluster client for the seeds; `push` receives the pushes (sharded
/// messages) of its connections when given.
pub(super) fn cluster_client(
    seeds: &[String],
    location: &str,
    push: Option<mpsc::UnboundedSender<PushInfo>>,
) -> Result<ClusterClient, StoreError> {
    let mut builder = ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(COMMAND_TIMEOUT)
        // A failover takes the cluster's node timeout plus an election:
        // retry MOVED and lost connections within the command deadline.
        .retries(6)
        .min_retry_wait(20)
        .max_retry_wait(400)
        .use_protocol(redis::ProtocolVersion::RESP3);
    if let Some(ca_file) = seeds.first().and_then(|s| query_param(s, "ca_file")) {
        let root_cert = std::fs::read(&ca_file).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot read the CA certificate {ca_file} named by the Redis URL ({e}); \
                 check the path and that wsgate may read it"
            ))
        })?;
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        });
    }
    if let Some(push) = push {
        builder = builder.push_sender(push);
    }
    builder.build().map_err(|e| connect_error(location, &e))
}

/// Connects a cluster client, with the connect deadline.
pub(super) async fn connect(
    client: &ClusterClient,
    location: &str,
) -> Result<ClusterConnection, StoreError> {
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_async_connection()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(connect_error(location, &e)),
        Err(_) => Err(timeout_error(location, "connecting to the cluster")),
    }
}

/// What the store asks of the feed task, in order: a watch queued after
/// an unwatch of the same channel is subscribed after it is unsubscribed.
pub(super) enum Op {
    Watch(String, oneshot::Sender<Result<(), StoreError>>),
    Unwatch(String),
}

/// The sharded subscriptions of one store, driven by the hub: which shard
/// channels it has asked for, and whether each is confirmed yet.
pub(super) struct Shards {
    ops: mpsc::UnboundedSender<Op>,
    /// Shard channel → subscribed (`false` while its `SSUBSCRIBE` is on its
    /// way, so an unwatch meanwhile is queued after it).
    watched: std::sync::Mutex<HashMap<String, bool>>,
}

impl Shards {
    pub(super) fn new(ops: mpsc::UnboundedSender<Op>) -> Self {
        Self {
            ops,
            watched: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn watched(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        self.watched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Subscribes to `shard_channel` unless it is; returns once subscribed.
    /// A second watch while the first is on its way queues a (no-op)
    /// `SSUBSCRIBE` of its own, so it too returns only once subscribed.
    pub(super) async fn watch(
        &self,
        shard_channel: &str,
        location: &str,
    ) -> Result<(), StoreError> {
        if *self
            .watched()
            .entry(shard_channel.to_owned())
            .or_insert(false)
        {
            return Ok(());
        }
        let stopped = || StoreError::Unavailable("the Redis Cluster feed has stopped".into());
        let (tx, rx) = oneshot::channel();
        if self
            .ops
            .send(Op::Watch(shard_channel.to_owned(), tx))
            .is_err()
        {
            return Err(stopped());
        }
        let result = match tokio::time::timeout(COMMAND_TIMEOUT * 2, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(stopped()),
            Err(_) => Err(timeout_error(location, "SSUBSCRIBE")),
        };
        let mut watched = self.watched();
        match (&result, watched.get_mut(shard_channel)) {
            (Ok(()), Some(subscribed)) => *subscribed = true,
            (Err(_), Some(false)) => {
                watched.remove(shard_channel);
            }
            // Unwatched meanwhile: the feed unsubscribes after this.
            _ => {}
        }
        result
    }

    /// Stops receiving `shard_channel` (queued after any watch of it: never
    /// blocks).
    pub(super) fn unwatch(&self, shard_channel: &str) {
        if self.watched().remove(shard_channel).is_some() {
            let _ = self.ops.send(Op::Unwatch(shard_channel.to_owned()));
        }
    }
}

/// Runs the sharded feed: subscribes and unsubscribes as asked, hands every
/// sharded message to the fan-out, and turns resubscriptions (after a
/// reconnection or a failover) into a lag notice.
pub(super) async fn feed_loop(
    mut conn: ClusterConnection,
    location: Arc<str>,
    fanout: Arc<Fanout>,
    mut ops: mpsc::UnboundedReceiver<Op>,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
) {
    // Shard channels subscribed once: a later `ssubscribe` push for one of
    // them is the client resubscribing it somewhere.
    let mut confirmed: HashSet<Vec<u8>> = HashSet::new();
    // Every shard channel this store is subscribed to, to subscribe again
    // after a failover: the client moves its own subscriptions only once
    // it has refreshed its slot map, which a quiet feed may never make it do.
    let mut subscribed: HashSet<String> = HashSet::from([fanout.keys.revocations.clone()]);
    let mut lag_due: Option<tokio::time::Instant> = None;
    let mut down_since: Option<tokio::time::Instant> = None;
    let mut backoff = MIN_BACKOFF;
    let mut ticker = tokio::time::interval(super::PING_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.reset();
    loop {
        let settle = async {
            match lag_due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            op = ops.recv() => match op {
                // Queued behind a watch of the same channel (a hot channel's
                // first subscribers on this node, at once): subscribed already.
                Some(Op::Watch(channel, reply)) if subscribed.contains(&channel) => {
                    let _ = reply.send(Ok(()));
                }
                Some(Op::Watch(channel, reply)) => {
                    let result = run(&mut conn, &location, "SSUBSCRIBE", async |c| {
                        c.ssubscribe(&channel).await
                    }).await;
                    if result.is_ok() {
                        subscribed.insert(channel);
                    }
                    let _ = reply.send(result);
                }
                Some(Op::Unwatch(channel)) => {
                    confirmed.remove(channel.as_bytes());
                    subscribed.remove(&channel);
                    let _ = run(&mut conn, &location, "SUNSUBSCRIBE", async |c| {
                        c.sunsubscribe(&channel).await
                    }).await;
                }
                None => return,
            },
            push = pushes.recv() => {
                let Some(push) = push else { return };
                match push.kind {
                    PushKind::SMessage => {
                        if let [Value::BulkString(channel), Value::BulkString(payload)] = &push.data[..] {
                            fanout.dispatch_shard(channel, payload);
                        }
                    }
                    PushKind::SSubscribe => {
                        if let Some(Value::BulkString(channel)) = push.data.first()
                            && !confirmed.insert(channel.clone())
                        {
                            lag_due = Some(tokio::time::Instant::now() + LAG_SETTLE);
                        }
                    }
                    PushKind::SUnsubscribe => {
                        // Not asked for: the channel's slot moved to another
                        // shard (resharding), which unsubscribes its
                        // clients. Subscribe where it is now.
                        let moved = match push.data.first() {
                            Some(Value::BulkString(channel)) => std::str::from_utf8(channel)
                                .ok()
                                .filter(|c| subscribed.contains(*c))
                                .map(str::to_owned),
                            _ => None,
                        };
                        if let Some(channel) = moved {
                            tracing::info!(redis = %location, "a channel's slot moved; subscribing on its new shard");
                            let again = run(&mut conn, &location, "SSUBSCRIBE", async |c| {
                                c.ssubscribe(&channel).await
                            })
                            .await;
                            if again.is_err() && down_since.is_none() {
                                // The recovery below subscribes to it again.
                                down_since = Some(tokio::time::Instant::now());
                                fanout.up.store(false, Ordering::SeqCst);
                            }
                            lag_due = Some(tokio::time::Instant::now() + LAG_SETTLE);
                        }
                    }
                    PushKind::Disconnection => {
                        // Some node's connection dropped: unhealthy until
                        // every node answers a PING again.
                        if down_since.is_none() {
                            tracing::warn!(
                                redis = %location,
                                "lost a Redis Cluster connection: events of its shards are \
                                 not received until the cluster client reconnects"
                            );
                            down_since = Some(tokio::time::Instant::now());
                        }
                        fanout.up.store(false, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
            () = settle => {
                lag_due = None;
                tracing::info!(
                    redis = %location,
                    "Redis Cluster subscriptions restored; channel events published \
                     meanwhile are re-read from history where channels keep it"
                );
                fanout.notify_lag();
            }
            _ = ticker.tick(), if down_since.is_none() => {
                // A node that hangs without a reset is noticed by a PING
                // (which the client sends to every node).
                if ping(&mut conn, &location).await.is_err() {
                    down_since = Some(tokio::time::Instant::now());
                    fanout.up.store(false, Ordering::SeqCst);
                }
            }
            () = fanout.check_now.notified(), if down_since.is_none() => {
                if ping(&mut conn, &location).await.is_err() {
                    down_since = Some(tokio::time::Instant::now());
                    fanout.up.store(false, Ordering::SeqCst);
                }
            }
            () = tokio::time::sleep(backoff), if down_since.is_some() => {
                let restored = match ping(&mut conn, &location).await {
                    Ok(()) => resubscribe(&mut conn, &location, &subscribed).await,
                    Err(e) => Err(e),
                };
                match restored {
                    Ok(()) => {
                        backoff = MIN_BACKOFF;
                        down_since = None;
                        fanout.up.store(true, Ordering::SeqCst);
                        // Whatever was published while it was down is lost.
                        lag_due = Some(tokio::time::Instant::now() + LAG_SETTLE);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, retry_in = ?backoff, "Redis Cluster still unreachable");
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }
}

/// Subscribes to every channel of `channels` again (a no-op on the shard
/// that already has it), each where the slot map says its slot is now.
async fn resubscribe(
    conn: &mut ClusterConnection,
    location: &str,
    channels: &HashSet<String>,
) -> Result<(), StoreError> {
    for channel in channels {
        run(conn, location, "SSUBSCRIBE", async |c| {
            c.ssubscribe(channel).await
        })
        .await?;
    }
    Ok(())
}

/// One subscription command on the cluster connection, with the deadline.
async fn run<F>(
    conn: &mut ClusterConnection,
    location: &str,
    what: &str,
    f: F,
) -> Result<(), StoreError>
where
    F: AsyncFnOnce(&mut ClusterConnection) -> redis::RedisResult<()>,
{
    match tokio::time::timeout(COMMAND_TIMEOUT, f(conn)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(command_error(location, what, &e)),
        Err(_) => Err(timeout_error(location, what)),
    }
}

/// `PING` to every node, with the deadline.
async fn ping(conn: &mut ClusterConnection, location: &str) -> Result<(), StoreError> {
    run(conn, location, "PING", async |c| {
        redis::cmd("PING").query_async::<Value>(c).await.map(drop)
    })
    .await
}

#[cfg(test)]
mod tests {
    //! Against a real Redis Cluster (3 masters, 3 replicas): a fleet of
    //! stores, the slots of the key layout, one `SSUBSCRIBE` per channel per
    //! node, and a killed master.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::{Duration, Instant};

    use tokio::sync::broadcast::error::RecvError;

    use super::super::{Keys, RedisStateStore};
    use crate::store::test_servers::{RedisCluster, shared_cluster, skipped, unique_prefix};
    use crate::store::tests::next_real_event;
    use crate::store::{HistoryPolicy, PresenceChange, PresenceMember, StateStore};

    async fn store(url: &str, prefix: &str) -> RedisStateStore {
        RedisStateStore::connect_cluster_with_prefix(url, prefix)
            .await
            .unwrap()
    }

    fn history() -> HistoryPolicy {
        HistoryPolicy {
            keep: 100,
            ttl: Duration::from_secs(60),
            max_bytes: 1 << 20,
        }
    }

    #[tokio::test]
    async fn nodes_fan_out_only_the_channels_they_watch() {
        if skipped() {
            return;
        }
        let (url, prefix) = (shared_cluster().url(), unique_prefix());
        let (a, b) = (store(&url, &prefix).await, store(&url, &prefix).await);
        assert!(a.is_cluster() && b.is_healthy());
        let (mut events, mut revocations) = (b.watch_events(), b.watch_revocations());
        for channel in ["news", "feed", "room"] {
            b.watch_channel(channel).await.unwrap();
        }
        a.publish_event("unwatched", b"not for b").await.unwrap();
        a.publish_event("news", b"for b").await.unwrap();
        let event = next_real_event(&mut events).await.unwrap();
        assert_eq!(
            (event.channel.as_str(), &event.payload[..]),
            ("news", &b"for b"[..])
        );

        let at = a.publish_at("feed", b"kept", &history()).await.unwrap();
        let event = next_real_event(&mut events).await.unwrap();
        assert_eq!(event.channel, "feed");
        let stream_at = event.at.expect("a stream event carries its position");
        assert_eq!(
            (&*stream_at.epoch, stream_at.offset),
            (at.epoch.as_str(), at.offset)
        );

        let member = PresenceMember {
            channel: "room".into(),
            user: "alice".into(),
            member: "node-a/1".into(),
        };
        assert!(
            a.presence_add(&member, Duration::from_secs(30))
                .await
                .unwrap()
        );
        let event = next_real_event(&mut events).await.unwrap();
        assert_eq!(event.presence, Some(PresenceChange::Join("alice".into())));
        assert_eq!(
            b.presence_list("room", 10).await.unwrap().users,
            [("alice".to_owned(), 1)]
        );

        a.revoke_session("s1").await.unwrap();
        let id = tokio::time::timeout(Duration::from_secs(10), revocations.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(id, "s1");
    }

    #[tokio::test]
    async fn a_node_subscribes_once_per_channel_however_many_watch_it() {
        if skipped() {
            return;
        }
        let cluster = shared_cluster();
        let (url, prefix) = (cluster.url(), unique_prefix());
        let (a, b) = (store(&url, &prefix).await, store(&url, &prefix).await);
        let shard_channel = Keys::cluster(&prefix).shard_channel("hot");
        let master = cluster.master_of_key(&shard_channel);
        let subscribers = || {
            let reply = cluster
                .command(master, &["PUBSUB", "SHARDNUMSUB", &shard_channel])
                .unwrap();
            reply.lines().last().unwrap_or_default().trim().to_owned()
        };
        for _ in 0..100 {
            a.watch_channel("hot").await.unwrap();
        }
        b.watch_channel("hot").await.unwrap();
        assert_eq!(
            subscribers(),
            "2",
            "one subscription per node: {shard_channel}"
        );
        a.unwatch_channel("hot");
        let deadline = Instant::now() + Duration::from_secs(5);
        while subscribers() != "1" {
            assert!(Instant::now() < deadline, "the unwatch never reached Redis");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Watching again after the unwatch subscribes again.
        a.watch_channel("hot").await.unwrap();
        assert_eq!(subscribers(), "2");
    }

    #[test]
    fn every_step_stays_in_one_slot() {
        let keys = Keys::cluster("wsgate:");
        let slot = RedisCluster::key_slot;
        for channel in ["news", "user.émile.inbox", "a}b", "{x}", ""] {
            let [members, who, counts] = keys.presence(channel);
            let out = keys
                .outlet(super::super::KIND_STREAM, &[0; 16], channel, b"")
                .unwrap();
            assert_eq!(out.command, "SPUBLISH");
            let fanout = out.to.into_owned();
            let want = slot(&keys.stream(channel));
            for key in [keys.stream_log(channel), members, who, counts, fanout] {
                assert_eq!(slot(&key), want, "{key} and the stream of {channel:?}");
            }
        }
        let exchange = slot(&keys.exchange("sid-1"));
        for key in [
            keys.exchange("sid-2"),
            keys.exchange_index(),
            format!("{}10.0.0.1", keys.exchange_group_prefix()),
        ] {
            assert_eq!(slot(&key), exchange, "{key}");
        }
        assert_eq!(
            slot(&keys.failures("user:alice")),
            slot(&keys.failures("ip:10.0.0.1"))
        );
        // Sessions and channels spread over the slots.
        let sessions: std::collections::HashSet<u16> = (0..50)
            .map(|i| slot(&keys.session(&format!("s{i}"))))
            .collect();
        let channels: std::collections::HashSet<u16> = (0..50)
            .map(|i| slot(&keys.stream(&format!("c{i}"))))
            .collect();
        assert!(sessions.len() > 40 && channels.len() > 40);
    }

    #[test]
    fn a_cluster_url_names_its_seeds_with_the_whole_urls_credentials_and_query() {
        let seeds = super::seed_urls(
            "rediss+cluster://app:p%40ss@10.0.0.1:6379, 10.0.0.2:6380,/?ca_file=/etc/ca.pem",
            "rediss+cluster://app:***@10.0.0.1:6379,…",
        )
        .unwrap();
        assert_eq!(
            seeds,
            [
                "rediss://app:p%40ss@10.0.0.1:6379/?ca_file=/etc/ca.pem",
                "rediss://app:p%40ss@10.0.0.2:6380/?ca_file=/etc/ca.pem",
            ]
        );
        assert_eq!(
            super::seed_urls("redis+cluster://127.0.0.1:7000", "x").unwrap(),
            ["redis://127.0.0.1:7000"]
        );
    }

    #[tokio::test]
    async fn bad_urls_and_prefixes_are_refused_with_what_to_write() {
        let prefix =
            RedisStateStore::connect_cluster_with_prefix("redis+cluster://127.0.0.1:1", "a{b}:")
                .await
                .unwrap_err()
                .to_string();
        assert!(prefix.contains("hash tag"), "{prefix}");
        for (url, says) in [
            ("redis+cluster://", "names no node"),
            ("redis+cluster://127.0.0.1", "has no port"),
            ("redis+cluster://127.0.0.1:7000/2", "no databases"),
        ] {
            let e = RedisStateStore::connect_cluster(url)
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(says) && e.contains("redis+cluster://[user:password@]host:port"),
                "{url}: {e}"
            );
        }
        let down = RedisStateStore::connect_cluster("redis+cluster://127.0.0.1:1,127.0.0.1:2")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            down.contains("cannot reach Redis") || down.contains("did not answer"),
            "{down}"
        );
        let secret =
            RedisStateStore::connect_cluster("redis+cluster://u:s3cret-pw@127.0.0.1:1,127.0.0.1:2")
                .await
                .unwrap_err()
                .to_string();
        assert!(
            !secret.contains("s3cret-pw") && secret.contains("127.0.0.1:1"),
            "{secret}"
        );
    }

    /// Moves `slot` from the master on `from` to the one on `to`, keys and
    /// all, as `redis-cli --cluster reshard` does.
    fn move_slot(cluster: &RedisCluster, slot: u16, from: u16, to: u16) {
        let id = |port| cluster.command(port, &["CLUSTER", "MYID"]).unwrap();
        let (from_id, to_id, slot) = (id(from), id(to), slot.to_string());
        cluster
            .command(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id])
            .unwrap();
        cluster
            .command(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id])
            .unwrap();
        let keys = cluster
            .command(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "1000"])
            .unwrap();
        let to_port = to.to_string();
        for key in keys.lines().filter(|k| !k.is_empty()) {
            cluster
                .command(from, &["MIGRATE", "127.0.0.1", &to_port, key, "0", "5000"])
                .unwrap();
        }
        for port in cluster.masters() {
            cluster
                .command(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id])
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_channel_whose_slot_moves_keeps_its_events() {
        if skipped() {
            return;
        }
        let cluster = RedisCluster::start().unwrap();
        let (url, prefix) = (cluster.url(), unique_prefix());
        let (a, b) = (store(&url, &prefix).await, store(&url, &prefix).await);
        let keys = Keys::cluster(&prefix);
        let channel = "moving";
        b.watch_channel(channel).await.unwrap();
        let mut events = b.watch_events();
        let before = a.publish_at(channel, b"before", &history()).await.unwrap();
        assert_eq!(
            &next_real_event(&mut events).await.unwrap().payload[..],
            b"before"
        );

        let slot = RedisCluster::key_slot(&keys.stream(channel));
        let from = cluster.master_of_slot(slot);
        let to = *cluster.masters().iter().find(|&&p| p != from).unwrap();
        move_slot(&cluster, slot, from, to);
        assert_eq!(cluster.master_of_slot(slot), to);

        // Publishes follow the slot (MOVED); the subscriber is moved too,
        // told it may have missed events, and gets the later ones.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut lagged = false;
        loop {
            assert!(
                Instant::now() < deadline,
                "no event after the move within 20 s"
            );
            let at = a.publish_at(channel, b"after", &history()).await.unwrap();
            match tokio::time::timeout(Duration::from_millis(500), next_real_event(&mut events))
                .await
            {
                Err(_) => {}
                Ok(Err(RecvError::Lagged(_))) => lagged = true,
                Ok(Err(RecvError::Closed)) => panic!("the feed closed"),
                // An event after the move's lag notice (one before it may
                // come through the new subscription while the notice
                // waits for more resubscriptions to coalesce).
                Ok(Ok(event)) if &event.payload[..] == b"after" && lagged => {
                    // Written on another node: a new epoch (subscribers
                    // resync) rather than offsets the old node handed out.
                    assert_ne!(at.epoch, before.epoch);
                    break;
                }
                Ok(Ok(_)) => {}
            }
        }
        let shard_channel = keys.shard_channel(channel);
        let on_new = cluster
            .command(to, &["PUBSUB", "SHARDNUMSUB", &shard_channel])
            .unwrap();
        assert_eq!(on_new.lines().last().map(str::trim), Some("1"), "{on_new}");
    }

    #[tokio::test]
    async fn a_killed_master_is_survived_and_watchers_told_to_catch_up() {
        if skipped() {
            return;
        }
        let mut cluster = RedisCluster::start().unwrap();
        let (url, prefix) = (cluster.url(), unique_prefix());
        let (a, b) = (store(&url, &prefix).await, store(&url, &prefix).await);
        let keys = Keys::cluster(&prefix);
        let channel = "feed";
        b.watch_channel(channel).await.unwrap();
        let mut events = b.watch_events();
        let mut published = Vec::new();
        for i in 0..20u32 {
            published.push(
                a.publish_at(channel, &i.to_be_bytes(), &history())
                    .await
                    .unwrap(),
            );
        }
        for _ in 0..20 {
            next_real_event(&mut events).await.unwrap();
        }
        let master = cluster.master_of_key(&keys.stream(channel));
        cluster.kill_node(master);
        let killed_at = Instant::now();

        // During the gap every call answers within its deadline (2 s, with
        // the client's retries inside it), as an error or a success.
        let mut failures = 0;
        let promoted = loop {
            let started = Instant::now();
            match a.publish_at(channel, b"during", &history()).await {
                Ok(_) => break started,
                Err(e) => {
                    failures += 1;
                    assert!(e.to_string().contains("Redis"), "{e}");
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "a call hung for {:?}",
                started.elapsed()
            );
            assert!(
                killed_at.elapsed() < Duration::from_secs(30),
                "no recovery within 30 s"
            );
        };
        cluster
            .wait_failover(master, Duration::from_secs(20))
            .unwrap();
        eprintln!(
            "publishes failed {failures} times; the first success came {:?} after the kill",
            promoted - killed_at
        );

        // On the promoted replica the stream goes on in a new epoch (it
        // may lack the newest events): a position from before the kill
        // does not continue it, so a subscriber resyncs instead of being
        // handed offsets that now name other events.
        let last = published.last().unwrap();
        let read = b
            .read_history(channel, Some(last), 100, &history())
            .await
            .unwrap();
        assert!(!read.continues, "the old epoch continues after a failover");
        assert_ne!(read.position.epoch, last.epoch);

        // The watcher is told it may have missed events (its subscription
        // moved to the promoted replica), then gets new ones.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut lagged = false;
        loop {
            assert!(
                Instant::now() < deadline,
                "no lag notice and later event within 20 s"
            );
            a.publish_at(channel, b"after", &history()).await.unwrap();
            match tokio::time::timeout(Duration::from_millis(500), next_real_event(&mut events))
                .await
            {
                Err(_) => {}
                Ok(Err(RecvError::Lagged(_))) => lagged = true,
                Ok(Err(RecvError::Closed)) => panic!("the feed closed"),
                Ok(Ok(event)) if &event.payload[..] == b"after" && lagged => {
                    assert_ne!(&*event.at.unwrap().epoch, last.epoch.as_str());
                    break;
                }
                Ok(Ok(_)) => {}
            }
        }
        assert!(a.is_healthy() && b.is_healthy());
    }
}
