//! Operation ids: exactly-once transactions for at-least-once callers (C6).
//!
//! A message consumer or an HTTP client that resends after a lost response delivers the
//! same request more than once. [`Db::transaction_once`] runs a transaction under an
//! operation id and records the id, with the closure's result, in the library's table
//! `diesel_l2_operations` **in the same transaction** as the writes (a transactional
//! inbox): the record commits or rolls back with them.
//!
//! - **First delivery**: the id is claimed (an `INSERT` of its row, first statement of the
//!   transaction), the closure runs, its result is serialized (JSON) next to the id, and
//!   everything commits together. The result says [`is_replay`](Outcome::is_replay)
//!   `== false`.
//! - **Replay** (the id committed before): nothing runs; the recorded result comes back,
//!   marked [`is_replay`](Outcome::is_replay) `== true`.
//! - **Concurrent deliveries** of one id: the claim takes the row's lock, so the second
//!   delivery waits on the database until the first ends. If the first committed, the second
//!   is a replay; if it rolled back, the second runs. Never both. A wait that outlasts the
//!   database's lock timeout (MariaDB's `innodb_lock_wait_timeout`, SQLite's
//!   `busy_timeout`) is a retryable database error, which [`Db::retry_once`] retries.
//! - **Failures are not recorded**: an `Err` from the closure, a conflict, a panic or a
//!   failed `COMMIT` rolls the claim back with the writes, so the same id can run again
//!   (this is how [`Db::retry_once`] re-runs a conflicted attempt under one id).
//! - **A reused id with another request** is [`Error::OperationMismatch`] when the caller
//!   passes a fingerprint of the request ([`Operation::fingerprint`]), as the IETF
//!   `Idempotency-Key` draft answers 422.
//! - **Retention**: recorded ids are deleted after the retention set with
//!   [`DbBuilder::operation_retention`](crate::DbBuilder::operation_retention) (24 hours
//!   by default), at most once a minute, before a claim. A delivery later than the
//!   retention runs again: keep it longer than your longest redelivery window.
//!
//! What a replay is **not**: a write whose content happens to match the row. Versioned
//! writes ([`Tx::update`](crate::Tx::update), [`Tx::delete`](crate::Tx::delete)) answer
//! [`Error::Conflict`] on any version mismatch; nothing in the library compares content to
//! guess that a write was already made.
//!
//! Install the table with a migration: [`postgres_operations_table_sql`],
//! [`mysql_operations_table_sql`] or [`sqlite_operations_table_sql`] (this repository's
//! `migrations/*/…_operations` are these).

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use diesel::r2d2::R2D2Connection;
use diesel::result::{DatabaseErrorKind, Error as DieselError, QueryResult};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::tx::{RetryPolicy, RetryableError, Tx};

/// The library's table of recorded operations.
pub const OPERATIONS_TABLE: &str = "diesel_l2_operations";

/// Longest operation id, in bytes (the id column is `VARCHAR(255)` on MariaDB/MySQL).
pub const MAX_OPERATION_ID_BYTES: usize = 255;

/// Longest request fingerprint, in bytes: pass a hash of the request, not the request.
pub const MAX_FINGERPRINT_BYTES: usize = 1024;

/// Retention of recorded operations when none is set: 24 hours.
pub(crate) const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// How often, at most, claims prune expired operations.
const PRUNE_EVERY_MS: i64 = 60_000;

/// An operation id (a message id, an HTTP `Idempotency-Key`), with an optional
/// fingerprint of the request it stands for.
///
/// ```
/// use diesel_l2::Operation;
/// let op = Operation::new("transfer-8a1f").fingerprint("sha256:3b9c…");
/// assert_eq!(op.id(), "transfer-8a1f");
/// let plain: Operation = "msg-17".into();
/// assert_eq!(plain.fingerprint_value(), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Operation {
    id: String,
    fingerprint: Option<String>,
}

impl Operation {
    /// An operation with this id (1 to 255 bytes; compared byte for byte, case included).
    pub fn new(id: impl Into<String>) -> Self {
        Operation {
            id: id.into(),
            fingerprint: None,
        }
    }

