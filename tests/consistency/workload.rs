//! The randomized concurrent workload: threads over a small hot key set, in phases
//! separated by quiescent checkpoints, logging every operation for the [`Checker`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::{Duration, Instant};

use diesel_l2::Error;

use super::checker::{Checker, Counts};
use super::history::{Effect, Event, History, Outcome};
use super::model::{Key, Kind, Row, Store};

/// How big a run is.
#[derive(Clone, Debug)]
pub struct Config {
    pub threads: usize,
    /// Operations in total (all threads), stopped early by `max_time`.
    pub ops: u64,
    pub max_time: Duration,
    /// Quiescent checkpoints (C3) between phases.
    pub phases: u32,
    /// Hot keys per kind (slots; each slot's id changes when it is re-inserted).
    pub slots: i64,
    pub seed: u64,
}

impl Config {
    pub fn bounded(ops: u64, max_time: Duration) -> Self {
        Config {
            threads: 8,
            ops,
            max_time,
            phases: 8,
            slots: 8,
            seed: std::env::var("DIESEL_L2_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| fastrand::u64(..)),
        }
    }
}

/// How to make a transaction fail at (or right before) COMMIT on this backend.
#[derive(Clone, Copy, Debug)]
pub enum CommitFailure {
    /// PostgreSQL: a row in `posts` whose deferred FK points nowhere; COMMIT fails.
    PgDeferredFk,
    /// SQLite: a row in `commit_guard` whose DEFERRABLE INITIALLY DEFERRED FK points
    /// nowhere; COMMIT fails.
    SqliteDeferredFk,
    /// MariaDB (no deferred constraints): the last statement of the transaction violates
    /// a CHECK constraint, so the transaction fails after all its cached writes.
    MysqlCheck,
}

impl CommitFailure {
    /// Setup SQL for the test's isolated database (no migration changes).
    pub fn setup_sql(self) -> Option<&'static str> {
        match self {
            CommitFailure::PgDeferredFk => None,
            CommitFailure::SqliteDeferredFk => Some(
                "CREATE TABLE commit_guard (id BIGINT PRIMARY KEY NOT NULL, \
                 user_ref BIGINT NOT NULL REFERENCES users (id) DEFERRABLE INITIALLY DEFERRED)",
            ),
            CommitFailure::MysqlCheck => Some(
                "CREATE TABLE commit_guard (id BIGINT PRIMARY KEY, ok INT NOT NULL, \
                 CONSTRAINT commit_guard_ok CHECK (ok = 1)) ENGINE=InnoDB",
            ),
        }
    }

    fn sql(self, n: u64) -> String {
        match self {
            CommitFailure::PgDeferredFk => format!(
                "INSERT INTO posts (id, version, user_id, title) VALUES ({n}, 1, -1, 'doomed')"
            ),
            CommitFailure::SqliteDeferredFk => {
                format!("INSERT INTO commit_guard (id, user_ref) VALUES ({n}, -1)")
            }
            CommitFailure::MysqlCheck => {
                format!("INSERT INTO commit_guard (id, ok) VALUES ({n}, 0)")
            }
        }
    }
}

/// Operation kinds, for the figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Find,
    FindBy,
    FindMany,
    Query,
    List,
    Update,
    Redeliver,
    Insert,
    Delete,
    Multi,
    SavepointRollback,
    ClosureError,
    Panic,
    CommitFailure,
    Evict,
    EvictAll,
    Batched,
}

/// Faults injected, per kind (closure errors, panics, commit failures, savepoint
/// rollbacks, explicit evictions), and operation counts.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub store: String,
    pub ops: u64,
    pub per_op: HashMap<Op, u64>,
    /// Operations that returned an error (conflicts after retries, busy, …): expected
    /// under contention, and checked like any failed transaction.
    pub op_errors: u64,
    pub counts: Counts,
    pub cache: Vec<(String, u64)>,
    pub elapsed: Duration,
    pub examples: Vec<String>,
}

impl Figures {
    pub fn faults(&self) -> u64 {
        [
            Op::SavepointRollback,
            Op::ClosureError,
            Op::Panic,
            Op::CommitFailure,
        ]
        .iter()
        .map(|o| self.per_op.get(o).copied().unwrap_or(0))
        .sum()
    }

    pub fn report(&self, backend: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "[{backend}] {}: {} ops in {:.1}s ({} op errors)",
            self.store,
            self.ops,
            self.elapsed.as_secs_f64(),
            self.op_errors
        );
        let mut ops: Vec<_> = self.per_op.iter().collect();
        ops.sort();
        let _ = writeln!(s, "  ops: {ops:?}");
        let _ = writeln!(s, "  {}", self.counts);
        let _ = writeln!(s, "  cache: {:?}", self.cache);
        for e in &self.examples {
            let _ = writeln!(s, "  e.g. {e}");
        }
        s
    }
}

/// A figures table row: `| backend | store | ops | faults | C1 | C2 | C4 | C3 | lost | C6 |`.
pub fn table(rows: &[(String, Figures)]) -> String {
    let mut s = String::from(
        "| backend | cache | ops | reads checked | writes committed | faults injected | C1 uncommitted read | C2 stale own write | C4 stale read | C3 stale entry | lost/phantom write | C6 replay |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (backend, f) in rows {
        let c = &f.counts;
        let _ = writeln!(
            s,
            "| {backend} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            f.store,
            f.ops,
            c.reads_checked,
            c.writes_committed,
            f.faults(),
            c.c1_uncommitted_read,
            c.c2_stale_own_write,
            c.c4_stale_read,
            c.c3_stale_entry,
            c.lost_or_phantom_write,
            c.c6_violation
        );
    }
    s
}

pub const INJECTED_PANIC: &str = "injected panic (consistency workload)";

/// Keeps the injected panics out of the test output; other panics print as usual.
pub fn quiet_injected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let injected = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|s| *s == INJECTED_PANIC);
            if !injected {
                default(info);
            }
        }));
    });
}

