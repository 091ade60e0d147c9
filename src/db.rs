//! `Db` and its builder: the pool, the regions, reads outside transactions.

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use diesel::r2d2::{ConnectionManager, Pool, PooledConnection, R2D2Connection};

use crate::config::{KeyCompare, RegionConfig};
use crate::entity::{CachedEntity, CachedOps, IdArg};
use crate::error::{Error, Result};
use crate::hooks::{self, Hook, Point};
use crate::inbox::Inbox;
use crate::index::{IndexKey, IndexOps, List, ListBegin};
use crate::invalidation::{ChangeFeed, ListenConfig, Listener};
use crate::query::{QueryCache, QueryCacheConfig};
use crate::region::{AnyRegion, BatchLoad, FillMode, Lookup, Region};
use crate::stats::{Counters, RegionStats, Stats};
use crate::unique::{IndexSlot, UniqueOps};

/// The r2d2 pool type `Db` is built from.
pub type DbPool<C> = Pool<ConnectionManager<C>>;

/// Largest number of ids one `find_many` query carries; longer lists run one query per
/// chunk (SQLite and MySQL cap the number of bound parameters).
pub(crate) const MAX_IDS_PER_QUERY: usize = 10_000;

/// A pool of diesel connections with a second-level cache in front of it.
///
/// Cheap to clone: clones share the pool and the regions. See the crate docs for the
/// consistency contract.
pub struct Db<C: R2D2Connection + 'static> {
    pub(crate) inner: Arc<Inner<C>>,
}

impl<C: R2D2Connection + 'static> Clone for Db<C> {
    fn clone(&self) -> Self {
        Db {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C: R2D2Connection + 'static> fmt::Debug for Db<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field(
                "regions",
                &self
                    .inner
                    .order
                    .iter()
                    .map(|r| r.name())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner<C: R2D2Connection + 'static> {
    pub(crate) pool: DbPool<C>,
    pub(crate) hook: Option<Hook>,
    regions: HashMap<TypeId, Arc<dyn AnyRegion>, TypeIdHasher>,
    order: Vec<Arc<dyn AnyRegion>>,
    /// The cross-process change listener; dropped (stopped and joined) with the `Db`.
    listener: Option<Listener>,
    /// Operation ids (`transaction_once`): retention and pruning state.
    pub(crate) inbox: Inbox,
    /// Cached query results and the per-table clocks that fence them (C10).
    pub(crate) queries: Arc<QueryCache>,
    /// The shared tier (C9), when the `Db` has one.
    #[cfg(feature = "redis")]
    pub(crate) shared: Option<Arc<crate::shared::Tier>>,
}

impl<C: R2D2Connection + 'static> Inner<C> {
    #[inline]
    pub(crate) fn region<E: CachedEntity>(&self) -> Result<&Region<E>> {
        self.regions
            .get(&TypeId::of::<E>())
            .and_then(|r| r.as_any().downcast_ref::<Region<E>>())
            .ok_or_else(|| Error::UnknownEntity {
                type_name: std::any::type_name::<E>(),
            })
    }

    pub(crate) fn region_arc<E: CachedEntity>(&self) -> Result<Arc<dyn AnyRegion>> {
        self.regions
            .get(&TypeId::of::<E>())
            .cloned()
            .ok_or_else(|| Error::UnknownEntity {
                type_name: std::any::type_name::<E>(),
            })
    }

    pub(crate) fn checkout(&self) -> Result<PooledConnection<ConnectionManager<C>>> {
        self.pool.get().map_err(|source| Error::Pool {
            timeout: self.pool.connection_timeout(),
            source,
        })
    }
}

/// Hashes `TypeId`s, which are already uniformly distributed hashes, without SipHash: the
/// region lookup is on the hit path.
#[derive(Clone, Copy, Default)]
struct TypeIdHasher;

impl std::hash::BuildHasher for TypeIdHasher {
    type Hasher = FoldHasher;
    fn build_hasher(&self) -> FoldHasher {
        FoldHasher(0)
    }
}

/// Folds whatever `TypeId::hash` writes into one `u64`.
struct FoldHasher(u64);

