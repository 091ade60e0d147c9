//! Per-region counters and the serializable snapshot `Db::stats` returns.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

/// A counter bumped on the hit path by every reading thread: striped over cache-line
/// padded slots chosen per thread, so threads do not contend on one line.
#[derive(Debug)]
pub(crate) struct Striped {
    slots: [Padded; STRIPES],
}

const STRIPES: usize = 16;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

impl Default for Striped {
    fn default() -> Self {
        Striped {
            slots: std::array::from_fn(|_| Padded::default()),
        }
    }
}

thread_local! {
    /// This thread's stripe, assigned round-robin on first use.
    static STRIPE: usize = {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        (NEXT.fetch_add(1, Relaxed) as usize) % STRIPES
    };
}

impl Striped {
    #[inline]
    pub(crate) fn bump(&self) {
        let i = STRIPE.with(|s| *s);
        self.slots[i].0.fetch_add(1, Relaxed);
    }

    pub(crate) fn load(&self) -> u64 {
        self.slots.iter().map(|s| s.0.load(Relaxed)).sum()
    }
}

/// Live counters of one region. Relaxed atomics: they count, they do not order anything.
#[derive(Default, Debug)]
pub(crate) struct Counters {
    pub(crate) hits: Striped,
    pub(crate) negative_hits: Striped,
    pub(crate) misses: AtomicU64,
    pub(crate) loads: AtomicU64,
    pub(crate) load_nanos: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) rejected_stale_fills: AtomicU64,
    pub(crate) lock_bypasses: AtomicU64,
    pub(crate) commits_applied: AtomicU64,
    pub(crate) writes_discarded: AtomicU64,
    pub(crate) evicted_size: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) invalidated: AtomicU64,
    pub(crate) evict_requests: AtomicU64,
    pub(crate) warmed: AtomicU64,
    pub(crate) key_hits: AtomicU64,
    pub(crate) key_misses: AtomicU64,
    pub(crate) list_hits: Striped,
    pub(crate) list_misses: AtomicU64,
    pub(crate) list_flight_joins: AtomicU64,
    pub(crate) list_invalidations: AtomicU64,
    pub(crate) list_fallback_clears: AtomicU64,
    pub(crate) untrusted_reads: AtomicU64,
    pub(crate) remote_invalidations: AtomicU64,
    pub(crate) remote_flushes: AtomicU64,
    pub(crate) window_admissions: AtomicU64,
}

impl Counters {
    #[inline]
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    #[inline]
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn add_load(&self, took: Duration) {
        self.loads.fetch_add(1, Relaxed);
        self.load_nanos
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }
}

/// A snapshot of one region's counters.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RegionStats {
    /// Region name.
    pub region: String,
    /// SQL table.
    pub table: &'static str,
    /// Reads answered from the cache with a row.
    pub hits: u64,
    /// Reads answered from the cache with "no such row" (negative cache or tombstone).
    pub negative_hits: u64,
    /// Reads the cache could not answer (each went to the database or joined a load).
    pub misses: u64,
    /// Loads run by read-through (one per single-flight or batch query). In a region in
    /// the shared tier a load asks Redis first and goes to the database only for what
    /// Redis could not answer (the keys it answered are counted in `shared.hits`).
    pub loads: u64,
    /// Total time spent in those loads, in microseconds.
    pub load_time_us: u64,
    /// Versioned writes rejected because the row had another version (C6).
    pub conflicts: u64,
    /// Fills refused because a write or invalidation raced with the load (C3).
    pub rejected_stale_fills: u64,
    /// Reads that went to the database because a transaction held the key (C4).
    pub lock_bypasses: u64,
    /// Keys whose committed writes were applied to the cache (C1).
    pub commits_applied: u64,
    /// Keys released without applying: rollbacks, errors, panics, failed commits (C1).
    pub writes_discarded: u64,
    /// Entries evicted to stay within `max_entries` or `max_bytes` (moka cause `Size`),
    /// and rows pushed out of the batch window unread. The main cache's evictions, and the
    /// next two counts, stay 0 when `RegionConfig::track_evictions` is off.
    pub evicted_size: u64,
    /// Entries removed because their ttl or tti passed (moka cause `Expired`). An expired
    /// entry is never served; it is removed and counted by moka's timer wheel, about a
    /// second later.
    pub expired: u64,
    /// Entries removed explicitly: by writes, invalidations and evict calls (cause `Explicit`).
    pub invalidated: u64,
    /// Calls to `evict`, `evict_many`, `evict_all` and `evict_everything` on this region.
    pub evict_requests: u64,
    /// Rows filled by warm-up.
    pub warmed: u64,
    /// `find_by` lookups answered from the unique-key cache (rows and negative entries).
    pub key_hits: u64,
    /// `find_by` lookups that queried the database.
    pub key_misses: u64,
    /// `find_all_by` reads answered from a cached list (C10).
    pub list_hits: u64,
    /// `find_all_by` reads that queried the database.
    pub list_misses: u64,
    /// `find_all_by` misses that waited for another reader's load of the same list instead
    /// of running the query again (single flight; counted in neither of the above).
    pub list_flight_joins: u64,
    /// Cached lists dropped because a write of this process touched one of their members
    /// or a row joining them.
    pub list_invalidations: u64,
    /// Times every list of an index was dropped because the key values a write changed
    /// were unknown: a change-feed notification without the index columns' values
    /// (triggers generated before the index key was declared), a write through
    /// `Tx::conn` or by predicate, or an update or delete of a row whose previous content
    /// was neither cached nor read by the transaction.
    pub list_fallback_clears: u64,
    /// Reads that went to the database because the cross-process listener was down (C7).
    pub untrusted_reads: u64,
    /// Entries dropped because another process committed a newer version (C7).
    pub remote_invalidations: u64,
    /// Region clears caused by a statement changing many rows, an unparsable id, or a
    /// change feed gap (C7).
    pub remote_flushes: u64,
    /// Rows read by a batch (`find_many`, list members) that a later read moved from the
    /// batch window to the main cache (see [`RegionConfig::batch_window`]).
    ///
    /// [`RegionConfig::batch_window`]: crate::RegionConfig::batch_window
    pub window_admissions: u64,
    /// Entries held now (rows, negative entries and tombstones), the batch window's rows
    /// included.
    pub entries: u64,
    /// Rows held now in the batch window (counted in `entries` too).
    pub window_entries: u64,
    /// The shared tier's figures for this region, when it is shared (feature `redis`).
    #[cfg(feature = "redis")]
    pub shared: Option<crate::shared::SharedRegionStats>,
}

