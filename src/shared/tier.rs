//! The connection to Redis: a small pool with a timeout on every call, the circuit
//! breaker, the namespace generation, and the one runner every script goes through.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use redis::Value;

use super::scripts::Scripts;
use super::{BreakerState, SharedConfig, SharedTierStats};
use crate::error::{Error, Result};
use crate::stats::Counters;

/// Why a call did not reach Redis or did not complete: the caller goes to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    /// The breaker is open: no call is made until its cooldown has passed.
    Open,
    /// The call failed or timed out (counted, and fed to the breaker).
    Failed,
}

impl Skip {
    /// Of a region's two counters, the one this skip is counted in.
    pub(crate) fn counter<'a>(
        self,
        failed: &'a AtomicU64,
        skipped: &'a AtomicU64,
    ) -> &'a AtomicU64 {
        match self {
            Skip::Open => skipped,
            Skip::Failed => failed,
        }
    }

    pub(crate) fn error(self) -> Error {
        Error::SharedTierUnavailable {
            reason: match self {
                Skip::Open => "its circuit breaker is open after repeated failures",
                Skip::Failed => "a call failed or timed out",
            },
        }
    }
}

/// One pooled connection; a connection that failed or timed out may still receive the
/// reply it missed, so it is never reused.
pub(crate) struct Conn {
    con: redis::Connection,
    broken: bool,
}

struct Manager {
    client: redis::Client,
    timeout: Duration,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = redis::RedisError;

    fn connect(&self) -> std::result::Result<Conn, redis::RedisError> {
        let con = self.client.get_connection_with_timeout(self.timeout)?;
        con.set_read_timeout(Some(self.timeout))?;
        con.set_write_timeout(Some(self.timeout))?;
        Ok(Conn { con, broken: false })
    }

    fn is_valid(&self, _: &mut Conn) -> std::result::Result<(), redis::RedisError> {
        Ok(())
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken
    }
}

/// Opens after `threshold` consecutive failures and stays open for `cooldown`; the first
/// call after that is a trial, and one more failure opens it again.
struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: AtomicU32,
    /// Nanoseconds since `start` until which the breaker is open; 0 = closed.
    open_until: AtomicU64,
    start: Instant,
    opened: AtomicU64,
}

