//! The shared tier (feature `redis`): a Redis cache behind each process's local regions,
//! which every instance fills and reads, fenced so that no instance ever reads an old row
//! from it (C9).
//!
//! # Using it
//!
//! Mark the entity `#[cache(shared)]` (it needs serde's `Serialize` and `Deserialize`), or
//! opt a region in at run time with [`DbBuilder::shared`](crate::DbBuilder::shared), and
//! give the `Db` a Redis: `.shared_tier(SharedConfig::new("redis://127.0.0.1:6379/"))`.
//! A local hit is unchanged (no Redis call). A local miss asks Redis, within the same
//! single flight; only a Redis miss loads from the database and fills both tiers.
//!
//! # How it stays correct
//!
//! - **Leases** (memcache's): a reader that misses in Redis is handed a lease, stored in
//!   the key, and may fill the key only while its lease is still there. Any fence, repair,
//!   eviction or expiry voids it, so a load that read version v never lands over anything
//!   committed later, even a newer entry that Redis has since evicted or expired. Readers
//!   that find another's lease wait up to [`SharedConfig::lease_wait`] for its fill
//!   (counted in `lease_waits`), then read the database without filling.
//! - **Fences**: before COMMIT, a transaction puts its fence on every shared key it wrote
//!   (one call for all of them). After COMMIT, and before `transaction` returns, one call
//!   replaces its own fences with the committed rows (or versioned tombstones for
//!   deletes), and deletes whatever else is older. So a read in any instance that begins
//!   after `transaction` returned finds the write, a newer one, or nothing in Redis.
//! - **Every check-and-set is one Lua script**, run atomically by Redis.
//! - **The change feed repairs the tier** for writes the library could not fence (plain
//!   SQL, a writer that died or lost Redis): each notification (queued by the listener
//!   for the tier's repair thread, so that Redis never holds the listener up) deletes the
//!   key's entry
//!   unless it already holds that version or a newer one, in every listening instance
//!   (idempotent; a fence is kept but marked with the version, so its writer stores its row
//!   only if it is at least that new), and each instance keeps the notified version as a local floor for a
//!   while ([`SharedConfig::floor_ttl`]), rejecting older Redis values.
//! - **Generations**: keys embed a namespace generation kept in Redis. When a change could
//!   not be made safe (a settle or repair that failed or timed out), when a table was
//!   flushed by the feed, and when a listener reconnects after losing its connection
//!   (changes may have been missed), this process stops reading Redis until it has
//!   started a new generation, which makes every older entry unreachable for every
//!   instance (they see the generation move in their next call). A flushed or restarted
//!   Redis has no generation key: every call fails closed until a new one is set.
//! - **Redis down, slow or paused**: every call has a timeout (5 ms by default); a circuit
//!   breaker stops calling after repeated failures and tries again after a cooldown.
//!   Reads then go to the database ([`SharedFailure::Degrade`], the default) or fail with
//!   [`Error::SharedTierUnavailable`]
//!   ([`SharedFailure::Fail`]). Never a stale row.
//! - **Rolling deploys**: values carry a fingerprint of the entity's shape
//!   ([`CachedEntity::SHAPE`]), not the key, so writers of one
//!   build fence and repair the entries of another, and a reader never decodes a row of
//!   another shape (it reads the database instead).
//!
//! The shared tier holds entities read by id (`find`, `get`, `find_many`); unique-key
//! lookups, lists and cached queries stay local, and fill only the local tier.

mod codec;
mod scripts;
mod tier;

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

pub use codec::SharedCodec;
use tier::Repair;
pub(crate) use tier::Tier;

use crate::entity::CachedEntity;
use crate::error::{Error, Result};
use crate::invalidation::ChangeOp;
use crate::stats::Counters;
use codec::{parse_entry, tombstone_entry, value_entry, version_hex, Entry};
use tier::{bytes, int, Skip};

/// What reads do while Redis cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SharedFailure {
    /// Read from the database (the default): slower, never stale.
    #[default]
    Degrade,
    /// Fail reads that miss locally, and writes whose fence cannot be placed, with
    /// [`Error::SharedTierUnavailable`].
    Fail,
}

