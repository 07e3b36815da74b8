//! The fleet's [`CredentialStore`] on PostgreSQL.
//!
//! One table, created on first use if missing,
//! `wsgate_users (name TEXT PRIMARY KEY, salt BYTEA, iterations INTEGER, stored_key BYTEA, server_key BYTEA)`,
//! in the first schema of the connection's `search_path` (choose another with
//! `?options=-c%20search_path%3Dmyschema` in the URL). It never holds a
//! password. Connections are pooled; every statement has a server-side
//! `statement_timeout` and a client-side deadline, so a call fails with
//! [`StoreError::Unavailable`] instead of hanging while PostgreSQL is away,
//! and works again once it is back.
//!
//! TLS is not supported yet: connect over a private network or a unix
//! socket (`postgres://user@%2Frun%2Fpostgresql/db`); `sslmode=require` is
//! refused with an error saying so.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{NoTls, Row};

use super::{CredentialStore, StoreError, UserRecord, store_location};

/// The deadline of every call, including waiting for a pooled connection.
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long establishing a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Most connections one store holds.
const POOL_SIZE: usize = 8;

/// Serializes schema creation between nodes starting at once
/// (`pg_advisory_xact_lock` key: "wsgate" in ASCII).
const SCHEMA_LOCK: i64 = 0x7773_6761_7465;

const TABLE_EXISTS: &str = "SELECT to_regclass('wsgate_users') IS NOT NULL";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS wsgate_users (
    name TEXT PRIMARY KEY NOT NULL,
    salt BYTEA NOT NULL,
    iterations INTEGER NOT NULL CHECK (iterations > 0),
    stored_key BYTEA NOT NULL,
    server_key BYTEA NOT NULL
)";

const SELECT_USER: &str = "SELECT name, salt, iterations, stored_key, server_key \
                           FROM wsgate_users WHERE name = $1";

/// A [`CredentialStore`] in PostgreSQL, shared by every node of a fleet.
///
/// Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct PostgresCredentialStore {
    pool: Pool,
    location: Arc<str>,
}

impl fmt::Debug for PostgresCredentialStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PostgresCredentialStore")
            .field("location", &self.location)
            .field("connections", &status.size)
            .finish_non_exhaustive()
    }
}

