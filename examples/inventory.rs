//! Inventory: concurrent stock reservations with `db.retry`, and an at-least-once message
//! stream applied exactly once by version.
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
//! delivers at least once: about one message in five arrives twice. Each consumer:
//!
//! - **new message**: reads the product through the cache (`db.get`: no SQL on a hit),
//!   computes the row with less stock and writes it with `tx.update` (`WHERE version = v`),
//!   all inside `db.retry`, which re-runs the closure when another thread got there first
//!   (`Error::Conflict`). When it commits, the consumer records the exact versioned write
//!   in its ledger. Out of stock is a rejection, not an error.
//! - **redelivered message**: replays the recorded write. If the product is still at the
//!   version that write produced, `tx.update` says `already_applied()` and writes nothing;
//!   if the product has moved on, the update is a conflict that the ledger recognises as
//!   "already done". A redelivery that arrives while the first delivery is still being
//!   processed goes back to the broker.
//!
//! One trap, counted as "lookalike writes": `already_applied()` means "the database holds
//! this exact write" (same id, next version, same content). Two *different* messages with
//! the same quantity, read at the same version, make the same write; when one commits
//! first, the other's `tx.update` comes back `already_applied()`. Only a replay of a write
//! this consumer recorded may trust it; a first delivery treats it as a conflict and
//! retries. (The ledger lives in memory here; a real consumer would keep it durable, e.g.
//! as an inbox table written in the same transaction as the stock.)
//!
//! At the end it prints the conflicts, retries and replays, and checks, for every product,
//! that stock = initial − reserved and version = 1 + reservations, in the database and in
//! the cache. A failed check exits non-zero. The interleaving differs from run to run; the
//! final check does not.
//!
//! APIs: `Db::builder().cache::<E>()`, `Db::get`, `Db::retry` with
//! `RetryPolicy`, `Tx::update`, `Written::already_applied`, `Error::Conflict`, `Db::stats`.

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
use diesel_l2::{Cached, CachedEntity, CachedOps, Db, Error, RetryPolicy};
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
/// products see many conflicts, the quiet ones let most redeliveries find their write
/// still in place (`already_applied`), and MS-202 runs out of stock.
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
const REDELIVERY_DISTANCE: std::ops::RangeInclusive<usize> = 1..=12;
/// Fixed, so the message stream is the same every run (the interleaving is not).
const SEED: u64 = 7;

/// One "reserve" message. It carries no version: the consumer reads the version, and the
/// ledger keeps the exact versioned write it made, which is what a redelivery replays.
#[derive(Clone, Copy, Debug)]
struct Reserve {
    msg_id: u64,
    product_id: i32,
    qty: i32,
}

/// What the consumers know about a message.
#[derive(Clone, Debug)]
enum Entry {
    /// A consumer is processing its first delivery now.
    InFlight,
    /// Committed: `write` is the row given to `tx.update` (the version it was read at and
    /// the new stock); `produced` is the version the database stored it at.
    Reserved { write: Product, produced: i32 },
    /// Rejected: not enough stock.
    Rejected,
}

