//! Issue 3: a randomized concurrent workload with a history checker (see
//! `tests/consistency/`), on SQLite, PostgreSQL and MariaDB, against diesel-l2 and against a
//! naive cache-aside doing the same operations.
//!
//! - `bounded` (CI): at most about 20 s per cache per backend in a debug build. diesel-l2
//!   must show zero violations of every kind; the naive baseline's counts are printed
//!   next to them.
//! - `soak` (ignored): the long run, printing the figures table of the README:
//!
//! ```text
//! DIESEL_L2_SOAK_OPS=1000000 cargo test --release --all-features --test consistency_history -- --ignored --nocapture soak
//! ```
//!
//! Knobs: `DIESEL_L2_CONSISTENCY_OPS` / `DIESEL_L2_CONSISTENCY_SECS` (bounded run, per
//! cache), `DIESEL_L2_SOAK_OPS` / `DIESEL_L2_SOAK_SECS` (diesel-l2 soak),
//! `DIESEL_L2_SOAK_NAIVE_OPS` (naive soak, default 100,000), `DIESEL_L2_SEED` (replays a
//! run's random choices; thread interleavings still vary).

mod common;
mod consistency;

use std::time::Duration;

use consistency::naive::Naive;
use consistency::ours::Ours;
use consistency::workload::{self, CommitFailure, Config, Figures};
use diesel::r2d2::R2D2Connection;
use diesel_l2::{CachedOps, Db};

use common::models::{Tag, User};
use common::{Backend, TestDb};

/// A test hook (feature `test-hooks`), or nothing.
#[cfg(feature = "test-hooks")]
pub type Hook = diesel_l2::testing::Hook;
#[cfg(not(feature = "test-hooks"))]
pub type Hook = ();

/// The shared tier's settings (feature `redis`), or nothing.
#[cfg(feature = "redis")]
pub type SharedTier = diesel_l2::shared::SharedConfig;
#[cfg(not(feature = "redis"))]
pub type SharedTier = ();

