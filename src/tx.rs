//! Transactions: versioned writes, the write buffer, savepoints, commit hooks, retry.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use diesel::r2d2::R2D2Connection;

use crate::db::{Db, Inner};
use crate::entity::{CachedEntity, CachedOps, IdArg};
use crate::error::{Error, Result};
use crate::hooks::{self, Point};
use crate::region::{FinalWrite, KeyLock, Region};
use crate::stats::Counters;

/// A transaction in progress, handed to the closure of [`Db::transaction`].
///
/// Reads go to the database through the transaction's connection and see its own writes;
/// they never fill the shared cache (C5). Writes soft-lock their keys (C4) and buffer the
/// cache change, which is applied only after `COMMIT` returned Ok (C1).
pub struct Tx<'a, C: R2D2Connection + 'static> {
    pub(crate) conn: &'a mut C,
    pub(crate) state: &'a mut TxState,
    pub(crate) db: &'a Inner<C>,
}

impl<'a, C: R2D2Connection + 'static> Tx<'a, C> {
    /// The transaction's connection, for plain diesel. Rows of cached tables written this
    /// way must be announced with [`invalidate`](Tx::invalidate).
    ///
    /// On MariaDB/MySQL, once a statement has failed with a deadlock the server has rolled
    /// the whole transaction back and runs later statements in autocommit mode. This
    /// library's own reads and writes are then refused with [`Error::RolledBack`]; plain
    /// SQL run here is not, so end the closure on such an error (return it) rather than
    /// carrying on.
    pub fn conn(&mut self) -> &mut C {
        // Plain SQL may fail and have its error handled by the caller, which can leave the
        // transaction aborted (PostgreSQL) or rolled back (a MariaDB deadlock) unseen.
        self.state.needs_probe = true;
        self.conn
    }

    /// Reads one row from the database inside the transaction (sees its own writes,
    /// never fills the cache: C5). It comes back owned, not as an `Arc`: it is a fresh
    /// read, not a cache entry.
    ///
    /// The row is yours to change and write back: `let mut u = tx.get::<User>(1)?;
    /// u.name = "Ada".into(); tx.update(&u)?;`.
    pub fn find<E: CachedOps<C>>(&mut self, id: impl IdArg<E::Id>) -> Result<Option<E>> {
        self.db.region::<E>()?;
        self.run(|c| E::load_one(c, id.as_id()))
    }

    /// Like [`find`](Tx::find), but a missing row is [`Error::NotFound`].
    pub fn get<E: CachedOps<C>>(&mut self, id: impl IdArg<E::Id>) -> Result<E> {
        self.db.region::<E>()?;
        let id = id.as_id();
        match self.run(|c| E::load_one(c, id))? {
            Some(row) => Ok(row),
            None => Err(Error::NotFound {
                table: E::TABLE,
                id: format!("{id:?}"),
            }),
        }
    }

    /// Reads one row by a `#[cache(unique)]` key inside the transaction: from the
    /// database, seeing the transaction's own writes, never filling a cache (C5).
    ///
    /// ```text
    /// let taken = tx.find_by(UserByEmail("ada@example.com".into()))?.is_some();
    /// ```
    pub fn find_by<K>(&mut self, key: K) -> Result<Option<K::Entity>>
    where
        K: crate::unique::UniqueOps<C>,
        K::Entity: CachedOps<C>,
    {
        self.db.region::<K::Entity>()?;
        self.run(|c| K::load_by(c, &key))
    }

    /// Reads the rows of a `#[cache(index)]` key inside the transaction, ordered by id:
    /// from the database, seeing the transaction's own writes, never filling a cache
    /// (C5). The rows come back owned, like [`find`](Tx::find)'s.
    ///
    /// ```text
    /// let posts: Vec<Post> = tx.find_all_by(PostByUserId(7))?;
    /// ```
    pub fn find_all_by<K>(&mut self, key: K) -> Result<Vec<K::Entity>>
    where
        K: crate::index::IndexOps<C>,
        K::Entity: CachedOps<C>,
    {
        self.db.region::<K::Entity>()?;
        self.run(|c| K::load_all_by(c, &key))
    }

    /// Inserts `row` (its id and version as given) and returns the stored row, which the
    /// cache receives when the transaction commits.
    pub fn insert<E: CachedOps<C>>(&mut self, row: &E) -> Result<E> {
        let slot = self.state.lock::<C, E>(self.db, &row.id())?;
        self.state.touch(slot, row);
        let stored = self.run(|c| E::insert_row(c, row))?;
        self.state.touch(slot, &stored);
        self.state
            .push(slot, PendingWrite::<E>::Put(Arc::new(stored.clone())));
        Ok(stored)
    }

    /// Versioned update (C6): writes every column of `row` where the id matches and the
    /// version is `row`'s, bumping the version in the same statement. Returns the stored
    /// row at the new version.
    ///
    /// Any other version in the database, or no row at all, is [`Error::Conflict`]: the
    /// write is never applied over a version it did not read. A conflict is never taken for
    /// a replay, whatever the row holds: to make a redelivered request safe, run it with an
    /// operation id ([`Db::transaction_once`]), which recognises the replay by its id.
    pub fn update<E: CachedOps<C>>(&mut self, row: &E) -> Result<E> {
        let overflow = || Error::VersionOverflow {
            table: E::TABLE,
            id: format!("{:?}", row.id()),
            // The largest version the field holds: `with_version` refuses the next one.
            max: row.version(),
        };
        let target = row.version().checked_add(1).ok_or_else(overflow)?;
        let next = row.with_version(target).ok_or_else(overflow)?;
        let slot = self.state.lock::<C, E>(self.db, &row.id())?;
        self.state.replaces::<E>(slot, row.version());
        self.state.touch(slot, &next);
        if let Some(stored) = self.run(|c| E::update_row(c, row, &next))? {
            self.state.touch(slot, &stored);
            self.state
                .push(slot, PendingWrite::<E>::Put(Arc::new(stored.clone())));
            tracing::trace!(table = E::TABLE, id = ?row.id(), version = target, "updated");
            return Ok(stored);
        }
        let found = self
            .run(|c| E::load_one(c, &row.id()))?
            .map(|cur| cur.version());
        Err(self.conflict::<E>(row, found))
    }

    /// Versioned delete (C6): deletes the row if it is still at `row`'s version.
    ///
    /// Another version in the database is [`Error::Conflict`] with `found: Some(v)`; a row
    /// that does not exist (never did, or was deleted already) is [`Error::Conflict`] with
    /// `found: None`. A redelivered delete is recognised only by an operation id
    /// ([`Db::transaction_once`]). The cache keeps a versioned tombstone after commit (C3).
    pub fn delete<E: CachedOps<C>>(&mut self, row: &E) -> Result<()> {
        let slot = self.state.lock::<C, E>(self.db, &row.id())?;
        self.state.replaces::<E>(slot, row.version());
        self.state.touch(slot, row);
        if self.run(|c| E::delete_row(c, &row.id(), row.version()))? > 0 {
            let version = row.version().saturating_add(1);
            self.state.push(slot, PendingWrite::<E>::Delete { version });
            return Ok(());
        }
        let found = self
            .run(|c| E::load_one(c, &row.id()))?
            .map(|cur| cur.version());
        Err(self.conflict::<E>(row, found))
    }

    /// Announces that the row `id` of `E` was written through [`conn`](Tx::conn): the key is
    /// soft-locked now and invalidated when the transaction ends, whatever its outcome.
    pub fn invalidate<E: CachedOps<C>>(&mut self, id: impl IdArg<E::Id>) -> Result<()> {
        let slot = self.state.lock::<C, E>(self.db, id.as_id())?;
        self.state.touch_unknown::<E>(slot);
        self.state.push(slot, PendingWrite::<E>::Invalidate);
        Ok(())
    }

    /// Runs `f` in a savepoint, nested to any depth. Its cache changes join the enclosing
    /// transaction's buffer when it succeeds and are dropped when it fails (the keys stay
    /// locked until the transaction ends, then are invalidated).
    ///
    /// `f` returns this crate's [`Result`], so a closure that uses `?` and ends in
    /// `Ok(value)` needs no annotation. For your application's own error type use
    /// [`savepoint_with_error`](Tx::savepoint_with_error).
    pub fn savepoint<T, F>(&mut self, f: F) -> Result<T>
    where
        F: FnOnce(&mut Tx<'_, C>) -> Result<T>,
    {
        self.savepoint_with_error(f)
    }

    /// [`savepoint`](Tx::savepoint) with a closure that returns your application's error
    /// type: anything that converts from this crate's [`Error`] (so `?` works on the
    /// library's calls inside), returned to you as it is, no downcasting.
    pub fn savepoint_with_error<T, E, F>(&mut self, f: F) -> std::result::Result<T, E>
    where
        E: From<Error>,
        F: FnOnce(&mut Tx<'_, C>) -> std::result::Result<T, E>,
    {
        let mark = self.state.writes.len();
        let db = self.db;
        let state = &mut *self.state;
        let mut panicked = None;
        let result = self.conn.transaction::<T, Failure<E>, _>(|conn| {
            let mut sp = Tx {
                conn,
                state: &mut *state,
                db,
            };
            caught(&mut panicked, || f(&mut sp))
        });
        if result.is_err() {
            self.state.writes.truncate(mark);
            // Whatever failed in there may have ended the transaction on the server.
            self.state.needs_probe = true;
        }
        if let Some(payload) = panicked {
            panic::resume_unwind(payload);
        }
        result.map_err(|e| e.into_user())
    }

    /// Runs one of this library's statements on the transaction's connection.
    ///
    /// A failed statement marks the transaction for the probe before COMMIT (the caller may
    /// handle the error and carry on). On MariaDB/MySQL a database error is also checked at
    /// once: a deadlock victim is rolled back whole, even inside a savepoint, and its
    /// connection carries on in autocommit mode, so a write of ours now would commit on its
    /// own, outside the transaction the caller believes it is in. From then on our
    /// statements are refused with [`Error::RolledBack`] instead of being run.
    /// (PostgreSQL needs no such check: it refuses every statement of an aborted
    /// transaction until a savepoint is rolled back to.)
    pub(crate) fn run<T>(&mut self, f: impl FnOnce(&mut C) -> diesel::QueryResult<T>) -> Result<T> {
        if self.state.gone {
            return Err(Error::RolledBack);
        }
        match f(self.conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                self.state.needs_probe = true;
                if matches!(e, diesel::result::Error::DatabaseError(..))
                    && rolled_back_whole(self.conn)
                {
                    tracing::debug!(error = %e, "the database ended the transaction");
                    self.state.gone = true;
                }
                Err(Error::Database(e))
            }
        }
    }

    fn conflict<E: CachedEntity>(&self, row: &E, found: Option<i64>) -> Error {
        self.conflict_on::<E>(&row.id(), row.version(), found)
    }

    /// Counts and reports a version conflict on `id`, written from version `expected`.
    pub(crate) fn conflict_on<E: CachedEntity>(
        &self,
        id: &E::Id,
        expected: i64,
        found: Option<i64>,
    ) -> Error {
        if let Ok(region) = self.db.region::<E>() {
            Counters::bump(&region.counters.conflicts);
        }
        tracing::debug!(table = E::TABLE, id = ?id, expected, ?found, "version conflict");
        Error::Conflict {
            table: E::TABLE,
            id: format!("{id:?}"),
            expected,
            found,
        }
    }
}

