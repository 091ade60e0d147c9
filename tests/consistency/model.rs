//! The rows the workload reads and writes, independent of the entity type, and the
//! interface both cache implementations are driven through.

use diesel_l2::{CachedOps, Error, Tx};

use crate::common::models::{Tag, User};

/// Which cached entity (and region) a key belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `users`: the capacity-bound region (evictions race with writes and fills).
    User,
    /// `tags`: the short-ttl region (expiry races with writes and fills).
    Tag,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::User, Kind::Tag];

    pub fn name(self) -> &'static str {
        match self {
            Kind::User => "users",
            Kind::Tag => "tags",
        }
    }
}

/// A row's identity: its entity and its numeric id (tags use the string `t<id>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub kind: Kind,
    pub id: i64,
}

/// One row as the workload sees it: the version and the payload that identifies the write
/// that produced it (every write uses a payload no other write uses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub key: Key,
    pub version: i64,
    pub payload: String,
}

/// Ids per cached list: a user's `bio` names its group of ids, set by every writer (the
/// library, plain diesel and the plain SQL adversaries) and never changed, so a list by
/// `bio` holds exactly the existing users of one group. Writes to the users of other
/// groups race the list loads of this one without touching it (per-key list fences, C10).
pub const LIST_GROUP: i64 = 8;

/// The email of user `id`, whoever writes it (its unique key).
pub fn user_email(id: i64) -> String {
    format!("u{id}@consistency.test")
}

/// The `bio` of user `id`: its list's key.
pub fn list_group(id: i64) -> String {
    format!("g{}", id.div_euclid(LIST_GROUP))
}

/// The list keys covering ids `lo..=hi`.
pub fn list_groups(lo: i64, hi: i64) -> impl Iterator<Item = String> {
    (lo.div_euclid(LIST_GROUP)..=hi.div_euclid(LIST_GROUP)).map(|g| format!("g{g}"))
}

impl Row {
    pub fn to_user(&self) -> User {
        User {
            id: self.key.id,
            version: self.version,
            // Constant per id: `email` is UNIQUE, and content is told apart by `name`.
            email: user_email(self.key.id),
            name: self.payload.clone(),
            bio: Some(list_group(self.key.id)),
        }
    }

    pub fn from_user(u: &User) -> Row {
        Row {
            key: Key {
                kind: Kind::User,
                id: u.id,
            },
            version: u.version,
            payload: u.name.clone(),
        }
    }

    pub fn to_tag(&self) -> Tag {
        Tag {
            name: tag_id(self.key.id),
            rev: self.version,
            label: self.payload.clone(),
        }
    }

    pub fn from_tag(t: &Tag) -> Row {
        Row {
            key: Key {
                kind: Kind::Tag,
                id: t.name[1..].parse().expect("tag ids are t<number>"),
            },
            version: t.rev,
            payload: t.label.clone(),
        }
    }
}

pub fn tag_id(id: i64) -> String {
    format!("t{id}")
}

/// The operations of one transaction, implemented by diesel-l2's `Tx` and by the naive
/// cache-aside's plain-diesel transaction.
pub trait TxOps {
    /// Reads a row inside the transaction (from the database).
    fn get(&mut self, key: Key) -> Result<Option<Row>, Error>;
    /// Inserts `row` at its version.
    fn insert(&mut self, row: &Row) -> Result<Row, Error>;
    /// Versioned update from `row.version` with `row.payload`; returns the stored row. Any
    /// version mismatch is a conflict (C6).
    fn update(&mut self, row: &Row) -> Result<Row, Error>;
    /// Versioned delete of `row` (at `row.version`); a mismatch or a missing row is a
    /// conflict.
    fn delete(&mut self, row: &Row) -> Result<(), Error>;
    /// Plain SQL on the transaction's connection (used to make COMMIT fail).
    fn exec(&mut self, sql: &str) -> Result<(), Error>;
    /// Runs `f` in a savepoint.
    fn savepoint(
        &mut self,
        f: &mut dyn FnMut(&mut dyn TxOps) -> Result<(), Error>,
    ) -> Result<(), Error>;
}

