//! The state store a fleet test runs on: a private standalone Redis, or the
//! process's shared Redis Cluster (issue 16) — and
//! [`on_both_backends!`](crate::backend::on_both_backends), which runs one
//! test body on each.
//!
//! Every gateway uses the default key prefix (`wsgate:`), so the fleet
//! tests that share the cluster keep apart by their channel names (each
//! test its own) and random session ids. Tests that kill cluster nodes, or
//! that count a cluster's commands, start a private [`RedisCluster`]
//! instead (`cluster.rs`, `failover.rs`).

use wsgate_test_support::{RedisCluster, RedisServer, redis_command, shared_cluster};

/// Which state store a fleet runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// `redis://…`: a private `redis-server` for the test.
    Redis,
    /// `redis+cluster://…`: the shared 3-master + 3-replica cluster.
    Cluster,
}

/// The store a test's fleet shares, running until dropped (the shared
/// cluster runs until the test process ends).
pub(crate) enum State {
    Redis(RedisServer),
    Cluster(&'static RedisCluster),
}

impl Backend {
    /// Starts (or, for the cluster, finds) the store.
    pub(crate) fn start(self) -> State {
        match self {
            Self::Redis => State::Redis(RedisServer::start().unwrap()),
            Self::Cluster => State::Cluster(shared_cluster()),
        }
    }
}

/// The gateway's key prefix (not configurable in `wsgate serve`).
const PREFIX: &str = "wsgate:";

impl State {
    /// The `state = "…"` of the gateways' configuration.
    pub(crate) fn url(&self) -> String {
        match self {
            Self::Redis(redis) => redis.url(),
            Self::Cluster(cluster) => cluster.url(),
        }
    }

    /// The key `name` (`stream`, `stream-log`, `presence`, `presence-who`,
    /// …) of channel `channel`, laid out as the gateway's store lays it out
    /// on this backend (`store/redis/mod.rs`, `Keys::of_channel`).
    pub(crate) fn channel_key(&self, name: &str, channel: &str) -> String {
        match self {
            Self::Redis(_) => format!("{PREFIX}{name}:{channel}"),
            Self::Cluster(_) => format!("{PREFIX}{{c:{channel}}}:{name}"),
        }
    }

    /// Sends `args` to the server that holds `key` (the one Redis, or the
    /// master serving the key's slot) and returns the reply's lines.
    pub(crate) fn command(&self, key: &str, args: &[&str]) -> Vec<String> {
        let port = match self {
            Self::Redis(redis) => redis.port(),
            Self::Cluster(cluster) => cluster.master_of_key(key),
        };
        redis_command(port, args)
            .unwrap_or_else(|e| panic!("{e}"))
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// For each `name`, an `async fn name(backend: Backend)` in scope, two
/// tests: `name::redis` and `name::cluster` (multi-threaded runtimes with
/// four workers; skipped with `WSGATE_SKIP_SERVICE_TESTS=1`).
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn redis() {
                if crate::util::skip_services() {
                    return;
                }
                super::$name(crate::backend::Backend::Redis).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn cluster() {
                if crate::util::skip_services() {
                    return;
                }
                super::$name(crate::backend::Backend::Cluster).await;
            }
        }
    )+};
}
pub(crate) use on_both_backends;
