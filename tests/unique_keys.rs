//! Unique-key lookups (`find_by`): the key → id mapping is cached, every write that changes
//! or deletes a row invalidates its old and new key values on commit, and an absent key is
//! negatively cached and cleared when a row with that key is inserted.

mod common;

use std::sync::mpsc;

use common::models::{Account, AccountByTenantIdEmail, User, UserByEmail};
use diesel_l2::{Db, Error, KeyCompare, ListenConfig};

fn by_email(e: &str) -> UserByEmail {
    UserByEmail(e.to_string())
}

/// A listener that can never connect: the regions it covers stay untrusted, as after a
/// lost connection (C7).
fn unreachable_listener(backend: common::Backend) -> ListenConfig {
    let url = match backend {
        common::Backend::Sqlite => "/nonexistent-diesel-l2-dir/none.db",
        common::Backend::Postgres => "postgres://postgres@127.0.0.1:1/test",
        common::Backend::Mysql => "mysql://root@127.0.0.1:1/test",
    };
    let mut config = ListenConfig::new(url);
    config.connect_timeout = std::time::Duration::from_millis(20);
    config
}

/// A transaction on another thread that has run its writes and stays open, uncommitted,
/// until [`Pending::commit`].
struct Pending {
    go: mpsc::Sender<()>,
    writer: std::thread::JoinHandle<diesel_l2::Result<()>>,
}

impl Pending {
    /// Lets the transaction commit, and waits for it.
    fn commit(self) {
        self.go.send(()).unwrap();
        self.writer.join().unwrap().unwrap();
    }
}

