//! Presence on one node (protocol.md §6.6): PRESENCE lists users with their
//! connections, joins and leaves per user (not per connection), LOGOUT and
//! closes leave, the access checks, ENC on sensitive channels, and
//! `/api/presence`.

use std::time::Duration;

use serde_json::json;
use wsgate_client::{ChannelEvent, Connection, Error, SubscribeRequest, login};
use wsgate_proto::envelope::{FLAG_ENC, MessageType};

use crate::channels::{API_KEY, api_call};
use crate::util::*;

pub(crate) fn presence_toml() -> String {
    format!(
        r#"api_keys = ["{API_KEY}"]
[[channels]]
pattern = "room.*"
presence = true
[[channels]]
pattern = "sroom.*"
sensitive = true
presence = true
[[channels]]
pattern = "priv.{{user}}.*"
subscribe = "owner"
presence = true
[[channels]]
pattern = "quiet"
"#
    )
}

async fn connect(gw: &TestGateway, user: &str, password: &str) -> Connection {
    let session = login(&gw.client(), user, password).await.unwrap();
    session.connect(&gw.client()).await.unwrap()
}

fn with_events() -> SubscribeRequest {
    SubscribeRequest {
        since: None,
        presence_events: true,
    }
}

/// The next presence change on `conn` as `("join"|"leave", user)`, skipping
/// the subscriber's own user.
async fn next_change(conn: &mut Connection, own: &str) -> (&'static str, String) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), conn.next_channel_event())
            .await
            .expect("a presence event within 5 s")
            .unwrap();
        if let ChannelEvent::Presence { user, joined, .. } = event
            && user != own
        {
            return (if joined { "join" } else { "leave" }, user);
        }
    }
}

/// No change about anyone but `own` within `wait`.
async fn no_change(conn: &mut Connection, own: &str, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(got) = tokio::time::timeout_at(deadline, conn.next_channel_event()).await {
        if let Ok(ChannelEvent::Presence { user, .. }) = &got
            && user == own
        {
            continue;
        }
        panic!("expected no presence change, got {got:?}");
    }
}

fn users(reply: &wsgate_client::PresenceReply) -> Vec<(String, u32)> {
    reply
        .users
        .iter()
        .map(|u| (u.user.clone(), u.connections))
        .collect()
}

#[tokio::test]
async fn joins_and_leaves_are_per_user_and_presence_counts_connections() {
    let gw = TestGateway::start(&presence_toml()).await;
    let mut alice = connect(&gw, ALICE, ALICE_PASSWORD).await;
    alice
        .subscribe_with("room.1", &with_events(), false)
        .await
        .unwrap();
    let mut bob1 = connect(&gw, BOB, BOB_PASSWORD).await;
    bob1.subscribe("room.1", None, false).await.unwrap();
    assert_eq!(
        next_change(&mut alice, ALICE).await,
        ("join", BOB.to_owned())
    );
    // A second connection of bob: no second join.
    let mut bob2 = connect(&gw, BOB, BOB_PASSWORD).await;
    bob2.subscribe("room.1", None, false).await.unwrap();
    let list = alice.presence("room.1", false).await.unwrap();
    assert_eq!(
        users(&list),
        [(ALICE.to_owned(), 1), (BOB.to_owned(), 2)],
        "sorted by user, connections counted"
    );
    assert!(!list.truncated);
    no_change(&mut alice, ALICE, Duration::from_millis(300)).await;
    // One of bob's connections goes: bob is still present.
    bob1.call(MessageType::Unsubscribe, "room.1", b"", false)
        .await
        .unwrap();
    no_change(&mut alice, ALICE, Duration::from_millis(300)).await;
    // The last one closes: bob leaves, once.
    drop(bob2);
    assert_eq!(
        next_change(&mut alice, ALICE).await,
        ("leave", BOB.to_owned())
    );
    no_change(&mut alice, ALICE, Duration::from_millis(300)).await;
    assert_eq!(
        users(&alice.presence("room.1", false).await.unwrap()),
        [(ALICE.to_owned(), 1)]
    );
    // A subscriber that did not ask for presence events gets none.
    let mut quiet_bob = connect(&gw, BOB, BOB_PASSWORD).await;
    quiet_bob.subscribe("room.1", None, false).await.unwrap();
    assert_eq!(
        next_change(&mut alice, ALICE).await,
        ("join", BOB.to_owned())
    );
    drop(alice);
    let got =
        tokio::time::timeout(Duration::from_millis(500), quiet_bob.next_channel_event()).await;
    assert!(got.is_err(), "no events asked for, none sent: {got:?}");
}

