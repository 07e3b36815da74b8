//! The store tests' view of the shared service harness
//! (`wsgate-test-support`): real servers, plus stores connected to them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub(crate) use wsgate_test_support::*;

use super::{PostgresCredentialStore, RedisStateStore};

/// A Redis store on the shared server with a private prefix; None when the
/// service tests are skipped.
pub(crate) async fn redis_store() -> Option<((), RedisStateStore)> {
    if skipped() {
        return None;
    }
    let url = shared_redis().url();
    let store = RedisStateStore::connect_with_prefix(&url, &unique_prefix())
        .await
        .unwrap();
    Some(((), store))
}

/// A store on the shared Redis Cluster (3 masters, 3 replicas) with a
/// private prefix; None when the service tests are skipped.
pub(crate) async fn redis_cluster_store() -> Option<((), RedisStateStore)> {
    if skipped() {
        return None;
    }
    let url = shared_cluster().url();
    let store = RedisStateStore::connect_cluster_with_prefix(&url, &unique_prefix())
        .await
        .unwrap();
    Some(((), store))
}

/// A PostgreSQL store in a new database of the shared cluster; None when
/// the service tests are skipped.
pub(crate) async fn postgres_store() -> Option<((), PostgresCredentialStore)> {
    if skipped() {
        return None;
    }
    let server = shared_pg();
    let database = server.create_database().await;
    let store = PostgresCredentialStore::connect(&server.url(&database))
        .await
        .unwrap();
    Some(((), store))
}
