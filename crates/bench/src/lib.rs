//! `wsgate bench`: the load generator behind `docs/benchmarks.md`.
//!
//! Every scenario runs its baselines in the same run, on the same machine,
//! with the same load generator (the Rust client, `wsgate_client`), and
//! reports each result as a ratio to its baseline:
//!
//! | scenario | what | baselines |
//! |---|---|---|
//! | `echo` | N connections, closed loop, one request in flight each → req/s, p50/p99, server CPU µs per request | raw WebSocket echo (`/raw-echo`), the gateway over `wss://` with every frame tagged, a popular peer: a Node.js echo server on the npm `ws` package (`js/bench/ws-echo-peer.mjs`) |
//! | `keys` | connect + HELLO → KEY_INIT → KEY_ACK with an existing session (a reconnect) → per second, server CPU per connection | a plain WebSocket upgrade; the same upgrade behind a TLS 1.3 handshake |
//! | `login` | SCRAM login (GET /auth/key + two PUT /auth/session) → per second, server CPU per login | — |
//! | `idle` | C authenticated connections held → server RSS per connection | raw WebSocket connections; `wss://` connections |
//! | `fanout` | S subscribers on one channel, publishes at a rate → deliveries/s, p99 publish-to-delivery, server CPU per delivery | the same load on a channel without history (EVENT) and with history (EVENT_AT, protocol.md §6.5) |
//! | `recovery` | C clients reconnect at once and SUBSCRIBE with `since`, each replaying M events → replays/s, time to full recovery p50/p99, server CPU per replayed event; fails unless every client recovers exactly its M events in order | the same C clients receiving M events live |
//! | `proxy` | the `echo` load through nginx → nginx + gateway CPU µs per request | `wss://` terminated at nginx and re-encrypted to the gateway |
//! | `fleet` | N gateway processes on one Redis, M load processes: C authenticated idle connections held (default 100 000), then events fanned out to all → held per node, RSS per connection per node, deliveries/s, p50/p99 | — (goals of issue 16) |
//! | `connect` | from nothing to the first sensitive reply: key fetch, sealed login, upgrade, keys, one ENC request → server CPU per connect | the bench's own TLS 1.3 server: (a) password POST checked against PBKDF2, (b) session cookie; then a `wss://` upgrade and one request |
//!
//! By default the bench starts its own gateways (the `wsgate` binary it runs
//! from, pinned with `taskset -c 0` while the load generator runs on core 1),
//! so it can read the server's CPU time (`/proc/<pid>/stat`) and RSS
//! (`/proc/<pid>/status`). With `--addr` it loads a running gateway instead.
//! The Node.js peer of `echo` is started the same way (`taskset -c 0 node
//! js/bench/ws-echo-peer.mjs`); it needs `node` and `cd js && npm ci`, and
//! its row is skipped with a note saying so when they are missing.
//!
//! Results are printed as Markdown, and written as JSON (`--json`), Markdown
//! (`--markdown`) and SVG bar charts (`--svg-dir`); `wsgate bench plot
//! --from results.json --svg-dir DIR` redraws the charts from a JSON file.

#![forbid(unsafe_code)]

mod baseline_login;
mod clear_login;
mod gateway;
mod load;
mod peer;
mod procfs;
pub mod report;
mod scenarios;
mod svg;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};

pub use crate::report::Report;

/// Which scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Closed-loop request/response echo; baselines: raw WebSocket, a
    /// Node.js `ws` echo server (`js/bench/ws-echo-peer.mjs`), `wss://`.
    Echo,
    /// Channel fan-out: subscribers and HTTP publishes, on a channel
    /// without history and on one with history.
    Fanout,
    /// Channel recovery: clients reconnecting at once, each replaying the
    /// events it missed (SUBSCRIBE with `since`).
    Recovery,
    /// Idle authenticated connections: server memory per connection.
    Idle,
    /// SCRAM logins per second.
    Login,
    /// Key establishments (reconnects with an existing session) per second.
    Keys,
    /// Echo through nginx: plain `ws://` passed through versus `wss://`
    /// terminated and re-encrypted; CPU of nginx plus the gateway.
    Proxy,
    /// A client from nothing to its first sensitive reply (key fetch,
    /// sealed login, upgrade, keys, one ENC request) against TLS 1.3 with
    /// (a) a password checked against PBKDF2 and (b) a session cookie.
    Connect,
    /// A fleet (issue 16): N gateway processes on one Redis and M load
    /// processes holding C authenticated, key-established idle connections
    /// (default 100 000), then events fanned out to all of them. Not part
    /// of `all`.
    Fleet,
    /// Every scenario above but `fleet`, in that order.
    All,
    /// Redraw the SVG plots (and Markdown) from a JSON result file (`--from`).
    Plot,
    /// The bench's own baseline server for `connect` (started by the bench
    /// as a child process, with --baseline-dir).
    #[value(hide = true)]
    BaselineLoginServer,
    /// A load process of `fleet` (started by the bench, its job on stdin).
    #[value(hide = true)]
    FleetWorker,
}

