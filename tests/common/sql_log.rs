//! Statement counting through diesel 2.3's connection instrumentation.

use diesel::connection::{Instrumentation, InstrumentationEvent};
use std::sync::{Arc, Mutex, MutexGuard};

/// Every SQL statement sent by any connection of a [`TestDb`](super::TestDb)
/// pool, in the order the statements started.
///
/// Cloning shares the log (it is an `Arc` inside), so it can be handed to other
/// threads. One `SqlLog` is installed on each pooled connection as its diesel
/// [`Instrumentation`] when r2d2 creates the connection, *after* the fixture's
/// own setup SQL (PRAGMAs, `SET search_path`), so setup is never counted.
/// `TestDb` constructors call [`reset`](Self::reset) after running
/// migrations, so a fresh `TestDb` starts at zero.
///
/// What is recorded: the text of every `InstrumentationEvent::StartQuery`, as
/// diesel's `Display` renders it (for DSL queries that is the SQL followed by
/// `-- binds: [..]`). Nothing is filtered at record time.
///
/// Transaction control *is* recorded: diesel 2.3's `AnsiTransactionManager`
/// (used by SQLite, PostgreSQL and MySQL connections alike) runs `BEGIN`,
/// `COMMIT`, `ROLLBACK`, `SAVEPOINT diesel_savepoint_N`,
/// `RELEASE SAVEPOINT diesel_savepoint_N` and
/// `ROLLBACK TO SAVEPOINT diesel_savepoint_N` through `batch_execute`, which
/// emits `StartQuery` for them (in addition to the separate
/// `BeginTransaction`/`CommitTransaction`/`RollbackTransaction` events, which
/// are not recorded). PostgreSQL's `build_transaction()` sends
/// `BEGIN TRANSACTION ...` instead of `BEGIN`. So `conn.transaction(|c| one
/// select)` counts 3 statements: [`count`](Self::count) = 3,
/// [`selects`](Self::selects) = 1, [`tx_control`](Self::tx_control) = 2.
/// A PostgreSQL `COMMIT` that fails (e.g. on a deferred foreign key) is the
/// last statement recorded: the server has already ended the transaction, so
/// diesel sends no `ROLLBACK` after it. Raw SQL run through
/// [`TestDb::exec`](super::TestDb::exec) is recorded too; statements of
/// [`TestDb::raw_connection`](super::TestDb::raw_connection) are not.
#[derive(Clone, Default)]
pub struct SqlLog {
    statements: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for SqlLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.lock().iter()).finish()
    }
}

impl SqlLog {
    /// A new, empty log.
    pub fn new() -> Self {
        Self::default()
    }

    // A test that panicked while holding the lock must not hide the log from
    // the assertion messages of other threads, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Vec<String>> {
        self.statements
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends one statement (also usable by hand, e.g. for markers).
    pub fn record(&self, sql: String) {
        self.lock().push(sql);
    }

    /// The instrumentation to install on a connection; it appends to this log.
    pub fn instrumentation(&self) -> impl Instrumentation {
        let log = self.clone();
        move |event: InstrumentationEvent<'_>| {
            if let InstrumentationEvent::StartQuery { query, .. } = event {
                log.record(format!("{query}"));
            }
        }
    }

    /// Number of statements of any kind (including BEGIN/COMMIT/SAVEPOINT).
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Statements whose text starts with `SELECT` (case-insensitive).
    pub fn selects(&self) -> usize {
        self.count_starting_with(&["SELECT"])
    }

    /// Statements starting with `INSERT`, `UPDATE` or `DELETE`.
    pub fn writes(&self) -> usize {
        self.count_starting_with(&["INSERT", "UPDATE", "DELETE"])
    }

    /// Transaction control: `BEGIN`, `START TRANSACTION`, `COMMIT`,
    /// `ROLLBACK` (incl. `ROLLBACK TO SAVEPOINT`), `SAVEPOINT`, `RELEASE`.
    pub fn tx_control(&self) -> usize {
        self.count_starting_with(&[
            "BEGIN",
            "START TRANSACTION",
            "COMMIT",
            "ROLLBACK",
            "SAVEPOINT",
            "RELEASE",
        ])
    }

    /// Statements whose trimmed text starts with any of `prefixes`
    /// (ASCII case-insensitive).
    pub fn count_starting_with(&self, prefixes: &[&str]) -> usize {
        self.lock()
            .iter()
            .filter(|sql| prefixes.iter().any(|p| starts_with_ci(sql, p)))
            .count()
    }

    /// Forgets everything recorded so far.
    pub fn reset(&self) {
        self.lock().clear();
    }

    /// A copy of the recorded statements, oldest first.
    pub fn statements(&self) -> Vec<String> {
        self.lock().clone()
    }
}

fn starts_with_ci(sql: &str, prefix: &str) -> bool {
    let sql = sql.trim_start();
    sql.len() >= prefix.len()
        && sql.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}
