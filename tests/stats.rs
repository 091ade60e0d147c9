//! Per-region statistics: counted exactly, serializable with serde, printable as a table.

mod common;

use common::models::User;

backend_tests! {
    fn region_stats_are_looked_up_by_entity_type(t) {
        let db = common::cached_db(t);
        db.find::<User>(1).unwrap();
        let by_type = db.region_stats::<User>().unwrap();
        assert_eq!(Some(&by_type), db.stats().region("users"));
        assert_eq!(by_type.misses, 1);
        let err = db.region_stats::<common::models::Account>().unwrap_err();
        assert!(matches!(err, diesel_l2::Error::UnknownEntity { .. }), "{err:?}");
        assert!(err.to_string().contains("cache::<"), "the message says how to register it: {err}");
    }

    fn stats_count_each_kind_of_event(t) {
        let db = common::cached_db(t);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        db.find::<User>(1).unwrap(); // hit
        db.find::<User>(2).unwrap(); // miss + load + negative fill
        db.find::<User>(2).unwrap(); // negative hit
        let mut next = v1.clone();
        next.name = "x".into();
        db.transaction(|tx| tx.update(&next)).unwrap();
        let _ = db.transaction(|tx| tx.update(&v1)); // conflict
        let s = db.stats();
        let u = s.region("users").unwrap();
        assert_eq!(u.region, "users");
        assert_eq!(u.table, "users");
        assert_eq!((u.hits, u.negative_hits, u.misses, u.loads), (1, 1, 1, 1));
        assert_eq!(u.conflicts, 1);
        assert_eq!(u.commits_applied, 2, "insert and update");
        assert_eq!(u.writes_discarded, 1, "the conflicting transaction");
        assert_eq!(u.entries, 1, "the negative entry; the conflicting tx invalidated user 1");
        assert!((u.hit_ratio() - 2.0 / 3.0).abs() < 1e-9);
        assert!(u.mean_load_time().is_some());

        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["regions"][0]["region"], "users");
        assert_eq!(json["regions"][0]["hits"], 1);
        assert_eq!(json["regions"][0]["conflicts"], 1);

        let table = s.to_string();
        let mut lines = table.lines();
        let header = lines.next().unwrap();
        for col in ["region", "entries", "hits", "misses", "hit %", "loads", "conflicts", "stale fills", "bypasses"] {
            assert!(header.contains(col), "{col} missing from {header}");
        }
        assert!(table.lines().any(|l| l.starts_with("users ")), "{table}");
        assert_eq!(table.lines().count(), 1 + s.regions.len());
    }
}
