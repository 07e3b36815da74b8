//! Channel continuity on one node (protocol.md §6.5): EVENT_AT with offsets,
//! SUBSCRIBE with `since` replaying exactly what was missed, `recovered`,
//! the publish positions, `/api/history`, and the refusals.

use std::time::Duration;

use serde_json::json;
use wsgate_client::{ChannelEvent, Connection, Error, Position, login};
use wsgate_proto::envelope::MessageType;

use crate::channels::{API_KEY, api_call, api_publish};
use crate::util::*;

pub(crate) fn history_toml() -> String {
    format!(
        r#"api_keys = ["{API_KEY}"]
[[channels]]
pattern = "hist.*"
history = 100
publish = "authenticated"
[[channels]]
pattern = "secret.hist.*"
sensitive = true
history = 100
[[channels]]
pattern = "small.*"
history = 3
[[channels]]
pattern = "plain"
"#
    )
}

async fn connect(gw: &TestGateway) -> Connection {
    let session = login(&gw.client(), ALICE, ALICE_PASSWORD).await.unwrap();
    session.connect(&gw.client()).await.unwrap()
}

async fn next(conn: &mut Connection) -> ChannelEvent {
    tokio::time::timeout(Duration::from_secs(5), conn.next_channel_event())
        .await
        .expect("a channel message within 5 s")
        .unwrap()
}

/// Nothing more arrives within `wait`.
async fn quiet(conn: &mut Connection, wait: Duration) {
    if let Ok(got) = tokio::time::timeout(wait, conn.next_channel_event()).await {
        panic!("expected nothing, got {got:?}");
    }
}

fn at(event: &ChannelEvent) -> (u64, serde_json::Value) {
    match event {
        ChannelEvent::EventAt {
            offset, payload, ..
        } => (*offset, serde_json::from_slice(payload).unwrap()),
        other => panic!("expected EVENT_AT, got {other:?}"),
    }
}

async fn publish(gw: &TestGateway, channel: &str, n: u64) -> Position {
    let reply = api_publish(gw.addr, channel, json!({ "n": n })).await;
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert_eq!(reply.json["ok"], true);
    Position {
        epoch: reply.json["epoch"].as_str().unwrap().to_owned(),
        offset: reply.json["offset"].as_u64().unwrap(),
    }
}

#[tokio::test]
async fn history_channels_send_event_at_and_a_reconnect_with_since_replays_exactly_what_was_missed()
{
    let gw = TestGateway::start(&history_toml()).await;
    let mut conn = connect(&gw).await;
    let reply = conn.subscribe("hist.feed", None, false).await.unwrap();
    let reply = reply.expect("a history channel answers with its position");
    assert_eq!((reply.offset, reply.recovered), (0, false));
    let mut last = None;
    for n in 1..=3 {
        let p = publish(&gw, "hist.feed", n).await;
        assert_eq!((p.epoch.as_str(), p.offset), (reply.epoch.as_str(), n));
        assert_eq!(at(&next(&mut conn).await), (n, json!({ "n": n })));
        last = Some(p);
    }
    let last = last.unwrap();
    drop(conn);
    // Missed while away: 4..=8.
    for n in 4..=8 {
        publish(&gw, "hist.feed", n).await;
    }
    let mut conn = connect(&gw).await;
    // Publishes keep coming while the client resubscribes.
    let publisher = {
        let addr = gw.addr;
        tokio::spawn(async move {
            for n in 9..=20 {
                api_publish(addr, "hist.feed", json!({ "n": n })).await;
            }
        })
    };
    let reply = conn
        .subscribe("hist.feed", Some(&last), false)
        .await
        .unwrap()
        .unwrap();
    assert!(reply.recovered, "{reply:?}");
    assert_eq!(reply.epoch, last.epoch);
    publisher.await.unwrap();
    // Every event after `since`, once, in order: the replay, then live
    // ones, no duplicate and no gap at the seam.
    for n in 4..=20 {
        assert_eq!(at(&next(&mut conn).await), (n, json!({ "n": n })));
    }
    quiet(&mut conn, Duration::from_millis(300)).await;
    let metrics = crate::metrics::scrape(&gw).await;
    assert!(crate::metrics::value(&metrics, "wsgate_history_replayed_total") >= 5);
}

