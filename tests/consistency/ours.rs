//! diesel-l2 behind the workload's [`Store`] interface.

use diesel::r2d2::R2D2Connection;
use diesel_l2::{CachedOps, Db, Error, QueryKey, RetryPolicy};

use super::model::{tag_id, Key, Kind, Row, Store, TxOps};
use crate::common::models::{Tag, User, UserByBio, UserByEmail};

pub struct Ours<C: R2D2Connection + 'static> {
    pub db: Db<C>,
    /// Runs the workload's batched updates (C11).
    pub batcher: diesel_l2::Batcher<C>,
}

/// Attempts for `retry`: enough that contention on 8 hot keys rarely exhausts them.
pub fn policy() -> RetryPolicy {
    RetryPolicy::attempts(12).backoff(
        std::time::Duration::from_micros(500),
        std::time::Duration::from_millis(20),
    )
}

impl<C> Store for Ours<C>
where
    C: R2D2Connection + diesel_l2::OperationLog,
    User: CachedOps<C>,
    Tag: CachedOps<C>,
    UserByBio: diesel_l2::IndexOps<C>,
    UserByEmail: diesel_l2::UniqueOps<C>,
{
    fn name(&self) -> &'static str {
        "diesel-l2"
    }

    fn find_by_email(&self, key: Key) -> Result<Option<Row>, Error> {
        let email = super::model::user_email(key.id);
        Ok(self
            .db
            .find_by(UserByEmail(email))?
            .map(|u| Row::from_user(&u)))
    }

    fn find(&self, key: Key) -> Result<Option<Row>, Error> {
        Ok(match key.kind {
            Kind::User => self.db.find::<User>(key.id)?.map(|u| Row::from_user(&u)),
            Kind::Tag => self
                .db
                .find::<Tag>(tag_id(key.id))?
                .map(|t| Row::from_tag(&t)),
        })
    }

    fn find_many(&self, keys: &[Key]) -> Result<Vec<Option<Row>>, Error> {
        let Some(first) = keys.first() else {
            return Ok(Vec::new());
        };
        assert!(keys.iter().all(|k| k.kind == first.kind));
        Ok(match first.kind {
            Kind::User => {
                let ids: Vec<i64> = keys.iter().map(|k| k.id).collect();
                self.db
                    .find_many::<User>(&ids)?
                    .into_iter()
                    .map(|u| u.map(|u| Row::from_user(&u)))
                    .collect()
            }
            Kind::Tag => {
                let ids: Vec<String> = keys.iter().map(|k| tag_id(k.id)).collect();
                self.db
                    .find_many::<Tag>(&ids)?
                    .into_iter()
                    .map(|t| t.map(|t| Row::from_tag(&t)))
                    .collect()
            }
        })
    }

    fn query_users(&self, lo: i64, hi: i64) -> Result<Vec<Row>, Error> {
        // Generic over the backend, so the query is keyed (declaring `users`) and loads
        // the range through the derive's `load_many` (one `IN` query), in id order.
        let key = QueryKey::new("users-range")
            .param(lo)
            .param(hi)
            .reads("users");
        let rows = self.db.query_keyed::<User, _>(key, |conn| {
            let ids: Vec<i64> = (lo..=hi).collect();
            let mut users = <User as CachedOps<C>>::load_many(conn, &ids)?;
            users.sort_by_key(|u| u.id);
            Ok(users)
        })?;
        Ok(rows.iter().map(|u| Row::from_user(u)).collect())
    }

    fn list_users(&self, lo: i64, hi: i64) -> Result<Vec<Row>, Error> {
        let mut rows = Vec::new();
        for group in super::model::list_groups(lo, hi) {
            let list = self.db.find_all_by(UserByBio(Some(group)))?;
            rows.extend(
                list.iter()
                    .filter(|u| (lo..=hi).contains(&u.id))
                    .map(|u| Row::from_user(u)),
            );
        }
        Ok(rows)
    }

    fn run(
        &self,
        retry: bool,
        body: &mut dyn FnMut(&mut dyn TxOps) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if retry {
            self.db.retry(policy(), |tx| body(tx))
        } else {
            self.db.transaction(|tx| body(tx))
        }
    }

    fn run_once(
        &self,
        op: &str,
        body: &mut dyn FnMut(&mut dyn TxOps) -> Result<Row, Error>,
    ) -> Result<(Row, bool), Error> {
        // The recorded outcome is what the caller needs back: the stored row.
        let outcome = self.db.retry_once(policy(), op, |tx| {
            let row = body(tx)?;
            Ok((
                row.key.kind == Kind::User,
                row.key.id,
                row.version,
                row.payload,
            ))
        })?;
        let replay = outcome.is_replay();
        let (user, id, version, payload) = outcome.into_inner();
        let kind = if user { Kind::User } else { Kind::Tag };
        Ok((
            Row {
                key: Key { kind, id },
                version,
                payload,
            },
            replay,
        ))
    }

    fn submit_update(
        &self,
        key: Key,
        payload: String,
        attempted: std::sync::Arc<std::sync::Mutex<Vec<Row>>>,
    ) -> Result<Row, Error> {
        self.batcher
            .submit(move |tx| super::model::update_to(tx, key, &payload, &attempted))
    }

    fn evict(&self, key: Key) {
        match key.kind {
            Kind::User => self.db.evict::<User>(&key.id),
            Kind::Tag => self.db.evict::<Tag>(&tag_id(key.id)),
        }
        .expect("registered");
    }

    fn evict_all(&self, kind: Kind) {
        match kind {
            Kind::User => self.db.evict_all::<User>(),
            Kind::Tag => self.db.evict_all::<Tag>(),
        }
        .expect("registered");
    }

    fn db_row(&self, key: Key) -> Result<Option<Row>, Error> {
        let mut conn = self.db.pool().get().map_err(|e| Error::Pool {
            timeout: self.db.pool().connection_timeout(),
            source: e,
        })?;
        Ok(match key.kind {
            Kind::User => User::load_one(&mut conn, &key.id)?.map(|u| Row::from_user(&u)),
            Kind::Tag => Tag::load_one(&mut conn, &tag_id(key.id))?.map(|t| Row::from_tag(&t)),
        })
    }

    fn cache_figures(&self) -> Vec<(String, u64)> {
        let s = self.db.stats();
        let mut out = Vec::new();
        for r in &s.regions {
            if r.region != "users" && r.region != "tags" {
                continue;
            }
            out.push((
                format!("{}.rejected_stale_fills", r.region),
                r.rejected_stale_fills,
            ));
            out.push((format!("{}.lock_bypasses", r.region), r.lock_bypasses));
            out.push((format!("{}.evicted_size", r.region), r.evicted_size));
            out.push((format!("{}.expired", r.region), r.expired));
            out.push((format!("{}.loads", r.region), r.loads));
            out.push((format!("{}.hits", r.region), r.hits));
            if r.region == "users" {
                out.push(("users.list_hits".into(), r.list_hits));
                out.push(("users.list_misses".into(), r.list_misses));
                out.push(("users.list_flight_joins".into(), r.list_flight_joins));
                out.push(("users.window_admissions".into(), r.window_admissions));
            }
        }
        out
    }
}
