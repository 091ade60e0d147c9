//! The history checker.
//!
//! A checker that flags a correct history is worse than useless, so every check below says
//! why a correct implementation can never trip it. The facts it relies on:
//!
//! - **Ids are never reused.** An insert always takes a fresh id (see `workload`), so one
//!   id's life is: absent, version 1 (the insert), 2, 3, … (one per committed update),
//!   then possibly deleted, for good. A version number therefore names exactly one
//!   committed write, and every write carries a payload no other write uses, so a row read
//!   is identified by `(id, version, payload)`.
//! - **Commit order per key is version order**: an update carries the version it read and
//!   the database only accepts it from that version.
//! - **Instants are from one monotonic clock**: a read's `start` is taken before the call,
//!   its `end` after; a transaction's `start` before `transaction`/`retry` is called (so it
//!   precedes the successful attempt's BEGIN), its `end` after it returned. `w.end <
//!   r.start` therefore means "the write's `transaction()` had returned Ok before the read
//!   was issued" (C2/C4's premise), and `r.end < w.start` means "the read was over before
//!   the write began".
//! - **Outcomes are known** in the workload: Ok means committed; Err or a panic means
//!   nothing committed (no fault there can make a COMMIT's outcome unknown). Where faults
//!   can (`tests/faults.rs`), such writes are recorded `Unknown` and tolerated both ways.
//!
//! The checks:
//!
//! - **C1, read of an uncommitted version**: a read returned `(id, v, payload)` and no
//!   committed (or unknown-outcome) write produced exactly that, or the write that did began
//!   after the read had ended. A correct system returns only committed rows, which were
//!   written by a transaction that began before the read returned.
//! - **C2/C4, stale read**: let `w` be the newest version of the key whose `transaction()`
//!   returned Ok before the read started (a delete counts as newer than every version).
//!   The read must return `w` or newer: a row with a lower version, a row when `w` is the
//!   delete, or `None` when `w` is a row and no committed delete of the key began before
//!   the read ended. Counted as C2 when the reading thread itself wrote a version newer
//!   than the one seen (read-your-writes), C4 otherwise.
//! - **C3, stale cache entry at a checkpoint**: all threads are stopped (no write in
//!   flight, nothing changes in the database), and for every key ever used a read through
//!   the cache must equal the row read past the cache. A read through the cache returns
//!   the cached entry if there is one, so a difference is an entry that disagrees with
//!   the committed database: a stale fill (possibly after an eviction), a lost
//!   write-through, or a stale negative entry. A correct cache never holds one once
//!   writers are quiet.
//! - **Lost or phantom write**: at the end, every key's row in the database equals the
//!   replay of the committed writes (the newest committed version, or gone after a
//!   committed delete, or absent if no insert committed).
//! - **C6**: two committed writes producing the same `(id, version)` (a double apply), or
//!   an operation id delivered 1–3 times (some deliveries concurrent) whose deliveries
//!   did not answer "ran" exactly once among those that returned Ok, or whose replays
//!   returned another outcome than the delivery that ran. A correct inbox runs the body
//!   of one id once and returns its recorded result to every other delivery.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use super::history::{Effect, Event, Nanos, Outcome};
use super::model::{Key, Row};

/// The version of "deleted": newer than every row version.
const DELETED: i64 = i64::MAX;

/// Violations per kind, and what was checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub reads_checked: u64,
    pub writes_committed: u64,
    pub writes_failed: u64,
    pub writes_unknown: u64,
    pub checkpoint_keys: u64,
    pub c1_uncommitted_read: u64,
    pub c2_stale_own_write: u64,
    pub c4_stale_read: u64,
    pub c3_stale_entry: u64,
    pub lost_or_phantom_write: u64,
    pub c6_violation: u64,
}

impl Counts {
    pub fn violations(&self) -> u64 {
        self.c1_uncommitted_read
            + self.c2_stale_own_write
            + self.c4_stale_read
            + self.c3_stale_entry
            + self.lost_or_phantom_write
            + self.c6_violation
    }

    /// `(name, count)` of every violation kind, in report order.
    pub fn kinds(&self) -> [(&'static str, u64); 6] {
        [
            ("C1 uncommitted read", self.c1_uncommitted_read),
            ("C2 stale own write", self.c2_stale_own_write),
            ("C4 stale read", self.c4_stale_read),
            ("C3 stale entry", self.c3_stale_entry),
            ("lost/phantom write", self.lost_or_phantom_write),
            ("C6 replay", self.c6_violation),
        ]
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "reads checked {}, writes committed {} / failed {} / unknown {}, checkpoint keys {}; violations:",
            self.reads_checked,
            self.writes_committed,
            self.writes_failed,
            self.writes_unknown,
            self.checkpoint_keys
        )?;
        for (name, n) in self.kinds() {
            write!(f, " {name} {n};")?;
        }
        Ok(())
    }
}

