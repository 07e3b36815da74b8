//! A real fleet: three `wsgate serve` processes on a private Redis — or on
//! the shared Redis Cluster (`backend.rs`) — for the state, and PostgreSQL
//! for the users, as in docs/deployment.md.

use std::time::{Duration, Instant};

use serde_json::json;
use wsgate_client::{ClientConfig, Error, login};
use wsgate_proto::envelope::{FLAG_ENC, MessageType};
use wsgate_test_support::{PgServer, RedisServer};

use crate::backend::{Backend, State, on_both_backends};

use crate::channels::{API_KEY, api_publish};
use crate::cli::{Served, run, serve};

pub(crate) struct Fleet {
    pub(crate) auth: Served,
    pub(crate) b: Served,
    pub(crate) c: Served,
    pub(crate) _dir: tempfile::TempDir,
}

/// What a test adds to every node's configuration: lines in `[login]`, and
/// tables after the fleet's own.
#[derive(Default)]
pub(crate) struct Extra<'a> {
    pub(crate) login: &'a str,
    pub(crate) tables: &'a str,
}

fn node_config(
    dir: &std::path::Path,
    name: &str,
    redis: &str,
    pg: &str,
    auth_module: bool,
    extra: &Extra<'_>,
) -> String {
    let path = dir.join(format!("{name}.toml"));
    let toml = format!(
        r#"data_dir = "{data}"
state = "{redis}"
credentials = "{pg}"
auth_module = {auth_module}
api_keys = ["{API_KEY}"]
[login]
iterations = 4096
{login}
[[channels]]
pattern = "user.{{user}}.*"
sensitive = true
subscribe = "owner"
publish = "api"
{tables}
"#,
        data = dir.join("data").display(),
        login = extra.login,
        tables = extra.tables,
    );
    std::fs::write(&path, toml).unwrap();
    path.display().to_string()
}

async fn start_fleet(state: &State, pg: &PgServer) -> Fleet {
    start_fleet_with(&state.url(), pg, &Extra::default()).await
}

/// Node A (the authentication module), B and C on the state store
/// `redis_url` (`redis://…` or `redis+cluster://…`) and a new database in
/// `pg`, sharing one data directory; users alice and bob.
pub(crate) async fn start_fleet_with(redis_url: &str, pg: &PgServer, extra: &Extra<'_>) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let database = pg.create_database().await;
    let pg_url = pg.url(&database);
    let configs: Vec<String> = [("a", true), ("b", false), ("c", false)]
        .iter()
        .map(|(n, auth)| node_config(dir.path(), n, redis_url, &pg_url, *auth, extra))
        .collect();
    // One data directory for the fleet: the first keygen creates key and secret.
    let (ok, _, err) = run(&["keygen", "--config", &configs[0]], None);
    assert!(ok, "{err}");
    for (user, password) in [("alice", "alice password"), ("bob", "bob password")] {
        let (ok, _, err) = run(
            &[
                "user",
                "add",
                user,
                "--config",
                &configs[1],
                "--password-stdin",
            ],
            Some(password),
        );
        assert!(ok, "{err}");
    }
    let (ok, out, _) = run(&["user", "list", "--config", &configs[2]], None);
    assert!(ok);
    assert_eq!(
        out, "alice\nbob\n",
        "every node sees the users in PostgreSQL"
    );
    let node = |c: &str| serve(&["--config", c, "--listen", "127.0.0.1:0"]);
    Fleet {
        auth: node(&configs[0]),
        b: node(&configs[1]),
        c: node(&configs[2]),
        _dir: dir,
    }
}

pub(crate) fn at(s: &Served) -> ClientConfig {
    ClientConfig::from_addr(s.addr).timeout(Duration::from_secs(10))
}

