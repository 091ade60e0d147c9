//! Ready diesel migrations for what the library needs in the database, the same call on
//! every backend: the change feed of the cached tables (C7) and the operations table of
//! exactly-once transactions (C6).
//!
//! The table, id, version and unique-key names come from the entities themselves
//! (`#[derive(Cached)]` reads them from diesel's `table!`, `#[sql_name]` and
//! `#[diesel(column_name = …)]` included), so they cannot drift from the code:
//!
//! ```
//! # use diesel::prelude::*;
//! # use diesel_l2::Cached;
//! # diesel::table! { users (id) { id -> BigInt, version -> BigInt, email -> Text } }
//! # #[derive(Queryable, Selectable, Clone, Cached)]
//! # #[diesel(table_name = users)]
//! # struct User { id: i64, version: i64, #[cache(unique)] email: String }
//! use diesel_l2::migration::{self, Backend};
//!
//! # fn main() -> diesel_l2::Result<()> {
//! let feed = migration::change_feed(Backend::Postgres).table::<User>().build()?;
//! assert!(feed.up.contains("CREATE TRIGGER \"users_diesel_l2_v2_upd\""));
//! assert!(feed.down.contains("DROP TRIGGER IF EXISTS \"users_diesel_l2_v2_upd\""));
//! # let dir = tempfile::tempdir().unwrap();
//! // `migrations/2026-11-30-120000_diesel_l2_change_feed/{up,down}.sql`, for `diesel
//! // migration run` or `embed_migrations!`:
//! let feed = feed.with_version("2026-11-30-120000");
//! feed.write_to(dir.path())?;
//! // …and in a test, fail when the committed migration is not what the code generates:
//! feed.check(dir.path())?;
//! # Ok(()) }
//! ```
//!
//! The command-line tool in this repository (`cargo install --path cli`, then
//! `diesel-l2 migration change-feed …`) writes the same migrations from the database's
//! catalog or from the app's `schema.rs`.
//!
//! # What a change-feed migration holds
//!
//! `up.sql` installs what the feed needs once per database (PostgreSQL: the trigger
//! functions `diesel_l2_notify_v2()` and `diesel_l2_bump_v2()`; MariaDB/MySQL and SQLite:
//! the outbox table `diesel_l2_changes_v2`), created idempotently, then the triggers of each
//! table (dropping the triggers of an earlier feed version first). `down.sql` drops those
//! triggers, then the shared parts.
//!
//! The shared parts serve every table of the database. A migration that adds tables to a
//! feed installed by an earlier one must leave them in its `down.sql`:
//! [`ChangeFeedMigration::drops_shared`]`(false)` (`--keep-shared` on the command line).
//! Otherwise reverting it would drop the outbox table under the other tables' triggers (on
//! PostgreSQL, `DROP FUNCTION` refuses while other triggers use the functions).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::entity::CachedEntity;
use crate::error::{Error, Result};
use crate::invalidation::feed::trigger_name;
use crate::invalidation::{
    mysql_changes_table_sql, outbox_drop_v1_sql, postgres_drop_v1_sql,
    postgres_notify_function_sql, sqlite_changes_table_sql, CHANGES_TABLE, FEED_VERSION,
};

/// The flush threshold of PostgreSQL's statement triggers unless set: a statement changing
/// more rows than this sends one flush of the table instead of one payload per row.
pub const DEFAULT_FLUSH_THRESHOLD: u32 = 100;

/// The default migration name of [`change_feed`].
pub const CHANGE_FEED_NAME: &str = "diesel_l2_change_feed";

/// The default migration name of [`operations`].
pub const OPERATIONS_NAME: &str = "diesel_l2_operations";

/// A database the migrations are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// PostgreSQL: statement triggers that `pg_notify` at commit.
    Postgres,
    /// MariaDB or MySQL: row triggers appending to the outbox table.
    Mysql,
    /// SQLite: row triggers appending to the outbox table.
    Sqlite,
}

