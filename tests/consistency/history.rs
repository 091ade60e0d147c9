//! The operation log: every read with the instants it started and ended and what it saw,
//! every transaction with its start, the instant it returned, its outcome and the versions
//! it wrote (or tried to write).

use std::sync::Mutex;
use std::time::Instant;

use super::model::{Key, Row};

/// Nanoseconds since the history's origin (one monotonic clock for every thread).
pub type Nanos = u64;

/// The effect of one write on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// The row now is `row` (insert or update).
    Put(Row),
    /// The row at `from_version` was deleted.
    Delete { key: Key, from_version: i64 },
}

impl Effect {
    pub fn key(&self) -> Key {
        match self {
            Effect::Put(r) => r.key,
            Effect::Delete { key, .. } => *key,
        }
    }
}

/// How a transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `transaction`/`retry` returned Ok: its effects committed.
    Committed,
    /// It returned Err (closure error, conflict, injected failure, failing COMMIT) or
    /// panicked: in the bounded workload the outcome is known, nothing committed.
    Failed,
    /// The commit's outcome is unknown (a connection lost during COMMIT, faults only): the
    /// effects may or may not have committed.
    Unknown,
}

#[derive(Clone, Debug)]
pub enum Event {
    Read {
        thread: usize,
        start: Nanos,
        end: Nanos,
        key: Key,
        seen: Option<Row>,
    },
    Write {
        thread: usize,
        start: Nanos,
        end: Nanos,
        outcome: Outcome,
        effects: Vec<Effect>,
    },
    /// An operation id whose deliveries broke C6: its effects applied more than once, or
    /// a replay returned another outcome than the delivery that ran.
    OnceViolated {
        thread: usize,
        op: String,
        what: String,
    },
}

/// The shared log; each thread appends its own events.
pub struct History {
    origin: Instant,
    events: Mutex<Vec<Event>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    pub fn new() -> Self {
        History {
            origin: Instant::now(),
            events: Mutex::new(Vec::new()),
        }
    }

    /// Now, on the history's clock.
    pub fn now(&self) -> Nanos {
        self.origin.elapsed().as_nanos() as Nanos
    }

    pub fn extend(&self, events: Vec<Event>) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(events);
    }

    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
