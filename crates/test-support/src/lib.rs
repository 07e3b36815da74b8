//! Real `redis-server` and PostgreSQL servers for wsgate's tests (the store
//! conformance suites and the multi-process fleet tests).
//!
//! The tests of one process share one Redis and one PostgreSQL cluster,
//! started on first use on free loopback ports, each in its own temporary
//! directory; a test gets a private key prefix (Redis) or a private database
//! (PostgreSQL). Tests that stop and restart a server start their own.
//!
//! [`RedisCluster`] is a Redis Cluster of three masters and three replicas
//! (six `redis-server --cluster-enabled yes` on free loopback ports, joined
//! by `redis-cli --cluster create`, 1 s `cluster-node-timeout`) for the
//! cluster store and failover tests; [`shared_cluster`] is the process's
//! shared one (see [`RedisCluster`] for what it starts and how it stops).
//!
//! Every server runs under a small `sh` watchdog that holds the read end of
//! a pipe whose write end only this process holds: when the process ends —
//! normally, by a panic or killed — the pipe closes, the watchdog stops the
//! server and removes its directory. No server outlives `cargo test`.
//!
//! Needs the Debian packages `redis-server` (`/usr/bin/redis-server`; the
//! cluster also needs `redis-cli`, from `redis-tools`) and
//! `postgresql` (`/usr/lib/postgresql/<version>/bin/{initdb,postgres,pg_isready}`).
//! When one is missing the tests that need it fail, saying which package to
//! install; `WSGATE_SKIP_SERVICE_TESTS=1` skips them instead. Other locations:
//! `WSGATE_REDIS_SERVER=/path/to/redis-server`, `WSGATE_REDIS_CLI=/path/to/redis-cli`,
//! `WSGATE_PG_BINDIR=/path/to/bin`.
//!
//! PostgreSQL refuses to run as root: as root, the cluster runs as the
//! `postgres` user (`setpriv`), and its directory is handed to that user.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failure should panic loudly
#![forbid(unsafe_code)]

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod cluster;
pub use cluster::{DEFAULT_NODE_TIMEOUT_MS, RedisCluster, redis_command, shared_cluster};

/// Set to `1` to skip the tests that need a real server.
pub const SKIP_ENV: &str = "WSGATE_SKIP_SERVICE_TESTS";

/// How long a server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the service tests are skipped (and says so on stderr).
pub fn skipped() -> bool {
    let skip = std::env::var(SKIP_ENV).is_ok_and(|v| v == "1");
    if skip {
        eprintln!("skipped: {SKIP_ENV}=1");
    }
    skip
}

/// The watchdog: runs `"$@"` in the background with its output in `$log`,
/// waits for EOF on stdin (this process closed the pipe, or died), then
/// stops the server with `$sig` (and `CONT`, in case a test froze it),
/// waits for it and removes `$dir` (if not empty). It ignores the signals
/// that end a test run (Ctrl-C reaches the whole process group), so it
/// always gets to clean up.
const WATCHDOG: &str = r#"sig=$1; dir=$2; log=$3; shift 3
"$@" >"$log" 2>&1 </dev/null &
child=$!
trap '' HUP INT TERM
read -r _ignored || true
kill -s "$sig" "$child" 2>/dev/null
kill -s CONT "$child" 2>/dev/null
wait "$child"
if [ -n "$dir" ]; then rm -rf "$dir"; fi
"#;

/// A server process under the watchdog.
#[derive(Debug)]
pub struct Process {
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Process {
    /// Starts `program args…` with output to `log`; when stopped (or when
    /// this process ends) it gets `stop_signal`, and `remove` is deleted.
    fn spawn(
        program: &Path,
        args: &[&str],
        stop_signal: &str,
        log: &Path,
        remove: Option<&Path>,
    ) -> Result<Self, String> {
        let remove = remove.map(|p| p.display().to_string()).unwrap_or_default();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(stop_signal)
            .arg(remove)
            .arg(log)
            .arg(program)
            .args(args)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run sh to start {}: {e}", program.display()))?;
        let stdin = child.stdin.take();
        Ok(Self {
            child,
            stdin,
            log: log.to_path_buf(),
        })
    }

    /// The server's output so far (for failure messages).
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text.get(start..).unwrap_or_default().to_owned()
    }