/// Retries `f` until it succeeds or `limit` passes.
async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if started.elapsed() > limit => panic!("still failing after {limit:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

on_both_backends!(
    a_three_node_fleet_on_redis_and_postgres_survives_a_redis_restart,
    a_sealed_login_begun_on_one_auth_node_completes_on_another,
);

/// Logins, events, private channels and revocations across the nodes, on
/// either backend; then, on a standalone Redis, Redis restarted empty (the
/// cluster's counterpart, a master killed under load, is `failover.rs`).
async fn a_three_node_fleet_on_redis_and_postgres_survives_a_redis_restart(backend: Backend) {
    let state = backend.start();
    let pg = PgServer::start().unwrap();
    let Fleet {
        auth,
        b: node_b,
        c: node_c,
        _dir,
    } = start_fleet(&state, &pg).await;

    // Login on the auth node; a node without the module refuses logins.
    let session = login(&at(&auth), "alice", "alice password").await.unwrap();
    let err = login(&at(&node_b), "alice", "alice password")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::UnexpectedReply { status: 404, .. }),
        "{err:?}"
    );

    // WebSocket on B; publish through C's API reaches it.
    let mut on_b = session.connect(&at(&node_b)).await.unwrap();
    on_b.call(MessageType::Subscribe, "user.alice.inbox", b"", true)
        .await
        .unwrap();
    let reply = api_publish(node_c.addr, "user.alice.inbox", json!({"n": 1})).await;
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    let ev = on_b.recv().await.unwrap();
    assert_eq!(
        (ev.msg_type, ev.flags, ev.body.as_slice()),
        (MessageType::Event as u8, FLAG_ENC, &br#"{"n":1}"#[..])
    );

    // A private channel refuses another user, on any node.
    let bob = login(&at(&auth), "bob", "bob password").await.unwrap();
    let mut bob_on_c = bob.connect(&at(&node_c)).await.unwrap();
    let e = bob_on_c
        .call(MessageType::Subscribe, "user.alice.inbox", b"", true)
        .await
        .unwrap_err();
    assert_eq!(e.server_code(), Some("forbidden"));

    // Logout on C ends the session everywhere.
    let mut alice_on_auth = session.connect(&at(&auth)).await.unwrap();
    let alice_on_c = session.connect(&at(&node_c)).await.unwrap();
    alice_on_c.logout().await.unwrap();
    assert_eq!(on_b.raw().expect_close().await.unwrap(), Some(4001));
    assert_eq!(
        alice_on_auth.raw().expect_close().await.unwrap(),
        Some(4001)
    );
    assert_eq!(
        session
            .connect(&at(&node_b))
            .await
            .unwrap_err()
            .close_code(),
        Some(4401)
    );

    let State::Redis(redis) = state else {
        return;
    };
    let redis_port = redis.port();
    // Redis goes away: clear, fast errors instead of hangs.
    drop(redis);
    let started = Instant::now();
    let err = login(&at(&auth), "bob", "bob password").await.unwrap_err();
    assert!(
        matches!(err, Error::UnexpectedReply { status: 503, .. }),
        "{err:?}"
    );
    let reply = api_publish(node_c.addr, "user.bob.x", json!(1)).await;
    assert_eq!(reply.status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "failed fast: {:?}",
        started.elapsed()
    );
    // An established connection keeps working: its keys are in memory.
    assert_eq!(
        bob_on_c
            .request("sys.echo", b"still up", true)
            .await
            .unwrap(),
        b"still up"
    );

    // Redis comes back (empty): the nodes recover without a restart.
    let _redis = RedisServer::start_on(redis_port).unwrap();
    let bob = eventually(Duration::from_secs(20), || async {
        login(&at(&auth), "bob", "bob password")
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    // B may need a moment longer to reconnect (KEY_INIT closes with 1011 meanwhile).
    let mut bob_on_b = eventually(Duration::from_secs(20), || async {
        bob.connect(&at(&node_b)).await.map_err(|e| e.to_string())
    })
    .await;
    // SUBSCRIBE is refused (ERR unavailable) until B's event feed is back.
    let started = Instant::now();
    loop {
        match bob_on_b
            .call(MessageType::Subscribe, "user.bob.news", b"", true)
            .await
        {
            Ok(_) => break,
            Err(e)
                if e.server_code() == Some("unavailable")
                    && started.elapsed() < Duration::from_secs(20) =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("subscribe after recovery: {e:?}"),
        }
    }
    let reply = api_publish(auth.addr, "user.bob.news", json!("back")).await;
    assert_eq!(reply.status, 200);
    let ev = bob_on_b.recv().await.unwrap();
    assert_eq!(ev.body, br#""back""#);

    // Node B dies with a client on it: the client reconnects to another node
    // and keeps its session (no new login).
    drop(node_b);
    match bob_on_b.recv().await {
        Err(Error::Closed { .. }) => {}
        other => panic!("expected the connection to drop, got {other:?}"),
    }
    let mut bob_on_c = bob.connect(&at(&node_c)).await.unwrap();
    assert_eq!(
        bob_on_c.request("sys.echo", b"moved", true).await.unwrap(),
        b"moved"
    );
    drop(auth);
}

async fn a_sealed_login_begun_on_one_auth_node_completes_on_another(backend: Backend) {
    let state = backend.start();
    let pg = PgServer::start().unwrap();
    let fleet = start_fleet(&state, &pg).await;
    // A second authentication node with the same configuration.
    let auth_config = fleet._dir.path().join("a.toml");
    let auth_2 = serve(&[
        "--config",
        auth_config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let mut on_a = crate::util::RawHttp::connect(fleet.auth.addr, None).await;
    let mut on_a2 = crate::util::RawHttp::connect(auth_2.addr, None).await;
    let fp = wsgate_proto::keys::fingerprint_of(&on_a2.server_pk().await);

    // Request 1 on A, request 2 on A2: the exchange (exchange_key included)
    // is in Redis.
    let (begun, start) = crate::util::first_request(&mut on_a, "alice", "alice password").await;
    let cf = crate::util::client_final(&begun, start, &fp);
    let ok = on_a2.put_second(&begun, &cf).await;
    assert_eq!(ok.reply.status, 200, "{:?}", ok.reply.json);
    assert_eq!(ok.inner["user"], "alice");
    // Consumed fleet-wide: the same request 2 on A finds nothing.
    let again = on_a.put_second(&begun, &cf).await;
    assert_eq!(crate::util::scram_error(&again.reply), "e=other-error");

    // And the other way round, with a wrong password: the failure is boxed
    // by whichever node takes the exchange.
    let (begun, start) = crate::util::first_request(&mut on_a2, "bob", "not bob's").await;
    let cf = crate::util::client_final(&begun, start, &fp);
    let failed = on_a.put_second(&begun, &cf).await;
    assert_eq!(crate::util::sealed_error(&failed), "e=invalid-proof");
}
