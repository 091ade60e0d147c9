//! The baseline: a textbook cache-aside over the same tables, with the same versioned SQL
//! (the derive's `CachedOps`) and the same region sizes and ttl, but none of diesel-l2's
//! machinery: a miss fills with moka's `get_with` (concurrent misses of a key share one
//! load), a committed transaction deletes the keys it wrote from the cache afterwards. No
//! fence, no soft lock, no buffered write-through.

use std::sync::Arc;
use std::time::Duration;

use diesel::r2d2::{ConnectionManager, Pool, R2D2Connection};
use diesel_l2::{CachedOps, Error};
use moka::sync::Cache;

use super::model::{conflict, tag_id, Key, Kind, Row, Store, TxOps};
use super::ours::policy;
use crate::common::models::{Tag, User};

pub struct Naive<C: R2D2Connection + 'static> {
    pub pool: Pool<ConnectionManager<C>>,
    /// Operation ids seen, with the row each returned: the in-process dedupe a naive
    /// consumer writes (checked before the transaction, recorded after its commit).
    seen_ops: Cache<String, Row>,
    users: Cache<i64, Option<Row>>,
    tags: Cache<i64, Option<Row>>,
    /// Cached user ranges (the query cache's baseline): filled on a miss, dropped after a
    /// commit that wrote a user inside them.
    ranges: Cache<(i64, i64), Arc<Vec<Row>>>,
    /// The cached lists of users by `bio` (the collection cache's baseline): filled on a
    /// miss, dropped after a commit that wrote a user of the list.
    list: Cache<String, Arc<Vec<Row>>>,
}

impl<C: R2D2Connection + 'static> Naive<C> {
    /// Regions sized like diesel-l2's in the workload: `users` bounded by entries, `tags`
    /// with a ttl.
    pub fn new(
        pool: Pool<ConnectionManager<C>>,
        users_max: u64,
        tags_max: u64,
        tags_ttl: Duration,
    ) -> Self {
        Naive {
            pool,
            seen_ops: Cache::builder().max_capacity(1_000_000).build(),
            users: Cache::builder().max_capacity(users_max).build(),
            tags: Cache::builder()
                .max_capacity(tags_max)
                .time_to_live(tags_ttl)
                .build(),
            list: Cache::builder().max_capacity(10_000).build(),
            ranges: Cache::builder()
                .max_capacity(10_000)
                .support_invalidation_closures()
                .build(),
        }
    }

    fn cache(&self, kind: Kind) -> &Cache<i64, Option<Row>> {
        match kind {
            Kind::User => &self.users,
            Kind::Tag => &self.tags,
        }
    }

    fn conn(&self) -> Result<diesel::r2d2::PooledConnection<ConnectionManager<C>>, Error> {
        self.pool.get().map_err(|e| Error::Pool {
            timeout: self.pool.connection_timeout(),
            source: e,
        })
    }
}

fn load<C>(conn: &mut C, key: Key) -> Result<Option<Row>, Error>
where
    C: R2D2Connection + 'static,
    User: CachedOps<C>,
    Tag: CachedOps<C>,
{
    Ok(match key.kind {
        Kind::User => User::load_one(conn, &key.id)?.map(|u| Row::from_user(&u)),
        Kind::Tag => Tag::load_one(conn, &tag_id(key.id))?.map(|t| Row::from_tag(&t)),
    })
}

/// A plain diesel transaction (or savepoint) that remembers the keys it wrote.
struct NaiveTx<'a, C> {
    conn: &'a mut C,
    touched: &'a mut Vec<Key>,
}

impl<C> TxOps for NaiveTx<'_, C>
where
    C: R2D2Connection + 'static,
    User: CachedOps<C>,
    Tag: CachedOps<C>,
{
    fn get(&mut self, key: Key) -> Result<Option<Row>, Error> {
        load(self.conn, key)
    }

    fn insert(&mut self, row: &Row) -> Result<Row, Error> {
        self.touched.push(row.key);
        Ok(match row.key.kind {
            Kind::User => Row::from_user(&User::insert_row(self.conn, &row.to_user())?),
            Kind::Tag => Row::from_tag(&Tag::insert_row(self.conn, &row.to_tag())?),
        })
    }

    fn update(&mut self, row: &Row) -> Result<Row, Error> {
        self.touched.push(row.key);
        let mut next = row.clone();
        next.version += 1;
        let stored = match row.key.kind {
            Kind::User => User::update_row(self.conn, &row.to_user(), &next.to_user())?
                .map(|u| Row::from_user(&u)),
            Kind::Tag => Tag::update_row(self.conn, &row.to_tag(), &next.to_tag())?
                .map(|t| Row::from_tag(&t)),
        };
        if let Some(s) = stored {
            return Ok(s);
        }
        let found = load(self.conn, row.key)?.map(|c| c.version);
        Err(conflict(row.key, row.version, found))
    }

    fn delete(&mut self, row: &Row) -> Result<(), Error> {
        self.touched.push(row.key);
        let n = match row.key.kind {
            Kind::User => User::delete_row(self.conn, &row.key.id, row.version)?,
            Kind::Tag => Tag::delete_row(self.conn, &tag_id(row.key.id), row.version)?,
        };
        if n > 0 {
            return Ok(());
        }
        let found = load(self.conn, row.key)?.map(|c| c.version);
        Err(conflict(row.key, row.version, found))
    }

    fn exec(&mut self, sql: &str) -> Result<(), Error> {
        self.conn.batch_execute(sql).map_err(Error::from)
    }

    fn savepoint(
        &mut self,
        f: &mut dyn FnMut(&mut dyn TxOps) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let touched = &mut *self.touched;
        self.conn.transaction(|c| {
            f(&mut NaiveTx {
                conn: c,
                touched: &mut *touched,
            })
        })
    }
}

