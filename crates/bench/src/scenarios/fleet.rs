//! `fleet`: scale shown the way a fleet runs it (issue 16). N gateway
//! processes (`wsgate serve`, each on its own port) on one Redis state
//! store, M load processes (this binary again, as `wsgate bench
//! fleet-worker`), together holding C authenticated, key-established idle
//! connections, each SUBSCRIBEd to one channel; then a few events
//! published once each (`POST /api/publish` on node 1), each reaching every
//! connection through Redis and every node.
//!
//! Why processes: a process may hold `ulimit -n` descriptors (20 000 on
//! the machine of `docs/benchmarks.md`, and it cannot be raised there), so
//! 100 000 connections need several gateways and several load generators.
//! Each load process opens its share at `--open-rate / M` per second from
//! loopback addresses of its own (`127.<process>.x.y`, [`PER_IP`]
//! connections each, one login per address, since a session is bound to
//! its login's IP), so no address runs out of ephemeral ports.
//!
//! Reported: connections asked and held (per node, per load process),
//! each node's RSS per connection (`VmRSS` with the connections open −
//! before, ÷ the connections it holds), and per event the fleet-wide
//! deliveries/s (connections that read it ÷ the time from the publish to
//! the last one read) and its p50/p99 publish-to-read latency, merged over
//! every load process. The publish time travels in the event
//! (`CLOCK_REALTIME` µs), so the latency of one machine's processes is
//! comparable; it includes the load processes' own queueing, since they
//! share the two cores with the gateways.
//!
//! The state store: a private `redis-server` this scenario starts and
//! stops, or `--state URL`, given to every gateway unchanged (also a
//! `redis+cluster://h:p,h:p` URL, once the gateway speaks it).
//!
//! Everything this scenario starts (gateways, load processes, Redis) is
//! stopped when it ends, fails, or is interrupted (Ctrl-C, SIGTERM).

mod redis;
mod worker;

use std::io::{BufRead as _, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::fanout::Publisher;
use super::quantile_us;
use crate::BenchArgs;
use crate::gateway::{self, CHANNEL_PATTERN, Env, Fleet};
use crate::load;
use crate::report::{Goal, Row, ScenarioResult, Stat, TargetCheck, fmt_num, verdict};

pub(crate) use worker::main as worker_main;

/// The channel every connection subscribes to (of `bench.*`: no history,
/// not sensitive).
const CHANNEL: &str = "bench.fleet";
/// Connections per loopback source address (one login each).
pub(crate) const PER_IP: usize = 1_000;
/// Descriptors a gateway needs besides its connections (listener, Redis,
/// SQLite, epoll, …).
const GATEWAY_FD_RESERVE: u64 = 300;
/// Descriptors a load process needs besides its connections.
pub(crate) const WORKER_FD_RESERVE: u64 = 200;
/// Connections per gateway the default `--gateways` aims at.
const DEFAULT_PER_GATEWAY: usize = 15_000;
/// Connections per load process the default `--load-processes` aims at.
const DEFAULT_PER_WORKER: usize = 17_000;
/// Issue 16's goals.
const GOAL_HELD: usize = 100_000;
const GOAL_BYTES: f64 = 6.0 * 1024.0;
const GOAL_RATE: f64 = 500_000.0;

// ─────────────────────────── bench ↔ load process ───────────────────────────

/// What a load process does: the first line the bench writes to its stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    /// 0-based; its source addresses are `127.<worker + 1>.x.y`.
    worker: usize,
    /// `http://HOST:PORT` of every node; connection `first + i` goes to
    /// node `(first + i) % nodes.len()`.
    nodes: Vec<String>,
    user: String,
    password: String,
    /// Fleet-wide index of its first connection.
    first: usize,
    /// Connections it opens.
    count: usize,
    /// Connections per source address.
    per_ip: usize,
    /// Connections per second it opens.
    open_rate: f64,
    /// Connection attempts in flight at most.
    parallel: usize,
    /// Deadline of every wait of the client (login, upgrade, KEY_ACK, SUBSCRIBE).
    timeout_secs: u64,
    channel: String,
}

/// The bench's later lines to a load process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
enum Command {
    /// Answer [`Report::Event`] for event `seq` once every held connection
    /// read it, or after `timeout_ms`.
    Collect { seq: u64, timeout_ms: u64 },
    /// Close everything and exit.
    Quit,
}

/// A load process's lines to the bench (its stdout).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Report {
    Progress {
        opened: usize,
        failed: usize,
    },
    Ready {
        asked: usize,
        held: usize,
        asked_per_node: Vec<usize>,
        held_per_node: Vec<usize>,
        failed: usize,
        /// Not attempted: it gave up after too many failures.
        not_tried: usize,
        /// The first failures, each naming its connection, node and address.
        errors: Vec<String>,
        logins: usize,
        open_secs: f64,
        rss_kib: u64,
    },
    Event {
        seq: u64,
        /// Connections held when it answered.
        held: usize,
        /// Of them, how many read the event.
        received: usize,
        /// When the last one read it (µs since the Unix epoch).
        last_unix_us: u64,
        /// Publish-to-read latency histogram: (µs, count).
        latencies_us: Vec<(u64, u64)>,
    },
    /// The process failed and exits.
    Fatal {
        error: String,
    },
}

