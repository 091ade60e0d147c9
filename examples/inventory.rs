//! Inventory: concurrent stock reservations with `db.retry`, and an at-least-once message
//! stream applied exactly once by operation id.
//!
//! ```text
//! cargo run --example inventory                              # SQLite file in a temp dir
//! DIESEL_L2_EXAMPLE_BACKEND=postgres DIESEL_L2_PG_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --example inventory --features postgres       # a fresh PostgreSQL schema
//! DIESEL_L2_EXAMPLE_BACKEND=mysql DIESEL_L2_MYSQL_URL=mysql://root@127.0.0.1:3306/test \
//!     cargo run --example inventory --features mysql          # a fresh MariaDB database
//! ```
//!
//! A broker delivers "reserve `qty` of product `p`" messages to four consumer threads. It
//! delivers at least once: about one message in five arrives twice, sometimes while the
//! first delivery is still being processed by another consumer. Each delivery runs
//! `db.retry_once(policy, "reserve-<message id>", …)`:
//!
//! - the closure reads the product through the cache (`db.get`: no SQL on a hit),
//!   computes the row with less stock and writes it with `tx.update` (`WHERE version = v`);
//!   `retry_once` re-runs it when another thread got there first (`Error::Conflict`), under
//!   the same message id. Out of stock is a rejection, not an error.
//! - the message id is recorded in `diesel_l2_operations` in the same transaction as the
//!   stock, with the closure's result. A redelivery runs nothing and gets that result back
//!   (`Outcome::is_replay`); a redelivery that arrives while the first is in flight waits
//!   for it on the database, then replays.
//!
//! Nothing here compares content to decide what was applied: two messages with the same
//! quantity read at the same version make the same row, and the second is a conflict that
//! is retried on top of the first, never taken for a replay.
//!
//! At the end it prints the conflicts, retries and replays, and checks, for every product,
//! that stock = initial − reserved and version = 1 + reservations, in the database and in
//! the cache, and that every replay returned the outcome of the delivery that ran. A
//! failed check exits non-zero. The interleaving differs from run to run; the final check
//! does not.
//!
//! APIs: `Db::builder().cache::<E>()`, `Db::get`, `Db::retry_once` with `RetryPolicy`,
//! `Outcome::is_replay`, `Tx::update`, `Error::Conflict`, `Db::stats`.

// Shared backend selection (examples/common/mod.rs), used through `on_selected_backend!`.
#[macro_use]
mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::r2d2::R2D2Connection;
use diesel_l2::{Cached, CachedOps, Db, OperationLog, RetryPolicy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::{BoxError, ExampleDb};

diesel::table! {
    products (id) {
        id -> Integer,
        version -> Integer,
        sku -> Text,
        stock -> Integer,
    }
}

/// A product row; `version` is the optimistic version every update checks and bumps.
#[derive(Queryable, Selectable, Clone, Debug, PartialEq, Cached)]
#[diesel(table_name = products)]
#[cache(ttl = "10m", max_entries = 10_000)]
pub struct Product {
    pub id: i32,
    pub version: i32,
    pub sku: String,
    pub stock: i32,
}

/// (sku, initial stock, share of the messages). Demand is skewed on purpose: the hot
/// products see many conflicts, and MS-202 runs out of stock.
const CATALOGUE: [(&str, i32, u32); 6] = [
    ("KB-101", 1_000, 40),
    ("MS-202", 250, 30),
    ("HD-303", 600, 15),
    ("CB-404", 400, 8),
    ("PS-505", 300, 5),
    ("DK-606", 200, 2),
];
const MESSAGES: u64 = 500;
const CONSUMERS: usize = 4;
/// Share of messages the broker delivers twice, and how far apart (in deliveries).
const REDELIVERY_RATE: f64 = 0.2;
const REDELIVERY_DISTANCE: std::ops::RangeInclusive<usize> = 0..=12;
/// Fixed, so the message stream is the same every run (the interleaving is not).
const SEED: u64 = 7;

/// One "reserve" message. It carries no version: the consumer reads the version.
#[derive(Clone, Copy, Debug)]
struct Reserve {
    msg_id: u64,
    product_id: i32,
    qty: i32,
}

impl Reserve {
    /// The operation id: the broker's message id.
    fn op_id(&self) -> String {
        format!("reserve-{}", self.msg_id)
    }
}

/// What a message did, recorded with its id (serde) and returned to every redelivery.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Reservation {
    /// Committed: the product's version after this reservation.
    Reserved { produced: i32 },
    /// Not enough stock.
    Rejected,
}

#[derive(Default)]
struct Counters {
    deliveries: AtomicU64,
    reserved: AtomicU64,
    rejected: AtomicU64,
    /// Attempts beyond the first, across all `db.retry_once` calls that ran.
    retries: AtomicU64,
    replays: AtomicU64,
}

fn main() -> std::process::ExitCode {
    common::exit_code(start())
}

