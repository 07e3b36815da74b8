//! `fanout`: S subscribers on one channel (protocol.md §5.4 SUBSCRIBE,
//! EVENT), an upstream publishing at a fixed rate with `POST /api/publish`
//! (§6.3) → deliveries/s and publish-to-delivery latency.
//!
//! Each publish carries its send time (µs since the scenario started) as
//! its JSON `data`; each subscriber reads it from the EVENT body. At the
//! end the first publisher sends `-1`, on which every subscriber stops.
//!
//! **History on ÷ off** (protocol.md §6.5): every repetition runs the same
//! load twice on this build's gateway, interleaved: on `bench.fanout` (no
//! history: EVENT) and on `benchhist.fanout` (`history = 1000`: EVENT_AT,
//! whose body is the u64 BE offset, then the payload; the subscriber checks
//! that offsets follow one another). The ratio of their server CPU per
//! delivery, run by run, is what channel history costs a fan-out.
//! `--before-bin` runs the plain channel only.
//!
//! `--publishers N` splits the rate over N keep-alive publisher
//! connections whose ticks coincide: N upstream apps publishing at the same
//! instants, so events arrive in bursts of N (the default, 1, is a steady
//! stream of single events).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use wsgate_client::Connection;
use wsgate_proto::continuity;
use wsgate_proto::envelope::MessageType;

use super::{quantile_us, source_ip, timing};
use crate::BenchArgs;
use crate::gateway::{BEFORE, Env, Gw, Transport};
use crate::load::{self, Shared};
use crate::report::{Goal, Row, ScenarioResult, Stat, TargetCheck, fmt_num};

const CHANNEL: &str = "bench.fanout";
/// A channel of `gateway::HISTORY_PATTERN`.
const HISTORY_CHANNEL: &str = "benchhist.fanout";

/// Plain channel (EVENT) or history channel (EVENT_AT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    History,
}

impl Kind {
    fn channel(self) -> &'static str {
        match self {
            Self::Plain => CHANNEL,
            Self::History => HISTORY_CHANNEL,
        }
    }
}

/// The goal of issue 12: what history may cost a fan-out.
const HISTORY_TARGET: f64 = 1.2;
const HISTORY_TARGET_TEXT: &str = "history on ≤ 1.2× server CPU per delivery of history off";