/// The shared key space: slot `s` of a kind currently names id `s + slots * gen[s]`.
pub struct Keys {
    slots: i64,
    gens: HashMap<Kind, Vec<AtomicI64>>,
}

impl Keys {
    fn new(slots: i64) -> Self {
        Keys {
            slots,
            gens: Kind::ALL
                .iter()
                .map(|k| (*k, (0..slots).map(|_| AtomicI64::new(0)).collect()))
                .collect(),
        }
    }

    /// Slots per kind: the ids of one generation are `slots * gen .. slots * (gen + 1)`.
    fn slots(&self) -> i64 {
        self.slots
    }

    fn id(&self, slot: i64, gen: i64) -> i64 {
        slot + self.slots * gen
    }

    /// A hot key: usually a slot's current id, sometimes an older one.
    fn pick(&self, rng: &mut fastrand::Rng, kind: Kind) -> Key {
        let slot = rng.i64(0..self.slots);
        let mut gen = self.gens[&kind][slot as usize].load(Ordering::Acquire);
        if gen > 0 && rng.u8(0..100) < 15 {
            gen -= rng.i64(1..=gen.min(2));
        }
        Key {
            kind,
            id: self.id(slot, gen),
        }
    }

    /// A fresh id, never used before (ids are never reused: see the checker).
    fn fresh(&self, rng: &mut fastrand::Rng, kind: Kind) -> Key {
        let slot = rng.i64(0..self.slots);
        let gen = self.gens[&kind][slot as usize].fetch_add(1, Ordering::AcqRel) + 1;
        Key {
            kind,
            id: self.id(slot, gen),
        }
    }

    /// The ids still hot: each slot's current id and the two before it (what `pick`
    /// chooses from). Checkpoints look at these; the final check looks at all.
    pub fn hot(&self) -> Vec<Key> {
        let mut out = Vec::new();
        for kind in Kind::ALL {
            for (slot, g) in self.gens[&kind].iter().enumerate() {
                let g = g.load(Ordering::Acquire);
                for gen in (g - 2).max(0)..=g {
                    out.push(Key {
                        kind,
                        id: self.id(slot as i64, gen),
                    });
                }
            }
        }
        out
    }

    /// Every id ever handed out.
    pub fn all(&self) -> Vec<Key> {
        let mut out = Vec::new();
        for kind in Kind::ALL {
            for (slot, g) in self.gens[&kind].iter().enumerate() {
                for gen in 0..=g.load(Ordering::Acquire) {
                    out.push(Key {
                        kind,
                        id: self.id(slot as i64, gen),
                    });
                }
            }
        }
        out
    }
}

pub fn gone(key: Key) -> Error {
    Error::NotFound {
        table: key.kind.name(),
        id: key.id.to_string(),
    }
}

fn kind(rng: &mut fastrand::Rng) -> Kind {
    if rng.bool() {
        Kind::User
    } else {
        Kind::Tag
    }
}

/// One worker thread's state.
struct Worker<'a> {
    thread: usize,
    rng: fastrand::Rng,
    seq: u64,
    keys: &'a Keys,
    history: &'a History,
    events: Vec<Event>,
    /// Operation ids handed out (unique per run).
    ops: &'a AtomicU64,
    per_op: HashMap<Op, u64>,
    op_errors: u64,
    failure: CommitFailure,
    guard_ids: &'a AtomicU64,
}

