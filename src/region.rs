//! One cache region per entity type: slots, fenced fills, soft locks and single-flight loads.
//!
//! Two structures per region:
//!
//! - `cache`, the main moka cache of [`Slot`]s. The hit path reads only this: one
//!   lock-free lookup and an `Arc` clone.
//! - `keys`, 64 shards, each a mutex over the [`KeyState`] of keys with activity in
//!   flight (pending loads, soft locks held by transactions, and the per-key epoch that
//!   fences fills) and over its part of the batch window (`window.rs`). A key state lives
//!   exactly as long as someone holds a lock or runs a load on the key, so it is never
//!   evicted while it matters (C3: the fence survives the eviction of the value).
//!
//! Rows read by a batch (`find_many`, list members) go to the batch window, not the main
//! cache; the first read of one by id moves it to the main cache under its shard's lock. A
//! key is in the window or in the main cache, never both.
//!
//! Every change to a key's slot, in either store, by a load or a commit happens with the
//! key's shard locked, after checking the key's epoch, so a load that raced with a write
//! cannot land (C3), and a key locked by a transaction is neither served nor filled (C4).

use std::any::Any;
use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::sync::Cache;

use crate::config::RegionConfig;
use crate::entity::CachedEntity;
use crate::fence::Handoff;
use crate::hooks::{self, Hook, Point};
use crate::index::{Collection, IndexKey};
use crate::invalidation::ChangeOp;
use crate::stats::{Counters, RegionStats};
use crate::unique::{AnyIndex, Index, UniqueKey, UniqueKeys};
use crate::window::{Budget, Window};

/// What the cache holds for one key.
pub(crate) enum Slot<E> {
    /// The committed row.
    Present(Arc<E>),
    /// Read-through found no row (negative cache).
    Absent,
    /// This process committed a delete of the row at this version (exclusive upper bound).
    Tombstone(i64),
    /// A transaction holds the key (C4): read past the cache. Writing this marker is
    /// cheaper in moka than removing the entry; it is never served and any fill or commit
    /// replaces it.
    Locked,
}

impl<E> Clone for Slot<E> {
    #[inline]
    fn clone(&self) -> Self {
        match self {
            Slot::Present(e) => Slot::Present(Arc::clone(e)),
            Slot::Absent => Slot::Absent,
            Slot::Tombstone(v) => Slot::Tombstone(*v),
            Slot::Locked => Slot::Locked,
        }
    }
}

/// The outcome of a cache lookup.
pub(crate) enum Lookup<E> {
    /// A cached row.
    Hit(Arc<E>),
    /// A cached "no such row".
    NegativeHit,
    /// Nothing cached.
    Miss,
}

/// Activity on one key: only exists while a lock or a load is outstanding.
struct KeyState<E> {
    /// Transactions holding a pending write on the key (C4 soft lock).
    locks: u32,
    /// Loads in flight for the key.
    loads: u32,
    /// Bumped by every lock, commit, release and invalidation: a load may fill only if
    /// the epoch it saw at its start is still current (C3).
    epoch: u64,
    /// The single-flight load others may join.
    flight: Option<Arc<Flight<E>>>,
    /// The highest version another process was notified to have committed while a local
    /// transaction held the key: that transaction's commit may not put anything older.
    remote_floor: i64,
    /// Another process was notified to have inserted the row while a local transaction
    /// held the key: that transaction's delete may not leave a tombstone (the insert may
    /// have come after it, with versions starting again).
    remote_insert: bool,
}

impl<E> Default for KeyState<E> {
    fn default() -> Self {
        KeyState {
            locks: 0,
            loads: 0,
            epoch: 0,
            flight: None,
            remote_floor: i64::MIN,
            remote_insert: false,
        }
    }
}

impl<E> KeyState<E> {
    fn idle(&self) -> bool {
        self.locks == 0 && self.loads == 0
    }
}

/// A load in flight that concurrent misses of the same key wait for.
pub(crate) struct Flight<E> {
    epoch: u64,
    generation: u64,
    result: Handoff<FlightResult<E>>,
}

enum FlightResult<E> {
    Loaded(Option<Arc<E>>),
    /// The leader's load failed: each waiter loads for itself.
    Failed,
}

impl<E> Clone for FlightResult<E> {
    fn clone(&self) -> Self {
        match self {
            FlightResult::Loaded(row) => FlightResult::Loaded(row.clone()),
            FlightResult::Failed => FlightResult::Failed,
        }
    }
}

impl<E> Flight<E> {
    fn finish(&self, result: FlightResult<E>) {
        self.result.finish(result);
    }

    fn wait(&self) -> FlightResult<E> {
        self.result.wait()
    }
}

/// What a read-through load does with the row it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FillMode {
    /// Fill an empty slot (or replace an older version), fenced.
    Fill,
    /// Read the cache, but on a miss load without filling.
    NoFill,
    /// Skip the cache, always load, and put the result over whatever is cached, fenced.
    Refresh,
}

/// What a load is allowed to do with its result, decided under the shard lock at its start.
pub(crate) struct LoadTicket {
    epoch: u64,
    generation: u64,
    /// False when the key was soft-locked at the start: read from the database, never fill.
    may_fill: bool,
    /// Refresh: put over whatever the slot holds (the fence still applies).
    force: bool,
}

/// Where a batch load began: the write sequence, and each shard's count of main-cache
/// inserts (see `Region::main_puts`).
pub(crate) struct BatchFence {
    seq: u64,
    puts: [u64; SHARDS],
}

/// A transaction's hold on one key, returned by [`Region::lock`].
pub(crate) struct KeyLock {
    /// The key's epoch right after this lock was taken.
    epoch: u64,
    /// The region's clear generation when this lock was taken: a region-wide clear while
    /// the key is held fences the commit like a single-key invalidation does (C7).
    generation: u64,
}

/// The final effect of a committed transaction on one key.
pub(crate) enum FinalWrite<E> {
    Put(Arc<E>),
    Delete { version: i64 },
    Invalidate,
}

const SHARDS: usize = 64;

/// Writes remembered by key in `Region::write_log`.
const WRITE_LOG: usize = 1024;
/// The `write_log` tag of a write that touched every key (a clear); key tags are odd.
const ANY_KEY: u64 = 0;

/// One fence shard: the activity of its keys, and its part of the batch window.
struct Shard<E: CachedEntity> {
    /// Its position in `Region::keys` (and `Region::main_puts`).
    index: usize,
    states: HashMap<E::Id, KeyState<E>>,
    window: Window<E::Id, Arc<E>>,
}

type KeyShard<E> = Mutex<Shard<E>>;

/// The share of a bounded region's capacity given to its batch window: a tenth, as
/// S3-FIFO's small queue.
const WINDOW_SHARE: u64 = 10;
/// A region whose window would hold fewer entries than this has none (unless sized).
const MIN_WINDOW_ENTRIES: u64 = 256;
/// A byte-budgeted region whose window would hold fewer bytes than this has none.
const MIN_WINDOW_BYTES: u64 = 256 * 1024;