/// Runs a transaction closure inside diesel's transaction, turning a panic into an error
/// (so diesel rolls back and the connection stays usable) and keeping its payload for the
/// caller to resume once the rollback is done.
fn caught<T, E>(
    panicked: &mut Option<Box<dyn Any + Send>>,
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, Failure<E>> {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(Failure::User),
        Err(payload) => {
            *panicked = Some(payload);
            Err(Failure::Panicked)
        }
    }
}

/// Why a diesel transaction closure failed.
enum Failure<E> {
    User(E),
    Diesel(diesel::result::Error),
    /// The pre-commit probe found the transaction already rolled back.
    RolledBack,
    /// The library refused to commit (a shared-tier fence that could not be placed).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Library(Error),
    Panicked,
}

impl<E> Failure<E> {
    fn from_probe(e: Error) -> Self {
        match e {
            // PostgreSQL refuses statements in an aborted transaction (SQLSTATE 25P02).
            Error::Database(diesel::result::Error::DatabaseError(_, ref info))
                if info.message().contains("current transaction is aborted") =>
            {
                Failure::RolledBack
            }
            // Anything else (a lost connection, say) keeps its own type.
            Error::Database(d) => Failure::Diesel(d),
            // MariaDB/MySQL: no transaction open any more.
            _ => Failure::RolledBack,
        }
    }
}

