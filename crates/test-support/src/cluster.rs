//! A private Redis Cluster: three masters and three replicas on loopback.
//!
//! See [`RedisCluster`].

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::{
    Process, SKIP_ENV, find_on_path, free_port, kept_tempdir, redis_ping, redis_server_binary,
    wait_until,
};

/// The `cluster-node-timeout` of [`RedisCluster::start`], in milliseconds.
pub const DEFAULT_NODE_TIMEOUT_MS: u64 = 1000;

/// Hash slots in a Redis Cluster.
const SLOTS: u32 = 16384;
/// Nodes: three masters, each with one replica.
const NODES: usize = 6;
const MASTERS: usize = 3;
/// How long the cluster may take to form after its nodes run.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one command to a node may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

fn redis_cli_binary(server: &Path) -> Result<PathBuf, String> {
    if let Some(found) = crate::binary_from_env("WSGATE_REDIS_CLI", "redis-cli", "redis-tools") {
        return found;
    }
    server
        .parent()
        .map(|dir| dir.join("redis-cli"))
        .filter(|p| p.is_file())
        .or_else(|| find_on_path("redis-cli"))
        .or_else(|| Some(PathBuf::from("/usr/bin/redis-cli")).filter(|p| p.is_file()))
        .ok_or_else(|| {
            format!(
                "redis-cli not found (it creates the test Redis Cluster): install the Debian \
                 package redis-tools (apt-get install -y redis-tools), set \
                 WSGATE_REDIS_CLI=/path/to/redis-cli, or set {SKIP_ENV}=1 to skip the tests \
                 that need it"
            )
        })
}

/// One `redis-server` of the cluster.
#[derive(Debug)]
struct Node {
    port: u16,
    process: Process,
    killed: bool,
}

/// What a master was when it was killed, for [`RedisCluster::wait_failover`].
#[derive(Debug)]
struct Killed {
    id: String,
    /// Node ids of its replicas then.
    replicas: Vec<String>,
}

/// A private Redis Cluster of three masters and three replicas.
///
/// [`start`](Self::start) starts six `redis-server --cluster-enabled yes`
/// on free 127.0.0.1 ports (each with its cluster bus on a second free port,
/// `--cluster-port`, and its own directory holding its `nodes.conf` and
/// `redis.log`), joins them with `redis-cli --cluster create …
/// --cluster-replicas 1 --cluster-yes`, and waits until every node reports
/// `cluster_state:ok` with all 16384 slots assigned and every master's
/// replica linked. No persistence; a short `cluster-node-timeout` (1 s
/// unless [`start_with_node_timeout`](Self::start_with_node_timeout)),
/// so that a killed master's replica takes over within a few seconds.
///
/// The nodes run under the same watchdog as every server here: they stop,
/// and their directories go, when the `RedisCluster` is dropped or when the
/// test process ends. Needs the Debian packages `redis-server` and
/// `redis-tools` (`redis-cli`; `WSGATE_REDIS_CLI=/path/to/redis-cli`
/// elsewhere).
#[derive(Debug)]
pub struct RedisCluster {
    /// The masters as created (by their lowest slot), then their replicas in
    /// the same order.
    nodes: Vec<Node>,
    node_timeout: Duration,
    /// Killed masters by port.
    killed: HashMap<u16, Killed>,
}

impl RedisCluster {
    /// Starts one with a `cluster-node-timeout` of
    /// [`DEFAULT_NODE_TIMEOUT_MS`] and waits until it is fully formed.
    pub fn start() -> Result<Self, String> {
        Self::start_with_node_timeout(DEFAULT_NODE_TIMEOUT_MS)
    }