impl Backend {
    /// Every backend.
    pub const ALL: [Backend; 3] = [Backend::Postgres, Backend::Mysql, Backend::Sqlite];

    /// The short name (`postgres`, `mysql`, `sqlite`), as [`FromStr`] reads it and as
    /// diesel's per-backend migration folders are often named.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
            Backend::Sqlite => "sqlite",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Backend::Postgres => "PostgreSQL",
            Backend::Mysql => "MariaDB/MySQL",
            Backend::Sqlite => "SQLite",
        }
    }

    /// The longest identifier the database keeps (bytes on PostgreSQL, characters on
    /// MariaDB/MySQL); `None`: no limit that matters.
    fn identifier_limit(self) -> Option<usize> {
        match self {
            Backend::Postgres => Some(63),
            Backend::Mysql => Some(64),
            Backend::Sqlite => None,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = Error;

    /// `postgres` (or `postgresql`, `pg`), `mysql` (or `mariadb`), `sqlite` (or `sqlite3`),
    /// in any case.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" | "pg" => Ok(Backend::Postgres),
            "mysql" | "mariadb" => Ok(Backend::Mysql),
            "sqlite" | "sqlite3" => Ok(Backend::Sqlite),
            _ => Err(Error::Migration(format!(
                "unknown backend `{s}`: use postgres, mysql or sqlite"
            ))),
        }
    }
}

/// The SQL names the change feed needs of one table.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FeedTable {
    /// The table's SQL name (its `#[sql_name]`, not the Rust name of its `table!`).
    pub table: String,
    /// The primary key's columns. The feed supports one column for now:
    /// [`ChangeFeedMigration::build`] refuses more.
    pub id_columns: Vec<String>,
    /// The version column.
    pub version_column: String,
    /// The unique keys (each its columns), whose old and new values ride along in every
    /// payload (see [`crate::invalidation`]).
    pub unique_keys: Vec<Vec<String>>,
    /// The index keys (`#[cache(index)]`, each its columns), whose old and new values
    /// also ride along, numbered from [`INDEX_KEY_BASE`](crate::invalidation::INDEX_KEY_BASE),
    /// so a remote change drops exactly the cached lists it touched (C10).
    pub index_keys: Vec<Vec<String>>,
}

