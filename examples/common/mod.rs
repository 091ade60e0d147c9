//! Shared by the examples (not an example itself: cargo only builds `examples/*.rs` and
//! `examples/*/main.rs`): picks the database from the environment and gives every run
//! fresh tables that are removed afterwards.
//!
//! - default: a SQLite file in a new temp directory;
//! - `DIESEL_L2_EXAMPLE_BACKEND=postgres` (build with `--features postgres`): a new schema
//!   `l2ex_<pid>_<random>` in the database of `DIESEL_L2_PG_URL`;
//! - `DIESEL_L2_EXAMPLE_BACKEND=mysql` (build with `--features mysql`): a new database
//!   `l2ex_<pid>_<random>` on the server of `DIESEL_L2_MYSQL_URL`.
//!
//! An example writes its body once, generic over the connection type, and calls it through
//! [`on_selected_backend!`]. The schema is the project's (`migrations/<backend>/`) unless
//! the example brings its own (`on_selected_backend!(migrations = path::to::module; ..)`,
//! a module with `SQLITE`, `POSTGRES` and `MYSQL` embedded migrations).

// Each example uses a different part of this module.
#![allow(dead_code, unused_macros)]

use std::error::Error;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, R2D2Connection};
use diesel_l2::{DbPool, SqliteSetup};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};

const SQLITE_MIGRATIONS: EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/sqlite");
#[cfg(feature = "postgres")]
const POSTGRES_MIGRATIONS: EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/postgres");
#[cfg(feature = "mysql")]
const MYSQL_MIGRATIONS: EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/mysql");

/// The error type of the examples' `main`: anything, with a message.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// `main`'s exit status: the error's message (not its `Debug` form) and a failure code.
pub fn exit_code(result: Result<(), BoxError>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// SQLite's `synchronous` setting for the examples' pools: `NORMAL` (default) or `FULL`.
pub const SQLITE_SYNCHRONOUS_ENV: &str = "DIESEL_L2_SQLITE_SYNCHRONOUS";

/// Selects the backend: `sqlite` (default), `postgres` or `mysql`.
pub const BACKEND_ENV: &str = "DIESEL_L2_EXAMPLE_BACKEND";
/// PostgreSQL URL, e.g. `postgres://postgres@127.0.0.1:5432/test` (as for the tests).
pub const PG_URL_ENV: &str = "DIESEL_L2_PG_URL";
/// MariaDB/MySQL URL, e.g. `mysql://root@127.0.0.1:3306/test` (as for the tests).
pub const MYSQL_URL_ENV: &str = "DIESEL_L2_MYSQL_URL";

/// Calls `$run(db, args...)` with an [`ExampleDb`] of the backend [`selected`] names: `$run` is a
/// generic fn over the connection type, monomorphised here once per compiled-in backend.
/// Expands to a `?` on errors, so use it in a fn returning `Result<_, BoxError>`.
macro_rules! on_selected_backend {
    // The example's own schema: `$($m)::+` is a module with the embedded migrations
    // `SQLITE`, `POSTGRES` and `MYSQL`.
    (migrations = $($m:ident)::+; $label:expr, $max_size:expr, $run:path $(, $arg:expr)*) => {
        match common::selected()? {
            common::Backend::Sqlite => $run(common::ExampleDb::<
                diesel::sqlite::SqliteConnection,
            >::open_with($label, $max_size, $($m)::+::SQLITE)? $(, $arg)*),
            #[cfg(feature = "postgres")]
            common::Backend::Postgres => $run(common::ExampleDb::<diesel::pg::PgConnection>::open_with(
                $label, $max_size, $($m)::+::POSTGRES,
            )? $(, $arg)*),
            #[cfg(feature = "mysql")]
            common::Backend::Mysql => $run(common::ExampleDb::<
                diesel::mysql::MysqlConnection,
            >::open_with($label, $max_size, $($m)::+::MYSQL)? $(, $arg)*),
        }
    };
    ($label:expr, $max_size:expr, $run:path $(, $arg:expr)*) => {
        match common::selected()? {
            common::Backend::Sqlite => $run(common::ExampleDb::<
                diesel::sqlite::SqliteConnection,
            >::open($label, $max_size)? $(, $arg)*),
            #[cfg(feature = "postgres")]
            common::Backend::Postgres => $run(common::ExampleDb::<diesel::pg::PgConnection>::open(
                $label, $max_size,
            )? $(, $arg)*),
            #[cfg(feature = "mysql")]
            common::Backend::Mysql => $run(common::ExampleDb::<
                diesel::mysql::MysqlConnection,
            >::open($label, $max_size)? $(, $arg)*),
        }
    };
}

/// A backend this build can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Bundled SQLite (the examples require the default `sqlite` feature).
    Sqlite,
    /// PostgreSQL, with `--features postgres`.
    #[cfg(feature = "postgres")]
    Postgres,
    /// MariaDB/MySQL, with `--features mysql`.
    #[cfg(feature = "mysql")]
    Mysql,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            #[cfg(feature = "postgres")]
            Backend::Postgres => "postgres",
            #[cfg(feature = "mysql")]
            Backend::Mysql => "mysql",
        })
    }
}

