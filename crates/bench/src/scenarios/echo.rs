//! `echo`: N connections in a closed loop, one request in flight each.
//!
//! Variants, interleaved run by run so machine noise hits all alike:
//! the raw WebSocket echo (baseline 1, "the limit"), a popular peer (a
//! Node.js echo server on the npm `ws` package), wsgate with every frame
//! tagged, with a share encrypted, with every frame encrypted, the raw echo
//! over TLS, and wsgate over `wss://` with every frame tagged (baseline 2,
//! "TLS on everything").
//!
//! The peer (`js/bench/ws-echo-peer.mjs`, see [`crate::peer`]) is started
//! for the scenario like a gateway: `taskset -c 0 node …`, its CPU read
//! from `/proc/<pid>/stat`, loaded by the same client (a [`RawSocket`] with
//! no subprotocol) in the same closed loop, stopped when the scenario ends.
//! Its row carries the ratios to the raw echo. Without `node` or the `ws`
//! module (`cd js && npm ci`), or with `--addr`, the row is skipped with a
//! note starting "skipped:".

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use wsgate_client::{Connection, RawSocket};

use super::{Timing, quantile_us, timing};
use crate::BenchArgs;
use crate::gateway::{BEFORE, Env, Gw, Transport};
use crate::load::{self, Shared};
use crate::peer;
use crate::report::{Goal, Row, ScenarioResult, Stat, TargetCheck, fmt_num};

const RAW: &str = "raw ws:// (baseline 1)";
const NODE: &str = "node ws:// (peer)";
const TAGGED: &str = "wsgate ws:// all tagged";
const ALL_ENC: &str = "wsgate ws:// all ENC";
const RAW_TLS: &str = "raw wss://";
const WSS: &str = "wsgate wss:// all tagged (baseline 2)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The gateway's `/raw-echo`.
    Raw,
    /// wsgate's protected `sys.echo`.
    Gate,
    /// The Node.js `ws` echo peer.
    Peer,
}

#[derive(Debug, Clone)]
pub(crate) struct Variant {
    pub(crate) name: String,
    pub(crate) transport: Transport,
    pub(crate) kind: Kind,
    pub(crate) share: f64,
    /// Runs on the `--before-bin` gateway.
    pub(crate) before: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct RunResult {
    pub(crate) rate: f64,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) server_us: f64,
    pub(crate) client_us: f64,
}

enum EchoConn {
    Raw(RawSocket),
    Gate(Box<Connection>),
}

impl EchoConn {
    async fn open(gw: &Gw, kind: Kind) -> Result<Self> {
        let config = gw.client_config(None);
        Ok(match kind {
            Kind::Raw => Self::Raw(RawSocket::open_raw_path(&config, "/raw-echo").await?),
            Kind::Peer => Self::Raw(RawSocket::open_raw_path(&config, peer::PATH).await?),
            Kind::Gate => Self::Gate(Box::new(gw.session(None).await?.connect(&config).await?)),
        })
    }

    async fn echo(&mut self, payload: &[u8], enc: bool) -> Result<()> {
        let len = match self {
            Self::Raw(s) => {
                s.send_binary(payload.to_vec()).await?;
                s.recv_binary().await?.len()
            }
            Self::Gate(c) => c.request("sys.echo", payload, enc).await?.len(),
        };
        if len != payload.len() {
            bail!("echo returned {len} bytes for {}", payload.len());
        }
        Ok(())
    }
}

/// Whether request `seq` is sent encrypted: exactly `share` of any long
/// enough run of consecutive requests.
fn is_sensitive(seq: u64, share: f64) -> bool {
    ((seq + 1) as f64 * share).floor() > (seq as f64 * share).floor()
}

