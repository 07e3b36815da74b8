//! `login`: SCRAM-SHA-256-PLUS logins per second and server CPU per login.
//!
//! Each login is what the client does: a new TCP connection, `GET
//! /auth/key`, the first `PUT /auth/session` and the second — sealed
//! (docs/protocol.md §4.1) where the gateway speaks it; a `--before-bin`
//! build from before the sealed login gets the clear v1 form it speaks
//! (`crate::clear_login`), found out by the first login. The load
//! generator caches `SaltedPassword` (as docs/protocol.md §4 allows), so it only pays
//! HMACs; the server never runs PBKDF2 at login (it stores the verifier).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use hdrhistogram::Histogram;

use super::{per_core, quantile_us, timing};
use crate::BenchArgs;
use crate::clear_login::LoginForm;
use crate::gateway::{BEFORE, Env, Gw, Transport};
use crate::load::{self, Shared};
use crate::report::{Goal, Row, ScenarioResult, Stat, TargetCheck, fmt_num};

const LOGIN: &str = "login over http:// (TCP + GET /auth/key + 2× PUT /auth/session)";
const LOGIN_TLS: &str = "login over https://";
const PER_CORE: &str = "per server core /s";

pub(crate) async fn run(env: &Env, args: &BenchArgs) -> Result<ScenarioResult> {
    let c = args
        .connections
        .unwrap_or(if args.smoke { 2 } else { 8 })
        .max(1);
    let t = timing(args, 5.0, 1);
    let mut result =
        ScenarioResult::new("login", "SCRAM logins, concurrent clients in closed loops");
    result.setting("concurrent clients", c);
    result.setting("measured seconds per run", t.duration.as_secs_f64());
    result.setting("runs per variant", t.repeat);
    result.setting(
        "PBKDF2 iterations",
        "4096 (client-side, cached after the first login)",
    );
    // (name, transport, on the --before-bin build)
    let mut variants = vec![
        (LOGIN.to_owned(), Transport::Plain, false),
        (LOGIN_TLS.to_owned(), Transport::Tls, false),
    ];
    if env.has_before() {
        variants.push((format!("{LOGIN}{BEFORE}"), Transport::Plain, true));
    }
    let mut runs: Vec<Vec<(f64, f64, f64, f64)>> = vec![Vec::new(); variants.len()];
    for rep in 0..t.repeat {
        for (i, (name, transport, before)) in variants.iter().enumerate() {
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
            // The first login pays PBKDF2 once; the measured ones hit the
            // cache. It also finds out which login the gateway speaks.
            gw.login_any().await?;
            if rep == 0 {
                let form = match gw.login_form() {
                    Some(LoginForm::Clear) => {
                        "the clear v1 login (a build from before docs/protocol.md §4.1, which refuses the sealed one; the bench's own clear client)"
                    }
                    _ => {
                        "the client's login, sealed (docs/protocol.md §4.1; wsgate_client::login_cached)"
                    }
                };
                result.notes.push(format!("{name}: {form}"));
            }
            let shared = Shared::default();
            let tasks: Vec<_> = (0..c)
                .map(|_| tokio::spawn(login_loop(gw.clone(), shared.clone())))
                .collect();
            let label = format!("login {name} {}/{}", rep + 1, t.repeat);
            let window = load::measure(
                &label,
                "logins/s",
                &shared,
                t.warmup,
                t.duration,
                gw.cpu,
                env.self_cpu(),
            )
            .await;
            let hist = load::join_loops(&label, "client", tasks).await?;
            runs[i].push((
                window.rate(),
                quantile_us(&hist, 0.5),
                quantile_us(&hist, 0.99),
                window.server_us_per_op().unwrap_or(f64::NAN),
            ));
        }
    }
    for (i, (name, _, _)) in variants.iter().enumerate() {
        if runs[i].is_empty() {
            continue;
        }
        let s = |f: fn(&(f64, f64, f64, f64)) -> f64| {
            Stat::from_samples(runs[i].iter().map(f).collect::<Vec<_>>())
        };
        let cpu = s(|r| r.3);
        let per_core = per_core(&cpu);
        let mut row = Row::new(name.clone());
        row.stat("logins/s", s(|r| r.0), true)
            .stat("p50 µs", s(|r| r.1), false)
            .stat("p99 µs", s(|r| r.2), false)
            .stat("server CPU µs/login", cpu.clone(), true)
            .stat(PER_CORE, per_core, false);
        if let Some(j) = variants
            .iter()
            .position(|v| v.0 == format!("{name}{BEFORE}"))
            .filter(|j| !runs[*j].is_empty())
        {
            let before = Stat::from_samples(runs[j].iter().map(|r| r.3).collect::<Vec<_>>());
            row.stat("CPU ÷ before", cpu.ratio_to(&before), false);
        }
        result.rows.push(row);
    }
    let capacity = result.row(LOGIN).and_then(|r| r.get(PER_CORE)).cloned();
    result.targets.push(TargetCheck::judged_value(
        "≥ 20k logins/s per server core",
        capacity.as_ref(),
        Goal::AtLeast(20_000.0),
        !args.smoke,
        |c| format!("{}/s per core", fmt_num(c)),
    ));
    result.notes.push(
        "per server core /s = 1 / server CPU per login; logins/s is what this single-core load generator reached".into(),
    );
    Ok(result)
}

async fn login_loop(gw: Arc<Gw>, shared: Shared) -> (Histogram<u64>, Result<()>) {
    let mut hist = load::histogram();
    while !shared.stopped() {
        let t0 = Instant::now();
        if let Err(e) = gw.login_any().await {
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
