//! The gateways under test: started by the bench (a `wsgate serve` child
//! process with a throw-away data directory, pinned to core 0) or given
//! with `--addr`. Also the run's environment: pinning, file limits, the
//! machine description.

use std::collections::HashMap;
use std::io::{BufRead as _, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use wsgate_client::{ClientConfig, SaltedPasswordCache, Session};

use crate::BenchArgs;
use crate::clear_login::{self, LoginForm, SaltCache};
use crate::procfs::{self, CpuMeter};
use crate::report::Machine;

/// The user the bench creates in its own gateways.
const BENCH_USER: &str = "bench";
/// The channel pattern the bench configures (fanout).
pub(crate) const CHANNEL_PATTERN: &str = "bench.*";
/// A channel pattern with history (protocol.md §6.5): fanout's "history
/// on" variant.
pub(crate) const HISTORY_PATTERN: &str = "benchhist.*";
/// Events `HISTORY_PATTERN` keeps per channel.
pub(crate) const HISTORY_KEEP: usize = 1_000;
/// A channel pattern with a long history: the `recovery` scenario.
pub(crate) const RECOVERY_PATTERN: &str = "benchrec.*";
/// Events `RECOVERY_PATTERN` keeps per channel, and the bench gateway's
/// `[limits] max_replay`: the most events one recovering client may replay.
pub(crate) const RECOVERY_KEEP: usize = 10_000;
/// PBKDF2 iterations of the bench user (the protocol's minimum: logins/s
/// measures the server, and the server never runs PBKDF2 at login).
pub(crate) const BENCH_ITERATIONS: u32 = 4096;

/// Plain `ws://` or TLS `wss://`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Transport {
    /// `http://` + `ws://`.
    Plain,
    /// `https://` + `wss://` (rustls, TLS 1.3, ECDSA P-256 certificate).
    Tls,
}

/// One gateway under test.
pub(crate) struct Gw {
    /// How the client reaches it.
    pub(crate) config: ClientConfig,
    /// Its CPU meter, when its process id is known.
    pub(crate) cpu: Option<CpuMeter>,
    /// API key for `/api/publish`, when channels are configured.
    pub(crate) api_key: Option<String>,
    /// Why fanout cannot run here, if it cannot.
    pub(crate) channels_unavailable: Option<String>,
    /// Why the channels with history (`HISTORY_PATTERN`,
    /// `RECOVERY_PATTERN`) are missing here, if they are.
    pub(crate) history_unavailable: Option<String>,
    user: String,
    password: String,
    sessions: tokio::sync::Mutex<HashMap<Option<IpAddr>, Session>>,
    cache: SaltedPasswordCache,
    /// Which login the gateway speaks, once a login has found out.
    form: std::sync::OnceLock<LoginForm>,
    /// `SaltedPassword` for the clear v1 login of older builds.
    clear_cache: SaltCache,
    process: std::sync::Mutex<Option<Child>>,
    /// Keeps the data directory until the gateway is gone.
    _dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Gw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gw")
            .field("addr", &self.config.addr)
            .finish_non_exhaustive()
    }
}

impl Gw {
    /// A client configuration, optionally bound to a source address.
    pub(crate) fn client_config(&self, local: Option<IpAddr>) -> ClientConfig {
        let mut c = self.config.clone();
        if let Some(ip) = local {
            c = c.local_addr(ip);
        }
        c
    }

    /// A session for connections from `local` (one login per source IP,
    /// since sessions are bound to the login's IP), made once and reused.
    pub(crate) async fn session(&self, local: Option<IpAddr>) -> Result<Session> {
        let mut sessions = self.sessions.lock().await;
        if let Some(s) = sessions.get(&local) {
            return Ok(s.clone());
        }
        let session = self.login(local).await?;
        sessions.insert(local, session.clone());
        Ok(session)
    }

