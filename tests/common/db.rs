//! Throwaway, isolated databases behind an instrumented r2d2 pool.
//!
//! Each [`TestDb`] owns a database nobody else sees, so tests run in parallel:
//! - SQLite: a fresh file in a temp dir (deleted on drop);
//! - PostgreSQL: a fresh schema `l2t_<pid>_<n>_<rand>` in the database of
//!   `DIESEL_L2_PG_URL`; every pooled connection sets its `search_path` to it
//!   (`DROP SCHEMA .. CASCADE` on drop);
//! - MariaDB/MySQL: a fresh database `l2t_<pid>_<n>_<rand>` on the server of
//!   `DIESEL_L2_MYSQL_URL` (`DROP DATABASE` on drop).
//!
//! The example schema (`migrations/<backend>/`, or the one given with
//! [`TestDbOptions::migrations`]) is migrated in before the constructor
//! returns, and the [`SqlLog`] is reset afterwards.

use super::SqlLog;
use diesel::connection::SimpleConnection;
use diesel::r2d2::{
    ConnectionManager, CustomizeConnection, HandleError, Pool, PooledConnection, R2D2Connection,
};
use diesel::{Connection, QueryResult};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

#[cfg(feature = "mysql")]
use diesel::mysql::MysqlConnection;
#[cfg(feature = "postgres")]
use diesel::pg::PgConnection;
#[cfg(feature = "sqlite")]
use diesel::sqlite::SqliteConnection;

/// Environment variable holding the PostgreSQL URL (e.g.
/// `postgres://postgres@127.0.0.1:5432/test`).
pub const PG_URL_ENV: &str = "DIESEL_L2_PG_URL";
/// Environment variable holding the MariaDB/MySQL URL (e.g.
/// `mysql://root@127.0.0.1:3306/test`).
pub const MYSQL_URL_ENV: &str = "DIESEL_L2_MYSQL_URL";

#[cfg(feature = "sqlite")]
const SQLITE_MIGRATIONS: EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/sqlite");
#[cfg(feature = "postgres")]
const PG_MIGRATIONS: EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/postgres");
#[cfg(feature = "mysql")]
const MYSQL_MIGRATIONS: EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/mysql");

/// Run on every new SQLite connection. `busy_timeout` comes first so that
/// concurrent connections switching the file to WAL wait instead of failing
/// with SQLITE_BUSY; WAL lets readers run beside one writer; foreign keys are
/// off by default in SQLite; `synchronous=NORMAL` is the usual WAL setting.
#[cfg(feature = "sqlite")]
const SQLITE_INIT: &str = "PRAGMA busy_timeout = 10000; \
     PRAGMA journal_mode = WAL; \
     PRAGMA foreign_keys = ON; \
     PRAGMA synchronous = NORMAL;";

/// Which database a [`TestDb`] talks to, so a shared test body can branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// SQLite (bundled), always available.
    Sqlite,
    /// PostgreSQL, when `DIESEL_L2_PG_URL` is set.
    Postgres,
    /// MariaDB/MySQL, when `DIESEL_L2_MYSQL_URL` is set.
    Mysql,
}

impl Backend {
    /// Lower-case name, as used for the `backend_tests!` module names.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Pool settings of a [`TestDb`]. Fields are public; the same-named methods
/// are chainable setters: `TestDbOptions::default().max_size(1)`.
#[derive(Debug, Clone)]
pub struct TestDbOptions {
    /// r2d2 `max_size` (default 8).
    pub max_size: u32,
    /// r2d2 `connection_timeout`: how long `pool.get()` waits (default 10 s).
    pub connection_timeout: Duration,
    /// r2d2 `min_idle` (default `Some(0)`: connections are opened lazily, so
    /// many parallel tests don't exhaust the servers' connection limits; r2d2's
    /// own default would open `max_size` connections up front).
    pub min_idle: Option<u32>,
    /// Another schema than the project's (`migrations/<backend>/`), such as an example
    /// application's own (default `None`: the project's).
    pub migrations: Option<Migrations>,
}

/// One embedded migration set per backend, for a schema other than the project's
/// ([`TestDbOptions::migrations`]). Functions, because diesel's `EmbeddedMigrations` is
/// neither `Clone` nor `Debug`: `|| MY_SQLITE_MIGRATIONS`.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// SQLite's.
    pub sqlite: fn() -> EmbeddedMigrations,
    /// PostgreSQL's.
    pub postgres: fn() -> EmbeddedMigrations,
    /// MariaDB/MySQL's.
    pub mysql: fn() -> EmbeddedMigrations,
}

