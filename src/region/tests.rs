//! Deterministic tests of the region's fill, fence and lock paths (C3, C4), without a
//! database: loads are closures, interleavings are driven step by step.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::Duration;

use super::*;

#[derive(Clone, Debug, PartialEq)]
struct Row {
    id: i64,
    version: i64,
    body: String,
}

impl CachedEntity for Row {
    type Id = i64;
    const TABLE: &'static str = "rows";
    fn cache_config() -> RegionConfig {
        RegionConfig::new("rows")
    }
    fn id(&self) -> i64 {
        self.id
    }
    fn version(&self) -> i64 {
        self.version
    }
    fn with_version(&self, version: i64) -> Option<Self> {
        Some(Row {
            version,
            ..self.clone()
        })
    }
    fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.body.capacity()
    }
}

fn row(id: i64, version: i64) -> Row {
    Row {
        id,
        version,
        body: format!("v{version}"),
    }
}

fn region() -> Region<Row> {
    Region::new(RegionConfig::new("rows"))
}

impl<E: CachedEntity> Region<E> {
    fn tracked_keys(&self) -> usize {
        self.keys
            .iter()
            .map(|s| s.lock().unwrap().states.len())
            .sum()
    }
    /// The version either store holds (the batch window or the main cache), read without
    /// moving a window row.
    fn cached_version(&self, id: &E::Id) -> Option<i64> {
        let slot = self.current(&self.shard(id), id);
        match slot {
            Some(Slot::Present(e)) => Some(e.version()),
            Some(Slot::Tombstone(v)) => Some(-v),
            Some(Slot::Absent) => Some(0),
            // A lock marker is never served: no version is cached.
            Some(Slot::Locked) | None => None,
        }
    }
}

fn ok(r: Row) -> Result<Option<Row>, ()> {
    Ok(Some(r))
}

#[test]
fn miss_fills_and_next_read_hits() {
    let r = region();
    assert!(matches!(r.lookup(&1), Lookup::Miss));
    let got = r
        .load_through(&1, FillMode::Fill, || ok(row(1, 1)))
        .unwrap()
        .unwrap();
    assert_eq!(got.version, 1);
    assert!(matches!(r.lookup(&1), Lookup::Hit(e) if e.version == 1));
    assert_eq!(r.counters.loads.load(Ordering::Relaxed), 1);
    assert_eq!(r.tracked_keys(), 0, "no key state outlives its load");
}

#[test]
fn absent_row_is_negatively_cached_and_can_be_turned_off() {
    let r = region();
    assert!(r
        .load_through(&7, FillMode::Fill, || Ok::<_, ()>(None))
        .unwrap()
        .is_none());
    assert!(matches!(r.lookup(&7), Lookup::NegativeHit));

    let off = Region::<Row>::new(RegionConfig::new("rows").negative_ttl(None));
    off.load_through(&7, FillMode::Fill, || Ok::<_, ()>(None))
        .unwrap();
    assert!(matches!(off.lookup(&7), Lookup::Miss));
}

/// C3: a load that read v1 before v2 committed must not land over v2.
#[test]
fn fill_that_raced_with_a_commit_is_rejected() {
    let r = region();
    let ticket = r.begin_load(&1, FillMode::Fill);
    // A transaction locks, commits v2 and applies it while the load is in flight.
    let (lock, _) = r.lock(&1);
    r.commit(&1, &lock, FinalWrite::Put(Arc::new(row(1, 2))));
    r.finish_load(&1, &ticket, Some(&Some(Arc::new(row(1, 1)))), None);
    assert_eq!(r.cached_version(&1), Some(2));
    assert_eq!(r.counters.rejected_stale_fills.load(Ordering::Relaxed), 1);
    assert_eq!(r.tracked_keys(), 0);
}