/// The cache region of entity type `E`.
pub(crate) struct Region<E: CachedEntity> {
    config: RegionConfig,
    cache: Cache<E::Id, Slot<E>>,
    keys: Box<[KeyShard<E>]>,
    /// The batch window's shared budget; `None`: the region has no window (see
    /// [`RegionConfig::batch_window`]).
    window: Option<Budget>,
    /// The window weighs rows in estimated bytes (a byte-budgeted region), not as 1 each.
    window_bytes: bool,
    /// Per shard, bumped after every insert into the main cache (under the shard lock): a
    /// batch that read a shard's count before its main-cache lookups, and finds it
    /// unchanged at a fill, knows the main cache holds nothing for that shard's key it
    /// looked up and missed, and skips a second moka lookup.
    main_puts: Box<[AtomicU64]>,
    hasher: RandomState,
    /// Bumped by `clear` and by loss of trust, under every shard lock: a load that started
    /// before, and a commit whose lock was taken before, never fill or put (C3, C7).
    generation: AtomicU64,
    /// Bumped (under the key's shard lock) by every lock, commit, release and
    /// invalidation in the region, and by `clear`: fills of rows read by a query
    /// (warm-up, lists, unique keys) check it per key, with `write_log`.
    write_seq: AtomicU64,
    /// Which key each of the last `WRITE_LOG` bumps of `write_seq` was for (a tag of its
    /// hash; `ANY_KEY` for a clear), at `seq % WRITE_LOG`: a row read by a query that
    /// began at sequence `s` is refused only when a write since `s` touched that row, or
    /// when the log cannot tell (more than `WRITE_LOG` writes since).
    write_log: Box<[AtomicU64]>,
    pub(crate) counters: Arc<Counters>,
    /// Test-only pause points (feature `test-hooks`); `None` otherwise.
    hook: Option<Hook>,
    /// The entity's unique-key indexes (`#[cache(unique)]`).
    indexes: Vec<Box<dyn AnyIndex<E>>>,
    /// False while the cross-process listener covering this region is disconnected (C7):
    /// reads then go to the database and nothing is filled.
    trusted: AtomicBool,
    /// The SQL name of the entity's table, which change notifications carry (C7).
    sql_table: Box<str>,
    /// The shared tier behind this region (C9), when it is shared.
    #[cfg(feature = "redis")]
    shared: Option<crate::shared::SharedRegion<E>>,
    /// The listener has connected once: a later connection follows a loss, after which
    /// the shared tier is started afresh (changes may have been missed).
    #[cfg(feature = "redis")]
    connected_once: AtomicBool,
}

/// Per-entry expiry: rows live `ttl` (and `tti` when idle), negative entries and
/// tombstones live `negative_ttl`.
struct SlotExpiry {
    ttl: Option<Duration>,
    tti: Option<Duration>,
    negative_ttl: Option<Duration>,
}

impl SlotExpiry {
    fn lifetime<E>(&self, slot: &Slot<E>) -> Option<Duration> {
        match slot {
            Slot::Present(_) => match (self.ttl, self.tti) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            Slot::Absent | Slot::Tombstone(_) => self.negative_ttl,
            Slot::Locked => None,
        }
    }
}

thread_local! {
    /// Set while this thread reads a slot for the library's own bookkeeping (a peek, a
    /// version check): moka calls `expire_after_read` synchronously on the reading
    /// thread, which then leaves the time-to-idle as it was.
    static QUIET_READ: Cell<bool> = const { Cell::new(false) };
}

/// Clears `QUIET_READ` when dropped, even if the read unwinds.
struct QuietRead;

impl QuietRead {
    fn start() -> Self {
        QUIET_READ.with(|q| q.set(true));
        QuietRead
    }
}

impl Drop for QuietRead {
    fn drop(&mut self) {
        QUIET_READ.with(|q| q.set(false));
    }
}

impl<K, E> moka::Expiry<K, Slot<E>> for SlotExpiry {
    fn expire_after_create(&self, _: &K, slot: &Slot<E>, _: Instant) -> Option<Duration> {
        self.lifetime(slot)
    }

    fn expire_after_update(
        &self,
        _: &K,
        slot: &Slot<E>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.lifetime(slot)
    }

    fn expire_after_read(
        &self,
        _: &K,
        slot: &Slot<E>,
        read_at: Instant,
        until_expiry: Option<Duration>,
        last_modified_at: Instant,
    ) -> Option<Duration> {
        let (Some(tti), Slot::Present(_)) = (self.tti, slot) else {
            return until_expiry;
        };
        if QUIET_READ.with(Cell::get) {
            // Not an access: a peek or an internal lookup.
            return until_expiry;
        }
        match self.ttl {
            Some(ttl) => {
                let age = read_at.saturating_duration_since(last_modified_at);
                Some(tti.min(ttl.saturating_sub(age)))
            }
            None => Some(tti),
        }
    }
}

/// Weight of a non-row slot in a byte-budgeted region.
const MARKER_BYTES: u32 = 64;

impl<E: CachedEntity> Region<E> {
    /// A region with already validated settings.
    #[cfg(test)]
    pub(crate) fn new(config: RegionConfig) -> Self {
        Self::with_hook(config, None)
    }

