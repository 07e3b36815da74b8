//! `keys`: connection set-up cost. Concurrent clients open a connection,
//! establish it and drop it, over and over:
//!
//! * a plain WebSocket upgrade on `/raw-echo` (TCP + HTTP upgrade: the
//!   floor every variant pays);
//! * wsgate reconnect: upgrade + HELLO → KEY_INIT → KEY_ACK with an
//!   existing session (no login: the session is reused);
//! * the plain upgrade over `wss://` (adds a TLS 1.3 handshake, ECDSA P-256);
//! * wsgate over `wss://` (both).
//!
//! Subtracting the floor isolates HELLO → KEY_ACK and the TLS handshake,
//! the two costs the issue compares.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use hdrhistogram::Histogram;
use wsgate_client::RawSocket;

use super::{Timing, per_core, quantile_us, timing};
use crate::BenchArgs;
use crate::gateway::{BEFORE, Env, Gw, Transport};
use crate::load::{self, Shared};
use crate::report::{Goal, Row, ScenarioResult, Stat, TargetCheck, fmt_num};

const UPGRADE: &str = "ws:// upgrade only (raw)";
const KEYS: &str = "wsgate ws:// reconnect: upgrade + HELLO→KEY_ACK";
const TLS_UPGRADE: &str = "wss:// upgrade (TLS 1.3 handshake)";
const KEYS_TLS: &str = "wsgate wss:// reconnect";

const CPU: &str = "server CPU µs/conn";
const PER_CORE: &str = "per server core /s";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Upgrade,
    Keys,
}

#[derive(Debug, Clone, Copy)]
struct RunResult {
    rate: f64,
    p50: f64,
    p99: f64,
    server_us: f64,
}

pub(crate) async fn run(env: &Env, args: &BenchArgs) -> Result<ScenarioResult> {
    let c = args
        .connections
        .unwrap_or(if args.smoke { 2 } else { 8 })
        .max(1);
    let t = timing(args, 5.0, 1);
    // (name, transport, kind, on the --before-bin build); the first four
    // are indexed below.
    let mut variants = vec![
        (UPGRADE.to_owned(), Transport::Plain, Kind::Upgrade, false),
        (KEYS.to_owned(), Transport::Plain, Kind::Keys, false),
        (TLS_UPGRADE.to_owned(), Transport::Tls, Kind::Upgrade, false),
        (KEYS_TLS.to_owned(), Transport::Tls, Kind::Keys, false),
    ];
    if env.has_before() {
        variants.push((
            format!("{KEYS}{BEFORE}"),
            Transport::Plain,
            Kind::Keys,
            true,
        ));
    }
    let mut result = ScenarioResult::new(
        "keys",
        "connection set-up: open, establish, drop; concurrent clients in closed loops",
    );
    result.setting("concurrent clients", c);
    result.setting("measured seconds per run", t.duration.as_secs_f64());
    result.setting("runs per variant", t.repeat);
    result.setting("TLS", "1.3, rustls (ring), ECDSA P-256 self-signed, X25519");

    let mut runs: Vec<Vec<RunResult>> = vec![Vec::new(); variants.len()];
    for rep in 0..t.repeat {
        for (i, (name, transport, kind, before)) in variants.iter().enumerate() {
            if !args.selected(name) {
                continue;
            }
            let gw = match env.gateway_for_run(*transport, *before).await? {
                Ok(gw) => gw,
                Err(why) => {
                    if rep == 0 {
                        result.notes.push(format!("{name}: skipped ({why})"));
                    }
                    continue;
                }
            };
            // The session exists before the clock starts: this is a reconnect.
            gw.session(None).await?;
            let label = format!("keys {name} {}/{}", rep + 1, t.repeat);
            runs[i].push(run_variant(env, &gw, *kind, c, t, &label).await?);
        }
    }

    let stat = |i: usize, f: fn(&RunResult) -> f64| {
        Stat::from_samples(runs[i].iter().map(f).collect::<Vec<_>>())
    };
    for (i, (name, _, _, _)) in variants.iter().enumerate() {
        if runs[i].is_empty() {
            continue;
        }
        let cpu = stat(i, |r| r.server_us);
        let mut row = Row::new(name.clone());
        row.stat("conn/s", stat(i, |r| r.rate), true)
            .stat("p50 µs", stat(i, |r| r.p50), false)
            .stat("p99 µs", stat(i, |r| r.p99), false)
            .stat(CPU, cpu.clone(), true)
            .stat(PER_CORE, per_core(&cpu), false);
        if let Some(j) = variants
            .iter()
            .position(|v| v.0 == format!("{name}{BEFORE}"))
            .filter(|j| !runs[*j].is_empty())
        {
            row.stat(
                "CPU ÷ before",
                cpu.ratio_to(&stat(j, |r| r.server_us)),
                false,
            );
        }
        result.rows.push(row);
    }
    // Isolated costs: subtract the floor run by run.
    if runs[0].is_empty() {
        // No floor to subtract (filtered out with --only).
        runs[1].clear();
        runs[2].clear();
    }
    let floor = runs[0].iter().map(|r| r.server_us).collect::<Vec<_>>();
    let minus_floor = |i: usize| {
        Stat::from_samples(
            runs[i]
                .iter()
                .zip(&floor)
                .map(|(r, f)| r.server_us - f)
                .collect(),
        )
    };
    let keys_only = (!runs[1].is_empty()).then(|| minus_floor(1));
    let tls_only = (!runs[2].is_empty()).then(|| minus_floor(2));
    if let Some(k) = &keys_only {
        let mut row = Row::new("→ HELLO→KEY_ACK alone (reconnect − upgrade)");
        row.stat(CPU, k.clone(), true)
            .stat(PER_CORE, per_core(k), false);
        if let Some(tls) = &tls_only {
            row.stat("÷ TLS handshake alone", k.ratio_to(tls), false);
        }
        result.rows.push(row);
    }
    if let Some(tls) = &tls_only {
        let mut row = Row::new("→ TLS 1.3 handshake alone (wss upgrade − upgrade)");
        row.stat(CPU, tls.clone(), true)
            .stat(PER_CORE, per_core(tls), false);
        result.rows.push(row);
    }
    if let Some(total) = result.row(KEYS).and_then(|r| r.get(CPU)).cloned()
        && let Some(tls_total) = result.row(TLS_UPGRADE).and_then(|r| r.get(CPU)).cloned()
        && let Some(row) = result.rows.iter_mut().find(|r| r.variant == KEYS)
    {
        row.stat("÷ wss:// upgrade", total.ratio_to(&tls_total), false);
    }

    let smoke = args.smoke;
    // Judged run by run (met, missed or within noise), as the echo targets.
    let ratio = keys_only
        .as_ref()
        .zip(tls_only.as_ref())
        .map(|(k, t)| k.ratio_to(t));
    let note = format!(
        "; {} µs vs {} µs",
        fmt_num(keys_only.as_ref().map_or(f64::NAN, |k| k.median)),
        fmt_num(tls_only.as_ref().map_or(f64::NAN, |t| t.median))
    );
    result.targets.push(TargetCheck::judged(
        "server CPU per new connection (HELLO → KEY_ACK) ≤ 0.5× a TLS 1.3 handshake",
        ratio.as_ref(),
        Goal::AtMost(0.5),
        !smoke,
        &note,
    ));
    let capacity = result
        .row(KEYS)
        .and_then(|r| r.get(PER_CORE))
        .map(|s| s.median);
    result.targets.push(TargetCheck::new(
        "≥ 15k key establishments/s per server core",
        capacity.map_or_else(
            || "–".into(),
            |c| {
                format!(
                    "{}/s per core (whole reconnect incl. TCP + upgrade)",
                    fmt_num(c)
                )
            },
        ),
        if smoke {
            None
        } else {
            capacity.map(|c| c >= 15_000.0)
        },
    ));
    result.notes.push(
        "per server core /s = 1 / server CPU per connection: what one core of the gateway could sustain; conn/s is what this load generator reached".into(),
    );
    Ok(result)
}