#[derive(Default)]
struct Counters {
    deliveries: AtomicU64,
    reserved: AtomicU64,
    rejected: AtomicU64,
    /// Attempts beyond the first, across all `db.retry` calls.
    retries: AtomicU64,
    /// Fresh writes whose content matched a write another message had just committed.
    lookalikes: AtomicU64,
    replays_already_applied: AtomicU64,
    replays_superseded: AtomicU64,
    duplicates_of_rejected: AtomicU64,
    deferred: AtomicU64,
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
    C: R2D2Connection + 'static,
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
        Ok::<_, Error>(())
    })?;

    let (messages, deliveries) = message_stream();
    let duplicates = deliveries.len() as u64 - MESSAGES;
    println!(
        "{CONSUMERS} consumers, {} products, {MESSAGES} messages, {duplicates} delivered twice ({} deliveries)",
        CATALOGUE.len(),
        deliveries.len()
    );

    let broker = Mutex::new(VecDeque::from(deliveries));
    let ledger = Mutex::new(HashMap::<u64, Entry>::new());
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
        "  version conflicts         {:>5}  (counted by the cache region: fresh writes that lost a race, and replays of writes since superseded)",
        region.conflicts
    );
    // Every retry had a cause: a version conflict of a first delivery (the region counts
    // those together with the superseded replays), a lookalike write, or another retryable
    // database error (SQLite busy, a deadlock, a serialization failure).
    let fresh_conflicts = region.conflicts as i64 - get(&n.replays_superseded) as i64;
    let other_errors = get(&n.retries) as i64 - fresh_conflicts - get(&n.lookalikes) as i64;
    println!(
        "  retries                   {:>5}  (re-runs of first deliveries by db.retry: {fresh_conflicts} after conflicts, {} after lookalike writes, {other_errors} after busy/deadlock errors)",
        get(&n.retries),
        get(&n.lookalikes),
    );
    println!(
        "  lookalike writes          {:>5}  (same base version and quantity as another message's write: already_applied() would be a lie, so retried)",
        get(&n.lookalikes)
    );
    println!(
        "  replays already applied   {:>5}  (redelivered; tx.update found its own write in place)",
        get(&n.replays_already_applied)
    );
    println!(
        "  replays superseded        {:>5}  (redelivered after the product moved on; recognised by the ledger)",
        get(&n.replays_superseded)
    );
    println!(
        "  duplicates of rejections  {:>5}",
        get(&n.duplicates_of_rejected)
    );
    println!(
        "  redeliveries deferred     {:>5}  (arrived while the first delivery was in flight; sent back to the broker)",
        get(&n.deferred)
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
    ledger: &Mutex<HashMap<u64, Entry>>,
    n: &Counters,
) -> Result<(), BoxError>
where
    C: R2D2Connection + 'static,
    Product: CachedOps<C>,
{
    loop {
        let Some(msg) = broker.lock().expect("broker lock").pop_front() else {
            return Ok(());
        };
        // Claim the message before touching the database, so two deliveries of it are
        // never processed at the same time.
        let seen = {
            let mut ledger = ledger.lock().expect("ledger lock");
            let seen = ledger.get(&msg.msg_id).cloned();
            if seen.is_none() {
                ledger.insert(msg.msg_id, Entry::InFlight);
            }
            seen
        };
        match seen {
            None => {
                let entry = reserve(db, &msg, n)?;
                ledger
                    .lock()
                    .expect("ledger lock")
                    .insert(msg.msg_id, entry);
            }
            Some(Entry::InFlight) => {
                // The broker redelivers it later, by which time the first delivery is done.
                n.deferred.fetch_add(1, Relaxed);
                broker.lock().expect("broker lock").push_back(msg);
                thread::yield_now();
                continue;
            }
            Some(Entry::Reserved { write, produced }) => replay(db, &msg, &write, produced, n)?,
            Some(Entry::Rejected) => {
                n.duplicates_of_rejected.fetch_add(1, Relaxed);
            }
        }
        n.deliveries.fetch_add(1, Relaxed);
    }
}

