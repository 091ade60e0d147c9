//! What the benchmarks share: the bench entity, throwaway databases with 100,000 rows of
//! ~200 bytes, the raw diesel baselines, and timing helpers.
//!
//! Deliberately independent of `tests/common`: benchmarks must build and run on their own.

// Each bench target uses a different part of this module.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diesel::connection::{Instrumentation, InstrumentationEvent, SimpleConnection};
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, R2D2Connection};
use diesel_l2::Cached;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

diesel::table! {
    bench_rows (id) {
        id -> BigInt,
        version -> BigInt,
        name -> Text,
        email -> Text,
        city -> Text,
        bio -> Text,
        score -> BigInt,
    }
}

/// The bench entity: about 200 bytes of column data per row (three integers, four texts).
///
/// The region is sized above the table so that P1/P2 measure hits on a full table; the
/// capacity and Zipf sections override it with `cache_with`.
#[derive(
    Queryable, Selectable, Clone, Debug, PartialEq, Cached, serde::Serialize, serde::Deserialize,
)]
#[diesel(table_name = bench_rows)]
#[cache(region = "bench_rows", max_entries = 2_000_000)]
pub struct BenchRow {
    pub id: i64,
    pub version: i64,
    pub name: String,
    pub email: String,
    pub city: String,
    pub bio: String,
    pub score: i64,
}

/// A partial change of a [`BenchRow`], as applications write them (P11).
#[derive(AsChangeset, Clone, Debug)]
#[diesel(table_name = bench_rows)]
pub struct EmailChange {
    pub email: String,
}

diesel::table! {
    /// P12: children of a parent, 20 per parent.
    bench_children (id) {
        id -> BigInt,
        version -> BigInt,
        parent_id -> BigInt,
        body -> Text,
    }
}

/// P12's child entity: `#[cache(index)]` on `parent_id` generates `BenchChildByParentId`.
#[derive(Queryable, Selectable, Insertable, Clone, Debug, PartialEq, Cached)]
#[diesel(table_name = bench_children)]
#[cache(region = "bench_children", max_entries = 1_000_000)]
pub struct BenchChild {
    pub id: i64,
    pub version: i64,
    #[cache(index)]
    pub parent_id: i64,
    pub body: String,
}

/// Children per parent in P12.
pub const CHILDREN: i64 = 20;

/// Creates `bench_children` with `parents * CHILDREN` rows (ids `1..`, parent
/// `(id - 1) / CHILDREN + 1`) and an index on `parent_id`.
pub fn create_children<C: R2D2Connection>(conn: &mut C, parents: i64) -> QueryResult<()> {
    conn.batch_execute(
        "CREATE TABLE bench_children (id BIGINT PRIMARY KEY NOT NULL, version BIGINT NOT NULL, \
         parent_id BIGINT NOT NULL, body TEXT NOT NULL); \
         CREATE INDEX bench_children_parent ON bench_children (parent_id)",
    )?;
    let total = parents * CHILDREN;
    let mut id = 1;
    while id <= total {
        let end = (id + 499).min(total);
        let values: Vec<String> = (id..=end)
            .map(|i| format!("({i}, 1, {}, 'child {i} of a post, about eighty bytes of text like a short comment')", (i - 1) / CHILDREN + 1))
            .collect();
        conn.batch_execute(&format!(
            "INSERT INTO bench_children (id, version, parent_id, body) VALUES {}",
            values.join(", ")
        ))?;
        id = end + 1;
    }
    Ok(())
}

/// P12's plain diesel baselines and its cached page query, per backend.
pub trait RawLists: R2D2Connection + Send + 'static {
    /// `SELECT … FROM bench_children WHERE parent_id = ? ORDER BY id`.
    fn children_of(&mut self, parent: i64) -> QueryResult<Vec<BenchChild>>;
    /// `SELECT … FROM bench_children ORDER BY id DESC LIMIT 20 OFFSET ?`.
    fn newest_page(&mut self, offset: i64) -> QueryResult<Vec<BenchChild>>;
    /// `BEGIN; UPDATE bench_children SET body = ?, version = version + 1 WHERE id = ? AND
    /// version = ? RETURNING …; COMMIT`.
    fn update_child(&mut self, child: &BenchChild) -> QueryResult<Option<BenchChild>>;
    /// The same page through `Db::query`.
    fn cached_page(
        db: &diesel_l2::Db<Self>,
        offset: i64,
    ) -> diesel_l2::Result<diesel_l2::List<BenchChild>>;
}

