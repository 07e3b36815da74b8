//! The logs of a whole session, at the most verbose level, contain no
//! secret: not the password, the session key, a login's exchange key, the
//! sensitive payload or the API key, in any common encoding.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use wsgate_client::{ClientConfig, login};
use wsgate_proto::envelope::MessageType;

const PASSWORD: &str = "log-scan password 8f2c";
const SENSITIVE: &[u8] = b"card 4111-1111-1111-1111 cvv 737";
const API_KEY: &str = "log-scan-api-key-0123456789";

fn encodings(secret: &[u8]) -> Vec<String> {
    let mut out = vec![
        String::from_utf8_lossy(secret).into_owned(),
        secret.iter().map(|b| format!("{b:02x}")).collect(),
        base64::engine::general_purpose::STANDARD.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
    ];
    out.retain(|s| s.len() >= 8);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_session_logs_no_secret_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let config = dir.path().join("g.toml");
    std::fs::write(
        &config,
        format!(
            "api_keys = [\"{API_KEY}\"]\n[[routes]]\nname = \"secret.echo\"\nbuiltin = \"echo\"\nsensitive = true\n\
             [[channels]]\npattern = \"user.{{user}}.*\"\nsensitive = true\nsubscribe = \"owner\"\n"
        ),
    )
    .unwrap();
    let (ok, _, err) = crate::cli::run(
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
        Some(PASSWORD),
    );
    assert!(ok, "{err}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args([
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            d,
            "--listen",
            &listen,
        ])
        .env("RUST_LOG", "trace")
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
    let client = ClientConfig::from_addr(listen.parse().unwrap());
    let session = async {
        for _ in 0..100 {
            if let Ok(s) = login(&client, "carol", PASSWORD).await {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("gateway did not come up");
    }
    .await;
    // A failed login too: wrong passwords must not be logged either.
    assert!(
        login(&client, "carol", "log-scan wrong guess 1d9e")
            .await
            .is_err()
    );
    let mut conn = session.connect(&client).await.unwrap();
    assert_eq!(
        conn.request("secret.echo", SENSITIVE, true).await.unwrap(),
        SENSITIVE
    );
    conn.call(MessageType::Subscribe, "user.carol.inbox", b"", true)
        .await
        .unwrap();
    let mut http = crate::util::RawHttp::connect(client.addr, None).await;
    let body = json!({"channel": "user.carol.inbox", "data": String::from_utf8_lossy(SENSITIVE)});
    let auth = format!("Bearer {API_KEY}");
    let reply = http
        .request_with(
            "POST",
            "/api/publish",
            Some(&auth),
            body.to_string().as_bytes(),
        )
        .await;
    assert_eq!(reply.status, 200);
    conn.recv().await.unwrap();
    // A sealed login by hand, so the test knows its exchange key.
    let (begun, start) = crate::util::first_request(&mut http, "carol", PASSWORD).await;
    let exchange_key = *begun.key.as_bytes();
    let fp = wsgate_proto::keys::fingerprint_of(&http.server_pk().await);
    let cf = crate::util::client_final(&begun, start, &fp);
    assert_eq!(http.put_second(&begun, &cf).await.reply.status, 200);
    let session_key = *session.session_key();
    conn.logout().await.unwrap();
    stop(&mut child);
    let logs = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    assert!(
        logs.contains("login succeeded"),
        "the capture works: {} bytes",
        logs.len()
    );
    for (what, secret) in [
        ("password", PASSWORD.as_bytes()),
        ("wrong password", b"log-scan wrong guess 1d9e".as_slice()),
        ("session key", &session_key[..]),
        ("login exchange key", &exchange_key[..]),
        ("sensitive payload", SENSITIVE),
        ("API key", API_KEY.as_bytes()),
    ] {
        for enc in encodings(secret) {
            assert!(!logs.contains(&enc), "the logs contain the {what} ({enc})");
        }
    }
}

/// Stops the gateway.
fn stop(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}
