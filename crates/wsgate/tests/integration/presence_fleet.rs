//! Issue 13, presence in a fleet (protocol.md §6.6): `wsgate serve`
//! processes sharing one data directory and a real Redis — each test runs
//! on a standalone Redis and on the shared Redis Cluster (`backend.rs`:
//! `…::redis`, `…::cluster`) — clients on real sockets on different nodes.
//!
//! * Two users join and leave in every order, one of them also with two
//!   connections on two nodes (one join, one leave, nothing in between); an
//!   observer on a third node gets exactly the expected sequence, and
//!   PRESENCE on every node lists the same users and connection counts.
//! * LOGOUT (on another node than one of the session's connections) and
//!   session expiry are leaves.
//! * A node killed with SIGKILL: its users leave within
//!   `[limits] presence_ttl_secs`, each leave delivered exactly once to an
//!   observer on each surviving node, and nobody else leaves.
//! * Whoever may not subscribe gets `forbidden` for PRESENCE, on every node.
//!
//! Observers record every PRESENCE_EVENT in a task of their own, so what is
//! compared is the whole sequence a subscriber got — a duplicated, missing,
//! spurious or reordered join or leave fails the test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::{Backend, State, on_both_backends};
use crate::cli::{Served, run, serve_logged};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wsgate_client::{
    ChannelEvent, ClientConfig, Connection, PresenceReply, Session, SubscribeRequest, login,
};
use wsgate_proto::envelope::MessageType;

const USERS: [&str; 6] = ["alice", "bob", "carol", "dave", "erin", "frank"];
/// How long anything may take to show up once it should (a loaded CI
/// machine included); every wait is bounded by it.
const SETTLE: Duration = Duration::from_secs(15);
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(400);

fn password(user: &str) -> String {
    format!("{user} presence password")
}

// ───────────────────────────────── the fleet ─────────────────────────────────

/// Gateway processes sharing one data directory and one state store
/// (a Redis or a Redis Cluster); node `i`'s configuration gets `extra[i]`
/// (lines in `[limits]`, then in `[login]`).
struct Nodes {
    nodes: Vec<Option<Served>>,
    /// A connection per node for PRESENCE, made when first needed.
    askers: tokio::sync::Mutex<Vec<Option<Connection>>>,
    dir: tempfile::TempDir,
}

impl Nodes {
    fn start(state: &State, extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let configs: Vec<String> = extra
            .iter()
            .enumerate()
            .map(|(i, (limits, login))| {
                let path = dir.path().join(format!("node{i}.toml"));
                let toml = format!(
                    r#"data_dir = "{data}"
state = "{url}"
metrics_listen = "off"
[limits]
{limits}
[login]
iterations = 4096
{login}
[[channels]]
pattern = "room.*"
presence = true
[[channels]]
pattern = "priv.{{user}}.*"
subscribe = "owner"
presence = true
"#,
                    data = data.display(),
                    url = state.url(),
                );
                std::fs::write(&path, toml).unwrap();
                path.display().to_string()
            })
            .collect();
        let (ok, _, err) = run(&["keygen", "--config", &configs[0]], None);
        assert!(ok, "{err}");
        for user in USERS {
            let (ok, _, err) = run(
                &[
                    "user",
                    "add",
                    user,
                    "--config",
                    &configs[0],
                    "--password-stdin",
                ],
                Some(&password(user)),
            );
            assert!(ok, "{err}");
        }
        let nodes = configs
            .iter()
            .enumerate()
            .map(|(i, c)| Some(serve_logged(c, &dir.path().join(format!("node{i}.log")))))
            .collect();
        Self {
            nodes,
            askers: tokio::sync::Mutex::default(),
            dir,
        }
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{i}.log"))).unwrap_or_default()
    }

    /// A client of node `i`; its timeout bounds a quiet observer's wait too.
    fn client(&self, i: usize) -> ClientConfig {
        let addr = self.nodes[i].as_ref().expect("node is running").addr;
        ClientConfig::from_addr(addr).timeout(Duration::from_secs(60))
    }

    /// Logs `user` in on node `at`.
    async fn login(&self, at: usize, user: &str) -> Session {
        login(&self.client(at), user, &password(user))
            .await
            .unwrap()
    }

    /// A connection of `session` to node `i`.
    async fn connect(&self, i: usize, session: &Session) -> Connection {
        session.connect(&self.client(i)).await.unwrap()
    }