    /// The server's pid, while it runs (not yet exited, or a zombie that the
    /// watchdog has not reaped because it waits on its stdin).
    fn server_pid(&self) -> Option<String> {
        let watchdog = self.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{watchdog}/task/{watchdog}/children")).ok()?;
        let pid = children.split_whitespace().next()?.to_owned();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The state follows the parenthesized command name.
        let state = stat.rsplit_once(") ")?.1.chars().next()?;
        (state != 'Z' && state != 'X').then_some(pid)
    }

    /// Whether the server is still running.
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None)) && self.server_pid().is_some()
    }

    /// Stops the server and waits until it is gone.
    fn stop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }

    /// Pauses (`STOP`) or resumes (`CONT`) the server without closing its
    /// sockets: it stops answering, as a hung or partitioned server would.
    fn signal_server(&self, signal: &str) {
        let server = self.server_pid().expect("the server is running");
        let status = Command::new("sh")
            .args(["-c", "kill -s \"$1\" \"$2\"", "sh", signal, &server])
            .status()
            .expect("sh runs");
        assert!(status.success(), "kill -s {signal} {server} failed");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; servers bind it at once).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A fresh temporary directory that is not removed on drop (the watchdog
/// removes it).
fn kept_tempdir(prefix: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("a temporary directory")
        .keep()
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn wait_until(
    what: &str,
    process: &mut Process,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let started = Instant::now();
    let mut seen_running = false;
    loop {
        if ready() {
            return Ok(());
        }
        // The watchdog starts the server a moment after it starts itself.
        let running = process.running();
        seen_running |= running;
        if !running && (seen_running || started.elapsed() > Duration::from_secs(5)) {
            return Err(format!("{what} exited at start:\n{}", process.log_tail()));
        }
        if started.elapsed() > READY_TIMEOUT {
            return Err(format!(
                "{what} did not accept connections within {READY_TIMEOUT:?}:\n{}",
                process.log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ─────────────────────────────────── Redis ───────────────────────────────────

/// The program named by the environment variable `var`, if it is set: an
/// error naming `program` and its Debian `package` if that is no file.
pub(crate) fn binary_from_env(
    var: &str,
    program: &str,
    package: &str,
) -> Option<Result<PathBuf, String>> {
    let path = PathBuf::from(std::env::var_os(var)?);
    Some(if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{var}={} is not a file; point it at {program}, or unset it \
             and install the Debian package {package}",
            path.display()
        ))
    })
}

fn redis_server_binary() -> Result<PathBuf, String> {
    if let Some(found) = binary_from_env("WSGATE_REDIS_SERVER", "redis-server", "redis-server") {
        return found;
    }
    find_on_path("redis-server")
        .or_else(|| Some(PathBuf::from("/usr/bin/redis-server")).filter(|p| p.is_file()))
        .ok_or_else(|| {
            format!(
                "redis-server not found: install the Debian package redis-server \
                 (apt-get install -y redis-server), set WSGATE_REDIS_SERVER=/path/to/redis-server, \
                 or set {SKIP_ENV}=1 to skip the tests that need it"
            )
        })
}

/// A private `redis-server`, without persistence unless started with
/// [`start_persistent_on`](Self::start_persistent_on).
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    /// The CA certificate, when it speaks TLS.
    ca: Option<PathBuf>,
    process: Process,
}

impl RedisServer {
    /// Starts one on a free port.
    pub fn start() -> Result<Self, String> {
        Self::start_on(free_port())
    }

    /// Starts one on `port` (to restart a stopped one where clients expect it).
    pub fn start_on(port: u16) -> Result<Self, String> {
        Self::spawn(port, false, None)
    }

    /// Starts one on `port` that keeps its data in `dir` (an append-only
    /// file, fsynced at every write) and loads what an earlier one left
    /// there: stopping it and starting another on the same `dir` is a Redis
    /// restart with persistence. `dir` stays the caller's (it is not removed).
    pub fn start_persistent_on(port: u16, dir: &Path) -> Result<Self, String> {
        Self::spawn(port, false, Some(dir))
    }

    /// Starts one that speaks only TLS, with a certificate for 127.0.0.1
    /// from a private CA made for it (`openssl`); [`url`](Self::url) names
    /// that CA.
    pub fn start_tls() -> Result<Self, String> {
        Self::spawn(free_port(), true, None)
    }

    fn spawn(port: u16, tls: bool, data: Option<&Path>) -> Result<Self, String> {
        let binary = redis_server_binary()?;
        let dir = match data {
            Some(dir) => dir.to_path_buf(),
            None => kept_tempdir("wsgate-redis-"),
        };
        let port_text = port.to_string();
        let dir_text = dir.display().to_string();
        let (appendonly, appendfsync) = if data.is_some() {
            ("yes", "always")
        } else {
            ("no", "everysec")
        };
        let mut args = vec![
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            appendonly,
            "--appendfsync",
            appendfsync,
            "--dir",
            &dir_text,
            "--daemonize",
            "no",
            "--logfile",
            "",
        ];
        if tls {
            make_certificates(&dir)?;
            args.extend([
                "--port",
                "0",
                "--tls-port",
                &port_text,
                "--tls-cert-file",
                "server.pem",
                "--tls-key-file",
                "server.key",
                "--tls-ca-cert-file",
                "ca.pem",
                "--tls-auth-clients",
                "no",
            ]);
        } else {
            args.extend(["--port", &port_text]);
        }
        let remove = data.is_none().then_some(dir.as_path());
        let mut process = Process::spawn(&binary, &args, "TERM", &dir.join("redis.log"), remove)?;
        let ca = tls.then(|| dir.join("ca.pem"));
        wait_until(
            &format!("redis-server on port {port}"),
            &mut process,
            || {
                if tls {
                    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
                } else {
                    redis_ping(port)
                }
            },
        )?;
        Ok(Self { port, ca, process })
    }

    /// `redis://127.0.0.1:PORT`, or for TLS
    /// `rediss://127.0.0.1:PORT/?ca_file=/…/ca.pem`.
    pub fn url(&self) -> String {
        match &self.ca {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(ca) => format!("rediss://127.0.0.1:{}/?ca_file={}", self.port, ca.display()),
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Freezes (`true`) or thaws (`false`) the server: its connections stay
    /// open but nothing is answered.
    pub fn freeze(&self, frozen: bool) {
        self.process
            .signal_server(if frozen { "STOP" } else { "CONT" });
    }
}

/// A CA (`ca.pem`) and a certificate for 127.0.0.1 signed by it
/// (`server.pem`, `server.key`) in `dir`.
fn make_certificates(dir: &Path) -> Result<(), String> {
    const SCRIPT: &str = r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout ca.key -out ca.pem -days 2 -subj /CN=wsgate-test-ca
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout server.key -out server.csr -subj /CN=127.0.0.1
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
  -out server.pem -days 2 -extfile server.ext
"#;
    let out = Command::new("sh")
        .args(["-c", SCRIPT])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl could not make test certificates (install the Debian package openssl): {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

static SHARED_REDIS: OnceLock<Result<RedisServer, String>> = OnceLock::new();

/// The process's shared Redis (started on first use); panics with what to
/// install if it cannot start.
pub fn shared_redis() -> &'static RedisServer {
    match SHARED_REDIS.get_or_init(RedisServer::start) {
        Ok(server) => server,
        Err(e) => panic!("{e}"),
    }
}

/// A key prefix no other test in this run (or a concurrent run) uses.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "wsgate-test-{}-{}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

// ───────────────────────────────── PostgreSQL ────────────────────────────────

/// Where `initdb`, `postgres` and `pg_isready` are.
fn pg_bindir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("WSGATE_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").is_file() {
            Ok(dir)
        } else {
            Err(format!(
                "WSGATE_PG_BINDIR={} holds no initdb; point it at PostgreSQL's bin directory, \
                 or unset it and install the Debian package postgresql",
                dir.display()
            ))
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Some(initdb) = find_on_path("initdb") {
        return Ok(initdb.parent().map(Path::to_path_buf).unwrap_or_default());
    }
    Err(format!(
        "PostgreSQL's initdb not found: install the Debian package postgresql \
         (apt-get install -y postgresql), set WSGATE_PG_BINDIR to the directory holding \
         initdb and postgres, or set {SKIP_ENV}=1 to skip the tests that need it"
    ))
}

/// Whether this process runs as root (PostgreSQL then runs as `postgres`).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The command prefix and owner (uid, gid) to run PostgreSQL with.
fn pg_user() -> Result<Option<(u32, u32)>, String> {
    if !running_as_root() {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id")
            .arg(flag)
            .arg("postgres")
            .output()
            .map_err(|e| format!("cannot run id: {e}"))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| {
                "running as root, but there is no postgres user to run PostgreSQL as; \
             install the Debian package postgresql (it creates the user)"
                    .to_owned()
            })
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

/// Runs a PostgreSQL program as the right user.
fn pg_command(program: &Path, user: Option<(u32, u32)>) -> (PathBuf, Vec<String>) {
    match user {
        None => (program.to_path_buf(), Vec::new()),
        Some((uid, gid)) => (
            PathBuf::from("setpriv"),
            vec![
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".to_owned(),
                "--".to_owned(),
                program.display().to_string(),
            ],
        ),
    }
}

fn chown_tree(path: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| format!("cannot hand {} to postgres: {e}", path.display()))
}

/// A private PostgreSQL cluster: superuser `postgres`, trust
/// authentication, on 127.0.0.1 and a unix socket in its directory.
#[derive(Debug)]
pub struct PgServer {
    port: u16,
    dir: PathBuf,
    bindir: PathBuf,
    owner: Option<(u32, u32)>,
    /// The running server (dropped first).
    process: Option<Process>,
    /// Removes the directory when dropped, or when this process ends
    /// (even while `initdb` runs).
    _janitor: Process,
}

impl PgServer {
    /// Creates a cluster in a new directory and starts it on a free port.
    pub fn start() -> Result<Self, String> {
        let bindir = pg_bindir()?;
        let owner = pg_user()?;
        let dir = kept_tempdir("wsgate-pg-");
        let janitor = Process::spawn(
            Path::new("sleep"),
            &["infinity"],
            "TERM",
            Path::new("/dev/null"),
            Some(&dir),
        )?;
        chown_tree(&dir, owner)?;
        let data = dir.join("data");
        let (program, mut args) = pg_command(&bindir.join("initdb"), owner);
        args.extend(
            [
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
            .map(String::from),
        );
        let out = Command::new(&program)
            .args(&args)
            .current_dir("/")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let mut server = Self {
            port: free_port(),
            dir,
            bindir,
            owner,
            process: None,
            _janitor: janitor,
        };
        server.start_server()?;
        Ok(server)
    }

    /// Starts the server (again) on its port.
    pub fn start_server(&mut self) -> Result<(), String> {
        let (program, mut args) = pg_command(&self.bindir.join("postgres"), self.owner);
        args.extend(
            [
                "-D",
                &self.dir.join("data").display().to_string(),
                "-p",
                &self.port.to_string(),
                "-k",
                &self.dir.display().to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=16MB",
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = self.dir.join("postgres.log");
        // SIGQUIT: immediate shutdown, nothing to keep.
        let mut process = Process::spawn(&program, &args, "QUIT", &log, None)?;
        let isready = self.bindir.join("pg_isready");
        let (host, port) = (self.dir.display().to_string(), self.port.to_string());
        wait_until(&format!("PostgreSQL on port {port}"), &mut process, || {
            Command::new(&isready)
                .args(["-q", "-h", &host, "-p", &port, "-U", "postgres"])
                .status()
                .is_ok_and(|s| s.success())
        })?;
        self.process = Some(process);
        Ok(())
    }

    /// Shuts the server down (fast: clients are disconnected) and waits
    /// until it is gone; the cluster stays for [`start_server`](Self::start_server).
    pub fn stop_server(&mut self) {
        let Some(mut process) = self.process.take() else {
            return;
        };
        process.signal_server("INT");
        let pid_file = self.dir.join("data").join("postmaster.pid");
        let deadline = Instant::now() + READY_TIMEOUT;
        while pid_file.exists() {
            assert!(Instant::now() < deadline, "PostgreSQL did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        process.stop();
    }

    /// `postgres://postgres@127.0.0.1:PORT/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The same, through the unix socket in the cluster's directory.
    pub fn socket_url(&self, database: &str) -> String {
        let host = self.dir.display().to_string().replace('/', "%2F");
        format!("postgres://postgres@{host}:{}/{database}", self.port)
    }

    /// A new empty database; returns its name.
    pub async fn create_database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("wsgate_test_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.admin(&format!("CREATE DATABASE {name}")).await;
        name
    }

    /// Runs `sql` as the superuser in the `postgres` database.
    pub async fn admin(&self, sql: &str) {
        self.execute("postgres", sql).await;
    }

    /// Runs `sql` as the superuser in `database`.
    pub async fn execute(&self, database: &str, sql: &str) {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname={database}",
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        let driver = tokio::spawn(connection);
        client.batch_execute(sql).await.unwrap();
        drop(client);
        let _ = driver.await;
    }
}

static SHARED_PG: OnceLock<Result<PgServer, String>> = OnceLock::new();

/// The process's shared PostgreSQL cluster (started on first use); panics
/// with what to install if it cannot start.
pub fn shared_pg() -> &'static PgServer {
    match SHARED_PG.get_or_init(PgServer::start) {
        Ok(server) => server,
        Err(e) => panic!("{e}"),
    }
}