/// Checks, before COMMIT, that the database still has this transaction open: PostgreSQL
/// refuses any statement in an aborted transaction (and would turn COMMIT into a silent
/// ROLLBACK); MariaDB/MySQL roll a deadlock victim's whole transaction back and carry on in
/// autocommit mode. SQLite needs no probe: its automatic rollbacks come with errors that
/// also fail COMMIT.
fn probe_still_open<C: R2D2Connection + 'static>(conn: &mut C) -> Result<()> {
    #[cfg(feature = "postgres")]
    if std::any::TypeId::of::<C>() == std::any::TypeId::of::<diesel::pg::PgConnection>() {
        return conn.batch_execute("SELECT 1").map_err(Error::from);
    }
    #[cfg(feature = "mysql")]
    if let Some(my) =
        (conn as &mut dyn std::any::Any).downcast_mut::<diesel::mysql::MysqlConnection>()
    {
        use diesel::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Open {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            open: i64,
        }
        let row: Open =
            diesel::sql_query("SELECT CAST(@@in_transaction AS SIGNED) AS open").get_result(my)?;
        return if row.open == 1 {
            Ok(())
        } else {
            Err(Error::RolledBack)
        };
    }
    let _ = conn;
    Ok(())
}

/// Whether the database has ended the current transaction after an error: true only on
/// MariaDB/MySQL when `@@in_transaction` is 0 (a deadlock victim, or a lock-wait timeout
/// under `innodb_rollback_on_timeout`). A failing check counts as "not ended": the
/// probe before COMMIT looks again.
fn rolled_back_whole<C: R2D2Connection + 'static>(conn: &mut C) -> bool {
    #[cfg(feature = "mysql")]
    if (conn as &mut dyn std::any::Any).is::<diesel::mysql::MysqlConnection>() {
        return matches!(probe_still_open(conn), Err(Error::RolledBack));
    }
    let _ = conn;
    false
}

