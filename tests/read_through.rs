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