impl std::hash::Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_ne_bytes(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Registers cached entities and settings, then [`build`](DbBuilder::build)s a [`Db`].
#[must_use = "a builder does nothing until `build()` is called"]
pub struct DbBuilder<C: R2D2Connection + 'static> {
    pool: DbPool<C>,
    entries: Vec<Registration>,
    hook: Option<Hook>,
    listen: Option<(ListenConfig, StartListener)>,
    operation_retention: Duration,
    query_cache: QueryCacheConfig,
    #[cfg(feature = "redis")]
    shared_tier: Option<crate::shared::SharedConfig>,
    /// `shared::<E>()` (Some) and `local_only::<E>()` (None), by entity type.
    #[cfg(feature = "redis")]
    shared_overrides: Vec<(TypeId, &'static str, Option<MakeShared>)>,
}

/// Makes a region's view of the shared tier, given the tier and the region's name; boxed
/// `SharedRegion<E>`.
#[cfg(feature = "redis")]
type MakeShared = Box<dyn FnOnce(&Arc<crate::shared::Tier>, &str) -> Box<dyn std::any::Any> + Send>;

#[cfg(feature = "redis")]
fn make_shared<E: CachedEntity>(codec: crate::shared::SharedCodec<E>) -> MakeShared {
    Box::new(move |tier, name| {
        Box::new(crate::shared::SharedRegion::new(
            Arc::clone(tier),
            codec,
            name,
        ))
    })
}

type StartListener = fn(ListenConfig, &[Arc<dyn AnyRegion>], Arc<QueryCache>) -> Result<Listener>;

struct Registration {
    type_id: TypeId,
    type_name: &'static str,
    config: RegionConfig,
    /// The SQL name of the entity's table.
    sql_table: String,
    make: MakeRegion,
    /// `#[cache(shared)]`: how to put the shared tier behind the region.
    #[cfg(feature = "redis")]
    shared: Option<MakeShared>,
}

/// Makes an entity's region: its settings, the test hook, the SQL table name, and its
/// boxed `SharedRegion<E>` when it is shared.
type MakeRegion =
    fn(RegionConfig, Option<Hook>, &str, Option<Box<dyn std::any::Any>>) -> Arc<dyn AnyRegion>;

/// `shared`: a boxed `SharedRegion<E>` (feature `redis`), or `None`.
fn make_region<E: CachedEntity>(
    config: RegionConfig,
    hook: Option<Hook>,
    sql_table: &str,
    shared: Option<Box<dyn std::any::Any>>,
) -> Arc<dyn AnyRegion> {
    let region = Region::<E>::with_hook(config, hook).with_sql_table(sql_table);
    #[cfg(feature = "redis")]
    let region = match shared.and_then(|s| s.downcast::<crate::shared::SharedRegion<E>>().ok()) {
        Some(s) => region.with_shared(*s),
        None => region,
    };
    #[cfg(not(feature = "redis"))]
    let _ = shared;
    Arc::new(region)
}

impl<C: R2D2Connection + 'static> DbBuilder<C> {
    /// Caches `E` with the settings of its `#[cache(...)]` attributes.
    pub fn cache<E: CachedOps<C>>(self) -> Self {
        self.cache_with::<E>(|c| c)
    }

    /// Caches `E` with settings changed at run time, for example from configuration:
    /// `.cache_with::<User>(|c| c.ttl(Duration::from_secs(60)).max_entries(1_000))`.
    pub fn cache_with<E: CachedOps<C>>(
        mut self,
        configure: impl FnOnce(RegionConfig) -> RegionConfig,
    ) -> Self {
        self.entries.push(Registration {
            type_id: TypeId::of::<E>(),
            type_name: std::any::type_name::<E>(),
            config: configure(E::cache_config()),
            sql_table: E::sql_table(),
            make: make_region::<E>,
            #[cfg(feature = "redis")]
            shared: E::shared_codec().map(make_shared::<E>),
        });
        self
    }

    /// Gives the `Db` the shared tier (feature `redis`): a Redis cache behind the local
    /// regions of `#[cache(shared)]` entities (and of those opted in with
    /// [`shared`](DbBuilder::shared)), fenced so that no instance reads an old row from it
    /// (C9; see [`crate::shared`]). `build()` does not wait for Redis: while it cannot be
    /// reached, reads go to the database.
    #[cfg(feature = "redis")]
    pub fn shared_tier(mut self, config: crate::shared::SharedConfig) -> Self {
        self.shared_tier = Some(config);
        self
    }

    /// Keeps `E` in the shared tier too, as `#[cache(shared)]` does (for an entity whose
    /// derive you do not control, or from configuration). `E` must be cached
    /// ([`cache`](DbBuilder::cache)), in any order.
    #[cfg(feature = "redis")]
    pub fn shared<E>(mut self) -> Self
    where
        E: CachedEntity + serde::Serialize + serde::de::DeserializeOwned,
    {
        let codec = crate::shared::SharedCodec::<E>::new(E::SHAPE);
        self.shared_overrides.push((
            TypeId::of::<E>(),
            std::any::type_name::<E>(),
            Some(make_shared::<E>(codec)),
        ));
        self
    }

    /// Keeps `E` out of the shared tier although it is `#[cache(shared)]`.
    #[cfg(feature = "redis")]
    pub fn local_only<E: CachedEntity>(mut self) -> Self {
        self.shared_overrides
            .push((TypeId::of::<E>(), std::any::type_name::<E>(), None));
        self
    }

    /// Installs a test-only pause-point callback (feature `test-hooks`; not a stable API).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn test_hook(mut self, hook: crate::hooks::Hook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Invalidates entries when other processes (or any SQL client) commit changes to the
    /// cached tables (C7): PostgreSQL through `LISTEN`, MariaDB/MySQL and SQLite by polling
    /// the change table. Install the triggers first (see [`crate::invalidation`]).
    ///
    /// The listener has its own connection and thread, stopped when the last clone of the
    /// `Db` is dropped. `build()` waits up to `connect_timeout` for it to connect; until it
    /// is connected, and whenever it loses its connection, the regions are not served from
    /// memory (reads go to the database) and are cleared on reconnection.
    pub fn listen(mut self, config: ListenConfig) -> Self
    where
        C: ChangeFeed,
    {
        self.listen = Some((config, Listener::start::<C>));
        self
    }

    /// How long recorded operation ids ([`Db::transaction_once`]) are kept: a delivery of
    /// an id later than this runs again. 24 hours by default; keep it longer than your
    /// longest redelivery window (a queue's maximum redelivery delay, a client's retry
    /// horizon).
    pub fn operation_retention(mut self, retention: Duration) -> Self {
        self.operation_retention = retention;
        self
    }

    /// The bounds of the query cache ([`Db::query`]): 10,000 results without expiry by
    /// default.
    pub fn query_cache(mut self, config: QueryCacheConfig) -> Self {
        self.query_cache = config;
        self
    }

    /// Validates every region's settings and builds the `Db`.
    ///
    /// Fails with [`Error::Config`] on a zero capacity, a zero duration, no bound at all,
    /// an empty or duplicate region name, an entity registered twice, two entity types
    /// of one SQL table, or (with [`listen`](DbBuilder::listen)) a cached table without
    /// the change feed at the current payload version.
    pub fn build(self) -> Result<Db<C>> {
        if self.operation_retention.is_zero() {
            return Err(Error::Config(
                "operation_retention is zero: recorded operation ids would be pruned at once and \
                 every redelivery would run again; keep them longer than your redelivery window"
                    .into(),
            ));
        }
        let mut regions = HashMap::with_hasher(TypeIdHasher);
        let mut order = Vec::new();
        let mut names = HashMap::new();
        let mut tables: HashMap<String, &'static str> = HashMap::new();
        #[cfg(feature = "redis")]
        let tier = self
            .shared_tier
            .map(crate::shared::Tier::connect)
            .transpose()?;
        #[cfg(feature = "redis")]
        let mut overrides = self.shared_overrides;
        #[cfg(feature = "redis")]
        if let Some((_, name, _)) = overrides
            .iter()
            .find(|(t, _, _)| !self.entries.iter().any(|r| r.type_id == *t))
        {
            return Err(Error::Config(format!(
                "`shared::<{name}>()` or `local_only::<{name}>()` names an entity that is not \
                 cached: add `.cache::<{name}>()`"
            )));
        }
        #[cfg(feature = "redis")]
        let mut any_shared = false;
        for reg in self.entries {
            validate(&reg.config, reg.type_name)?;
            if let Some(other) = tables.insert(reg.sql_table.clone(), reg.type_name) {
                if other != reg.type_name {
                    return Err(Error::Config(format!(
                        "`{other}` and `{}` are both cached and both map to SQL table `{}`: a write \
                         through one would leave the other's cached rows stale (C7). Cache one entity \
                         type per table (read the other shape with plain diesel, or derive it from \
                         the cached one)",
                        reg.type_name, reg.sql_table
                    )));
                }
            }
            if let Some(other) = names.insert(reg.config.name.clone(), reg.type_name) {
                return Err(Error::Config(if other == reg.type_name {
                    format!(
                        "`{}` is registered twice; call `.cache::<{}>()` once",
                        reg.type_name, reg.type_name
                    )
                } else {
                    format!(
                        "region `{}` is used by both `{other}` and `{}`; give one of them another name with #[cache(region = \"...\")] or `cache_with`",
                        reg.config.name, reg.type_name
                    )
                }));
            }
            if regions.contains_key(&reg.type_id) {
                return Err(Error::Config(format!(
                    "`{}` is registered twice; call `.cache::<{}>()` once",
                    reg.type_name, reg.type_name
                )));
            }
            #[cfg(feature = "redis")]
            let shared = {
                let mut choice = reg.shared;
                while let Some(i) = overrides.iter().position(|(t, _, _)| *t == reg.type_id) {
                    choice = overrides.remove(i).2;
                }
                match (&tier, choice) {
                    (Some(tier), Some(make)) => {
                        any_shared = true;
                        Some(make(tier, &reg.config.name))
                    }
                    (None, Some(_)) => {
                        tracing::warn!(
                            entity = reg.type_name,
                            "entity is marked shared but the Db has no shared tier \
                             (DbBuilder::shared_tier): it is cached locally only"
                        );
                        None
                    }
                    (_, None) => None,
                }
            };
            #[cfg(not(feature = "redis"))]
            let shared = None;
            let region = (reg.make)(reg.config, self.hook.clone(), &reg.sql_table, shared);
            order.push(Arc::clone(&region));
            regions.insert(reg.type_id, region);
        }
        #[cfg(feature = "redis")]
        if tier.is_some() && !any_shared {
            return Err(Error::Config(
                "a shared tier was given but no cached entity is shared: mark one \
                 `#[cache(shared)]` or call `.shared::<E>()`"
                    .into(),
            ));
        }
        self.query_cache.validate()?;
        let queries = Arc::new(QueryCache::new(
            &self.query_cache,
            order.iter().map(|r| r.sql_table().to_string()),
        ));
        let listener = match self.listen {
            Some((config, start)) => Some(start(config, &order, Arc::clone(&queries))?),
            None => None,
        };
        Ok(Db {
            inner: Arc::new(Inner {
                listener,
                inbox: Inbox::new(self.operation_retention),
                queries,
                pool: self.pool,
                hook: self.hook,
                regions,
                order,
                #[cfg(feature = "redis")]
                shared: tier,
            }),
        })
    }
}

