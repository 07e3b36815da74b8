//! The private `redis-server` a fleet run owns when no `--state` is given:
//! no persistence, on a free loopback port, in a throw-away directory,
//! killed when dropped.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// A `redis-server` child process.
pub(crate) struct OwnedRedis {
    child: Child,
    port: u16,
    /// `redis-server --version`'s first words.
    pub(crate) version: String,
    _dir: tempfile::TempDir,
}

impl OwnedRedis {
    /// `redis://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts one and waits (up to 10 s) until it answers PING.
    pub(crate) fn start() -> Result<Self> {
        let binary = binary()?;
        let version = Command::new(&binary)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|v| v.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        // A port that was free a moment ago; another process taking it in
        // between makes redis-server exit, and another port is tried.
        let mut last = String::new();
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("wsgate-bench-redis-")
                .tempdir()
                .context("creating a temporary directory for redis-server")?;
            let port = free_port()?;
            let log = dir.path().join("redis.log");
            let child = Command::new(&binary)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .args(["--maxclients", "10000", "--daemonize", "no"])
                .arg("--logfile")
                .arg(&log)
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            let mut redis = OwnedRedis {
                child,
                port,
                version: version.clone(),
                _dir: dir,
            };
            match redis.wait_ready(&log) {
                Ok(()) => return Ok(redis),
                Err(e) => {
                    last = format!("redis-server on port {port}: {e:#}");
                    if !last.contains("Address already in use") {
                        bail!("{last}");
                    }
                }
            }
        }
        bail!("redis-server did not start: {last}")
    }

    fn wait_ready(&mut self, log: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "it exited ({status}): {}",
                    std::fs::read_to_string(log).unwrap_or_default().trim()
                );
            }
            if ping(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "no PONG within 10 s: {}",
            std::fs::read_to_string(log).unwrap_or_default().trim()
        )
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnedRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `WSGATE_REDIS_SERVER` (as the test suite reads it), else `redis-server`
/// on the PATH, else `/usr/bin/redis-server`.
fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("WSGATE_REDIS_SERVER") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "WSGATE_REDIS_SERVER={} is not a file: point it at redis-server, or unset it",
            path.display()
        );
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("redis-server"))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| Some(PathBuf::from("/usr/bin/redis-server")).filter(|p| p.is_file()))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the fleet needs a Redis state store and redis-server was not found: install it \
                 (apt-get install -y redis-server), set WSGATE_REDIS_SERVER=/path/to/redis-server, \
                 or pass --state redis://HOST:PORT of a running one"
            )
        })
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .context("finding a free port for redis-server")?;
    Ok(l.local_addr()?.port())
}

fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}