    /// Starts one with a `cluster-node-timeout` of `ms` milliseconds (how
    /// long a silent master goes before its replica replaces it).
    pub fn start_with_node_timeout(ms: u64) -> Result<Self, String> {
        let server = redis_server_binary()?;
        let cli = redis_cli_binary(&server)?;
        let mut nodes = Vec::with_capacity(NODES);
        for _ in 0..NODES {
            nodes.push(start_node(&server, ms)?);
        }
        let mut cluster = Self {
            nodes,
            node_timeout: Duration::from_millis(ms),
            killed: HashMap::new(),
        };
        cluster.create(&cli)?;
        let deadline = Instant::now() + FORM_TIMEOUT;
        cluster.wait("the new cluster to form", deadline, |c| c.formed())?;
        // The masters by their lowest slot, then the replicas in the same order.
        let view = cluster.view()?;
        let masters = view.masters();
        let order: Vec<u16> = masters
            .iter()
            .map(|m| m.port)
            .chain(masters.iter().filter_map(|m| view.replica_of(&m.id)))
            .collect();
        cluster
            .nodes
            .sort_by_key(|n| order.iter().position(|&p| p == n.port));
        Ok(cluster)
    }

    /// Runs `redis-cli --cluster create` over the six nodes (bounded).
    fn create(&self, cli: &Path) -> Result<(), String> {
        let log = self.nodes[0]
            .process
            .log
            .with_file_name("cluster-create.log");
        let out = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"].map(String::from));
        let mut child = Command::new(cli)
            .args(&args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", cli.display()))?;
        let command = format!("{} {}", cli.display(), args.join(" "));
        let output = || std::fs::read_to_string(&log).unwrap_or_default();
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(format!("`{command}` failed ({status}):\n{}", output()));
                }
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "`{command}` did not finish within {FORM_TIMEOUT:?}:\n{}",
                        output()
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(format!("cannot wait for `{command}`: {e}")),
            }
        }
    }

    /// Polls `ready` (which says what is missing) until it holds or
    /// `deadline` passes; the error names `what` and what was last missing.
    fn wait<T>(
        &self,
        what: &str,
        deadline: Instant,
        mut ready: impl FnMut(&Self) -> Result<T, String>,
    ) -> Result<T, String> {
        let started = Instant::now();
        loop {
            let missing = match ready(self) {
                Ok(value) => return Ok(value),
                Err(missing) => missing,
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out after {:?} waiting for {what}: {missing}",
                    started.elapsed()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether every node sees a healthy cluster of three masters with a
    /// linked replica each (else what is missing).
    fn formed(&self) -> Result<(), String> {
        for node in &self.nodes {
            let port = node.port;
            let info = self.cluster_info(port)?;
            check_field(&info, port, "cluster_state", "ok")?;
            check_field(&info, port, "cluster_slots_assigned", &SLOTS.to_string())?;
            check_field(&info, port, "cluster_known_nodes", &NODES.to_string())?;
            let view = View::of(port)?;
            if let Some(bad) = view.nodes.iter().find(|n| !n.healthy()) {
                return Err(format!(
                    "127.0.0.1:{port} sees 127.0.0.1:{} as {}",
                    bad.port,
                    bad.flags.join(",")
                ));
            }
            let masters = view.masters();
            if masters.len() != MASTERS {
                return Err(format!(
                    "127.0.0.1:{port} sees {} masters with slots, not {MASTERS}",
                    masters.len()
                ));
            }
            for master in masters {
                if view.replica_of(&master.id).is_none() {
                    return Err(format!(
                        "127.0.0.1:{port} sees no replica of master 127.0.0.1:{}",
                        master.port
                    ));
                }
            }
            let replication = info_section(port, "replication")?;
            match replication.get("role").map(String::as_str) {
                Some("master") => {
                    if replication.get("connected_slaves").is_none_or(|n| n == "0") {
                        return Err(format!("master 127.0.0.1:{port} has no replica connected"));
                    }
                }
                Some("slave") => check_field(&replication, port, "master_link_status", "up")?,
                role => return Err(format!("127.0.0.1:{port} has role {role:?}")),
            }
        }
        Ok(())
    }

    /// `redis+cluster://127.0.0.1:P1,…,127.0.0.1:P6`: every node as a seed,
    /// masters first (so that a client still finds the cluster when a seed
    /// has been killed).
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// `redis://127.0.0.1:PORT` for every node, in the order of [`url`](Self::url).
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The ports of all six nodes (killed ones too), masters as created first.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The `cluster-node-timeout` it runs with.
    pub fn node_timeout(&self) -> Duration {
        self.node_timeout
    }

    /// The ports of the nodes that are masters now (as a live node sees the
    /// cluster; killed and failed nodes left out), by their lowest slot.
    pub fn masters(&self) -> Vec<u16> {
        let view = self.live_view();
        view.masters()
            .iter()
            .map(|m| m.port)
            .filter(|&p| self.is_live(p))
            .collect()
    }

    /// The ports of the nodes that are replicas now (killed and failed ones
    /// left out), in the order of their masters in [`masters`](Self::masters).
    pub fn replicas(&self) -> Vec<u16> {
        let view = self.live_view();
        view.masters()
            .iter()
            .flat_map(|m| view.replicas_of(&m.id))
            .filter(|&p| self.is_live(p))
            .collect()
    }

    /// The port of a live replica of the master on `port`, if it has one.
    pub fn replica_of(&self, port: u16) -> Option<u16> {
        let view = self.live_view();
        let master = view.nodes.iter().find(|n| n.port == port)?;
        view.replicas_of(&master.id)
            .into_iter()
            .find(|&p| self.is_live(p))
    }

    /// The port of the master serving `slot` now (as a live node sees it);
    /// panics when none does.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        let view = self.live_view();
        view.masters()
            .iter()
            .find(|m| m.serves(slot))
            .map(|m| m.port)
            .unwrap_or_else(|| panic!("no live master serves slot {slot}: {view:?}"))
    }

    /// The port of the master serving `key` now.
    pub fn master_of_key(&self, key: &str) -> u16 {
        self.master_of_slot(Self::key_slot(key))
    }

    /// The hash slot of `key`: CRC16 (XMODEM) of the key, or of its hash tag
    /// — what is between the first `{` and the next `}`, when not empty —
    /// modulo 16384, as `CLUSTER KEYSLOT` computes it.
    pub fn key_slot(key: &str) -> u16 {
        let bytes = key.as_bytes();
        let hashed = bytes
            .iter()
            .position(|&b| b == b'{')
            .and_then(|open| {
                let rest = &bytes[open + 1..];
                let close = rest.iter().position(|&b| b == b'}')?;
                (close > 0).then(|| &rest[..close])
            })
            .unwrap_or(bytes);
        crc16_xmodem(hashed) % (SLOTS as u16)
    }

    /// Kills (`SIGKILL`) the node on `port`: it vanishes without a word, as
    /// a crashed host would. Panics if it is not a node of this cluster or
    /// is already killed.
    pub fn kill_node(&mut self, port: u16) {
        let index = self
            .nodes
            .iter()
            .position(|n| n.port == port && !n.killed)
            .unwrap_or_else(|| panic!("127.0.0.1:{port} is no live node of this cluster"));
        let view = View::of(port).unwrap();
        let me = view
            .nodes
            .iter()
            .find(|n| n.flags.iter().any(|f| f == "myself"))
            .expect("CLUSTER NODES names the node itself");
        if me.is_master() {
            let killed = Killed {
                id: me.id.clone(),
                replicas: view
                    .nodes
                    .iter()
                    .filter(|n| n.master.as_deref() == Some(me.id.as_str()))
                    .map(|n| n.id.clone())
                    .collect(),
            };
            self.killed.insert(port, killed);
        }
        let node = &mut self.nodes[index];
        node.process.signal_server("KILL");
        node.killed = true;
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.process.server_pid().is_some() {
            assert!(
                Instant::now() < deadline,
                "127.0.0.1:{port} survived SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until a former replica of the master `killed` (killed with
    /// [`kill_node`](Self::kill_node)) serves as master and every surviving
    /// node reports `cluster_state:ok` and sees it so; returns its port.
    pub fn wait_failover(&self, killed: u16, within: Duration) -> Result<u16, String> {
        let Some(former) = self.killed.get(&killed) else {
            return Err(format!(
                "127.0.0.1:{killed} was not a master killed with kill_node"
            ));
        };
        if former.replicas.is_empty() {
            return Err(format!("killed master 127.0.0.1:{killed} had no replica"));
        }
        let what = format!("a replica of the killed master 127.0.0.1:{killed} to take over");
        self.wait(&what, Instant::now() + within, |cluster| {
            let mut promoted = None;
            for node in cluster.nodes.iter().filter(|n| !n.killed) {
                let port = node.port;
                check_field(&cluster.cluster_info(port)?, port, "cluster_state", "ok")?;
                let view = View::of(port)?;
                let master = view
                    .masters()
                    .into_iter()
                    .find(|m| former.replicas.contains(&m.id))
                    .ok_or_else(|| {
                        format!("127.0.0.1:{port} sees no former replica of it as a master yet")
                    })?;
                if view
                    .nodes
                    .iter()
                    .any(|n| n.id == former.id && n.serves_any())
                {
                    return Err(format!(
                        "127.0.0.1:{port} still sees slots on the killed master"
                    ));
                }
                match promoted {
                    Some(p) if p != master.port => {
                        return Err(format!(
                            "the nodes disagree on the new master (127.0.0.1:{p}, 127.0.0.1:{})",
                            master.port
                        ));
                    }
                    _ => promoted = Some(master.port),
                }
            }
            promoted.ok_or_else(|| "no node survives".to_owned())
        })
    }

    /// Calls per command on the node on `port`, from `INFO commandstats`
    /// (`cmdstat_spublish:calls=3,…` gives `"spublish" → 3`; subcommands as
    /// `"cluster|nodes"`). Counts since start or [`reset_stats`](Self::reset_stats).
    pub fn command_stats(&self, port: u16) -> Result<HashMap<String, u64>, String> {
        let mut stats = HashMap::new();
        for (name, value) in info_section(port, "commandstats")? {
            let Some(command) = name.strip_prefix("cmdstat_") else {
                continue;
            };
            let calls = value
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("127.0.0.1:{port}: unexpected {name}:{value}"))?;
            stats.insert(command.to_owned(), calls);
        }
        Ok(stats)
    }

    /// `CONFIG RESETSTAT` on every live node (command counts start at zero);
    /// panics if a node does not answer.
    pub fn reset_stats(&self) {
        for node in self.nodes.iter().filter(|n| !n.killed) {
            if let Err(e) = self.command(node.port, &["CONFIG", "RESETSTAT"]) {
                panic!("CONFIG RESETSTAT on 127.0.0.1:{}: {e}", node.port);
            }
        }
    }

    /// Sends one command to the node on `port` and returns its reply as
    /// text (a status, a bulk string, an integer; an array's elements one a
    /// line); a Redis error (`MOVED …` too) or no reply is an `Err`.
    /// Each call is a new connection: see [`pipeline`](Self::pipeline) for
    /// commands that must share one (`WAIT` after a write).
    pub fn command(&self, port: u16, args: &[&str]) -> Result<String, String> {
        command(port, args).map(Reply::into_text)
    }

    /// Sends `commands` to the node on `port` over one connection and
    /// returns their replies as [`command`](Self::command) does; the first
    /// Redis error is the `Err`.
    pub fn pipeline(&self, port: u16, commands: &[&[&str]]) -> Result<Vec<String>, String> {
        Ok(pipeline(port, commands)?
            .into_iter()
            .map(Reply::into_text)
            .collect())
    }

    /// `CLUSTER INFO` of one node.
    fn cluster_info(&self, port: u16) -> Result<HashMap<String, String>, String> {
        Ok(fields(&command(port, &["CLUSTER", "INFO"])?.into_text()))
    }

    /// The cluster as a live node sees it; panics when none answers.
    fn live_view(&self) -> View {
        self.view().unwrap()
    }

    fn view(&self) -> Result<View, String> {
        let mut last = "every node is killed".to_owned();
        for node in self.nodes.iter().filter(|n| !n.killed) {
            match View::of(node.port) {
                Ok(view) => return Ok(view),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn is_live(&self, port: u16) -> bool {
        self.nodes.iter().any(|n| n.port == port && !n.killed)
    }
}

/// A free port that no other node of this process has had (the clusters of
/// concurrent tests start at the same time).
fn fresh_port() -> u16 {
    static USED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut used = USED.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let port = free_port();
        if used.get_or_insert_default().insert(port) {
            return port;
        }
    }
}

/// Starts one node on fresh ports (again on others if it cannot bind them:
/// another process may have taken a port since it was found free).
fn start_node(server: &Path, node_timeout_ms: u64) -> Result<Node, String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (port, bus_port) = (fresh_port(), fresh_port());
        let dir = kept_tempdir("wsgate-redis-cluster-");
        let (port_text, bus_text) = (port.to_string(), bus_port.to_string());
        let (dir_text, timeout_text) = (dir.display().to_string(), node_timeout_ms.to_string());
        let args = [
            "--bind",
            "127.0.0.1",
            "--port",
            &port_text,
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            &bus_text,
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            &timeout_text,
            // A replica takes over however long ago it last heard its master.
            "--cluster-replica-validity-factor",
            "0",
            // Replicas sync at once (the default waits 5 s for more replicas).
            "--repl-diskless-sync-delay",
            "0",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir_text,
            "--daemonize",
            "no",
            "--logfile",
            "",
        ];
        let mut process =
            Process::spawn(server, &args, "TERM", &dir.join("redis.log"), Some(&dir))?;
        let what = format!("redis-server (cluster node) on port {port}");
        let started = wait_until(&what, &mut process, || redis_ping(port)).and_then(|()| {
            // The one that answers is this one, not a server that had the port.
            let info = info_section(port, "server")?;
            let pid = process.server_pid();
            if info.get("process_id") == pid.as_ref() {
                Ok(())
            } else {
                Err(format!(
                    "{what}: another server answers there:\n{}",
                    process.log_tail()
                ))
            }
        });
        match started {
            Ok(()) => {
                return Ok(Node {
                    port,
                    process,
                    killed: false,
                });
            }
            Err(e) if attempt >= 3 => return Err(e),
            Err(_) => {}
        }
    }
}

// ─────────────────────────────── CLUSTER NODES ───────────────────────────────

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct NodeLine {
    id: String,
    port: u16,
    flags: Vec<String>,
    /// The master's id, for a replica.
    master: Option<String>,
    /// Slot ranges served (inclusive).
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let id = words.next()?.to_owned();
        // ip:port@cport[,hostname]
        let address = words.next()?.split('@').next()?;
        let port = address.rsplit_once(':')?.1.parse().ok()?;
        let flags = words.next()?.split(',').map(String::from).collect();
        let master = Some(words.next()?).filter(|m| *m != "-").map(String::from);
        // ping-sent, pong-recv, config-epoch, link-state
        let mut words = words.skip(4);
        let slots = words
            .by_ref()
            .filter(|w| !w.starts_with('[')) // migrating/importing
            .map(|w| {
                let (from, to) = w.split_once('-').unwrap_or((w, w));
                Some((from.parse().ok()?, to.parse().ok()?))
            })
            .collect::<Option<_>>()?;
        Some(Self {
            id,
            port,
            flags,
            master,
            slots,
        })
    }

    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn failed(&self) -> bool {
        self.has_flag("fail") || self.has_flag("fail?")
    }

    fn healthy(&self) -> bool {
        !["fail", "fail?", "handshake", "noaddr", "nofailover"]
            .iter()
            .any(|f| self.has_flag(f))
    }

    fn is_master(&self) -> bool {
        self.has_flag("master")
    }

    fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }

    fn serves_any(&self) -> bool {
        !self.slots.is_empty()
    }
}

/// `CLUSTER NODES` of one node.
#[derive(Debug)]
struct View {
    nodes: Vec<NodeLine>,
}

impl View {
    fn of(port: u16) -> Result<Self, String> {
        let text = command(port, &["CLUSTER", "NODES"])?.into_text();
        let nodes = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                NodeLine::parse(l)
                    .ok_or_else(|| format!("127.0.0.1:{port}: unexpected CLUSTER NODES line {l:?}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { nodes })
    }

    /// The masters that are not failed and serve slots, by lowest slot.
    fn masters(&self) -> Vec<&NodeLine> {
        let mut masters: Vec<&NodeLine> = self
            .nodes
            .iter()
            .filter(|n| n.is_master() && !n.failed() && n.serves_any())
            .collect();
        masters.sort_by_key(|m| m.slots.iter().map(|s| s.0).min());
        masters
    }

    /// The ports of the replicas of master `id` that are not failed.
    fn replicas_of(&self, id: &str) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.master.as_deref() == Some(id) && !n.failed() && !n.is_master())
            .map(|n| n.port)
            .collect();
        ports.sort_unstable();
        ports
    }

    fn replica_of(&self, id: &str) -> Option<u16> {
        self.replicas_of(id).into_iter().next()
    }
}

// ──────────────────────────────────── RESP ───────────────────────────────────

/// A RESP2 reply.
#[derive(Debug)]
enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    fn into_text(self) -> String {
        match self {
            Self::Status(s) | Self::Error(s) => s,
            Self::Integer(n) => n.to_string(),
            Self::Bulk(b) => String::from_utf8_lossy(&b.unwrap_or_default()).into_owned(),
            Self::Array(items) => items
                .unwrap_or_default()
                .into_iter()
                .map(Self::into_text)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    fn read(reader: &mut impl std::io::BufRead) -> Result<Self, String> {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("reading a reply: {e}"))?;
        let line = line
            .strip_suffix("\r\n")
            .ok_or_else(|| format!("truncated reply {line:?}"))?;
        let (kind, rest) = line.split_at_checked(1).unwrap_or(("", ""));
        let length = || -> Result<i64, String> {
            rest.parse().map_err(|_| format!("bad reply line {line:?}"))
        };
        Ok(match kind {
            "+" => Self::Status(rest.to_owned()),
            "-" => Self::Error(rest.to_owned()),
            ":" => Self::Integer(length()?),
            "$" => match usize::try_from(length()?) {
                Err(_) => Self::Bulk(None),
                Ok(n) => {
                    let mut data = vec![0; n + 2];
                    reader
                        .read_exact(&mut data)
                        .map_err(|e| format!("reading a reply: {e}"))?;
                    data.truncate(n);
                    Self::Bulk(Some(data))
                }
            },
            "*" => match usize::try_from(length()?) {
                Err(_) => Self::Array(None),
                Ok(n) => Self::Array(Some(
                    (0..n)
                        .map(|_| Self::read(reader))
                        .collect::<Result<_, _>>()?,
                )),
            },
            _ => return Err(format!("bad reply line {line:?}")),
        })
    }
}

/// Sends `args` to the node on `port` over a new connection; a Redis error
/// reply is an `Err`.
fn command(port: u16, args: &[&str]) -> Result<Reply, String> {
    pipeline(port, &[args])?
        .pop()
        .ok_or_else(|| "no reply".to_owned())
}

/// Sends `commands` to the node on `port` over one new connection and reads
/// their replies; the first Redis error reply is an `Err`.
fn pipeline(port: u16, commands: &[&[&str]]) -> Result<Vec<Reply>, String> {
    let what = || {
        let texts: Vec<String> = commands.iter().map(|c| c.join(" ")).collect();
        format!("127.0.0.1:{port} {}", texts.join("; "))
    };
    let fail = |e: std::io::Error| format!("{}: {e}", what());
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&address, COMMAND_TIMEOUT).map_err(fail)?;
    stream
        .set_read_timeout(Some(COMMAND_TIMEOUT))
        .map_err(fail)?;
    stream
        .set_write_timeout(Some(COMMAND_TIMEOUT))
        .map_err(fail)?;
    let mut request = Vec::new();
    for args in commands {
        request.extend(format!("*{}\r\n", args.len()).bytes());
        for arg in *args {
            request.extend(format!("${}\r\n", arg.len()).bytes());
            request.extend(arg.bytes());
            request.extend(b"\r\n");
        }
    }
    (&stream).write_all(&request).map_err(fail)?;
    let mut reader = BufReader::new(&stream);
    let mut replies = Vec::with_capacity(commands.len());
    for _ in commands {
        match Reply::read(&mut reader) {
            Ok(Reply::Error(e)) => return Err(format!("{}: {e}", what())),
            Ok(reply) => replies.push(reply),
            Err(e) => return Err(format!("{}: {e}", what())),
        }
    }
    Ok(replies)
}