/// A cache implementation under test: reads through the cache, transactions through the
/// database.
pub trait Store: Sync {
    fn name(&self) -> &'static str;
    fn find(&self, key: Key) -> Result<Option<Row>, Error>;
    /// Keys of one kind.
    fn find_many(&self, keys: &[Key]) -> Result<Vec<Option<Row>>, Error>;
    /// User `key` read by its unique email (`u<id>@consistency.test`, which every writer
    /// gives it), through the store's unique-key cache: a "no row has this key" entry must
    /// not outlive an insert of the key, by this process or another (C3, C4, C7).
    fn find_by_email(&self, key: Key) -> Result<Option<Row>, Error>;
    /// The users with an id in `lo..=hi`, in id order, through the store's query cache
    /// (C10): the cached query read, checked key by key like `find_many`.
    fn query_users(&self, lo: i64, hi: i64) -> Result<Vec<Row>, Error>;
    /// The users with an id in `lo..=hi`, read through the store's cached lists of users
    /// by `bio` (C10), one list per group of [`LIST_GROUP`] ids that overlaps the range
    /// (see [`list_group`]).
    fn list_users(&self, lo: i64, hi: i64) -> Result<Vec<Row>, Error>;
    /// One transaction running `body`; `retry` re-runs it on retryable errors.
    fn run(
        &self,
        retry: bool,
        body: &mut dyn FnMut(&mut dyn TxOps) -> Result<(), Error>,
    ) -> Result<(), Error>;
    /// One delivery of the operation `op` (retried on retryable errors): `body` runs at
    /// most once per committed id. Returns the row `body` returned, from this delivery or
    /// recorded by the one that committed, and whether this delivery was a replay (C6).
    fn run_once(
        &self,
        op: &str,
        body: &mut dyn FnMut(&mut dyn TxOps) -> Result<Row, Error>,
    ) -> Result<(Row, bool), Error>;
    /// A versioned update of `key` to `payload` run through the batcher (C11), reading the
    /// row inside the batch; every row it tried to write is pushed to `attempted`.
    fn submit_update(
        &self,
        key: Key,
        payload: String,
        attempted: std::sync::Arc<std::sync::Mutex<Vec<Row>>>,
    ) -> Result<Row, Error>;
    /// Drops one cached entry (an explicit eviction).
    fn evict(&self, key: Key);
    /// Drops every cached entry of a kind.
    fn evict_all(&self, kind: Kind);
    /// The row in the database, read past any cache.
    fn db_row(&self, key: Key) -> Result<Option<Row>, Error>;
    /// Stale fills the implementation rejected, expirations and size evictions, if known.
    fn cache_figures(&self) -> Vec<(String, u64)>;
}

/// The batched update's body, shared by both stores: reads `key`, writes `payload` at the
/// next version, and remembers the row it tried to write.
pub fn update_to(
    tx: &mut dyn TxOps,
    key: Key,
    payload: &str,
    attempted: &std::sync::Mutex<Vec<Row>>,
) -> Result<Row, Error> {
    let cur = tx.get(key)?.ok_or_else(|| super::workload::gone(key))?;
    let row = Row {
        key,
        version: cur.version,
        payload: payload.to_string(),
    };
    let mut next = row.clone();
    next.version += 1;
    attempted
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(next);
    tx.update(&row)
}

/// The conflict a versioned write reports (C6).
pub fn conflict(key: Key, expected: i64, found: Option<i64>) -> Error {
    Error::Conflict {
        table: key.kind.name(),
        id: format!("{}", key.id),
        expected,
        found,
    }
}

impl<C> TxOps for Tx<'_, C>
where
    C: diesel::r2d2::R2D2Connection + 'static,
    User: CachedOps<C>,
    Tag: CachedOps<C>,
{
    fn get(&mut self, key: Key) -> Result<Option<Row>, Error> {
        Ok(match key.kind {
            Kind::User => self.find::<User>(key.id)?.map(|u| Row::from_user(&u)),
            Kind::Tag => self.find::<Tag>(tag_id(key.id))?.map(|t| Row::from_tag(&t)),
        })
    }

    fn insert(&mut self, row: &Row) -> Result<Row, Error> {
        Ok(match row.key.kind {
            Kind::User => Row::from_user(&Tx::insert(self, &row.to_user())?),
            Kind::Tag => Row::from_tag(&Tx::insert(self, &row.to_tag())?),
        })
    }

    fn update(&mut self, row: &Row) -> Result<Row, Error> {
        Ok(match row.key.kind {
            Kind::User => Row::from_user(&Tx::update(self, &row.to_user())?),
            Kind::Tag => Row::from_tag(&Tx::update(self, &row.to_tag())?),
        })
    }

    fn delete(&mut self, row: &Row) -> Result<(), Error> {
        match row.key.kind {
            Kind::User => Tx::delete(self, &row.to_user()),
            Kind::Tag => Tx::delete(self, &row.to_tag()),
        }
    }

    fn exec(&mut self, sql: &str) -> Result<(), Error> {
        self.conn().batch_execute(sql).map_err(Error::from)
    }

    fn savepoint(
        &mut self,
        f: &mut dyn FnMut(&mut dyn TxOps) -> Result<(), Error>,
    ) -> Result<(), Error> {
        Tx::savepoint(self, |sp| f(sp))
    }
}