impl<E> From<diesel::result::Error> for Failure<E> {
    fn from(e: diesel::result::Error) -> Self {
        Failure::Diesel(e)
    }
}

impl<E: From<Error>> Failure<E> {
    fn into_user(self) -> E {
        match self {
            Failure::User(e) => e,
            Failure::Diesel(e) => E::from(Error::Database(e)),
            Failure::RolledBack => E::from(Error::RolledBack),
            Failure::Library(e) => E::from(e),
            // Unreachable in practice: the caller resumes the panic first.
            Failure::Panicked => E::from(Error::Config("transaction closure panicked".into())),
        }
    }
}

/// A pending cache change for one key of type `E`.
pub(crate) enum PendingWrite<E: CachedEntity> {
    Put(Arc<E>),
    Delete { version: i64 },
    Invalidate,
}

/// A key this transaction holds a soft lock on.
trait HeldKey: Send {
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Applies the final pending write (or invalidates when there is none) and unlocks.
    fn commit(&self, last: Option<Box<dyn Any + Send>>);
    /// Unlocks and invalidates without applying.
    fn release(&self);
    /// The key's shared-tier key, when its region is shared (C9).
    #[cfg(feature = "redis")]
    fn shared_key(&self) -> Option<String>;
    /// What the final pending write leaves in the shared tier (empty: nothing).
    #[cfg(feature = "redis")]
    fn shared_entry(&self, last: Option<&(dyn Any + Send)>) -> Vec<u8>;
}

struct Held<E: CachedEntity> {
    region: Arc<dyn crate::region::AnyRegion>,
    id: E::Id,
    lock: KeyLock,
    /// Every content of the row this transaction saw or wrote: their unique-key values
    /// are invalidated when it ends.
    touched: Vec<Arc<E>>,
    /// Written with plain SQL (`Tx::invalidate`): its unique-key values are unknown.
    unknown: bool,
    /// The region's collections were told this transaction writes the key blind (its key
    /// values unknown): they fill no list until it ends.
    blind: bool,
    /// The table's query-cache clock: bumped when the key was locked and again when the
    /// transaction ends, counting it as a writer in between (C10).
    clock: Option<Arc<crate::query::TableClock>>,
}

