//! `GET /ws`: key establishment, protected frames, close codes (protocol.md §5).

use wsgate_client::{Connection, Error, RawSocket, login};
use wsgate_proto::envelope::{self, FLAG_ENC, FLAG_ERR, MessageType};

use crate::util::*;

const SENSITIVE_ROUTE: &str =
    "[[routes]]\nname = \"secret.echo\"\nbuiltin = \"echo\"\nsensitive = true\n";

async fn connected(gw: &TestGateway) -> (wsgate_client::Session, Connection) {
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    let conn = session.connect(&gw.client()).await.unwrap();
    (session, conn)
}

#[tokio::test]
async fn plain_and_sensitive_echo_and_whoami_work() {
    let gw = TestGateway::start(SENSITIVE_ROUTE).await;
    let (session, mut conn) = connected(&gw).await;
    assert_eq!(conn.user, ALICE);
    assert_eq!(conn.ip, "127.0.0.1");
    assert!(conn.expires_in > 0 && conn.expires_in <= 12 * 3600);
    assert_eq!(
        conn.request("sys.echo", b"plain hello", false)
            .await
            .unwrap(),
        b"plain hello"
    );
    assert_eq!(
        conn.request("sys.echo", b"sensitive hello", true)
            .await
            .unwrap(),
        b"sensitive hello"
    );
    assert_eq!(
        conn.request("secret.echo", b"top secret", true)
            .await
            .unwrap(),
        b"top secret"
    );
    let big = vec![0xAB; 100_000];
    assert_eq!(conn.request("sys.echo", &big, true).await.unwrap(), big);
    let who: serde_json::Value =
        serde_json::from_slice(&conn.request("sys.whoami", b"", false).await.unwrap()).unwrap();
    assert_eq!(who["user"], ALICE);
    assert_eq!(who["ip"], "127.0.0.1");
    assert!(who["session_expires_in"].as_u64().unwrap() > 0);
    // A second connection of the same session works side by side.
    let mut second = session.connect(&gw.client()).await.unwrap();
    assert_eq!(
        second.request("sys.echo", b"two", true).await.unwrap(),
        b"two"
    );
    assert_eq!(
        conn.request("sys.echo", b"one", false).await.unwrap(),
        b"one"
    );
}

#[tokio::test]
async fn plaintext_to_a_sensitive_route_is_refused_and_the_connection_stays_usable() {
    let gw = TestGateway::start(SENSITIVE_ROUTE).await;
    let (_, mut conn) = connected(&gw).await;
    let err = conn
        .request("secret.echo", b"oops", false)
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some("encryption_required"), "{err:?}");
    assert_eq!(
        conn.request("secret.echo", b"fine", true).await.unwrap(),
        b"fine"
    );
}

#[tokio::test]
async fn errors_mirror_enc_and_unknown_routes_are_not_found() {
    let gw = TestGateway::start("").await;
    let (_, mut conn) = connected(&gw).await;
    let id = conn.next_request_id();
    conn.send(
        MessageType::Request as u8,
        FLAG_ENC,
        id,
        "no.such.route",
        b"",
    )
    .await
    .unwrap();
    let msg = conn.recv().await.unwrap();
    assert_eq!(
        (msg.msg_type, msg.flags, msg.id),
        (MessageType::Response as u8, FLAG_ENC | FLAG_ERR, id)
    );
    let body: serde_json::Value = serde_json::from_slice(&msg.body).unwrap();
    assert_eq!(body["code"], "not_found");
    let err = conn
        .call(MessageType::Subscribe, "news", b"", false)
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some("not_found"));
}

#[tokio::test]
async fn a_key_init_replayed_on_a_new_connection_is_refused_with_4401() {
    let gw = TestGateway::start("").await;
    let (_, conn) = connected(&gw).await;
    let mut replay = RawSocket::open(&gw.client()).await.unwrap();
    replay.recv_hello().await.unwrap();
    replay
        .send_binary(conn.key_init_message().to_vec())
        .await
        .unwrap();
    assert_eq!(replay.expect_close().await.unwrap(), Some(4401));
}