macro_rules! impl_raw_lists {
    ($conn:ty) => {
        impl RawLists for $conn {
            fn children_of(&mut self, parent: i64) -> QueryResult<Vec<BenchChild>> {
                bench_children::table
                    .filter(bench_children::parent_id.eq(parent))
                    .order(bench_children::id.asc())
                    .select(BenchChild::as_select())
                    .load(self)
            }

            fn newest_page(&mut self, offset: i64) -> QueryResult<Vec<BenchChild>> {
                bench_children::table
                    .order(bench_children::id.desc())
                    .limit(CHILDREN)
                    .offset(offset)
                    .select(BenchChild::as_select())
                    .load(self)
            }

            fn update_child(&mut self, child: &BenchChild) -> QueryResult<Option<BenchChild>> {
                self.transaction(|c| {
                    diesel::update(
                        bench_children::table
                            .filter(bench_children::id.eq(child.id))
                            .filter(bench_children::version.eq(child.version)),
                    )
                    .set((
                        bench_children::version.eq(child.version + 1),
                        bench_children::parent_id.eq(child.parent_id),
                        bench_children::body.eq(&child.body),
                    ))
                    .returning(BenchChild::as_returning())
                    .get_result(c)
                    .optional()
                })
            }

            fn cached_page(
                db: &diesel_l2::Db<Self>,
                offset: i64,
            ) -> diesel_l2::Result<diesel_l2::List<BenchChild>> {
                db.query::<BenchChild, _>(
                    bench_children::table
                        .order(bench_children::id.desc())
                        .limit(CHILDREN)
                        .offset(offset)
                        .select(BenchChild::as_select()),
                )
            }
        }
    };
}

#[cfg(feature = "sqlite")]
impl_raw_lists!(diesel::sqlite::SqliteConnection);
#[cfg(feature = "postgres")]
impl_raw_lists!(diesel::pg::PgConnection);

/// 110 characters appended to every `bio`, so a row carries ~200 bytes of data.
const FILLER: &str = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod \
                      tempor incididunt ut labore et dolore.";

const DDL: &str = "CREATE TABLE bench_rows (
    id BIGINT PRIMARY KEY NOT NULL,
    version BIGINT NOT NULL,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    city TEXT NOT NULL,
    bio TEXT NOT NULL,
    score BIGINT NOT NULL)";

/// The column expressions of a generated row, given the SQL name of its number.
fn row_sql(x: &str) -> String {
    format!(
        "{x}, 1, 'name-' || {x}, 'user' || {x} || '@example.com', 'city-' || ({x} % 1000), \
         'bio-' || {x} || '-' || '{FILLER}', {x} * 7"
    )
}

/// True when `DIESEL_L2_BENCH_QUICK` asks for the CI-sized run.
pub fn quick() -> bool {
    std::env::var("DIESEL_L2_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A name nobody else uses, for schemas and key prefixes.
pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// Statements sent by the connections of one pool (diesel instrumentation), so P5 can
/// count SQL without a proxy. Only pools built with `counted` carry it: it costs a
/// callback per statement.
#[derive(Clone, Default)]
pub struct StatementCounter(Arc<AtomicU64>);

impl StatementCounter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    fn instrumentation(&self) -> impl Instrumentation {
        let n = Arc::clone(&self.0);
        move |event: InstrumentationEvent<'_>| {
            if let InstrumentationEvent::StartQuery { .. } = event {
                n.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// Per-connection setup: the backend's session SQL, then the optional statement counter.
#[derive(Debug)]
struct Setup {
    init_sql: String,
    counter: Option<Arc<AtomicU64>>,
}

impl<C: R2D2Connection + 'static> CustomizeConnection<C, diesel::r2d2::Error> for Setup {
    fn on_acquire(&self, conn: &mut C) -> Result<(), diesel::r2d2::Error> {
        if !self.init_sql.is_empty() {
            conn.batch_execute(&self.init_sql)
                .map_err(diesel::r2d2::Error::QueryError)?;
        }
        if let Some(n) = &self.counter {
            conn.set_instrumentation(StatementCounter(Arc::clone(n)).instrumentation());
        }
        Ok(())
    }
}

/// Pool options of a bench database.
#[derive(Clone, Copy)]
pub struct PoolOptions {
    pub max_size: u32,
    /// r2d2's default is to run a test query (`SELECT 1`) on every checkout; the
    /// benchmarks turn it off so the baselines are as fast as a careful user makes them,
    /// and report the default separately.
    pub test_on_check_out: bool,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            max_size: 4,
            test_on_check_out: false,
        }
    }
}

/// One throwaway database holding `bench_rows`, removed on drop.
pub struct BenchDb<C: R2D2Connection + 'static> {
    pub url: String,
    pub label: &'static str,
    init_sql: String,
    cleanup: Cleanup,
    _marker: std::marker::PhantomData<fn() -> C>,
}