    /// A region with already validated settings and an optional test hook.
    pub(crate) fn with_hook(config: RegionConfig, hook: Option<Hook>) -> Self {
        let expiry = SlotExpiry {
            ttl: config.ttl,
            tti: config.tti,
            negative_ttl: config.negative_ttl,
        };
        let counters = Arc::new(Counters::default());
        let listener_counters = Arc::clone(&counters);
        let region_name = config.name.clone();
        let mut builder = Cache::builder().name(&config.name).expire_after(expiry);
        if config.track_evictions {
            builder = builder.eviction_listener(move |id: Arc<E::Id>, _slot: Slot<E>, cause| {
                let c = &listener_counters;
                let counter = match cause {
                    RemovalCause::Size => &c.evicted_size,
                    RemovalCause::Expired => &c.expired,
                    RemovalCause::Explicit => &c.invalidated,
                    RemovalCause::Replaced => return,
                };
                Counters::bump(counter);
                tracing::trace!(region = %region_name, id = ?id, ?cause, "cache entry removed");
            });
        }
        let mut unique = UniqueKeys {
            makers: Vec::new(),
            collections: 0,
        };
        E::unique_keys(&mut unique);
        // A byte budget covers the key entries too: a quarter of it is shared by the
        // entity's unique-key indexes, the rows get the rest.
        let key_share = match (config.max_bytes, unique.makers.len()) {
            (Some(bytes), n) if n > 0 => Some((bytes / 4).max(1)),
            _ => None,
        };
        // The batch window takes its share of the bound, so the two stores together stay
        // within it. Regions with a ttl or tti have none: a row's lifetime would start
        // again when it moves to the main cache (`validate` refuses an explicit size).
        let expiring = config.ttl.is_some() || config.tti.is_some();
        let bound = match (config.max_bytes, config.max_entries) {
            (Some(bytes), _) => Some((bytes - key_share.unwrap_or(0), MIN_WINDOW_BYTES)),
            (None, Some(n)) => Some((n, MIN_WINDOW_ENTRIES)),
            (None, None) => None,
        };
        let window = match (config.batch_window, bound) {
            (_, None) => None,
            (Some(0), _) => None,
            (Some(n), Some((bound, _))) => (!expiring && n < bound).then_some(n),
            (None, Some((bound, min))) => {
                let share = bound / WINDOW_SHARE;
                (!expiring && share >= min).then_some(share)
            }
        };
        let main_share = window.unwrap_or(0);
        builder = match (config.max_bytes, config.max_entries) {
            (Some(bytes), _) => {
                let rows = bytes - key_share.unwrap_or(0) - main_share;
                builder
                    .max_capacity(rows.max(1))
                    .weigher(|id: &E::Id, slot: &Slot<E>| {
                        let key = std::mem::size_of_val(id) as u64;
                        let value = match slot {
                            Slot::Present(e) => e.approx_bytes() as u64,
                            Slot::Absent | Slot::Tombstone(_) | Slot::Locked => {
                                u64::from(MARKER_BYTES)
                            }
                        };
                        u32::try_from(key + value).unwrap_or(u32::MAX)
                    })
            }
            (None, Some(n)) => builder.max_capacity(n - main_share),
            (None, None) => builder,
        };
        let per_index = key_share.map(|b| (b / unique.makers.len() as u64).max(1));
        let indexes = unique
            .makers
            .into_iter()
            .map(|make| make(&config, per_index, &counters))
            .collect();
        Region {
            sql_table: E::TABLE.into(),
            trusted: AtomicBool::new(true),
            indexes,
            cache: builder.build(),
            keys: (0..SHARDS)
                .map(|index| {
                    Mutex::new(Shard {
                        index,
                        states: HashMap::new(),
                        window: Window::new(index),
                    })
                })
                .collect(),
            window: window.map(|cap| Budget::new(cap, SHARDS)),
            main_puts: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            window_bytes: config.max_bytes.is_some(),
            hasher: RandomState::new(),
            generation: AtomicU64::new(0),
            write_seq: AtomicU64::new(0),
            write_log: (0..WRITE_LOG).map(|_| AtomicU64::new(ANY_KEY)).collect(),
            counters,
            config,
            hook,
            #[cfg(feature = "redis")]
            shared: None,
            #[cfg(feature = "redis")]
            connected_once: AtomicBool::new(false),
        }
    }

    /// Puts the shared tier behind this region (C9).
    #[cfg(feature = "redis")]
    pub(crate) fn with_shared(mut self, shared: crate::shared::SharedRegion<E>) -> Self {
        self.shared = Some(shared.with_hook(self.hook.clone()));
        self
    }

    /// The shared tier behind this region, if any.
    #[cfg(feature = "redis")]
    #[inline]
    pub(crate) fn shared(&self) -> Option<&crate::shared::SharedRegion<E>> {
        self.shared.as_ref()
    }

    /// Sets the SQL name of the table (`#[sql_name]` of its `table!`), which change
    /// notifications carry; `E::TABLE` until then.
    pub(crate) fn with_sql_table(mut self, name: &str) -> Self {
        self.sql_table = name.into();
        self
    }

    pub(crate) fn config(&self) -> &RegionConfig {
        &self.config
    }