impl FeedTable {
    /// A table with its primary key's columns and its version column, no unique key.
    pub fn new<I, S>(
        table: impl Into<String>,
        id_columns: I,
        version_column: impl Into<String>,
    ) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        FeedTable {
            table: table.into(),
            id_columns: id_columns.into_iter().map(Into::into).collect(),
            version_column: version_column.into(),
            unique_keys: Vec::new(),
            index_keys: Vec::new(),
        }
    }

    /// Adds a unique key (its columns, in order).
    #[must_use]
    pub fn unique_key<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.unique_keys
            .push(columns.into_iter().map(Into::into).collect());
        self
    }

    /// Adds an index key (its columns, in order): a `#[cache(index)]` key whose cached
    /// lists remote changes then drop precisely (C10).
    #[must_use]
    pub fn index_key<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.index_keys
            .push(columns.into_iter().map(Into::into).collect());
        self
    }

    /// Used by the code `#[derive(Cached)]` generates.
    #[doc(hidden)]
    #[must_use]
    pub fn with_index_keys(mut self, index_keys: &[&[&str]]) -> Self {
        self.index_keys = index_keys
            .iter()
            .map(|k| k.iter().map(|c| c.to_string()).collect())
            .collect();
        self
    }

    /// The names of a cached entity's table, as `#[derive(Cached)]` read them.
    pub fn of<E: CachedEntity>() -> Self {
        E::feed_table()
    }

    /// Used by the code `#[derive(Cached)]` generates.
    #[doc(hidden)]
    pub fn from_derive(table: String, id: &[&str], version: &str, unique_keys: &[&[&str]]) -> Self {
        let mut t = FeedTable::new(table, id.iter().copied(), version);
        t.unique_keys = unique_keys
            .iter()
            .map(|k| k.iter().map(|c| c.to_string()).collect())
            .collect();
        t
    }

    /// The key columns (one, or several for a composite key, whose id text is
    /// `<length>:<value>` per column), or an error saying what is wrong.
    fn id_column_list(&self) -> Result<Vec<&str>> {
        if self.id_columns.is_empty() || self.id_columns.iter().any(|c| c.trim().is_empty()) {
            return Err(Error::Migration(format!(
                "table `{}` has no primary key column: the change feed reports rows by their \
                 id; give the table a primary key",
                self.table
            )));
        }
        Ok(self.id_columns.iter().map(String::as_str).collect())
    }

    fn validate(&self, backend: Backend) -> Result<()> {
        if self.table.trim().is_empty() {
            return Err(Error::Migration(
                "a table of the change feed has an empty name".into(),
            ));
        }
        self.id_column_list()?;
        if self.version_column.trim().is_empty() {
            return Err(Error::Migration(format!(
                "table `{}` has an empty version column name: name the column that holds the \
                 row version",
                self.table
            )));
        }
        if let Some(key) = self
            .unique_keys
            .iter()
            .chain(&self.index_keys)
            .find(|k| k.is_empty() || k.iter().any(|c| c.trim().is_empty()))
        {
            return Err(Error::Migration(format!(
                "table `{}` has a unique key with no or empty column names ({key:?})",
                self.table
            )));
        }
        if let Some(limit) = backend.identifier_limit() {
            let longest = trigger_name(&self.table, "trunc");
            let len = match backend {
                Backend::Postgres => longest.len(),
                _ => longest.chars().count(),
            };
            if len > limit {
                return Err(Error::Migration(format!(
                    "table `{}`: the trigger name `{longest}` is longer than {} allows \
                     ({limit}); the feed's trigger names are `<table>_diesel_l2_v{FEED_VERSION}_<event>`, \
                     so rename the table to a shorter name to put it in the feed",
                    self.table,
                    backend.title()
                )));
            }
        }
        Ok(())
    }
}

/// A diesel migration: `<version>_<name>/up.sql` and `down.sql`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Migration {
    /// The SQL that installs.
    pub up: String,
    /// The SQL that removes what `up` installed.
    pub down: String,
    /// The migration's name (after the version in its directory name).
    pub name: String,
    /// The migration's version: by default the time it was generated, in diesel's
    /// `YYYY-MM-DD-HHMMSS` form (UTC).
    pub version: String,
}

impl Migration {
    fn new(up: String, down: String, name: &str) -> Self {
        Migration {
            up,
            down,
            name: name.to_string(),
            version: chrono::Utc::now().format("%Y-%m-%d-%H%M%S").to_string(),
        }
    }

    /// The same migration under another name.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The same migration with another version (a fixed one keeps the directory a test
    /// writes and checks the same).
    #[must_use]
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// The migration's directory name, `<version>_<name>`.
    pub fn dir_name(&self) -> String {
        format!("{}_{}", self.version, self.name)
    }

    fn validate_name(&self) -> Result<()> {
        let bad = |s: &str| {
            s.is_empty() || s.contains(['/', '\\']) || s == "." || s == ".." || s.contains('\0')
        };
        if bad(&self.name) || bad(&self.version) {
            return Err(Error::Migration(format!(
                "`{}` cannot name a migration directory: the version and the name must be \
                 non-empty and free of path separators",
                self.dir_name()
            )));
        }
        Ok(())
    }

    /// Writes `<migrations_dir>/<version>_<name>/up.sql` and `down.sql` (creating the
    /// directories, replacing the files if that migration was written before) and returns
    /// the migration's directory.
    pub fn write_to(&self, migrations_dir: impl AsRef<Path>) -> Result<PathBuf> {
        self.validate_name()?;
        let dir = migrations_dir.as_ref().join(self.dir_name());
        let io = |what: &str, path: &Path, e: std::io::Error| {
            Error::Migration(format!(
                "could not {what} `{}`: {e}; check the path and its permissions",
                path.display()
            ))
        };
        std::fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
        for (file, sql) in [("up.sql", &self.up), ("down.sql", &self.down)] {
            let path = dir.join(file);
            std::fs::write(&path, sql).map_err(|e| io("write", &path, e))?;
        }
        Ok(dir)
    }