/// The shared tier's settings, given to [`DbBuilder::shared_tier`](crate::DbBuilder::shared_tier).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SharedConfig {
    /// The Redis URL, e.g. `redis://127.0.0.1:6379/`.
    pub url: String,
    /// The prefix of every key (`<prefix>:gen`, `<prefix>:<generation>:<region>:<id>`),
    /// so several apps or test runs share one Redis. `diesel-l2` by default.
    pub prefix: String,
    /// How long an entry lives in Redis. 10 minutes by default.
    pub ttl: Duration,
    /// The limit of every Redis call, connecting included. 5 ms by default.
    pub timeout: Duration,
    /// Connections kept to Redis. 16 by default.
    pub pool_size: u32,
    /// How long a fence lives if its writer dies before replacing it. 5 s by default.
    pub fence_ttl: Duration,
    /// How long a lease lives if its reader dies before filling. 2 s by default.
    pub lease_ttl: Duration,
    /// How long a reader waits for another's lease to be filled before reading the
    /// database. 20 ms by default.
    pub lease_wait: Duration,
    /// How long a notified version is kept as a floor below which Redis values are
    /// rejected. 60 s by default.
    pub floor_ttl: Duration,
    /// Consecutive failures that open the circuit breaker. 3 by default.
    pub breaker_threshold: u32,
    /// How long the breaker stays open before a trial call. 1 s by default.
    pub breaker_cooldown: Duration,
    /// What reads do while Redis cannot be reached.
    pub on_failure: SharedFailure,
}

impl SharedConfig {
    /// The defaults, for the Redis at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        SharedConfig {
            url: url.into(),
            prefix: "diesel-l2".into(),
            ttl: Duration::from_secs(600),
            timeout: Duration::from_millis(5),
            pool_size: 16,
            fence_ttl: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(2),
            lease_wait: Duration::from_millis(20),
            floor_ttl: Duration::from_secs(60),
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(1),
            on_failure: SharedFailure::Degrade,
        }
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets how long entries live in Redis.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the limit of every Redis call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the number of connections to Redis.
    pub fn pool_size(mut self, n: u32) -> Self {
        self.pool_size = n;
        self
    }

    /// Sets how long a reader waits for another reader's fill.
    pub fn lease_wait(mut self, wait: Duration) -> Self {
        self.lease_wait = wait;
        self
    }

    /// Sets the lifetimes of fences and leases whose owner died.
    pub fn fence_and_lease_ttl(mut self, fence: Duration, lease: Duration) -> Self {
        self.fence_ttl = fence;
        self.lease_ttl = lease;
        self
    }

    /// Sets how long a notified version rejects older Redis values.
    pub fn floor_ttl(mut self, ttl: Duration) -> Self {
        self.floor_ttl = ttl;
        self
    }

    /// Sets the circuit breaker: `threshold` consecutive failures open it for `cooldown`.
    pub fn breaker(mut self, threshold: u32, cooldown: Duration) -> Self {
        self.breaker_threshold = threshold;
        self.breaker_cooldown = cooldown;
        self
    }

    /// Sets what reads do while Redis cannot be reached.
    pub fn on_failure(mut self, on_failure: SharedFailure) -> Self {
        self.on_failure = on_failure;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let zero = [
            ("ttl", self.ttl),
            ("timeout", self.timeout),
            ("fence_ttl", self.fence_ttl),
            ("lease_ttl", self.lease_ttl),
            ("floor_ttl", self.floor_ttl),
            ("breaker_cooldown", self.breaker_cooldown),
        ]
        .into_iter()
        .find(|(_, d)| d.as_millis() == 0);
        if let Some((name, _)) = zero {
            return Err(Error::Config(format!(
                "shared tier: `{name}` must be at least 1 ms"
            )));
        }
        if self.pool_size == 0 || self.breaker_threshold == 0 {
            return Err(Error::Config(
                "shared tier: `pool_size` and `breaker_threshold` must be at least 1".into(),
            ));
        }
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            return Err(Error::Config(format!(
                "shared tier: the key prefix `{}` must be non-empty, without spaces",
                self.prefix
            )));
        }
        Ok(())
    }
}