fn validate(c: &RegionConfig, type_name: &str) -> Result<()> {
    let fail = |what: String| {
        Err(Error::Config(format!(
            "region `{}` ({type_name}): {what}",
            c.name
        )))
    };
    if c.name.trim().is_empty() {
        return fail("the region name is empty; name it with #[cache(region = \"...\")]".into());
    }
    let zero = |d: Option<Duration>| d.is_some_and(|d| d.is_zero());
    if zero(c.ttl) {
        return fail("ttl is zero; give a positive ttl, or None for no expiry".into());
    }
    if zero(c.tti) {
        return fail("tti is zero; give a positive tti, or None for no idle expiry".into());
    }
    if zero(c.negative_ttl) {
        return fail(
            "negative_ttl is zero; give a positive duration, or None to turn negative caching off"
                .into(),
        );
    }
    if let (Some(n @ 1..), Some(bound)) = (c.batch_window, c.max_entries.or(c.max_bytes)) {
        if n >= bound {
            return fail(format!(
                "batch_window ({n}) is not smaller than the bound ({bound}): its room is taken from the bound; make it smaller, or 0 for no window"
            ));
        }
        if c.ttl.is_some() || c.tti.is_some() {
            return fail(format!(
                "batch_window ({n}) is set with a ttl or tti: a row's lifetime would start again when it leaves the window; drop one of them (regions with a ttl have no window by default)"
            ));
        }
    }
    match (c.max_entries, c.max_bytes) {
        (Some(0), _) => fail("max_entries is 0; a region needs room for at least one entry".into()),
        (_, Some(0)) => fail("max_bytes is 0; give a byte budget of at least a few KiB".into()),
        (None, None) => fail("no bound: set max_entries or max_bytes".into()),
        (Some(_), Some(_)) => fail("both max_entries and max_bytes are set; choose one".into()),
        _ => Ok(()),
    }
}

