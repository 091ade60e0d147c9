//! # diesel-l2
//!
//! A transactional second-level entity cache for [diesel](https://diesel.rs): annotate a
//! model with `#[derive(Cached)]`, build a [`Db`] over your r2d2 pool, and get
//! read-through caching, write-through on commit, optimistic versions with idempotent
//! retries, and a consistency contract that the test suite proves.
//!
//! ```
//! use diesel::prelude::*;
//! use diesel::connection::SimpleConnection;
//! use diesel::r2d2::{ConnectionManager, Pool};
//! use diesel::sqlite::SqliteConnection;
//! use diesel_l2::{Cached, Db};
//!
//! diesel::table! {
//!     users (id) { id -> BigInt, version -> BigInt, email -> Text }
//! }
//!
//! #[derive(Queryable, Selectable, Clone, Debug, Cached)]
//! #[diesel(table_name = users)]
//! #[cache(ttl = "10m", max_entries = 100_000)]
//! struct User { id: i64, version: i64, email: String }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::builder()
//!     .max_size(1)
//!     .build(ConnectionManager::<SqliteConnection>::new(":memory:"))?;
//! pool.get()?.batch_execute(
//!     "CREATE TABLE users (id BIGINT PRIMARY KEY, version BIGINT NOT NULL, email TEXT NOT NULL)",
//! )?;
//! let db = Db::builder(pool).cache::<User>().build()?;
//!
//! // Writes go to the database; the cache gets them after COMMIT.
//! let ada = db.transaction(|tx| tx.insert(&User { id: 1, version: 1, email: "ada@example.com".into() }))?;
//!
//! // Reads are served from the cache (no SQL) or loaded once and filled.
//! let cached = db.find::<User>(1)?.expect("inserted");
//! assert_eq!(cached.email, "ada@example.com");
//!
//! // Updates carry the version they read; the stored row comes back one version up.
//! let mut next = ada.clone();
//! next.email = "ada@lovelace.org".into();
//! let stored = db.transaction(|tx| tx.update(&next))?;
//! assert_eq!(stored.version, 2);
//!
//! // Writing from the old version again with other content is a conflict, never an overwrite.
//! let mut stale = ada.clone();
//! stale.email = "someone@else.org".into();
//! let err = db.transaction(|tx| tx.update(&stale)).unwrap_err();
//! assert!(matches!(err, diesel_l2::Error::Conflict { expected: 1, found: Some(2), .. }));
//! # Ok(()) }
//! ```
//!
//! ## Layout
//!
//! In reading order:
//!
//! - `entity` — [`CachedEntity`] and [`CachedOps`]: what `#[derive(Cached)]` implements
//!   (region settings, id, version, and the per-backend versioned SQL).
//! - `config` — [`RegionConfig`]: ttl, tti, capacity or byte budget, negative-cache ttl.
//! - `region` — one moka cache per entity type, with the per-key fences, soft locks and
//!   single-flight loads that make fills safe (C3, C4).
//! - `db` — [`Db`] and [`DbBuilder`]: the pool, the regions, `find` and `find_many`.
//! - `asynch` — the async front: hits inline, misses and writes on the blocking pool.
//!   [`Db::find_cached`] answers from the cache alone ([`CacheLookup`]); with the `tokio`
//!   feature, `Db::find_async` takes a hit on the calling task and sends a miss to
//!   `spawn_blocking`, and `transaction_async` / `retry_async` run there.
//! - `tx` — [`Tx`]: versioned writes, the write buffer, savepoints, commit hooks, and
//!   [`Db::retry`] with [`RetryPolicy`].
//! - [`inbox`] — operation ids: [`Db::transaction_once`] records an id with the result in
//!   the transaction's own commit, so a redelivered request runs once (C6).
//! - `unique` — [`UniqueKey`]: `#[cache(unique)]` keys and the fenced key → id index behind
//!   [`Db::find_by`].
//! - [`invalidation`] — cross-process invalidation: trigger SQL, the PostgreSQL `LISTEN`
//!   loop and the outbox poller for MariaDB and SQLite, started by [`DbBuilder::listen`].
//! - `stats` — [`Stats`] and [`RegionStats`]: counters, serializable, printable as a table.
//! - `error` — [`Error`]: one `#[non_exhaustive]` enum whose messages say what to do.
//!
//! ## Consistency
//!
//! The numbers refer to the contract in the project's design document; each has tests.
//!
//! - **C1 Only committed data is cached.** Cache changes made in a transaction are
//!   buffered and applied after `COMMIT` returned Ok. An `Err` from the closure, a panic,
//!   or a failing `COMMIT` leaves no trace: the touched keys are invalidated, never filled.
//! - **C2 Read-your-writes.** Once [`Db::transaction`] returned Ok, reads in this process
//!   return that write or a newer one.
//! - **C3 No stale fill.** A read-through load that raced with a write cannot put the
//!   older row over the newer one, even if the newer entry was evicted meanwhile: each
//!   key has an epoch, bumped by every write, checked before the fill. Deletes leave a
//!   versioned tombstone.
//! - **C4 Per-key linearizable reads in one process.** While a transaction holds a
//!   pending write on a key, other readers read it from the database and do not fill.
//! - **C5 Reads inside a transaction** go to the database, see the transaction's own
//!   writes, and never fill the shared cache.
//! - **C6 Optimistic versions, exactly-once retries.** `update` and `delete` carry the
//!   version read: `… WHERE id = ? AND version = ?`, bumping the version in the same
//!   statement. Any mismatch (another version, or no row) is [`Error::Conflict`]; nothing
//!   compares content to guess that a write was already made. A redelivered request is
//!   recognised by its operation id: [`Db::transaction_once`] records the id and the
//!   result in the same transaction as the writes, and a replay runs nothing and returns
//!   the recorded result ([`inbox`]).
//! - **C8 Bad input is a typed error**, never a panic in library code.
//!
//! - **C7 Across processes.** With the change-feed triggers installed (see
//!   [`invalidation`]) and [`DbBuilder::listen`], a write committed by any process or SQL
//!   client drops the entry in every listening process within a bounded, measured delay.
//!   A listener that loses its connection stops its regions from serving or filling until
//!   it has reconnected and cleared them.
//!
//! What can go stale, plainly: between another process's commit and the moment this
//! process's listener applies the notification (a few milliseconds, measured in the
//! README), the previous version may still be served. Without [`DbBuilder::listen`],
//! writes made outside this process are not seen until the entry expires or is evicted,
//! unless announced with [`Tx::invalidate`] or [`Db::evict`]. Writes made with plain
//! diesel inside [`Tx::conn`] must be announced with [`Tx::invalidate`].
//!
//! ## Unique keys, cache modes, eviction, warm-up
//!
//! - `#[cache(unique)]` on a field (or `#[cache(unique(tenant_id, email))]` on the struct)
//!   generates a key type such as `UserByEmail(String)` for [`Db::find_by`]. The key → id
//!   mapping is cached and verified against the row on every hit; a key no row has is
//!   negatively cached, and every insert, update or delete clears the old and new key
//!   values on commit, so "not found" never survives the insert of that key.
//! - Per call: [`Db::no_fill`] (read the cache, do not fill), [`Db::refresh`] (always load
//!   and put), [`Db::bypass`] (ignore the cache), or [`Db::read`] with a [`CacheMode`].
//! - [`Db::evict`], [`Db::evict_many`], [`Db::evict_all`], [`Db::evict_everything`].
//! - [`Db::warm_up`] preloads a region from any diesel query, fenced like any fill.
//!
//! ## Observability
//!
//! Loads, commits, discarded buffers, conflicts, rejected fills and removals (with moka's
//! cause: size, expiry, explicit) are `tracing` events under the `diesel_l2` target, at
//! `debug` (removals at `trace`); loads run inside `diesel_l2.load` spans. [`Db::stats`]
//! returns every counter as a [`Stats`] snapshot: serialize it with serde, print it as a
//! table, or export it to a metrics system from a periodic task, for example in the
//! Prometheus text format:
//!
//! ```
//! use std::fmt::Write;
//!
//! fn prometheus(stats: &diesel_l2::Stats) -> String {
//!     let mut out = String::new();
//!     for r in &stats.regions {
//!         for (name, value) in [
//!             ("hits", r.hits),
//!             ("misses", r.misses),
//!             ("loads", r.loads),
//!             ("conflicts", r.conflicts),
//!             ("rejected_stale_fills", r.rejected_stale_fills),
//!             ("evicted_size", r.evicted_size),
//!             ("expired", r.expired),
//!         ] {
//!             writeln!(out, "diesel_l2_{name}_total{{region=\"{}\"}} {value}", r.region).unwrap();
//!         }
//!         writeln!(out, "diesel_l2_entries{{region=\"{}\"}} {}", r.region, r.entries).unwrap();
//!     }
//!     out
//! }
//! # let pool = diesel::r2d2::Pool::builder().max_size(1)
//! #     .build(diesel::r2d2::ConnectionManager::<diesel::sqlite::SqliteConnection>::new(":memory:")).unwrap();
//! # let db = diesel_l2::Db::builder(pool).build().unwrap();
//! assert!(prometheus(&db.stats()).is_empty(), "no regions registered here");
//! ```
//!
//! ## Features
//!
//! - `sqlite` (default): bundled SQLite, nothing to install.
//! - `postgres`: PostgreSQL through the system libpq (`apt-get install libpq-dev`).
//! - `mysql`: MySQL/MariaDB through the system libmysqlclient
//!   (`apt-get install default-libmysqlclient-dev`).
//! - `tokio`: the async front for axum, actix-web and other tokio servers
//!   (`Db::find_async`, `get_async`, `transaction_async`, `retry_async`,
//!   `retry_once_async`, `spawn_blocking`): a hit is answered inline on the worker thread
//!   (no `spawn_blocking`, no SQL), misses and writes run on tokio's blocking pool.
//!   Without it, [`Db::find_cached`] still gives any async runtime the non-blocking hit.
//!
//! `#[derive(Cached)]` generates the SQL of every enabled backend, so a model must map on
//! all of them; disable default features for a PostgreSQL-only build.
//!
//! ## Ids and versions
//!
//! The id is the field named `id` or marked `#[cache(id)]`: integers, `String`,
//! `uuid::Uuid` (PostgreSQL) or any type diesel maps. Ids are supplied by the caller on
//! insert. The version is the field named `version` or marked `#[cache(version)]`, an
//! `i32` or `i64` column.