/// The `data` of each published event.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct EventBody {
    seq: u64,
    /// Publish time, µs since the Unix epoch.
    sent_us: u64,
}

/// Now, µs since the Unix epoch (`CLOCK_REALTIME`: the same for every
/// process of the machine).
fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Source address of block `block` of load process `worker`:
/// `127.<worker + 1>.<block / 250>.<block % 250 + 1>`.
fn source_ip(worker: usize, block: usize) -> IpAddr {
    let second = u8::try_from(worker + 1).unwrap_or(u8::MAX);
    let third = u8::try_from(block / 250).unwrap_or(u8::MAX);
    let fourth = u8::try_from(block % 250 + 1).unwrap_or(u8::MAX);
    IpAddr::V4(Ipv4Addr::new(127, second, third, fourth))
}

// ─────────────────────────────────── plan ───────────────────────────────────

/// The run's shape, from the options, checked.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    connections: usize,
    gateways: usize,
    workers: usize,
    /// `None`: a private `redis-server`.
    state: Option<String>,
    open_rate: f64,
    /// Rounds of fan-out.
    events: usize,
    /// Events per round, published at the same instant (`--publishers`).
    publishers: usize,
}

impl Plan {
    fn new(args: &BenchArgs, nofile: u64) -> Result<Self> {
        let connections = args
            .connections
            .unwrap_or(if args.smoke { 600 } else { 100_000 });
        if connections == 0 {
            bail!("--connections must be at least 1");
        }
        let gateways = match args.gateways {
            Some(0) => bail!("--gateways must be at least 1"),
            Some(n) => n,
            None => connections.div_ceil(DEFAULT_PER_GATEWAY).max(2),
        };
        let workers = match args.load_processes {
            Some(0) => bail!("--load-processes must be at least 1"),
            Some(n) if n > 254 => {
                bail!("--load-processes is at most 254 (each gets 127.<n>.0.0/16)")
            }
            Some(n) => n,
            None => connections.div_ceil(DEFAULT_PER_WORKER).clamp(2, 254),
        };
        if gateways > 64 {
            bail!("--gateways is at most 64 (two cores do not run more usefully)");
        }
        let per_gateway = connections.div_ceil(gateways) as u64;
        if per_gateway + GATEWAY_FD_RESERVE > nofile {
            let room = nofile.saturating_sub(GATEWAY_FD_RESERVE).max(1);
            bail!(
                "{connections} connections over {gateways} gateways are {per_gateway} per gateway \
                 process, and a process may have {nofile} file descriptors here (ulimit -n, with \
                 {GATEWAY_FD_RESERVE} kept for the gateway itself): pass --gateways {} or more",
                (connections as u64).div_ceil(room)
            );
        }
        let per_worker = connections.div_ceil(workers) as u64;
        if per_worker + WORKER_FD_RESERVE > nofile {
            let room = nofile.saturating_sub(WORKER_FD_RESERVE).max(1);
            bail!(
                "{connections} connections over {workers} load processes are {per_worker} per \
                 process, and a process may have {nofile} file descriptors here (ulimit -n, with \
                 {WORKER_FD_RESERVE} kept for itself): pass --load-processes {} or more",
                (connections as u64).div_ceil(room)
            );
        }
        if per_worker as usize > PER_IP * 250 * 250 {
            bail!("{per_worker} connections per load process: more than its source addresses hold");
        }
        let state = match &args.state {
            None => None,
            Some(url) => {
                let url = url.trim();
                if !["redis://", "rediss://", "redis+cluster://"]
                    .iter()
                    .any(|scheme| url.starts_with(scheme))
                {
                    bail!(
                        "--state {}: the fleet needs a shared Redis state store: \
                         redis://HOST:PORT, rediss://HOST:PORT or redis+cluster://H:P,H:P \
                         (or no --state: the bench starts a private redis-server)",
                        redact(url)
                    );
                }
                Some(url.to_owned())
            }
        };
        let open_rate = args
            .open_rate
            .unwrap_or(if args.smoke { 2_000.0 } else { 3_000.0 });
        if !(open_rate.is_finite() && open_rate >= 1.0) {
            bail!("--open-rate must be at least 1 connection per second");
        }
        let events = args.events.unwrap_or(if args.smoke { 2 } else { 5 });
        if !(1..=1000).contains(&events) {
            bail!("--events (fan-out events published) must be between 1 and 1000");
        }
        let publishers = args.publishers;
        if !(1..=64).contains(&publishers) {
            bail!(
                "--publishers (events published at the same instant, per round) must be between 1 and 64"
            );
        }
        Ok(Self {
            connections,
            gateways,
            workers,
            state,
            open_rate,
            events,
            publishers,
        })
    }

    /// (first, count) of load process `w`: the connections split evenly.
    fn share(&self, w: usize) -> (usize, usize) {
        let base = self.connections / self.workers;
        let extra = self.connections % self.workers;
        let first = w * base + w.min(extra);
        (first, base + usize::from(w < extra))
    }

    /// Connections node `n` is asked to hold.
    fn asked_of_node(&self, n: usize) -> usize {
        let base = self.connections / self.gateways;
        base + usize::from(n < self.connections % self.gateways)
    }
}