/// Runs `write` in a transaction on another thread; returns once it has run, with the
/// transaction still open.
fn pending<C>(
    db: &Db<C>,
    write: impl FnOnce(&mut diesel_l2::Tx<'_, C>) -> diesel_l2::Result<()> + Send + 'static,
) -> Pending
where
    C: diesel::r2d2::R2D2Connection + 'static,
{
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (go, go_rx) = mpsc::channel::<()>();
    let db = db.clone();
    let writer = std::thread::spawn(move || {
        db.transaction(|tx| {
            write(tx)?;
            started_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            Ok(())
        })
    });
    started_rx.recv().unwrap();
    Pending { go, writer }
}

backend_tests! {
    fn find_by_hits_run_no_sql(t) {
        let db = common::cached_db(t);
        t.exec("INSERT INTO users (id, version, email, name) VALUES (1, 1, 'ada@x.org', 'Ada')");
        t.sql.reset();
        let ada = db.find_by(by_email("ada@x.org")).unwrap().unwrap();
        assert_eq!(ada.id, 1);
        assert_eq!(t.sql.selects(), 1, "one SELECT by email: {:?}", t.sql.statements());
        t.sql.reset();
        for _ in 0..10 {
            assert_eq!(db.find_by(by_email("ada@x.org")).unwrap().unwrap().id, 1);
        }
        assert_eq!(db.find::<User>(1).unwrap().unwrap().email, "ada@x.org");
        assert_eq!(t.sql.count(), 0, "key → id and the row are both cached: {:?}", t.sql.statements());
        let s = db.stats();
        let u = s.region("users").unwrap();
        assert_eq!((u.key_hits, u.key_misses), (10, 1));
    }

    fn a_negative_entry_does_not_survive_an_insert(t) {
        // Declared exact so that MariaDB caches "not found" too (its default collation
        // would turn negative key entries off; see the collation tests below).
        let db = Db::builder(t.pool.clone()).cache_with::<User>(|c| c.key_compare(KeyCompare::Exact)).build().unwrap();
        assert!(db.find_by(by_email("new@x.org")).unwrap().is_none());
        assert!(db.find_by(by_email("new@x.org")).unwrap().is_none());
        assert_eq!(t.sql.selects(), 1, "the absent key is negatively cached");
        let mut u = User::new(9, "New");
        u.email = "new@x.org".into();
        db.transaction(|tx| tx.insert(&u)).unwrap();
        let found = db.find_by(by_email("new@x.org")).unwrap();
        assert_eq!(found.map(|u| u.id), Some(9), "the insert cleared the negative entry");
    }

    fn partial_updates_and_bulk_writes_invalidate_old_and_new_keys(t) {
        use common::models::UserChanges;
        use common::schema::users;
        use diesel::prelude::*;
        let db = common::cached_db(t);
        let mut ada = User::new(1, "Ada");
        ada.email = "old@x.org".into();
        db.transaction(|tx| tx.insert(&ada)).unwrap();
        // The row is not in the region any more: only the key → id entry is.
        db.evict::<User>(&1).unwrap();
        assert!(db.find_by(by_email("old@x.org")).unwrap().is_some());
        db.evict::<User>(&1).unwrap();
        assert!(db.find_by(by_email("new@x.org")).unwrap().is_none(), "negatively cached");
        let changes = UserChanges { email: Some("new@x.org".into()), ..Default::default() };
        db.transaction(|tx| tx.update_changes::<User, _>(1, 1, &changes)).unwrap();
        assert!(db.find_by(by_email("old@x.org")).unwrap().is_none(), "old key no longer maps to the row");
        assert_eq!(db.find_by(by_email("new@x.org")).unwrap().map(|u| u.version), Some(2));

        // By predicate: the new values are unknown to the cache, and still never stale.
        db.transaction(|tx| tx.update_where::<User, _, _>(users::id.eq(1), users::email.eq("bulk@x.org"))).unwrap();
        assert!(db.find_by(by_email("new@x.org")).unwrap().is_none());
        assert_eq!(db.find_by(by_email("bulk@x.org")).unwrap().map(|u| u.version), Some(3));
        db.transaction(|tx| tx.delete_where::<User, _>(users::email.eq("bulk@x.org"))).unwrap();
        assert!(db.find_by(by_email("bulk@x.org")).unwrap().is_none());
    }

    fn an_update_invalidates_the_old_and_the_new_key(t) {
        let db = common::cached_db(t);
        let mut ada = User::new(1, "Ada");
        ada.email = "old@x.org".into();
        let ada = db.transaction(|tx| tx.insert(&ada)).unwrap();
        assert!(db.find_by(by_email("old@x.org")).unwrap().is_some());
        assert!(db.find_by(by_email("new@x.org")).unwrap().is_none(), "negatively cached");
        let mut next = ada.clone();
        next.email = "new@x.org".into();
        db.transaction(|tx| tx.update(&next)).unwrap();
        assert!(db.find_by(by_email("old@x.org")).unwrap().is_none(), "old key no longer maps to the row");
        assert_eq!(db.find_by(by_email("new@x.org")).unwrap().map(|u| u.version), Some(2));
    }

    fn a_delete_clears_the_key(t) {
        let db = common::cached_db(t);
        let ada = db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        assert!(db.find_by(UserByEmail(ada.email.clone())).unwrap().is_some());
        db.transaction(|tx| tx.delete(&ada)).unwrap();
        assert!(db.find_by(UserByEmail(ada.email.clone())).unwrap().is_none());
        // The key can be taken by another row afterwards.
        let mut grace = User::new(2, "Grace");
        grace.email = ada.email.clone();
        db.transaction(|tx| tx.insert(&grace)).unwrap();
        assert_eq!(db.find_by(UserByEmail(ada.email.clone())).unwrap().map(|u| u.id), Some(2));
    }

    fn plain_sql_writes_announced_with_invalidate_clear_the_key_cache(t) {
        use diesel::prelude::*;
        use common::schema::users;
        let db = common::cached_db(t);
        db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        assert!(db.find_by(by_email("renamed@x.org")).unwrap().is_none());
        db.transaction(|tx| {
            diesel::update(users::table.find(1))
                .set((users::email.eq("renamed@x.org"), users::version.eq(users::version + 1)))
                .execute(tx.conn())?;
            tx.invalidate::<User>(1)
        })
        .unwrap();
        assert_eq!(db.find_by(by_email("renamed@x.org")).unwrap().map(|u| u.id), Some(1));
    }

    fn a_rolled_back_insert_leaves_the_key_absent(t) {
        let db = common::cached_db(t);
        let mut u = User::new(3, "Ghost");
        u.email = "ghost@x.org".into();
        let _ = db.transaction(|tx| -> Result<(), Error> {
            tx.insert(&u)?;
            Err(Error::Other("no".into()))
        });
        assert!(db.find_by(by_email("ghost@x.org")).unwrap().is_none());
    }

    fn no_negative_fill_while_a_transaction_may_insert_the_key(t) {
        let db = common::cached_db(t);
        let writer = pending(&db, |tx| {
            let mut u = User::new(5, "Late");
            u.email = "late@x.org".into();
            tx.insert(&u)?;
            Ok(())
        });
        // Not committed yet: the reader sees no row, and must not cache "absent".
        assert!(db.find_by(by_email("late@x.org")).unwrap().is_none());
        writer.commit();
        assert_eq!(db.find_by(by_email("late@x.org")).unwrap().map(|u| u.id), Some(5));
    }

    /// C4 per key: while a transaction holds an uncommitted insert giving a row the key
    /// `late@x.org`, "no row has `nobody@x.org`" is still cached (a pending write of one
    /// key value does not stop the others' negative entries), and `late@x.org`'s is not.
    fn a_pending_write_of_one_key_leaves_other_keys_negatively_cached(t) {
        // Declared exact so that MariaDB caches "not found" too.
        let db = Db::builder(t.pool.clone()).cache_with::<User>(|c| c.key_compare(KeyCompare::Exact)).build().unwrap();
        let writer = pending(&db, |tx| {
            let mut u = User::new(5, "Late");
            u.email = "late@x.org".into();
            tx.insert(&u)?;
            Ok(())
        });
        assert!(db.find_by(by_email("nobody@x.org")).unwrap().is_none());
        assert!(db.find_by(by_email("late@x.org")).unwrap().is_none(), "not committed yet");
        t.sql.reset();
        assert!(db.find_by(by_email("nobody@x.org")).unwrap().is_none());
        assert_eq!(t.sql.count(), 0, "the other key's negative entry was cached while the insert was pending");
        assert!(db.find_by(by_email("late@x.org")).unwrap().is_none());
        assert_eq!(t.sql.selects(), 1, "the pending key's negative entry was not cached");
        writer.commit();
        assert_eq!(db.find_by(by_email("late@x.org")).unwrap().map(|u| u.id), Some(5), "C4: read after the commit");
    }

    fn composite_unique_keys(t) {
        // Declared exact so that MariaDB caches "not found" too (the keys here are lower case).
        let db = Db::builder(t.pool.clone()).cache_with::<Account>(|c| c.key_compare(KeyCompare::Exact)).build().unwrap();
        let acct = |id, tenant, email: &str| Account { id, version: 1, tenant_id: tenant, email: email.into(), plan: "free".into() };
        db.transaction(|tx| {
            tx.insert(&acct(1, 10, "a@x.org"))?;
            tx.insert(&acct(2, 20, "a@x.org"))
        })
        .unwrap();
        t.sql.reset();
        let key = |tenant, email: &str| AccountByTenantIdEmail(tenant, email.to_string());
        assert_eq!(db.find_by(key(20, "a@x.org")).unwrap().map(|a| a.id), Some(2));
        assert_eq!(db.find_by(key(10, "a@x.org")).unwrap().map(|a| a.id), Some(1));
        assert!(db.find_by(key(30, "a@x.org")).unwrap().is_none());
        t.sql.reset();
        db.find_by(key(20, "a@x.org")).unwrap();
        db.find_by(key(30, "a@x.org")).unwrap();
        assert_eq!(t.sql.count(), 0, "hits and negative hits on a composite key");
        let stmts = {
            db.evict_all::<Account>().unwrap();
            t.sql.reset();
            db.find_by(key(10, "a@x.org")).unwrap();
            t.sql.statements()
        };
        let sql = stmts[0].to_lowercase();
        assert!(sql.contains("tenant_id") && sql.contains("email"), "{sql}");
    }

    /// C7: while the listener is disconnected the region is untrusted, unique-key entries
    /// included: `find_by` neither serves nor fills a key entry (positive or negative),
    /// so a row another process inserts meanwhile is found at once.
    fn find_by_neither_serves_nor_fills_key_entries_while_untrusted(t) {
        let db = Db::builder(t.pool.clone()).cache::<User>().listen(unreachable_listener(t.backend)).build().unwrap();
        assert!(!db.stats().listener.unwrap().connected);
        assert!(db.find_by(by_email("new@x.org")).unwrap().is_none());
        // Another process inserts the key; its notification is lost with the listener.
        t.exec("INSERT INTO users (id, version, email, name) VALUES (1, 1, 'new@x.org', 'New')");
        let found = db.find_by(by_email("new@x.org")).unwrap();
        assert_eq!(found.map(|u| u.id), Some(1), "C7: a negative key entry was served while untrusted");
        // And it moves the key away again.
        t.exec("UPDATE users SET email = 'moved@x.org', version = 2 WHERE id = 1");
        assert!(db.find_by(by_email("new@x.org")).unwrap().is_none());
        assert_eq!(db.find_by(by_email("moved@x.org")).unwrap().map(|u| u.version), Some(2));
        let u = db.stats();
        let u = u.region("users").unwrap();
        assert_eq!(u.key_hits, 0, "no key entry is served while untrusted");
        assert_eq!(u.key_misses, 4);
    }

    /// C3/C7 under MariaDB's default collation (case-insensitive, trailing spaces
    /// ignored): `find_by("ADA@X.ORG")` finds no row, then `ada@x.org` is inserted, which
    /// the database takes as the same key. A cached "not found" for `ADA@X.ORG` would not
    /// be cleared by that insert, so none is cached for text keys on MariaDB.
    only(mysql)
    fn an_insert_clears_not_found_for_every_spelling_the_database_matches(t) {
        let db = common::cached_db(t);
        assert!(db.find_by(by_email("ADA@X.ORG")).unwrap().is_none());
        assert!(db.find_by(by_email("ada@x.org ")).unwrap().is_none());
        let mut ada = User::new(1, "Ada");
        ada.email = "ada@x.org".into();
        db.transaction(|tx| tx.insert(&ada)).unwrap();
        for spelling in ["ADA@X.ORG", "ada@x.org ", "ada@x.org"] {
            let found = db.find_by(by_email(spelling)).unwrap();
            assert_eq!(found.map(|u| u.id), Some(1), "C3: a stale \"not found\" for {spelling:?}, which the database matches to ada@x.org");
        }
        // The looser match is not cached as a key → id mapping either (it would fail the
        // check on every hit); the exact spelling is.
        t.sql.reset();
        db.find_by(by_email("ada@x.org")).unwrap();
        assert_eq!(t.sql.count(), 0, "{:?}", t.sql.statements());
    }

    /// Which backends cache "not found" for a text key (see `KeyCompare`): PostgreSQL and
    /// SQLite by default, MariaDB only when declared exact; nobody when declared loose
    /// (`citext`, `COLLATE NOCASE`).
    fn key_compare_decides_whether_not_found_is_cached(t) {
        for (compare, cached) in [
            (KeyCompare::BackendDefault, BACKEND != common::Backend::Mysql),
            (KeyCompare::Exact, true),
            (KeyCompare::Loose, false),
        ] {
            let db = Db::builder(t.pool.clone()).cache_with::<User>(|c| c.key_compare(compare)).build().unwrap();
            t.sql.reset();
            assert!(db.find_by(by_email("nobody@x.org")).unwrap().is_none());
            assert!(db.find_by(by_email("nobody@x.org")).unwrap().is_none());
            let expected = if cached { 1 } else { 2 };
            assert_eq!(t.sql.selects(), expected, "{compare:?} on {BACKEND:?}: {:?}", t.sql.statements());
        }
    }
}

/// C10, collections: `find_all_by(PostByUserId(..))` caches a user's posts as a resolved
/// list; writes through the library drop exactly the lists whose membership or members
/// they change, and list fills are fenced like rows (C3, C4 for lists).
mod lists {
    use super::*;
    use common::models::{Post, PostByUserId};

    fn post(id: i64, user_id: i64, title: &str) -> Post {
        Post {
            id,
            version: 1,
            user_id,
            title: title.into(),
        }
    }

    fn ids(list: &[std::sync::Arc<Post>]) -> Vec<i64> {
        list.iter().map(|p| p.id).collect()
    }

    /// Users 1, 2 and 3; posts 3, 1, 2 of user 1 (inserted out of id order) and post 4 of
    /// user 2; user 3 has none.
    fn seed<C: diesel::r2d2::R2D2Connection + 'static>(t: &common::TestDb<C>) {
        t.exec("INSERT INTO users (id, version, email, name) VALUES (1, 1, 'a@x.org', 'A'), (2, 1, 'b@x.org', 'B'), (3, 1, 'c@x.org', 'C')");
        t.exec("INSERT INTO posts (id, version, user_id, title) VALUES (3, 1, 1, 'three'), (1, 1, 1, 'one'), (2, 1, 1, 'two'), (4, 1, 2, 'four')");
    }

    backend_tests! {
        /// C10: a miss is one query (the rows come with the list); a hit runs no SQL and
        /// the members are in the entity region too; lists are in id order; an empty
        /// list is cached like any other.
        fn a_list_hit_runs_no_sql_and_a_miss_one_query(t) {
            seed(t);
            let db = common::cached_db(t);
            t.sql.reset();
            let list = db.find_all_by(PostByUserId(1)).unwrap();
            assert_eq!(ids(&list), [1, 2, 3], "ordered by id");
            assert_eq!((t.sql.count(), t.sql.selects()), (1, 1), "one query for the list and its rows: {:?}", t.sql.statements());
            assert!(db.find_all_by(PostByUserId(3)).unwrap().is_empty());
            t.sql.reset();
            for _ in 0..10 {
                assert_eq!(ids(&db.find_all_by(PostByUserId(1)).unwrap()), [1, 2, 3]);
            }
            assert!(db.find_all_by(PostByUserId(3)).unwrap().is_empty());
            assert_eq!(db.find::<Post>(2).unwrap().unwrap().title, "two");
            assert_eq!(t.sql.count(), 0, "lists and their members are cached: {:?}", t.sql.statements());
            let s = db.region_stats::<Post>().unwrap();
            assert_eq!((s.list_hits, s.list_misses, s.list_fallback_clears), (11, 2, 0));
        }

        /// C10: an insert, a delete and a key move committed through the library drop
        /// exactly the lists they change; the others stay cached (no SQL to read them).
        fn insert_delete_and_key_move_invalidate_exactly_the_affected_lists(t) {
            seed(t);
            let db = common::cached_db(t);
            for user in 1..=3 {
                db.find_all_by(PostByUserId(user)).unwrap();
            }
            let reads = |t: &common::TestDb<Conn>, user: i64| {
                t.sql.reset();
                let list = ids(&db.find_all_by(PostByUserId(user)).unwrap());
                (list, t.sql.selects())
            };

            db.transaction(|tx| tx.insert(&post(5, 1, "five"))).unwrap();
            assert_eq!(reads(t, 2), (vec![4], 0), "user 2's list is untouched by an insert for user 1");
            assert_eq!(reads(t, 3), (vec![], 0));
            assert_eq!(reads(t, 1), (vec![1, 2, 3, 5], 1), "the insert dropped user 1's list");

            let one = db.find::<Post>(1).unwrap().unwrap();
            db.transaction(|tx| tx.delete(one.as_ref())).unwrap();
            assert_eq!(reads(t, 2), (vec![4], 0));
            assert_eq!(reads(t, 1), (vec![2, 3, 5], 1), "the delete dropped user 1's list");

            let mut two = db.find::<Post>(2).unwrap().unwrap().as_ref().clone();
            two.user_id = 2;
            db.transaction(|tx| tx.update(&two)).unwrap();
            assert_eq!(reads(t, 3), (vec![], 0), "a key move from 1 to 2 leaves user 3's list cached");
            assert_eq!(reads(t, 1), (vec![3, 5], 1), "the old list lost the moved post");
            assert_eq!(reads(t, 2), (vec![2, 4], 1), "the new list gained it");
            let s = db.region_stats::<Post>().unwrap();
            assert_eq!(s.list_fallback_clears, 0, "every invalidation was precise");
            assert!(s.list_invalidations >= 4, "{s:?}");
        }

        /// C10: an update of a member's other columns is seen by the next list read (the
        /// list holds resolved rows, and the update dropped it).
        fn an_update_of_a_member_is_seen_by_the_next_list_read(t) {
            seed(t);
            let db = common::cached_db(t);
            db.find_all_by(PostByUserId(1)).unwrap();
            db.find_all_by(PostByUserId(2)).unwrap();
            let mut three = db.find::<Post>(3).unwrap().unwrap().as_ref().clone();
            three.title = "three, edited".into();
            db.transaction(|tx| tx.update(&three)).unwrap();
            let list = db.find_all_by(PostByUserId(1)).unwrap();
            assert_eq!(list[2].title, "three, edited");
            assert_eq!(list[2].version, 2);
            // A partial update too.
            #[derive(diesel::AsChangeset)]
            #[diesel(table_name = common::schema::posts)]
            struct Title<'a> { title: &'a str }
            db.transaction(|tx| tx.update_changes::<Post, _>(3, 2, &Title { title: "again" })).unwrap();
            assert_eq!(db.find_all_by(PostByUserId(1)).unwrap()[2].title, "again");
            t.sql.reset();
            assert_eq!(ids(&db.find_all_by(PostByUserId(2)).unwrap()), [4]);
            assert_eq!(t.sql.count(), 0, "the other list stayed cached");
        }

        /// C10: a key move of a row whose old content the cache does not have (evicted,
        /// read inside the transaction) cannot tell which list held it: every list of the
        /// index is dropped, counted as a fallback, and no list serves the moved row.
        fn a_write_of_an_uncached_row_falls_back_to_dropping_every_list(t) {
            seed(t);
            let db = common::cached_db(t);
            db.find_all_by(PostByUserId(1)).unwrap();
            db.find_all_by(PostByUserId(3)).unwrap();
            db.evict::<Post>(&2).unwrap();
            db.transaction(|tx| {
                let mut two = tx.get::<Post>(2)?;
                two.user_id = 3;
                tx.update(&two)
            })
            .unwrap();
            assert_eq!(ids(&db.find_all_by(PostByUserId(1)).unwrap()), [1, 3]);
            assert_eq!(ids(&db.find_all_by(PostByUserId(3)).unwrap()), [2]);
            assert_eq!(db.region_stats::<Post>().unwrap().list_fallback_clears, 2, "one for each of Post's two index keys");
            // Plain SQL announced with `Tx::invalidate`: the new key is unknown too.
            db.transaction(|tx| {
                use diesel::prelude::*;
                use common::schema::posts;
                diesel::update(posts::table.find(2))
                    .set((posts::user_id.eq(2), posts::version.eq(posts::version + 1)))
                    .execute(tx.conn())?;
                tx.invalidate::<Post>(2)
            })
            .unwrap();
            assert!(db.find_all_by(PostByUserId(3)).unwrap().is_empty());
            assert_eq!(ids(&db.find_all_by(PostByUserId(2)).unwrap()), [2, 4]);
        }

        /// C5 for lists: `Tx::find_all_by` reads the database through the transaction,
        /// sees its own writes, and fills nothing; a rolled back insert leaves no trace
        /// (C1).
        fn reads_inside_a_transaction_see_own_writes_and_do_not_fill(t) {
            seed(t);
            let db = common::cached_db(t);
            assert_eq!(ids(&db.find_all_by(PostByUserId(1)).unwrap()), [1, 2, 3]);
            db.transaction(|tx| {
                tx.insert(&post(6, 1, "six"))?;
                assert_eq!(tx.find_all_by(PostByUserId(1))?.iter().map(|p| p.id).collect::<Vec<_>>(), [1, 2, 3, 6]);
                assert_eq!(tx.find_all_by(PostByUserId(2))?.len(), 1);
                // Outside the transaction, the insert is not committed: not seen, not cached.
                assert_eq!(ids(&db.find_all_by(PostByUserId(1)).unwrap()), [1, 2, 3]);
                Ok(())
            })
            .unwrap();
            t.sql.reset();
            assert_eq!(ids(&db.find_all_by(PostByUserId(2)).unwrap()), [4]);
            assert_eq!(t.sql.selects(), 1, "the transaction's read of user 2's posts filled nothing");
            assert_eq!(ids(&db.find_all_by(PostByUserId(1)).unwrap()), [1, 2, 3, 6], "C4: read after the commit");

            let _ = db.transaction(|tx| -> Result<(), Error> {
                tx.insert(&post(7, 1, "seven"))?;
                Err(Error::Other("no".into()))
            });
            assert_eq!(ids(&db.find_all_by(PostByUserId(1)).unwrap()), [1, 2, 3, 6], "C1: rolled back");
            t.sql.reset();
            db.find_all_by(PostByUserId(1)).unwrap();
            assert_eq!(t.sql.count(), 0, "refilled after the rollback");
        }

        /// C4 for lists: while a transaction holds an uncommitted insert, readers load
        /// the list from the database and do not fill it, so the commit is seen at once.
        fn no_list_fill_while_a_transaction_may_add_a_member(t) {
            seed(t);
            let db = common::cached_db(t);
            let writer = pending(&db, |tx| {
                tx.insert(&post(8, 3, "late"))?;
                Ok(())
            });
            assert!(db.find_all_by(PostByUserId(3)).unwrap().is_empty());
            assert!(db.peek_all_by(&PostByUserId(3)).unwrap().is_none(), "no fill while a write is pending");
            writer.commit();
            assert_eq!(ids(&db.find_all_by(PostByUserId(3)).unwrap()), [8]);
        }

        /// C4 and C10: the list fence is per key. While a transaction holds an
        /// uncommitted insert into user 3's list, user 1's list still fills (a write to
        /// one list does not stop every list from caching), and user 3's does not.
        fn a_pending_write_to_one_list_leaves_other_lists_filling(t) {
            seed(t);
            let db = common::cached_db(t);
            let writer = pending(&db, |tx| {
                tx.insert(&post(8, 3, "late"))?;
                Ok(())
            });
            assert_eq!(ids(&db.find_all_by(PostByUserId(1)).unwrap()), [1, 2, 3]);
            assert!(db.peek_all_by(&PostByUserId(1)).unwrap().is_some(), "user 1's list is not written by the pending transaction: it fills");
            assert!(db.find_all_by(PostByUserId(3)).unwrap().is_empty());
            assert!(db.peek_all_by(&PostByUserId(3)).unwrap().is_none(), "user 3's list is: no fill while the insert is pending");
            t.sql.reset();
            assert_eq!(ids(&db.find_all_by(PostByUserId(1)).unwrap()), [1, 2, 3]);
            assert_eq!(t.sql.count(), 0, "user 1's list is a hit while the other write is pending");
            writer.commit();
            assert_eq!(ids(&db.find_all_by(PostByUserId(3)).unwrap()), [8], "C4 for lists: read after the commit");
            assert_eq!(ids(&db.find_all_by(PostByUserId(1)).unwrap()), [1, 2, 3]);
        }

        /// C4 and C10: a transaction moving a cached row from user 1's list to user 2's
        /// holds both keys until it ends: neither list fills while the move is pending
        /// (a reader sees the committed state, the row still in user 1's list), and both
        /// reflect the move once it committed.
        fn a_pending_move_keeps_both_lists_from_filling(t) {
            seed(t);
            let db = common::cached_db(t);
            db.find::<Post>(2).unwrap();
            let writer = pending(&db, |tx| {
                let mut two = tx.get::<Post>(2)?;
                two.user_id = 2;
                tx.update(&two)?;
                Ok(())
            });
            assert_eq!(ids(&db.find_all_by(PostByUserId(1)).unwrap()), [1, 2, 3], "the move is not committed");
            assert_eq!(ids(&db.find_all_by(PostByUserId(2)).unwrap()), [4]);
            assert!(db.peek_all_by(&PostByUserId(1)).unwrap().is_none(), "the old key's list is held by the move: not filled");
            assert!(db.peek_all_by(&PostByUserId(2)).unwrap().is_none(), "the new key's list is held by the move: not filled");
            writer.commit();
            assert_eq!(ids(&db.find_all_by(PostByUserId(1)).unwrap()), [1, 3]);
            assert_eq!(ids(&db.find_all_by(PostByUserId(2)).unwrap()), [2, 4]);
            assert_eq!(db.region_stats::<Post>().unwrap().list_fallback_clears, 0, "the old content was cached: every invalidation was precise");
        }

        /// C7 for lists: while the listener is disconnected, lists are neither served nor
        /// filled, so a child another process inserts is seen at once.
        fn lists_are_neither_served_nor_filled_while_untrusted(t) {
            seed(t);
            let db = Db::builder(t.pool.clone()).cache::<Post>().listen(unreachable_listener(t.backend)).build().unwrap();
            assert_eq!(ids(&db.find_all_by(PostByUserId(2)).unwrap()), [4]);
            assert!(db.peek_all_by(&PostByUserId(2)).unwrap().is_none());
            t.exec("INSERT INTO posts (id, version, user_id, title) VALUES (9, 1, 2, 'nine')");
            assert_eq!(ids(&db.find_all_by(PostByUserId(2)).unwrap()), [4, 9]);
            let s = db.region_stats::<Post>().unwrap();
            assert_eq!((s.list_hits, s.list_misses), (0, 2));
        }

        /// A composite index key: `#[cache(index(user_id, title))]` lists the rows with both
        /// values; a title edit moves a row between such lists.
        fn composite_index_keys(t) {
            use common::models::PostByUserIdTitle;
            seed(t);
            t.exec("INSERT INTO posts (id, version, user_id, title) VALUES (5, 1, 1, 'one'), (6, 1, 2, 'one')");
            let db = common::cached_db(t);
            let key = |user, title: &str| PostByUserIdTitle(user, title.into());
            assert_eq!(ids(&db.find_all_by(key(1, "one")).unwrap()), [1, 5]);
            assert_eq!(ids(&db.find_all_by(key(1, "two")).unwrap()), [2]);
            t.sql.reset();
            assert_eq!(ids(&db.find_all_by(key(1, "one")).unwrap()), [1, 5]);
            assert_eq!(t.sql.count(), 0);
            let mut five = db.find::<Post>(5).unwrap().unwrap().as_ref().clone();
            five.title = "two".into();
            db.transaction(|tx| tx.update(&five)).unwrap();
            assert_eq!(ids(&db.find_all_by(key(1, "one")).unwrap()), [1]);
            assert_eq!(ids(&db.find_all_by(key(1, "two")).unwrap()), [2, 5]);
            assert_eq!(ids(&db.find_all_by(PostByUserId(1)).unwrap()), [1, 2, 3, 5]);
        }

        /// Modes: `no_fill` reads without filling, `bypass` touches nothing, `refresh`
        /// reloads and fills.
        fn cache_modes_apply_to_lists(t) {
            seed(t);
            let db = common::cached_db(t);
            assert_eq!(ids(&db.no_fill().find_all_by(PostByUserId(1)).unwrap()), [1, 2, 3]);
            assert!(db.peek_all_by(&PostByUserId(1)).unwrap().is_none());
            db.bypass().find_all_by(PostByUserId(1)).unwrap();
            assert!(db.peek_all_by(&PostByUserId(1)).unwrap().is_none());
            db.refresh().find_all_by(PostByUserId(1)).unwrap();
            assert!(db.peek_all_by(&PostByUserId(1)).unwrap().is_some());
            t.sql.reset();
            db.refresh().find_all_by(PostByUserId(1)).unwrap();
            assert_eq!(t.sql.selects(), 1, "refresh always loads");
            db.evict_all::<Post>().unwrap();
            assert!(db.peek_all_by(&PostByUserId(1)).unwrap().is_none(), "evict_all drops lists too");
        }
    }
}