/// Redis faults for the adversaries' run (C9), on a `redis-server` of the run's own:
/// connections killed, the server paused past the calls' timeout, everything flushed, or
/// memory squeezed so that Redis evicts entries, fences, leases and the generation key.
#[cfg(feature = "redis")]
struct RedisFaults {
    redis: common::redis::PrivateRedis,
    squeezed: std::sync::atomic::AtomicBool,
    injected: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

#[cfg(feature = "redis")]
impl RedisFaults {
    fn inject(&self, rng: &mut fastrand::Rng) {
        use std::sync::atomic::Ordering;
        let kind = match rng.u8(0..10) {
            0..=2 => "CLIENT KILL",
            3..=5 => "CLIENT PAUSE",
            6 => "FLUSHALL",
            _ => "maxmemory",
        };
        let mut con = match redis::Client::open(self.redis.url()).and_then(|c| c.get_connection()) {
            Ok(c) => c,
            Err(_) => return,
        };
        let done: redis::RedisResult<redis::Value> = match kind {
            "CLIENT KILL" => redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("normal")
                .query(&mut con),
            // Longer than the calls' timeout: they fail and the breaker opens.
            "CLIENT PAUSE" => redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(rng.u32(20..120))
                .arg("ALL")
                .query(&mut con),
            "FLUSHALL" => redis::cmd("FLUSHALL").query(&mut con),
            _ => {
                if self.squeezed.swap(false, Ordering::AcqRel) {
                    redis::cmd("CONFIG")
                        .arg("SET")
                        .arg("maxmemory")
                        .arg(0)
                        .query(&mut con)
                } else {
                    let info: String = redis::cmd("INFO")
                        .arg("memory")
                        .query(&mut con)
                        .unwrap_or_default();
                    let used: u64 = info
                        .lines()
                        .find_map(|l| l.strip_prefix("used_memory:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(1 << 20);
                    self.squeezed.store(true, Ordering::Release);
                    redis::cmd("CONFIG")
                        .arg("SET")
                        .arg("maxmemory")
                        .arg(used + rng.u64(2_000..20_000))
                        .arg("maxmemory-policy")
                        .arg("allkeys-lru")
                        .query(&mut con)
                }
            }
        };
        if done.is_ok() {
            *self.injected.lock().unwrap().entry(kind).or_default() += 1;
        }
    }
}

/// `users`: 4 entries for 8 hot keys (plus re-inserted ids) in the main cache, so size
/// evictions race with writes and fills, and a batch window of 3, so rows read by
/// `find_many` and lists are pushed out of it, or moved to the main cache by a read, while
/// writes race with them. `tags`: a 30 ms ttl (so no window) and 6 entries.
const USERS_MAX: u64 = 4;
const USERS_WINDOW: u64 = 3;
const TAGS_MAX: u64 = 6;
const TAGS_TTL: Duration = Duration::from_millis(30);
/// `users` in the cross-process run: 16 entries for 24 hot and 4 re-insert keys.
const LISTENING_USERS_MAX: u64 = 16;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
}

fn failure(backend: Backend) -> CommitFailure {
    match backend {
        Backend::Sqlite => CommitFailure::SqliteDeferredFk,
        Backend::Postgres => CommitFailure::PgDeferredFk,
        Backend::Mysql => CommitFailure::MysqlCheck,
    }
}

fn prepare<C: R2D2Connection + 'static>(t: &TestDb<C>) -> CommitFailure {
    let f = failure(t.backend);
    if let Some(sql) = f.setup_sql() {
        t.exec(sql);
    }
    f
}

pub fn ours<C>(t: &TestDb<C>) -> Ours<C>
where
    C: R2D2Connection + 'static,
    User: CachedOps<C>,
    Tag: CachedOps<C>,
    common::models::UserByBio: diesel_l2::IndexOps<C>,
    common::models::UserByEmail: diesel_l2::UniqueOps<C>,
{
    let db = Db::builder(t.pool.clone())
        .cache_with::<User>(|c| {
            c.max_entries(USERS_MAX + USERS_WINDOW)
                .batch_window(USERS_WINDOW)
        })
        .cache_with::<Tag>(|c| c.max_entries(TAGS_MAX).ttl(TAGS_TTL))
        .build()
        .expect("valid regions");
    // Small batches and a short wait: the workload's threads meet in batches often.
    let batcher = db
        .batcher(diesel_l2::BatchConfig::new(
            8,
            std::time::Duration::from_millis(1),
        ))
        .expect("batcher");
    Ours { db, batcher }
}

pub fn naive<C>(t: &TestDb<C>) -> Naive<C>
where
    C: R2D2Connection + 'static,
{
    Naive::new(t.pool.clone(), USERS_MAX, TAGS_MAX, TAGS_TTL)
}

/// A diesel-l2 `Db` over `pool` that listens for changes (C7), with `ours`' regions, in
/// the shared tier when `shared` is given (C9), with test hook `hook`.
pub fn listening<C>(
    t: &TestDb<C>,
    pool: common::TestPool<C>,
    shared: Option<&SharedTier>,
    hook: Option<Hook>,
) -> Ours<C>
where
    C: common::TestBackend + diesel_l2::ChangeFeed,
    User: CachedOps<C>,
    Tag: CachedOps<C>,
    common::models::UserByBio: diesel_l2::IndexOps<C>,
    common::models::UserByEmail: diesel_l2::UniqueOps<C>,
{
    let mut listen =
        diesel_l2::ListenConfig::new(t.url.clone()).poll_interval(Duration::from_millis(1));
    if let Some(schema) = t.pg_schema() {
        listen = listen.schema(schema);
    }
    // Room for the hot keys and the re-insert keys, so tombstones and negative entries
    // live long enough to meet remote re-inserts; tags keep the small, short-lived region.
    #[cfg_attr(not(any(feature = "redis", feature = "test-hooks")), allow(unused_mut))]
    let mut builder = Db::builder(pool)
        .cache_with::<User>(|c| {
            c.max_entries(LISTENING_USERS_MAX + USERS_WINDOW)
                .batch_window(USERS_WINDOW)
        })
        .cache_with::<Tag>(|c| c.max_entries(TAGS_MAX).ttl(TAGS_TTL))
        .listen(listen);
    #[cfg(feature = "redis")]
    if let Some(cfg) = shared {
        builder = builder
            .shared::<User>()
            .shared::<Tag>()
            .shared_tier(cfg.clone());
    }
    #[cfg(not(feature = "redis"))]
    let _ = shared;
    #[cfg(feature = "test-hooks")]
    if let Some(hook) = hook {
        builder = builder.test_hook(hook);
    }
    #[cfg(not(feature = "test-hooks"))]
    let _ = hook;
    let db = builder
        .build()
        .expect("valid regions and the change feed installed");
    let batcher = db
        .batcher(diesel_l2::BatchConfig::new(
            8,
            std::time::Duration::from_millis(1),
        ))
        .expect("batcher");
    Ours { db, batcher }
}

/// `SELECT version, <text column> AS payload`.
#[derive(diesel::QueryableByName)]
struct VersionRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    version: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    payload: String,
}