impl Breaker {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        until == 0 || self.now() >= until
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Release);
        if self.open_until.load(Ordering::Acquire) != 0 {
            self.open_until.store(0, Ordering::Release);
            tracing::info!("shared tier: Redis answers again; circuit breaker closed");
        }
    }

    fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.threshold {
            let until = self.now() + self.cooldown.as_nanos() as u64;
            if self.open_until.swap(until.max(1), Ordering::AcqRel) == 0 {
                Counters::bump(&self.opened);
                tracing::warn!(
                    failures = n,
                    cooldown_ms = self.cooldown.as_millis() as u64,
                    "shared tier: circuit breaker opened; reads go to the database"
                );
            }
        }
    }

    fn state(&self) -> BreakerState {
        match self.open_until.load(Ordering::Acquire) {
            0 => BreakerState::Closed,
            until if self.now() < until => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
}

/// The reply of a script that ran under the current generation.
pub(crate) type Reply = Vec<Value>;

/// One change-feed repair waiting for the repair thread.
pub(crate) struct Repair {
    /// The entry key (after the prefix and the generation).
    pub key: String,
    /// The notified version as a `V<version>` header.
    pub header: String,
    pub insert: bool,
    /// The region's counters of repairs made, failed, and skipped by the open breaker.
    pub done: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    pub skipped: Arc<AtomicU64>,
}

/// Repairs are made by a thread of the tier's own, so that a slow or paused Redis never
/// holds up the change listener (which drops local entries, C7): the listener records
/// the notified floor and queues the repair.
#[derive(Default)]
struct RepairQueue {
    items: Mutex<Vec<Repair>>,
    ready: Condvar,
    stop: AtomicBool,
    /// Repairs queued and not yet answered by Redis (or dropped).
    pending: AtomicU64,
}

/// More queued repairs than this: they are dropped and a new generation is started
/// instead (the tier is not read until then).
const MAX_QUEUED_REPAIRS: usize = 10_000;
/// Repairs per script call.
const REPAIRS_PER_CALL: usize = 256;

pub(crate) struct Tier {
    pub(crate) config: SharedConfig,
    pool: r2d2::Pool<Manager>,
    gen_key: String,
    gen: RwLock<Option<Arc<str>>>,
    /// Events after which Redis may hold a stale entry we could not repair (a write whose
    /// settle failed, a lost repair): the generation must be bumped before the tier is
    /// trusted again. `cleaned` is the count a successful bump covered.
    unsafe_events: AtomicU64,
    cleaned: AtomicU64,
    breaker: Breaker,
    pub(crate) scripts: Scripts,
    instance: String,
    seq: AtomicU64,
    errors: AtomicU64,
    bumps: AtomicU64,
    moved: AtomicU64,
    /// Set once the first bump after `unsafe` was not possible yet (for the log).
    warned_unsafe: AtomicBool,
    repairs: Arc<RepairQueue>,
}

impl Drop for Tier {
    fn drop(&mut self) {
        self.repairs.stop.store(true, Ordering::Release);
        self.repairs.ready.notify_all();
    }
}

impl Tier {
    pub(crate) fn connect(config: SharedConfig) -> Result<Arc<Tier>> {
        config.validate()?;
        let client = redis::Client::open(config.url.as_str()).map_err(|e| {
            Error::Config(format!(
                "shared tier: `{}` is not a Redis URL ({e}); write it like \
                 `redis://127.0.0.1:6379/`",
                config.url
            ))
        })?;
        // Unchecked: the `Db` builds while Redis is down (reads then go to the database).
        let pool = r2d2::Pool::builder()
            .max_size(config.pool_size)
            .min_idle(Some(0))
            .connection_timeout(config.timeout)
            .test_on_check_out(false)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(Manager {
                client,
                timeout: config.timeout,
            });
        let tier = Arc::new(Tier {
            repairs: Arc::new(RepairQueue::default()),
            gen_key: format!("{}:gen", config.prefix),
            gen: RwLock::new(None),
            unsafe_events: AtomicU64::new(0),
            cleaned: AtomicU64::new(0),
            breaker: Breaker {
                threshold: config.breaker_threshold,
                cooldown: config.breaker_cooldown,
                failures: AtomicU32::new(0),
                open_until: AtomicU64::new(0),
                start: Instant::now(),
                opened: AtomicU64::new(0),
            },
            scripts: Scripts::new(),
            instance: format!("{:016x}", fastrand::u64(..)),
            seq: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            bumps: AtomicU64::new(0),
            moved: AtomicU64::new(0),
            warned_unsafe: AtomicBool::new(false),
            pool,
            config,
        });
        let queue = Arc::clone(&tier.repairs);
        let weak = Arc::downgrade(&tier);
        std::thread::Builder::new()
            .name("diesel-l2-shared-repair".into())
            .spawn(move || repair_loop(&weak, &queue))
            .map_err(|e| {
                Error::Config(format!(
                    "shared tier: could not start its repair thread ({e})"
                ))
            })?;
        Ok(tier)
    }

    /// Queues a change-feed repair for the repair thread.
    pub(crate) fn queue_repair(&self, repair: Repair) {
        let mut items = self
            .repairs
            .items
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if items.len() >= MAX_QUEUED_REPAIRS {
            let dropped = items.len() as u64;
            for r in items.drain(..) {
                Counters::bump(&r.failed);
            }
            self.repairs.pending.fetch_sub(dropped, Ordering::AcqRel);
            drop(items);
            self.mark_unsafe("the change-feed repairs fell too far behind");
            return;
        }
        items.push(repair);
        self.repairs.pending.fetch_add(1, Ordering::AcqRel);
        drop(items);
        self.repairs.ready.notify_one();
    }

    /// Runs queued repairs in one script call; a call that fails makes the tier unsafe.
    fn run_repairs(&self, batch: Vec<Repair>) {
        self.run_repair_batch(&batch);
        self.repairs
            .pending
            .fetch_sub(batch.len() as u64, Ordering::AcqRel);
    }

    fn run_repair_batch(&self, batch: &[Repair]) {
        let keys: Vec<&str> = batch.iter().map(|r| r.key.as_str()).collect();
        let mut args: Vec<&[u8]> = Vec::with_capacity(batch.len() * 2);
        for r in batch {
            args.push(r.header.as_bytes());
            args.push(if r.insert { b"1" } else { b"0" });
        }
        match self.run(&self.scripts.repair, &keys, &args) {
            Ok(reply) => {
                for (i, r) in batch.iter().enumerate() {
                    if int(reply.get(i)) == 1 {
                        Counters::bump(&r.done);
                    }
                }
            }
            Err(skip) => {
                for r in batch {
                    Counters::bump(skip.counter(&r.failed, &r.skipped));
                }
                self.mark_unsafe("a change-feed repair did not reach Redis");
            }
        }
    }

    /// A token unique to this call (leases and fences).
    pub(crate) fn token(&self) -> String {
        format!(
            "{}.{}",
            self.instance,
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Records that Redis may now hold a stale entry this process could not repair: the
    /// tier is not read again until a new generation has been set.
    pub(crate) fn mark_unsafe(&self, why: &str) {
        self.unsafe_events.fetch_add(1, Ordering::AcqRel);
        if !self.warned_unsafe.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                why,
                "shared tier: a change could not be made safe in Redis; it is not trusted until a new generation is set"
            );
        }
    }

    fn is_unsafe(&self) -> bool {
        self.unsafe_events.load(Ordering::Acquire) > self.cleaned.load(Ordering::Acquire)
    }

    /// Starts a new generation (every entry of the older ones becomes unreachable) before
    /// the next call that reaches Redis; the repair thread makes that call soon.
    pub(crate) fn invalidate_all(&self, why: &str) {
        self.mark_unsafe(why);
        self.repairs.ready.notify_one();
    }

    /// Runs `script` with the generation key, the entry keys `entries` (suffixes; the
    /// prefix and the current generation are prepended) and `args` after the generation.
    pub(crate) fn run(
        &self,
        script: &redis::Script,
        entries: &[&str],
        args: &[&[u8]],
    ) -> std::result::Result<Reply, Skip> {
        if !self.breaker.allow() {
            return Err(Skip::Open);
        }
        let mut conn = match self.pool.get_timeout(self.config.timeout) {
            Ok(c) => c,
            Err(e) => {
                let error = e.to_string();
                // r2d2 appends the last connection error when connecting failed; without
                // one, every connection was busy: not a sign of Redis failing, so the
                // breaker is left alone (the call is still skipped and counted).
                if error.contains(": ") {
                    self.failed(&error);
                } else {
                    Counters::bump(&self.errors);
                }
                return Err(Skip::Failed);
            }
        };
        match self.run_on(&mut conn, script, entries, args) {
            Ok(Some(reply)) => {
                self.breaker.success();
                Ok(reply)
            }
            // The generation kept moving (a storm of bumps): not a failure of Redis.
            Ok(None) => Err(Skip::Failed),
            Err(e) => {
                conn.broken = true;
                self.failed(&e.to_string());
                Err(Skip::Failed)
            }
        }
    }

    fn failed(&self, error: &str) {
        Counters::bump(&self.errors);
        tracing::debug!(error, "shared tier: Redis call failed");
        self.breaker.failure();
    }

    fn run_on(
        &self,
        conn: &mut Conn,
        script: &redis::Script,
        entries: &[&str],
        args: &[&[u8]],
    ) -> redis::RedisResult<Option<Reply>> {
        for _ in 0..3 {
            let gen = self.ensure_gen(conn)?;
            let mut call = script.prepare_invoke();
            call.key(&self.gen_key);
            for e in entries {
                call.key(format!("{}:{gen}:{e}", self.config.prefix));
            }
            call.arg(&*gen);
            for a in args {
                call.arg(*a);
            }
            let reply: Value = call.invoke(&mut conn.con)?;
            match classify(reply)? {
                Answer::Done(items) => return Ok(Some(items)),
                Answer::NoGeneration => {
                    self.bump(conn)?;
                }
                Answer::Moved(g) => {
                    Counters::bump(&self.moved);
                    *self.gen.write().unwrap_or_else(PoisonError::into_inner) = Some(g.into());
                }
            };
        }
        Ok(None)
    }

    /// The generation to use: a new one first if the tier was made unsafe.
    fn ensure_gen(&self, conn: &mut Conn) -> redis::RedisResult<Arc<str>> {
        if self.is_unsafe() {
            return self.bump(conn);
        }
        if let Some(g) = self
            .gen
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Ok(g);
        }
        let reply: Value = self
            .scripts
            .current
            .prepare_invoke()
            .key(&self.gen_key)
            .invoke(&mut conn.con)?;
        match classify(reply)? {
            Answer::Done(items) => {
                let g: Arc<str> = text(items.first()).into();
                *self.gen.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&g));
                Ok(g)
            }
            _ => self.bump(conn),
        }
    }

    fn bump(&self, conn: &mut Conn) -> redis::RedisResult<Arc<str>> {
        let covered = self.unsafe_events.load(Ordering::Acquire);
        let reply: Value = self
            .scripts
            .bump
            .prepare_invoke()
            .key(&self.gen_key)
            .invoke(&mut conn.con)?;
        let Answer::Done(items) = classify(reply)? else {
            return Err(protocol(
                "the generation script answered without a generation",
            ));
        };
        let g: Arc<str> = text(items.first()).into();
        *self.gen.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&g));
        self.cleaned.fetch_max(covered, Ordering::AcqRel);
        self.warned_unsafe.store(false, Ordering::Release);
        Counters::bump(&self.bumps);
        tracing::info!(generation = %g, "shared tier: new generation");
        Ok(g)
    }

    pub(crate) fn snapshot(&self) -> SharedTierStats {
        SharedTierStats {
            breaker: self.breaker.state(),
            breaker_opened: self.breaker.opened.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            generations_started: self.bumps.load(Ordering::Relaxed),
            generation_moves_seen: self.moved.load(Ordering::Relaxed),
            untrusted: self.is_unsafe(),
            repairs_pending: self.repairs.pending.load(Ordering::Acquire),
        }
    }
}