/// `redis://user:secret@host` → `redis://***@host`.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &url[at..]),
        _ => url.to_owned(),
    }
}

// ──────────────────────────────── processes ────────────────────────────────

/// A load process; killed when dropped.
struct WorkerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl WorkerProc {
    fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("its stdin is closed"))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// The last lines of its stderr.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        if let Some(at) = text.find("panicked at") {
            return text[at..].lines().take(2).collect::<Vec<_>>().join(" ");
        }
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        if lines.is_empty() {
            return "(nothing on its stderr)".into();
        }
        lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
    }

    fn kill(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A line from load process `.0` (`None`: its stdout ended).
type Line = (usize, Option<String>);

/// Starts load process `w` and hands it its job.
fn spawn_worker(
    w: usize,
    job: &Job,
    dir: &std::path::Path,
    lines: tokio::sync::mpsc::UnboundedSender<Line>,
) -> Result<WorkerProc> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let log = dir.join(format!("load{}.log", w + 1));
    let stderr =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = std::process::Command::new(&exe)
        .args(["bench", "fleet-worker"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("starting load process {} ({})", w + 1, exe.display()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout from load process {}", w + 1))?;
    let stdin = child.stdin.take();
    std::thread::Builder::new()
        .name(format!("load{}", w + 1))
        .spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send((w, Some(line))).is_err() {
                    return;
                }
            }
            let _ = lines.send((w, None));
        })
        .context("starting a reader thread")?;
    let mut proc = WorkerProc { child, stdin, log };
    proc.send(&serde_json::to_string(job)?)
        .with_context(|| format!("handing load process {} its job", w + 1))?;
    Ok(proc)
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, with which.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let sigterm = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        () = sigterm => "SIGTERM",
    }
}

// ──────────────────────────────────── run ────────────────────────────────────

/// What one load process said it held.
#[derive(Debug, Clone, Default)]
struct Held {
    asked: usize,
    held: usize,
    held_per_node: Vec<usize>,
    failed: usize,
    not_tried: usize,
    errors: Vec<String>,
    logins: usize,
    open_secs: f64,
    rss_kib: u64,
}

/// A load process's answer for one event: (held, received, last read
/// µs, latency histogram as (µs, count)).
type Answer = (usize, usize, u64, Vec<(u64, u64)>);

/// One event, fleet-wide.
struct EventResult {
    delivered: usize,
    expected: usize,
    /// Publish → last read, seconds.
    spread_secs: f64,
    hist: Histogram<u64>,
    /// Gateway CPU, all nodes, from the publish to the last answer.
    gateway_cpu_secs: f64,
    /// Load processes' CPU over the same time.
    load_cpu_secs: f64,
}

/// Runs `wsgate bench fleet`: checks the options, then starts, measures
/// and stops the fleet; an interruption (Ctrl-C, SIGTERM) stops
/// everything it started and fails the scenario.
pub(crate) async fn run(env: &Env, args: &BenchArgs) -> Result<ScenarioResult> {
    if !env.owns_gateways() {
        bail!("fleet starts its own gateways: it does not run with --addr");
    }
    if env.has_before() {
        bail!("fleet does not compare two builds: run it without --before-bin");
    }
    let plan = Plan::new(args, env.nofile)?;
    tokio::select! {
        r = run_plan(env, &plan) => r,
        why = interrupted() => Err(anyhow!(
            "interrupted ({why}); the gateways, load processes and Redis it started are stopped"
        )),
    }
}

fn note(what: &str) {
    eprintln!("  [fleet] {what}");
}

async fn run_plan(env: &Env, plan: &Plan) -> Result<ScenarioResult> {
    let bin = env
        .own_bin()
        .ok_or_else(|| anyhow!("no gateway binary"))?
        .to_owned();
    // The state store.
    let (redis, state_url, state_desc) = match &plan.state {
        Some(url) => (None, url.clone(), format!("{} (given)", redact(url))),
        None => {
            let redis = tokio::task::spawn_blocking(redis::OwnedRedis::start)
                .await
                .map_err(|e| anyhow!("redis-server start-up task: {e}"))??;
            let url = redis.url();
            let desc = format!("private {} at {url}", redis.version);
            note(&format!("state store: {desc}"));
            (Some(redis), url, desc)
        }
    };
    // The gateways.
    let fleet = {
        let (bin, url, n, ticks) = (bin.clone(), state_url.clone(), plan.gateways, env.ticks());
        tokio::task::spawn_blocking(move || {
            gateway::start_fleet(&bin, &url, n, ticks, &|what: &str| note(what))
        })
        .await
        .map_err(|e| anyhow!("gateway start-up task: {e}"))??
    };
    let outcome = measure(env, plan, &fleet).await;
    // The load processes are gone by now (dropped inside `measure`): stop
    // the nodes (all at once), then Redis.
    let _ = tokio::task::spawn_blocking(move || drop(fleet)).await;
    drop(redis);
    let m = outcome?;
    Ok(m.into_result(plan, &state_desc))
}

/// Everything measured, before it becomes a table.
struct Measured {
    nodes: Vec<String>,
    rss_before: Vec<u64>,
    rss_after: Vec<u64>,
    open_cpu: Vec<f64>,
    held: Vec<Held>,
    events: Vec<EventResult>,
    open_secs: f64,
    nofile: u64,
}