    /// `user` logged in and connected to node `i`.
    async fn user(&self, i: usize, user: &str) -> Connection {
        let session = self.login(i, user).await;
        self.connect(i, &session).await
    }

    /// erin on node `i`, logged in on node 0 (whose sessions last).
    async fn asker(&self, i: usize) -> Connection {
        let session = self.login(0, "erin").await;
        self.connect(i, &session).await
    }

    /// SIGKILL, and wait until it is gone.
    fn kill(&mut self, i: usize) {
        let mut node = self.nodes[i].take().expect("node is running");
        node.child.kill().unwrap();
        node.child.wait().unwrap();
    }

    /// PRESENCE on `channel` asked on every running node (by one
    /// connection of user erin per node, not subscribed to it): all must
    /// answer the same list.
    async fn presence_everywhere(&self, channel: &str) -> Vec<(String, u32)> {
        let mut askers = self.askers.lock().await;
        askers.resize_with(self.nodes.len(), || None);
        let mut lists = Vec::new();
        for (i, asker) in askers.iter_mut().enumerate() {
            if self.nodes[i].is_none() {
                *asker = None;
                continue;
            }
            if asker.is_none() {
                *asker = Some(self.asker(i).await);
            }
            let conn = asker.as_mut().unwrap();
            lists.push((i, users(&conn.presence(channel, false).await.unwrap())));
        }
        let first = lists[0].1.clone();
        for (i, list) in &lists {
            assert_eq!(*list, first, "node {i} disagrees: {lists:?}");
        }
        first
    }

