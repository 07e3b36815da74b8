//! Issue 11, item 4: the state store is not a bearer-credential store.
//! Session and exchange records are sealed under a key only the nodes hold
//! (derived from `server_secret`), so whoever can write to Redis cannot
//! plant a session, and whoever can read it (or `sessions.sqlite3`) finds no
//! session key.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wsgate_client::{RawSocket, login};
use wsgate_proto::b64;
use wsgate_proto::envelope::{self, MessageType};
use wsgate_server::store::{MemoryStateStore, PersistentSessions, RedisStateStore, StateStore};

use crate::util::{ALICE, ALICE_PASSWORD, Fleet, RawHttp, TestGateway, config, skip_services};

/// A node on the shared Redis under a prefix of its own; None when the
/// service tests are skipped.
async fn redis_node() -> Option<(TestGateway, String)> {
    if skip_services() {
        return None;
    }
    let fleet = Fleet::new().await;
    let (url, prefix) = (
        wsgate_test_support::shared_redis().url(),
        wsgate_test_support::unique_prefix(),
    );
    let store: Arc<dyn StateStore> = Arc::new(
        RedisStateStore::connect_with_prefix(&url, &prefix)
            .await
            .unwrap(),
    );
    let node = TestGateway::start_with_state(&fleet, config(""), store).await;
    Some((node, prefix))
}

/// One command to the shared Redis, spoken by hand (RESP): what an
/// attacker with access to Redis does. Returns the bulk reply, if any.
async fn redis_command(args: &[&[u8]]) -> Option<Vec<u8>> {
    let port = wsgate_test_support::shared_redis().port();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg);
        request.extend_from_slice(b"\r\n");
    }
    stream.write_all(&request).await.unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("Redis answers within 5 s")
            .unwrap();
        assert!(n > 0, "Redis closed the connection");
        reply.extend_from_slice(&buf[..n]);
        let Some(eol) = reply.windows(2).position(|w| w == b"\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&reply[..eol]).unwrap();
        match head.as_bytes()[0] {
            b'+' | b':' => return None,
            b'-' => panic!(
                "Redis refused {:?}: {head}",
                String::from_utf8_lossy(args[0])
            ),
            b'$' => {
                let len: i64 = head[1..].parse().unwrap();
                let Ok(len) = usize::try_from(len) else {
                    return None;
                };
                if reply.len() >= eol + 2 + len + 2 {
                    return Some(reply[eol + 2..eol + 2 + len].to_vec());
                }
            }
            other => panic!("unexpected RESP reply type {other:#x}"),
        }
    }
}

/// A KEY_INIT for session `id` sealed with `session_key` on a fresh
/// connection to `gw`; the close code the gateway answers with (None if it
/// answered anything but a close, e.g. a KEY_ACK).
async fn key_init_with(gw: &TestGateway, id: &str, session_key: &[u8; 32]) -> Option<u16> {
    let mut http = RawHttp::connect(gw.addr, None).await;
    let server_pk = http.server_pk().await;
    let mut raw = RawSocket::open(&gw.client()).await.unwrap();
    let hello = raw.recv_hello().await.unwrap();
    let ki = wsgate_proto::key_exchange::seal_key_init(
        &mut rand::rng(),
        &server_pk,
        id,
        session_key,
        &hello.raw_nonce().unwrap(),
        &[3; 32],
    )
    .unwrap();
    let msg = envelope::encode(
        MessageType::KeyInit as u8,
        0,
        0,
        id,
        &serde_json::to_vec(&ki).unwrap(),
    )
    .unwrap();
    raw.send_binary(msg).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), raw.expect_close()).await {
        Ok(Ok(code)) => code,
        // Anything but a close (a KEY_ACK) is an accepted KEY_INIT.
        _ => None,
    }
}

/// `wsgate_state_records_refused_total` of `gw`, if it exports one.
async fn records_refused(gw: &TestGateway) -> Option<u64> {
    let text = metrics_text(gw).await;
    text.lines()
        .find_map(|l| l.strip_prefix("wsgate_state_records_refused_total "))
        .map(|v| v.trim().parse().unwrap())
}

