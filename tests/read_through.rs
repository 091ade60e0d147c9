//! Reads outside transactions: a hit runs no SQL, a miss loads once and fills, absent rows
//! are negatively cached for their own ttl, and N concurrent misses run one query.
//! Every claim is counted in SQL statements, not timed.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::models::User;
use diesel_l2::Db;

fn seed<C: diesel::r2d2::R2D2Connection + 'static>(t: &TestDb<C>, ids: &[i64]) {
    for id in ids {
        t.exec(&format!(
            "INSERT INTO users (id, version, email, name) VALUES ({id}, 1, 'u{id}@example.com', 'U{id}')"
        ));
    }
    t.sql.reset();
}

use common::TestDb;

backend_tests! {
    fn hit_runs_no_sql(t) {
        seed(t, &[1]);
        let db = common::cached_db(t);
        let first = db.find::<User>(1).unwrap().unwrap();
        assert_eq!(t.sql.selects(), 1, "a miss loads once: {:?}", t.sql.statements());
        t.sql.reset();
        for _ in 0..100 {
            let again = db.find::<User>(1).unwrap().unwrap();
            assert!(Arc::ptr_eq(&first, &again), "a hit hands out the cached Arc");
        }
        assert_eq!(t.sql.count(), 0, "hits ran SQL: {:?}", t.sql.statements());
        let s = db.stats();
        let users = s.region("users").unwrap();
        assert_eq!((users.hits, users.misses, users.loads), (100, 1, 1));
    }

    fn absent_rows_are_negatively_cached_until_their_ttl(t) {
        let db = common::builder(t)
            .cache_with::<User>(|c| c.negative_ttl(Some(Duration::from_millis(300))))
            .build();
        // `cache::<User>` was registered by `builder` already: a second registration is refused.
        assert!(matches!(db, Err(diesel_l2::Error::Config(_))));

        let db = Db::builder(t.pool.clone())
            .cache_with::<User>(|c| c.negative_ttl(Some(Duration::from_millis(300))))
            .build()
            .unwrap();
        assert!(db.find::<User>(42).unwrap().is_none());
        assert!(db.find::<User>(42).unwrap().is_none());
        assert_eq!(t.sql.selects(), 1, "the second read is a negative hit");
        assert_eq!(db.stats().region("users").unwrap().negative_hits, 1);
        std::thread::sleep(Duration::from_millis(450));
        assert!(db.find::<User>(42).unwrap().is_none());
        assert_eq!(t.sql.selects(), 2, "the negative entry expired after its own ttl");
    }

    fn negative_caching_can_be_turned_off(t) {
        let db = Db::builder(t.pool.clone())
            .cache_with::<User>(|c| c.negative_ttl(None))
            .build()
            .unwrap();
        assert!(db.find::<User>(42).unwrap().is_none());
        assert!(db.find::<User>(42).unwrap().is_none());
        assert_eq!(t.sql.selects(), 2);
    }

    fn an_insert_replaces_the_negative_entry(t) {
        let db = common::cached_db(t);
        assert!(db.find::<User>(5).unwrap().is_none());
        db.transaction(|tx| tx.insert(&User::new(5, "Five"))).unwrap();
        t.sql.reset();
        assert_eq!(db.find::<User>(5).unwrap().unwrap().name, "Five");
        assert_eq!(t.sql.count(), 0, "the committed insert was written through");
    }

    fn rows_expire_after_the_region_ttl(t) {
        seed(t, &[1]);
        let db = Db::builder(t.pool.clone())
            .cache_with::<User>(|c| c.ttl(Duration::from_millis(300)))
            .build()
            .unwrap();
        db.find::<User>(1).unwrap();
        db.find::<User>(1).unwrap();
        assert_eq!(t.sql.selects(), 1);
        std::thread::sleep(Duration::from_millis(450));
        db.find::<User>(1).unwrap();
        assert_eq!(t.sql.selects(), 2, "the row expired and was loaded again");
    }

    fn concurrent_misses_of_one_key_run_one_query(t, common::TestDbOptions::default().max_size(8)) {
        seed(t, &[7]);
        let db = common::cached_db(t);
        const THREADS: usize = 32;
        let start = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (db, start) = (db.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    db.find::<User>(7).unwrap().unwrap().version
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 1);
        }
        assert_eq!(t.sql.selects(), 1, "one load for {THREADS} misses: {:?}", t.sql.statements());
        assert_eq!(db.stats().region("users").unwrap().loads, 1);
    }

    fn unregistered_entity_is_a_typed_error(t) {
        let db = Db::builder(t.pool.clone()).build().unwrap();
        let err = db.find::<User>(1).unwrap_err();
        assert!(matches!(err, diesel_l2::Error::UnknownEntity { .. }));
        assert!(err.to_string().contains(".cache::<"), "the message says how to register: {err}");
    }
}