    /// Every shard lock, in order: for region-wide changes (clear, loss of trust).
    fn lock_all_shards(&self) -> Vec<MutexGuard<'_, Shard<E>>> {
        self.keys
            .iter()
            .map(|k| k.lock().unwrap_or_else(PoisonError::into_inner))
            .collect()
    }

    fn shard(&self, id: &E::Id) -> MutexGuard<'_, Shard<E>> {
        let i = (self.hasher.hash_one(id) as usize) % SHARDS;
        // A poisoned shard only means a panic happened while it was held; the maps stay
        // consistent because every mutation completes before anything can panic.
        self.keys[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The hit path: one moka lookup, no lock, no allocation beyond the `Arc` clone. A
    /// main-cache miss asks the batch window, if it holds anything: a row found there is
    /// moved to the main cache under its shard's lock (its first read after a batch).
    #[inline]
    pub(crate) fn lookup(&self, id: &E::Id) -> Lookup<E> {
        match self.lookup_main(id) {
            Lookup::Miss if self.trusted.load(Ordering::Acquire) => match self.admit(id) {
                Some(e) => {
                    self.counters.hits.bump();
                    Lookup::Hit(e)
                }
                None => Lookup::Miss,
            },
            found => found,
        }
    }

    /// The main cache alone (a batch asks the window when it registers its misses).
    #[inline]
    pub(crate) fn lookup_main(&self, id: &E::Id) -> Lookup<E> {
        if !self.trusted.load(Ordering::Acquire) {
            Counters::bump(&self.counters.untrusted_reads);
            return Lookup::Miss;
        }
        match self.cache.get(id) {
            Some(Slot::Present(e)) => {
                self.counters.hits.bump();
                Lookup::Hit(e)
            }
            Some(Slot::Absent | Slot::Tombstone(_)) => {
                self.counters.negative_hits.bump();
                Lookup::NegativeHit
            }
            Some(Slot::Locked) | None => Lookup::Miss,
        }
    }

    /// Moves `id`'s row from the batch window to the main cache, if the window holds it.
    fn admit(&self, id: &E::Id) -> Option<Arc<E>> {
        if self.window.as_ref()?.len() == 0 {
            return None;
        }
        let mut keys = self.shard(id);
        self.admit_locked(&mut keys, id)
    }

    /// [`admit`](Region::admit) with `id`'s shard locked by the caller.
    fn admit_locked(&self, keys: &mut Shard<E>, id: &E::Id) -> Option<Arc<E>> {
        let budget = self.window.as_ref()?;
        let row = keys.window.take(id, budget)?;
        self.put_main(keys, id, Slot::Present(Arc::clone(&row)));
        Counters::bump(&self.counters.window_admissions);
        Some(row)
    }

    /// Drops `id` from the batch window (every write of the key does, under its shard
    /// lock, before it changes the main cache).
    #[inline]
    fn forget(&self, keys: &mut Shard<E>, id: &E::Id) {
        if let Some(budget) = &self.window {
            keys.window.take(id, budget);
        }
    }

    /// Puts `slot` in the main cache; the caller holds `id`'s shard, `keys`. Every insert
    /// into the main cache goes through here.
    #[inline]
    fn put_main(&self, keys: &Shard<E>, id: &E::Id, slot: Slot<E>) {
        self.cache.insert(id.clone(), slot);
        // After the insert: a batch that read the count before it also sees the row.
        self.main_puts[keys.index].fetch_add(1, Ordering::Release);
    }

    /// The slot for `id` in either store, read quietly, with `id`'s shard locked by the
    /// caller.
    fn current(&self, keys: &Shard<E>, id: &E::Id) -> Option<Slot<E>> {
        if let Some(row) = keys.window.get(id) {
            return Some(Slot::Present(Arc::clone(row)));
        }
        self.quiet_get(id)
    }

    /// The cached row, if the cache would serve one now; counts nothing.
    pub(crate) fn peek(&self, id: &E::Id) -> Option<Arc<E>> {
        if !self.trusted.load(Ordering::Acquire) {
            return None;
        }
        match self.quiet_get(id) {
            Some(Slot::Present(e)) => Some(e),
            Some(_) => None,
            None if self.window.as_ref().is_some_and(|b| b.len() > 0) => {
                self.shard(id).window.get(id).cloned()
            }
            None => None,
        }
    }

    /// The slot for `id`, read without counting as an access: its time-to-idle is not
    /// extended (peeks, version checks and other bookkeeping).
    fn quiet_get(&self, id: &E::Id) -> Option<Slot<E>> {
        let _quiet = QuietRead::start();
        self.cache.get(id)
    }

    /// Read-through for one key after a miss: joins a load in flight or runs `load`,
    /// then fills if the fence allows it.
    pub(crate) fn load_through<Err>(
        &self,
        id: &E::Id,
        mode: FillMode,
        load: impl FnOnce() -> Result<Option<E>, Err>,
    ) -> Result<Option<Arc<E>>, Err> {
        Counters::bump(&self.counters.misses);
        if mode == FillMode::NoFill || !self.trusted.load(Ordering::Acquire) {
            return self.load_untracked(load);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let (ticket, flight) = {
            let mut keys = self.shard(id);
            // A fill or commit may have landed between the caller's lookup and this lock.
            if mode == FillMode::Fill {
                match self.cache.get(id) {
                    Some(Slot::Present(e)) => return Ok(Some(e)),
                    Some(Slot::Absent | Slot::Tombstone(_)) => return Ok(None),
                    Some(Slot::Locked) => {}
                    None => {
                        if let Some(e) = self.admit_locked(&mut keys, id) {
                            return Ok(Some(e));
                        }
                    }
                }
            }
            let st = keys.states.entry(id.clone()).or_default();
            if st.locks > 0 {
                Counters::bump(&self.counters.lock_bypasses);
                (
                    LoadTicket {
                        epoch: st.epoch,
                        generation,
                        may_fill: false,
                        force: false,
                    },
                    None,
                )
            } else {
                if let (FillMode::Fill, Some(f)) = (mode, &st.flight) {
                    // Join only a flight that no write has overtaken: its result is then
                    // at least as new as anything committed before this read started (C4).
                    if f.epoch == st.epoch && f.generation == generation {
                        let f = Arc::clone(f);
                        drop(keys);
                        if let FlightResult::Loaded(v) = f.wait() {
                            return Ok(v);
                        }
                        // The leader failed: load without filling.
                        return self.load_untracked(load);
                    }
                }
                let f = Arc::new(Flight {
                    epoch: st.epoch,
                    generation,
                    result: Handoff::new(),
                });
                st.flight = Some(Arc::clone(&f));
                st.loads += 1;
                (
                    LoadTicket {
                        epoch: st.epoch,
                        generation,
                        may_fill: true,
                        force: mode == FillMode::Refresh,
                    },
                    Some(f),
                )
            }
        };
        let Some(flight) = flight else {
            // Soft-locked: the state entry belongs to the lock holders; read past the cache.
            return self.load_untracked(load);
        };
        // Finish the flight and the load count even if `load` panics.
        let mut guard = LoadGuard {
            region: self,
            id,
            flight: &flight,
            ticket: Some(ticket),
        };
        hooks::reach(&self.hook, || Point::BeforeLoad {
            region: self.config.name.clone(),
            id: format!("{id:?}"),
        });
        let started = Instant::now();
        let loaded = load();
        let took = started.elapsed();
        self.counters.add_load(took);
        tracing::debug!(
            region = %self.config.name,
            id = ?id,
            took_us = took.as_micros() as u64,
            found = matches!(loaded, Ok(Some(_))),
            failed = loaded.is_err(),
            "loaded from the database"
        );
        hooks::reach(&self.hook, || Point::AfterLoad {
            region: self.config.name.clone(),
            id: format!("{id:?}"),
        });
        let Some(ticket) = guard.ticket.take() else {
            unreachable!("the ticket is taken once")
        };
        drop(guard);
        match loaded {
            Ok(row) => {
                let row = row.map(Arc::new);
                self.finish_load(id, &ticket, Some(&row), Some(&flight));
                flight.finish(FlightResult::Loaded(row.clone()));
                Ok(row)
            }
            Err(e) => {
                self.finish_load(id, &ticket, None, Some(&flight));
                flight.finish(FlightResult::Failed);
                Err(e)
            }
        }
    }

    fn load_untracked<Err>(
        &self,
        load: impl FnOnce() -> Result<Option<E>, Err>,
    ) -> Result<Option<Arc<E>>, Err> {
        let started = Instant::now();
        let loaded = load();
        self.counters.add_load(started.elapsed());
        loaded.map(|row| row.map(Arc::new))
    }

    /// Registers one key of a load with its own ticket: a refreshing batch (a refresh puts
    /// without comparing versions, so it is fenced by the key's epoch, which every change
    /// of the slot bumps). Batch loads do not join or lead single flights.
    pub(crate) fn begin_load(&self, id: &E::Id, mode: FillMode) -> LoadTicket {
        Counters::bump(&self.counters.misses);
        let generation = self.generation.load(Ordering::Acquire);
        let mut keys = self.shard(id);
        let st = keys.states.entry(id.clone()).or_default();
        let may_fill =
            st.locks == 0 && mode != FillMode::NoFill && self.trusted.load(Ordering::Acquire);
        if may_fill {
            st.loads += 1;
        } else if st.locks > 0 {
            Counters::bump(&self.counters.lock_bypasses);
        }
        let ticket = LoadTicket {
            epoch: st.epoch,
            generation,
            may_fill,
            force: mode == FillMode::Refresh,
        };
        if st.idle() {
            keys.states.remove(id);
        }
        ticket
    }

    /// Starts the fence of a batch load (`find_many`): taken before the batch's main-cache
    /// lookups, and before its query.
    pub(crate) fn batch_fence(&self) -> BatchFence {
        let seq = self.write_seq.load(Ordering::Acquire);
        BatchFence {
            seq,
            puts: std::array::from_fn(|i| self.main_puts[i].load(Ordering::Acquire)),
        }
    }

    /// One key of a batch load that missed the main cache, in [`FillMode::Fill`] or
    /// [`FillMode::NoFill`]: returns its row when the batch window holds it (moved to the
    /// main cache in `Fill`, its first read by id), `None` when it must be loaded. Nothing
    /// is registered: the batch's fills are fenced by the write log (see
    /// [`fill_batch`](Region::fill_batch)).
    pub(crate) fn begin_batch_key(&self, id: &E::Id, mode: FillMode) -> Option<Arc<E>> {
        let mut keys = self.shard(id);
        if self.trusted.load(Ordering::Acquire) {
            let windowed = match mode {
                FillMode::Fill => self.admit_locked(&mut keys, id),
                _ => keys.window.get(id).cloned(),
            };
            if windowed.is_some() {
                self.counters.hits.bump();
                return windowed;
            }
        }
        Counters::bump(&self.counters.misses);
        if keys.states.get(id).is_some_and(|st| st.locks > 0) {
            Counters::bump(&self.counters.lock_bypasses);
        }
        None
    }

    /// Fills one key of a batch load that began at `fence` with `row` (`None`: no row),
    /// unless a write touched the key since or a transaction holds it now (C3, C4): every
    /// write of the key bumps the write sequence and logs itself under the key's shard
    /// lock, which this holds. The row goes to the batch window.
    pub(crate) fn fill_batch(&self, id: &E::Id, row: &Option<Arc<E>>, fence: &BatchFence) {
        let mut keys = self.shard(id);
        let locked = keys.states.get(id).is_some_and(|st| st.locks > 0);
        if locked || !self.trusted.load(Ordering::Acquire) || !self.unwritten_since(id, fence.seq) {
            Counters::bump(&self.counters.rejected_stale_fills);
            tracing::debug!(region = %self.config.name, id = ?id, "rejected a stale fill (C3)");
            return;
        }
        let missed = self.main_puts[keys.index].load(Ordering::Acquire) == fence.puts[keys.index];
        self.fill(&mut keys, id, row, true, missed);
    }

    /// Ends a load registered by `begin_load` or `load_through`: fills with `row` (an
    /// `Option<Arc<E>>`, `None` = no row) if the fence allows, or only ends the load when
    /// `row` is `None` (the load failed).
    pub(crate) fn finish_load(
        &self,
        id: &E::Id,
        ticket: &LoadTicket,
        row: Option<&Option<Arc<E>>>,
        flight: Option<&Arc<Flight<E>>>,
    ) {
        if !ticket.may_fill {
            return;
        }
        let mut keys = self.shard(id);
        let Some(st) = keys.states.get_mut(id) else {
            return;
        };
        st.loads = st.loads.saturating_sub(1);
        if let (Some(mine), Some(f)) = (flight, &st.flight) {
            if Arc::ptr_eq(mine, f) {
                st.flight = None;
            }
        }
        let current = st.epoch == ticket.epoch
            && st.locks == 0
            && self.trusted.load(Ordering::Acquire)
            && self.generation.load(Ordering::Acquire) == ticket.generation;
        if st.idle() {
            keys.states.remove(id);
        }
        if let Some(row) = row {
            if current && ticket.force {
                self.put_fresh(&mut keys, id, row);
            } else if current {
                self.fill(&mut keys, id, row, false, false);
            } else {
                Counters::bump(&self.counters.rejected_stale_fills);
                tracing::debug!(region = %self.config.name, id = ?id, "rejected a stale fill (C3)");
            }
        }
    }

    /// The one version-checked update used by every fill: never replaces a slot holding
    /// the same or a newer version, a tombstone or a negative entry. Callers hold the key's
    /// shard lock, as does every other writer of the slot (locks, commits, releases,
    /// invalidations, and `clear`, which takes them all), so the check and the insert are
    /// atomic without moka's per-key compute.
    /// A row read by a batch (`batch`) goes to the batch window when the key is in neither
    /// store, or replaces an older version there; a row of a single-key load goes to the
    /// main cache (out of the window, if it was there).
    /// `main_missed`: the caller knows the main cache holds nothing for `id` (a batch whose
    /// lookup missed, with no insert into the shard since; see `main_puts`).
    /// Returns whether it put the row.
    fn fill(
        &self,
        keys: &mut Shard<E>,
        id: &E::Id,
        row: &Option<Arc<E>>,
        batch: bool,
        main_missed: bool,
    ) -> bool {
        let slot = match row {
            Some(e) => Slot::Present(Arc::clone(e)),
            None if self.config.negative_ttl.is_some() => Slot::Absent,
            None => return false,
        };
        // The slot as it is, in whichever store holds the key. Most fills find both empty;
        // `contains_key` says so without cloning the slot or recording a read, and the
        // shard lock makes it as atomic as the `get`.
        let windowed = keys.window.get(id).cloned();
        let in_window = windowed.is_some();
        let old = match windowed {
            Some(e) => Some(Slot::Present(e)),
            None if main_missed || !self.cache.contains_key(id) => None,
            None => self.quiet_get(id),
        };
        let main_empty = old.is_none();
        let put = match (old, &slot) {
            (None | Some(Slot::Locked), _) => true,
            (Some(Slot::Present(old)), Slot::Present(new)) if old.version() < new.version() => true,
            (Some(Slot::Present(old)), Slot::Present(new)) if old.version() > new.version() => {
                Counters::bump(&self.counters.rejected_stale_fills);
                false
            }
            _ => false,
        };
        if !put {
            return false;
        }
        // A batch row goes to the window unless the main cache holds the key.
        match (&self.window, &slot) {
            (Some(budget), Slot::Present(new)) if batch && (in_window || main_empty) => {
                let weight = self.window_weight(id, new);
                if in_window {
                    keys.window.replace(id, Arc::clone(new), weight, budget);
                } else {
                    keys.window
                        .insert(id.clone(), Arc::clone(new), weight, budget);
                }
                self.make_room(keys, id, budget)
            }
            _ => {
                if in_window {
                    self.forget(keys, id);
                }
                self.put_main(keys, id, slot);
                true
            }
        }
    }

    /// Pushes the oldest rows out of the batch window until it fits its budget again, after
    /// `id` was put in the caller's shard `keys`. The oldest row may be another shard's,
    /// which is only tried, never waited for (the caller holds its own lock): when that
    /// shard is busy, the caller's shard gives its own oldest row instead. Rows pushed out
    /// count as evictions. Returns whether `id` stayed.
    fn make_room(&self, keys: &mut Shard<E>, id: &E::Id, budget: &Budget) -> bool {
        let mut kept = true;
        while budget.over() {
            let other = budget
                .oldest_shard()
                .filter(|&i| i != keys.index)
                .and_then(|i| match self.keys[i].try_lock() {
                    Ok(shard) => Some(shard),
                    Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                    Err(TryLockError::WouldBlock) => None,
                });
            let popped = match other {
                Some(mut shard) => shard.window.pop_oldest(budget).is_some(),
                None => match keys.window.pop_oldest(budget) {
                    Some(k) => {
                        kept &= k != *id;
                        true
                    }
                    // Nothing of its own left, and the others are empty or busy.
                    None => break,
                },
            };
            if popped {
                Counters::bump(&self.counters.evicted_size);
            }
        }
        kept
    }

    /// [`fill`](Region::fill) into the main cache, taking the shard lock (tests).
    #[cfg(test)]
    pub(crate) fn fill_main(&self, id: &E::Id, row: &Option<Arc<E>>) -> bool {
        let mut keys = self.shard(id);
        self.fill(&mut keys, id, row, false, false)
    }

    /// The weight of `row` in the batch window: its estimated bytes in a byte-budgeted
    /// region (as the main cache weighs it), 1 otherwise.
    fn window_weight(&self, id: &E::Id, row: &E) -> u64 {
        if self.window_bytes {
            (std::mem::size_of_val(id) + row.approx_bytes()) as u64
        } else {
            1
        }
    }

    /// A refresh: the fence proved `row` is the latest committed state, so it replaces
    /// whatever the slot holds (in the main cache).
    fn put_fresh(&self, keys: &mut Shard<E>, id: &E::Id, row: &Option<Arc<E>>) {
        self.forget(keys, id);
        match row {
            Some(e) => self.put_main(keys, id, Slot::Present(Arc::clone(e))),
            None if self.config.negative_ttl.is_some() => self.put_main(keys, id, Slot::Absent),
            None => self.cache.invalidate(id),
        }
    }

    /// The index of unique key `K`.
    pub(crate) fn index<K: UniqueKey<Entity = E>>(&self) -> Option<&Index<K>> {
        self.indexes
            .iter()
            .find_map(|i| i.as_any().downcast_ref::<Index<K>>())
    }

    /// The collection of index key `K`.
    #[inline]
    pub(crate) fn collection<K: IndexKey<Entity = E>>(&self) -> Option<&Collection<K>> {
        self.indexes
            .iter()
            .find_map(|i| i.as_any().downcast_ref::<Collection<K>>())
    }

    /// Whether the entity has collections (whose lists need a row's previous content).
    pub(crate) fn has_collections(&self) -> bool {
        self.indexes.iter().any(|i| i.is_collection())
    }

    /// A transaction writes a row whose key values it does not know (its previous content
    /// was neither cached nor read, or it writes with plain SQL): collections drop every
    /// list (a counted fallback) and fill none until `end_key_writes` with `blind`.
    pub(crate) fn begin_blind(&self) {
        for index in &self.indexes {
            index.begin_blind();
        }
    }

    /// Whether the region may serve and fill now: false while the listener covering it is
    /// disconnected (C7). Unique-key lookups check it too.
    pub(crate) fn trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    /// Whether the entity has unique keys (whose values writes must track).
    pub(crate) fn has_indexes(&self) -> bool {
        !self.indexes.is_empty()
    }

    /// A transaction wrote (or will write) `row`: its unique-key values are invalidated.
    pub(crate) fn touch_keys(&self, row: &E) {
        for index in &self.indexes {
            index.touch(row);
        }
    }

    /// A transaction that touched `rows` ended (committed or not).
    pub(crate) fn end_key_writes(&self, rows: &[&E], unknown: bool, blind: bool) {
        for index in &self.indexes {
            index.end_write(rows, unknown, blind);
        }
    }

    /// Fills one row read by a query (a unique-key lookup, a list, a warm-up) that started
    /// at write sequence `seq`, unless a write touched the row since or holds it now.
    /// `None` when the fence refused it; otherwise whether the row was put (a slot holding
    /// the same or a newer version keeps it). `batch`: the row goes to the batch window
    /// (list members), not the main cache (warm-up rows, a unique-key lookup's row).
    pub(crate) fn fill_if_unchanged(&self, row: &Arc<E>, seq: u64, batch: bool) -> Option<bool> {
        let id = &row.id();
        let mut keys = self.shard(id);
        let locked = keys.states.get(id).is_some_and(|st| st.locks > 0);
        if locked || !self.trusted.load(Ordering::Acquire) || !self.unwritten_since(id, seq) {
            Counters::bump(&self.counters.rejected_stale_fills);
            return None;
        }
        let put = self.fill(&mut keys, id, &Some(Arc::clone(row)), batch, false);
        drop(keys);
        Some(put)
    }

    /// Bumps the write sequence for a write of `id` (`None`: of every key) and logs it.
    /// Callers hold `id`'s shard lock (every shard lock for `None`).
    fn note_write(&self, id: Option<&E::Id>) {
        let n = self.write_seq.fetch_add(1, Ordering::AcqRel);
        let tag = id.map_or(ANY_KEY, |id| self.hasher.hash_one(id) | 1);
        self.write_log[(n % WRITE_LOG as u64) as usize].store(tag, Ordering::Release);
    }

    /// Whether no write touched `id` since the write sequence was `seq`. The caller holds
    /// `id`'s shard lock, under which every write of `id` bumps the sequence and logs
    /// itself, so none of them can be half done; a slot still holding an older write's
    /// tag (another key's write in progress) can only refuse a fill, never admit one.
    fn unwritten_since(&self, id: &E::Id, seq: u64) -> bool {
        let now = self.write_seq.load(Ordering::Acquire);
        if now == seq {
            return true;
        }
        if now.saturating_sub(seq) > WRITE_LOG as u64 {
            return false;
        }
        let tag = self.hasher.hash_one(id) | 1;
        (seq..now).all(|n| {
            let logged = self.write_log[(n % WRITE_LOG as u64) as usize].load(Ordering::Acquire);
            logged != tag && logged != ANY_KEY
        })
    }

    /// The current write sequence, read before a warm-up query.
    pub(crate) fn write_seq(&self) -> u64 {
        self.write_seq.load(Ordering::Acquire)
    }

    /// Fills rows read by a warm-up query that started at write sequence `seq`. A row is
    /// filled only if no write touched it since (checked under the row's shard lock,
    /// where every write of it bumps the sequence and logs itself), so a warm-up that
    /// raced with a write never lands a stale row (C3). Returns (filled, refused).
    /// A row already cached at its version (an earlier attempt filled it) counts as
    /// neither.
    pub(crate) fn warm(&self, rows: Vec<E>, seq: u64) -> (usize, usize) {
        // `clear` logs a write of every key, so one check covers it.
        let (mut filled, mut refused) = (0, 0);
        for row in rows {
            match self.fill_if_unchanged(&Arc::new(row), seq, false) {
                Some(true) => filled += 1,
                Some(false) => {}
                None => refused += 1,
            }
        }
        (filled, refused)
    }

    /// Takes a transaction's soft lock on `id` (C4): bumps the epoch so loads in flight
    /// cannot fill, and drops the cached value so readers go to the database.
    pub(crate) fn lock(&self, id: &E::Id) -> (KeyLock, Option<Arc<E>>) {
        let mut keys = self.shard(id);
        // The row as cached before the write: its unique-key values are invalidated too.
        let previous = if self.indexes.is_empty() {
            None
        } else {
            match self.current(&keys, id) {
                Some(Slot::Present(e)) => Some(e),
                _ => None,
            }
        };
        // `previous` is read under the shard lock, before the marker replaces it.
        self.forget(&mut keys, id);
        let st = keys.states.entry(id.clone()).or_default();
        st.locks += 1;
        st.epoch += 1;
        let epoch = st.epoch;
        // Read under the shard lock, which every clear also takes.
        let generation = self.generation.load(Ordering::Acquire);
        self.note_write(Some(id));
        self.put_main(&keys, id, Slot::Locked);
        drop(keys);
        if let Some(old) = &previous {
            for index in &self.indexes {
                index.touch(old);
            }
        }
        hooks::reach(&self.hook, || Point::AfterLock {
            region: self.config.name.clone(),
            id: format!("{id:?}"),
        });
        (KeyLock { epoch, generation }, previous)
    }

    /// Applies a committed transaction's final write on `id` and releases its lock (C1, C2).
    ///
    /// The value is put only when this transaction was the key's sole writer for the whole
    /// time it held the lock and no region-wide clear (`evict_all`, a remote flush, a gap,
    /// a reconnect) happened meanwhile; otherwise another commit may be newer, so the key
    /// is invalidated and the next read loads the truth (C7).
    pub(crate) fn commit(&self, id: &E::Id, lock: &KeyLock, write: FinalWrite<E>) {
        let mut keys = self.shard(id);
        self.note_write(Some(id));
        self.forget(&mut keys, id);
        let written = match &write {
            FinalWrite::Put(e) => e.version(),
            FinalWrite::Delete { version } => *version,
            FinalWrite::Invalidate => i64::MIN,
        };
        // A clear takes every shard lock, so this check cannot straddle one.
        let uncleared = self.generation.load(Ordering::Acquire) == lock.generation;
        let is_delete = matches!(write, FinalWrite::Delete { .. });
        let sole = match keys.states.get_mut(id) {
            Some(st) => {
                let sole = st.locks == 1
                    && st.epoch == lock.epoch
                    && written >= st.remote_floor
                    && uncleared
                    && !(is_delete && st.remote_insert);
                st.locks = st.locks.saturating_sub(1);
                st.epoch += 1;
                if st.idle() {
                    keys.states.remove(id);
                }
                sole
            }
            None => false,
        };
        match (sole, write) {
            (true, FinalWrite::Put(e)) => self.put_main(&keys, id, Slot::Present(e)),
            (true, FinalWrite::Delete { version }) if self.config.negative_ttl.is_some() => {
                self.put_main(&keys, id, Slot::Tombstone(version))
            }
            _ => self.cache.invalidate(id),
        }
        Counters::bump(&self.counters.commits_applied);
    }

    /// Releases a lock without applying anything (rollback, error, panic, failed commit):
    /// the key is invalidated, never filled (C1).
    pub(crate) fn release(&self, id: &E::Id) {
        let mut keys = self.shard(id);
        self.note_write(Some(id));
        self.forget(&mut keys, id);
        if let Some(st) = keys.states.get_mut(id) {
            st.locks = st.locks.saturating_sub(1);
            st.epoch += 1;
            if st.idle() {
                keys.states.remove(id);
            }
        }
        self.cache.invalidate(id);
        Counters::bump(&self.counters.writes_discarded);
    }

    /// Drops the cached entry for `id` and fences loads in flight.
    pub(crate) fn invalidate(&self, id: &E::Id) {
        let mut keys = self.shard(id);
        self.note_write(Some(id));
        self.forget(&mut keys, id);
        if let Some(st) = keys.states.get_mut(id) {
            st.epoch += 1;
        }
        self.cache.invalidate(id);
    }

    /// Another process, or any SQL client, committed `op` on row `id` at `version` (C7):
    /// drops the cached entry unless the slot provably holds that change or a later one:
    /// a row at that version or newer for an insert or update, a tombstone at that version
    /// or newer for a delete (this process's own applied writes, or notifications that
    /// arrive after a newer commit was applied). The database keeps the version a row
    /// clock (it bumps updates that do not raise it), and a re-insert, whose version
    /// starts again, always follows a delete notification, which drops the row. A remote
    /// insert or update therefore always clears a tombstone or a negative entry. Fences
    /// loads in flight. While a local transaction holds the key, the version is
    /// remembered so that transaction's commit cannot put anything older, nor a tombstone
    /// after a remote insert (versions start again with a re-inserted row).
    pub(crate) fn remote_invalidate(
        &self,
        id: &E::Id,
        op: ChangeOp,
        version: i64,
        ext: &str,
    ) -> bool {
        let mut keys = self.shard(id);
        // A quiet lookup: checking a notification is not a read (it must not extend tti).
        let own = match (op, self.current(&keys, id)) {
            (ChangeOp::Insert | ChangeOp::Update, Some(Slot::Present(e))) => e.version() >= version,
            (ChangeOp::Delete, Some(Slot::Tombstone(v))) => v >= version,
            _ => false,
        };
        if let Some(st) = keys.states.get_mut(id) {
            st.remote_floor = st.remote_floor.max(version);
            st.remote_insert |= op == ChangeOp::Insert;
            if st.locks > 0 {
                // The slot is empty while locked; the commit compares with the floor. The
                // row's key values may have changed, and the local transaction's end only
                // drops the values it saw: drop every key entry now (C7).
                drop(keys);
                self.remote_key_change(op, ext);
                return false;
            }
        }
        if own {
            // The slot is at this version or later, but a load in flight may have read an
            // older one: a refresh puts without comparing versions, so fence it (C3).
            if let Some(st) = keys.states.get_mut(id) {
                st.epoch += 1;
            }
            drop(keys);
            // The slot holds this change or a later one, but a list filled before it may
            // not: another process's change the slot caught up with by a later load
            // (C10). Lists take the notification anyway; unique keys do not need to.
            for index in &self.indexes {
                index.remote_change_already_cached(op, ext);
            }
            return false;
        }
        if let Some(st) = keys.states.get_mut(id) {
            st.epoch += 1;
        }
        self.note_write(Some(id));
        self.forget(&mut keys, id);
        self.cache.invalidate(id);
        drop(keys);
        // The row's new key values are unknown: no negative key entry may outlive it, nor
        // a list that held the row or should now (dropped by the key values the
        // notification carries, when it carries them).
        self.remote_key_change(op, ext);
        Counters::bump(&self.counters.remote_invalidations);
        true
    }

    /// A remote change of one row: every unique-key entry is dropped (the row's new key
    /// values are unknown to them); lists drop those of the old and new index-key values
    /// the notification carries, or all of them without (a counted fallback); key and
    /// list loads in flight are fenced.
    fn remote_key_change(&self, op: ChangeOp, ext: &str) {
        for index in &self.indexes {
            index.remote_change(op, ext);
        }
    }

    /// Drops every unique-key entry and fences key loads in flight.
    fn clear_key_entries(&self) {
        for index in &self.indexes {
            index.clear();
        }
    }

    /// Stops (false) or resumes (true) serving and filling this region. Resuming clears
    /// it first, so nothing cached before or during the outage is served (C7).
    pub(crate) fn set_trusted(&self, trusted: bool) {
        if trusted {
            #[cfg(feature = "redis")]
            if let Some(shared) = &self.shared {
                if self.connected_once.swap(true, Ordering::AcqRel) {
                    shared.flush("the change listener reconnected: changes may have been missed");
                }
            }
            self.clear();
            self.trusted.store(true, Ordering::Release);
        } else {
            let _all = self.lock_all_shards();
            self.trusted.store(false, Ordering::Release);
            // Fences loads that started while trusted.
            self.generation.fetch_add(1, Ordering::AcqRel);
            // Unique-key entries too: drops them and fences key loads in flight, so none is
            // filled during the outage (C7).
            self.clear_key_entries();
        }
    }

    /// Drops every entry and fences every load in flight.
    pub(crate) fn clear(&self) {
        // Every shard lock, so no fill that passed its fence check before the generation
        // bump can insert after `invalidate_all`.
        let mut all = self.lock_all_shards();
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.note_write(None);
        if let Some(budget) = &self.window {
            for shard in &mut all {
                shard.window.clear(budget);
            }
        }
        self.cache.invalidate_all();
        self.clear_key_entries();
    }

    pub(crate) fn snapshot(&self, table: &'static str) -> RegionStats {
        self.cache.run_pending_tasks();
        #[allow(unused_mut)]
        let mut stats = RegionStats::from_counters(
            &self.config.name,
            table,
            &self.counters,
            self.cache.entry_count(),
            self.window.as_ref().map_or(0, Budget::len),
        );
        #[cfg(feature = "redis")]
        {
            stats.shared = self.shared.as_ref().map(|s| s.snapshot());
        }
        stats
    }
}

/// Ends a single-flight load if the loader unwinds.
struct LoadGuard<'a, E: CachedEntity> {
    region: &'a Region<E>,
    id: &'a E::Id,
    flight: &'a Arc<Flight<E>>,
    ticket: Option<LoadTicket>,
}