impl<C> Store for Naive<C>
where
    C: R2D2Connection + 'static,
    User: CachedOps<C>,
    Tag: CachedOps<C>,
    crate::common::models::UserByBio: diesel_l2::IndexOps<C>,
{
    fn name(&self) -> &'static str {
        "naive cache-aside"
    }

    /// A naive cache-aside keeps no key cache of its own: the email names the id.
    fn find_by_email(&self, key: Key) -> Result<Option<Row>, Error> {
        self.find(key)
    }

    fn find(&self, key: Key) -> Result<Option<Row>, Error> {
        self.cache(key.kind)
            .try_get_with(key.id, || {
                let mut conn = self.conn()?;
                load(&mut *conn, key)
            })
            .map_err(|e: Arc<Error>| Error::Other(e.to_string().into()))
    }

    fn find_many(&self, keys: &[Key]) -> Result<Vec<Option<Row>>, Error> {
        keys.iter().map(|k| self.find(*k)).collect()
    }

    fn list_users(&self, lo: i64, hi: i64) -> Result<Vec<Row>, Error> {
        use crate::common::models::UserByBio;
        let mut out = Vec::new();
        for group in super::model::list_groups(lo, hi) {
            let rows = self
                .list
                .try_get_with(group.clone(), || {
                    let mut conn = self.conn()?;
                    let users = <UserByBio as diesel_l2::IndexOps<C>>::load_all_by(
                        &mut *conn,
                        &UserByBio(Some(group)),
                    )?;
                    Ok::<_, Error>(Arc::new(users.iter().map(Row::from_user).collect()))
                })
                .map_err(|e: Arc<Error>| Error::Other(e.to_string().into()))?;
            out.extend(
                rows.iter()
                    .filter(|r| (lo..=hi).contains(&r.key.id))
                    .cloned(),
            );
        }
        Ok(out)
    }

    fn query_users(&self, lo: i64, hi: i64) -> Result<Vec<Row>, Error> {
        let rows = self
            .ranges
            .try_get_with((lo, hi), || {
                let mut conn = self.conn()?;
                // The ids of the range in one query (`IN`), in id order.
                let ids: Vec<i64> = (lo..=hi).collect();
                let mut users = <User as CachedOps<C>>::load_many(&mut *conn, &ids)?;
                users.sort_by_key(|u| u.id);
                Ok::<_, Error>(Arc::new(users.iter().map(Row::from_user).collect()))
            })
            .map_err(|e: Arc<Error>| Error::Other(e.to_string().into()))?;
        Ok(rows.as_ref().clone())
    }

    fn run(
        &self,
        retry: bool,
        body: &mut dyn FnMut(&mut dyn TxOps) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let policy = policy();
        let attempts = if retry { policy.max_attempts } else { 1 };
        let mut attempt = 1;
        loop {
            let mut touched = Vec::new();
            let result = (|| {
                let mut conn = self.conn()?;
                conn.transaction(|c| {
                    body(&mut NaiveTx {
                        conn: c,
                        touched: &mut touched,
                    })
                })
            })();
            match result {
                Ok(()) => {
                    // Cache-aside: delete the written keys after the commit.
                    for k in touched {
                        self.cache(k.kind).invalidate(&k.id);
                        if k.kind == Kind::User {
                            self.list.invalidate(&super::model::list_group(k.id));
                            let id = k.id;
                            let _ = self
                                .ranges
                                .invalidate_entries_if(move |r, _| r.0 <= id && id <= r.1);
                        }
                    }
                    return Ok(());
                }
                Err(e) if e.is_retryable() && attempt < attempts => {
                    std::thread::sleep(Duration::from_micros(fastrand::u64(0..2000)));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn submit_update(
        &self,
        key: Key,
        payload: String,
        attempted: std::sync::Arc<std::sync::Mutex<Vec<Row>>>,
    ) -> Result<Row, Error> {
        // No batcher in the baseline: one transaction per write.
        let mut out = None;
        self.run(false, &mut |tx| {
            out = Some(super::model::update_to(tx, key, &payload, &attempted)?);
            Ok(())
        })?;
        Ok(out.expect("a committed run returned its row"))
    }

    fn run_once(
        &self,
        op: &str,
        body: &mut dyn FnMut(&mut dyn TxOps) -> Result<Row, Error>,
    ) -> Result<(Row, bool), Error> {
        if let Some(row) = self.seen_ops.get(op) {
            return Ok((row, true));
        }
        let mut out = None;
        self.run(true, &mut |tx| {
            out = Some(body(tx)?);
            Ok(())
        })?;
        let row = out.expect("a committed run returned its row");
        self.seen_ops.insert(op.to_string(), row.clone());
        Ok((row, false))
    }

    fn evict(&self, key: Key) {
        self.cache(key.kind).invalidate(&key.id);
    }

    fn evict_all(&self, kind: Kind) {
        self.cache(kind).invalidate_all();
        if kind == Kind::User {
            self.ranges.invalidate_all();
            self.list.invalidate_all();
        }
    }

    fn db_row(&self, key: Key) -> Result<Option<Row>, Error> {
        let mut conn = self.conn()?;
        load(&mut *conn, key)
    }

    fn cache_figures(&self) -> Vec<(String, u64)> {
        self.users.run_pending_tasks();
        self.tags.run_pending_tasks();
        vec![
            ("users.entries".into(), self.users.entry_count()),
            ("tags.entries".into(), self.tags.entry_count()),
        ]
    }
}