/// The backend `DIESEL_L2_EXAMPLE_BACKEND` names; SQLite when it is unset or empty.
pub fn selected() -> Result<Backend, BoxError> {
    let wanted = std::env::var(BACKEND_ENV).unwrap_or_default();
    let feature = match wanted.trim().to_ascii_lowercase().as_str() {
        "" | "sqlite" => return Ok(Backend::Sqlite),
        "postgres" | "postgresql" | "pg" => "postgres",
        "mysql" | "mariadb" => "mysql",
        _ => {
            return Err(
                format!("{BACKEND_ENV}={wanted}: expected sqlite, postgres or mysql").into(),
            )
        }
    };
    match feature {
        #[cfg(feature = "postgres")]
        "postgres" => Ok(Backend::Postgres),
        #[cfg(feature = "mysql")]
        "mysql" => Ok(Backend::Mysql),
        _ => Err(format!(
            "{BACKEND_ENV}={wanted} but this build lacks that backend: run with `--features {feature}`"
        )
        .into()),
    }
}

/// A pool on a database nobody else uses, with the project's schema (or the example's own)
/// migrated in; the database (file, schema) is removed on drop.
pub struct ExampleDb<C: R2D2Connection + 'static> {
    /// The pool to build a `diesel_l2::Db` on.
    pub pool: DbPool<C>,
    /// Which backend this is.
    pub backend: Backend,
    /// Where the data lives, for the example's first line of output.
    pub location: String,
    /// The URL of this database (with the database name on MariaDB), for a change
    /// listener or a second pool.
    pub url: String,
    /// The PostgreSQL schema the example runs in.
    pub schema: Option<String>,
    /// The SQL each pooled connection runs first.
    init_sql: String,
    // Last, so the pool's connections are closed before the database is dropped.
    _cleanup: Cleanup,
}

/// The connection types an [`ExampleDb`] can be opened for.
pub trait ExampleBackend: R2D2Connection + MigrationHarness<Self::Backend> + 'static {
    /// The project's schema on this backend (`migrations/<backend>/`).
    fn project_migrations() -> EmbeddedMigrations;
    /// A fresh database for the example called `label`, with a pool of `max_size`, and
    /// `migrations` run.
    fn open_with(
        label: &str,
        max_size: u32,
        migrations: EmbeddedMigrations,
    ) -> Result<ExampleDb<Self>, BoxError>;
}

impl<C: ExampleBackend> ExampleDb<C> {
    /// A fresh database with the project's schema: see [`ExampleBackend::open_with`].
    pub fn open(label: &str, max_size: u32) -> Result<Self, BoxError> {
        C::open_with(label, max_size, C::project_migrations())
    }

    /// A fresh database with the example's own schema: see [`ExampleBackend::open_with`].
    pub fn open_with(
        label: &str,
        max_size: u32,
        migrations: EmbeddedMigrations,
    ) -> Result<Self, BoxError> {
        C::open_with(label, max_size, migrations)
    }

    /// Another pool on the same database, as a second instance of the application has.
    pub fn second_pool(&self, max_size: u32) -> Result<DbPool<C>, BoxError> {
        Ok(Pool::builder()
            .max_size(max_size)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(10))
            .connection_customizer(Box::new(InitSql(self.init_sql.clone())))
            .build(ConnectionManager::<C>::new(self.url.clone()))?)
    }

    /// Like [`second_pool`](Self::second_pool), adding the SQL statements its connections
    /// send (after their set-up) to `counter`, so an example can show that a read ran none.
    /// No test query on checkout, so the count is the reads' own.
    pub fn counted_second_pool(
        &self,
        max_size: u32,
        counter: Arc<AtomicU64>,
    ) -> Result<DbPool<C>, BoxError> {
        Ok(Pool::builder()
            .max_size(max_size)
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(Duration::from_secs(10))
            .connection_customizer(Box::new(Counted {
                init: InitSql(self.init_sql.clone()),
                counter,
            }))
            .build(ConnectionManager::<C>::new(self.url.clone()))?)
    }
}