impl Default for TestDbOptions {
    fn default() -> Self {
        Self {
            max_size: 8,
            connection_timeout: Duration::from_secs(10),
            min_idle: Some(0),
            migrations: None,
        }
    }
}

impl TestDbOptions {
    /// Sets `max_size`.
    pub fn max_size(mut self, max_size: u32) -> Self {
        self.max_size = max_size;
        self
    }

    /// Sets `connection_timeout`.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Sets `min_idle`.
    pub fn min_idle(mut self, min_idle: Option<u32>) -> Self {
        self.min_idle = min_idle;
        self
    }

    /// Migrates `migrations` instead of the project's schema.
    pub fn migrations(mut self, migrations: Migrations) -> Self {
        self.migrations = Some(migrations);
        self
    }
}

/// The pool type every [`TestDb`] hands out.
pub type TestPool<C> = Pool<ConnectionManager<C>>;

/// An isolated database with the example schema, an r2d2 pool on it and a
/// [`SqlLog`] that sees every statement the pool's connections run.
pub struct TestDb<C: R2D2Connection + 'static> {
    /// Pool on this test's own database/schema/file. Checkouts do not send
    /// `SELECT 1` (`test_on_check_out(false)`), so they never show up in `sql`.
    pub pool: TestPool<C>,
    /// Statements run by the pool's connections since construction (or the
    /// last `sql.reset()`).
    pub sql: SqlLog,
    /// Which backend this is.
    pub backend: Backend,
    /// The options the pool was built with (reused by [`TestDb::fresh`]).
    pub options: TestDbOptions,
    /// URL of this test's own database (the file path for SQLite; for
    /// PostgreSQL the shared database, the schema comes from `init_sql`).
    pub url: String,
    /// SQL run on every new connection before instrumentation is installed.
    init_sql: String,
    // Declared last: fields drop in declaration order, so the pool (and its
    // connections) is gone before the schema/database/file is dropped.
    _cleanup: Cleanup,
}

impl<C: R2D2Connection + 'static> TestDb<C> {
    /// A connection from the pool; panics with the pool error on timeout.
    pub fn conn(&self) -> PooledConnection<ConnectionManager<C>> {
        self.pool
            .get()
            .unwrap_or_else(|e| panic!("{} test pool: get() failed: {e}", self.backend))
    }

    /// Runs raw SQL (one or more `;`-separated statements) on a pooled
    /// connection; panics on error. It is recorded in `sql` like anything
    /// else the pool runs, so reset the log after setup.
    pub fn exec(&self, sql: &str) {
        self.try_exec(sql)
            .unwrap_or_else(|e| panic!("{} exec({sql:?}) failed: {e}", self.backend));
    }

    /// [`exec`](Self::exec) returning the error instead of panicking.
    pub fn try_exec(&self, sql: &str) -> QueryResult<()> {
        self.conn().batch_execute(sql)
    }

    /// A new connection to the same database, outside the pool and without
    /// instrumentation: a "someone else" writer whose statements `sql` does
    /// not count, and which the cache under test cannot know about.
    pub fn raw_connection(&self) -> C {
        let mut conn = C::establish(&self.url)
            .unwrap_or_else(|e| panic!("{} raw_connection: {e}", self.backend));
        if !self.init_sql.is_empty() {
            conn.batch_execute(&self.init_sql)
                .unwrap_or_else(|e| panic!("{} raw_connection setup: {e}", self.backend));
        }
        conn
    }
}

