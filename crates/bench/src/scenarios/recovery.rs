//! `recovery`: C clients come back at once and each replays the M events
//! it missed (protocol.md §6.5, SUBSCRIBE with `since`).
//!
//! First the channel (`benchrec.recovery`, `history = 10000`, `[limits]
//! max_replay = 10000`) is filled to its full history (`--smoke`: 100
//! events), as a channel that has been busy for a while is: what a replay
//! costs may depend on how much the stream keeps. Then every repetition,
//! on this build's gateway:
//!
//! 1. C connections (one session per source address, as elsewhere)
//!    SUBSCRIBE without `since`; the reply is each one's position.
//! 2. **Live** (the same-run baseline): M events are published back to back
//!    with `POST /api/publish` and every client reads its M EVENT_ATs live;
//!    server CPU per delivery.
//! 3. All C disconnect, remembering the position of the last event they
//!    saw; M more events are published.
//! 4. All C open a new connection on the same session (not measured), then
//!    at one instant each sends SUBSCRIBE `{"since": position}`; the
//!    reply must say `recovered: true`, and exactly the M missed events
//!    must follow, in order (offsets `since + 1 ..= since + M`, payloads
//!    `1 ..= M`). One more live event (`-1`) is then published and must be
//!    the next thing every client sees, so nothing extra or duplicated was
//!    replayed. Any deviation fails the run.
//!
//! Reported: replays/s (C·M ÷ the time from the first SUBSCRIBE sent to the
//! last replayed event received), each client's time to full recovery
//! (its SUBSCRIBE sent → its M-th event) p50/p99, and server CPU per
//! replayed event, also as a ratio to a live delivery.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use wsgate_client::{ChannelEvent, Connection, Position};

use super::{per_core, quantile_us, source_ip};
use crate::BenchArgs;
use crate::gateway::{Env, Gw, RECOVERY_KEEP, Transport};
use crate::load;
use crate::report::{Row, ScenarioResult, Stat, TargetCheck};
use crate::scenarios::fanout::Publisher;

/// A channel of `gateway::RECOVERY_PATTERN`.
const CHANNEL: &str = "benchrec.recovery";
/// How long all clients together may take to replay (or to see the end
/// marker) before the run fails.
const DEADLINE: Duration = Duration::from_secs(120);

struct RunResult {
    live_per_sec: f64,
    live_server_us: f64,
    live_client_us: f64,
    replays_per_sec: f64,
    recovery_p50_us: f64,
    recovery_p99_us: f64,
    all_recovered_us: f64,
    replay_server_us: f64,
    replay_client_us: f64,
}