/// A plain connection writing plain SQL (C7 adversary).
struct Plain<C>(C);

impl<C> workload::PlainSql for Plain<C>
where
    C: diesel::Connection + diesel::connection::LoadConnection + Send + 'static,
    VersionRow: diesel::deserialize::QueryableByName<C::Backend>,
    diesel::query_builder::SqlQuery: diesel::query_builder::QueryFragment<C::Backend>,
{
    fn update(&mut self, update: &str, read_back: &str) -> Result<Option<(i64, String)>, String> {
        use diesel::RunQueryDsl;
        self.0
            .transaction(|c| {
                c.batch_execute(update)?;
                diesel::sql_query(read_back).load::<VersionRow>(c)
            })
            .map(|rows| rows.into_iter().next().map(|r| (r.version, r.payload)))
            .map_err(|e: diesel::result::Error| e.to_string())
    }

    fn delete(
        &mut self,
        read: &str,
        delete: &dyn Fn(i64) -> String,
    ) -> Result<Option<(i64, String)>, String> {
        use diesel::RunQueryDsl;
        self.0
            .transaction(|c| {
                let Some(row) = diesel::sql_query(read)
                    .load::<VersionRow>(c)?
                    .into_iter()
                    .next()
                else {
                    return Ok(None);
                };
                let n = diesel::sql_query(delete(row.version)).execute(c)?;
                Ok((n == 1).then_some((row.version, row.payload)))
            })
            .map_err(|e: diesel::result::Error| e.to_string())
    }

    fn insert(&mut self, insert: &str) -> bool {
        self.0.batch_execute(insert).is_ok()
    }
}

/// Runs both caches, each on its own fresh database, and prints the figures.
fn both<C>(t: &TestDb<C>, ours_cfg: &Config, naive_cfg: &Config) -> (Figures, Figures)
where
    C: common::TestBackend + diesel_l2::OperationLog,
    User: CachedOps<C>,
    Tag: CachedOps<C>,
    common::models::UserByBio: diesel_l2::IndexOps<C>,
    common::models::UserByEmail: diesel_l2::UniqueOps<C>,
{
    let f = prepare(t);
    println!("[{}] seed {}", t.backend, ours_cfg.seed);
    let ours_fig = workload::run(&ours(t), ours_cfg, f);
    println!("{}", ours_fig.report(t.backend.name()));
    let other = t.fresh();
    prepare(&other);
    let naive_fig = workload::run(&naive(&other), naive_cfg, f);
    println!("{}", naive_fig.report(t.backend.name()));
    println!(
        "{}",
        workload::table(&[
            (t.backend.to_string(), ours_fig.clone()),
            (t.backend.to_string(), naive_fig.clone()),
        ])
    );
    if naive_fig.counts.violations() == 0 {
        println!(
            "[{}] the naive baseline showed no violation in this run: its races (a fill landing after a commit's invalidation) need a load to be overtaken by a write; short runs on a fast backend can miss them",
            t.backend
        );
    }
    (ours_fig, naive_fig)
}