pub(crate) async fn run(env: &Env, args: &BenchArgs) -> Result<ScenarioResult> {
    let n = args
        .connections
        .unwrap_or(if args.smoke { 4 } else { 50 })
        .max(1);
    let t = timing(args, 10.0, super::ECHO_REPEAT);
    let share = args.sensitive_share;
    let mut variants = vec![
        Variant {
            name: RAW.into(),
            transport: Transport::Plain,
            kind: Kind::Raw,
            share: 0.0,
            before: false,
        },
        Variant {
            name: NODE.into(),
            transport: Transport::Plain,
            kind: Kind::Peer,
            share: 0.0,
            before: false,
        },
        Variant {
            name: TAGGED.into(),
            transport: Transport::Plain,
            kind: Kind::Gate,
            share: 0.0,
            before: false,
        },
    ];
    let mixed = mixed_name(share);
    if share > 0.0 && share < 1.0 {
        variants.push(Variant {
            name: mixed.clone(),
            transport: Transport::Plain,
            kind: Kind::Gate,
            share,
            before: false,
        });
    }
    variants.extend([
        Variant {
            name: ALL_ENC.into(),
            transport: Transport::Plain,
            kind: Kind::Gate,
            share: 1.0,
            before: false,
        },
        Variant {
            name: RAW_TLS.into(),
            transport: Transport::Tls,
            kind: Kind::Raw,
            share: 0.0,
            before: false,
        },
        Variant {
            name: WSS.into(),
            transport: Transport::Tls,
            kind: Kind::Gate,
            share: 0.0,
            before: false,
        },
    ]);

    if env.has_before() {
        variants = variants
            .into_iter()
            .flat_map(|v| {
                let twin = (v.kind == Kind::Gate).then(|| Variant {
                    name: format!("{}{BEFORE}", v.name),
                    before: true,
                    ..v.clone()
                });
                std::iter::once(v).chain(twin)
            })
            .collect();
    }
    variants.retain(|v| args.selected(&v.name));
    let mut result = ScenarioResult::new(
        "echo",
        "closed-loop request/response, one request in flight per connection",
    );
    result.setting("connections", n);
    result.setting("payload bytes", args.payload);
    result.setting("measured seconds per run", t.duration.as_secs_f64());
    result.setting("runs per variant", t.repeat);
    result.setting("route", "sys.echo (built-in)");

    let payload: Arc<Vec<u8>> = Arc::new((0..args.payload).map(|i| (i % 251) as u8).collect());
    let mut runs: Vec<Vec<RunResult>> = vec![Vec::new(); variants.len()];
    let mut skipped: Vec<Option<String>> = vec![None; variants.len()];
    let mut node_peer = None;
    if let Some(i) = variants.iter().position(|v| v.kind == Kind::Peer) {
        match start_peer(env, args).await? {
            Ok((gw, described)) => {
                result.setting("node peer", described);
                node_peer = Some(Arc::new(gw));
            }
            Err(why) => skipped[i] = Some(format!("skipped: {NODE}: {why}")),
        }
    }
    for rep in 0..t.repeat {
        for (i, v) in variants.iter().enumerate() {
            if skipped[i].is_some() {
                continue;
            }
            let gw = if v.kind == Kind::Peer {
                let Some(gw) = &node_peer else { continue };
                gw.clone()
            } else {
                match env.gateway_for_run(v.transport, v.before).await? {
                    Ok(gw) => gw,
                    Err(why) => {
                        skipped[i] = Some(format!("{}: skipped ({why})", v.name));
                        continue;
                    }
                }
            };
            let label = format!("echo {} {}/{}", v.name, rep + 1, t.repeat);
            runs[i].push(run_variant(env, &gw, v, n, &payload, t, &label).await?);
        }
    }
    if let Some(gw) = node_peer.take() {
        // Stopping waits for the process: not on the runtime's thread. (On
        // an early return the drop stops it.)
        let _ = tokio::task::spawn_blocking(move || gw.stop()).await;
    }
    result.notes.extend(skipped.into_iter().flatten());

    let stat = |i: usize, f: fn(&RunResult) -> f64| {
        Stat::from_samples(runs[i].iter().map(f).collect::<Vec<_>>())
    };
    let index = |name: &str| variants.iter().position(|v| v.name == name);
    let raw_rate = index(RAW).map(|i| stat(i, |r| r.rate));
    let raw_cpu = index(RAW).map(|i| stat(i, |r| r.server_us));
    let raw_tls_cpu = index(RAW_TLS)
        .filter(|i| !runs[*i].is_empty())
        .map(|i| stat(i, |r| r.server_us));
    let wss_cpu = |before: bool| {
        let name = if before {
            format!("{WSS}{BEFORE}")
        } else {
            WSS.to_owned()
        };
        index(&name)
            .filter(|i| !runs[*i].is_empty())
            .map(|i| stat(i, |r| r.server_us))
    };
    for (i, v) in variants.iter().enumerate() {
        if runs[i].is_empty() {
            continue;
        }
        let mut row = Row::new(v.name.clone());
        let rate = stat(i, |r| r.rate);
        let cpu = stat(i, |r| r.server_us);
        row.stat("req/s", rate.clone(), true)
            .stat("p50 µs", stat(i, |r| r.p50), false)
            .stat("p99 µs", stat(i, |r| r.p99), false)
            .stat("server CPU µs/req", cpu.clone(), true)
            .stat("load-gen CPU µs/req", stat(i, |r| r.client_us), false);
        if let (Some(base), false) = (&raw_rate, v.name == RAW) {
            row.stat("req/s ÷ raw", rate.ratio_to(base), false);
        }
        if let (Some(base), false) = (&raw_cpu, v.name == RAW) {
            row.stat("CPU/req ÷ raw", cpu.ratio_to(base), true);
        }
        let is_wss = v.name == WSS || v.name == format!("{WSS}{BEFORE}");
        if let (Some(base), true) = (&wss_cpu(v.before), v.kind == Kind::Gate && !is_wss) {
            row.stat("CPU/req ÷ wss:// tagged", cpu.ratio_to(base), false);
        }
        // The lean TLS baseline: what "TLS on everything" costs with nothing else added.
        if let (Some(base), true) = (&raw_tls_cpu, v.kind == Kind::Gate && !is_wss && !v.before) {
            row.stat("CPU/req ÷ raw wss://", cpu.ratio_to(base), false);
        }
        if let Some(j) = index(&format!("{}{BEFORE}", v.name)).filter(|j| !runs[*j].is_empty()) {
            row.stat("req/s ÷ before", rate.ratio_to(&stat(j, |r| r.rate)), false)
                .stat(
                    "CPU/req ÷ before",
                    cpu.ratio_to(&stat(j, |r| r.server_us)),
                    true,
                );
        }
        result.rows.push(row);
    }
    add_targets(&mut result, &mixed, share, args.smoke);
    result.notes.push(if t.repeat > 1 {
        format!(
            "every cell is the median of {} interleaved runs with the run-to-run range (min–max); ratios are taken run by run (run i of a variant over run i of its baseline, which ran next to it); a target is met or missed only when every run agrees, else within noise",
            t.repeat
        )
    } else {
        "one run per variant: no spread, and a verdict is one run's (--repeat K for the run-to-run range)".to_owned()
    });
    result.notes.push(
        "server CPU is utime+stime of the gateway process (for the node peer: the node process, all its threads) (/proc/<pid>/stat) over the measured window, divided by the requests completed in it; load-gen CPU is the same for the bench process".into(),
    );
    Ok(result)
}

