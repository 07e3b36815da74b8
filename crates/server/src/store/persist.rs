//! Sessions that survive a restart of a single node.
//!
//! [`PersistentSessions`] wraps an in-process [`StateStore`] and keeps a
//! journal of live sessions in a SQLite file in the data directory (mode
//! 0600, like the server key beside it). Writes are batched by a background
//! task so a login never waits on the disk (at most one commit per 10 ms, so
//! a crash loses at most the sessions of the last batch: they log in again); on start the live sessions are
//! loaded back. Exchanges, failure counters and events stay in memory: they
//! are worth seconds, a session is worth hours. A fleet uses Redis instead.
//!
//! Rows hold [`SealedSession`]s (b64u), sealed by the node before they get
//! here: the file never holds a session key in clear. A row that is not a
//! sealed record of this version — one an earlier, unsealed version wrote —
//! is deleted on open (its user logs in again).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, params};
use tokio::sync::{broadcast, mpsc};

use super::{
    ExchangeAdmission, ExchangeQuota, FailureLimit, SealedSession, StateStore, StoreError,
    StoreEvent, unix_now,
};

enum Op {
    Put {
        id: String,
        /// The sealed record, b64u.
        text: String,
        expires_at: u64,
    },
    Delete(String),
}

/// An in-process state store whose sessions are journaled to disk.
pub struct PersistentSessions<S> {
    inner: S,
    journal: mpsc::UnboundedSender<Op>,
}

impl<S: fmt::Debug> fmt::Debug for PersistentSessions<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistentSessions")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

fn sql(path: &Path, e: &rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("session journal {}: {e}", path.display()))
}

impl<S: StateStore> PersistentSessions<S> {
    /// Opens (or creates) the journal at `path`, loads its live sessions into
    /// `inner`, and starts the writer task. Must run inside a tokio runtime.
    pub async fn open(path: &Path, inner: S) -> Result<Self, StoreError> {
        let owned = path.to_owned();
        let (conn, records, rows) =
            tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                super::create_private_file(&owned).map_err(|e| {
                    StoreError::Unavailable(format!("cannot create {}: {e}", owned.display()))
                })?;
                let conn = Connection::open(&owned).map_err(|e| sql(&owned, &e))?;
                conn.execute_batch(
                    "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 -- A deleted row's bytes (its session key) are overwritten,
                 -- not left in free pages (issue: keys surviving LOGOUT).
                 PRAGMA secure_delete = ON;",
                )
                .map_err(|e| sql(&owned, &e))?;
                create_schema(&conn).map_err(|e| sql(&owned, &e))?;
                let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
                conn.execute("DELETE FROM sessions WHERE expires_at <= ?1", params![now])
                    .map_err(|e| sql(&owned, &e))?;
                let mut stmt = conn
                    .prepare("SELECT rowid, id, record FROM sessions ORDER BY rowid")
                    .map_err(|e| sql(&owned, &e))?;
                let rows = stmt
                    .query_map([], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, String>(1)?,
                            zeroize::Zeroizing::new(row.get::<_, String>(2)?),
                        ))
                    })
                    .map_err(|e| sql(&owned, &e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| sql(&owned, &e))?;
                drop(stmt);
                // The latest row of each id is its session; an earlier one (a
                // crash between a batch's delete and insert cannot leave one,
                // but a copied row can) is deleted as stale.
                let mut latest: HashMap<String, i64> = HashMap::with_capacity(rows.len());
                let mut stale_rows = Vec::new();
                for (rowid, id, _) in &rows {
                    if let Some(old) = latest.insert(id.clone(), *rowid) {
                        stale_rows.push(old);
                    }
                }
                let mut records = Vec::with_capacity(rows.len());
                let mut stale = Vec::new();
                for (rowid, id, text) in rows {
                    if latest.get(&id) != Some(&rowid) {
                        continue;
                    }
                    let sealed = wsgate_proto::b64::decode_b64u(&text)
                        .ok()
                        .map(SealedSession::from_stored)
                        .filter(|s| s.expires_at().is_some());
                    match sealed {
                        Some(sealed) => records.push((id, sealed)),
                        None => {
                            latest.remove(&id);
                            stale.push(rowid);
                        }
                    }
                }
                for rowid in &stale_rows {
                    conn.execute("DELETE FROM sessions WHERE rowid = ?1", params![rowid])
                        .map_err(|e| sql(&owned, &e))?;
                }
                if !stale.is_empty() {
                    // Rows of an earlier version hold session keys in clear:
                    // delete them (secure_delete zeroes them), and fold the WAL
                    // in so no copy is left there either.
                    for rowid in &stale {
                        conn.execute("DELETE FROM sessions WHERE rowid = ?1", params![rowid])
                            .map_err(|e| sql(&owned, &e))?;
                    }
                    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                        .map_err(|e| sql(&owned, &e))?;
                    tracing::warn!(
                        sessions = stale.len(),
                        "deleted unsealed sessions of an earlier version from the journal; \
                     their users log in again"
                    );
                }
                Ok((conn, records, latest))
            })
            .await
            .map_err(|e| StoreError::Unavailable(format!("session journal task failed: {e}")))??;
        let mut loaded = 0usize;
        for (id, record) in records {
            inner.put_session(&id, &record).await?;
            loaded += 1;
        }
        if loaded > 0 {
            tracing::info!(sessions = loaded, "restored sessions from the journal");
        }
        let (journal, rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Mutex::new(conn));
        tokio::spawn(write_behind(conn, rows, rx, path.to_owned()));
        Ok(Self { inner, journal })
    }
}