/// `INFO <section>` of one node as field → value.
fn info_section(port: u16, section: &str) -> Result<HashMap<String, String>, String> {
    Ok(fields(&command(port, &["INFO", section])?.into_text()))
}

/// `name:value` lines (INFO, CLUSTER INFO).
fn fields(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim_end().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn check_field(
    fields: &HashMap<String, String>,
    port: u16,
    name: &str,
    want: &str,
) -> Result<(), String> {
    match fields.get(name) {
        Some(value) if value == want => Ok(()),
        value => Err(format!(
            "127.0.0.1:{port} reports {name}:{}, not {want}",
            value.map_or("(none)", String::as_str)
        )),
    }
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), Redis Cluster's key hash.
fn crc16_xmodem(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &byte| {
        (0..8).fold(crc ^ (u16::from(byte) << 8), |crc, _| {
            if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            }
        })
    })
}

/// Sends one command to the Redis on `port` — a node of a cluster or a
/// standalone server — over a new connection, and returns its reply as
/// text, as [`RedisCluster::command`] does (a Redis error is an `Err`).
pub fn redis_command(port: u16, args: &[&str]) -> Result<String, String> {
    command(port, args).map(Reply::into_text)
}

static SHARED_CLUSTER: OnceLock<Result<RedisCluster, String>> = OnceLock::new();

