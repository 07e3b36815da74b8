//! `idle`: hold C connections open and measure the gateway's resident
//! memory per connection (`VmRSS` after − before, divided by C).
//!
//! Each variant gets a gateway process of its own, so no variant reuses
//! memory another one freed. Connections come from several loopback source
//! addresses once one address runs out of ports (one login per address:
//! sessions are bound to the login's IP).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use wsgate_client::{Connection, RawSocket};

use super::source_ip;
use crate::BenchArgs;
use crate::gateway::{BEFORE, Env, Gw, Transport};
use crate::load;
use crate::procfs;
use crate::report::{Goal, Row, ScenarioResult, Stat, TargetCheck, fmt_num};

const RAW: &str = "raw ws:// (baseline)";
const GATE: &str = "wsgate ws:// authenticated";
const GATE_TLS: &str = "wsgate wss:// authenticated";
const PER_CONN: &str = "server bytes/conn";

#[allow(dead_code)] // held only to keep the connections open
enum Held {
    Raw(RawSocket),
    Gate(Box<Connection>),
}

struct RunResult {
    per_conn: f64,
    before_kib: f64,
    after_kib: f64,
    open_rate: f64,
    client_per_conn: f64,
}

pub(crate) async fn run(env: &Env, args: &BenchArgs) -> Result<ScenarioResult> {
    let c = args
        .connections
        .unwrap_or(if args.smoke { 50 } else { 10_000 })
        .max(1);
    let repeat = args.repeat_or(1);
    // Each connection costs a descriptor here and one in the gateway.
    let needed = c as u64 + 1_000;
    if env.nofile < needed {
        bail!(
            "{c} connections need a file descriptor limit of at least {needed}; it is {} (run as root, or raise `ulimit -n`)",
            env.nofile
        );
    }
    let mut result = ScenarioResult::new(
        "idle",
        "connections held open: gateway resident memory per connection",
    );
    result.setting("connections", c);
    result.setting("runs per variant", repeat);
    result.setting(
        "source addresses",
        format!(
            "{}",
            (0..c)
                .filter_map(|i| source_ip(i, c))
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                .max(1)
        ),
    );
    // (name, transport, authenticated wsgate connection, on the --before-bin build)
    let mut variants = vec![
        (RAW.to_owned(), Transport::Plain, false, false),
        (GATE.to_owned(), Transport::Plain, true, false),
        (GATE_TLS.to_owned(), Transport::Tls, true, false),
    ];
    if env.has_before() {
        variants.insert(2, (format!("{GATE}{BEFORE}"), Transport::Plain, true, true));
        variants.push((format!("{GATE_TLS}{BEFORE}"), Transport::Tls, true, true));
    }
    let mut runs: Vec<Vec<RunResult>> = variants.iter().map(|_| Vec::new()).collect();
    for rep in 0..repeat {
        for (i, (name, transport, gate, before)) in variants.iter().enumerate() {
            if !args.selected(name) {
                continue;
            }
            let gw = if env.owns_gateways() {
                Arc::new(env.fresh_of(*transport, *before).await?)
            } else {
                match env.gateway(*transport).await {
                    Ok(gw) => gw,
                    Err(e) => {
                        if rep == 0 {
                            result.notes.push(format!("{name}: skipped ({e:#})"));
                        }
                        continue;
                    }
                }
            };
            let label = format!("idle {name} {}/{}", rep + 1, repeat);
            let r = hold(&gw, *gate, c, &label).await;
            if env.owns_gateways() {
                let gw2 = gw.clone();
                let _ = tokio::task::spawn_blocking(move || gw2.stop()).await;
            }
            runs[i].push(r?);
        }
    }
    for (i, (name, _, _, _)) in variants.iter().enumerate() {
        if runs[i].is_empty() {
            continue;
        }
        let s = |f: fn(&RunResult) -> f64| {
            Stat::from_samples(runs[i].iter().map(f).collect::<Vec<_>>())
        };
        let mut row = Row::new(name.clone());
        row.stat("RSS before KiB", s(|r| r.before_kib), false)
            .stat("RSS after KiB", s(|r| r.after_kib), false)
            .stat(PER_CONN, s(|r| r.per_conn), true)
            .stat("load-gen bytes/conn", s(|r| r.client_per_conn), false)
            .stat("opened conn/s", s(|r| r.open_rate), false);
        if i > 0
            && let Some(base) = result.row(RAW).and_then(|r| r.get(PER_CONN)).cloned()
        {
            row.stat("÷ raw", s(|r| r.per_conn).ratio_to(&base), false);
        }
        if let Some(j) = variants
            .iter()
            .position(|v| v.0 == format!("{name}{BEFORE}"))
            .filter(|j| !runs[*j].is_empty())
        {
            let before = Stat::from_samples(runs[j].iter().map(|r| r.per_conn).collect::<Vec<_>>());
            row.stat("÷ before", s(|r| r.per_conn).ratio_to(&before), false);
        }
        result.rows.push(row);
    }
    let per_conn_stat = result.row(GATE).and_then(|r| r.get(PER_CONN)).cloned();
    let per_conn = per_conn_stat.as_ref().map(|s| s.median);
    let measured = !args.smoke && env.owns_gateways();
    let bytes = |b: f64| format!("{} bytes ({:.1} KiB)", fmt_num(b), b / 1024.0);
    for (target, limit) in [
        ("≤ 8 KiB RSS per idle authenticated connection", 8192.0),
        (
            "≤ 4 KiB RSS per idle authenticated connection (issue 15)",
            4096.0,
        ),
    ] {
        result.targets.push(TargetCheck::judged_value(
            target,
            per_conn_stat.as_ref(),
            Goal::AtMost(limit),
            measured,
            bytes,
        ));
    }
    let held_gate = variants
        .iter()
        .position(|v| v.0 == GATE)
        .is_some_and(|i| !runs[i].is_empty());
    result.targets.push(TargetCheck::new(
        "≥ 100k concurrent authenticated connections (2 cores, 24 GiB)",
        if held_gate {
            format!(
                "{c} held{}",
                per_conn.map_or_else(String::new, |b| format!(
                    "; at this rate 100k need {:.2} GiB of gateway RSS",
                    b * 100_000.0 / (1u64 << 30) as f64
                ))
            )
        } else {
            "–".into()
        },
        if measured && c >= 100_000 {
            Some(held_gate)
        } else {
            None
        },
    ));
    result.notes.push(
        "bytes/conn = (gateway VmRSS with the connections open − before) / connections; each variant runs in a new gateway process"
            .into(),
    );
    if !env.owns_gateways() {
        result.notes.push(
            "--addr: the gateway's memory also holds whatever else it serves, so per-connection numbers are only indicative".into(),
        );
    }
    Ok(result)
}