impl Worker<'_> {
    fn payload(&mut self) -> String {
        self.seq += 1;
        format!("T{}.{}", self.thread, self.seq)
    }

    fn any_key(&mut self) -> Key {
        let kd = kind(&mut self.rng);
        self.keys.pick(&mut self.rng, kd)
    }

    /// A read of one generation of user ids through a cached list or query (C10): each id
    /// is checked like a `find`, an id missing from the rows as an absent read.
    fn range_read(&mut self, read: impl FnOnce(i64, i64) -> Result<Vec<Row>, Error>) {
        let k = self.keys.pick(&mut self.rng, Kind::User);
        let lo = k.id - k.id.rem_euclid(self.keys.slots());
        let hi = lo + self.keys.slots() - 1;
        let start = self.history.now();
        let r = read(lo, hi);
        let end = self.history.now();
        match r {
            Ok(rows) => {
                for id in lo..=hi {
                    let key = Key {
                        kind: Kind::User,
                        id,
                    };
                    let seen = rows.iter().find(|r| r.key.id == id).cloned();
                    self.events.push(Event::Read {
                        thread: self.thread,
                        start,
                        end,
                        key,
                        seen,
                    });
                }
            }
            Err(_) => self.op_errors += 1,
        }
    }

    fn fresh_key(&mut self) -> Key {
        let kd = kind(&mut self.rng);
        self.keys.fresh(&mut self.rng, kd)
    }

    fn op(&mut self, store: &dyn Store) {
        let r = self.rng.u8(0..100);
        let op = match r {
            0..=17 => Op::Find,
            18..=21 => Op::FindBy,
            22..=23 => Op::List,
            24..=27 => Op::Query,
            28..=37 => Op::FindMany,
            38..=55 => Op::Update,
            56..=60 => Op::Redeliver,
            61..=65 => Op::Insert,
            66..=69 => Op::Delete,
            70..=77 => Op::Multi,
            78..=81 => Op::SavepointRollback,
            82..=85 => Op::ClosureError,
            86..=88 => Op::Panic,
            89..=93 => Op::CommitFailure,
            94..=96 => Op::Evict,
            97..=98 => Op::Batched,
            _ => Op::EvictAll,
        };
        *self.per_op.entry(op).or_default() += 1;
        match op {
            // A key by id, or a user by its unique email (the key → id index and its
            // negative entries).
            Op::Find | Op::FindBy => {
                let by_email = op == Op::FindBy;
                let k = if by_email {
                    self.keys.pick(&mut self.rng, Kind::User)
                } else {
                    self.any_key()
                };
                let start = self.history.now();
                let r = if by_email {
                    store.find_by_email(k)
                } else {
                    store.find(k)
                };
                let end = self.history.now();
                match r {
                    Ok(seen) => self.events.push(Event::Read {
                        thread: self.thread,
                        start,
                        end,
                        key: k,
                        seen,
                    }),
                    Err(_) => self.op_errors += 1,
                }
            }
            // Cached lists and cached queries (C10): one generation of user ids (every
            // slot's id at some generation), checked key by key.
            Op::List => self.range_read(|lo, hi| store.list_users(lo, hi)),
            Op::Query => self.range_read(|lo, hi| store.query_users(lo, hi)),
            Op::FindMany => {
                let kd = kind(&mut self.rng);
                let n = self.rng.usize(2..=5);
                let ks: Vec<Key> = (0..n).map(|_| self.keys.pick(&mut self.rng, kd)).collect();
                let start = self.history.now();
                let r = store.find_many(&ks);
                let end = self.history.now();
                match r {
                    Ok(rows) => {
                        assert_eq!(rows.len(), ks.len());
                        for (k, seen) in ks.into_iter().zip(rows) {
                            if let Some(row) = &seen {
                                assert_eq!(row.key, k, "find_many returned another key's row");
                            }
                            self.events.push(Event::Read {
                                thread: self.thread,
                                start,
                                end,
                                key: k,
                                seen,
                            });
                        }
                    }
                    Err(_) => self.op_errors += 1,
                }
            }
            Op::Update => {
                let k = self.any_key();
                let p = self.payload();
                let mut sent = None;
                self.write(store, true, |tx, fx| {
                    let cur = tx.get(k)?.ok_or_else(|| gone(k))?;
                    let row = Row {
                        key: k,
                        version: cur.version,
                        payload: p.clone(),
                    };
                    fx.push(Effect::Put(tx.update(&row)?));
                    sent = Some(row);
                    Ok(())
                });
                let _ = sent;
            }
            Op::Redeliver => self.redeliver(store),
            Op::Insert => {
                let k = self.fresh_key();
                let p = self.payload();
                self.write(store, true, |tx, fx| {
                    let stored = tx.insert(&Row {
                        key: k,
                        version: 1,
                        payload: p.clone(),
                    })?;
                    fx.push(Effect::Put(stored));
                    Ok(())
                });
            }
            Op::Delete => {
                let k = self.any_key();
                self.write(store, true, |tx, fx| {
                    let cur = tx.get(k)?.ok_or_else(|| gone(k))?;
                    tx.delete(&cur)?;
                    fx.push(Effect::Delete {
                        key: k,
                        from_version: cur.version,
                    });
                    Ok(())
                });
            }
            Op::Multi => {
                let mut ks = vec![
                    self.keys.pick(&mut self.rng, Kind::User),
                    self.keys.pick(&mut self.rng, Kind::Tag),
                    self.any_key(),
                ];
                // One lock order for every transaction: no deadlocks (PostgreSQL would
                // take a second to detect each).
                ks.sort();
                ks.dedup();
                let p = self.payload();
                self.write(store, true, |tx, fx| {
                    for (i, k) in ks.iter().enumerate() {
                        let cur = tx.get(*k)?.ok_or_else(|| gone(*k))?;
                        let stored = tx.update(&Row {
                            key: *k,
                            version: cur.version,
                            payload: format!("{p}.{i}"),
                        })?;
                        fx.push(Effect::Put(stored));
                    }
                    Ok(())
                });
            }
            Op::SavepointRollback => {
                let mut ks = [self.any_key(), self.any_key()];
                ks.sort();
                let [a, b] = ks;
                let p = self.payload();
                self.write(store, true, |tx, fx| {
                    let cur = tx.get(a)?.ok_or_else(|| gone(a))?;
                    let stored = tx.update(&Row {
                        key: a,
                        version: cur.version,
                        payload: format!("{p}.kept"),
                    })?;
                    fx.push(Effect::Put(stored));
                    // Writes `b` (or `a` again) in a savepoint that fails: rolled back, and
                    // its version must never be seen (C1).
                    let r = tx.savepoint(&mut |sp| {
                        let cur = sp.get(b)?.ok_or_else(|| gone(b))?;
                        sp.update(&Row {
                            key: b,
                            version: cur.version,
                            payload: format!("{p}.rolled-back"),
                        })?;
                        Err(Error::Other("savepoint rolled back on purpose".into()))
                    });
                    match r {
                        // Any failure, a database error included (on MariaDB a deadlock,
                        // which makes InnoDB roll back the *whole* transaction): the
                        // transaction carries on, as the savepoint API allows. If the
                        // database already rolled it back, COMMIT reports
                        // `Error::RolledBack` and nothing is published (the regression
                        // `interleavings::mysql::a_deadlock_victim_does_not_publish_…`).
                        Err(_) => Ok(()),
                        Ok(()) => unreachable!("the savepoint closure always fails"),
                    }
                });
            }
            Op::ClosureError | Op::Panic | Op::CommitFailure => {
                let k = self.any_key();
                let k2 = self.any_key();
                let p = self.payload();
                let guard = self.guard_ids.fetch_add(1, Ordering::Relaxed);
                let sql = self.failure.sql(guard);
                let start = self.history.now();
                let mut fx = Vec::new();
                let r = panic::catch_unwind(AssertUnwindSafe(|| {
                    store.run(false, &mut |tx| {
                        fx.clear();
                        // Writes that will never commit; if they are ever read, C1 fails.
                        for (i, k) in [k, k2].into_iter().enumerate() {
                            if let Some(cur) = tx.get(k)? {
                                let stored = tx.update(&Row {
                                    key: k,
                                    version: cur.version,
                                    payload: format!("{p}.doomed{i}"),
                                })?;
                                fx.push(Effect::Put(stored));
                            }
                        }
                        match op {
                            Op::ClosureError => {
                                Err(Error::Other("closure error on purpose".into()))
                            }
                            Op::Panic => panic::panic_any(INJECTED_PANIC),
                            _ => tx.exec(&sql),
                        }
                    })
                }));
                let end = self.history.now();
                let ok = matches!(r, Ok(Ok(())));
                assert!(
                    !ok || fx.is_empty(),
                    "an injected failure committed: {op:?}"
                );
                self.record(start, end, ok, fx);
            }
            Op::Evict => {
                let k = self.any_key();
                store.evict(k);
            }
            Op::Batched => {
                // Shares a transaction and a COMMIT with other threads' batched updates.
                let k = self.any_key();
                let p = self.payload();
                let attempted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
                let start = self.history.now();
                let r = store.submit_update(k, p, attempted.clone());
                let end = self.history.now();
                match r {
                    Ok(row) => self.record(start, end, true, vec![Effect::Put(row)]),
                    Err(_) => {
                        let tried = std::mem::take(&mut *attempted.lock().unwrap());
                        self.record(
                            start,
                            end,
                            false,
                            tried.into_iter().map(Effect::Put).collect(),
                        );
                    }
                }
            }
            Op::EvictAll => store.evict_all(kind(&mut self.rng)),
        }
    }

    /// One operation id, delivered 1–3 times as an at-least-once queue would (the first
    /// two deliveries concurrently, half of the time): an update of a hot key to a
    /// payload of its own. Exactly one delivery may run it; the others must return its
    /// recorded outcome (C6).
    fn redeliver(&mut self, store: &dyn Store) {
        let k = self.any_key();
        let p = self.payload();
        let op = format!(
            "op-{}-{}",
            self.thread,
            self.ops.fetch_add(1, Ordering::Relaxed)
        );
        let deliveries = self.rng.usize(1..=3);
        let concurrent = deliveries >= 2 && self.rng.bool();
        let history = self.history;
        let deliver = |store: &dyn Store| {
            let start = history.now();
            let mut fx = Vec::new();
            let r = store.run_once(&op, &mut |tx| {
                fx.clear();
                let cur = tx.get(k)?.ok_or_else(|| gone(k))?;
                let stored = tx.update(&Row {
                    key: k,
                    version: cur.version,
                    payload: p.clone(),
                })?;
                fx.push(Effect::Put(stored.clone()));
                Ok(stored)
            });
            let end = history.now();
            if matches!(r, Ok((_, true))) {
                fx.clear(); // a replay ran nothing
            }
            (start, end, r, fx)
        };
        let mut results = Vec::new();
        if concurrent {
            let (a, b) = std::thread::scope(|s| {
                let a = s.spawn(|| deliver(store));
                let b = s.spawn(|| deliver(store));
                (a.join(), b.join())
            });
            results.push(a.expect("delivery thread panicked"));
            results.push(b.expect("delivery thread panicked"));
        }
        while results.len() < deliveries {
            results.push(deliver(store));
        }
        let mut ran: Vec<Row> = Vec::new();
        let mut replayed: Vec<Row> = Vec::new();
        for (start, end, r, fx) in results {
            match r {
                Ok((row, false)) => {
                    ran.push(row);
                    self.record(start, end, true, fx);
                }
                Ok((row, true)) => {
                    replayed.push(row);
                    self.record(start, end, true, Vec::new());
                }
                Err(_) => self.record(start, end, false, fx),
            }
        }
        let mut violation = |what: String| {
            self.events.push(Event::OnceViolated {
                thread: self.thread,
                op: op.clone(),
                what,
            })
        };
        if ran.len() > 1 {
            violation(format!("ran {} times: {ran:?}", ran.len()));
        } else if ran.is_empty() && !replayed.is_empty() {
            violation("replayed, but no delivery ran it".into());
        } else if let Some(first) = ran.first() {
            if let Some(other) = replayed.iter().find(|r| *r != first) {
                violation(format!("ran as {first:?}, replayed as {other:?}"));
            }
        }
    }

    fn record(&mut self, start: u64, end: u64, ok: bool, effects: Vec<Effect>) {
        if !ok {
            self.op_errors += 1;
        }
        self.events.push(Event::Write {
            thread: self.thread,
            start,
            end,
            outcome: if ok {
                Outcome::Committed
            } else {
                Outcome::Failed
            },
            effects,
        });
    }

    /// Runs one (retried) transaction and records it with the effects of its last attempt.
    fn write(
        &mut self,
        store: &dyn Store,
        retry: bool,
        mut body: impl FnMut(&mut dyn super::TxOps, &mut Vec<Effect>) -> Result<(), Error>,
    ) {
        let start = self.history.now();
        let mut fx = Vec::new();
        let r = store.run(retry, &mut |tx| {
            fx.clear();
            body(tx, &mut fx)
        });
        let end = self.history.now();
        self.record(start, end, r.is_ok(), fx);
    }
}