#[tokio::test]
async fn logout_is_a_leave_and_the_api_lists_who_is_present() {
    let gw = TestGateway::start(&presence_toml()).await;
    let mut alice = connect(&gw, ALICE, ALICE_PASSWORD).await;
    alice
        .subscribe_with("room.2", &with_events(), false)
        .await
        .unwrap();
    let mut bob = connect(&gw, BOB, BOB_PASSWORD).await;
    bob.subscribe("room.2", None, false).await.unwrap();
    assert_eq!(
        next_change(&mut alice, ALICE).await,
        ("join", BOB.to_owned())
    );
    let listed = api_call(
        gw.addr,
        "/api/presence",
        Some(API_KEY),
        &json!({"channel": "room.2"}),
    )
    .await;
    assert_eq!(listed.status, 200, "{:?}", listed.json);
    assert_eq!(
        listed.json,
        json!({"users": [{"user": ALICE, "connections": 1}, {"user": BOB, "connections": 1}]})
    );
    bob.logout().await.unwrap();
    assert_eq!(
        next_change(&mut alice, ALICE).await,
        ("leave", BOB.to_owned())
    );
    let none = api_call(
        gw.addr,
        "/api/presence",
        Some(API_KEY),
        &json!({"channel": "quiet"}),
    )
    .await;
    assert_eq!(
        (none.status, none.json["status"].as_str()),
        (404, Some("no_presence"))
    );
    let unauthorized = api_call(
        gw.addr,
        "/api/presence",
        None,
        &json!({"channel": "room.2"}),
    )
    .await;
    assert_eq!(unauthorized.status, 401);
}

#[tokio::test]
async fn presence_is_checked_like_subscribe_and_sensitive_channels_are_encrypted() {
    let gw = TestGateway::start(&presence_toml()).await;
    let mut alice = connect(&gw, ALICE, ALICE_PASSWORD).await;
    let code = |r: Result<wsgate_client::PresenceReply, Error>| match r {
        Err(Error::Server { code, .. }) => code,
        other => panic!("{other:?}"),
    };
    assert_eq!(code(alice.presence("nowhere", false).await), "not_found");
    assert_eq!(code(alice.presence("quiet", false).await), "not_found");
    assert_eq!(
        code(alice.presence("sroom.1", false).await),
        "encryption_required"
    );
    assert_eq!(code(alice.presence("priv.bob.x", false).await), "forbidden");
    // Her own private channel is fine.
    assert!(
        alice
            .presence("priv.alice.x", false)
            .await
            .unwrap()
            .users
            .is_empty()
    );
    // Sensitive: events and replies are ENC.
    alice
        .subscribe_with("sroom.1", &with_events(), true)
        .await
        .unwrap();
    let mut bob = connect(&gw, BOB, BOB_PASSWORD).await;
    bob.subscribe("sroom.1", None, true).await.unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), alice.recv())
            .await
            .unwrap()
            .unwrap();
        if msg.msg_type != MessageType::PresenceEvent as u8 {
            continue;
        }
        assert_eq!(msg.flags & FLAG_ENC, FLAG_ENC, "{msg:?}");
        if msg.body == br#"{"join":"bob"}"# {
            break;
        }
    }
    let list = alice.presence("sroom.1", true).await.unwrap();
    assert_eq!(users(&list), [(ALICE.to_owned(), 1), (BOB.to_owned(), 1)]);
}