impl ExampleBackend for diesel::sqlite::SqliteConnection {
    fn project_migrations() -> EmbeddedMigrations {
        SQLITE_MIGRATIONS
    }

    fn open_with(
        label: &str,
        max_size: u32,
        migrations: EmbeddedMigrations,
    ) -> Result<ExampleDb<Self>, BoxError> {
        // A directory rather than a file, so the WAL and SHM files go with it.
        let dir = tempfile::Builder::new()
            .prefix(&format!("diesel-l2-{label}-"))
            .tempdir()?;
        let path = dir.path().join(format!("{label}.db"));
        let url = path
            .to_str()
            .ok_or("temp dir path is not UTF-8")?
            .to_owned();
        // busy_timeout first: concurrent connections switching the file to WAL then wait
        // instead of failing; WAL lets readers run beside the one writer.
        // `synchronous`: NORMAL (the default here) makes a COMMIT durable at the next
        // checkpoint; FULL on every COMMIT (DIESEL_L2_SQLITE_SYNCHRONOUS=FULL).
        let (synchronous, setup) = match std::env::var(SQLITE_SYNCHRONOUS_ENV).as_deref() {
            Ok("FULL") | Ok("full") => ("FULL", SqliteSetup::default().synchronous_full()),
            Ok("NORMAL") | Ok("normal") | Err(_) => ("NORMAL", SqliteSetup::default()),
            Ok(other) => {
                return Err(
                    format!("{SQLITE_SYNCHRONOUS_ENV}={other}: expected NORMAL or FULL").into(),
                )
            }
        };
        let init_sql = format!(
            "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
             PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON;"
        );
        let init_sql = init_sql.as_str();
        // The library's set-up for SQLite pools (the same PRAGMAs as `init_sql`).
        let setup = setup.busy_timeout(Duration::from_secs(10));
        let pool = build_pool(&url, Box::new(setup), max_size, migrations)?;
        Ok(ExampleDb {
            pool,
            backend: Backend::Sqlite,
            location: format!("SQLite file {url}"),
            url,
            schema: None,
            init_sql: init_sql.to_owned(),
            _cleanup: Cleanup::Sqlite(dir),
        })
    }
}

#[cfg(feature = "postgres")]
impl ExampleBackend for diesel::pg::PgConnection {
    fn project_migrations() -> EmbeddedMigrations {
        POSTGRES_MIGRATIONS
    }

    fn open_with(
        _label: &str,
        max_size: u32,
        migrations: EmbeddedMigrations,
    ) -> Result<ExampleDb<Self>, BoxError> {
        use diesel::connection::{Connection, SimpleConnection};
        let url = env_url(PG_URL_ENV)?;
        let schema = unique_name();
        diesel::pg::PgConnection::establish(&url)?
            .batch_execute(&format!("CREATE SCHEMA {schema}"))?;
        // Owned from here on, so a failure below still drops the schema.
        let cleanup = Cleanup::Postgres {
            url: url.clone(),
            schema: schema.clone(),
        };
        let init_sql = format!("SET search_path TO {schema}");
        let pool = build_pool(
            &url,
            Box::new(InitSql(init_sql.clone())),
            max_size,
            migrations,
        )?;
        Ok(ExampleDb {
            pool,
            backend: Backend::Postgres,
            location: format!("PostgreSQL schema {schema} ({PG_URL_ENV})"),
            url,
            schema: Some(schema),
            init_sql,
            _cleanup: cleanup,
        })
    }
}

#[cfg(feature = "mysql")]
impl ExampleBackend for diesel::mysql::MysqlConnection {
    fn project_migrations() -> EmbeddedMigrations {
        MYSQL_MIGRATIONS
    }