impl<E: CachedEntity> Drop for LoadGuard<'_, E> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.region
                .finish_load(self.id, &ticket, None, Some(self.flight));
            self.flight.finish(FlightResult::Failed);
        }
    }
}

/// A batch load in progress (`find_many`): the keys that missed both stores.
/// [`finish`](BatchLoad::finish) fills them (fenced). A refreshing batch registers each key
/// with its own ticket; dropped without `finish` (the load failed or panicked), it ends
/// those loads without filling, so no key state outlives it.
pub(crate) struct BatchLoad<'a, E: CachedEntity> {
    region: &'a Region<E>,
    mode: FillMode,
    fence: BatchFence,
    /// The keys to load, in order.
    keys: Vec<E::Id>,
    /// A refresh only: each key's ticket, at the same positions.
    tickets: Vec<LoadTicket>,
}

impl<'a, E: CachedEntity> BatchLoad<'a, E> {
    /// Starts a batch; before its main-cache lookups, which the fence must precede.
    pub(crate) fn new(region: &'a Region<E>, mode: FillMode) -> Self {
        BatchLoad {
            region,
            mode,
            fence: region.batch_fence(),
            keys: Vec::new(),
            tickets: Vec::new(),
        }
    }

    /// `id` missed the main cache: returns its row when the batch window holds it,
    /// otherwise registers it to load.
    pub(crate) fn begin(&mut self, id: &E::Id) -> Option<Arc<E>> {
        if self.mode == FillMode::Refresh {
            self.tickets.push(self.region.begin_load(id, self.mode));
        } else if let Some(row) = self.region.begin_batch_key(id, self.mode) {
            return Some(row);
        }
        self.keys.push(id.clone());
        None
    }

