//! Issue 6, "Redis restarted under load": the three-node fleet of
//! `fleet.rs` (real Redis, real PostgreSQL) under a sustained closed-loop
//! load while Redis goes away and comes back twice — first **with its data**
//! (an append-only file, as a Redis with persistence restarts), then
//! **empty** (as one without persistence, or a replacement, comes back).
//!
//! The load, for the whole test:
//!
//! * echo clients: one long-lived connection each, `sys.echo` in a loop
//!   (every other request with ENC); a client whose connection ends does
//!   what a real one does: a new connection on the same session
//!   (HELLO → KEY_INIT), and a new login when the gateway no longer knows
//!   the session (4401);
//! * reconnect clients: a new connection on their session to the next node,
//!   one echo, gone — over and over;
//! * login clients: log in on the authentication node, connect to the next
//!   node, one echo;
//! * pub/sub clients: a subscriber on one node, a publisher on another, a
//!   PUBLISH and the wait for its event.
//!
//! Every operation has a deadline and each outcome is classified: ok, a
//! clean refusal the docs promise (HTTP 503, `ERR unavailable`, close 1011,
//! 4001 or 4401, an event lost while the feed was down), a timeout, or
//! anything else. The summary is printed (`--nocapture` shows it).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wsgate_client::{ClientConfig, Connection, Error, Session, login};
use wsgate_proto::envelope::MessageType;
use wsgate_test_support::{PgServer, RedisServer};

use crate::fleet::{Extra, Fleet, at, start_fleet_with};

const ECHO_CLIENTS: usize = 16;
const RECONNECT_CLIENTS: usize = 4;
const LOGIN_CLIENTS: usize = 2;
const PUBSUB_CLIENTS: usize = 2;

/// Reaching this is a hang: every operation is cut off there.
const OP_TIMEOUT: Duration = Duration::from_secs(15);
/// The client's own deadline for each wait.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// A refusal must come at least this fast (a node gives up on a Redis
/// command after 2 s).
const FAIL_FAST: Duration = Duration::from_secs(6);
/// How long a published event may take to arrive.
const EVENT_WAIT: Duration = Duration::from_secs(3);
const BASELINE: Duration = Duration::from_secs(3);
const OUTAGE: Duration = Duration::from_secs(4);
/// Once Redis is back, every kind of operation must succeed again within
/// this…
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
/// …and then keep succeeding for this long.
const SETTLED: Duration = Duration::from_secs(3);

const USERS: [(&str, &str); 2] = [("alice", "alice password"), ("bob", "bob password")];

/// The fleet's configuration for this test: a channel anyone logged in may
/// use, and no per-IP login start limit in the way of the login clients —
/// nor the per-user failure limit: a login in flight holds one count of it
/// until its proof is checked, so a dozen clients of one user logging in at
/// once on a loaded machine were refused `429` (seen: "too many failed
/// logins; retry in 300 s" at start-up, with nothing failed).
const LOGIN_EXTRA: &str = "max_starts_per_ip = 10000000\nmax_failures_per_user = 1000";
const CHANNEL_EXTRA: &str = r#"[[channels]]
pattern = "load.*"
sensitive = false
subscribe = "authenticated"
publish = "authenticated"
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// A request on an established connection.
    Echo,
    /// A new connection on an existing session (HELLO → KEY_INIT), one echo.
    Reconnect,
    /// A new login, a connection, one echo.
    Login,
    /// A login because the gateway forgot the session (after 4401).
    Relogin,
    /// PUBLISH on one node, the event on another (or a SUBSCRIBE).
    PubSub,
}

/// The kinds every phase without a fault must show succeeding.
const STEADY_KINDS: [Kind; 4] = [Kind::Echo, Kind::Reconnect, Kind::Login, Kind::PubSub];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Baseline,
    /// Redis stopped; it will come back with its data.
    Down1,
    /// Redis back with its data.
    Up1,
    /// Redis stopped; it will come back empty.
    Down2,
    /// Redis back, empty.
    Up2,
}

