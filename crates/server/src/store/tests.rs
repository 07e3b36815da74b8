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
/// `$make` is a future giving `(guard, store)`.
macro_rules! credential_store_suite {
    ($make:expr) => {
        $crate::store::tests::credential_store_suite!(@tests $make;
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
            let (_guard, store) = $make.await;
            $crate::store::tests::concurrent_adds_of_one_name_let_exactly_one_win(store).await;
        }
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (_guard, store) = $make.await;
                $crate::store::tests::$name(store).await;
            }
        )*
    };
}
pub(crate) use credential_store_suite;

// ─────────────────────────────── state store ────────────────────────────────

const EXCHANGE_TTL: Duration = Duration::from_secs(2);
const WINDOW: Duration = Duration::from_secs(4);

pub(crate) async fn exchange_round_trips_once<S: StateStore>(store: S) {
    store
        .put_exchange("sid-1", b"state one".to_vec(), EXCHANGE_TTL)
        .await
        .unwrap();
    store
        .put_exchange("sid-2", b"state two".to_vec(), EXCHANGE_TTL)
        .await
        .unwrap();
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
    const TASKS: usize = 64;
    let store = Arc::new(store);
    for round in 0..8 {
        let sid = format!("race-{round}");
        store
            .put_exchange(&sid, vec![round; 100], Duration::from_secs(60))
            .await
            .unwrap();
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
    store
        .put_exchange("early", b"a".to_vec(), EXCHANGE_TTL)
        .await
        .unwrap();
    store
        .put_exchange("late", b"b".to_vec(), EXCHANGE_TTL)
        .await
        .unwrap();
    tokio::time::sleep(EXCHANGE_TTL / 2).await;
    assert_eq!(
        store.take_exchange("early").await.unwrap().as_deref(),
        Some(&b"a"[..])
    );
    tokio::time::sleep(EXCHANGE_TTL / 2 + Duration::from_millis(500)).await;
    assert_eq!(store.take_exchange("late").await.unwrap(), None);
}

pub(crate) async fn unknown_session_is_none<S: StateStore>(store: S) {
    assert!(store.get_session("nope").await.unwrap().is_none());
}

pub(crate) async fn session_round_trips<S: StateStore>(store: S) {
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

pub(crate) async fn state_store_debug_shows_no_key_bytes<S: StateStore>(store: S) {
    let record = live_session("alice");
    store.put_session("s1", &record).await.unwrap();
    store
        .put_exchange("x", SESSION_KEY.to_vec(), EXCHANGE_TTL)
        .await
        .unwrap();
    let text = format!("{record:?} {record:#?} {store:?} {store:#?}");
    assert!(text.contains("alice"), "{text}");
    assert_no_key_bytes(&text);
}

/// Instantiates the state store suite for one backend.
/// `$make` is a future giving `(guard, store)`.
///
/// Time-dependent tests run on paused tokio time; a backend whose TTLs run on
/// a server's clock needs real time (a `real_time` arm, when one exists).
macro_rules! state_store_suite {
    ($make:expr) => {
        $crate::store::tests::state_store_suite!(@tests $make;
            exchange_round_trips_once,
            exchange_expires_after_its_ttl,
            unknown_session_is_none,
            session_round_trips,
            expired_session_is_none,
            revocation_removes_the_session_and_notifies_watchers,
            watchers_see_only_later_revocations,
            failures_count_within_a_window,
            failure_window_is_fixed_from_the_first_failure,
            reset_failures_forgets_the_count,
            state_store_debug_shows_no_key_bytes,
        );
        #[tokio::test(flavor = "multi_thread", worker_threads = 8)]
        async fn exchange_take_is_atomic_under_concurrency() {
            let (_guard, store) = $make.await;
            $crate::store::tests::exchange_take_is_atomic_under_concurrency(store).await;
        }
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(start_paused = true)]
            async fn $name() {
                let (_guard, store) = $make.await;
                $crate::store::tests::$name(store).await;
            }
        )*
    };
}
pub(crate) use state_store_suite;

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

// ─────────────────────────── backend-specific tests ─────────────────────────

mod memory_specific {
    use super::*;
    use crate::store::MemoryStateStore;

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_swept_as_the_maps_grow() {
        let store = MemoryStateStore::default();
        for i in 0..1000 {
            store
                .put_exchange(&format!("a{i}"), vec![1], Duration::from_secs(1))
                .await
                .unwrap();
            store
                .record_failure(&format!("k{i}"), Duration::from_secs(1))
                .await
                .unwrap();
            store
                .put_session(&format!("s{i}"), &session("u", unix_now() - 1))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        for i in 0..1000 {
            store
                .put_exchange(&format!("b{i}"), vec![1], Duration::from_secs(60))
                .await
                .unwrap();
            store
                .record_failure(&format!("j{i}"), Duration::from_secs(60))
                .await
                .unwrap();
            store
                .put_session(&format!("t{i}"), &live_session("u"))
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
            .put_exchange("x", vec![1], Duration::from_secs(1))
            .await
            .unwrap();
        store
            .record_failure("k", Duration::from_secs(1))
            .await
            .unwrap();
        store.put_session("s", &session("u", 1)).await.unwrap();
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
fn store_errors_say_what_to_do() {
    let exists = StoreError::UserExists("alice".into()).to_string();
    assert!(exists.contains("\"alice\" already exists") && exists.contains("remove"));
    let down = StoreError::Unavailable("x: locked".into()).to_string();
    assert!(down.contains("x: locked") && down.contains("retry"));
    let corrupt = StoreError::Corrupt("bad row".into()).to_string();
    assert!(corrupt.contains("bad row") && corrupt.contains("backup"));
}
