//! Issue 16, a Redis Cluster master killed under load: two `wsgate serve`
//! on a private 3-master + 3-replica cluster (1 s `cluster-node-timeout`),
//! and while clients log in, open connections (HELLO → KEY_INIT), send
//! requests and publish numbered events to a history channel that
//! subscribers on both nodes follow, the master serving the login
//! exchanges' slot (`{exchanges}`) and the channel's slot is killed with
//! SIGKILL. Asserted, each attempt timed:
//!
//! * no attempt hangs: a login, a KEY_INIT, a request or a publish ends
//!   within a bound of the store's 2 s command deadline (plus its work);
//! * what fails during the gap fails clearly: a login `503` with
//!   `{"status":"unavailable","message":…}`, a KEY_INIT closed with 1011
//!   "state store unavailable; retry", a PUBLISH `ERR unavailable`, an
//!   `/api/publish` `503` — nothing else;
//! * the replica takes over (`wait_failover`) and every kind of attempt
//!   succeeds again by itself within a bound of the kill;
//! * each subscriber ends at the stream's head with the continuity
//!   guarantee (protocol.md §6.5): every event it was given is one the
//!   publishers saw acknowledged, in offset order, none twice, and whatever
//!   it missed — the events of the gap, the newest writes the replica may
//!   lack — is announced by a RESYNC (the promoted replica's stream is a new
//!   epoch), never a silent gap (the strict checker of `continuity_fleet`).
//!
//! The measured gap (how long logins failed, when each kind recovered) is
//! printed (`--nocapture`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wsgate_client::{ClientConfig, Connection, Error, Position, Session, login};
use wsgate_proto::envelope::MessageType;
use wsgate_test_support::RedisCluster;

use crate::channels::api_publish;
use crate::continuity_fleet::{
    Nodes, PASSWORD, Seen, Subscriber, USER, assert_acked_in, event_count, history, in_epoch, poll,
};

/// A login is two HTTP requests, each bounded by the store's command
/// deadline (2 s, the cluster client's retries inside it) plus PBKDF2.
const LOGIN_BOUND: Duration = Duration::from_secs(5);
/// HELLO → KEY_INIT (one session read, 2 s deadline) and the first echo.
const CONNECT_BOUND: Duration = Duration::from_secs(3);
/// A request on an established connection (no store involved).
const ECHO_BOUND: Duration = Duration::from_secs(2);
/// A publish: one script, 2 s deadline.
const PUBLISH_BOUND: Duration = Duration::from_secs(3);
/// Reaching this is a hang, whatever the attempt.
const HANG: Duration = Duration::from_secs(15);
/// The killed master's replica takes over within this.
const FAILOVER_BOUND: Duration = Duration::from_secs(20);
/// Attempts begun this long after the replica took over (as the cluster
/// sees it) must not fail: the gateways' cluster client has refreshed its
/// slot map by then.
const GAP_SLACK: Duration = Duration::from_secs(2);
/// Every kind of attempt succeeds again within this of the kill.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
/// Pause between two attempts of one client.
const PAUSE: Duration = Duration::from_millis(40);
/// The login clients' pause (the per-IP start limit is raised anyway).
const LOGIN_PAUSE: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// `PUT /auth/session` twice (SCRAM over the sealed login).
    Login,
    /// A new connection on a fresh session: HELLO → KEY_INIT, one echo.
    KeyInit,
    /// The same on a session made before the kill whose key is on the
    /// killed master.
    KeyInitLostShard,
    /// The same on a session made before the kill whose key is elsewhere.
    KeyInitOtherShard,
    /// `sys.echo` on a long-lived connection.
    Echo,
    /// PUBLISH over WebSocket to the history channel.
    WsPublish,
    /// `POST /api/publish` to the history channel.
    ApiPublish,
}

impl Kind {
    const ALL: [Self; 7] = [
        Self::Login,
        Self::KeyInit,
        Self::KeyInitLostShard,
        Self::KeyInitOtherShard,
        Self::Echo,
        Self::WsPublish,
        Self::ApiPublish,
    ];