/// The repair thread: runs queued repairs, a batch per call, and starts the new
/// generation an unsafe tier needs. Ends when the tier is dropped.
fn repair_loop(tier: &Weak<Tier>, queue: &RepairQueue) {
    loop {
        let batch = {
            let mut items = queue.items.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if queue.stop.load(Ordering::Acquire) {
                    return;
                }
                if !items.is_empty() {
                    break;
                }
                let unsafe_now = tier.upgrade().is_some_and(|t| t.is_unsafe());
                if unsafe_now {
                    break;
                }
                items = queue
                    .ready
                    .wait_timeout(items, Duration::from_millis(100))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            let n = items.len().min(REPAIRS_PER_CALL);
            items.drain(..n).collect::<Vec<_>>()
        };
        let Some(tier) = tier.upgrade() else {
            return;
        };
        if batch.is_empty() {
            // Unsafe with nothing queued: start the new generation now if Redis answers
            // (any call does that first), else wait for the breaker's cooldown.
            if tier.run(&tier.scripts.current, &[], &[]).is_err() {
                std::thread::sleep(tier.config.breaker_cooldown.min(Duration::from_millis(100)));
            }
            continue;
        }
        tier.run_repairs(batch);
    }
}

enum Answer {
    Done(Reply),
    NoGeneration,
    Moved(String),
}

