//! The builder: runtime overrides of each region's settings, and `build()` rejecting
//! invalid settings with a typed error that says what to fix.

mod common;

use std::time::Duration;

use common::models::{Product, User};
use diesel_l2::{Db, Error, RegionConfig};

fn config_error<C: diesel::r2d2::R2D2Connection + 'static>(r: Result<Db<C>, Error>) -> String {
    match r {
        Err(Error::Config(msg)) => msg,
        Err(other) => panic!("expected Error::Config, got {other:?}"),
        Ok(_) => panic!("expected build() to fail"),
    }
}

backend_tests! {
    /// `sqlite_pool` sets connections up for concurrent writers (WAL, busy timeout), so
    /// eight threads writing at once wait for each other instead of failing with
    /// "database is locked"; misuse is a typed error.
    only(sqlite)
    fn sqlite_pool_is_ready_for_concurrent_writers(t) {
        use diesel::prelude::*;
        let pool = diesel_l2::sqlite_pool(&t.url, 8).unwrap();
        #[derive(QueryableByName)]
        struct Mode { #[diesel(sql_type = diesel::sql_types::Text)] journal_mode: String }
        let mode: Mode = diesel::sql_query("PRAGMA journal_mode").get_result(&mut pool.get().unwrap()).unwrap();
        assert_eq!(mode.journal_mode, "wal");
        let db = Db::builder(pool).cache::<Product>().build().unwrap();
        db.transaction(|tx| tx.insert(&Product { id: 1, version: 1, sku: "A".into(), stock: 0 })).unwrap();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..25 {
                        db.retry(diesel_l2::RetryPolicy::attempts(50), |tx| {
                            let mut p = tx.get::<Product>(1)?;
                            p.stock += 1;
                            tx.update(&p)
                        }).unwrap();
                    }
                });
            }
        });
        assert_eq!(db.find::<Product>(1).unwrap().unwrap().stock, 200);
        assert!(matches!(diesel_l2::sqlite_pool(":memory:", 4), Err(Error::Config(_))));
        assert!(matches!(diesel_l2::sqlite_pool(&t.url, 0), Err(Error::Config(_))));
    }

    fn attribute_settings_are_the_defaults_and_can_be_overridden(t) {
        let db = Db::builder(t.pool.clone())
            .cache::<Product>()
            .cache_with::<User>(|c| c.ttl(Duration::from_secs(60)).tti(Duration::from_secs(5)).max_entries(50).name("people"))
            .build()
            .unwrap();
        let users = db.region_config::<User>().unwrap();
        assert_eq!(users.name, "people");
        assert_eq!((users.ttl, users.tti, users.max_entries), (Some(Duration::from_secs(60)), Some(Duration::from_secs(5)), Some(50)));
        let products = db.region_config::<Product>().unwrap();
        assert_eq!(products, RegionConfig::new("products"), "no attributes: the documented defaults");
        assert!(db.stats().region("people").is_some());
    }

    fn build_rejects_zero_capacity(t) {
        let msg = config_error(Db::builder(t.pool.clone()).cache_with::<User>(|c| c.max_entries(0)).build());
        assert!(msg.contains("max_entries is 0"), "{msg}");
        let msg = config_error(Db::builder(t.pool.clone()).cache_with::<User>(|c| c.max_bytes(0)).build());
        assert!(msg.contains("max_bytes is 0"), "{msg}");
    }

    fn build_rejects_zero_durations(t) {
        for (what, cfg) in [
            ("ttl", RegionConfig::new("users").ttl(Duration::ZERO)),
            ("tti", RegionConfig::new("users").tti(Duration::ZERO)),
            ("negative_ttl", RegionConfig::new("users").negative_ttl(Some(Duration::ZERO))),
        ] {
            let msg = config_error(Db::builder(t.pool.clone()).cache_with::<User>(|_| cfg).build());
            assert!(msg.contains(&format!("{what} is zero")), "{msg}");
            assert!(msg.contains("region `users`"), "the message names the region: {msg}");
        }
    }

    fn build_rejects_duplicate_regions_and_registrations(t) {
        let msg = config_error(
            Db::builder(t.pool.clone()).cache::<User>().cache_with::<Product>(|c| c.name("users")).build(),
        );
        assert!(msg.contains("region `users` is used by both"), "{msg}");
        let msg = config_error(Db::builder(t.pool.clone()).cache::<User>().cache::<User>().build());
        assert!(msg.contains("registered twice"), "{msg}");
        let msg = config_error(Db::builder(t.pool.clone()).cache_with::<User>(|c| c.name(" ")).build());
        assert!(msg.contains("name is empty"), "{msg}");
    }

    fn build_rejects_a_batch_window_that_cannot_be_kept(t) {
        let msg = config_error(
            Db::builder(t.pool.clone()).cache_with::<User>(|c| c.max_entries(100).batch_window(100)).build(),
        );
        assert!(msg.contains("batch_window (100) is not smaller than the bound (100)"), "{msg}");
        let msg = config_error(
            Db::builder(t.pool.clone())
                .cache_with::<User>(|c| c.max_entries(100).batch_window(10).ttl(Duration::from_secs(60)))
                .build(),
        );
        assert!(msg.contains("set with a ttl or tti"), "{msg}");
        // Sized explicitly below the automatic threshold, or turned off: both build.
        let db = Db::builder(t.pool.clone())
            .cache_with::<User>(|c| c.max_entries(100).batch_window(10))
            .cache_with::<Product>(|c| c.batch_window(0))
            .build()
            .unwrap();
        assert_eq!(db.region_config::<User>().unwrap().batch_window, Some(10));
    }

    fn build_rejects_a_region_without_bound(t) {
        let mut cfg = RegionConfig::new("users");
        cfg.max_entries = None;
        let msg = config_error(Db::builder(t.pool.clone()).cache_with::<User>(|_| cfg).build());
        assert!(msg.contains("set max_entries or max_bytes"), "{msg}");
    }
}