impl Scenario {
    fn expand(self) -> Vec<Scenario> {
        match self {
            Self::All => vec![
                Self::Echo,
                Self::Keys,
                Self::Login,
                Self::Idle,
                Self::Fanout,
                Self::Recovery,
                Self::Proxy,
                Self::Connect,
            ],
            other => vec![other],
        }
    }
}

/// `wsgate bench` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Load a running gateway (`http://HOST:PORT` or `HOST:PORT`) instead of
    /// starting one; server CPU and memory need --server-pid, and the
    /// baselines need `[testing] raw_echo = true` and --tls-addr/--tls-ca.
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<String>,
    /// With --addr: the gateway's process id, to read its CPU time and RSS.
    #[arg(long, value_name = "PID", requires = "addr")]
    pub server_pid: Option<u32>,
    /// With --addr: the same gateway's `https://HOST:PORT` (the wss:// baseline).
    #[arg(long, value_name = "ADDR", requires = "addr")]
    pub tls_addr: Option<String>,
    /// With --tls-addr: PEM file of the certificate to trust.
    #[arg(long, value_name = "FILE", requires = "tls_addr")]
    pub tls_ca: Option<PathBuf>,
    /// With --addr: user to log in as.
    #[arg(long, default_value = "bench")]
    pub user: String,
    /// With --addr: that user's password.
    #[arg(long, env = "WSGATE_BENCH_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// With --addr: API key for `POST /api/publish` (fanout).
    #[arg(long, env = "WSGATE_BENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The scenario's main count: echo connections [50], idle connections
    /// [10000], fanout subscribers [1000], recovering clients [1000],
    /// login/keys concurrent clients [8], fleet connections in all [100000;
    /// --smoke 600].
    #[arg(long, value_name = "N")]
    pub connections: Option<usize>,
    /// Measured seconds per run, after a warm-up [echo 10, login/keys 5, fanout 10].
    #[arg(long, value_name = "S")]
    pub duration: Option<f64>,
    /// Request payload bytes (echo).
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    pub payload: usize,
    /// Share of echo requests sent encrypted (ENC) in the mixed variant.
    #[arg(long, value_name = "0..1", default_value_t = 0.1)]
    pub sensitive_share: f64,
    /// Fanout: publishes per second.
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,
    /// Recovery: events each client misses while away and replays [100].
    /// Fleet: fan-out rounds (each of --publishers events), each timed on
    /// its own [5; --smoke 2].
    #[arg(long, value_name = "M")]
    pub events: Option<usize>,
    /// Fanout: publisher connections sharing --rate, firing together (N
    /// upstream apps publishing at the same instants: bursts of N events).
    /// Fleet: events per round, published at the same instant (one
    /// publisher each, spread over the nodes).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub publishers: usize,
    /// Run only the variants whose name contains one of these
    /// (comma-separated, e.g. `--only raw,tagged`); for profiling.
    #[arg(long, value_name = "TEXT", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Runs of every variant, interleaved; tables show the median and the
    /// run-to-run range (min–max) of every value, and a target is `met` or
    /// `missed` only when every run agrees (else `within noise`)
    /// [echo 5, the others 1; --smoke 1].
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub repeat: Option<u64>,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the results as Markdown tables.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Write SVG bar charts into this directory.
    #[arg(long, value_name = "DIR")]
    pub svg_dir: Option<PathBuf>,
    /// With `plot`: the JSON result file to draw from.
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Tiny, quick runs that only prove every scenario works (CI).
    #[arg(long)]
    pub smoke: bool,
    /// Do not pin the gateway (core 0) and the load generator (core 1).
    #[arg(long)]
    pub no_pin: bool,
    /// Echo: the repository's `js/` directory, holding the Node.js peer
    /// (`bench/ws-echo-peer.mjs`) and its `ws` module (`npm ci` there)
    /// [default: the first `js/` above the current directory or this
    /// executable]. Without node or the module the row is skipped.
    #[arg(long, value_name = "DIR")]
    pub node_peer: Option<PathBuf>,
    /// The `wsgate` binary to start gateways with [default: this executable].
    #[arg(long, value_name = "FILE")]
    pub wsgate_bin: Option<PathBuf>,
    /// Also run every wsgate variant on gateways started from this binary
    /// (e.g. a build of the previous commit), interleaved in the same run:
    /// its rows are marked `[before]`, and this build's rows get a ratio to
    /// them. Not with --addr.
    #[arg(long, value_name = "FILE", conflicts_with = "addr")]
    pub before_bin: Option<PathBuf>,
    /// Connect: PBKDF2 iterations of the wsgate user and of the baseline's
    /// stored hash [600000; --smoke: 4096].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(4096..=10_000_000))]
    pub iterations: Option<u32>,
    /// Fleet: gateway processes, each on its own port [enough for ≤ 15 000
    /// connections each, at least 2]. A process may hold `ulimit -n` file
    /// descriptors, so each gateway's share must stay below it.
    #[arg(long, value_name = "N")]
    pub gateways: Option<usize>,
    /// Fleet: load processes (this binary again), each opening its share
    /// of the connections from its own loopback addresses [enough for
    /// ≤ 17 000 connections each, at least 2; at most 254].
    #[arg(long, value_name = "M")]
    pub load_processes: Option<usize>,
    /// Fleet: the state store every gateway is given, unchanged:
    /// `redis://HOST:PORT`, `rediss://…` or a Redis Cluster
    /// `redis+cluster://H:P,H:P` [default: a private `redis-server` the
    /// bench starts and stops].
    #[arg(long, value_name = "URL")]
    pub state: Option<String>,
    /// Fleet: connections opened per second, all load processes together
    /// [3000; --smoke 2000].
    #[arg(long, value_name = "N")]
    pub open_rate: Option<f64>,
    /// With the hidden `baseline-login-server`: the directory the bench
    /// prepared (certificate, key, stored user).
    #[arg(long, value_name = "DIR", hide = true)]
    pub baseline_dir: Option<PathBuf>,
}

