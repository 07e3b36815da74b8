//! `proxy`: the per-message cost of a path through nginx, counted as the
//! CPU time of nginx plus the gateway.
//!
//! * plain `ws://` passed through nginx to the gateway, with wsgate's own
//!   protection (tagged frames, a share encrypted);
//! * `wss://` terminated at nginx and re-encrypted to the gateway's TLS
//!   listener, every frame tagged — what a deployment that puts TLS on
//!   every hop pays (the baseline).
//!
//! nginx (Debian's `nginx-light` or `nginx`) runs as one process
//! (`master_process off`), pinned to the gateway's core, with the
//! reverse-proxy settings of `docs/deployment.md`. The closed-loop echo of
//! the `echo` scenario is the load.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use wsgate_client::ClientConfig;

use super::echo::{Kind, RunResult, Variant, mixed_name, run_variant};
use super::timing;
use crate::BenchArgs;
use crate::gateway::{Env, Transport};
use crate::report::{Row, ScenarioResult, Stat, TargetCheck};

const TLS_PATH: &str =
    "wss:// → nginx (TLS terminated, re-encrypted) → wss:// wsgate, all tagged (baseline)";
const CPU: &str = "nginx + gateway CPU µs/req";

/// nginx, started for the scenario and killed when dropped.
struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> Option<&'static str> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts nginx with a plain listener proxying to `plain` and a TLS
/// listener (the gateway's certificate) proxying over TLS to `tls`.
fn start_nginx(
    bin: &str,
    plain: SocketAddr,
    tls: SocketAddr,
    cert_dir: &Path,
    pin: bool,
) -> Result<(Nginx, SocketAddr, SocketAddr)> {
    let dir = tempfile::Builder::new()
        .prefix("wsgate-bench-nginx-")
        .tempdir()?;
    let (p1, p2) = (free_port()?, free_port()?);
    let d = dir.path().display();
    let (cert, key) = (cert_dir.join("cert.pem"), cert_dir.join("key.pem"));
    let location = r#"
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;"#;
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log error;
worker_rlimit_nofile 20000;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    server {{
        listen 127.0.0.1:{p1};
        location / {{
            proxy_pass http://{plain};{location}
        }}
    }}
    server {{
        listen 127.0.0.1:{p2} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        location / {{
            proxy_pass https://{tls};
            proxy_ssl_protocols TLSv1.3;
            proxy_ssl_verify off;
            proxy_ssl_session_reuse on;{location}
        }}
    }}
}}
"#,
        cert = cert.display(),
        key = key.display(),
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", bin]);
        c
    } else {
        Command::new(bin)
    };
    let child = cmd
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {bin}"))?;
    let nginx = Nginx { child, _dir: dir };
    let (a1, a2) = (
        SocketAddr::from(([127, 0, 0, 1], p1)),
        SocketAddr::from(([127, 0, 0, 1], p2)),
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(a1).is_ok() && std::net::TcpStream::connect(a2).is_ok() {
            return Ok((nginx, a1, a2));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(nginx._dir.path().join("error.log")).unwrap_or_default();
    bail!("nginx did not start: {}", log.trim())
}

pub(crate) async fn run(env: &Env, args: &BenchArgs) -> Result<ScenarioResult> {
    let mut result = ScenarioResult::new(
        "proxy",
        "closed-loop echo through nginx: CPU of nginx plus the gateway per request",
    );
    let Some(bin) = nginx_binary() else {
        result
            .notes
            .push("skipped: nginx is not installed (apt-get install nginx-light)".into());
        return Ok(result);
    };
    if !env.owns_gateways() {
        result
            .notes
            .push("skipped: needs gateways the bench starts (no --addr)".into());
        return Ok(result);
    }
    let n = args
        .connections
        .unwrap_or(if args.smoke { 4 } else { 50 })
        .max(1);
    let t = timing(args, 10.0, 1);
    let plain = env.gateway(Transport::Plain).await?;
    let tls = env.gateway(Transport::Tls).await?;
    let cert_dir = tls
        .dir()
        .ok_or_else(|| anyhow!("the TLS gateway has no certificate directory"))?;
    let pem = std::fs::read(cert_dir.join("cert.pem"))?;
    let (nginx, plain_addr, tls_addr) = start_nginx(
        bin,
        plain.config.addr,
        tls.config.addr,
        cert_dir,
        env.pinned(),
    )?;
    let nginx_pid = nginx.child.id();
    let via_plain = Arc::new(plain.behind(
        ClientConfig::new(&format!("http://{plain_addr}"))?.timeout(Duration::from_secs(30)),
        nginx_pid,
    ));
    let via_tls = Arc::new(
        tls.behind(
            ClientConfig::new(&format!("https://{tls_addr}"))?
                .timeout(Duration::from_secs(30))
                .tls_root_pem(&pem, "localhost")?,
            nginx_pid,
        ),
    );
    result.setting("connections", n);
    result.setting("payload bytes", args.payload);
    result.setting("measured seconds per run", t.duration.as_secs_f64());
    result.setting("runs per variant", t.repeat);
    result.setting("nginx", bin);

    let share = args.sensitive_share;
    let variant = |name: String, transport, share| Variant {
        name,
        transport,
        kind: Kind::Gate,
        share,
        before: false,
    };
    let mut variants = vec![(
        variant(
            format!(
                "ws:// → nginx → ws:// wsgate, {}",
                mixed_name(share).trim_start_matches("wsgate ws:// ")
            ),
            Transport::Plain,
            share,
        ),
        via_plain.clone(),
    )];
    if share != 0.0 {
        variants.push((
            variant(
                "ws:// → nginx → ws:// wsgate, all tagged".into(),
                Transport::Plain,
                0.0,
            ),
            via_plain.clone(),
        ));
    }
    variants.push((
        variant(TLS_PATH.into(), Transport::Tls, 0.0),
        via_tls.clone(),
    ));
    variants.retain(|(v, _)| args.selected(&v.name));

    let payload: Arc<Vec<u8>> = Arc::new((0..args.payload).map(|i| (i % 251) as u8).collect());
    let mut runs: Vec<Vec<RunResult>> = vec![Vec::new(); variants.len()];
    for rep in 0..t.repeat {
        for (i, (v, gw)) in variants.iter().enumerate() {
            let label = format!("proxy {} {}/{}", v.name, rep + 1, t.repeat);
            runs[i].push(run_variant(env, gw, v, n, &payload, t, &label).await?);
        }
    }
    drop(nginx);

    let stat = |i: usize, f: fn(&RunResult) -> f64| {
        Stat::from_samples(runs[i].iter().map(f).collect::<Vec<_>>())
    };
    let base = variants
        .iter()
        .position(|(v, _)| v.name == TLS_PATH)
        .filter(|i| !runs[*i].is_empty())
        .map(|i| stat(i, |r| r.server_us));
    for (i, (v, _)) in variants.iter().enumerate() {
        if runs[i].is_empty() {
            continue;
        }
        let cpu = stat(i, |r| r.server_us);
        let mut row = Row::new(v.name.clone());
        row.stat("req/s", stat(i, |r| r.rate), true)
            .stat("p50 µs", stat(i, |r| r.p50), false)
            .stat(CPU, cpu.clone(), true)
            .stat("load-gen CPU µs/req", stat(i, |r| r.client_us), false);
        if let (Some(base), false) = (&base, v.name == TLS_PATH) {
            row.stat("CPU/req ÷ TLS path", cpu.ratio_to(base), true);
        }
        result.rows.push(row);
    }
    let plain_ratio = result
        .rows
        .first()
        .and_then(|r| r.get("CPU/req ÷ TLS path"))
        .map(|s| s.median);
    result.targets.push(TargetCheck::new(
        "through nginx: total CPU per message ≤ 0.7× the TLS-terminating-and-re-encrypting path",
        plain_ratio.map_or_else(
            || "–".into(),
            |v| format!("{v:.3}× (at the first row's mix)"),
        ),
        if args.smoke {
            None
        } else {
            plain_ratio.map(|v| v <= 0.7)
        },
    ));
    result.notes.push(
        "CPU is utime+stime of nginx (one process) plus the gateway over the measured window, per request; both pinned to core 0".into(),
    );
    Ok(result)
}