/// The connection types [`TestDb`] can be built for; lets `backend_tests!`
/// and generic helpers say `TestDb::<Conn>::open(..)`.
pub trait TestBackend: R2D2Connection + 'static {
    /// Which backend this connection type is.
    const BACKEND: Backend;
    /// A new isolated database, or `None` when the backend is not configured
    /// (after printing `SKIPPED: ...`; panics instead when `CI=true`).
    fn open(options: TestDbOptions) -> Option<TestDb<Self>>;
}

impl<C: TestBackend> TestDb<C> {
    /// See [`TestBackend::open`].
    pub fn open(options: TestDbOptions) -> Option<Self> {
        C::open(options)
    }

    /// A second pool on this same database (as another process of the application
    /// would have), with its own statement log.
    pub fn another_pool(&self) -> (TestPool<C>, SqlLog) {
        let sql = SqlLog::new();
        let pool = Pool::builder()
            .max_size(self.options.max_size)
            .min_idle(self.options.min_idle)
            .connection_timeout(self.options.connection_timeout)
            .test_on_check_out(false)
            .error_handler(Box::new(EprintErrors(self.backend)))
            .connection_customizer(Box::new(Setup {
                init_sql: self.init_sql.clone(),
                log: sql.clone(),
            }))
            .build(ConnectionManager::<C>::new(self.url.clone()))
            .unwrap_or_else(|e| panic!("{} second pool: {e}", self.backend));
        (pool, sql)
    }

    /// The PostgreSQL schema this test runs in (`None` on other backends).
    pub fn pg_schema(&self) -> Option<String> {
        self.init_sql
            .strip_prefix("SET search_path TO ")
            .map(str::to_owned)
    }

    /// Another, independent database of the same backend and options (to
    /// prove isolation, or to simulate a second application).
    pub fn fresh(&self) -> Self {
        C::open(self.options.clone())
            .unwrap_or_else(|| panic!("{} became unavailable during the test", self.backend))
    }
}

#[cfg(feature = "sqlite")]
impl TestBackend for SqliteConnection {
    const BACKEND: Backend = Backend::Sqlite;
    fn open(options: TestDbOptions) -> Option<TestDb<Self>> {
        Some(TestDb::sqlite_with(options))
    }
}

#[cfg(feature = "postgres")]
impl TestBackend for PgConnection {
    const BACKEND: Backend = Backend::Postgres;
    fn open(options: TestDbOptions) -> Option<TestDb<Self>> {
        TestDb::postgres_with(options)
    }
}

#[cfg(feature = "mysql")]
impl TestBackend for MysqlConnection {
    const BACKEND: Backend = Backend::Mysql;
    fn open(options: TestDbOptions) -> Option<TestDb<Self>> {
        TestDb::mysql_with(options)
    }
}

#[cfg(feature = "sqlite")]
impl TestDb<SqliteConnection> {
    /// A fresh SQLite file with the default options.
    pub fn sqlite() -> Self {
        Self::sqlite_with(TestDbOptions::default())
    }

    /// A fresh SQLite file (in its own temp dir, so WAL/SHM files go too).
    pub fn sqlite_with(options: TestDbOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("diesel-l2-test-")
            .tempdir()
            .expect("create temp dir for SQLite test database");
        let url = dir
            .path()
            .join("test.db")
            .to_str()
            .expect("temp dir path is UTF-8")
            .to_owned();
        build(
            Backend::Sqlite,
            url,
            SQLITE_INIT.to_owned(),
            options
                .migrations
                .map_or(SQLITE_MIGRATIONS, |m| (m.sqlite)()),
            options,
            Cleanup::Sqlite(dir),
        )
    }
}

#[cfg(feature = "postgres")]
impl TestDb<PgConnection> {
    /// A fresh schema with the default options; `None` if
    /// `DIESEL_L2_PG_URL` is unset (panics instead under `CI=true`).
    pub fn postgres() -> Option<Self> {
        Self::postgres_with(TestDbOptions::default())
    }