fn protocol(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, what))
}

fn classify(reply: Value) -> redis::RedisResult<Answer> {
    let Value::Array(mut items) = reply else {
        return Err(protocol("a shared-tier script answered with a non-array"));
    };
    if items.is_empty() {
        return Err(protocol(
            "a shared-tier script answered with an empty array",
        ));
    }
    let rest = items.split_off(1);
    match items[0] {
        Value::Int(0) => Ok(Answer::NoGeneration),
        Value::Int(1) => Ok(Answer::Moved(text(rest.first()).to_string())),
        Value::Int(2) => Ok(Answer::Done(rest)),
        _ => Err(protocol(
            "a shared-tier script answered with an unknown code",
        )),
    }
}

/// A bulk or simple string reply as text ("" for anything else).
pub(crate) fn text(v: Option<&Value>) -> &str {
    match v {
        Some(Value::BulkString(b)) => std::str::from_utf8(b).unwrap_or(""),
        Some(Value::SimpleString(s)) => s,
        _ => "",
    }
}

/// A bulk string reply's bytes (empty for anything else).
pub(crate) fn bytes(v: Option<&Value>) -> &[u8] {
    match v {
        Some(Value::BulkString(b)) => b,
        Some(Value::SimpleString(s)) => s.as_bytes(),
        _ => &[],
    }
}

/// An integer reply (0 for anything else).
pub(crate) fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Int(n)) => *n,
        _ => 0,
    }
}
