//! The batch window: where rows read by a batch wait to be read again (C3 still holds).
//!
//! `find_many` and list loads read many rows at once, and many of them are never looked up
//! by id afterwards. Putting every one into the region's main moka cache costs about 1 µs
//! per row on 2 cores, a third of reading the row from SQLite. So a region puts the rows of
//! a batch in a small FIFO instead, in the spirit of S3-FIFO's small queue and Caffeine's
//! admission window:
//!
//! - the first read of a window row by id moves it into the main cache (it proved useful);
//! - a row nobody reads leaves the window when newer batch rows push it out, without ever
//!   paying moka's insert.
//!
//! The window is split like the fence shards, and each part lives under its shard's mutex
//! (see `region.rs`). Every write of a key already holds that lock, so dropping the key
//! from the window costs one hash lookup there, and a window row is never one a write has
//! touched since its fill (C3, C4). The parts share one [`Budget`], in entries or in
//! estimated bytes, which they never exceed together: a row that does not fit pushes out
//! the oldest row of all shards (each shard publishes the age of its oldest row), so a
//! batch as large as the whole window fits however its keys fall into shards, and the
//! order is first-in-first-out across the region.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};

/// The capacity every shard's window of one region shares, and what they hold now.
#[derive(Debug)]
pub(crate) struct Budget {
    /// Entries, or estimated bytes, the windows may hold together.
    cap: u64,
    /// Weight held now (added before a row is made room for).
    used: AtomicU64,
    /// Rows held now.
    len: AtomicU64,
    /// Stamps rows in order of arrival, across shards.
    clock: AtomicU64,
    /// Per shard, the stamp of its oldest row (`u64::MAX`: none), written under the
    /// shard's lock and read without it, to choose which shard gives a row.
    fronts: Box<[AtomicU64]>,
}

impl Budget {
    /// A budget of `cap` for `shards` windows.
    pub(crate) fn new(cap: u64, shards: usize) -> Self {
        Budget {
            cap,
            used: AtomicU64::new(0),
            len: AtomicU64::new(0),
            clock: AtomicU64::new(0),
            fronts: (0..shards).map(|_| AtomicU64::new(u64::MAX)).collect(),
        }
    }

    /// Rows held by every shard's window.
    pub(crate) fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the windows hold more than the budget (a row was just added).
    pub(crate) fn over(&self) -> bool {
        self.used.load(Ordering::Acquire) > self.cap
    }

    /// The shard holding the oldest row, as last published; `None` when all are empty.
    pub(crate) fn oldest_shard(&self) -> Option<usize> {
        let (i, stamp) = self
            .fronts
            .iter()
            .map(|f| f.load(Ordering::Acquire))
            .enumerate()
            .min_by_key(|&(_, s)| s)?;
        (stamp != u64::MAX).then_some(i)
    }

    fn added(&self, weight: u64) {
        self.used.fetch_add(weight, Ordering::AcqRel);
        self.len.fetch_add(1, Ordering::Relaxed);
    }