impl<E: CachedEntity> Held<E> {
    fn region(&self) -> &Region<E> {
        self.region
            .as_any()
            .downcast_ref::<Region<E>>()
            .expect("a held key's region has the key's entity type")
    }
}

impl<E: CachedEntity> Held<E> {
    /// Tells the region's collections, once, that this key's key values are unknown.
    fn go_blind(&mut self) {
        if !self.blind {
            self.blind = true;
            self.region().begin_blind();
        }
    }

    fn end_key_writes(&self) {
        let rows: Vec<&E> = self.touched.iter().map(|r| &**r).collect();
        self.region()
            .end_key_writes(&rows, self.unknown, self.blind);
    }
}

impl<E: CachedEntity> HeldKey for Held<E> {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn commit(&self, last: Option<Box<dyn Any + Send>>) {
        let write = match last.and_then(|b| b.downcast::<PendingWrite<E>>().ok()) {
            Some(w) => match *w {
                PendingWrite::Put(e) => FinalWrite::Put(e),
                PendingWrite::Delete { version } => FinalWrite::Delete { version },
                PendingWrite::Invalidate => FinalWrite::Invalidate,
            },
            None => FinalWrite::Invalidate,
        };
        self.region().commit(&self.id, &self.lock, write);
        self.end_key_writes();
        if let Some(clock) = &self.clock {
            clock.end_write();
        }
    }

    fn release(&self) {
        self.region().release(&self.id);
        self.end_key_writes();
        if let Some(clock) = &self.clock {
            clock.end_write();
        }
    }

    #[cfg(feature = "redis")]
    fn shared_key(&self) -> Option<String> {
        self.region().shared().map(|s| s.write_key(&self.id))
    }

    #[cfg(feature = "redis")]
    fn shared_entry(&self, last: Option<&(dyn Any + Send)>) -> Vec<u8> {
        let Some(shared) = self.region().shared() else {
            return Vec::new();
        };
        match last.and_then(|w| w.downcast_ref::<PendingWrite<E>>()) {
            Some(PendingWrite::Put(e)) => shared.committed_entry(Some(e), None),
            Some(PendingWrite::Delete { version }) => shared.committed_entry(None, Some(*version)),
            Some(PendingWrite::Invalidate) | None => Vec::new(),
        }
    }
}

/// The shared-tier fences a transaction placed before COMMIT (C9); nothing without the
/// `redis` feature.
#[cfg(feature = "redis")]
type PlacedFences = Option<crate::shared::Fences>;
#[cfg(not(feature = "redis"))]
type PlacedFences = ();

/// The write buffer and the soft locks of one transaction.
#[derive(Default)]
pub(crate) struct TxState {
    held: Vec<Box<dyn HeldKey>>,
    /// Set when the database may have aborted or rolled back the transaction without the
    /// closure failing: a statement of ours failed, or plain SQL ran through `Tx::conn`.
    /// Such a transaction is probed before COMMIT.
    needs_probe: bool,
    /// Set when a probe found the transaction already ended by the database: our
    /// statements are refused from then on, and the transaction reports
    /// [`Error::RolledBack`] whatever the closure returns.
    gone: bool,
    /// Per entity type, a `HashMap<E::Id, usize>` from key to index in `held`.
    index: HashMap<TypeId, Box<dyn Any + Send>>,
    /// Pending writes in order: (index in `held`, `PendingWrite<E>`).
    writes: Vec<(usize, Box<dyn Any + Send>)>,
}