/// C3: the fence holds even when the newer entry was evicted before the late fill.
#[test]
fn late_fill_is_rejected_after_the_newer_entry_was_evicted() {
    let r = region();
    let ticket = r.begin_load(&1, FillMode::Fill);
    let (lock, _) = r.lock(&1);
    r.commit(&1, &lock, FinalWrite::Put(Arc::new(row(1, 2))));
    // Size pressure evicts v2 (moka-level removal, no epoch change).
    r.cache.invalidate(&1);
    assert_eq!(r.cached_version(&1), None);
    r.finish_load(&1, &ticket, Some(&Some(Arc::new(row(1, 1)))), None);
    assert_eq!(r.cached_version(&1), None, "v1 must not come back");
    assert_eq!(r.counters.rejected_stale_fills.load(Ordering::Relaxed), 1);
}

/// C3: a fill never replaces a newer version, even without a fence change.
#[test]
fn fill_never_replaces_a_newer_version() {
    let r = region();
    r.cache.insert(1, Slot::Present(Arc::new(row(1, 5))));
    r.fill_main(&1, &Some(Arc::new(row(1, 4))));
    assert_eq!(r.cached_version(&1), Some(5));
    r.fill_main(&1, &Some(Arc::new(row(1, 6))));
    assert_eq!(r.cached_version(&1), Some(6));
}

/// C3: a delete leaves a versioned tombstone that reads as "absent" and blocks fills.
#[test]
fn delete_leaves_a_tombstone_that_blocks_older_fills() {
    let r = region();
    let (lock, _) = r.lock(&1);
    r.commit(&1, &lock, FinalWrite::Delete { version: 4 });
    assert!(matches!(r.lookup(&1), Lookup::NegativeHit));
    r.fill_main(&1, &Some(Arc::new(row(1, 3))));
    assert_eq!(r.cached_version(&1), Some(-4));
}

/// C4: while a transaction holds the key, readers go to the database and do not fill.
#[test]
fn soft_locked_key_is_read_past_the_cache_and_not_filled() {
    let r = region();
    r.cache.insert(1, Slot::Present(Arc::new(row(1, 1))));
    let (lock, _) = r.lock(&1);
    assert!(
        matches!(r.lookup(&1), Lookup::Miss),
        "locking drops the cached value"
    );
    let got = r
        .load_through(&1, FillMode::Fill, || ok(row(1, 1)))
        .unwrap()
        .unwrap();
    assert_eq!(got.version, 1);
    assert_eq!(r.cached_version(&1), None, "no fill while locked");
    assert_eq!(r.counters.lock_bypasses.load(Ordering::Relaxed), 1);
    r.commit(&1, &lock, FinalWrite::Put(Arc::new(row(1, 2))));
    assert_eq!(r.cached_version(&1), Some(2));
    assert_eq!(r.tracked_keys(), 0);
}

/// C1: a rollback releases the lock and invalidates; nothing is put.
#[test]
fn release_unlocks_and_invalidates() {
    let r = region();
    r.cache.insert(1, Slot::Present(Arc::new(row(1, 1))));
    let _lock = r.lock(&1);
    r.release(&1);
    assert_eq!(r.cached_version(&1), None);
    assert_eq!(r.tracked_keys(), 0);
    r.load_through(&1, FillMode::Fill, || ok(row(1, 1)))
        .unwrap();
    assert_eq!(
        r.cached_version(&1),
        Some(1),
        "fills work again after release"
    );
}

/// Two transactions writing one key at once: neither may put, since the order of their
/// applies need not be the order of their commits.
#[test]
fn concurrent_writers_invalidate_instead_of_putting() {
    let r = region();
    let (a, _) = r.lock(&1);
    let (b, _) = r.lock(&1);
    r.commit(&1, &b, FinalWrite::Put(Arc::new(row(1, 3))));
    assert_eq!(r.cached_version(&1), None);
    r.commit(&1, &a, FinalWrite::Put(Arc::new(row(1, 2))));
    assert_eq!(
        r.cached_version(&1),
        None,
        "the older commit must not land last"
    );
    assert_eq!(r.tracked_keys(), 0);
}

/// A writer that locked after another one applied is the newest: it may put, even over
/// a tombstone with a higher version (a re-insert after a delete).
#[test]
fn sequential_writers_put() {
    let r = region();
    let (a, _) = r.lock(&1);
    r.commit(&1, &a, FinalWrite::Delete { version: 9 });
    let (b, _) = r.lock(&1);
    r.commit(&1, &b, FinalWrite::Put(Arc::new(row(1, 1))));
    assert_eq!(r.cached_version(&1), Some(1));
}

