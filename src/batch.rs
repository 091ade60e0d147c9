//! The batcher: many writers, one transaction, one COMMIT; each caller still waits until
//! its own operation is durable (C11).
//!
//! Write-through costs one transaction and one durable COMMIT per write. When many
//! threads write at once, a [`Batcher`] collects their operations for a short window (at
//! most `max_batch` operations or `max_wait`), runs them in **one** transaction, each in
//! its own savepoint, and commits once. Every caller blocks until the batch that carried
//! its operation has committed and the cache has applied it, then gets its own result:
//!
//! - **Isolation of failures.** An operation's `Err` (a [`Conflict`](Error::Conflict),
//!   your own error) rolls back its own writes only; the others commit. The batch first
//!   runs every operation straight in the transaction (half the statements of a
//!   savepoint each); if one fails, that attempt is rolled back and the batch runs again
//!   with a savepoint per operation, so the others still commit and the failure is its
//!   caller's alone. Operations may therefore run more than once before they commit. A panic in an
//!   operation is re-raised in its caller's thread, and neither poisons the batch nor the
//!   batcher.
//! - **Order.** Operations run in submission order, so two operations on one key run in
//!   the order they were submitted, within a batch and across batches.
//! - **Aborted transactions.** Where the database aborts the whole transaction (a MariaDB
//!   deadlock rolls back every savepoint), the operation that hit the abort fails with
//!   its (retryable) error, and the others are re-run in the next batch: operations are
//!   `FnMut` closures and must be re-runnable.
//! - **A failed COMMIT** fails every operation of the batch with
//!   [`Error::BatchCommitFailed`] (retryable), caches nothing (C1), and the batcher goes
//!   on with the next batch. A COMMIT whose outcome is unknown (the connection died during
//!   it) is [`Error::CommitOutcomeUnknown`]: retry such an operation only if it carries an
//!   operation id ([`Batcher::submit_once`]), which makes the retry a replay if the
//!   COMMIT did land.
//! - **Read-your-writes per caller (C2).** The cache changes of every operation are
//!   applied after the COMMIT and before any caller of the batch returns.
//! - **How many batches in flight.** One by default: one thread runs the batches, one
//!   after the other; while a batch runs, new operations queue up and form the next batch
//!   once it has committed. One at a time keeps submission order per key across batches,
//!   keeps two batches from deadlocking on each other's rows, and puts two deliveries of
//!   one operation id in order; throughput comes from the size of the batches (one COMMIT
//!   for many writes), which grows by itself under load. Where a batch is bound by round
//!   trips rather than by its COMMIT (MariaDB, whose updates reload each row),
//!   [`BatchConfig::in_flight`] lets several batches run at once, each on its own
//!   connection, with order kept within each batch only.
//! - **Shutdown** ([`Batcher::shutdown`], or dropping the last clone) runs what was
//!   submitted before it, then stops the thread.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use diesel::r2d2::R2D2Connection;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::inbox::{Operation, OperationLog, Outcome, Step};
use crate::tx::Tx;

/// How a [`Batcher`] groups operations.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchConfig {
    /// Most operations in one transaction.
    pub max_batch: usize,
    /// Longest time the first operation of a batch waits for others to join it. It waits
    /// only while writers are concurrent (the last batch carried more than one operation),
    /// unless [`always_wait`](BatchConfig::always_wait) is set.
    pub max_wait: Duration,
    /// Wait `max_wait` for company even when the last batch carried a single operation.
    pub always_wait: bool,
    /// Batches that may run at once, each on its own connection (default 1).
    pub in_flight: usize,
}

impl Default for BatchConfig {
    /// 128 operations, 2 ms.
    fn default() -> Self {
        BatchConfig {
            max_batch: 128,
            max_wait: Duration::from_millis(2),
            always_wait: false,
            in_flight: 1,
        }
    }
}

impl BatchConfig {
    /// A batch of at most `max_batch` operations, waiting at most `max_wait`.
    pub fn new(max_batch: usize, max_wait: Duration) -> Self {
        BatchConfig {
            max_batch,
            max_wait,
            always_wait: false,
            in_flight: 1,
        }
    }