/// The async front (feature `tokio`, `src/asynch.rs`): a hit is answered on the calling task
/// with no SQL and no blocking pool; a miss is loaded once on the blocking pool; keys held by
/// a transaction (C4) and untrusted regions (C7) go to the database.
#[cfg(feature = "tokio")]
mod async_front {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::sync::mpsc;
    use std::task::{Context, Poll, Waker};

    use diesel_l2::{CacheLookup, Error, RetryPolicy};

    /// Polls `fut` once, outside any runtime: a future that needed `spawn_blocking` (or any
    /// wake-up) could not be ready here.
    fn poll_once<F: Future>(fut: F) -> Poll<F::Output> {
        pin!(fut).poll(&mut Context::from_waker(Waker::noop()))
    }

    /// A current-thread runtime: the worker is the test thread itself.
    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    }

    backend_tests! {
        fn a_hit_is_answered_inline_without_sql_or_the_blocking_pool(t) {
            seed(t, &[1]);
            let db = common::cached_db(t);
            let first = db.find::<User>(1).unwrap().unwrap();
            assert!(db.find::<User>(42).unwrap().is_none(), "cached as absent");
            t.sql.reset();
            let before = db.region_stats::<User>().unwrap();
            for _ in 0..10 {
                // No runtime at all: the hit completes on the first poll.
                let Poll::Ready(read) = poll_once(db.find_async::<User>(1)) else {
                    panic!("a hit waited for something");
                };
                assert!(Arc::ptr_eq(&first, &read.unwrap().unwrap()), "the cached Arc");
                let Poll::Ready(absent) = poll_once(db.get_async::<User>(42)) else {
                    panic!("a negative hit waited for something");
                };
                assert!(matches!(absent, Err(Error::NotFound { .. })));
            }
            match db.find_cached::<User>(&1).unwrap() {
                CacheLookup::Hit(row) => assert!(Arc::ptr_eq(&first, &row)),
                other => panic!("expected a hit, got {other:?}"),
            }
            assert!(matches!(db.find_cached::<User>(&42).unwrap(), CacheLookup::NegativeHit));
            assert_eq!(t.sql.count(), 0, "hits ran SQL: {:?}", t.sql.statements());
            let after = db.region_stats::<User>().unwrap();
            assert_eq!(
                (after.hits - before.hits, after.negative_hits - before.negative_hits, after.misses - before.misses),
                (11, 11, 0),
                "hits are counted like find's"
            );
        }

        /// `find_by_async`: a cached key whose row is cached answers inline (no SQL, no
        /// blocking pool); after a write changed the key, the old key is never answered
        /// with the row from the cache (C2 for keys).
        fn a_cached_unique_key_is_answered_inline_and_never_after_the_key_changed(t) {
            use common::models::UserByEmail;
            seed(t, &[1]);
            let db = common::cached_db(t);
            let email = db.find::<User>(1).unwrap().unwrap().email.clone();
            let first = db.find_by(UserByEmail(email.clone())).unwrap().unwrap();
            assert!(db.find_by(UserByEmail("nobody@x".into())).unwrap().is_none());
            t.sql.reset();
            let Poll::Ready(read) = poll_once(db.find_by_async(UserByEmail(email.clone()))) else {
                panic!("a cached key waited for something");
            };
            assert_eq!(*read.unwrap().unwrap(), *first, "the cached row");
            // MariaDB compares text keys by a collation: absent text keys are not cached
            // there (KeyCompare), so only the other backends answer this one inline.
            if BACKEND != common::Backend::Mysql {
                let Poll::Ready(absent) = poll_once(db.find_by_async(UserByEmail("nobody@x".into()))) else {
                    panic!("a cached absent key waited for something");
                };
                assert!(absent.unwrap().is_none());
            }
            assert_eq!(t.sql.count(), 0, "cached keys ran SQL: {:?}", t.sql.statements());

            let mut changed = (*first).clone();
            changed.email = "renamed@x".into();
            db.transaction(|tx| tx.update(&changed)).unwrap();
            // Outside a runtime, the old key is a miss (an error to handle), never the row.
            match poll_once(db.find_by_async(UserByEmail(email.clone()))) {
                Poll::Ready(Ok(Some(row))) => panic!("the old key answered {row:?}"),
                Poll::Ready(Ok(None)) | Poll::Ready(Err(Error::AsyncRuntime { .. })) => {}
                other => panic!("unexpected {other:?}"),
            }
            current_thread().block_on(async {
                assert!(db.find_by_async(UserByEmail(email.clone())).await.unwrap().is_none());
                let renamed = db.find_by_async(UserByEmail("renamed@x".into())).await.unwrap().unwrap();
                assert_eq!((renamed.id, renamed.version), (1, 2));
            });
        }

        /// `query_async` (C10): a miss runs on the blocking pool and stores the result; the
        /// stored result is then answered inline (the same `Arc`, no SQL), and a commit to
        /// the table it reads makes the next read run the query again.
        fn a_cached_query_is_answered_inline(t) {
            use common::models::Post;
            use common::schema::posts;
            use diesel::prelude::*;
            seed(t, &[1]);
            t.exec("INSERT INTO posts (id, version, user_id, title) VALUES (1, 1, 1, 'a'), (2, 1, 1, 'b')");
            let db = common::cached_db(t);
            let q = || posts::table.filter(posts::user_id.eq(1_i64)).order(posts::id.asc()).select(Post::as_select());
            // Outside a runtime a miss cannot reach the blocking pool: an error, no SQL.
            assert!(matches!(poll_once(db.query_async::<Post, _>(q())), Poll::Ready(Err(Error::AsyncRuntime { .. }))));
            let first = current_thread().block_on(db.query_async::<Post, _>(q())).unwrap();
            assert_eq!(first.len(), 2);
            t.sql.reset();
            let Poll::Ready(again) = poll_once(db.query_async::<Post, _>(q())) else {
                panic!("a stored query waited for something");
            };
            assert!(Arc::ptr_eq(&again.unwrap(), &first), "the stored list itself");
            assert_eq!(t.sql.count(), 0, "a stored query ran SQL: {:?}", t.sql.statements());
            db.transaction(|tx| tx.insert(&Post { id: 3, version: 1, user_id: 1, title: "c".into() })).unwrap();
            let after = current_thread().block_on(db.query_async::<Post, _>(q())).unwrap();
            assert_eq!(after.len(), 3, "the commit is seen");
        }

        /// `find_all_by_async` (C10): a miss runs on the blocking pool and fills the list;
        /// the cached list is then answered inline, the same `Arc` and no SQL.
        fn a_cached_list_is_answered_inline(t) {
            use common::models::{Post, PostByUserId};
            seed(t, &[1]);
            t.exec("INSERT INTO posts (id, version, user_id, title) VALUES (1, 1, 1, 'a'), (2, 1, 1, 'b')");
            let db = common::cached_db(t);
            let loaded = current_thread().block_on(db.find_all_by_async(PostByUserId(1))).unwrap();
            assert_eq!(loaded.iter().map(|p: &std::sync::Arc<Post>| p.id).collect::<Vec<_>>(), [1, 2]);
            t.sql.reset();
            let Poll::Ready(read) = poll_once(db.find_all_by_async(PostByUserId(1))) else {
                panic!("a cached list waited for something");
            };
            assert!(std::sync::Arc::ptr_eq(&read.unwrap(), &loaded));
            assert_eq!(t.sql.count(), 0);
        }

        fn a_miss_is_loaded_once_on_the_blocking_pool(t) {
            seed(t, &[1, 2]);
            let db = common::cached_db(t);
            assert!(db.find_cached::<User>(&1).unwrap().is_miss());
            // Outside a runtime a miss is an error to handle, not a panic.
            let Poll::Ready(Err(err)) = poll_once(db.find_async::<User>(1)) else {
                panic!("a miss outside a runtime must fail at once");
            };
            assert!(matches!(err, Error::AsyncRuntime { .. }), "{err}");
            assert_eq!(t.sql.count(), 0);
            let rt = current_thread();
            rt.block_on(async {
                let ada = db.find_async::<User>(1).await.unwrap().unwrap();
                assert_eq!(ada.id, 1);
                assert_eq!(t.sql.selects(), 1, "a miss loads once");
                assert!(Arc::ptr_eq(&ada, &db.find_async::<User>(1).await.unwrap().unwrap()));
                assert!(db.find_async::<User>(42).await.unwrap().is_none());
                assert!(db.find_async::<User>(42).await.unwrap().is_none());
                assert_eq!(t.sql.selects(), 2, "the absent row was loaded once, then a negative hit");
                // Concurrent misses of one key: one query (single flight, or the fill).
                let read = || db.find_async::<User>(2);
                let (a, b, c, d) = tokio::join!(read(), read(), read(), read());
                for row in [a, b, c, d] {
                    assert_eq!(row.unwrap().unwrap().id, 2);
                }
                assert_eq!(t.sql.selects(), 3, "{:?}", t.sql.statements());
            });
            let s = db.region_stats::<User>().unwrap();
            // Each of the four concurrent reads was a miss or (if a load had already filled
            // the key when it was first polled) a hit; the query ran once either way.
            assert_eq!((s.loads, s.negative_hits, s.hits + s.misses), (3, 1, 7));
        }

        /// C4: a key a transaction holds is a miss for `find_cached` and is read from the
        /// database (never filled) by `find_async`; other keys still hit inline.
        fn a_key_held_by_a_transaction_goes_to_the_database(t) {
            let db = common::cached_db(t);
            let v1 = db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
            db.transaction(|tx| tx.insert(&User::new(2, "Grace"))).unwrap();
            let (locked_tx, locked_rx) = mpsc::channel::<()>();
            let (go_tx, go_rx) = mpsc::channel::<()>();
            let writer = {
                let db = db.clone();
                let mut next = v1.clone();
                next.name = "pending".into();
                std::thread::spawn(move || {
                    db.transaction(|tx| {
                        tx.update(&next)?;
                        locked_tx.send(()).unwrap();
                        go_rx.recv().unwrap();
                        Ok(())
                    })
                })
            };
            locked_rx.recv().unwrap();
            t.sql.reset();
            assert!(db.find_cached::<User>(&1).unwrap().is_miss(), "a locked key is never served");
            let rt = current_thread();
            rt.block_on(async {
                for _ in 0..2 {
                    let read = db.find_async::<User>(1).await.unwrap().unwrap();
                    assert_eq!((read.version, read.name.as_str()), (1, "Ada"), "the committed row");
                }
            });
            assert_eq!(t.sql.selects(), 2, "each read of the locked key went to the database");
            t.sql.reset();
            assert!(matches!(poll_once(db.find_async::<User>(2)), Poll::Ready(Ok(Some(_)))));
            assert_eq!(t.sql.count(), 0, "other keys are still hits");
            go_tx.send(()).unwrap();
            writer.join().unwrap().unwrap();
            let Poll::Ready(Ok(Some(read))) = poll_once(db.find_async::<User>(1)) else {
                panic!("the commit was applied: a hit");
            };
            assert_eq!((read.version, read.name.as_str()), (2, "pending"));
        }

        /// C2 through the async front: a write made with `transaction_async` (or
        /// `retry_async`, `retry_once_async`) is read back by `find_async` as a hit.
        fn async_writes_are_read_back_inline(t) {
            let db = common::cached_db(t);
            let rt = current_thread();
            rt.block_on(async {
                let ada = db.transaction_async(|tx| tx.insert(&User::new(1, "Ada"))).await.unwrap();
                t.sql.reset();
                let read = db.find_async::<User>(1).await.unwrap().unwrap();
                assert_eq!(*read, ada);
                assert_eq!(t.sql.count(), 0, "the commit was written through");
                let renamed = db
                    .retry_async(RetryPolicy::default(), |tx| {
                        let mut u = tx.get::<User>(1)?;
                        u.name = "Countess".into();
                        tx.update(&u)
                    })
                    .await
                    .unwrap();
                assert_eq!(renamed.version, 2);
                let read = db.find_async::<User>(1).await.unwrap().unwrap();
                assert_eq!((read.version, read.name.as_str()), (2, "Countess"));
                // Exactly once (C6): the second delivery of the id replays the first result.
                for replay in [false, true] {
                    let out = db
                        .retry_once_async(RetryPolicy::default(), "async-grace", |tx| {
                            Ok(tx.insert(&User::new(2, "Grace"))?.version)
                        })
                        .await
                        .unwrap();
                    assert_eq!((out.is_replay(), *out), (replay, 1));
                }
                // An error rolls back and caches nothing (C1).
                let failed = db
                    .transaction_async(|tx| {
                        tx.insert(&User::new(3, "rolled back"))?;
                        Err::<(), _>(Error::Other("no".into()))
                    })
                    .await;
                assert!(failed.is_err());
                assert!(db.find_async::<User>(3).await.unwrap().is_none());
            });
        }

        /// C7: while a region's change listener is not connected, `find_cached` answers
        /// Miss for every key and `find_async` reads the database without filling.
        only(sqlite)
        fn an_untrusted_region_is_never_served_inline(t) {
            seed(t, &[1]);
            let mut listen = diesel_l2::ListenConfig::new("/nonexistent-diesel-l2-dir/changes.db");
            listen.connect_timeout = Duration::from_millis(50);
            let db = Db::builder(t.pool.clone()).cache::<User>().listen(listen).build().unwrap();
            let rt = current_thread();
            rt.block_on(async {
                for _ in 0..2 {
                    assert!(db.find_cached::<User>(&1).unwrap().is_miss());
                    assert_eq!(db.find_async::<User>(1).await.unwrap().unwrap().id, 1);
                }
            });
            assert_eq!(t.sql.selects(), 2, "both reads went to the database");
            assert!(db.peek::<User>(&1).unwrap().is_none(), "nothing was filled");
            assert!(db.region_stats::<User>().unwrap().untrusted_reads >= 2);
        }
    }
}