enum Cleanup {
    Sqlite(tempfile::TempDir),
    #[cfg(feature = "postgres")]
    Postgres {
        url: String,
        schema: String,
    },
}

impl<C: R2D2Connection + 'static> BenchDb<C> {
    /// A pool on this database; `counter` installs statement counting on its connections.
    pub fn pool(
        &self,
        opts: PoolOptions,
        counter: Option<&StatementCounter>,
    ) -> Pool<ConnectionManager<C>> {
        Pool::builder()
            .max_size(opts.max_size)
            .min_idle(Some(1))
            .test_on_check_out(opts.test_on_check_out)
            .connection_timeout(Duration::from_secs(30))
            .connection_customizer(Box::new(Setup {
                init_sql: self.init_sql.clone(),
                counter: counter.map(|c| Arc::clone(&c.0)),
            }))
            .build(ConnectionManager::<C>::new(self.url.clone()))
            .expect("bench pool")
    }
}

#[cfg(feature = "postgres")]
impl<C: R2D2Connection + 'static> Drop for BenchDb<C> {
    fn drop(&mut self) {
        if let Cleanup::Postgres { url, schema } = &self.cleanup {
            match diesel::pg::PgConnection::establish(url) {
                Ok(mut c) => {
                    if let Err(e) = c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")) {
                        eprintln!("warning: DROP SCHEMA {schema}: {e}");
                    }
                }
                Err(e) => eprintln!("warning: cannot drop schema {schema}: {e}"),
            }
        }
    }
}

/// SQLite on a file in WAL mode with `synchronous=NORMAL`, the usual production setting.
#[cfg(feature = "sqlite")]
pub fn sqlite(rows: i64) -> BenchDb<diesel::sqlite::SqliteConnection> {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = dir.path().join("bench.db").to_string_lossy().into_owned();
    let init_sql = "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
                    PRAGMA synchronous = NORMAL;"
        .to_string();
    let db: BenchDb<diesel::sqlite::SqliteConnection> = BenchDb {
        url,
        label: "SQLite (file, WAL, synchronous=NORMAL)",
        init_sql,
        cleanup: Cleanup::Sqlite(dir),
        _marker: std::marker::PhantomData,
    };
    let pool = db.pool(PoolOptions::default(), None);
    let mut conn = pool.get().expect("sqlite connection");
    conn.batch_execute(DDL).expect("create bench_rows");
    conn.batch_execute(&format!(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows}) \
         INSERT INTO bench_rows SELECT {} FROM c; ANALYZE;",
        row_sql("x")
    ))
    .expect("populate bench_rows");
    db
}

/// A fresh schema in the database of `DIESEL_L2_PG_URL`, or `None` when it is unset.
#[cfg(feature = "postgres")]
pub fn postgres(rows: i64) -> Option<BenchDb<diesel::pg::PgConnection>> {
    let url = std::env::var("DIESEL_L2_PG_URL").ok()?;
    let schema = unique_name("l2bench");
    let mut admin = diesel::pg::PgConnection::establish(&url)
        .unwrap_or_else(|e| panic!("cannot connect to DIESEL_L2_PG_URL: {e}"));
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .expect("create bench schema");
    let db = BenchDb {
        url: url.clone(),
        label: "PostgreSQL (loopback)",
        init_sql: format!("SET search_path TO {schema}"),
        cleanup: Cleanup::Postgres {
            url,
            schema: schema.clone(),
        },
        _marker: std::marker::PhantomData,
    };
    admin
        .batch_execute(&format!(
            "SET search_path TO {schema}; {DDL}; \
             INSERT INTO bench_rows SELECT {} FROM generate_series(1, {rows}) g; \
             ANALYZE bench_rows;",
            row_sql("g")
        ))
        .expect("populate bench_rows");
    Some(db)
}

/// The plain diesel code a user writes without the cache: the baselines.
pub trait Raw: R2D2Connection + Send + 'static {
    /// `SELECT … WHERE id = ? LIMIT 1`.
    fn select_one(&mut self, id: i64) -> QueryResult<Option<BenchRow>>;
    /// `SELECT … WHERE id IN (…)` / `= ANY($1)`.
    fn select_many(&mut self, ids: &[i64]) -> QueryResult<Vec<BenchRow>>;
    /// `BEGIN; UPDATE … SET every column WHERE id = ? AND version = ? RETURNING …; COMMIT`.
    fn versioned_update(&mut self, row: &BenchRow) -> QueryResult<Option<BenchRow>>;
    /// `BEGIN; UPDATE … SET <changes> WHERE id = ? RETURNING …; COMMIT`: diesel's own
    /// `AsChangeset` update (P11's baseline).
    fn changeset_update(&mut self, id: i64, changes: &EmailChange) -> QueryResult<BenchRow>;
}

