//! SQLite pools ready for concurrent use: WAL, a busy timeout, foreign keys.
//!
//! A fresh `r2d2` pool of `SqliteConnection`s uses SQLite's defaults: a rollback journal
//! (readers and the writer block each other) and no busy timeout (a second writer fails
//! at once with "database is locked"). [`sqlite_pool`] builds a pool whose connections
//! are set up for many threads; [`SqliteSetup`] is the same set-up for a pool you build
//! yourself.
//!
//! ```
//! let dir = tempfile::tempdir()?;
//! let url = dir.path().join("app.db");
//! let pool = diesel_l2::sqlite_pool(url.to_str().unwrap(), 8)?;
//! let db = diesel_l2::Db::builder(pool).build()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel::sqlite::SqliteConnection;

use crate::db::DbPool;
use crate::error::{Error, Result};

/// Sets each new SQLite connection up for concurrent use: `journal_mode = WAL`,
/// `busy_timeout`, `foreign_keys = ON`, `synchronous = NORMAL` (durable in WAL mode up to
/// the last checkpointed transaction on power loss; use [`SqliteSetup::synchronous_full`]
/// for every commit).
#[derive(Clone, Debug)]
pub struct SqliteSetup {
    busy_timeout: Duration,
    synchronous_full: bool,
}

impl Default for SqliteSetup {
    /// A 5 s busy timeout, `synchronous = NORMAL`.
    fn default() -> Self {
        SqliteSetup {
            busy_timeout: Duration::from_secs(5),
            synchronous_full: false,
        }
    }
}

impl SqliteSetup {
    /// How long a connection waits for another's write lock before "database is locked".
    #[must_use]
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// `synchronous = FULL`: every COMMIT is on disk before it returns (slower).
    #[must_use]
    pub fn synchronous_full(mut self) -> Self {
        self.synchronous_full = true;
        self
    }

    fn sql(&self) -> String {
        format!(
            "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; \
             PRAGMA synchronous = {};",
            self.busy_timeout.as_millis(),
            if self.synchronous_full {
                "FULL"
            } else {
                "NORMAL"
            }
        )
    }
}

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqliteSetup {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&self.sql())
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// An r2d2 pool of up to `max_size` connections to the SQLite database at `url` (a file
/// path), each set up with [`SqliteSetup::default`].
pub fn sqlite_pool(url: &str, max_size: u32) -> Result<DbPool<SqliteConnection>> {
    if max_size == 0 {
        return Err(Error::Config(
            "sqlite_pool: max_size is 0; a pool needs at least one connection".into(),
        ));
    }
    if url == ":memory:" && max_size > 1 {
        return Err(Error::Config(
            "sqlite_pool: every connection to \":memory:\" opens its own empty database; use a \
             file path, or max_size 1"
                .into(),
        ));
    }
    Pool::builder()
        .max_size(max_size)
        .connection_customizer(Box::new(SqliteSetup::default()))
        .build(ConnectionManager::<SqliteConnection>::new(url))
        .map_err(|e| Error::Config(format!("sqlite_pool: could not open {url:?}: {e}")))
}