/// Commits at most this often. A quiet node writes each session at once;
/// under a login storm sessions share commits instead of paying one each
/// (a commit was ~15 % of a login's CPU when every login had its own).
const MIN_COMMIT_INTERVAL: Duration = Duration::from_millis(10);
/// Operations per transaction, at most.
const MAX_BATCH: usize = 4096;

/// The journal's table. Rows are appended in rowid order and found by the
/// rowid the writer keeps for each session, not by an index on the session
/// id: ids are random, so an index on them made every session of a batch
/// dirty a page of its own (2.8 page writes per login measured; appending
/// writes about one page per batch). The writer's map of rowids costs
/// about 80 bytes per live session. A journal of an earlier version (id as
/// the primary key) is moved into this table once.
fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    let old: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'sessions'",
            [],
            |row| row.get(0),
        )
        .ok();
    let keyed_by_id = old.is_some_and(|sql| sql.contains("PRIMARY KEY"));
    if keyed_by_id {
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE sessions RENAME TO sessions_keyed_by_id;
             DROP INDEX IF EXISTS sessions_by_expiry;
             CREATE TABLE sessions (id TEXT NOT NULL, record TEXT NOT NULL, expires_at INTEGER NOT NULL);
             INSERT INTO sessions (id, record, expires_at)
                 SELECT id, record, expires_at FROM sessions_keyed_by_id;
             DROP TABLE sessions_keyed_by_id;
             COMMIT;",
        )?;
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS sessions (
             id TEXT NOT NULL,
             record TEXT NOT NULL,
             expires_at INTEGER NOT NULL
         );
         -- Every batch deletes the expired rows: without this index
         -- that is a scan of all sessions per login batch.
         CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_at);",
    )?;
    if keyed_by_id {
        // The old table's pages are zeroed (secure_delete); fold the WAL in
        // so no copy of them is left there.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    Ok(())
}