    /// A fresh schema with the given pool options.
    pub fn postgres_with(options: TestDbOptions) -> Option<Self> {
        static SKIP_REPORTED: AtomicBool = AtomicBool::new(false);
        let url = env_url(PG_URL_ENV, "PostgreSQL", &SKIP_REPORTED)?;
        let schema = unique_name();
        let mut admin = PgConnection::establish(&url)
            .unwrap_or_else(|e| panic!("cannot connect to {PG_URL_ENV}: {e}"));
        admin
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .unwrap_or_else(|e| panic!("CREATE SCHEMA {schema}: {e}"));
        drop(admin);
        // From here on the guard drops the schema even if setup panics.
        let cleanup = Cleanup::Postgres {
            url: url.clone(),
            schema: schema.clone(),
        };
        // Only the test schema: nothing can accidentally resolve to `public`.
        let init_sql = format!("SET search_path TO {schema}");
        Some(build(
            Backend::Postgres,
            url,
            init_sql,
            options.migrations.map_or(PG_MIGRATIONS, |m| (m.postgres)()),
            options,
            cleanup,
        ))
    }
}

#[cfg(feature = "mysql")]
impl TestDb<MysqlConnection> {
    /// A fresh database with the default options; `None` if
    /// `DIESEL_L2_MYSQL_URL` is unset (panics instead under `CI=true`).
    pub fn mysql() -> Option<Self> {
        Self::mysql_with(TestDbOptions::default())
    }

    /// A fresh database with the given pool options.
    pub fn mysql_with(options: TestDbOptions) -> Option<Self> {
        static SKIP_REPORTED: AtomicBool = AtomicBool::new(false);
        let base_url = env_url(MYSQL_URL_ENV, "MariaDB/MySQL", &SKIP_REPORTED)?;
        let database = unique_name();
        let mut admin = MysqlConnection::establish(&base_url)
            .unwrap_or_else(|e| panic!("cannot connect to {MYSQL_URL_ENV}: {e}"));
        admin
            .batch_execute(&format!(
                "CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            ))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {database}: {e}"));
        drop(admin);
        let cleanup = Cleanup::Mysql {
            url: base_url.clone(),
            database: database.clone(),
        };
        Some(build(
            Backend::Mysql,
            with_database(&base_url, &database),
            String::new(),
            options.migrations.map_or(MYSQL_MIGRATIONS, |m| (m.mysql)()),
            options,
            cleanup,
        ))
    }
}

/// Builds the pool, migrates, and resets the log. `cleanup` is owned from the
/// start so a panic here still removes the database.
fn build<C>(
    backend: Backend,
    url: String,
    init_sql: String,
    migrations: EmbeddedMigrations,
    options: TestDbOptions,
    cleanup: Cleanup,
) -> TestDb<C>
where
    C: R2D2Connection + MigrationHarness<C::Backend> + 'static,
{
    let sql = SqlLog::new();
    let pool = Pool::builder()
        .max_size(options.max_size)
        .min_idle(options.min_idle)
        .connection_timeout(options.connection_timeout)
        // No `SELECT 1` on checkout: it would pollute the SqlLog and the
        // cache's "a hit runs no SQL" assertions.
        .test_on_check_out(false)
        .error_handler(Box::new(EprintErrors(backend)))
        .connection_customizer(Box::new(Setup {
            init_sql: init_sql.clone(),
            log: sql.clone(),
        }))
        .build(ConnectionManager::<C>::new(url.clone()))
        .unwrap_or_else(|e| panic!("{backend} test pool: {e}"));
    {
        let mut conn = pool
            .get()
            .unwrap_or_else(|e| panic!("{backend} test pool: get() for migrations: {e}"));
        let conn: &mut C = &mut conn;
        conn.run_pending_migrations(migrations)
            .unwrap_or_else(|e| panic!("{backend} migrations failed: {e}"));
    }
    sql.reset();
    TestDb {
        pool,
        sql,
        backend,
        options,
        url,
        init_sql,
        _cleanup: cleanup,
    }
}

/// Per-connection setup: the backend's init SQL, then the SqlLog
/// instrumentation (in that order, so setup is never counted).
#[derive(Debug)]
struct Setup {
    init_sql: String,
    log: SqlLog,
}

