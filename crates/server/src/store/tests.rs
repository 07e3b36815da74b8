//! The store conformance suite: generic async test functions that every
//! backend must pass, and the macros that instantiate them as `#[tokio::test]`s
//! for one backend.
//!
//! A new backend adds, in its own test module,
//!
//! ```ignore
//! crate::store::tests::credential_store_suite!(async { (guard, make_store().await) });
//! crate::store::tests::state_store_suite!(async { (guard, make_store().await) });
//! ```
//!
//! where `guard` is anything that must outlive the store (a temporary
//! directory, a container handle; `()` if nothing). The state suite's time
//! tests only sleep with `tokio::time::sleep` and use short TTLs, so they run
//! instantly on paused tokio time (in-process backends) and in a few seconds
//! of real time against a server-side clock (Redis).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::TryRecvError;
use zeroize::Zeroizing;

use super::*;
use crate::keys::ServerSecret;

/// Key bytes no Debug output may show, in any common rendering.
const STORED_KEY: [u8; 32] = [0xA5; 32];
const SERVER_KEY: [u8; 32] = [0x5A; 32];
const SESSION_KEY: [u8; 32] = [0xC3; 32];

/// A user record with recognizable key bytes.
pub(crate) fn user(name: &str) -> UserRecord {
    UserRecord {
        name: name.to_owned(),
        salt: b"0123456789abcdef".to_vec(),
        iterations: 4096,
        stored_key: STORED_KEY,
        server_key: SERVER_KEY,
    }
}

/// A session record expiring at `expires_at`.
pub(crate) fn session(user: &str, expires_at: u64) -> SessionRecord {
    SessionRecord {
        user: user.to_owned(),
        ip: "198.51.100.7".to_owned(),
        key_fp: "kfp".repeat(14) + "k",
        session_key: Zeroizing::new(SESSION_KEY),
        expires_at,
    }
}

/// A session that lives for an hour.
fn live_session(user: &str) -> SessionRecord {
    session(user, unix_now() + 3600)
}

fn assert_same_session(a: &SessionRecord, b: &SessionRecord) {
    assert_eq!(a.user, b.user);
    assert_eq!(a.ip, b.ip);
    assert_eq!(a.key_fp, b.key_fp);
    assert_eq!(*a.session_key, *b.session_key);
    assert_eq!(a.expires_at, b.expires_at);
}

/// Fails if `text` shows any of the test key bytes.
pub(crate) fn assert_no_key_bytes(text: &str) {
    for key in [STORED_KEY, SERVER_KEY, SESSION_KEY] {
        let renderings = [
            format!("{key:?}"),
            format!("{}, {}", key[0], key[1]),
            format!("{:02x}{:02x}", key[0], key[1]),
            format!("{:02X}{:02X}", key[0], key[1]),
            wsgate_proto::b64::encode_b64u(&key),
            wsgate_proto::b64::encode_b64(&key),
        ];
        for r in renderings {
            assert!(!text.contains(&r), "{text:?} shows key bytes as {r:?}");
        }
    }
}

// ───────────────────────────── credential store ─────────────────────────────

pub(crate) async fn get_unknown_user_is_none<S: CredentialStore>(store: S) {
    assert_eq!(store.get_user("nobody").await.unwrap(), None);
}

pub(crate) async fn add_then_get_round_trips<S: CredentialStore>(store: S) {
    let mut alice = user("alice");
    alice.salt = (0..=255).collect();
    alice.iterations = 600_000;
    alice.stored_key[31] = 1;
    alice.server_key[0] = 2;
    store.add_user(alice.clone()).await.unwrap();
    assert_eq!(store.get_user("alice").await.unwrap(), Some(alice.clone()));
    let verifier = store.get_user("alice").await.unwrap().unwrap().verifier();
    assert_eq!(verifier.stored_key, alice.stored_key);
    assert_eq!(*verifier.server_key, alice.server_key);
}

pub(crate) async fn add_existing_user_fails_and_keeps_the_old_record<S: CredentialStore>(store: S) {
    let old = user("bob");
    store.add_user(old.clone()).await.unwrap();
    let mut new = user("bob");
    new.iterations = 9999;
    let err = store.add_user(new).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::UserExists(name) if name == "bob"),
        "{err:?}"
    );
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(store.get_user("bob").await.unwrap(), Some(old));
}

pub(crate) async fn set_user_inserts_and_replaces<S: CredentialStore>(store: S) {
    let mut carol = user("carol");
    store.set_user(carol.clone()).await.unwrap();
    assert_eq!(store.get_user("carol").await.unwrap(), Some(carol.clone()));
    carol.salt = b"another salt of 16+".to_vec();
    carol.iterations = 10_000;
    carol.stored_key = [7; 32];
    carol.server_key = [8; 32];
    store.set_user(carol.clone()).await.unwrap();
    assert_eq!(store.get_user("carol").await.unwrap(), Some(carol));
    assert_eq!(store.list_users().await.unwrap(), ["carol"]);
}

pub(crate) async fn remove_user_reports_whether_it_existed<S: CredentialStore>(store: S) {
    store.add_user(user("dave")).await.unwrap();
    assert!(store.remove_user("dave").await.unwrap());
    assert!(!store.remove_user("dave").await.unwrap());
    assert!(!store.remove_user("never").await.unwrap());
    assert_eq!(store.get_user("dave").await.unwrap(), None);
    // The name is free again.
    store.add_user(user("dave")).await.unwrap();
}

pub(crate) async fn list_users_is_sorted<S: CredentialStore>(store: S) {
    assert!(store.list_users().await.unwrap().is_empty());
    for name in ["zoe", "Zed", "émile", "alice", "a,b=c", "bob", "Ω"] {
        store.add_user(user(name)).await.unwrap();
    }
    let mut expected: Vec<String> = ["zoe", "Zed", "émile", "alice", "a,b=c", "bob", "Ω"]
        .map(String::from)
        .to_vec();
    expected.sort();
    assert_eq!(store.list_users().await.unwrap(), expected);
}

pub(crate) async fn names_are_matched_exactly<S: CredentialStore>(store: S) {
    store.add_user(user("Alice")).await.unwrap();
    assert_eq!(store.get_user("alice").await.unwrap(), None);
    assert_eq!(store.get_user("Alice ").await.unwrap(), None);
    store.add_user(user("alice")).await.unwrap();
    assert_eq!(store.list_users().await.unwrap(), ["Alice", "alice"]);
}

pub(crate) async fn concurrent_adds_of_one_name_let_exactly_one_win<S: CredentialStore>(store: S) {
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..16u32)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut record = user("racer");
                record.iterations = 4096 + i;
                store.add_user(record).await
            })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => wins += 1,
            Err(StoreError::UserExists(_)) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(wins, 1);
}

pub(crate) async fn credential_store_debug_shows_no_key_bytes<S: CredentialStore>(store: S) {
    store.add_user(user("eve")).await.unwrap();
    let record = store.get_user("eve").await.unwrap().unwrap();
    let text = format!("{record:?} {record:#?} {store:?} {:?}", record.verifier());
    assert!(text.contains("eve"), "{text}");
    assert_no_key_bytes(&text);
}

/// Instantiates the credential store suite for one backend.
/// `$make` is a future giving `(guard, store)`; with `services:` first, a
/// future giving `Option<(guard, store)>`, where `None` skips the test (the
/// backend's server is unavailable on purpose, see
/// `test_servers::SKIP_ENV`).
macro_rules! credential_store_suite {
    (services: $make:expr) => {
        $crate::store::tests::credential_store_suite!(@suite services, $make);
    };
    ($make:expr) => {
        $crate::store::tests::credential_store_suite!(@suite always, $make);
    };
    (@suite $mode:ident, $make:expr) => {
        $crate::store::tests::credential_store_suite!(@tests $mode, $make;
            get_unknown_user_is_none,
            add_then_get_round_trips,
            add_existing_user_fails_and_keeps_the_old_record,
            set_user_inserts_and_replaces,
            remove_user_reports_whether_it_existed,
            list_users_is_sorted,
            names_are_matched_exactly,
            credential_store_debug_shows_no_key_bytes,
        );
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn concurrent_adds_of_one_name_let_exactly_one_win() {
            $crate::store::tests::get_store!($mode, $make, _guard, store);
            $crate::store::tests::concurrent_adds_of_one_name_let_exactly_one_win(store).await;
        }
    };
    (@tests $mode:ident, $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::store::tests::get_store!($mode, $make, _guard, store);
                $crate::store::tests::$name(store).await;
            }
        )*
    };
}
pub(crate) use credential_store_suite;

// ─────────────────────────────── state store ────────────────────────────────

const EXCHANGE_TTL: Duration = Duration::from_secs(2);
const WINDOW: Duration = Duration::from_secs(4);

/// Test shorthand: a `put_exchange` that must have stored.
pub(crate) trait Stored {
    fn stored(self);
}

impl Stored for ExchangeAdmission {
    #[track_caller]
    fn stored(self) {
        assert_eq!(self, ExchangeAdmission::Stored);
    }
}

fn quota(group: &str, max_per_group: u32, max_total: u32) -> ExchangeQuota<'_> {
    ExchangeQuota {
        group,
        max_per_group,
        max_total,
    }
}