/// The circuit breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go to Redis.
    Closed,
    /// Calls are skipped until the cooldown has passed.
    Open,
    /// The cooldown has passed: the next call is a trial.
    HalfOpen,
}

/// The shared tier's own figures ([`Stats::shared`](crate::Stats::shared)).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SharedTierStats {
    /// The circuit breaker now.
    pub breaker: BreakerState,
    /// Times the breaker opened.
    pub breaker_opened: u64,
    /// Redis calls that failed or timed out.
    pub errors: u64,
    /// Generations this process started (after an unsafe change, a flush, a lost feed, or
    /// a Redis without a generation).
    pub generations_started: u64,
    /// Times a call found that another process had started a new generation.
    pub generation_moves_seen: u64,
    /// A change could not be made safe in Redis and no new generation is set yet: the
    /// tier is not read.
    pub untrusted: bool,
    /// Change-feed repairs queued for the repair thread and not yet answered by Redis.
    /// The listener queues a change's repair before counting the change in
    /// [`ListenerStats::changes`](crate::ListenerStats::changes), so once a change is
    /// counted, 0 here means its repair has reached Redis (or failed and made the tier
    /// unsafe).
    pub repairs_pending: u64,
}

/// One region's shared-tier figures ([`RegionStats::shared`](crate::RegionStats::shared)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SharedRegionStats {
    /// Local misses answered by Redis (a row or a tombstone).
    pub hits: u64,
    /// Local misses Redis could not answer (then read from the database).
    pub misses: u64,
    /// Rows this process stored in Redis under its lease.
    pub fills: u64,
    /// Fills refused because the lease was voided (a write, a repair, an eviction, an
    /// expiry came first): the fence at work (C9).
    pub rejected_fills: u64,
    /// Redis values refused: older than a notified version, or of another shape.
    pub rejected_values: u64,
    /// Reads that waited for another reader's lease.
    pub lease_waits: u64,
    /// Entries the change feed deleted in Redis.
    pub repairs: u64,
    /// Reads, fills and repairs of this region that failed or timed out in Redis.
    pub errors: u64,
    /// Reads, fills and repairs of this region not sent to Redis because the circuit
    /// breaker was open (reads went to the database; a skipped repair leaves the tier
    /// untrusted until a new generation is set). Not counted in `errors`.
    pub breaker_skips: u64,
}

#[derive(Default)]
struct RegionCounters {
    hits: AtomicU64,
    misses: AtomicU64,
    fills: AtomicU64,
    rejected_fills: AtomicU64,
    rejected_values: AtomicU64,
    lease_waits: AtomicU64,
    /// Shared with the tier's repair thread.
    repairs: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    breaker_skips: Arc<AtomicU64>,
}

/// The notified version of a key: Redis values below it are stale.
#[derive(Clone, Copy)]
struct Floor {
    version: i64,
    /// The last notification was an insert: a tombstone is stale whatever its version
    /// (versions may have started again).
    inserted: bool,
}

/// One entity type's view of the shared tier.
pub(crate) struct SharedRegion<E: CachedEntity> {
    tier: Arc<Tier>,
    codec: SharedCodec<E>,
    name: String,
    floors: Cache<E::Id, Floor>,
    counters: RegionCounters,
    /// The region's test-only pause points.
    hook: Option<crate::hooks::Hook>,
}

/// Keys per script call of a batch read or fill, so one call stays well inside the
/// timeout.
pub(crate) const BATCH_KEYS: usize = 500;

/// What a batch read found for one key.
pub(crate) enum Found<E> {
    /// Redis answered: a row, or `None` for a tombstone.
    Row(Option<E>),
    /// Read the database; `true`: this call holds the key's lease and fills it.
    Load(bool),
}

impl<E: CachedEntity> SharedRegion<E> {
    pub(crate) fn new(tier: Arc<Tier>, codec: SharedCodec<E>, name: &str) -> Self {
        let floors = Cache::builder()
            .max_capacity(100_000)
            .time_to_live(tier.config.floor_ttl)
            .build();
        SharedRegion {
            tier,
            codec,
            name: name.to_string(),
            floors,
            counters: RegionCounters::default(),
            hook: None,
        }
    }