impl<C: R2D2Connection + 'static> Db<C> {
    /// Starts a builder over an r2d2 pool of diesel connections.
    pub fn builder(pool: DbPool<C>) -> DbBuilder<C> {
        DbBuilder {
            pool,
            entries: Vec::new(),
            hook: None,
            listen: None,
            operation_retention: crate::inbox::DEFAULT_RETENTION,
            query_cache: QueryCacheConfig::default(),
            #[cfg(feature = "redis")]
            shared_tier: None,
            #[cfg(feature = "redis")]
            shared_overrides: Vec::new(),
        }
    }

    /// The pool, for work that does not go through the cache.
    pub fn pool(&self) -> &DbPool<C> {
        &self.inner.pool
    }

    /// Reads one row through the cache: a hit runs no SQL; concurrent misses of one key
    /// run one query; a miss fills the cache unless a write raced with it (C3, C4).
    /// Absent rows are remembered for the region's `negative_ttl`.
    #[inline]
    pub fn find<E: CachedOps<C>>(&self, id: impl IdArg<E::Id>) -> Result<Option<Arc<E>>> {
        let region = self.inner.region::<E>()?;
        match region.lookup(id.as_id()) {
            Lookup::Hit(e) => Ok(Some(e)),
            Lookup::NegativeHit => Ok(None),
            Lookup::Miss => self.load_one(region, id.into_id(), FillMode::Fill),
        }
    }

    /// Like [`find`](Db::find), but a missing row is [`Error::NotFound`].
    pub fn get<E: CachedOps<C>>(&self, id: impl IdArg<E::Id>) -> Result<Arc<E>> {
        self.read(CacheMode::Normal).get(id)
    }

    /// Reads many rows: hits from the cache, every miss in one `IN` (`= ANY` on
    /// PostgreSQL) query, filled under the same fence as `find`.
    ///
    /// The result has one element per input id, in input order: a duplicated id yields
    /// the same row twice, a missing id yields `None`. Lists longer than 10,000 misses
    /// run one query per 10,000 ids.
    pub fn find_many<E: CachedOps<C>>(&self, ids: &[E::Id]) -> Result<Vec<Option<Arc<E>>>> {
        self.read(CacheMode::Normal).find_many(ids)
    }

    /// Reads the row whose unique key is `key` (a type generated by `#[cache(unique)]`,
    /// like `UserByEmail("ada@example.com".into())`): a cached key → id mapping and a
    /// cached row answer without SQL; otherwise one `SELECT … WHERE email = ?` fills both.
    /// A key no row has is negatively cached until a write gives a row that key.
    /// While the change listener is disconnected, key entries are neither served nor
    /// filled, like rows (C7).
    pub fn find_by<K>(&self, key: K) -> Result<Option<Arc<K::Entity>>>
    where
        K: UniqueOps<C>,
        K::Entity: CachedOps<C>,
    {
        self.read(CacheMode::Normal).find_by(key)
    }

    /// Reads every row whose index key is `key` (a type generated by `#[cache(index)]`,
    /// like `PostByUserId(7)`), ordered by id, as a cheap-clone list.
    ///
    /// A cached list answers with no SQL and one `Arc` clone; otherwise one
    /// `SELECT … WHERE user_id = ? ORDER BY id` reads the rows, which fill the list and the
    /// entity's region, unless a write raced with the load (C3, C10). A list never serves
    /// a member that a committed write of this process changed, deleted or moved away,
    /// nor misses one it inserted or moved in (C4, C10); changes by other processes arrive
    /// through the change feed (C7). While the change listener is disconnected, lists are
    /// neither served nor filled.
    ///
    /// ```text
    /// let posts: diesel_l2::List<Post> = db.find_all_by(PostByUserId(7))?;
    /// for post in posts.iter() { /* Arc<Post> */ }
    /// ```
    pub fn find_all_by<K>(&self, key: K) -> Result<List<K::Entity>>
    where
        K: IndexOps<C>,
        K::Entity: CachedOps<C>,
    {
        if let Some(list) = self.find_all_by_cached(&key)? {
            return Ok(list);
        }
        self.read(CacheMode::Normal).find_all_by(key)
    }

    /// The answer [`find_all_by`](Db::find_all_by) would give from the cache alone:
    /// `Some(list)`, counted as a list hit, when the list is cached and trusted; `None`
    /// when it would load. Never runs SQL.
    #[inline]
    pub(crate) fn find_all_by_cached<K>(&self, key: &K) -> Result<Option<List<K::Entity>>>
    where
        K: IndexKey,
    {
        let region = self.inner.region::<K::Entity>()?;
        if !region.trusted() {
            return Ok(None);
        }
        let list = region.collection::<K>().and_then(|c| c.lookup(key));
        if list.is_some() {
            region.counters.list_hits.bump();
        }
        Ok(list)
    }

    /// The answer [`find_by`](Db::find_by) would give from the cache alone: `Some(row)`
    /// or `Some(None)` (a cached absent key) when the key entry and its row are both
    /// cached and trusted, counted as a key hit; `None` when it would load. Never runs SQL.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn find_by_cached<K>(&self, key: &K) -> Result<Option<Option<Arc<K::Entity>>>>
    where
        K: UniqueOps<C>,
        K::Entity: CachedOps<C>,
    {
        let region = self.inner.region::<K::Entity>()?;
        let Some(index) = region.index::<K>() else {
            // Let the blocking path report the unregistered key.
            return Ok(None);
        };
        if !region.trusted() {
            return Ok(None);
        }
        match index.lookup(key) {
            Some(IndexSlot::Id(id)) => match region.lookup(&id) {
                Lookup::Hit(row) if K::of(&row) == *key => {
                    Counters::bump(&region.counters.key_hits);
                    Ok(Some(Some(row)))
                }
                _ => Ok(None),
            },
            Some(IndexSlot::Absent) => {
                Counters::bump(&region.counters.key_hits);
                Ok(Some(None))
            }
            None => Ok(None),
        }
    }

    /// Reads with a per-call [`CacheMode`]: `db.read(CacheMode::Refresh).find::<User>(1)`.
    /// The shorthands [`no_fill`](Db::no_fill), [`refresh`](Db::refresh) and
    /// [`bypass`](Db::bypass) read more naturally.
    pub fn read(&self, mode: CacheMode) -> Reader<'_, C> {
        Reader { db: self, mode }
    }

    /// Reads from the cache, but a miss is loaded without filling it: for one-off scans
    /// that should not push hot rows out.
    pub fn no_fill(&self) -> Reader<'_, C> {
        self.read(CacheMode::NoFill)
    }

    /// Always loads from the database and puts the result in the cache (fenced like any
    /// fill): for rows known to have changed outside this process.
    pub fn refresh(&self) -> Reader<'_, C> {
        self.read(CacheMode::Refresh)
    }

    /// Ignores the cache entirely: reads the database, touches nothing.
    pub fn bypass(&self) -> Reader<'_, C> {
        self.read(CacheMode::Bypass)
    }

    pub(crate) fn load_one<E: CachedOps<C>>(
        &self,
        region: &Region<E>,
        id: E::Id,
        mode: FillMode,
    ) -> Result<Option<Arc<E>>> {
        let _span =
            tracing::debug_span!("diesel_l2.load", region = %region.config().name, id = ?id, ?mode)
                .entered();
        region.load_through(&id, mode, || {
            let db = || {
                let mut conn = self.inner.checkout()?;
                E::load_one(&mut conn, &id).map_err(Error::from)
            };
            // A local miss asks the shared tier first (C9); not while the listener is
            // down (the tier may miss the changes of the outage). A refresh reads the
            // database, the truth, and deletes whatever older Redis holds.
            #[cfg(feature = "redis")]
            if let (Some(shared), true) = (region.shared(), region.trusted()) {
                if mode == FillMode::Refresh {
                    let row = db()?;
                    shared.reconcile(&id, row.as_ref());
                    return Ok(row);
                }
                return shared.load(&id, mode == FillMode::Fill, db);
            }
            db()
        })
    }

    /// A batch load after local misses: the shared tier first when the region has one
    /// (one script call per 500 keys), then one query for what it could not answer,
    /// filled into Redis under the leases the read took (C9).
    fn load_batch_through<E: CachedOps<C>>(
        &self,
        region: &Region<E>,
        ids: &[E::Id],
        mode: FillMode,
    ) -> Result<HashMap<E::Id, Arc<E>>> {
        #[cfg(feature = "redis")]
        if let (Some(shared), true, false) =
            (region.shared(), region.trusted(), mode == FillMode::Refresh)
        {
            use crate::shared::Found;
            let mut out = HashMap::with_capacity(ids.len());
            for chunk in ids.chunks(crate::shared::BATCH_KEYS) {
                let (found, token) = shared.read_many(chunk, mode == FillMode::Fill)?;
                let mut need = Vec::new();
                let mut leased = Vec::new();
                for (id, f) in chunk.iter().zip(found) {
                    match f {
                        Found::Row(Some(row)) => {
                            out.insert(id.clone(), Arc::new(row));
                        }
                        Found::Row(None) => {}
                        Found::Load(lease) => {
                            need.push(id.clone());
                            if lease {
                                leased.push(id);
                            }
                        }
                    }
                }
                if need.is_empty() {
                    continue;
                }
                let loaded = self.load_batch::<E>(&need)?;
                if let (Some(token), false) = (token, leased.is_empty()) {
                    let rows: Vec<(&E::Id, Option<&E>)> = leased
                        .iter()
                        .map(|id| (*id, loaded.get(*id).map(|r| &**r)))
                        .collect();
                    shared.fill_many(&token, &rows);
                }
                out.extend(loaded);
            }
            return Ok(out);
        }
        let _ = (region, mode);
        self.load_batch::<E>(ids)
    }

    fn load_batch<E: CachedOps<C>>(&self, ids: &[E::Id]) -> Result<HashMap<E::Id, Arc<E>>> {
        let mut conn = self.inner.checkout()?;
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_IDS_PER_QUERY) {
            for row in E::load_many(&mut conn, chunk)? {
                found.insert(row.id(), Arc::new(row));
            }
        }
        Ok(found)
    }

    /// Drops one cached row (this process only) and fences loads in flight for it.
    pub fn evict<E: CachedEntity>(&self, id: impl IdArg<E::Id>) -> Result<()> {
        let id = id.as_id();
        let region = self.inner.region::<E>()?;
        Counters::bump(&region.counters.evict_requests);
        tracing::debug!(region = %region.config().name, id = ?id, "evict");
        region.invalidate(id);
        Ok(())
    }

    /// Drops the cached rows of `ids` and fences loads in flight for them.
    pub fn evict_many<E: CachedEntity>(&self, ids: &[E::Id]) -> Result<()> {
        let region = self.inner.region::<E>()?;
        Counters::bump(&region.counters.evict_requests);
        tracing::debug!(region = %region.config().name, count = ids.len(), "evict many");
        for id in ids {
            region.invalidate(id);
        }
        Ok(())
    }

    /// Drops every cached row of `E`'s region and fences every load in flight.
    pub fn evict_all<E: CachedEntity>(&self) -> Result<()> {
        let region = self.inner.region_arc::<E>()?;
        region.evict_requested();
        tracing::debug!(region = %region.name(), "evict region");
        region.clear();
        self.inner.queries.table_changed(region.sql_table());
        Ok(())
    }

    /// Drops every cached row of every region.
    pub fn evict_everything(&self) {
        tracing::debug!(regions = self.inner.order.len(), "evict everything");
        for region in &self.inner.order {
            region.evict_requested();
            region.clear();
        }
        self.inner.queries.all_changed();
    }

    /// Preloads `E`'s region with the rows `query` returns, for example the most recent
    /// N rows: `db.warm_up::<User>(|c| users::table.order(users::id.desc()).limit(1000)
    /// .select(User::as_select()).load(c))`.
    ///
    /// Fills are fenced like any other (C3): a row that a write touched while the query
    /// ran is refused, and the query is run again while any row was refused, up to
    /// three times. Progress is reported through `tracing` (target `diesel_l2`).
    pub fn warm_up<E: CachedOps<C>>(
        &self,
        mut query: impl FnMut(&mut C) -> diesel::QueryResult<Vec<E>>,
    ) -> Result<WarmUp> {
        let region = self.inner.region::<E>()?;
        let _span =
            tracing::info_span!("diesel_l2.warm_up", region = %region.config().name).entered();
        let mut report = WarmUp::default();
        for attempt in 1..=3 {
            let seq = region.write_seq();
            let rows = {
                let mut conn = self.inner.checkout()?;
                let started = std::time::Instant::now();
                let rows = query(&mut conn)?;
                region.counters.add_load(started.elapsed());
                rows
            };
            report.queries += 1;
            report.loaded += rows.len();
            let (filled, refused) = region.warm(rows, seq);
            report.filled += filled;
            region
                .counters
                .warmed
                .fetch_add(filled as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(attempt, filled, refused, "warm-up query filled the region");
            report.refused = refused;
            if refused == 0 {
                break;
            }
        }
        Ok(report)
    }

    /// The settings `E`'s region runs with.
    pub fn region_config<E: CachedEntity>(&self) -> Result<RegionConfig> {
        Ok(self.inner.region::<E>()?.config().clone())
    }

    /// A snapshot of every region's counters, and of the change listener's.
    pub fn stats(&self) -> Stats {
        Stats {
            regions: self.inner.order.iter().map(|r| r.stats()).collect(),
            listener: self.inner.listener.as_ref().map(|l| l.shared.snapshot()),
            queries: self.inner.queries.stats(),
            #[cfg(feature = "redis")]
            shared: self.inner.shared.as_ref().map(|t| t.snapshot()),
        }
    }

    /// The counters of `E`'s region, looked up by type: a typo is a compile error, and an
    /// entity that was not registered is [`Error::UnknownEntity`] (where
    /// `stats().region("name")` answers `None`).
    pub fn region_stats<E: CachedEntity>(&self) -> Result<RegionStats> {
        Ok(self.inner.region_arc::<E>()?.stats())
    }

    /// The cached list of index key `key`, without loading it or counting a read:
    /// `Some(list)` only when [`find_all_by`](Db::find_all_by) would answer with that list
    /// now. For tests and diagnostics.
    pub fn peek_all_by<K>(&self, key: &K) -> Result<Option<List<K::Entity>>>
    where
        K: IndexKey,
    {
        let region = self.inner.region::<K::Entity>()?;
        if !region.trusted() {
            return Ok(None);
        }
        Ok(region.collection::<K>().and_then(|c| c.lookup(key)))
    }

    /// The cached row for `id`, without loading it or counting a read: `Some(row)` only
    /// when the cache would answer with that row now. For tests and diagnostics.
    pub fn peek<E: CachedEntity>(&self, id: impl IdArg<E::Id>) -> Result<Option<Arc<E>>> {
        Ok(self.inner.region::<E>()?.peek(id.as_id()))
    }
}