    /// Attaches a fingerprint of the request (a hash of its method, path and body, say).
    /// A later delivery of the same id with another fingerprint is
    /// [`Error::OperationMismatch`] instead of a replay.
    #[must_use]
    pub fn fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint = Some(fingerprint.into());
        self
    }

    /// The id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The fingerprint, if one was given.
    pub fn fingerprint_value(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.id.is_empty() || self.id.len() > MAX_OPERATION_ID_BYTES {
            return Err(Error::InvalidOperation(format!(
                "the operation id is {} bytes long; use 1 to {MAX_OPERATION_ID_BYTES} bytes \
                 (a UUID or a message id; hash anything longer)",
                self.id.len()
            )));
        }
        if let Some(f) = &self.fingerprint {
            if f.len() > MAX_FINGERPRINT_BYTES {
                return Err(Error::InvalidOperation(format!(
                    "the fingerprint of operation {:?} is {} bytes long; pass a hash of the \
                     request of at most {MAX_FINGERPRINT_BYTES} bytes, not the request itself",
                    self.id,
                    f.len()
                )));
            }
        }
        Ok(())
    }
}

impl From<&str> for Operation {
    fn from(id: &str) -> Self {
        Operation::new(id)
    }
}

impl From<String> for Operation {
    fn from(id: String) -> Self {
        Operation::new(id)
    }
}

impl From<&String> for Operation {
    fn from(id: &String) -> Self {
        Operation::new(id.as_str())
    }
}

impl From<uuid::Uuid> for Operation {
    fn from(id: uuid::Uuid) -> Self {
        Operation::new(id.to_string())
    }
}

/// The result of [`Db::transaction_once`]: the closure's value, from this run or recorded
/// by the run that committed first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome<T> {
    value: T,
    replay: bool,
}

impl<T> Outcome<T> {
    pub(crate) fn ran(value: T) -> Self {
        Outcome {
            value,
            replay: false,
        }
    }

    pub(crate) fn replayed(value: T) -> Self {
        Outcome {
            value,
            replay: true,
        }
    }

    /// True when this delivery ran nothing: the operation had committed before, and the
    /// value is the one recorded then.
    pub fn is_replay(&self) -> bool {
        self.replay
    }

    /// The value.
    pub fn into_inner(self) -> T {
        self.value
    }

    /// The value, by reference.
    pub fn value(&self) -> &T {
        &self.value
    }
}

impl<T> std::ops::Deref for Outcome<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// A recorded operation, as read back for a replay.
#[doc(hidden)]
#[derive(Debug)]
pub struct Recorded {
    pub fingerprint: Option<String>,
    pub outcome: Option<String>,
}

mod schema {
    diesel::table! {
        diesel_l2_operations (id) {
            id -> Text,
            fingerprint -> Nullable<Text>,
            outcome -> Nullable<Text>,
            created_at -> BigInt,
        }
    }
}
use schema::diesel_l2_operations;

/// A connection that can record operations (implemented for the connection types of the
/// enabled backends).
pub trait OperationLog: R2D2Connection + 'static {
    /// Inserts the claim row; a unique violation means the id is taken.
    #[doc(hidden)]
    fn claim_operation(&mut self, op: &Operation, now_ms: i64) -> QueryResult<usize>;
    /// Stores the serialized outcome of the claimed id.
    #[doc(hidden)]
    fn record_operation(&mut self, id: &str, outcome: &str) -> QueryResult<usize>;
    /// Reads a recorded operation.
    #[doc(hidden)]
    fn recorded_operation(&mut self, id: &str) -> QueryResult<Option<Recorded>>;
    /// Deletes operations recorded before `before_ms`.
    #[doc(hidden)]
    fn prune_operations(&mut self, before_ms: i64) -> QueryResult<usize>;
}

