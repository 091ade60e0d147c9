//! The query cache: the result of any diesel query over a cached entity, kept as a
//! resolved list and made unusable by any committed write to a table it reads (C10).
//!
//! Hibernate's query cache, with its per-table timestamps, is the model; the fence is
//! what it lacks. Every SQL table a `Db` knows has a [`TableClock`]: a generation and a
//! count of transactions writing the table.
//!
//! - A transaction bumps the generation of a table when it starts writing a row of it
//!   (the soft lock of the row) and again when it ends, after `COMMIT` (or rollback), and
//!   counts itself as a writer in between. A change reported by the change feed (another
//!   process, plain SQL) bumps it too, as does an eviction of the table's region.
//! - A cached result carries the generation of every table it read, taken before its
//!   query ran. It is served only while all of them are unchanged, so a write that
//!   committed, or is in flight, makes it unusable before `transaction` returns (C4 for
//!   queries).
//! - A result is stored only if no transaction was writing any of its tables when its
//!   query started, and no generation moved while it ran (C3 for queries): a load that
//!   raced a write never fills.
//! - While the change listener is disconnected, nothing is served or stored (C7).
//!
//! The key is the query itself, its SQL and its bind values as diesel renders them
//! (`debug_query`), so pagination and parameters are part of it; or a key of the caller's
//! ([`QueryKey`]). The tables a typed query reads come from the `FROM` and `JOIN`
//! clauses of that SQL; a keyed query declares them. **A wrong declaration is the one way
//! to be served a stale result**, and a table that no cached entity maps is refused:
//! writes to it would not be seen.
//!
//! Invalidation is coarse on purpose: any committed write to a table makes every cached
//! result over it unusable, whatever rows it touched (a list ordered by a non-id column
//! is thereby invalidated when that column changes). Lists of children by a key, which
//! are invalidated precisely, are [`crate::index`]'s.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel::backend::Backend;
use diesel::query_builder::QueryFragment;
use diesel::query_dsl::methods::LoadQuery;
use diesel::r2d2::R2D2Connection;
use diesel::QueryResult;
use moka::sync::Cache;
use serde::Serialize;

use crate::db::Db;
use crate::entity::CachedOps;
use crate::error::{Error, Result};
use crate::index::List;

/// The generation and the writers of one SQL table.
#[derive(Default)]
pub(crate) struct TableClock {
    name: Box<str>,
    generation: AtomicU64,
    writers: AtomicU64,
    /// Times a write or a remote change made this table's cached results unusable.
    invalidations: AtomicU64,
}

impl TableClock {
    fn new(name: &str) -> Self {
        TableClock {
            name: name.into(),
            ..TableClock::default()
        }
    }

    /// A transaction starts writing a row of the table.
    pub(crate) fn begin_write(&self) {
        self.writers.fetch_add(1, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// That transaction ended (after `COMMIT` returned, or after a rollback).
    pub(crate) fn end_write(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.writers.fetch_sub(1, Ordering::SeqCst);
    }

    /// A change this process did not make (the change feed), or an eviction.
    pub(crate) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.invalidations.fetch_add(1, Ordering::Relaxed);
    }
}

/// The settings of a `Db`'s query cache: [`DbBuilder::query_cache`](crate::DbBuilder::query_cache).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueryCacheConfig {
    /// The most results kept (each a list of rows), when no byte budget is set.
    pub max_entries: Option<u64>,
    /// The most estimated bytes kept: the keys and the lists of row pointers (the rows
    /// themselves are shared with whoever holds them).
    pub max_bytes: Option<u64>,
    /// How long a result is kept after it was stored; `None`: until invalidated or
    /// evicted.
    pub ttl: Option<Duration>,
}

impl Default for QueryCacheConfig {
    fn default() -> Self {
        QueryCacheConfig {
            max_entries: Some(10_000),
            max_bytes: None,
            ttl: None,
        }
    }
}

impl QueryCacheConfig {
    /// 10,000 results, no expiry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps at most `n` results (replaces a byte budget).
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = Some(n);
        self.max_bytes = None;
        self
    }

    /// Keeps at most `bytes` estimated bytes of results (replaces an entry bound).
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self.max_entries = None;
        self
    }

    /// Drops a result `ttl` after it was stored.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let fail = |what: &str| Err(Error::Config(format!("query cache: {what}")));
        if self.ttl.is_some_and(|t| t.is_zero()) {
            return fail("ttl is zero; give a positive ttl, or leave it unset for no expiry");
        }
        match (self.max_entries, self.max_bytes) {
            (Some(0), _) => fail("max_entries is 0; keep room for at least one result"),
            (_, Some(0)) => fail("max_bytes is 0; give a budget of at least a few KiB"),
            (None, None) => fail("no bound: set max_entries or max_bytes"),
            _ => Ok(()),
        }
    }
}