/// One committed (or unknown-outcome) write of one key.
#[derive(Clone, Debug)]
struct Version {
    version: i64,
    payload: String,
    start: Nanos,
    end: Nanos,
    thread: usize,
    unknown: bool,
}

#[derive(Default)]
struct KeyHist {
    /// Committed and unknown-outcome versions by version number (`DELETED` for the delete).
    versions: BTreeMap<i64, Vec<Version>>,
    /// Committed (not unknown) versions sorted by `end`, with the running maximum version:
    /// "newest version returned before t" is a binary search.
    by_end: Vec<(Nanos, i64)>,
    prefix_max: Vec<i64>,
    dirty: bool,
}

impl KeyHist {
    fn reindex(&mut self) {
        if !self.dirty {
            return;
        }
        self.by_end.clear();
        for vs in self.versions.values() {
            for v in vs.iter().filter(|v| !v.unknown) {
                self.by_end.push((v.end, v.version));
            }
        }
        self.by_end.sort_unstable();
        self.prefix_max.clear();
        let mut m = 0;
        for &(_, v) in &self.by_end {
            m = m.max(v);
            self.prefix_max.push(m);
        }
        self.dirty = false;
    }

    /// The newest committed version whose transaction returned before `t` (0: none).
    fn newest_returned_before(&self, t: Nanos) -> i64 {
        let n = self.by_end.partition_point(|&(end, _)| end < t);
        if n == 0 {
            0
        } else {
            self.prefix_max[n - 1]
        }
    }

    /// True when `thread` committed a version newer than `seen` that returned before `t`.
    fn own_newer_before(&self, thread: usize, seen: i64, t: Nanos) -> bool {
        self.versions
            .range(seen.saturating_add(1)..)
            .flat_map(|(_, vs)| vs)
            .any(|v| !v.unknown && v.thread == thread && v.end < t)
    }

    /// The state a replay of the committed writes ends in.
    fn final_state(&self) -> Option<(i64, &str)> {
        let (&version, vs) = self
            .versions
            .iter()
            .rev()
            .find(|(_, vs)| vs.iter().any(|v| !v.unknown))?;
        if version == DELETED {
            return None;
        }
        let v = vs.iter().find(|v| !v.unknown)?;
        Some((version, v.payload.as_str()))
    }

    fn has_unknown(&self) -> bool {
        self.versions.values().flatten().any(|v| v.unknown)
    }
}

/// Accumulates writes across phases and checks each phase's reads against them.
#[derive(Default)]
pub struct Checker {
    keys: HashMap<Key, KeyHist>,
    /// Keys with a delete that failed (for classifying a `None` read).
    failed_deletes: HashSet<Key>,
    pub counts: Counts,
    /// The first few violations, described, for the failure message.
    pub examples: Vec<String>,
    /// Cross-process runs (C7): reads may lag writes made outside the reading `Db`.
    pub lag: Option<LagRule>,
    /// The largest lag a read showed, and how many reads lagged at all.
    pub lag_seen: LagSeen,
}

impl Checker {
    pub fn new() -> Self {
        Self::default()
    }

    fn example(&mut self, s: String) {
        if self.examples.len() < 20 {
            self.examples.push(s);
        }
    }

    /// Checks one phase's events: all writes first (a read can only have seen writes of
    /// its own or earlier phases: later phases had not begun), then the reads.
    pub fn check_phase(&mut self, events: Vec<Event>) {
        let mut reads = Vec::new();
        for ev in events {
            match ev {
                Event::Write {
                    thread,
                    start,
                    end,
                    outcome,
                    effects,
                } => self.add_write(thread, start, end, outcome, effects),
                Event::OnceViolated { thread, op, what } => {
                    self.counts.c6_violation += 1;
                    self.example(format!("C6: thread {thread}, operation {op}: {what}"));
                }
                read @ Event::Read { .. } => reads.push(read),
            }
        }
        for kh in self.keys.values_mut() {
            kh.reindex();
        }
        for r in reads {
            if let Event::Read {
                thread,
                start,
                end,
                key,
                seen,
            } = r
            {
                self.check_read(thread, start, end, key, seen);
            }
        }
    }