/// What every workload thread of a run shares.
struct Shared<'a> {
    keys: &'a Keys,
    history: &'a History,
    ops: &'a AtomicU64,
    guard_ids: &'a AtomicU64,
    failure: CommitFailure,
}

/// One workload thread of one phase: up to `per_thread` operations before `deadline`;
/// returns its per-operation counts, its errors and how many operations it ran.
fn work(
    store: &dyn Store,
    shared: &Shared<'_>,
    thread: usize,
    seed: u64,
    phase: u64,
    per_thread: u64,
    deadline: Instant,
) -> (HashMap<Op, u64>, u64, u64) {
    let mut w = Worker {
        thread,
        rng: fastrand::Rng::with_seed(seed),
        seq: phase << 32,
        keys: shared.keys,
        history: shared.history,
        events: Vec::new(),
        ops: shared.ops,
        per_op: HashMap::new(),
        op_errors: 0,
        failure: shared.failure,
        guard_ids: shared.guard_ids,
    };
    let mut done = 0;
    while done < per_thread && Instant::now() < deadline {
        w.op(store);
        done += 1;
    }
    shared.history.extend(std::mem::take(&mut w.events));
    (w.per_op, w.op_errors, done)
}

/// Generation 0 of every slot, committed before the workload starts and checked.
#[allow(clippy::too_many_arguments)]
fn seed_slots(
    store: &dyn Store,
    config: &Config,
    failure: CommitFailure,
    keys: &Keys,
    history: &History,
    ops: &AtomicU64,
    guard_ids: &AtomicU64,
    checker: &mut Checker,
) {
    let mut setup = Worker {
        thread: usize::MAX,
        rng: fastrand::Rng::with_seed(config.seed),
        seq: 0,
        keys,
        history,
        events: Vec::new(),
        ops,
        per_op: HashMap::new(),
        op_errors: 0,
        failure,
        guard_ids,
    };
    for key in keys.all() {
        let p = setup.payload();
        setup.write(store, true, |tx, fx| {
            fx.push(Effect::Put(tx.insert(&Row {
                key,
                version: 1,
                payload: p.clone(),
            })?));
            Ok(())
        });
    }
    assert_eq!(setup.op_errors, 0, "setup inserts failed");
    checker.check_phase(std::mem::take(&mut setup.events));
}