fn start() -> Result<(), BoxError> {
    // Each consumer holds two connections at once: its transaction's, and one for the
    // cache read inside the retry closure when it misses. Two spare for the final check.
    on_selected_backend!("inventory", (2 * CONSUMERS + 2) as u32, run)
}

fn run<C>(ex: ExampleDb<C>) -> Result<(), BoxError>
where
    C: OperationLog,
    Product: CachedOps<C>,
{
    println!("database: {}", ex.location);
    let db = Db::builder(ex.pool.clone()).cache::<Product>().build()?;
    db.transaction(|tx| {
        for (i, (sku, stock, _)) in CATALOGUE.iter().enumerate() {
            tx.insert(&Product {
                id: i as i32 + 1,
                version: 1,
                sku: (*sku).to_string(),
                stock: *stock,
            })?;
        }
        Ok(())
    })?;

    let (messages, deliveries) = message_stream();
    let duplicates = deliveries.len() as u64 - MESSAGES;
    println!(
        "{CONSUMERS} consumers, {} products, {MESSAGES} messages, {duplicates} delivered twice ({} deliveries)",
        CATALOGUE.len(),
        deliveries.len()
    );

    let broker = Mutex::new(VecDeque::from(deliveries));
    // What each delivery returned: (ran it, outcome). Only for the final check: the
    // consumers themselves keep nothing in memory.
    let ledger = Mutex::new(HashMap::<u64, Vec<(bool, Reservation)>>::new());
    let n = Counters::default();
    let started = Instant::now();
    thread::scope(|s| -> Result<(), BoxError> {
        let workers: Vec<_> = (0..CONSUMERS)
            .map(|_| s.spawn(|| consume(&db, &broker, &ledger, &n)))
            .collect();
        for w in workers {
            w.join().map_err(|_| "a consumer thread panicked")??;
        }
        Ok(())
    })?;
    let took = started.elapsed();

    let stats = db.stats();
    let region = stats.region("products").ok_or("no products region")?;
    let get = |c: &AtomicU64| c.load(Relaxed);
    println!(
        "\nprocessed {} deliveries in {took:.2?}",
        get(&n.deliveries)
    );
    println!(
        "  reserved                  {:>5}  (rejected, out of stock: {})",
        get(&n.reserved),
        get(&n.rejected)
    );
    println!(
        "  version conflicts         {:>5}  (fresh writes that lost a race; retried under the same message id)",
        region.conflicts
    );
    println!(
        "  retries                   {:>5}  (re-runs by db.retry_once after conflicts and busy/deadlock errors)",
        get(&n.retries)
    );
    println!(
        "  replays                   {:>5}  (redeliveries answered from the recorded outcome; nothing ran)",
        get(&n.replays)
    );

    check(
        &db,
        &ex,
        &messages,
        &ledger.into_inner().expect("ledger lock"),
        &n,
    )?;
    println!("\n{stats}");
    Ok(())
}

/// The unique messages and the order the broker delivers them in, duplicates included.
fn message_stream() -> (Vec<Reserve>, Vec<Reserve>) {
    let mut rng = StdRng::seed_from_u64(SEED);
    let total_weight: u32 = CATALOGUE.iter().map(|(_, _, w)| w).sum();
    let messages: Vec<Reserve> = (1..=MESSAGES)
        .map(|msg_id| {
            let mut pick = rng.random_range(0..total_weight);
            let index = CATALOGUE
                .iter()
                .position(|(_, _, w)| {
                    let hit = pick < *w;
                    pick = pick.saturating_sub(*w);
                    hit
                })
                .expect("pick < total weight");
            Reserve {
                msg_id,
                product_id: index as i32 + 1,
                qty: rng.random_range(1..=5),
            }
        })
        .collect();
    // Each redelivery is due a few deliveries after its original, as when an ack is lost.
    let mut deliveries = Vec::new();
    let mut due: Vec<(usize, Reserve)> = Vec::new();
    for msg in &messages {
        deliveries.push(*msg);
        if rng.random_bool(REDELIVERY_RATE) {
            due.push((
                deliveries.len() + rng.random_range(REDELIVERY_DISTANCE),
                *msg,
            ));
        }
        due.retain(|(at, m)| {
            let now = *at <= deliveries.len();
            if now {
                deliveries.push(*m);
            }
            !now
        });
    }
    deliveries.extend(due.into_iter().map(|(_, m)| m));
    (messages, deliveries)
}