fn assert_clean(backend: Backend, f: &Figures) {
    assert_eq!(
        f.counts.violations(),
        0,
        "[{backend}] diesel-l2 violated the contract: {}\n{}",
        f.counts,
        f.examples.join("\n")
    );
    assert!(
        f.counts.reads_checked > 0 && f.counts.writes_committed > 0,
        "[{backend}] the workload did nothing: {}",
        f.counts
    );
}

/// The adversaries' run (see `adversaries`), bounded by `cfg`.
fn run_adversaries<C>(t: &TestDb<C>, cfg: &Config)
where
    C: common::TestBackend + diesel_l2::ChangeFeed + diesel_l2::OperationLog,
    User: CachedOps<C>,
    Tag: CachedOps<C>,
    common::models::UserByBio: diesel_l2::IndexOps<C>,
    common::models::UserByEmail: diesel_l2::UniqueOps<C>,
    Plain<C>: workload::PlainSql,
{
    let f = prepare(t);
    println!("[{}] adversaries, seed {}", t.backend, cfg.seed);
    // C9: both `Db`s and a third, dying writer share a Redis of the run's own, into
    // which faults are injected throughout.
    #[cfg(feature = "redis")]
    let faults = common::redis::PrivateRedis::start(&[]).map(|redis| RedisFaults {
        redis,
        squeezed: Default::default(),
        injected: Default::default(),
    });
    #[cfg(feature = "redis")]
    let shared: Option<SharedTier> = faults.as_ref().map(|f| {
        f.redis
            .config()
            .timeout(Duration::from_millis(50))
            .breaker(3, Duration::from_millis(50))
            .lease_wait(Duration::from_millis(5))
            .fence_and_lease_ttl(Duration::from_millis(500), Duration::from_millis(500))
    });
    #[cfg(not(feature = "redis"))]
    let shared: Option<SharedTier> = None;
    // The first `Db` lets the re-insert adversary in between a delete's COMMIT and its
    // cache work (see `workload::Reinserts`).
    #[cfg(feature = "test-hooks")]
    let a_hook = Some(diesel_l2::testing::Hook::new(|p| {
        if *p == diesel_l2::testing::Point::AfterCommit {
            workload::release_held_gate();
        }
    }));
    #[cfg(not(feature = "test-hooks"))]
    let a_hook = None;
    let a = listening(t, t.pool.clone(), shared.as_ref(), a_hook);
    let (pool_b, _) = t.another_pool();
    let b = listening(t, pool_b, shared.as_ref(), None);
    // A third `Db` whose writers die between COMMIT and their cache work (C9: the
    // fences they leave in Redis; C1: nothing of theirs is applied locally).
    #[cfg(feature = "test-hooks")]
    let w = {
        let dying_hook = diesel_l2::testing::Hook::new(|p| {
            if *p == diesel_l2::testing::Point::AfterCommit
                && std::thread::current().name() == Some(workload::DYING_WRITER)
            {
                std::panic::panic_any(workload::INJECTED_PANIC);
            }
        });
        let (pool_w, _) = t.another_pool();
        Some(listening(t, pool_w, shared.as_ref(), Some(dying_hook)))
    };
    #[cfg(not(feature = "test-hooks"))]
    let w: Option<Ours<C>> = None;
    // DIESEL_L2_REDIS_FAULTS=off runs the shared tier without faults.
    #[cfg(feature = "redis")]
    let fault_free = std::env::var("DIESEL_L2_REDIS_FAULTS").is_ok_and(|v| v == "off");
    #[cfg(feature = "redis")]
    let inject = faults
        .as_ref()
        .filter(|_| !fault_free)
        .map(|f| move |rng: &mut fastrand::Rng| f.inject(rng));
    #[cfg(feature = "redis")]
    let inject_ref = inject
        .as_ref()
        .map(|f| f as &(dyn Fn(&mut fastrand::Rng) + Sync));
    #[cfg(not(feature = "redis"))]
    let inject_ref = None;
    let adv = workload::Adversaries {
        second: &b,
        plain: vec![
            Box::new(Plain(t.raw_connection())),
            Box::new(Plain(t.raw_connection())),
        ],
        delta: Duration::from_secs(1),
        settle: Duration::from_millis(200),
        dying: w.as_ref().map(|w| w as &dyn consistency::Store),
        faults: inject_ref,
    };
    let (fig, lag) = workload::run_adversarial(&a, adv, cfg, f);
    #[cfg(feature = "redis")]
    if let Some(faults) = &faults {
        let region = |db: &Db<C>| db.region_stats::<User>().unwrap().shared.unwrap();
        println!(
            "[{}] C9: Redis faults injected {:?}; shared users a {:?}; b {:?}; tier a {:?}",
            t.backend,
            faults.injected.lock().unwrap(),
            region(&a.db),
            region(&b.db),
            a.db.stats().shared.unwrap()
        );
    }
    println!("{}", fig.report(t.backend.name()));
    println!(
        "[{}] C7: largest lag of a read behind a write made elsewhere: {:.2} ms ({} lagged reads of {}); bound Δ = 1 s",
        t.backend,
        lag.max_lag as f64 / 1e6,
        lag.lagged_reads,
        fig.counts.reads_checked
    );
    println!("  second Db: {:?}", consistency::Store::cache_figures(&b));
    println!(
        "  listeners: first {:?}; second {:?}",
        a.db.stats().listener,
        b.db.stats().listener
    );
    assert_clean(t.backend, &fig);
}