    /// Checks that `<migrations_dir>/<version>_<name>/up.sql` and `down.sql` hold exactly
    /// this migration; the error shows the first difference and how to regenerate.
    pub fn check(&self, migrations_dir: impl AsRef<Path>) -> Result<()> {
        self.validate_name()?;
        let dir = migrations_dir.as_ref().join(self.dir_name());
        for (file, sql) in [("up.sql", &self.up), ("down.sql", &self.down)] {
            let path = dir.join(file);
            let on_disk = match std::fs::read_to_string(&path) {
                Ok(s) => s,
                Err(e) => {
                    return Err(Error::Migration(format!(
                        "cannot read `{}` ({e}): write the migration with `Migration::write_to` \
                         (or `diesel-l2 migration …`)",
                        path.display()
                    )))
                }
            };
            if let Some(diff) = first_difference(&on_disk, sql) {
                return Err(Error::Migration(format!(
                    "`{}` is not what diesel-l2 generates: {diff}. Regenerate it with \
                     `Migration::write_to` (or `diesel-l2 migration …`); if the migration \
                     already ran somewhere, generate a new one instead of editing it",
                    path.display()
                )));
            }
        }
        Ok(())
    }
}

/// The first line where `on_disk` and `generated` differ, described; `None` if equal.
fn first_difference(on_disk: &str, generated: &str) -> Option<String> {
    if on_disk == generated {
        return None;
    }
    let (a, b): (Vec<&str>, Vec<&str>) = (
        on_disk.split('\n').collect(),
        generated.split('\n').collect(),
    );
    let line = (0..a.len().max(b.len()))
        .find(|&i| a.get(i) != b.get(i))
        .unwrap_or(0);
    let show = |l: Option<&&str>| match l {
        Some(l) => format!("`{}`", l.trim_end_matches('\r')),
        None => "(end of file)".to_string(),
    };
    Some(format!(
        "line {} is {} on disk, {} generated",
        line + 1,
        show(a.get(line)),
        show(b.get(line))
    ))
}

/// The change feed of the cached tables, on `backend`: add the entities with
/// [`table`](ChangeFeedMigration::table), then [`build`](ChangeFeedMigration::build).
pub fn change_feed(backend: Backend) -> ChangeFeedMigration {
    ChangeFeedMigration {
        backend,
        tables: Vec::new(),
        flush_threshold: DEFAULT_FLUSH_THRESHOLD,
        drops_shared: true,
        drop_feed_v1: false,
    }
}

/// Builds a change-feed [`Migration`]; made by [`change_feed`].
#[derive(Clone, Debug)]
#[must_use]
pub struct ChangeFeedMigration {
    backend: Backend,
    tables: Vec<FeedTable>,
    flush_threshold: u32,
    drops_shared: bool,
    drop_feed_v1: bool,
}

impl ChangeFeedMigration {
    /// Adds a cached entity's table (names from `#[derive(Cached)]`).
    pub fn table<E: CachedEntity>(self) -> Self {
        self.feed_table(FeedTable::of::<E>())
    }

    /// Adds a table described by hand (or read from a catalog).
    pub fn feed_table(mut self, table: FeedTable) -> Self {
        self.tables.push(table);
        self
    }

    /// PostgreSQL: a statement changing more rows than this sends one flush of the table
    /// instead of one payload per row (default [`DEFAULT_FLUSH_THRESHOLD`]). Ignored by the
    /// outbox backends, which store one row per change.
    pub fn flush_threshold(mut self, rows: u32) -> Self {
        self.flush_threshold = rows;
        self
    }

