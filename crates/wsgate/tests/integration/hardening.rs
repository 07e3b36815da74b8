//! Issue 11, hardening round 2: the upstream API refuses before reading a
//! body, 4401 closes look alike, store passwords never reach the output,
//! attacker-chosen strings cannot forge log lines.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wsgate_client::{Incoming, RawSocket, login};

use crate::util::*;

/// Sends `head` (request line and headers, no body) and returns what the
/// gateway answers within `wait`, without ever sending the body.
async fn answer_to_headers(gw: &TestGateway, head: &str, wait: Duration) -> String {
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Ok(Err(_)) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn the_upstream_api_refuses_a_missing_or_wrong_key_before_reading_the_body() {
    // The body deadline is far away: a gateway that waited for the body
    // would answer nothing within the test's 5 s.
    let gw = TestGateway::start(
        "api_keys = [\"hardening-api-key-0123456789\"]\n[limits]\nhttp_body_timeout_secs = 60\n",
    )
    .await;
    for path in ["/api/publish", "/auth/introspect"] {
        for auth in ["", "Authorization: Bearer not-the-key-0123456789\r\n"] {
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: 1000000\r\n\r\n"
            );
            let reply = answer_to_headers(&gw, &head, Duration::from_secs(5)).await;
            assert!(
                reply.starts_with("HTTP/1.1 401"),
                "{path} with {auth:?}: got {reply:?} (the body was never sent)"
            );
            assert!(
                reply
                    .to_ascii_lowercase()
                    .contains("www-authenticate: bearer"),
                "{reply}"
            );
        }
    }
    // The right key still gets through and its body is read.
    let mut http = RawHttp::connect(gw.addr, None).await;
    let reply = http
        .request_with(
            "POST",
            "/auth/introspect",
            Some("Bearer hardening-api-key-0123456789"),
            br#"{"session":"AAAAAAAAAAAAAAAAAAAAAA"}"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert_eq!(reply.json["active"], false);
}

/// The close a KEY_INIT on `raw` gets: code and reason, as sent.
async fn close_of(raw: &mut RawSocket, key_init: Vec<u8>) -> (Option<u16>, String) {
    raw.send_binary(key_init).await.unwrap();
    loop {
        match raw.recv().await.unwrap() {
            Incoming::Closed { code, reason } => return (code, reason),
            Incoming::Binary(_) => continue,
        }
    }
}

#[tokio::test]
async fn every_4401_close_is_the_same_whatever_the_cause() {
    let gw = TestGateway::start("").await;
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();

    // An unknown session id.
    let mut raw = RawSocket::open(&gw.client()).await.unwrap();
    let hello = raw.recv_hello().await.unwrap();
    let unknown = close_of(
        &mut raw,
        key_init_message(&session, &hello, "AAAAAAAAAAAAAAAAAAAAAA"),
    )
    .await;

    // A KEY_INIT that does not open: sealed to another connection's nonce.
    let mut other = RawSocket::open(&gw.client()).await.unwrap();
    let other_hello = other.recv_hello().await.unwrap();
    let mut raw = RawSocket::open(&gw.client()).await.unwrap();
    raw.recv_hello().await.unwrap();
    let unopened = close_of(
        &mut raw,
        key_init_message(&session, &other_hello, &session.id),
    )
    .await;

    // The right KEY_INIT from another IP than the login's.
    let mut raw = RawSocket::open(&gw.client().local_addr(SECOND_CLIENT_IP))
        .await
        .unwrap();
    let hello = raw.recv_hello().await.unwrap();
    let elsewhere = close_of(&mut raw, key_init_message(&session, &hello, &session.id)).await;

    assert_eq!(unknown.0, Some(4401));
    assert_eq!(unknown, unopened, "unknown session vs. did not open");
    assert_eq!(unknown, elsewhere, "unknown session vs. another IP");

    // The causes are told apart in the metrics, not on the wire.
    let text = crate::metrics::scrape(&gw).await;
    for cause in ["unknown_session", "open_failed", "ip_mismatch"] {
        assert_eq!(
            crate::metrics::value(
                &text,
                &format!("wsgate_key_init_refusals_total{{cause=\"{cause}\"}}")
            ),
            1,
            "{cause}"
        );
    }
    assert_eq!(
        crate::metrics::value(&text, "wsgate_key_establishments_total{result=\"failed\"}"),
        3
    );
}

/// `wsgate serve` with `setting = value` against a store nobody listens on:
/// its standard error.
fn serve_error(dir: &std::path::Path, setting: &str, value: &str) -> String {
    let d = dir.display().to_string();
    let config = dir.join("store.toml");
    let value = value.replace('\\', "\\\\").replace('"', "\\\"");
    std::fs::write(
        &config,
        format!("data_dir = \"{d}\"\n{setting} = \"{value}\"\n"),
    )
    .unwrap();
    let (ok, _, err) = crate::cli::run(
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        None,
    );
    assert!(!ok, "{setting} = {value}: started?");
    err
}

#[test]
fn no_store_password_form_reaches_the_error_output() {
    let dir = tempfile::tempdir().unwrap();
    for (setting, value) in [
        ("credentials", "postgres://wsgate:Hunter2pw@127.0.0.1:1/db"),
        (
            "credentials",
            "postgresql://wsgate:Hunter2pw@127.0.0.1:1/db",
        ),
        (
            "credentials",
            "postgres://wsgate@127.0.0.1:1/db?password=Hunter2pw",
        ),
        (
            "credentials",
            "postgres://wsgate@127.0.0.1:1/db?sslmode=disable&PASSWORD=Hunter2pw&x=1",
        ),
        (
            "credentials",
            "postgres://127.0.0.1:1/db?user=wsgate&password=Hunter2pw@x",
        ),
        (
            "credentials",
            "postgres://wsgate@127.0.0.1:1/db?pass%77ord=Hunter2pw",
        ),
        ("state", "redis://:Hunter2pw@127.0.0.1:1"),
        ("state", "redis://wsgate:Hunter2pw@127.0.0.1:1/0"),
        ("state", "rediss://wsgate:Hunter2pw@127.0.0.1:1/0"),
        ("state", "redis://127.0.0.1:1/0?password=Hunter2pw"),
        (
            "state",
            "redis://wsgate:Hunter2pw@127.0.0.1:1/0?password=Hunter2pw",
        ),
        ("state", "redis+unix:///run/redis.sock?password=Hunter2pw"),
    ] {
        // key=value connection strings are covered by describe_url's unit
        // test: the config check refuses them first and repeats the value.
        let err = serve_error(dir.path(), setting, value);
        assert!(
            !err.contains("Hunter2pw") && !err.contains("Hunter2"),
            "{setting} = {value:?} printed its password: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn attacker_chosen_names_cannot_forge_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["serve", "--data-dir", d, "--listen", &listen])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stderr.read_to_end(&mut all);
        all
    });
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let forged = "x\n2026-01-01T00:00:00.000000Z  INFO wsgate_server::http::auth: login succeeded user=\"admin\" \u{1b}[2K\u{1b}[1A\r";
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "the gateway did not come up");
    // A login by hand for a name holding the forgery (no client would
    // SASLprep it through), failed at the second request.
    let mut http = RawHttp::connect(addr, None).await;
    let first = format!("p=wsgate-v1,,n={forged},r=hardeningnonce0123456789");
    let (reply, begun) = http.put_first(&first).await;
    // A server that refuses such a name outright is fine too.
    let began = begun.is_some();
    if let Some(begun) = begun {
        let fp = wsgate_proto::keys::fingerprint_of(&http.server_pk().await);
        let nonce = begun
            .server_first
            .split(',')
            .find_map(|p| p.strip_prefix("r="))
            .unwrap()
            .to_owned();
        let cbind = wsgate_proto::b64::encode_b64(
            format!("p=wsgate-v1,,ip={};key={fp}", begun.ip).as_bytes(),
        );
        let final_ = format!(
            "c={cbind},r={nonce},p={}",
            wsgate_proto::b64::encode_b64(&[0u8; 32])
        );
        let second = http.put_second(&begun, &final_).await;
        assert_eq!(second.reply.status, 401);
    } else {
        assert_eq!(reply.status, 401, "{:?}", reply.json);
    }
    // A KEY_INIT whose session id (the envelope name) holds the forgery.
    let config = wsgate_client::ClientConfig::from_addr(addr);
    let mut raw = RawSocket::open(&config).await.unwrap();
    raw.recv_hello().await.unwrap();
    let b64u = wsgate_proto::b64::encode_b64u;
    let body =
        serde_json::json!({"kid": b64u(&[0; 8]), "enc": b64u(&[0; 32]), "ct": b64u(&[0; 48])})
            .to_string();
    let message = wsgate_proto::envelope::encode(0x02, 0, 0, forged, body.as_bytes()).unwrap();
    assert_eq!(close_of(&mut raw, message).await.0, Some(4401));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill();
    let _ = child.wait();
    let logs = reader.join().unwrap();
    let text = String::from_utf8_lossy(&logs);
    if began {
        assert!(text.contains("login failed"), "the capture works: {text}");
    }
    assert!(
        !logs.contains(&0x1b),
        "an ESC byte reached the log: {text:?}"
    );
    assert!(!logs.contains(&b'\r'), "a CR reached the log: {text:?}");
    for line in text.lines() {
        assert!(
            !line.starts_with("2026-01-01"),
            "a forged line: {line:?} in {text}"
        );
        assert!(!line.contains("login succeeded"), "{line:?}");
    }
}
