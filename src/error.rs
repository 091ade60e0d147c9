//! The one error type, with messages that say what to do.

use std::time::Duration;

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in diesel-l2.
///
/// Marked `#[non_exhaustive]`: match the variants you handle and keep a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A row that must exist does not.
    #[error("no row with id {id} in `{table}`: check the id, or use `find` to get an Option")]
    NotFound {
        /// The table.
        table: &'static str,
        /// The id, formatted with `Debug`.
        id: String,
    },

    /// A versioned write found another version than the one it carried (C6).
    #[error(
        "version conflict on `{table}` id {id}: you wrote from version {expected}, the row is {}; \
         reload the row and apply the change again (`Db::retry` does this for you)",
        match found { Some(v) => format!("at version {v}"), None => "gone".to_string() }
    )]
    Conflict {
        /// The table.
        table: &'static str,
        /// The id, formatted with `Debug`.
        id: String,
        /// The version the write carried.
        expected: i64,
        /// The version in the database, `None` when the row no longer exists.
        found: Option<i64>,
    },

    /// The database rolled the transaction back before COMMIT (a statement error your code
    /// handled aborted it on PostgreSQL, or a deadlock rolled it back on MariaDB/MySQL):
    /// nothing was committed, and nothing was cached.
    #[error(
        "the database rolled this transaction back before COMMIT (an error inside it was \
         handled and the transaction carried on); nothing was committed: retry the whole \
         transaction (`Db::retry` does), or let such errors end it"
    )]
    RolledBack,

    /// `Db::retry` gave up.
    #[error("gave up after {attempts} attempts, the last one failed with: {last}; raise RetryPolicy::max_attempts or reduce contention on these rows")]
    RetriesExhausted {
        /// How many attempts ran.
        attempts: u32,
        /// The error of the last attempt.
        last: Box<Error>,
    },

    /// The database returned an error.
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),

    /// No connection could be checked out of the pool.
    #[error(
        "could not check a connection out of the pool within {timeout:?}: {source}; \
         raise the pool's max_size or connection_timeout, or find what holds connections (long transactions)"
    )]
    Pool {
        /// The pool's checkout timeout.
        timeout: Duration,
        /// The pool's error.
        #[source]
        source: r2d2::Error,
    },

    /// Invalid settings, rejected by `DbBuilder::build` or at first use.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The entity type was not registered with the `Db`.
    #[error("`{type_name}` has no cache region: register it with `Db::builder(pool).cache::<{type_name}>()`")]
    UnknownEntity {
        /// The Rust type name.
        type_name: &'static str,
    },

    /// A version would not fit its column.
    #[error("{}", overflow_message(table, id, *max))]
    VersionOverflow {
        /// The table.
        table: &'static str,
        /// The id, formatted with `Debug`.
        id: String,
        /// The largest value of the version field's type (`i32::MAX` or `i64::MAX`).
        max: i64,
    },

    /// An operation id, fingerprint or recorded outcome that cannot be used (C6, C8).
    #[error("operation id: {0}")]
    InvalidOperation(String),

    /// An operation id was delivered again with another request than the one recorded
    /// under it (HTTP answers 422 to this).
    #[error(
        "operation {id:?} was already recorded for another request (fingerprint {recorded:?}, \
         this one {given:?}); an operation id must name one request: send a new id for a new request"
    )]
    OperationMismatch {
        /// The operation id.
        id: String,
        /// The fingerprint recorded with the id.
        recorded: Option<String>,
        /// The fingerprint of this delivery.
        given: Option<String>,
    },

    /// The COMMIT of a batch failed (a deferred constraint, a serialization failure):
    /// nothing of the batch committed, nothing was cached (C1, C11).
    #[error(
        "the batch that carried this operation failed to COMMIT ({0}); nothing of it was \
         committed or cached: submit the operation again"
    )]
    BatchCommitFailed(String),

    /// The connection died during COMMIT: the transaction may or may not have committed.
    #[error(
        "the connection was lost during COMMIT ({0}): the writes may or may not have \
         committed. Retry only with an operation id (`submit_once`, `transaction_once`), \
         which turns the retry into a replay if they did"
    )]
    CommitOutcomeUnknown(String),

    /// The async front (feature `tokio`) could not run work on tokio's blocking pool:
    /// called outside a tokio runtime, or the runtime shut down before the work started
    /// (nothing was done).
    #[error("async front: {reason}")]
    AsyncRuntime {
        /// What went wrong, and what to do.
        reason: &'static str,
    },

    /// The shared tier (feature `redis`) could not be reached and its settings say
    /// [`SharedFailure::Fail`](crate::shared::SharedFailure::Fail): nothing was read from a
    /// cache that may be stale; a write whose fence could not be placed was rolled back.
    #[error(
        "shared tier: Redis is unavailable ({reason}); with `SharedFailure::Fail` reads that \
         miss locally and writes fail while it is. Check Redis, or use \
         `SharedFailure::Degrade` (the default) to read the database meanwhile"
    )]
    SharedTierUnavailable {
        /// What failed.
        reason: &'static str,
    },

    /// A migration could not be generated, written or checked ([`crate::migration`]).
    #[error("migration: {0}")]
    Migration(String),

    /// A user error returned from a transaction closure, boxed.
    #[error("{0}")]
    Other(Box<dyn std::error::Error + Send + Sync + 'static>),
}

fn overflow_message(table: &str, id: &str, max: i64) -> String {
    if max == i64::MAX {
        format!(
            "version of `{table}` id {id} is at i64::MAX, the largest BIGINT: it cannot be bumped \
             again. No row is written that often; the version was set by hand or by a bulk \
             script. Reset it (UPDATE {table} SET version = 1 WHERE id = …) while no one writes \
             the row, then evict it from the caches"
        )
    } else {
        format!(
            "version of `{table}` id {id} is at {max}, the largest value of its column type; \
             widen the version column to BIGINT and the field to i64"
        )
    }
}

impl Error {
    /// True for errors that re-running the transaction may cure: version conflicts,
    /// serialization failures and deadlocks.
    pub fn is_retryable(&self) -> bool {
        use diesel::result::DatabaseErrorKind as K;
        match self {
            Error::Conflict { .. } | Error::RolledBack | Error::BatchCommitFailed(_) => true,
            Error::Database(diesel::result::Error::DatabaseError(K::SerializationFailure, _)) => {
                true
            }
            Error::Database(diesel::result::Error::DatabaseError(_, info)) => {
                let m = info.message().to_ascii_lowercase();
                m.contains("deadlock")
                    || m.contains("database is locked")
                    || m.contains("lock wait timeout")
            }
            _ => false,
        }
    }
}