/// Runs the workload against `store` and checks it. `setup` rows are inserted first.
pub fn run(store: &dyn Store, config: &Config, failure: CommitFailure) -> Figures {
    quiet_injected_panics();
    let history = History::new();
    let keys = Keys::new(config.slots);
    let guard_ids = AtomicU64::new(1_000_000);
    let ops = AtomicU64::new(0);
    let mut checker = Checker::new();
    let started = Instant::now();

    seed_slots(
        store,
        config,
        failure,
        &keys,
        &history,
        &ops,
        &guard_ids,
        &mut checker,
    );

    let per_phase = config.ops.div_ceil(u64::from(config.phases.max(1)));
    let per_thread = per_phase.div_ceil(config.threads as u64).max(1);
    let mut figures = Figures {
        store: store.name().to_string(),
        ..Figures::default()
    };
    let deadline = started + config.max_time;
    let mut phase = 0u64;
    while figures.ops < config.ops && Instant::now() < deadline {
        let results: Vec<(HashMap<Op, u64>, u64, u64)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..config.threads)
                .map(|thread| {
                    let keys = &keys;
                    let history = &history;
                    let guard_ids = &guard_ids;
                    let ops = &ops;
                    let seed = config
                        .seed
                        .wrapping_add(phase.wrapping_mul(1_000_003))
                        .wrapping_add(thread as u64 * 7919);
                    s.spawn(move || {
                        let shared = Shared {
                            keys,
                            history,
                            ops,
                            guard_ids,
                            failure,
                        };
                        work(store, &shared, thread, seed, phase, per_thread, deadline)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("workload thread panicked"))
                .collect()
        });
        for (per_op, errors, done) in results {
            for (op, n) in per_op {
                *figures.per_op.entry(op).or_default() += n;
            }
            figures.op_errors += errors;
            figures.ops += done;
        }
        checker.check_phase(history.take());
        // Quiescent checkpoint: every thread has stopped.
        checkpoint(store, &keys.hot(), &mut checker);
        phase += 1;
    }
    let all = keys.all();
    checkpoint(store, &all, &mut checker);
    for key in all {
        let in_db = store.db_row(key).expect("final read of the database");
        checker.check_final(key, &in_db);
    }
    figures.elapsed = started.elapsed();
    figures.cache = store.cache_figures();
    figures.counts = checker.counts.clone();
    figures.examples = checker.examples.clone();
    figures
}

