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
            Ok::<_, Error>(())
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
        assert_eq!(t.sql.count(), 0, "both negative entries are cached");

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
                Ok::<_, Error>(ids)
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
            Ok::<_, Error>(())
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
            Ok::<_, Error>(())
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