macro_rules! operation_log_for {
    ($conn:ty) => {
        impl OperationLog for $conn {
            fn claim_operation(&mut self, op: &Operation, now_ms: i64) -> QueryResult<usize> {
                use diesel::prelude::*;
                use diesel_l2_operations::dsl as o;
                diesel::insert_into(o::diesel_l2_operations)
                    .values((
                        o::id.eq(&op.id),
                        o::fingerprint.eq(op.fingerprint.as_deref()),
                        o::created_at.eq(now_ms),
                    ))
                    .execute(self)
            }

            fn record_operation(&mut self, id: &str, outcome: &str) -> QueryResult<usize> {
                use diesel::prelude::*;
                use diesel_l2_operations::dsl as o;
                diesel::update(o::diesel_l2_operations.filter(o::id.eq(id)))
                    .set(o::outcome.eq(outcome))
                    .execute(self)
            }

            fn recorded_operation(&mut self, id: &str) -> QueryResult<Option<Recorded>> {
                use diesel::prelude::*;
                use diesel_l2_operations::dsl as o;
                o::diesel_l2_operations
                    .filter(o::id.eq(id))
                    .select((o::fingerprint, o::outcome))
                    .first::<(Option<String>, Option<String>)>(self)
                    .optional()
                    .map(|r| {
                        r.map(|(fingerprint, outcome)| Recorded {
                            fingerprint,
                            outcome,
                        })
                    })
            }

            fn prune_operations(&mut self, before_ms: i64) -> QueryResult<usize> {
                use diesel::prelude::*;
                use diesel_l2_operations::dsl as o;
                diesel::delete(o::diesel_l2_operations.filter(o::created_at.lt(before_ms)))
                    .execute(self)
            }
        }
    };
}

#[cfg(feature = "sqlite")]
operation_log_for!(diesel::sqlite::SqliteConnection);
#[cfg(feature = "postgres")]
operation_log_for!(diesel::pg::PgConnection);
#[cfg(feature = "mysql")]
operation_log_for!(diesel::mysql::MysqlConnection);

/// The table on PostgreSQL (a migration's `up.sql`).
pub fn postgres_operations_table_sql() -> String {
    "CREATE TABLE diesel_l2_operations (\n    \
         id TEXT PRIMARY KEY,\n    \
         fingerprint TEXT,\n    \
         outcome TEXT,\n    \
         created_at BIGINT NOT NULL\n\
     );\n\
     CREATE INDEX diesel_l2_operations_created_at ON diesel_l2_operations (created_at);\n"
        .to_string()
}

/// The table on MariaDB/MySQL (a migration's `up.sql`). The id is `VARBINARY`, compared
/// byte for byte: `Op-1`, `op-1` and `op-1 ` are three operations, whatever the server's
/// default collation (case-insensitive) or a `_bin` collation's padding (which ignores
/// trailing spaces) would say.
pub fn mysql_operations_table_sql() -> String {
    "CREATE TABLE diesel_l2_operations (\n    \
         id VARBINARY(255) NOT NULL PRIMARY KEY,\n    \
         fingerprint TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,\n    \
         outcome LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,\n    \
         created_at BIGINT NOT NULL,\n    \
         INDEX diesel_l2_operations_created_at (created_at)\n\
     ) ENGINE = InnoDB;\n"
        .to_string()
}

/// The table on SQLite (a migration's `up.sql`).
pub fn sqlite_operations_table_sql() -> String {
    "CREATE TABLE diesel_l2_operations (\n    \
         id TEXT NOT NULL PRIMARY KEY,\n    \
         fingerprint TEXT,\n    \
         outcome TEXT,\n    \
         created_at BIGINT NOT NULL\n\
     );\n\
     CREATE INDEX diesel_l2_operations_created_at ON diesel_l2_operations (created_at);\n"
        .to_string()
}