#[test]
fn clear_fences_loads_in_flight() {
    let r = region();
    let ticket = r.begin_load(&1, FillMode::Fill);
    r.clear();
    r.finish_load(&1, &ticket, Some(&Some(Arc::new(row(1, 1)))), None);
    assert_eq!(r.cached_version(&1), None);
    assert_eq!(r.counters.rejected_stale_fills.load(Ordering::Relaxed), 1);
}

fn flight_waiters(r: &Region<Row>, id: i64) -> usize {
    let keys = r.shard(&id);
    keys.states
        .get(&id)
        .and_then(|st| st.flight.as_ref())
        .map_or(0, Arc::strong_count)
}

/// N concurrent misses of one key run one load; the others wait for its result.
#[test]
fn concurrent_misses_run_one_load() {
    const N: usize = 16;
    let r = Arc::new(region());
    let loads = Arc::new(AtomicUsize::new(0));
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let start = Arc::new(Barrier::new(N));
    let handles: Vec<_> = (0..N)
        .map(|_| {
            let (r, loads, rx, start) =
                (r.clone(), loads.clone(), release_rx.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                r.load_through(&1, FillMode::Fill, || {
                    loads.fetch_add(1, Ordering::SeqCst);
                    rx.lock().unwrap().recv().unwrap();
                    ok(row(1, 1))
                })
                .unwrap()
                .unwrap()
                .version
            })
        })
        .collect();
    // The flight is referenced by the key state, the leader and each waiter.
    while flight_waiters(&r, 1) < N + 1 {
        thread::sleep(Duration::from_millis(1));
    }
    release_tx.send(()).unwrap();
    for h in handles {
        assert_eq!(h.join().unwrap(), 1);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(r.tracked_keys(), 0);
}

/// C4: a read that starts after a write committed must not join a load that started
/// before it: that load may return the old row.
#[test]
fn a_read_after_a_commit_does_not_join_an_older_flight() {
    let r = Arc::new(region());
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let leader = {
        let r = r.clone();
        thread::spawn(move || {
            r.load_through(&1, FillMode::Fill, || {
                release_rx.recv().unwrap();
                ok(row(1, 1)) // read before the commit below
            })
            .unwrap()
            .unwrap()
            .version
        })
    };
    while flight_waiters(&r, 1) < 2 {
        thread::sleep(Duration::from_millis(1));
    }
    let (lock, _) = r.lock(&1);
    r.commit(&1, &lock, FinalWrite::Invalidate);
    // This read starts after the commit: it loads on its own and sees v2.
    let mine = r
        .load_through(&1, FillMode::Fill, || ok(row(1, 2)))
        .unwrap()
        .unwrap();
    assert_eq!(mine.version, 2);
    release_tx.send(()).unwrap();
    assert_eq!(leader.join().unwrap(), 1);
    assert_eq!(
        r.cached_version(&1),
        Some(2),
        "the leader's v1 fill was fenced"
    );
}

#[test]
fn failed_leader_lets_waiters_load_themselves_and_cleans_up() {
    let r = Arc::new(region());
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let leader = {
        let r = r.clone();
        thread::spawn(move || {
            r.load_through(&1, FillMode::Fill, || {
                release_rx.recv().unwrap();
                Err::<Option<Row>, &str>("connection lost")
            })
        })
    };
    while flight_waiters(&r, 1) < 2 {
        thread::sleep(Duration::from_millis(1));
    }
    let waiter = {
        let r = r.clone();
        thread::spawn(move || r.load_through(&1, FillMode::Fill, || Ok::<_, &str>(Some(row(1, 1)))))
    };
    while flight_waiters(&r, 1) < 3 {
        thread::sleep(Duration::from_millis(1));
    }
    release_tx.send(()).unwrap();
    assert_eq!(leader.join().unwrap(), Err("connection lost"));
    assert_eq!(waiter.join().unwrap().unwrap().unwrap().version, 1);
    assert_eq!(r.tracked_keys(), 0);
}