impl PostgresCredentialStore {
    /// Connects to the PostgreSQL database at `url`
    /// (`postgres://user[:password]@host[:port]/database`, also
    /// `postgresql://`) and creates the table if it is missing. Fails fast,
    /// with a message saying what to check, if the server cannot be reached,
    /// refuses the login, or the table cannot be created or has another
    /// shape.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let location: Arc<str> = store_location(url).into();
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Unavailable(format!(
                "{location} is not a usable PostgreSQL URL ({e}); write \
                 postgres://user[:password]@host[:port]/database"
            ))
        })?;
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(StoreError::Unavailable(format!(
                "{location} asks for TLS (sslmode=require), which this wsgate does not \
                 support for PostgreSQL yet; connect over a private network or a unix socket"
            )));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A server-side deadline for every statement, after the URL's own
        // options (which it does not replace).
        let options = match config.get_options() {
            Some(given) => format!("{given} -c statement_timeout={}", QUERY_TIMEOUT.as_millis()),
            None => format!("-c statement_timeout={}", QUERY_TIMEOUT.as_millis()),
        };
        config.options(&options);
        if config.get_application_name().is_none() {
            config.application_name("wsgate");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(QUERY_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(QUERY_TIMEOUT))
            .build()
            .map_err(|e| {
                StoreError::Unavailable(format!("{location}: cannot set up the pool ({e})"))
            })?;
        let store = Self { pool, location };
        store.init().await?;
        Ok(store)
    }

    /// Where the store lives: the URL without credentials.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Creates the table if missing, and checks its shape.
    async fn init(&self) -> Result<(), StoreError> {
        let location = Arc::clone(&self.location);
        self.with_client("creating the users table", async |client| {
            let exists: bool = client.query_one(TABLE_EXISTS, &[]).await?.get(0);
            if !exists {
                let tx = client.transaction().await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                    .await?;
                tx.batch_execute(SCHEMA).await?;
                tx.commit().await?;
            }
            Ok(client.prepare(SELECT_USER).await.map(|stmt| {
                stmt.columns()
                    .iter()
                    .map(|c| c.type_().clone())
                    .collect::<Vec<_>>()
            }))
        })
        .await?
        .map_err(|e| {
            StoreError::Corrupt(format!(
                "{location}: the table wsgate_users does not have the columns \
                 name, salt, iterations, stored_key, server_key ({}); rename it and let \
                 wsgate create its own",
                describe(&e)
            ))
        })
        .and_then(|types| {
            let expected = [
                Type::TEXT,
                Type::BYTEA,
                Type::INT4,
                Type::BYTEA,
                Type::BYTEA,
            ];
            if types == expected {
                Ok(())
            } else {
                Err(StoreError::Corrupt(format!(
                    "{location}: the columns of wsgate_users have types {types:?}, expected \
                     {expected:?}; rename the table and let wsgate create its own"
                )))
            }
        })
    }

    /// Runs `f` with a pooled connection, within [`QUERY_TIMEOUT`].
    async fn with_client<T, F>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        F: AsyncFnOnce(&mut deadpool_postgres::Client) -> Result<T, tokio_postgres::Error>,
    {
        let work = async {
            let mut client = self.pool.get().await.map_err(|e| self.pool_error(&e))?;
            f(&mut client).await.map_err(|e| self.sql_error(what, &e))
        };
        match tokio::time::timeout(QUERY_TIMEOUT, work).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "PostgreSQL at {} did not answer ({what}) within {QUERY_TIMEOUT:?}; is it \
                 running, reachable from this node and not overloaded?",
                self.location
            ))),
        }
    }

    fn pool_error(&self, e: &PoolError) -> StoreError {
        match e {
            PoolError::Backend(e) => self.sql_error("connecting", e),
            PoolError::Timeout(_) => StoreError::Unavailable(format!(
                "no connection to PostgreSQL at {} within {QUERY_TIMEOUT:?}; is it running, \
                 reachable from this node and accepting connections?",
                self.location
            )),
            other => StoreError::Unavailable(format!(
                "PostgreSQL at {}: no connection ({other})",
                self.location
            )),
        }
    }

    fn sql_error(&self, what: &str, e: &tokio_postgres::Error) -> StoreError {
        let location = &self.location;
        let detail = describe(e);
        let Some(code) = e.code() else {
            return StoreError::Unavailable(format!(
                "cannot reach PostgreSQL at {location} ({what}: {detail}); is the server \
                 running and reachable from this node?"
            ));
        };
        if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            StoreError::Unavailable(format!(
                "PostgreSQL at {location} refused the login ({detail}); check the user and \
                 password in the URL and the server's pg_hba.conf"
            ))
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            StoreError::Unavailable(format!(
                "PostgreSQL at {location}: {detail}; create the database first \
                 (createdb, or CREATE DATABASE)"
            ))
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            StoreError::Unavailable(format!(
                "PostgreSQL at {location} refused {what} ({detail}); grant wsgate's role \
                 CREATE on the schema (or create wsgate_users for it) and \
                 SELECT, INSERT, UPDATE, DELETE on wsgate_users"
            ))
        } else if *code == SqlState::QUERY_CANCELED {
            StoreError::Unavailable(format!(
                "PostgreSQL at {location} did not finish {what} within {QUERY_TIMEOUT:?} \
                 ({detail}); is it overloaded or a lock held?"
            ))
        } else {
            StoreError::Unavailable(format!("PostgreSQL at {location}: {what}: {detail}"))
        }
    }

    fn decode_row(&self, row: &Row) -> Result<UserRecord, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("{}: {what}", self.location));
        let name: String = row
            .try_get(0)
            .map_err(|e| corrupt(format!("unreadable user name ({e})")))?;
        let corrupt_user = |what: String| corrupt(format!("user {name:?}: {what}"));
        let salt: Vec<u8> = row
            .try_get(1)
            .map_err(|e| corrupt_user(format!("unreadable salt ({e})")))?;
        let iterations: i32 = row
            .try_get(2)
            .map_err(|e| corrupt_user(format!("unreadable iterations ({e})")))?;
        let stored_key: Vec<u8> = row
            .try_get(3)
            .map_err(|e| corrupt_user(format!("unreadable stored_key ({e})")))?;
        let server_key: Vec<u8> = row
            .try_get(4)
            .map_err(|e| corrupt_user(format!("unreadable server_key ({e})")))?;
        let iterations = u32::try_from(iterations)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| corrupt_user(format!("iterations {iterations} is out of range")))?;
        UserRecord::from_stored(name, salt, iterations, &stored_key, &server_key, corrupt)
    }
}