    fn bound(self) -> Duration {
        match self {
            Self::Login => LOGIN_BOUND,
            Self::KeyInit | Self::KeyInitLostShard | Self::KeyInitOtherShard => CONNECT_BOUND,
            Self::Echo => ECHO_BOUND,
            Self::WsPublish | Self::ApiPublish => PUBLISH_BOUND,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// The clear refusal the store's absence must give, with its text.
    Unavailable(String),
    /// Anything else, hangs included.
    Unexpected(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => f.write_str("ok"),
            Self::Unavailable(why) => write!(f, "unavailable ({why})"),
            Self::Unexpected(why) => write!(f, "UNEXPECTED {why}"),
        }
    }
}

/// A login's or a connection's failure: the clear refusals of the gap.
fn classify(e: &Error) -> Outcome {
    match e {
        Error::UnexpectedReply { status: 503, body }
            if body.contains(r#""status":"unavailable""#)
                && body.contains("the login store is unreachable; retry shortly") =>
        {
            Outcome::Unavailable(format!("HTTP 503 {body}"))
        }
        Error::Closed {
            code: Some(1011),
            reason,
        } if reason == "state store unavailable; retry" => {
            Outcome::Unavailable(format!("close 1011 {reason:?}"))
        }
        Error::Server { code, message } if code == "unavailable" && message.contains("retry") => {
            Outcome::Unavailable(format!("ERR {code}: {message}"))
        }
        other => Outcome::Unexpected(format!("{other:?}")),
    }
}

#[derive(Clone, Debug)]
struct Attempt {
    kind: Kind,
    start: Instant,
    took: Duration,
    outcome: Outcome,
}

/// What the load's clients share with the test.
struct Load {
    stop: AtomicBool,
    attempts: Mutex<Vec<Attempt>>,
    /// Publishes acknowledged, with their position.
    acked: Mutex<Vec<(Position, Value)>>,
}

impl Load {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Runs one attempt, cut off at [`HANG`], and records it.
    async fn attempt<T>(
        &self,
        kind: Kind,
        fut: impl Future<Output = Result<T, Outcome>>,
    ) -> Result<T, Outcome> {
        let start = Instant::now();
        let result = tokio::time::timeout(HANG, fut)
            .await
            .unwrap_or_else(|_| Err(Outcome::Unexpected(format!("no answer within {HANG:?}"))));
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(o) => o.clone(),
        };
        self.attempts.lock().unwrap().push(Attempt {
            kind,
            start,
            took: start.elapsed(),
            outcome,
        });
        result
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().clone()
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Whether every kind of attempt succeeded since `since`.
    fn all_ok_since(&self, since: Instant) -> bool {
        let attempts = self.attempts.lock().unwrap();
        Kind::ALL.iter().all(|kind| {
            attempts
                .iter()
                .any(|a| a.kind == *kind && a.start >= since && a.outcome == Outcome::Ok)
        })
    }
}

/// Logs in on `node` over and over; each new session opens a connection
/// there (HELLO → KEY_INIT) and sends one echo.
async fn login_client(load: Arc<Load>, node: ClientConfig) {
    while !load.stopped() {
        let session = load
            .attempt(Kind::Login, async {
                login(&node, USER, PASSWORD).await.map_err(|e| classify(&e))
            })
            .await;
        if let Ok(session) = session {
            let _ = load
                .attempt(Kind::KeyInit, async {
                    let mut conn = session.connect(&node).await.map_err(|e| classify(&e))?;
                    echo(&mut conn, 0).await
                })
                .await;
        }
        tokio::time::sleep(LOGIN_PAUSE).await;
    }
}

/// A new connection on `session` to `node`, one echo, closed — over and
/// over.
async fn reconnect_client(load: Arc<Load>, kind: Kind, session: Session, node: ClientConfig) {
    while !load.stopped() {
        let _ = load
            .attempt(kind, async {
                let mut conn = session.connect(&node).await.map_err(|e| classify(&e))?;
                echo(&mut conn, 0).await
            })
            .await;
        tokio::time::sleep(PAUSE).await;
    }
}

async fn echo(conn: &mut Connection, n: u64) -> Result<(), Outcome> {
    let body = format!("echo {n}");
    let reply = conn
        .request("sys.echo", body.as_bytes(), n.is_multiple_of(2))
        .await
        .map_err(|e| classify(&e))?;
    if reply == body.as_bytes() {
        Ok(())
    } else {
        Err(Outcome::Unexpected(format!(
            "echo {n} came back as {reply:?}"
        )))
    }
}

/// One long-lived connection to `node` (made before the kill), `sys.echo`
/// in a loop: it needs nothing of the store and must never fail.
async fn echo_client(load: Arc<Load>, mut conn: Connection) {
    let mut n = 0;
    while !load.stopped() {
        n += 1;
        let _ = load.attempt(Kind::Echo, echo(&mut conn, n)).await;
        tokio::time::sleep(PAUSE).await;
    }
}

/// PUBLISH of numbered events over one long-lived connection.
async fn ws_publisher(load: Arc<Load>, mut conn: Connection, channel: String) {
    let mut n = 0;
    while !load.stopped() {
        n += 1;
        let data = json!({ "src": "ws", "n": n });
        let body = data.to_string();
        let published = load
            .attempt(Kind::WsPublish, async {
                conn.call(MessageType::Publish, &channel, body.as_bytes(), false)
                    .await
                    .map_err(|e| classify(&e))
            })
            .await;
        if let Ok(reply) = published {
            let position: Position = serde_json::from_slice(&reply).unwrap();
            load.acked.lock().unwrap().push((position, data));
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// `POST /api/publish` of numbered events.
async fn api_publisher(load: Arc<Load>, addr: SocketAddr, channel: String) {
    let mut n = 0;
    while !load.stopped() {
        n += 1;
        let data = json!({ "src": "api", "n": n });
        let published = load
            .attempt(Kind::ApiPublish, async {
                let reply = api_publish(addr, &channel, data.clone()).await;
                match reply.status {
                    200 => Ok(Position {
                        epoch: reply.json["epoch"].as_str().unwrap().to_owned(),
                        offset: reply.json["offset"].as_u64().unwrap(),
                    }),
                    503 if reply.json["status"] == "unavailable"
                        && reply.json["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("retry")) =>
                    {
                        Err(Outcome::Unavailable(format!("HTTP 503 {}", reply.json)))
                    }
                    status => Err(Outcome::Unexpected(format!("HTTP {status} {}", reply.json))),
                }
            })
            .await;
        if let Ok(position) = published {
            load.acked.lock().unwrap().push((position, data));
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// Per kind: attempts, failures, the slowest, the first and last failure
/// and the first success after it (times from the kill).
fn summary(attempts: &[Attempt], killed: Instant) -> String {
    let at = |t: Instant| {
        if t >= killed {
            format!("+{:.2}s", (t - killed).as_secs_f64())
        } else {
            format!("-{:.2}s", (killed - t).as_secs_f64())
        }
    };
    let mut out = String::new();
    for kind in Kind::ALL {
        let of: Vec<&Attempt> = attempts.iter().filter(|a| a.kind == kind).collect();
        let failed: Vec<&Attempt> = of
            .iter()
            .copied()
            .filter(|a| a.outcome != Outcome::Ok)
            .collect();
        let slowest = of.iter().map(|a| a.took).max().unwrap_or_default();
        out.push_str(&format!(
            "  {kind:?}: {} attempts, {} failed, slowest {slowest:?}",
            of.len(),
            failed.len()
        ));
        if let (Some(first), Some(last)) = (failed.first(), failed.last()) {
            let end = last.start + last.took;
            let back = of
                .iter()
                .find(|a| a.outcome == Outcome::Ok && a.start >= end)
                .map_or("never".to_owned(), |a| at(a.start + a.took));
            out.push_str(&format!(
                "; failing from {} to {} (answered by {}), ok again at {back}",
                at(first.start),
                at(last.start),
                at(end)
            ));
        }
        out.push('\n');
        let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
        for a in &failed {
            *outcomes.entry(a.outcome.to_string()).or_default() += 1;
        }
        for (outcome, count) in outcomes {
            out.push_str(&format!("      {count} × {outcome}\n"));
        }
    }
    out
}

/// A channel of the `cont.*` pattern (history) whose slot the master on
/// `port` serves.
fn channel_on(cluster: &RedisCluster, port: u16) -> String {
    (0..)
        .map(|i| format!("cont.failover{i}"))
        .find(|c| cluster.master_of_key(&format!("wsgate:{{c:{c}}}:stream")) == port)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_under_load_fails_over_with_clear_refusals_and_no_silent_gap() {
    if crate::util::skip_services() {
        return;
    }
    let mut cluster = tokio::task::block_in_place(RedisCluster::start).unwrap();
    // The master of the login exchanges' slot: every login needs it.
    let victim = cluster.master_of_key("wsgate:{exchanges}:exchange-index");
    let channel = channel_on(&cluster, victim);
    let url = cluster.url();
    let nodes = Nodes::start_with(&[url.clone(), url], "max_starts_per_ip = 10000000", "");

    // Subscribers on both nodes (each moves to the other node if its
    // connection ends), then the load.
    let subscribers = [
        Subscriber::start(
            vec![nodes.listener(0), nodes.listener(1)],
            &channel,
            Duration::ZERO,
        )
        .await,
        Subscriber::start(
            vec![nodes.listener(1), nodes.listener(0)],
            &channel,
            Duration::ZERO,
        )
        .await,
    ];
    let load = Arc::new(Load {
        stop: AtomicBool::new(false),
        attempts: Mutex::default(),
        acked: Mutex::default(),
    });
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    for i in 0..2 {
        let session = login(&nodes.client(i), USER, PASSWORD).await.unwrap();
        let echo_conn = session.connect(&nodes.client(i)).await.unwrap();
        tasks.push(tokio::spawn(echo_client(load.clone(), echo_conn)));
        tasks.push(tokio::spawn(login_client(load.clone(), nodes.client(i))));
    }
    // Sessions whose key is on the master to be killed, and one whose key
    // is not, each reconnecting over and over on both nodes.
    let (mut lost_shard, mut other_shard) = (Vec::new(), Vec::new());
    while lost_shard.len() < 2 || other_shard.is_empty() {
        let session = login(&nodes.client(0), USER, PASSWORD).await.unwrap();
        let key = format!("wsgate:session:{{{}}}", session.id);
        let master = cluster.master_of_key(&key);
        assert_eq!(
            cluster.command(master, &["EXISTS", &key]).unwrap(),
            "1",
            "the session's key is {key}"
        );
        if master == victim {
            lost_shard.push(session);
        } else {
            other_shard.push(session);
        }
        assert!(
            lost_shard.len() + other_shard.len() < 100,
            "no session on 127.0.0.1:{victim}"
        );
    }
    for (i, session) in lost_shard.into_iter().enumerate() {
        let node = nodes.client(i % 2);
        tasks.push(tokio::spawn(reconnect_client(
            load.clone(),
            Kind::KeyInitLostShard,
            session,
            node,
        )));
    }
    tasks.push(tokio::spawn(reconnect_client(
        load.clone(),
        Kind::KeyInitOtherShard,
        other_shard.swap_remove(0),
        nodes.client(1),
    )));
    let session = login(&nodes.client(1), USER, PASSWORD).await.unwrap();
    let publisher_conn = session.connect(&nodes.client(1)).await.unwrap();
    tasks.push(tokio::spawn(ws_publisher(
        load.clone(),
        publisher_conn,
        channel.clone(),
    )));
    tasks.push(tokio::spawn(api_publisher(
        load.clone(),
        nodes.addr(0),
        channel.clone(),
    )));
    let baseline = Instant::now();
    poll("the load to run", || {
        (load.all_ok_since(baseline)
            && load.acked() >= 30
            && subscribers.iter().all(|s| event_count(&s.log) >= 20))
        .then_some(())
    })
    .await;
    let acked_before = load.acked();

    // SIGKILL the master; its replica takes over.
    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.kill_node(victim));
    let promoted = tokio::task::block_in_place(|| cluster.wait_failover(victim, FAILOVER_BOUND))
        .unwrap_or_else(|e| panic!("{e}"));
    let failed_over = killed.elapsed();
    assert_eq!(
        cluster.master_of_key(&format!("wsgate:{{c:{channel}}}:stream")),
        promoted
    );

    // Everything works again by itself, then keeps going a while.
    let deadline = killed + RECOVERY_BOUND;
    let recovered = loop {
        let now = Instant::now();
        // Every kind ok in attempts begun after the failover.
        if load.all_ok_since(killed + failed_over) {
            break now - killed;
        }
        assert!(
            now < deadline,
            "not every kind of attempt succeeded again within {RECOVERY_BOUND:?} of the kill:\n{}",
            summary(&load.attempts(), killed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let acked_recovered = load.acked();
    poll("publishes after the recovery", || {
        (load.acked() >= acked_recovered + 30).then_some(())
    })
    .await;
    let settled = Instant::now();
    poll("the load to run after the recovery", || {
        load.all_ok_since(settled).then_some(())
    })
    .await;
    load.stop.store(true, Ordering::SeqCst);
    for task in tasks {
        tokio::time::timeout(HANG, task)
            .await
            .expect("a load client stops")
            .unwrap();
    }
    let attempts = load.attempts();
    let acked = load.acked.lock().unwrap().clone();
    let report = summary(&attempts, killed);
    eprintln!(
        "failover: killed master 127.0.0.1:{victim} (slots of {{exchanges}} and {channel}); \
         127.0.0.1:{promoted} took over {failed_over:?} after the kill; every kind of attempt \
         ok again {recovered:?} after it; {acked_before} publishes acknowledged before the \
         kill, {} in all\n{report}",
        acked.len()
    );

    // No hang, and only clear refusals.
    for a in &attempts {
        assert!(
            a.took <= a.kind.bound(),
            "a {:?} attempt took {:?} (bound {:?}; {}):\n{report}",
            a.kind,
            a.took,
            a.kind.bound(),
            a.outcome
        );
        assert!(
            !matches!(a.outcome, Outcome::Unexpected(_)),
            "a {:?} attempt {} after the kill: {}\n{report}",
            a.kind,
            if a.start >= killed { "+" } else { "-" },
            a.outcome
        );
        if a.start + a.took < killed {
            assert_eq!(a.outcome, Outcome::Ok, "{a:?} before the kill");
        }
    }
    // Logins and KEY_INITs of sessions on the lost shard failed in the gap
    // (their slots had no master), and nothing failed after it. A session
    // on another shard may fail too, for part of the gap: once the nodes
    // mark the master failed, the whole cluster answers CLUSTERDOWN until
    // its replica is promoted (`cluster-require-full-coverage yes`, Redis's
    // default). A long-lived connection never notices.
    for kind in [Kind::Login, Kind::KeyInitLostShard] {
        assert!(
            attempts
                .iter()
                .any(|a| a.kind == kind && a.outcome != Outcome::Ok),
            "no {kind:?} attempt failed while its slot had no master:\n{report}"
        );
    }
    let gap_end = killed + failed_over + GAP_SLACK;
    for a in attempts.iter().filter(|a| a.outcome != Outcome::Ok) {
        assert!(
            a.start < gap_end,
            "a {:?} attempt begun {:?} after the kill failed ({}), {GAP_SLACK:?} after the \
             replica took over:\n{report}",
            a.kind,
            a.start - killed,
            a.outcome
        );
    }
    assert!(
        attempts
            .iter()
            .filter(|a| a.kind == Kind::Echo)
            .all(|a| a.outcome == Outcome::Ok),
        "an echo on an established connection failed:\n{report}"
    );

    // The subscribers: at the head of the stream, every event once and in
    // order, what they missed announced.
    let (end, stream) = history(nodes.addr(0), &channel).await;
    assert_acked_in(&acked, &end.epoch, &stream);
    let first_epoch = acked[0].0.epoch.clone();
    for (i, subscriber) in subscribers.into_iter().enumerate() {
        let seen = subscriber.finish(&channel, &end).await;
        check_subscriber(i, &seen, &acked, &first_epoch, &end, &stream);
    }
    drop(nodes);
}

/// What subscriber `i` saw against what was acknowledged and the stream.
fn check_subscriber(
    i: usize,
    seen: &Seen,
    acked: &[(Position, Value)],
    first_epoch: &str,
    end: &Position,
    stream: &[(u64, Value)],
) {
    // Each event given was acknowledged at that position (none invented,
    // none placed in the wrong epoch); the strict checker already refused
    // any out of order, twice, or after a gap nobody announced.
    for (position, data) in &seen.events {
        assert!(
            acked.iter().any(|(p, d)| p == position && d == data),
            "subscriber {i}: {data} at {position:?} was never acknowledged there"
        );
    }
    let old: Vec<u64> = in_epoch(seen, first_epoch)
        .iter()
        .map(|(o, _)| *o)
        .collect();
    let missed = acked
        .iter()
        .filter(|(p, _)| p.epoch == first_epoch && !old.contains(&p.offset))
        .count();
    // What was given in the new epoch is the stream from where the RESYNC
    // (or a resubscription that could not recover) put the client, to its
    // head.
    let new = in_epoch(seen, &end.epoch);
    // Events of the new epoch published before the RESYNC's position: in
    // the stream, never given to the subscriber (told by the RESYNC).
    let mut skipped = 0;
    if end.epoch == first_epoch {
        assert_eq!(
            missed, 0,
            "subscriber {i}: acknowledged events never delivered"
        );
        assert_eq!(new, stream, "subscriber {i}");
    } else {
        let announced: Vec<Position> = seen
            .resyncs
            .iter()
            .cloned()
            .chain(
                seen.subscribes
                    .iter()
                    .filter(|(_, since, r)| since.is_some() && !r.recovered)
                    .map(|(_, _, r)| Position {
                        epoch: r.epoch.clone(),
                        offset: r.offset,
                    }),
            )
            .collect();
        let from = announced
            .iter()
            .find(|p| p.epoch == end.epoch)
            .unwrap_or_else(|| {
                panic!(
                    "subscriber {i}: the new epoch {} was never announced: {:?} {:?}",
                    end.epoch, seen.resyncs, seen.subscribes
                )
            });
        let from = usize::try_from(from.offset).unwrap();
        skipped = stream.iter().filter(|(o, _)| *o <= from as u64).count();
        // A subscriber that stayed connected is caught up from the new
        // epoch's start while its stream holds it (the node fills it).
        if seen.lost.is_empty() && stream.first().is_some_and(|(o, _)| *o == 1) {
            assert_eq!(
                skipped, 0,
                "subscriber {i}: the new epoch's first events were in its history"
            );
        }
        assert_eq!(
            new,
            stream[from..],
            "subscriber {i}: the new epoch's events"
        );
    }
    eprintln!(
        "subscriber {i}: {} events of the first epoch (offsets {:?}..={:?}), {missed} \
         acknowledged ones of it not delivered, RESYNCs {:?}, {} events of the new epoch {} \
         ({skipped} before the RESYNC's position skipped, though in its history), {} reconnects",
        old.len(),
        old.first(),
        old.last(),
        seen.resyncs,
        new.len(),
        end.epoch,
        seen.lost.len(),
    );
}