    /// A fresh login (PBKDF2 is cached after the first), with the client's
    /// (sealed) login: a gateway from before the sealed login refuses it.
    pub(crate) async fn login(&self, local: Option<IpAddr>) -> Result<Session> {
        let outcome = wsgate_client::login_cached(
            &self.client_config(local),
            &self.user,
            &self.password,
            &self.cache,
        )
        .await;
        match outcome {
            Ok(session) => Ok(session),
            Err(e) if LoginForm::clear_wanted(&e) => Err(anyhow!(
                "logging in as {:?} at {}: the gateway refused the sealed login ({e}); \
                 it is a build from before docs/protocol.md §4.1 and speaks only the clear \
                 v1 login, which gives the bench no session for connections",
                self.user,
                self.config.addr
            )),
            Err(e) => Err(anyhow::Error::new(e).context(format!(
                "logging in as {:?} at {}",
                self.user, self.config.addr
            ))),
        }
    }

    /// One login in whichever form the gateway speaks (found out by the
    /// first call: the client's sealed login, else the clear v1 login of
    /// older builds, see [`clear_login`]); for the `login` scenario, which
    /// needs no session afterwards.
    pub(crate) async fn login_any(&self) -> Result<()> {
        match self.form.get() {
            Some(LoginForm::Clear) => self.login_clear().await,
            Some(LoginForm::Sealed) => self.login(None).await.map(drop),
            None => {
                let outcome = wsgate_client::login_cached(
                    &self.config,
                    &self.user,
                    &self.password,
                    &self.cache,
                )
                .await;
                match outcome {
                    Ok(_) => {
                        let _ = self.form.set(LoginForm::Sealed);
                        Ok(())
                    }
                    Err(e) if LoginForm::clear_wanted(&e) && !self.config.is_tls() => {
                        self.login_clear().await?;
                        let _ = self.form.set(LoginForm::Clear);
                        Ok(())
                    }
                    Err(e) => Err(anyhow::Error::new(e).context(format!(
                        "logging in as {:?} at {}",
                        self.user, self.config.addr
                    ))),
                }
            }
        }
    }

    async fn login_clear(&self) -> Result<()> {
        clear_login::login(
            self.config.addr,
            &self.user,
            &self.password,
            &self.clear_cache,
        )
        .await
        .map(drop)
        .with_context(|| {
            format!(
                "logging in as {:?} at {} (clear v1 login)",
                self.user, self.config.addr
            )
        })
    }

    /// Which login the gateway speaks, once [`login_any`](Self::login_any) ran.
    pub(crate) fn login_form(&self) -> Option<LoginForm> {
        self.form.get().copied()
    }

    /// The same gateway reached through a proxy at `config`, whose process
    /// `proxy_pid` counts in its CPU time.
    pub(crate) fn behind(&self, config: ClientConfig, proxy_pid: u32) -> Gw {
        Gw {
            config,
            cpu: self.cpu.map(|m| m.plus(proxy_pid)),
            api_key: self.api_key.clone(),
            channels_unavailable: self.channels_unavailable.clone(),
            history_unavailable: self.history_unavailable.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            sessions: tokio::sync::Mutex::new(HashMap::new()),
            cache: self.cache.clone(),
            form: std::sync::OnceLock::new(),
            clear_cache: self.clear_cache.clone(),
            process: std::sync::Mutex::new(None),
            _dir: None,
        }
    }

    /// A server that is not wsgate (e.g. the Node `ws` echo peer), started
    /// by the bench as `child`, reached at `config`: only its raw WebSocket
    /// paths are of use (no user, no login). Stopped like a gateway.
    pub(crate) fn foreign(config: ClientConfig, child: Child, ticks: f64) -> Gw {
        Gw {
            config,
            cpu: Some(CpuMeter::new(child.id(), ticks)),
            api_key: None,
            channels_unavailable: Some("not a wsgate gateway".to_owned()),
            history_unavailable: Some("not a wsgate gateway".to_owned()),
            user: String::new(),
            password: String::new(),
            sessions: tokio::sync::Mutex::new(HashMap::new()),
            cache: SaltedPasswordCache::default(),
            form: std::sync::OnceLock::new(),
            clear_cache: SaltCache::default(),
            process: std::sync::Mutex::new(Some(child)),
            _dir: None,
        }
    }