    /// Polls PRESENCE on every node until each lists `expected`.
    async fn wait_presence(&self, channel: &str, expected: &[(&str, u32)]) {
        let expected: Vec<(String, u32)> = expected
            .iter()
            .map(|(u, n)| ((*u).to_owned(), *n))
            .collect();
        let deadline = Instant::now() + SETTLE;
        loop {
            let mut askers = self.askers.lock().await;
            askers.resize_with(self.nodes.len(), || None);
            let mut agree = true;
            let mut last = Vec::new();
            for (i, asker) in askers.iter_mut().enumerate() {
                if self.nodes[i].is_none() {
                    *asker = None;
                    continue;
                }
                if asker.is_none() {
                    *asker = Some(self.asker(i).await);
                }
                let conn = asker.as_mut().unwrap();
                let list = users(&conn.presence(channel, false).await.unwrap());
                agree &= list == expected;
                last.push((i, list));
            }
            drop(askers);
            if agree {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PRESENCE {channel}: {last:?}, expected {expected:?} on every node"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

fn users(reply: &PresenceReply) -> Vec<(String, u32)> {
    reply
        .users
        .iter()
        .map(|u| (u.user.clone(), u.connections))
        .collect()
}

fn with_events() -> SubscribeRequest {
    SubscribeRequest {
        since: None,
        presence_events: true,
    }
}

// ──────────────────────────────── observers ──────────────────────────────────

/// `(channel, "+user" | "-user")`: a join or a leave.
type Change = (String, String);

/// A connection subscribed with presence events to some channels, every
/// PRESENCE_EVENT it gets recorded (its own user's included) until the
/// connection ends.
struct Observer {
    user: String,
    seen: Arc<Mutex<Vec<Change>>>,
    ended: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl Observer {
    async fn start(nodes: &Nodes, node: usize, user: &str, channels: &[&str]) -> Self {
        let mut conn = nodes.user(node, user).await;
        for channel in channels {
            conn.subscribe_with(channel, &with_events(), false)
                .await
                .unwrap();
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(None));
        let task = {
            let (seen, ended) = (seen.clone(), ended.clone());
            tokio::spawn(async move {
                loop {
                    match conn.next_channel_event().await {
                        Ok(ChannelEvent::Presence {
                            channel,
                            user,
                            joined,
                        }) => {
                            let sign = if joined { '+' } else { '-' };
                            seen.lock()
                                .unwrap()
                                .push((channel, format!("{sign}{user}")));
                        }
                        Ok(other) => panic!("not a presence event: {other:?}"),
                        Err(e) => {
                            *ended.lock().unwrap() = Some(e.to_string());
                            return;
                        }
                    }
                }
            })
        };
        Self {
            user: user.to_owned(),
            seen,
            ended,
            task,
        }
    }

    /// The changes on `channel` about users other than the observer's own.
    fn changes(&self, channel: &str) -> Vec<String> {
        let own = [format!("+{}", self.user), format!("-{}", self.user)];
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, change)| c == channel && !own.contains(change))
            .map(|(_, change)| change.clone())
            .collect()
    }

    /// Waits until `channel`'s changes are `expected` (panics at once on
    /// anything else, after [`SETTLE`] on too few), then watches for
    /// [`QUIET`] that nothing follows.
    async fn expect(&self, channel: &str, expected: &[&str]) {
        self.expect_quiet(channel, expected, QUIET).await;
    }

    async fn expect_quiet(&self, channel: &str, expected: &[&str], quiet: Duration) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let got = self.changes(channel);
            assert!(
                got.len() <= expected.len() && got[..] == expected[..got.len()],
                "{} on {channel}: got {got:?}, expected {expected:?}",
                self.user
            );
            if got.len() == expected.len() {
                break;
            }
            if let Some(e) = self.ended.lock().unwrap().as_ref() {
                panic!("{}'s connection ended: {e}; got {got:?}", self.user);
            }
            assert!(
                Instant::now() < deadline,
                "{} on {channel}: only {got:?} of {expected:?} within {SETTLE:?}",
                self.user
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(quiet).await;
        assert_eq!(
            self.changes(channel),
            expected,
            "{} on {channel}: more than expected",
            self.user
        );
        assert!(
            self.ended.lock().unwrap().is_none(),
            "{}'s connection ended",
            self.user
        );
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// UNSUBSCRIBE (answered once the member is gone from the store).
async fn unsubscribe(conn: &mut Connection, channel: &str) {
    conn.call(MessageType::Unsubscribe, channel, b"", false)
        .await
        .unwrap();
}

// ────────────────────────────────── the tests ────────────────────────────────

/// One step of a join/leave order: which user, joining or leaving.
#[derive(Clone, Copy, Debug)]
enum Step {
    Join(usize),
    Leave(usize),
}

// Each on a standalone Redis and on the shared Redis Cluster (`backend.rs`).
on_both_backends!(
    joins_and_leaves_on_two_nodes_reach_an_observer_on_a_third_in_order_and_once,
    logout_on_any_node_and_session_expiry_are_leaves_fleet_wide,
    a_killed_nodes_users_leave_within_the_ttl_once_for_every_surviving_observer,
    presence_of_a_channel_one_may_not_subscribe_to_is_forbidden_on_every_node,
);

async fn joins_and_leaves_on_two_nodes_reach_an_observer_on_a_third_in_order_and_once(
    backend: Backend,
) {
    let state = backend.start();
    let nodes = Nodes::start(&state, &[("", ""), ("", ""), ("", "")]);
    let who = ["alice", "bob"];
    use Step::{Join, Leave};
    // Every order of alice's and bob's join and leave (each joins first).
    let orders: [[Step; 4]; 6] = [
        [Join(0), Join(1), Leave(0), Leave(1)],
        [Join(0), Join(1), Leave(1), Leave(0)],
        [Join(0), Leave(0), Join(1), Leave(1)],
        [Join(1), Join(0), Leave(0), Leave(1)],
        [Join(1), Join(0), Leave(1), Leave(0)],
        [Join(1), Leave(1), Join(0), Leave(0)],
    ];
    let channels: Vec<String> = (0..orders.len())
        .map(|i| format!("room.order{i}"))
        .collect();
    let names: Vec<&str> = channels.iter().map(String::as_str).collect();
    let observer = Observer::start(&nodes, 2, "carol", &names).await;
    for (n, order) in orders.iter().enumerate() {
        let channel = &channels[n];
        // alice on node 0 and bob on node 1 — or the other way round.
        let node_of = |u: usize| (u + n) % 2;
        let mut conns: [Option<Connection>; 2] = [None, None];
        let mut expected = Vec::new();
        for (k, step) in order.iter().enumerate() {
            match *step {
                Join(u) => {
                    let mut conn = nodes.user(node_of(u), who[u]).await;
                    conn.subscribe(channel, None, false).await.unwrap();
                    conns[u] = Some(conn);
                    expected.push(format!("+{}", who[u]));
                }
                Leave(u) => {
                    // Changes that wait together for a subscriber are
                    // coalesced (a join and a leave of one user cancel
                    // out): let the observer have everything so far first.
                    let so_far: Vec<&str> = expected.iter().map(String::as_str).collect();
                    observer
                        .expect_quiet(channel, &so_far, Duration::ZERO)
                        .await;
                    let mut conn = conns[u].take().unwrap();
                    // Half the leaves are UNSUBSCRIBE, half a close.
                    if (k + n) % 2 == 0 {
                        unsubscribe(&mut conn, channel).await;
                    } else {
                        drop(conn);
                        // The close is handled after the socket goes: wait
                        // for it before the next step, so that the order
                        // is the test's.
                        observer
                            .expect_quiet(
                                channel,
                                &expected
                                    .iter()
                                    .map(String::as_str)
                                    .chain([format!("-{}", who[u]).as_str()])
                                    .collect::<Vec<_>>(),
                                Duration::ZERO,
                            )
                            .await;
                    }
                    expected.push(format!("-{}", who[u]));
                }
            }
            // PRESENCE agrees on every node after every step.
            let mut present: Vec<(&str, u32)> = vec![("carol", 1)];
            for (u, c) in conns.iter().enumerate() {
                if c.is_some() {
                    present.push((who[u], 1));
                }
            }
            present.sort();
            nodes.wait_presence(channel, &present).await;
        }
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        observer.expect(channel, &expected).await;
    }

    // bob with two connections on two nodes: one join when the first
    // subscribes, one leave when the last goes, nothing in between — in
    // both orders of leaving, and with a UNSUBSCRIBE and a close.
    for (round, first_leaves_first) in [true, false].into_iter().enumerate() {
        let channel = format!("room.twice{round}");
        let observer = Observer::start(&nodes, 2, "carol", &[&channel]).await;
        let mut alice = nodes.user(0, "alice").await;
        alice.subscribe(&channel, None, false).await.unwrap();
        let bob_session = nodes.login(1, "bob").await;
        let mut bob_a = nodes.connect(0, &bob_session).await;
        let mut bob_b = nodes.connect(1, &bob_session).await;
        bob_a.subscribe(&channel, None, false).await.unwrap();
        observer.expect(&channel, &["+alice", "+bob"]).await;
        bob_b.subscribe(&channel, None, false).await.unwrap();
        nodes
            .wait_presence(&channel, &[("alice", 1), ("bob", 2), ("carol", 1)])
            .await;
        assert_eq!(
            nodes.presence_everywhere(&channel).await,
            [
                ("alice".to_owned(), 1),
                ("bob".to_owned(), 2),
                ("carol".to_owned(), 1)
            ]
        );
        observer.expect(&channel, &["+alice", "+bob"]).await;
        let (mut first, last) = if first_leaves_first {
            (bob_a, bob_b)
        } else {
            (bob_b, bob_a)
        };
        unsubscribe(&mut first, &channel).await;
        nodes
            .wait_presence(&channel, &[("alice", 1), ("bob", 1), ("carol", 1)])
            .await;
        observer.expect(&channel, &["+alice", "+bob"]).await;
        // Subscribing again on the first connection: still no join.
        first.subscribe(&channel, None, false).await.unwrap();
        nodes
            .wait_presence(&channel, &[("alice", 1), ("bob", 2), ("carol", 1)])
            .await;
        drop(first);
        nodes
            .wait_presence(&channel, &[("alice", 1), ("bob", 1), ("carol", 1)])
            .await;
        observer.expect(&channel, &["+alice", "+bob"]).await;
        drop(last);
        observer.expect(&channel, &["+alice", "+bob", "-bob"]).await;
        unsubscribe(&mut alice, &channel).await;
        observer
            .expect(&channel, &["+alice", "+bob", "-bob", "-alice"])
            .await;
        nodes.wait_presence(&channel, &[("carol", 1)]).await;
    }
}

async fn logout_on_any_node_and_session_expiry_are_leaves_fleet_wide(backend: Backend) {
    let state = backend.start();
    // Node 2 issues sessions of 3 s.
    let nodes = Nodes::start(&state, &[("", ""), ("", ""), ("", "session_ttl_secs = 3")]);
    let observer = Observer::start(&nodes, 0, "carol", &["room.logout", "room.expiry"]).await;

    // alice's session on nodes 1 and 2, LOGOUT on node 2: both of her
    // connections end (node 1's through the revocation), one leave.
    let session = nodes.login(1, "alice").await;
    let mut on_1 = nodes.connect(1, &session).await;
    let mut on_2 = nodes.connect(2, &session).await;
    on_1.subscribe("room.logout", None, false).await.unwrap();
    on_2.subscribe("room.logout", None, false).await.unwrap();
    // bob stays: only alice leaves.
    let mut bob = nodes.user(1, "bob").await;
    bob.subscribe("room.logout", None, false).await.unwrap();
    nodes
        .wait_presence("room.logout", &[("alice", 2), ("bob", 1), ("carol", 1)])
        .await;
    observer
        .expect_quiet("room.logout", &["+alice", "+bob"], Duration::ZERO)
        .await;
    on_2.logout().await.unwrap();
    observer
        .expect("room.logout", &["+alice", "+bob", "-alice"])
        .await;
    nodes
        .wait_presence("room.logout", &[("bob", 1), ("carol", 1)])
        .await;
    let ended = tokio::time::timeout(SETTLE, on_1.next_channel_event())
        .await
        .expect("node 1 ends the logged-out session's connection");
    assert!(ended.is_err(), "{ended:?}");

    // dave logs in on node 2 (a 3 s session) and subscribes on node 1:
    // when the session expires, node 1 closes the connection — a leave.
    let session = nodes.login(2, "dave").await;
    let mut dave = nodes.connect(1, &session).await;
    dave.subscribe("room.expiry", None, false).await.unwrap();
    let subscribed = Instant::now();
    observer
        .expect_quiet("room.expiry", &["+dave"], Duration::ZERO)
        .await;
    observer
        .expect_quiet("room.expiry", &["+dave", "-dave"], QUIET)
        .await;
    let after = subscribed.elapsed();
    assert!(after <= Duration::from_secs(3) + SETTLE, "{after:?}");
    nodes.wait_presence("room.expiry", &[("carol", 1)]).await;
    let ended = tokio::time::timeout(SETTLE, dave.next_channel_event())
        .await
        .expect("the expired session's connection ends");
    assert!(ended.is_err(), "{ended:?}");
    drop(bob);
}

async fn a_killed_nodes_users_leave_within_the_ttl_once_for_every_surviving_observer(
    backend: Backend,
) {
    const TTL: Duration = Duration::from_secs(3);
    const CHANNEL: &str = "room.kill";
    let state = backend.start();
    let ttl = "presence_ttl_secs = 3";
    let mut nodes = Nodes::start(&state, &[(ttl, ""), (ttl, ""), (ttl, "")]);
    // An observer on each node that survives.
    let on_0 = Observer::start(&nodes, 0, "carol", &[CHANNEL]).await;
    let on_1 = Observer::start(&nodes, 1, "dave", &[CHANNEL]).await;
    // alice (twice) and bob only on node 2; frank on nodes 2 and 0; erin
    // on node 1.
    let mut alice = nodes.user(2, "alice").await;
    let mut alice_again = nodes.user(2, "alice").await;
    let mut bob = nodes.user(2, "bob").await;
    let mut frank_2 = nodes.user(2, "frank").await;
    let mut frank_0 = nodes.user(0, "frank").await;
    let mut erin = nodes.user(1, "erin").await;
    for conn in [
        &mut alice,
        &mut alice_again,
        &mut bob,
        &mut frank_2,
        &mut frank_0,
        &mut erin,
    ] {
        conn.subscribe(CHANNEL, None, false).await.unwrap();
    }
    for (observer, other) in [(&on_0, "+dave"), (&on_1, "+carol")] {
        let got = observer.changes(CHANNEL);
        // The other observer may have joined before this one subscribed.
        let expected: &[&str] = if got.first().map(String::as_str) == Some(other) {
            &[other, "+alice", "+bob", "+frank", "+erin"]
        } else {
            &["+alice", "+bob", "+frank", "+erin"]
        };
        observer.expect(CHANNEL, expected).await;
    }
    let before = [
        ("alice", 2),
        ("bob", 1),
        ("carol", 1),
        ("dave", 1),
        ("erin", 1),
        ("frank", 2),
    ];
    nodes.wait_presence(CHANNEL, &before).await;
    // Longer than a TTL: the heartbeat keeps everyone present, quietly.
    tokio::time::sleep(TTL + TTL / 2).await;
    nodes.wait_presence(CHANNEL, &before).await;
    let joins = [on_0.changes(CHANNEL), on_1.changes(CHANNEL)];

    // The worst moment to die: just after a refresh of node 2's members
    // (alice's are only there), which keeps them alive the longest.
    let (members, who) = (
        state.channel_key("presence", CHANNEL),
        state.channel_key("presence-who", CHANNEL),
    );
    let member = state
        .command(&who, &["HGETALL", &who])
        .chunks(2)
        .find(|pair| pair[1] == "alice")
        .map(|pair| pair[0].clone())
        .expect("alice's member in Redis");
    let score = || {
        state.command(&members, &["ZSCORE", &members, &member])[0]
            .parse::<f64>()
            .unwrap()
    };
    let refreshed = score();
    let deadline = Instant::now() + SETTLE;
    while score() <= refreshed {
        assert!(Instant::now() < deadline, "node 2 never refreshed {member}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    nodes.kill(2);
    let killed = Instant::now();
    let leaves = ["-alice", "-bob"];
    let deadline = killed + SETTLE;
    let mut took = Vec::new();
    for (observer, joins) in [&on_0, &on_1].into_iter().zip(&joins) {
        loop {
            let got = observer.changes(CHANNEL);
            let after = &got[joins.len()..];
            assert!(
                after.len() <= 2 && after.iter().all(|c| leaves.contains(&c.as_str())),
                "{}: after the kill {after:?}",
                observer.user
            );
            if after.len() == 2 {
                assert_ne!(after[0], after[1], "{}: a leave twice", observer.user);
                took.push(killed.elapsed());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: only {after:?} within {SETTLE:?} of the kill",
                observer.user
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    eprintln!("kill: the leaves arrived {took:?} after it");
    for t in &took {
        assert!(
            *t <= TTL,
            "the killed node's users left {t:?} after the kill; presence_ttl_secs is {TTL:?}"
        );
    }
    nodes
        .wait_presence(
            CHANNEL,
            &[("carol", 1), ("dave", 1), ("erin", 1), ("frank", 1)],
        )
        .await;
    // Two more TTLs: no leave twice, nobody else leaves, nothing joins.
    let snapshot = [on_0.changes(CHANNEL), on_1.changes(CHANNEL)];
    tokio::time::sleep(TTL * 2).await;
    assert_eq!([on_0.changes(CHANNEL), on_1.changes(CHANNEL)], snapshot);
    for observer in [&on_0, &on_1] {
        assert!(observer.ended.lock().unwrap().is_none());
    }
    assert_eq!(
        nodes.presence_everywhere(CHANNEL).await,
        [
            ("carol".to_owned(), 1),
            ("dave".to_owned(), 1),
            ("erin".to_owned(), 1),
            ("frank".to_owned(), 1)
        ]
    );
    // The survivors' own leaves still work.
    drop(frank_0);
    let mut expected: Vec<&str> = snapshot[0].iter().map(String::as_str).collect();
    expected.push("-frank");
    on_0.expect(CHANNEL, &expected).await;
    drop(erin);
}

async fn presence_of_a_channel_one_may_not_subscribe_to_is_forbidden_on_every_node(
    backend: Backend,
) {
    let state = backend.start();
    let nodes = Nodes::start(&state, &[("", ""), ("", "")]);
    let mut bob = nodes.user(1, "bob").await;
    bob.subscribe("priv.bob.inbox", None, false).await.unwrap();
    for i in 0..2 {
        let mut alice = nodes.user(i, "alice").await;
        let denied = alice.presence("priv.bob.inbox", false).await;
        assert_eq!(
            denied.as_ref().err().and_then(|e| e.server_code()),
            Some("forbidden"),
            "node {i}: {denied:?}"
        );
        let denied = alice
            .subscribe_with("priv.bob.inbox", &with_events(), false)
            .await;
        assert_eq!(
            denied.as_ref().err().and_then(|e| e.server_code()),
            Some("forbidden"),
            "node {i}: {denied:?}"
        );
        // bob himself may ask, on any node.
        let mut bob_here = nodes.user(i, "bob").await;
        assert_eq!(
            users(&bob_here.presence("priv.bob.inbox", false).await.unwrap()),
            [("bob".to_owned(), 1)]
        );
    }
}
