//! Regions stay within `max_entries` or their byte budget.

mod common;

use common::models::{User, UserByEmail};
use diesel_l2::{Db, KeyCompare};

fn seed<C: diesel::r2d2::R2D2Connection + 'static>(t: &common::TestDb<C>, n: i64) {
    let values: Vec<String> = (1..=n)
        .map(|id| format!("({id}, 1, 'u{id}@example.com', 'U{id}')"))
        .collect();
    for chunk in values.chunks(500) {
        t.exec(&format!(
            "INSERT INTO users (id, version, email, name) VALUES {}",
            chunk.join(", ")
        ));
    }
}

backend_tests! {
    fn max_entries_is_respected(t) {
        seed(t, 2_000);
        let db = Db::builder(t.pool.clone()).cache_with::<User>(|c| c.max_entries(100)).build().unwrap();
        let ids: Vec<i64> = (1..=2_000).collect();
        for chunk in ids.chunks(250) {
            db.find_many::<User>(chunk).unwrap();
        }
        let entries = db.stats().region("users").unwrap().entries;
        assert!(entries <= 100, "{entries} entries in a region of 100");
        assert!(entries > 0);
        // Every row is still served correctly, from the cache or the database.
        for id in [1, 777, 2_000] {
            assert_eq!(db.find::<User>(id).unwrap().unwrap().id, id);
        }
    }

    fn byte_budget_is_respected(t) {
        seed(t, 2_000);
        let budget = 16 * 1024;
        let db = Db::builder(t.pool.clone()).cache_with::<User>(|c| c.max_bytes(budget)).build().unwrap();
        let ids: Vec<i64> = (1..=2_000).collect();
        db.find_many::<User>(&ids).unwrap();
        let entries = db.stats().region("users").unwrap().entries;
        let one = {
            use diesel_l2::CachedEntity;
            db.find::<User>(1).unwrap().unwrap().approx_bytes() as u64
        };
        assert!(one > std::mem::size_of::<User>() as u64, "heap bytes are counted");
        assert!(entries * one <= budget + one, "{entries} entries of ~{one} bytes in a {budget}-byte budget");
        assert!(entries > 0);
    }

    /// The byte budget bounds the unique-key entries too (they get a quarter of it), not
    /// only the rows: 2,000 long keys looked up in a 16 KiB region cannot all stay cached.
    fn byte_budget_bounds_the_unique_key_index(t) {
        let budget = 16 * 1024;
        // Declared exact so that MariaDB caches the "not found" entries too.
        let db = Db::builder(t.pool.clone())
            .cache_with::<User>(|c| c.max_bytes(budget).key_compare(KeyCompare::Exact))
            .build()
            .unwrap();
        let key = |i: usize| UserByEmail(format!("{}-{i}@x.org", "k".repeat(200)));
        for i in 0..2_000 {
            assert!(db.find_by(key(i)).unwrap().is_none());
        }
        t.sql.reset();
        for i in 0..2_000 {
            assert!(db.find_by(key(i)).unwrap().is_none());
        }
        let reloaded = t.sql.selects();
        // About 4 KiB of ~300-byte entries fit; moka may lag behind by a write buffer.
        assert!(reloaded >= 1_500, "only {reloaded} of 2,000 keys were reloaded: the key index outgrew the {budget}-byte budget");
    }
}