impl Phase {
    const ALL: [Self; 5] = [
        Self::Baseline,
        Self::Down1,
        Self::Up1,
        Self::Down2,
        Self::Up2,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Down1 => "Redis down (1)",
            Self::Up1 => "back with its data",
            Self::Down2 => "Redis down (2)",
            Self::Up2 => "back empty",
        }
    }
}

const HTTP_503: &str = "HTTP 503";
const ERR_UNAVAILABLE: &str = "ERR unavailable";
const CLOSE_1011: &str = "close 1011";
const CLOSE_4001: &str = "close 4001";
const CLOSE_4401: &str = "close 4401";
const EVENT_LOST: &str = "event lost";

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Ok,
    /// A refusal the docs promise while the store is away.
    Clean(&'static str),
    Timeout,
    Unexpected(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => f.write_str("ok"),
            Self::Clean(what) => f.write_str(what),
            Self::Timeout => f.write_str("TIMEOUT"),
            Self::Unexpected(what) => write!(f, "UNEXPECTED {what}"),
        }
    }
}

fn classify(e: Error) -> Outcome {
    match &e {
        Error::UnexpectedReply { status: 503, .. } => Outcome::Clean(HTTP_503),
        Error::Server { code, .. } if code == "unavailable" => Outcome::Clean(ERR_UNAVAILABLE),
        Error::Closed {
            code: Some(1011), ..
        } => Outcome::Clean(CLOSE_1011),
        Error::Closed {
            code: Some(4001), ..
        } => Outcome::Clean(CLOSE_4001),
        Error::Closed {
            code: Some(4401), ..
        } => Outcome::Clean(CLOSE_4401),
        Error::Timeout(_) => Outcome::Timeout,
        _ => Outcome::Unexpected(e.to_string()),
    }
}

/// Whether the connection is gone after this outcome.
fn connection_lost(outcome: &Outcome) -> bool {
    !matches!(
        outcome,
        Outcome::Ok | Outcome::Clean(ERR_UNAVAILABLE | EVENT_LOST)
    )
}

#[derive(Clone, Debug)]
struct Record {
    kind: Kind,
    phase: Phase,
    worker: usize,
    start: Instant,
    latency: Duration,
    outcome: Outcome,
}

/// What the clients share with the test.
struct Load {
    phase: AtomicU8,
    stop: AtomicBool,
    ready: AtomicUsize,
    records: Mutex<Vec<Record>>,
    /// Node A (authentication), B, C.
    nodes: Vec<ClientConfig>,
}

impl Load {
    fn phase(&self) -> Phase {
        Phase::ALL[usize::from(self.phase.load(Ordering::SeqCst))]
    }