/// A key of the caller's for a cached query, with the tables the query reads.
///
/// ```
/// # use diesel_l2::QueryKey;
/// let key = QueryKey::new("newest-posts").param(20).param(0).reads("posts").reads("users");
/// ```
///
/// Every table the query reads must be declared: a table left out is the one way to be
/// served a stale result. Each must be the table of an entity the `Db` caches.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueryKey {
    key: String,
    tables: Vec<String>,
}

impl QueryKey {
    /// A key named `name`; add its parameters with [`param`](QueryKey::param).
    pub fn new(name: impl Into<String>) -> Self {
        QueryKey {
            key: name.into(),
            tables: Vec::new(),
        }
    }

    /// A parameter of the query (a page, a filter value): part of the key, by its `Debug`
    /// form.
    pub fn param(mut self, value: impl fmt::Debug) -> Self {
        use fmt::Write as _;
        let _ = write!(self.key, "\u{1f}{value:?}");
        self
    }

    /// A table the query reads, by its SQL name.
    pub fn reads(mut self, table: impl Into<String>) -> Self {
        self.tables.push(table.into());
        self
    }
}

/// Counters of the query cache, in [`Stats::queries`](crate::Stats::queries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct QueryStats {
    /// Results kept now (approximate, like moka's count).
    pub entries: u64,
    /// Queries answered from the cache.
    pub hits: u64,
    /// Queries that ran (nothing cached, or the cached result unusable).
    pub misses: u64,
    /// Results stored.
    pub fills: u64,
    /// Results not stored because a write to one of their tables was in flight or
    /// committed while the query ran (C3), or the listener was disconnected (C7).
    pub refused_fills: u64,
    /// Cached results found unusable because a table they read changed.
    pub stale: u64,
    /// Per table: the writes and remote changes that made its cached results unusable.
    pub invalidations: Vec<(String, u64)>,
}

/// One cached result: the rows and the generation of each table read.
#[derive(Clone)]
struct Entry {
    rows: Arc<dyn Any + Send + Sync>,
    /// How many rows, for the byte weigher.
    len: usize,
    stamps: Arc<[(Arc<TableClock>, u64)]>,
}

/// A query about to run: the generations it may store its result under.
pub(crate) struct QueryTicket {
    stamps: Option<Vec<(Arc<TableClock>, u64)>>,
}

/// The query cache of one `Db`.
pub(crate) struct QueryCache {
    entries: Cache<(std::any::TypeId, String), Entry>,
    /// One clock per SQL table of a cached entity, fixed when the `Db` is built.
    clocks: HashMap<String, Arc<TableClock>>,
    trusted: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    fills: AtomicU64,
    refused: AtomicU64,
    stale: AtomicU64,
}

/// Weight of an entry beyond its key and row pointers: moka's bookkeeping, roughly.
const ENTRY_BYTES: usize = 96;

impl QueryCache {
    pub(crate) fn new(config: &QueryCacheConfig, tables: impl IntoIterator<Item = String>) -> Self {
        let mut builder = Cache::builder().name("diesel-l2 queries");
        if let Some(ttl) = config.ttl {
            builder = builder.time_to_live(ttl);
        }
        let builder = match (config.max_bytes, config.max_entries) {
            (Some(bytes), _) => builder.max_capacity(bytes).weigher(
                |key: &(std::any::TypeId, String), e: &Entry| {
                    let rows = e.len * std::mem::size_of::<usize>();
                    u32::try_from(key.1.len() + rows + ENTRY_BYTES).unwrap_or(u32::MAX)
                },
            ),
            (None, entries) => builder.max_capacity(entries.unwrap_or(10_000)),
        };
        let clocks = tables
            .into_iter()
            .map(|t| {
                let clock = Arc::new(TableClock::new(&t));
                (t, clock)
            })
            .collect();
        QueryCache {
            entries: builder.build(),
            clocks,
            trusted: AtomicBool::new(true),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            fills: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            stale: AtomicU64::new(0),
        }
    }

    /// The clock of `table` (a table some cached entity maps).
    pub(crate) fn clock(&self, table: &str) -> Option<Arc<TableClock>> {
        self.clocks.get(table).cloned()
    }