/// Runs `wsgate bench`: the scenarios, then the reports. Returns a failure
/// exit code if any scenario failed (speed never fails a run).
pub fn run(args: BenchArgs) -> Result<ExitCode> {
    if args.scenario == Scenario::Plot {
        return plot(&args);
    }
    if args.scenario == Scenario::FleetWorker {
        return scenarios::fleet::worker_main();
    }
    if args.scenario == Scenario::BaselineLoginServer {
        return baseline_login::serve_main(baseline_login::baseline_dir(
            args.baseline_dir.as_ref(),
        )?);
    }
    if !(0.0..=1.0).contains(&args.sensitive_share) {
        bail!("--sensitive-share must be between 0 and 1");
    }
    // The load generator gets a thread (and a runtime) of its own, so this
    // works whether or not the caller is inside a tokio runtime.
    let worker = std::thread::Builder::new()
        .name("wsgate-bench".into())
        .spawn(move || -> Result<ExitCode> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the load generator's runtime")?;
            runtime.block_on(run_scenarios(args))
        })
        .context("starting the load generator thread")?;
    match worker.join() {
        Ok(result) => result,
        Err(_) => bail!("the load generator thread panicked"),
    }
}

async fn run_scenarios(args: BenchArgs) -> Result<ExitCode> {
    let env = gateway::Env::prepare(&args)?;
    let mut report = Report::new(&args, env.machine(), env.pinned());
    let mut failed = 0usize;
    let mut passed = 0usize;
    for scenario in args.scenario.expand() {
        eprintln!("== {scenario:?} ==");
        let result = match scenario {
            Scenario::Echo => scenarios::echo::run(&env, &args).await,
            Scenario::Keys => scenarios::keys::run(&env, &args).await,
            Scenario::Login => scenarios::login::run(&env, &args).await,
            Scenario::Idle => scenarios::idle::run(&env, &args).await,
            Scenario::Fanout => scenarios::fanout::run(&env, &args).await,
            Scenario::Recovery => scenarios::recovery::run(&env, &args).await,
            Scenario::Proxy => scenarios::proxy::run(&env, &args).await,
            Scenario::Connect => scenarios::connect::run(&env, &args).await,
            Scenario::Fleet => scenarios::fleet::run(&env, &args).await,
            Scenario::All
            | Scenario::Plot
            | Scenario::BaselineLoginServer
            | Scenario::FleetWorker => continue,
        };
        match result {
            Ok(r) => {
                passed += 1;
                report.scenarios.push(r);
            }
            Err(e) => {
                failed += 1;
                eprintln!("scenario {scenario:?} failed: {e:#}");
                report
                    .failures
                    .push(format!("{}: {e:#}", format!("{scenario:?}").to_lowercase()));
            }
        }
    }
    env.shutdown().await;
    write_outputs(&report, &args)?;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(report.markdown().as_bytes());
    let _ = writeln!(out, "\n{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

impl BenchArgs {
    /// Runs per variant: `--repeat`, else the scenario's default (1 for
    /// `--smoke`).
    pub(crate) fn repeat_or(&self, default: usize) -> usize {
        match self.repeat {
            Some(k) => usize::try_from(k).unwrap_or(1).max(1),
            None if self.smoke => 1,
            None => default,
        }
    }

    /// Whether the variant called `name` is selected by `--only`.
    pub(crate) fn selected(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| name.contains(o.as_str()))
    }
}

fn write_outputs(report: &Report, args: &BenchArgs) -> Result<()> {
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("writing --json {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, report.markdown())
            .with_context(|| format!("writing --markdown {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(dir) = &args.svg_dir {
        for file in svg::write_all(report, dir)? {
            eprintln!("wrote {}", file.display());
        }
    }
    Ok(())
}

fn plot(args: &BenchArgs) -> Result<ExitCode> {
    let Some(from) = &args.from else {
        bail!("`wsgate bench plot` needs --from results.json (written by --json)");
    };
    let text =
        std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    let report: Report = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a `wsgate bench --json` file", from.display()))?;
    if args.svg_dir.is_none() && args.markdown.is_none() {
        bail!("`wsgate bench plot` needs --svg-dir DIR and/or --markdown FILE");
    }
    write_outputs(
        &report,
        &BenchArgs {
            json: None,
            ..args.clone()
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