/// With no writer active, every key read through the cache must equal the database.
pub fn checkpoint(store: &dyn Store, keys: &[Key], checker: &mut Checker) {
    for &key in keys {
        let in_db = store.db_row(key).expect("checkpoint read of the database");
        let through = store.find(key).expect("checkpoint read through the cache");
        checker.check_entry(key, &through, &in_db);
        if key.kind == Kind::User {
            // The unique-key index must agree too: a stale "no row has this email".
            let by_key = store
                .find_by_email(key)
                .expect("checkpoint read by unique key");
            checker.check_entry(key, &by_key, &in_db);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Cross-process adversaries (C7): plain-SQL writers that leave the version alone, deletes
// followed by re-inserts, and a second `Db` (own pool, own listener) whose reads are
// checked with a bounded lag.
// ---------------------------------------------------------------------------------------

/// A connection of its own that writes with plain SQL, as psql or another program would.
pub trait PlainSql: Send {
    /// In one transaction: `update` (which leaves the version alone), then `read_back`
    /// (`SELECT version, <text column> AS payload …`). The row read back, if any.
    fn update(&mut self, update: &str, read_back: &str) -> Result<Option<(i64, String)>, String>;
    /// In one transaction: `read` the row, then `delete` it at the version read (the
    /// statement is given that version). The row deleted, if any.
    fn delete(
        &mut self,
        read: &str,
        delete: &dyn Fn(i64) -> String,
    ) -> Result<Option<(i64, String)>, String>;
    /// One statement, autocommitted; false if it failed (say, the id exists again).
    fn insert(&mut self, insert: &str) -> bool;
}

/// What a cross-process run adds to [`run`]'s workload.
pub struct Adversaries<'a> {
    /// A second `Db` with its own pool and listener: only reads, all checked (lagged).
    pub second: &'a dyn Store,
    /// Plain-SQL writers: the first updates the workload's keys without touching the
    /// version; the second deletes and re-inserts keys of its own.
    pub plain: Vec<Box<dyn PlainSql>>,
    /// How far behind a write made elsewhere a read may be (C7's bound).
    pub delta: Duration,
    /// How long writers stay quiet before a checkpoint (the listeners catch up).
    pub settle: Duration,
    /// A third `Db` whose writers die (panic) between COMMIT and their cache update: each
    /// of its writes committed, and its shared-tier fences are left behind (C9).
    pub dying: Option<&'a dyn Store>,
    /// Called again and again on a thread of its own while the workload runs: injects
    /// faults (into Redis, C9).
    pub faults: Option<&'a (dyn Fn(&mut fastrand::Rng) + Sync)>,
}

/// Threads 1000.. write plain SQL, 2000.. read through the second `Db`, 4000.. write
/// through the dying third `Db`, everything else goes through the first.
pub fn origin(thread: usize) -> usize {
    match thread {
        1000..=1999 => 1,
        2000..=2999 => 2,
        4000..=4999 => 3,
        _ => 0,
    }
}

/// The delete/re-insert adversary's own ids (users), never touched by the workload.
const REINSERT_BASE: i64 = 50_000_000;
const REINSERT_KEYS: i64 = 4;

fn reinsert_key(rng: &mut fastrand::Rng) -> Key {
    Key {
        kind: Kind::User,
        id: REINSERT_BASE + rng.i64(0..REINSERT_KEYS),
    }
}

/// A row of the re-insert key space carries its incarnation in its payload (`…#i<n>`);
/// the checker sees `n << INCARNATION_SHIFT | version`.
pub fn translate(row: Row) -> Row {
    use super::checker::INCARNATION_SHIFT;
    match row.payload.rsplit_once("#i").map(|(_, n)| n.parse::<i64>()) {
        Some(Ok(n)) => Row {
            version: (n << INCARNATION_SHIFT) | row.version,
            ..row
        },
        _ => row,
    }
}

fn gone_marker(key: Key, incarnation: i64) -> Effect {
    use super::checker::{GONE, INCARNATION_SHIFT};
    Effect::Put(Row {
        key,
        version: (incarnation << INCARNATION_SHIFT) | GONE,
        payload: format!("gone#i{incarnation}"),
    })
}

fn incarnation(payload: &str) -> i64 {
    payload
        .rsplit_once("#i")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

fn committed(thread: usize, start: u64, end: u64, effects: Vec<Effect>) -> Event {
    Event::Write {
        thread,
        start,
        end,
        outcome: Outcome::Committed,
        effects,
    }
}

/// The re-insert adversary's incarnation counters, and the gate that keeps it from
/// re-inserting a key while the first `Db` deletes one: the delete is versioned by
/// `(id, version)` only, and a re-insert starts again at version 1, so without the gate
/// the adversary could delete the incarnation read and re-insert the next one at the same
/// version between `get` and `delete`, and the versioned delete then (correctly, by its
/// contract) deleted the *next* incarnation while the history recorded the end of the one
/// read. The deleter holds the gate through its COMMIT only: with the `test-hooks`
/// feature the first `Db`'s hook opens it at `AfterCommit`
/// ([`release_held_gate`]), so a re-insert can land between the delete's COMMIT and its
/// shared-tier settle (the race `a_delete_settled_after_a_plain_re_insert_leaves_no_tombstone`
/// pins down, C9).
#[derive(Default)]
pub struct Reinserts {
    incarnations: Mutex<HashMap<i64, i64>>,
    gate: Arc<Gate>,
}

/// A binary semaphore whose holder may be released from a hook on its own thread.
#[derive(Default)]
struct Gate {
    held: Mutex<bool>,
    free: Condvar,
}

impl Gate {
    fn acquire(&self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while *held {
            held = self.free.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        *held = true;
    }

    fn release(&self) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.free.notify_all();
    }
}

thread_local! {
    /// The gate this thread holds, if any.
    static HELD_GATE: RefCell<Option<Arc<Gate>>> = const { RefCell::new(None) };
}

/// Opens the gate this thread holds, if any: called by the first `Db`'s test hook at
/// `AfterCommit`.
pub fn release_held_gate() {
    if let Some(gate) = HELD_GATE.with(|h| h.borrow_mut().take()) {
        gate.release();
    }
}

/// The name of the dying writer's thread: a test hook panics on it after COMMIT.
pub const DYING_WRITER: &str = "dying-writer";

/// Versioned updates of the workload's keys through a `Db` whose every transaction dies
/// (panics, with [`INJECTED_PANIC`]) after COMMIT, before its cache work: each write
/// committed, and it leaves its shared-tier fences behind (C9).
fn dying_writes(
    store: &dyn Store,
    thread: usize,
    keys: &Keys,
    history: &History,
    stop: &std::sync::atomic::AtomicBool,
    seed: u64,
) -> (Vec<Event>, u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut events, mut n, mut seq) = (Vec::new(), 0, 0u64);
    while !stop.load(Ordering::Acquire) {
        let kd = kind(&mut rng);
        let k = keys.pick(&mut rng, kd);
        seq += 1;
        let payload = format!("D{seed}.{seq}");
        let mut fx = Vec::new();
        let start = history.now();
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            store.run(false, &mut |tx| {
                fx.clear();
                if let Some(cur) = tx.get(k)? {
                    let next = Row {
                        payload: payload.clone(),
                        ..cur
                    };
                    fx.push(Effect::Put(tx.update(&next)?));
                }
                Ok(())
            })
        }));
        let end = history.now();
        n += 1;
        let died_after_commit = match &r {
            Err(p) => p
                .downcast_ref::<&str>()
                .is_some_and(|s| *s == INJECTED_PANIC),
            Ok(_) => false,
        };
        if let Err(p) = r {
            if !died_after_commit {
                panic::resume_unwind(p);
            }
        }
        if died_after_commit && !fx.is_empty() {
            events.push(committed(thread, start, end, fx));
        }
        std::thread::sleep(Duration::from_millis(rng.u64(1..5)));
    }
    (events, n)
}

