//! C4 and C5: while a transaction holds a pending write on a key, readers outside it go to
//! the database for that key and do not fill; reads inside a transaction see its own writes
//! and never fill the shared cache.

mod common;

use std::sync::mpsc;

use common::models::User;
use diesel_l2::Error;

backend_tests! {
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
                    Ok::<_, Error>(())
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
            let mut u = (*tx.get::<User>(1)?).clone();
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
