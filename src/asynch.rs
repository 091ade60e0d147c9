//! The async front: hits inline, misses and writes on the blocking pool.
//!
//! The diesel-l2 API is synchronous: a miss or a transaction holds a pooled connection
//! and blocks on the database. In an async handler (axum, actix-web, …) that work belongs
//! on a blocking pool, but a hit is a lock-free moka lookup and an `Arc` clone — sending it
//! to another thread costs more than the hit itself. (The first read of a row a batch
//! loaded also moves it from the batch window to the main cache, under its shard's mutex,
//! held for about a microsecond: never across a query.)
//!
//! - [`Db::find_cached`] (always available) asks the cache only: [`CacheLookup::Hit`],
//!   [`CacheLookup::NegativeHit`] or [`CacheLookup::Miss`], without SQL, without a
//!   connection, without blocking. A key a transaction holds (C4) and every key of a
//!   region whose change listener is disconnected (C7) are misses, as for [`Db::find`].
//! - With the `tokio` feature: [`Db::find_async`] / [`Db::get_async`] answer a hit (or a
//!   cached "no such row") inline on the calling task and send a miss to
//!   `tokio::task::spawn_blocking`, where it is loaded once and filled like any miss of
//!   [`Db::find`] (C3, single flight). [`Db::transaction_async`], [`Db::retry_async`],
//!   [`Db::retry_once_async`] and the general [`Db::spawn_blocking`] run on the blocking
//!   pool; when they return Ok, reads in this process see the writes (C2).
//!
//! ```
//! # #[cfg(feature = "tokio")]
//! # mod with_tokio {
//! use diesel::prelude::*;
//! use diesel::connection::SimpleConnection;
//! use diesel::r2d2::{ConnectionManager, Pool};
//! use diesel::sqlite::SqliteConnection;
//! use diesel_l2::{Cached, CacheLookup, Db};
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
//! # pub fn run() -> Result<(), Box<dyn std::error::Error>> {
//! # let pool = Pool::builder()
//! #     .max_size(1)
//! #     .build(ConnectionManager::<SqliteConnection>::new(":memory:"))?;
//! # pool.get()?.batch_execute(
//! #     "CREATE TABLE users (id BIGINT PRIMARY KEY, version BIGINT NOT NULL, email TEXT NOT NULL)",
//! # )?;
//! let db = Db::builder(pool).cache::<User>().build()?;
//! let rt = tokio::runtime::Builder::new_current_thread().build()?;
//! rt.block_on(async {
//!     // A write runs on the blocking pool; the cache has it once this returns (C2).
//!     db.transaction_async(|tx| tx.insert(&User { id: 1, version: 1, email: "ada@example.com".into() }))
//!         .await?;
//!     // A hit: answered on this task, no SQL, no thread hop.
//!     let ada = db.find_async::<User>(1).await?.expect("inserted");
//!     assert_eq!(ada.email, "ada@example.com");
//!     // A miss (no user 2): loaded once on the blocking pool, then cached as absent.
//!     assert!(db.find_async::<User>(2).await?.is_none());
//!     assert!(matches!(db.find_cached::<User>(&2)?, CacheLookup::NegativeHit));
//!     Ok::<_, diesel_l2::Error>(())
//! })?;
//! # Ok(()) }
//! # }
//! # fn main() {
//! #     #[cfg(feature = "tokio")]
//! #     with_tokio::run().unwrap();
//! # }
//! ```

use std::sync::Arc;

use diesel::r2d2::R2D2Connection;

use crate::db::Db;
use crate::entity::{CachedEntity, IdArg};
use crate::error::Result;
use crate::region::Lookup;

/// What the cache alone answers for one id: [`Db::find_cached`].
#[must_use = "a miss has to be loaded: `Db::find_async`, or `Db::find` on a blocking pool"]
pub enum CacheLookup<E> {
    /// The cached row.
    Hit(Arc<E>),
    /// A cached "no such row" (negative caching, or a delete this process committed).
    NegativeHit,
    /// Nothing the cache may answer with: not cached, held by a transaction (C4), or the
    /// region is not trusted (its change listener is disconnected, C7). Load it from the
    /// database.
    Miss,
}

