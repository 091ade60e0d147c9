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