    /// Whether `down.sql` also drops the parts shared by every table of the database (the
    /// trigger functions, the outbox table); `true` by default. Set `false` for a
    /// migration that adds tables to a feed installed by an earlier migration, so that
    /// reverting it leaves the other tables' feed working.
    pub fn drops_shared(mut self, drops: bool) -> Self {
        self.drops_shared = drops;
        self
    }

    /// Also drops what version 1 of the feed left (the function `diesel_l2_notify()`, the
    /// table `diesel_l2_changes`), for a database upgraded from it; its triggers are
    /// dropped with every table's anyway.
    pub fn drop_feed_v1(mut self) -> Self {
        self.drop_feed_v1 = true;
        self
    }

    /// The migration, named [`CHANGE_FEED_NAME`] and versioned now; an error if no table
    /// was added or a table cannot be in the feed (no primary key, a name too
    /// long for its trigger names).
    pub fn build(self) -> Result<Migration> {
        let backend = self.backend;
        let mut tables: Vec<FeedTable> = Vec::new();
        for t in self.tables {
            t.validate(backend)?;
            match tables.iter().find(|o| o.table == t.table) {
                Some(o) if *o == t => {}
                Some(o) => {
                    return Err(Error::Migration(format!(
                        "table `{}` was given twice with different columns ({o:?} and {t:?}): \
                         give each table once",
                        t.table
                    )))
                }
                None => tables.push(t),
            }
        }
        if tables.is_empty() {
            return Err(Error::Migration(
                "the change feed needs at least one table: add `.table::<E>()` for each \
                 cached entity"
                    .into(),
            ));
        }
        let names: Vec<&str> = tables.iter().map(|t| t.table.as_str()).collect();
        let mut up = format!(
            "-- diesel-l2 change feed (payload v{FEED_VERSION}, {}) for: {}.\n\
             -- Generated by diesel_l2::migration::change_feed (`diesel-l2 migration change-feed`):\n\
             -- regenerate it rather than edit it.\n",
            backend.title(),
            names.join(", ")
        );
        let mut down = String::new();
        match backend {
            Backend::Postgres => {
                up.push_str(&postgres_notify_function_sql());
                for t in &tables {
                    let keys = keys(t);
                    let keys: Vec<(usize, &[&str])> =
                        keys.iter().map(|(n, k)| (*n, k.as_slice())).collect();
                    up.push_str(&crate::invalidation::postgres_table_triggers_sql_numbered(
                        &t.table,
                        &t.id_column_list()?,
                        &t.version_column,
                        self.flush_threshold,
                        &keys,
                    ));
                    let table = quote_double(&t.table);
                    for suffix in ["bump", "ins", "upd", "del", "trunc"] {
                        down.push_str(&format!(
                            "DROP TRIGGER IF EXISTS {} ON {table};\n",
                            quote_double(&trigger_name(&t.table, suffix))
                        ));
                    }
                }
                if self.drop_feed_v1 {
                    up.push_str(&postgres_drop_v1_sql());
                }
                if self.drops_shared {
                    down.push_str(&format!(
                        "DROP FUNCTION IF EXISTS diesel_l2_notify_v{FEED_VERSION}();\n\
                         DROP FUNCTION IF EXISTS diesel_l2_bump_v{FEED_VERSION}();\n"
                    ));
                }
            }
            Backend::Mysql => {
                up.push_str(&mysql_changes_table_sql());
                up.push_str(";\n");
                for t in &tables {
                    let keys = keys(t);
                    let keys: Vec<(usize, &[&str])> =
                        keys.iter().map(|(n, k)| (*n, k.as_slice())).collect();
                    for statement in crate::invalidation::mysql_table_triggers_sql_numbered(
                        &t.table,
                        &t.id_column_list()?,
                        &t.version_column,
                        &keys,
                    ) {
                        up.push_str(&statement);
                        up.push_str(";\n");
                    }
                    for suffix in ["bump", "ins", "upd", "del"] {
                        down.push_str(&format!(
                            "DROP TRIGGER IF EXISTS {};\n",
                            quote_backtick(&trigger_name(&t.table, suffix))
                        ));
                    }
                }
                if self.drop_feed_v1 {
                    up.push_str(&outbox_drop_v1_sql());
                    up.push_str(";\n");
                }
                if self.drops_shared {
                    down.push_str(&format!("DROP TABLE IF EXISTS {CHANGES_TABLE};\n"));
                }
            }
            Backend::Sqlite => {
                up.push_str(&sqlite_changes_table_sql());
                for t in &tables {
                    let keys = keys(t);
                    let keys: Vec<(usize, &[&str])> =
                        keys.iter().map(|(n, k)| (*n, k.as_slice())).collect();
                    up.push_str(&crate::invalidation::sqlite_table_triggers_sql_numbered(
                        &t.table,
                        &t.id_column_list()?,
                        &t.version_column,
                        &keys,
                    ));
                    for suffix in ["ins", "upd", "del"] {
                        down.push_str(&format!(
                            "DROP TRIGGER IF EXISTS {};\n",
                            quote_double(&trigger_name(&t.table, suffix))
                        ));
                    }
                }
                if self.drop_feed_v1 {
                    up.push_str(&outbox_drop_v1_sql());
                    up.push_str(";\n");
                }
                if self.drops_shared {
                    down.push_str(&format!("DROP TABLE IF EXISTS {CHANGES_TABLE};\n"));
                }
            }
        }
        Ok(Migration::new(up, down, CHANGE_FEED_NAME))
    }
}