#![warn(missing_docs)]

mod asynch;
mod config;
mod db;
mod entity;
mod error;
mod hooks;
pub mod inbox;
pub mod invalidation;
mod region;
mod stats;
mod tx;
mod unique;

pub use asynch::CacheLookup;
pub use config::RegionConfig;
pub use db::{CacheMode, Db, DbBuilder, DbPool, Reader, WarmUp};
pub use diesel_l2_derive::Cached;
pub use entity::{CachedEntity, CachedOps, HeapSize};
pub use error::{Error, Result};
pub use inbox::{Operation, OperationLog, Outcome};
pub use invalidation::{ChangeFeed, ListenConfig, ListenerStats};
pub use stats::{RegionStats, Stats};
pub use tx::{RetryPolicy, Tx};
pub use unique::{UniqueKey, UniqueOps};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Test-only pause points for driving interleavings (feature `test-hooks`). Not a
/// stable API: for the project's own tests.
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod testing {
    pub use crate::hooks::{Hook, Point};
}

/// Items used by the code `#[derive(Cached)]` generates. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::config::RegionConfig;
    pub use crate::entity::{
        CachedEntity, CachedOps, HeapSize, IdParser, ParseFallback, ParseViaFromStr,
    };
    pub use crate::unique::{UniqueKey, UniqueKeys, UniqueOps};
    pub use diesel;
    pub use std::time::Duration;
}

/// Emits its input when diesel-l2 was built with the `sqlite` feature.
#[cfg(feature = "sqlite")]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_sqlite { ($($t:tt)*) => { $($t)* }; }
/// Emits its input when diesel-l2 was built with the `sqlite` feature.
#[cfg(not(feature = "sqlite"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_sqlite {
    ($($t:tt)*) => {};
}

/// Emits its input when diesel-l2 was built with the `postgres` feature.
#[cfg(feature = "postgres")]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_postgres { ($($t:tt)*) => { $($t)* }; }
/// Emits its input when diesel-l2 was built with the `postgres` feature.
#[cfg(not(feature = "postgres"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_postgres {
    ($($t:tt)*) => {};
}

/// Emits its input when diesel-l2 was built with the `mysql` feature.
#[cfg(feature = "mysql")]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_mysql { ($($t:tt)*) => { $($t)* }; }
/// Emits its input when diesel-l2 was built with the `mysql` feature.
#[cfg(not(feature = "mysql"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __with_mysql {
    ($($t:tt)*) => {};
}