    fn add_write(
        &mut self,
        thread: usize,
        start: Nanos,
        end: Nanos,
        outcome: Outcome,
        effects: Vec<Effect>,
    ) {
        match outcome {
            Outcome::Committed => self.counts.writes_committed += 1,
            Outcome::Failed => {
                self.counts.writes_failed += 1;
                for e in &effects {
                    if let Effect::Delete { key, .. } = e {
                        self.failed_deletes.insert(*key);
                    }
                }
                return;
            }
            Outcome::Unknown => self.counts.writes_unknown += 1,
        }
        for e in effects {
            let (key, version, payload) = match e {
                Effect::Put(r) => (r.key, r.version, r.payload),
                Effect::Delete { key, .. } => (key, DELETED, String::new()),
            };
            let kh = self.keys.entry(key).or_default();
            let slot = kh.versions.entry(version).or_default();
            let unknown = outcome == Outcome::Unknown;
            let twice = !unknown && version != DELETED && slot.iter().any(|v| !v.unknown);
            slot.push(Version {
                version,
                payload,
                start,
                end,
                thread,
                unknown,
            });
            kh.dirty = true;
            if twice {
                self.counts.c6_violation += 1;
                self.example(format!(
                    "C6: version {version} of {key:?} committed twice (double apply / lost update)"
                ));
            }
        }
    }

    fn check_read(&mut self, thread: usize, start: Nanos, end: Nanos, key: Key, seen: Option<Row>) {
        self.counts.reads_checked += 1;
        let empty = KeyHist::default();
        let kh = self.keys.get(&key).unwrap_or(&empty);
        let fresh = required(kh, self.lag.as_ref(), thread, start);
        if let (Some(rule), Some(row)) = (&self.lag, &seen) {
            self.lag_seen.record(kh, rule, row.version, start);
        }
        match seen {
            Some(row) => {
                let produced = kh.versions.get(&row.version).and_then(|vs| {
                    vs.iter()
                        .find(|v| v.payload == row.payload && v.version != DELETED)
                });
                let ok_c1 = produced.is_some_and(|v| v.start <= end);
                if !ok_c1 {
                    self.counts.c1_uncommitted_read += 1;
                    self.example(format!(
                        "C1: thread {thread} read {row:?} during [{start}, {end}] ns: no committed write produced it before the read ended"
                    ));
                    return;
                }
                if fresh > row.version {
                    let own = kh.own_newer_before(thread, row.version, start);
                    if own {
                        self.counts.c2_stale_own_write += 1;
                    } else {
                        self.counts.c4_stale_read += 1;
                    }
                    let what = if fresh == DELETED {
                        "the delete".to_string()
                    } else {
                        format!("version {fresh}")
                    };
                    let by = written_by(kh, fresh, start, end);
                    self.example(format!(
                        "{}: thread {thread} read {key:?} at version {} during [{start}, {end}] ns, but {what} had returned before the read started{by}",
                        if own { "C2" } else { "C4" },
                        row.version
                    ));
                }
            }
            None => {
                if fresh == 0 || is_gone(fresh) {
                    return;
                }
                // A row had committed and returned before the read started: `None` is
                // right only if a committed (or unknown-outcome) delete began before the
                // read ended.
                let explained = kh
                    .versions
                    .range(fresh.saturating_add(1)..)
                    .any(|(v, vs)| is_gone(*v) && vs.iter().any(|v| v.start <= end));
                if explained {
                    return;
                }
                if self.failed_deletes.contains(&key) {
                    self.counts.c1_uncommitted_read += 1;
                    self.example(format!(
                        "C1: thread {thread} read {key:?} as absent during [{start}, {end}] ns; only a delete that never committed explains it"
                    ));
                } else {
                    let own = kh.own_newer_before(thread, 0, start);
                    if own {
                        self.counts.c2_stale_own_write += 1;
                    } else {
                        self.counts.c4_stale_read += 1;
                    }
                    self.example(format!(
                        "{}: thread {thread} read {key:?} as absent during [{start}, {end}] ns after version {fresh} had returned{}",
                        if own { "C2" } else { "C4" },
                        written_by(kh, fresh, start, end)
                    ));
                }
            }
        }
    }

    /// A quiescent checkpoint: `through_cache` and `in_db` were read for `key` while no
    /// write was in flight.
    pub fn check_entry(&mut self, key: Key, through_cache: &Option<Row>, in_db: &Option<Row>) {
        self.counts.checkpoint_keys += 1;
        if through_cache != in_db {
            self.counts.c3_stale_entry += 1;
            self.example(format!(
                "C3: at a checkpoint {key:?} reads {through_cache:?} through the cache but the database holds {in_db:?}"
            ));
        }
    }