    /// Lets `n` batches run at once, each on its own connection. With one (the default)
    /// operations run strictly in submission order, across batches too. With more, order
    /// holds within a batch only: two batches running at once may write the same rows,
    /// so one of them waits for the other's locks (a deadlock between them fails the
    /// victim operation and re-runs the rest, as any abort). Worth it where the database
    /// round trip, not the COMMIT, is what limits a batch (MariaDB, whose updates need a
    /// reload after each statement); see P9 in BENCHMARKS.md.
    #[must_use]
    pub fn in_flight(mut self, n: usize) -> Self {
        self.in_flight = n;
        self
    }

    /// Always wait up to `max_wait` for more operations, even for a lone writer (which
    /// then pays `max_wait` of latency per operation). Off by default: a lone writer's
    /// operation starts at once, like PostgreSQL's `commit_delay` with `commit_siblings`.
    #[must_use]
    pub fn always_wait(mut self) -> Self {
        self.always_wait = true;
        self
    }
}

/// A batcher's counters, from [`Batcher::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BatchStats {
    /// Transactions committed or attempted.
    pub batches: u64,
    /// Operations run (re-runs after an aborted transaction count again).
    pub operations: u64,
    /// The largest batch so far.
    pub largest_batch: u64,
    /// Total time operations waited in the queue before their batch started, in µs.
    pub wait_us: u64,
    /// Operations that returned an error (their own).
    pub failed_operations: u64,
    /// Operations that panicked.
    pub panics: u64,
    /// Batches whose COMMIT failed (every operation failed).
    pub failed_commits: u64,
    /// Batches aborted by the database mid-way, their survivors re-run.
    pub aborted_batches: u64,
}

impl BatchStats {
    /// Operations per batch, on average.
    pub fn mean_batch(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.operations as f64 / self.batches as f64
        }
    }

    /// Mean time an operation waited before its batch started.
    pub fn mean_wait(&self) -> Duration {
        Duration::from_micros(self.wait_us.checked_div(self.operations).unwrap_or(0))
    }
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    operations: AtomicU64,
    largest_batch: AtomicU64,
    wait_us: AtomicU64,
    failed_operations: AtomicU64,
    panics: AtomicU64,
    failed_commits: AtomicU64,
    aborted_batches: AtomicU64,
}

/// What an operation produced, before its caller downcasts it.
type Value = Box<dyn Any + Send>;

/// A submitted operation, as the batch thread runs it (re-runnable).
/// The flag says whether the operation runs in a savepoint of its own (see `run_batch`).
type RunOp<C> = Box<dyn FnMut(&mut Tx<'_, C>, bool) -> Result<Ran> + Send>;

/// Reads the recorded outcome of an operation id after COMMIT.
type ReplayOp<C> = Box<dyn Fn(&Db<C>) -> Result<Value> + Send>;

/// How one operation ended.
enum Done {
    Value(Value),
    Failed(Error),
    Panicked(Box<dyn Any + Send>),
}

/// What running an operation in the batch's transaction gave.
enum Ran {
    /// Ok: its result, to deliver after COMMIT.
    Value(Value),
    /// Its id was taken: replay it after COMMIT.
    Replay,
}

/// One submitted operation.
struct Job<C: R2D2Connection + 'static> {
    run: RunOp<C>,
    /// Reads the recorded outcome of an operation id after COMMIT (replays only).
    replay: Option<ReplayOp<C>>,
    reply: SyncSender<Done>,
    queued: Instant,
}

struct Shared<C: R2D2Connection + 'static> {
    queue: Mutex<Option<Sender<Job<C>>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    counters: Arc<Counters>,
}

impl<C: R2D2Connection + 'static> Drop for Shared<C> {
    fn drop(&mut self) {
        stop(&self.queue, &self.threads);
    }
}

fn stop<C: R2D2Connection + 'static>(
    queue: &Mutex<Option<Sender<Job<C>>>>,
    threads: &Mutex<Vec<JoinHandle<()>>>,
) {
    // Closing the queue lets the threads drain what was submitted, then end.
    drop(queue.lock().unwrap_or_else(PoisonError::into_inner).take());
    let threads = std::mem::take(&mut *threads.lock().unwrap_or_else(PoisonError::into_inner));
    for t in threads {
        let _ = t.join();
    }
}