    fn open_with(
        _label: &str,
        max_size: u32,
        migrations: EmbeddedMigrations,
    ) -> Result<ExampleDb<Self>, BoxError> {
        use diesel::connection::{Connection, SimpleConnection};
        let url = env_url(MYSQL_URL_ENV)?;
        let database = unique_name();
        diesel::mysql::MysqlConnection::establish(&url)?.batch_execute(&format!(
            "CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        ))?;
        let cleanup = Cleanup::Mysql {
            url: url.clone(),
            database: database.clone(),
        };
        let db_url = with_database(&url, &database);
        let pool = build_pool(
            &db_url,
            Box::new(InitSql(String::new())),
            max_size,
            migrations,
        )?;
        Ok(ExampleDb {
            pool,
            backend: Backend::Mysql,
            location: format!("MariaDB/MySQL database {database} ({MYSQL_URL_ENV})"),
            url: db_url,
            schema: None,
            init_sql: String::new(),
            _cleanup: cleanup,
        })
    }
}

/// Builds the pool (every connection is set up by `setup` first) and migrates the schema.
fn build_pool<C>(
    url: &str,
    setup: Box<dyn CustomizeConnection<C, diesel::r2d2::Error>>,
    max_size: u32,
    migrations: EmbeddedMigrations,
) -> Result<DbPool<C>, BoxError>
where
    C: R2D2Connection + MigrationHarness<C::Backend> + 'static,
{
    let pool = Pool::builder()
        .max_size(max_size)
        // Connections are opened on demand, not `max_size` of them up front.
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(10))
        .connection_customizer(setup)
        .build(ConnectionManager::<C>::new(url))?;
    let mut conn = pool.get()?;
    let conn: &mut C = &mut conn;
    conn.run_pending_migrations(migrations)?;
    Ok(pool)
}

#[derive(Debug)]
struct InitSql(String);

/// [`InitSql`], then a statement counter on the connection (diesel's instrumentation).
#[derive(Debug)]
struct Counted {
    init: InitSql,
    counter: Arc<AtomicU64>,
}

impl<C: R2D2Connection> CustomizeConnection<C, diesel::r2d2::Error> for Counted {
    fn on_acquire(&self, conn: &mut C) -> Result<(), diesel::r2d2::Error> {
        self.init.on_acquire(conn)?;
        let counter = Arc::clone(&self.counter);
        conn.set_instrumentation(move |event: diesel::connection::InstrumentationEvent<'_>| {
            if let diesel::connection::InstrumentationEvent::StartQuery { .. } = event {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        Ok(())
    }
}

impl<C: R2D2Connection> CustomizeConnection<C, diesel::r2d2::Error> for InitSql {
    fn on_acquire(&self, conn: &mut C) -> Result<(), diesel::r2d2::Error> {
        if self.0.is_empty() {
            return Ok(());
        }
        conn.batch_execute(&self.0)
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Removes what an [`ExampleDb`] created, best effort: a failure is printed, not raised,
/// because it happens in `drop`.
enum Cleanup {
    /// `TempDir`'s own drop deletes the directory and the database files in it.
    Sqlite(tempfile::TempDir),
    #[cfg(feature = "postgres")]
    Postgres { url: String, schema: String },
    #[cfg(feature = "mysql")]
    Mysql { url: String, database: String },
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let result: Result<(), BoxError> = match self {
            Cleanup::Sqlite(_) => Ok(()),
            // The lock timeouts keep a connection still held somewhere from hanging the exit.
            #[cfg(feature = "postgres")]
            Cleanup::Postgres { url, schema } => (|| {
                use diesel::connection::{Connection, SimpleConnection};
                diesel::pg::PgConnection::establish(url)?.batch_execute(&format!(
                    "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {schema} CASCADE"
                ))?;
                Ok(())
            })(),
            #[cfg(feature = "mysql")]
            Cleanup::Mysql { url, database } => (|| {
                use diesel::connection::{Connection, SimpleConnection};
                diesel::mysql::MysqlConnection::establish(url)?.batch_execute(&format!(
                    "SET SESSION lock_wait_timeout = 10; DROP DATABASE IF EXISTS `{database}`"
                ))?;
                Ok(())
            })(),
        };
        if let Err(e) = result {
            eprintln!("warning: removing the example's database failed: {e}");
        }
    }
}

/// The URL in `var`, or an error that says how to set it.
fn env_url(var: &str) -> Result<String, BoxError> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Ok(url),
        _ => Err(format!(
            "{BACKEND_ENV} selects a server backend but {var} is not set; \
             e.g. {PG_URL_ENV}=postgres://postgres@127.0.0.1:5432/test or \
             {MYSQL_URL_ENV}=mysql://root@127.0.0.1:3306/test"
        )
        .into()),
    }
}

/// `l2ex_<pid>_<random>`: unique across concurrent runs and leftovers of crashed ones;
/// lower-case ASCII, so it needs no quoting.
fn unique_name() -> String {
    format!("l2ex_{}_{}", std::process::id(), fastrand::u32(..))
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