    /// The end: the database equals the replay of the committed writes. Keys with an
    /// unknown-outcome write are only checked to hold one of the possible states.
    pub fn check_final(&mut self, key: Key, in_db: &Option<Row>) {
        let empty = KeyHist::default();
        let kh = self.keys.get(&key).unwrap_or(&empty);
        let expected = kh.final_state();
        let actual = in_db.as_ref().map(|r| (r.version, r.payload.as_str()));
        if expected == actual {
            return;
        }
        if kh.has_unknown() {
            // Any committed-or-unknown version newer than the committed one, or deletion.
            let possible = match in_db {
                None => kh.versions.contains_key(&DELETED),
                Some(r) => kh
                    .versions
                    .get(&r.version)
                    .is_some_and(|vs| vs.iter().any(|v| v.payload == r.payload)),
            };
            if possible {
                return;
            }
        }
        self.counts.lost_or_phantom_write += 1;
        let msg = format!(
            "lost/phantom write: {key:?} is {actual:?} in the database, the committed writes say {expected:?}"
        );
        self.example(msg);
    }
}

/// Cross-process runs (C7): which `Db` a thread's reads and writes go through, and how far
/// behind writes made elsewhere (another `Db`, plain SQL) a read may be.
///
/// A read through `Db` X must return a version at least as new as (a) every version written
/// through X whose transaction returned before the read started (C2, C4 hold within one
/// `Db`), and (b) every version, written anywhere, that returned more than `delta` before
/// the read started (the change feed's bounded delay, C7). A correct listener that applies
/// each notification within `delta` of its COMMIT never trips this.
#[derive(Clone, Copy, Debug)]
pub struct LagRule {
    pub delta: Nanos,
    /// The `Db` (or writer) a thread belongs to.
    pub origin: fn(usize) -> usize,
}

/// The largest lag seen: how long before the read started the version it superseded had
/// returned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LagSeen {
    pub max_lag: Nanos,
    pub lagged_reads: u64,
}

impl LagSeen {
    fn record(&mut self, kh: &KeyHist, _rule: &LagRule, seen: i64, start: Nanos) {
        let superseded = kh
            .versions
            .range(seen.saturating_add(1)..)
            .flat_map(|(_, vs)| vs)
            .filter(|v| !v.unknown && v.end < start)
            .map(|v| v.end)
            .min();
        if let Some(end) = superseded {
            self.lagged_reads += 1;
            self.max_lag = self.max_lag.max(start - end);
        }
    }
}

/// For a stale read's example: who wrote the version it missed, how long before the read
/// began that write returned, and how long the read took (a local hit takes microseconds).
fn written_by(kh: &KeyHist, version: i64, start: Nanos, end: Nanos) -> String {
    let Some(v) = kh
        .versions
        .get(&version)
        .and_then(|vs| vs.iter().find(|v| !v.unknown))
    else {
        return String::new();
    };
    format!(
        " (written by thread {} in [{}, {}] ns, {:.1} ms before the read began; the read took {:.1} µs)",
        v.thread,
        v.start,
        v.end,
        start.saturating_sub(v.end) as f64 / 1e6,
        end.saturating_sub(start) as f64 / 1e3
    )
}

/// The version a read starting at `start` by `thread` must return at least.
fn required(kh: &KeyHist, rule: Option<&LagRule>, thread: usize, start: Nanos) -> i64 {
    let Some(rule) = rule else {
        return kh.newest_returned_before(start);
    };
    let lagged = kh.newest_returned_before(start.saturating_sub(rule.delta));
    let mine = (rule.origin)(thread);
    let own = kh
        .versions
        .iter()
        .rev()
        .find(|(_, vs)| {
            vs.iter()
                .any(|v| !v.unknown && v.end < start && (rule.origin)(v.thread) == mine)
        })
        .map_or(0, |(v, _)| *v);
    lagged.max(own)
}

/// Rows of the re-insert key space carry an incarnation: their checked version is
/// `incarnation << INCARNATION_SHIFT | version`, and a delete of incarnation `i` is
/// `i << INCARNATION_SHIFT | GONE` (newer than every version of `i`, older than `i + 1`).
pub const INCARNATION_SHIFT: u32 = 40;
pub const GONE: i64 = (1 << INCARNATION_SHIFT) - 1;

/// Whether a checked version is a delete.
pub fn is_gone(version: i64) -> bool {
    version == DELETED || (version & GONE) == GONE
}

impl Checker {
    /// The end, for a key whose deletes are recorded as versions (`is_gone`): the database
    /// (its row translated the same way) equals the replay of the committed writes.
    pub fn check_final_versions(&mut self, key: Key, in_db: &Option<Row>) {
        let empty = KeyHist::default();
        let kh = self.keys.get(&key).unwrap_or(&empty);
        let expected = kh
            .final_state()
            .filter(|(v, _)| !is_gone(*v))
            .map(|(v, p)| (v, p.to_string()));
        let actual = in_db.as_ref().map(|r| (r.version, r.payload.clone()));
        if expected != actual {
            self.counts.lost_or_phantom_write += 1;
            self.example(format!(
                "lost/phantom write: {key:?} is {actual:?} in the database, the committed writes say {expected:?}"
            ));
        }
    }
}