    /// Gives the shared reads the region's test-only pause points.
    pub(crate) fn with_hook(mut self, hook: Option<crate::hooks::Hook>) -> Self {
        self.hook = hook;
        self
    }

    /// The entry's key, after the prefix and the generation.
    fn key(&self, id: &E::Id) -> String {
        format!("{}:{id:?}", self.name)
    }

    /// Counts a call that did not reach Redis: a failure, or a skip by the open breaker.
    fn count(&self, skip: Skip) {
        Counters::bump(skip.counter(&self.counters.errors, &self.counters.breaker_skips));
    }

    fn skipped(&self, skip: Skip) -> Result<()> {
        self.count(skip);
        match self.tier.config.on_failure {
            SharedFailure::Degrade => Ok(()),
            SharedFailure::Fail => Err(skip.error()),
        }
    }

    /// The entry for one local miss: Redis's answer, or the database's (`db`), filled
    /// into Redis under a lease. `lease` false: read Redis but never fill it.
    pub(crate) fn load(
        &self,
        id: &E::Id,
        lease: bool,
        db: impl FnOnce() -> Result<Option<E>>,
    ) -> Result<Option<E>> {
        let key = self.key(id);
        let waited_until = Instant::now() + self.tier.config.lease_wait;
        let mut waited = false;
        loop {
            let token = if lease {
                self.tier.token()
            } else {
                String::new()
            };
            let ttl = self.tier.config.lease_ttl.as_millis().to_string();
            let reply = match self.tier.run(
                &self.tier.scripts.read,
                &[&key],
                &[token.as_bytes(), ttl.as_bytes()],
            ) {
                Ok(r) => r,
                Err(skip) => {
                    self.skipped(skip)?;
                    return db();
                }
            };
            match self.answer(id, bytes(reply.first())) {
                Found::Row(row) => return Ok(row),
                Found::Load(false) => {
                    if lease && reply_is_leased_by_other(bytes(reply.first())) {
                        if !waited {
                            waited = true;
                            Counters::bump(&self.counters.lease_waits);
                        }
                        if Instant::now() < waited_until {
                            std::thread::sleep(Duration::from_millis(1));
                            continue;
                        }
                    }
                    return db();
                }
                Found::Load(true) => {
                    let row = db()?;
                    crate::hooks::reach(&self.hook, || crate::hooks::Point::BeforeSharedFill {
                        region: self.name.clone(),
                        id: format!("{id:?}"),
                    });
                    self.fill(&token, &[(&key, row.as_ref())]);
                    return Ok(row);
                }
            }
        }
    }