pub(crate) async fn run(env: &Env, args: &BenchArgs) -> Result<ScenarioResult> {
    let s = args
        .connections
        .unwrap_or(if args.smoke { 10 } else { 1_000 })
        .max(1);
    let rate = args
        .rate
        .unwrap_or(if args.smoke { 20.0 } else { 100.0 })
        .max(0.1);
    let t = timing(args, 10.0, 1);
    let mut result = ScenarioResult::new(
        "fanout",
        "subscribers on one channel, HTTP publishes at a fixed rate",
    );
    result.setting("subscribers", s);
    let publishers = args.publishers.max(1);
    result.setting("publishes/s", fmt_num(rate));
    result.setting("publisher connections (events per burst)", publishers);
    result.setting("measured seconds per run", t.duration.as_secs_f64());
    result.setting("runs", t.repeat);
    result.setting(
        "channel",
        format!("{CHANNEL} (not sensitive: EVENTs tagged)"),
    );
    result.setting(
        "history channel",
        format!(
            "{HISTORY_CHANNEL} (history = {}: EVENT_ATs tagged)",
            crate::gateway::HISTORY_KEEP
        ),
    );
    // This build, and with --before-bin the other one, interleaved.
    let builds: Vec<bool> = if env.has_before() {
        vec![false, true]
    } else {
        vec![false]
    };
    let mut gateways = Vec::new();
    for &before in &builds {
        let gw = env.gateway_of(Transport::Plain, before).await?;
        if let Some(why) = &gw.channels_unavailable {
            result.notes.push(format!("pending: {why}"));
            result.targets.push(TargetCheck::new(
                "fan-out ≥ 500k deliveries/s to 10k subscribers",
                "pending (channels not available)".into(),
                None,
            ));
            return Ok(result);
        }
        let key = gw
            .api_key
            .clone()
            .ok_or_else(|| anyhow!("fanout needs an API key for POST /api/publish"))?;
        gateways.push((gw, key));
    }
    // History on: this build's gateway, when it has the history channel.
    let history = match &gateways[0].0.history_unavailable {
        Some(why) => {
            result.notes.push(format!("history on not measured: {why}"));
            false
        }
        None => args.selected("history"),
    };
    let load = Offered {
        subscribers: s,
        rate,
        publishers,
    };
    let mut all_runs: Vec<Vec<RunResult>> = builds.iter().map(|_| Vec::new()).collect();
    let mut history_runs: Vec<RunResult> = Vec::new();
    for rep in 0..t.repeat {
        // Alternate which of history on/off goes first, so that neither
        // always runs on a gateway warmed by the other.
        let history_first = history && rep % 2 == 1;
        if history_first {
            let label = format!(
                "fanout {s} subscribers, history on {}/{}",
                rep + 1,
                t.repeat
            );
            let (gw, key) = &gateways[0];
            history_runs.push(run_once(env, gw, key, load, Kind::History, t, &label).await?);
        }
        for (b, (gw, key)) in gateways.iter().enumerate() {
            let tag = if builds[b] { BEFORE } else { "" };
            let label = format!("fanout {s} subscribers{tag} {}/{}", rep + 1, t.repeat);
            all_runs[b].push(run_once(env, gw, key, load, Kind::Plain, t, &label).await?);
        }
        if history && !history_first {
            let label = format!(
                "fanout {s} subscribers, history on {}/{}",
                rep + 1,
                t.repeat
            );
            let (gw, key) = &gateways[0];
            history_runs.push(run_once(env, gw, key, load, Kind::History, t, &label).await?);
        }
    }
    let stats = |runs: &[RunResult], f: fn(&RunResult) -> f64| {
        Stat::from_samples(runs.iter().map(f).collect::<Vec<_>>())
    };
    for (b, runs) in all_runs.iter().enumerate() {
        let st = |f: fn(&RunResult) -> f64| stats(runs, f);
        let tag = if builds[b] { BEFORE } else { "" };
        let mut row = Row::new(format!("wsgate ws:// {s} subscribers{tag}"));
        row.stat("deliveries/s", st(|r| r.deliveries_per_sec), true)
            .stat("expected/s", st(|r| r.expected_per_sec), false)
            .stat("delivered share", st(|r| r.delivered_share), false)
            .stat("p50 ms", st(|r| r.p50_us / 1000.0), false)
            .stat("p99 ms", st(|r| r.p99_us / 1000.0), true)
            .stat("server CPU µs/delivery", st(|r| r.server_us), true)
            .stat("publish p99 ms", st(|r| r.publish_p99_us / 1000.0), false);
        if !builds[b] && all_runs.len() > 1 {
            let before = &all_runs[1];
            row.stat(
                "deliveries/s ÷ before",
                st(|r| r.deliveries_per_sec).ratio_to(&stats(before, |r| r.deliveries_per_sec)),
                false,
            )
            .stat(
                "CPU/delivery ÷ before",
                st(|r| r.server_us).ratio_to(&stats(before, |r| r.server_us)),
                false,
            );
        }
        result.rows.push(row);
    }
    if history {
        let off = &all_runs[0];
        let st = |f: fn(&RunResult) -> f64| stats(&history_runs, f);
        let cpu_ratio = st(|r| r.server_us).ratio_to(&stats(off, |r| r.server_us));
        let mut row = Row::new(format!(
            "wsgate ws:// {s} subscribers, history on (EVENT_AT)"
        ));
        row.stat("deliveries/s", st(|r| r.deliveries_per_sec), true)
            .stat("expected/s", st(|r| r.expected_per_sec), false)
            .stat("delivered share", st(|r| r.delivered_share), false)
            .stat("p50 ms", st(|r| r.p50_us / 1000.0), false)
            .stat("p99 ms", st(|r| r.p99_us / 1000.0), true)
            .stat("server CPU µs/delivery", st(|r| r.server_us), true)
            .stat("publish p99 ms", st(|r| r.publish_p99_us / 1000.0), false)
            .stat("CPU/delivery history on ÷ off", cpu_ratio.clone(), true)
            .stat(
                "p99 history on ÷ off",
                st(|r| r.p99_us).ratio_to(&stats(off, |r| r.p99_us)),
                false,
            );
        result.rows.push(row);
        let gaps: f64 = history_runs.iter().map(|r| r.offset_gaps).sum();
        if gaps > 0.0 {
            result.notes.push(format!(
                "history on: {gaps} EVENT_ATs did not follow the previous offset (a subscriber missed events)"
            ));
        }
        result.targets.push(TargetCheck::judged(
            HISTORY_TARGET_TEXT,
            Some(&cpu_ratio),
            Goal::AtMost(HISTORY_TARGET),
            !args.smoke,
            "",
        ));
    }
    let rates = stats(&all_runs[0], |r| r.deliveries_per_sec);
    result.targets.push(TargetCheck::judged_value(
        "fan-out ≥ 500k deliveries/s to 10k subscribers",
        Some(&rates),
        Goal::AtLeast(500_000.0),
        // A run that offers less than 500k/s cannot show it.
        !(args.smoke || s < 10_000 || rate * (s as f64) < 500_000.0),
        |v| format!("{} deliveries/s to {s} subscribers", fmt_num(v)),
    ));
    result.notes.push(
        "latency: publish sent (before the HTTP request) → EVENT verified at the subscriber; offer more load with --rate".into(),
    );
    Ok(result)
}