/// The process's shared Redis Cluster (started on first use); panics with
/// what to install if it cannot start. Do not kill its nodes: tests that
/// fail nodes over start their own [`RedisCluster`].
pub fn shared_cluster() -> &'static RedisCluster {
    match SHARED_CLUSTER.get_or_init(RedisCluster::start) {
        Ok(cluster) => cluster,
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skipped;

    #[test]
    fn crc16_matches_the_reference_check_value() {
        // The CRC-16/XMODEM check value, and Redis' own example (cluster spec).
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(RedisCluster::key_slot("foo"), 12182);
    }

    #[test]
    fn hash_tags_follow_the_cluster_spec() {
        let slot = RedisCluster::key_slot;
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("foo{bar}{zap}"), slot("bar"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}"));
        assert_ne!(slot("foo{}{bar}"), slot("bar"));
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
        assert_eq!(slot("foo{bar"), slot("foo{bar"));
    }

    #[test]
    fn the_cluster_forms_with_every_slot_served() {
        if skipped() {
            return;
        }
        let cluster = shared_cluster();
        let (masters, replicas) = (cluster.masters(), cluster.replicas());
        assert_eq!(
            (masters.len(), replicas.len()),
            (3, 3),
            "{masters:?} {replicas:?}"
        );
        for port in cluster.ports() {
            let info = cluster.command(port, &["CLUSTER", "INFO"]).unwrap();
            assert!(info.contains("cluster_state:ok"), "{port}: {info}");
            assert!(
                info.contains("cluster_slots_assigned:16384"),
                "{port}: {info}"
            );
        }
        for (&master, &replica) in masters.iter().zip(&replicas) {
            assert_eq!(cluster.replica_of(master), Some(replica));
        }
        for slot in [0, 5460, 5461, 10922, 10923, 16383] {
            assert!(
                masters.contains(&cluster.master_of_slot(slot)),
                "slot {slot}"
            );
        }
        assert_eq!(cluster.master_of_slot(0), masters[0]);
        assert_eq!(cluster.master_of_slot(16383), masters[2]);
        let url = cluster.url();
        assert!(url.starts_with("redis+cluster://127.0.0.1:"), "{url}");
        assert_eq!(url.split(',').count(), 6, "{url}");
        assert_eq!(cluster.seed_urls().len(), 6);
        assert!(cluster.seed_urls()[0].starts_with("redis://127.0.0.1:"));
    }

    #[test]
    fn key_slot_agrees_with_cluster_keyslot() {
        if skipped() {
            return;
        }
        let cluster = shared_cluster();
        let port = cluster.ports()[0];
        for key in [
            "",
            "a",
            "foo",
            "wsgate:channel:news",
            "{user1000}.following",
            "{user1000}.followers",
            "foo{bar}{zap}",
            "foo{}{bar}",
            "foo{{bar}}zap",
            "foo{bar",
            "}{x}",
            "wsgate-test-1-2:{room:42}:members",
            "ünïcödé{ß}",
        ] {
            let redis = cluster.command(port, &["CLUSTER", "KEYSLOT", key]).unwrap();
            assert_eq!(
                RedisCluster::key_slot(key).to_string(),
                redis,
                "key {key:?}"
            );
        }
    }

    #[test]
    fn command_stats_count_a_set() {
        if skipped() {
            return;
        }
        let cluster = shared_cluster();
        let key = format!("{}stats", crate::unique_prefix());
        let master = cluster.master_of_key(&key);
        cluster.reset_stats();
        assert_eq!(cluster.command(master, &["SET", &key, "1"]).unwrap(), "OK");
        let stats = cluster.command_stats(master).unwrap();
        assert_eq!(stats.get("set"), Some(&1), "{stats:?}");
        // Another master refuses it: MOVED.
        let other = cluster
            .masters()
            .into_iter()
            .find(|&p| p != master)
            .unwrap();
        let moved = cluster.command(other, &["SET", &key, "2"]).unwrap_err();
        assert!(moved.contains("MOVED"), "{moved}");
    }

    #[test]
    fn a_killed_master_fails_over_to_its_replica() {
        if skipped() {
            return;
        }
        let started = Instant::now();
        let mut cluster = RedisCluster::start().unwrap();
        eprintln!("cluster formed in {:?}", started.elapsed());
        let key = "{failover}key";
        let master = cluster.master_of_key(key);
        let replica = cluster.replica_of(master).unwrap();
        // The write reaches the replica before the master dies (WAIT waits
        // for the writes of its own connection).
        let replies = cluster
            .pipeline(master, &[&["SET", key, "before"], &["WAIT", "1", "5000"]])
            .unwrap();
        assert_eq!(replies, ["OK", "1"]);
        let killed = Instant::now();
        cluster.kill_node(master);
        let early = cluster.wait_failover(master, Duration::ZERO).unwrap_err();
        assert!(early.contains("timed out"), "{early}");
        eprintln!("{early}");
        let promoted = cluster
            .wait_failover(master, Duration::from_secs(20))
            .unwrap();
        eprintln!("failed over in {:?}", killed.elapsed());
        assert_eq!(promoted, replica);
        assert_eq!(cluster.master_of_key(key), replica);
        assert!(!cluster.masters().contains(&master));
        assert_eq!(cluster.masters().len(), 3);
        assert_eq!(cluster.replicas().len(), 2);
        assert_eq!(cluster.command(replica, &["GET", key]).unwrap(), "before");
        assert!(
            cluster
                .wait_failover(replica, Duration::from_secs(1))
                .is_err()
        );
    }
}