impl TxState {
    /// Soft-locks `id` once per transaction; returns its index in `held`.
    pub(crate) fn lock<C: R2D2Connection + 'static, E: CachedEntity>(
        &mut self,
        db: &Inner<C>,
        id: &E::Id,
    ) -> Result<usize> {
        let index = self
            .index
            .entry(TypeId::of::<E>())
            .or_insert_with(|| Box::new(HashMap::<E::Id, usize>::new()))
            .downcast_mut::<HashMap<E::Id, usize>>()
            .expect("index entry has the entity's id type");
        if let Some(&i) = index.get(id) {
            return Ok(i);
        }
        let region = db.region_arc::<E>()?;
        let clock = db.queries.clock(region.sql_table());
        if let Some(clock) = &clock {
            clock.begin_write();
        }
        let (lock, previous) = region
            .as_any()
            .downcast_ref::<Region<E>>()
            .expect("region registered under its entity's TypeId")
            .lock(id);
        let i = self.held.len();
        self.held.push(Box::new(Held::<E> {
            region,
            id: id.clone(),
            lock,
            touched: previous.into_iter().collect(),
            unknown: false,
            blind: false,
            clock,
        }));
        index.insert(id.clone(), i);
        Ok(i)
    }

    fn held_mut<E: CachedEntity>(&mut self, slot: usize) -> &mut Held<E> {
        self.held[slot]
            .as_any_mut()
            .downcast_mut::<Held<E>>()
            .expect("a held slot keeps its entity type")
    }

    /// Records that the transaction writes `row` under the held key `slot`, and drops its
    /// unique-key values from the indexes now (they are dropped again when it ends). Free
    /// for entities without unique keys.
    pub(crate) fn touch<E: CachedEntity>(&mut self, slot: usize, row: &E) {
        let held = self.held_mut::<E>(slot);
        if held.region().has_indexes() {
            held.region().touch_keys(row);
            held.touched.push(Arc::new(row.clone()));
        }
    }

    /// Records that the transaction overwrites or deletes the content the held key `slot`
    /// had at `version`. Collections need that content's key values (the lists that held
    /// the row): when neither the cache (at lock time) nor an earlier write of this
    /// transaction supplied it, they drop every list instead (a counted fallback).
    pub(crate) fn replaces<E: CachedEntity>(&mut self, slot: usize, version: i64) {
        let held = self.held_mut::<E>(slot);
        if held.region().has_collections() && !held.touched.iter().any(|r| r.version() == version) {
            held.go_blind();
        }
    }

    /// Marks the held key `slot` as written with plain SQL.
    pub(crate) fn touch_unknown<E: CachedEntity>(&mut self, slot: usize) {
        let held = self.held_mut::<E>(slot);
        held.unknown = true;
        if held.region().has_indexes() {
            held.go_blind();
        }
    }

    pub(crate) fn push<E: CachedEntity>(&mut self, slot: usize, write: PendingWrite<E>) {
        self.writes.push((slot, Box::new(write)));
    }

    /// Before COMMIT: fences the keys of shared regions this transaction wrote (C9).
    /// `None` when there are none.
    #[cfg(feature = "redis")]
    fn fence_shared(
        &self,
        tier: Option<&Arc<crate::shared::Tier>>,
    ) -> Result<Option<crate::shared::Fences>> {
        let Some(tier) = tier else {
            return Ok(None);
        };
        let keys: Vec<String> = self.held.iter().filter_map(|h| h.shared_key()).collect();
        if keys.is_empty() {
            return Ok(None);
        }
        crate::shared::Fences::place(tier, keys).map(Some)
    }

    /// After `COMMIT` returned Ok: applies each key's last write, unlocks every key. The
    /// shared tier gets the writes first (`fences`), before this process's regions (C9).
    fn apply(&mut self, fences: PlacedFences) {
        #[cfg(not(feature = "redis"))]
        let () = fences;
        let mut last: Vec<Option<Box<dyn Any + Send>>> = self.held.iter().map(|_| None).collect();
        for (slot, write) in self.writes.drain(..) {
            last[slot] = Some(write);
        }
        #[cfg(feature = "redis")]
        if let Some(fences) = fences {
            let entries: Vec<Vec<u8>> = self
                .held
                .iter()
                .zip(&last)
                .filter(|(h, _)| h.shared_key().is_some())
                .map(|(h, w)| h.shared_entry(w.as_deref()))
                .collect();
            fences.settle(&entries);
        }
        let keys = self.held.len();
        for (held, write) in self.held.drain(..).zip(last) {
            held.commit(write);
        }
        self.index.clear();
        tracing::debug!(keys, "transaction committed, cache buffer applied");
    }

    /// After a rollback, an error or a panic: drops the buffer, unlocks and invalidates.
    fn discard(&mut self) {
        self.writes.clear();
        let keys = self.held.len();
        for held in self.held.drain(..) {
            held.release();
        }
        self.index.clear();
        if keys > 0 {
            tracing::debug!(keys, "transaction did not commit, cache buffer discarded");
        }
    }
}

impl Drop for TxState {
    fn drop(&mut self) {
        // Whatever path got here without applying (an unwind included), no lock survives.
        self.discard();
    }
}