impl<E> CacheLookup<E> {
    /// The answer when the cache had one: `Some(Some(row))` for a hit, `Some(None)` for a
    /// negative hit, `None` for a miss.
    pub fn answer(self) -> Option<Option<Arc<E>>> {
        match self {
            CacheLookup::Hit(e) => Some(Some(e)),
            CacheLookup::NegativeHit => Some(None),
            CacheLookup::Miss => None,
        }
    }

    /// True for [`CacheLookup::Miss`].
    pub fn is_miss(&self) -> bool {
        matches!(self, CacheLookup::Miss)
    }
}

impl<E> Clone for CacheLookup<E> {
    fn clone(&self) -> Self {
        match self {
            CacheLookup::Hit(e) => CacheLookup::Hit(Arc::clone(e)),
            CacheLookup::NegativeHit => CacheLookup::NegativeHit,
            CacheLookup::Miss => CacheLookup::Miss,
        }
    }
}

impl<E: std::fmt::Debug> std::fmt::Debug for CacheLookup<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheLookup::Hit(e) => f.debug_tuple("Hit").field(e).finish(),
            CacheLookup::NegativeHit => f.write_str("NegativeHit"),
            CacheLookup::Miss => f.write_str("Miss"),
        }
    }
}

impl<C: R2D2Connection + 'static> Db<C> {
    /// Asks the cache only, never the database: a hit, a cached "no such row", or a miss.
    /// Runs no SQL, takes no connection, never blocks (one lock-free lookup and an `Arc`
    /// clone), so async code may call it on its worker thread.
    ///
    /// Answers exactly as [`find`](Db::find) would without loading: a key held by a
    /// transaction (C4) and any key of an untrusted region (C7) are misses. Hits and
    /// negative hits are counted as by `find`; a miss is counted by the load that follows
    /// ([`find_async`](Db::find_async), or `find` on a blocking pool), not here.
    #[inline]
    pub fn find_cached<E: CachedEntity>(&self, id: impl IdArg<E::Id>) -> Result<CacheLookup<E>> {
        Ok(match self.inner.region::<E>()?.lookup(id.as_id()) {
            Lookup::Hit(e) => CacheLookup::Hit(e),
            Lookup::NegativeHit => CacheLookup::NegativeHit,
            Lookup::Miss => CacheLookup::Miss,
        })
    }
}

#[cfg(feature = "tokio")]
mod on_tokio {
    use std::sync::Arc;

    use serde::de::DeserializeOwned;
    use serde::Serialize;

    use diesel::r2d2::R2D2Connection;

    use crate::db::Db;
    use crate::entity::{CachedOps, IdArg};
    use crate::error::{Error, Result};
    use crate::inbox::{Operation, OperationLog, Outcome};
    use crate::index::{IndexOps, List};
    use crate::region::{FillMode, Lookup};
    use crate::tx::{RetryPolicy, RetryableError, Tx};
    use crate::unique::UniqueOps;