    /// The registered keys, to load.
    pub(crate) fn keys(&self) -> &[E::Id] {
        &self.keys
    }

    /// The load returned `found`: fills every registered key (absent ones negatively),
    /// where the fence allows, and returns each key's row, in the order registered.
    pub(crate) fn finish(mut self, found: &HashMap<E::Id, Arc<E>>) -> Vec<Option<Arc<E>>> {
        let (keys, tickets) = self.take();
        let rows = keys.iter().map(|id| found.get(id).cloned());
        match self.mode {
            FillMode::Fill => rows
                .zip(&keys)
                .map(|(row, id)| {
                    self.region.fill_batch(id, &row, &self.fence);
                    row
                })
                .collect(),
            FillMode::Refresh => rows
                .zip(keys.iter().zip(&tickets))
                .map(|(row, (id, ticket))| {
                    self.region.finish_load(id, ticket, Some(&row), None);
                    row
                })
                .collect(),
            FillMode::NoFill => rows.collect(),
        }
    }

    fn take(&mut self) -> (Vec<E::Id>, Vec<LoadTicket>) {
        (
            std::mem::take(&mut self.keys),
            std::mem::take(&mut self.tickets),
        )
    }
}

impl<E: CachedEntity> Drop for BatchLoad<'_, E> {
    fn drop(&mut self) {
        let (keys, tickets) = self.take();
        for (id, ticket) in keys.iter().zip(&tickets) {
            self.region.finish_load(id, ticket, None, None);
        }
    }
}

