//! Ingest: a stream of writes from many threads, one transaction per write against the
//! batcher (many writes, one transaction, one COMMIT; each writer still waits for its own
//! write to be durable, C11). Prints writes per second and latency both ways.
//!
//! ```text
//! cargo run --release --example ingest                        # SQLite file (WAL, synchronous=FULL), 64 writers
//! cargo run --release --example ingest -- --curve             # 1, 4, 16 and 64 writers (P9)
//! DIESEL_L2_EXAMPLE_BACKEND=postgres DIESEL_L2_PG_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --release --example ingest --features postgres -- --curve
//! DIESEL_L2_EXAMPLE_BACKEND=mysql DIESEL_L2_MYSQL_URL=mysql://root@127.0.0.1:3306/test \
//!     cargo run --release --example ingest --features mysql -- --curve
//! ```
//!
//! Each writer thread, for a fixed time, makes versioned updates of random rows among
//! 10,000 (`tx.get` then `tx.update`, retried on conflicts), then inserts of new rows. The
//! same stream runs twice side by side: `db.retry(…)` per write, and
//! `batcher.submit(…)` (128 operations or 2 ms). At the end the example checks that the
//! database holds exactly the writes that were acknowledged, and exits non-zero if not.
//!
//! `--seconds N` sets each run's length (default 2; `--quick`: 0.3); `--in-flight N` lets
//! N batches run at once (`BatchConfig::in_flight`, default 1).
//!
//! APIs: `Db::batcher` with `BatchConfig`, `Batcher::submit`, `Batcher::stats`,
//! `Db::retry`, `Tx::get` / `update` / `insert`.

// Shared backend selection (examples/common/mod.rs), used through `on_selected_backend!`.
#[macro_use]
mod common;

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::r2d2::R2D2Connection;
use diesel_l2::{BatchConfig, Cached, CachedOps, Db, Error, RetryPolicy};

use common::{BoxError, ExampleDb};

diesel::table! {
    products (id) {
        id -> Integer,
        version -> Integer,
        sku -> Text,
        stock -> Integer,
    }
}

/// A row the writers update (`stock` counts the updates it received) or insert.
#[derive(Queryable, Selectable, Clone, Debug, PartialEq, Cached)]
#[diesel(table_name = products)]
#[cache(max_entries = 100_000)]
pub struct Product {
    pub id: i32,
    pub version: i32,
    pub sku: String,
    pub stock: i32,
}

const ROWS: i32 = 10_000;

struct Args {
    curve: bool,
    run: Duration,
    in_flight: usize,
}

fn args() -> Result<Args, BoxError> {
    let mut a = Args {
        curve: false,
        run: Duration::from_secs(2),
        in_flight: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--curve" => a.curve = true,
            "--quick" => a.run = Duration::from_millis(300),
            "--in-flight" => {
                a.in_flight = it.next().ok_or("--in-flight needs a value")?.parse()?;
            }
            "--seconds" => {
                let s: f64 = it.next().ok_or("--seconds needs a value")?.parse()?;
                a.run = Duration::from_secs_f64(s);
            }
            other => return Err(format!("unknown argument {other}; see the file's header").into()),
        }
    }
    Ok(a)
}

fn main() -> std::process::ExitCode {
    common::exit_code(start())
}

fn start() -> Result<(), BoxError> {
    let a = args()?;
    // Each writer waits until its write is durable: on SQLite that takes
    // `synchronous = FULL` (NORMAL makes a COMMIT durable only at the next checkpoint).
    if std::env::var_os(common::SQLITE_SYNCHRONOUS_ENV).is_none() {
        std::env::set_var(common::SQLITE_SYNCHRONOUS_ENV, "FULL");
    }
    // One connection per writer for the per-write runs (capped), plus the batcher's.
    on_selected_backend!("ingest", 34, run, &a)
}