    /// Compile-time check: `find_async`'s future is `Send`, as multi-threaded runtimes
    /// (axum handlers) need. Never called.
    #[allow(dead_code)]
    fn find_async_is_send<C: R2D2Connection + 'static, E: CachedOps<C>>(
        db: &Db<C>,
        id: E::Id,
    ) -> impl Send + '_ {
        db.find_async::<E>(id)
    }

    impl<C: R2D2Connection + 'static> Db<C> {
        /// [`find`](Db::find) for async code (feature `tokio`): a hit or a cached "no
        /// such row" is answered inline, on the calling task, without SQL and without
        /// leaving the worker thread; a miss is loaded on tokio's blocking pool
        /// (`spawn_blocking`), once for concurrent misses of the key, and fills the cache
        /// like any `find` (C3, C4).
        ///
        /// A miss needs a tokio runtime: outside one it is [`Error::AsyncRuntime`] (a hit
        /// needs none).
        pub async fn find_async<E: CachedOps<C>>(
            &self,
            id: impl IdArg<E::Id>,
        ) -> Result<Option<Arc<E>>> {
            // The lookup's borrow of the region ends before any await.
            let lookup = self.inner.region::<E>()?.lookup(id.as_id());
            match lookup {
                Lookup::Hit(e) => Ok(Some(e)),
                Lookup::NegativeHit => Ok(None),
                Lookup::Miss => {
                    let id = id.into_id();
                    self.spawn_blocking(move |db| {
                        let region = db.inner.region::<E>()?;
                        db.load_one(region, id, FillMode::Fill)
                    })
                    .await?
                }
            }
        }

        /// [`find_by`](Db::find_by) for async code (feature `tokio`): a cached key whose
        /// row is cached (or a cached "no row has this key") is answered inline, without
        /// SQL and without leaving the worker thread; anything else runs `find_by` on
        /// tokio's blocking pool, with the same fences (C3, C4, C5 for keys).
        ///
        /// ```no_run
        /// # #[cfg(feature = "tokio")]
        /// # async fn run(db: diesel_l2::Db<diesel::sqlite::SqliteConnection>) -> diesel_l2::Result<()> {
        /// # use diesel::prelude::*;
        /// # diesel::table! { users (id) { id -> BigInt, version -> BigInt, email -> Text } }
        /// # #[derive(Queryable, Selectable, Clone, diesel_l2::Cached)]
        /// # #[diesel(table_name = users)]
        /// # struct User { id: i64, version: i64, #[cache(unique)] email: String }
        /// let ada = db.find_by_async(UserByEmail("ada@example.com".into())).await?;
        /// # let _ = ada; Ok(()) }
        /// ```
        pub async fn find_by_async<K>(&self, key: K) -> Result<Option<Arc<K::Entity>>>
        where
            K: UniqueOps<C> + Send + 'static,
            K::Entity: CachedOps<C>,
        {
            if let Some(answer) = self.find_by_cached(&key)? {
                return Ok(answer);
            }
            self.spawn_blocking(move |db| db.find_by(key)).await?
        }

        /// [`find_all_by`](Db::find_all_by) for async code (feature `tokio`): a cached list
        /// is answered inline, without SQL and without leaving the worker thread; a miss
        /// runs `find_all_by` on tokio's blocking pool, with the same fences (C10).
        ///
        /// ```no_run
        /// # #[cfg(feature = "tokio")]
        /// # async fn run(db: diesel_l2::Db<diesel::sqlite::SqliteConnection>) -> diesel_l2::Result<()> {
        /// # use diesel::prelude::*;
        /// # diesel::table! { posts (id) { id -> BigInt, version -> BigInt, user_id -> BigInt } }
        /// # #[derive(Queryable, Selectable, Clone, diesel_l2::Cached)]
        /// # #[diesel(table_name = posts)]
        /// # struct Post { id: i64, version: i64, #[cache(index)] user_id: i64 }
        /// let posts = db.find_all_by_async(PostByUserId(7)).await?;
        /// # let _ = posts; Ok(()) }
        /// ```
        pub async fn find_all_by_async<K>(&self, key: K) -> Result<List<K::Entity>>
        where
            K: IndexOps<C> + Send + 'static,
            K::Entity: CachedOps<C>,
        {
            if let Some(list) = self.find_all_by_cached(&key)? {
                return Ok(list);
            }
            self.spawn_blocking(move |db| db.find_all_by(key)).await?
        }

        /// Like [`find_async`](Db::find_async), but a missing row is [`Error::NotFound`].
        pub async fn get_async<E: CachedOps<C>>(&self, id: impl IdArg<E::Id>) -> Result<Arc<E>> {
            let id = id.into_id();
            let missing = format!("{id:?}");
            self.find_async::<E>(id).await?.ok_or(Error::NotFound {
                table: E::TABLE,
                id: missing,
            })
        }

        /// Runs `f(&db)` on tokio's blocking pool (feature `tokio`) and waits for it
        /// without blocking the calling task: for any synchronous diesel-l2 call from
        /// async code (`find_many`, `find_by`, a `Reader`, `warm_up`, …).
        ///
        /// Fails with [`Error::AsyncRuntime`] outside a tokio runtime, or when the runtime
        /// shut down before `f` started (then `f` did not run). A panic in `f` is resumed
        /// in the caller, as the synchronous API would propagate it.
        pub async fn spawn_blocking<T, F>(&self, f: F) -> Result<T>
        where
            T: Send + 'static,
            F: FnOnce(&Db<C>) -> T + Send + 'static,
        {
            let handle =
                tokio::runtime::Handle::try_current().map_err(|_| Error::AsyncRuntime {
                    reason: "no tokio runtime on this thread; call the async API from inside one \
                         (#[tokio::main], Runtime::block_on) or use the synchronous API",
                })?;
            let db = self.clone();
            match handle.spawn_blocking(move || f(&db)).await {
                Ok(v) => Ok(v),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => Err(Error::AsyncRuntime {
                    reason: "the tokio runtime shut down before the work ran on its blocking \
                             pool; nothing was done",
                }),
            }
        }

        /// [`transaction`](Db::transaction) on tokio's blocking pool (feature `tokio`):
        /// the same guarantees (C1, C2: once this returns Ok, reads in this process,
        /// [`find_async`](Db::find_async) included, see the writes).
        ///
        /// `f` returns this crate's [`Result`]; for a closure that returns your
        /// application's own error type, use
        /// [`transaction_async_with_error`](Db::transaction_async_with_error).
        pub async fn transaction_async<T, F>(&self, f: F) -> Result<T>
        where
            T: Send + 'static,
            F: FnOnce(&mut Tx<'_, C>) -> Result<T> + Send + 'static,
        {
            self.transaction_async_with_error(f).await
        }

        /// [`transaction_async`](Db::transaction_async) with a closure that returns your
        /// application's error type: anything that converts from this crate's [`Error`],
        /// returned as it is (no downcasting).
        pub async fn transaction_async_with_error<T, E, F>(&self, f: F) -> std::result::Result<T, E>
        where
            T: Send + 'static,
            E: From<Error> + Send + 'static,
            F: FnOnce(&mut Tx<'_, C>) -> std::result::Result<T, E> + Send + 'static,
        {
            self.spawn_blocking(move |db| db.transaction_with_error(f))
                .await
                .map_err(E::from)?
        }

        /// [`retry`](Db::retry) on tokio's blocking pool (feature `tokio`); the backoff
        /// between attempts sleeps there too, never on the calling task.
        ///
        /// `f` returns this crate's [`Result`]; for a closure that returns your
        /// application's own error type, use
        /// [`retry_async_with_error`](Db::retry_async_with_error).
        pub async fn retry_async<T, F>(&self, policy: RetryPolicy, f: F) -> Result<T>
        where
            T: Send + 'static,
            F: FnMut(&mut Tx<'_, C>) -> Result<T> + Send + 'static,
        {
            self.retry_async_with_error(policy, f).await
        }

        /// [`retry_async`](Db::retry_async) with a closure that returns your application's
        /// error type: anything that converts from this crate's [`Error`] and says which
        /// errors are worth another attempt ([`RetryableError`]); no downcasting.
        pub async fn retry_async_with_error<T, E, F>(
            &self,
            policy: RetryPolicy,
            f: F,
        ) -> std::result::Result<T, E>
        where
            T: Send + 'static,
            E: RetryableError + Send + 'static,
            F: FnMut(&mut Tx<'_, C>) -> std::result::Result<T, E> + Send + 'static,
        {
            self.spawn_blocking(move |db| db.retry_with_error(policy, f))
                .await
                .map_err(E::from)?
        }
    }

    impl<C: OperationLog> Db<C> {
        /// [`retry_once`](Db::retry_once) on tokio's blocking pool (feature `tokio`):
        /// exactly once per operation id (C6).
        ///
        /// `f` returns this crate's [`Result`]; for a closure that returns your
        /// application's own error type, use
        /// [`retry_once_async_with_error`](Db::retry_once_async_with_error).
        pub async fn retry_once_async<T, F>(
            &self,
            policy: RetryPolicy,
            op: impl Into<Operation>,
            f: F,
        ) -> Result<Outcome<T>>
        where
            T: Serialize + DeserializeOwned + Send + 'static,
            F: FnMut(&mut Tx<'_, C>) -> Result<T> + Send + 'static,
        {
            self.retry_once_async_with_error(policy, op, f).await
        }

        /// [`retry_once_async`](Db::retry_once_async) with a closure that returns your
        /// application's error type: anything that converts from this crate's [`Error`] and
        /// says which errors are worth another attempt ([`RetryableError`]); no downcasting.
        pub async fn retry_once_async_with_error<T, E, F>(
            &self,
            policy: RetryPolicy,
            op: impl Into<Operation>,
            f: F,
        ) -> std::result::Result<Outcome<T>, E>
        where
            T: Serialize + DeserializeOwned + Send + 'static,
            E: RetryableError + Send + 'static,
            F: FnMut(&mut Tx<'_, C>) -> std::result::Result<T, E> + Send + 'static,
        {
            let op = op.into();
            self.spawn_blocking(move |db| db.retry_once_with_error(policy, op, f))
                .await
                .map_err(E::from)?
        }
    }
}