macro_rules! impl_raw {
    ($conn:ty) => {
        impl Raw for $conn {
            fn select_one(&mut self, id: i64) -> QueryResult<Option<BenchRow>> {
                bench_rows::table
                    .filter(bench_rows::id.eq(id))
                    .select(BenchRow::as_select())
                    .first(self)
                    .optional()
            }

            fn select_many(&mut self, ids: &[i64]) -> QueryResult<Vec<BenchRow>> {
                bench_rows::table
                    .filter(bench_rows::id.eq_any(ids))
                    .select(BenchRow::as_select())
                    .load(self)
            }

            fn versioned_update(&mut self, row: &BenchRow) -> QueryResult<Option<BenchRow>> {
                self.transaction(|c| {
                    diesel::update(
                        bench_rows::table
                            .filter(bench_rows::id.eq(row.id))
                            .filter(bench_rows::version.eq(row.version)),
                    )
                    .set((
                        bench_rows::version.eq(row.version + 1),
                        bench_rows::name.eq(&row.name),
                        bench_rows::email.eq(&row.email),
                        bench_rows::city.eq(&row.city),
                        bench_rows::bio.eq(&row.bio),
                        bench_rows::score.eq(row.score),
                    ))
                    .returning(BenchRow::as_returning())
                    .get_result(c)
                    .optional()
                })
            }

            fn changeset_update(
                &mut self,
                id: i64,
                changes: &EmailChange,
            ) -> QueryResult<BenchRow> {
                self.transaction(|c| {
                    diesel::update(bench_rows::table.find(id))
                        .set(changes)
                        .returning(BenchRow::as_returning())
                        .get_result(c)
                })
            }
        }
    };
}

#[cfg(feature = "sqlite")]
impl_raw!(diesel::sqlite::SqliteConnection);
#[cfg(feature = "postgres")]
impl_raw!(diesel::pg::PgConnection);

/// `n` uniformly random ids in `1..=rows`, from a fixed seed so runs are comparable.
/// A `Db` caching rows `1..=rows` from `pool`, and a plain moka cache holding the same
/// `Arc`s: the two sides of the hit comparisons.
pub fn cached_pair<C>(
    pool: Pool<ConnectionManager<C>>,
    rows: i64,
) -> (diesel_l2::Db<C>, moka::sync::Cache<i64, Arc<BenchRow>>)
where
    C: R2D2Connection + 'static,
    BenchRow: diesel_l2::CachedOps<C>,
{
    // `DIESEL_L2_BENCH_P4_TRACK_EVICTIONS=0`: the region without its eviction listener.
    let track = std::env::var("DIESEL_L2_BENCH_P4_TRACK_EVICTIONS").map_or(true, |v| v != "0");
    let db = diesel_l2::Db::builder(pool)
        .cache_with::<BenchRow>(|c| c.track_evictions(track))
        .build()
        .expect("bench db");
    let moka = moka::sync::Cache::builder().max_capacity(2_000_000).build();
    let all: Vec<i64> = (1..=rows).collect();
    for chunk in all.chunks(10_000) {
        for row in db
            .find_many::<BenchRow>(chunk)
            .expect("prefill")
            .into_iter()
            .flatten()
        {
            moka.insert(row.id, row);
        }
    }
    (db, moka)
}

pub fn random_ids(n: usize, rows: i64, seed: u64) -> Vec<i64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(1..=rows)).collect()
}

/// Median of `v` (sorts it).
pub fn median(v: &mut [f64]) -> f64 {
    assert!(!v.is_empty(), "median of nothing");
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Times `rounds` batches of calls of `ours` and of `base`, alternating which side
/// goes first each round so that drift (frequency, other load) hits both alike. Returns
/// the median nanoseconds per call of each side. `i` is the global call index, for keys.
pub fn interleaved(
    rounds: usize,
    ours_batch: usize,
    base_batch: usize,
    mut ours: impl FnMut(usize),
    mut base: impl FnMut(usize),
) -> (f64, f64) {
    let (mut a, mut b) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    let mut i = 0;
    let time = |f: &mut dyn FnMut(usize), i: &mut usize, batch: usize| {
        let start = Instant::now();
        for _ in 0..batch {
            f(*i);
            *i += 1;
        }
        start.elapsed().as_nanos() as f64 / batch as f64
    };
    for r in 0..rounds {
        if r % 2 == 0 {
            a.push(time(&mut ours, &mut i, ours_batch));
            b.push(time(&mut base, &mut i, base_batch));
        } else {
            b.push(time(&mut base, &mut i, base_batch));
            a.push(time(&mut ours, &mut i, ours_batch));
        }
    }
    (median(&mut a), median(&mut b))
}