#[test]
fn panicking_loader_leaves_no_state_behind() {
    let r = region();
    let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let _ = r.load_through(&1, FillMode::Fill, || -> Result<Option<Row>, ()> {
            panic!("loader bug")
        });
    }));
    assert!(caught.is_err());
    assert_eq!(r.tracked_keys(), 0);
    assert!(r
        .load_through(&1, FillMode::Fill, || ok(row(1, 1)))
        .unwrap()
        .is_some());
}

/// Why every fill goes through the fenced, version-checked path: moka's `get_with` on its
/// own puts the value its loader read even when a newer one was inserted meanwhile.
#[test]
fn moka_get_with_alone_can_put_an_older_value_over_a_newer_one() {
    let cache: Cache<i64, i64> = Cache::new(100);
    let (loaded_tx, loaded_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let filler = {
        let cache = cache.clone();
        thread::spawn(move || {
            cache.get_with(1, || {
                let v1 = 1; // read from the database before the write below commits
                loaded_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                v1
            })
        })
    };
    loaded_rx.recv().unwrap();
    cache.insert(1, 2); // the write of v2 lands in the cache
    go_tx.send(()).unwrap();
    filler.join().unwrap();
    assert_eq!(cache.get(&1), Some(1), "moka kept the stale v1 over v2");
}

use std::panic::AssertUnwindSafe;

#[test]
fn expired_entries_are_counted() {
    let r = Region::<Row>::new(RegionConfig::new("rows").ttl(Duration::from_millis(50)));
    r.load_through(&1, FillMode::Fill, || ok(row(1, 1)))
        .unwrap();
    thread::sleep(Duration::from_millis(120));
    assert!(
        matches!(r.lookup(&1), Lookup::Miss),
        "expired entries are never served"
    );
    // moka's timer wheel removes (and reports) expired entries with a granularity of
    // about one second.
    thread::sleep(Duration::from_millis(1_200));
    let s = r.snapshot("rows");
    assert_eq!((s.expired, s.entries), (1, 0), "{s:?}");
}

/// C7 (region-wide clears fence commits in flight): a transaction locked key 1, committed
/// v2 in the database, and a region-wide clear lands before its buffer is applied. The
/// clear may stand for a newer version committed elsewhere (v3, reported only as a flush,
/// a gap or a reconnect), so the apply must invalidate, not put v2.
fn clear_between_commit_and_apply(name: &str, clear: impl Fn(&Region<Row>)) {
    for write in [
        FinalWrite::Put(Arc::new(row(1, 2))),
        FinalWrite::Delete { version: 2 },
    ] {
        let r = region();
        r.fill_main(&1, &Some(Arc::new(row(1, 1))));
        let (lock, _) = r.lock(&1);
        clear(&r);
        r.commit(&1, &lock, write);
        assert_eq!(
            r.cached_version(&1),
            None,
            "{name}: the commit applied after the clear must invalidate"
        );
        assert_eq!(r.tracked_keys(), 0);
    }
}

#[test]
fn evict_all_between_commit_and_apply_fences_the_commit() {
    clear_between_commit_and_apply("clear", Region::clear);
}

#[test]
fn remote_flush_between_commit_and_apply_fences_the_commit() {
    clear_between_commit_and_apply("remote_flush", AnyRegion::remote_flush);
}

#[test]
fn reconnect_between_commit_and_apply_fences_the_commit() {
    clear_between_commit_and_apply("reconnect", |r| {
        r.set_trusted(false);
        r.set_trusted(true);
    });
}

/// The fence is per transaction: a lock taken after the clear puts as usual.
#[test]
fn a_lock_taken_after_a_clear_puts() {
    let r = region();
    r.clear();
    let (lock, _) = r.lock(&1);
    r.commit(&1, &lock, FinalWrite::Put(Arc::new(row(1, 2))));
    assert_eq!(r.cached_version(&1), Some(2));
}

/// A batch load (`find_many`) whose loader panics ends every key's load: no key state
/// (load count, fence) outlives it, and the keys load and fill normally afterwards.
#[test]
fn panicking_batch_loader_leaves_no_state_behind() {
    let r = region();
    let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut batch = BatchLoad::new(&r, FillMode::Refresh);
        for id in [1, 2, 3] {
            batch.begin(&id);
        }
        let _keys = batch.keys();
        panic!("loader bug");
    }));
    assert!(caught.is_err());
    assert_eq!(r.tracked_keys(), 0, "the panicked batch leaked key state");
    let mut batch = BatchLoad::new(&r, FillMode::Fill);
    batch.begin(&1);
    let found = HashMap::from([(1, Arc::new(row(1, 1)))]);
    batch.finish(&found);
    assert_eq!(r.cached_version(&1), Some(1));
    assert_eq!(r.tracked_keys(), 0);
}

