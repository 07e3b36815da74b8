//! A load process of `wsgate bench fleet` (`wsgate bench fleet-worker`,
//! started by the bench itself, one per descriptor budget).
//!
//! It reads its [`Job`] from the first line of stdin, logs in once per
//! loopback source address (sessions are bound to the login's IP), opens
//! its connections at the job's rate (each one key-established and
//! SUBSCRIBEd to the fleet's channel, spread over the nodes), reports
//! [`Report::Progress`] every second and [`Report::Ready`] once every
//! connection is open or failed, then holds them. Every EVENT is timed as
//! it is read (its body carries the publish time). On
//! [`Command::Collect`] it waits until every held connection has read that
//! event (or the deadline passes) and answers [`Report::Event`]. It exits
//! on [`Command::Quit`], and at once when stdin ends (the bench is gone).

use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use hdrhistogram::Histogram;
use wsgate_client::{ClientConfig, Connection, SaltedPasswordCache, Session};
use wsgate_proto::envelope::MessageType;

use super::{Command, EventBody, Job, Report, source_ip, unix_us};
use crate::load;
use crate::procfs;

/// Connection failures kept verbatim for the report.
const KEPT_ERRORS: usize = 5;
/// After this many failed connections the worker stops opening more: the
/// rest would fail the same way.
const GIVE_UP_AFTER: usize = 1_000;

/// Entry point of `wsgate bench fleet-worker`: a thread of its own (the
/// caller may be inside a tokio runtime) with a single-threaded runtime.
pub(crate) fn main() -> Result<ExitCode> {
    std::thread::Builder::new()
        .name("fleet-worker".into())
        .spawn(run)
        .context("starting the load process's thread")?
        .join()
        .map_err(|_| anyhow!("the load process's thread panicked"))?
}

fn run() -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the load process's runtime")?;
    let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    return;
                }
            }
            // stdin ended: the bench is gone (or done). Nothing here is
            // worth keeping: the kernel closes every socket.
            std::process::exit(0);
        })
        .context("starting the stdin reader")?;
    runtime.block_on(async move {
        let Some(first) = commands.recv().await else {
            return Ok(ExitCode::SUCCESS);
        };
        let job: Job = serde_json::from_str(&first).context("the job line from the bench")?;
        let who = format!("load process {}", job.worker + 1);
        match work(job, &mut commands).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) => {
                send(&Report::Fatal {
                    error: format!("{who}: {e:#}"),
                });
                Ok(ExitCode::FAILURE)
            }
        }
    })
}