backend_tests! {
    /// The bounded CI run: zero violations for diesel-l2; the naive baseline is reported.
    fn bounded(t) {
        let ops = env_u64("DIESEL_L2_CONSISTENCY_OPS").unwrap_or(30_000);
        let secs = env_u64("DIESEL_L2_CONSISTENCY_SECS").unwrap_or(20);
        let cfg = Config::bounded(ops, Duration::from_secs(secs));
        let (ours_fig, _naive) = both(t, &cfg, &cfg);
        assert_clean(t.backend, &ours_fig);
    }

    /// C7 adversaries: the workload through a listening `Db`, while plain-SQL writers
    /// update the same rows without touching the version, another deletes and re-inserts
    /// rows of its own (at version 1, under tombstones), and a second `Db` with its own
    /// pool and listener reads them all. Every read of either `Db` is checked: at least as
    /// new as its own `Db`'s writes (C2, C4) and as any write that returned more than
    /// Δ = 1 s before it began (C7); checkpoints (after the listeners settle) and the final
    /// state are checked in both. Prints the largest lag seen.
    ///
    /// C9: with the `redis` feature both `Db`s, and a third whose writers die between
    /// COMMIT and their cache update, share a `redis-server` of the run's own, into which
    /// faults are injected throughout (connections killed, the server paused, flushed,
    /// memory squeezed).
    fn adversaries(t) {
        let ops = env_u64("DIESEL_L2_ADVERSARY_OPS").unwrap_or(30_000);
        let secs = env_u64("DIESEL_L2_ADVERSARY_SECS").unwrap_or(15);
        let cfg = Config::bounded(ops, Duration::from_secs(secs));
        run_adversaries(t, &cfg);
    }

    /// C9 alone: the workload through one `Db` and checked reads through a second, both
    /// in the shared tier, with no change feed and a 10 ms local ttl in the second, so
    /// that nothing but the shared tier's leases and fences keeps its reads fresh: a read
    /// that begins more than Δ = 250 ms after a write through the first `Db` returned must
    /// see it. (In the adversaries' run the change feed also repairs Redis within its
    /// delay, which would hide a broken lease or fence there.) 64 hot keys a kind, so a
    /// stale entry would outlive Δ before the next write to its key replaced it.
    #[cfg(feature = "redis")]
    fn shared_tier_without_the_feed(t) {
        let Some(cfg) = common::redis::shared_config() else { return };
        let ops = env_u64("DIESEL_L2_SHARED_OPS").unwrap_or(20_000);
        let secs = env_u64("DIESEL_L2_SHARED_SECS").unwrap_or(10);
        let mut run = Config::bounded(ops, Duration::from_secs(secs));
        run.slots = 64;
        let f = prepare(t);
        println!("[{}] shared tier without the feed, seed {}", t.backend, run.seed);
        let shared_db = |pool: common::TestPool<Conn>, local_ttl: Option<Duration>| {
            let db = Db::builder(pool)
                .cache_with::<User>(|c| match local_ttl {
                    // Negative entries too: nothing else would drop them here.
                    Some(ttl) => c.max_entries(1_000).ttl(ttl).negative_ttl(Some(ttl)),
                    None => c.max_entries(1_000).batch_window(50),
                })
                .cache_with::<Tag>(|c| match local_ttl {
                    Some(ttl) => c.max_entries(TAGS_MAX).ttl(ttl).negative_ttl(Some(ttl)),
                    None => c.max_entries(TAGS_MAX).ttl(TAGS_TTL),
                })
                .shared::<User>()
                .shared::<Tag>()
                .shared_tier(cfg.clone())
                .build()
                .expect("valid regions");
            let batcher = db
                .batcher(diesel_l2::BatchConfig::new(8, Duration::from_millis(1)))
                .expect("batcher");
            Ours { db, batcher }
        };
        let a = shared_db(t.pool.clone(), None);
        let (pool_b, _) = t.another_pool();
        let b = shared_db(pool_b, Some(Duration::from_millis(10)));
        let adv = workload::Adversaries {
            second: &b,
            plain: Vec::new(),
            delta: Duration::from_millis(250),
            settle: Duration::from_millis(50),
            dying: None,
            faults: None,
        };
        let (fig, lag) = workload::run_adversarial(&a, adv, &run, f);
        println!("{}", fig.report(t.backend.name()));
        let shared = |db: &Db<Conn>| db.region_stats::<User>().unwrap().shared.unwrap();
        println!(
            "[{}] C9 without the feed: largest lag {:.2} ms ({} lagged reads of {}); bound Δ = 250 ms; shared users a {:?}; b {:?}",
            t.backend,
            lag.max_lag as f64 / 1e6,
            lag.lagged_reads,
            fig.counts.reads_checked,
            shared(&a.db),
            shared(&b.db),
        );
        assert_clean(t.backend, &fig);
    }

    /// The adversaries' run as a long soak, with Redis faults (C9):
    /// `DIESEL_L2_SOAK_OPS=1000000 cargo test --release --all-features --test consistency_history -- --ignored --nocapture soak_adversaries`.
    #[ignore = "long soak: DIESEL_L2_SOAK_OPS=1000000 cargo test --release --all-features --test consistency_history -- --ignored --nocapture soak_adversaries"]
    fn soak_adversaries(t) {
        common::watchdog::lift(); // bounded by DIESEL_L2_SOAK_OPS / _SECS instead
        let ops = env_u64("DIESEL_L2_SOAK_OPS").unwrap_or(1_000_000);
        let secs = env_u64("DIESEL_L2_SOAK_SECS").unwrap_or(24 * 3600);
        let mut cfg = Config::bounded(ops, Duration::from_secs(secs));
        cfg.phases = (ops / 20_000).clamp(8, 200) as u32;
        run_adversaries(t, &cfg);
    }

    /// The long soak (see the module docs for the command).
    #[ignore = "long soak: DIESEL_L2_SOAK_OPS=1000000 cargo test --release --all-features --test consistency_history -- --ignored --nocapture soak"]
    fn soak(t) {
        common::watchdog::lift(); // bounded by DIESEL_L2_SOAK_OPS / _SECS instead
        let ops = env_u64("DIESEL_L2_SOAK_OPS").unwrap_or(1_000_000);
        let secs = env_u64("DIESEL_L2_SOAK_SECS").unwrap_or(24 * 3600);
        let naive_ops = env_u64("DIESEL_L2_SOAK_NAIVE_OPS").unwrap_or(100_000);
        let mut cfg = Config::bounded(ops, Duration::from_secs(secs));
        cfg.phases = (ops / 20_000).clamp(8, 200) as u32;
        let mut naive_cfg = cfg.clone();
        naive_cfg.ops = naive_ops;
        naive_cfg.phases = (naive_ops / 20_000).clamp(8, 200) as u32;
        let (ours_fig, _naive) = both(t, &cfg, &naive_cfg);
        assert_clean(t.backend, &ours_fig);
    }
}