#[tokio::test]
async fn a_session_used_from_another_address_is_refused_with_4401() {
    let gw = TestGateway::start("").await;
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    // The client itself notices the IP change and refuses to go on.
    let other = gw.client().local_addr(SECOND_CLIENT_IP);
    let err = session.connect(&other).await.unwrap_err();
    assert!(matches!(err, Error::IpChanged { .. }), "{err:?}");
    // A client that sends KEY_INIT anyway is refused by the gateway.
    let mut raw = RawSocket::open(&other).await.unwrap();
    let hello = raw.recv_hello().await.unwrap();
    assert_eq!(hello.ip, "127.0.0.2");
    raw.send_binary(key_init_message(&session, &hello, &session.id))
        .await
        .unwrap();
    assert_eq!(raw.expect_close().await.unwrap(), Some(4401));
}

#[tokio::test]
async fn key_init_problems_close_with_the_specified_codes() {
    let gw = TestGateway::start("").await;
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();

    // Not a KEY_INIT first: 4400.
    let mut raw = RawSocket::open(&gw.client()).await.unwrap();
    raw.recv_hello().await.unwrap();
    raw.send_binary(envelope::encode(0x10, 0, 1, "sys.echo", b"").unwrap())
        .await
        .unwrap();
    assert_eq!(raw.expect_close().await.unwrap(), Some(4400));

    // Garbage KEY_INIT body: 4400.
    let mut raw = RawSocket::open(&gw.client()).await.unwrap();
    raw.recv_hello().await.unwrap();
    raw.send_binary(envelope::encode(0x02, 0, 0, &session.id, b"{\"kid\":1}").unwrap())
        .await
        .unwrap();
    assert_eq!(raw.expect_close().await.unwrap(), Some(4400));

    // KEY_INIT with a flag set: 4400.
    let mut raw = RawSocket::open(&gw.client()).await.unwrap();
    let hello = raw.recv_hello().await.unwrap();
    let mut msg = key_init_message(&session, &hello, &session.id);
    msg[1] = FLAG_ENC;
    raw.send_binary(msg).await.unwrap();
    assert_eq!(raw.expect_close().await.unwrap(), Some(4400));

    // Unknown session: 4401.
    let mut raw = RawSocket::open(&gw.client()).await.unwrap();
    let hello = raw.recv_hello().await.unwrap();
    let mut forged = session.clone();
    forged.id = "AAAAAAAAAAAAAAAAAAAAAA".into();
    raw.send_binary(key_init_message(&forged, &hello, &forged.id))
        .await
        .unwrap();
    assert_eq!(raw.expect_close().await.unwrap(), Some(4401));

    // Garbage message under 8 bytes: 4400.
    let mut raw = RawSocket::open(&gw.client()).await.unwrap();
    raw.recv_hello().await.unwrap();
    raw.send_binary(vec![1, 2, 3]).await.unwrap();
    assert_eq!(raw.expect_close().await.unwrap(), Some(4400));
}

#[tokio::test]
async fn no_key_init_in_time_closes_with_4408() {
    let gw = TestGateway::start("[limits]\nkey_init_timeout_secs = 1").await;
    let mut raw = RawSocket::open(&gw.client()).await.unwrap();
    raw.recv_hello().await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(raw.expect_close().await.unwrap(), Some(4408));
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
}

#[tokio::test]
async fn a_tampered_frame_closes_with_4400() {
    let gw = TestGateway::start("").await;
    let (_, mut conn) = connected(&gw).await;
    let id = conn.next_request_id();
    let mut frame = conn
        .seal(MessageType::Request as u8, 0, id, "sys.echo", b"amount=100")
        .unwrap();
    let pos = frame.len() - 17; // last plaintext byte
    frame[pos] ^= 0x01;
    conn.raw().send_binary(frame).await.unwrap();
    assert_eq!(conn.raw().expect_close().await.unwrap(), Some(4400));
}

#[tokio::test]
async fn replayed_and_reordered_frames_close_with_4400() {
    let gw = TestGateway::start("").await;
    let (_, mut conn) = connected(&gw).await;
    let first = conn
        .seal(MessageType::Request as u8, 0, 1, "sys.echo", b"a")
        .unwrap();
    conn.raw().send_binary(first.clone()).await.unwrap();
    assert_eq!(conn.recv().await.unwrap().body, b"a");
    conn.raw().send_binary(first).await.unwrap();
    assert_eq!(conn.raw().expect_close().await.unwrap(), Some(4400));

    let (_, mut conn) = connected(&gw).await;
    let _skipped = conn
        .seal(MessageType::Request as u8, 0, 1, "sys.echo", b"a")
        .unwrap();
    let second = conn
        .seal(MessageType::Request as u8, 0, 2, "sys.echo", b"b")
        .unwrap();
    conn.raw().send_binary(second).await.unwrap();
    assert_eq!(conn.raw().expect_close().await.unwrap(), Some(4400));
}