/// A table's unique keys (numbered from 0) and index keys (numbered from
/// [`INDEX_KEY_BASE`](crate::invalidation::INDEX_KEY_BASE)), as the trigger helpers take
/// them.
fn keys(t: &FeedTable) -> Vec<(usize, Vec<&str>)> {
    fn columns(k: &[String]) -> Vec<&str> {
        k.iter().map(String::as_str).collect()
    }
    t.unique_keys
        .iter()
        .enumerate()
        .map(|(n, k)| (n, columns(k)))
        .chain(
            t.index_keys
                .iter()
                .enumerate()
                .map(|(n, k)| (crate::invalidation::INDEX_KEY_BASE + n, columns(k))),
        )
        .collect()
}

/// The operations table of exactly-once transactions ([`crate::Db::transaction_once`],
/// C6), named [`OPERATIONS_NAME`] and versioned now.
pub fn operations(backend: Backend) -> Migration {
    let table = match backend {
        Backend::Postgres => crate::inbox::postgres_operations_table_sql(),
        Backend::Mysql => crate::inbox::mysql_operations_table_sql(),
        Backend::Sqlite => crate::inbox::sqlite_operations_table_sql(),
    };
    let up = format!(
        "-- diesel-l2 operation ids for exactly-once transactions (Db::transaction_once), {}.\n\
         -- Generated by diesel_l2::migration::operations (`diesel-l2 migration operations`).\n\
         {table}",
        backend.title()
    );
    Migration::new(
        up,
        crate::inbox::drop_operations_table_sql(),
        OPERATIONS_NAME,
    )
}

/// The SQL name of a diesel table (`table!`'s `#[sql_name]`, else its name), rendered by
/// whichever backend this build has: the name is the same on every backend. Used by the
/// code `#[derive(Cached)]` generates.
#[doc(hidden)]
#[cfg(feature = "sqlite")]
pub fn table_sql_name<T>(table: &T) -> Option<String>
where
    T: diesel::query_builder::QueryFragment<diesel::sqlite::Sqlite>,
{
    crate::invalidation::feed::sql_table_name::<diesel::sqlite::Sqlite, T>(table)
}

/// See the `sqlite` variant.
#[doc(hidden)]
#[cfg(all(not(feature = "sqlite"), feature = "postgres"))]
pub fn table_sql_name<T>(table: &T) -> Option<String>
where
    T: diesel::query_builder::QueryFragment<diesel::pg::Pg>,
{
    crate::invalidation::feed::sql_table_name::<diesel::pg::Pg, T>(table)
}