/// Type-erased view of a region, for the `Db`'s registry.
pub(crate) trait AnyRegion: Send + Sync + 'static {
    fn as_any(&self) -> &dyn Any;
    fn name(&self) -> &str;
    fn stats(&self) -> RegionStats;
    fn clear(&self);
    fn evict_requested(&self);
    /// The SQL name of the table, which change notifications carry.
    fn sql_table(&self) -> &str;
    /// A remote change of the row whose id is `id` as text; an id that cannot be parsed
    /// clears the region (safe, counted).
    /// `ext` is the payload's extensions (old and new key values).
    fn remote_change(&self, id: &str, op: ChangeOp, version: i64, ext: &str);
    /// A remote change of many rows: clears the region.
    fn remote_flush(&self);
    fn set_trusted(&self, trusted: bool);
}

impl<E: CachedEntity> AnyRegion for Region<E> {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn name(&self) -> &str {
        &self.config.name
    }
    fn stats(&self) -> RegionStats {
        self.snapshot(E::TABLE)
    }
    fn clear(&self) {
        Region::clear(self);
    }
    fn evict_requested(&self) {
        Counters::bump(&self.counters.evict_requests);
    }
    fn sql_table(&self) -> &str {
        &self.sql_table
    }
    fn remote_change(&self, id: &str, op: ChangeOp, version: i64, ext: &str) {
        match E::parse_id(id) {
            Some(id) => {
                // The shared tier first: once the local entry is gone, a read must not
                // find the old row in Redis (C9).
                #[cfg(feature = "redis")]
                if let Some(shared) = &self.shared {
                    shared.repair(&id, op, version);
                }
                self.remote_invalidate(&id, op, version, ext);
            }
            None => {
                tracing::warn!(region = %self.config.name, id, "cannot parse a notified id; clearing the region");
                self.remote_flush();
            }
        }
    }
    fn remote_flush(&self) {
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.shared {
            shared.flush("the change feed flushed the table");
        }
        Counters::bump(&self.counters.remote_flushes);
        Region::clear(self);
    }
    fn set_trusted(&self, trusted: bool) {
        Region::set_trusted(self, trusted);
    }
}

#[cfg(test)]
mod tests;
