//! Issue 12, channel continuity in a fleet (protocol.md §6.5, "The
//! guarantee"): `wsgate serve` processes sharing one data directory and a
//! real Redis, subscribers and publishers on real sockets, while
//!
//! * node B's connection to Redis is cut and restored (a TCP proxy this test
//!   controls sits between B and redis-server) — once while publishes go
//!   on after it is back, once with every event published while B is away,
//! * the subscriber's node is killed with SIGKILL (the client moves to
//!   another node with `since`),
//! * Redis is killed with SIGKILL and restarted with its data (AOF,
//!   `appendfsync always`) or empty,
//! * a client is away while events are published from several nodes,
//! * a stream loses its history while its subscribers stay connected.
//!
//! Every subscriber's messages go through a strict checker: an EVENT_AT
//! must be exactly the next offset of the position the client holds (from
//! its SUBSCRIBE reply, a recovered `since`, or a RESYNC), so a lost,
//! duplicated or reordered event — or an epoch change nobody announced —
//! fails the test. What was received is then compared, offset by offset and
//! payload by payload, with the stream as `/api/history` returns it, and
//! with every publish that was acknowledged.
//!
//! The tests that need no control over the store (a node killed, a client
//! away, a stream's history lost) run on a standalone Redis and on the
//! shared Redis Cluster (`backend.rs`: `…::redis`, `…::cluster`); a cluster
//! master killed under load is `failover.rs`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wsgate_client::{
    ChannelEvent, ClientConfig, Connection, Delivery, Error, Position, Session, StreamTracker,
    SubscribeReply, login,
};
use wsgate_proto::envelope::MessageType;
use wsgate_test_support::RedisServer;

use crate::backend::{Backend, on_both_backends};
use crate::channels::{API_KEY, api_call, api_publish};
use crate::cli::{Served, run, serve_logged};

pub(crate) const USER: &str = "alice";
pub(crate) const PASSWORD: &str = "alice password";
/// How long anything may take to show up once it should.
pub(crate) const SETTLE: Duration = Duration::from_secs(30);
/// Pause between two publishes of one publisher.
const PUBLISH_PAUSE: Duration = Duration::from_millis(15);

// ───────────────────────────────── the fleet ─────────────────────────────────

/// Gateway processes sharing one data directory (keys, server secret, the
/// SQLite users); each node names its own `state` URL.
pub(crate) struct Nodes {
    nodes: Vec<Option<Served>>,
    _dir: tempfile::TempDir,
}

impl Nodes {
    /// One node per URL (node 0 is "A", 1 "B", …), all on the same data
    /// directory, with user alice.
    fn start(state_urls: &[String]) -> Self {
        Self::start_with(state_urls, "", "")
    }

    /// [`start`](Self::start), with `login` added to every node's `[login]`
    /// and the tables `tables` after its own.
    pub(crate) fn start_with(state_urls: &[String], login: &str, tables: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let configs: Vec<String> = state_urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let path = dir.path().join(format!("node{i}.toml"));
                let toml = format!(
                    r#"data_dir = "{data}"
state = "{url}"
metrics_listen = "off"
api_keys = ["{API_KEY}"]
[login]
iterations = 4096
{login}
[[channels]]
pattern = "cont.*"
history = 10000
publish = "authenticated"
{tables}
"#,
                    data = data.display(),
                );
                std::fs::write(&path, toml).unwrap();
                path.display().to_string()
            })
            .collect();
        let (ok, _, err) = run(&["keygen", "--config", &configs[0]], None);
        assert!(ok, "{err}");
        let (ok, _, err) = run(
            &[
                "user",
                "add",
                USER,
                "--config",
                &configs[0],
                "--password-stdin",
            ],
            Some(PASSWORD),
        );
        assert!(ok, "{err}");
        let nodes = configs
            .iter()
            .enumerate()
            .map(|(i, c)| Some(serve_logged(c, &dir.path().join(format!("node{i}.log")))))
            .collect();
        Self { nodes, _dir: dir }
    }

    /// What node `i` logged (warnings and errors) so far.
    pub(crate) fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self._dir.path().join(format!("node{i}.log"))).unwrap_or_default()
    }

    pub(crate) fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].as_ref().expect("node is running").addr
    }

    pub(crate) fn client(&self, i: usize) -> ClientConfig {
        ClientConfig::from_addr(self.addr(i)).timeout(Duration::from_secs(10))
    }

    /// For a subscriber, which may legitimately wait long for its next
    /// event (the tests' own deadlines bound every wait).
    pub(crate) fn listener(&self, i: usize) -> ClientConfig {
        ClientConfig::from_addr(self.addr(i)).timeout(Duration::from_secs(120))
    }

    /// SIGKILL, and wait until it is gone.
    fn kill(&mut self, i: usize) {
        let mut node = self.nodes[i].take().expect("node is running");
        node.child.kill().unwrap();
        node.child.wait().unwrap();
    }
}

impl Drop for Nodes {
    /// A failed test shows what the nodes logged.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.nodes.len() {
                eprintln!("node {i} logged:\n{}", self.log(i));
            }
        }
    }
}

// ───────────────────────────── a controllable link ───────────────────────────