#[tokio::test]
async fn client_frames_breaking_the_rules_close_with_4400() {
    let gw = TestGateway::start("").await;
    let cases: [(u8, u8, u32, &str); 4] = [
        (
            MessageType::Request as u8,
            FLAG_ERR,
            1,
            "ERR flag from a client",
        ),
        (MessageType::Request as u8, 0, 0, "request id 0"),
        (MessageType::Response as u8, 0, 1, "server-to-client type"),
        (0x7f, 0, 1, "unknown type"),
    ];
    for (msg_type, flags, id, why) in cases {
        let (_, mut conn) = connected(&gw).await;
        conn.send(msg_type, flags, id, "sys.echo", b"")
            .await
            .unwrap();
        assert_eq!(
            conn.raw().expect_close().await.unwrap(),
            Some(4400),
            "{why}"
        );
    }
    // Reserved flag bits: hand-built (the sealer refuses to make them).
    let (_, mut conn) = connected(&gw).await;
    let mut frame = conn
        .seal(MessageType::Request as u8, 0, 1, "sys.echo", b"")
        .unwrap();
    frame[1] = 0x04;
    conn.raw().send_binary(frame).await.unwrap();
    assert_eq!(conn.raw().expect_close().await.unwrap(), Some(4400));
}

#[tokio::test]
async fn a_text_frame_closes_with_1003() {
    let gw = TestGateway::start("").await;
    let (_, mut conn) = connected(&gw).await;
    conn.raw().send_text("hello").await.unwrap();
    assert_eq!(conn.raw().expect_close().await.unwrap(), Some(1003));
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009() {
    let gw = TestGateway::start("[limits]\nmax_message_size = 4096").await;
    let (_, mut conn) = connected(&gw).await;
    // Exactly at the limit is fine.
    let at_limit = vec![1u8; 4096 - 8 - "sys.echo".len() - 16];
    assert_eq!(
        conn.request("sys.echo", &at_limit, false).await.unwrap(),
        at_limit
    );
    let frame = conn
        .seal(MessageType::Request as u8, 0, 99, "sys.echo", &[0u8; 5000])
        .unwrap();
    conn.raw().send_binary(frame).await.unwrap();
    assert_eq!(conn.raw().expect_close().await.unwrap(), Some(1009));
}

#[tokio::test]
async fn logout_closes_every_connection_with_4001_and_the_session_is_refused() {
    let gw = TestGateway::start("").await;
    let (session, conn) = connected(&gw).await;
    let mut other = session.connect(&gw.client()).await.unwrap();
    conn.logout().await.unwrap();
    assert_eq!(other.raw().expect_close().await.unwrap(), Some(4001));
    let err = session.connect(&gw.client()).await.unwrap_err();
    assert_eq!(err.close_code(), Some(4401), "{err:?}");
}

/// Sends echo requests every 5 ms until the connection ends, and returns
/// the error that ended it. Such a client is nearly always about to send
/// when the gateway's close comes, and sends before it reads the close: a
/// gateway that dropped the socket right after its close frame would answer
/// that request with a reset, and the client would see a broken pipe (its
/// reply to the close fails) instead of the close code. The gateway waits
/// for the client's close instead.
fn busy(mut conn: Connection) -> tokio::task::JoinHandle<Error> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = conn.request("sys.echo", b"busy", true).await {
                return e;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
}

#[tokio::test]
async fn a_client_busy_sending_when_its_session_ends_still_gets_4001() {
    let gw = TestGateway::start("").await;
    let (session, conn) = connected(&gw).await;
    let requests = busy(session.connect(&gw.client()).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    conn.logout().await.unwrap();
    let err = requests.await.unwrap();
    assert_eq!(err.close_code(), Some(4001), "{err:?}");
}

#[tokio::test]
async fn a_client_busy_sending_when_its_session_expires_still_gets_4001() {
    let gw = TestGateway::start("[login]\nsession_ttl_secs = 2").await;
    let (_, conn) = connected(&gw).await;
    let err = busy(conn).await.unwrap();
    assert_eq!(err.close_code(), Some(4001), "{err:?}");
}

#[tokio::test]
async fn a_slow_consumer_busy_sending_still_gets_4429() {
    let gw = TestGateway::start(
        "[limits]\nsend_queue = 1\n[[channels]]\npattern = \"chat.*\"\npublish = \"authenticated\"\n",
    )
    .await;
    let (_, mut conn) = connected(&gw).await;
    conn.call(MessageType::Subscribe, "chat.room", b"", false)
        .await
        .unwrap();
    let requests = busy(conn);
    // Bursts of PUBLISH, each handled in one turn: more events at once than
    // the subscriber's queue (one event) holds.
    let bob = login(&gw.client(), BOB, BOB_PASSWORD).await.unwrap();
    let mut publisher = bob.connect(&gw.client()).await.unwrap();
    let started = std::time::Instant::now();
    while !requests.is_finished() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the subscriber was never disconnected"
        );
        let ids: Vec<u32> = (0..20).map(|_| publisher.next_request_id()).collect();
        for &id in &ids {
            publisher
                .send(MessageType::Publish as u8, 0, id, "chat.room", b"\"hi\"")
                .await
                .unwrap();
        }
        for _ in &ids {
            publisher.recv().await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let err = requests.await.unwrap();
    assert_eq!(err.close_code(), Some(4429), "{err:?}");
}

#[tokio::test]
async fn a_client_busy_sending_when_the_gateway_stops_still_gets_1001() {
    let gw = TestGateway::start("").await;
    let (_, conn) = connected(&gw).await;
    let requests = busy(conn);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let stopping = std::time::Instant::now();
    drop(gw);
    let err = requests.await.unwrap();
    assert_eq!(err.close_code(), Some(1001), "{err:?}");
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
}

/// A socket still waiting for KEY_INIT has no session to be woken through;
/// a graceful stop must still close it at once, not at its KEY_INIT
/// deadline (which would hold the whole stop that long).
#[tokio::test]
async fn a_socket_without_key_init_is_closed_1001_at_once_when_the_gateway_stops() {
    let gw = TestGateway::start("[limits]\nkey_init_timeout_secs = 30").await;
    let mut raw = RawSocket::open(&gw.client()).await.unwrap();
    raw.recv_hello().await.unwrap();
    let stopping = std::time::Instant::now();
    drop(gw);
    assert_eq!(raw.expect_close().await.unwrap(), Some(1001));
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
}

#[tokio::test]
async fn an_expired_session_closes_with_4001() {
    let gw = TestGateway::start("[login]\nsession_ttl_secs = 2").await;
    let (session, mut conn) = connected(&gw).await;
    assert_eq!(session.expires_in, 2);
    assert_eq!(conn.raw().expect_close().await.unwrap(), Some(4001));
    let err = session.connect(&gw.client()).await.unwrap_err();
    assert_eq!(err.close_code(), Some(4401), "{err:?}");
}

#[tokio::test]
async fn an_upgrade_without_the_subprotocol_is_refused() {
    let gw = TestGateway::start("").await;
    let err = RawSocket::open_with_protocol(&gw.client(), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    let err = RawSocket::open_with_protocol(&gw.client(), Some("chat"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
}

#[tokio::test]
async fn raw_echo_exists_only_when_enabled_and_echoes_both_kinds() {
    // /raw-echo reads with fastwebsockets, /raw-echo-frames with the /ws
    // driver's own reader (both Autobahn-tested by scripts/autobahn).
    let paths = ["/raw-echo", "/raw-echo-frames"];
    let gw = TestGateway::start("").await;
    let mut http = RawHttp::connect(gw.addr, None).await;
    for path in paths {
        assert_eq!(http.request("GET", path, b"").await.status, 404, "{path}");
    }

    let gw = TestGateway::start("[testing]\nraw_echo = true").await;
    for path in paths {
        let mut raw = RawSocket::open_raw_path(&gw.client(), path).await.unwrap();
        raw.send_binary(vec![1, 2, 3]).await.unwrap();
        assert_eq!(raw.recv_binary().await.unwrap(), vec![1, 2, 3], "{path}");
        raw.send_text("text comes back as text").await.unwrap();
        assert!(
            matches!(raw.recv().await, Err(Error::Protocol(m)) if m.contains("text frame")),
            "{path}"
        );
    }
}
