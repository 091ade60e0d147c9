//! P10: the shared tier (feature `redis`) on one backend, each figure against the same work
//! without the tier, measured side by side in one run:
//!
//! - **a.** four cold instances (four `Db`s, each with its own pool, as four processes would
//!   have) read the same 10,000 hot rows (5,000 in quick mode) at once, one thread per
//!   instance, each in its own
//!   random order: the SQL statements the database saw per row, and the wall time of the
//!   cold phase, without the tier and with it (a fresh key prefix each time, so Redis starts
//!   empty too);
//! - **b.** a local miss that Redis answers (`evict` then `find`) against the database point
//!   select (`bypass().find`), and against a local miss without the tier;
//! - **c.** the same versioned update transaction with the tier (a fence before COMMIT and a
//!   settle after it: two Redis calls) and without it.
//!
//! Redis is `DIESEL_L2_REDIS_URL` (default `redis://127.0.0.1:6379/`), every key under a
//! prefix of this run's own, deleted at the end. Without a reachable Redis the section is
//! reported as skipped.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use diesel_l2::shared::SharedConfig;
use diesel_l2::{CachedOps, Db};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::support::{self, median, random_ids, BenchDb, BenchRow, PoolOptions, StatementCounter};
use super::{fmt_ns, Cfg, Line, Report, Target};

/// The hot rows every instance reads: ids `1..=hot` (the bench table has at least these);
/// half as many in quick mode.
fn hot(cfg: &Cfg) -> i64 {
    if cfg.quick {
        5_000
    } else {
        10_000
    }
}
/// Cold instances in P10a.
const INSTANCES: usize = 4;