/// A TCP proxy in front of redis-server: `cut` drops every connection
/// through it and refuses new ones (accepted, then closed at once) until
/// `restore`.
struct Proxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let task = {
            let open = open.clone();
            let generation = generation.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    if !open.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let mut cut = generation.subscribe();
                    cut.mark_unchanged();
                    tokio::spawn(async move {
                        let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.changed() => {}
                        }
                    });
                }
            })
        };
        Self {
            addr,
            open,
            generation,
            task,
        }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ───────────────────────── a Redis this test may kill ────────────────────────

fn redis_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WSGATE_REDIS_SERVER") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| Some(PathBuf::from("/usr/bin/redis-server")).filter(|p| p.is_file()))
        .expect(
            "redis-server not found: install the Debian package redis-server, set \
             WSGATE_REDIS_SERVER=/path/to/redis-server, or set WSGATE_SKIP_SERVICE_TESTS=1",
        )
}

/// A dedicated redis-server on a fixed port: killed with SIGKILL (not the
/// polite TERM of the shared harness) and restarted on the same port, with
/// its append-only file (`appendfsync always`) or without any persistence.
struct KillableRedis {
    port: u16,
    dir: tempfile::TempDir,
    aof: bool,
    child: Option<Child>,
}

impl KillableRedis {
    fn start(aof: bool) -> Self {
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Self {
            port,
            dir: tempfile::tempdir().unwrap(),
            aof,
            child: None,
        };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on its port and directory; waits for PONG.
    fn restart(&mut self) {
        assert!(self.child.is_none());
        let dir = self.dir.path().display().to_string();
        let port = self.port.to_string();
        let (appendonly, appendfsync) = if self.aof {
            ("yes", "always")
        } else {
            ("no", "everysec")
        };
        let child = Command::new(redis_server_binary())
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port,
                "--save",
                "",
                "--appendonly",
                appendonly,
                "--appendfsync",
                appendfsync,
                "--dir",
                &dir,
                "--daemonize",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + SETTLE;
        while !redis_ping(self.port) {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server on port {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown, no final write.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("redis is running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for KillableRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn redis_ping(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

// ──────────────────────────────── publishers ─────────────────────────────────

/// Publishers running until `stop`, each acknowledged publish recorded with
/// its position.
struct Publishers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(Position, Value)>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Publishers {
    fn new() -> Self {
        Self {
            stop: Arc::default(),
            acked: Arc::default(),
            tasks: Vec::new(),
        }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// `POST /api/publish` on `addr` in a loop (a refusal, e.g. 503 while
    /// Redis is away, is retried after a pause).
    fn api(&mut self, addr: SocketAddr, channel: &str, source: &str) {
        let (stop, acked) = (self.stop.clone(), self.acked.clone());
        let (channel, source) = (channel.to_owned(), source.to_owned());
        self.tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let data = json!({ "src": source, "n": n });
                let reply = api_publish(addr, &channel, data.clone()).await;
                if reply.status == 200 {
                    assert_eq!(reply.json["ok"], true, "{:?}", reply.json);
                    let position = Position {
                        epoch: reply.json["epoch"].as_str().unwrap().to_owned(),
                        offset: reply.json["offset"].as_u64().unwrap(),
                    };
                    acked.lock().unwrap().push((position, data));
                    tokio::time::sleep(PUBLISH_PAUSE).await;
                } else {
                    assert_eq!(reply.status, 503, "{:?}", reply.json);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }

    /// WebSocket PUBLISH from a connection to `node` in a loop; a refusal
    /// is retried, a lost connection replaced (a new login if the gateway
    /// no longer knows the session).
    fn ws(&mut self, node: ClientConfig, channel: &str, source: &str) {
        let (stop, acked) = (self.stop.clone(), self.acked.clone());
        let (channel, source) = (channel.to_owned(), source.to_owned());
        self.tasks.push(tokio::spawn(async move {
            let mut session = None;
            let mut conn = None;
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let Some(c) = conn.as_mut() else {
                    conn = connect(&node, &mut session).await.ok();
                    if conn.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                };
                n += 1;
                let data = json!({ "src": source, "n": n });
                let body = data.to_string();
                match c
                    .call(MessageType::Publish, &channel, body.as_bytes(), false)
                    .await
                {
                    Ok(reply) => {
                        let position: Position = serde_json::from_slice(&reply).unwrap();
                        acked.lock().unwrap().push((position, data));
                        tokio::time::sleep(PUBLISH_PAUSE).await;
                    }
                    Err(e) if e.server_code() == Some("unavailable") => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(Error::Server { code, message }) => panic!("PUBLISH: {code}: {message}"),
                    Err(_) => conn = None,
                }
            }
        }));
    }

    /// Waits until `more` publishes beyond `from` were acknowledged.
    async fn wait_for(&self, from: usize, more: usize) -> usize {
        let target = from + more;
        poll("publishes to be acknowledged", || {
            (self.count() >= target).then_some(())
        })
        .await;
        self.count()
    }

    /// Stops them and returns every acknowledged publish.
    async fn stop(self) -> Vec<(Position, Value)> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            tokio::time::timeout(SETTLE, task)
                .await
                .expect("a publisher stops")
                .unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

/// A connection to `node` on `session`, logging in there first if there is
/// none or the gateway no longer knows it (4401).
pub(crate) async fn connect(
    node: &ClientConfig,
    session: &mut Option<Session>,
) -> Result<Connection, Error> {
    if let Some(s) = session.as_ref() {
        match s.connect(node).await {
            Ok(conn) => return Ok(conn),
            Err(e) if e.close_code() == Some(4401) => *session = None,
            Err(e) => return Err(e),
        }
    }
    let fresh = login(node, USER, PASSWORD).await?;
    let conn = fresh.connect(node).await?;
    *session = Some(fresh);
    Ok(conn)
}

// ──────────────────────────────── subscribers ────────────────────────────────

/// What a subscriber went through, in order.
#[derive(Debug, Clone)]
pub(crate) enum Record {
    Subscribed {
        node: usize,
        since: Option<Position>,
        reply: SubscribeReply,
    },
    Message(ChannelEvent),
    /// The connection ended.
    Lost(String),
}

pub(crate) type Log = Arc<Mutex<Vec<Record>>>;

/// SUBSCRIBE on `conn`, retrying while the node's event feed reconnects
/// (`ERR unavailable`).
async fn subscribe(
    conn: &mut Connection,
    channel: &str,
    since: Option<&Position>,
) -> Result<SubscribeReply, Error> {
    let deadline = Instant::now() + SETTLE;
    loop {
        match conn.subscribe(channel, since, false).await {
            Ok(reply) => return Ok(reply.expect("a history channel answers with a position")),
            Err(e) if e.server_code() == Some("unavailable") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads `conn`'s channel messages into `log` until the connection ends.
async fn read_into(mut conn: Connection, log: &Log) {
    loop {
        match conn.next_channel_event().await {
            Ok(event) => log.lock().unwrap().push(Record::Message(event)),
            Err(e) => {
                log.lock().unwrap().push(Record::Lost(e.to_string()));
                return;
            }
        }
    }
}

/// A subscriber that stays subscribed: on `nodes[0]` first; whenever its
/// connection ends it moves to the next node of `nodes` (round the list),
/// logs in again if needed and resubscribes with the last position it saw
/// (after `away`: events go on meanwhile).
pub(crate) struct Subscriber {
    pub(crate) log: Log,
    task: JoinHandle<()>,
}

impl Subscriber {
    pub(crate) async fn start(nodes: Vec<ClientConfig>, channel: &str, away: Duration) -> Self {
        let log: Log = Arc::default();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = {
            let log = log.clone();
            let channel = channel.to_owned();
            tokio::spawn(async move {
                let mut ready = Some(ready_tx);
                let mut session = None;
                let mut node = 0;
                loop {
                    let since = since_of(&log.lock().unwrap(), &channel);
                    let attempt = async {
                        let mut conn = connect(&nodes[node], &mut session).await?;
                        let reply = subscribe(&mut conn, &channel, since.as_ref()).await?;
                        Ok::<_, Error>((conn, reply))
                    };
                    match attempt.await {
                        Ok((conn, reply)) => {
                            log.lock()
                                .unwrap()
                                .push(Record::Subscribed { node, since, reply });
                            if let Some(ready) = ready.take() {
                                let _ = ready.send(());
                            }
                            read_into(conn, &log).await;
                            node = (node + 1) % nodes.len();
                            tokio::time::sleep(away).await;
                        }
                        Err(_) => {
                            node = (node + 1) % nodes.len();
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            })
        };
        tokio::time::timeout(SETTLE, ready_rx)
            .await
            .expect("the subscriber subscribes")
            .unwrap();
        Self { log, task }
    }

    pub(crate) fn records(&self) -> Vec<Record> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until it stands at `position` (or fails on its first
    /// irregularity), then stops it and returns what it saw.
    pub(crate) async fn finish(self, channel: &str, position: &Position) -> Seen {
        wait_position(&self.log, channel, position).await;
        self.task.abort();
        check(channel, &self.records())
    }
}

/// The `since` a client would resubscribe with after `records`, from the
/// client's own tracker.
fn since_of(records: &[Record], channel: &str) -> Option<Position> {
    let mut tracker = StreamTracker::new();
    for r in records {
        match r {
            Record::Subscribed { since, reply, .. } => {
                tracker.subscribed(channel, reply, since.as_ref());
            }
            Record::Message(event) => {
                tracker.observe(event);
            }
            Record::Lost(_) => {}
        }
    }
    tracker.since(channel).cloned()
}

/// Waits until `log` has reached `position`.
async fn wait_position(log: &Log, channel: &str, position: &Position) {
    let reached = || {
        let records = log.lock().unwrap().clone();
        check(channel, &records).position == *position
    };
    let deadline = Instant::now() + SETTLE;
    while !reached() {
        if Instant::now() > deadline {
            let records = log.lock().unwrap().clone();
            let seen = check(channel, &records);
            panic!(
                "the subscriber stands at {:?}, not {position:?}, after {SETTLE:?}; \
                 last records: {:?}",
                seen.position,
                &records[records.len().saturating_sub(5)..]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a subscriber was given, checked strictly.
#[derive(Debug)]
pub(crate) struct Seen {
    /// Where the client stands.
    pub(crate) position: Position,
    /// Every event, with the epoch the client placed it in.
    pub(crate) events: Vec<(Position, Value)>,
    /// Every RESYNC.
    pub(crate) resyncs: Vec<Position>,
    /// Every SUBSCRIBE: node, `since`, reply.
    pub(crate) subscribes: Vec<(usize, Option<Position>, SubscribeReply)>,
    /// Why the connection ended, each time it did.
    pub(crate) lost: Vec<String>,
}

/// Replays `records` as a strict client: each EVENT_AT must be the next
/// offset of the position held (the SUBSCRIBE reply's, a recovered
/// `since`, or a RESYNC's): anything else is a lost, duplicated or
/// reordered event, or an epoch change not announced. The client's own
/// `StreamTracker` must agree (no `Duplicate`, no `Gap` but at a RESYNC or
/// an unrecovered `since`).
pub(crate) fn check(channel: &str, records: &[Record]) -> Seen {
    let mut seen = Seen {
        position: Position {
            epoch: String::new(),
            offset: 0,
        },
        events: Vec::new(),
        resyncs: Vec::new(),
        subscribes: Vec::new(),
        lost: Vec::new(),
    };
    let mut tracker = StreamTracker::new();
    for r in records {
        match r {
            Record::Subscribed { node, since, reply } => {
                let delivery = tracker.subscribed(channel, reply, since.as_ref());
                if reply.recovered {
                    let since = since.as_ref().expect("recovered without since");
                    assert_eq!(since, &seen.position, "resubscribed from elsewhere");
                    assert_eq!(since.epoch, reply.epoch, "recovered across epochs");
                    assert!(since.offset <= reply.offset);
                    assert_eq!(delivery, Delivery::New);
                } else {
                    seen.position = Position {
                        epoch: reply.epoch.clone(),
                        offset: reply.offset,
                    };
                    assert_eq!(
                        matches!(delivery, Delivery::Gap(_)),
                        since.is_some(),
                        "{delivery:?}"
                    );
                }
                seen.subscribes.push((*node, since.clone(), reply.clone()));
            }
            Record::Message(event) => {
                let delivery = tracker.observe(event);
                match event {
                    ChannelEvent::EventAt {
                        channel: ch,
                        offset,
                        payload,
                    } => {
                        assert_eq!(ch, channel);
                        assert_eq!(
                            *offset,
                            seen.position.offset + 1,
                            "EVENT_AT {offset} while standing at {:?}: an event lost, \
                             duplicated or reordered, or an epoch change not announced",
                            seen.position
                        );
                        assert_eq!(delivery, Delivery::New);
                        seen.position.offset = *offset;
                        let value: Value = serde_json::from_slice(payload).unwrap();
                        seen.events.push((seen.position.clone(), value));
                    }
                    ChannelEvent::Resync {
                        channel: ch,
                        position,
                    } => {
                        assert_eq!(ch, channel);
                        assert_eq!(delivery, Delivery::Gap(position.clone()));
                        seen.resyncs.push(position.clone());
                        seen.position = position.clone();
                    }
                    // EVENT, or anything else: not what a history channel sends.
                    other => panic!("not a history event on a history channel: {other:?}"),
                }
            }
            Record::Lost(why) => seen.lost.push(why.clone()),
        }
    }
    if !seen.position.epoch.is_empty() {
        assert_eq!(tracker.since(channel), Some(&seen.position));
    }
    seen
}

// ──────────────────────────────── the stream ─────────────────────────────────

/// The stream as `/api/history` on `addr` has it: its position and every
/// event kept (from offset 1: history = 10000 keeps them all here).
pub(crate) async fn history(addr: SocketAddr, channel: &str) -> (Position, Vec<(u64, Value)>) {
    let head = api_call(
        addr,
        "/api/history",
        Some(API_KEY),
        &json!({"channel": channel, "limit": 1}),
    )
    .await;
    assert_eq!(head.status, 200, "{:?}", head.json);
    let epoch = head.json["epoch"].as_str().unwrap().to_owned();
    let mut events = Vec::new();
    let mut last = 0;
    loop {
        let page = api_call(
            addr,
            "/api/history",
            Some(API_KEY),
            &json!({"channel": channel, "since": {"epoch": epoch, "offset": last}, "limit": 1000}),
        )
        .await;
        assert_eq!(page.status, 200, "{:?}", page.json);
        assert_eq!(page.json["epoch"], epoch.as_str(), "the epoch changed");
        let page_events = page.json["events"].as_array().unwrap().clone();
        if page_events.is_empty() {
            let offset = page.json["offset"].as_u64().unwrap();
            assert_eq!(offset, last, "the stream holds every event");
            return (Position { epoch, offset }, events);
        }
        for e in page_events {
            let offset = e["offset"].as_u64().unwrap();
            assert_eq!(offset, last + 1, "the stream holds every event");
            last = offset;
            events.push((offset, e["data"].clone()));
        }
    }
}

/// Every acknowledged publish is in the stream, at its offset, once.
pub(crate) fn assert_acked_in(acked: &[(Position, Value)], epoch: &str, stream: &[(u64, Value)]) {
    let mut offsets: Vec<u64> = Vec::new();
    for (position, data) in acked.iter().filter(|(p, _)| p.epoch == epoch) {
        let index = usize::try_from(position.offset - 1).unwrap();
        assert_eq!(
            stream.get(index),
            Some(&(position.offset, data.clone())),
            "an acknowledged publish is not in the stream"
        );
        offsets.push(position.offset);
    }
    let count = offsets.len();
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), count, "two publishes share an offset");
}

/// The events `seen` got in `epoch`, as (offset, data).
pub(crate) fn in_epoch(seen: &Seen, epoch: &str) -> Vec<(u64, Value)> {
    seen.events
        .iter()
        .filter(|(p, _)| p.epoch == epoch)
        .map(|(p, v)| (p.offset, v.clone()))
        .collect()
}

/// Polls `f` every 20 ms until it gives a value; panics after [`SETTLE`].
pub(crate) async fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Events `log` holds.
pub(crate) fn event_count(log: &Log) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|r| matches!(r, Record::Message(ChannelEvent::EventAt { .. })))
        .count()
}

// ────────────────────────────────── the tests ────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_whose_node_loses_redis_mid_stream_gets_every_event_once_in_the_fleet_order() {
    if crate::util::skip_services() {
        return;
    }
    const CHANNEL: &str = "cont.cut";
    let redis = RedisServer::start().unwrap();
    let upstream: SocketAddr = ([127, 0, 0, 1], redis.port()).into();
    let proxy = Proxy::start(upstream).await;
    // A and C straight to Redis, B through the proxy.
    let nodes = Nodes::start(&[redis.url(), format!("redis://{}", proxy.addr), redis.url()]);
    let on_b = Subscriber::start(vec![nodes.listener(1)], CHANNEL, Duration::ZERO).await;
    let on_a = Subscriber::start(vec![nodes.listener(0)], CHANNEL, Duration::ZERO).await;

    let mut publishers = Publishers::new();
    publishers.api(nodes.addr(0), CHANNEL, "a-api");
    publishers.api(nodes.addr(2), CHANNEL, "c-api");
    publishers.ws(nodes.client(0), CHANNEL, "a-ws");
    publishers.ws(nodes.client(2), CHANNEL, "c-ws");
    let before = publishers.wait_for(0, 40).await;
    poll("B's subscriber to receive events", || {
        (event_count(&on_b.log) >= 10).then_some(())
    })
    .await;

    // B loses Redis mid-stream: its connections are dropped and new ones
    // refused; A and C keep publishing.
    proxy.cut();
    let cut_at = publishers.count();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during_cut = publishers.wait_for(cut_at, 20).await - cut_at;
    let received_during_cut = event_count(&on_b.log);
    assert!(
        received_during_cut < cut_at + during_cut,
        "B missed events while cut off"
    );
    proxy.restore();
    let restored = publishers.count();
    publishers.wait_for(restored, 60).await;
    let mut acked = publishers.stop().await;
    let (caught_up, _) = history(nodes.addr(0), CHANNEL).await;
    wait_position(&on_b.log, CHANNEL, &caught_up).await;

    // A second cut, and this time every event is published while B is away:
    // no later event shows B the gap, only its feed's reconnection does.
    proxy.cut();
    let mut publishers = Publishers::new();
    publishers.api(nodes.addr(0), CHANNEL, "a-api-2");
    publishers.ws(nodes.client(2), CHANNEL, "c-ws-2");
    publishers.wait_for(0, 30).await;
    acked.extend(publishers.stop().await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b_had = event_count(&on_b.log);
    proxy.restore();

    let (end, stream) = history(nodes.addr(0), CHANNEL).await;
    assert_eq!(
        end.offset,
        acked.iter().map(|(p, _)| p.offset).max().unwrap(),
        "the stream ends at the last acknowledged publish"
    );
    assert!(
        b_had < stream.len(),
        "B missed the second cut's events before it came back"
    );
    assert_acked_in(&acked, &end.epoch, &stream);
    let seen_b = on_b.finish(CHANNEL, &end).await;
    let seen_a = on_a.finish(CHANNEL, &end).await;
    eprintln!(
        "cut: {} publishes before, {during_cut} during the cut (B's subscriber had {} \
         events then), {} in all",
        before,
        received_during_cut,
        acked.len()
    );
    for (name, seen) in [("B", &seen_b), ("A", &seen_a)] {
        assert!(
            seen.resyncs.is_empty(),
            "{name}: RESYNC though history could fill: {:?}",
            seen.resyncs
        );
        assert!(seen.lost.is_empty(), "{name}: {:?}", seen.lost);
        assert_eq!(seen.subscribes.len(), 1);
        assert_eq!(seen.subscribes[0].2.epoch, end.epoch);
        // Every event once, in the stream's order, ending at the last one.
        assert_eq!(in_epoch(seen, &end.epoch), stream, "{name}");
    }
    assert_eq!(seen_a.events, seen_b.events, "both saw one order");
}

// On a standalone Redis and on the shared Redis Cluster (`backend.rs`);
// the tests that cut or kill the store are standalone's (the cluster's are
// in `failover.rs`).
on_both_backends!(
    a_client_whose_node_is_killed_resubscribes_elsewhere_with_since_and_misses_nothing,
    a_client_away_while_n_events_are_published_gets_exactly_those_then_live_ones_elsewhere,
    a_stream_that_loses_its_history_is_announced_to_the_subscribers_that_stay,
);

async fn a_client_whose_node_is_killed_resubscribes_elsewhere_with_since_and_misses_nothing(
    backend: Backend,
) {
    const CHANNEL: &str = "cont.kill";
    let state = backend.start();
    let mut nodes = Nodes::start(&[state.url(), state.url(), state.url()]);
    // On B; when its connection ends, on A.
    let subscriber = Subscriber::start(
        vec![nodes.listener(1), nodes.listener(0)],
        CHANNEL,
        Duration::from_millis(500),
    )
    .await;
    let mut publishers = Publishers::new();
    publishers.api(nodes.addr(0), CHANNEL, "a-api");
    publishers.api(nodes.addr(2), CHANNEL, "c-api");
    publishers.ws(nodes.client(0), CHANNEL, "a-ws");
    publishers.ws(nodes.client(2), CHANNEL, "c-ws");
    poll("the subscriber to receive events", || {
        (event_count(&subscriber.log) >= 30).then_some(())
    })
    .await;

    nodes.kill(1);
    let killed_at = publishers.count();
    // Events keep flowing while the client notices and moves.
    poll("the subscriber to resubscribe", || {
        let records = subscriber.records();
        records
            .iter()
            .filter(|r| matches!(r, Record::Subscribed { .. }))
            .nth(1)
            .map(|_| ())
    })
    .await;
    let moved_at = publishers.count();
    publishers.wait_for(moved_at, 60).await;
    let acked = publishers.stop().await;

    let (end, stream) = history(nodes.addr(0), CHANNEL).await;
    assert_acked_in(&acked, &end.epoch, &stream);
    let seen = subscriber.finish(CHANNEL, &end).await;
    eprintln!(
        "kill: published {killed_at} before the kill, {} by the resubscribe, {} in all",
        moved_at,
        acked.len()
    );
    assert_eq!(seen.lost.len(), 1, "{:?} {:?}", seen.lost, seen.subscribes);
    assert_eq!(seen.subscribes.len(), 2);
    let (node, since, reply) = &seen.subscribes[1];
    assert_eq!(*node, 1, "moved to node A");
    let since = since.as_ref().expect("resubscribed with since");
    assert!(reply.recovered, "{reply:?}");
    assert_eq!(reply.epoch, end.epoch);
    assert!(
        reply.offset > since.offset,
        "events were published while the client was away ({since:?} → {reply:?})"
    );
    assert!(seen.resyncs.is_empty(), "{:?}", seen.resyncs);
    assert_eq!(in_epoch(&seen, &end.epoch), stream);
}

/// Redis killed (SIGKILL) and restarted on the same port while publishers
/// on two nodes keep going; one subscriber stays subscribed on B, another
/// leaves A just before the kill and resubscribes on B with `since` once
/// Redis is back.
async fn redis_restart(aof: bool) -> (Position, Position, Seen, Seen, Vec<(u64, Value)>) {
    let channel = if aof { "cont.aof" } else { "cont.empty" };
    let mut redis = KillableRedis::start(aof);
    let nodes = Nodes::start(&[redis.url(), redis.url()]);
    let stays = Subscriber::start(
        vec![nodes.listener(1), nodes.listener(0)],
        channel,
        Duration::ZERO,
    )
    .await;
    let leaves = Subscriber::start(vec![nodes.listener(0)], channel, Duration::ZERO).await;
    let mut publishers = Publishers::new();
    publishers.api(nodes.addr(0), channel, "a-api");
    publishers.ws(nodes.client(1), channel, "b-ws");
    publishers.api(nodes.addr(1), channel, "b-api");
    publishers.wait_for(0, 40).await;
    poll("both subscribers to receive events", || {
        (event_count(&stays.log) >= 20 && event_count(&leaves.log) >= 20).then_some(())
    })
    .await;
    leaves.task.abort();
    let left = check(channel, &leaves.records());
    let before = left.position.clone();

    redis.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.restart();
    if aof {
        assert!(
            std::fs::read_dir(redis.data_dir())
                .unwrap()
                .next()
                .is_some(),
            "Redis kept an append-only file"
        );
    }
    let back = publishers.count();
    publishers.wait_for(back, 30).await;
    // Resubscribe with since on the other node, once its feed is back (a
    // new login if the session went with Redis's data).
    let mut session = None;
    let deadline = Instant::now() + SETTLE;
    let mut conn = loop {
        match connect(&nodes.listener(1), &mut session).await {
            Ok(conn) => break conn,
            Err(e) => assert!(Instant::now() < deadline, "no connection to B: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reply = subscribe(&mut conn, channel, Some(&before)).await.unwrap();
    let mut records = leaves.records();
    records.push(Record::Subscribed {
        node: 1,
        since: Some(before.clone()),
        reply,
    });
    let log: Log = Arc::new(Mutex::new(records));
    let reader = {
        let log = log.clone();
        tokio::spawn(async move { read_into(conn, &log).await })
    };
    let resubscribed = publishers.count();
    publishers.wait_for(resubscribed, 30).await;
    let acked = publishers.stop().await;

    let (end, stream) = history(nodes.addr(0), channel).await;
    assert_acked_in(&acked, &end.epoch, &stream);
    let seen_stays = stays.finish(channel, &end).await;
    wait_position(&log, channel, &end).await;
    reader.abort();
    let seen_back = check(channel, &log.lock().unwrap());
    eprintln!(
        "redis restart (aof: {aof}): {} publishes acknowledged; left at {before:?}; \
         the one that stayed: {} RESYNC, {} reconnects",
        acked.len(),
        seen_stays.resyncs.len(),
        seen_stays.lost.len()
    );
    (before, end, seen_stays, seen_back, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_with_its_data_keeps_the_epoch_and_loses_nothing() {
    if crate::util::skip_services() {
        return;
    }
    let (before, end, stays, back, stream) = redis_restart(true).await;
    assert_eq!(end.epoch, before.epoch, "the AOF kept the stream's epoch");
    for (name, seen) in [("stayed", &stays), ("came back", &back)] {
        assert!(seen.resyncs.is_empty(), "{name}: {:?}", seen.resyncs);
        assert!(
            seen.subscribes.iter().skip(1).all(|(_, _, r)| r.recovered),
            "{name}: every resubscribe with since recovers: {:?}",
            seen.subscribes
        );
        assert_eq!(in_epoch(seen, &end.epoch), stream, "{name}");
    }
    let (_, since, reply) = back.subscribes.last().unwrap();
    assert!(
        reply.recovered && since.as_ref() == Some(&before),
        "{reply:?}"
    );
    assert!(
        reply.offset > before.offset,
        "it was away while events came"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_empty_changes_the_epoch_and_every_subscriber_is_told() {
    if crate::util::skip_services() {
        return;
    }
    let (before, end, stays, back, stream) = redis_restart(false).await;
    assert_ne!(
        end.epoch, before.epoch,
        "a Redis without its data: a new epoch"
    );
    // The one that stayed: told by RESYNC, or by `recovered: false` if its
    // connection ended (the session went with Redis's data) — never a silent
    // gap (the strict check), and from there every event of the new epoch.
    let told = stays.resyncs.iter().any(|p| p.epoch == end.epoch)
        || stays
            .subscribes
            .iter()
            .any(|(_, since, r)| since.is_some() && !r.recovered && r.epoch == end.epoch);
    assert!(
        told,
        "the epoch change was announced: {:?} {:?}",
        stays.resyncs, stays.subscribes
    );
    assert!(
        stays
            .subscribes
            .iter()
            .skip(1)
            .all(|(_, _, r)| !r.recovered || r.epoch == end.epoch),
        "nothing of the lost epoch recovers: {:?}",
        stays.subscribes
    );
    let new = in_epoch(&stays, &end.epoch);
    let first = new.first().map_or(end.offset + 1, |(o, _)| *o);
    assert_eq!(new, stream[usize::try_from(first - 1).unwrap()..]);
    // The one that came back with a since of the lost epoch.
    let (_, since, reply) = back.subscribes.last().unwrap();
    assert_eq!(since.as_ref(), Some(&before));
    assert!(!reply.recovered, "{reply:?}");
    assert_eq!(reply.epoch, end.epoch);
    assert_eq!(
        in_epoch(&back, &end.epoch),
        stream[usize::try_from(reply.offset).unwrap()..]
    );
}

async fn a_client_away_while_n_events_are_published_gets_exactly_those_then_live_ones_elsewhere(
    backend: Backend,
) {
    const CHANNEL: &str = "cont.away";
    const AWAY: u64 = 40;
    let state = backend.start();
    let nodes = Nodes::start(&[state.url(), state.url(), state.url()]);
    let session = login(&nodes.client(1), USER, PASSWORD).await.unwrap();

    // On B: five events, then gone.
    let log: Log = Arc::default();
    let mut conn = session.connect(&nodes.client(1)).await.unwrap();
    let reply = subscribe(&mut conn, CHANNEL, None).await.unwrap();
    log.lock().unwrap().push(Record::Subscribed {
        node: 1,
        since: None,
        reply,
    });
    for n in 1..=5 {
        api_publish(nodes.addr(0), CHANNEL, json!({ "n": n })).await;
    }
    for _ in 1..=5 {
        let event = tokio::time::timeout(SETTLE, conn.next_channel_event())
            .await
            .unwrap()
            .unwrap();
        log.lock().unwrap().push(Record::Message(event));
    }
    drop(conn);
    let since = since_of(&log.lock().unwrap(), CHANNEL).unwrap();
    assert_eq!(since.offset, 5);

    // N events from several nodes and both APIs while it is away.
    let mut away = Vec::new();
    let mut publisher_c = session.connect(&nodes.client(2)).await.unwrap();
    for n in 0..AWAY {
        let data = json!({ "away": n });
        let position = match n % 3 {
            0 => publish_api(nodes.addr(0), CHANNEL, &data).await,
            1 => publish_api(nodes.addr(2), CHANNEL, &data).await,
            _ => {
                let body = publisher_c
                    .call(
                        MessageType::Publish,
                        CHANNEL,
                        data.to_string().as_bytes(),
                        false,
                    )
                    .await
                    .unwrap();
                serde_json::from_slice(&body).unwrap()
            }
        };
        away.push((position.offset, data));
    }
    let away_offsets: Vec<u64> = away.iter().map(|(o, _)| *o).collect();
    assert_eq!(away_offsets, (6..6 + AWAY).collect::<Vec<_>>());

    // Publishes keep coming from A and B while it resubscribes on C.
    let mut publishers = Publishers::new();
    publishers.api(nodes.addr(0), CHANNEL, "a-api");
    publishers.ws(nodes.client(1), CHANNEL, "b-ws");
    publishers.wait_for(0, 10).await;
    let mut conn = session.connect(&nodes.listener(2)).await.unwrap();
    let reply = subscribe(&mut conn, CHANNEL, Some(&since)).await.unwrap();
    assert!(reply.recovered, "{reply:?}");
    assert!(reply.offset >= 5 + AWAY, "{reply:?}");
    log.lock().unwrap().push(Record::Subscribed {
        node: 2,
        since: Some(since.clone()),
        reply,
    });
    let reader = {
        let log = log.clone();
        tokio::spawn(async move { read_into(conn, &log).await })
    };
    let resubscribed = publishers.count();
    publishers.wait_for(resubscribed, 40).await;
    let acked = publishers.stop().await;

    let (end, stream) = history(nodes.addr(0), CHANNEL).await;
    assert_acked_in(&acked, &end.epoch, &stream);
    wait_position(&log, CHANNEL, &end).await;
    reader.abort();
    let seen = check(CHANNEL, &log.lock().unwrap());
    assert!(seen.resyncs.is_empty(), "{:?}", seen.resyncs);
    let got = in_epoch(&seen, &end.epoch);
    // Exactly those N right after the five it had, then the live ones, to
    // the end: each once, in order.
    assert_eq!(got[5..5 + away.len()], away[..]);
    assert_eq!(got, stream);
    assert!(got.len() > 5 + away.len() + 40);
}

/// `POST /api/publish` that must succeed; its position.
async fn publish_api(addr: SocketAddr, channel: &str, data: &Value) -> Position {
    let reply = api_publish(addr, channel, data.clone()).await;
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    Position {
        epoch: reply.json["epoch"].as_str().unwrap().to_owned(),
        offset: reply.json["offset"].as_u64().unwrap(),
    }
}

async fn a_stream_that_loses_its_history_is_announced_to_the_subscribers_that_stay(
    backend: Backend,
) {
    const CHANNEL: &str = "cont.lost";
    let state = backend.start();
    let nodes = Nodes::start(&[state.url(), state.url()]);
    // Sessions survive; only the stream goes (as when nobody published to
    // it for history_ttl_secs): the subscribers stay connected.
    let on_a = Subscriber::start(vec![nodes.listener(0)], CHANNEL, Duration::ZERO).await;
    let on_b = Subscriber::start(vec![nodes.listener(1)], CHANNEL, Duration::ZERO).await;
    let mut publishers = Publishers::new();
    publishers.api(nodes.addr(0), CHANNEL, "a-api");
    publishers.ws(nodes.client(1), CHANNEL, "b-ws");
    let before = publishers.wait_for(0, 30).await;
    // Both keys are in the channel's slot on a cluster.
    let (stream_key, log_key) = (
        state.channel_key("stream", CHANNEL),
        state.channel_key("stream-log", CHANNEL),
    );
    let deleted = state.command(&stream_key, &["DEL", &stream_key, &log_key]);
    assert_eq!(deleted, ["2"], "the stream's keys were there");
    publishers.wait_for(before, 40).await;
    let acked = publishers.stop().await;
    let (end, stream) = history(nodes.addr(0), CHANNEL).await;
    assert_acked_in(&acked, &end.epoch, &stream);
    let first_epoch = acked[0].0.epoch.clone();
    assert_ne!(end.epoch, first_epoch, "a new epoch");
    for (name, subscriber) in [("A", on_a), ("B", on_b)] {
        let seen = subscriber.finish(CHANNEL, &end).await;
        assert!(seen.lost.is_empty(), "{name}: {:?}", seen.lost);
        // Told, on the live connection, before the new epoch's events; the
        // strict check makes sure none came unannounced.
        let resync = seen
            .resyncs
            .iter()
            .find(|p| p.epoch == end.epoch)
            .unwrap_or_else(|| panic!("{name}: no RESYNC to the new epoch: {:?}", seen.resyncs));
        let new = in_epoch(&seen, &end.epoch);
        assert_eq!(
            new,
            stream[usize::try_from(resync.offset).unwrap()..],
            "{name}"
        );
        let old = in_epoch(&seen, &first_epoch);
        let offsets: Vec<u64> = old.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (1..=offsets.len() as u64).collect::<Vec<_>>());
        assert!(offsets.len() >= 20, "{name}: {offsets:?}");
    }
}