/// The most useful text of a driver error: the server's message when there
/// is one, else the error and its cause.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {} [{}]", db.severity(), db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// PostgreSQL's `TEXT` cannot hold NUL, so no stored name contains one
/// (SASLprep forbids it anyway).
fn storable(name: &str) -> bool {
    !name.contains('\0')
}

/// A record's columns other than the name, as PostgreSQL values.
struct Columns<'r> {
    salt: &'r [u8],
    iterations: i32,
    stored_key: &'r [u8],
    server_key: &'r [u8],
}

/// The record's columns as PostgreSQL values.
fn columns<'r>(location: &str, record: &'r UserRecord) -> Result<Columns<'r>, StoreError> {
    if !storable(&record.name) {
        return Err(StoreError::Unavailable(format!(
            "{location}: user names containing NUL cannot be stored"
        )));
    }
    let iterations = i32::try_from(record.iterations).map_err(|_| {
        StoreError::Unavailable(format!(
            "{location}: {} iterations do not fit the iterations column (at most {})",
            record.iterations,
            i32::MAX
        ))
    })?;
    Ok(Columns {
        salt: &record.salt,
        iterations,
        stored_key: &record.stored_key,
        server_key: &record.server_key,
    })
}

#[async_trait::async_trait]
impl CredentialStore for PostgresCredentialStore {
    async fn get_user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        if !storable(name) {
            return Ok(None);
        }
        let row = self
            .with_client("reading a user", async |client| {
                let stmt = client.prepare_cached(SELECT_USER).await?;
                client.query_opt(&stmt, &[&name]).await
            })
            .await?;
        row.map(|row| self.decode_row(&row)).transpose()
    }

    async fn add_user(&self, record: UserRecord) -> Result<(), StoreError> {
        let c = columns(&self.location, &record)?;
        let inserted = self
            .with_client("adding a user", async |client| {
                let stmt = client
                    .prepare_cached(
                        "INSERT INTO wsgate_users \
                         (name, salt, iterations, stored_key, server_key) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
                    )
                    .await?;
                client
                    .execute(
                        &stmt,
                        &[
                            &record.name,
                            &c.salt,
                            &c.iterations,
                            &c.stored_key,
                            &c.server_key,
                        ],
                    )
                    .await
            })
            .await?;
        if inserted == 0 {
            return Err(StoreError::UserExists(record.name));
        }
        Ok(())
    }

    async fn set_user(&self, record: UserRecord) -> Result<(), StoreError> {
        let c = columns(&self.location, &record)?;
        self.with_client("setting a user", async |client| {
            let stmt = client
                .prepare_cached(
                    "INSERT INTO wsgate_users (name, salt, iterations, stored_key, server_key) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (name) DO UPDATE SET salt = excluded.salt, \
                     iterations = excluded.iterations, stored_key = excluded.stored_key, \
                     server_key = excluded.server_key",
                )
                .await?;
            client
                .execute(
                    &stmt,
                    &[
                        &record.name,
                        &c.salt,
                        &c.iterations,
                        &c.stored_key,
                        &c.server_key,
                    ],
                )
                .await
        })
        .await
        .map(drop)
    }

    async fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        if !storable(name) {
            return Ok(false);
        }
        self.with_client("removing a user", async |client| {
            let stmt = client
                .prepare_cached("DELETE FROM wsgate_users WHERE name = $1")
                .await?;
            client.execute(&stmt, &[&name]).await
        })
        .await
        .map(|n| n > 0)
    }

    async fn list_users(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .with_client("listing users", async |client| {
                // "C" collation compares UTF-8 bytes: the same order as `str`.
                let stmt = client
                    .prepare_cached("SELECT name FROM wsgate_users ORDER BY name COLLATE \"C\"")
                    .await?;
                client.query(&stmt, &[]).await
            })
            .await?;
        rows.iter()
            .map(|row| {
                row.try_get(0).map_err(|e| {
                    StoreError::Corrupt(format!("{}: unreadable user name ({e})", self.location))
                })
            })
            .collect()
    }
}
