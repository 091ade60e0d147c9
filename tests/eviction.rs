//! Eviction control (one id, a list, a region, everything) and eviction counts by cause.

mod common;

use std::time::Duration;

use common::models::{Product, User};
use diesel_l2::Db;

fn seed<C: diesel::r2d2::R2D2Connection + 'static>(t: &common::TestDb<C>) {
    t.exec("INSERT INTO users (id, version, email, name) VALUES (1, 1, 'a@x', 'A'), (2, 1, 'b@x', 'B'), (3, 1, 'c@x', 'C')");
    t.exec("INSERT INTO products (id, version, sku, stock) VALUES (1, 1, 'P1', 5)");
    t.sql.reset();
}

backend_tests! {
    /// `peek` is for tests and diagnostics, not a read: it does not extend a row's
    /// time-to-idle, so a row only peeked at expires after `tti`.
    fn peek_does_not_extend_time_to_idle(t) {
        seed(t);
        let tti = Duration::from_millis(200);
        let db = Db::builder(t.pool.clone()).cache_with::<User>(|c| c.tti(tti)).build().unwrap();
        db.find::<User>(1).unwrap();
        assert!(db.peek::<User>(&1).unwrap().is_some());
        let started = std::time::Instant::now();
        while started.elapsed() < tti * 2 {
            db.peek::<User>(&1).unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(db.peek::<User>(&1).unwrap().is_none(), "peeks kept an idle row alive");
        t.sql.reset();
        db.find::<User>(1).unwrap();
        assert_eq!(t.sql.selects(), 1, "the idle row expired and was loaded again");
    }

    fn evict_one_many_region_and_everything(t) {
        seed(t);
        let db = common::cached_db(t);
        let warm = |db: &Db<Conn>| {
            db.find_many::<User>(&[1, 2, 3]).unwrap();
            db.find::<Product>(1).unwrap();
        };
        warm(&db);
        t.sql.reset();
        db.evict::<User>(&1).unwrap();
        db.find_many::<User>(&[1, 2, 3]).unwrap();
        assert_eq!(t.sql.selects(), 1, "only id 1 was reloaded");

        db.evict_many::<User>(&[2, 3]).unwrap();
        t.sql.reset();
        db.find::<User>(1).unwrap();
        assert_eq!(t.sql.count(), 0);
        db.find::<User>(2).unwrap();
        db.find::<User>(3).unwrap();
        assert_eq!(t.sql.selects(), 2);

        db.evict_all::<User>().unwrap();
        t.sql.reset();
        db.find::<Product>(1).unwrap();
        assert_eq!(t.sql.count(), 0, "other regions keep their entries");
        db.find::<User>(1).unwrap();
        assert_eq!(t.sql.selects(), 1);

        warm(&db);
        db.evict_everything();
        t.sql.reset();
        warm(&db);
        assert_eq!(t.sql.selects(), 2, "every region was emptied");

        let s = db.stats();
        assert_eq!(s.region("users").unwrap().evict_requests, 4);
        assert_eq!(s.region("products").unwrap().evict_requests, 1);
        assert!(s.region("users").unwrap().invalidated >= 3, "{:?}", s.region("users"));
    }

    fn size_and_expiry_evictions_are_counted_by_cause(t) {
        let values: Vec<String> = (1..=300).map(|i| format!("({i}, 1, 'u{i}@x', 'U')")).collect();
        t.exec(&format!("INSERT INTO users (id, version, email, name) VALUES {}", values.join(", ")));
        let db = Db::builder(t.pool.clone())
            .cache_with::<User>(|c| c.max_entries(50).ttl(Duration::from_millis(200)))
            .build()
            .unwrap();
        let ids: Vec<i64> = (1..=300).collect();
        db.find_many::<User>(&ids).unwrap();
        let s = db.stats();
        assert!(s.region("users").unwrap().evicted_size > 0, "{:?}", s.region("users"));
        // Expired entries are never served; moka removes and reports them with a timer
        // wheel of about one second granularity.
        std::thread::sleep(Duration::from_millis(1_300));
        db.find::<User>(1).unwrap();
        let s = db.stats();
        let u = s.region("users").unwrap();
        assert!(u.expired > 0, "{u:?}");
        assert!(u.entries <= 50);
    }
}