impl RegionStats {
    pub(crate) fn from_counters(
        region: &str,
        table: &'static str,
        c: &Counters,
        entries: u64,
        window_entries: u64,
    ) -> Self {
        RegionStats {
            region: region.to_string(),
            table,
            hits: c.hits.load(),
            negative_hits: c.negative_hits.load(),
            misses: c.misses.load(Relaxed),
            loads: c.loads.load(Relaxed),
            load_time_us: c.load_nanos.load(Relaxed) / 1_000,
            conflicts: c.conflicts.load(Relaxed),
            rejected_stale_fills: c.rejected_stale_fills.load(Relaxed),
            lock_bypasses: c.lock_bypasses.load(Relaxed),
            commits_applied: c.commits_applied.load(Relaxed),
            writes_discarded: c.writes_discarded.load(Relaxed),
            evicted_size: c.evicted_size.load(Relaxed),
            expired: c.expired.load(Relaxed),
            invalidated: c.invalidated.load(Relaxed),
            evict_requests: c.evict_requests.load(Relaxed),
            warmed: c.warmed.load(Relaxed),
            key_hits: c.key_hits.load(Relaxed),
            key_misses: c.key_misses.load(Relaxed),
            list_hits: c.list_hits.load(),
            list_misses: c.list_misses.load(Relaxed),
            list_flight_joins: c.list_flight_joins.load(Relaxed),
            list_invalidations: c.list_invalidations.load(Relaxed),
            list_fallback_clears: c.list_fallback_clears.load(Relaxed),
            untrusted_reads: c.untrusted_reads.load(Relaxed),
            remote_invalidations: c.remote_invalidations.load(Relaxed),
            remote_flushes: c.remote_flushes.load(Relaxed),
            window_admissions: c.window_admissions.load(Relaxed),
            entries: entries + window_entries,
            window_entries,
            #[cfg(feature = "redis")]
            shared: None,
        }
    }

    /// Share of reads answered by the cache (hits and negative hits), 0.0 when none ran.
    pub fn hit_ratio(&self) -> f64 {
        let answered = self.hits + self.negative_hits;
        let total = answered + self.misses;
        if total == 0 {
            0.0
        } else {
            answered as f64 / total as f64
        }
    }

    /// Mean time of a database load, `None` before the first load.
    pub fn mean_load_time(&self) -> Option<Duration> {
        (self.loads > 0).then(|| Duration::from_micros(self.load_time_us / self.loads))
    }
}

/// A snapshot of every region's counters: `serde::Serialize`, and `Display` as a table.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// One row per region, in registration order.
    pub regions: Vec<RegionStats>,
    /// The cross-process change listener, when the `Db` has one.
    pub listener: Option<crate::invalidation::ListenerStats>,
    /// The query cache ([`Db::query`](crate::Db::query)).
    pub queries: crate::query::QueryStats,
    /// The shared tier, when the `Db` has one (feature `redis`).
    #[cfg(feature = "redis")]
    pub shared: Option<crate::shared::SharedTierStats>,
}

impl Stats {
    /// The row of the region called `name`.
    ///
    /// To look a region up by its entity type instead of its name, use
    /// [`Db::region_stats`](crate::Db::region_stats).
    pub fn region(&self, name: &str) -> Option<&RegionStats> {
        self.regions.iter().find(|r| r.region == name)
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = [
            "region",
            "entries",
            "hits",
            "neg hits",
            "misses",
            "hit %",
            "loads",
            "avg load",
            "conflicts",
            "stale fills",
            "bypasses",
            "applied",
            "discarded",
        ];
        let rows: Vec<[String; 15]> = self
            .regions
            .iter()
            .map(|r| {
                [
                    r.region.clone(),
                    r.entries.to_string(),
                    r.hits.to_string(),
                    r.negative_hits.to_string(),
                    r.misses.to_string(),
                    format!("{:.1}", r.hit_ratio() * 100.0),
                    r.loads.to_string(),
                    r.mean_load_time()
                        .map_or_else(|| "-".to_string(), |d| format!("{}µs", d.as_micros())),
                    r.conflicts.to_string(),
                    r.rejected_stale_fills.to_string(),
                    r.lock_bypasses.to_string(),
                    r.commits_applied.to_string(),
                    r.writes_discarded.to_string(),
                    r.evicted_size.to_string(),
                    r.expired.to_string(),
                ]
            })
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: &mut dyn Iterator<Item = &str>| {
            let mut first = true;
            for (cell, w) in cells.zip(&widths) {
                if !first {
                    f.write_str("  ")?;
                }
                if first {
                    write!(f, "{cell:<w$}")?;
                } else {
                    write!(f, "{cell:>w$}")?;
                }
                first = false;
            }
            writeln!(f)
        };
        line(f, &mut header.iter().copied())?;
        for row in &rows {
            line(f, &mut row.iter().map(String::as_str))?;
        }
        Ok(())
    }
}