/// Runs operations from many threads in shared transactions. Cheap to clone; see the
/// [module docs](crate::batch) for the contract (C11).
///
/// ```
/// # use diesel::prelude::*;
/// # use diesel::connection::SimpleConnection;
/// # use diesel_l2::{Cached, Db};
/// # diesel::table! { counters (id) { id -> BigInt, version -> BigInt, hits -> BigInt } }
/// # #[derive(Queryable, Selectable, Clone, Debug, Cached)]
/// # #[diesel(table_name = counters)]
/// # #[cache(max_entries = 100)]
/// # struct Counter { id: i64, version: i64, hits: i64 }
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let pool = diesel_l2::sqlite_pool(dir.path().join("b.db").to_str().unwrap(), 4)?;
/// # pool.get()?.batch_execute("CREATE TABLE counters (id BIGINT PRIMARY KEY, version BIGINT NOT NULL, hits BIGINT NOT NULL); INSERT INTO counters VALUES (1, 1, 0)")?;
/// let db = Db::builder(pool).cache::<Counter>().build()?;
/// let batcher = db.batcher(diesel_l2::BatchConfig::default())?;
/// std::thread::scope(|s| {
///     for _ in 0..8 {
///         let b = batcher.clone();
///         s.spawn(move || {
///             // Returns once the batch that carried it has committed.
///             b.submit(|tx| {
///                 let mut c = tx.get::<Counter>(1)?;
///                 c.hits += 1;
///                 tx.update(&c)
///             })
///         });
///     }
/// });
/// assert_eq!(db.find::<Counter>(1)?.unwrap().hits, 8);
/// # Ok(()) }
/// ```
pub struct Batcher<C: R2D2Connection + 'static> {
    shared: Arc<Shared<C>>,
}

impl<C: R2D2Connection + 'static> Clone for Batcher<C> {
    fn clone(&self) -> Self {
        Batcher {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C: R2D2Connection + 'static> Db<C> {
    /// Starts a [`Batcher`] over this `Db` (one thread that runs the batches).
    pub fn batcher(&self, config: BatchConfig) -> Result<Batcher<C>> {
        if config.max_batch == 0 {
            return Err(Error::Config(
                "batcher: max_batch is 0; a batch needs room for at least one operation".into(),
            ));
        }
        if config.in_flight == 0 {
            return Err(Error::Config(
                "batcher: in_flight is 0; at least one batch must be able to run".into(),
            ));
        }
        let (queue, jobs) = mpsc::channel::<Job<C>>();
        let jobs = Arc::new(Mutex::new(jobs));
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            queue: Mutex::new(Some(queue)),
            threads: Mutex::new(Vec::new()),
            counters: Arc::clone(&counters),
        });
        for i in 0..config.in_flight {
            let (db, config, jobs, counters) = (
                self.clone(),
                config.clone(),
                Arc::clone(&jobs),
                Arc::clone(&counters),
            );
            let thread = std::thread::Builder::new()
                .name(format!("diesel-l2-batcher-{i}"))
                .spawn(move || run_batches(db, config, jobs, counters))
                .map_err(|e| Error::Config(format!("could not start a batcher thread: {e}")))?;
            shared
                .threads
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(thread);
        }
        Ok(Batcher { shared })
    }
}

