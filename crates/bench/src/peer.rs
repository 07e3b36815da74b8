//! The Node.js `ws` echo peer of the `echo` scenario ("a popular peer"):
//! `js/bench/ws-echo-peer.mjs`, a WebSocket echo server on the npm `ws`
//! package (pinned in `js/package.json`), started like a gateway — pinned
//! to core 0, its CPU read from `/proc/<pid>/stat`, stopped when dropped.
//! It also exits when its stdin (a pipe the bench holds) closes, so it
//! does not outlive a bench killed by a signal.
//!
//! The script is found in the `js/` directory given with `--node-peer`, or
//! else above the current directory or the `wsgate` binary; `node` is the
//! one on `PATH`. What is missing is reported as the reason to skip the row.

use std::io::{BufRead as _, Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use wsgate_client::ClientConfig;

use crate::gateway::Gw;

/// The script, relative to the repository's `js/` directory.
const SCRIPT: &str = "bench/ws-echo-peer.mjs";
/// The path the bench opens (the peer echoes on any path).
pub(crate) const PATH: &str = "/";

/// A located peer: the `js/` directory with the script and the `ws` module.
#[derive(Debug, Clone)]
pub(crate) struct NodePeer {
    js: PathBuf,
    /// `node vX.Y.Z, ws A.B.C`, for the report's settings.
    pub(crate) versions: String,
}

/// `dir` relative to the current directory when it is below it.
fn shown(dir: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| dir.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .filter(|rel| !rel.as_os_str().is_empty())
        .unwrap_or_else(|| dir.to_path_buf())
        .display()
        .to_string()
}

/// The `js/` directory holding the script: `explicit` (the `js/`
/// directory or the repository above it), else the first `js/` above the
/// current directory, else above the running executable.
fn find_js(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(dir) = explicit {
        return [dir.to_path_buf(), dir.join("js")]
            .into_iter()
            .find(|d| d.join(SCRIPT).is_file())
            .ok_or_else(|| {
                format!(
                    "--node-peer {} holds no {SCRIPT} (give the repository's js/ directory, then run `cd js && npm ci` there)",
                    dir.display()
                )
            });
    }
    let cwd = std::env::current_dir().ok();
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    for start in cwd.iter().chain(exe_dir.iter()) {
        for dir in start.ancestors() {
            let js = dir.join("js");
            if js.join(SCRIPT).is_file() {
                return Ok(js);
            }
        }
    }
    Err(format!(
        "js/{SCRIPT} not found above the current directory or the wsgate binary (run the bench from the repository or pass --node-peer REPO/js, then run `cd js && npm ci`)"
    ))
}

/// The `version` field of a `package.json`.
fn package_version(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("version")?.as_str().map(str::to_owned)
}

/// Finds the script, `node` and the `ws` module, or says why the peer
/// cannot run and exactly what to install (the text of the skip note).
pub(crate) fn locate(explicit: Option<&Path>) -> Result<NodePeer, String> {
    let js = find_js(explicit)?;
    let npm_ci = format!("cd {} && npm ci", shown(&js));
    let node = match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Ok(out) => {
            return Err(format!(
                "`node --version` failed ({}); install Node.js ≥ 20.19 and npm (Debian: apt-get install nodejs npm), then run `{npm_ci}`",
                out.status
            ));
        }
        Err(e) => {
            let what = if e.kind() == std::io::ErrorKind::NotFound {
                "is not installed (not on PATH)".to_owned()
            } else {
                format!("cannot run ({e})")
            };
            return Err(format!(
                "`node` {what}; install Node.js ≥ 20.19 and npm (Debian: apt-get install nodejs npm), then run `{npm_ci}`"
            ));
        }
    };
    let ws = js.join("node_modules/ws/package.json");
    let Some(ws_version) = package_version(&ws) else {
        return Err(format!(
            "the npm module `ws` is not installed ({} is missing); run `{npm_ci}`",
            shown(&ws)
        ));
    };
    Ok(NodePeer {
        js,
        versions: format!("node {node}, ws {ws_version}"),
    })
}

impl NodePeer {
    /// The script, as the report shows it.
    pub(crate) fn script(&self) -> String {
        shown(&self.js.join(SCRIPT))
    }

    /// Starts the peer on a free port (`taskset -c 0` when `pin`) and waits
    /// for the port it prints.
    pub(crate) fn start(&self, pin: bool, ticks: f64) -> Result<Gw> {
        let mut stderr = tempfile::tempfile().context("creating a file for node's stderr")?;
        let mut cmd = if pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "0", "node"]);
            c
        } else {
            Command::new("node")
        };
        let mut child = cmd
            .arg(self.js.join(SCRIPT))
            .args(["0", "--exit-with-stdin"])
            .current_dir(&self.js)
            // Held open by the `Child` (inside the `Gw`): when the bench
            // ends in a way that drops nothing (a signal), the pipe closes
            // and the peer exits.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.try_clone()?)
            .spawn()
            .with_context(|| format!("starting node {}", self.script()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout from node"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let mut reader = std::io::BufReader::new(stdout);
            let _ = tx.send(reader.read_line(&mut first).map(|_| first));
            // Keep draining: the peer must never block on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let port = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(line)) => line.trim().parse::<u16>().ok().filter(|p| *p != 0),
            _ => None,
        };
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            let mut log = String::new();
            let _ = stderr.rewind();
            let _ = stderr.read_to_string(&mut log);
            bail!(
                "the node ws echo peer ({}) did not start: {}",
                self.script(),
                log.trim()
            );
        };
        let config = ClientConfig::new(&format!("http://127.0.0.1:{port}"))
            .context("the node peer's address")?
            .timeout(Duration::from_secs(30));
        Ok(Gw::foreign(config, child, ticks))
    }
}