/// One consumer thread: takes deliveries until the broker is empty.
fn consume<C>(
    db: &Db<C>,
    broker: &Mutex<VecDeque<Reserve>>,
    ledger: &Mutex<HashMap<u64, Vec<(bool, Reservation)>>>,
    n: &Counters,
) -> Result<(), BoxError>
where
    C: OperationLog,
    Product: CachedOps<C>,
{
    loop {
        let Some(msg) = broker.lock().expect("broker lock").pop_front() else {
            return Ok(());
        };
        let policy =
            RetryPolicy::attempts(200).backoff(Duration::from_millis(1), Duration::from_millis(20));
        let mut attempts = 0u64;
        let outcome = db.retry_once(policy, msg.op_id(), |tx| {
            attempts += 1;
            // From the cache: a hit runs no SQL. A copy that is stale by now costs one
            // conflict, because the versioned UPDATE below is the check, and `retry_once`
            // runs this closure again (the failed transaction evicted the key, so the next
            // read loads the current row).
            let current = db.get::<Product>(msg.product_id)?;
            if current.stock < msg.qty {
                // Stock only goes down, so a stale copy can only overstate it: this holds.
                return Ok(Reservation::Rejected);
            }
            let mut write = (*current).clone();
            write.stock -= msg.qty;
            let stored = tx.update(&write)?;
            Ok(Reservation::Reserved {
                produced: stored.version,
            })
        })?;
        n.deliveries.fetch_add(1, Relaxed);
        if outcome.is_replay() {
            n.replays.fetch_add(1, Relaxed);
        } else {
            n.retries.fetch_add(attempts.saturating_sub(1), Relaxed);
            match *outcome {
                Reservation::Reserved { .. } => n.reserved.fetch_add(1, Relaxed),
                Reservation::Rejected => n.rejected.fetch_add(1, Relaxed),
            };
        }
        ledger
            .lock()
            .expect("ledger lock")
            .entry(msg.msg_id)
            .or_default()
            .push((!outcome.is_replay(), outcome.into_inner()));
    }
}

/// The final check: every message settled; per product, stock = initial − reserved and
/// version = 1 + reservations, in the database and in the cache.
fn check<C>(
    db: &Db<C>,
    ex: &ExampleDb<C>,
    messages: &[Reserve],
    ledger: &HashMap<u64, Vec<(bool, Reservation)>>,
    n: &Counters,
) -> Result<(), BoxError>
where
    C: R2D2Connection + 'static,
    Product: CachedOps<C>,
{
    let mut failures = Vec::new();
    let mut reserved = vec![(0i32, 0i32); CATALOGUE.len()];
    for msg in messages {
        let deliveries = ledger.get(&msg.msg_id).map_or(&[][..], Vec::as_slice);
        let ran: Vec<&Reservation> = deliveries.iter().filter(|d| d.0).map(|d| &d.1).collect();
        let [outcome] = ran[..] else {
            failures.push(format!(
                "message {} ran {} times (exactly once expected): {deliveries:?}",
                msg.msg_id,
                ran.len()
            ));
            continue;
        };
        if let Some((_, other)) = deliveries.iter().find(|d| !d.0 && d.1 != *outcome) {
            failures.push(format!(
                "message {}: a replay returned {other:?}, the delivery that ran returned {outcome:?}",
                msg.msg_id
            ));
        }
        if let Reservation::Reserved { .. } = outcome {
            let r = &mut reserved[msg.product_id as usize - 1];
            r.0 += msg.qty;
            r.1 += 1;
        }
    }
    let deliveries = n.deliveries.load(Relaxed);
    let settled = MESSAGES + n.replays.load(Relaxed);
    if deliveries != settled {
        failures.push(format!(
            "{deliveries} deliveries processed but {settled} accounted for"
        ));
    }

    // The database, read with the entity's own SELECT on a pooled connection: no cache.
    let rows: Vec<Product> = {
        let ids: Vec<i32> = (1..=CATALOGUE.len() as i32).collect();
        let mut conn = ex.pool.get()?;
        let mut rows = Product::load_many(&mut conn, &ids)?;
        rows.sort_by_key(|p| p.id);
        rows
    };
    if rows.len() != CATALOGUE.len() {
        failures.push(format!(
            "{} products in the database, {} inserted",
            rows.len(),
            CATALOGUE.len()
        ));
    }
    println!(
        "\n{:<8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>8}  cache read",
        "product", "initial", "reserved", "expected", "database", "cache", "version"
    );
    for ((sku, initial, _), (row, (qty, count))) in CATALOGUE.iter().zip(rows.iter().zip(&reserved))
    {
        let expected = initial - qty;
        let misses = |db: &Db<C>| db.stats().region("products").map_or(0, |r| r.misses);
        let before = misses(db);
        let cached = db.get::<Product>(row.id)?;
        let source = if misses(db) == before {
            "hit"
        } else {
            "loaded"
        };
        println!(
            "{sku:<8} {initial:>7} {qty:>9} {expected:>9} {:>9} {:>9} {:>8}  {source}",
            row.stock, cached.stock, row.version
        );
        if row.stock != expected || row.version != 1 + count {
            failures.push(format!(
                "{sku} in the database: stock {} version {}, expected stock {expected} version {}",
                row.stock,
                row.version,
                1 + count
            ));
        }
        if *cached != *row {
            failures.push(format!(
                "{sku} in the cache: {cached:?}, the database has {row:?}"
            ));
        }
    }
    if failures.is_empty() {
        println!(
            "\nOK: stock = initial − reserved and version = 1 + reservations for every product, in the database and in the cache"
        );
        Ok(())
    } else {
        Err(format!("check failed:\n  {}", failures.join("\n  ")).into())
    }
}