    /// The data directory of a gateway the bench started (`cert.pem` and
    /// `key.pem` there for a TLS one).
    pub(crate) fn dir(&self) -> Option<&Path> {
        self._dir.as_ref().map(|d| d.path())
    }

    /// The gateway's RSS in KiB, when its process id is known.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        self.cpu.and_then(|m| procfs::rss_kib(m.pid()).ok())
    }

    /// How the gateway's process ended, if the bench started it and it
    /// has ended.
    pub(crate) fn exit_status(&self) -> Option<std::process::ExitStatus> {
        let mut guard = self.process.lock().ok()?;
        guard.as_mut()?.try_wait().ok().flatten()
    }

    /// Stops a gateway the bench started (SIGTERM, then SIGKILL after 5 s).
    pub(crate) fn stop(&self) {
        let Ok(mut guard) = self.process.lock() else {
            return;
        };
        let Some(mut child) = guard.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        for _ in 0..50 {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Appended to the name of a variant run on the `--before-bin` gateway.
pub(crate) const BEFORE: &str = " [before]";

enum Mode {
    /// The bench starts gateways from this binary (and, with `--before-bin`,
    /// from that one too, for same-run before/after comparisons).
    Own {
        bin: PathBuf,
        before: Option<PathBuf>,
    },
    /// `--addr`: gateways someone else runs.
    External {
        plain: Arc<Gw>,
        tls: Option<Arc<Gw>>,
    },
}

/// The run's environment.
pub(crate) struct Env {
    mode: Mode,
    pinned: bool,
    ticks: f64,
    machine: Machine,
    shared: tokio::sync::Mutex<HashMap<(Transport, bool), Arc<Gw>>>,
    /// The smallest NOFILE limit in force for the bench and its gateways.
    pub(crate) nofile: u64,
}

impl Env {
    pub(crate) fn prepare(args: &BenchArgs) -> Result<Self> {
        let ticks = procfs::clock_ticks();
        let machine = procfs::machine();
        let nofile = raise_nofile();
        let mode = match &args.addr {
            Some(addr) => {
                let password = args.password.clone().ok_or_else(|| {
                    anyhow!("--addr needs the user's password: --password or WSGATE_BENCH_PASSWORD")
                })?;
                let cpu = args.server_pid.map(|pid| CpuMeter::new(pid, ticks));
                let plain = external(addr, None, cpu, &args.user, &password, args)?;
                let tls = match &args.tls_addr {
                    Some(tls_addr) => {
                        let ca = args
                            .tls_ca
                            .as_ref()
                            .ok_or_else(|| anyhow!("--tls-addr needs --tls-ca FILE"))?;
                        let pem = std::fs::read(ca)
                            .with_context(|| format!("reading --tls-ca {}", ca.display()))?;
                        Some(Arc::new(external(
                            tls_addr,
                            Some(&pem),
                            cpu,
                            &args.user,
                            &password,
                            args,
                        )?))
                    }
                    None => None,
                };
                Mode::External {
                    plain: Arc::new(plain),
                    tls,
                }
            }
            None => {
                let bin = match &args.wsgate_bin {
                    Some(b) => b.clone(),
                    None => std::env::current_exe().context("finding the wsgate binary")?,
                };
                Mode::Own {
                    bin,
                    before: args.before_bin.clone(),
                }
            }
        };
        // A fleet's many processes share the cores: none is pinned.
        let pinned = matches!(mode, Mode::Own { .. })
            && !args.no_pin
            && args.scenario != crate::Scenario::Fleet
            && machine.cpus >= 2
            && pin_self_to_core_1();
        Ok(Self {
            mode,
            pinned,
            ticks,
            machine,
            shared: tokio::sync::Mutex::new(HashMap::new()),
            nofile,
        })
    }

    pub(crate) fn machine(&self) -> Machine {
        self.machine.clone()
    }

    pub(crate) fn pinned(&self) -> bool {
        self.pinned
    }

    /// The binary the bench starts gateways (and its own baseline servers)
    /// from, unless it loads a gateway given with `--addr`.
    pub(crate) fn own_bin(&self) -> Option<&Path> {
        match &self.mode {
            Mode::Own { bin, .. } => Some(bin),
            Mode::External { .. } => None,
        }
    }

    /// Whether the bench starts its own gateways.
    pub(crate) fn owns_gateways(&self) -> bool {
        matches!(self.mode, Mode::Own { .. })
    }

    /// Clock ticks per second of `/proc/<pid>/stat` CPU times.
    pub(crate) fn ticks(&self) -> f64 {
        self.ticks
    }

    /// The load generator's own CPU meter.
    pub(crate) fn self_cpu(&self) -> CpuMeter {
        CpuMeter::new(std::process::id(), self.ticks)
    }

    /// Whether gateways of the `--before-bin` build run too.
    pub(crate) fn has_before(&self) -> bool {
        matches!(
            self.mode,
            Mode::Own {
                before: Some(_),
                ..
            }
        )
    }

    /// The shared gateway for `transport`, started on first use.
    pub(crate) async fn gateway(&self, transport: Transport) -> Result<Arc<Gw>> {
        self.gateway_of(transport, false).await
    }

    /// [`gateway_of`](Self::gateway_of) for one run of a variant: `Ok(Err(why))`
    /// when the variant cannot run here and is skipped (the `wss://` one
    /// against a gateway given with `--addr` but no usable `--tls-addr`).
    pub(crate) async fn gateway_for_run(
        &self,
        transport: Transport,
        before: bool,
    ) -> Result<std::result::Result<Arc<Gw>, String>> {
        match self.gateway_of(transport, before).await {
            Ok(gw) => Ok(Ok(gw)),
            Err(e) if transport == Transport::Tls && !self.owns_gateways() => {
                Ok(Err(format!("{e:#}")))
            }
            Err(e) => Err(e),
        }
    }

    /// The shared gateway for `transport` of this build, or (`before`) of
    /// the `--before-bin` build.
    pub(crate) async fn gateway_of(&self, transport: Transport, before: bool) -> Result<Arc<Gw>> {
        match &self.mode {
            Mode::External { plain, tls } => match transport {
                Transport::Plain => Ok(plain.clone()),
                Transport::Tls => tls
                    .clone()
                    .ok_or_else(|| anyhow!("no wss:// gateway: pass --tls-addr and --tls-ca")),
            },
            Mode::Own { .. } => {
                let mut shared = self.shared.lock().await;
                if let Some(gw) = shared.get(&(transport, before)) {
                    return Ok(gw.clone());
                }
                let gw = Arc::new(self.fresh_of(transport, before).await?);
                shared.insert((transport, before), gw.clone());
                Ok(gw)
            }
        }
    }

    /// A gateway of its own (a new process: memory measurements must not
    /// inherit another run's heap), of this build or (`before`) of the
    /// `--before-bin` one.
    pub(crate) async fn fresh_of(&self, transport: Transport, before: bool) -> Result<Gw> {
        self.fresh_with(transport, before, BENCH_ITERATIONS).await
    }

    /// [`fresh_of`](Self::fresh_of) with a bench user (and a default for
    /// new users) of `iterations` PBKDF2 iterations.
    pub(crate) async fn fresh_with(
        &self,
        transport: Transport,
        before: bool,
        iterations: u32,
    ) -> Result<Gw> {
        let Mode::Own {
            bin,
            before: before_bin,
        } = &self.mode
        else {
            bail!("fresh gateways need the bench to start them (no --addr)");
        };
        let bin = match (before, before_bin) {
            (false, _) => bin,
            (true, Some(b)) => b,
            (true, None) => bail!("no --before-bin given"),
        };
        let (bin, pinned, ticks) = (bin.clone(), self.pinned, self.ticks);
        tokio::task::spawn_blocking(move || start(&bin, transport, pinned, ticks, iterations))
            .await
            .map_err(|e| anyhow!("gateway start-up task failed: {e}"))?
    }

    /// Stops the shared gateways.
    pub(crate) async fn shutdown(&self) {
        let gateways: Vec<Arc<Gw>> = self.shared.lock().await.drain().map(|(_, g)| g).collect();
        for gw in gateways {
            let _ = tokio::task::spawn_blocking(move || gw.stop()).await;
        }
    }
}

fn external(
    addr: &str,
    tls_pem: Option<&[u8]>,
    cpu: Option<CpuMeter>,
    user: &str,
    password: &str,
    args: &BenchArgs,
) -> Result<Gw> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else if tls_pem.is_some() {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    };
    let mut config = ClientConfig::new(&url).with_context(|| format!("gateway address {addr}"))?;
    if let Some(pem) = tls_pem {
        config = config.tls_root_pem(pem, "localhost")?;
    }
    Ok(Gw {
        config,
        cpu,
        api_key: args.api_key.clone(),
        channels_unavailable: args
            .api_key
            .is_none()
            .then(|| "fanout against --addr needs --api-key".to_owned()),
        // Whether the gateway has `benchhist.*`/`benchrec.*` with history
        // shows at the first SUBSCRIBE (its reply).
        history_unavailable: None,
        user: user.to_owned(),
        password: password.to_owned(),
        sessions: tokio::sync::Mutex::new(HashMap::new()),
        cache: SaltedPasswordCache::default(),
        form: std::sync::OnceLock::new(),
        clear_cache: SaltCache::default(),
        process: std::sync::Mutex::new(None),
        _dir: None,
    })
}

/// Raises RLIMIT_NOFILE as far as allowed (root may raise the hard limit);
/// gateways started later inherit it. Returns the soft limit now in force.
fn raise_nofile() -> u64 {
    use rlimit::Resource;
    for n in [1_048_576u64, 524_288, 262_144, 131_072, 65_536] {
        if rlimit::setrlimit(Resource::NOFILE, n, n).is_ok() {
            return n;
        }
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    rlimit::getrlimit(Resource::NOFILE).map_or(1024, |(soft, _)| soft)
}

/// Pins every thread of this process to core 1 (`taskset -a -p -c 1`);
/// threads started later inherit it.
fn pin_self_to_core_1() -> bool {
    Command::new("taskset")
        .args(["-a", "-p", "-c", "1", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn random_token() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    // Two independently seeded SipHash keys: enough for a throw-away local
    // password, without pulling in another RNG.
    let mut out = String::new();
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// What a gateway's configuration may hold: older builds (`--before-bin`)
/// refuse settings they do not know.
#[derive(Debug, Clone, Copy)]
struct Features {
    channels: bool,
    start_limit: bool,
    /// Channels with history and `[limits] max_replay` (protocol.md §6.5).
    history: bool,
}

fn config_text(
    dir: &Path,
    api_key: &str,
    tls: bool,
    features: Features,
    iterations: u32,
) -> String {
    let Features {
        channels,
        start_limit,
        history,
    } = features;
    let mut text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
        dir.join("data").display()
    );
    if channels {
        text.push_str(&format!("api_keys = [\"{api_key}\"]\n"));
    }
    // Idle connections must survive the whole measurement, and limits must
    // not be what a benchmark measures.
    text.push_str(
        "\n[limits]\nmax_connections = 2000000\nmax_unauthenticated_per_ip = 1000000\nidle_timeout_secs = 86400\nping_interval_secs = 43200\nMAX_REPLAY\
         \n[login]\niterations = ITERATIONS\nmax_failures_per_user = 1000000\nmax_failures_per_ip = 1000000\n",
    );
    let max_replay = if history {
        format!("max_replay = {RECOVERY_KEEP}\n")
    } else {
        String::new()
    };
    let mut text = text
        .replace("ITERATIONS", &iterations.to_string())
        .replace("MAX_REPLAY", &max_replay);
    if start_limit {
        text.push_str("max_starts_per_ip = 10000000\n");
    }
    text.push_str("\n[testing]\nraw_echo = true\n");
    if channels {
        text.push_str(&format!(
            "\n[[channels]]\npattern = \"{CHANNEL_PATTERN}\"\nsubscribe = \"authenticated\"\npublish = \"api\"\n"
        ));
        if history {
            for (pattern, keep) in [
                (HISTORY_PATTERN, HISTORY_KEEP),
                (RECOVERY_PATTERN, RECOVERY_KEEP),
            ] {
                text.push_str(&format!(
                    "\n[[channels]]\npattern = \"{pattern}\"\nsubscribe = \"authenticated\"\npublish = \"api\"\nhistory = {keep}\n"
                ));
            }
        }
    }
    if tls {
        text.push_str(&format!(
            "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        ));
    }
    text
}

/// Starts `wsgate serve` with a new data directory, the bench user and
/// (for TLS) a new self-signed ECDSA P-256 certificate.
fn start(bin: &Path, transport: Transport, pin: bool, ticks: f64, iterations: u32) -> Result<Gw> {
    let dir = tempfile::Builder::new()
        .prefix("wsgate-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    let password = format!("bench-{}", random_token());
    let api_key = format!("bench-api-{}", random_token());
    let tls = transport == Transport::Tls;
    let mut ca_pem = None;
    if tls {
        let certified = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .context("generating a self-signed certificate")?;
        let cert = certified.cert.pem();
        std::fs::write(dir.path().join("cert.pem"), &cert)?;
        std::fs::write(
            dir.path().join("key.pem"),
            certified.signing_key.serialize_pem(),
        )?;
        ca_pem = Some(cert);
    }
    let config_path = dir.path().join("wsgate.toml");
    let mut channels_unavailable = None;
    let mut history_unavailable = None;
    let mut features = Features {
        channels: true,
        start_limit: true,
        history: true,
    };
    loop {
        std::fs::write(
            &config_path,
            config_text(dir.path(), &api_key, tls, features, iterations),
        )?;
        let Err(e) = add_user(bin, &config_path, &password, iterations) else {
            break;
        };
        // An older gateway refuses what it does not know: a login start
        // limit, channel history (`history`, `max_replay`), or channels
        // (`api_keys` / `[[channels]]`).
        let text = e.to_string();
        if !text.contains("unknown field") {
            return Err(e);
        }
        let field = unknown_field(&text);
        if text.contains("max_starts_per_ip") && features.start_limit {
            features.start_limit = false;
        } else if matches!(field, Some("history" | "max_replay")) && features.history {
            features.history = false;
            history_unavailable = Some(format!(
                "this gateway has no channel history yet (its config refuses `history`/`max_replay`: {})",
                text.lines().next().unwrap_or_default()
            ));
        } else if features.channels {
            features.channels = false;
            channels_unavailable = Some(format!(
                "this gateway has no channels yet (its config refuses [[channels]]/api_keys: {})",
                text.lines().next().unwrap_or_default()
            ));
            features.history = false;
            history_unavailable
                .get_or_insert_with(|| "this gateway has no channels yet".to_owned());
        } else {
            return Err(e);
        }
    }

    let (child, addr) = serve(bin, &config_path, &dir.path().join("gateway.log"), pin)
        .context("the gateway did not start")?;
    let mut config = ClientConfig::new(&addr)
        .with_context(|| format!("the gateway announced {addr:?}"))?
        .timeout(Duration::from_secs(30));
    if let Some(pem) = &ca_pem {
        config = config.tls_root_pem(pem.as_bytes(), "localhost")?;
    }
    let cpu = Some(CpuMeter::new(child.id(), ticks));
    Ok(Gw {
        config,
        cpu,
        api_key: channels_unavailable.is_none().then_some(api_key),
        channels_unavailable,
        history_unavailable,
        user: BENCH_USER.to_owned(),
        password,
        sessions: tokio::sync::Mutex::new(HashMap::new()),
        cache: SaltedPasswordCache::default(),
        form: std::sync::OnceLock::new(),
        clear_cache: SaltCache::default(),
        process: std::sync::Mutex::new(Some(child)),
        _dir: Some(dir),
    })
}

/// The gateways of `wsgate bench fleet`: `wsgate serve` processes on one
/// data directory (one server key, one server secret, one user) and one
/// state store, each on a port of its own. Dropping it stops them.
pub(crate) struct Fleet {
    /// The nodes, in start order (node 1 is `nodes[0]`).
    pub(crate) nodes: Vec<Gw>,
    /// The bench user's password (handed to the load processes).
    pub(crate) password: String,
    /// Every node's API key for `POST /api/publish`.
    pub(crate) api_key: String,
    /// Each node's stderr.
    pub(crate) logs: Vec<PathBuf>,
    /// Holds the data directory, configs and logs; dropped after the nodes.
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// Why a node is gone, if one is: `node 3 (127.0.0.1:4711) exited
    /// with …; its log: …`.
    pub(crate) fn dead_node(&self) -> Option<String> {
        self.nodes.iter().enumerate().find_map(|(i, gw)| {
            let status = gw.exit_status()?;
            let log = std::fs::read_to_string(&self.logs[i]).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Some(format!(
                "gateway node {} ({}) exited ({status}); the end of its log {}: {}",
                i + 1,
                gw.config.addr,
                self.logs[i].display(),
                if tail.is_empty() {
                    "(empty)".to_owned()
                } else {
                    tail.join(" / ")
                }
            ))
        })
    }

    /// Stops every node at once (SIGTERM, then SIGKILL after 5 s).
    pub(crate) fn stop(&self) {
        std::thread::scope(|scope| {
            for gw in &self.nodes {
                scope.spawn(|| gw.stop());
            }
        });
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The configuration of every fleet node: its own port (`127.0.0.1:0`),
/// the shared data directory and `state`, no metrics listener (the nodes
/// would fight over its port), and limits that are not what is measured.
fn fleet_config_text(data: &Path, state: &str, api_key: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {}\nstate = {}\nmetrics_listen = \"off\"\napi_keys = [{}]\n\
         \n[limits]\nmax_connections = 2000000\nmax_unauthenticated_per_ip = 1000000\n\
         idle_timeout_secs = 86400\nping_interval_secs = 43200\nkey_init_timeout_secs = 120\n\
         \n[login]\niterations = {BENCH_ITERATIONS}\nmax_failures_per_user = 1000000\nmax_failures_per_ip = 1000000\n\
         max_starts_per_ip = 10000000\n\
         \n[[channels]]\npattern = \"{CHANNEL_PATTERN}\"\nsubscribe = \"authenticated\"\npublish = \"api\"\n",
        toml_string(&data.display().to_string()),
        toml_string(state),
        toml_string(api_key),
    )
}

/// Starts a [`Fleet`] of `nodes` gateways from `bin` on the state store
/// `state` (passed to every node unchanged), not pinned: node 1 first (it
/// makes the server key and secret), then the others, one by one.
/// `progress` hears of each node as it comes up.
pub(crate) fn start_fleet(
    bin: &Path,
    state: &str,
    nodes: usize,
    ticks: f64,
    progress: &dyn Fn(&str),
) -> Result<Fleet> {
    let dir = tempfile::Builder::new()
        .prefix("wsgate-bench-fleet-")
        .tempdir()
        .context("creating a temporary directory")?;
    let password = format!("bench-{}", random_token());
    let api_key = format!("bench-api-{}", random_token());
    let config_path = dir.path().join("fleet.toml");
    std::fs::write(
        &config_path,
        fleet_config_text(&dir.path().join("data"), state, &api_key),
    )?;
    add_user(bin, &config_path, &password, BENCH_ITERATIONS)
        .context("adding the bench user to the fleet's data directory")?;
    let mut fleet = Fleet {
        nodes: Vec::with_capacity(nodes),
        password,
        api_key,
        logs: Vec::with_capacity(nodes),
        _dir: dir,
    };
    for i in 0..nodes {
        let log = fleet._dir.path().join(format!("node{}.log", i + 1));
        let (child, addr) = serve(bin, &config_path, &log, false)
            .with_context(|| format!("gateway node {} of {nodes} did not start", i + 1))?;
        let config = ClientConfig::new(&addr)
            .with_context(|| format!("gateway node {} announced {addr:?}", i + 1))?
            .timeout(Duration::from_secs(60));
        progress(&format!(
            "gateway node {}/{nodes} (pid {}) listening on {addr}",
            i + 1,
            child.id()
        ));
        fleet.logs.push(log);
        fleet.nodes.push(Gw {
            config,
            cpu: Some(CpuMeter::new(child.id(), ticks)),
            api_key: Some(fleet.api_key.clone()),
            channels_unavailable: None,
            history_unavailable: Some("fleet nodes have no history channels".to_owned()),
            user: BENCH_USER.to_owned(),
            password: fleet.password.clone(),
            sessions: tokio::sync::Mutex::new(HashMap::new()),
            cache: SaltedPasswordCache::default(),
            form: std::sync::OnceLock::new(),
            clear_cache: SaltCache::default(),
            process: std::sync::Mutex::new(Some(child)),
            _dir: None,
        });
    }
    Ok(fleet)
}

/// Starts `wsgate serve --config config` (pinned to core 0 if `pin`), its
/// stderr into `log`, and waits up to 30 s for it to announce its address:
/// the child and `http://HOST:PORT`. A gateway that does not start is
/// killed, and the error holds its log.
fn serve(bin: &Path, config: &Path, log: &Path, pin: bool) -> Result<(Child, String)> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let mut child = cmd
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {} serve", bin.display()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout from the gateway"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads to the end, not only to the address: closing the pipe early
    // broke the gateway's next status line (gateways up to 3fb2a64
    // panicked on it, and the bench's first client got a reset).
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                if let Some((_, rest)) = line.split_once("listening on ") {
                    return Ok((child, rest.trim().to_owned()));
                }
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let why = match e {
                    std::sync::mpsc::RecvTimeoutError::Timeout => "no address within 30 s",
                    std::sync::mpsc::RecvTimeoutError::Disconnected => "it exited",
                };
                bail!("{why}; its log ({}): {}", log.display(), text.trim());
            }
        }
    }
}

/// The field a config error calls unknown: "unknown field `history`, …".
fn unknown_field(error: &str) -> Option<&str> {
    let (_, rest) = error.split_once("unknown field `")?;
    rest.split_once('`').map(|(field, _)| field)
}

fn add_user(bin: &Path, config: &Path, password: &str, iterations: u32) -> Result<()> {
    let mut child = Command::new(bin)
        .args([
            "user",
            "add",
            BENCH_USER,
            "--password-stdin",
            "--iterations",
        ])
        .arg(iterations.to_string())
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} user add", bin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{password}")?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`wsgate user add` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_unknown_field() {
        let e = "config file a.toml: TOML parse error at line 4, column 1\n  |\n4 | max_replay = 5\n  | ^^^^^^^^^^\nunknown field `max_replay`, expected one of `max_message_size`, `max_history_bytes`";
        assert_eq!(unknown_field(e), Some("max_replay"));
        assert_eq!(
            unknown_field("unknown field `history`, expected `pattern`"),
            Some("history")
        );
        assert_eq!(unknown_field("missing field `pattern`"), None);
    }

    #[test]
    fn history_settings_only_with_the_feature() {
        let dir = Path::new("/tmp/x");
        let all = Features {
            channels: true,
            start_limit: true,
            history: true,
        };
        let text = config_text(dir, "k", false, all, 4096);
        assert!(text.contains("max_replay = 10000\n"), "{text}");
        assert!(text.contains("pattern = \"benchhist.*\""), "{text}");
        assert!(text.contains("history = 10000\n"), "{text}");
        let old = config_text(
            dir,
            "k",
            false,
            Features {
                history: false,
                ..all
            },
            4096,
        );
        assert!(
            !old.contains("history") && !old.contains("max_replay"),
            "{old}"
        );
        assert!(old.contains("pattern = \"bench.*\""), "{old}");
    }
}
