//! Savepoints nest to any depth; a savepoint's cache changes join the transaction's buffer
//! when it is released and are dropped when it rolls back (C1).

mod common;

use common::models::User;
use diesel_l2::Error;

backend_tests! {
    fn rolled_back_savepoint_drops_its_cache_changes(t) {
        let db = common::cached_db(t);
        db.transaction(|tx| {
            tx.insert(&User::new(1, "kept"))?;
            let r: Result<(), Error> = tx.savepoint(|sp| {
                sp.insert(&User::new(2, "dropped"))?;
                Err(Error::Other("roll this savepoint back".into()))
            });
            assert!(r.is_err());
            Ok(())
        })
        .unwrap();
        assert_eq!(db.find::<User>(1).unwrap().unwrap().name, "kept");
        assert!(db.find::<User>(2).unwrap().is_none(), "the savepoint's insert was rolled back");
    }

    fn rolled_back_savepoint_drops_partial_generated_id_and_bulk_writes(t) {
        use diesel::prelude::*;
        use common::models::{Article, NewArticle, UserChanges};
        use common::schema::users;
        let db = common::builder(t).cache::<Article>().build().unwrap();
        db.transaction(|tx| {
            tx.insert(&User::new(1, "Ada"))?;
            tx.insert(&User::new(2, "Bob"))
        })
        .unwrap();
        let mut ghost = None;
        db.transaction(|tx| {
            let kept = UserChanges { name: Some("kept".into()), ..Default::default() };
            tx.update_changes::<User, _>(1, 1, &kept)?;
            let r: Result<(), Error> = tx.savepoint(|sp| {
                let dropped = UserChanges { name: Some("dropped".into()), ..Default::default() };
                sp.update_changes::<User, _>(1, 2, &dropped)?;
                sp.update_where::<User, _, _>(users::id.eq(2), users::name.eq("dropped"))?;
                ghost = Some(sp.insert_new::<Article, _>(&NewArticle { slug: "ghost", title: "Ghost" })?);
                Err(Error::Other("roll this savepoint back".into()))
            });
            assert!(r.is_err());
            Ok(())
        })
        .unwrap();
        let ada = db.find::<User>(1).unwrap().unwrap();
        assert_eq!((ada.version, ada.name.as_str()), (2, "kept"));
        let bob = db.find::<User>(2).unwrap().unwrap();
        assert_eq!((bob.version, bob.name.as_str()), (1, "Bob"));
        assert!(db.find::<Article>(ghost.unwrap().id).unwrap().is_none(), "C1: the savepoint's insert");
    }

    fn released_savepoints_merge_into_the_parent_three_deep(t) {
        let db = common::cached_db(t);
        db.transaction(|tx| {
            tx.insert(&User::new(1, "depth0"))?;
            tx.savepoint(|sp1| {
                sp1.insert(&User::new(2, "depth1"))?;
                sp1.savepoint(|sp2| {
                    sp2.insert(&User::new(3, "depth2"))?;
                    let r: Result<(), Error> = sp2.savepoint(|sp3| {
                        sp3.insert(&User::new(4, "depth3"))?;
                        Err(Error::Other("innermost fails".into()))
                    });
                    assert!(r.is_err());
                    Ok(())
                })
            })
        })
        .unwrap();
        t.sql.reset();
        for (id, name) in [(1, "depth0"), (2, "depth1"), (3, "depth2")] {
            assert_eq!(db.find::<User>(id).unwrap().unwrap().name, name);
        }
        assert_eq!(t.sql.count(), 0, "released savepoints were written through");
        assert!(db.find::<User>(4).unwrap().is_none());
    }

    fn a_savepoint_rollback_keeps_the_parents_earlier_write_to_the_same_key(t) {
        let db = common::cached_db(t);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
        db.transaction(|tx| {
            let mut n = v1.clone();
            n.name = "v2".into();
            let v2 = tx.update(&n)?;
            let r: Result<(), Error> = tx.savepoint(|sp| {
                let mut n = v2.clone();
                n.name = "v3 rolled back".into();
                sp.update(&n)?;
                Err(Error::Other("no".into()))
            });
            assert!(r.is_err());
            assert_eq!(tx.get::<User>(1)?.name, "v2", "the database is back at v2 inside the tx");
            Ok(())
        })
        .unwrap();
        let read = db.find::<User>(1).unwrap().unwrap();
        assert_eq!((read.version, read.name.as_str()), (2, "v2"));
    }

    fn outer_rollback_drops_released_savepoints_too(t) {
        let db = common::cached_db(t);
        let r: Result<(), Error> = db.transaction(|tx| {
            tx.savepoint(|sp| sp.insert(&User::new(1, "released")).map(|_| ()))?;
            Err(Error::Other("outer fails".into()))
        });
        assert!(r.is_err());
        assert!(db.find::<User>(1).unwrap().is_none());
    }

    fn panic_in_a_savepoint_rolls_everything_back(t, common::TestDbOptions::default().max_size(1)) {
        let db = common::cached_db(t);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _: Result<(), Error> = db.transaction(|tx| {
                tx.insert(&User::new(1, "outer"))?;
                tx.savepoint(|sp| {
                    sp.insert(&User::new(2, "inner"))?;
                    panic!("inside a savepoint")
                })
            });
        }));
        assert!(caught.is_err());
        assert!(db.find::<User>(1).unwrap().is_none());
        assert!(db.find::<User>(2).unwrap().is_none());
        // The single connection is clean: a new transaction works.
        db.transaction(|tx| tx.insert(&User::new(3, "after"))).unwrap();
    }
}