impl<C: R2D2Connection + 'static> Batcher<C> {
    /// Runs `op` in the next batch and returns its result once that batch has committed
    /// and the cache has applied it. `op` may run more than once if the database aborts
    /// the batch's transaction (write it like a [`Db::retry`] closure: read what you
    /// write inside it). A panic in `op` is resumed here.
    pub fn submit<T, F>(&self, mut op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_, C>) -> Result<T> + Send + 'static,
    {
        let run = Box::new(move |tx: &mut Tx<'_, C>, isolated: bool| -> Result<Ran> {
            let v = if isolated {
                tx.savepoint(|sp| op(sp))?
            } else {
                op(tx)?
            };
            Ok(Ran::Value(Box::new(v) as Value))
        });
        self.enqueue(run, None)
    }

    /// [`submit`](Batcher::submit) under an operation id: exactly once across batches,
    /// retries and redeliveries (C6). A delivery of an id that committed before, or
    /// earlier in the same batch, runs nothing and returns the recorded outcome.
    pub fn submit_once<T, F>(&self, op: impl Into<Operation>, mut f: F) -> Result<Outcome<T>>
    where
        C: OperationLog,
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnMut(&mut Tx<'_, C>) -> Result<T> + Send + 'static,
    {
        let op = op.into();
        op.validate()?;
        let for_replay = op.clone();
        let run = Box::new(move |tx: &mut Tx<'_, C>, isolated: bool| -> Result<Ran> {
            match tx.once_step(&op, &mut f, isolated)? {
                Step::Ran(v) => Ok(Ran::Value(Box::new(Outcome::ran(v)) as Value)),
                Step::Taken => Ok(Ran::Replay),
            }
        });
        let replay = Box::new(move |db: &Db<C>| -> Result<Value> {
            match db.replay::<T>(&for_replay)? {
                Some(v) => Ok(Box::new(Outcome::replayed(v)) as Value),
                None => Err(Error::InvalidOperation(format!(
                    "operation {:?} was taken in a batch but its record is gone (pruned?); \
                     submit it again",
                    for_replay.id()
                ))),
            }
        });
        self.enqueue(run, Some(replay))
    }

    fn enqueue<T: 'static>(&self, run: RunOp<C>, replay: Option<ReplayOp<C>>) -> Result<T> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Job {
            run,
            replay,
            reply,
            queued: Instant::now(),
        };
        let shut = || Error::Config("the batcher is shut down; submit to a running one".into());
        {
            let queue = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            queue
                .as_ref()
                .ok_or_else(shut)?
                .send(job)
                .map_err(|_| shut())?;
        }
        match answer.recv().map_err(|_| shut())? {
            Done::Value(v) => v.downcast::<T>().map(|b| *b).map_err(|_| {
                Error::Config("batcher: an operation's result had an unexpected type".into())
            }),
            Done::Failed(e) => Err(e),
            Done::Panicked(payload) => panic::resume_unwind(payload),
        }
    }

    /// Runs what was submitted, then stops the batcher's thread. Later submissions fail
    /// with [`Error::Config`]. Dropping the last clone does the same.
    pub fn shutdown(&self) {
        stop(&self.shared.queue, &self.shared.threads);
    }

    /// The batcher's counters.
    pub fn stats(&self) -> BatchStats {
        let c = &self.shared.counters;
        BatchStats {
            batches: c.batches.load(Relaxed),
            operations: c.operations.load(Relaxed),
            largest_batch: c.largest_batch.load(Relaxed),
            wait_us: c.wait_us.load(Relaxed),
            failed_operations: c.failed_operations.load(Relaxed),
            panics: c.panics.load(Relaxed),
            failed_commits: c.failed_commits.load(Relaxed),
            aborted_batches: c.aborted_batches.load(Relaxed),
        }
    }
}