    /// Reads many keys at once (no lease waits: a key another reader holds is read from
    /// the database). One element per id, in order.
    pub(crate) fn read_many(
        &self,
        ids: &[E::Id],
        lease: bool,
    ) -> Result<(Vec<Found<E>>, Option<String>)> {
        let keys: Vec<String> = ids.iter().map(|id| self.key(id)).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let token = if lease {
            self.tier.token()
        } else {
            String::new()
        };
        let ttl = self.tier.config.lease_ttl.as_millis().to_string();
        match self.tier.run(
            &self.tier.scripts.read,
            &refs,
            &[token.as_bytes(), ttl.as_bytes()],
        ) {
            Ok(reply) => {
                let found = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| self.answer(id, bytes(reply.get(i))))
                    .collect();
                Ok((found, lease.then_some(token)))
            }
            Err(skip) => {
                self.skipped(skip)?;
                Ok((ids.iter().map(|_| Found::Load(false)).collect(), None))
            }
        }
    }

    /// Fills the keys of a batch read that were leased to `token`.
    pub(crate) fn fill_many(&self, token: &str, rows: &[(&E::Id, Option<&E>)]) {
        let keys: Vec<String> = rows.iter().map(|(id, _)| self.key(id)).collect();
        let pairs: Vec<(&str, Option<&E>)> = keys
            .iter()
            .zip(rows)
            .map(|(k, (_, row))| (k.as_str(), *row))
            .collect();
        self.fill(token, &pairs);
    }

    /// Interprets one key's reply. A reply of `''` is a lease granted to this call.
    fn answer(&self, id: &E::Id, reply: &[u8]) -> Found<E> {
        if reply.is_empty() {
            Counters::bump(&self.counters.misses);
            return Found::Load(true);
        }
        let floor = self.floors.get(id);
        let found = match parse_entry(reply) {
            Entry::Value {
                version,
                shape,
                payload,
            } => {
                if shape != self.codec.shape || floor.is_some_and(|f| version < f.version) {
                    Counters::bump(&self.counters.rejected_values);
                    None
                } else {
                    match (self.codec.decode)(payload) {
                        Some(row) if row.version() == version => Some(Some(row)),
                        _ => {
                            Counters::bump(&self.counters.rejected_values);
                            None
                        }
                    }
                }
            }
            Entry::Tombstone { version } => {
                if floor.is_some_and(|f| f.inserted || version < f.version) {
                    Counters::bump(&self.counters.rejected_values);
                    None
                } else {
                    Some(None)
                }
            }
            Entry::Leased | Entry::Fenced | Entry::Foreign => None,
        };
        match found {
            Some(row) => {
                Counters::bump(&self.counters.hits);
                Found::Row(row)
            }
            None => {
                Counters::bump(&self.counters.misses);
                Found::Load(false)
            }
        }
    }

    fn fill(&self, token: &str, rows: &[(&str, Option<&E>)]) {
        let ttl = self.tier.config.ttl.as_millis().to_string();
        let values: Vec<Vec<u8>> = rows
            .iter()
            .map(|(_, row)| {
                row.and_then(|r| value_entry(&self.codec, r.version(), r))
                    .unwrap_or_default()
            })
            .collect();
        let keys: Vec<&str> = rows.iter().map(|(k, _)| *k).collect();
        let mut args: Vec<&[u8]> = vec![token.as_bytes(), ttl.as_bytes()];
        args.extend(values.iter().map(Vec::as_slice));
        match self.tier.run(&self.tier.scripts.fill, &keys, &args) {
            Ok(reply) => {
                Counters::add(&self.counters.fills, int(reply.first()) as u64);
                Counters::add(&self.counters.rejected_fills, int(reply.get(1)) as u64);
            }
            // A lost fill is harmless: the lease is voided by time or by the next writer.
            Err(skip) => self.count(skip),
        }
    }

    /// The key a transaction fences and settles.
    pub(crate) fn write_key(&self, id: &E::Id) -> String {
        self.key(id)
    }

    /// The entry a committed write leaves: the row, a tombstone, or nothing.
    pub(crate) fn committed_entry(&self, row: Option<&E>, deleted: Option<i64>) -> Vec<u8> {
        match (row, deleted) {
            (Some(r), _) => value_entry(&self.codec, r.version(), r).unwrap_or_default(),
            (None, Some(version)) => tombstone_entry(version),
            (None, None) => Vec::new(),
        }
    }

    /// A change notification (C7): records the floor (from now on, older Redis values
    /// are refused here) and queues the repair of the Redis entry, which deletes it unless
    /// it holds this change or a later one. The listener never waits for Redis.
    pub(crate) fn repair(&self, id: &E::Id, op: ChangeOp, version: i64) {
        // Versions start again at an insert (a row deleted and inserted anew), so an insert
        // sets the floor afresh; an update keeps the insert's mark (a tombstone of the
        // row's earlier life may carry a higher version than the new row reached); a
        // delete ends it.
        let previous = self.floors.get(id);
        let floor = match (op, previous) {
            (ChangeOp::Insert, _) | (_, None) => Floor {
                version,
                inserted: op == ChangeOp::Insert,
            },
            (ChangeOp::Update, Some(f)) => Floor {
                version: f.version.max(version),
                inserted: f.inserted,
            },
            (ChangeOp::Delete, Some(f)) => Floor {
                version: f.version.max(version),
                inserted: false,
            },
        };
        self.floors.insert(id.clone(), floor);
        self.tier.queue_repair(Repair {
            key: self.key(id),
            header: format!("V{}", version_hex(version)),
            insert: op == ChangeOp::Insert,
            done: Arc::clone(&self.counters.repairs),
            failed: Arc::clone(&self.counters.errors),
            skipped: Arc::clone(&self.counters.breaker_skips),
        });
    }

    /// After a refresh read `row` from the database: deletes what Redis holds for the key
    /// if it is older (anything but a tombstone when there is no row). On the caller's
    /// thread: the refresh returns once Redis no longer holds the older row.
    pub(crate) fn reconcile(&self, id: &E::Id, row: Option<&E>) {
        let (version, insert) = match row {
            Some(r) => (r.version(), true),
            None => (i64::MAX, false),
        };
        let key = self.key(id);
        let header = format!("V{}", version_hex(version));
        let flag: &[u8] = if insert { b"1" } else { b"0" };
        match self.tier.run(
            &self.tier.scripts.repair,
            &[&key],
            &[header.as_bytes(), flag],
        ) {
            Ok(reply) => Counters::add(&self.counters.repairs, int(reply.first()) as u64),
            Err(skip) => {
                self.count(skip);
                self.tier.mark_unsafe("a refresh could not reach Redis");
            }
        }
    }

    /// The feed flushed the table, or reconnected after missing changes.
    pub(crate) fn flush(&self, why: &str) {
        self.floors.invalidate_all();
        self.tier.invalidate_all(why);
    }

    pub(crate) fn snapshot(&self) -> SharedRegionStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SharedRegionStats {
            hits: get(&c.hits),
            misses: get(&c.misses),
            fills: get(&c.fills),
            rejected_fills: get(&c.rejected_fills),
            rejected_values: get(&c.rejected_values),
            lease_waits: get(&c.lease_waits),
            repairs: get(&c.repairs),
            errors: get(&c.errors),
            breaker_skips: get(&c.breaker_skips),
        }
    }
}

