//! Optimistic versions (C6): the version is checked and bumped in one statement, and any
//! version mismatch is a conflict that never overwrites. Nothing compares content to guess
//! a replay: a write that repeats another one is a conflict (replays are recognised by
//! operation id, tests/exactly_once.rs).

mod common;

use common::models::{Product, User};
use diesel_l2::Error;

backend_tests! {
    fn update_checks_and_bumps_the_version_in_one_statement(t) {
        let db = common::cached_db(t);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        let mut next = v1.clone();
        next.bio = Some("analyst".into());
        t.sql.reset();
        let stored = db.transaction(|tx| tx.update(&next)).unwrap();
        assert_eq!(stored.version, 2);
        let writes: Vec<String> = t.sql.statements().into_iter().filter(|s| s.trim_start().to_uppercase().starts_with("UPDATE")).collect();
        assert_eq!(writes.len(), 1, "{:?}", t.sql.statements());
        let sql = writes[0].to_lowercase();
        assert!(sql.contains("where") && sql.contains("version"), "the UPDATE checks the version: {sql}");
        if BACKEND != common::Backend::Mysql {
            assert_eq!(t.sql.selects(), 0, "RETURNING brings the stored row back: {:?}", t.sql.statements());
        }
    }

    fn stale_update_is_a_conflict_and_never_overwrites(t) {
        let db = common::cached_db(t);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        let mut a = v1.clone();
        a.name = "first writer".into();
        db.transaction(|tx| tx.update(&a)).unwrap();
        let mut b = v1.clone();
        b.name = "second writer, stale".into();
        let err = db.transaction(|tx| tx.update(&b)).unwrap_err();
        match &err {
            Error::Conflict { expected, found, table, .. } => {
                assert_eq!((*expected, *found, *table), (1, Some(2), "users"));
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert!(err.to_string().contains("reload"), "the message says what to do: {err}");
        let read = db.find::<User>(1).unwrap().unwrap();
        assert_eq!((read.version, read.name.as_str()), (2, "first writer"));
        let mut conn = t.conn();
        use diesel::prelude::*;
        let name: String = common::schema::users::table.find(1).select(common::schema::users::name).first(&mut conn).unwrap();
        assert_eq!(name, "first writer", "the database was not overwritten");
        assert_eq!(db.stats().region("users").unwrap().conflicts, 1);
    }

    fn update_of_a_deleted_row_is_a_conflict_with_found_none(t) {
        let db = common::cached_db(t);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        db.transaction(|tx| tx.delete(&v1)).unwrap();
        let err = db.transaction(|tx| tx.update(&v1)).unwrap_err();
        assert!(matches!(err, Error::Conflict { expected: 1, found: None, .. }), "{err:?}");
        assert!(err.to_string().contains("gone"), "{err}");
    }

    fn a_repeated_update_is_a_conflict_not_a_guessed_replay(t) {
        let db = common::cached_db(t);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        let mut next = v1.clone();
        next.name = "Ada L.".into();
        db.transaction(|tx| tx.update(&next)).unwrap();
        // The same write again, from the same version: the database holds exactly this row,
        // but content cannot tell a redelivery from another writer's lookalike (C6).
        let err = db.transaction(|tx| tx.update(&next)).unwrap_err();
        assert!(matches!(err, Error::Conflict { expected: 1, found: Some(2), .. }), "{err:?}");
        assert_eq!(db.find::<User>(1).unwrap().unwrap().version, 2, "nothing was written twice");
    }

    fn two_lookalike_debits_from_one_version_are_never_both_applied(t) {
        // Two transfers take 3 from the same stock, both computed from version 1: they
        // produce the same row. The second must fail, or 3 units are lost (C6).
        let db = common::cached_db(t);
        let p = db.transaction(|tx| tx.insert(&Product { id: 1, version: 1, sku: "A".into(), stock: 10 })).unwrap();
        let mut take3 = p.clone();
        take3.stock = 7;
        db.transaction(|tx| tx.update(&take3)).unwrap();
        let err = db.transaction(|tx| tx.update(&take3)).unwrap_err();
        assert!(matches!(err, Error::Conflict { expected: 1, found: Some(2), .. }), "{err:?}");
        assert!(err.is_retryable(), "a conflict is retried by Db::retry");
        // Through retry, the second debit re-reads and applies on top of the first.
        db.retry(diesel_l2::RetryPolicy::default(), |tx| {
            let mut cur = (*tx.get::<Product>(1)?).clone();
            cur.stock -= 3;
            tx.update(&cur)
        })
        .unwrap();
        assert_eq!(db.find::<Product>(1).unwrap().unwrap().stock, 4, "both debits applied, once each");
    }

    fn versioned_delete(t) {
        let db = common::cached_db(t);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        let mut next = v1.clone();
        next.name = "v2".into();
        let v2 = db.transaction(|tx| tx.update(&next)).unwrap();
        let err = db.transaction(|tx| tx.delete(&v1)).unwrap_err();
        assert!(matches!(err, Error::Conflict { expected: 1, found: Some(2), .. }), "{err:?}");
        assert!(db.find::<User>(1).unwrap().is_some(), "a stale delete deletes nothing");
        db.transaction(|tx| tx.delete(&v2)).unwrap();
        let again = db.transaction(|tx| tx.delete(&v2)).unwrap_err();
        assert!(matches!(again, Error::Conflict { expected: 2, found: None, .. }), "deleting a row that is gone is a conflict: {again:?}");
        assert!(db.find::<User>(1).unwrap().is_none());
        // A row that never existed is no different.
        let never = db.transaction(|tx| tx.delete(&User::new(99, "nobody"))).unwrap_err();
        assert!(matches!(never, Error::Conflict { found: None, .. }), "{never:?}");
    }

    fn i32_versions_work_and_overflow_is_a_typed_error(t) {
        let db = common::cached_db(t);
        let p = db.transaction(|tx| tx.insert(&Product { id: 1, version: 1, sku: "A-1".into(), stock: 10 })).unwrap();
        let mut next = p.clone();
        next.stock = 9;
        let stored = db.transaction(|tx| tx.update(&next)).unwrap();
        assert_eq!(stored.version, 2);
        let top = db.transaction(|tx| tx.insert(&Product { id: 2, version: i32::MAX, sku: "MAX".into(), stock: 1 })).unwrap();
        let err = db.transaction(|tx| tx.update(&top)).unwrap_err();
        assert!(matches!(err, Error::VersionOverflow { .. }), "{err:?}");
        assert!(err.to_string().contains("BIGINT"), "{err}");
        assert_eq!(db.find::<Product>(2).unwrap().unwrap().version, i32::MAX, "nothing was written");
    }
}
