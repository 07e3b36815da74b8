//! `connect`: a client from nothing to its first sensitive reply, against
//! the paths users would pick instead, in the same run. Every connect uses
//! new TCP connections, as a browser makes them:
//!
//! * **wsgate**: one connection for `GET /auth/key` and the sealed login
//!   (two `PUT /auth/session`, docs/protocol.md §4.1), a new one for the
//!   `ws://` upgrade, HELLO → KEY_INIT → KEY_ACK and one `sys.echo` request
//!   sent encrypted (ENC);
//! * **(a) password over HTTPS**: TLS 1.3, `POST /login` with the password,
//!   checked on the server against a stored PBKDF2-HMAC-SHA-256 hash at the
//!   same iteration count (as web frameworks store passwords), a session
//!   cookie; a new TLS connection for the `wss://` upgrade with that
//!   cookie, and one echo request;
//! * **(b) session cookie over HTTPS**: the same with a cookie instead of
//!   the password (a returning user: no hash check).
//!
//! The baselines run on the bench's own server (`crate::baseline_login`),
//! not on the gateway. The TLS client starts every connect with an empty
//! session cache, so the first handshake is a full one and the second
//! resumes, as a browser's would; a third baseline row shows (b) with no
//! resumption. The wsgate user and the baseline's stored hash have the same
//! PBKDF2 iteration count (`--iterations`, default 600 000, the default for
//! new users). wsgate's client stretches the password (SCRAM), so its
//! server never runs PBKDF2; the load generator caches `SaltedPassword`
//! (`wsgate_client::login_cached`, as the protocol allows) so that one
//! client core is not the limit — what PBKDF2 costs a client is reported
//! once, from the first login.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow};
use hdrhistogram::Histogram;

use super::{per_core, quantile_us, timing};
use crate::BenchArgs;
use crate::baseline_login::{Credential, Target};
use crate::gateway::{Env, Gw, Transport};
use crate::load::{self, Shared};
use crate::report::{Goal, Row, ScenarioResult, Stat, TargetCheck, fmt_num};

/// PBKDF2 iterations of both users unless `--iterations` says otherwise
/// (the default for new wsgate users, docs/protocol.md §4).
pub(crate) const DEFAULT_ITERATIONS: u32 = 600_000;

const WSGATE: &str = "wsgate ws:// (key fetch + sealed login + upgrade + keys + 1 ENC request)";
const PASSWORD: &str = "(a) TLS 1.3, password POST (server PBKDF2) + wss:// upgrade + 1 request";
const COOKIE: &str = "(b) TLS 1.3, session cookie + wss:// upgrade + 1 request";
const COOKIE_NO_RESUME: &str = "(b') as (b), no TLS session resumption";

const CPU: &str = "server CPU µs/connect";
const PER_CORE: &str = "per server core /s";
const VS_A: &str = "CPU ÷ (a)";
const VS_B: &str = "CPU ÷ (b)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Wsgate,
    Password,
    Cookie { resume: bool },
}

#[derive(Debug, Clone, Copy)]
struct RunResult {
    rate: f64,
    p50: f64,
    p99: f64,
    server_us: f64,
    client_us: f64,
}

/// What one connect talks to.
#[derive(Clone)]
enum Server {
    Wsgate(Arc<Gw>),
    Baseline(Arc<Target>),
}

