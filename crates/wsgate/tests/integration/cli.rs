//! The built `wsgate` binary, driven as a user would.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wsgate_client::{ClientConfig, login};

fn wsgate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
    cmd.env("RUST_LOG", "warn");
    cmd
}

pub(crate) fn run(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = wsgate()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `wsgate serve` process; killed when dropped.
pub(crate) struct Served {
    pub(crate) child: Child,
    pub(crate) addr: std::net::SocketAddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM to `child`.
fn sigterm(child: &Child) {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
}

/// How `child` exited, at most 15 s after `since` (its SIGTERM).
fn exit_status_within_15_s(
    child: &mut Child,
    since: std::time::Instant,
) -> std::process::ExitStatus {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            since.elapsed() < Duration::from_secs(15),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn serve(args: &[&str]) -> Served {
    serve_with(args, Stdio::null())
}

/// `wsgate serve --config <config>` on a free port, its log (stderr) in
/// `log`; killed when dropped.
pub(crate) fn serve_logged(config: &str, log: &std::path::Path) -> Served {
    serve_with(
        &["--config", config, "--listen", "127.0.0.1:0"],
        Stdio::from(std::fs::File::create(log).unwrap()),
    )
}

fn serve_with(args: &[&str], stderr: Stdio) -> Served {
    let mut child = wsgate()
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("wsgate serve printed no listening line");
        if let Some(url) = line.split("listening on http://").nth(1) {
            return Served {
                child,
                addr: url.trim().parse().unwrap(),
            };
        }
    }
}

#[test]
fn user_add_list_remove_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, out, err) = run(
        &[
            "user",
            "add",
            "carol",
            "--data-dir",
            d,
            "--password-stdin",
            "--iterations",
            "4096",
        ],
        Some("s3cret pass\n"),
    );
    assert!(ok, "{err}");
    assert!(out.contains("added user \"carol\""), "{out}");
    let (ok, _, err) = run(
        &["user", "add", "carol", "--data-dir", d, "--password-stdin"],
        Some("x\n"),
    );
    assert!(!ok);
    assert!(err.contains("already exists"), "{err}");
    let (ok, out, _) = run(
        &[
            "user",
            "add",
            "dave",
            "--data-dir",
            d,
            "--password-stdin",
            "--iterations",
            "4096",
        ],
        Some("pw\n"),
    );
    assert!(ok, "{out}");
    let (ok, out, _) = run(&["user", "list", "--data-dir", d], None);
    assert!(ok);
    assert_eq!(out, "carol\ndave\n");
    let (ok, _, _) = run(&["user", "remove", "dave", "--data-dir", d], None);
    assert!(ok);
    let (ok, _, err) = run(&["user", "remove", "dave", "--data-dir", d], None);
    assert!(!ok);
    assert!(err.contains("no user \"dave\""), "{err}");
    let (_, out, _) = run(&["user", "list", "--data-dir", d], None);
    assert_eq!(out, "carol\n");
    // The password is stored nowhere.
    let db = std::fs::read(dir.path().join("credentials.sqlite3")).unwrap();
    assert!(!db.windows(11).any(|w| w == b"s3cret pass"));
    // Empty passwords are refused.
    let (ok, _, err) = run(
        &["user", "add", "erin", "--data-dir", d, "--password-stdin"],
        Some("\n"),
    );
    assert!(!ok && err.contains("empty"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_demo_creates_the_data_dir_and_the_demo_user_logs_in() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let served = serve(&[
        "--demo",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    use std::os::unix::fs::PermissionsExt as _;
    let secret_mode = std::fs::metadata(data.join("server_secret"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(secret_mode & 0o777, 0o600);
    let key = std::fs::read_dir(data.join("keys"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(key.metadata().unwrap().permissions().mode() & 0o777, 0o600);
    let config = ClientConfig::from_addr(served.addr);
    let session = login(&config, "demo", "wsgate-demo").await.unwrap();
    let mut conn = session.connect(&config).await.unwrap();
    assert_eq!(conn.request("sys.echo", b"hi", true).await.unwrap(), b"hi");
}

/// Whoever started the gateway may stop reading its stdout after the
/// address (a supervisor, a bench, `| head -1`): its later status lines
/// (and "wsgate stopped") must not kill it. Before, `println!` panicked on
/// the closed pipe: a gateway still printing its banner died and its first
/// client got a reset, and every such stop exited 101.
#[tokio::test]
async fn serve_keeps_serving_when_its_stdout_is_closed_after_the_first_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = wsgate()
        .args(["serve", "--demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    // Closed before the gateway can have printed the rest.
    drop(stdout);
    let addr: std::net::SocketAddr = first
        .split("listening on http://")
        .nth(1)
        .unwrap_or_else(|| panic!("not the listening line: {first:?}"))
        .trim()
        .parse()
        .unwrap();
    let served = Served { child, addr };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let config = ClientConfig::from_addr(served.addr);
    let session = login(&config, "demo", "wsgate-demo").await.unwrap();
    let mut conn = session.connect(&config).await.unwrap();
    assert_eq!(conn.request("sys.echo", b"hi", true).await.unwrap(), b"hi");
    let mut served = served;
    assert!(
        served.child.try_wait().unwrap().is_none(),
        "the gateway exited"
    );
    // Its last line ("wsgate stopped") is always written to the closed
    // pipe: the stop is still clean.
    sigterm(&served.child);
    let started = std::time::Instant::now();
    let status = exit_status_within_15_s(&mut served.child, started);
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_account_lives_only_while_demo_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let args = ["--listen", "127.0.0.1:0", "--data-dir", d];
    let demo = serve(&[&["--demo"][..], &args].concat());
    let config = ClientConfig::from_addr(demo.addr);
    login(&config, "demo", "wsgate-demo").await.unwrap();
    drop(demo);
    // Nothing of it is left in the credential store...
    let (ok, out, err) = run(&["user", "list", "--data-dir", d], None);
    assert!(ok, "{err}");
    assert!(!out.lines().any(|l| l.trim() == "demo"), "{out}");
    // ...so a later serve without --demo refuses the public password.
    let plain = serve(&args);
    let config = ClientConfig::from_addr(plain.addr);
    assert!(login(&config, "demo", "wsgate-demo").await.is_err());
    drop(plain);

    // A store that holds the public account (as earlier versions left it)
    // is refused without --demo, with the command that fixes it.
    let (ok, _, err) = run(
        &[
            "user",
            "add",
            "demo",
            "--data-dir",
            d,
            "--password-stdin",
            "--iterations",
            "4096",
        ],
        Some("wsgate-demo\n"),
    );
    assert!(ok, "{err}");
    let (ok, _, err) = run(&[&["serve"][..], &args].concat(), None);
    assert!(
        !ok,
        "serve started with the public demo account in its store"
    );
    assert!(
        err.contains("public demo account") && err.contains("wsgate user remove demo"),
        "{err}"
    );
    // A real user who happens to be named demo is nobody's business.
    let (ok, _, err) = run(&["user", "remove", "demo", "--data-dir", d], None);
    assert!(ok, "{err}");
    let (ok, _, err) = run(
        &[
            "user",
            "add",
            "demo",
            "--data-dir",
            d,
            "--password-stdin",
            "--iterations",
            "4096",
        ],
        Some("a real password of theirs\n"),
    );
    assert!(ok, "{err}");
    let plain = serve(&args);
    let config = ClientConfig::from_addr(plain.addr);
    login(&config, "demo", "a real password of theirs")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn keygen_rotates_and_the_newest_key_is_current() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, first, err) = run(&["keygen", "--data-dir", d], None);
    assert!(ok, "{err}");
    let (ok, second, _) = run(&["keygen", "--data-dir", d], None);
    assert!(ok);
    assert_ne!(first, second);
    assert_eq!(
        std::fs::read_dir(dir.path().join("keys")).unwrap().count(),
        2
    );
    let fp = second
        .split("fingerprint ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .to_owned();
    let (ok, _, _) = run(
        &[
            "user",
            "add",
            "carol",
            "--data-dir",
            d,
            "--password-stdin",
            "--iterations",
            "4096",
        ],
        Some("pw\n"),
    );
    assert!(ok);
    let served = serve(&["--listen", "127.0.0.1:0", "--data-dir", d]);
    // The newest key is the current one.
    let config = ClientConfig::from_addr(served.addr).pin(fp);
    let session = login(&config, "carol", "pw").await.unwrap();
    session.connect(&config).await.unwrap();
}

#[test]
fn errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:1\"\n[limits]\nmax_mesage_size = 5\n",
    )
    .unwrap();
    let (ok, _, err) = run(&["serve", "--config", config.to_str().unwrap()], None);
    assert!(!ok);
    assert!(
        err.contains("max_mesage_size") && err.contains("line 3"),
        "{err}"
    );

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let d = dir.path().join("d");
    let (ok, _, err) = run(
        &[
            "serve",
            "--listen",
            &addr,
            "--data-dir",
            d.to_str().unwrap(),
        ],
        None,
    );
    assert!(!ok);
    assert!(
        err.contains("already in use") && err.contains("--listen"),
        "{err}"
    );

    // An unreadable key file names the file and the fix.
    let key = std::fs::read_dir(d.join("keys"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, _, err) = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            d.to_str().unwrap(),
        ],
        None,
    );
    assert!(!ok);
    assert!(err.contains("chmod 600") || err.contains("0600"), "{err}");

    let (ok, _, err) = run(
        &[
            "user",
            "list",
            "--data-dir",
            dir.path().join("none").to_str().unwrap(),
        ],
        None,
    );
    assert!(!ok && err.contains("wsgate user add"), "{err}");
}

#[test]
fn unreachable_stores_at_start_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    for (setting, value, expect) in [
        ("state", "redis://127.0.0.1:1", "127.0.0.1:1"),
        (
            "credentials",
            "postgres://wsgate:hunter2@127.0.0.1:1/db",
            "127.0.0.1:1",
        ),
    ] {
        let config = dir.path().join(format!("{setting}.toml"));
        std::fs::write(
            &config,
            format!("data_dir = \"{d}\"\n{setting} = \"{value}\"\n"),
        )
        .unwrap();
        let (ok, _, err) = run(
            &[
                "serve",
                "--config",
                config.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ],
            None,
        );
        assert!(!ok);
        assert!(err.contains(expect), "{setting}: {err}");
        assert!(!err.contains("hunter2"), "passwords never printed: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_websockets_with_1001_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = serve(&[
        "--demo",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let config = ClientConfig::from_addr(served.addr);
    let session = login(&config, "demo", "wsgate-demo").await.unwrap();
    let mut conn = session.connect(&config).await.unwrap();
    assert_eq!(
        conn.request("sys.echo", b"before", true).await.unwrap(),
        b"before"
    );
    let started = std::time::Instant::now();
    sigterm(&served.child);
    assert_eq!(conn.raw().expect_close().await.unwrap(), Some(1001));
    let status = exit_status_within_15_s(&mut served.child, started);
    assert!(status.success(), "{status:?}");
    // The session outlives the process (journaled): a restarted node accepts it.
    let again = serve(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let mut conn = session
        .connect(&ClientConfig::from_addr(again.addr))
        .await
        .unwrap();
    assert_eq!(
        conn.request("sys.echo", b"after", true).await.unwrap(),
        b"after"
    );
}
