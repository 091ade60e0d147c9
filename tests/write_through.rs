//! Writes in transactions reach the cache only after COMMIT returned Ok (C1), and are read
//! back without SQL once `transaction` returned (C2). Rollbacks, errors, panics and failing
//! commits leave no trace.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

#[cfg(feature = "postgres")]
use common::models::Post;
use common::models::User;
use diesel_l2::Error;

backend_tests! {
    fn committed_insert_update_delete_are_read_back_without_sql(t) {
        let db = common::cached_db(t);
        let ada = db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        t.sql.reset();
        assert_eq!(*db.find::<User>(1).unwrap().unwrap(), ada);
        assert_eq!(t.sql.count(), 0, "C2: the insert was written through");

        let mut next = ada.clone();
        next.name = "Ada Lovelace".into();
        let stored = db.transaction(|tx| tx.update(&next)).unwrap();
        assert_eq!(stored.version, 2);
        t.sql.reset();
        let read = db.find::<User>(1).unwrap().unwrap();
        assert_eq!((read.version, read.name.as_str()), (2, "Ada Lovelace"));
        assert_eq!(t.sql.count(), 0, "C2: the update was written through");

        db.transaction(|tx| tx.delete(&*read)).unwrap();
        t.sql.reset();
        assert!(db.find::<User>(1).unwrap().is_none());
        assert_eq!(t.sql.count(), 0, "C2: the delete left a tombstone");
    }

    fn err_from_the_closure_leaves_the_cache_untouched(t) {
        let db = common::cached_db(t);
        let ada = db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        let mut next = ada.clone();
        next.name = "never committed".into();
        let r: Result<(), Error> = db.transaction(|tx| {
            tx.update(&next)?;
            tx.insert(&User::new(2, "Ghost"))?;
            Err(Error::Other("business rule failed".into()))
        });
        assert!(matches!(r, Err(Error::Other(_))));
        assert_eq!(db.find::<User>(1).unwrap().unwrap().name, "Ada", "C1");
        assert!(db.find::<User>(2).unwrap().is_none(), "C1: the rolled-back insert is not cached");
        let s = db.stats();
        assert_eq!(s.region("users").unwrap().writes_discarded, 2);
    }

    fn panic_in_the_closure_propagates_and_leaves_the_pool_usable(t, common::TestDbOptions::default().max_size(1)) {
        let db = common::cached_db(t);
        let ada = db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        let mut next = ada.clone();
        next.name = "panicked".into();
        let caught = catch_unwind(AssertUnwindSafe(|| {
            let _: Result<(), Error> = db.transaction(|tx| {
                tx.update(&next)?;
                panic!("bug in the caller's closure");
            });
        }));
        let msg = caught.unwrap_err();
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"bug in the caller's closure"));
        // The only pooled connection is usable and not left inside a transaction.
        let again = db.find::<User>(1).unwrap().unwrap();
        assert_eq!((again.version, again.name.as_str()), (1, "Ada"), "C1: nothing of the panicked tx");
        let stored = db.transaction(|tx| tx.update(&next)).unwrap();
        assert_eq!(stored.version, 2);
    }

    fn committed_writes_are_applied_in_order_last_write_wins(t) {
        let db = common::cached_db(t);
        let v3 = db
            .transaction(|tx| {
                let v1 = tx.insert(&User::new(1, "Ada"))?;
                let mut n = v1.clone();
                n.name = "two".into();
                let v2 = tx.update(&n)?;
                let mut n = v2.clone();
                n.name = "three".into();
                tx.update(&n)
            })
            .unwrap();
        t.sql.reset();
        assert_eq!(*db.find::<User>(1).unwrap().unwrap(), v3);
        assert_eq!(t.sql.count(), 0);
    }

    fn plain_diesel_writes_are_invalidated_on_commit(t) {
        use diesel::prelude::*;
        use common::schema::users;
        let db = common::cached_db(t);
        db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        db.transaction(|tx| {
            diesel::update(users::table.find(1))
                .set((users::name.eq("by plain diesel"), users::version.eq(users::version + 1)))
                .execute(tx.conn())?;
            tx.invalidate::<User>(1)
        })
        .unwrap();
        let read = db.find::<User>(1).unwrap().unwrap();
        assert_eq!((read.version, read.name.as_str()), (2, "by plain diesel"));
    }

    fn invalidate_of_a_rolled_back_plain_write_still_forgets_the_key(t) {
        let db = common::cached_db(t);
        db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        let _ = db.transaction(|tx| -> Result<(), Error> {
            tx.invalidate::<User>(1)?;
            Err(Error::Other("rolled back".into()))
        });
        t.sql.reset();
        assert_eq!(db.find::<User>(1).unwrap().unwrap().name, "Ada");
        assert_eq!(t.sql.selects(), 1, "the key was invalidated, then loaded again");
    }

    fn an_error_the_closure_handles_never_publishes_rolled_back_writes(t) {
        let db = common::cached_db(t);
        let ada = db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        let mut next = ada.clone();
        next.name = "after a handled error".into();
        let r = db.transaction(|tx| {
            tx.update(&next)?;
            // A duplicate insert whose error the application decides to ignore.
            let dup = tx.insert(&User::new(1, "duplicate"));
            assert!(dup.is_err());
            Ok(())
        });
        let row = db.bypass().get::<User>(1).unwrap();
        if BACKEND == common::Backend::Postgres {
            // PostgreSQL aborted the transaction at the failed statement: COMMIT would
            // have been a silent ROLLBACK. It is reported, and nothing is cached (C1).
            assert!(matches!(r, Err(Error::RolledBack)), "{r:?}");
            assert!(r.as_ref().unwrap_err().is_retryable());
            assert_eq!(row.version, 1);
        } else {
            // SQLite and MariaDB only undo the failed statement: the update commits.
            r.unwrap();
            assert_eq!(row.version, 2);
        }
        assert_eq!(*db.find::<User>(1).unwrap().unwrap(), *row, "the cache agrees with the database");
    }

    fn partial_update_reaches_the_cache_only_at_commit(t) {
        use common::models::UserChanges;
        let db = common::cached_db(t);
        db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        let changes = UserChanges { name: Some("Ada Lovelace".into()), ..Default::default() };
        let r: Result<(), Error> = db.transaction(|tx| {
            let stored = tx.update_changes::<User, _>(1, 1, &changes)?;
            assert_eq!(stored.version, 2);
            Err(Error::Other("rolled back".into()))
        });
        assert!(matches!(r, Err(Error::Other(_))));
        let read = db.find::<User>(1).unwrap().unwrap();
        assert_eq!((read.version, read.name.as_str()), (1, "Ada"), "C1: nothing of the rolled-back update");

        let stored = db.transaction(|tx| tx.update_changes::<User, _>(1, 1, &changes)).unwrap();
        t.sql.reset();
        assert_eq!(*db.find::<User>(1).unwrap().unwrap(), stored);
        assert_eq!(t.sql.count(), 0, "C2: the partial update was written through at commit");
        let last = db
            .transaction(|tx| tx.update_changes_unversioned::<User, _>(1, &UserChanges { name: Some("L".into()), ..Default::default() }))
            .unwrap();
        t.sql.reset();
        assert_eq!((db.find::<User>(1).unwrap().unwrap().name.as_str(), t.sql.count()), ("L", 0));
        assert_eq!(last.version, 3);
    }

    fn insert_new_returns_the_generated_id_and_defaults_in_one_statement(t) {
        use common::models::{Article, NewArticle};
        let db = common::builder(t).cache::<Article>().build().unwrap();
        t.sql.reset();
        let a = db
            .transaction(|tx| tx.insert_new::<Article, _>(&NewArticle { slug: "hello", title: "Hello" }))
            .unwrap();
        assert!(a.id > 0, "the database chose the id: {a:?}");
        assert_eq!((a.version, a.slug.as_str(), a.title.as_str(), a.status.as_str()), (1, "hello", "Hello", "draft"));
        assert!(a.created_at.and_utc().timestamp() > 1_700_000_000, "DEFAULT now(): {a:?}");
        let statements = t.sql.statements();
        if BACKEND == common::Backend::Mysql {
            // SELECT LAST_INSERT_ID(0), INSERT, SELECT … WHERE id = LAST_INSERT_ID().
            assert_eq!((t.sql.writes(), t.sql.selects()), (1, 2), "{statements:#?}");
        } else {
            assert_eq!((t.sql.writes(), t.sql.selects()), (1, 0), "one INSERT … RETURNING: {statements:#?}");
            assert!(statements.iter().any(|s| s.to_uppercase().contains("RETURNING")), "{statements:#?}");
        }

        t.sql.reset();
        assert_eq!(*db.find::<Article>(a.id).unwrap().unwrap(), a);
        assert_eq!(t.sql.count(), 0, "C2: cached at commit, a hit without SQL");

        let b = db
            .transaction(|tx| tx.insert_new::<Article, _>(NewArticle { slug: "second", title: "Second" }))
            .unwrap();
        assert_ne!(b.id, a.id);
        // The stored row takes part in versioned writes like any other.
        let changes = common::models::ArticleChanges { title: Some("Hello, world"), status: Some("live") };
        let a2 = db.transaction(|tx| tx.update_changes::<Article, _>(a.id, a.version, &changes)).unwrap();
        assert_eq!((a2.version, a2.title.as_str(), a2.status.as_str(), a2.created_at), (2, "Hello, world", "live", a.created_at));
    }

    fn insert_new_clears_negative_entries_for_its_id_and_unique_keys(t) {
        use common::models::{Article, ArticleBySlug, NewArticle};
        let db = common::builder(t).cache::<Article>().build().unwrap();
        // "Not found" cached for the first ids and for the slug.
        for id in 1..=3 {
            assert!(db.find::<Article>(id).unwrap().is_none());
        }
        assert!(db.find_by(ArticleBySlug("hello".into())).unwrap().is_none());
        t.sql.reset();
        assert!(db.find::<Article>(1).unwrap().is_none());
        assert!(db.find_by(ArticleBySlug("hello".into())).unwrap().is_none());
        // MariaDB compares text keys case-insensitively by default, so "not found" is not
        // cached for the slug there (KeyCompare::BackendDefault); the id's is.
        let uncached = usize::from(BACKEND == common::Backend::Mysql);
        assert_eq!(t.sql.count(), uncached, "the negative entries are cached");

        let a = db
            .transaction(|tx| tx.insert_new::<Article, _>(&NewArticle { slug: "hello", title: "Hello" }))
            .unwrap();
        assert!((1..=3).contains(&a.id), "{a:?}");
        t.sql.reset();
        assert_eq!(*db.find::<Article>(a.id).unwrap().unwrap(), a, "the negative id entry was replaced");
        assert_eq!(t.sql.count(), 0, "C2: a hit");
        assert_eq!(db.find_by(ArticleBySlug("hello".into())).unwrap().unwrap().id, a.id, "the negative slug entry was cleared");
    }

    fn rolled_back_insert_new_leaves_nothing_cached(t) {
        use common::models::{Article, ArticleBySlug, NewArticle};
        let db = common::builder(t).cache::<Article>().build().unwrap();
        let mut inserted = None;
        let r: Result<(), Error> = db.transaction(|tx| {
            inserted = Some(tx.insert_new::<Article, _>(&NewArticle { slug: "ghost", title: "Ghost" })?);
            Err(Error::Other("rolled back".into()))
        });
        assert!(matches!(r, Err(Error::Other(_))));
        let ghost = inserted.unwrap();
        assert!(db.find::<Article>(ghost.id).unwrap().is_none(), "C1: the rolled-back row is not cached");
        assert!(db.find_by(ArticleBySlug("ghost".into())).unwrap().is_none(), "C1");
        assert_eq!(db.stats().region("articles").unwrap().writes_discarded, 1);
        // A duplicate unique key is a database error, and caches nothing either.
        db.transaction(|tx| tx.insert_new::<Article, _>(&NewArticle { slug: "taken", title: "A" })).unwrap();
        let dup = db.transaction(|tx| tx.insert_new::<Article, _>(&NewArticle { slug: "taken", title: "B" }));
        assert!(matches!(dup, Err(Error::Database(_))), "{dup:?}");
        assert_eq!(db.find_by(ArticleBySlug("taken".into())).unwrap().unwrap().title, "A");
    }

    fn insert_new_takes_any_insertable_with_an_explicit_id_too(t, common::TestDbOptions::default().max_size(1)) {
        use diesel::prelude::*;
        use common::models::{Article, NewArticle};
        use common::schema::users;
        let db = common::builder(t).cache::<Article>().build().unwrap();
        // Leaves LAST_INSERT_ID() at the article's id on the only pooled connection.
        let a = db.transaction(|tx| tx.insert_new::<Article, _>(&NewArticle { slug: "a", title: "A" })).unwrap();
        db.transaction(|tx| tx.insert(&User::new(a.id, "Taken"))).unwrap();
        let values = (users::id.eq(a.id + 10), users::version.eq(1_i64), users::email.eq("x@example.com"), users::name.eq("X"));
        let r = db.transaction(|tx| tx.insert_new::<User, _>(values));
        if BACKEND == common::Backend::Mysql {
            // No AUTO_INCREMENT value: the row cannot be found by LAST_INSERT_ID(), and a
            // stale value from the earlier insert never names another row.
            let err = r.unwrap_err();
            assert!(err.to_string().contains("AUTO_INCREMENT") && err.to_string().contains("Tx::insert"), "{err}");
            assert!(db.find::<User>(a.id + 10).unwrap().is_none(), "the failed transaction rolled back");
        } else {
            let u = r.unwrap();
            assert_eq!((u.id, u.name.as_str()), (a.id + 10, "X"));
            t.sql.reset();
            assert_eq!(*db.find::<User>(u.id).unwrap().unwrap(), u);
            assert_eq!(t.sql.count(), 0, "C2");
        }
    }

    fn insert_new_into_an_unregistered_entity_writes_nothing(t) {
        use common::models::{Article, NewArticle};
        let db = common::cached_db(t);
        t.sql.reset();
        let err = db
            .transaction(|tx| tx.insert_new::<Article, _>(&NewArticle { slug: "x", title: "X" }))
            .unwrap_err();
        assert!(matches!(err, Error::UnknownEntity { .. }), "{err}");
        assert_eq!(t.sql.writes(), 0, "refused before the INSERT");
    }

    fn update_where_bumps_versions_and_invalidates_exactly_the_rows_it_changed(t) {
        use diesel::prelude::*;
        use common::models::{Article, ArticleChanges, NewArticle};
        use common::schema::articles;
        let db = common::builder(t).cache::<Article>().build().unwrap();
        let [a, b, c] = ["a", "b", "c"].map(|slug| {
            db.transaction(|tx| tx.insert_new::<Article, _>(&NewArticle { slug, title: slug })).unwrap()
        });
        let live = ArticleChanges { title: None, status: Some("live") };
        let c = db.transaction(|tx| tx.update_changes::<Article, _>(c.id, c.version, &live)).unwrap();

        // Rolled back: nothing changes, in the database or the cache (C1).
        let r: Result<(), Error> = db.transaction(|tx| {
            let ids = tx.update_where::<Article, _, _>(articles::status.eq("draft"), articles::status.eq("archived"))?;
            assert_eq!(ids.len(), 2);
            Err(Error::Other("rolled back".into()))
        });
        assert!(matches!(r, Err(Error::Other(_))));
        assert_eq!(*db.find::<Article>(a.id).unwrap().unwrap(), a, "C1");

        // Every row cached before the bulk write.
        for row in [&a, &b, &c] {
            db.find::<Article>(row.id).unwrap().unwrap();
        }
        t.sql.reset();
        let mut ids = db
            .transaction(|tx| {
                let ids = tx.update_where::<Article, _, _>(articles::status.eq("draft"), articles::status.eq("archived"))?;
                Ok(ids)
            })
            .unwrap();
        ids.sort();
        assert_eq!(ids, [a.id, b.id]);
        let statements = t.sql.statements();
        if BACKEND == common::Backend::Mysql {
            assert_eq!((t.sql.selects(), t.sql.writes()), (1, 1), "SELECT … FOR UPDATE, then UPDATE: {statements:#?}");
        } else {
            assert_eq!((t.sql.selects(), t.sql.writes()), (0, 1), "one UPDATE … RETURNING id: {statements:#?}");
        }

        t.sql.reset();
        let a2 = db.find::<Article>(a.id).unwrap().unwrap();
        assert_eq!((a2.version, a2.status.as_str()), (2, "archived"), "C2: the old entry was invalidated");
        assert_eq!(db.find::<Article>(b.id).unwrap().unwrap().version, 2);
        assert_eq!(t.sql.selects(), 2, "both reloaded");
        t.sql.reset();
        assert_eq!(*db.find::<Article>(c.id).unwrap().unwrap(), c);
        assert_eq!(t.sql.count(), 0, "a row the predicate did not match stays cached");

        // No row matches: nothing to do.
        let none = db
            .transaction(|tx| tx.update_where::<Article, _, _>(articles::status.eq("nope"), articles::title.eq("x")))
            .unwrap();
        assert!(none.is_empty());
    }

    /// Composite primary keys (a join table, `#[diesel(primary_key(a, b))]`): every
    /// operation addresses the row by both columns, ids are tuples, taken by value or by
    /// reference (C1, C2, C6).
    fn a_composite_primary_key_works_for_every_operation(t) {
        use diesel::prelude::*;
        use common::models::Follow;
        use common::schema::follows;
        let db = common::builder(t).cache::<Follow>().build().unwrap();
        let rows = [Follow::new(1, 2, "a"), Follow::new(1, 3, "b"), Follow::new(2, 1, "c"), Follow::new(12, 3, "d")];
        db.transaction(|tx| rows.iter().try_for_each(|r| tx.insert(r).map(drop))).unwrap();
        t.sql.reset();
        assert_eq!(*db.find::<Follow>((1, 2)).unwrap().unwrap(), rows[0], "C2: written through at commit");
        assert_eq!(*db.get::<Follow>(&(2, 1)).unwrap(), rows[2]);
        assert_eq!(t.sql.count(), 0, "C2: both served from the cache");
        assert!(db.find::<Follow>((2, 2)).unwrap().is_none());
        assert!(db.find::<Follow>((2, 2)).unwrap().is_none());
        assert_eq!(t.sql.selects(), 1, "the absent key is negatively cached");

        // find_many: misses of a composite key in one statement.
        db.evict_all::<Follow>().unwrap();
        t.sql.reset();
        let many = db.find_many::<Follow>(&[(1, 3), (9, 9), (12, 3), (1, 2)]).unwrap();
        let got: Vec<_> = many.iter().map(|r| r.as_ref().map(|r| r.note.clone())).collect();
        assert_eq!(got, [Some("b".into()), None, Some("d".into()), Some("a".into())]);
        assert_eq!(t.sql.selects(), 1, "one SELECT … WHERE (a = ? AND b = ?) OR …");

        // Versioned update and delete by both columns; a conflict names the key.
        let mut next = (*db.get::<Follow>((1, 3)).unwrap()).clone();
        next.note = "edited".into();
        let stored = db.transaction(|tx| tx.update(&next)).unwrap();
        assert_eq!(stored.version, 2);
        assert_eq!(db.get::<Follow>((1, 3)).unwrap().note, "edited");
        assert_eq!(db.get::<Follow>((1, 2)).unwrap().note, "a", "the neighbour sharing a column is untouched");
        let stale = db.transaction(|tx| tx.update(&next)).unwrap_err();
        assert!(matches!(stale, Error::Conflict { expected: 1, found: Some(2), .. }), "{stale}");
        db.transaction(|tx| tx.delete(&stored)).unwrap();
        assert!(db.find::<Follow>((1, 3)).unwrap().is_none());

        // Partial updates and bulk writes return and invalidate tuple ids.
        #[derive(AsChangeset)]
        #[diesel(table_name = follows)]
        struct Note<'a> {
            note: &'a str,
        }
        let changed = db.transaction(|tx| tx.update_changes::<Follow, _>((12, 3), 1, &Note { note: "partial" })).unwrap();
        assert_eq!((changed.version, changed.note.as_str()), (2, "partial"));
        for key in [(1, 2), (2, 1), (12, 3)] {
            db.find::<Follow>(key).unwrap();
        }
        let mut ids = db
            .transaction(|tx| tx.update_where::<Follow, _, _>(follows::followee_id.le(2), follows::note.eq("bulk")))
            .unwrap();
        ids.sort();
        assert_eq!(ids, [(1, 2), (2, 1)]);
        assert_eq!(db.get::<Follow>((1, 2)).unwrap().note, "bulk", "C2: invalidated at commit");
        assert_eq!(db.get::<Follow>((2, 1)).unwrap().version, 2);
        assert_eq!(db.get::<Follow>((12, 3)).unwrap().note, "partial", "not matched, untouched");
        let gone = db.transaction(|tx| tx.delete_where::<Follow, _>(follows::follower_id.eq(1))).unwrap();
        assert_eq!(gone, [(1, 2)]);
        assert!(db.find::<Follow>((1, 2)).unwrap().is_none());
        assert!(db.find::<Follow>((2, 1)).unwrap().is_some());

        // Exactly once under an operation id, with a tuple key.
        for _ in 0..2 {
            db.transaction_once("follow-7-8", |tx| tx.insert(&Follow::new(7, 8, "once")).map(|f| f.version)).unwrap();
        }
        assert_eq!(db.get::<Follow>((7, 8)).unwrap().note, "once");
    }

    /// Many composite ids in one find_many: loaded in chunks, every row found once.
    fn find_many_with_many_composite_ids_loads_them_all(t) {
        use common::models::Follow;
        let db = common::builder(t).cache::<Follow>().build().unwrap();
        let rows: Vec<Follow> = (0..150).map(|i| Follow::new(i / 10, i % 10, "x")).collect();
        db.transaction(|tx| rows.iter().try_for_each(|r| tx.insert(r).map(drop))).unwrap();
        db.evict_all::<Follow>().unwrap();
        let keys: Vec<(i64, i64)> = rows.iter().map(|r| (r.follower_id, r.followee_id)).chain([(99, 99)]).collect();
        t.sql.reset();
        let found = db.find_many::<Follow>(&keys).unwrap();
        assert_eq!(found.iter().filter(|r| r.is_some()).count(), 150);
        assert!(found[150].is_none());
        for (key, row) in keys.iter().zip(&found).take(150) {
            let row = row.as_ref().unwrap();
            assert_eq!((row.follower_id, row.followee_id), *key, "in input order");
        }
        assert_eq!(t.sql.selects(), 3, "151 ids in chunks of 64");
    }

    fn update_where_soft_locks_the_rows_until_the_transaction_ends(t) {
        use diesel::prelude::*;
        use common::models::{Article, NewArticle};
        use common::schema::articles;
        let db = common::builder(t).cache::<Article>().build().unwrap();
        let a = db.transaction(|tx| tx.insert_new::<Article, _>(&NewArticle { slug: "a", title: "A" })).unwrap();
        db.transaction(|tx| {
            tx.update_where::<Article, _, _>(articles::id.eq(a.id), articles::title.eq("new"))?;
            // Outside the transaction, the locked key is read from the database (the
            // committed row), never from the cache and never filled (C4).
            t.sql.reset();
            let outside = db.find::<Article>(a.id)?.unwrap();
            assert_eq!((outside.version, outside.title.as_str()), (1, "A"));
            assert_eq!(t.sql.selects(), 1, "bypassed the cache");
            Ok(())
        })
        .unwrap();
        let read = db.find::<Article>(a.id).unwrap().unwrap();
        assert_eq!((read.version, read.title.as_str()), (2, "new"), "C2");
    }

    fn delete_where_returns_the_ids_and_forgets_them_at_commit(t) {
        use diesel::prelude::*;
        use common::models::{Article, ArticleBySlug, NewArticle};
        use common::schema::articles;
        let db = common::builder(t).cache::<Article>().build().unwrap();
        let [a, b, c] = ["a", "b", "c"].map(|slug| {
            db.transaction(|tx| tx.insert_new::<Article, _>(&NewArticle { slug, title: slug })).unwrap()
        });
        let cutoff = chrono::Utc::now().naive_utc() + chrono::Duration::days(1);
        let old = || articles::created_at.lt(cutoff).and(articles::slug.ne("c"));

        let r: Result<(), Error> = db.transaction(|tx| {
            assert_eq!(tx.delete_where::<Article, _>(old())?.len(), 2);
            Err(Error::Other("rolled back".into()))
        });
        assert!(matches!(r, Err(Error::Other(_))));
        assert_eq!(*db.find::<Article>(a.id).unwrap().unwrap(), a, "C1: the rolled-back delete left the row");

        assert!(db.find_by(ArticleBySlug("b".into())).unwrap().is_some());
        t.sql.reset();
        let mut ids = db.transaction(|tx| tx.delete_where::<Article, _>(old())).unwrap();
        ids.sort();
        assert_eq!(ids, [a.id, b.id]);
        let statements = t.sql.statements();
        let selects = usize::from(BACKEND == common::Backend::Mysql);
        assert_eq!((t.sql.selects(), t.sql.writes()), (selects, 1), "{statements:#?}");
        assert!(db.find::<Article>(a.id).unwrap().is_none(), "C2");
        assert!(db.find::<Article>(b.id).unwrap().is_none(), "C2");
        assert!(db.find_by(ArticleBySlug("b".into())).unwrap().is_none(), "C2: the unique key too");
        t.sql.reset();
        assert_eq!(*db.find::<Article>(c.id).unwrap().unwrap(), c);
        assert_eq!(t.sql.count(), 0, "the row that stays is still cached");
    }

    only(postgres)
    fn commit_failing_on_a_deferred_constraint_leaves_the_cache_untouched(t) {
        let db = common::cached_db(t);
        let ada = db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        let mut next = ada.clone();
        next.name = "never committed".into();
        let r = db.transaction(|tx| {
            tx.update(&next)?;
            // The FK to a missing user is deferred: the statement succeeds, COMMIT fails.
            tx.insert(&Post { id: 1, version: 1, user_id: 404, title: "orphan".into() })?;
            Ok(())
        });
        match r {
            Err(Error::Database(diesel::result::Error::DatabaseError(kind, _))) => {
                assert!(matches!(kind, diesel::result::DatabaseErrorKind::ForeignKeyViolation), "{kind:?}");
            }
            other => panic!("expected the COMMIT to fail, got {other:?}"),
        }
        assert!(db.find::<Post>(1).unwrap().is_none(), "C1: the post never committed");
        let read = db.find::<User>(1).unwrap().unwrap();
        assert_eq!((read.version, read.name.as_str()), (1, "Ada"), "C1");
        // The connection is usable after the failed COMMIT.
        assert_eq!(db.transaction(|tx| tx.update(&next)).unwrap().version, 2);
    }
}