#[tokio::test]
async fn a_since_the_stream_cannot_continue_is_not_recovered_and_replays_nothing() {
    let gw = TestGateway::start(&history_toml()).await;
    for n in 1..=5 {
        publish(&gw, "small.feed", n).await;
    }
    let mut conn = connect(&gw).await;
    let now = conn
        .subscribe("small.feed", None, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.offset, 5);
    conn.call(MessageType::Unsubscribe, "small.feed", b"", false)
        .await
        .unwrap();
    let epoch = now.epoch.clone();
    for (since, recovered) in [
        // history = 3 keeps 3..=5: since 2 continues, since 1 does not.
        (
            Position {
                epoch: epoch.clone(),
                offset: 2,
            },
            true,
        ),
        (
            Position {
                epoch: epoch.clone(),
                offset: 1,
            },
            false,
        ),
        // Another epoch, beyond the stream.
        (
            Position {
                epoch: "AAAAAAAAAAA".into(),
                offset: 4,
            },
            false,
        ),
        (
            Position {
                epoch: epoch.clone(),
                offset: 6,
            },
            false,
        ),
        // The current position: recovered, nothing to replay.
        (
            Position {
                epoch: epoch.clone(),
                offset: 5,
            },
            true,
        ),
    ] {
        let reply = conn
            .subscribe("small.feed", Some(&since), false)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.recovered, recovered, "{since:?}");
        assert_eq!(reply.offset, 5);
        if recovered {
            for n in since.offset + 1..=5 {
                assert_eq!(at(&next(&mut conn).await).0, n);
            }
        }
        quiet(&mut conn, Duration::from_millis(200)).await;
        conn.call(MessageType::Unsubscribe, "small.feed", b"", false)
            .await
            .unwrap();
    }
    // `since` on a channel without history: a plain subscription.
    let since = Position { epoch, offset: 1 };
    assert_eq!(
        conn.subscribe("plain", Some(&since), false).await.unwrap(),
        None
    );
    api_publish(gw.addr, "plain", json!("p")).await;
    assert!(matches!(next(&mut conn).await, ChannelEvent::Event { .. }));
}

#[tokio::test]
async fn sensitive_history_is_encrypted_and_websocket_publish_answers_with_the_position() {
    let gw = TestGateway::start(&history_toml()).await;
    let mut conn = connect(&gw).await;
    let reply = conn
        .subscribe("secret.hist.x", None, true)
        .await
        .unwrap()
        .unwrap();
    publish(&gw, "secret.hist.x", 1).await;
    let msg = tokio::time::timeout(Duration::from_secs(5), conn.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.msg_type, MessageType::EventAt as u8);
    assert_eq!(
        msg.flags & wsgate_proto::envelope::FLAG_ENC,
        wsgate_proto::envelope::FLAG_ENC
    );
    assert_eq!(&msg.body[..8], &1u64.to_be_bytes());
    // PUBLISH over the WebSocket on a history channel: the RESPONSE is the
    // new event's position.
    conn.subscribe("hist.chat", None, false).await.unwrap();
    let body = conn
        .call(MessageType::Publish, "hist.chat", b"from ws", false)
        .await
        .unwrap();
    let position: Position = serde_json::from_slice(&body).unwrap();
    assert_eq!(position.offset, 1);
    assert_ne!(
        position.epoch, reply.epoch,
        "each channel has its own stream"
    );
    match next(&mut conn).await {
        ChannelEvent::EventAt {
            channel,
            offset,
            payload,
        } => {
            assert_eq!(
                (channel.as_str(), offset, &payload[..]),
                ("hist.chat", 1, &b"from ws"[..])
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn bad_subscribe_bodies_get_bad_request_after_the_channel_checks() {
    let gw = TestGateway::start(&history_toml()).await;
    let mut conn = connect(&gw).await;
    let code = |r: Result<Vec<u8>, Error>| match r {
        Err(Error::Server { code, .. }) => code,
        other => panic!("{other:?}"),
    };
    for body in [&b"[1]"[..], b"{\"since\":3}", b"not json"] {
        let r = conn
            .call(MessageType::Subscribe, "hist.a", body, false)
            .await;
        assert_eq!(code(r), "bad_request");
        // The channel checks come first.
        let r = conn
            .call(MessageType::Subscribe, "nowhere", body, false)
            .await;
        assert_eq!(code(r), "not_found");
        let r = conn
            .call(MessageType::Subscribe, "secret.hist.a", body, false)
            .await;
        assert_eq!(code(r), "encryption_required");
    }
    // The connection is still usable.
    assert!(
        conn.subscribe("hist.a", None, false)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn api_history_pages_forward_and_refuses_channels_without_history() {
    let gw = TestGateway::start(&history_toml()).await;
    let mut epoch = String::new();
    for n in 1..=7 {
        epoch = publish(&gw, "hist.log", n).await.epoch;
    }
    let addr = gw.addr;
    let history = move |body: serde_json::Value| async move {
        api_call(addr, "/api/history", Some(API_KEY), &body).await
    };
    let all = history(json!({"channel": "hist.log"})).await;
    assert_eq!(all.status, 200, "{:?}", all.json);
    assert_eq!(all.json["offset"], 7);
    assert_eq!(all.json["events"].as_array().unwrap().len(), 7);
    assert_eq!(
        all.json["events"][0],
        json!({"offset": 1, "data": {"n": 1}})
    );
    let page =
        history(json!({"channel": "hist.log", "since": {"epoch": epoch, "offset": 2}, "limit": 3}))
            .await;
    let offsets: Vec<u64> = page.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [3, 4, 5]);
    let last = history(json!({"channel": "hist.log", "limit": 2})).await;
    assert_eq!(last.json["events"][0]["offset"], 6);
    let none = history(json!({"channel": "plain"})).await;
    assert_eq!(
        (none.status, none.json["status"].as_str()),
        (404, Some("no_history"))
    );
    let unknown = history(json!({"channel": "nowhere"})).await;
    assert_eq!(unknown.status, 404);
    let bad = history(json!({"channel": "hist.log", "limit": 0})).await;
    assert_eq!(bad.status, 400);
    let unauthorized = api_call(
        gw.addr,
        "/api/history",
        None,
        &json!({"channel": "hist.log"}),
    )
    .await;
    assert_eq!(unauthorized.status, 401);
}