/// The batcher thread: collects a batch, runs it, answers its callers, until the queue
/// is closed and empty.
fn run_batches<C: R2D2Connection + 'static>(
    db: Db<C>,
    config: BatchConfig,
    jobs: Arc<Mutex<Receiver<Job<C>>>>,
    counters: Arc<Counters>,
) {
    let mut carried: Vec<Job<C>> = Vec::new();
    // Like PostgreSQL's commit_delay with commit_siblings: wait for company only when
    // writers are concurrent (the last batch carried more than one operation), and only
    // until as many operations as last time have joined; a lone writer's operation starts
    // at once. Whatever queued meanwhile always joins.
    let mut last_len = 0usize;
    loop {
        let mut batch = std::mem::take(&mut carried);
        // One thread collects at a time, so each batch takes a run of the queue in order.
        let jobs = jobs.lock().unwrap_or_else(PoisonError::into_inner);
        if batch.is_empty() {
            match jobs.recv() {
                Ok(j) => batch.push(j),
                Err(_) => return, // closed and drained
            }
        }
        while batch.len() < config.max_batch {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let expected = if config.always_wait {
            config.max_batch
        } else if last_len > 1 {
            last_len.min(config.max_batch)
        } else {
            0
        };
        if batch.len() < expected {
            let deadline = Instant::now() + config.max_wait;
            while batch.len() < expected {
                let left = deadline.saturating_duration_since(Instant::now());
                match jobs.recv_timeout(left) {
                    Ok(j) => batch.push(j),
                    Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        drop(jobs);
        last_len = batch.len();
        carried = run_batch(&db, batch, &counters);
    }
}

/// What one operation did in the batch's transaction.
enum Slot {
    Ok(Value),
    Replay,
    Failed(Error),
    Panicked(Box<dyn Any + Send>),
}

/// Runs one batch in one transaction. Returns the operations to run again in the next
/// batch (when the database aborted this one).
fn run_batch<C: R2D2Connection + 'static>(
    db: &Db<C>,
    mut batch: Vec<Job<C>>,
    counters: &Counters,
) -> Vec<Job<C>> {
    let started = Instant::now();
    let n = batch.len() as u64;
    counters.batches.fetch_add(1, Relaxed);
    counters.operations.fetch_add(n, Relaxed);
    counters.largest_batch.fetch_max(n, Relaxed);
    for job in &batch {
        let waited = started.saturating_duration_since(job.queued).as_micros();
        counters
            .wait_us
            .fetch_add(u64::try_from(waited).unwrap_or(u64::MAX), Relaxed);
    }

    // Fast path: every operation straight in the transaction, no savepoints (half the
    // statements). Any operation's error or panic rolls the whole attempt back, and the
    // batch runs again with a savepoint per operation, which isolates the failure. A lone
    // operation needs no savepoint at all: its transaction is its own.
    let single = batch.len() == 1;
    let mut slots: Vec<Slot> = Vec::with_capacity(batch.len());
    let mut ran_all = false;
    let fast = db.transaction(|tx| {
        for job in batch.iter_mut() {
            match panic::catch_unwind(AssertUnwindSafe(|| (job.run)(tx, false))) {
                Ok(Ok(Ran::Value(v))) => slots.push(Slot::Ok(v)),
                Ok(Ok(Ran::Replay)) => slots.push(Slot::Replay),
                // (`RolledBack` is also a taken operation id on the fast path: re-run.)
                Ok(Err(e)) if single && !matches!(e, Error::RolledBack) => {
                    slots.push(Slot::Failed(e));
                    return Err(Error::RolledBack);
                }
                Err(payload) if single => {
                    slots.push(Slot::Panicked(payload));
                    return Err(Error::RolledBack);
                }
                _ => return Err(Error::RolledBack),
            }
        }
        ran_all = true;
        Ok(())
    });
    let result = match fast {
        Ok(()) => Ok(()),
        // The lone operation failed on its own, before COMMIT: rolled back, and its
        // answer is in `slots`.
        Err(_) if single && !ran_all && slots.len() == 1 => {
            answer_failed_alone(batch, slots, counters);
            return Vec::new();
        }
        // Every operation ran and COMMIT failed: handled below like any failed COMMIT,
        // never re-run (its outcome may be unknown).
        Err(e) if ran_all => Err(e),
        Err(_) => {
            slots.clear();
            db.transaction(|tx| {
                for job in batch.iter_mut() {
                    let slot = match panic::catch_unwind(AssertUnwindSafe(|| (job.run)(tx, true))) {
                        Ok(Ok(Ran::Value(v))) => Slot::Ok(v),
                        Ok(Ok(Ran::Replay)) => Slot::Replay,
                        Ok(Err(e)) => Slot::Failed(e),
                        // The savepoint rolled back before the panic left it.
                        Err(payload) => Slot::Panicked(payload),
                    };
                    slots.push(slot);
                }
                ran_all = true;
                Ok(())
            })
        }
    };

    match result {
        Ok(()) => {
            // Committed, and the cache has applied every operation's writes (C2): answer.
            for (job, slot) in batch.into_iter().zip(slots) {
                let done = match slot {
                    Slot::Ok(v) => Done::Value(v),
                    Slot::Replay => match job.replay.as_ref().map(|r| r(db)) {
                        Some(Ok(v)) => Done::Value(v),
                        Some(Err(e)) => Done::Failed(e),
                        None => Done::Failed(Error::Config(
                            "batcher: a replay without an operation id".into(),
                        )),
                    },
                    Slot::Failed(e) => {
                        counters.failed_operations.fetch_add(1, Relaxed);
                        Done::Failed(e)
                    }
                    Slot::Panicked(p) => {
                        counters.panics.fetch_add(1, Relaxed);
                        Done::Panicked(p)
                    }
                };
                let _ = job.reply.send(done);
            }
            Vec::new()
        }
        Err(e) if ran_all && !aborted(&e, &slots) => {
            // COMMIT itself failed: nothing committed, nothing cached (C1).
            counters.failed_commits.fetch_add(1, Relaxed);
            let unknown = outcome_unknown(&e);
            tracing::debug!(error = %e, unknown, operations = n, "batch COMMIT failed");
            let message = e.to_string();
            for (job, slot) in batch.into_iter().zip(slots) {
                let done = match slot {
                    Slot::Panicked(p) => {
                        counters.panics.fetch_add(1, Relaxed);
                        Done::Panicked(p)
                    }
                    Slot::Failed(own) => {
                        counters.failed_operations.fetch_add(1, Relaxed);
                        Done::Failed(own)
                    }
                    _ if unknown => Done::Failed(Error::CommitOutcomeUnknown(message.clone())),
                    _ => Done::Failed(Error::BatchCommitFailed(message.clone())),
                };
                let _ = job.reply.send(done);
            }
            Vec::new()
        }
        Err(e) => {
            // The database aborted the whole transaction mid-way (a MariaDB deadlock rolls
            // back every savepoint): the operation that hit it fails with its own error;
            // the others run again in the next batch.
            counters.aborted_batches.fetch_add(1, Relaxed);
            tracing::debug!(error = %e, operations = n, "batch aborted by the database; re-running the survivors");
            // Without an operation to blame, re-running could abort again forever: fail the
            // batch as a failed COMMIT instead (retryable).
            let victim = slots.iter().any(|s| {
                matches!(s, Slot::Failed(own) if !matches!(own, Error::RolledBack))
                    || matches!(s, Slot::Panicked(_))
            });
            let mut again = Vec::new();
            let mut slots = slots.into_iter();
            for job in batch {
                if !victim {
                    counters.failed_operations.fetch_add(1, Relaxed);
                    let _ = job
                        .reply
                        .send(Done::Failed(Error::BatchCommitFailed(e.to_string())));
                    continue;
                }
                match slots.next() {
                    Some(Slot::Failed(own)) if !matches!(own, Error::RolledBack) => {
                        counters.failed_operations.fetch_add(1, Relaxed);
                        let _ = job.reply.send(Done::Failed(own));
                    }
                    Some(Slot::Panicked(p)) => {
                        counters.panics.fetch_add(1, Relaxed);
                        let _ = job.reply.send(Done::Panicked(p));
                    }
                    // Ran fine, refused after the abort, or never reached: run it again.
                    _ => again.push(job),
                }
            }
            again
        }
    }
}

/// Answers a batch of one operation that failed (or panicked) before COMMIT.
fn answer_failed_alone<C: R2D2Connection + 'static>(
    batch: Vec<Job<C>>,
    slots: Vec<Slot>,
    counters: &Counters,
) {
    for (job, slot) in batch.into_iter().zip(slots) {
        let done = match slot {
            Slot::Panicked(p) => {
                counters.panics.fetch_add(1, Relaxed);
                Done::Panicked(p)
            }
            Slot::Failed(e) => {
                counters.failed_operations.fetch_add(1, Relaxed);
                Done::Failed(e)
            }
            // Not reached: only failures are answered here.
            Slot::Ok(v) => Done::Value(v),
            Slot::Replay => Done::Failed(Error::Config(
                "batcher: a replay answered as a failure".into(),
            )),
        };
        let _ = job.reply.send(done);
    }
}

/// Whether the database ended the transaction before COMMIT (it reports `RolledBack`,
/// and our later statements were refused with it), as opposed to COMMIT failing.
fn aborted(e: &Error, slots: &[Slot]) -> bool {
    matches!(e, Error::RolledBack)
        || slots
            .iter()
            .any(|s| matches!(s, Slot::Failed(Error::RolledBack)))
}

/// A COMMIT error after which the transaction may or may not have committed: the
/// connection went away during it.
fn outcome_unknown(e: &Error) -> bool {
    matches!(e, Error::Database(d) if connection_lost(d))
}

fn connection_lost(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind as K, Error as D};
    match e {
        // COMMIT failed and so did the ROLLBACK after it: judge by the COMMIT's error.
        D::RollbackErrorOnCommit { commit_error, .. } => connection_lost(commit_error),
        // The connection's transaction state was lost on the way: no one can tell.
        D::BrokenTransactionManager => true,
        D::DatabaseError(K::ClosedConnection | K::UnableToSendCommand, _) => true,
        D::DatabaseError(_, info) => {
            let m = info.message().to_ascii_lowercase();
            m.contains("lost connection")
                || m.contains("gone away")
                || m.contains("server closed the connection")
                || m.contains("terminating connection")
                || m.contains("connection reset")
        }
        _ => false,
    }
}