/// Applies journal operations in batches (one transaction per wake-up, at
/// most one per [`MIN_COMMIT_INTERVAL`]). `rows`: each journaled session's
/// rowid.
async fn write_behind(
    conn: Arc<Mutex<Connection>>,
    rows: HashMap<String, i64>,
    mut rx: mpsc::UnboundedReceiver<Op>,
    path: std::path::PathBuf,
) {
    let rows = Arc::new(Mutex::new(rows));
    let mut batch = Vec::new();
    let mut next_commit = tokio::time::Instant::now();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if tokio::time::Instant::now() < next_commit {
            tokio::time::sleep_until(next_commit).await;
            while batch.len() < MAX_BATCH
                && let Ok(op) = rx.try_recv()
            {
                batch.push(op);
            }
        }
        next_commit = tokio::time::Instant::now() + MIN_COMMIT_INTERVAL;
        let ops = std::mem::take(&mut batch);
        let conn = conn.clone();
        let rows = rows.clone();
        let path = path.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<(), rusqlite::Error> {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            let mut rows = rows.lock().unwrap_or_else(|p| p.into_inner());
            // What this batch changes, applied to `rows` only once it is
            // committed (a failed batch leaves the map as the file is).
            let mut changed: HashMap<&str, Option<i64>> = HashMap::with_capacity(ops.len());
            let tx = conn.transaction()?;
            let mut deleted = 0;
            for op in &ops {
                let id = match op {
                    Op::Put { id, .. } | Op::Delete(id) => id.as_str(),
                };
                let current = changed
                    .get(id)
                    .copied()
                    .unwrap_or_else(|| rows.get(id).copied());
                if let Some(old) = current {
                    deleted += tx
                        .prepare_cached("DELETE FROM sessions WHERE rowid = ?1")?
                        .execute(params![old])?;
                }
                match op {
                    Op::Put {
                        id,
                        text,
                        expires_at,
                    } => {
                        let exp = i64::try_from(*expires_at).unwrap_or(i64::MAX);
                        tx.prepare_cached(
                            "INSERT INTO sessions (id, record, expires_at) VALUES (?1, ?2, ?3)",
                        )?
                        .execute(params![id, text.as_str(), exp])?;
                        changed.insert(id, Some(tx.last_insert_rowid()));
                    }
                    Op::Delete(id) => {
                        changed.insert(id, None);
                    }
                }
            }
            let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
            let expired: Vec<(i64, String)> = tx
                .prepare_cached("DELETE FROM sessions WHERE expires_at <= ?1 RETURNING rowid, id")?
                .query_map(params![now], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<_, _>>()?;
            deleted += expired.len();
            tx.commit()?;
            for (id, rowid) in changed {
                match rowid {
                    Some(r) => {
                        rows.insert(id.to_owned(), r);
                    }
                    None => {
                        rows.remove(id);
                    }
                }
            }
            for (rowid, id) in expired {
                if rows.get(&id) == Some(&rowid) {
                    rows.remove(&id);
                }
            }
            drop(rows);
            if deleted > 0 {
                // The WAL still holds the pages as they were before the
                // delete: fold it into the file (where secure_delete has
                // zeroed the rows) and empty it.
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            }
            Ok(())
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, path = %path.display(), "session journal write failed")
            }
            Err(e) => tracing::warn!(error = %e, "session journal task failed"),
        }
    }
}