/// The batcher (C11): many operations share one transaction and one COMMIT, each keeps
/// its own result, its own failure and its own read-your-writes.
mod batching {
    use super::common;
    use crate::backend_tests;
    use common::models::{Product, User};
    use diesel_l2::{BatchConfig, Error};
    use std::sync::{Arc, Barrier, Mutex};
    use std::time::Duration;

    /// A batcher that waits long enough for every test thread to join one batch.
    fn wide(n: usize) -> BatchConfig {
        BatchConfig::new(n, Duration::from_millis(500)).always_wait()
    }

    fn seed<C>(db: &diesel_l2::Db<C>, n: i32)
    where
        C: diesel::r2d2::R2D2Connection + 'static,
        Product: diesel_l2::CachedOps<C>,
    {
        db.transaction(|tx| {
            for id in 1..=n {
                tx.insert(&Product {
                    id,
                    version: 1,
                    sku: format!("p{id}"),
                    stock: 0,
                })?;
            }
            Ok(())
        })
        .unwrap();
    }

    backend_tests! {
        fn many_writers_share_commits_and_each_reads_its_write(t, common::TestDbOptions::default().max_size(4)) {
            let db = common::cached_db(t);
            seed(&db, 4);
            let batcher = db.batcher(BatchConfig::new(64, Duration::from_millis(5))).unwrap();
            std::thread::scope(|s| {
                for w in 0..16 {
                    let (b, db) = (batcher.clone(), db.clone());
                    s.spawn(move || {
                        for i in 0..10 {
                            let id = (w + i) % 4 + 1;
                            let stored = b.submit(move |tx| {
                                let mut p = tx.get::<Product>(id)?;
                                p.stock += 1;
                                tx.update(&p)
                            }).unwrap();
                            // C2 for this caller: its write, or a newer one, from the cache.
                            let read = db.find::<Product>(id).unwrap().unwrap();
                            assert!(read.version >= stored.version, "C2: read v{} after writing v{}", read.version, stored.version);
                        }
                    });
                }
            });
            let total: i32 = (1..=4).map(|id| db.find::<Product>(id).unwrap().unwrap().stock).sum();
            assert_eq!(total, 160, "every increment applied once");
            let st = batcher.stats();
            assert_eq!(st.operations, 160);
            assert!(st.batches < 160, "operations shared transactions: {st:?}");
            println!("[{}] batcher: {} operations in {} batches (mean {:.1}, largest {}), mean wait {:?}", t.backend, st.operations, st.batches, st.mean_batch(), st.largest_batch, st.mean_wait());
        }

        /// Several batches at once (`in_flight`): each on its own connection; batches that
        /// meet on a row wait or conflict (resubmitted here), and every acknowledged write
        /// is applied once and read back (C11, C2).
        fn batches_in_flight_at_once_lose_nothing(t, common::TestDbOptions::default().max_size(6)) {
            let db = common::cached_db(t);
            seed(&db, 4);
            let batcher = db.batcher(BatchConfig::new(16, Duration::from_millis(2)).in_flight(3)).unwrap();
            std::thread::scope(|s| {
                for w in 0..12 {
                    let b = batcher.clone();
                    s.spawn(move || {
                        for i in 0..10 {
                            let id = (w + i) % 4 + 1;
                            loop {
                                match b.submit(move |tx| { let mut p = tx.get::<Product>(id)?; p.stock += 1; tx.update(&p) }) {
                                    Ok(_) => break,
                                    Err(e) if e.is_retryable() => continue,
                                    Err(e) => panic!("{e:?}"),
                                }
                            }
                        }
                    });
                }
            });
            let total: i32 = (1..=4).map(|id| db.find::<Product>(id).unwrap().unwrap().stock).sum();
            assert_eq!(total, 120, "every acknowledged increment applied once");
            assert!(db.batcher(BatchConfig::default().in_flight(0)).is_err());
        }

        fn a_conflict_in_the_middle_of_a_batch_fails_only_its_operation(t) {
            let db = common::cached_db(t);
            seed(&db, 3);
            let stale = db.find::<Product>(2).unwrap().unwrap();
            db.transaction(|tx| { let mut p = tx.get::<Product>(2)?; p.stock = 7; tx.update(&p) }).unwrap();
            let batcher = db.batcher(wide(3)).unwrap();
            let order = Arc::new(Mutex::new(Vec::new()));
            let results = std::thread::scope(|s| {
                let hs: Vec<_> = (1..=3).map(|id| {
                    let (b, stale, order) = (batcher.clone(), (*stale).clone(), order.clone());
                    std::thread::sleep(Duration::from_millis(20 * id as u64)); // submission order 1, 2, 3
                    s.spawn(move || b.submit(move |tx| {
                        order.lock().unwrap().push(id);
                        let mut p = if id == 2 { stale.clone() } else { tx.get::<Product>(id)? };
                        p.stock += 10;
                        tx.update(&p)
                    }))
                }).collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
            });
            // The fast attempt (no savepoints) stops at the conflict and rolls back; the
            // batch then runs again, in submission order, with a savepoint per operation.
            assert_eq!(*order.lock().unwrap(), vec![1, 2, 1, 2, 3], "submission order, twice");
            assert_eq!(batcher.stats().batches, 1, "one transaction");
            assert_eq!(results[0].as_ref().unwrap().stock, 10);
            assert!(matches!(results[1], Err(Error::Conflict { expected: 1, found: Some(2), .. })), "{:?}", results[1]);
            assert_eq!(results[2].as_ref().unwrap().stock, 10);
            assert_eq!(db.find::<Product>(1).unwrap().unwrap().stock, 10);
            assert_eq!(db.find::<Product>(2).unwrap().unwrap().stock, 7, "the conflicted operation wrote nothing");
            assert_eq!(db.find::<Product>(3).unwrap().unwrap().stock, 10);
        }

        /// Operations on one key run in submission order, in one batch and across batches
        /// (each appends a digit: 1, 2, 3 in order makes 123).
        fn same_key_operations_run_in_submission_order(t) {
            let db = common::cached_db(t);
            seed(&db, 2);
            for (id, config) in [(1, wide(3)), (2, BatchConfig::new(1, Duration::from_millis(1)))] {
                let batcher = db.batcher(config).unwrap();
                std::thread::scope(|s| {
                    for digit in 1..=3 {
                        let b = batcher.clone();
                        s.spawn(move || b.submit(move |tx| {
                            let mut p = tx.get::<Product>(id)?;
                            p.stock = p.stock * 10 + digit;
                            tx.update(&p)
                        }).unwrap());
                        std::thread::sleep(Duration::from_millis(40));
                    }
                });
                assert_eq!(db.find::<Product>(id).unwrap().unwrap().stock, 123, "order kept (product {id})");
            }
        }

        fn a_panic_is_its_callers_alone(t) {
            let db = common::cached_db(t);
            seed(&db, 2);
            let batcher = db.batcher(wide(2)).unwrap();
            let gate = Barrier::new(2);
            std::thread::scope(|s| {
                let b1 = batcher.clone();
                let g = &gate;
                let panicker = s.spawn(move || {
                    g.wait();
                    b1.submit(|tx| -> Result<(), Error> {
                        let mut p = tx.get::<Product>(1)?;
                        p.stock = 99;
                        tx.update(&p)?;
                        panic!("a handler bug");
                    })
                });
                let b2 = batcher.clone();
                let fine = s.spawn(move || {
                    g.wait();
                    b2.submit(|tx| { let mut p = tx.get::<Product>(2)?; p.stock = 5; tx.update(&p) })
                });
                assert!(panicker.join().is_err(), "the panic reached its caller");
                assert_eq!(fine.join().unwrap().unwrap().stock, 5);
            });
            assert_eq!(db.find::<Product>(1).unwrap().unwrap().stock, 0, "the panicked write rolled back");
            // The batcher carries on.
            let p = batcher.submit(|tx| { let mut p = tx.get::<Product>(1)?; p.stock = 1; tx.update(&p) }).unwrap();
            assert_eq!(p.stock, 1);
            assert_eq!(batcher.stats().panics, 1);
        }

        /// A COMMIT that fails (a deferred foreign key) fails every operation of the batch
        /// with a retryable error and caches nothing (C1); the next batch commits.
        only(postgres, sqlite)
        fn a_failed_commit_fails_the_whole_batch_and_caches_nothing(t) {
            let db = common::cached_db(t);
            seed(&db, 2);
            let doomed = if BACKEND == common::Backend::Sqlite {
                t.exec("CREATE TABLE commit_guard (id BIGINT PRIMARY KEY NOT NULL, \
                        user_ref BIGINT NOT NULL REFERENCES users (id) DEFERRABLE INITIALLY DEFERRED)");
                "INSERT INTO commit_guard (id, user_ref) VALUES (1, -1)"
            } else {
                "INSERT INTO posts (id, version, user_id, title) VALUES (1, 1, -1, 'doomed')"
            };
            let batcher = db.batcher(wide(2)).unwrap();
            let gate = Barrier::new(2);
            let (a, b) = std::thread::scope(|s| {
                let (b1, b2, g) = (batcher.clone(), batcher.clone(), &gate);
                let a = s.spawn(move || { g.wait(); b1.submit(|tx| { let mut p = tx.get::<Product>(1)?; p.stock = 1; tx.update(&p) }) });
                let b = s.spawn(move || { g.wait(); b2.submit(move |tx| {
                    use diesel::connection::SimpleConnection;
                    tx.conn().batch_execute(doomed)?;
                    tx.insert(&User::new(5, "in a doomed batch"))
                }) });
                (a.join().unwrap(), b.join().unwrap())
            });
            for r in [a.map(|_| ()), b.map(|_| ())] {
                let e = r.unwrap_err();
                assert!(matches!(e, Error::BatchCommitFailed(_)) && e.is_retryable(), "{e:?}");
            }
            assert_eq!(db.find::<Product>(1).unwrap().unwrap().stock, 0, "C1: nothing cached");
            assert!(db.find::<User>(5).unwrap().is_none());
            let p = batcher.submit(|tx| { let mut p = tx.get::<Product>(1)?; p.stock = 3; tx.update(&p) }).unwrap();
            assert_eq!(p.stock, 3, "the next batch commits");
            assert_eq!(batcher.stats().failed_commits, 1);
        }

        /// MariaDB rolls the whole transaction back on a deadlock, savepoints included.
        /// The batch's operation that hit the deadlock fails with its (retryable) error;
        /// the operations before and after it run again in the next batch, once.
        only(mysql)
        fn a_deadlock_fails_its_victim_and_reruns_the_others(t) {
            use diesel::connection::SimpleConnection;
            let db = common::cached_db(t);
            seed(&db, 3);
            // The other transaction writes many rows first, so InnoDB picks the batch (the
            // lighter transaction) as the deadlock victim.
            db.transaction(|tx| { for id in 100..160 { tx.insert(&User::new(id, "weight"))?; } Ok(()) }).unwrap();
            let mut other = t.raw_connection();
            other.batch_execute("BEGIN; UPDATE users SET bio = 'heavy' WHERE id >= 100; UPDATE products SET sku = 'locked' WHERE id = 2").unwrap();
            let batcher = db.batcher(wide(3)).unwrap();
            let runs = Arc::new(Mutex::new(Vec::new()));
            let results = std::thread::scope(|s| {
                let hs: Vec<_> = (1..=3).map(|id| {
                    let (b, runs) = (batcher.clone(), runs.clone());
                    std::thread::sleep(Duration::from_millis(20));
                    s.spawn(move || b.submit(move |tx| {
                        runs.lock().unwrap().push(id);
                        let mut p = tx.get::<Product>(id)?;
                        p.stock += 10;
                        tx.update(&p)
                    }))
                }).collect();
                // Operation 2 now waits for `other`'s lock on product 2; `other` asks for
                // product 1, which the batch holds: a deadlock.
                std::thread::sleep(Duration::from_millis(600));
                let closing = other.batch_execute("UPDATE products SET sku = 'x' WHERE id = 1");
                other.batch_execute("ROLLBACK").unwrap();
                println!("[mysql] the other transaction's second statement: {closing:?}");
                hs.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
            });
            assert_eq!(results[0].as_ref().unwrap().stock, 10, "op 1 applied once");
            assert_eq!(results[2].as_ref().unwrap().stock, 10, "op 3 applied once");
            match &results[1] {
                Err(e) => {
                    assert!(e.is_retryable(), "the victim's error is retryable: {e:?}");
                    assert_eq!(batcher.stats().aborted_batches, 1);
                    assert_eq!(*runs.lock().unwrap(), vec![1, 2, 3, 1, 3], "the survivors ran again, in order");
                    assert_eq!(db.find::<Product>(2).unwrap().unwrap().stock, 0);
                }
                // InnoDB chose the other transaction after all: the batch simply committed.
                Ok(p) => assert_eq!(p.stock, 10),
            }
            for id in [1, 3] {
                assert_eq!(db.find::<Product>(id).unwrap().unwrap().stock, 10, "C1/C2: product {id} once, cached as committed");
            }
        }

        /// The connection dies before the batch's COMMIT: from the client's side the
        /// outcome is unknown, which is its own error (not retryable without an operation
        /// id); nothing is cached, and the batcher carries on with a new connection.
        only(postgres)
        fn a_lost_connection_at_commit_is_an_unknown_outcome(t) {
            use diesel::connection::SimpleConnection;
            use diesel::prelude::*;
            let db = common::cached_db(t);
            seed(&db, 2);
            let batcher = db.batcher(wide(2)).unwrap();
            let killer = Arc::new(Mutex::new(t.raw_connection()));
            let gate = Barrier::new(2);
            let (a, b) = std::thread::scope(|s| {
                let (b1, b2, g) = (batcher.clone(), batcher.clone(), &gate);
                let _ = g;
                let a = s.spawn(move || b1.submit(|tx| { let mut p = tx.get::<Product>(1)?; p.stock = 1; tx.update(&p) }));
                std::thread::sleep(Duration::from_millis(50)); // op 1 first, then op 2
                let k = killer.clone();
                let b = s.spawn(move || { b2.submit(move |tx| {
                    #[derive(QueryableByName)]
                    struct Pid { #[diesel(sql_type = diesel::sql_types::Integer)] pid: i32 }
                    let pid: Pid = diesel::sql_query("SELECT pg_backend_pid() AS pid").get_result(tx.conn())?;
                    k.lock().unwrap().batch_execute(&format!("SELECT pg_terminate_backend({})", pid.pid)).unwrap();
                    Ok(())
                }) });
                (a.join().unwrap(), b.join().unwrap())
            });
            let e = a.unwrap_err();
            assert!(matches!(e, Error::CommitOutcomeUnknown(_)) && !e.is_retryable(), "{e:?}");
            assert!(b.is_err(), "{b:?}");
            assert_eq!(db.find::<Product>(1).unwrap().unwrap().stock, 0, "nothing cached (C1)");
            let mut ok = None;
            for _ in 0..20 {
                match batcher.submit(|tx| { let mut p = tx.get::<Product>(2)?; p.stock = 2; tx.update(&p) }) {
                    Ok(p) => { ok = Some(p); break; }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
            assert_eq!(ok.expect("the batcher recovers").stock, 2);
        }

        fn operation_ids_are_exactly_once_within_and_across_batches(t) {
            let db = common::cached_db(t);
            seed(&db, 1);
            let batcher = db.batcher(wide(3)).unwrap();
            let gate = Barrier::new(3);
            let outcomes = std::thread::scope(|s| {
                let hs: Vec<_> = (0..3).map(|_| {
                    let (b, g) = (batcher.clone(), &gate);
                    s.spawn(move || { g.wait(); b.submit_once("take-4", |tx| {
                        let mut p = tx.get::<Product>(1)?;
                        p.stock -= 4;
                        Ok(tx.update(&p)?.stock)
                    }) })
                }).collect();
                hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect::<Vec<_>>()
            });
            assert_eq!(outcomes.iter().filter(|o| !o.is_replay()).count(), 1, "{outcomes:?}");
            assert!(outcomes.iter().all(|o| **o == -4), "{outcomes:?}");
            let later = batcher.submit_once("take-4", |_tx| Ok(0)).unwrap();
            assert_eq!((later.is_replay(), *later), (true, -4), "a later batch replays");
            assert_eq!(db.find::<Product>(1).unwrap().unwrap().stock, -4);
        }

        fn shutdown_drains_what_was_submitted(t) {
            let db = common::cached_db(t);
            seed(&db, 1);
            let batcher = db.batcher(BatchConfig::new(4, Duration::from_millis(50))).unwrap();
            std::thread::scope(|s| {
                let hs: Vec<_> = (0..8).map(|_| {
                    let b = batcher.clone();
                    s.spawn(move || b.submit(|tx| { let mut p = tx.get::<Product>(1)?; p.stock += 1; tx.update(&p) }))
                }).collect();
                std::thread::sleep(Duration::from_millis(20));
                batcher.shutdown();
                for h in hs {
                    match h.join().unwrap() {
                        Ok(_) => {}
                        // Submitted after the shutdown began: refused, never lost silently.
                        Err(Error::Config(m)) => assert!(m.contains("shut down"), "{m}"),
                        Err(e) => panic!("{e:?}"),
                    }
                }
            });
            let applied = db.find::<Product>(1).unwrap().unwrap().stock as u64;
            assert_eq!(applied, batcher.stats().operations, "every accepted operation committed");
            assert!(matches!(batcher.submit(|_tx| Ok(())), Err(Error::Config(_))));
        }
    }
}