/// Starts the Node.js `ws` echo peer: the peer and its description for
/// the settings, or why it is skipped (what to install). Errors only when
/// everything is there and it still fails to start.
async fn start_peer(env: &Env, args: &BenchArgs) -> Result<Result<(Gw, String), String>> {
    if !env.owns_gateways() {
        return Ok(Err(
            "needs the bench to start its servers (not with --addr)".into(),
        ));
    }
    let found = match peer::locate(args.node_peer.as_deref()) {
        Ok(found) => found,
        Err(why) => return Ok(Err(why)),
    };
    let described = format!("{} ({})", found.versions, found.script());
    let (pinned, ticks) = (env.pinned(), env.ticks());
    let gw = tokio::task::spawn_blocking(move || found.start(pinned, ticks))
        .await
        .map_err(|e| anyhow::anyhow!("node peer start-up task failed: {e}"))??;
    Ok(Ok((gw, described)))
}

pub(crate) fn mixed_name(share: f64) -> String {
    let pct = share * 100.0;
    if (pct - pct.round()).abs() < 1e-9 {
        format!("wsgate ws:// {pct:.0}% ENC")
    } else {
        format!("wsgate ws:// {pct}% ENC")
    }
}

fn add_targets(result: &mut ScenarioResult, mixed: &str, share: f64, smoke: bool) {
    let ratio = |variant: &str, metric: &str| -> Option<Stat> {
        result.row(variant).and_then(|r| r.get(metric)).cloned()
    };
    let tagged = ratio(TAGGED, "req/s ÷ raw");
    let enc = ratio(ALL_ENC, "req/s ÷ raw");
    let (cpu_raw, cpu_wss) = (
        ratio(mixed, "CPU/req ÷ raw"),
        ratio(mixed, "CPU/req ÷ wss:// tagged"),
    );
    let tagged_cpu = ratio(TAGGED, "CPU/req ÷ raw");
    let (mixed_tls, enc_tls) = (
        ratio(mixed, "CPU/req ÷ raw wss://"),
        ratio(ALL_ENC, "CPU/req ÷ raw wss://"),
    );
    // The 10 % targets are judged only at 10 %: another share is shown, not judged.
    let exact = (share - 0.1).abs() < 1e-9;
    let at = if exact {
        String::new()
    } else {
        format!(" (at {} %)", fmt_num(share * 100.0))
    };
    result.targets.extend([
        TargetCheck::judged(
            "echo, every frame tagged: ≥ 0.85× raw WebSocket req/s",
            tagged.as_ref(),
            Goal::AtLeast(0.85),
            !smoke,
            "",
        ),
        TargetCheck::judged(
            "echo, every frame encrypted: ≥ 0.75× raw WebSocket req/s",
            enc.as_ref(),
            Goal::AtLeast(0.75),
            !smoke,
            "",
        ),
        TargetCheck::judged(
            "server CPU/request at 10 % sensitive ≤ 1.10× raw WebSocket",
            cpu_raw.as_ref(),
            Goal::AtMost(1.10),
            !smoke && exact,
            &at,
        ),
        TargetCheck::judged(
            "server CPU/request at 10 % sensitive below the wss:// baseline",
            cpu_wss.as_ref(),
            Goal::Below(1.0),
            !smoke && exact,
            &at,
        ),
        // Issue 15: against the lean baselines (raw echo, and the same stack plus rustls).
        TargetCheck::judged(
            "server CPU/request, every frame tagged ≤ 1.05× raw WebSocket",
            tagged_cpu.as_ref(),
            Goal::AtMost(1.05),
            !smoke,
            "",
        ),
        TargetCheck::judged(
            "server CPU/request at 10 % sensitive ≤ 0.85× raw wss://",
            mixed_tls.as_ref(),
            Goal::AtMost(0.85),
            !smoke && exact,
            &at,
        ),
        TargetCheck::judged(
            "server CPU/request, every frame encrypted ≤ 1.0× raw wss://",
            enc_tls.as_ref(),
            Goal::AtMost(1.0),
            !smoke,
            "",
        ),
    ]);
}

