//! The Rust client's own behaviour against a real gateway.

use std::time::{Duration, Instant};

use wsgate_client::{Error, RawSocket};

use crate::util::TestGateway;

/// `recv` keeps one timer across calls and moves it when it fires early; a
/// call must still wait its whole timeout from its own start, and no
/// message may be lost to the timer.
#[tokio::test]
async fn recv_times_out_a_full_timeout_after_each_call_and_loses_nothing() {
    const T: Duration = Duration::from_millis(400);
    let gw = TestGateway::start("[testing]\nraw_echo = true").await;
    let config = gw.client().timeout(T);
    let mut raw = RawSocket::open_raw_path(&config, "/raw-echo")
        .await
        .unwrap();

    // The timer was armed at open; these calls start after it would have
    // fired for them, so each one moves it.
    for round in 0u8..4 {
        tokio::time::sleep(T * 3 / 4).await;
        raw.send_binary(vec![round; 3]).await.unwrap();
        assert_eq!(raw.recv_binary().await.unwrap(), vec![round; 3]);
    }

    let started = Instant::now();
    let err = raw.recv().await.unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert!(waited >= T, "timed out after {waited:?}, before its {T:?}");
    assert!(waited < T * 4, "timed out only after {waited:?}");
}