#[tokio::test]
async fn presence_lists_are_cut_at_max_presence_list() {
    let gw = TestGateway::start(&format!(
        "{}\n[limits]\nmax_presence_list = 1\n",
        presence_toml()
    ))
    .await;
    let mut alice = connect(&gw, ALICE, ALICE_PASSWORD).await;
    alice.subscribe("room.3", None, false).await.unwrap();
    let mut bob = connect(&gw, BOB, BOB_PASSWORD).await;
    bob.subscribe("room.3", None, false).await.unwrap();
    let list = bob.presence("room.3", false).await.unwrap();
    assert_eq!(users(&list), [(ALICE.to_owned(), 1)]);
    assert!(list.truncated);
}

/// The fleet's memory store, except that channel history reads fail while
/// `fail_reads` is set (a state store that answers some calls and not
/// others, as Redis does when one shard of a cluster is away).
#[derive(Debug)]
struct HistoryReadsFail {
    inner: std::sync::Arc<wsgate_server::store::MemoryStateStore>,
    fail_reads: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl wsgate_server::store::StateStore for HistoryReadsFail {
    async fn put_exchange(
        &self,
        sid: &str,
        state: Vec<u8>,
        ttl: Duration,
        quota: wsgate_server::store::ExchangeQuota<'_>,
    ) -> Result<wsgate_server::store::ExchangeAdmission, wsgate_server::store::StoreError> {
        self.inner.put_exchange(sid, state, ttl, quota).await
    }
    async fn take_exchange(
        &self,
        sid: &str,
    ) -> Result<Option<Vec<u8>>, wsgate_server::store::StoreError> {
        self.inner.take_exchange(sid).await
    }
    async fn live_exchanges(&self) -> Result<u64, wsgate_server::store::StoreError> {
        self.inner.live_exchanges().await
    }
    async fn put_session(
        &self,
        id: &str,
        record: &wsgate_server::store::SealedSession,
    ) -> Result<(), wsgate_server::store::StoreError> {
        self.inner.put_session(id, record).await
    }
    async fn get_session(
        &self,
        id: &str,
    ) -> Result<Option<wsgate_server::store::SealedSession>, wsgate_server::store::StoreError> {
        self.inner.get_session(id).await
    }
    async fn revoke_session(&self, id: &str) -> Result<(), wsgate_server::store::StoreError> {
        self.inner.revoke_session(id).await
    }
    fn watch_revocations(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.inner.watch_revocations()
    }
    async fn record_failure(
        &self,
        key: &str,
        window: Duration,
    ) -> Result<(u32, Duration), wsgate_server::store::StoreError> {
        self.inner.record_failure(key, window).await
    }
    async fn record_failure_within(
        &self,
        limits: &[wsgate_server::store::FailureLimit<'_>],
        window: Duration,
    ) -> Result<Option<Duration>, wsgate_server::store::StoreError> {
        self.inner.record_failure_within(limits, window).await
    }
    async fn forgive_failure(&self, key: &str) -> Result<(), wsgate_server::store::StoreError> {
        self.inner.forgive_failure(key).await
    }
    async fn failures(
        &self,
        key: &str,
    ) -> Result<(u32, Duration), wsgate_server::store::StoreError> {
        self.inner.failures(key).await
    }
    async fn reset_failures(&self, key: &str) -> Result<(), wsgate_server::store::StoreError> {
        self.inner.reset_failures(key).await
    }
    async fn publish_event(
        &self,
        channel: &str,
        payload: &[u8],
    ) -> Result<(), wsgate_server::store::StoreError> {
        self.inner.publish_event(channel, payload).await
    }
    fn watch_events(&self) -> tokio::sync::broadcast::Receiver<wsgate_server::store::StoreEvent> {
        self.inner.watch_events()
    }
    async fn publish_at(
        &self,
        channel: &str,
        payload: &[u8],
        policy: &wsgate_server::store::HistoryPolicy,
    ) -> Result<wsgate_server::store::Position, wsgate_server::store::StoreError> {
        self.inner.publish_at(channel, payload, policy).await
    }
    async fn read_history(
        &self,
        channel: &str,
        since: Option<&wsgate_server::store::Position>,
        limit: usize,
        policy: &wsgate_server::store::HistoryPolicy,
    ) -> Result<wsgate_server::store::HistoryRead, wsgate_server::store::StoreError> {
        if self.fail_reads.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(wsgate_server::store::StoreError::Unavailable(
                "history shard away".into(),
            ));
        }
        self.inner.read_history(channel, since, limit, policy).await
    }
    async fn presence_add(
        &self,
        member: &wsgate_server::store::PresenceMember,
        ttl: Duration,
    ) -> Result<bool, wsgate_server::store::StoreError> {
        self.inner.presence_add(member, ttl).await
    }
    async fn presence_remove(
        &self,
        member: &wsgate_server::store::PresenceMember,
    ) -> Result<bool, wsgate_server::store::StoreError> {
        self.inner.presence_remove(member).await
    }
    async fn presence_refresh(
        &self,
        members: &[wsgate_server::store::PresenceMember],
        ttl: Duration,
    ) -> Result<(), wsgate_server::store::StoreError> {
        self.inner.presence_refresh(members, ttl).await
    }
    async fn presence_sweep(&self) -> Result<(), wsgate_server::store::StoreError> {
        self.inner.presence_sweep().await
    }
    async fn presence_list(
        &self,
        channel: &str,
        limit: usize,
    ) -> Result<wsgate_server::store::PresenceList, wsgate_server::store::StoreError> {
        self.inner.presence_list(channel, limit).await
    }
}

#[tokio::test]
async fn a_subscribe_refused_after_presence_was_recorded_leaves_no_member() {
    let fleet = Fleet::new().await;
    let state = std::sync::Arc::new(HistoryReadsFail {
        inner: fleet.state.clone(),
        fail_reads: false.into(),
    });
    let toml = "[[channels]]\npattern = \"hroom.*\"\npresence = true\nhistory = 10\n";
    let gw = TestGateway::start_with_state(&fleet, config(toml), state.clone()).await;
    let mut alice = connect(&gw, ALICE, ALICE_PASSWORD).await;
    alice
        .subscribe_with("hroom.1", &with_events(), false)
        .await
        .unwrap();
    // Bob's SUBSCRIBE records his presence, then cannot read the history:
    // refused, and he must not stay present.
    state
        .fail_reads
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut bob = connect(&gw, BOB, BOB_PASSWORD).await;
    match bob.subscribe("hroom.1", None, false).await {
        Err(Error::Server { code, .. }) => assert_eq!(code, "unavailable"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    let list = alice.presence("hroom.1", false).await.unwrap();
    assert_eq!(users(&list), [(ALICE.to_owned(), 1)], "bob is not present");
    // Whatever alice heard of bob ends with his leave.
    let mut last = None;
    while let Ok(Ok(ChannelEvent::Presence { user, joined, .. })) =
        tokio::time::timeout(Duration::from_millis(300), alice.next_channel_event()).await
    {
        if user == BOB {
            last = Some(joined);
        }
    }
    assert_ne!(last, Some(true), "alice's last word on bob is a join");
    // Once the history reads again, bob subscribes and is present.
    state
        .fail_reads
        .store(false, std::sync::atomic::Ordering::SeqCst);
    bob.subscribe("hroom.1", None, false).await.unwrap();
    let list = alice.presence("hroom.1", false).await.unwrap();
    assert_eq!(users(&list), [(ALICE.to_owned(), 1), (BOB.to_owned(), 1)]);
}