/// Plain updates of the workload's keys: `UPDATE … SET name = …` with no version change
/// (the database bumps it).
fn plain_updates(
    plain: &mut dyn PlainSql,
    keys: &Keys,
    history: &History,
    stop: &std::sync::atomic::AtomicBool,
    seed: u64,
) -> (Vec<Event>, u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut events, mut n, mut seq) = (Vec::new(), 0, 0u64);
    while !stop.load(Ordering::Acquire) {
        let kd = kind(&mut rng);
        let k = keys.pick(&mut rng, kd);
        seq += 1;
        let p = format!("P{seed}.{seq}");
        let (update, read_back) = match k.kind {
            Kind::User => (
                format!("UPDATE users SET name = '{p}' WHERE id = {}", k.id),
                format!(
                    "SELECT version, name AS payload FROM users WHERE id = {}",
                    k.id
                ),
            ),
            Kind::Tag => (
                format!("UPDATE tags SET label = '{p}' WHERE id = 't{}'", k.id),
                format!(
                    "SELECT version, label AS payload FROM tags WHERE id = 't{}'",
                    k.id
                ),
            ),
        };
        let start = history.now();
        let r = plain.update(&update, &read_back);
        let end = history.now();
        n += 1;
        if let Ok(Some((version, payload))) = r {
            if payload == p {
                let row = Row {
                    key: k,
                    version,
                    payload,
                };
                events.push(committed(1000, start, end, vec![Effect::Put(row)]));
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    (events, n)
}

/// Deletes and re-inserts (at version 1, under any tombstone) of the adversary's own
/// keys, and plain updates of them.
fn deletes_and_reinserts(
    plain: &mut dyn PlainSql,
    history: &History,
    stop: &std::sync::atomic::AtomicBool,
    seed: u64,
    reinserts: &Reinserts,
) -> (Vec<Event>, u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut events, mut n, mut seq) = (Vec::new(), 0, 0u64);
    while !stop.load(Ordering::Acquire) {
        let k = reinsert_key(&mut rng);
        seq += 1;
        n += 1;
        let read = format!(
            "SELECT version, name AS payload FROM users WHERE id = {}",
            k.id
        );
        let start = history.now();
        match rng.u8(0..4) {
            0 => {
                let id = k.id;
                let r = plain.delete(&read, &move |v| {
                    format!("DELETE FROM users WHERE id = {id} AND version = {v}")
                });
                let end = history.now();
                if let Ok(Some((_, payload))) = r {
                    events.push(committed(
                        1001,
                        start,
                        end,
                        vec![gone_marker(k, incarnation(&payload))],
                    ));
                }
            }
            1 | 2 => {
                reinserts.gate.acquire();
                let mut inc = reinserts
                    .incarnations
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let next = inc.get(&k.id).copied().unwrap_or(0) + 1;
                let p = format!("R{seed}.{seq}#i{next}");
                let ok = plain.insert(&format!(
                    "INSERT INTO users (id, version, email, name, bio) VALUES ({}, 1, '{}', '{p}', '{}')",
                    k.id,
                    super::model::user_email(k.id),
                    super::model::list_group(k.id)
                ));
                let end = history.now();
                if ok {
                    inc.insert(k.id, next);
                    let row = translate(Row {
                        key: k,
                        version: 1,
                        payload: p,
                    });
                    events.push(committed(1001, start, end, vec![Effect::Put(row)]));
                }
                drop(inc);
                reinserts.gate.release();
            }
            _ => {
                let Ok(Some((_, cur))) =
                    plain.update(&format!("SELECT 1 FROM users WHERE id = {}", k.id), &read)
                else {
                    continue;
                };
                let p = format!("R{seed}.{seq}#i{}", incarnation(&cur));
                let start = history.now();
                let r = plain.update(
                    &format!("UPDATE users SET name = '{p}' WHERE id = {}", k.id),
                    &read,
                );
                let end = history.now();
                if let Ok(Some((version, payload))) = r {
                    if payload == p {
                        let row = translate(Row {
                            key: k,
                            version,
                            payload,
                        });
                        events.push(committed(1001, start, end, vec![Effect::Put(row)]));
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_micros(700));
    }
    (events, n)
}

/// Reads through `store` (thread ids tell which `Db`), of the workload's keys and of
/// the re-insert keys; the first `Db`'s reader also deletes re-insert keys through the
/// library now and then, so its tombstones meet remote re-inserts.
fn lagged_reads(
    store: &dyn Store,
    thread: usize,
    keys: &Keys,
    history: &History,
    stop: &std::sync::atomic::AtomicBool,
    seed: u64,
    reinserts: &Reinserts,
) -> (Vec<Event>, u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut events, mut n) = (Vec::new(), 0);
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let k = if rng.bool() {
            reinsert_key(&mut rng)
        } else {
            let kd = kind(&mut rng);
            keys.pick(&mut rng, kd)
        };
        if origin(thread) == 0 && k.id >= REINSERT_BASE && rng.u8(0..4) == 0 {
            // No re-insert from the read to the COMMIT (see `Reinserts`); with the
            // `test-hooks` feature the gate opens at `AfterCommit`, before the settle.
            reinserts.gate.acquire();
            HELD_GATE.with(|h| *h.borrow_mut() = Some(Arc::clone(&reinserts.gate)));
            let start = history.now();
            let mut fx = Vec::new();
            let r = store.run(true, &mut |tx| {
                fx.clear();
                if let Some(cur) = tx.get(k)? {
                    tx.delete(&cur)?;
                    fx.push(gone_marker(k, incarnation(&cur.payload)));
                }
                Ok(())
            });
            let end = history.now();
            // Still held if the transaction did not commit (or without the hook).
            release_held_gate();
            if r.is_ok() && !fx.is_empty() {
                events.push(committed(thread, start, end, fx));
            }
            continue;
        }
        let start = history.now();
        let r = store.find(k);
        let end = history.now();
        if let Ok(seen) = r {
            events.push(Event::Read {
                thread,
                start,
                end,
                key: k,
                seen: seen.map(translate),
            });
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    (events, n)
}

/// With no writer active and the listeners given `settle` to catch up, every key read
/// through the cache (rows translated) must equal the database.
pub fn checkpoint_translated(store: &dyn Store, keys: &[Key], checker: &mut Checker) {
    for &key in keys {
        let in_db = store
            .db_row(key)
            .expect("checkpoint read of the database")
            .map(translate);
        let through = store
            .find(key)
            .expect("checkpoint read through the cache")
            .map(translate);
        checker.check_entry(key, &through, &in_db);
        if key.kind == Kind::User {
            let by_key = store
                .find_by_email(key)
                .expect("checkpoint read by unique key")
                .map(translate);
            checker.check_entry(key, &by_key, &in_db);
        }
    }
}

/// [`run`]'s workload through the first `Db` (which must listen), plus the adversaries:
/// plain-SQL updates of the same keys, deletes and re-inserts, and a second listening `Db`
/// whose reads are checked too. Reads of either `Db` may lag writes made outside it by
/// less than `delta` (C7); the largest lag seen is returned with the figures.
pub fn run_adversarial(
    store: &dyn Store,
    adv: Adversaries<'_>,
    config: &Config,
    failure: CommitFailure,
) -> (Figures, super::checker::LagSeen) {
    quiet_injected_panics();
    let history = History::new();
    let keys = Keys::new(config.slots);
    let guard_ids = AtomicU64::new(1_000_000);
    let ops = AtomicU64::new(0);
    let mut checker = Checker::new();
    checker.lag = Some(super::checker::LagRule {
        delta: adv.delta.as_nanos() as u64,
        origin,
    });
    let started = Instant::now();
    let reinserts = Reinserts::default();
    let mut plain = adv.plain;

    seed_slots(
        store,
        config,
        failure,
        &keys,
        &history,
        &ops,
        &guard_ids,
        &mut checker,
    );

    let per_phase = config.ops.div_ceil(u64::from(config.phases.max(1)));
    let per_thread = per_phase.div_ceil(config.threads as u64).max(1);
    let mut figures = Figures {
        store: format!("{} + adversaries", store.name()),
        ..Figures::default()
    };
    let deadline = started + config.max_time;
    let mut phase = 0u64;
    let reinsert_keys: Vec<Key> = (0..REINSERT_KEYS)
        .map(|i| Key {
            kind: Kind::User,
            id: REINSERT_BASE + i,
        })
        .collect();
    while figures.ops < config.ops && Instant::now() < deadline {
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (results, extra) = std::thread::scope(|s| {
            let seed = config.seed.wrapping_add(phase.wrapping_mul(1_000_003));
            let (keys, history, stop, reinserts) = (&keys, &history, &stop, &reinserts);
            let mut side = Vec::new();
            let mut it = plain.iter_mut();
            if let Some(p) = it.next() {
                side.push(
                    s.spawn(move || plain_updates(p.as_mut(), keys, history, stop, seed ^ 1)),
                );
            }
            if let Some(p) = it.next() {
                side.push(s.spawn(move || {
                    deletes_and_reinserts(p.as_mut(), history, stop, seed ^ 2, reinserts)
                }));
            }
            for i in 0..2 {
                let second = adv.second;
                side.push(s.spawn(move || {
                    lagged_reads(
                        second,
                        2000 + i,
                        keys,
                        history,
                        stop,
                        seed ^ (3 + i as u64),
                        reinserts,
                    )
                }));
            }
            side.push(s.spawn(move || {
                lagged_reads(store, 3000, keys, history, stop, seed ^ 5, reinserts)
            }));
            if let Some(dying) = adv.dying {
                side.push(
                    std::thread::Builder::new()
                        .name(DYING_WRITER.into())
                        .spawn_scoped(s, move || {
                            dying_writes(dying, 4000, keys, history, stop, seed ^ 6)
                        })
                        .expect("spawn the dying writer"),
                );
            }
            if let Some(faults) = adv.faults {
                side.push(s.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(seed ^ 7);
                    while !stop.load(Ordering::Acquire) {
                        faults(&mut rng);
                        std::thread::sleep(Duration::from_millis(rng.u64(100..400)));
                    }
                    (Vec::new(), 0)
                }));
            }
            let handles: Vec<_> = (0..config.threads)
                .map(|thread| {
                    let guard_ids = &guard_ids;
                    let ops = &ops;
                    let seed = seed.wrapping_add(thread as u64 * 7919);
                    s.spawn(move || {
                        let shared = Shared {
                            keys,
                            history,
                            ops,
                            guard_ids,
                            failure,
                        };
                        work(store, &shared, thread, seed, phase, per_thread, deadline)
                    })
                })
                .collect();
            let results: Vec<(HashMap<Op, u64>, u64, u64)> = handles
                .into_iter()
                .map(|h| h.join().expect("workload thread panicked"))
                .collect();
            stop.store(true, Ordering::Release);
            let mut extra = 0;
            for h in side {
                let (events, n) = h.join().expect("adversary thread panicked");
                history.extend(events);
                extra += n;
            }
            (results, extra)
        });
        for (per_op, errors, done) in results {
            for (op, n) in per_op {
                *figures.per_op.entry(op).or_default() += n;
            }
            figures.op_errors += errors;
            figures.ops += done;
        }
        figures.ops += extra;
        checker.check_phase(history.take());
        // Quiescent checkpoint once the listeners have caught up, in both `Db`s.
        std::thread::sleep(adv.settle);
        let mut hot = keys.hot();
        hot.extend(&reinsert_keys);
        checkpoint_translated(store, &hot, &mut checker);
        checkpoint_translated(adv.second, &hot, &mut checker);
        phase += 1;
    }
    let all = keys.all();
    std::thread::sleep(adv.settle);
    checkpoint_translated(store, &all, &mut checker);
    checkpoint_translated(adv.second, &all, &mut checker);
    for key in all {
        let in_db = store.db_row(key).expect("final read of the database");
        checker.check_final(key, &in_db);
    }
    for &key in &reinsert_keys {
        let in_db = store
            .db_row(key)
            .expect("final read of the database")
            .map(translate);
        checker.check_final_versions(key, &in_db);
    }
    figures.elapsed = started.elapsed();
    figures.cache = store.cache_figures();
    figures.counts = checker.counts.clone();
    figures.examples = checker.examples.clone();
    (figures, checker.lag_seen)
}