async fn measure(env: &Env, plan: &Plan, fleet: &Fleet) -> Result<Measured> {
    // One connection per node first (login, keys, SUBSCRIBE), so one-time
    // allocations are not counted per connection.
    for (i, gw) in fleet.nodes.iter().enumerate() {
        let session = gw
            .session(None)
            .await
            .with_context(|| format!("warm-up login at node {}", i + 1))?;
        let mut conn = session
            .connect(&gw.client_config(None))
            .await
            .with_context(|| format!("warm-up connection to node {}", i + 1))?;
        conn.subscribe(CHANNEL, None, false)
            .await
            .with_context(|| format!("warm-up SUBSCRIBE at node {}", i + 1))?;
        drop(conn);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = |what: &str| -> Result<Vec<u64>> {
        fleet
            .nodes
            .iter()
            .enumerate()
            .map(|(i, gw)| {
                gw.rss_kib()
                    .ok_or_else(|| anyhow!("node {} RSS unknown {what}", i + 1))
            })
            .collect()
    };
    let cpu = || -> Vec<f64> {
        fleet
            .nodes
            .iter()
            .map(|gw| gw.cpu.map_or(f64::NAN, |m| m.seconds()))
            .collect()
    };
    let rss_before = rss("before the connections")?;
    let cpu_before = cpu();

    let nodes: Vec<String> = fleet
        .nodes
        .iter()
        .map(|gw| format!("http://{}", gw.config.addr))
        .collect();
    let dir = tempfile::Builder::new()
        .prefix("wsgate-bench-fleet-load-")
        .tempdir()
        .context("creating a temporary directory")?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Line>();
    let per_worker_rate = plan.open_rate / plan.workers as f64;
    let timeout_secs = 120;
    let mut workers = Vec::with_capacity(plan.workers);
    for w in 0..plan.workers {
        let (first, count) = plan.share(w);
        let job = Job {
            worker: w,
            nodes: nodes.clone(),
            user: "bench".into(),
            password: fleet.password.clone(),
            first,
            count,
            per_ip: PER_IP,
            open_rate: per_worker_rate,
            parallel: 64,
            timeout_secs,
            channel: CHANNEL.into(),
        };
        workers.push(spawn_worker(w, &job, dir.path(), tx.clone())?);
    }
    drop(tx);
    note(&format!(
        "{} load processes opening {} connections to {} gateways at {}/s",
        plan.workers,
        fmt_num(plan.connections as f64),
        plan.gateways,
        fmt_num(plan.open_rate)
    ));

    // Opening: progress every 5 s, until every load process is ready.
    let t0 = Instant::now();
    let expected_secs = plan.connections as f64 / plan.open_rate;
    let deadline = t0 + Duration::from_secs_f64(expected_secs * 3.0 + 180.0);
    let mut progress = vec![(0usize, 0usize); plan.workers];
    let mut ready: Vec<Option<Held>> = vec![None; plan.workers];
    let mut last_print = Instant::now();
    let mut last_opened = (Instant::now(), 0usize);
    while ready.iter().any(Option::is_none) {
        if let Some(why) = fleet.dead_node() {
            bail!("while opening connections: {why}");
        }
        if Instant::now() >= deadline {
            let lagging: Vec<String> = ready
                .iter()
                .enumerate()
                .filter(|(_, r)| r.is_none())
                .map(|(w, _)| {
                    format!(
                        "load process {} ({} opened, {} failed of {})",
                        w + 1,
                        progress[w].0,
                        progress[w].1,
                        plan.share(w).1
                    )
                })
                .collect();
            bail!(
                "connections not all open after {:.0} s (expected ≈ {expected_secs:.0} s at --open-rate {}): {}",
                t0.elapsed().as_secs_f64(),
                plan.open_rate,
                lagging.join(", ")
            );
        }
        match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            Err(_) => {}
            Ok(None) => bail!("every load process's output ended"),
            Ok(Some((w, line))) => match parse_line(&workers[w], w, line)? {
                Report::Progress { opened, failed } => progress[w] = (opened, failed),
                Report::Ready {
                    asked,
                    held,
                    asked_per_node: _,
                    held_per_node,
                    failed,
                    not_tried,
                    errors,
                    logins,
                    open_secs,
                    rss_kib,
                } => {
                    progress[w] = (held, failed);
                    ready[w] = Some(Held {
                        asked,
                        held,
                        held_per_node,
                        failed,
                        not_tried,
                        errors,
                        logins,
                        open_secs,
                        rss_kib,
                    });
                }
                other => bail!("load process {} said {other:?} while opening", w + 1),
            },
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            let opened: usize = progress.iter().map(|p| p.0).sum();
            let failed: usize = progress.iter().map(|p| p.1).sum();
            let rate = (opened.saturating_sub(last_opened.1)) as f64
                / last_opened.0.elapsed().as_secs_f64().max(1e-9);
            last_opened = (Instant::now(), opened);
            note(&format!(
                "{:.0} s: opened {}/{} ({}/s), failed {failed}, {}/{} load processes done",
                t0.elapsed().as_secs_f64(),
                fmt_num(opened as f64),
                fmt_num(plan.connections as f64),
                fmt_num(rate),
                ready.iter().filter(|r| r.is_some()).count(),
                plan.workers
            ));
            last_print = Instant::now();
        }
    }
    let open_secs = t0.elapsed().as_secs_f64();
    let held: Vec<Held> = ready.into_iter().flatten().collect();
    let total_held: usize = held.iter().map(|h| h.held).sum();
    note(&format!(
        "{} of {} connections held after {open_secs:.0} s",
        fmt_num(total_held as f64),
        fmt_num(plan.connections as f64)
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss("with the connections open")?;
    let cpu_after = cpu();
    let open_cpu: Vec<f64> = cpu_after
        .iter()
        .zip(&cpu_before)
        .map(|(a, b)| a - b)
        .collect();
    for (i, (b, a)) in rss_before.iter().zip(&rss_after).enumerate() {
        let on_node: usize = held
            .iter()
            .map(|h| h.held_per_node.get(i).copied().unwrap_or(0))
            .sum();
        note(&format!(
            "node {}: {} connections, RSS {b} → {a} KiB ({:.0} bytes/conn)",
            i + 1,
            fmt_num(on_node as f64),
            (a.saturating_sub(*b) * 1024) as f64 / on_node.max(1) as f64
        ));
    }

    // Fan-out: rounds of `publishers` events published at the same
    // instant, publisher j on node j % N (one event per round by default).
    let burst = plan.publishers;
    let mut publishers = Vec::with_capacity(burst);
    for j in 0..burst {
        let n = j % fleet.nodes.len();
        publishers.push(
            Publisher::connect(&fleet.nodes[n], &fleet.api_key, CHANNEL)
                .await
                .with_context(|| format!("publisher {}'s connection to node {}", j + 1, n + 1))?,
        );
    }
    let mut events = Vec::with_capacity(plan.events);
    for round in 0..plan.events as u64 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cpu0: f64 = cpu().iter().sum();
        let load0 = load_cpu(&workers, env.ticks());
        let first_seq = round * burst as u64;
        let sent_us = unix_us();
        let mut sending = tokio::task::JoinSet::new();
        for (j, mut publisher) in publishers.drain(..).enumerate() {
            let seq = first_seq + j as u64;
            sending.spawn(async move {
                let body = EventBody {
                    seq,
                    sent_us: unix_us(),
                };
                let sent = tokio::time::timeout(
                    Duration::from_secs(30),
                    publisher.publish_json(serde_json::json!(body)),
                )
                .await
                .unwrap_or_else(|_| Err(anyhow!("no answer to POST /api/publish within 30 s")));
                (j, publisher, sent)
            });
        }
        let mut back = Vec::with_capacity(burst);
        while let Some(done) = sending.join_next().await {
            let (j, publisher, sent) = done.map_err(|e| anyhow!("a publish task failed: {e}"))?;
            sent.with_context(|| {
                format!(
                    "publishing event {} (publisher {} on node {})",
                    first_seq + j as u64 + 1,
                    j + 1,
                    j % fleet.nodes.len() + 1
                )
            })?;
            back.push((j, publisher));
        }
        back.sort_by_key(|(j, _)| *j);
        publishers.extend(back.into_iter().map(|(_, p)| p));
        let label = if burst == 1 {
            format!("event {}", round + 1)
        } else {
            format!(
                "round {} (events {}–{})",
                round + 1,
                first_seq + 1,
                first_seq + burst as u64
            )
        };
        for seq in first_seq..first_seq + burst as u64 {
            let collect = serde_json::to_string(&Command::Collect {
                seq,
                timeout_ms: 60_000,
            })?;
            for (w, proc) in workers.iter_mut().enumerate() {
                proc.send(&collect)
                    .with_context(|| format!("asking load process {} for {label}", w + 1))?;
            }
        }
        let mut answers: Vec<Vec<Answer>> = vec![Vec::with_capacity(burst); plan.workers];
        let deadline = Instant::now() + Duration::from_secs(90);
        while answers.iter().any(|a| a.len() < burst) {
            if let Some(why) = fleet.dead_node() {
                bail!("during fan-out {label}: {why}");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let missing: Vec<String> = answers
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| a.len() < burst)
                    .map(|(w, _)| (w + 1).to_string())
                    .collect();
                bail!(
                    "fan-out {label}: no answer within 90 s from load process(es) {}",
                    missing.join(", ")
                );
            }
            match tokio::time::timeout(left.min(Duration::from_millis(500)), rx.recv()).await {
                Err(_) => {}
                Ok(None) => bail!("every load process's output ended during fan-out"),
                Ok(Some((w, line))) => match parse_line(&workers[w], w, line)? {
                    Report::Event {
                        seq: s,
                        held,
                        received,
                        last_unix_us,
                        latencies_us,
                    } if (first_seq..first_seq + burst as u64).contains(&s) => {
                        answers[w].push((held, received, last_unix_us, latencies_us));
                    }
                    Report::Progress { .. } => {}
                    other => bail!(
                        "load process {} said {other:?} during fan-out {label}",
                        w + 1
                    ),
                },
            }
        }
        let cpu1: f64 = cpu().iter().sum();
        let load1 = load_cpu(&workers, env.ticks());
        let mut hist = load::histogram();
        let (mut delivered, mut expected, mut last) = (0usize, 0usize, 0u64);
        for (held, received, last_unix_us, latencies) in answers.into_iter().flatten() {
            delivered += received;
            expected += held;
            last = last.max(last_unix_us);
            for (us, count) in latencies {
                let _ = hist.record_n(us.max(1), count);
            }
        }
        let spread_secs = last.saturating_sub(sent_us) as f64 / 1e6;
        let r = EventResult {
            delivered,
            expected,
            spread_secs,
            hist,
            gateway_cpu_secs: cpu1 - cpu0,
            load_cpu_secs: load1 - load0,
        };
        note(&format!(
            "{label}: {} of {} deliveries in {:.1} ms ({} deliveries/s), p50 {:.1} ms, p99 {:.1} ms",
            fmt_num(delivered as f64),
            fmt_num(expected as f64),
            spread_secs * 1e3,
            fmt_num(delivered as f64 / spread_secs.max(1e-9)),
            quantile_us(&r.hist, 0.5) / 1e3,
            quantile_us(&r.hist, 0.99) / 1e3
        ));
        events.push(r);
    }

    // Quit the load processes; kill any that lingers after 30 s.
    let quit = serde_json::to_string(&Command::Quit)?;
    for proc in &mut workers {
        let _ = proc.send(&quit);
        proc.stdin = None;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for proc in &mut workers {
        while Instant::now() < deadline && matches!(proc.child.try_wait(), Ok(None)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(workers);
    Ok(Measured {
        nodes,
        rss_before,
        rss_after,
        open_cpu,
        held,
        events,
        open_secs,
        nofile: env.nofile,
    })
}

/// CPU seconds the load processes used so far.
fn load_cpu(workers: &[WorkerProc], ticks: f64) -> f64 {
    workers
        .iter()
        .map(|w| crate::procfs::CpuMeter::new(w.child.id(), ticks).seconds())
        .sum()
}

/// A load process's line, or why there is none: its failure, or its end,
/// with the end of its stderr.
fn parse_line(proc: &WorkerProc, w: usize, line: Option<String>) -> Result<Report> {
    let Some(line) = line else {
        bail!(
            "load process {} (pid {}) ended unexpectedly; its stderr: {}",
            w + 1,
            proc.child.id(),
            proc.log_tail()
        );
    };
    match serde_json::from_str::<Report>(&line) {
        Ok(Report::Fatal { error }) => bail!("{error}"),
        Ok(r) => Ok(r),
        Err(e) => bail!(
            "load process {} wrote {line:?}, which is no report ({e})",
            w + 1
        ),
    }
}

impl Measured {
    fn into_result(self, plan: &Plan, state_desc: &str) -> ScenarioResult {
        let mut result = ScenarioResult::new(
            "fleet",
            "a fleet of gateway processes on one Redis: idle authenticated connections held, then one event fanned out to all of them",
        );
        result.setting("connections asked", plan.connections);
        result.setting("gateway processes", plan.gateways);
        result.setting("load processes", plan.workers);
        result.setting("state store", state_desc);
        result.setting("open rate (conn/s, fleet-wide)", fmt_num(plan.open_rate));
        result.setting("fan-out rounds", plan.events);
        result.setting(
            "events per round (publishers at the same instant, spread over the nodes)",
            plan.publishers,
        );
        result.setting("connections per source address", PER_IP);
        result.setting("file descriptors per process (ulimit -n)", self.nofile);
        result.setting(
            "channel",
            format!("{CHANNEL} (of {CHANNEL_PATTERN}, no history, not sensitive: EVENTs tagged)"),
        );

        let held_on = |n: usize| -> usize {
            self.held
                .iter()
                .map(|h| h.held_per_node.get(n).copied().unwrap_or(0))
                .sum()
        };
        let mut per_conn = Vec::new();
        for (i, addr) in self.nodes.iter().enumerate() {
            let h = held_on(i);
            let b = self.rss_before[i] as f64;
            let a = self.rss_after[i] as f64;
            let bytes = if h > 0 {
                (a - b) * 1024.0 / h as f64
            } else {
                f64::NAN
            };
            per_conn.push(bytes);
            let mut row = Row::new(format!(
                "gateway node {} ({})",
                i + 1,
                addr.trim_start_matches("http://")
            ));
            row.metric("asked", vec![plan.asked_of_node(i) as f64], false)
                .metric("held", vec![h as f64], false)
                .metric("RSS before KiB", vec![b], false)
                .metric("RSS after KiB", vec![a], false)
                .metric("RSS bytes/conn", vec![bytes], true)
                .metric("CPU s opening", vec![self.open_cpu[i]], false);
            result.rows.push(row);
        }
        let total_held: usize = self.held.iter().map(|h| h.held).sum();
        let total_before: f64 = self.rss_before.iter().map(|v| *v as f64).sum();
        let total_after: f64 = self.rss_after.iter().map(|v| *v as f64).sum();
        let fleet_bytes = if total_held > 0 {
            (total_after - total_before) * 1024.0 / total_held as f64
        } else {
            f64::NAN
        };
        let ev = |f: &dyn Fn(&EventResult) -> f64| -> Stat {
            Stat::from_samples(self.events.iter().map(f).collect())
        };
        let rate = ev(&|e| e.delivered as f64 / e.spread_secs.max(1e-9));
        let p50 = ev(&|e| quantile_us(&e.hist, 0.5) / 1e3);
        let p99 = ev(&|e| quantile_us(&e.hist, 0.99) / 1e3);
        let mut all = load::histogram();
        for e in &self.events {
            let _ = all.add(&e.hist);
        }
        let mut row = Row::new(format!(
            "fleet: {} gateways, {} load processes",
            plan.gateways, plan.workers
        ));
        row.metric("asked", vec![plan.connections as f64], false)
            .metric("held", vec![total_held as f64], false)
            .metric("RSS before KiB", vec![total_before], false)
            .metric("RSS after KiB", vec![total_after], false)
            .metric("RSS bytes/conn", vec![fleet_bytes], true)
            .metric("CPU s opening", vec![self.open_cpu.iter().sum()], false)
            .metric(
                "opened conn/s",
                vec![total_held as f64 / self.open_secs.max(1e-9)],
                false,
            )
            .stat("deliveries/s", rate.clone(), true)
            .stat(
                "publish → last read ms",
                ev(&|e| e.spread_secs * 1e3),
                false,
            )
            .stat("p50 ms", p50.clone(), false)
            .stat("p99 ms", p99.clone(), true)
            .stat(
                "delivered share",
                ev(&|e| e.delivered as f64 / e.expected.max(1) as f64),
                false,
            )
            .stat(
                "gateway CPU µs/delivery",
                ev(&|e| e.gateway_cpu_secs * 1e6 / e.delivered.max(1) as f64),
                false,
            )
            .stat(
                "load-gen CPU µs/delivery",
                ev(&|e| e.load_cpu_secs * 1e6 / e.delivered.max(1) as f64),
                false,
            );
        result.rows.push(row);
        for (w, h) in self.held.iter().enumerate() {
            let mut row = Row::new(format!("load process {}", w + 1));
            row.metric("asked", vec![h.asked as f64], false)
                .metric("held", vec![h.held as f64], false)
                .metric("failed", vec![(h.failed + h.not_tried) as f64], false)
                .metric("load-gen RSS KiB", vec![h.rss_kib as f64], false);
            result.rows.push(row);
        }
        result.notes.push(format!(
            "load processes: {}",
            self.held
                .iter()
                .enumerate()
                .map(|(w, h)| format!(
                    "{}: {} logins (source addresses), opened in {:.1} s",
                    w + 1,
                    h.logins,
                    h.open_secs
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ));

        // Notes: shortfalls, named.
        for (i, _) in self.nodes.iter().enumerate() {
            let (asked, held) = (plan.asked_of_node(i), held_on(i));
            if held < asked {
                result.notes.push(format!(
                    "gateway node {}: {held} of {asked} connections held",
                    i + 1
                ));
            }
        }
        for (w, h) in self.held.iter().enumerate() {
            if h.failed + h.not_tried > 0 || h.held < h.asked {
                result.notes.push(format!(
                    "load process {}: {} held of {}, {} failed, {} not tried (it stops after 1000 failures); first failures: {}",
                    w + 1,
                    h.held,
                    h.asked,
                    h.failed,
                    h.not_tried,
                    if h.errors.is_empty() { "–".to_owned() } else { h.errors.join(" | ") }
                ));
            }
        }
        for (k, e) in self.events.iter().enumerate() {
            if e.delivered < e.expected {
                result.notes.push(format!(
                    "round {}: {} of {} events due to held connections were read within 60 s",
                    k + 1,
                    e.delivered,
                    e.expected
                ));
            }
        }
        result.notes.push(format!(
            "RSS bytes/conn = (node VmRSS with the connections open − before) / connections it holds, after one warm-up connection per node; all latencies over {} rounds: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.events.len(),
            quantile_us(&all, 0.5) / 1e3,
            quantile_us(&all, 0.99) / 1e3,
            all.max() as f64 / 1e3
        ));
        result.notes.push(
            "deliveries/s = events read ÷ (last read − publish), per round; each event published once (POST /api/publish; publisher j on node j mod N), through Redis to every node; latency is publish → EVENT read and verified in a load process, which shares the two cores with the gateways"
                .into(),
        );

        // Targets.
        let judge = plan.connections >= GOAL_HELD;
        result.targets.push(TargetCheck::new(
            "fleet: ≥ 100 000 authenticated, key-established idle connections held (2 cores, 24 GiB)",
            format!(
                "{} of {} held on {} gateways, {} load processes",
                fmt_num(total_held as f64),
                fmt_num(plan.connections as f64),
                plan.gateways,
                plan.workers
            ),
            judge.then_some(total_held >= GOAL_HELD),
        ));
        let nodes_stat = Stat::from_samples(per_conn);
        result.targets.push(over(
            "fleet: ≤ 6 KiB gateway RSS per connection, every node",
            &nodes_stat,
            Goal::AtMost(GOAL_BYTES),
            judge,
            "nodes",
            |b| format!("{} B ({:.2} KiB)", fmt_num(b), b / 1024.0),
        ));
        let target = if plan.publishers == 1 {
            "fleet: ≥ 500 000 fan-out deliveries/s fleet-wide (one event to every connection)"
                .to_owned()
        } else {
            format!(
                "fleet: ≥ 500 000 fan-out deliveries/s fleet-wide (bursts of {} events to every connection)",
                plan.publishers
            )
        };
        let mut t = over(
            &target,
            &rate,
            Goal::AtLeast(GOAL_RATE),
            judge,
            "rounds",
            |r| format!("{}/s", fmt_num(r)),
        );
        t.measured.push_str(&format!(
            "; p99 {:.1} ms (p50 {:.1} ms)",
            p99.median, p50.median
        ));
        result.targets.push(t);
        result
    }
}

/// A target judged over `stat`'s samples (nodes or events), like
/// [`TargetCheck::judged_value`] but saying what the samples are.
fn over(
    target: &str,
    stat: &Stat,
    goal: Goal,
    judge: bool,
    what: &str,
    show: impl Fn(f64) -> String,
) -> TargetCheck {
    if stat.samples.iter().all(|v| !v.is_finite()) {
        return TargetCheck::new(target, "–".into(), None);
    }
    let n = stat.samples.len();
    let measured = if n > 1 {
        format!(
            "{} median of {n} {what} ({}–{})",
            show(stat.median),
            fmt_num(stat.min),
            fmt_num(stat.max)
        )
    } else {
        show(stat.median)
    };
    let mut t = TargetCheck::new(target, measured, None);
    if judge {
        t.status = verdict(stat, goal).to_owned();
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> BenchArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let mut argv = vec!["bench", "fleet"];
        argv.extend_from_slice(extra);
        <Cli as clap::Parser>::try_parse_from(argv)
            .map(|c| c.bench)
            .unwrap()
    }

    #[test]
    fn defaults_fit_the_descriptor_limit() {
        let plan = Plan::new(&args(&[]), 20_000).unwrap();
        assert_eq!(plan.connections, 100_000);
        assert_eq!(plan.gateways, 7);
        assert_eq!(plan.workers, 6);
        assert_eq!(plan.state, None);
        let smoke = Plan::new(&args(&["--smoke"]), 20_000).unwrap();
        assert_eq!(
            (smoke.connections, smoke.gateways, smoke.workers),
            (600, 2, 2)
        );
    }

    #[test]
    fn too_few_processes_say_how_many_are_needed() {
        let e = Plan::new(&args(&["--gateways", "4"]), 20_000).unwrap_err();
        assert!(e.to_string().contains("pass --gateways 6 or more"), "{e}");
        let e = Plan::new(&args(&["--load-processes", "3"]), 20_000).unwrap_err();
        assert!(
            e.to_string().contains("pass --load-processes 6 or more"),
            "{e}"
        );
        let e = Plan::new(&args(&["--state", "memory"]), 20_000).unwrap_err();
        assert!(e.to_string().contains("redis+cluster://"), "{e}");
    }

    #[test]
    fn a_cluster_url_is_passed_through() {
        let url = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001";
        let plan = Plan::new(&args(&["--state", url]), 20_000).unwrap();
        assert_eq!(plan.state.as_deref(), Some(url));
        assert_eq!(redact("redis://:pw@h:1"), "redis://***@h:1");
    }

    #[test]
    fn the_load_process_protocol_is_one_json_object_a_line() {
        let line = serde_json::to_string(&Command::Collect {
            seq: 3,
            timeout_ms: 10,
        })
        .unwrap();
        assert_eq!(line, r#"{"cmd":"collect","seq":3,"timeout_ms":10}"#);
        let report = Report::Event {
            seq: 3,
            held: 2,
            received: 2,
            last_unix_us: 7,
            latencies_us: vec![(5, 2)],
        };
        let line = serde_json::to_string(&report).unwrap();
        assert!(
            !line.contains('\n') && line.starts_with(r#"{"type":"event""#),
            "{line}"
        );
        assert!(matches!(
            serde_json::from_str::<Report>(&line).unwrap(),
            Report::Event {
                seq: 3,
                received: 2,
                ..
            }
        ));
        let fatal =
            r#"{"type":"fatal","error":"load process 2: logging in from 127.2.0.1: refused"}"#;
        assert!(matches!(
            serde_json::from_str::<Report>(fatal).unwrap(),
            Report::Fatal { .. }
        ));
    }

    #[test]
    fn shares_cover_every_connection_once() {
        let plan = Plan::new(
            &args(&[
                "--connections",
                "1003",
                "--load-processes",
                "4",
                "--gateways",
                "3",
            ]),
            20_000,
        )
        .unwrap();
        let mut next = 0;
        for w in 0..4 {
            let (first, count) = plan.share(w);
            assert_eq!(first, next);
            next += count;
        }
        assert_eq!(next, 1003);
        assert_eq!((0..3).map(|n| plan.asked_of_node(n)).sum::<usize>(), 1003);
        assert_eq!(source_ip(0, 0), IpAddr::V4(Ipv4Addr::new(127, 1, 0, 1)));
        assert_eq!(source_ip(5, 251), IpAddr::V4(Ipv4Addr::new(127, 6, 1, 2)));
    }
}