fn redis_url() -> String {
    std::env::var("DIESEL_L2_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// The limit of every Redis call: the library's default (5 ms) unless
/// `DIESEL_L2_BENCH_REDIS_TIMEOUT_MS` says otherwise (on a loaded machine a call can wait
/// longer than that for Redis to be scheduled; it then fails, the breaker opens and reads
/// go to the database, which the section counts and prints).
fn redis_timeout() -> Option<Duration> {
    std::env::var("DIESEL_L2_BENCH_REDIS_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

/// The key prefixes of this run, deleted on drop (SCAN + UNLINK; never FLUSHALL: the
/// server may be shared).
struct Prefixes {
    con: redis::Connection,
    used: Vec<String>,
}

static PREFIX_SEQ: AtomicU64 = AtomicU64::new(0);

impl Prefixes {
    /// Connects and checks that Redis answers; `Err` says why not.
    fn connect(url: &str) -> Result<Prefixes, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let mut con = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query::<String>(&mut con)
            .map_err(|e| e.to_string())?;
        Ok(Prefixes {
            con,
            used: Vec::new(),
        })
    }

    /// A prefix nobody has used: its keys start empty.
    fn fresh(&mut self) -> String {
        let p = format!(
            "{}-{}",
            support::unique_name("l2p10"),
            PREFIX_SEQ.fetch_add(1, Relaxed)
        );
        self.used.push(p.clone());
        p
    }

    /// The current generation of `prefix` (its entries are `<prefix>:<generation>:…`).
    fn generation(&mut self, prefix: &str) -> String {
        redis::cmd("GET")
            .arg(format!("{prefix}:gen"))
            .query::<Option<String>>(&mut self.con)
            .expect("GET generation")
            .expect("a generation is set")
    }

    /// A plain GET of `key` (a round trip that returns the entry's bytes).
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        redis::cmd("GET")
            .arg(key)
            .query(&mut self.con)
            .expect("GET")
    }
}

impl Drop for Prefixes {
    fn drop(&mut self) {
        for prefix in std::mem::take(&mut self.used) {
            let pattern = format!("{prefix}:*");
            let mut cursor: u64 = 0;
            loop {
                let reply: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(&mut self.con);
                let (next, keys) = match reply {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("warning: redis SCAN {pattern}: {e}");
                        break;
                    }
                };
                if !keys.is_empty() {
                    if let Err(e) = redis::cmd("UNLINK").arg(keys).exec(&mut self.con) {
                        eprintln!("warning: redis UNLINK: {e}");
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
    }
}

/// One instance: a `Db` with its own pool (statements counted by `counter`), with the
/// shared tier under `prefix` when given.
fn instance<C>(bdb: &BenchDb<C>, counter: &StatementCounter, prefix: Option<&str>) -> Db<C>
where
    C: support::Raw,
    BenchRow: CachedOps<C>,
{
    let pool = bdb.pool(PoolOptions::default(), Some(counter));
    let builder = Db::builder(pool).cache::<BenchRow>();
    let builder = match prefix {
        Some(p) => {
            let mut config = SharedConfig::new(redis_url()).prefix(p);
            if let Some(t) = redis_timeout() {
                config = config.timeout(t);
            }
            builder.shared::<BenchRow>().shared_tier(config)
        }
        None => builder,
    };
    builder.build().expect("P10 instance")
}

/// The shared-tier figures of a set of instances, summed.
#[derive(Default, Clone, Copy)]
struct SharedSum {
    hits: u64,
    misses: u64,
    fills: u64,
    rejected_fills: u64,
    lease_waits: u64,
    errors: u64,
    tier_errors: u64,
    breaker_opened: u64,
}

impl SharedSum {
    fn of<C: diesel::r2d2::R2D2Connection + 'static>(dbs: &[Db<C>]) -> SharedSum {
        let mut s = SharedSum::default();
        for db in dbs {
            if let Some(r) = db.region_stats::<BenchRow>().expect("stats").shared {
                s.hits += r.hits;
                s.misses += r.misses;
                s.fills += r.fills;
                s.rejected_fills += r.rejected_fills;
                s.lease_waits += r.lease_waits;
                s.errors += r.errors;
            }
            if let Some(t) = db.stats().shared {
                s.tier_errors += t.errors;
                s.breaker_opened += t.breaker_opened;
            }
        }
        s
    }

    fn minus(self, o: SharedSum) -> SharedSum {
        SharedSum {
            hits: self.hits - o.hits,
            misses: self.misses - o.misses,
            fills: self.fills - o.fills,
            rejected_fills: self.rejected_fills - o.rejected_fills,
            lease_waits: self.lease_waits - o.lease_waits,
            errors: self.errors - o.errors,
            tier_errors: self.tier_errors - o.tier_errors,
            breaker_opened: self.breaker_opened - o.breaker_opened,
        }
    }
}

/// What one cold phase of P10a measured.
struct Cold {
    /// SQL statements the four instances sent while reading.
    statements: u64,
    /// The regions' `loads` (local misses loaded: from Redis or from the database).
    loads: u64,
    wall: Duration,
    shared: SharedSum,
}

/// Four new instances read the hot rows at once, each in its own random order.
fn cold<C>(bdb: &BenchDb<C>, hot: i64, prefix: Option<&str>, rep: u64) -> Cold
where
    C: support::Raw,
    BenchRow: CachedOps<C>,
{
    let counter = StatementCounter::default();
    let dbs: Vec<Db<C>> = (0..INSTANCES)
        .map(|_| instance(bdb, &counter, prefix))
        .collect();
    let orders: Vec<Vec<i64>> = (0..INSTANCES as u64)
        .map(|i| {
            let mut ids: Vec<i64> = (1..=hot).collect();
            ids.shuffle(&mut SmallRng::seed_from_u64(1_000 + rep * 16 + i));
            ids
        })
        .collect();
    // Connects each instance's pools (database and Redis) on a row that does not exist,
    // before anything is counted.
    for db in &dbs {
        black_box(db.find::<BenchRow>(-1).expect("warm-up"));
    }
    let loads = |dbs: &[Db<C>]| -> u64 {
        dbs.iter()
            .map(|db| db.region_stats::<BenchRow>().expect("stats").loads)
            .sum()
    };
    let (statements0, loads0, shared0) = (counter.get(), loads(&dbs), SharedSum::of(&dbs));
    let barrier = Barrier::new(INSTANCES + 1);
    let wall = std::thread::scope(|s| {
        let handles: Vec<_> = dbs
            .iter()
            .zip(&orders)
            .map(|(db, order)| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    for id in order {
                        black_box(db.find::<BenchRow>(*id).expect("find").expect("row"));
                    }
                })
            })
            .collect();
        barrier.wait();
        let t = Instant::now();
        for h in handles {
            h.join().expect("reader");
        }
        t.elapsed()
    });
    Cold {
        statements: counter.get() - statements0,
        loads: loads(&dbs) - loads0,
        wall,
        shared: SharedSum::of(&dbs).minus(shared0),
    }
}

/// P10 on one backend; a table in the report.
pub fn section<C>(bdb: &BenchDb<C>, cfg: &Cfg, report: &mut Report)
where
    C: support::Raw,
    BenchRow: CachedOps<C>,
{
    let title = format!("{} — P10 shared tier (Redis on loopback)", bdb.label);
    let url = redis_url();
    let mut prefixes = match Prefixes::connect(&url) {
        Ok(p) => p,
        Err(e) => {
            println!(
                "P10 on {}: SKIPPED (no Redis at {url}: {e}; set DIESEL_L2_REDIS_URL)\n",
                bdb.label
            );
            report.tables.push((
                title,
                vec![Line {
                    op: "P10 shared tier".into(),
                    ours: "-".into(),
                    base: format!("SKIPPED (no Redis at {url})"),
                    ratio: "-".into(),
                    check: None,
                }],
            ));
            return;
        }
    };
    let mut lines = Vec::new();
    let name = bdb.label.split(' ').next().unwrap_or(bdb.label);
    let hot = hot(cfg);

    // P10a: both sides in every repetition, alternating which goes first.
    let reps: u64 = if cfg.quick { 1 } else { 3 };
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let mut shared_run = || {
            let prefix = prefixes.fresh();
            with.push(cold(bdb, hot, Some(&prefix), rep));
        };
        if rep % 2 == 0 {
            without.push(cold(bdb, hot, None, rep));
            shared_run();
        } else {
            shared_run();
            without.push(cold(bdb, hot, None, rep));
        }
    }
    let mut failures = Failures::default();
    for (i, (w, wo)) in with.iter().zip(&without).enumerate() {
        let s = w.shared;
        failures.add(&[&s]);
        println!(
            "[{name} P10a rep {i}] without: {} statements, {} loads, {:.2?}; with: {} statements, \
             {} loads, {:.2?} (Redis hits {}, misses {}, fills {}, rejected fills {}, lease waits {}, \
             region errors {}, tier errors {}, breaker opened {})",
            wo.statements, wo.loads, wo.wall, w.statements, w.loads, w.wall, s.hits, s.misses,
            s.fills, s.rejected_fills, s.lease_waits, s.errors, s.tier_errors, s.breaker_opened
        );
    }
    let per_row = |v: &[Cold]| {
        let mut x: Vec<f64> = v.iter().map(|c| c.statements as f64 / hot as f64).collect();
        median(&mut x)
    };
    let wall = |v: &[Cold]| {
        let mut x: Vec<f64> = v.iter().map(|c| c.wall.as_nanos() as f64).collect();
        median(&mut x)
    };
    let (w_rows, wo_rows) = (per_row(&with), per_row(&without));
    let (w_wall, wo_wall) = (wall(&with), wall(&without));
    let reps_note = if reps > 1 {
        format!(", median of {reps}")
    } else {
        String::new()
    };
    // The worst repetition too: a median hides one whose breaker opened.
    let worst = with
        .iter()
        .map(|c| c.statements as f64 / hot as f64)
        .fold(0.0, f64::max);
    lines.push(Line {
        op: format!(
            "P10a {INSTANCES} cold instances read the same {hot} rows at once: SQL per row{reps_note}"
        ),
        ours: if reps > 1 {
            format!("{w_rows:.3} with the tier (worst {worst:.3})")
        } else {
            format!("{w_rows:.3} with the tier")
        },
        base: format!("{wo_rows:.3} without"),
        ratio: format!("{:.1}x fewer loads", wo_rows / w_rows),
        check: Some((w_rows, Target::AtMost(1.1))),
    });
    lines.push(Line {
        op: format!(
            "P10a the cold phase's wall time ({INSTANCES} threads × {hot} finds){reps_note}"
        ),
        ours: fmt_ns(w_wall),
        base: fmt_ns(wo_wall),
        ratio: format!("{:.2}x (ours/base)", w_wall / wo_wall),
        check: None,
    });

    // P10b: a local miss answered by Redis. Redis holds every hot row, filled by another
    // instance's `find_many` of 100 ids at a time; `m` evicts its local entry and finds it
    // again. A fill call that timed out leaves its leases in Redis until they expire
    // (`lease_ttl`, 2 s), and readers of those keys wait `lease_wait` (20 ms) for them:
    // then the filler waits for them to expire and fills again.
    let prefix = prefixes.fresh();
    let filler = instance(bdb, &StatementCounter::default(), Some(&prefix));
    let ids: Vec<i64> = (1..=hot).collect();
    let failed = |db: &Db<C>| {
        let s = SharedSum::of(std::slice::from_ref(db));
        s.errors + s.tier_errors
    };
    let mut passes = 0;
    loop {
        passes += 1;
        let before = failed(&filler);
        filler.evict_all::<BenchRow>().expect("evict");
        for chunk in ids.chunks(100) {
            black_box(filler.find_many::<BenchRow>(chunk).expect("fill Redis"));
        }
        if failed(&filler) == before || passes == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2_100));
    }
    let f = SharedSum::of(std::slice::from_ref(&filler));
    println!(
        "[{name} P10b] Redis filled in {passes} pass(es): {} fills, {} hits, {} errors",
        f.fills,
        f.hits,
        f.errors + f.tier_errors
    );
    let m_counter = StatementCounter::default();
    let m = instance(bdb, &m_counter, Some(&prefix));
    let plain = instance(bdb, &StatementCounter::default(), None);
    let (rounds, batch) = (cfg.db_rounds * 2, cfg.db_batch);
    let keys = random_ids((rounds + 3) * batch * 4, hot, 21);
    let entry = format!("{prefix}:{}:bench_rows:", prefixes.generation(&prefix));
    let mut got = 0usize;
    let shared0 = SharedSum::of(std::slice::from_ref(&m));
    let mut miss_sql = 0;
    let mut k = 0;
    let mut times: [Vec<f64>; 4] = Default::default();
    for r in 0..rounds + 3 {
        let mut round = [0.0; 4];
        for j in 0..4 {
            let which = (r + j) % 4;
            let ids = &keys[k..k + batch];
            k += batch;
            let before = m_counter.get();
            let t = Instant::now();
            for &id in ids {
                match which {
                    0 => {
                        m.evict::<BenchRow>(id).expect("evict");
                        black_box(m.find::<BenchRow>(id).expect("find"));
                    }
                    1 => {
                        black_box(m.bypass().find::<BenchRow>(id).expect("select"));
                    }
                    2 => {
                        plain.evict::<BenchRow>(id).expect("evict");
                        black_box(plain.find::<BenchRow>(id).expect("find"));
                    }
                    _ => {
                        got +=
                            black_box(prefixes.get(&format!("{entry}{id}"))).map_or(0, |v| v.len());
                    }
                }
            }
            round[which] = t.elapsed().as_nanos() as f64 / batch as f64;
            if which == 0 && r >= 3 {
                miss_sql += m_counter.get() - before;
            }
        }
        if r >= 3 {
            for (v, t) in times.iter_mut().zip(round) {
                v.push(t);
            }
        }
    }
    let s = SharedSum::of(std::slice::from_ref(&m)).minus(shared0);
    failures.add(&[&f, &s]);
    let [mut from_redis, mut select, mut local_miss, mut get] = times;
    let (from_redis, select, local_miss) = (
        median(&mut from_redis),
        median(&mut select),
        median(&mut local_miss),
    );
    let get = median(&mut get);
    println!(
        "[{name} P10b] {} Redis-served misses timed: {miss_sql} SQL statements; Redis hits {}, misses {}, lease waits {}, errors {}",
        rounds * batch,
        s.hits,
        s.misses,
        s.lease_waits,
        s.errors + s.tier_errors
    );
    lines.push(Line {
        op: "P10b local miss answered by Redis (evict + find) vs bypass().find point select".into(),
        ours: fmt_ns(from_redis),
        base: fmt_ns(select),
        ratio: format!("{:.2}x (ours/base)", from_redis / select),
        check: None,
    });
    lines.push(Line {
        op: "  (diagnostic) the same local miss without the tier (select + local fill)".into(),
        ours: fmt_ns(from_redis),
        base: fmt_ns(local_miss),
        ratio: format!("{:.2}x (ours/base)", from_redis / local_miss),
        check: None,
    });
    lines.push(Line {
        op: "  (diagnostic) a plain GET of the same entry (one round trip, no decode)".into(),
        ours: fmt_ns(from_redis),
        base: format!(
            "{} ({} B a row)",
            fmt_ns(get),
            got / (batch * (rounds + 3)).max(1)
        ),
        ratio: format!("{:.2}x (ours/base)", from_redis / get),
        check: None,
    });
    drop((filler, m, plain));

    // P10c: the same versioned update transaction with the tier and without it, one
    // update per side per round, alternating which goes first. The tier's instance writes
    // the lower half of the hot rows, the other the upper half.
    let prefix = prefixes.fresh();
    let w_shared = instance(bdb, &StatementCounter::default(), Some(&prefix));
    let w_plain = instance(bdb, &StatementCounter::default(), None);
    let n = (cfg.db_rounds + 2) * cfg.db_batch;
    let warm = 2 * cfg.db_batch;
    let ids_shared = random_ids(n, hot / 2, 31);
    let ids_plain: Vec<i64> = random_ids(n, hot / 2, 32)
        .into_iter()
        .map(|id| id + hot / 2)
        .collect();
    let shared0 = SharedSum::of(std::slice::from_ref(&w_shared));
    let update = |db: &Db<C>, id: i64| -> f64 {
        let mut next = (*db.find::<BenchRow>(id).expect("find").expect("row")).clone();
        next.score += 1;
        let t = Instant::now();
        let w = db.transaction(|tx| tx.update(&next)).expect("tx.update");
        let e = t.elapsed().as_nanos() as f64;
        black_box(w);
        e
    };
    let (mut t_shared, mut t_plain) = (Vec::new(), Vec::new());
    for r in 0..n {
        let (a, b) = if r % 2 == 0 {
            let a = update(&w_shared, ids_shared[r]);
            (a, update(&w_plain, ids_plain[r]))
        } else {
            let b = update(&w_plain, ids_plain[r]);
            (update(&w_shared, ids_shared[r]), b)
        };
        if r >= warm {
            t_shared.push(a);
            t_plain.push(b);
        }
    }
    let s = SharedSum::of(std::slice::from_ref(&w_shared)).minus(shared0);
    failures.add(&[&s]);
    let tier = w_shared.stats().shared.expect("tier stats");
    println!(
        "[{name} P10c] {} updates a side; shared tier errors {} (region {}), breaker {:?}, untrusted {}",
        n - warm,
        tier.errors,
        s.errors,
        tier.breaker,
        tier.untrusted
    );
    let (ws, wp) = (median(&mut t_shared), median(&mut t_plain));
    lines.push(Line {
        op: "P10c tx.update with the tier (fence + settle in Redis) vs without".into(),
        ours: fmt_ns(ws),
        base: fmt_ns(wp),
        ratio: format!(
            "{:+.1}% ({:+.1} µs)",
            (ws / wp - 1.0) * 100.0,
            (ws - wp) / 1e3
        ),
        check: None,
    });
    lines.push(Line {
        op: "  (diagnostic) Redis calls failed or timed out in this section; breaker openings"
            .into(),
        ours: format!("{} failed, {} openings", failures.errors, failures.opened),
        base: match redis_timeout() {
            Some(t) => format!("timeout {t:?} (DIESEL_L2_BENCH_REDIS_TIMEOUT_MS)"),
            None => "timeout 5 ms (the default)".into(),
        },
        ratio: "-".into(),
        check: None,
    });
    report.tables.push((title, lines));
}

/// Redis calls that did not reach Redis in the section: the figures of a run with many
/// are the database's, not the tier's.
#[derive(Default)]
struct Failures {
    errors: u64,
    opened: u64,
}

impl Failures {
    fn add(&mut self, sums: &[&SharedSum]) {
        for s in sums {
            self.errors += s.tier_errors;
            self.opened += s.breaker_opened;
        }
    }
}
