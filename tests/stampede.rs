//! P5: 64 threads missing the same key at the same moment run exactly one SQL statement
//! (single flight), for a present row and for an absent one, on every backend.

mod common;

use std::sync::{Barrier, Mutex};

use common::models::User;

const THREADS: usize = 64;

/// Runs `find::<User>(id)` on 64 threads released together; returns what each saw.
fn stampede<C>(db: &diesel_l2::Db<C>, id: i64) -> Vec<Option<i64>>
where
    C: diesel::r2d2::R2D2Connection + 'static,
    User: diesel_l2::CachedOps<C>,
{
    let barrier = Barrier::new(THREADS);
    let seen = Mutex::new(Vec::with_capacity(THREADS));
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                barrier.wait();
                let row = db.find::<User>(id).expect("find");
                seen.lock().unwrap().push(row.map(|u| u.version));
            });
        }
    });
    seen.into_inner().unwrap()
}

backend_tests! {
    // More connections than one, so a second load could run if single flight failed.
    fn sixty_four_threads_missing_one_key_run_one_select(t, TestDbOptions::default().max_size(8)) {
        for id in 1..=5 {
            t.exec(&format!(
                "INSERT INTO users (id, version, email, name) VALUES ({id}, 1, 'u{id}@example.com', 'U{id}')"
            ));
        }
        let db = common::cached_db(t);
        // Several rounds on fresh keys: one lucky interleaving proves little.
        for id in 1..=5 {
            t.sql.reset();
            let seen = stampede(&db, id);
            assert_eq!(seen, vec![Some(1); THREADS], "every thread gets the row");
            assert_eq!(
                (t.sql.selects(), t.sql.count()),
                (1, 1),
                "64 concurrent misses of id {id} must run one SELECT: {:?}",
                t.sql.statements()
            );
        }
        let s = db.stats();
        let users = s.region("users").unwrap();
        assert_eq!(users.loads, 5, "one load per key");
        assert_eq!(users.hits + users.misses, 5 * THREADS as u64);
    }

    fn sixty_four_threads_missing_an_absent_row_run_one_select(t, TestDbOptions::default().max_size(8)) {
        let db = common::cached_db(t);
        t.sql.reset();
        let seen = stampede(&db, 404);
        assert_eq!(seen, vec![None; THREADS]);
        assert_eq!(
            (t.sql.selects(), t.sql.count()),
            (1, 1),
            "64 concurrent misses of an absent row must run one SELECT: {:?}",
            t.sql.statements()
        );
    }
}
