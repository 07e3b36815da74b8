//! `/metrics` counts what happens, in the Prometheus text format.

use wsgate_client::login;

use crate::util::*;

pub(crate) fn value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .parse()
        .unwrap()
}

pub(crate) async fn scrape(gw: &TestGateway) -> String {
    let mut tcp = tokio::net::TcpStream::connect(gw.metrics_addr)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("text/plain; version=0.0.4"));
    out
}

#[tokio::test]
async fn a_session_shows_up_in_the_counters() {
    let gw = TestGateway::start("").await;
    let before = scrape(&gw).await;
    assert_eq!(value(&before, "wsgate_logins_total{result=\"ok\"}"), 0);
    assert!(login(&gw.client(), ALICE, "wrong").await.is_err());
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    let mut conn = session.connect(&gw.client()).await.unwrap();
    conn.request("sys.echo", b"0123456789", true).await.unwrap();
    conn.request("sys.echo", b"abc", false).await.unwrap();
    let during = scrape(&gw).await;
    assert_eq!(value(&during, "wsgate_logins_total{result=\"ok\"}"), 1);
    assert_eq!(value(&during, "wsgate_logins_total{result=\"failed\"}"), 1);
    assert_eq!(
        value(&during, "wsgate_key_establishments_total{result=\"ok\"}"),
        1
    );
    assert_eq!(value(&during, "wsgate_connections_open"), 1);
    assert_eq!(
        value(
            &during,
            "wsgate_frames_total{direction=\"in\",enc=\"true\"}"
        ),
        1
    );
    assert_eq!(
        value(
            &during,
            "wsgate_frame_bytes_total{direction=\"in\",enc=\"true\"}"
        ),
        10
    );
    assert_eq!(
        value(
            &during,
            "wsgate_frames_total{direction=\"in\",enc=\"false\"}"
        ),
        1
    );
    // KEY_ACK and one response are ENC, the other response is not.
    assert_eq!(
        value(
            &during,
            "wsgate_frames_total{direction=\"out\",enc=\"true\"}"
        ),
        2
    );
    // A tampered frame is a verification failure.
    let mut frame = conn.seal(0x10, 0, 9, "sys.echo", b"x").unwrap();
    let last = frame.len() - 1;
    frame[last] ^= 1;
    conn.raw().send_binary(frame).await.unwrap();
    assert_eq!(conn.raw().expect_close().await.unwrap(), Some(4400));
    let after = scrape(&gw).await;
    assert_eq!(value(&after, "wsgate_verification_failures_total"), 1);
    assert_eq!(value(&after, "wsgate_connections_open"), 0);
    assert!(!after.contains(ALICE_PASSWORD));
}
