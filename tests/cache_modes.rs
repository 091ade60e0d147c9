//! Per-call cache modes, like Hibernate's CacheMode: normal, read without filling,
//! refresh (always load and put), ignore the cache entirely.

mod common;

use common::models::{User, UserByEmail};
use diesel_l2::CacheMode;

fn seed<C: diesel::r2d2::R2D2Connection + 'static>(t: &common::TestDb<C>) {
    t.exec("INSERT INTO users (id, version, email, name) VALUES (1, 1, 'a@x', 'Ada'), (2, 1, 'g@x', 'Grace')");
    t.sql.reset();
}

backend_tests! {
    fn no_fill_reads_the_cache_but_does_not_fill_it(t) {
        seed(t);
        let db = common::cached_db(t);
        db.no_fill().find::<User>(1).unwrap().unwrap();
        db.no_fill().find::<User>(1).unwrap().unwrap();
        assert_eq!(t.sql.selects(), 2, "nothing was filled");
        db.find::<User>(1).unwrap();
        t.sql.reset();
        db.no_fill().find::<User>(1).unwrap().unwrap();
        assert_eq!(t.sql.count(), 0, "but it does read what is cached");
        db.no_fill().find_many::<User>(&[1, 2]).unwrap();
        db.no_fill().find_many::<User>(&[1, 2]).unwrap();
        assert_eq!(t.sql.selects(), 2, "batch misses are not filled either");
        assert_eq!(db.stats().region("users").unwrap().entries, 1);
    }

    fn refresh_always_loads_and_puts(t) {
        seed(t);
        let db = common::cached_db(t);
        assert_eq!(db.find::<User>(1).unwrap().unwrap().name, "Ada");
        // A write outside this process's cache.
        t.exec("UPDATE users SET name = 'Ada L.', version = 2 WHERE id = 1");
        assert_eq!(db.find::<User>(1).unwrap().unwrap().name, "Ada", "stale until refreshed");
        t.sql.reset();
        assert_eq!(db.refresh().find::<User>(1).unwrap().unwrap().name, "Ada L.");
        assert_eq!(t.sql.selects(), 1);
        t.sql.reset();
        assert_eq!(db.find::<User>(1).unwrap().unwrap().name, "Ada L.");
        assert_eq!(t.sql.count(), 0, "the refreshed row was put");
        t.exec("UPDATE users SET name = 'Grace H.', version = 2 WHERE id = 2");
        db.find::<User>(2).unwrap();
        let rows = db.read(CacheMode::Refresh).find_many::<User>(&[1, 2]).unwrap();
        assert_eq!(rows[1].as_ref().unwrap().name, "Grace H.");
        t.sql.reset();
        assert_eq!(db.find::<User>(2).unwrap().unwrap().name, "Grace H.");
        assert_eq!(t.sql.count(), 0);
        // A row deleted outside: refresh replaces the cached row with "absent".
        t.exec("DELETE FROM users WHERE id = 2");
        assert!(db.refresh().find::<User>(2).unwrap().is_none());
        assert!(db.find::<User>(2).unwrap().is_none());
    }

    fn bypass_ignores_the_cache_entirely(t) {
        seed(t);
        let db = common::cached_db(t);
        db.find::<User>(1).unwrap();
        t.exec("UPDATE users SET name = 'changed', version = 2 WHERE id = 1");
        t.sql.reset();
        assert_eq!(db.bypass().find::<User>(1).unwrap().unwrap().name, "changed");
        assert_eq!(db.bypass().find_many::<User>(&[1, 2, 3]).unwrap().iter().flatten().count(), 2);
        assert_eq!(db.bypass().find_by(UserByEmail("g@x".into())).unwrap().unwrap().id, 2);
        assert_eq!(t.sql.selects(), 3);
        assert_eq!(db.find::<User>(1).unwrap().unwrap().name, "Ada", "the cache was not touched");
        assert_eq!(db.stats().region("users").unwrap().entries, 1);
    }

    fn modes_apply_to_unique_key_lookups(t) {
        seed(t);
        let db = common::cached_db(t);
        db.no_fill().find_by(UserByEmail("a@x".into())).unwrap().unwrap();
        db.no_fill().find_by(UserByEmail("a@x".into())).unwrap().unwrap();
        assert_eq!(t.sql.selects(), 2);
        t.exec("UPDATE users SET name = 'via refresh', version = 2 WHERE id = 1");
        t.sql.reset();
        assert_eq!(db.refresh().find_by(UserByEmail("a@x".into())).unwrap().unwrap().name, "via refresh");
        db.find_by(UserByEmail("a@x".into())).unwrap();
        assert_eq!(t.sql.selects(), 1, "the refresh filled the key and the row");
    }
}
