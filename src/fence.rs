//! Per-key fill fences for the indexes: cached lists by a non-unique key (`index`) and
//! the negative entries of unique keys (`unique`).
//!
//! A load registers its key before its query and takes a ticket; its fill is admitted
//! only if, since then, no write or remote change touched that key, no change whose keys
//! are unknown happened (a clear, a fallback), and no transaction holds a write touching
//! the key now (C3, C4 for lists and key entries). A key's state lives only while a load
//! or a write has it registered, like the rows' fences in `region`.
//!
//! Writes whose key values are unknown (plain SQL, an update of content neither cached
//! nor read) go *blind*: while one is pending, no fill of the index is admitted, and its
//! end voids every load that began before it.
//!
//! A load may also lead a *flight* that concurrent misses of the same key wait for
//! instead of running the same query (lists), as long as no write touched the key since
//! the flight began.

use std::collections::HashMap;
use std::hash::Hash;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// The fences of one index; `F` is what a single-flight load shares with its waiters
/// (`()` for an index without single flight).
pub(crate) struct KeyFences<K, F = ()> {
    inner: Mutex<Fences<K, F>>,
}

/// What fences the fills of one index; held through [`KeyFences::lock`].
pub(crate) struct Fences<K, F = ()> {
    /// Keys with a load registered or a write pending.
    keys: HashMap<K, KeyFence<F>>,
    /// Blind writes pending.
    blind: u64,
    /// Bumped by every change whose keys are unknown: a fill needs it unchanged.
    generation: u64,
}

/// The fence of one key.
struct KeyFence<F> {
    /// Writes of pending transactions touching the key (old or new values).
    pending: u32,
    /// Loads in flight.
    loads: u32,
    /// Bumped by every write and remote change touching the key.
    epoch: u64,
    /// A load others may wait for instead of running their own (single flight), with the
    /// key's epoch and the generation when it began.
    flight: Option<Shared<F>>,
}

/// A single-flight load: what it shares with its waiters, and when it began.
struct Shared<F> {
    flight: Arc<F>,
    epoch: u64,
    generation: u64,
}

impl<F> Default for KeyFence<F> {
    fn default() -> Self {
        KeyFence {
            pending: 0,
            loads: 0,
            epoch: 0,
            flight: None,
        }
    }
}

impl<F> KeyFence<F> {
    fn idle(&self) -> bool {
        self.pending == 0 && self.loads == 0
    }
}

/// A load in progress: its key's epoch and the index's generation at its start. Dropped,
/// it ends the load's registration (fill admitted or not, or the query failed).
pub(crate) struct FenceTicket<'a, K: Eq + Hash, F = ()> {
    fences: &'a KeyFences<K, F>,
    key: K,
    epoch: u64,
    generation: u64,
    /// The flight this load leads, which its drop takes down.
    leads: Option<Arc<F>>,
}

/// What [`KeyFences::begin_or_join`] decided.
pub(crate) enum Begin<'a, K: Eq + Hash, F> {
    /// Run the query, leading the flight it registered (its shared part).
    Lead(FenceTicket<'a, K, F>, Arc<F>),
    /// Wait for the load in flight instead.
    Join(Arc<F>),
}

impl<K: Eq + Hash, F> FenceTicket<'_, K, F> {
    /// The key the load reads.
    pub(crate) fn key(&self) -> &K {
        &self.key
    }
}

impl<K: Eq + Hash, F> Drop for FenceTicket<'_, K, F> {
    fn drop(&mut self) {
        let mut f = self.fences.lock();
        if let Some(st) = f.keys.get_mut(&self.key) {
            st.loads = st.loads.saturating_sub(1);
            if let (Some(mine), Some(theirs)) = (&self.leads, &st.flight) {
                if Arc::ptr_eq(mine, &theirs.flight) {
                    st.flight = None;
                }
            }
            if st.idle() {
                f.keys.remove(&self.key);
            }
        }
    }
}

/// The locked fences: every fence check and every change of the index's cache happens
/// while this is held, so a check and the insert it admits are atomic.
pub(crate) struct Locked<'a, K, F>(MutexGuard<'a, Fences<K, F>>);

impl<K, F> Deref for Locked<'_, K, F> {
    type Target = Fences<K, F>;
    fn deref(&self) -> &Fences<K, F> {
        &self.0
    }
}

impl<K, F> DerefMut for Locked<'_, K, F> {
    fn deref_mut(&mut self) -> &mut Fences<K, F> {
        &mut self.0
    }
}

