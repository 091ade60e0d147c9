//! C4 and C5: while a transaction holds a pending write on a key, readers outside it go to
//! the database for that key and do not fill; reads inside a transaction see its own writes
//! and never fill the shared cache.

mod common;

use std::sync::mpsc;

use common::models::User;
use diesel_l2::Error;

backend_tests! {
    /// C5 for unique keys: `Tx::find_by` reads the database inside the transaction, sees
    /// the transaction's own write of the key, and fills neither the row nor the key cache.
    fn tx_find_by_sees_own_writes_and_never_fills(t) {
        use common::models::UserByEmail;
        let db = common::cached_db(t);
        let key = || UserByEmail("ada@example.com".into());
        assert!(db.find_by(key()).unwrap().is_none(), "a negative entry, cached");
        db.transaction(|tx| {
            assert!(tx.find_by(key())?.is_none());
            let mut ada = User::new(1, "Ada");
            ada.email = "ada@example.com".into();
            tx.insert(&ada)?;
            let seen = tx.find_by(key())?.expect("the transaction's own insert");
            assert_eq!(seen.id, 1);
            Ok(())
        }).unwrap();
        t.sql.reset();
        let row = db.find_by(key()).unwrap().expect("the committed insert cleared the negative entry");
        assert_eq!(row.id, 1);
        // Inside a transaction that rolls back, find_by fills nothing (C5, C1).
        let _ = db.transaction(|tx| {
            let mut grace = User::new(2, "Grace");
            grace.email = "grace@example.com".into();
            tx.insert(&grace)?;
            assert!(tx.find_by(UserByEmail("grace@example.com".into()))?.is_some());
            Err::<(), _>(Error::Other("roll back".into()))
        });
        assert!(db.find_by(UserByEmail("grace@example.com".into())).unwrap().is_none(), "the rolled-back row was never cached");
    }

    fn readers_bypass_a_key_with_a_pending_write_and_do_not_fill(t) {
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
        for _ in 0..3 {
            let read = db.find::<User>(1).unwrap().unwrap();
            assert_eq!((read.version, read.name.as_str()), (1, "Ada"), "the committed row, from the database");
        }
        assert_eq!(t.sql.selects(), 3, "each read of the locked key went to the database");
        t.sql.reset();
        db.find::<User>(2).unwrap();
        assert_eq!(t.sql.count(), 0, "other keys are still served from the cache");
        assert_eq!(db.stats().region("users").unwrap().lock_bypasses, 3);
        go_tx.send(()).unwrap();
        writer.join().unwrap().unwrap();
        t.sql.reset();
        let read = db.find::<User>(1).unwrap().unwrap();
        assert_eq!((read.version, read.name.as_str()), (2, "pending"));
        assert_eq!(t.sql.count(), 0, "the commit was applied and the lock released");
    }

    fn the_lock_is_released_on_rollback(t) {
        let db = common::cached_db(t);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        let mut next = v1.clone();
        next.name = "rolled back".into();
        let _ = db.transaction(|tx| -> Result<(), Error> {
            tx.update(&next)?;
            Err(Error::Other("no".into()))
        });
        db.find::<User>(1).unwrap();
        t.sql.reset();
        assert_eq!(db.find::<User>(1).unwrap().unwrap().name, "Ada");
        assert_eq!(t.sql.count(), 0, "after the rollback, the key fills and hits again");
    }

    fn reads_inside_a_transaction_see_its_writes_and_never_fill(t) {
        let db = common::cached_db(t);
        t.exec("INSERT INTO users (id, version, email, name) VALUES (1, 1, 'a@x', 'Ada'), (2, 1, 'g@x', 'Grace')");
        let _ = db.transaction(|tx| -> Result<(), Error> {
            let mut u = tx.get::<User>(1)?;
            u.name = "inside".into();
            tx.update(&u)?;
            assert_eq!(tx.get::<User>(1)?.name, "inside", "C5: the transaction reads its own write");
            tx.get::<User>(2)?; // a plain read inside the transaction
            Err(Error::Other("roll back".into()))
        });
        let s = db.stats();
        assert_eq!(s.region("users").unwrap().entries, 0, "C5: reads inside the transaction filled nothing");
        assert_eq!(db.find::<User>(1).unwrap().unwrap().name, "Ada");
    }
}