/// How [`Db::retry`] re-runs a transaction that failed with a retryable error.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in total, the first one included (at least 1).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time, with full jitter.
    pub base_delay: Duration,
    /// Upper bound of one backoff.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 2 ms base delay, 100 ms cap.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(100),
        }
    }
}

impl RetryPolicy {
    /// A policy with `n` attempts and the default delays.
    pub fn attempts(n: u32) -> Self {
        RetryPolicy {
            max_attempts: n,
            ..Self::default()
        }
    }

    /// Sets the base and maximum backoff.
    #[must_use]
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base_delay = base;
        self.max_delay = max;
        self
    }

    fn delay(&self, failed_attempts: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << failed_attempts.saturating_sub(1).min(20));
        let cap = exp.min(self.max_delay);
        cap.mul_f64(fastrand::f64())
    }
}

impl<C: R2D2Connection + 'static> Db<C> {
    /// Runs `f` in a database transaction. Cache changes are applied after `COMMIT`
    /// returned Ok, in order (C1); when this returns Ok, this process reads the writes (C2).
    ///
    /// An `Err` from `f`, a failing `COMMIT` or a panic rolls back and leaves no trace in
    /// the cache: the touched keys are invalidated. A panic propagates after the rollback,
    /// and the connection goes back to the pool usable.
    ///
    /// `f` returns this crate's [`Result`], so a closure that uses `?` on the library's
    /// calls and ends in `Ok(value)` needs no annotation:
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
    /// # pool.get()?.batch_execute(
    /// #     "CREATE TABLE users (id BIGINT PRIMARY KEY, version BIGINT NOT NULL, email TEXT NOT NULL)")?;
    /// # let db = Db::builder(pool).cache::<User>().build()?;
    /// let (a, b) = db.transaction(|tx| {
    ///     let a = tx.insert(&User { id: 1, version: 1, email: "a@example.com".into() })?;
    ///     let b = tx.insert(&User { id: 2, version: 1, email: "b@example.com".into() })?;
    ///     Ok((a.id, b.id))
    /// })?;
    /// assert_eq!((a, b), (1, 2));
    /// # Ok(()) }
    /// ```
    ///
    /// For a closure that returns your application's own error type, use
    /// [`transaction_with_error`](Db::transaction_with_error).
    pub fn transaction<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut Tx<'_, C>) -> Result<T>,
    {
        self.transaction_with_error(f)
    }

    /// [`transaction`](Db::transaction) with a closure that returns your application's
    /// error type `E`: anything that converts from this crate's [`Error`] (so `?` works on
    /// the library's calls inside the closure). Errors of the closure come back as they
    /// are, no downcasting; the library's own failures (checkout, COMMIT) come back
    /// converted with `E::from`. Same guarantees as `transaction` (C1, C2).
    pub fn transaction_with_error<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        E: From<Error>,
        F: FnOnce(&mut Tx<'_, C>) -> std::result::Result<T, E>,
    {
        let mut conn = self.inner.checkout().map_err(E::from)?;
        let mut state = TxState::default();
        let mut panicked = None;
        #[cfg_attr(not(feature = "redis"), allow(unused_mut, clippy::let_unit_value))]
        let mut fences = PlacedFences::default();
        let raw: &mut C = &mut conn;
        let result = raw.transaction::<T, Failure<E>, _>(|c| {
            let mut tx = Tx {
                conn: c,
                state: &mut state,
                db: &self.inner,
            };
            let v = caught(&mut panicked, || f(&mut tx))?;
            if tx.state.gone {
                return Err(Failure::RolledBack);
            }
            if tx.state.needs_probe && !tx.state.held.is_empty() {
                // Cache writes are pending and an error may have gone unseen: make sure the
                // database has not already rolled this transaction back, or COMMIT would
                // "succeed" and the buffer would publish rows that never committed (C1).
                probe_still_open(tx.conn).map_err(Failure::from_probe)?;
            }
            #[cfg(feature = "redis")]
            {
                fences = tx
                    .state
                    .fence_shared(self.inner.shared.as_ref())
                    .map_err(Failure::Library)?;
            }
            hooks::reach(&self.inner.hook, || Point::BeforeCommit);
            Ok(v)
        });
        match result {
            Ok(v) => {
                hooks::reach(&self.inner.hook, || Point::AfterCommit);
                state.apply(fences);
                hooks::reach(&self.inner.hook, || Point::AfterApply);
                Ok(v)
            }
            Err(e) => {
                // COMMIT failed (or its outcome is unknown) after the fences were placed:
                // take them down, deleting whatever a fill may have put meanwhile.
                #[cfg(feature = "redis")]
                if let Some(fences) = fences {
                    let empty: Vec<Vec<u8>> = vec![Vec::new(); fences.len()];
                    fences.settle(&empty);
                }
                state.discard();
                drop(conn);
                if let Some(payload) = panicked {
                    panic::resume_unwind(payload);
                }
                Err(e.into_user())
            }
        }
    }

    /// Runs `f` in a transaction, re-running it on a retryable error (a version conflict,
    /// a serialization failure, a deadlock) with jittered exponential backoff.
    ///
    /// `f` must re-read what it writes: each attempt is a fresh transaction. It returns
    /// this crate's [`Result`] (a closure ending in `Ok(value)` needs no annotation); when
    /// every attempt fails, the error is [`Error::RetriesExhausted`] around the last
    /// attempt's. For a closure that returns your application's own error type, use
    /// [`retry_with_error`](Db::retry_with_error).
    pub fn retry<T, F>(&self, policy: RetryPolicy, f: F) -> Result<T>
    where
        F: FnMut(&mut Tx<'_, C>) -> Result<T>,
    {
        self.retry_with_error(policy, f)
    }

    /// [`retry`](Db::retry) with a closure that returns your application's error type:
    /// anything that converts from this crate's [`Error`] and says which errors are worth
    /// another attempt ([`RetryableError`]); no downcasting. When every attempt fails, the
    /// error is the last attempt's, passed through [`RetryableError::exhausted`].
    pub fn retry_with_error<T, E, F>(
        &self,
        policy: RetryPolicy,
        mut f: F,
    ) -> std::result::Result<T, E>
    where
        E: RetryableError,
        F: FnMut(&mut Tx<'_, C>) -> std::result::Result<T, E>,
    {
        self.retrying(policy, || self.transaction_with_error(&mut f))
    }

    /// Runs `attempt` until it succeeds, fails with an error that is not retryable, or
    /// `policy` runs out of attempts.
    pub(crate) fn retrying<T, E: RetryableError>(
        &self,
        policy: RetryPolicy,
        mut attempt: impl FnMut() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let max = policy.max_attempts.max(1);
        let mut n = 1;
        loop {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && n < max => {
                    tracing::debug!(attempt = n, "retrying transaction after a retryable error");
                    std::thread::sleep(policy.delay(n));
                    n += 1;
                }
                Err(e) if e.is_retryable() => return Err(e.exhausted(n)),
                Err(e) => return Err(e),
            }
        }
    }
}

/// An application's error type that [`Db::retry_with_error`] (and the other
/// `_with_error` retries) can return: it converts from this crate's [`Error`] (so `?`
/// works on the library's calls inside the closure) and says which errors another attempt
/// may cure.
///
/// ```
/// use diesel_l2::RetryableError;
///
/// #[derive(Debug)]
/// enum AppError { Db(diesel_l2::Error), InsufficientFunds }
///
/// impl From<diesel_l2::Error> for AppError {
///     fn from(e: diesel_l2::Error) -> Self { AppError::Db(e) }
/// }
///
/// impl RetryableError for AppError {
///     fn is_retryable(&self) -> bool {
///         matches!(self, AppError::Db(e) if e.is_retryable())
///     }
/// }
/// ```
pub trait RetryableError: From<Error> {
    /// True when running the transaction again may succeed (a conflict, a deadlock).
    fn is_retryable(&self) -> bool;

    /// The error returned when the attempts ran out with `self` as the last one; by
    /// default `self`.
    fn exhausted(self, attempts: u32) -> Self
    where
        Self: Sized,
    {
        let _ = attempts;
        self
    }
}

impl RetryableError for Error {
    fn is_retryable(&self) -> bool {
        Error::is_retryable(self)
    }

    fn exhausted(self, attempts: u32) -> Self {
        Error::RetriesExhausted {
            attempts,
            last: Box::new(self),
        }
    }
}