/// How one read uses the cache, like Hibernate's `CacheMode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheMode {
    /// Read the cache; on a miss load and fill (fenced).
    #[default]
    Normal,
    /// Read the cache; on a miss load without filling.
    NoFill,
    /// Always load from the database and put the result in the cache (fenced).
    Refresh,
    /// Ignore the cache: read the database and touch nothing.
    Bypass,
}

/// Reads with one [`CacheMode`], from [`Db::read`] and its shorthands.
#[derive(Clone, Copy)]
pub struct Reader<'a, C: R2D2Connection + 'static> {
    db: &'a Db<C>,
    mode: CacheMode,
}

impl<C: R2D2Connection + 'static> Reader<'_, C> {
    /// Reads one row in this mode.
    pub fn find<E: CachedOps<C>>(&self, id: impl IdArg<E::Id>) -> Result<Option<Arc<E>>> {
        let region = self.db.inner.region::<E>()?;
        let mode = match self.mode {
            CacheMode::Normal => return self.db.find(id),
            CacheMode::Bypass => {
                let mut conn = self.db.inner.checkout()?;
                return Ok(E::load_one(&mut conn, id.as_id())?.map(Arc::new));
            }
            CacheMode::NoFill => match region.lookup(id.as_id()) {
                Lookup::Hit(e) => return Ok(Some(e)),
                Lookup::NegativeHit => return Ok(None),
                Lookup::Miss => FillMode::NoFill,
            },
            CacheMode::Refresh => FillMode::Refresh,
        };
        self.db.load_one(region, id.into_id(), mode)
    }