pub(crate) async fn run(env: &Env, args: &BenchArgs) -> Result<ScenarioResult> {
    let c = args
        .connections
        .unwrap_or(if args.smoke { 2 } else { 8 })
        .max(1);
    let t = timing(args, 4.0, 1);
    let iterations = args
        .iterations
        .unwrap_or(if args.smoke { 4096 } else { DEFAULT_ITERATIONS });
    let payload = vec![0x5a; args.payload];
    let mut result = ScenarioResult::new(
        "connect",
        "a client from nothing to its first sensitive reply, new TCP connections as a browser makes them; concurrent clients in closed loops",
    );
    result.setting("concurrent clients", c);
    result.setting(
        "concurrent clients, (a)",
        "1 (each connect costs the server a PBKDF2; fewer in flight, less error at the window's edges)",
    );
    result.setting("measured seconds per run", t.duration.as_secs_f64());
    result.setting(
        "measured seconds per run, (a)",
        (t.duration * 3).as_secs_f64(),
    );
    result.setting("runs per variant", t.repeat);
    result.setting("request payload bytes", args.payload);
    result.setting(
        "PBKDF2-HMAC-SHA-256 iterations (wsgate user and baseline hash)",
        iterations,
    );
    result.setting(
        "TLS",
        "1.3, rustls (ring), ECDSA P-256 self-signed, X25519; a new client session cache per connect (the second connection resumes)",
    );

    // The servers: a gateway of its own (its user at `iterations`) and the
    // bench's baseline server.
    let gw = Arc::new(if env.owns_gateways() {
        env.fresh_with(Transport::Plain, false, iterations).await?
    } else {
        return Err(anyhow!(
            "connect starts its own gateway and baseline server (its user needs {iterations} PBKDF2 iterations): run it without --addr"
        ));
    });
    let bin = env
        .own_bin()
        .ok_or_else(|| anyhow!("connect needs the bench to start its servers"))?
        .to_path_buf();
    let (pinned, ticks) = (env.pinned(), env.ticks());
    let target =
        tokio::task::spawn_blocking(move || Target::start(&bin, iterations, pinned, ticks))
            .await
            .map_err(|e| anyhow!("baseline start-up task failed: {e}"))??;
    let target = Arc::new(target);

    // The first wsgate login stretches the password on the client: what a
    // browser pays once (and per login unless it caches SaltedPassword).
    let t0 = Instant::now();
    gw.login(None).await?;
    result.setting(
        "wsgate client: first login incl. its PBKDF2 (load generator, ms)",
        format!("{:.0}", t0.elapsed().as_secs_f64() * 1e3),
    );
    let t0 = Instant::now();
    target.login(&target.browser(true)).await?;
    result.setting(
        "(a) one password login incl. the server's PBKDF2 (wall clock, ms)",
        format!("{:.0}", t0.elapsed().as_secs_f64() * 1e3),
    );
    if env.has_before() {
        result.notes.push(
            "no [before] rows: a build from before the sealed login speaks only the clear v1 login, and the client gives no session for it".into(),
        );
    }

    let variants = [
        (WSGATE, Kind::Wsgate),
        (PASSWORD, Kind::Password),
        (COOKIE, Kind::Cookie { resume: true }),
        (COOKIE_NO_RESUME, Kind::Cookie { resume: false }),
    ];
    let mut runs: Vec<Vec<RunResult>> = vec![Vec::new(); variants.len()];
    for rep in 0..t.repeat {
        for (i, (name, kind)) in variants.iter().enumerate() {
            if !args.selected(name) {
                continue;
            }
            let (server, cpu) = match kind {
                Kind::Wsgate => (Server::Wsgate(gw.clone()), gw.cpu),
                _ => (
                    Server::Baseline(target.clone()),
                    target.gw.as_ref().and_then(|g| g.cpu),
                ),
            };
            let (clients, duration) = match kind {
                Kind::Password => (1, t.duration * 3),
                _ => (c, t.duration),
            };
            let shared = Shared::default();
            let mut tasks = Vec::with_capacity(clients);
            for _ in 0..clients {
                let cookie = match (kind, &server) {
                    (Kind::Cookie { .. }, Server::Baseline(t)) => {
                        Some(t.login(&t.browser(true)).await?)
                    }
                    _ => None,
                };
                tasks.push(tokio::spawn(connect_loop(
                    server.clone(),
                    *kind,
                    cookie,
                    payload.clone(),
                    shared.clone(),
                )));
            }
            let label = format!("connect {name} {}/{}", rep + 1, t.repeat);
            let window = load::measure(
                &label,
                "connects/s",
                &shared,
                t.warmup,
                duration,
                cpu,
                env.self_cpu(),
            )
            .await;
            let hist = load::join_loops(&label, "client", tasks)
                .await
                .with_context(|| format!("connect, {name}"))?;
            runs[i].push(RunResult {
                rate: window.rate(),
                p50: quantile_us(&hist, 0.5),
                p99: quantile_us(&hist, 0.99),
                server_us: window.server_us_per_op().unwrap_or(f64::NAN),
                client_us: window.client_us_per_op().unwrap_or(f64::NAN),
            });
        }
    }

    let stat = |i: usize, f: fn(&RunResult) -> f64| {
        Stat::from_samples(runs[i].iter().map(f).collect::<Vec<_>>())
    };
    let cpu_of = |i: usize| (!runs[i].is_empty()).then(|| stat(i, |r| r.server_us));
    let (cpu_a, cpu_b) = (cpu_of(1), cpu_of(2));
    for (i, (name, _)) in variants.iter().enumerate() {
        let Some(cpu) = cpu_of(i) else { continue };
        let mut row = Row::new(*name);
        row.stat("connects/s", stat(i, |r| r.rate), true)
            .stat("p50 µs", stat(i, |r| r.p50), false)
            .stat("p99 µs", stat(i, |r| r.p99), false)
            .stat(CPU, cpu.clone(), true)
            .stat(PER_CORE, per_core(&cpu), false)
            .stat(
                "load generator CPU µs/connect",
                stat(i, |r| r.client_us),
                false,
            );
        if i != 1
            && let Some(a) = &cpu_a
        {
            row.stat(VS_A, cpu.ratio_to(a), false);
        }
        if i != 2
            && let Some(b) = &cpu_b
        {
            row.stat(VS_B, cpu.ratio_to(b), i == 0);
        }
        result.rows.push(row);
    }

    // Judged run by run (met, missed or within noise), as the echo targets.
    let vs_b = result.row(WSGATE).and_then(|r| r.get(VS_B)).cloned();
    let wsgate_cpu = result
        .row(WSGATE)
        .and_then(|r| r.get(CPU))
        .map(|s| s.median);
    let note = format!(
        "; {} µs vs {} µs",
        fmt_num(wsgate_cpu.unwrap_or(f64::NAN)),
        fmt_num(cpu_b.as_ref().map_or(f64::NAN, |b| b.median))
    );
    result.targets.push(TargetCheck::judged(
        "server CPU per connect, wsgate ≤ 0.7× (b) TLS 1.3 + session cookie",
        vs_b.as_ref(),
        Goal::AtMost(0.7),
        !args.smoke,
        &note,
    ));
    result.notes.push(
        "÷ (a): mostly who stretches the password — (a)'s server runs PBKDF2 for every login, wsgate's client does it (SCRAM) and its server checks a proof with a few HMACs; ÷ (b): the transport and login machinery alone, neither side hashing a password".into(),
    );
    result.notes.push(
        "the wsgate load generator caches SaltedPassword after the first login (wsgate_client::login_cached), so its client does no PBKDF2 per connect; the server's work is the same either way".into(),
    );
    Ok(result)
}