    fn removed(&self, weight: u64) {
        self.used.fetch_sub(weight, Ordering::AcqRel);
        self.len.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Entry<V> {
    value: V,
    /// Matches the entry's place in `order`; a stale place (the row was taken, removed or
    /// put again since) is skipped.
    stamp: u64,
    weight: u64,
}

/// One shard's window: rows by key, and their order of arrival.
pub(crate) struct Window<K, V> {
    /// The shard's position (in `Budget::fronts`).
    index: usize,
    rows: HashMap<K, Entry<V>>,
    order: VecDeque<(K, u64)>,
}

impl<K: Hash + Eq + Clone, V> Window<K, V> {
    /// The window of shard `index`.
    pub(crate) fn new(index: usize) -> Self {
        Window {
            index,
            rows: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The row held for `key`.
    #[inline]
    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        if self.rows.is_empty() {
            return None;
        }
        self.rows.get(key).map(|e| &e.value)
    }

    /// Removes and returns the row held for `key`.
    pub(crate) fn take(&mut self, key: &K, budget: &Budget) -> Option<V> {
        if self.rows.is_empty() {
            return None;
        }
        let e = self.rows.remove(key)?;
        budget.removed(e.weight);
        if self.order.front().is_some_and(|(_, s)| *s == e.stamp) {
            self.settle(budget);
        } else {
            self.compact();
        }
        Some(e.value)
    }

    /// Replaces the row held for `key` in place (it keeps its age); `weight` is the new
    /// row's. The caller then makes room if the budget is over.
    pub(crate) fn replace(&mut self, key: &K, value: V, weight: u64, budget: &Budget) {
        if let Some(e) = self.rows.get_mut(key) {
            budget.added(weight);
            budget.removed(e.weight);
            e.value = value;
            e.weight = weight;
        }
    }

    /// Adds a row the window does not hold, as its newest. The caller then makes room if
    /// the budget is over.
    pub(crate) fn insert(&mut self, key: K, value: V, weight: u64, budget: &Budget) {
        debug_assert!(
            !self.rows.contains_key(&key),
            "the caller checked the window"
        );
        let stamp = budget.clock.fetch_add(1, Ordering::Relaxed);
        budget.added(weight);
        if self.order.is_empty() {
            budget.fronts[self.index].store(stamp, Ordering::Release);
        }
        self.order.push_back((key.clone(), stamp));
        self.rows.insert(
            key,
            Entry {
                value,
                stamp,
                weight,
            },
        );
        // The front is unchanged (or is this row): only stale places may need dropping.
        self.compact();
    }

    /// Pushes out this shard's oldest row; returns its key, `None` when the shard is empty.
    pub(crate) fn pop_oldest(&mut self, budget: &Budget) -> Option<K> {
        let mut popped = None;
        while let Some((key, stamp)) = self.order.pop_front() {
            if self.rows.get(&key).is_some_and(|e| e.stamp == stamp) {
                if let Some(e) = self.rows.remove(&key) {
                    budget.removed(e.weight);
                    popped = Some(key);
                    break;
                }
            }
        }
        self.settle(budget);
        popped
    }

    /// Drops every row.
    pub(crate) fn clear(&mut self, budget: &Budget) {
        for (_, e) in self.rows.drain() {
            budget.removed(e.weight);
        }
        self.order.clear();
        self.settle(budget);
    }

    /// After the oldest row left: drops the stale places at the front, publishes the
    /// oldest row's stamp, and compacts.
    fn settle(&mut self, budget: &Budget) {
        while let Some((key, stamp)) = self.order.front() {
            if self.rows.get(key).is_some_and(|e| e.stamp == *stamp) {
                break;
            }
            self.order.pop_front();
        }
        self.compact();
        let front = self.order.front().map_or(u64::MAX, |(_, s)| *s);
        budget.fronts[self.index].store(front, Ordering::Release);
    }

    /// Drops every stale place once they outnumber the live rows, so `order` stays within
    /// a constant factor of the rows held. The front place stays (it is live, or `settle`
    /// runs next).
    fn compact(&mut self) {
        if self.order.len() > 2 * self.rows.len() + 16 {
            let rows = &self.rows;
            self.order
                .retain(|(k, s)| rows.get(k).is_some_and(|e| e.stamp == *s));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.rows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_row_goes_first() {
        let budget = Budget::new(3, 1);
        let mut w: Window<u32, &str> = Window::new(0);
        for k in 1..=4 {
            w.insert(k, "row", 1, &budget);
        }
        assert!(budget.over());
        assert_eq!(w.pop_oldest(&budget), Some(1));
        assert!(!budget.over());
        assert!(w.get(&1).is_none() && w.get(&4).is_some());
        assert_eq!((budget.len(), w.len()), (3, 3));
    }

    #[test]
    fn rows_taken_or_replaced_keep_the_weights_exact() {
        let budget = Budget::new(10, 1);
        let mut w: Window<u32, u32> = Window::new(0);
        w.insert(1, 10, 4, &budget);
        w.insert(2, 20, 4, &budget);
        assert_eq!(w.take(&1, &budget), Some(10));
        assert_eq!(w.take(&1, &budget), None);
        w.replace(&2, 21, 6, &budget);
        assert_eq!(w.get(&2), Some(&21));
        assert_eq!(budget.used.load(Ordering::Relaxed), 6);
        w.insert(3, 30, 5, &budget);
        assert!(budget.over());
        // The stale place of 1 is skipped: 2 is the oldest row.
        assert_eq!(w.pop_oldest(&budget), Some(2));
        assert_eq!((budget.used.load(Ordering::Relaxed), budget.len()), (5, 1));
        w.clear(&budget);
        assert_eq!((budget.len(), budget.used.load(Ordering::Relaxed)), (0, 0));
        assert_eq!(w.pop_oldest(&budget), None);
    }

    #[test]
    fn the_oldest_shard_is_the_one_holding_the_oldest_row() {
        let budget = Budget::new(10, 3);
        let mut w: Vec<Window<u32, u32>> = (0..3).map(Window::new).collect();
        assert_eq!(budget.oldest_shard(), None);
        w[2].insert(1, 1, 1, &budget);
        w[0].insert(2, 2, 1, &budget);
        w[2].insert(3, 3, 1, &budget);
        assert_eq!(budget.oldest_shard(), Some(2));
        w[2].take(&1, &budget);
        assert_eq!(budget.oldest_shard(), Some(0));
        assert_eq!(w[0].pop_oldest(&budget), Some(2));
        assert_eq!(budget.oldest_shard(), Some(2));
        w[2].clear(&budget);
        assert_eq!(budget.oldest_shard(), None);
    }

    #[test]
    fn stale_places_are_compacted_away() {
        let budget = Budget::new(1_000, 1);
        let mut w: Window<u32, u32> = Window::new(0);
        for k in 0..1_000u32 {
            w.insert(k, k, 1, &budget);
            if k % 3 != 0 {
                w.take(&k, &budget);
            }
            assert!(w.order.len() <= 2 * w.rows.len() + 16);
        }
        assert_eq!(budget.len(), w.len() as u64);
    }
}