pub(crate) async fn run(env: &Env, args: &BenchArgs) -> Result<ScenarioResult> {
    let c = args
        .connections
        .unwrap_or(if args.smoke { 20 } else { 1_000 })
        .max(1);
    let m = args
        .events
        .unwrap_or(if args.smoke { 10 } else { 100 })
        .max(1);
    if m > RECOVERY_KEEP {
        bail!("--events {m}: the bench gateway keeps and replays at most {RECOVERY_KEEP} events");
    }
    let repeat = args.repeat_or(1);
    let mut result = ScenarioResult::new(
        "recovery",
        "C clients reconnect at once and each replays the M events it missed (SUBSCRIBE with since)",
    );
    result.setting("clients (C)", c);
    result.setting("missed events per client (M)", m);
    result.setting("replayed events per run (C·M)", c * m);
    result.setting("runs", repeat);
    result.setting(
        "channel",
        format!(
            "{CHANNEL} (history = {RECOVERY_KEEP}, max_replay = {RECOVERY_KEEP}; EVENT_ATs tagged)"
        ),
    );
    if env.has_before() {
        result
            .notes
            .push("--before-bin: recovery runs on this build only".into());
    }
    let gw = env.gateway_of(Transport::Plain, false).await?;
    if let Some(why) = gw
        .channels_unavailable
        .as_ref()
        .or(gw.history_unavailable.as_ref())
    {
        bail!("recovery needs a channel with history: {why}");
    }
    let key = gw
        .api_key
        .clone()
        .ok_or_else(|| anyhow!("recovery needs an API key for POST /api/publish"))?;
    // Fill the history, so that every run finds as many events kept.
    let prefill = if args.smoke { 100 } else { RECOVERY_KEEP };
    result.setting("events kept in the stream before each run", prefill);
    {
        let mut publisher = Publisher::connect(&gw, &key, CHANNEL).await?;
        let progress = load::Progress::new("recovery: filling the history");
        for i in 0..prefill {
            publisher.publish(0).await?;
            if (i + 1) % 1000 == 0 {
                progress.draw(&format!("{}/{prefill} events", i + 1));
            }
        }
    }
    let mut runs = Vec::with_capacity(repeat);
    for rep in 0..repeat {
        let label = format!("recovery {c}×{m} {}/{repeat}", rep + 1);
        let r = run_once(env, &gw, &key, c, m, &label).await?;
        eprintln!(
            "  [{label}] {} replays/s, recovery p50 {:.1} ms p99 {:.1} ms, server {:.2} µs/replayed event ({:.2} µs/live delivery)",
            load::thousands(r.replays_per_sec),
            r.recovery_p50_us / 1000.0,
            r.recovery_p99_us / 1000.0,
            r.replay_server_us,
            r.live_server_us,
        );
        runs.push(r);
    }
    let st = |f: fn(&RunResult) -> f64| Stat::from_samples(runs.iter().map(f).collect());
    let live_cpu = st(|r| r.live_server_us);
    let replay_cpu = st(|r| r.replay_server_us);
    let mut live = Row::new(format!(
        "live: {c} subscribers, {m} events published back to back"
    ));
    live.stat("events/s", st(|r| r.live_per_sec), true)
        .stat("server CPU µs/event", live_cpu.clone(), true)
        .stat("per server core /s", per_core(&live_cpu), false)
        .stat(
            "load generator CPU µs/event",
            st(|r| r.live_client_us),
            false,
        );
    result.rows.push(live);
    let mut replay = Row::new(format!(
        "recovery: {c} clients resubscribe with since, {m} events each"
    ));
    replay
        .stat("events/s", st(|r| r.replays_per_sec), true)
        .stat("server CPU µs/event", replay_cpu.clone(), true)
        .stat("per server core /s", per_core(&replay_cpu), false)
        .stat(
            "load generator CPU µs/event",
            st(|r| r.replay_client_us),
            false,
        )
        .stat("recovery p50 ms", st(|r| r.recovery_p50_us / 1000.0), false)
        .stat("recovery p99 ms", st(|r| r.recovery_p99_us / 1000.0), true)
        .stat(
            "all recovered ms",
            st(|r| r.all_recovered_us / 1000.0),
            false,
        )
        .stat(
            "CPU/event replay ÷ live",
            replay_cpu.ratio_to(&live_cpu),
            false,
        );
    result.rows.push(replay);
    result.targets.push(TargetCheck::new(
        "every client recovers (recovered: true) exactly its M events, in order",
        format!("{c} of {c} clients in every run"),
        Some(true),
    ));
    result.notes.push(
        "events/s of the recovery row = C·M ÷ (first SUBSCRIBE sent → last replayed event received); recovery p50/p99: each client's SUBSCRIBE sent → its M-th event; all recovered: the first SUBSCRIBE sent → the last client's M-th event".into(),
    );
    result.notes.push(
        "CPU times: the sum of /proc/<pid>/task/*/schedstat (ns), since a replay window is shorter than clock ticks can time".into(),
    );
    result.notes.push(
        "the new connections (TCP, upgrade, HELLO→KEY_ACK on the same session) are made before the measurement: it measures the SUBSCRIBEs and their replays".into(),
    );
    Ok(result)
}

/// A connected client and where it stands.
struct Client {
    conn: Connection,
    ip: Option<std::net::IpAddr>,
    position: Position,
}