    /// Like [`find`](Reader::find), but a missing row is [`Error::NotFound`].
    pub fn get<E: CachedOps<C>>(&self, id: impl IdArg<E::Id>) -> Result<Arc<E>> {
        match self.find::<E>(id.as_id())? {
            Some(row) => Ok(row),
            None => Err(Error::NotFound {
                table: E::TABLE,
                id: format!("{:?}", id.as_id()),
            }),
        }
    }

    /// Reads by unique key in this mode (see [`Db::find_by`]).
    pub fn find_by<K>(&self, key: K) -> Result<Option<Arc<K::Entity>>>
    where
        K: UniqueOps<C>,
        K::Entity: CachedOps<C>,
    {
        let region = self.db.inner.region::<K::Entity>()?;
        if self.mode == CacheMode::Bypass {
            let mut conn = self.db.inner.checkout()?;
            return Ok(K::load_by(&mut conn, &key)?.map(Arc::new));
        }
        let index = region.index::<K>().ok_or_else(|| {
            Error::Config(format!(
                "`{}` is not a registered unique key of `{}`; declare it with #[cache(unique)]",
                std::any::type_name::<K>(),
                K::Entity::TABLE
            ))
        })?;
        // While the listener is disconnected, key entries are neither served nor filled
        // (C7): the region's rows are not either.
        let trusted = region.trusted();
        if self.mode != CacheMode::Refresh && trusted {
            match index.lookup(&key) {
                Some(IndexSlot::Id(id)) => {
                    // The mapping is a hint: use it only if the row still has the key.
                    if let Some(row) = self.find::<K::Entity>(id)? {
                        if K::of(&row) == key {
                            Counters::bump(&region.counters.key_hits);
                            return Ok(Some(row));
                        }
                    }
                }
                Some(IndexSlot::Absent) => {
                    Counters::bump(&region.counters.key_hits);
                    return Ok(None);
                }
                None => {}
            }
        }
        Counters::bump(&region.counters.key_misses);
        let _span = tracing::debug_span!("diesel_l2.load_by", region = %region.config().name, key = K::NAME).entered();
        let ticket = index.begin_load(&key);
        let seq = region.write_seq();
        hooks::reach(&self.db.inner.hook, || Point::BeforeLoad {
            region: region.config().name.clone(),
            id: format!("{key:?}"),
        });
        let started = std::time::Instant::now();
        let row = {
            let mut conn = self.db.inner.checkout()?;
            K::load_by(&mut conn, &key)?
        };
        region.counters.add_load(started.elapsed());
        hooks::reach(&self.db.inner.hook, || Point::AfterLoad {
            region: region.config().name.clone(),
            id: format!("{key:?}"),
        });
        let fill = self.mode != CacheMode::NoFill && trusted;
        match row {
            Some(row) => {
                let row = Arc::new(row);
                if fill {
                    // A row found under a looser database equality (`ADA@X.ORG` finding
                    // `ada@x.org`) would fail the check on every hit: map only its own key.
                    if K::of(&row) == key {
                        index.fill_id(key, row.id());
                    }
                    region.fill_if_unchanged(&row, seq, false);
                }
                Ok(Some(row))
            }
            None => {
                let negative = fill && negative_key_entries::<C, K>(region.config().key_compare);
                if negative && !index.fill_absent(ticket) {
                    Counters::bump(&region.counters.rejected_stale_fills);
                }
                Ok(None)
            }
        }
    }

