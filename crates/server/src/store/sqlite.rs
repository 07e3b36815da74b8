//! The default [`CredentialStore`]: one SQLite file in the data directory.
//!
//! The file holds a single table,
//! `users (name TEXT PRIMARY KEY, salt BLOB, iterations INTEGER, stored_key BLOB, server_key BLOB)`,
//! and never a password. It runs in WAL mode with a busy timeout, so
//! `wsgate user add` can write while `wsgate serve` reads.
//!
//! Logins read a user twice, so `get_user` is the hot path. It runs on the
//! calling task, on a second, read-only connection that never waits: a
//! primary-key read of a WAL database takes a few microseconds (readers do
//! not wait for writers, and the file is in the page cache), far less than
//! the hand-off to tokio's blocking pool it replaces (a thread wake-up and a
//! context switch each way: the login benchmark spent ~30 % less server
//! CPU per login without it). When that connection is in use by another
//! task or SQLite answers busy, the read goes to the blocking pool like
//! every write.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension as _, params};

use super::{CredentialStore, StoreError, UserRecord};

/// How long a statement waits for another process's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY NOT NULL,
    salt BLOB NOT NULL,
    iterations INTEGER NOT NULL,
    stored_key BLOB NOT NULL,
    server_key BLOB NOT NULL
)";

/// A [`CredentialStore`] in a SQLite file.
///
/// rusqlite is synchronous: every call runs on tokio's blocking pool around
/// one shared connection, so the methods must be called from within a tokio
/// runtime. Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct SqliteCredentialStore {
    conn: Arc<Mutex<Connection>>,
    /// Read-only, no busy timeout: for `get_user` on the calling task. None
    /// for an in-memory store (a second connection would see another
    /// database).
    reader: Option<Arc<Mutex<Connection>>>,
    location: Arc<str>,
}

impl fmt::Debug for SqliteCredentialStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteCredentialStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl SqliteCredentialStore {
    /// Opens the store at `path`, creating the file (mode 0600) and the
    /// schema if missing. The directory must exist.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        super::create_private_file(path).map_err(|e| create_error(path, &e))?;
        let conn = Connection::open(path).map_err(|e| sql_error(&location, e))?;
        let journal: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| sql_error(&location, e))?;
        if !journal.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "{location}: cannot switch to WAL mode (journal mode is {journal:?}); \
                 put the data directory on a local file system"
            )));
        }
        let mut store = Self::init(conn, location)?;
        // Opened after `init`, so the schema exists.
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|r| {
            r.busy_timeout(Duration::ZERO)?;
            Ok(r)
        })
        .map_err(|e| sql_error(&store.location, e))?;
        store.reader = Some(Arc::new(Mutex::new(reader)));
        Ok(store)
    }

    /// A private in-memory store (tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let location = ":memory:".to_owned();
        let conn = Connection::open_in_memory().map_err(|e| sql_error(&location, e))?;
        Self::init(conn, location)
    }

    /// `get_user` on the calling task with the reader connection, or `None`
    /// when that would wait (connection in use, SQLite busy, or no reader).
    fn try_read_user(&self, name: &str) -> Option<Result<Option<UserRecord>, StoreError>> {
        let reader = self.reader.as_ref()?.try_lock().ok()?;
        match read_user(&reader, name) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) =>
            {
                None
            }
            result => Some(
                result
                    .map_err(|e| sql_error(&self.location, e))
                    .and_then(|raw| raw.map(|raw| decode_row(&self.location, raw)).transpose()),
            ),
        }
    }

    /// Where the store lives (a path, or `:memory:`).
    pub fn location(&self) -> &str {
        &self.location
    }

    fn init(conn: Connection, location: String) -> Result<Self, StoreError> {
        let err = |e| sql_error(&location, e);
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Corrupt(format!(
                "{location} has schema version {version}, newer than this wsgate \
                 understands ({SCHEMA_VERSION}); upgrade wsgate"
            )));
        }
        conn.execute_batch(SCHEMA).map_err(err)?;
        if version < SCHEMA_VERSION {
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(err)?;
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            reader: None,
            location: location.into(),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &str) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let location = Arc::clone(&self.location);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave SQLite inconsistent
            // (it is transactional), so a poisoned lock is still usable.
            let conn = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&conn, &location)
        })
        .await
        .map_err(|e| {
            StoreError::Unavailable(format!(
                "{}: the SQLite worker task failed ({e})",
                self.location
            ))
        })?
    }
}

fn create_error(path: &Path, e: &std::io::Error) -> StoreError {
    let dir = path.parent().map_or_else(PathBuf::new, Path::to_path_buf);
    StoreError::Unavailable(format!(
        "cannot create {}: {e}; check that the directory {} exists and is writable by wsgate",
        path.display(),
        dir.display()
    ))
}

fn sql_error(location: &str, e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(code, _) => match code.code {
            ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => {
                StoreError::Corrupt(format!("{location} is not a usable SQLite database ({e})"))
            }
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => StoreError::Unavailable(
                format!("{location} stayed locked by another process ({e})"),
            ),
            ErrorCode::CannotOpen | ErrorCode::PermissionDenied | ErrorCode::ReadOnly => {
                StoreError::Unavailable(format!(
                    "cannot open {location} for writing ({e}); check its permissions and owner"
                ))
            }
            _ => StoreError::Unavailable(format!("{location}: {e}")),
        },
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::Utf8Error(..) => StoreError::Corrupt(format!(
            "{location}: unexpected value in the users table ({e})"
        )),
        _ => StoreError::Unavailable(format!("{location}: {e}")),
    }
}