pub(crate) async fn exchange_quotas_bound_each_group_and_the_store<S: StateStore>(store: S) {
    let store = sealed(store);
    let ttl = Duration::from_secs(60);
    assert_eq!(store.live_exchanges().await.unwrap(), 0);
    for i in 0..3 {
        store
            .put_exchange(&format!("a{i}"), vec![1], ttl, quota("A", 3, 5))
            .await
            .unwrap()
            .stored();
    }
    // The group is full: refused, not stored, with the time until a slot frees.
    match store
        .put_exchange("a3", vec![1], ttl, quota("A", 3, 5))
        .await
        .unwrap()
    {
        ExchangeAdmission::GroupFull { retry_after } => {
            assert!(
                retry_after <= ttl && retry_after > ttl / 2,
                "{retry_after:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.take_exchange("a3").await.unwrap(), None);
    // Other groups are not affected, up to the store's total.
    for i in 0..2 {
        store
            .put_exchange(&format!("b{i}"), vec![2], ttl, quota("B", 3, 5))
            .await
            .unwrap()
            .stored();
    }
    assert_eq!(store.live_exchanges().await.unwrap(), 5);
    match store
        .put_exchange("c0", vec![3], ttl, quota("C", 3, 5))
        .await
        .unwrap()
    {
        ExchangeAdmission::StoreFull { retry_after } => {
            assert!(
                retry_after <= ttl && retry_after > ttl / 2,
                "{retry_after:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.take_exchange("c0").await.unwrap(), None);
    // A taken exchange stops counting at once, in its group and in all.
    assert_eq!(store.take_exchange("a1").await.unwrap(), Some(vec![1]));
    assert_eq!(store.live_exchanges().await.unwrap(), 4);
    store
        .put_exchange("a4", vec![4], ttl, quota("A", 3, 5))
        .await
        .unwrap()
        .stored();
    assert_eq!(store.take_exchange("a4").await.unwrap(), Some(vec![4]));
    store
        .put_exchange("c1", vec![5], ttl, quota("C", 3, 5))
        .await
        .unwrap()
        .stored();
    // Taking an unknown or already taken exchange frees nothing.
    assert_eq!(store.take_exchange("a1").await.unwrap(), None);
    assert_eq!(store.take_exchange("nope").await.unwrap(), None);
    assert_eq!(store.live_exchanges().await.unwrap(), 5);
    assert!(matches!(
        store
            .put_exchange("c2", vec![6], ttl, quota("C", 3, 5))
            .await
            .unwrap(),
        ExchangeAdmission::StoreFull { .. }
    ));
    // Storing a sid again replaces it and counts once.
    store
        .put_exchange("c1", vec![7], ttl, quota("C", 1, 5))
        .await
        .unwrap()
        .stored();
    assert_eq!(store.live_exchanges().await.unwrap(), 5);
    assert_eq!(store.take_exchange("c1").await.unwrap(), Some(vec![7]));
    assert_eq!(store.live_exchanges().await.unwrap(), 4);
}

pub(crate) async fn expired_exchanges_stop_counting<S: StateStore>(store: S) {
    let store = sealed(store);
    for i in 0..2 {
        store
            .put_exchange(&format!("e{i}"), vec![1], EXCHANGE_TTL, quota("E", 2, 3))
            .await
            .unwrap()
            .stored();
    }
    assert!(matches!(
        store
            .put_exchange("e2", vec![1], EXCHANGE_TTL, quota("E", 2, 3))
            .await
            .unwrap(),
        ExchangeAdmission::GroupFull { .. }
    ));
    store
        .put_exchange("f0", vec![1], EXCHANGE_TTL, quota("F", 2, 3))
        .await
        .unwrap()
        .stored();
    assert_eq!(store.live_exchanges().await.unwrap(), 3);
    tokio::time::sleep(EXCHANGE_TTL + Duration::from_millis(500)).await;
    // Never taken, they expired: they no longer count anywhere.
    assert_eq!(store.live_exchanges().await.unwrap(), 0);
    for i in 3..5 {
        store
            .put_exchange(&format!("e{i}"), vec![1], EXCHANGE_TTL, quota("E", 2, 3))
            .await
            .unwrap()
            .stored();
    }
    store
        .put_exchange("f1", vec![1], EXCHANGE_TTL, quota("F", 2, 3))
        .await
        .unwrap()
        .stored();
    assert_eq!(store.take_exchange("e0").await.unwrap(), None);
    assert_eq!(store.live_exchanges().await.unwrap(), 3);
}

/// Many concurrent first requests of one group: exactly the quota is stored.
pub(crate) async fn exchange_quotas_hold_under_concurrency<S: StateStore>(store: S) {
    let store = sealed(store);
    const TASKS: usize = 64;
    let store = Arc::new(store);
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                let group = if i % 2 == 0 { "even" } else { "odd" };
                store
                    .put_exchange(
                        &format!("q{i}"),
                        vec![1],
                        Duration::from_secs(60),
                        quota(group, 10, 15),
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut stored = 0;
    for task in tasks {
        if task.await.unwrap() == ExchangeAdmission::Stored {
            stored += 1;
        }
    }
    assert_eq!(stored, 15);
    assert_eq!(store.live_exchanges().await.unwrap(), 15);
}

/// Many concurrent attempts for one user from one IP: exactly the user's
/// limit is counted (and so evaluated), the rest refused without counting.
pub(crate) async fn failure_limits_hold_under_concurrency<S: StateStore>(store: S) {
    const TASKS: usize = 64;
    // Real time on a loaded machine: a window the burst cannot outlast, or
    // its expiry would look like the limit failing.
    const LONG_WINDOW: Duration = Duration::from_secs(300);
    let store = Arc::new(store);
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                let limits = [
                    FailureLimit {
                        key: "user:alice",
                        limit: 10,
                    },
                    FailureLimit {
                        key: "ip:192.0.2.1",
                        limit: 50,
                    },
                ];
                store
                    .record_failure_within(&limits, LONG_WINDOW)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        match task.await.unwrap() {
            None => admitted += 1,
            Some(left) => assert!(left <= LONG_WINDOW && !left.is_zero(), "{left:?}"),
        }
    }
    assert_eq!(admitted, 10);
    assert_eq!(store.failures("user:alice").await.unwrap().0, 10);
    assert_eq!(store.failures("ip:192.0.2.1").await.unwrap().0, 10);
}

pub(crate) async fn failure_limits_count_all_or_nothing<S: StateStore>(store: S) {
    let limit = |key, limit| FailureLimit { key, limit };
    assert_eq!(
        store.record_failure_within(&[], WINDOW).await.unwrap(),
        None
    );
    for _ in 0..2 {
        let limits = [limit("user:a", 2), limit("ip:x", 3)];
        assert_eq!(
            store.record_failure_within(&limits, WINDOW).await.unwrap(),
            None
        );
    }
    // The user is full: refused, and the IP is not counted either.
    let limits = [limit("user:a", 2), limit("ip:x", 3)];
    let left = store
        .record_failure_within(&limits, WINDOW)
        .await
        .unwrap()
        .expect("the user is at its limit");
    assert!(left <= WINDOW && left > WINDOW / 2, "{left:?}");
    assert_eq!(store.failures("user:a").await.unwrap().0, 2);
    assert_eq!(store.failures("ip:x").await.unwrap().0, 2);
    // Another user from that IP: counted, until the IP is full.
    let limits = [limit("user:b", 2), limit("ip:x", 3)];
    assert_eq!(
        store.record_failure_within(&limits, WINDOW).await.unwrap(),
        None
    );
    assert!(
        store
            .record_failure_within(&limits, WINDOW)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.failures("user:b").await.unwrap().0, 1);
    assert_eq!(store.failures("ip:x").await.unwrap().0, 3);
    // The counters are the ones `record_failure` and `failures` see.
    assert_eq!(store.record_failure("user:b", WINDOW).await.unwrap().0, 2);
    // Once the window is over, counting starts afresh.
    tokio::time::sleep(WINDOW + Duration::from_millis(500)).await;
    assert_eq!(
        store.record_failure_within(&limits, WINDOW).await.unwrap(),
        None
    );
    assert_eq!(store.failures("ip:x").await.unwrap().0, 1);
}

pub(crate) async fn forgiving_a_failure_takes_one_back<S: StateStore>(store: S) {
    for _ in 0..3 {
        store.record_failure("ip:y", WINDOW).await.unwrap();
    }
    store.forgive_failure("ip:y").await.unwrap();
    let (count, left) = store.failures("ip:y").await.unwrap();
    assert_eq!(count, 2);
    assert!(
        left <= WINDOW && !left.is_zero(),
        "the window stays: {left:?}"
    );
    store.forgive_failure("ip:y").await.unwrap();
    store.forgive_failure("ip:y").await.unwrap();
    assert_eq!(store.failures("ip:y").await.unwrap(), (0, Duration::ZERO));
    // Never below zero, and an unknown key is fine.
    store.forgive_failure("ip:y").await.unwrap();
    store.forgive_failure("never").await.unwrap();
    assert_eq!(store.record_failure("ip:y", WINDOW).await.unwrap().0, 1);
}

pub(crate) async fn exchange_round_trips_once<S: StateStore>(store: S) {
    let store = sealed(store);
    store
        .put_exchange(
            "sid-1",
            b"state one".to_vec(),
            EXCHANGE_TTL,
            ExchangeQuota::unbounded("g"),
        )
        .await
        .unwrap()
        .stored();
    store
        .put_exchange(
            "sid-2",
            b"state two".to_vec(),
            EXCHANGE_TTL,
            ExchangeQuota::unbounded("g"),
        )
        .await
        .unwrap()
        .stored();
    assert_eq!(
        store.take_exchange("sid-2").await.unwrap().as_deref(),
        Some(&b"state two"[..])
    );
    assert_eq!(store.take_exchange("sid-2").await.unwrap(), None);
    assert_eq!(
        store.take_exchange("sid-1").await.unwrap().as_deref(),
        Some(&b"state one"[..])
    );
    assert_eq!(store.take_exchange("sid-1").await.unwrap(), None);
    assert_eq!(store.take_exchange("unknown").await.unwrap(), None);
}

pub(crate) async fn exchange_take_is_atomic_under_concurrency<S: StateStore>(store: S) {
    let store = sealed(store);
    const TASKS: usize = 64;
    let store = Arc::new(store);
    for round in 0..8 {
        let sid = format!("race-{round}");
        store
            .put_exchange(
                &sid,
                vec![round; 100],
                Duration::from_secs(60),
                ExchangeQuota::unbounded("g"),
            )
            .await
            .unwrap()
            .stored();
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (store, barrier, sid) = (Arc::clone(&store), Arc::clone(&barrier), sid.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.take_exchange(&sid).await.unwrap()
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            if let Some(state) = task.await.unwrap() {
                winners.push(state);
            }
        }
        assert_eq!(winners, [vec![round; 100]], "round {round}");
    }
}

pub(crate) async fn exchange_expires_after_its_ttl<S: StateStore>(store: S) {
    let store = sealed(store);
    store
        .put_exchange(
            "early",
            b"a".to_vec(),
            EXCHANGE_TTL,
            ExchangeQuota::unbounded("g"),
        )
        .await
        .unwrap()
        .stored();
    store
        .put_exchange(
            "late",
            b"b".to_vec(),
            EXCHANGE_TTL,
            ExchangeQuota::unbounded("g"),
        )
        .await
        .unwrap()
        .stored();
    tokio::time::sleep(EXCHANGE_TTL / 2).await;
    assert_eq!(
        store.take_exchange("early").await.unwrap().as_deref(),
        Some(&b"a"[..])
    );
    tokio::time::sleep(EXCHANGE_TTL / 2 + Duration::from_millis(500)).await;
    assert_eq!(store.take_exchange("late").await.unwrap(), None);
}

pub(crate) async fn unknown_session_is_none<S: StateStore>(store: S) {
    let store = sealed(store);
    assert!(store.get_session("nope").await.unwrap().is_none());
}

pub(crate) async fn session_round_trips<S: StateStore>(store: S) {
    let store = sealed(store);
    let record = live_session("alice");
    store.put_session("s1", &record).await.unwrap();
    let got = store.get_session("s1").await.unwrap().unwrap();
    assert_same_session(&got, &record);
    // Reading does not consume, and a session may be read from anywhere.
    let again = store.get_session("s1").await.unwrap().unwrap();
    assert_same_session(&again, &record);
    assert!(store.get_session("s2").await.unwrap().is_none());
}

pub(crate) async fn expired_session_is_none<S: StateStore>(store: S) {
    let store = sealed(store);
    let now = unix_now();
    store
        .put_session("past", &session("alice", now - 10))
        .await
        .unwrap();
    store
        .put_session("epoch", &session("alice", 0))
        .await
        .unwrap();
    store
        .put_session("now", &session("alice", now))
        .await
        .unwrap();
    assert!(store.get_session("past").await.unwrap().is_none());
    assert!(store.get_session("epoch").await.unwrap().is_none());
    assert!(store.get_session("now").await.unwrap().is_none());
}

pub(crate) async fn revocation_removes_the_session_and_notifies_watchers<S: StateStore>(store: S) {
    let store = sealed(store);
    let mut first = store.watch_revocations();
    let mut second = store.watch_revocations();
    store.put_session("s1", &live_session("a")).await.unwrap();
    store.put_session("s2", &live_session("b")).await.unwrap();
    store.revoke_session("s1").await.unwrap();
    assert!(store.get_session("s1").await.unwrap().is_none());
    assert!(store.get_session("s2").await.unwrap().is_some());
    for watcher in [&mut first, &mut second] {
        let id = tokio::time::timeout(Duration::from_secs(5), watcher.recv())
            .await
            .expect("a revocation within 5 s")
            .unwrap();
        assert_eq!(id, "s1");
    }
    // Revoking an id this store does not hold still tells every watcher:
    // another node may hold connections of that session.
    store.revoke_session("elsewhere").await.unwrap();
    let id = tokio::time::timeout(Duration::from_secs(5), first.recv())
        .await
        .expect("a revocation within 5 s")
        .unwrap();
    assert_eq!(id, "elsewhere");
}

pub(crate) async fn watchers_see_only_later_revocations<S: StateStore>(store: S) {
    let store = sealed(store);
    store.put_session("old", &live_session("a")).await.unwrap();
    store.revoke_session("old").await.unwrap();
    let mut late = store.watch_revocations();
    assert!(matches!(late.try_recv(), Err(TryRecvError::Empty)));
    store.revoke_session("new").await.unwrap();
    let id = tokio::time::timeout(Duration::from_secs(5), late.recv())
        .await
        .expect("a revocation within 5 s")
        .unwrap();
    assert_eq!(id, "new");
}

pub(crate) async fn failures_count_within_a_window<S: StateStore>(store: S) {
    assert_eq!(
        store.failures("user:alice").await.unwrap(),
        (0, Duration::ZERO)
    );
    let (count, left) = store.record_failure("user:alice", WINDOW).await.unwrap();
    assert_eq!(count, 1);
    assert!(left <= WINDOW && left > WINDOW / 2, "{left:?}");
    for expected in 2..=5 {
        let (count, left) = store.record_failure("user:alice", WINDOW).await.unwrap();
        assert_eq!(count, expected);
        assert!(left <= WINDOW && !left.is_zero(), "{left:?}");
    }
    let (count, left) = store.failures("user:alice").await.unwrap();
    assert_eq!(count, 5);
    assert!(left <= WINDOW && !left.is_zero(), "{left:?}");
    // Keys are independent.
    assert_eq!(store.failures("ip:192.0.2.1").await.unwrap().0, 0);
    assert_eq!(
        store
            .record_failure("ip:192.0.2.1", WINDOW)
            .await
            .unwrap()
            .0,
        1
    );
    assert_eq!(store.failures("user:alice").await.unwrap().0, 5);
}

pub(crate) async fn failure_window_is_fixed_from_the_first_failure<S: StateStore>(store: S) {
    store.record_failure("k", WINDOW).await.unwrap();
    tokio::time::sleep(WINDOW / 2).await;
    let (count, left) = store.record_failure("k", WINDOW).await.unwrap();
    assert_eq!(count, 2);
    // The window did not restart at the second failure.
    assert!(
        left <= WINDOW / 2 + Duration::from_millis(100) && !left.is_zero(),
        "{left:?}"
    );
    let (_, left_now) = store.failures("k").await.unwrap();
    assert!(left_now <= left, "{left_now:?} > {left:?}");
    tokio::time::sleep(WINDOW / 2 + Duration::from_millis(500)).await;
    // The window is over: counting starts afresh with a full window.
    assert_eq!(store.failures("k").await.unwrap(), (0, Duration::ZERO));
    let (count, left) = store.record_failure("k", WINDOW).await.unwrap();
    assert_eq!(count, 1);
    assert!(left > WINDOW / 2, "{left:?}");
}

pub(crate) async fn reset_failures_forgets_the_count<S: StateStore>(store: S) {
    for _ in 0..3 {
        store.record_failure("user:bob", WINDOW).await.unwrap();
    }
    store
        .record_failure("ip:203.0.113.9", WINDOW)
        .await
        .unwrap();
    store.reset_failures("user:bob").await.unwrap();
    assert_eq!(
        store.failures("user:bob").await.unwrap(),
        (0, Duration::ZERO)
    );
    assert_eq!(store.record_failure("user:bob", WINDOW).await.unwrap().0, 1);
    assert_eq!(store.failures("ip:203.0.113.9").await.unwrap().0, 1);
    // Resetting an unknown key is fine.
    store.reset_failures("never").await.unwrap();
}

/// The server secret of the test nodes.
pub(crate) fn test_secret() -> ServerSecret {
    ServerSecret::from_bytes([0x11; 32])
}

/// `backend` as a node uses it: behind the record seal of [`test_secret`].
pub(crate) fn sealed<S: StateStore>(backend: S) -> SealedState {
    SealedState::new(Arc::new(backend), &test_secret(), Arc::default())
}

/// `record` sealed as the session `id` under [`test_secret`], for tests
/// that drive a backend directly.
pub(crate) fn raw_session(id: &str, record: &SessionRecord) -> SealedSession {
    let plain = serde_json::to_vec(record).unwrap();
    let seal = super::seal::RecordSeal::new(&test_secret());
    SealedSession::from_stored(seal.seal(super::seal::Kind::Session, id, record.expires_at, &plain))
}

/// Whether `bytes` hold [`SESSION_KEY`] raw, in b64u or in b64.
pub(crate) fn holds_session_key(bytes: &[u8]) -> bool {
    let encoded = [
        SESSION_KEY.to_vec(),
        wsgate_proto::b64::encode_b64u(&SESSION_KEY).into_bytes(),
        wsgate_proto::b64::encode_b64(&SESSION_KEY).into_bytes(),
    ];
    encoded
        .iter()
        .any(|e| bytes.windows(e.len()).any(|w| w == &e[..]))
}

/// The attack of issue 11, item 4: a session record written straight into
/// the backend (no login) — in clear as earlier versions stored it, or
/// sealed under another `server_secret` — is not a session.
pub(crate) async fn a_session_forged_in_the_backend_is_refused<S: StateStore>(store: S) {
    let store = sealed(store);
    let record = live_session("alice");
    // A well-formed clear header (version 1, the expiry), then the record
    // in clear where the ciphertext belongs.
    let mut forged = vec![1];
    forged.extend_from_slice(&record.expires_at.to_be_bytes());
    forged.extend_from_slice(&serde_json::to_vec(&record).unwrap());
    store
        .backend()
        .put_session("forged", &SealedSession::from_stored(forged))
        .await
        .unwrap();
    assert!(store.get_session("forged").await.unwrap().is_none());
    // Sealed as a node of another fleet (another server_secret) would.
    let other = SealedState::new(
        Arc::clone(store.backend()),
        &ServerSecret::from_bytes([0x22; 32]),
        Arc::default(),
    );
    other.put_session("elsewhere", &record).await.unwrap();
    assert!(other.get_session("elsewhere").await.unwrap().is_some());
    assert!(store.get_session("elsewhere").await.unwrap().is_none());
    assert_eq!(store.records_refused(), 2);
    // A normal round trip still works, and what the backend holds is no
    // key: the bytes of the record never show it.
    store.put_session("real", &record).await.unwrap();
    assert_same_session(&store.get_session("real").await.unwrap().unwrap(), &record);
    let raw = store.backend().get_session("real").await.unwrap().unwrap();
    assert!(!holds_session_key(raw.as_bytes()), "{raw:?}");
    assert!(!raw.as_bytes().windows(5).any(|w| w == b"alice"));
    assert_eq!(raw.expires_at(), Some(record.expires_at));
    assert_eq!(store.records_refused(), 2);
}

/// A sealed record copied under another id (another user's session, a
/// chosen id) does not open; nor one whose clear fields or ciphertext were
/// altered.
pub(crate) async fn a_sealed_session_copied_or_altered_is_refused<S: StateStore>(store: S) {
    let store = sealed(store);
    let record = live_session("alice");
    store.put_session("s1", &record).await.unwrap();
    let raw = store.backend().get_session("s1").await.unwrap().unwrap();
    store.backend().put_session("s2", &raw).await.unwrap();
    assert!(store.get_session("s2").await.unwrap().is_none());
    // A later expiry in the clear header (to outlive a revocation or the
    // session's end).
    let mut later = raw.as_bytes().to_vec();
    later[1..9].copy_from_slice(&(record.expires_at + 86_400).to_be_bytes());
    store
        .backend()
        .put_session("s1", &SealedSession::from_stored(later))
        .await
        .unwrap();
    assert!(store.get_session("s1").await.unwrap().is_none());
    // One flipped bit of the ciphertext.
    let mut flipped = raw.as_bytes().to_vec();
    let last = flipped.len() - 20;
    flipped[last] ^= 0x01;
    store
        .backend()
        .put_session("s1", &SealedSession::from_stored(flipped))
        .await
        .unwrap();
    assert!(store.get_session("s1").await.unwrap().is_none());
    assert_eq!(store.records_refused(), 3);
    // The record as sealed still opens where it belongs.
    store.backend().put_session("s1", &raw).await.unwrap();
    assert_same_session(&store.get_session("s1").await.unwrap().unwrap(), &record);
}

/// Login exchanges are sealed too: one written straight into the backend,
/// or a sealed one moved to another sid, is not taken.
pub(crate) async fn a_forged_or_moved_exchange_is_refused<S: StateStore>(store: S) {
    let store = sealed(store);
    let q = ExchangeQuota::unbounded("g");
    store
        .backend()
        .put_exchange("forged", b"{\"clear\":1}".to_vec(), EXCHANGE_TTL, q)
        .await
        .unwrap()
        .stored();
    assert_eq!(store.take_exchange("forged").await.unwrap(), None);
    store
        .put_exchange("a", SESSION_KEY.to_vec(), EXCHANGE_TTL, q)
        .await
        .unwrap()
        .stored();
    let raw = store.backend().take_exchange("a").await.unwrap().unwrap();
    assert!(!holds_session_key(&raw));
    store
        .backend()
        .put_exchange("b", raw.clone(), EXCHANGE_TTL, q)
        .await
        .unwrap()
        .stored();
    assert_eq!(store.take_exchange("b").await.unwrap(), None);
    assert_eq!(store.records_refused(), 2);
    // Back under its own sid it opens (once).
    store
        .backend()
        .put_exchange("a", raw, EXCHANGE_TTL, q)
        .await
        .unwrap()
        .stored();
    assert_eq!(
        store.take_exchange("a").await.unwrap().as_deref(),
        Some(&SESSION_KEY[..])
    );
    assert_eq!(store.take_exchange("a").await.unwrap(), None);
}

pub(crate) async fn state_store_debug_shows_no_key_bytes<S: StateStore>(store: S) {
    let store = sealed(store);
    let record = live_session("alice");
    store.put_session("s1", &record).await.unwrap();
    store
        .put_exchange(
            "x",
            SESSION_KEY.to_vec(),
            EXCHANGE_TTL,
            ExchangeQuota::unbounded("g"),
        )
        .await
        .unwrap()
        .stored();
    let text = format!("{record:?} {record:#?} {store:?} {store:#?}");
    assert!(text.contains("alice"), "{text}");
    assert_no_key_bytes(&text);
}

/// Every channel the suite's event tests use, watched as a node's hub
/// would before its first subscriber's SUBSCRIBE is confirmed (a store with
/// per-channel fan-out only delivers watched channels).
pub(crate) const SUITE_CHANNELS: [&str; 20] = [
    "news",
    "c0",
    "c1",
    "c2",
    "user.émile.inbox",
    "bytes",
    "empty",
    "json",
    "large",
    "real",
    "room",
    "other",
    "feed",
    "new",
    "even",
    "odd",
    "plain",
    "p",
    "x",
    "four",
];

/// Watches [`SUITE_CHANNELS`] on `store`.
pub(crate) async fn watch_suite_channels<S: StateStore>(store: &S) {
    for channel in SUITE_CHANNELS {
        store.watch_channel(channel).await.unwrap();
    }
}

/// The next real event of `watcher` within 10 s, skipping lag-notice
/// fillers; `Err` on a lag notice itself.
pub(crate) async fn next_real_event(
    watcher: &mut tokio::sync::broadcast::Receiver<StoreEvent>,
) -> Result<StoreEvent, tokio::sync::broadcast::error::RecvError> {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), watcher.recv())
            .await
            .expect("an event within 10 s")?;
        if !event.channel.is_empty() {
            return Ok(event);
        }
    }
}

/// The next event of `watcher`, within 5 s; fails on a lag notice.
pub(crate) async fn next_event(
    watcher: &mut tokio::sync::broadcast::Receiver<StoreEvent>,
) -> StoreEvent {
    tokio::time::timeout(Duration::from_secs(5), watcher.recv())
        .await
        .expect("an event within 5 s")
        .expect("an event, not a lag notice")
}

pub(crate) async fn events_reach_every_watcher<S: StateStore>(store: S) {
    watch_suite_channels(&store).await;
    let mut first = store.watch_events();
    let mut second = store.watch_events();
    store.publish_event("news", b"hello").await.unwrap();
    for watcher in [&mut first, &mut second] {
        let event = next_event(watcher).await;
        assert_eq!(event.channel, "news");
        assert_eq!(&event.payload[..], b"hello");
    }
    assert!(matches!(first.try_recv(), Err(TryRecvError::Empty)));
}

pub(crate) async fn events_of_one_publisher_keep_their_order<S: StateStore>(store: S) {
    watch_suite_channels(&store).await;
    let mut watcher = store.watch_events();
    for i in 0..200u32 {
        let channel = format!("c{}", i % 3);
        store
            .publish_event(&channel, &i.to_be_bytes())
            .await
            .unwrap();
    }
    for i in 0..200u32 {
        let event = next_event(&mut watcher).await;
        assert_eq!(event.channel, format!("c{}", i % 3));
        assert_eq!(&event.payload[..], i.to_be_bytes());
    }
}

pub(crate) async fn event_watchers_see_only_later_events<S: StateStore>(store: S) {
    watch_suite_channels(&store).await;
    store.publish_event("news", b"old").await.unwrap();
    let mut late = store.watch_events();
    assert!(matches!(late.try_recv(), Err(TryRecvError::Empty)));
    store.publish_event("news", b"new").await.unwrap();
    assert_eq!(&next_event(&mut late).await.payload[..], b"new");
    // Give a late echo of "old" (a backend's fan-out) time to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(matches!(late.try_recv(), Err(TryRecvError::Empty)));
}

pub(crate) async fn event_payloads_are_kept_byte_for_byte<S: StateStore>(store: S) {
    watch_suite_channels(&store).await;
    let mut watcher = store.watch_events();
    let all_bytes: Vec<u8> = (0..=255).collect();
    let large: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let cases: [(&str, &[u8]); 5] = [
        ("user.émile.inbox", b"\xff\xfe\x00not utf-8\x80"),
        ("bytes", &all_bytes),
        ("empty", b""),
        ("json", br#"{"a":"b"}"#),
        ("large", &large),
    ];
    for (channel, payload) in cases {
        store.publish_event(channel, payload).await.unwrap();
    }
    for (channel, payload) in cases {
        let event = next_event(&mut watcher).await;
        assert_eq!(event.channel, channel);
        assert_eq!(&event.payload[..], payload, "{channel}");
    }
}

pub(crate) async fn events_without_a_channel_are_dropped<S: StateStore>(store: S) {
    watch_suite_channels(&store).await;
    let mut watcher = store.watch_events();
    store.publish_event("", b"filler").await.unwrap();
    store.publish_event("real", b"x").await.unwrap();
    assert_eq!(next_event(&mut watcher).await.channel, "real");
}

pub(crate) async fn a_healthy_store_says_so<S: StateStore>(store: S) {
    assert!(store.is_healthy(), "{store:?}");
}

// ──────────────────────────── presence (§6.6) ────────────────────────────────

fn member(channel: &str, user: &str, member: &str) -> PresenceMember {
    PresenceMember {
        channel: channel.to_owned(),
        user: user.to_owned(),
        member: member.to_owned(),
    }
}

/// The next presence change on `channel` from `watcher` (other events skipped).
async fn next_presence(
    watcher: &mut tokio::sync::broadcast::Receiver<StoreEvent>,
    channel: &str,
) -> PresenceChange {
    loop {
        let event = next_event(watcher).await;
        if event.channel == channel
            && let Some(change) = event.presence
        {
            return change;
        }
    }
}

/// Nothing more on `watcher` within a short wait.
async fn no_more_presence(watcher: &mut tokio::sync::broadcast::Receiver<StoreEvent>) {
    let got = tokio::time::timeout(Duration::from_millis(300), watcher.recv()).await;
    assert!(got.is_err(), "expected nothing, got {got:?}");
}

const PRESENCE_TTL: Duration = Duration::from_secs(30);

pub(crate) async fn presence_joins_and_leaves_per_user_not_per_member<S: StateStore>(store: S) {
    watch_suite_channels(&store).await;
    let mut watcher = store.watch_events();
    let (a1, a2, b1) = (
        member("room", "alice", "n1:1"),
        member("room", "alice", "n2:7"),
        member("room", "bob", "n1:2"),
    );
    assert!(
        store.presence_add(&a1, PRESENCE_TTL).await.unwrap(),
        "first member joins"
    );
    assert!(
        !store.presence_add(&a2, PRESENCE_TTL).await.unwrap(),
        "second does not"
    );
    assert!(
        !store.presence_add(&a1, PRESENCE_TTL).await.unwrap(),
        "re-adding refreshes"
    );
    assert!(store.presence_add(&b1, PRESENCE_TTL).await.unwrap());
    let list = store.presence_list("room", 100).await.unwrap();
    assert_eq!(list.users, [("alice".to_owned(), 2), ("bob".to_owned(), 1)]);
    assert!(!list.truncated);
    assert!(
        !store.presence_remove(&a1).await.unwrap(),
        "alice still has a2"
    );
    assert!(
        store.presence_remove(&a2).await.unwrap(),
        "her last member: leave"
    );
    assert!(
        !store.presence_remove(&a2).await.unwrap(),
        "unknown member: nothing"
    );
    assert_eq!(
        store.presence_list("room", 100).await.unwrap().users,
        [("bob".to_owned(), 1)]
    );
    assert_eq!(
        next_presence(&mut watcher, "room").await,
        PresenceChange::Join("alice".into())
    );
    assert_eq!(
        next_presence(&mut watcher, "room").await,
        PresenceChange::Join("bob".into())
    );
    assert_eq!(
        next_presence(&mut watcher, "room").await,
        PresenceChange::Leave("alice".into())
    );
    no_more_presence(&mut watcher).await;
    // Channels are independent.
    assert!(
        store
            .presence_add(&member("other", "bob", "n1:2"), PRESENCE_TTL)
            .await
            .unwrap()
    );
    assert!(
        store
            .presence_list("empty", 100)
            .await
            .unwrap()
            .users
            .is_empty()
    );
}

pub(crate) async fn expired_members_leave_once_at_the_first_sweep<S: StateStore>(store: S) {
    watch_suite_channels(&store).await;
    let mut watcher = store.watch_events();
    let short = Duration::from_millis(300);
    store
        .presence_add(&member("room", "alice", "dead:1"), short)
        .await
        .unwrap();
    store
        .presence_add(&member("room", "bob", "live:1"), PRESENCE_TTL)
        .await
        .unwrap();
    assert_eq!(
        next_presence(&mut watcher, "room").await,
        PresenceChange::Join("alice".into())
    );
    assert_eq!(
        next_presence(&mut watcher, "room").await,
        PresenceChange::Join("bob".into())
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Expired members are not listed even before a sweep.
    assert_eq!(
        store.presence_list("room", 100).await.unwrap().users,
        [("bob".to_owned(), 1)]
    );
    store.presence_sweep().await.unwrap();
    store.presence_sweep().await.unwrap();
    assert_eq!(
        next_presence(&mut watcher, "room").await,
        PresenceChange::Leave("alice".into())
    );
    no_more_presence(&mut watcher).await;
    assert!(
        !store
            .presence_remove(&member("room", "alice", "dead:1"))
            .await
            .unwrap()
    );
}

pub(crate) async fn refreshed_members_stay_present<S: StateStore>(store: S) {
    watch_suite_channels(&store).await;
    let mut watcher = store.watch_events();
    let ttl = Duration::from_millis(600);
    let m = member("room", "alice", "n1:1");
    store.presence_add(&m, ttl).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        store
            .presence_refresh(std::slice::from_ref(&m), ttl)
            .await
            .unwrap();
        store.presence_sweep().await.unwrap();
    }
    assert_eq!(
        store.presence_list("room", 100).await.unwrap().users,
        [("alice".to_owned(), 1)]
    );
    assert_eq!(
        next_presence(&mut watcher, "room").await,
        PresenceChange::Join("alice".into())
    );
    no_more_presence(&mut watcher).await;
    // A member swept while its node was slow comes back with a refresh.
    tokio::time::sleep(Duration::from_millis(900)).await;
    store.presence_sweep().await.unwrap();
    assert_eq!(
        next_presence(&mut watcher, "room").await,
        PresenceChange::Leave("alice".into())
    );
    store
        .presence_refresh(std::slice::from_ref(&m), ttl)
        .await
        .unwrap();
    assert_eq!(
        next_presence(&mut watcher, "room").await,
        PresenceChange::Join("alice".into())
    );
}

pub(crate) async fn one_refresh_of_many_members_keeps_them_and_adds_back_lost_ones<
    S: StateStore,
>(
    store: S,
) {
    watch_suite_channels(&store).await;
    let mut watcher = store.watch_events();
    let members: Vec<PresenceMember> = (0..1200)
        .map(|i| {
            member(
                if i % 2 == 0 { "even" } else { "odd" },
                &format!("u{i}"),
                &format!("n:{i}"),
            )
        })
        .collect();
    store.presence_add(&members[0], PRESENCE_TTL).await.unwrap();
    assert_eq!(
        next_presence(&mut watcher, "even").await,
        PresenceChange::Join("u0".into())
    );
    // One call for all of them (more than one script batch): the known one
    // is refreshed silently, the others are added and join.
    store
        .presence_refresh(&members, PRESENCE_TTL)
        .await
        .unwrap();
    let even = store.presence_list("even", 10_000).await.unwrap();
    let odd = store.presence_list("odd", 10_000).await.unwrap();
    assert_eq!((even.users.len(), odd.users.len()), (600, 600));
    let mut joins = 0;
    while joins < 1199 {
        match next_event(&mut watcher).await.presence {
            Some(PresenceChange::Join(user)) => {
                assert_ne!(user, "u0", "a known member joined again");
                joins += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    no_more_presence(&mut watcher).await;
}

pub(crate) async fn presence_lists_are_sorted_and_truncated<S: StateStore>(store: S) {
    for (i, user) in ["eve", "bob", "dan", "alice", "carol"].iter().enumerate() {
        store
            .presence_add(&member("room", user, &format!("n:{i}")), PRESENCE_TTL)
            .await
            .unwrap();
    }
    let list = store.presence_list("room", 3).await.unwrap();
    let names: Vec<&str> = list.users.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    assert!(list.truncated);
    assert!(!store.presence_list("room", 5).await.unwrap().truncated);
}

// ──────────────────────── channel streams (§6.5) ────────────────────────────

fn history(keep: usize) -> HistoryPolicy {
    HistoryPolicy {
        keep,
        ttl: Duration::from_secs(300),
        max_bytes: 1 << 20,
    }
}

fn pos(epoch: &str, offset: u64) -> Position {
    Position {
        epoch: epoch.to_owned(),
        offset,
    }
}

fn offsets(read: &HistoryRead) -> Vec<u64> {
    read.events.iter().map(|e| e.offset).collect()
}

pub(crate) async fn streams_count_from_one_and_keep_exactly_the_last_events<S: StateStore>(
    store: S,
) {
    let policy = history(3);
    let mut epoch = None;
    for i in 1..=5u64 {
        let at = store
            .publish_at("feed", format!("e{i}").as_bytes(), &policy)
            .await
            .unwrap();
        assert_eq!(at.offset, i);
        assert_eq!(
            epoch.get_or_insert(at.epoch.clone()),
            &at.epoch,
            "one epoch"
        );
    }
    let e = epoch.unwrap();
    let read = |since: Option<Position>, limit: usize| {
        let store = &store;
        async move {
            store
                .read_history("feed", since.as_ref(), limit, &policy)
                .await
                .unwrap()
        }
    };
    // No since: the last kept, exactly 3 of them, oldest first.
    let last = read(None, 10).await;
    assert_eq!(last.position, pos(&e, 5));
    assert_eq!(offsets(&last), [3, 4, 5]);
    assert!(!last.continues);
    assert_eq!(&last.events[0].payload[..], b"e3");
    // since 2: everything after it is kept.
    let after = read(Some(pos(&e, 2)), 10).await;
    assert!(after.continues && after.is_complete_after(&pos(&e, 2)));
    assert_eq!(offsets(&after), [3, 4, 5]);
    // since 1: event 2 was trimmed, so it does not continue.
    let gone = read(Some(pos(&e, 1)), 10).await;
    assert!(!gone.continues);
    assert_eq!(offsets(&gone), [3, 4, 5]);
    // since the current position: continues, nothing to replay.
    let now = read(Some(pos(&e, 5)), 10).await;
    assert!(now.continues && now.events.is_empty() && now.is_complete_after(&pos(&e, 5)));
    // Beyond the stream, another epoch, an absurd offset: no.
    for since in [pos(&e, 6), pos("AAAAAAAAAAA", 2), pos(&e, u64::MAX)] {
        assert!(!read(Some(since.clone()), 10).await.continues, "{since:?}");
    }
    // A limit pages forward: the first events after since.
    let page = read(Some(pos(&e, 2)), 2).await;
    assert!(page.continues && !page.is_complete_after(&pos(&e, 2)));
    assert_eq!(offsets(&page), [3, 4]);
    assert_eq!(offsets(&read(None, 2).await), [4, 5]);
    assert!(read(None, 0).await.events.is_empty());
    // Other channels have their own streams.
    let other = store.publish_at("other", b"x", &policy).await.unwrap();
    assert_eq!(other.offset, 1);
}

pub(crate) async fn stream_events_reach_watchers_with_their_position<S: StateStore>(store: S) {
    watch_suite_channels(&store).await;
    let mut watcher = store.watch_events();
    let at = store
        .publish_at("feed", b"\x00\xffpayload", &history(10))
        .await
        .unwrap();
    let event = next_event(&mut watcher).await;
    assert_eq!(event.channel, "feed");
    assert_eq!(&event.payload[..], b"\x00\xffpayload");
    let got = event.at.expect("a stream position");
    assert_eq!((&*got.epoch, got.offset), (at.epoch.as_str(), 1));
    // A plain publish still has none.
    store.publish_event("plain", b"p").await.unwrap();
    assert_eq!(next_event(&mut watcher).await.at, None);
}

pub(crate) async fn streams_keep_at_most_their_bytes<S: StateStore>(store: S) {
    let policy = HistoryPolicy {
        max_bytes: 10,
        ..history(100)
    };
    for _ in 0..4 {
        store.publish_at("feed", b"four", &policy).await.unwrap();
    }
    let read = store
        .read_history("feed", None, 100, &policy)
        .await
        .unwrap();
    assert_eq!(offsets(&read), [3, 4], "8 bytes kept, not 12");
    // An event larger than the bound alone is fanned out but not kept.
    store
        .publish_at("feed", b"eleven bytes", &policy)
        .await
        .unwrap();
    let read = store
        .read_history("feed", None, 100, &policy)
        .await
        .unwrap();
    assert_eq!(read.position.offset, 5);
    assert!(read.events.is_empty());
}

pub(crate) async fn a_stream_read_before_any_publish_keeps_its_epoch<S: StateStore>(store: S) {
    let policy = history(10);
    let first = store.read_history("new", None, 10, &policy).await.unwrap();
    assert_eq!(first.position.offset, 0);
    assert!(first.events.is_empty());
    let again = store.read_history("new", None, 10, &policy).await.unwrap();
    assert_eq!(again.position, first.position, "the epoch told stays valid");
    let at = store.publish_at("new", b"1", &policy).await.unwrap();
    assert_eq!(at, pos(&first.position.epoch, 1));
    let since_start = store
        .read_history("new", Some(&first.position), 10, &policy)
        .await
        .unwrap();
    assert!(since_start.is_complete_after(&first.position));
    assert_eq!(offsets(&since_start), [1]);
}

pub(crate) async fn an_idle_stream_is_forgotten_into_a_new_epoch<S: StateStore>(store: S) {
    let policy = HistoryPolicy {
        ttl: Duration::from_millis(300),
        ..history(10)
    };
    let first = store.publish_at("feed", b"1", &policy).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let second = store.publish_at("feed", b"2", &policy).await.unwrap();
    assert_ne!(second.epoch, first.epoch);
    assert_eq!(second.offset, 1);
    let read = store
        .read_history("feed", Some(&first), 10, &policy)
        .await
        .unwrap();
    assert!(
        !read.continues,
        "the old epoch's position does not continue"
    );
}

pub(crate) async fn concurrent_stream_publishers_never_share_an_offset<S: StateStore>(store: S) {
    watch_suite_channels(&store).await;
    let store = std::sync::Arc::new(store);
    let mut watcher = store.watch_events();
    let policy = history(1000);
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..25 {
                    let at = store
                        .publish_at("feed", format!("{t}:{i}").as_bytes(), &policy)
                        .await
                        .unwrap();
                    got.push(at.offset);
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=200).collect::<Vec<u64>>(), "every offset once");
    // Watchers see them in offset order.
    let mut seen = Vec::new();
    while seen.len() < 200 {
        let event = next_event(&mut watcher).await;
        seen.push(event.at.unwrap().offset);
    }
    assert_eq!(seen, (1..=200).collect::<Vec<u64>>());
    let read = store
        .read_history("feed", None, 1000, &policy)
        .await
        .unwrap();
    assert_eq!(offsets(&read), (1..=200).collect::<Vec<u64>>());
}

/// Instantiates the state store suite for one backend.
/// `$make` is a future giving `(guard, store)`.
///
/// Time-dependent tests run on paused tokio time; a backend whose TTLs run
/// on a server's clock (Redis) uses `services:`, whose tests run in real time
/// and whose `$make` gives `Option<(guard, store)>` (`None` skips).
macro_rules! state_store_suite {
    (services: $make:expr) => {
        $crate::store::tests::state_store_suite!(@suite services, $make);
    };
    ($make:expr) => {
        $crate::store::tests::state_store_suite!(@suite always, $make);
    };
    (@suite $mode:ident, $make:expr) => {
        $crate::store::tests::state_store_suite!(@tests $mode, $make;
            exchange_round_trips_once,
            exchange_expires_after_its_ttl,
            unknown_session_is_none,
            session_round_trips,
            expired_session_is_none,
            revocation_removes_the_session_and_notifies_watchers,
            watchers_see_only_later_revocations,
            exchange_quotas_bound_each_group_and_the_store,
            expired_exchanges_stop_counting,
            failures_count_within_a_window,
            failure_window_is_fixed_from_the_first_failure,
            reset_failures_forgets_the_count,
            failure_limits_count_all_or_nothing,
            forgiving_a_failure_takes_one_back,
            state_store_debug_shows_no_key_bytes,
            events_reach_every_watcher,
            events_of_one_publisher_keep_their_order,
            event_watchers_see_only_later_events,
            event_payloads_are_kept_byte_for_byte,
            events_without_a_channel_are_dropped,
            a_healthy_store_says_so,
            a_session_forged_in_the_backend_is_refused,
            a_sealed_session_copied_or_altered_is_refused,
            a_forged_or_moved_exchange_is_refused,
            streams_count_from_one_and_keep_exactly_the_last_events,
            stream_events_reach_watchers_with_their_position,
            streams_keep_at_most_their_bytes,
            a_stream_read_before_any_publish_keeps_its_epoch,
            an_idle_stream_is_forgotten_into_a_new_epoch,
            presence_joins_and_leaves_per_user_not_per_member,
            expired_members_leave_once_at_the_first_sweep,
            refreshed_members_stay_present,
            presence_lists_are_sorted_and_truncated,
            one_refresh_of_many_members_keeps_them_and_adds_back_lost_ones,
        );
        #[tokio::test(flavor = "multi_thread", worker_threads = 8)]
        async fn concurrent_stream_publishers_never_share_an_offset() {
            $crate::store::tests::get_store!($mode, $make, _guard, store);
            $crate::store::tests::concurrent_stream_publishers_never_share_an_offset(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 8)]
        async fn exchange_take_is_atomic_under_concurrency() {
            $crate::store::tests::get_store!($mode, $make, _guard, store);
            $crate::store::tests::exchange_take_is_atomic_under_concurrency(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 8)]
        async fn exchange_quotas_hold_under_concurrency() {
            $crate::store::tests::get_store!($mode, $make, _guard, store);
            $crate::store::tests::exchange_quotas_hold_under_concurrency(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 8)]
        async fn failure_limits_hold_under_concurrency() {
            $crate::store::tests::get_store!($mode, $make, _guard, store);
            $crate::store::tests::failure_limits_hold_under_concurrency(store).await;
        }
    };
    (@tests always, $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(start_paused = true)]
            async fn $name() {
                let (_guard, store) = $make.await;
                $crate::store::tests::$name(store).await;
            }
        )*
    };
    (@tests services, $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::store::tests::get_store!(services, $make, _guard, store);
                $crate::store::tests::$name(store).await;
            }
        )*
    };
}
pub(crate) use state_store_suite;

/// Binds `$guard` and `$store` from `$make`: `(guard, store)` (`always`), or
/// `Option<(guard, store)>` whose `None` returns from the test (`services`).
macro_rules! get_store {
    (always, $make:expr, $guard:ident, $store:ident) => {
        let ($guard, $store) = $make.await;
    };
    (services, $make:expr, $guard:ident, $store:ident) => {
        let Some(($guard, $store)) = $make.await else {
            return;
        };
    };
}
pub(crate) use get_store;

// ───────────────────────────── the backends ─────────────────────────────────

mod memory_credentials {
    use crate::store::MemoryCredentialStore;

    crate::store::tests::credential_store_suite!(async { ((), MemoryCredentialStore::new()) });
}

mod sqlite_in_memory_credentials {
    use crate::store::SqliteCredentialStore;

    crate::store::tests::credential_store_suite!(async {
        ((), SqliteCredentialStore::open_in_memory().unwrap())
    });
}

mod sqlite_file_credentials {
    use crate::store::SqliteCredentialStore;

    crate::store::tests::credential_store_suite!(async {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteCredentialStore::open(&dir.path().join("credentials.sqlite3")).unwrap();
        (dir, store)
    });
}

mod memory_state {
    use crate::store::MemoryStateStore;

    crate::store::tests::state_store_suite!(async { ((), MemoryStateStore::new()) });
}

mod redis_state {
    crate::store::tests::state_store_suite!(services: crate::store::test_servers::redis_store());
}

mod redis_cluster_state {
    crate::store::tests::state_store_suite!(
        services: crate::store::test_servers::redis_cluster_store()
    );
}

mod postgres_credentials {
    crate::store::tests::credential_store_suite!(
        services: crate::store::test_servers::postgres_store()
    );
}

// ─────────────────────────── backend-specific tests ─────────────────────────

mod memory_specific {
    use super::*;
    use crate::store::MemoryStateStore;

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_swept_as_the_maps_grow() {
        let store = MemoryStateStore::default();
        for i in 0..1000 {
            store
                .put_exchange(
                    &format!("a{i}"),
                    vec![1],
                    Duration::from_secs(1),
                    ExchangeQuota::unbounded("g"),
                )
                .await
                .unwrap()
                .stored();
            store
                .record_failure(&format!("k{i}"), Duration::from_secs(1))
                .await
                .unwrap();
            store
                .put_session(
                    &format!("s{i}"),
                    &raw_session("", &session("u", unix_now() - 1)),
                )
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        for i in 0..1000 {
            store
                .put_exchange(
                    &format!("b{i}"),
                    vec![1],
                    Duration::from_secs(60),
                    ExchangeQuota::unbounded("g"),
                )
                .await
                .unwrap()
                .stored();
            store
                .record_failure(&format!("j{i}"), Duration::from_secs(60))
                .await
                .unwrap();
            store
                .put_session(&format!("t{i}"), &raw_session("", &live_session("u")))
                .await
                .unwrap();
        }
        let (exchanges, sessions, failures) = store.entry_counts();
        for n in [exchanges, sessions, failures] {
            assert!((1000..1100).contains(&n), "{n} entries held");
        }
        tokio::time::sleep(Duration::from_secs(61)).await;
        store.sweep_expired();
        assert_eq!(store.entry_counts(), (0, 1000, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn reading_expired_entries_drops_them() {
        let store = MemoryStateStore::new();
        store
            .put_exchange(
                "x",
                vec![1],
                Duration::from_secs(1),
                ExchangeQuota::unbounded("g"),
            )
            .await
            .unwrap()
            .stored();
        store
            .record_failure("k", Duration::from_secs(1))
            .await
            .unwrap();
        store
            .put_session("s", &raw_session("s", &session("u", 1)))
            .await
            .unwrap();
        assert_eq!(store.entry_counts(), (1, 1, 1));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(store.take_exchange("x").await.unwrap(), None);
        assert_eq!(store.failures("k").await.unwrap(), (0, Duration::ZERO));
        assert!(store.get_session("s").await.unwrap().is_none());
        assert_eq!(store.entry_counts(), (0, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn failure_windows_report_exact_time_left() {
        let store = MemoryStateStore::new();
        let window = Duration::from_secs(300);
        assert_eq!(
            store.record_failure("k", window).await.unwrap(),
            (1, window)
        );
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert_eq!(
            store.record_failure("k", window).await.unwrap(),
            (2, Duration::from_secs(200))
        );
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert_eq!(store.failures("k").await.unwrap(), (0, Duration::ZERO));
    }

    #[tokio::test]
    async fn lagging_watchers_are_told_so() {
        let store = MemoryStateStore::new();
        let mut watcher = store.watch_revocations();
        for i in 0..2000 {
            store.revoke_session(&format!("s{i}")).await.unwrap();
        }
        assert!(matches!(
            watcher.recv().await,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_))
        ));
    }

    #[tokio::test]
    async fn lagging_event_watchers_are_told_so() {
        let store = MemoryStateStore::new();
        let mut watcher = store.watch_events();
        for i in 0..5000u32 {
            store.publish_event("c", &i.to_be_bytes()).await.unwrap();
        }
        assert!(matches!(
            watcher.recv().await,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_))
        ));
        // It then reads on from the oldest event still held.
        assert_eq!(next_event(&mut watcher).await.channel, "c");
    }
}

mod redis_specific {
    //! Against real `redis-server`s: a fleet of stores on one Redis, the
    //! layout of keys, and what happens when Redis goes away.

    use std::time::Instant;

    use tokio::sync::broadcast::Receiver;
    use tokio::sync::broadcast::error::RecvError;

    use super::*;
    use crate::store::RedisStateStore;
    use crate::store::test_servers::{RedisServer, shared_redis, skipped, unique_prefix};

    async fn raw(url: &str) -> ::redis::aio::MultiplexedConnection {
        ::redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Two stores (two nodes) on the shared Redis under one fresh prefix.
    async fn fleet() -> Option<(RedisStateStore, RedisStateStore)> {
        if skipped() {
            return None;
        }
        let (url, prefix) = (shared_redis().url(), unique_prefix());
        let a = RedisStateStore::connect_with_prefix(&url, &prefix)
            .await
            .unwrap();
        let b = RedisStateStore::connect_with_prefix(&url, &prefix)
            .await
            .unwrap();
        Some((a, b))
    }

    /// The next real revocation, skipping lag-notice fillers; `Err` on a lag
    /// notice itself.
    async fn next_revocation(watcher: &mut Receiver<String>) -> Result<String, RecvError> {
        loop {
            let id = tokio::time::timeout(Duration::from_secs(10), watcher.recv())
                .await
                .expect("a revocation within 10 s")?;
            if !id.is_empty() {
                return Ok(id);
            }
        }
    }

    #[tokio::test]
    async fn nodes_share_state_and_fan_out_to_each_other() {
        let Some((a, b)) = fleet().await else { return };
        let (a, b) = (sealed(a), sealed(b));
        let (mut a_revoked, mut b_revoked) = (a.watch_revocations(), b.watch_revocations());
        let (mut a_events, mut b_events) = (a.watch_events(), b.watch_events());

        // A login on one node is a session on every node.
        a.put_exchange(
            "x",
            b"state".to_vec(),
            Duration::from_secs(60),
            ExchangeQuota::unbounded("g"),
        )
        .await
        .unwrap()
        .stored();
        assert_eq!(b.take_exchange("x").await.unwrap().unwrap(), b"state");
        assert_eq!(a.take_exchange("x").await.unwrap(), None);
        a.put_session("s1", &live_session("alice")).await.unwrap();
        assert_same_session(
            &b.get_session("s1").await.unwrap().unwrap(),
            &live_session("alice"),
        );
        // Failure counters are shared.
        a.record_failure("user:alice", WINDOW).await.unwrap();
        assert_eq!(b.record_failure("user:alice", WINDOW).await.unwrap().0, 2);

        // A logout on the other node refuses it everywhere, and every node's
        // watchers hear of it exactly once.
        b.revoke_session("s1").await.unwrap();
        assert!(a.get_session("s1").await.unwrap().is_none());
        assert_eq!(next_revocation(&mut a_revoked).await.unwrap(), "s1");
        assert_eq!(next_revocation(&mut b_revoked).await.unwrap(), "s1");

        // Events reach every node, the publisher's own watchers once.
        a.publish_event("news", b"from a").await.unwrap();
        b.publish_event("news", b"from b").await.unwrap();
        for watcher in [&mut a_events, &mut b_events] {
            let mut got = vec![
                next_real_event(watcher).await.unwrap().payload,
                next_real_event(watcher).await.unwrap().payload,
            ];
            got.sort();
            assert_eq!(got, [&b"from a"[..], &b"from b"[..]]);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(matches!(a_events.try_recv(), Err(TryRecvError::Empty)));
        assert!(matches!(b_events.try_recv(), Err(TryRecvError::Empty)));
        assert!(matches!(a_revoked.try_recv(), Err(TryRecvError::Empty)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn quotas_and_failure_limits_hold_across_the_fleet() {
        let Some((a, b)) = fleet().await else { return };
        let (a, b) = (Arc::new(a), Arc::new(b));
        const TASKS: usize = 100;
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                let node = Arc::clone(if i % 2 == 0 { &a } else { &b });
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    let stored = node
                        .put_exchange(
                            &format!("x{i}"),
                            vec![1],
                            Duration::from_secs(60),
                            quota("198.51.100.7", 7, 1000),
                        )
                        .await
                        .unwrap()
                        == ExchangeAdmission::Stored;
                    let limits = [
                        FailureLimit {
                            key: "user:alice",
                            limit: 10,
                        },
                        FailureLimit {
                            key: "ip:198.51.100.7",
                            limit: 50,
                        },
                    ];
                    let counted = node
                        .record_failure_within(&limits, WINDOW)
                        .await
                        .unwrap()
                        .is_none();
                    (stored, counted)
                })
            })
            .collect();
        let (mut stored, mut counted) = (0, 0);
        for task in tasks {
            let (s, c) = task.await.unwrap();
            stored += usize::from(s);
            counted += usize::from(c);
        }
        assert_eq!((stored, counted), (7, 10));
        assert_eq!(a.live_exchanges().await.unwrap(), 7);
        assert_eq!(b.failures("user:alice").await.unwrap().0, 10);
    }

    #[tokio::test]
    async fn an_exchange_stored_by_an_earlier_version_is_still_taken() {
        if skipped() {
            return;
        }
        let (url, prefix) = (shared_redis().url(), unique_prefix());
        let store = RedisStateStore::connect_with_prefix(&url, &prefix)
            .await
            .unwrap();
        // What a node of the previous version wrote: a plain string.
        let mut conn = raw(&url).await;
        let () = ::redis::cmd("SET")
            .arg(format!("{prefix}exchange:old"))
            .arg(&b"old state"[..])
            .arg("PX")
            .arg(60_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            store.take_exchange("old").await.unwrap().as_deref(),
            Some(&b"old state"[..])
        );
        assert_eq!(store.take_exchange("old").await.unwrap(), None);
        assert_eq!(store.live_exchanges().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn every_key_lives_under_the_prefix_and_expires() {
        if skipped() {
            return;
        }
        let (url, prefix) = (shared_redis().url(), unique_prefix());
        let store = RedisStateStore::connect_with_prefix(&url, &prefix)
            .await
            .unwrap();
        assert_eq!(store.prefix(), prefix);
        store
            .put_exchange(
                "x1",
                b"s".to_vec(),
                Duration::from_secs(60),
                ExchangeQuota::unbounded("g"),
            )
            .await
            .unwrap()
            .stored();
        store
            .put_session("s1", &raw_session("s1", &live_session("a")))
            .await
            .unwrap();
        store.record_failure("ip:192.0.2.1", WINDOW).await.unwrap();
        let mut conn = raw(&url).await;
        let mut keys: Vec<String> = ::redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.sort();
        assert_eq!(
            keys,
            [
                format!("{prefix}exchange-group:g"),
                format!("{prefix}exchange-index"),
                format!("{prefix}exchange:x1"),
                format!("{prefix}failures:ip:192.0.2.1"),
                format!("{prefix}session:s1"),
            ]
        );
        for key in &keys {
            let ttl: i64 = ::redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(ttl > 0, "{key} has no expiry ({ttl})");
        }
        // The session expires with the record, on Redis's clock.
        let expires_at: i64 = ::redis::cmd("PEXPIRETIME")
            .arg(format!("{prefix}session:s1"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let record = live_session("a");
        assert!(
            (expires_at / 1000).abs_diff(record.expires_at as i64) <= 1,
            "{expires_at}"
        );
        // The session's key bytes are not stored (sealed), nor in Debug output.
        let value: Vec<u8> = ::redis::cmd("GET")
            .arg(format!("{prefix}session:s1"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!holds_session_key(&value));
        assert_no_key_bytes(&format!("{store:?}"));
    }

    #[tokio::test]
    async fn foreign_data_is_refused_and_operator_revocations_count() {
        if skipped() {
            return;
        }
        let (url, prefix) = (shared_redis().url(), unique_prefix());
        let store = sealed(
            RedisStateStore::connect_with_prefix(&url, &prefix)
                .await
                .unwrap(),
        );
        let mut watcher = store.watch_revocations();
        let mut conn = raw(&url).await;
        // Foreign bytes, and the attack of issue 11 item 4: a session record
        // in clear, as earlier versions stored it, written with one SET.
        let forged = serde_json::to_vec(&live_session("alice")).unwrap();
        for (id, value) in [("bad", &b"not json"[..]), ("forged", &forged[..])] {
            let _: () = ::redis::cmd("SET")
                .arg(format!("{prefix}session:{id}"))
                .arg(value)
                .arg("EX")
                .arg(3600)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(store.get_session(id).await.unwrap().is_none(), "{id}");
        }
        assert_eq!(store.records_refused(), 2);
        // An operator may revoke a session by hand with a bare id.
        let _: () = ::redis::cmd("PUBLISH")
            .arg(format!("{prefix}revocations"))
            .arg("by-hand")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(next_revocation(&mut watcher).await.unwrap(), "by-hand");
        // Malformed event frames are ignored.
        let _: () = ::redis::cmd("PUBLISH")
            .arg(format!("{prefix}events"))
            .arg(&b"short"[..])
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut events = store.watch_events();
        store.publish_event("ok", b"1").await.unwrap();
        assert_eq!(next_real_event(&mut events).await.unwrap().channel, "ok");
    }

    #[tokio::test]
    async fn rediss_urls_speak_tls_and_trust_the_named_ca() {
        if skipped() {
            return;
        }
        let server = RedisServer::start_tls().unwrap();
        let url = server.url();
        let prefix = unique_prefix();
        let store = RedisStateStore::connect_with_prefix(&url, &prefix)
            .await
            .unwrap();
        let other = RedisStateStore::connect_with_prefix(&url, &prefix)
            .await
            .unwrap();
        assert!(store.location().starts_with("rediss://127.0.0.1:"));
        assert!(!store.location().contains("ca_file"));
        let mut events = store.watch_events();
        other
            .put_session("s", &raw_session("s", &live_session("a")))
            .await
            .unwrap();
        assert!(store.get_session("s").await.unwrap().is_some());
        other.publish_event("news", b"over tls").await.unwrap();
        assert_eq!(
            &next_real_event(&mut events).await.unwrap().payload[..],
            b"over tls"
        );

        // Without the CA, the certificate is refused, and the error says how
        // to name the CA.
        let plain = format!("rediss://127.0.0.1:{}/", server.port());
        let err = RedisStateStore::connect(&plain).await.unwrap_err();
        assert!(err.to_string().contains("ca_file"), "{err}");
        let missing = format!(
            "rediss://127.0.0.1:{}/?ca_file=/nonexistent.pem",
            server.port()
        );
        let err = RedisStateStore::connect(&missing).await.unwrap_err();
        assert!(err.to_string().contains("/nonexistent.pem"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_fast_with_a_clear_error() {
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = Instant::now();
        let err = RedisStateStore::connect(&format!("redis://:hunter2@127.0.0.1:{port}/0"))
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("cannot reach Redis at redis://127.0.0.1:{port}/0"))
                && text.contains("redis-server running"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        let err = RedisStateStore::connect("redis://[::1").await.unwrap_err();
        assert!(err.to_string().contains("redis://"), "{err}");
    }

    /// Every kind of call fails with `Unavailable`, each within 3 s.
    async fn assert_calls_fail_fast(store: &RedisStateStore) {
        let ttl = Duration::from_secs(60);
        let calls: Vec<(&str, Result<(), StoreError>)> = vec![
            ("put_exchange", {
                let started = Instant::now();
                let r = store
                    .put_exchange("x", vec![1], ttl, ExchangeQuota::unbounded("g"))
                    .await
                    .map(drop);
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "{:?}",
                    started.elapsed()
                );
                r
            }),
            ("get_session", {
                let started = Instant::now();
                let r = store.get_session("s").await.map(drop);
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "{:?}",
                    started.elapsed()
                );
                r
            }),
            ("revoke_session", {
                let started = Instant::now();
                let r = store.revoke_session("s").await;
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "{:?}",
                    started.elapsed()
                );
                r
            }),
            ("record_failure", {
                let started = Instant::now();
                let r = store.record_failure("k", WINDOW).await.map(drop);
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "{:?}",
                    started.elapsed()
                );
                r
            }),
            ("record_failure_within", {
                let started = Instant::now();
                let limits = [FailureLimit { key: "k", limit: 5 }];
                let r = store.record_failure_within(&limits, WINDOW).await.map(drop);
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "{:?}",
                    started.elapsed()
                );
                r
            }),
            ("live_exchanges", {
                let started = Instant::now();
                let r = store.live_exchanges().await.map(drop);
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "{:?}",
                    started.elapsed()
                );
                r
            }),
            ("publish_event", {
                let started = Instant::now();
                let r = store.publish_event("c", b"lost").await;
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "{:?}",
                    started.elapsed()
                );
                r
            }),
        ];
        for (name, result) in calls {
            let err = result.expect_err(name);
            assert!(matches!(err, StoreError::Unavailable(_)), "{name}: {err:?}");
            assert!(err.to_string().contains("127.0.0.1"), "{name}: {err}");
        }
    }

    /// Polls until `f` holds, for at most `limit`.
    async fn eventually(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !f().await {
            assert!(Instant::now() < deadline, "not {what} within {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// After an outage: the store works again, its watchers are told they
    /// may have missed messages, and later revocations and events from
    /// another node reach them.
    async fn assert_recovers(
        store: &RedisStateStore,
        other: &RedisStateStore,
        revoked: &mut Receiver<String>,
        events: &mut Receiver<StoreEvent>,
    ) {
        eventually("working again", Duration::from_secs(15), async || {
            store
                .put_session("back", &raw_session("back", &live_session("a")))
                .await
                .is_ok()
                && other.get_session("back").await.is_ok()
        })
        .await;
        assert!(matches!(
            next_revocation(revoked).await,
            Err(RecvError::Lagged(_))
        ));
        assert!(matches!(
            next_real_event(events).await,
            Err(RecvError::Lagged(_))
        ));
        eventually("healthy", Duration::from_secs(15), async || {
            store.is_healthy()
        })
        .await;
        // The notice leaves the watchers' buffers full of fillers: a message
        // that arrives before a watcher has skipped them all overruns it
        // again, so more notices may come before the message itself.
        other.revoke_session("after").await.unwrap();
        let id = loop {
            if let Ok(id) = next_revocation(revoked).await {
                break id;
            }
        };
        assert_eq!(id, "after");
        other.publish_event("news", b"after").await.unwrap();
        let event = loop {
            if let Ok(event) = next_real_event(events).await {
                break event;
            }
        };
        assert_eq!(
            (event.channel.as_str(), &event.payload[..]),
            ("news", &b"after"[..])
        );
        assert!(store.get_session("after").await.unwrap().is_none());
        assert!(store.get_session("back").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_restarted_redis_fails_fast_then_recovers_without_a_new_store() {
        if skipped() {
            return;
        }
        let server = RedisServer::start().unwrap();
        let (url, port, prefix) = (server.url(), server.port(), unique_prefix());
        let store = RedisStateStore::connect_with_prefix(&url, &prefix)
            .await
            .unwrap();
        let other = RedisStateStore::connect_with_prefix(&url, &prefix)
            .await
            .unwrap();
        let mut revoked = store.watch_revocations();
        let mut events = store.watch_events();
        other.publish_event("news", b"before").await.unwrap();
        assert_eq!(
            &next_real_event(&mut events).await.unwrap().payload[..],
            b"before"
        );
        assert!(store.is_healthy());

        drop(server);
        assert_calls_fail_fast(&store).await;
        eventually("unhealthy", Duration::from_secs(8), async || {
            !store.is_healthy()
        })
        .await;
        let debug = format!("{store:?}");
        assert!(debug.contains("healthy: false"), "{debug}");

        let _server = RedisServer::start_on(port).unwrap();
        assert_recovers(&store, &other, &mut revoked, &mut events).await;
    }

    #[tokio::test]
    async fn a_frozen_redis_times_out_then_recovers_without_a_new_store() {
        if skipped() {
            return;
        }
        let server = RedisServer::start().unwrap();
        let (url, prefix) = (server.url(), unique_prefix());
        let store = RedisStateStore::connect_with_prefix(&url, &prefix)
            .await
            .unwrap();
        let other = RedisStateStore::connect_with_prefix(&url, &prefix)
            .await
            .unwrap();
        let mut revoked = store.watch_revocations();
        let mut events = store.watch_events();

        server.freeze(true);
        let started = Instant::now();
        let err = store.get_session("s").await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m.contains("did not answer")),
            "{err:?}"
        );
        // The failed call makes the store check its subscription at once.
        eventually("unhealthy", Duration::from_secs(5), async || {
            !store.is_healthy()
        })
        .await;

        server.freeze(false);
        assert_recovers(&store, &other, &mut revoked, &mut events).await;
    }
}

mod postgres_specific {
    //! Against a real PostgreSQL cluster.

    use std::time::Instant;

    use super::*;
    use crate::store::PostgresCredentialStore;
    use crate::store::test_servers::{PgServer, shared_pg, skipped};

    async fn fresh_database() -> Option<(&'static PgServer, String)> {
        if skipped() {
            return None;
        }
        let server = shared_pg();
        let database = server.create_database().await;
        Some((server, database))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_starting_together_share_one_table() {
        let Some((server, database)) = fresh_database().await else {
            return;
        };
        let url = server.url(&database);
        let nodes: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { PostgresCredentialStore::connect(&url).await })
            })
            .collect();
        let mut stores = Vec::new();
        for node in nodes {
            stores.push(node.await.unwrap().unwrap());
        }
        stores[0].add_user(user("alice")).await.unwrap();
        assert_eq!(
            stores[3].get_user("alice").await.unwrap(),
            Some(user("alice"))
        );
        let err = stores[2].add_user(user("alice")).await.unwrap_err();
        assert!(matches!(err, StoreError::UserExists(_)), "{err:?}");
        assert!(stores[1].remove_user("alice").await.unwrap());
        assert_eq!(stores[0].list_users().await.unwrap(), Vec::<String>::new());
        // The location leaves out the user name (and any password).
        assert_eq!(stores[0].location(), url.replace("postgres@", ""));
    }

    #[tokio::test]
    async fn the_table_holds_only_the_verifier_columns() {
        let Some((server, database)) = fresh_database().await else {
            return;
        };
        let store = PostgresCredentialStore::connect(&server.url(&database))
            .await
            .unwrap();
        store.add_user(user("alice")).await.unwrap();
        let (client, connection) =
            tokio_postgres::connect(&server.url(&database), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(connection);
        let columns: Vec<(String, String)> = client
            .query(
                "SELECT column_name::text, data_type::text FROM information_schema.columns \
                 WHERE table_name = 'wsgate_users' ORDER BY ordinal_position",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let expected = [
            ("name", "text"),
            ("salt", "bytea"),
            ("iterations", "integer"),
            ("stored_key", "bytea"),
            ("server_key", "bytea"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()));
        assert_eq!(columns, expected);
        let tables: Vec<String> = client
            .query(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(tables, ["wsgate_users"]);
    }

    #[tokio::test]
    async fn bad_rows_and_foreign_tables_are_reported_as_corrupt() {
        let Some((server, database)) = fresh_database().await else {
            return;
        };
        let store = PostgresCredentialStore::connect(&server.url(&database))
            .await
            .unwrap();
        server
            .execute(
                &database,
                "INSERT INTO wsgate_users VALUES ('short', '\\x00', 4096, '\\x0102', \
                 decode(repeat('00', 32), 'hex'))",
            )
            .await;
        let err = store.get_user("short").await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        assert!(
            err.to_string().contains("short") && err.to_string().contains(&database),
            "{err}"
        );

        let other = server.create_database().await;
        server
            .execute(
                &other,
                "CREATE TABLE wsgate_users (name TEXT PRIMARY KEY, password TEXT)",
            )
            .await;
        let err = PostgresCredentialStore::connect(&server.url(&other))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        assert!(err.to_string().contains("wsgate_users"), "{err}");
    }

    #[tokio::test]
    async fn a_unix_socket_url_works() {
        let Some((server, database)) = fresh_database().await else {
            return;
        };
        let url = server.socket_url(&database);
        let store = PostgresCredentialStore::connect(&url).await.unwrap();
        store.add_user(user("alice")).await.unwrap();
        assert_eq!(store.list_users().await.unwrap(), ["alice"]);
    }

    #[tokio::test]
    async fn names_with_nul_are_never_stored_or_found() {
        let Some((server, database)) = fresh_database().await else {
            return;
        };
        let store = PostgresCredentialStore::connect(&server.url(&database))
            .await
            .unwrap();
        assert_eq!(store.get_user("a\0b").await.unwrap(), None);
        assert!(!store.remove_user("a\0b").await.unwrap());
        assert!(store.add_user(user("a\0b")).await.is_err());
        assert!(store.list_users().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn unusable_servers_fail_fast_with_a_clear_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = Instant::now();
        let err = PostgresCredentialStore::connect(&format!(
            "postgres://wsgate:hunter2@127.0.0.1:{port}/wsgate"
        ))
        .await
        .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "cannot reach PostgreSQL at postgres://127.0.0.1:{port}/wsgate"
            )),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        let err = PostgresCredentialStore::connect("postgres://x/y?sslmode=require")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("TLS"), "{err}");

        if skipped() {
            return;
        }
        let server = shared_pg();
        let err = PostgresCredentialStore::connect(&server.url("no_such_database"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("create the database"), "{err}");
    }

    #[tokio::test]
    async fn a_restarted_postgres_fails_fast_then_recovers_without_a_new_store() {
        if skipped() {
            return;
        }
        let mut server = PgServer::start().unwrap();
        let store = PostgresCredentialStore::connect(&server.url("postgres"))
            .await
            .unwrap();
        store.add_user(user("alice")).await.unwrap();

        server.stop_server();
        let started = Instant::now();
        let err = store.get_user("alice").await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(
            err.to_string().contains("PostgreSQL at postgres://"),
            "{err}"
        );

        server.start_server().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match store.get_user("alice").await {
                Ok(found) => {
                    assert_eq!(found, Some(user("alice")));
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "not back: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        store.add_user(user("bob")).await.unwrap();
        assert_eq!(store.list_users().await.unwrap(), ["alice", "bob"]);
    }
}

mod factories {
    use super::*;
    use crate::store::test_servers::{shared_pg, shared_redis, skipped, unique_prefix};
    use crate::store::{open_credentials, open_state, redact_url};

    #[test]
    fn urls_lose_their_credentials_in_messages() {
        for (url, shown) in [
            ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
            ("redis://user:secret@host", "redis://user:***@host"),
            (
                "postgres://u:p%40ss@db.example:5432/wsgate?password=secret",
                "postgres://u:***@db.example:5432/wsgate?password=***",
            ),
            ("postgresql://db/wsgate#frag", "postgresql://db/wsgate#frag"),
            ("redis://host:6379", "redis://host:6379"),
            ("host=db password=secret", "host=db password=***"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
            assert!(!redact_url(url).contains("secret"), "{url}");
        }
    }

    #[tokio::test]
    async fn state_stores_are_chosen_by_url() {
        for url in ["memory", "", " memory "] {
            let store = open_state(url).await.unwrap();
            assert!(format!("{store:?}").contains("MemoryStateStore"), "{url}");
        }
        let err = open_state("mongodb://user:secret@host").await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("memory") && text.contains("redis://") && !text.contains("secret"),
            "{text}"
        );
        if skipped() {
            return;
        }
        let store = open_state(&shared_redis().url()).await.unwrap();
        assert!(format!("{store:?}").contains("RedisStateStore"));
        store
            .put_session(&unique_prefix(), &raw_session("", &live_session("a")))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn credential_stores_are_chosen_by_url() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("credentials.sqlite3");
        for url in ["", "sqlite"] {
            let store = open_credentials(url, &default).await.unwrap();
            assert!(
                format!("{store:?}").contains("credentials.sqlite3"),
                "{url}"
            );
        }
        assert!(default.is_file());
        let other = dir.path().join("other.db");
        let store = open_credentials(&format!("sqlite://{}", other.display()), &default)
            .await
            .unwrap();
        store.add_user(user("alice")).await.unwrap();
        assert!(other.is_file());
        assert!(open_credentials("sqlite://", &default).await.is_err());
        let err = open_credentials("mysql://root:secret@db/x", &default)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("sqlite") && text.contains("postgres://") && !text.contains("secret"),
            "{text}"
        );
        if skipped() {
            return;
        }
        let server = shared_pg();
        let database = server.create_database().await;
        for scheme in ["postgres", "postgresql"] {
            let url = server.url(&database).replacen("postgres", scheme, 1);
            let store = open_credentials(&url, &default).await.unwrap();
            assert!(format!("{store:?}").contains("PostgresCredentialStore"));
            assert_eq!(store.get_user("alice").await.unwrap(), None);
        }
    }
}

mod sqlite_specific {
    use super::*;
    use crate::store::SqliteCredentialStore;

    fn path_in(dir: &tempfile::TempDir) -> std::path::PathBuf {
        dir.path().join("credentials.sqlite3")
    }

    #[tokio::test]
    async fn users_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut alice = user("alice");
        alice.iterations = 600_000;
        {
            let store = SqliteCredentialStore::open(&path_in(&dir)).unwrap();
            store.add_user(alice.clone()).await.unwrap();
            store.add_user(user("bob")).await.unwrap();
            assert!(store.remove_user("bob").await.unwrap());
            store.add_user(user("carol")).await.unwrap();
        }
        let store = SqliteCredentialStore::open(&path_in(&dir)).unwrap();
        assert_eq!(store.list_users().await.unwrap(), ["alice", "carol"]);
        assert_eq!(store.get_user("alice").await.unwrap(), Some(alice));
    }

    #[tokio::test]
    async fn a_second_process_may_write_while_one_serves() {
        let dir = tempfile::tempdir().unwrap();
        let serve = SqliteCredentialStore::open(&path_in(&dir)).unwrap();
        assert_eq!(serve.get_user("alice").await.unwrap(), None);
        let cli = SqliteCredentialStore::open(&path_in(&dir)).unwrap();
        cli.add_user(user("alice")).await.unwrap();
        assert_eq!(serve.get_user("alice").await.unwrap(), Some(user("alice")));
        let err = serve.add_user(user("alice")).await.unwrap_err();
        assert!(matches!(err, StoreError::UserExists(_)), "{err:?}");
        // A removal elsewhere is seen at once: no read is served from a
        // snapshot or a cache.
        assert!(cli.remove_user("alice").await.unwrap());
        assert_eq!(serve.get_user("alice").await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_file_is_private_wal_and_holds_only_the_verifier_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(&dir);
        let store = SqliteCredentialStore::open(&path).unwrap();
        store.add_user(user("alice")).await.unwrap();
        assert_eq!(store.location(), path.display().to_string());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
        let conn = rusqlite::Connection::open(&path).unwrap();
        let journal: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        let mut stmt = conn
            .prepare("SELECT name, type, pk FROM pragma_table_info('users') ORDER BY cid")
            .unwrap();
        let columns: Vec<(String, String, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            columns,
            [
                ("name".into(), "TEXT".into(), 1),
                ("salt".into(), "BLOB".into(), 0),
                ("iterations".into(), "INTEGER".into(), 0),
                ("stored_key".into(), "BLOB".into(), 0),
                ("server_key".into(), "BLOB".into(), 0),
            ]
        );
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(tables, ["users"]);
    }

    #[tokio::test]
    async fn a_bad_row_is_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(&dir);
        let store = SqliteCredentialStore::open(&path).unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO users VALUES ('short', x'00', 4096, x'0102', zeroblob(32))",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO users VALUES ('negative', x'00', -1, zeroblob(32), zeroblob(32))",
            [],
        )
        .unwrap();
        for name in ["short", "negative"] {
            let err = store.get_user(name).await.unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
            let text = err.to_string();
            assert!(
                text.contains(name) && text.contains("credentials.sqlite3"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_file_that_is_not_a_database_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(&dir);
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        let err = SqliteCredentialStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        assert!(err.to_string().contains("credentials.sqlite3"), "{err}");
    }

    #[test]
    fn a_missing_directory_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("credentials.sqlite3");
        let err = SqliteCredentialStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(err.to_string().contains("absent"), "{err}");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(&dir);
        drop(SqliteCredentialStore::open(&path).unwrap());
        rusqlite::Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 2)
            .unwrap();
        let err = SqliteCredentialStore::open(&path).unwrap_err();
        assert!(err.to_string().contains("upgrade wsgate"), "{err}");
    }
}

// ─────────────────────────────── records ────────────────────────────────────

#[test]
fn session_records_serialize_the_key_as_b64u() {
    let record = session("alice", 1_700_000_000);
    let json = serde_json::to_string(&record).unwrap();
    assert!(
        json.contains(&wsgate_proto::b64::encode_b64u(&SESSION_KEY)),
        "{json}"
    );
    let back: SessionRecord = serde_json::from_str(&json).unwrap();
    assert_same_session(&back, &record);
    let bad = json.replace(&wsgate_proto::b64::encode_b64u(&SESSION_KEY), "AAAA");
    assert!(serde_json::from_str::<SessionRecord>(&bad).is_err());
}

#[test]
fn session_expiry_helpers() {
    let record = session("alice", 100);
    assert!(!record.is_expired_at(99));
    assert!(record.is_expired_at(100));
    assert_eq!(record.expires_in_at(40), 60);
    assert_eq!(record.expires_in_at(200), 0);
}

#[test]
fn user_records_convert_to_and_from_verifiers() {
    let verifier =
        wsgate_proto::scram::derive_verifier("pencil", b"0123456789abcdef", 4096).unwrap();
    let record = UserRecord::from_verifier("user", b"0123456789abcdef".to_vec(), 4096, &verifier);
    assert_eq!(record.verifier(), verifier);
    assert_eq!(record.name, "user");
}

#[test]
fn debug_output_never_shows_key_bytes() {
    let record = user("alice");
    let session = session("alice", 1);
    let text = format!("{record:?} {record:#?} {session:?} {session:#?}");
    assert!(text.contains("alice"), "{text}");
    assert_no_key_bytes(&text);
}

#[test]
fn event_debug_shows_the_payload_length_not_its_bytes() {
    let event = StoreEvent {
        channel: "user.alice.inbox".to_owned(),
        payload: bytes::Bytes::from_static(&SESSION_KEY),
        at: None,
        presence: None,
    };
    let text = format!("{event:?} {event:#?}");
    assert!(
        text.contains("user.alice.inbox") && text.contains("32"),
        "{text}"
    );
    assert_no_key_bytes(&text);
}

#[test]
fn store_errors_say_what_to_do() {
    let exists = StoreError::UserExists("alice".into()).to_string();
    assert!(exists.contains("\"alice\" already exists") && exists.contains("remove"));
    let down = StoreError::Unavailable("x: locked".into()).to_string();
    assert!(down.contains("x: locked") && down.contains("retry"));
    let corrupt = StoreError::Corrupt("bad row".into()).to_string();
    assert!(corrupt.contains("bad row") && corrupt.contains("backup"));
}