struct RunResult {
    deliveries_per_sec: f64,
    expected_per_sec: f64,
    delivered_share: f64,
    p50_us: f64,
    p99_us: f64,
    server_us: f64,
    publish_p99_us: f64,
    /// History on: EVENT_ATs whose offset did not follow the previous one.
    offset_gaps: f64,
}

/// What one run offers the gateway.
#[derive(Clone, Copy)]
struct Offered {
    subscribers: usize,
    /// Publishes per second, all publishers together.
    rate: f64,
    publishers: usize,
}

async fn run_once(
    env: &Env,
    gw: &Arc<Gw>,
    key: &str,
    load: Offered,
    kind: Kind,
    t: super::Timing,
    label: &str,
) -> Result<RunResult> {
    let Offered {
        subscribers: s,
        rate,
        publishers,
    } = load;
    for ip in (0..s)
        .map(|i| source_ip(i, s))
        .collect::<std::collections::BTreeSet<_>>()
    {
        gw.session(ip).await?;
    }
    let subscribers = load::open_many(label, s, 64, |i| {
        let gw = gw.clone();
        async move {
            let ip = source_ip(i, s);
            let mut conn = gw.session(ip).await?.connect(&gw.client_config(ip)).await?;
            let reply = conn
                .subscribe(kind.channel(), None, false)
                .await
                .context("SUBSCRIBE")?;
            match (kind, reply) {
                (Kind::Plain, None) | (Kind::History, Some(_)) => {}
                (Kind::Plain, Some(_)) => {
                    bail!("{CHANNEL} answered SUBSCRIBE with a position: it keeps history")
                }
                (Kind::History, None) => bail!("{HISTORY_CHANNEL} has no history on this gateway"),
            }
            Ok(conn)
        }
    })
    .await?;
    let epoch = Instant::now();
    let shared = Shared::default();
    // One histogram for all subscribers: one per subscriber is 10k × ~220 KB,
    // and every record was a cache miss on the load generator's one core.
    let latencies = Arc::new(Mutex::new(load::histogram()));
    let gaps = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = subscribers
        .into_iter()
        .map(|conn| {
            tokio::spawn(subscriber(
                conn,
                kind,
                shared.clone(),
                epoch,
                latencies.clone(),
                gaps.clone(),
            ))
        })
        .collect();
    let published = Arc::new(AtomicU64::new(0));
    let mut connections = Vec::with_capacity(publishers);
    for _ in 0..publishers {
        connections.push(Publisher::connect(gw, key, kind.channel()).await?);
    }
    // One interval per publisher, all created now: their ticks coincide.
    let publisher_tasks: Vec<_> = connections
        .into_iter()
        .map(|http| {
            tokio::spawn(publish_loop(
                http,
                rate / publishers as f64,
                shared.clone(),
                epoch,
                published.clone(),
            ))
        })
        .collect();
    let window = load::measure(
        label,
        "deliveries/s",
        &shared,
        t.warmup,
        t.duration,
        gw.cpu,
        env.self_cpu(),
    )
    .await;
    let mut publish_hist = load::histogram();
    let mut first = None;
    for task in publisher_tasks {
        let (h, http) = task
            .await
            .map_err(|e| anyhow!("publisher task failed: {e}"))??;
        publish_hist
            .add(&h)
            .map_err(|e| anyhow!("merging histograms: {e:?}"))?;
        first.get_or_insert(http);
    }
    // Let in-flight deliveries land, then tell every subscriber to stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Some(mut http) = first {
        http.publish(-1).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut unfinished = 0usize;
    for task in tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e.context("a subscriber failed")),
            Ok(Err(e)) => bail!("subscriber task failed: {e}"),
            Err(_) => unfinished += 1,
        }
    }
    if unfinished > 0 {
        eprintln!("  [{label}] {unfinished} subscribers never saw the end marker");
    }
    let hist = latencies.lock().unwrap_or_else(PoisonError::into_inner);
    let total_published = published.load(Ordering::Relaxed) as f64;
    let total_delivered = shared.ops.load(Ordering::Relaxed) as f64;
    Ok(RunResult {
        deliveries_per_sec: window.rate(),
        expected_per_sec: rate * s as f64,
        delivered_share: if total_published > 0.0 {
            total_delivered / (total_published * s as f64)
        } else {
            f64::NAN
        },
        p50_us: quantile_us(&hist, 0.5),
        p99_us: quantile_us(&hist, 0.99),
        server_us: window.server_us_per_op().unwrap_or(f64::NAN),
        publish_p99_us: quantile_us(&publish_hist, 0.99),
        offset_gaps: gaps.load(Ordering::Relaxed) as f64,
    })
}

