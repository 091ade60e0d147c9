//! C8: pool exhaustion is a typed error naming the timeout and what to do; nothing panics,
//! and the cache is left consistent.

mod common;

use std::time::Duration;

use common::models::User;
use diesel_l2::Error;

backend_tests! {
    fn pool_checkout_timeout_is_a_typed_error(t, TestDbOptions::default().max_size(1).connection_timeout(Duration::from_millis(300))) {
        let db = common::cached_db(t);
        db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        db.evict::<User>(&1).unwrap();
        let held = t.pool.get().unwrap(); // the only connection
        let err = db.find::<User>(1).unwrap_err();
        match &err {
            Error::Pool { timeout, .. } => assert_eq!(*timeout, Duration::from_millis(300)),
            other => panic!("expected a pool error, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("max_size") && msg.contains("connection_timeout"), "the message says what to raise: {msg}");
        let err = db.transaction(|tx| tx.insert(&User::new(2, "Grace"))).unwrap_err();
        assert!(matches!(err, Error::Pool { .. }), "{err:?}");
        let err = db.find_many::<User>(&[1, 3]).unwrap_err();
        assert!(matches!(err, Error::Pool { .. }), "{err:?}");
        drop(held);
        assert_eq!(db.find::<User>(1).unwrap().unwrap().name, "Ada", "recovers once a connection is free");
        assert!(db.find::<User>(2).unwrap().is_none(), "the failed transaction left nothing");
    }
}