/// See the `sqlite` variant.
#[doc(hidden)]
#[cfg(all(not(feature = "sqlite"), not(feature = "postgres"), feature = "mysql"))]
pub fn table_sql_name<T>(table: &T) -> Option<String>
where
    T: diesel::query_builder::QueryFragment<diesel::mysql::Mysql>,
{
    crate::invalidation::feed::sql_table_name::<diesel::mysql::Mysql, T>(table)
}

/// Without a backend: unknown (the entity's `TABLE` is used).
#[doc(hidden)]
#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
pub fn table_sql_name<T>(_table: &T) -> Option<String> {
    None
}

fn quote_double(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_backtick(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_and_print() {
        for b in Backend::ALL {
            assert_eq!(b.to_string().parse::<Backend>().unwrap(), b);
        }
        assert_eq!("MariaDB".parse::<Backend>().unwrap(), Backend::Mysql);
        let e = "oracle".parse::<Backend>().unwrap_err().to_string();
        assert!(e.contains("postgres, mysql or sqlite"), "{e}");
    }

    #[test]
    fn composite_keys_are_fed_and_missing_keys_are_errors() {
        let composite = FeedTable::new("lines", ["order_id", "line"], "version");
        let m = change_feed(Backend::Sqlite)
            .feed_table(composite)
            .build()
            .unwrap();
        assert!(
            m.up.contains("length(CAST(NEW.\"order_id\" AS TEXT))"),
            "{}",
            m.up
        );
        let none = FeedTable::new("t", Vec::<String>::new(), "version");
        let e = change_feed(Backend::Mysql)
            .feed_table(none)
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains("no primary key"), "{e}");
        let e = change_feed(Backend::Postgres)
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least one table"), "{e}");
        let long = FeedTable::new("t".repeat(50), ["id"], "version");
        let e = change_feed(Backend::Postgres)
            .feed_table(long)
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains("longer than PostgreSQL allows"), "{e}");
    }

    #[test]
    fn down_drops_what_up_created() {
        let t = FeedTable::new("my table", ["id"], "version").unique_key(["email"]);
        for backend in Backend::ALL {
            let m = change_feed(backend).feed_table(t.clone()).build().unwrap();
            let kept = change_feed(backend)
                .feed_table(t.clone())
                .drops_shared(false)
                .build()
                .unwrap();
            assert_eq!(m.up, kept.up);
            assert!(m.down.starts_with(&kept.down));
            assert!(m.down.len() > kept.down.len());
            for suffix in ["ins", "upd", "del"] {
                let name = trigger_name("my table", suffix);
                assert!(m
                    .up
                    .contains(&format!("CREATE TRIGGER {}", quote(backend, &name))));
                assert!(m
                    .down
                    .contains(&format!("DROP TRIGGER IF EXISTS {}", quote(backend, &name))));
            }
        }
    }

    fn quote(backend: Backend, s: &str) -> String {
        match backend {
            Backend::Mysql => quote_backtick(s),
            _ => quote_double(s),
        }
    }

    #[test]
    fn check_shows_the_first_difference() {
        let dir = std::env::temp_dir().join(format!("diesel_l2_check_{}", std::process::id()));
        let m = operations(Backend::Sqlite).with_version("2026-01-01-000000");
        assert!(m.check(&dir).is_err());
        let written = m.write_to(&dir).unwrap();
        assert!(written.ends_with("2026-01-01-000000_diesel_l2_operations"));
        m.check(&dir).unwrap();
        std::fs::write(written.join("down.sql"), "DROP TABLE other;\n").unwrap();
        let e = m.check(&dir).unwrap_err().to_string();
        assert!(
            e.contains("line 1 is `DROP TABLE other;` on disk, `DROP TABLE diesel_l2_operations;` generated"),
            "{e}"
        );
        assert!(e.contains("Regenerate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
        let bad = m.with_name("../x");
        assert!(bad.write_to(std::env::temp_dir()).is_err());
    }
}