/// Only reads that serve a row extend its time-to-idle: `peek`, the version check of a
/// fill and the check of a remote change are not accesses, so an entry nobody reads
/// expires after `tti` however often they look at it.
#[test]
fn peeks_and_internal_lookups_do_not_extend_time_to_idle() {
    let tti = Duration::from_millis(200);
    let r = Region::<Row>::new(RegionConfig::new("rows").tti(tti));
    r.fill_main(&1, &Some(Arc::new(row(1, 2))));
    let started = std::time::Instant::now();
    let mut expired = false;
    while started.elapsed() < tti * 2 {
        if r.peek(&1).is_none() {
            // Gone: the quiet lookups below did not keep it alive. (Going on would let
            // the older fill below fill the now empty slot, a legitimate fill.)
            expired = true;
            break;
        }
        r.fill_main(&1, &Some(Arc::new(row(1, 1))));
        r.remote_invalidate(&1, ChangeOp::Update, 1, "");
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        expired && matches!(r.lookup(&1), Lookup::Miss),
        "the entry was not read for twice its tti, yet is still served"
    );
    // A real read does extend it.
    r.fill_main(&2, &Some(Arc::new(row(2, 1))));
    let started = std::time::Instant::now();
    while started.elapsed() < tti * 2 {
        assert!(matches!(r.lookup(&2), Lookup::Hit(_)));
        thread::sleep(Duration::from_millis(10));
    }
}

/// A row read by a query (list, warm-up, unique key) is refused only when a write touched
/// that row since the query began (C3 per row): writes to other rows leave it alone, a
/// clear refuses it, and so does a gap longer than the write log can tell about.
#[test]
fn query_fills_are_fenced_per_row_by_the_write_log() {
    let r = region();
    let seq = r.write_seq();
    for id in 2..=10 {
        r.invalidate(&id);
    }
    assert_eq!(
        r.fill_if_unchanged(&Arc::new(row(1, 1)), seq, false),
        Some(true),
        "other rows' writes"
    );
    let seq = r.write_seq();
    r.invalidate(&1);
    assert_eq!(
        r.fill_if_unchanged(&Arc::new(row(1, 2)), seq, false),
        None,
        "its own write"
    );
    let seq = r.write_seq();
    r.clear();
    assert_eq!(
        r.fill_if_unchanged(&Arc::new(row(1, 2)), seq, false),
        None,
        "a clear"
    );
    let seq = r.write_seq();
    for id in 0..=WRITE_LOG as i64 {
        r.invalidate(&(1_000 + id));
    }
    assert_eq!(
        r.fill_if_unchanged(&Arc::new(row(1, 2)), seq, false),
        None,
        "more writes than the log holds"
    );
    let seq = r.write_seq();
    for id in 0..WRITE_LOG as i64 - 1 {
        r.invalidate(&(1_000 + id));
    }
    assert_eq!(
        r.fill_if_unchanged(&Arc::new(row(1, 2)), seq, false),
        Some(true),
        "as many as it holds"
    );
    assert_eq!(r.cached_version(&1), Some(2));
}

/// Runs a batch load of `rows` (ids and versions) that finds them all, with nothing in
/// between: what `find_many` does.
fn batch_fill(r: &Region<Row>, rows: &[(i64, i64)]) {
    let mut batch = BatchLoad::new(r, FillMode::Fill);
    for (id, _) in rows {
        assert!(batch.begin(id).is_none(), "{id} was cached");
    }
    let found = rows
        .iter()
        .map(|&(id, v)| (id, Arc::new(row(id, v))))
        .collect();
    batch.finish(&found);
}

fn in_window(r: &Region<Row>, id: i64) -> bool {
    r.shard(&id).window.get(&id).is_some()
}