    /// The clocks of `tables`, or an error naming a table no cached entity maps.
    pub(crate) fn clocks_of(&self, tables: &[String]) -> Result<Vec<Arc<TableClock>>> {
        if tables.is_empty() {
            return Err(Error::Config(
                "a cached query must read at least one table: declare them with \
                 QueryKey::reads(\"table\")"
                    .into(),
            ));
        }
        let clocks = &self.clocks;
        let mut out: Vec<Arc<TableClock>> = Vec::with_capacity(tables.len());
        for t in tables {
            let Some(clock) = clocks.get(t.as_str()) else {
                let mut known: Vec<&str> = clocks.keys().map(String::as_str).collect();
                known.sort_unstable();
                return Err(Error::Config(format!(
                    "the query reads table `{t}`, which no cached entity of this Db maps, so \
                     writes to it would not make the cached result unusable; cache its entity \
                     with `.cache::<E>()`, or run this query without the cache (cached tables: {})",
                    known.join(", ")
                )));
            };
            if !out.iter().any(|c| Arc::ptr_eq(c, clock)) {
                out.push(Arc::clone(clock));
            }
        }
        Ok(out)
    }

    /// A usable cached result for `key`, counting the hit or the miss.
    pub(crate) fn lookup<E: Send + Sync + 'static>(
        &self,
        key: &(std::any::TypeId, String),
    ) -> Option<List<E>> {
        if !self.trusted.load(Ordering::Acquire) {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if let Some(entry) = self.entries.get(key) {
            let fresh = entry
                .stamps
                .iter()
                .all(|(clock, g)| clock.generation.load(Ordering::SeqCst) == *g);
            if fresh {
                if let Some(rows) = entry.rows.downcast_ref::<Stored<E>>() {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Some(Arc::clone(&rows.0));
                }
            } else {
                self.stale.fetch_add(1, Ordering::Relaxed);
                self.entries.invalidate(key);
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Before the query runs: the generations its result may be stored under, or none
    /// when a transaction is writing one of the tables (its result could be stale the
    /// moment it commits) or the listener is disconnected.
    pub(crate) fn begin(&self, clocks: &[Arc<TableClock>]) -> QueryTicket {
        let mut stamps = Vec::with_capacity(clocks.len());
        for clock in clocks {
            // Generation first, writers second: a writer that ends in between bumps the
            // generation again, which `finish` sees.
            let g = clock.generation.load(Ordering::SeqCst);
            if clock.writers.load(Ordering::SeqCst) > 0 {
                return QueryTicket { stamps: None };
            }
            stamps.push((Arc::clone(clock), g));
        }
        if !self.trusted.load(Ordering::Acquire) {
            return QueryTicket { stamps: None };
        }
        QueryTicket {
            stamps: Some(stamps),
        }
    }

    /// After the query ran: stores `rows` if no table moved meanwhile (C3).
    pub(crate) fn finish<E: Send + Sync + 'static>(
        &self,
        key: (std::any::TypeId, String),
        ticket: QueryTicket,
        rows: &List<E>,
    ) {
        let Some(stamps) = ticket.stamps else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let unchanged = stamps
            .iter()
            .all(|(clock, g)| clock.generation.load(Ordering::SeqCst) == *g);
        if !unchanged || !self.trusted.load(Ordering::Acquire) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // A write that starts after this check bumps a generation this entry carries:
        // the entry is then never served (`lookup` compares them), so no lock is needed.
        self.entries.insert(
            key,
            Entry {
                rows: Arc::new(Stored(Arc::clone(rows))),
                len: rows.len(),
                stamps: stamps.into(),
            },
        );
        self.fills.fetch_add(1, Ordering::Relaxed);
    }

    /// A change the feed reported (or an eviction) to `table`.
    pub(crate) fn table_changed(&self, table: &str) {
        if let Some(clock) = self.clock(table) {
            clock.changed();
        }
    }

    /// Every table changed (a flush, a reconnection, `evict_everything`).
    pub(crate) fn all_changed(&self) {
        for clock in self.clocks.values() {
            clock.changed();
        }
        self.entries.invalidate_all();
    }

    /// The listener lost (false) or regained (true) its connection (C7).
    pub(crate) fn set_trusted(&self, trusted: bool) {
        if trusted {
            self.all_changed();
        }
        self.trusted.store(trusted, Ordering::Release);
        if !trusted {
            self.all_changed();
        }
    }

    pub(crate) fn stats(&self) -> QueryStats {
        // Settles moka's pending evictions so that `entries` is current.
        self.entries.run_pending_tasks();
        let mut invalidations: Vec<(String, u64)> = self
            .clocks
            .values()
            .map(|c| (c.name.to_string(), c.invalidations.load(Ordering::Relaxed)))
            .collect();
        invalidations.sort();
        QueryStats {
            entries: self.entries.entry_count(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            fills: self.fills.load(Ordering::Relaxed),
            refused_fills: self.refused.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            invalidations,
        }
    }
}

impl<C: R2D2Connection + 'static> Db<C> {
    /// The rows `query` returns, from the query cache when a committed write to no table
    /// it reads came since it was stored (C10); else runs it (one statement) and stores
    /// the result, unless a write to one of its tables was in flight or committed while
    /// it ran (C3).
    ///
    /// The key is the query's SQL with its bind values, so parameters and pages are
    /// distinct entries. The tables come from its `FROM` and `JOIN` clauses and must all
    /// be tables of entities this `Db` caches ([`Error::Config`] names one that is not).
    /// For a query whose SQL does not name its tables (`sql_query`, boxed fragments of
    /// raw SQL), use [`query_keyed`](Db::query_keyed). A hit renders the query's SQL (a
    /// few microseconds) and clones one `Arc`.
    ///
    /// ```
    /// # use diesel::prelude::*;
    /// # use diesel_l2::{Cached, Db};
    /// # diesel::table! { posts (id) { id -> BigInt, version -> BigInt, published -> Bool } }
    /// # #[derive(Queryable, Selectable, Clone, Debug, Cached)]
    /// # #[diesel(table_name = posts)]
    /// # pub struct Post { pub id: i64, pub version: i64, pub published: bool }
    /// # fn main() -> diesel_l2::Result<()> {
    /// # use diesel::connection::SimpleConnection;
    /// # let pool = diesel_l2::sqlite_pool(":memory:", 1)?;
    /// # pool.get().unwrap().batch_execute("CREATE TABLE posts (id INTEGER PRIMARY KEY, version BIGINT NOT NULL, published BOOLEAN NOT NULL)")?;
    /// let db = Db::builder(pool).cache::<Post>().build()?;
    /// let newest = || {
    ///     posts::table
    ///         .filter(posts::published.eq(true))
    ///         .order(posts::id.desc())
    ///         .limit(20)
    ///         .select(Post::as_select())
    /// };
    /// let page = db.query::<Post, _>(newest())?; // runs the query, stores the rows
    /// let again = db.query::<Post, _>(newest())?; // no SQL
    /// assert!(std::sync::Arc::ptr_eq(&page, &again));
    /// db.transaction(|tx| tx.insert(&Post { id: 1, version: 1, published: true }))?;
    /// assert_eq!(db.query::<Post, _>(newest())?.len(), 1); // the write made it unusable
    /// # Ok(()) }
    /// ```
    pub fn query<'q, E, Q>(&self, query: Q) -> Result<List<E>>
    where
        E: CachedOps<C>,
        C::Backend: Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: QueryFragment<C::Backend> + LoadQuery<'q, C, E>,
    {
        let sql = diesel::debug_query::<C::Backend, _>(&query).to_string();
        let key = (std::any::TypeId::of::<E>(), sql);
        let cache = &self.inner.queries;
        if let Some(rows) = cache.lookup::<E>(&key) {
            return Ok(rows);
        }
        let tables = read_tables(&key.1)?;
        self.run_and_store(key, &tables, |conn| query.load(conn))
    }

    /// Like [`query`](Db::query), under a key of the caller's that declares the tables
    /// the query reads: for `sql_query` and anything whose SQL does not name its tables.
    /// A table left out of the key is the one way to be served a stale result.
    pub fn query_keyed<E, F>(&self, key: QueryKey, load: F) -> Result<List<E>>
    where
        E: CachedOps<C>,
        F: FnOnce(&mut C) -> QueryResult<Vec<E>>,
    {
        let QueryKey { key, tables } = key;
        let key = (std::any::TypeId::of::<E>(), key);
        if let Some(rows) = self.inner.queries.lookup::<E>(&key) {
            return Ok(rows);
        }
        self.run_and_store(key, &tables, load)
    }

    fn run_and_store<E, F>(
        &self,
        key: (std::any::TypeId, String),
        tables: &[String],
        load: F,
    ) -> Result<List<E>>
    where
        E: CachedOps<C>,
        F: FnOnce(&mut C) -> QueryResult<Vec<E>>,
    {
        let cache = &self.inner.queries;
        let clocks = cache.clocks_of(tables)?;
        let ticket = cache.begin(&clocks);
        let mut conn = self.inner.checkout()?;
        let conn: &mut C = &mut conn;
        let rows: List<E> = load(conn)?.into_iter().map(Arc::new).collect();
        cache.finish(key, ticket, &rows);
        Ok(rows)
    }

    /// [`query`](Db::query) for async code (feature `tokio`): a stored result is answered
    /// on the calling task (the query's SQL rendered, one lookup, no SQL and no blocking
    /// pool); anything else runs the query on tokio's blocking pool and stores its
    /// result as `query` does (C3, C10).
    #[cfg(feature = "tokio")]
    pub async fn query_async<E, Q>(&self, query: Q) -> Result<List<E>>
    where
        E: CachedOps<C>,
        C::Backend: Default,
        <C::Backend as Backend>::QueryBuilder: Default,
        Q: QueryFragment<C::Backend> + for<'q> LoadQuery<'q, C, E> + Send + 'static,
    {
        let sql = diesel::debug_query::<C::Backend, _>(&query).to_string();
        let key = (std::any::TypeId::of::<E>(), sql);
        if let Some(rows) = self.inner.queries.lookup::<E>(&key) {
            return Ok(rows);
        }
        let tables = read_tables(&key.1)?;
        self.spawn_blocking(move |db| db.run_and_store(key, &tables, |conn| query.load(conn)))
            .await?
    }

    /// The query cache's counters (also in [`Db::stats`]).
    pub fn query_stats(&self) -> QueryStats {
        self.inner.queries.stats()
    }
}

/// A stored result of rows of `E`.
struct Stored<E>(List<E>);

/// The tables a rendered query reads, or the error that says to declare them.
fn read_tables(sql: &str) -> Result<Vec<String>> {
    let tables = tables_of_sql(sql);
    if tables.is_empty() {
        return Err(Error::Config(format!(
            "cannot tell which tables this query reads from its SQL ({sql}); cache it with \
             Db::query_keyed and QueryKey::reads"
        )));
    }
    Ok(tables)
}

/// The tables a rendered query reads: the identifiers after each `FROM` and `JOIN`
/// (diesel quotes them: `"posts"`, `` `posts` ``, `"schema"."posts"`). Words in the
/// bind list (after ` -- binds: `) are not read.
pub(crate) fn tables_of_sql(sql: &str) -> Vec<String> {
    let sql = sql.split(" -- binds: ").next().unwrap_or(sql);
    let bytes = sql.as_bytes();
    let mut out: Vec<String> = Vec::new();
    let upper = sql.to_ascii_uppercase();
    for keyword in ["FROM", "JOIN"] {
        let mut at = 0;
        while let Some(pos) = upper[at..].find(keyword) {
            let start = at + pos;
            at = start + keyword.len();
            let before_ok = start == 0 || !is_word(bytes[start - 1]);
            let after_ok = at < bytes.len() && bytes[at].is_ascii_whitespace();
            if !before_ok || !after_ok {
                continue;
            }
            if let Some(name) = quoted_name(&sql[at..]) {
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
    }
    out
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The last part of a quoted, possibly schema-qualified name at the start of `s`.
fn quoted_name(s: &str) -> Option<String> {
    let mut rest = s.trim_start().trim_start_matches(['(', ' ']);
    let mut last = None;
    loop {
        let quote = rest.chars().next()?;
        if quote != '"' && quote != '`' {
            return last;
        }
        let end = rest[1..].find(quote)? + 1;
        last = Some(rest[1..end].to_string());
        rest = &rest[end + 1..];
        if let Some(after_dot) = rest.strip_prefix('.') {
            rest = after_dot;
        } else {
            return last;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tables_of_sql;

    #[test]
    fn tables_come_from_from_and_join_clauses() {
        assert_eq!(
            tables_of_sql(
                r#"SELECT "posts"."id" FROM "posts" WHERE "posts"."published" = $1 ORDER BY "posts"."created_at" DESC LIMIT $2 -- binds: [true, 20]"#
            ),
            vec!["posts"]
        );
        assert_eq!(
            tables_of_sql(
                r#"SELECT 1 FROM ("posts" INNER JOIN "users" ON "posts"."user_id" = "users"."id") WHERE "posts"."id" IN (SELECT "comments"."post_id" FROM "comments")"#
            ),
            vec!["posts", "comments", "users"]
        );
        assert_eq!(
            tables_of_sql(
                "SELECT `posts`.`id` FROM `blog`.`posts` -- binds: [\"FROM \\\"users\\\"\"]"
            ),
            vec!["posts"]
        );
        assert!(tables_of_sql("SELECT 1").is_empty());
    }
}