async fn hold(gw: &Arc<Gw>, gate: bool, c: usize, label: &str) -> Result<RunResult> {
    // One connection first, so one-time allocations are not counted.
    {
        let first = open(gw, gate, None).await?;
        drop(first);
    }
    if gate {
        for ip in (0..c)
            .map(|i| source_ip(i, c))
            .collect::<std::collections::BTreeSet<_>>()
        {
            gw.session(ip).await?;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = gw
        .rss_kib()
        .ok_or_else(|| anyhow::anyhow!("the gateway's RSS is unknown (pass --server-pid)"))?;
    let client_before = procfs::rss_kib(std::process::id()).unwrap_or(0);
    let t0 = Instant::now();
    let held = load::open_many(label, c, 64, |i| {
        let gw = gw.clone();
        async move { open(&gw, gate, source_ip(i, c)).await }
    })
    .await?;
    let open_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = gw
        .rss_kib()
        .ok_or_else(|| anyhow::anyhow!("the gateway exited while holding connections"))?;
    let client_after = procfs::rss_kib(std::process::id()).unwrap_or(0);
    eprintln!(
        "  [{label}] {c} connections: gateway RSS {before} → {after} KiB ({:.0} bytes/conn)",
        (after.saturating_sub(before) * 1024) as f64 / c as f64
    );
    drop(held);
    Ok(RunResult {
        per_conn: (after as f64 - before as f64) * 1024.0 / c as f64,
        before_kib: before as f64,
        after_kib: after as f64,
        open_rate: c as f64 / open_secs.max(1e-9),
        client_per_conn: (client_after as f64 - client_before as f64) * 1024.0 / c as f64,
    })
}

async fn open(gw: &Gw, gate: bool, ip: Option<std::net::IpAddr>) -> Result<Held> {
    let config = gw.client_config(ip);
    Ok(if gate {
        Held::Gate(Box::new(gw.session(ip).await?.connect(&config).await?))
    } else {
        Held::Raw(RawSocket::open_raw_path(&config, "/raw-echo").await?)
    })
}