/// Rows of a batch land in the batch window, not the main cache; the first read by id
/// serves the row and moves it to the main cache (once), so later hits are lock-free.
#[test]
fn batch_rows_wait_in_the_window_until_a_read_admits_them() {
    let r = region();
    batch_fill(&r, &[(1, 1), (2, 1)]);
    assert!(in_window(&r, 1) && in_window(&r, 2));
    assert!(
        r.cache.get(&1).is_none(),
        "a batch row went to the main cache"
    );
    assert!(matches!(r.lookup(&1), Lookup::Hit(e) if e.version == 1));
    assert!(!in_window(&r, 1));
    assert!(matches!(r.cache.get(&1), Some(Slot::Present(e)) if e.version == 1));
    assert!(matches!(r.lookup(&1), Lookup::Hit(_)));
    let stats = r.snapshot("rows");
    assert_eq!((stats.window_admissions, stats.window_entries), (1, 1));
    assert_eq!(stats.entries, 2);
    // A later batch finds the admitted row in the main cache and the other in the window.
    let mut batch = BatchLoad::new(&r, FillMode::Fill);
    assert!(matches!(batch.begin(&2), Some(e) if e.version == 1));
    assert!(batch.keys().is_empty());
    assert!(!in_window(&r, 2));
}

/// Every write of a key drops its window row under the shard lock before anything else
/// (C3, C4): a lock, a commit, a rollback, an eviction and a remote change.
#[test]
fn every_write_drops_the_window_row() {
    let r = region();
    batch_fill(&r, &[(1, 1), (2, 1), (3, 1), (4, 1)]);
    // A transaction locks 1: the window row is not served while it holds the key (C4).
    let (lock, previous) = r.lock(&1);
    assert_eq!(
        previous.map(|e| e.version),
        None,
        "no unique keys: nothing read"
    );
    assert!(!in_window(&r, 1));
    assert!(matches!(r.lookup(&1), Lookup::Miss));
    r.commit(&1, &lock, FinalWrite::Put(Arc::new(row(1, 2))));
    assert_eq!(r.cached_version(&1), Some(2));
    let (_lock, _) = r.lock(&2);
    r.release(&2);
    assert_eq!(r.cached_version(&2), None);
    r.invalidate(&3);
    assert_eq!(r.cached_version(&3), None);
    // Another process committed version 2 of row 4 (C7).
    assert!(r.remote_invalidate(&4, ChangeOp::Update, 2, ""));
    assert_eq!(r.cached_version(&4), None);
    assert_eq!(r.snapshot("rows").window_entries, 0);
}

/// A notification of a change the window row already holds keeps it, as for the main
/// cache; one of a newer version drops it.
#[test]
fn a_remote_change_keeps_a_window_row_only_at_its_version() {
    let r = region();
    batch_fill(&r, &[(1, 3)]);
    assert!(!r.remote_invalidate(&1, ChangeOp::Update, 3, ""));
    assert_eq!(r.cached_version(&1), Some(3));
    assert!(r.remote_invalidate(&1, ChangeOp::Update, 4, ""));
    assert_eq!(r.cached_version(&1), None);
}

/// Fills compare versions across both stores: an older row never replaces a newer
/// window row, a newer one does, and a single-key load moves the key to the main cache,
/// so it is never in both.
#[test]
fn fills_compare_versions_with_the_window_row() {
    let r = region();
    batch_fill(&r, &[(1, 5)]);
    assert!(!r.fill_main(&1, &Some(Arc::new(row(1, 4)))));
    assert_eq!(r.cached_version(&1), Some(5));
    assert_eq!(r.snapshot("rows").rejected_stale_fills, 1);
    // A newer batch row replaces it in place.
    let seq = r.write_seq();
    assert_eq!(
        r.fill_if_unchanged(&Arc::new(row(1, 6)), seq, true),
        Some(true)
    );
    assert!(in_window(&r, 1));
    assert_eq!(r.cached_version(&1), Some(6));
    // A newer single-key row moves it.
    assert!(r.fill_main(&1, &Some(Arc::new(row(1, 7)))));
    assert!(!in_window(&r, 1));
    assert!(matches!(r.cache.get(&1), Some(Slot::Present(e)) if e.version == 7));
}