async fn metrics_text(gw: &TestGateway) -> String {
    let mut stream = tokio::net::TcpStream::connect(gw.metrics_addr)
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    stream.read_to_end(&mut all).await.unwrap();
    String::from_utf8(all).unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Fails if `bytes` hold `key` raw, in b64u or in b64.
fn assert_no_key(bytes: &[u8], key: &[u8; 32], what: &str) {
    assert!(!contains(bytes, key), "{what} holds the session key raw");
    for encoded in [b64::encode_b64u(key), b64::encode_b64(key)] {
        assert!(
            !contains(bytes, encoded.as_bytes()),
            "{what} holds the session key as {encoded}"
        );
    }
}

/// The attack of the issue: one `SET` of a chosen record, no login, then a
/// KEY_INIT sealed with the chosen key. Before the fix: `KEY_ACK
/// {"user":"alice"}`.
#[tokio::test]
async fn a_forged_session_record_in_redis_is_refused() {
    let Some((gw, prefix)) = redis_node().await else {
        return;
    };
    let chosen = [0x42u8; 32];
    let id = b64::encode_b64u(&[0x17; 16]);
    let forged = serde_json::json!({
        "user": ALICE,
        "ip": "127.0.0.1",
        "key_fp": gw.fingerprint,
        "session_key": b64::encode_b64u(&chosen),
        "expires_at": wsgate_server::store::unix_now() + 3600,
    })
    .to_string();
    let key = format!("{prefix}session:{id}");
    redis_command(&[b"SET", key.as_bytes(), forged.as_bytes(), b"EX", b"3600"]).await;
    let before = records_refused(&gw).await.unwrap_or(0);
    assert_eq!(key_init_with(&gw, &id, &chosen).await, Some(4401));
    assert_eq!(records_refused(&gw).await, Some(before + 1));
}

/// After a real login the Redis value holds no session key; and a sealed
/// record copied under another id opens for nobody, even with the real key.
#[tokio::test]
async fn redis_holds_no_session_key_and_a_copied_record_is_refused() {
    let Some((gw, prefix)) = redis_node().await else {
        return;
    };
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    let key = format!("{prefix}session:{}", session.id);
    let stored = redis_command(&[b"GET", key.as_bytes()])
        .await
        .expect("the session is in Redis");
    assert_no_key(&stored, session.session_key(), "the Redis session record");
    assert!(
        !contains(&stored, ALICE.as_bytes()),
        "the user name is sealed too"
    );

    // The copy, under an id of the attacker's choosing.
    let other = b64::encode_b64u(&[0x29; 16]);
    let copy = format!("{prefix}session:{other}");
    redis_command(&[b"SET", copy.as_bytes(), &stored, b"EX", b"3600"]).await;
    assert_eq!(
        key_init_with(&gw, &other, session.session_key()).await,
        Some(4401)
    );
    // The original still works.
    let mut conn = session.connect(&gw.client()).await.unwrap();
    assert_eq!(conn.request("sys.echo", b"ok", false).await.unwrap(), b"ok");
}

/// A single node's journal (`sessions.sqlite3` in the data directory, and
/// its WAL) never holds a session key.
#[tokio::test]
async fn the_session_journal_holds_no_session_key() {
    let fleet = Fleet::new().await;
    let path = fleet.data.path().join("sessions.sqlite3");
    let state: Arc<dyn StateStore> = Arc::new(
        PersistentSessions::open(&path, MemoryStateStore::new())
            .await
            .unwrap(),
    );
    let gw = TestGateway::start_with_state(&fleet, config(""), state).await;
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    // The journal is written behind; give the writer a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut files = Vec::new();
    for suffix in ["", "-wal"] {
        let mut name = path.clone().into_os_string();
        name.push(suffix);
        files.extend(std::fs::read(&name).unwrap_or_default());
    }
    assert!(
        contains(&files, session.id.as_bytes()),
        "the journal holds the session"
    );
    assert_no_key(&files, session.session_key(), "sessions.sqlite3");
    // And the session works.
    let mut conn = session.connect(&gw.client()).await.unwrap();
    assert_eq!(conn.request("sys.echo", b"ok", false).await.unwrap(), b"ok");
}