type RawRow = (String, Vec<u8>, i64, Vec<u8>, Vec<u8>);

fn read_user(conn: &Connection, name: &str) -> rusqlite::Result<Option<RawRow>> {
    conn.prepare_cached(
        "SELECT name, salt, iterations, stored_key, server_key FROM users WHERE name = ?1",
    )?
    .query_row(params![name], raw_row)
    .optional()
}

fn raw_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

fn decode_row(location: &str, raw: RawRow) -> Result<UserRecord, StoreError> {
    let (name, salt, iterations, stored_key, server_key) = raw;
    let corrupt = |what: String| StoreError::Corrupt(format!("{location}: {what}"));
    let iterations = u32::try_from(iterations).map_err(|_| {
        corrupt(format!(
            "user {name:?}: iterations {iterations} is out of range"
        ))
    })?;
    UserRecord::from_stored(name, salt, iterations, &stored_key, &server_key, corrupt)
}

#[async_trait::async_trait]
impl CredentialStore for SqliteCredentialStore {
    async fn get_user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        if let Some(result) = self.try_read_user(name) {
            return result;
        }
        let name = name.to_owned();
        self.with_conn(move |conn, location| {
            let raw = read_user(conn, &name).map_err(|e| sql_error(location, e))?;
            raw.map(|raw| decode_row(location, raw)).transpose()
        })
        .await
    }

    async fn add_user(&self, record: UserRecord) -> Result<(), StoreError> {
        self.with_conn(move |conn, location| {
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO users (name, salt, iterations, stored_key, server_key) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        record.name,
                        record.salt,
                        i64::from(record.iterations),
                        &record.stored_key[..],
                        &record.server_key[..],
                    ])
                });
            match inserted {
                Ok(_) => Ok(()),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
                {
                    Err(StoreError::UserExists(record.name))
                }
                Err(e) => Err(sql_error(location, e)),
            }
        })
        .await
    }

    async fn set_user(&self, record: UserRecord) -> Result<(), StoreError> {
        self.with_conn(move |conn, location| {
            conn.prepare_cached(
                "INSERT INTO users (name, salt, iterations, stored_key, server_key) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (name) DO UPDATE SET salt = excluded.salt, \
                 iterations = excluded.iterations, stored_key = excluded.stored_key, \
                 server_key = excluded.server_key",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    record.name,
                    record.salt,
                    i64::from(record.iterations),
                    &record.stored_key[..],
                    &record.server_key[..],
                ])
            })
            .map(drop)
            .map_err(|e| sql_error(location, e))
        })
        .await
    }

    async fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.with_conn(move |conn, location| {
            conn.prepare_cached("DELETE FROM users WHERE name = ?1")
                .and_then(|mut stmt| stmt.execute(params![name]))
                .map(|n| n > 0)
                .map_err(|e| sql_error(location, e))
        })
        .await
    }

    async fn list_users(&self) -> Result<Vec<String>, StoreError> {
        self.with_conn(|conn, location| {
            // BINARY collation compares UTF-8 bytes: the same order as `str`.
            conn.prepare_cached("SELECT name FROM users ORDER BY name")
                .and_then(|mut stmt| {
                    stmt.query_map([], |row| row.get(0))?
                        .collect::<rusqlite::Result<Vec<String>>>()
                })
                .map_err(|e| sql_error(location, e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::user;

    fn store_in(dir: &tempfile::TempDir) -> (SqliteCredentialStore, PathBuf) {
        let path = dir.path().join("credentials.sqlite3");
        (SqliteCredentialStore::open(&path).unwrap(), path)
    }

    #[tokio::test]
    #[allow(
        clippy::await_holding_lock,
        reason = "held on purpose: the fallback must not need it"
    )]
    async fn reads_go_to_the_blocking_pool_while_the_reader_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_in(&dir);
        store.add_user(user("alice")).await.unwrap();
        assert!(store.try_read_user("alice").is_some(), "reader is free");
        let reader = store.reader.as_ref().unwrap().lock().unwrap();
        assert!(store.try_read_user("alice").is_none(), "reader is taken");
        assert_eq!(store.get_user("alice").await.unwrap(), Some(user("alice")));
        drop(reader);
    }

    /// The reader runs on runtime threads, so it must never sleep in
    /// SQLite's busy handler (busy → the blocking pool instead), and it
    /// cannot write.
    #[tokio::test]
    async fn the_reader_never_waits_and_never_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_in(&dir);
        let reader = store.reader.as_ref().unwrap().lock().unwrap();
        let timeout: i64 = reader
            .pragma_query_value(None, "busy_timeout", |r| r.get(0))
            .unwrap();
        assert_eq!(timeout, 0);
        let err = reader
            .execute("DELETE FROM users", [])
            .expect_err("read-only");
        assert!(
            matches!(&err, rusqlite::Error::SqliteFailure(e, _) if e.code == ErrorCode::ReadOnly),
            "{err:?}"
        );
    }
}