async fn one_connect(
    server: &Server,
    kind: Kind,
    cookie: Option<&str>,
    payload: &[u8],
) -> Result<()> {
    match (server, kind) {
        (Server::Wsgate(gw), _) => {
            let session = gw.login(None).await?;
            let mut conn = session
                .connect(&gw.config)
                .await
                .with_context(|| format!("opening /ws at {}", gw.config.addr))?;
            let reply = conn
                .request("sys.echo", payload, true)
                .await
                .with_context(|| format!("the ENC sys.echo request at {}", gw.config.addr))?;
            if reply != payload {
                return Err(anyhow!(
                    "sys.echo at {} answered {} bytes, not the echo",
                    gw.config.addr,
                    reply.len()
                ));
            }
            Ok(())
        }
        (Server::Baseline(t), Kind::Password) => {
            t.connect(&Credential::Password, true, payload).await
        }
        (Server::Baseline(t), Kind::Cookie { resume }) => {
            let cookie = cookie.ok_or_else(|| anyhow!("no session cookie for (b)"))?;
            t.connect(&Credential::Cookie(cookie.to_owned()), resume, payload)
                .await
        }
        (Server::Baseline(_), Kind::Wsgate) => Err(anyhow!("wsgate connect against the baseline")),
    }
}

async fn connect_loop(
    server: Server,
    kind: Kind,
    cookie: Option<String>,
    payload: Vec<u8>,
    shared: Shared,
) -> (Histogram<u64>, Result<()>) {
    let mut hist = load::histogram();
    while !shared.stopped() {
        let t0 = Instant::now();
        if let Err(e) = one_connect(&server, kind, cookie.as_deref(), &payload).await {
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