/// A batch load that raced a write never lands in the window (C3), like any other fill.
#[test]
fn a_batch_load_racing_a_write_does_not_land_in_the_window() {
    let r = region();
    let mut batch = BatchLoad::new(&r, FillMode::Fill);
    assert!(batch.begin(&1).is_none());
    assert!(batch.begin(&2).is_none());
    // A write of 1 commits while the batch query runs.
    let (lock, _) = r.lock(&1);
    r.commit(&1, &lock, FinalWrite::Put(Arc::new(row(1, 2))));
    r.cache.invalidate(&1); // evicted: only the fence stands between the stale row and a fill
    let found = [(1, Arc::new(row(1, 1))), (2, Arc::new(row(2, 1)))]
        .into_iter()
        .collect();
    batch.finish(&found);
    assert_eq!(r.cached_version(&1), None, "the stale row landed");
    assert_eq!(r.cached_version(&2), Some(1));
}

/// Clears (`evict_all`, a remote flush, a reconnect) empty the window too.
#[test]
fn a_clear_empties_the_window() {
    let r = region();
    batch_fill(&r, &[(1, 1), (2, 1)]);
    r.clear();
    assert_eq!((r.cached_version(&1), r.cached_version(&2)), (None, None));
    assert_eq!(r.snapshot("rows").window_entries, 0);
}

/// The window takes a tenth of the bound and the two stores together stay within it;
/// a batch as large as the window fits whole, however its keys fall into shards; the
/// oldest rows are pushed out first, and count as evictions. Regions with a ttl, small
/// regions, and regions that turn it off have none.
#[test]
fn the_window_shares_the_region_bound() {
    let r = Region::<Row>::new(RegionConfig::new("rows").max_entries(10_000));
    batch_fill(&r, &(1..=1_000).map(|id| (id, 1)).collect::<Vec<_>>());
    assert!(
        (1..=1_000).all(|id| in_window(&r, id)),
        "a row of the first batch is missing"
    );
    let rows: Vec<(i64, i64)> = (1_001..=50_000).map(|id| (id, 1)).collect();
    for chunk in rows.chunks(500) {
        batch_fill(&r, chunk);
    }
    r.cache.run_pending_tasks();
    let stats = r.snapshot("rows");
    assert_eq!(stats.window_entries, 1_000);
    assert!(stats.entries <= 10_000, "{} entries", stats.entries);
    assert_eq!(stats.evicted_size, 49_000);
    // The oldest rows went first, whatever their shards: the newest 1,000 stayed.
    let newest = (49_001..=50_000).filter(|&id| in_window(&r, id)).count();
    assert_eq!(newest, 1_000, "the newest rows were pushed out");

    for config in [
        RegionConfig::new("rows").ttl(Duration::from_secs(60)),
        RegionConfig::new("rows").max_entries(1_000),
        RegionConfig::new("rows").batch_window(0),
    ] {
        let r = Region::<Row>::new(config.clone());
        batch_fill(&r, &[(1, 1)]);
        assert!(!in_window(&r, 1), "{config:?}");
        assert_eq!(r.cached_version(&1), Some(1));
    }
}

/// A single-key load that puts a newer row in the main cache while a batch that missed
/// the key is loading (another process's commit whose notification has not arrived yet)
/// makes the batch compare versions with it: the batch's older row never lands in the
/// window beside it, where it would be served once the newer row is evicted.
#[test]
fn a_batch_row_older_than_a_fill_that_overtook_it_is_refused() {
    let r = region();
    let mut batch = BatchLoad::new(&r, FillMode::Fill);
    assert!(matches!(r.lookup_main(&1), Lookup::Miss));
    assert!(batch.begin(&1).is_none());
    assert!(r.fill_main(&1, &Some(Arc::new(row(1, 2)))));
    let found = HashMap::from([(1, Arc::new(row(1, 1)))]);
    batch.finish(&found);
    assert!(
        !in_window(&r, 1),
        "the older batch row landed in the window"
    );
    r.cache.invalidate(&1);
    assert_eq!(r.cached_version(&1), None);
}