#[async_trait::async_trait]
impl<S: StateStore> StateStore for PersistentSessions<S> {
    async fn put_exchange(
        &self,
        sid: &str,
        state: Vec<u8>,
        ttl: Duration,
        quota: ExchangeQuota<'_>,
    ) -> Result<ExchangeAdmission, StoreError> {
        self.inner.put_exchange(sid, state, ttl, quota).await
    }
    async fn take_exchange(&self, sid: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.take_exchange(sid).await
    }
    async fn live_exchanges(&self) -> Result<u64, StoreError> {
        self.inner.live_exchanges().await
    }
    async fn put_session(&self, id: &str, record: &SealedSession) -> Result<(), StoreError> {
        self.inner.put_session(id, record).await?;
        let Some(expires_at) = record.expires_at() else {
            // Not a sealed record: nothing worth journaling.
            return Ok(());
        };
        let op = Op::Put {
            id: id.to_owned(),
            text: wsgate_proto::b64::encode_b64u(record.as_bytes()),
            expires_at,
        };
        // The writer only stops with the process; a lost write costs a re-login.
        let _ = self.journal.send(op);
        Ok(())
    }
    async fn get_session(&self, id: &str) -> Result<Option<SealedSession>, StoreError> {
        self.inner.get_session(id).await
    }
    async fn revoke_session(&self, id: &str) -> Result<(), StoreError> {
        self.inner.revoke_session(id).await?;
        let _ = self.journal.send(Op::Delete(id.to_owned()));
        Ok(())
    }
    fn watch_revocations(&self) -> broadcast::Receiver<String> {
        self.inner.watch_revocations()
    }
    async fn record_failure(
        &self,
        key: &str,
        window: Duration,
    ) -> Result<(u32, Duration), StoreError> {
        self.inner.record_failure(key, window).await
    }
    async fn record_failure_within(
        &self,
        limits: &[FailureLimit<'_>],
        window: Duration,
    ) -> Result<Option<Duration>, StoreError> {
        self.inner.record_failure_within(limits, window).await
    }
    async fn forgive_failure(&self, key: &str) -> Result<(), StoreError> {
        self.inner.forgive_failure(key).await
    }
    async fn failures(&self, key: &str) -> Result<(u32, Duration), StoreError> {
        self.inner.failures(key).await
    }
    async fn reset_failures(&self, key: &str) -> Result<(), StoreError> {
        self.inner.reset_failures(key).await
    }
    async fn publish_event(&self, channel: &str, payload: &[u8]) -> Result<(), StoreError> {
        self.inner.publish_event(channel, payload).await
    }
    fn watch_events(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.watch_events()
    }
    async fn publish_at(
        &self,
        channel: &str,
        payload: &[u8],
        policy: &super::HistoryPolicy,
    ) -> Result<super::Position, StoreError> {
        self.inner.publish_at(channel, payload, policy).await
    }
    async fn read_history(
        &self,
        channel: &str,
        since: Option<&super::Position>,
        limit: usize,
        policy: &super::HistoryPolicy,
    ) -> Result<super::HistoryRead, StoreError> {
        self.inner.read_history(channel, since, limit, policy).await
    }
    async fn presence_add(
        &self,
        member: &super::PresenceMember,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.inner.presence_add(member, ttl).await
    }
    async fn presence_remove(&self, member: &super::PresenceMember) -> Result<bool, StoreError> {
        self.inner.presence_remove(member).await
    }
    async fn presence_refresh(
        &self,
        members: &[super::PresenceMember],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.inner.presence_refresh(members, ttl).await
    }
    async fn presence_sweep(&self) -> Result<(), StoreError> {
        self.inner.presence_sweep().await
    }
    async fn presence_list(
        &self,
        channel: &str,
        limit: usize,
    ) -> Result<super::PresenceList, StoreError> {
        self.inner.presence_list(channel, limit).await
    }
    async fn watch_channel(&self, channel: &str) -> Result<(), StoreError> {
        self.inner.watch_channel(channel).await
    }

    fn unwatch_channel(&self, channel: &str) {
        self.inner.unwatch_channel(channel);
    }

    fn is_healthy(&self) -> bool {
        self.inner.is_healthy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::sealed;
    use crate::store::{MemoryStateStore, SealedState, SessionRecord};

    /// The journal at `path` as a node uses it: behind the record seal.
    async fn open_sealed(path: &Path) -> SealedState {
        sealed(
            PersistentSessions::open(path, MemoryStateStore::new())
                .await
                .unwrap(),
        )
    }

    mod conformance {
        use super::*;

        crate::store::tests::state_store_suite!(async {
            let dir = tempfile::tempdir().unwrap();
            let store =
                PersistentSessions::open(&dir.path().join("s.sqlite3"), MemoryStateStore::new())
                    .await
                    .unwrap();
            (dir, store)
        });
    }

    fn record(user: &str, expires_at: u64) -> SessionRecord {
        SessionRecord {
            user: user.into(),
            ip: "127.0.0.1".into(),
            key_fp: "fp".into(),
            session_key: zeroize::Zeroizing::new([7; 32]),
            expires_at,
        }
    }

    async fn settle() {
        // The journal is written behind; give the writer a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    #[tokio::test]
    async fn a_revoked_session_key_is_not_left_in_the_journal_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.sqlite3");
        let store = open_sealed(&path).await;
        let mut rec = record("alice", unix_now() + 3600);
        rec.session_key = zeroize::Zeroizing::new([0xA7; 32]);
        let encoded = wsgate_proto::b64::encode_b64u(&[0xA7; 32]);
        let files = || -> Vec<u8> {
            let mut all = Vec::new();
            for suffix in ["", "-wal", "-shm"] {
                let mut name = path.clone().into_os_string();
                name.push(suffix);
                all.extend(std::fs::read(&name).unwrap_or_default());
            }
            all
        };
        let holds = |bytes: &[u8]| {
            bytes
                .windows(encoded.len())
                .any(|w| w == encoded.as_bytes())
        };
        store.put_session("s1", &rec).await.unwrap();
        // A second live session keeps the page in use, as on a real node.
        store
            .put_session("s2", &record("bob", unix_now() + 3600))
            .await
            .unwrap();
        settle().await;
        // Sealed: not even the live session's key is on disk.
        assert!(!holds(&files()), "the journal holds a session key");
        let s1 = b"s1";
        assert!(
            files().windows(s1.len()).any(|w| w == s1),
            "the journal holds the live session"
        );
        store.revoke_session("s1").await.unwrap();
        settle().await;
        assert!(
            !holds(&files()),
            "the session key is still on disk after LOGOUT"
        );
        assert!(store.get_session("s2").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn sessions_survive_a_reopen_and_revocations_and_expiry_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.sqlite3");
        let later = unix_now() + 3600;
        {
            let store = open_sealed(&path).await;
            store
                .put_session("keep", &record("alice", later))
                .await
                .unwrap();
            store
                .put_session("gone", &record("bob", later))
                .await
                .unwrap();
            store
                .put_session("old", &record("carol", unix_now() + 1))
                .await
                .unwrap();
            store.revoke_session("gone").await.unwrap();
            settle().await;
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let store = open_sealed(&path).await;
        let kept = store.get_session("keep").await.unwrap().unwrap();
        assert_eq!(
            (kept.user.as_str(), kept.expires_at, *kept.session_key),
            ("alice", later, [7; 32])
        );
        assert!(
            store.get_session("gone").await.unwrap().is_none(),
            "revoked stays revoked"
        );
        assert!(
            store.get_session("old").await.unwrap().is_none(),
            "expired is not restored"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    /// Rows are appended and found by rowid: no index on the (random)
    /// session id. A session written again replaces its row (one row per
    /// session), and a journal of the earlier layout (id as the primary
    /// key) is moved over with its sessions on open.
    #[tokio::test]
    async fn the_journal_appends_rows_and_moves_an_old_layout_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.sqlite3");
        let later = unix_now() + 3600;
        {
            let store = open_sealed(&path).await;
            for i in 0..50 {
                store
                    .put_session(&format!("s{i}"), &record("alice", later))
                    .await
                    .unwrap();
            }
            store
                .put_session("s7", &record("bob", later))
                .await
                .unwrap();
            store.revoke_session("s8").await.unwrap();
            settle().await;
        }
        let schema = |conn: &Connection| -> Vec<String> {
            conn.prepare("SELECT sql FROM sqlite_master WHERE tbl_name = 'sessions' AND sql IS NOT NULL ORDER BY name")
                .unwrap()
                .query_map([], |row| row.get::<_, String>(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        {
            let conn = Connection::open(&path).unwrap();
            let sql = schema(&conn);
            assert_eq!(sql.len(), 2, "the table and the expiry index only: {sql:?}");
            assert!(!sql.iter().any(|s| s.contains("PRIMARY KEY")), "{sql:?}");
            let rows: Vec<(String, i64)> = conn
                .prepare("SELECT id, COUNT(*) FROM sessions GROUP BY id HAVING COUNT(*) > 1")
                .unwrap()
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(rows.is_empty(), "one row per session: {rows:?}");
            let n: i64 = conn
                .query_row("SELECT COUNT(*) FROM sessions", [], |row| row.get(0))
                .unwrap();
            assert_eq!(n, 49, "50 written, one revoked");
            // Back to the earlier layout, as an older build left it.
            conn.execute_batch(
                "ALTER TABLE sessions RENAME TO new_layout;
                 DROP INDEX sessions_by_expiry;
                 CREATE TABLE sessions (id TEXT PRIMARY KEY NOT NULL, record TEXT NOT NULL, expires_at INTEGER NOT NULL);
                 INSERT INTO sessions SELECT id, record, expires_at FROM new_layout;
                 DROP TABLE new_layout;",
            )
            .unwrap();
        }
        let store = open_sealed(&path).await;
        assert_eq!(store.get_session("s7").await.unwrap().unwrap().user, "bob");
        assert_eq!(
            store.get_session("s49").await.unwrap().unwrap().user,
            "alice"
        );
        assert!(store.get_session("s8").await.unwrap().is_none());
        store.revoke_session("s7").await.unwrap();
        settle().await;
        drop(store);
        let conn = Connection::open(&path).unwrap();
        let sql = schema(&conn);
        assert!(
            !sql.iter().any(|s| s.contains("PRIMARY KEY")),
            "moved to the new layout: {sql:?}"
        );
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM sessions WHERE id = 's7'", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(
            n, 0,
            "a session moved over is found by its rowid when revoked"
        );
    }

    /// A row written into the journal by hand (no login) — in clear, as
    /// earlier versions wrote them, or a sealed row copied under another id
    /// — is no session after a restart; the clear one is deleted from disk.
    #[tokio::test]
    async fn rows_forged_or_copied_in_the_journal_are_refused_and_clear_ones_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.sqlite3");
        let later = unix_now() + 3600;
        {
            let store = open_sealed(&path).await;
            store
                .put_session("real", &record("alice", later))
                .await
                .unwrap();
            settle().await;
        }
        let conn = Connection::open(&path).unwrap();
        let clear = serde_json::to_string(&record("mallory", later)).unwrap();
        conn.execute(
            "INSERT INTO sessions (id, record, expires_at) VALUES ('forged', ?1, ?2)",
            params![clear, i64::try_from(later).unwrap()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO sessions (id, record, expires_at) \
             SELECT 'copy', record, expires_at FROM sessions WHERE id = 'real'",
            [],
        )
        .unwrap();
        drop(conn);
        let store = open_sealed(&path).await;
        assert!(store.get_session("forged").await.unwrap().is_none());
        assert!(store.get_session("copy").await.unwrap().is_none());
        assert_eq!(
            store.records_refused(),
            1,
            "the copy; the clear row is gone"
        );
        assert_eq!(
            store.get_session("real").await.unwrap().unwrap().user,
            "alice"
        );
        let ids: Vec<String> = Connection::open(&path)
            .unwrap()
            .prepare("SELECT id FROM sessions ORDER BY id")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            ids,
            ["copy", "real"],
            "the unsealed row was deleted on open"
        );
    }

    /// The per-batch expiry delete must not scan every session (it did: a
    /// login benchmark spent half its CPU there once thousands of sessions
    /// were journaled), including in a journal an older build created.
    #[tokio::test]
    async fn the_expiry_sweep_uses_an_index_even_on_an_old_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.sqlite3");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE sessions (id TEXT PRIMARY KEY NOT NULL, record TEXT NOT NULL, expires_at INTEGER NOT NULL);",
            )
            .unwrap();
        let _store = PersistentSessions::open(&path, MemoryStateStore::new())
            .await
            .unwrap();
        let conn = Connection::open(&path).unwrap();
        let plan: Vec<String> = conn
            .prepare("EXPLAIN QUERY PLAN DELETE FROM sessions WHERE expires_at <= ?1")
            .unwrap()
            .query_map(params![0], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.contains("INDEX sessions_by_expiry (")),
            "plan: {plan:?}"
        );
    }
}