fn reply_is_leased_by_other(reply: &[u8]) -> bool {
    matches!(parse_entry(reply), Entry::Leased)
}

/// A transaction's fences, placed before COMMIT on the shared keys it wrote.
pub(crate) struct Fences {
    tier: Arc<Tier>,
    token: String,
    keys: Vec<String>,
}

impl Fences {
    /// Fences `keys`. A fence that cannot be placed is not an error with
    /// [`SharedFailure::Degrade`]: the settle after COMMIT deletes what a fill may have
    /// put meanwhile, before `transaction` returns.
    pub(crate) fn place(tier: &Arc<Tier>, keys: Vec<String>) -> Result<Fences> {
        let token = tier.token();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let ttl = tier.config.fence_ttl.as_millis().to_string();
        if let Err(skip) = tier.run(
            &tier.scripts.fence,
            &refs,
            &[token.as_bytes(), ttl.as_bytes()],
        ) {
            if tier.config.on_failure == SharedFailure::Fail {
                return Err(skip.error());
            }
        }
        Ok(Fences {
            tier: Arc::clone(tier),
            token,
            keys,
        })
    }

    /// The number of fenced keys.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// After COMMIT: `entries[i]` (the committed row or tombstone, or empty) replaces the
    /// fence on `keys[i]`; after a rollback, every entry is empty. A settle that does not
    /// reach Redis makes the tier unsafe until a new generation is set.
    pub(crate) fn settle(self, entries: &[Vec<u8>]) {
        let refs: Vec<&str> = self.keys.iter().map(String::as_str).collect();
        let ttl = self.tier.config.ttl.as_millis().to_string();
        let mut args: Vec<&[u8]> = vec![self.token.as_bytes(), ttl.as_bytes()];
        args.extend(entries.iter().map(Vec::as_slice));
        if self
            .tier
            .run(&self.tier.scripts.settle, &refs, &args)
            .is_err()
        {
            self.tier
                .mark_unsafe("a committed write did not reach Redis after COMMIT");
        }
    }
}