/// The first delivery of `msg`: reserve its quantity, re-reading and retrying on conflicts.
fn reserve<C>(db: &Db<C>, msg: &Reserve, n: &Counters) -> Result<Entry, Error>
where
    C: R2D2Connection + 'static,
    Product: CachedOps<C>,
{
    let policy =
        RetryPolicy::attempts(200).backoff(Duration::from_millis(1), Duration::from_millis(20));
    let mut attempts = 0u64;
    let entry = db.retry(policy, |tx| {
        attempts += 1;
        // From the cache: a hit runs no SQL. A copy that is stale by now costs one
        // conflict, because the versioned UPDATE below is the check, and `retry` then
        // runs this closure again (the failed transaction evicted the key, so the next
        // read loads the current row).
        let current = db.get::<Product>(msg.product_id)?;
        if current.stock < msg.qty {
            // Stock only goes down, so a stale copy can only overstate it: this holds.
            return Ok(Entry::Rejected);
        }
        let mut write = (*current).clone();
        write.stock -= msg.qty;
        let stored = tx.update(&write)?;
        if stored.already_applied() {
            // Another message with the same quantity committed an identical write from
            // the same version first. For a first delivery that is someone else's write,
            // not ours: treat it as the conflict it is and apply ours on top.
            n.lookalikes.fetch_add(1, Relaxed);
            return Err(Error::Conflict {
                table: Product::TABLE,
                id: format!("{}", msg.product_id),
                expected: i64::from(write.version),
                found: Some(i64::from(stored.version)),
            });
        }
        Ok(Entry::Reserved {
            write,
            produced: stored.version,
        })
    })?;
    n.retries.fetch_add(attempts - 1, Relaxed);
    match entry {
        Entry::Reserved { .. } => n.reserved.fetch_add(1, Relaxed),
        _ => n.rejected.fetch_add(1, Relaxed),
    };
    Ok(entry)
}

/// A redelivery of a message that committed: replay the exact write the ledger recorded.
fn replay<C>(
    db: &Db<C>,
    msg: &Reserve,
    write: &Product,
    produced: i32,
    n: &Counters,
) -> Result<(), BoxError>
where
    C: R2D2Connection + 'static,
    Product: CachedOps<C>,
{
    // `retry` for the transient errors (SQLite busy, deadlocks); a version conflict is an
    // answer here, not a reason to run again, so it is returned as a value.
    let policy =
        RetryPolicy::attempts(50).backoff(Duration::from_millis(1), Duration::from_millis(20));
    let outcome = db.retry(policy, |tx| match tx.update(write) {
        Ok(w) => Ok(Ok(w)),
        Err(Error::Conflict { found, .. }) => Ok(Err(found)),
        Err(e) => Err(e),
    })?;
    match outcome {
        Ok(w) if w.already_applied() => {
            n.replays_already_applied.fetch_add(1, Relaxed);
            Ok(())
        }
        Ok(w) => Err(format!(
            "message {} was applied twice: its replay wrote version {} (first write produced {produced})",
            msg.msg_id, w.version
        )
        .into()),
        // Versions only grow, so a newer version means later writes sit on top of ours.
        Err(Some(found)) if found > i64::from(produced) => {
            n.replays_superseded.fetch_add(1, Relaxed);
            Ok(())
        }
        Err(found) => Err(format!(
            "replaying message {}: the product is at version {found:?}, but the first delivery produced {produced}",
            msg.msg_id
        )
        .into()),
    }
}

/// The final check: every message settled; per product, stock = initial − reserved and
/// version = 1 + reservations, in the database and in the cache.
fn check<C>(
    db: &Db<C>,
    ex: &ExampleDb<C>,
    messages: &[Reserve],
    ledger: &HashMap<u64, Entry>,
    n: &Counters,
) -> Result<(), BoxError>
where
    C: R2D2Connection + 'static,
    Product: CachedOps<C>,
{
    let mut failures = Vec::new();
    let mut reserved = vec![(0i32, 0i32); CATALOGUE.len()];
    for msg in messages {
        match ledger.get(&msg.msg_id) {
            Some(Entry::Reserved { .. }) => {
                let r = &mut reserved[msg.product_id as usize - 1];
                r.0 += msg.qty;
                r.1 += 1;
            }
            Some(Entry::Rejected) => {}
            other => failures.push(format!("message {} ended as {other:?}", msg.msg_id)),
        }
    }
    let deliveries = n.deliveries.load(Relaxed);
    let settled = MESSAGES
        + n.replays_already_applied.load(Relaxed)
        + n.replays_superseded.load(Relaxed)
        + n.duplicates_of_rejected.load(Relaxed);
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