async fn run_once(
    env: &Env,
    gw: &Arc<Gw>,
    key: &str,
    c: usize,
    m: usize,
    label: &str,
) -> Result<RunResult> {
    for ip in (0..c).map(|i| source_ip(i, c)).collect::<BTreeSet<_>>() {
        gw.session(ip).await?;
    }
    // 1. Subscribed, without since.
    let clients = load::open_many(label, c, 64, |i| {
        let gw = gw.clone();
        async move {
            let ip = source_ip(i, c);
            let mut conn = gw.session(ip).await?.connect(&gw.client_config(ip)).await?;
            let reply = conn
                .subscribe(CHANNEL, None, false)
                .await
                .context("SUBSCRIBE")?
                .ok_or_else(|| anyhow!("{CHANNEL} has no history on this gateway"))?;
            Ok(Client {
                conn,
                ip,
                position: Position {
                    epoch: reply.epoch,
                    offset: reply.offset,
                },
            })
        }
    })
    .await?;
    let start = clients[0].position.clone();
    if let Some(other) = clients.iter().find(|cl| cl.position != start) {
        bail!(
            "clients subscribed at different positions ({start:?}, {:?}): someone else publishes to {CHANNEL}",
            other.position
        );
    }
    let mut publisher = Publisher::connect(gw, key, CHANNEL).await?;

    // 2. Live: M events, every client reads them.
    let cpu = |gw: &Gw| gw.cpu.map(|m| m.precise_seconds());
    let me = env.self_cpu();
    let (s0, c0, t0) = (cpu(gw), me.precise_seconds(), Instant::now());
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut cl| {
            tokio::spawn(async move {
                let base = cl.position.offset;
                for k in 1..=m as u64 {
                    expect_event(&mut cl.conn, base + k, k as i64).await?;
                }
                cl.position.offset = base + m as u64;
                anyhow::Ok(cl)
            })
        })
        .collect();
    publish_run(&mut publisher, &start, m).await?;
    let clients = join_all(tasks, "live").await?;
    let live_secs = t0.elapsed().as_secs_f64();
    let (s1, c1) = (cpu(gw), me.precise_seconds());
    let total = (c * m) as f64;
    let live_server_us = s0.zip(s1).map_or(f64::NAN, |(a, b)| (b - a) * 1e6 / total);
    let live_client_us = (c1 - c0) * 1e6 / total;

    // 3. All disconnect, remembering their position; M more events.
    let mut away: Vec<(Option<std::net::IpAddr>, Position)> = Vec::with_capacity(c);
    for cl in clients {
        away.push((cl.ip, cl.position));
        drop(cl.conn);
    }
    // Let the gateway see the closes before it publishes to no one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let since = Position {
        epoch: start.epoch.clone(),
        offset: start.offset + m as u64,
    };
    publish_run(&mut publisher, &since, m).await?;

    // 4. New connections on the same sessions (not measured) …
    let away = Arc::new(away);
    let conns = load::open_many(label, c, 64, |i| {
        let gw = gw.clone();
        let away = away.clone();
        async move {
            let ip = away[i].0;
            let conn = gw.session(ip).await?.connect(&gw.client_config(ip)).await?;
            Ok(conn)
        }
    })
    .await?;
    // … then every SUBSCRIBE with since at one instant.
    let (go, ready) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            let mut ready = ready.clone();
            let since = away[i].1.clone();
            tokio::spawn(async move {
                ready
                    .wait_for(|go| *go)
                    .await
                    .map_err(|_| anyhow!("start signal lost"))?;
                let sent = Instant::now();
                let reply = conn
                    .subscribe(CHANNEL, Some(&since), false)
                    .await
                    .context("SUBSCRIBE with since")?
                    .ok_or_else(|| anyhow!("{CHANNEL} has no history on this gateway"))?;
                ensure!(
                    reply.recovered,
                    "SUBSCRIBE since {since:?} was answered recovered: false ({reply:?})"
                );
                ensure!(
                    reply.epoch == since.epoch && reply.offset == since.offset + m as u64,
                    "SUBSCRIBE since {since:?} answered {reply:?}: expected offset {}",
                    since.offset + m as u64
                );
                for k in 1..=m as u64 {
                    expect_event(&mut conn, since.offset + k, k as i64).await?;
                }
                let done = Instant::now();
                anyhow::Ok((conn, sent, done))
            })
        })
        .collect();
    drop(ready);
    let (s0, c0) = (cpu(gw), me.precise_seconds());
    let t0 = Instant::now();
    go.send(true)
        .map_err(|_| anyhow!("every recovering client is gone"))?;
    let finished = join_all(tasks, "recovery").await?;
    let (s1, c1) = (cpu(gw), me.precise_seconds());
    let first_sent = finished
        .iter()
        .map(|(_, sent, _)| *sent)
        .min()
        .unwrap_or(t0);
    let last_done = finished
        .iter()
        .map(|(_, _, done)| *done)
        .max()
        .unwrap_or(t0);
    let mut hist = load::histogram();
    for (_, sent, done) in &finished {
        load::record(&mut hist, done.duration_since(*sent));
    }
    let window = last_done.duration_since(first_sent).as_secs_f64();

    // Nothing extra follows the replay: the next live event is next.
    let end = Position {
        epoch: since.epoch.clone(),
        offset: since.offset + m as u64,
    };
    let tasks: Vec<_> = finished
        .into_iter()
        .map(|(mut conn, _, _)| {
            tokio::spawn(async move {
                expect_event(&mut conn, end.offset + 1, -1).await?;
                anyhow::Ok(conn)
            })
        })
        .collect();
    let body = publisher.publish(-1).await?;
    check_position(&body, &since.epoch, since.offset + m as u64 + 1)?;
    let conns = join_all(tasks, "the event after the replay").await?;
    drop(conns);
    tokio::time::sleep(Duration::from_millis(200)).await;

    Ok(RunResult {
        live_per_sec: total / live_secs.max(1e-9),
        live_server_us,
        live_client_us,
        replays_per_sec: total / window.max(1e-9),
        recovery_p50_us: quantile_us(&hist, 0.5),
        recovery_p99_us: quantile_us(&hist, 0.99),
        all_recovered_us: last_done.duration_since(t0).as_secs_f64() * 1e6,
        replay_server_us: s0.zip(s1).map_or(f64::NAN, |(a, b)| (b - a) * 1e6 / total),
        replay_client_us: (c1 - c0) * 1e6 / total,
    })
}