/// How one run went.
struct Figures {
    writes: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl Figures {
    fn per_second(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    PerWrite,
    Batched,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Update,
    Insert,
}

fn run<C>(ex: ExampleDb<C>, a: &Args) -> Result<(), BoxError>
where
    C: R2D2Connection + 'static,
    Product: CachedOps<C>,
{
    println!("database: {}", ex.location);
    let db = Db::builder(ex.pool.clone()).cache::<Product>().build()?;
    db.transaction(|tx| {
        for id in 1..=ROWS {
            tx.insert(&Product {
                id,
                version: 1,
                sku: format!("p{id}"),
                stock: 0,
            })?;
        }
        Ok(())
    })?;
    let next_id = AtomicI32::new(ROWS + 1);
    let acknowledged = AtomicU64::new(0);
    let writers: &[usize] = if a.curve { &[1, 4, 16, 64] } else { &[64] };
    println!(
        "\n{:<7} {:>7} {:<10} {:>11} {:>10} {:>10} {:>8}",
        "writes", "writers", "mode", "writes/s", "p50", "p99", "speed-up"
    );
    for kind in [Kind::Update, Kind::Insert] {
        for &n in writers {
            let mut per_write = None;
            for mode in [Mode::PerWrite, Mode::Batched] {
                let f = measure(&db, mode, kind, n, a, &next_id, &acknowledged)?;
                let speedup = match (mode, &per_write) {
                    (Mode::Batched, Some(base)) => {
                        format!("{:.2}×", f.per_second() / Figures::per_second(base))
                    }
                    _ => String::new(),
                };
                println!(
                    "{:<7} {:>7} {:<10} {:>11.0} {:>10.2?} {:>10.2?} {:>8}",
                    match kind {
                        Kind::Update => "update",
                        Kind::Insert => "insert",
                    },
                    n,
                    match mode {
                        Mode::PerWrite => "per write",
                        Mode::Batched => "batched",
                    },
                    f.per_second(),
                    f.p50,
                    f.p99,
                    speedup
                );
                if mode == Mode::PerWrite {
                    per_write = Some(f);
                }
            }
        }
    }
    check(&ex, &acknowledged, &next_id)
}

/// Runs `writers` threads for `run`, each writing as fast as its writes are acknowledged.
fn measure<C>(
    db: &Db<C>,
    mode: Mode,
    kind: Kind,
    writers: usize,
    a: &Args,
    next_id: &AtomicI32,
    acknowledged: &AtomicU64,
) -> Result<Figures, BoxError>
where
    C: R2D2Connection + 'static,
    Product: CachedOps<C>,
{
    let run = a.run;
    let batcher =
        db.batcher(BatchConfig::new(128, Duration::from_millis(2)).in_flight(a.in_flight))?;
    let policy =
        RetryPolicy::attempts(1_000).backoff(Duration::from_micros(200), Duration::from_millis(10));
    let started = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (batcher, policy) = (batcher.clone(), policy.clone());
                s.spawn(move || -> Result<Vec<Duration>, Error> {
                    let mut rng = fastrand::Rng::with_seed(w as u64);
                    let mut lat = Vec::new();
                    while started.elapsed() < run {
                        let t0 = Instant::now();
                        match mode {
                            Mode::PerWrite => db.retry(policy.clone(), |tx| {
                                write(tx, kind, rng.i32(1..=ROWS), || {
                                    next_id.fetch_add(1, Relaxed)
                                })
                            })?,
                            Mode::Batched => {
                                // The batcher's closure is 'static: it owns what it uses.
                                let id = rng.i32(1..=ROWS);
                                let fresh = match kind {
                                    Kind::Insert => next_id.fetch_add(1, Relaxed),
                                    Kind::Update => 0,
                                };
                                // Batches running at once (--in-flight) can conflict on a
                                // row: resubmit, as `db.retry` does per write.
                                let mut attempts = 0;
                                loop {
                                    match batcher.submit(move |tx| write(tx, kind, id, || fresh)) {
                                        Err(e) if e.is_retryable() && attempts < 1_000 => {
                                            attempts += 1;
                                        }
                                        r => break r?,
                                    }
                                }
                            }
                        }
                        acknowledged.fetch_add(1, Relaxed);
                        lat.push(t0.elapsed());
                    }
                    Ok(lat)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().map_err(|_| "a writer panicked")??);
        }
        Ok::<_, BoxError>(all)
    })?;
    let elapsed = started.elapsed();
    batcher.shutdown();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Figures {
        writes: latencies.len() as u64,
        elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
    })
}

/// One write: an update of row `id` (stock + 1), or an insert of a new row.
fn write<C>(
    tx: &mut diesel_l2::Tx<'_, C>,
    kind: Kind,
    id: i32,
    fresh_id: impl Fn() -> i32,
) -> Result<(), Error>
where
    C: R2D2Connection + 'static,
    Product: CachedOps<C>,
{
    match kind {
        Kind::Update => {
            let mut p = tx.get::<Product>(id)?;
            p.stock += 1;
            tx.update(&p).map(|_| ())
        }
        Kind::Insert => {
            let id = fresh_id();
            tx.insert(&Product {
                id,
                version: 1,
                sku: format!("i{id}"),
                stock: 1,
            })
            .map(|_| ())
        }
    }
}

/// Every acknowledged write is in the database, and nothing else: each update added 1 to
/// one row's stock, each insert made a row with stock 1.
fn check<C>(
    ex: &ExampleDb<C>,
    acknowledged: &AtomicU64,
    next_id: &AtomicI32,
) -> Result<(), BoxError>
where
    C: R2D2Connection + 'static,
    Product: CachedOps<C>,
{
    let mut conn = ex.pool.get()?;
    let ids: Vec<i32> = (1..next_id.load(Relaxed)).collect();
    let mut total: i64 = 0;
    for chunk in ids.chunks(5_000) {
        total += Product::load_many(&mut conn, chunk)?
            .iter()
            .map(|p| i64::from(p.stock))
            .sum::<i64>();
    }
    let acked = acknowledged.load(Relaxed) as i64;
    if total == acked {
        println!("\nOK: the database holds exactly the {acked} acknowledged writes");
        Ok(())
    } else {
        Err(format!("the database holds {total} writes, {acked} were acknowledged").into())
    }
}
