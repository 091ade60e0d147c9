//! Optimistic versions (C6): the version is checked and bumped in one statement, and any
//! version mismatch is a conflict that never overwrites. Nothing compares content to guess
//! a replay: a write that repeats another one is a conflict (replays are recognised by
//! operation id, tests/exactly_once.rs).

mod common;

use common::models::{Product, User, UserChanges};
use diesel::r2d2::R2D2Connection;
use diesel_l2::{CachedOps, ChangesetOps, Error, Tx};

/// Runs diesel's own versioned `AsChangeset` update (`own`, in a transaction) and then
/// `Tx::update_changes` with the same changeset, and checks that both sent the same
/// statements: BEGIN, one UPDATE (plus the reload on MariaDB), COMMIT.
fn same_statements_as_diesels_own<C>(
    t: &common::TestDb<C>,
    own: impl Fn(&mut Tx<'_, C>, &UserChanges) -> Result<User, Error>,
) where
    C: R2D2Connection + common::TestBackend + 'static,
    User: CachedOps<C> + for<'a> ChangesetOps<C, &'a UserChanges>,
    Product: CachedOps<C>,
    common::models::Tag: CachedOps<C>,
    common::models::Post: CachedOps<C>,
{
    let db = common::cached_db(t);
    db.transaction(|tx| {
        tx.insert(&User::new(1, "Ada"))?;
        tx.insert(&User::new(2, "Bob"))
    })
    .unwrap();
    let changes = UserChanges {
        name: Some("Grace".into()),
        ..Default::default()
    };
    t.sql.reset();
    let theirs = db.transaction(|tx| own(tx, &changes)).unwrap();
    let diesels = t.sql.statements();
    t.sql.reset();
    let ours = db
        .transaction(|tx| tx.update_changes::<User, _>(1, 1, &changes))
        .unwrap();
    let mine = t.sql.statements();
    assert_eq!(
        (ours.version, ours.email.as_str(), ours.name.as_str()),
        (2, "ada-1@example.com", "Grace")
    );
    assert_eq!((theirs.version, theirs.name.as_str()), (2, "Grace"));
    assert_eq!(
        mine.len(),
        diesels.len(),
        "ours: {mine:#?}\ndiesel's: {diesels:#?}"
    );
    let text = |s: &str| s.split("-- binds").next().unwrap().trim().to_string();
    for (a, b) in mine.iter().zip(&diesels) {
        assert_eq!(text(a), text(b), "same SQL, only the id bound differs");
    }
    assert_eq!(t.sql.writes(), 1, "{mine:#?}");
    let reload = usize::from(t.backend == common::Backend::Mysql);
    assert_eq!(
        t.sql.selects(),
        reload,
        "RETURNING brings the row back (a reload on MariaDB): {mine:#?}"
    );
}

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
            let mut cur = tx.get::<Product>(1)?;
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

    only(sqlite, postgres)
    fn partial_update_issues_the_same_statements_as_diesels_own(t) {
        use diesel::prelude::*;
        use common::schema::users;
        same_statements_as_diesels_own(t, |tx, changes| {
            Ok(diesel::update(users::table.filter(users::id.eq(2)).filter(users::version.eq(1)))
                .set((changes, users::version.eq(users::version + 1)))
                .returning(User::as_returning())
                .get_result(tx.conn())?)
        });
    }

    only(mysql)
    fn partial_update_issues_the_same_statements_as_diesels_own_and_a_reload(t) {
        use diesel::prelude::*;
        use common::schema::users;
        same_statements_as_diesels_own(t, |tx, changes| {
            diesel::update(users::table.filter(users::id.eq(2)).filter(users::version.eq(1)))
                .set((changes, users::version.eq(users::version + 1)))
                .execute(tx.conn())?;
            Ok(users::table.find(2).select(User::as_select()).first(tx.conn())?)
        });
    }

    fn partial_update_from_a_stale_version_is_a_conflict(t) {
        use common::models::UserChanges;
        let db = common::cached_db(t);
        db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        let first = UserChanges { name: Some("first".into()), ..Default::default() };
        let v2 = db.transaction(|tx| tx.update_changes::<User, _>(1, 1, &first)).unwrap();
        assert_eq!((v2.version, v2.name.as_str()), (2, "first"));
        let stale = UserChanges { name: Some("stale".into()), ..Default::default() };
        let err = db.transaction(|tx| tx.update_changes::<User, _>(1, 1, &stale)).unwrap_err();
        assert!(matches!(err, Error::Conflict { expected: 1, found: Some(2), table: "users", .. }), "{err}");
        assert!(err.is_retryable());
        let err = db.transaction(|tx| tx.update_changes::<User, _>(9, 1, &stale)).unwrap_err();
        assert!(matches!(err, Error::Conflict { expected: 1, found: None, .. }), "{err}");
        let row = db.bypass().get::<User>(1).unwrap();
        assert_eq!((row.version, row.name.as_str()), (2, "first"), "never overwritten");
        assert_eq!(*db.find::<User>(1).unwrap().unwrap(), *row);
        assert_eq!(db.stats().region("users").unwrap().conflicts, 2);
    }

    fn unversioned_partial_update_wins_and_still_bumps_the_version(t) {
        use common::models::UserChanges;
        let db = common::cached_db(t);
        db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        let a = UserChanges { name: Some("a".into()), ..Default::default() };
        let b = UserChanges { email: Some("b@example.com".into()), ..Default::default() };
        db.transaction(|tx| tx.update_changes_unversioned::<User, _>(1, &a)).unwrap();
        let stored = db.transaction(|tx| tx.update_changes_unversioned::<User, _>(1, &b)).unwrap();
        assert_eq!((stored.version, stored.name.as_str(), stored.email.as_str()), (3, "a", "b@example.com"));
        t.sql.reset();
        assert_eq!(*db.find::<User>(1).unwrap().unwrap(), stored);
        assert_eq!(t.sql.count(), 0, "C2: written through at commit");
        // A versioned writer from an old version conflicts with it.
        let err = db.transaction(|tx| tx.update_changes::<User, _>(1, 2, &a)).unwrap_err();
        assert!(matches!(err, Error::Conflict { expected: 2, found: Some(3), .. }), "{err}");
        let err = db.transaction(|tx| tx.update_changes_unversioned::<User, _>(9, &a)).unwrap_err();
        assert!(matches!(err, Error::NotFound { table: "users", .. }), "{err}");
        // An empty changeset (every field `None`) only bumps the version.
        let touched = db.transaction(|tx| tx.update_changes::<User, _>(1, 3, &UserChanges::default())).unwrap();
        assert_eq!(touched, User { version: 4, ..stored });
    }

    fn partial_update_of_an_i32_version(t) {
        use diesel::prelude::*;
        use common::schema::products;
        let db = common::cached_db(t);
        db.transaction(|tx| tx.insert(&Product { id: 1, version: 1, sku: "A".into(), stock: 5 })).unwrap();
        let p = db.transaction(|tx| tx.update_changes::<Product, _>(1, 1, products::stock.eq(4))).unwrap();
        assert_eq!((p.version, p.stock), (2, 4));
        let err = db
            .transaction(|tx| tx.update_changes::<Product, _>(1, i64::MAX, products::stock.eq(3)))
            .unwrap_err();
        assert!(matches!(err, Error::Conflict { found: Some(2), .. }), "{err}");
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
        assert!(err.to_string().contains("widen the version column to BIGINT"), "{err}");
        // An i64 version at its maximum cannot be widened: the message says to reset it.
        let mut u = User::new(3, "max");
        u.version = i64::MAX;
        let top64 = db.transaction(|tx| tx.insert(&u)).unwrap();
        let err = db.transaction(|tx| tx.update(&top64)).unwrap_err();
        assert!(matches!(err, Error::VersionOverflow { max: i64::MAX, .. }), "{err:?}");
        assert!(err.to_string().contains("Reset it") && !err.to_string().contains("widen"), "{err}");
        assert_eq!(db.find::<Product>(2).unwrap().unwrap().version, i32::MAX, "nothing was written");
    }
}