pub(crate) async fn run_variant(
    env: &Env,
    gw: &Arc<Gw>,
    v: &Variant,
    n: usize,
    payload: &Arc<Vec<u8>>,
    t: Timing,
    label: &str,
) -> Result<RunResult> {
    let kind = v.kind;
    let conns = load::open_many(label, n, 16, |_| {
        let gw = gw.clone();
        async move { EchoConn::open(&gw, kind).await }
    })
    .await?;
    let shared = Shared::default();
    let mut tasks = Vec::with_capacity(n);
    for (i, conn) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(echo_loop(
            conn,
            shared.clone(),
            payload.clone(),
            v.share,
            i as u64 * 7919,
        )));
    }
    let window = load::measure(
        label,
        "req/s",
        &shared,
        t.warmup,
        t.duration,
        gw.cpu,
        env.self_cpu(),
    )
    .await;
    let hist = load::join_loops(label, "connection", tasks).await?;
    Ok(RunResult {
        rate: window.rate(),
        p50: quantile_us(&hist, 0.5),
        p99: quantile_us(&hist, 0.99),
        server_us: window.server_us_per_op().unwrap_or(f64::NAN),
        client_us: window.client_us_per_op().unwrap_or(f64::NAN),
    })
}

async fn echo_loop(
    mut conn: EchoConn,
    shared: Shared,
    payload: Arc<Vec<u8>>,
    share: f64,
    mut seq: u64,
) -> (Histogram<u64>, Result<()>) {
    let mut hist = load::histogram();
    while !shared.stopped() {
        let enc = is_sensitive(seq, share);
        seq += 1;
        let t0 = Instant::now();
        if let Err(e) = conn.echo(&payload, enc).await {
            shared
                .stop
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return (hist, Err(e));
        }
        if shared.is_measuring() {
            load::record(&mut hist, t0.elapsed());
        }
        shared.done_one();
    }
    (hist, Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_share_is_exact() {
        let count = |share| (0..1000u64).filter(|s| is_sensitive(*s, share)).count();
        assert_eq!(count(0.1), 100);
        assert_eq!(count(0.0), 0);
        assert_eq!(count(1.0), 1000);
        assert_eq!(count(0.25), 250);
    }
}