impl<C: Connection + 'static> CustomizeConnection<C, diesel::r2d2::Error> for Setup {
    fn on_acquire(&self, conn: &mut C) -> Result<(), diesel::r2d2::Error> {
        if !self.init_sql.is_empty() {
            conn.batch_execute(&self.init_sql)
                .map_err(diesel::r2d2::Error::QueryError)?;
        }
        conn.set_instrumentation(self.log.instrumentation());
        Ok(())
    }
}

/// r2d2 logs connection errors through the `log` crate by default, which
/// nobody listens to in tests; a failing `get()` then only says "timed out".
/// Print the real cause instead.
#[derive(Debug)]
struct EprintErrors(Backend);

impl HandleError<diesel::r2d2::Error> for EprintErrors {
    fn handle_error(&self, error: diesel::r2d2::Error) {
        eprintln!("{} test pool: connection error: {error}", self.0);
    }
}

/// Removes what a [`TestDb`] created, best effort (never panics in drop).
enum Cleanup {
    /// `TempDir`'s own drop deletes the directory with the database file.
    #[cfg(feature = "sqlite")]
    Sqlite(tempfile::TempDir),
    #[cfg(feature = "postgres")]
    Postgres { url: String, schema: String },
    #[cfg(feature = "mysql")]
    Mysql { url: String, database: String },
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let result: Result<(), Box<dyn std::error::Error>> = match self {
            #[cfg(feature = "sqlite")]
            Cleanup::Sqlite(_) => Ok(()),
            // lock_timeout / lock_wait_timeout: a connection leaked by a test
            // (e.g. an open transaction in a pool clone) must not hang the run.
            #[cfg(feature = "postgres")]
            Cleanup::Postgres { url, schema } => (|| {
                PgConnection::establish(url)?.batch_execute(&format!(
                    "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {schema} CASCADE"
                ))?;
                Ok(())
            })(),
            #[cfg(feature = "mysql")]
            Cleanup::Mysql { url, database } => (|| {
                MysqlConnection::establish(url)?.batch_execute(&format!(
                    "SET SESSION lock_wait_timeout = 10; DROP DATABASE IF EXISTS `{database}`"
                ))?;
                Ok(())
            })(),
        };
        if let Err(e) = result {
            eprintln!("warning: test database cleanup failed: {e}");
        }
    }
}

/// `l2t_<pid>_<counter>_<random>`: unique within the process (counter),
/// across concurrent test binaries (pid) and across pid reuse on a server
/// that kept a leftover from a crashed run (random). Lower-case ASCII, so it
/// needs no quoting in PostgreSQL and fits MySQL's 64-char limit.
fn unique_name() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "l2t_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..)
    )
}

/// The URL in `var`, or `None` after reporting the skip (for fixtures outside this file).
pub fn env_url_or_skip(var: &str, what: &str, skip_reported: &AtomicBool) -> Option<String> {
    env_url(var, what, skip_reported)
}

/// The URL in `var`, or `None` after reporting the skip. Under `CI=true` a
/// missing URL panics: CI must never silently skip a backend.
fn env_url(var: &str, what: &str, skip_reported: &AtomicBool) -> Option<String> {
    if let Ok(url) = std::env::var(var) {
        if !url.trim().is_empty() {
            return Some(url);
        }
    }
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{var} is not set but CI=true: the {what} tests must run in CI, not be skipped");
    }
    if !skip_reported.swap(true, Ordering::Relaxed) {
        // Written straight to the stderr handle, not with eprintln!: the test
        // harness captures eprintln! of passing tests, and this line must
        // reach the log (.ci/run greps for `SKIPPED:`).
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {var} not set; {what} tests did not run"
        );
    }
    None
}

/// `mysql://user@host:port/olddb?opts` -> `mysql://user@host:port/<db>?opts`.
#[cfg(feature = "mysql")]
fn with_database(url: &str, database: &str) -> String {
    let (head, query) = url.split_at(url.find('?').unwrap_or(url.len()));
    let authority_start = head.find("://").map_or(0, |i| i + 3);
    let base = match head[authority_start..].find('/') {
        Some(slash) => &head[..authority_start + slash],
        None => head,
    };
    format!("{base}/{database}{query}")
}