impl<K, F> KeyFences<K, F> {
    pub(crate) fn lock(&self) -> Locked<'_, K, F> {
        // Every mutation completes before anything can panic: a poisoned lock is whole.
        Locked(self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl<K: Eq + Hash + Clone, F> KeyFences<K, F> {
    pub(crate) fn new() -> Self {
        KeyFences {
            inner: Mutex::new(Fences {
                keys: HashMap::new(),
                blind: 0,
                generation: 0,
            }),
        }
    }

    /// Registers a load of `key`, before its query runs.
    pub(crate) fn begin_load(&self, key: &K) -> FenceTicket<'_, K, F> {
        let mut f = self.lock();
        let generation = f.generation;
        let st = f.keys.entry(key.clone()).or_default();
        st.loads += 1;
        FenceTicket {
            fences: self,
            key: key.clone(),
            epoch: st.epoch,
            generation,
            leads: None,
        }
    }

    /// Joins `key`'s load in flight when no write touched the key since it began and none
    /// is pending: its result is then as fresh as a query of this caller's own would be
    /// (C4). Otherwise registers a load like [`begin_load`](KeyFences::begin_load) that
    /// leads a new flight, sharing what `make` makes, which its ticket's drop takes down.
    pub(crate) fn begin_or_join(&self, key: &K, make: impl FnOnce() -> F) -> Begin<'_, K, F> {
        let mut f = self.lock();
        let (generation, blind) = (f.generation, f.blind);
        let st = f.keys.entry(key.clone()).or_default();
        if let Some(shared) = &st.flight {
            if blind == 0
                && st.pending == 0
                && shared.epoch == st.epoch
                && shared.generation == generation
            {
                return Begin::Join(Arc::clone(&shared.flight));
            }
        }
        st.loads += 1;
        let flight = Arc::new(make());
        st.flight = Some(Shared {
            flight: Arc::clone(&flight),
            epoch: st.epoch,
            generation,
        });
        let ticket = FenceTicket {
            fences: self,
            key: key.clone(),
            epoch: st.epoch,
            generation,
            leads: Some(Arc::clone(&flight)),
        };
        Begin::Lead(ticket, flight)
    }
}

/// A value one thread hands to the others waiting for it: the result of a single-flight
/// load (rows in `region`, lists in `index`).
pub(crate) struct Handoff<T> {
    done: Mutex<Option<T>>,
    ready: Condvar,
}

impl<T> Handoff<T> {
    pub(crate) fn new() -> Self {
        Handoff {
            done: Mutex::new(None),
            ready: Condvar::new(),
        }
    }

    /// Hands `value` over and wakes every waiter.
    pub(crate) fn finish(&self, value: T) {
        *self.done.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
        self.ready.notify_all();
    }
}

impl<T: Clone> Handoff<T> {
    /// The value, once handed over.
    pub(crate) fn wait(&self) -> T {
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(value) = done.as_ref() {
                return value.clone();
            }
            done = self
                .ready
                .wait(done)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl<K: Eq + Hash + Clone, F> Fences<K, F> {
    /// Whether the load of `ticket` may fill now.
    pub(crate) fn admits(&self, ticket: &FenceTicket<'_, K, F>) -> bool {
        self.blind == 0
            && self.generation == ticket.generation
            && self
                .keys
                .get(&ticket.key)
                .is_some_and(|st| st.pending == 0 && st.epoch == ticket.epoch)
    }

    /// A transaction writes (or will write) a row with key value `key`: held until
    /// [`end_write`](Fences::end_write) of the same key.
    pub(crate) fn begin_write(&mut self, key: &K) {
        let st = self.keys.entry(key.clone()).or_default();
        st.pending += 1;
        st.epoch += 1;
    }

    /// The transaction that called `begin_write(key)` ended (committed or not).
    pub(crate) fn end_write(&mut self, key: &K) {
        if let Some(st) = self.keys.get_mut(key) {
            // Saturating: never wraps even if a release were ever doubled.
            st.pending = st.pending.saturating_sub(1);
            st.epoch += 1;
            if st.idle() {
                self.keys.remove(key);
            }
        }
    }

    /// A change that is not a pending write (another process's commit, a dropped entry)
    /// touched `key`: voids the loads of it in flight.
    pub(crate) fn touch(&mut self, key: &K) {
        if let Some(st) = self.keys.get_mut(key) {
            st.epoch += 1;
        }
    }

    /// A change whose keys are unknown: voids every load in flight.
    pub(crate) fn touch_all(&mut self) {
        self.generation += 1;
    }

    /// A transaction starts writing rows whose key values are unknown.
    pub(crate) fn begin_blind(&mut self) {
        self.blind += 1;
        self.generation += 1;
    }

    /// The transaction that called `begin_blind` ended.
    pub(crate) fn end_blind(&mut self) {
        self.blind = self.blind.saturating_sub(1);
        self.generation += 1;
    }
}