/// Writes one report line to the bench.
fn send(report: &Report) {
    let Ok(line) = serde_json::to_string(report) else {
        return;
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// What the connections' tasks share.
#[derive(Default)]
struct State {
    opened: AtomicUsize,
    failed: AtomicUsize,
    /// Connections that closed or failed after they were open.
    lost: AtomicUsize,
    errors: Mutex<Vec<String>>,
    events: Mutex<BTreeMap<u64, EventAgg>>,
}

impl State {
    fn keep_error(&self, e: String) {
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        if errors.len() < KEPT_ERRORS {
            errors.push(e);
        }
    }
}

/// One event's deliveries in this process.
struct EventAgg {
    received: usize,
    last_unix_us: u64,
    hist: Histogram<u64>,
}

async fn work(job: Job, commands: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Result<()> {
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft);
    let needed = job.count as u64 + super::WORKER_FD_RESERVE;
    if limit < needed {
        bail!(
            "{} connections need {needed} file descriptors and this process may have {limit}: \
             pass more --load-processes",
            job.count
        );
    }
    let configs: Vec<ClientConfig> = job
        .nodes
        .iter()
        .map(|url| {
            ClientConfig::new(url)
                .map(|c| c.timeout(Duration::from_secs(job.timeout_secs)))
                .with_context(|| format!("node address {url:?}"))
        })
        .collect::<Result<_>>()?;
    if configs.is_empty() {
        bail!("the job names no gateway node");
    }
    let node_of = |i: usize| (job.first + i) % configs.len();
    // One login per source address, at the node of its first connection.
    let cache = SaltedPasswordCache::default();
    let blocks = job.count.div_ceil(job.per_ip.max(1));
    let mut sessions: Vec<Session> = Vec::with_capacity(blocks);
    for b in 0..blocks {
        let ip = source_ip(job.worker, b);
        let node = node_of(b * job.per_ip);
        let config = configs[node].clone().local_addr(ip);
        let session = wsgate_client::login_cached(&config, &job.user, &job.password, &cache)
            .await
            .with_context(|| {
                format!(
                    "logging in from {ip} at node {} ({})",
                    node + 1,
                    configs[node].addr
                )
            })?;
        sessions.push(session);
    }
    let state = Arc::new(State::default());
    let asked_per_node = (0..configs.len())
        .map(|n| (0..job.count).filter(|i| node_of(*i) == n).count())
        .collect::<Vec<_>>();
    let held_per_node: Arc<Vec<AtomicUsize>> =
        Arc::new((0..configs.len()).map(|_| AtomicUsize::new(0)).collect());
    // Progress, once a second, until the opening is over.
    let progress = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                send(&Report::Progress {
                    opened: state.opened.load(Ordering::Relaxed),
                    failed: state.failed.load(Ordering::Relaxed),
                });
            }
        })
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(job.parallel.max(1)));
    let start = Instant::now();
    let period = 1.0 / job.open_rate.max(0.1);
    for i in 0..job.count {
        if state.failed.load(Ordering::Relaxed) >= GIVE_UP_AFTER {
            break;
        }
        let due = start + Duration::from_secs_f64(i as f64 * period);
        tokio::time::sleep_until(due.into()).await;
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| anyhow!("the opening semaphore closed"))?;
        let b = i / job.per_ip.max(1);
        let ip = source_ip(job.worker, b);
        let node = node_of(i);
        let config = configs[node].clone().local_addr(ip);
        let session = sessions[b].clone();
        let state = state.clone();
        let held_per_node = held_per_node.clone();
        let channel = job.channel.clone();
        let global = job.first + i;
        tokio::spawn(async move {
            let which = |what: &str| {
                format!(
                    "connection {} (node {} at {}, from {ip}): {what}",
                    global + 1,
                    node + 1,
                    config.addr
                )
            };
            let opened = async {
                let mut conn = session.connect(&config).await?;
                if conn.subscribe(&channel, None, false).await?.is_some() {
                    bail!("{channel} answered SUBSCRIBE with a position: it keeps history");
                }
                Ok::<_, anyhow::Error>(conn)
            }
            .await;
            drop(permit);
            match opened {
                Ok(conn) => {
                    state.opened.fetch_add(1, Ordering::Relaxed);
                    held_per_node[node].fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = hold(conn, &channel, &state).await {
                        state.lost.fetch_add(1, Ordering::Relaxed);
                        held_per_node[node].fetch_sub(1, Ordering::Relaxed);
                        state.keep_error(which(&format!("lost after it was open: {e:#}")));
                    }
                }
                Err(e) => {
                    state.failed.fetch_add(1, Ordering::Relaxed);
                    state.keep_error(which(&format!("{e:#}")));
                }
            }
        });
    }
    // Every attempt has ended once all permits are back.
    let all = u32::try_from(job.parallel.max(1)).unwrap_or(u32::MAX);
    let _all_back = permits
        .acquire_many(all)
        .await
        .map_err(|_| anyhow!("the opening semaphore closed"))?;
    progress.abort();
    let opened = state.opened.load(Ordering::Relaxed);
    let failed = state.failed.load(Ordering::Relaxed);
    send(&Report::Progress { opened, failed });
    send(&Report::Ready {
        asked: job.count,
        held: opened - state.lost.load(Ordering::Relaxed),
        asked_per_node,
        held_per_node: held_per_node
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect(),
        failed,
        not_tried: job.count - opened - failed,
        errors: state
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
        logins: sessions.len(),
        open_secs: start.elapsed().as_secs_f64(),
        rss_kib: procfs::rss_kib(std::process::id()).unwrap_or(0),
    });
    while let Some(line) = commands.recv().await {
        let command: Command =
            serde_json::from_str(&line).with_context(|| format!("a command line: {line:?}"))?;
        match command {
            Command::Collect { seq, timeout_ms } => {
                send(&collect(&state, opened, seq, Duration::from_millis(timeout_ms)).await);
            }
            Command::Quit => break,
        }
    }
    Ok(())
}

/// Reads EVENTs on `channel` until the connection ends.
async fn hold(mut conn: Connection, channel: &str, state: &State) -> Result<()> {
    loop {
        let msg = conn.recv().await?;
        let at = unix_us();
        if msg.msg_type != MessageType::Event as u8 || msg.name != channel {
            continue;
        }
        let body: EventBody = serde_json::from_slice(&msg.body).with_context(|| {
            format!(
                "unexpected EVENT body {:?}",
                String::from_utf8_lossy(&msg.body)
            )
        })?;
        let mut events = state.events.lock().unwrap_or_else(PoisonError::into_inner);
        let agg = events.entry(body.seq).or_insert_with(|| EventAgg {
            received: 0,
            last_unix_us: 0,
            hist: load::histogram(),
        });
        agg.received += 1;
        agg.last_unix_us = agg.last_unix_us.max(at);
        agg.hist
            .saturating_record(at.saturating_sub(body.sent_us).max(1));
    }
}

/// Waits until every connection still held has read event `seq`, or
/// `timeout`; then reports what arrived.
async fn collect(state: &State, opened: usize, seq: u64, timeout: Duration) -> Report {
    let deadline = Instant::now() + timeout;
    loop {
        let held = opened.saturating_sub(state.lost.load(Ordering::Relaxed));
        let received = state
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&seq)
            .map_or(0, |a| a.received);
        if received >= held || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let held = opened.saturating_sub(state.lost.load(Ordering::Relaxed));
    let events = state.events.lock().unwrap_or_else(PoisonError::into_inner);
    match events.get(&seq) {
        Some(a) => Report::Event {
            seq,
            held,
            received: a.received,
            last_unix_us: a.last_unix_us,
            latencies_us: a
                .hist
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        },
        None => Report::Event {
            seq,
            held,
            received: 0,
            last_unix_us: 0,
            latencies_us: Vec::new(),
        },
    }
}