/// Operation ids (C6): a transaction run under an id commits its effects once, whatever
/// the number of deliveries, and every delivery gets the recorded result.
mod exactly_once {
    use super::common;
    use super::common::models::{Product, User};
    use crate::backend_tests;
    use diesel::prelude::*;
    use diesel_l2::{Error, Operation, RetryPolicy};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::{mpsc, Arc, Mutex};
    use std::time::{Duration, Instant};

    /// Per transfer: each delivery's (ran it, recorded balances).
    type Deliveries = HashMap<usize, Vec<(bool, (i32, i32))>>;

    backend_tests! {
        fn a_replay_runs_nothing_and_returns_the_recorded_outcome(t) {
            let db = common::cached_db(t);
            db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
            let runs = AtomicUsize::new(0);
            let rename = || db.transaction_once("rename-1", |tx| {
                runs.fetch_add(1, SeqCst);
                let mut u = tx.get::<User>(1)?;
                u.name = "Ada L.".into();
                Ok(tx.update(&u)?.version)
            });
            let first = rename().unwrap();
            assert_eq!((first.is_replay(), *first), (false, 2));
            t.sql.reset();
            let again = rename().unwrap();
            assert_eq!((again.is_replay(), *again), (true, 2), "the recorded result comes back");
            assert_eq!(runs.load(SeqCst), 1, "the closure ran once");
            let writes = t.sql.statements().iter().filter(|s| s.to_uppercase().contains("UPDATE \"USERS\"") || s.to_uppercase().contains("UPDATE `USERS`")).count();
            assert_eq!(writes, 0, "a replay writes nothing: {:?}", t.sql.statements());
            assert_eq!(db.find::<User>(1).unwrap().unwrap().version, 2);
        }

        /// The plain entry points take closures returning `diesel_l2::Result`: `?` on the
        /// library's calls and a final `Ok(value)` need no turbofish and no annotation on
        /// the closure. This test stops compiling if that inference regresses; the
        /// `_with_error` twins (an application's own error type) are in tests/retry.rs.
        fn plain_closures_need_no_error_type_annotation(t) {
            let db = common::cached_db(t);
            let id = db
                .transaction(|tx| {
                    let ada = tx.insert(&User::new(1, "Ada"))?;
                    Ok(ada.id)
                })
                .unwrap();
            let (outer, inner) = db
                .transaction(|tx| {
                    let outer = tx.get::<User>(id)?.version;
                    let inner = tx.savepoint(|sp| {
                        let mut u = sp.get::<User>(id)?;
                        u.name = "Ada L.".into();
                        Ok(sp.update(&u)?.version)
                    })?;
                    Ok((outer, inner))
                })
                .unwrap();
            assert_eq!((outer, inner), (1, 2));
            let retried = db
                .retry(RetryPolicy::default(), |tx| {
                    let mut u = tx.get::<User>(id)?;
                    u.name = "Countess".into();
                    Ok(tx.update(&u)?.version)
                })
                .unwrap();
            assert_eq!(retried, 3);
            let once = db
                .transaction_once("plain-once", |tx| {
                    let grace = tx.insert(&User::new(2, "Grace"))?;
                    Ok(grace.name)
                })
                .unwrap();
            assert_eq!((once.is_replay(), once.as_str()), (false, "Grace"));
            let retried_once = db
                .retry_once(RetryPolicy::default(), "plain-retry-once", |tx| {
                    let mut g = tx.get::<User>(2)?;
                    g.name = "Grace H.".into();
                    Ok(tx.update(&g)?.version)
                })
                .unwrap();
            assert_eq!(*retried_once, 2);
            #[cfg(feature = "tokio")]
            {
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                rt.block_on(async {
                    let id = db
                        .transaction_async(|tx| {
                            let e = tx.insert(&User::new(3, "Edsger"))?;
                            Ok(e.id)
                        })
                        .await
                        .unwrap();
                    let version = db
                        .retry_async(RetryPolicy::default(), move |tx| {
                            let mut e = tx.get::<User>(id)?;
                            e.name = "Edsger D.".into();
                            Ok(tx.update(&e)?.version)
                        })
                        .await
                        .unwrap();
                    assert_eq!(version, 2);
                    let out = db
                        .retry_once_async(RetryPolicy::default(), "plain-async-once", move |tx| {
                            let mut e = tx.get::<User>(id)?;
                            e.name = "E. W. Dijkstra".into();
                            Ok(tx.update(&e)?.version)
                        })
                        .await
                        .unwrap();
                    assert_eq!((out.is_replay(), *out), (false, 3));
                });
            }
        }

        fn a_retried_insert_is_a_replay_not_a_duplicate_key_error(t) {
            let db = common::cached_db(t);
            let signup = || db.transaction_once("signup-7", |tx| {
                Ok(tx.insert(&User::new(7, "Grace"))?.id)
            });
            assert!(!signup().unwrap().is_replay());
            let again = signup().unwrap();
            assert!(again.is_replay());
            assert_eq!(*again, 7);
            // Without an id, the same insert is the database's duplicate-key error.
            let dup = db.transaction(|tx| tx.insert(&User::new(7, "Grace")));
            assert!(matches!(dup, Err(Error::Database(_))), "{dup:?}");
        }

        fn a_redelivered_delete_and_a_multi_row_transaction_apply_once(t) {
            let db = common::cached_db(t);
            let (a, b) = db.transaction(|tx| Ok((tx.insert(&User::new(1, "a"))?, tx.insert(&User::new(2, "b"))?))).unwrap();
            let remove = || db.transaction_once("delete-1", |tx| tx.delete(&a));
            assert!(!remove().unwrap().is_replay());
            assert!(remove().unwrap().is_replay(), "not a conflict: the delete is recognised by its id");
            // Two rows and an insert in one operation: all or nothing, once.
            let batch = || db.transaction_once(Operation::new("batch-9"), |tx| {
                let mut b2 = tx.get::<User>(2)?;
                b2.name = "b2".into();
                tx.update(&b2)?;
                tx.insert(&User::new(3, "c"))?;
                Ok(())
            });
            for _ in 0..3 {
                let _ = batch().unwrap();
            }
            assert_eq!(db.find::<User>(2).unwrap().unwrap().version, b.version + 1);
            assert_eq!(db.find::<User>(3).unwrap().unwrap().version, 1);
            assert!(db.find::<User>(1).unwrap().is_none());
        }

        fn an_error_a_panic_or_a_conflict_records_nothing(t) {
            let db = common::cached_db(t);
            let v1 = db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
            let failed: Result<diesel_l2::Outcome<i64>, Error> = db.transaction_once("op-e", |tx| {
                let mut u = v1.clone();
                u.name = "doomed".into();
                tx.update(&u)?;
                Err(Error::Other("the handler failed".into()))
            });
            assert!(failed.is_err());
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = db.transaction_once("op-e", |_tx| -> Result<i64, Error> { panic!("handler bug") });
            }));
            assert!(panicked.is_err());
            // A conflict rolls the claim back too.
            let mut stale = v1.clone();
            stale.version = 9;
            assert!(matches!(db.transaction_once("op-e", |tx| tx.update(&stale).map(|u| u.version)), Err(Error::Conflict { .. })));
            // Nothing was recorded: the next delivery runs.
            let ok = db.transaction_once("op-e", |tx| {
                let mut u = tx.get::<User>(1)?;
                u.name = "done".into();
                Ok(tx.update(&u)?.version)
            }).unwrap();
            assert_eq!((ok.is_replay(), *ok), (false, 2));
            assert_eq!(db.find::<User>(1).unwrap().unwrap().name, "done");
        }

        /// A COMMIT that fails (a deferred foreign key) rolls the claim back with the
        /// writes: the next delivery runs.
        only(postgres, sqlite)
        fn a_failed_commit_records_nothing(t) {
            let db = common::cached_db(t);
            let doomed = if BACKEND == common::Backend::Sqlite {
                t.exec("CREATE TABLE commit_guard (id BIGINT PRIMARY KEY NOT NULL, \
                        user_ref BIGINT NOT NULL REFERENCES users (id) DEFERRABLE INITIALLY DEFERRED)");
                "INSERT INTO commit_guard (id, user_ref) VALUES (1, -1)"
            } else {
                "INSERT INTO posts (id, version, user_id, title) VALUES (1, 1, -1, 'doomed')"
            };
            let mut fail = true;
            let mut deliver = || db.transaction_once("op-c", |tx| {
                let u = tx.insert(&User::new(1, "Ada"))?;
                if std::mem::take(&mut fail) {
                    use diesel::connection::SimpleConnection;
                    tx.conn().batch_execute(doomed)?;
                }
                Ok(u.version)
            });
            let err = deliver().unwrap_err();
            assert!(matches!(err, Error::Database(_)), "COMMIT failed: {err:?}");
            assert!(db.find::<User>(1).unwrap().is_none(), "C1: nothing committed");
            let ok = deliver().unwrap();
            assert!(!ok.is_replay(), "the failed COMMIT recorded nothing");
            assert!(deliver().unwrap().is_replay());
        }

        fn retry_once_reruns_a_conflicted_attempt_under_the_same_id(t) {
            let db = common::cached_db(t);
            db.transaction(|tx| tx.insert(&Product { id: 1, version: 1, sku: "A".into(), stock: 10 })).unwrap();
            db.find::<Product>(1).unwrap();
            // Another client takes 1 with plain SQL (no listener here): the cached copy the
            // first attempt reads is stale, so its versioned write conflicts.
            t.exec("UPDATE products SET stock = stock - 1, version = version + 1 WHERE id = 1");
            let attempts = AtomicUsize::new(0);
            let take = |op: &str| db.retry_once(RetryPolicy::default(), op, |tx| {
                attempts.fetch_add(1, SeqCst);
                let mut p = (*db.get::<Product>(1)?).clone();
                p.stock -= 3;
                Ok(tx.update(&p)?.stock)
            });
            let first = take("take-3").unwrap();
            assert_eq!((first.is_replay(), *first), (false, 6), "retried on top of the other write");
            assert_eq!(attempts.load(SeqCst), 2, "one conflict, one re-run under the same id");
            let again = take("take-3").unwrap();
            assert_eq!((again.is_replay(), *again), (true, 6));
            assert_eq!(attempts.load(SeqCst), 2, "the replay ran nothing");
            assert_eq!(db.find::<Product>(1).unwrap().unwrap().stock, 6);
        }

        fn concurrent_deliveries_run_once_and_the_other_waits_then_replays(t) {
            let db = common::cached_db(t);
            db.transaction(|tx| tx.insert(&Product { id: 1, version: 1, sku: "A".into(), stock: 10 })).unwrap();
            let runs = Arc::new(AtomicUsize::new(0));
            let (claimed_tx, claimed_rx) = mpsc::channel();
            let (go_tx, go_rx) = mpsc::channel::<()>();
            let go_rx = Mutex::new(go_rx);
            let deliver = |db: diesel_l2::Db<Conn>, runs: Arc<AtomicUsize>, signal: Option<mpsc::Sender<()>>| {
                db.transaction_once("pay-1", |tx| {
                    runs.fetch_add(1, SeqCst);
                    let mut p = tx.get::<Product>(1)?;
                    p.stock -= 4;
                    let stored = tx.update(&p)?;
                    if let Some(s) = &signal {
                        s.send(()).unwrap();
                        go_rx.lock().unwrap().recv().unwrap(); // hold the claim open
                    }
                    Ok(stored.stock)
                })
            };
            std::thread::scope(|s| {
                let first = s.spawn(|| deliver(db.clone(), runs.clone(), Some(claimed_tx)));
                claimed_rx.recv_timeout(Duration::from_secs(30)).unwrap();
                let started = Instant::now();
                let second = s.spawn(|| deliver(db.clone(), runs.clone(), None));
                std::thread::sleep(Duration::from_millis(300));
                assert!(!second.is_finished(), "the second delivery waits for the first");
                go_tx.send(()).unwrap();
                let a = first.join().unwrap().unwrap();
                let b = second.join().unwrap().unwrap();
                assert!(started.elapsed() >= Duration::from_millis(300));
                assert_eq!((a.is_replay(), *a), (false, 6));
                assert_eq!((b.is_replay(), *b), (true, 6), "the waiting delivery replays");
            });
            assert_eq!(runs.load(SeqCst), 1, "one delivery ran");
            assert_eq!(db.find::<Product>(1).unwrap().unwrap().stock, 6);
        }

        fn a_reused_id_with_another_fingerprint_is_an_error_not_a_replay(t) {
            let db = common::cached_db(t);
            let put = |fp: &str, name: &'static str| db.transaction_once(Operation::new("key-1").fingerprint(fp), |tx| {
                Ok(tx.insert(&User::new(1, name))?.name)
            });
            assert!(!put("h1", "Ada").unwrap().is_replay());
            assert_eq!(put("h1", "Ada").unwrap().into_inner(), "Ada");
            let err = put("h2", "Eve").unwrap_err();
            assert!(matches!(&err, Error::OperationMismatch { id, .. } if id == "key-1"), "{err:?}");
            assert!(err.to_string().contains("new id"), "the message says what to do: {err}");
            // A different result type under a recorded id is refused, not misdecoded.
            let wrong: Result<diesel_l2::Outcome<Vec<u8>>, Error> = db.transaction_once(Operation::new("key-1").fingerprint("h1"), |_| Ok(vec![]));
            assert!(matches!(wrong, Err(Error::InvalidOperation(_))), "{wrong:?}");
        }

        fn ids_are_compared_byte_for_byte_whatever_the_collation(t) {
            // MariaDB compares strings case-insensitively by default: `Op-1` and `op-1`
            // must still be two operations (the id column is utf8mb4_bin).
            let db = common::cached_db(t);
            let a = db.transaction_once("Op-1", |tx| Ok(tx.insert(&User::new(1, "a"))?.id)).unwrap();
            let b = db.transaction_once("op-1", |tx| Ok(tx.insert(&User::new(2, "b"))?.id)).unwrap();
            let c = db.transaction_once("op-1 ", |tx| Ok(tx.insert(&User::new(3, "c"))?.id)).unwrap();
            assert!(!a.is_replay() && !b.is_replay() && !c.is_replay(), "three ids, three operations");
            assert!(db.find::<User>(3).unwrap().is_some());
        }

        fn bad_ids_are_typed_errors_and_expired_ids_are_pruned(t) {
            let db = common::builder(t).operation_retention(Duration::from_millis(50)).build().unwrap();
            t.sql.reset();
            let long = db.transaction_once("x".repeat(256), |_| Ok(1));
            assert!(matches!(long, Err(Error::InvalidOperation(_))), "{long:?}");
            let empty = db.transaction_once("", |_| Ok(1));
            assert!(matches!(empty, Err(Error::InvalidOperation(_))), "{empty:?}");
            assert_eq!(t.sql.count(), 0, "rejected before any SQL");
            db.transaction_once("old", |_| Ok(1)).unwrap();
            std::thread::sleep(Duration::from_millis(120));
            assert_eq!(db.prune_operations().unwrap(), 1);
            let rerun = db.transaction_once("old", |_| Ok(2)).unwrap();
            assert_eq!((rerun.is_replay(), *rerun), (false, 2), "past the retention an id runs again (documented)");
            assert!(common::builder(t).operation_retention(Duration::ZERO).build().is_err());
        }

        fn a_missing_operations_table_says_which_migration_to_add(t) {
            let db = common::cached_db(t);
            t.exec("DROP TABLE diesel_l2_operations");
            let err = db.transaction_once("op", |_| Ok(1)).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err:?}");
            assert!(err.to_string().contains("operations_table_sql"), "{err}");
        }

        /// The acceptance test of C6: bank transfers delivered 1–3 times each (some
        /// deliveries concurrent), through `retry_once` with reads from the cache, keep
        /// the total and every balance exact, in the database and in cached reads, apply
        /// every transfer exactly once, and never show a reader a version going back.
        fn bank_transfers_delivered_at_least_once_apply_exactly_once(t, common::TestDbOptions::default().max_size(24)) {
            const ACCOUNTS: i32 = 20;
            const THREADS: usize = 8;
            const TRANSFERS: usize = 240;
            const INITIAL: i32 = 1_000;
            let db = common::cached_db(t);
            db.transaction(|tx| {
                for id in 1..=ACCOUNTS {
                    tx.insert(&Product { id, version: 1, sku: format!("acct-{id}"), stock: INITIAL })?;
                }
                Ok(())
            }).unwrap();
            let mut rng = fastrand::Rng::with_seed(42);
            // (transfer id, from, to, amount); equal amounts on purpose: lookalike writes.
            let transfers: Vec<(usize, i32, i32, i32)> = (0..TRANSFERS).map(|n| {
                let from = rng.i32(1..=ACCOUNTS);
                let mut to = rng.i32(1..=ACCOUNTS - 1);
                if to >= from { to += 1; }
                (n, from, to, rng.i32(1..=5) * 10)
            }).collect();
            // Deliveries: duplicates adjacent, so two threads often take them at once.
            let mut queue = std::collections::VecDeque::new();
            for tr in &transfers {
                for _ in 0..rng.usize(1..=3) { queue.push_back(*tr); }
            }
            let deliveries = queue.len();
            let queue = Mutex::new(queue);
            let outcomes: Mutex<Deliveries> = Mutex::new(HashMap::new());
            let stop = std::sync::atomic::AtomicBool::new(false);
            let backwards = AtomicUsize::new(0);
            let policy = RetryPolicy::attempts(500).backoff(Duration::from_millis(1), Duration::from_millis(20));
            std::thread::scope(|s| {
                // A reader: versions it sees never go back.
                let reader = s.spawn(|| {
                    let mut last: HashMap<i32, i32> = HashMap::new();
                    let mut reads = 0u64;
                    while !stop.load(SeqCst) {
                        let id = fastrand::i32(1..=ACCOUNTS);
                        if let Ok(Some(p)) = db.find::<Product>(id) {
                            let prev = last.insert(id, p.version).unwrap_or(0);
                            if p.version < prev { backwards.fetch_add(1, SeqCst); }
                            reads += 1;
                        }
                    }
                    reads
                });
                let workers: Vec<_> = (0..THREADS).map(|_| s.spawn(|| {
                    loop {
                        let Some((n, from, to, amount)) = queue.lock().unwrap().pop_front() else { return };
                        let out = db.retry_once(policy.clone(), format!("transfer-{n}"), |tx| {
                            // Read from the cache, as the README does: a stale copy is a
                            // conflict, retried under the same id.
                            let mut ids = [from, to];
                            ids.sort();
                            let mut balances = (0, 0);
                            for id in ids {
                                let mut acct = (*db.get::<Product>(id)?).clone();
                                acct.stock += if id == from { -amount } else { amount };
                                let stored = tx.update(&acct)?;
                                if id == from { balances.0 = stored.stock } else { balances.1 = stored.stock }
                            }
                            Ok(balances)
                        }).unwrap_or_else(|e| panic!("transfer {n}: {e}"));
                        outcomes.lock().unwrap().entry(n).or_default().push((!out.is_replay(), out.into_inner()));
                    }
                })).collect();
                for w in workers { w.join().unwrap(); }
                stop.store(true, SeqCst);
                assert!(reader.join().unwrap() > 0);
            });
            let outcomes = outcomes.into_inner().unwrap();
            let mut expected = vec![INITIAL; ACCOUNTS as usize + 1];
            let mut replays = 0;
            for (n, from, to, amount) in &transfers {
                let got = &outcomes[n];
                let ran: Vec<_> = got.iter().filter(|o| o.0).collect();
                assert_eq!(ran.len(), 1, "transfer {n} applied exactly once: {got:?}");
                assert!(got.iter().all(|o| o.1 == ran[0].1), "every delivery of {n} got the recorded outcome: {got:?}");
                replays += got.len() - 1;
                expected[*from as usize] -= amount;
                expected[*to as usize] += amount;
            }
            assert_eq!(replays + TRANSFERS, deliveries);
            let mut conn = t.conn();
            use common::schema::products::dsl as p;
            let rows: Vec<(i32, i32)> = p::products.select((p::id, p::stock)).order(p::id).load(&mut conn).unwrap();
            let total: i32 = rows.iter().map(|r| r.1).sum();
            assert_eq!(total, ACCOUNTS * INITIAL, "the total is conserved in the database");
            for (id, stock) in &rows {
                assert_eq!(*stock, expected[*id as usize], "account {id} in the database");
                let cached = db.find::<Product>(*id).unwrap().unwrap();
                assert_eq!(cached.stock, *stock, "account {id} read through the cache");
            }
            assert_eq!(backwards.load(SeqCst), 0, "a reader saw a version go back");
            println!("[{}] {TRANSFERS} transfers, {deliveries} deliveries, {replays} replays, conflicts {}", t.backend, db.stats().region("products").unwrap().conflicts);
        }
    }
}