/// A nullable index column: `None` selects the rows whose column IS NULL (in SQL `= NULL`
/// matches nothing), on every backend.
mod nullable_lists {
    use super::*;
    use diesel::prelude::*;

    /// `users` read with `bio` as a non-unique key (a model of its own: only this test's
    /// `Db` caches it).
    #[derive(Queryable, Selectable, Clone, Debug, PartialEq, diesel_l2::Cached)]
    #[diesel(table_name = common::schema::users)]
    #[cache(region = "users_by_bio")]
    pub struct BioUser {
        pub id: i64,
        pub version: i64,
        pub email: String,
        pub name: String,
        #[cache(index)]
        pub bio: Option<String>,
    }

    backend_tests! {
        fn a_none_key_lists_the_rows_whose_column_is_null(t) {
            t.exec("INSERT INTO users (id, version, email, name, bio) VALUES (1, 1, 'a@x', 'A', NULL), (2, 1, 'b@x', 'B', 'poet'), (3, 1, 'c@x', 'C', NULL)");
            let db = Db::builder(t.pool.clone()).cache::<BioUser>().build().unwrap();
            let ids = |list: &[std::sync::Arc<BioUser>]| list.iter().map(|u| u.id).collect::<Vec<_>>();
            assert_eq!(ids(&db.find_all_by(BioUserByBio(None)).unwrap()), [1, 3]);
            assert_eq!(ids(&db.find_all_by(BioUserByBio(Some("poet".into()))).unwrap()), [2]);
            // A member moving from NULL to a value moves between the lists.
            let mut a = db.find::<BioUser>(1).unwrap().unwrap().as_ref().clone();
            a.bio = Some("poet".into());
            db.transaction(|tx| tx.update(&a)).unwrap();
            assert_eq!(ids(&db.find_all_by(BioUserByBio(None)).unwrap()), [3]);
            assert_eq!(ids(&db.find_all_by(BioUserByBio(Some("poet".into()))).unwrap()), [1, 2]);
        }
    }
}