/// The `down.sql` of the table's migration, on every backend.
pub fn drop_operations_table_sql() -> String {
    "DROP TABLE diesel_l2_operations;\n".to_string()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Turns a database error on the operations table into a message that says what to do
/// when the table is missing.
fn table_error(e: DieselError) -> Error {
    if let DieselError::DatabaseError(_, info) = &e {
        let m = info.message().to_ascii_lowercase();
        if m.contains(OPERATIONS_TABLE)
            && (m.contains("no such table")
                || m.contains("does not exist")
                || m.contains("doesn't exist"))
        {
            return Error::Config(format!(
                "the table `{OPERATIONS_TABLE}` that records operation ids is missing: add a \
                 migration with diesel_l2::inbox::{{postgres,mysql,sqlite}}_operations_table_sql() \
                 ({e})"
            ));
        }
    }
    Error::Database(e)
}

/// Why the inner transaction of `transaction_once` did not commit.
enum OnceFailure<E> {
    User(E),
    /// The id was taken by a committed operation (or one that committed while we waited).
    Taken,
}

impl<E: From<Error>> From<Error> for OnceFailure<E> {
    fn from(e: Error) -> Self {
        OnceFailure::User(E::from(e))
    }
}

/// Per-`Db` inbox settings and state.
#[derive(Debug)]
pub(crate) struct Inbox {
    pub(crate) retention: Duration,
    last_prune_ms: AtomicI64,
}

impl Inbox {
    pub(crate) fn new(retention: Duration) -> Self {
        Inbox {
            retention,
            last_prune_ms: AtomicI64::new(0),
        }
    }

    /// True once a minute at most (the first caller to see the minute passed).
    fn prune_due(&self, now: i64) -> bool {
        let last = self.last_prune_ms.load(Relaxed);
        now.saturating_sub(last) >= PRUNE_EVERY_MS
            && self
                .last_prune_ms
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
    }

    fn cutoff(&self, now: i64) -> i64 {
        let keep = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        now.saturating_sub(keep)
    }
}

/// What running an operation inside a savepoint did.
pub(crate) enum Step<T> {
    /// It ran; its outcome is recorded in the enclosing transaction.
    Ran(T),
    /// Its id was taken (committed before, or claimed earlier in this transaction): read
    /// the recorded outcome once the transaction has committed.
    Taken,
}

impl<'a, C: OperationLog> Tx<'a, C> {
    /// Runs `f` under `op` in a savepoint of this transaction (the batcher's path): the
    /// claim, the writes and the record are rolled back together if `f` fails.
    ///
    /// Without `isolated` it runs straight in the transaction (the batcher's fast path):
    /// a taken id is then an error, which makes the batcher re-run the batch with
    /// savepoints (on PostgreSQL the failed claim has aborted the transaction).
    pub(crate) fn once_step<T, F>(
        &mut self,
        op: &Operation,
        f: F,
        isolated: bool,
    ) -> Result<Step<T>>
    where
        T: Serialize,
        F: FnOnce(&mut Tx<'_, C>) -> Result<T>,
    {
        if !isolated {
            if !self.claim(op)? {
                return Err(Error::RolledBack);
            }
            let value = f(self)?;
            self.record(op, &value)?;
            return Ok(Step::Ran(value));
        }
        let r = self.savepoint_with_error::<T, OnceFailure<Error>, _>(|sp| {
            if !sp.claim(op)? {
                return Err(OnceFailure::Taken);
            }
            let value = f(sp).map_err(OnceFailure::User)?;
            sp.record(op, &value)?;
            Ok(value)
        });
        match r {
            Ok(v) => Ok(Step::Ran(v)),
            Err(OnceFailure::Taken) => Ok(Step::Taken),
            Err(OnceFailure::User(e)) => Err(e),
        }
    }

    /// Stores `value` as the outcome of the claimed `op`.
    fn record<T: Serialize>(&mut self, op: &Operation, value: &T) -> Result<()> {
        let outcome = serde_json::to_string(value).map_err(|e| {
            Error::InvalidOperation(format!(
                "the result of operation {:?} could not be serialized to record it: {e}; \
                 return a type whose Serialize impl cannot fail",
                op.id
            ))
        })?;
        self.run(|c| c.record_operation(&op.id, &outcome))
            .map(|_| ())
            .map_err(|e| match e {
                Error::Database(d) => table_error(d),
                other => other,
            })
    }

    /// Claims `op` in this transaction: true when it is ours to run, false when the id is
    /// taken by an operation that committed.
    fn claim(&mut self, op: &Operation) -> Result<bool> {
        match self.run(|c| c.claim_operation(op, now_ms())) {
            Ok(_) => Ok(true),
            Err(Error::Database(DieselError::DatabaseError(
                DatabaseErrorKind::UniqueViolation,
                _,
            ))) => Ok(false),
            Err(Error::Database(e)) => Err(table_error(e)),
            Err(e) => Err(e),
        }
    }
}

impl<C: OperationLog> Db<C> {
    /// Runs `f` in a transaction exactly once per operation id (C6), for callers that
    /// deliver at least once: message consumers, HTTP clients that resend.
    ///
    /// The first delivery runs `f` and records `op`'s id with `f`'s result in the same
    /// transaction; a later delivery of the same id runs nothing and returns the recorded
    /// result, with [`Outcome::is_replay`] true. Concurrent deliveries wait for each other
    /// on the database: one runs, the others replay. An `Err`, a panic or a failed COMMIT
    /// records nothing. See [`crate::inbox`] for the whole contract.
    ///
    /// ```
    /// # use diesel::prelude::*;
    /// # use diesel::connection::SimpleConnection;
    /// # use diesel::r2d2::{ConnectionManager, Pool};
    /// # use diesel_l2::{Cached, Db};
    /// # diesel::table! { users (id) { id -> BigInt, version -> BigInt, email -> Text } }
    /// # #[derive(Queryable, Selectable, Clone, Debug, Cached)]
    /// # #[diesel(table_name = users)]
    /// # #[cache(max_entries = 100)]
    /// # struct User { id: i64, version: i64, email: String }
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let pool = Pool::builder().max_size(1)
    /// #     .build(ConnectionManager::<diesel::sqlite::SqliteConnection>::new(":memory:"))?;
    /// # pool.get()?.batch_execute(&format!(
    /// #     "CREATE TABLE users (id BIGINT PRIMARY KEY, version BIGINT NOT NULL, email TEXT NOT NULL); {}",
    /// #     diesel_l2::inbox::sqlite_operations_table_sql()))?;
    /// # let db = Db::builder(pool).cache::<User>().build()?;
    /// let signup = |tx: &mut diesel_l2::Tx<'_, _>| {
    ///     let user = tx.insert(&User { id: 7, version: 1, email: "ada@example.com".into() })?;
    ///     Ok(user.id)
    /// };
    /// let first = db.transaction_once("signup-7f3a", signup)?;
    /// let again = db.transaction_once("signup-7f3a", signup)?; // a resent request
    /// assert!(!first.is_replay());
    /// assert!(again.is_replay());
    /// assert_eq!(*again, 7); // the recorded result; the insert did not run twice
    /// # Ok(()) }
    /// ```
    ///
    /// `f` returns this crate's [`Result`]; for a closure that returns your application's
    /// own error type, use [`transaction_once_with_error`](Db::transaction_once_with_error).
    pub fn transaction_once<T, F>(&self, op: impl Into<Operation>, f: F) -> Result<Outcome<T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(&mut Tx<'_, C>) -> Result<T>,
    {
        self.transaction_once_with_error(op, f)
    }

    /// [`transaction_once`](Db::transaction_once) with a closure that returns your
    /// application's error type: anything that converts from this crate's [`Error`],
    /// returned as it is (no downcasting). An `Err` records nothing, as with
    /// `transaction_once`.
    pub fn transaction_once_with_error<T, E, F>(
        &self,
        op: impl Into<Operation>,
        f: F,
    ) -> std::result::Result<Outcome<T>, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: FnOnce(&mut Tx<'_, C>) -> std::result::Result<T, E>,
    {
        let op = op.into();
        op.validate().map_err(E::from)?;
        self.prune_if_due();
        let mut f = Some(f);
        // A claim is refused only for an id that has committed, and then it is read back;
        // an id that disappears in between (pruned) is claimed again.
        for _ in 0..3 {
            let result = self.transaction_with_error::<T, OnceFailure<E>, _>(|tx| {
                if !tx.claim(&op)? {
                    return Err(OnceFailure::Taken);
                }
                let f = f.take().ok_or_else(|| {
                    Error::Config("transaction_once: the closure already ran".into())
                })?;
                let value = f(tx).map_err(OnceFailure::User)?;
                tx.record(&op, &value)?;
                Ok(value)
            });
            match result {
                Ok(value) => {
                    return Ok(Outcome {
                        value,
                        replay: false,
                    })
                }
                Err(OnceFailure::User(e)) => return Err(e),
                Err(OnceFailure::Taken) => {
                    if let Some(value) = self.replay(&op).map_err(E::from)? {
                        return Ok(Outcome {
                            value,
                            replay: true,
                        });
                    }
                }
            }
        }
        Err(E::from(Error::InvalidOperation(format!(
            "operation {:?} was claimed and then vanished three times in a row; \
             is something else deleting rows of `{OPERATIONS_TABLE}`?",
            op.id
        ))))
    }

    /// [`transaction_once`](Db::transaction_once) that re-runs `f` under the same operation
    /// id on a retryable error (a version conflict, a deadlock, a lock wait that timed
    /// out), like [`Db::retry`]. Failed attempts record nothing, so the id stays free
    /// until an attempt commits.
    ///
    /// `f` returns this crate's [`Result`]; for a closure that returns your application's
    /// own error type, use [`retry_once_with_error`](Db::retry_once_with_error).
    pub fn retry_once<T, F>(
        &self,
        policy: RetryPolicy,
        op: impl Into<Operation>,
        f: F,
    ) -> Result<Outcome<T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(&mut Tx<'_, C>) -> Result<T>,
    {
        self.retry_once_with_error(policy, op, f)
    }

    /// [`retry_once`](Db::retry_once) with a closure that returns your application's error
    /// type: anything that converts from this crate's [`Error`] and says which errors are
    /// worth another attempt ([`RetryableError`]); no downcasting.
    pub fn retry_once_with_error<T, E, F>(
        &self,
        policy: RetryPolicy,
        op: impl Into<Operation>,
        mut f: F,
    ) -> std::result::Result<Outcome<T>, E>
    where
        T: Serialize + DeserializeOwned,
        E: RetryableError,
        F: FnMut(&mut Tx<'_, C>) -> std::result::Result<T, E>,
    {
        let op = op.into();
        self.retrying(policy, || {
            self.transaction_once_with_error(op.clone(), &mut f)
        })
    }

    /// Deletes recorded operations older than the retention now (claims also do it, at
    /// most once a minute). Returns how many were deleted.
    pub fn prune_operations(&self) -> Result<usize> {
        let cutoff = self.inner.inbox.cutoff(now_ms());
        let mut conn = self.inner.checkout()?;
        conn.prune_operations(cutoff).map_err(table_error)
    }

    fn prune_if_due(&self) {
        let now = now_ms();
        if self.inner.inbox.prune_due(now) {
            if let Err(e) = self.prune_operations() {
                tracing::warn!(error = %e, "could not prune recorded operations");
            }
        }
    }

    /// Reads the recorded outcome of `op` after its claim was refused. `None` when the row
    /// is gone (pruned since).
    pub(crate) fn replay<T: DeserializeOwned>(&self, op: &Operation) -> Result<Option<T>> {
        let mut conn = self.inner.checkout()?;
        let Some(rec) = conn.recorded_operation(&op.id).map_err(table_error)? else {
            return Ok(None);
        };
        if rec.fingerprint != op.fingerprint {
            return Err(Error::OperationMismatch {
                id: op.id.clone(),
                recorded: rec.fingerprint,
                given: op.fingerprint.clone(),
            });
        }
        let Some(outcome) = rec.outcome else {
            // The claim and the outcome are written in one transaction: a committed claim
            // always has its outcome, unless a row was written by hand.
            return Err(Error::InvalidOperation(format!(
                "operation {:?} is recorded without an outcome; delete its row from \
                 `{OPERATIONS_TABLE}` if it was written by hand",
                op.id
            )));
        };
        let value = serde_json::from_str(&outcome).map_err(|e| {
            Error::InvalidOperation(format!(
                "the recorded outcome of operation {:?} does not decode as the type this call \
                 returns ({e}); the same id was used for another kind of operation",
                op.id
            ))
        })?;
        tracing::debug!(op = %op.id, "operation replayed from its recorded outcome");
        Ok(Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_fingerprints_are_bounded() {
        assert!(Operation::new("").validate().is_err());
        assert!(Operation::new("x".repeat(255)).validate().is_ok());
        let long = Operation::new("x".repeat(256)).validate().unwrap_err();
        assert!(long.to_string().contains("1 to 255 bytes"), "{long}");
        let fp = Operation::new("a")
            .fingerprint("f".repeat(MAX_FINGERPRINT_BYTES + 1))
            .validate()
            .unwrap_err();
        assert!(fp.to_string().contains("hash"), "{fp}");
    }

    #[test]
    fn pruning_runs_at_most_once_a_minute() {
        let inbox = Inbox::new(Duration::from_secs(10));
        assert!(inbox.prune_due(1_000_000));
        assert!(!inbox.prune_due(1_000_001));
        assert!(inbox.prune_due(1_000_000 + PRUNE_EVERY_MS));
        assert_eq!(inbox.cutoff(1_000_000), 990_000);
    }
}