    /// Reads the rows of an index key in this mode (see [`Db::find_all_by`]). `NoFill`
    /// serves a cached list but fills nothing on a miss; `Refresh` always loads and fills
    /// (fenced); `Bypass` only loads.
    pub fn find_all_by<K>(&self, key: K) -> Result<List<K::Entity>>
    where
        K: IndexOps<C>,
        K::Entity: CachedOps<C>,
    {
        let region = self.db.inner.region::<K::Entity>()?;
        let load = |db: &Db<C>| -> Result<Vec<Arc<K::Entity>>> {
            let started = std::time::Instant::now();
            let rows = {
                let mut conn = db.inner.checkout()?;
                K::load_all_by(&mut conn, &key)?
            };
            region.counters.add_load(started.elapsed());
            Ok(rows.into_iter().map(Arc::new).collect())
        };
        if self.mode == CacheMode::Bypass {
            return Ok(load(self.db)?.into());
        }
        let collection = region.collection::<K>().ok_or_else(|| {
            Error::Config(format!(
                "`{}` is not a registered index key of `{}`; declare it with \
                 #[cache(index)] on the field (or #[cache(index(a, b))] on the struct)",
                std::any::type_name::<K>(),
                K::Entity::TABLE
            ))
        })?;
        // While the listener is disconnected, lists are neither served nor filled (C7).
        let trusted = region.trusted();
        if self.mode != CacheMode::Refresh && trusted {
            if let Some(list) = collection.lookup(&key) {
                region.counters.list_hits.bump();
                return Ok(list);
            }
        }
        let _span = tracing::debug_span!("diesel_l2.load_all_by", region = %region.config().name, key = K::NAME).entered();
        // Both fences are taken before the query: the list's and the rows'. A miss of a
        // list already being loaded waits for that load (single flight) when no write
        // touched the list since it began (C4).
        let (ticket, leading) = match (self.mode, trusted) {
            (CacheMode::Normal, true) => match collection.begin_or_join(&key) {
                ListBegin::Lead(ticket, leading) => (ticket, Some(leading)),
                ListBegin::Join(flight) => {
                    if let Some(list) = flight.wait() {
                        Counters::bump(&region.counters.list_flight_joins);
                        return Ok(list);
                    }
                    // The leader's load failed: this caller loads for itself.
                    (collection.begin_load(&key), None)
                }
            },
            _ => (collection.begin_load(&key), None),
        };
        Counters::bump(&region.counters.list_misses);
        let seq = region.write_seq();
        hooks::reach(&self.db.inner.hook, || Point::BeforeLoad {
            region: region.config().name.clone(),
            id: format!("{key:?}"),
        });
        // On an error, `leading`'s drop tells the waiters to load for themselves.
        let rows = load(self.db)?;
        hooks::reach(&self.db.inner.hook, || Point::AfterLoad {
            region: region.config().name.clone(),
            id: format!("{key:?}"),
        });
        tracing::debug!(region = %region.config().name, key = ?key, rows = rows.len(), "list loaded from the database");
        // A row found under a looser database equality (MariaDB collations) does not carry
        // the key exactly: such a list would be dropped by the wrong writes; not cached.
        let exact = rows.iter().all(|row| K::of(row) == key);
        let list: List<K::Entity> = rows.into();
        if self.mode != CacheMode::NoFill && trusted {
            // Members go to the batch window: the list serves them, a read by id admits.
            for row in list.iter() {
                region.fill_if_unchanged(row, seq, true);
            }
            if exact {
                collection.fill(Arc::clone(&list), ticket);
            }
        }
        if let Some(leading) = leading {
            leading.complete(&list);
        }
        Ok(list)
    }