/// Reads EVENTs (or, on the history channel, EVENT_ATs) until the end
/// marker (`-1`).
async fn subscriber(
    mut conn: Connection,
    kind: Kind,
    shared: Shared,
    epoch: Instant,
    latencies: Arc<Mutex<Histogram<u64>>>,
    gaps: Arc<AtomicU64>,
) -> Result<()> {
    let (want, channel) = match kind {
        Kind::Plain => (MessageType::Event as u8, CHANNEL),
        Kind::History => (MessageType::EventAt as u8, HISTORY_CHANNEL),
    };
    let mut last_offset: Option<u64> = None;
    loop {
        let msg = conn.recv().await?;
        if msg.msg_type != want || msg.name != channel {
            if msg.msg_type == MessageType::Resync as u8 {
                gaps.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        let payload = match kind {
            Kind::Plain => &msg.body[..],
            Kind::History => {
                let (offset, payload) = continuity::split_event_at_body(&msg.body)
                    .ok_or_else(|| anyhow!("EVENT_AT body shorter than its offset"))?;
                if last_offset.is_some_and(|last| offset != last + 1) {
                    gaps.fetch_add(1, Ordering::Relaxed);
                }
                last_offset = Some(offset);
                payload
            }
        };
        let sent: i64 = std::str::from_utf8(payload)
            .ok()
            .and_then(|b| b.trim().parse().ok())
            .ok_or_else(|| {
                anyhow!(
                    "unexpected EVENT body {:?}",
                    String::from_utf8_lossy(payload)
                )
            })?;
        if sent < 0 {
            return Ok(());
        }
        if shared.is_measuring() {
            let now = epoch.elapsed().as_micros() as i64;
            latencies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .saturating_record((now - sent).max(1) as u64);
        }
        shared.done_one();
    }
}

async fn publish_loop(
    mut http: Publisher,
    rate: f64,
    shared: Shared,
    epoch: Instant,
    published: Arc<AtomicU64>,
) -> Result<(Histogram<u64>, Publisher)> {
    let mut hist = load::histogram();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !shared.stopped() {
        tick.tick().await;
        let sent = epoch.elapsed().as_micros() as i64;
        let t0 = Instant::now();
        http.publish(sent).await?;
        load::record(&mut hist, t0.elapsed());
        published.fetch_add(1, Ordering::Relaxed);
    }
    Ok((hist, http))
}

/// A keep-alive HTTP/1.1 connection for `POST /api/publish` to one channel.
pub(crate) struct Publisher {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
    auth: String,
    channel: &'static str,
}

impl Publisher {
    pub(crate) async fn connect(gw: &Gw, key: &str, channel: &'static str) -> Result<Self> {
        if gw.config.is_tls() {
            bail!("the fanout publisher speaks plain http:// only");
        }
        let tcp = tokio::net::TcpStream::connect(gw.config.addr)
            .await
            .with_context(|| format!("connecting to {}", gw.config.addr))?;
        tcp.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            sender,
            host: gw.config.host.clone(),
            auth: format!("Bearer {key}"),
            channel,
        })
    }

    /// Publishes `data`; returns the response body (a history channel's
    /// answers with the event's position).
    pub(crate) async fn publish(&mut self, data: i64) -> Result<Bytes> {
        self.publish_json(serde_json::json!(data)).await
    }

    /// Publishes any JSON `data` (the fleet's events carry a sequence
    /// number and their publish time).
    pub(crate) async fn publish_json(&mut self, data: serde_json::Value) -> Result<Bytes> {
        let body = serde_json::json!({"channel": self.channel, "data": data}).to_string();
        let req = http::Request::builder()
            .method(http::Method::POST)
            .uri("/api/publish")
            .header(http::header::HOST, &self.host)
            .header(http::header::AUTHORIZATION, &self.auth)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "POST /api/publish answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(body)
    }
}