async fn run_variant(
    env: &Env,
    gw: &Arc<Gw>,
    kind: Kind,
    c: usize,
    t: Timing,
    label: &str,
) -> Result<RunResult> {
    let shared = Shared::default();
    let tasks: Vec<_> = (0..c)
        .map(|_| tokio::spawn(connect_loop(gw.clone(), kind, shared.clone())))
        .collect();
    let window = load::measure(
        label,
        "conn/s",
        &shared,
        t.warmup,
        t.duration,
        gw.cpu,
        env.self_cpu(),
    )
    .await;
    let hist = load::join_loops(label, "client", tasks).await?;
    Ok(RunResult {
        rate: window.rate(),
        p50: quantile_us(&hist, 0.5),
        p99: quantile_us(&hist, 0.99),
        server_us: window.server_us_per_op().unwrap_or(f64::NAN),
    })
}

async fn connect_loop(gw: Arc<Gw>, kind: Kind, shared: Shared) -> (Histogram<u64>, Result<()>) {
    let mut hist = load::histogram();
    let config = gw.client_config(None);
    let session = match gw.session(None).await {
        Ok(s) => s,
        Err(e) => return (hist, Err(e)),
    };
    while !shared.stopped() {
        let t0 = Instant::now();
        let outcome = match kind {
            Kind::Upgrade => RawSocket::open_raw_path(&config, "/raw-echo")
                .await
                .map(drop),
            Kind::Keys => session.connect(&config).await.map(drop),
        };
        if let Err(e) = outcome {
            shared
                .stop
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return (hist, Err(e.into()));
        }
        if shared.is_measuring() {
            load::record(&mut hist, t0.elapsed());
        }
        shared.done_one();
    }
    (hist, Ok(()))
}