    /// Reads many rows in this mode, in input order (see [`Db::find_many`]).
    pub fn find_many<E: CachedOps<C>>(&self, ids: &[E::Id]) -> Result<Vec<Option<Arc<E>>>> {
        let region = self.db.inner.region::<E>()?;
        if self.mode == CacheMode::Bypass {
            let found = self.db.load_batch::<E>(ids)?;
            return Ok(ids.iter().map(|id| found.get(id).cloned()).collect());
        }
        let fill = match self.mode {
            CacheMode::Refresh => FillMode::Refresh,
            CacheMode::NoFill => FillMode::NoFill,
            _ => FillMode::Fill,
        };
        // The batch's fence comes before its lookups (see `BatchLoad::new`).
        let mut batch = BatchLoad::new(region, fill);
        let mut out: Vec<Option<Arc<E>>> = Vec::with_capacity(ids.len());
        // The positions that missed. A repeated id is registered and loaded at each of
        // its positions (the database answers it once; the second fill is a no-op), which
        // is cheaper for the usual batch without repeats than grouping the positions.
        let mut missing: Vec<usize> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let lookup = if fill == FillMode::Refresh {
                Lookup::Miss
            } else {
                // The batch window is asked below, with the key's registration.
                region.lookup_main(id)
            };
            match lookup {
                Lookup::Hit(e) => out.push(Some(e)),
                Lookup::NegativeHit => out.push(None),
                Lookup::Miss => {
                    out.push(None);
                    missing.push(i);
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let _span = tracing::debug_span!("diesel_l2.load_many", region = %region.config().name, misses = missing.len()).entered();
        // The batch window may hold some of them. A refreshing batch's keys are registered
        // loads, which dropping the batch ends even if loading panics.
        missing.retain(|&i| match batch.begin(&ids[i]) {
            Some(row) => {
                out[i] = Some(row);
                false
            }
            None => true,
        });
        if missing.is_empty() {
            return Ok(out);
        }
        hooks::reach(&self.db.inner.hook, || Point::BeforeLoad {
            region: region.config().name.clone(),
            id: format!("{:?}", batch.keys()),
        });
        let started = std::time::Instant::now();
        let loaded = self.db.load_batch_through::<E>(region, batch.keys(), fill);
        region.counters.add_load(started.elapsed());
        hooks::reach(&self.db.inner.hook, || Point::AfterLoad {
            region: region.config().name.clone(),
            id: format!("{:?}", batch.keys()),
        });
        tracing::debug!(
            region = %region.config().name,
            ids = batch.keys().len(),
            found = loaded.as_ref().map_or(0, HashMap::len),
            took_us = started.elapsed().as_micros() as u64,
            "batch loaded from the database"
        );
        match loaded {
            Ok(found) => {
                // The registered keys are the missing positions' ids, in order.
                for (i, row) in missing.into_iter().zip(batch.finish(&found)) {
                    out[i] = row;
                }
                Ok(out)
            }
            // Dropping the batch ends its loads without filling.
            Err(e) => Err(e),
        }
    }
}

/// Whether "no row has this key" may be cached for key `K` on connection type `C`: only
/// where the database compares the key as `K`'s `Eq` does (see [`KeyCompare`]).
fn negative_key_entries<C: 'static, K: crate::unique::UniqueKey>(compare: KeyCompare) -> bool {
    match compare {
        KeyCompare::Exact => true,
        KeyCompare::Loose => false,
        _ => !(K::TEXTUAL && collates_text_loosely::<C>()),
    }
}

/// MariaDB/MySQL: default collations ignore case, accents and trailing spaces.
#[cfg_attr(not(feature = "mysql"), allow(clippy::extra_unused_type_parameters))]
fn collates_text_loosely<C: 'static>() -> bool {
    #[cfg(feature = "mysql")]
    if TypeId::of::<C>() == TypeId::of::<diesel::mysql::MysqlConnection>() {
        return true;
    }
    false
}

/// What [`Db::warm_up`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WarmUp {
    /// Queries run (more than one when a write raced with the first).
    pub queries: usize,
    /// Rows the queries returned, in total.
    pub loaded: usize,
    /// Rows put in the cache.
    pub filled: usize,
    /// Rows refused by the fence in the last attempt.
    pub refused: usize,
}