    fn set_phase(&self, phase: Phase) {
        let index = Phase::ALL.iter().position(|p| *p == phase).unwrap();
        self.phase
            .store(u8::try_from(index).unwrap(), Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// Runs one operation with the deadline and records its outcome.
    async fn op<T>(
        &self,
        kind: Kind,
        worker: usize,
        fut: impl Future<Output = Result<T, Outcome>>,
    ) -> Result<T, Outcome> {
        let start = Instant::now();
        let result = tokio::time::timeout(OP_TIMEOUT, fut)
            .await
            .unwrap_or(Err(Outcome::Timeout));
        // The phase it ended in: an operation that began while Redis was
        // down but met the restarted one counts as "back".
        let phase = self.phase();
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(o) => o.clone(),
        };
        self.records.lock().unwrap().push(Record {
            kind,
            phase,
            worker,
            start,
            latency: start.elapsed(),
            outcome,
        });
        result
    }

    async fn login(&self, kind: Kind, worker: usize) -> Result<Session, Outcome> {
        let (user, password) = USERS[worker % USERS.len()];
        self.op(kind, worker, async {
            login(&self.nodes[0], user, password)
                .await
                .map_err(classify)
        })
        .await
    }

    /// What a client does when its connection is gone: a new one on the
    /// same session; a new login first if the gateway forgot the session.
    async fn reconnect(
        &self,
        worker: usize,
        session: &mut Session,
        node: &ClientConfig,
    ) -> Option<Connection> {
        let result = self
            .op(Kind::Reconnect, worker, async {
                session.connect(node).await.map_err(classify)
            })
            .await;
        match result {
            Ok(conn) => return Some(conn),
            Err(Outcome::Clean(CLOSE_4401)) => {
                if let Ok(fresh) = self.login(Kind::Relogin, worker).await {
                    *session = fresh;
                }
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        None
    }
}

async fn echo(conn: &mut Connection, n: u64) -> Result<(), Outcome> {
    let body = format!("echo {n}");
    let reply = conn
        .request("sys.echo", body.as_bytes(), n.is_multiple_of(2))
        .await
        .map_err(classify)?;
    if reply == body.as_bytes() {
        Ok(())
    } else {
        Err(Outcome::Unexpected("the echo differs".into()))
    }
}

async fn echo_client(load: Arc<Load>, worker: usize) {
    let node = load.nodes[worker % 3].clone();
    let mut session = load.login(Kind::Login, worker).await.unwrap();
    let mut conn = Some(session.connect(&node).await.unwrap());
    load.ready.fetch_add(1, Ordering::SeqCst);
    let mut n = 0;
    while !load.stopped() {
        let Some(c) = conn.as_mut() else {
            conn = load.reconnect(worker, &mut session, &node).await;
            continue;
        };
        n += 1;
        if load.op(Kind::Echo, worker, echo(c, n)).await.is_err() {
            conn = None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn reconnect_client(load: Arc<Load>, worker: usize) {
    let mut session = load.login(Kind::Login, worker).await.unwrap();
    load.ready.fetch_add(1, Ordering::SeqCst);
    let mut n = 0;
    while !load.stopped() {
        n += 1;
        let node = &load.nodes[usize::try_from(n % 3).unwrap()];
        let result = load
            .op(Kind::Reconnect, worker, async {
                let mut conn = session.connect(node).await.map_err(classify)?;
                echo(&mut conn, n).await
            })
            .await;
        if result == Err(Outcome::Clean(CLOSE_4401))
            && let Ok(fresh) = load.login(Kind::Relogin, worker).await
        {
            session = fresh;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn login_client(load: Arc<Load>, worker: usize) {
    load.ready.fetch_add(1, Ordering::SeqCst);
    let mut n = 0;
    while !load.stopped() {
        n += 1;
        let node = &load.nodes[usize::try_from(n % 3).unwrap()];
        let (user, password) = USERS[worker % USERS.len()];
        let _ = load
            .op(Kind::Login, worker, async {
                let session = login(&load.nodes[0], user, password)
                    .await
                    .map_err(classify)?;
                let mut conn = session.connect(node).await.map_err(classify)?;
                echo(&mut conn, n).await
            })
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// PUBLISH on `publisher`, then the event on `subscriber` (older ones,
/// delayed, are skipped).
async fn round_trip(
    subscriber: &mut Connection,
    publisher: &mut Connection,
    channel: &str,
    seq: u64,
) -> Result<(), Outcome> {
    let body = seq.to_string();
    publisher
        .call(MessageType::Publish, channel, body.as_bytes(), false)
        .await
        .map_err(classify)?;
    let deadline = tokio::time::Instant::now() + EVENT_WAIT;
    loop {
        let msg = match tokio::time::timeout_at(deadline, subscriber.recv()).await {
            Err(_) => return Err(Outcome::Clean(EVENT_LOST)),
            Ok(msg) => msg.map_err(classify)?,
        };
        if msg.msg_type == MessageType::Event as u8
            && msg.name == channel
            && msg.body == body.as_bytes()
        {
            return Ok(());
        }
    }
}

async fn pubsub_client(load: Arc<Load>, worker: usize) {
    let sub_node = load.nodes[1 + worker % 2].clone();
    let pub_node = load.nodes[2 - worker % 2].clone();
    let channel = format!("load.{worker}");
    let mut session = load.login(Kind::Login, worker).await.unwrap();
    let mut subscriber = Some(session.connect(&sub_node).await.unwrap());
    let mut publisher = Some(session.connect(&pub_node).await.unwrap());
    let mut subscribed = false;
    load.ready.fetch_add(1, Ordering::SeqCst);
    let mut seq = 0;
    while !load.stopped() {
        let Some(sub) = subscriber.as_mut() else {
            subscriber = load.reconnect(worker, &mut session, &sub_node).await;
            subscribed = false;
            continue;
        };
        let Some(publ) = publisher.as_mut() else {
            publisher = load.reconnect(worker, &mut session, &pub_node).await;
            continue;
        };
        let result = if subscribed {
            seq += 1;
            load.op(Kind::PubSub, worker, round_trip(sub, publ, &channel, seq))
                .await
        } else {
            let result = load
                .op(Kind::PubSub, worker, async {
                    sub.call(MessageType::Subscribe, &channel, b"", false)
                        .await
                        .map(drop)
                        .map_err(classify)
                })
                .await;
            subscribed = result.is_ok();
            result
        };
        match result {
            Err(outcome) if connection_lost(&outcome) => {
                // One session: an end closes both. Start both over.
                (subscriber, publisher) = (None, None);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Ok(()) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits until there has been no failure for [`SETTLED`], with every kind
/// of operation succeeding a few times since; returns how long after
/// `since` the last failure was seen, or None if that does not happen
/// within [`RECOVERY_BOUND`].
async fn wait_settled(load: &Load, phase: Phase, since: Instant) -> Option<Duration> {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let records: Vec<Record> = load
            .records()
            .into_iter()
            .filter(|r| r.phase == phase)
            .collect();
        let last_bad = records
            .iter()
            .filter(|r| r.outcome != Outcome::Ok)
            .map(|r| r.start + r.latency)
            .max()
            .unwrap_or(since)
            .max(since);
        let mut ok_since: BTreeMap<Kind, usize> = BTreeMap::new();
        for r in &records {
            if r.outcome == Outcome::Ok && r.start > last_bad {
                *ok_since.entry(r.kind).or_default() += 1;
            }
        }
        if last_bad.elapsed() >= SETTLED
            && STEADY_KINDS
                .iter()
                .all(|k| ok_since.get(k).is_some_and(|n| *n >= 3))
        {
            return Some(last_bad - since);
        }
        if since.elapsed() > RECOVERY_BOUND + SETTLED {
            return None;
        }
    }
}

fn assert_nodes_alive(fleet: &mut Fleet, when: &str) {
    for (name, node) in [
        ("A", &mut fleet.auth),
        ("B", &mut fleet.b),
        ("C", &mut fleet.c),
    ] {
        let status = node.child.try_wait().unwrap();
        assert!(status.is_none(), "node {name} exited {when}: {status:?}");
    }
}

/// Outcome counts and the slowest operation, per phase and kind.
fn summary(records: &[Record]) -> String {
    let mut table: BTreeMap<(Phase, Kind), (BTreeMap<Outcome, usize>, Duration)> = BTreeMap::new();
    for r in records {
        let (counts, slowest) = table.entry((r.phase, r.kind)).or_default();
        *counts.entry(r.outcome.clone()).or_default() += 1;
        *slowest = (*slowest).max(r.latency);
    }
    let mut out = String::new();
    for phase in Phase::ALL {
        out.push_str(&format!("  {}:\n", phase.name()));
        for ((_, kind), (counts, slowest)) in
            table.range((phase, Kind::Echo)..=(phase, Kind::PubSub))
        {
            let counts: Vec<String> = counts.iter().map(|(o, n)| format!("{o} {n}")).collect();
            out.push_str(&format!(
                "    {kind:?}: {} (slowest {slowest:.1?})\n",
                counts.join(", ")
            ));
        }
    }
    out
}

/// When, after Redis was started again, each kind of operation last
/// failed (the end of the failed operation), and when connections were
/// closed with 4001.
fn recovery(records: &[Record], phase: Phase, back: Instant, settled: Option<Duration>) -> String {
    let at = |r: &Record| format!("+{:.1?}", (r.start + r.latency).duration_since(back));
    let mut parts = Vec::new();
    for kind in [
        Kind::Echo,
        Kind::Reconnect,
        Kind::Login,
        Kind::Relogin,
        Kind::PubSub,
    ] {
        let last = records
            .iter()
            .filter(|r| r.phase == phase && r.kind == kind && r.outcome != Outcome::Ok)
            .max_by_key(|r| r.start + r.latency);
        if let Some(r) = last {
            parts.push(format!("{kind:?} {} ({})", at(r), r.outcome));
        }
    }
    let mut closed: Vec<Duration> = records
        .iter()
        .filter(|r| r.phase == phase && r.outcome == Outcome::Clean(CLOSE_4001))
        .map(|r| (r.start + r.latency).duration_since(back))
        .collect();
    closed.sort();
    if let (Some(first), Some(last)) = (closed.first(), closed.last()) {
        parts.push(format!(
            "{} closed with 4001 at +{first:.1?}..+{last:.1?}",
            closed.len()
        ));
    }
    let settled = settled.map_or_else(
        || "NOT RECOVERED".to_owned(),
        |d| format!("no failure from +{d:.1?} on"),
    );
    format!(
        "  {} (times after Redis was started): {settled}; last failures: {}\n",
        phase.name(),
        parts.join(", ")
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_under_load_rides_out_redis_restarts_with_and_without_its_data() {
    if crate::util::skip_services() {
        return;
    }
    let redis_data = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let redis = RedisServer::start_persistent_on(redis_port, redis_data.path()).unwrap();
    let pg = PgServer::start().unwrap();
    let extra = Extra {
        login: LOGIN_EXTRA,
        tables: CHANNEL_EXTRA,
    };
    let mut fleet = start_fleet_with(&redis.url(), &pg, &extra).await;
    let client = |s: &crate::cli::Served| at(s).timeout(CLIENT_TIMEOUT);
    let load = Arc::new(Load {
        phase: AtomicU8::new(0),
        stop: AtomicBool::new(false),
        ready: AtomicUsize::new(0),
        records: Mutex::new(Vec::new()),
        nodes: vec![client(&fleet.auth), client(&fleet.b), client(&fleet.c)],
    });

    // A witness: a session and an idle connection from before any outage.
    let (user, password) = USERS[0];
    let witness = login(&load.nodes[0], user, password).await.unwrap();
    let mut witness_conn = witness.connect(&load.nodes[1]).await.unwrap();

    // Workers are numbered in this order: echo clients first.
    let clients = ECHO_CLIENTS + RECONNECT_CLIENTS + LOGIN_CLIENTS + PUBSUB_CLIENTS;
    let workers: Vec<_> = (0..clients)
        .map(|w| {
            let l = load.clone();
            match w {
                w if w < ECHO_CLIENTS => tokio::spawn(echo_client(l, w)),
                w if w < ECHO_CLIENTS + RECONNECT_CLIENTS => tokio::spawn(reconnect_client(l, w)),
                w if w < clients - PUBSUB_CLIENTS => tokio::spawn(login_client(l, w)),
                w => tokio::spawn(pubsub_client(l, w)),
            }
        })
        .collect();
    let started = Instant::now();
    while load.ready.load(Ordering::SeqCst) < clients {
        assert!(
            !workers.iter().any(tokio::task::JoinHandle::is_finished),
            "a client failed to start"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "clients did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let echo_workers: BTreeSet<usize> = (0..ECHO_CLIENTS).collect();

    // Baseline, then Redis stops and comes back with its data.
    tokio::time::sleep(BASELINE).await;
    load.set_phase(Phase::Down1);
    drop(redis);
    tokio::time::sleep(OUTAGE).await;
    // (Up from the start: operations that meet the new Redis count as "back".)
    load.set_phase(Phase::Up1);
    let back1 = Instant::now();
    let redis = RedisServer::start_persistent_on(redis_port, redis_data.path()).unwrap();
    let recovered1 = wait_settled(&load, Phase::Up1, back1).await;
    assert_nodes_alive(&mut fleet, "after the first restart");
    // The witness session still opens connections; its idle connection lives.
    let witness_reconnect = witness.connect(&load.nodes[2]).await.map(drop);
    let witness_echo = echo(&mut witness_conn, 1).await;

    // Redis stops again and comes back empty.
    load.set_phase(Phase::Down2);
    drop(redis);
    tokio::time::sleep(OUTAGE).await;
    load.set_phase(Phase::Up2);
    let back2 = Instant::now();
    let _redis = RedisServer::start_on(redis_port).unwrap();
    let recovered2 = wait_settled(&load, Phase::Up2, back2).await;
    let witness_after_empty = witness.connect(&load.nodes[2]).await.map(drop);
    let witness_conn_after_empty = witness_conn.raw().expect_close().await;

    load.stop.store(true, Ordering::SeqCst);
    for worker in workers {
        tokio::time::timeout(OP_TIMEOUT * 2, worker)
            .await
            .expect("a client stopped")
            .expect("a client panicked");
    }
    assert_nodes_alive(&mut fleet, "at the end");

    let records = load.records();
    println!(
        "Redis restarted under load ({clients} clients, 3 nodes):\n{}{}{}",
        summary(&records),
        recovery(&records, Phase::Up1, back1, recovered1),
        recovery(&records, Phase::Up2, back2, recovered2),
    );
    let in_phase = |phase: Phase| records.iter().filter(move |r| r.phase == phase);

    // Every wait is bounded, every failure is one the docs promise, and fast.
    let bad: Vec<&Record> = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Timeout | Outcome::Unexpected(_)))
        .collect();
    assert!(bad.is_empty(), "timeouts or unexpected outcomes: {bad:#?}");
    let slow: Vec<&Record> = records
        .iter()
        .filter(|r| r.outcome != Outcome::Ok && r.outcome != Outcome::Clean(EVENT_LOST))
        .filter(|r| r.latency > FAIL_FAST)
        .collect();
    assert!(
        slow.is_empty(),
        "refusals slower than {FAIL_FAST:?}: {slow:#?}"
    );

    // Baseline: everything works.
    for kind in STEADY_KINDS {
        assert!(
            in_phase(Phase::Baseline).any(|r| r.kind == kind),
            "no {kind:?} in the baseline"
        );
    }
    let failed: Vec<&Record> = in_phase(Phase::Baseline)
        .filter(|r| r.outcome != Outcome::Ok)
        .collect();
    assert!(failed.is_empty(), "failures in the baseline: {failed:#?}");

    // While Redis is away: established connections keep working (their keys
    // are in memory); what needs the store is refused cleanly.
    for phase in [Phase::Down1, Phase::Down2] {
        let echoes: Vec<&Record> = in_phase(phase).filter(|r| r.kind == Kind::Echo).collect();
        assert!(!echoes.is_empty(), "no echo in {}", phase.name());
        let failed: Vec<_> = echoes.iter().filter(|r| r.outcome != Outcome::Ok).collect();
        assert!(
            failed.is_empty(),
            "established connections failed in {}: {failed:#?}",
            phase.name()
        );
        for (kind, allowed) in [
            (Kind::Login, &[HTTP_503, CLOSE_1011][..]),
            (Kind::Reconnect, &[CLOSE_1011][..]),
            (Kind::PubSub, &[ERR_UNAVAILABLE, EVENT_LOST][..]),
        ] {
            let refused: Vec<&Record> = in_phase(phase)
                .filter(|r| r.kind == kind && r.outcome != Outcome::Ok)
                .collect();
            assert!(
                !refused.is_empty(),
                "{kind:?} never failed in {}: was Redis away?",
                phase.name()
            );
            let other: Vec<_> = refused
                .iter()
                .filter(|r| !matches!(r.outcome, Outcome::Clean(c) if allowed.contains(&c)))
                .collect();
            assert!(other.is_empty(), "{kind:?} in {}: {other:#?}", phase.name());
        }
        assert!(
            !in_phase(phase).any(|r| r.kind == Kind::Relogin),
            "a session was refused in {}",
            phase.name()
        );
    }

    // Back with its data: the fleet recovers by itself, and nothing from
    // before is lost — no connection closed, no session refused.
    let recovered1 = recovered1.expect("the fleet did not recover after the first restart");
    assert!(recovered1 <= RECOVERY_BOUND);
    let ended: Vec<&Record> = records
        .iter()
        .filter(|r| r.phase <= Phase::Down2)
        .filter(|r| {
            r.kind == Kind::Relogin
                || matches!(r.outcome, Outcome::Clean(CLOSE_4001 | CLOSE_4401))
                || (r.kind == Kind::Echo && r.outcome != Outcome::Ok)
        })
        .collect();
    assert!(
        ended.is_empty(),
        "with Redis's data kept, a session or connection ended: {ended:#?}"
    );
    witness_reconnect.expect("the witness session after the restart with data");
    witness_echo.expect("the witness connection after the restart with data");

    // Back empty: every session is gone. Connections that kept working
    // while Redis was away are closed with 4001 once it is back (a node
    // cannot tell a forgotten session from one revoked meanwhile), a
    // reconnect on an old session gets 4401, and a new login works.
    let recovered2 = recovered2.expect("the fleet did not recover after the empty restart");
    assert!(recovered2 <= RECOVERY_BOUND);
    let closed: BTreeSet<usize> = in_phase(Phase::Up2)
        .filter(|r| r.kind == Kind::Echo && r.outcome == Outcome::Clean(CLOSE_4001))
        .map(|r| r.worker)
        .collect();
    assert_eq!(
        closed, echo_workers,
        "every echo client's connection ends with 4001"
    );
    for worker in &echo_workers {
        let mine = || in_phase(Phase::Up2).filter(|r| r.worker == *worker);
        let closed_at = mine()
            .filter(|r| r.outcome == Outcome::Clean(CLOSE_4001))
            .map(|r| r.start)
            .max();
        assert!(
            mine().any(|r| r.kind == Kind::Echo
                && r.outcome == Outcome::Ok
                && Some(r.start) > closed_at),
            "echo client {worker} is back to work after its 4001"
        );
    }
    assert!(
        in_phase(Phase::Up2).any(|r| r.kind == Kind::Relogin && r.outcome == Outcome::Ok),
        "clients log in again"
    );
    let other: Vec<&Record> = in_phase(Phase::Up2)
        .filter(|r| r.outcome != Outcome::Ok)
        .filter(|r| {
            let allowed: &[&str] = match r.kind {
                Kind::Echo => &[CLOSE_4001],
                Kind::Reconnect => &[CLOSE_1011, CLOSE_4401, CLOSE_4001],
                Kind::Login | Kind::Relogin => &[HTTP_503, CLOSE_1011],
                Kind::PubSub => &[ERR_UNAVAILABLE, EVENT_LOST, CLOSE_4001],
            };
            !matches!(r.outcome, Outcome::Clean(c) if allowed.contains(&c))
        })
        .collect();
    assert!(other.is_empty(), "after the empty restart: {other:#?}");
    assert_eq!(
        witness_after_empty.unwrap_err().close_code(),
        Some(4401),
        "the witness session is forgotten"
    );
    assert_eq!(witness_conn_after_empty.unwrap(), Some(4001));
    let fresh = login(&load.nodes[0], user, password).await.unwrap();
    let mut conn = fresh.connect(&load.nodes[1]).await.unwrap();
    echo(&mut conn, 2).await.unwrap();
}