/// Publishes `1 ..= m` as events `after.offset + 1 ..= after.offset + m`,
/// checking the position each publish is answered with.
async fn publish_run(publisher: &mut Publisher, after: &Position, m: usize) -> Result<()> {
    for k in 1..=m {
        let body = publisher.publish(k as i64).await?;
        check_position(&body, &after.epoch, after.offset + k as u64)?;
    }
    Ok(())
}

/// `POST /api/publish`'s answer on a history channel must be the event's
/// position (no one else publishes to the bench's channel).
fn check_position(body: &[u8], epoch: &str, offset: u64) -> Result<()> {
    let v: serde_json::Value = serde_json::from_slice(body).with_context(|| {
        format!(
            "POST /api/publish answered {:?}",
            String::from_utf8_lossy(body)
        )
    })?;
    let got = (v["epoch"].as_str(), v["offset"].as_u64());
    ensure!(
        got == (Some(epoch), Some(offset)),
        "POST /api/publish answered {v}: expected epoch {epoch:?} offset {offset} (someone else publishes to {CHANNEL}, or the stream changed epoch)"
    );
    Ok(())
}

/// The next channel message must be EVENT_AT `offset` on the channel, with
/// the JSON payload `data`.
async fn expect_event(conn: &mut Connection, offset: u64, data: i64) -> Result<()> {
    match conn.next_channel_event().await? {
        ChannelEvent::EventAt {
            channel,
            offset: got,
            payload,
        } if channel == CHANNEL => {
            let value = std::str::from_utf8(&payload)
                .ok()
                .and_then(|p| p.trim().parse::<i64>().ok());
            ensure!(
                got == offset && value == Some(data),
                "expected EVENT_AT offset {offset} with {data}, got offset {got} with {:?}",
                String::from_utf8_lossy(&payload)
            );
            Ok(())
        }
        other => bail!("expected EVENT_AT offset {offset} on {CHANNEL}, got {other:?}"),
    }
}

/// Waits for every client task (at most [`DEADLINE`] in all); the first
/// failure fails the run, and so does a client that never finishes.
async fn join_all<T>(tasks: Vec<tokio::task::JoinHandle<Result<T>>>, what: &str) -> Result<Vec<T>> {
    let deadline = Instant::now() + DEADLINE;
    let total = tasks.len();
    let mut out = Vec::with_capacity(total);
    for (i, task) in tasks.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, task).await {
            Ok(Ok(Ok(v))) => out.push(v),
            Ok(Ok(Err(e))) => return Err(e.context(format!("{what}: client {i}"))),
            Ok(Err(e)) => bail!("{what}: client task {i} failed: {e}"),
            Err(_) => bail!(
                "{what}: {} of {total} clients had not received all their events after {} s",
                total - out.len(),
                DEADLINE.as_secs()
            ),
        }
    }
    Ok(out)
}
