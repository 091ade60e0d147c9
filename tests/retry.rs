//! `Db::retry` re-runs a transaction on conflicts with bounded attempts and backoff, and
//! its final error says how many attempts ran (C6).

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::models::Product;
use diesel_l2::{Error, RetryPolicy, Tx};

fn quick(n: u32) -> RetryPolicy {
    RetryPolicy::attempts(n).backoff(Duration::from_millis(1), Duration::from_millis(5))
}

/// An application's own error type, as handlers return it.
#[derive(Debug)]
enum AppError {
    Db(Error),
    OutOfStock { left: i32 },
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Db(e)
    }
}

impl diesel_l2::RetryableError for AppError {
    fn is_retryable(&self) -> bool {
        matches!(self, AppError::Db(e) if e.is_retryable())
    }
}

/// The app's own error from taking 2 of a stock of 1, as it is: no downcasting.
fn out_of_stock<T: std::fmt::Debug>(r: &Result<T, AppError>) -> bool {
    matches!(r, Err(AppError::OutOfStock { left: 1 }))
}

backend_tests! {
    /// `retry_with_error` takes closures returning the application's error type: `?`
    /// converts the library's errors, conflicts are retried, the app's own errors end it
    /// at once, and the caller gets the app's error back without downcasting.
    fn retry_works_with_the_applications_own_error_type(t) {
        let db = common::cached_db(t);
        let p = db.transaction(|tx| tx.insert(&Product { id: 1, version: 1, sku: "A".into(), stock: 5 })).unwrap();
        let attempts = AtomicU32::new(0);
        let take = |qty: i32| db.retry_with_error(quick(5), |tx| -> Result<Product, AppError> {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            let mut cur = tx.get::<Product>(1)?;
            if cur.stock < qty {
                return Err(AppError::OutOfStock { left: cur.stock });
            }
            if n == 0 {
                cur = p.clone(); // a stale copy: the first attempt conflicts
                db.transaction(|tx2| { let mut o = p.clone(); o.sku = "B".into(); tx2.update(&o) })?;
            }
            cur.stock -= qty;
            Ok(tx.update(&cur)?)
        });
        assert_eq!(take(3).unwrap().stock, 2);
        assert_eq!(attempts.load(Ordering::SeqCst), 2, "the conflict was retried");
        attempts.store(1, Ordering::SeqCst);
        match take(3) {
            Err(AppError::OutOfStock { left: 2 }) => {}
            other => panic!("the app's own error, at once: {other:?}"),
        }
        assert_eq!(attempts.load(Ordering::SeqCst), 2, "not retried");
    }

    /// Every `_with_error` twin hands the closure's own error back as it is, and what the
    /// closure wrote before it failed is rolled back, in the database and the cache (C1).
    fn every_with_error_twin_returns_the_applications_own_error(t) {
        let db = common::cached_db(t);
        db.transaction(|tx| tx.insert(&Product { id: 1, version: 1, sku: "A".into(), stock: 1 })).unwrap();
        // Writes first, then refuses: the write must not survive.
        let take_two = |tx: &mut Tx<'_, Conn>| -> Result<i32, AppError> {
            let mut p = tx.get::<Product>(1)?;
            let left = p.stock;
            p.stock -= 2;
            let stored = tx.update(&p)?;
            if stored.stock < 0 {
                return Err(AppError::OutOfStock { left });
            }
            Ok(stored.stock)
        };
        let r = db.transaction_with_error(take_two);
        assert!(out_of_stock(&r), "{r:?}");
        // A savepoint with the app's error inside a plain transaction: the savepoint rolls
        // back, the transaction goes on and commits.
        let after = db
            .transaction(|tx| {
                let r = tx.savepoint_with_error(take_two);
                assert!(out_of_stock(&r), "{r:?}");
                Ok(tx.get::<Product>(1)?.stock)
            })
            .unwrap();
        assert_eq!(after, 1);
        let r = db.transaction_once_with_error("take-two", take_two);
        assert!(out_of_stock(&r), "{r:?}");
        let r = db.retry_once_with_error(quick(5), "take-two", take_two);
        assert!(out_of_stock(&r), "{r:?}");
        #[cfg(feature = "tokio")]
        {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let r = db.transaction_async_with_error(take_two).await;
                assert!(out_of_stock(&r), "{r:?}");
                let r = db.retry_async_with_error(quick(5), take_two).await;
                assert!(out_of_stock(&r), "{r:?}");
                let r = db.retry_once_async_with_error(quick(5), "take-two", take_two).await;
                assert!(out_of_stock(&r), "{r:?}");
            });
        }
        // Nothing was recorded under the id: it runs (and commits) now.
        let took = db
            .transaction_once("take-two", |tx| {
                let mut p = tx.get::<Product>(1)?;
                p.stock -= 1;
                Ok(tx.update(&p)?.stock)
            })
            .unwrap();
        assert_eq!((took.is_replay(), *took), (false, 0));
        assert_eq!(db.find::<Product>(1).unwrap().unwrap().stock, 0);
    }

    fn retry_reruns_after_a_conflict_and_succeeds(t) {
        let db = common::cached_db(t);
        let p = db.transaction(|tx| tx.insert(&Product { id: 1, version: 1, sku: "A".into(), stock: 10 })).unwrap();
        let attempts = AtomicU32::new(0);
        let stored = db
            .retry(quick(5), |tx| {
                let n = attempts.fetch_add(1, Ordering::SeqCst);
                let mut cur = tx.get::<Product>(1)?;
                if n == 0 {
                    // Another writer got in between our read and our write (simulated with
                    // a stale copy): the first attempt conflicts.
                    cur = p.clone();
                    db.transaction(|tx2| {
                        let mut other = p.clone();
                        other.stock = 8;
                        tx2.update(&other)
                    })?;
                }
                cur.stock -= 1;
                tx.update(&cur)
            })
            .unwrap();
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        assert_eq!((stored.version, stored.stock), (3, 7));
        assert_eq!(db.find::<Product>(1).unwrap().unwrap().stock, 7);
    }

    fn retry_gives_up_and_says_how_many_attempts_ran(t) {
        let db = common::cached_db(t);
        let p = db.transaction(|tx| tx.insert(&Product { id: 1, version: 1, sku: "A".into(), stock: 10 })).unwrap();
        let mut moved = p.clone();
        moved.stock = 0;
        db.transaction(|tx| tx.update(&moved)).unwrap();
        let attempts = AtomicU32::new(0);
        let err = db
            .retry(quick(3), |tx| {
                attempts.fetch_add(1, Ordering::SeqCst);
                let mut stale = p.clone(); // never re-read: conflicts every time
                stale.stock = 5;
                tx.update(&stale).map(|_| ())
            })
            .unwrap_err();
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
        match &err {
            Error::RetriesExhausted { attempts, last } => {
                assert_eq!(*attempts, 3);
                assert!(matches!(**last, Error::Conflict { .. }));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("3 attempts"), "{err}");
    }

    fn non_retryable_errors_are_returned_at_once(t) {
        let db = common::cached_db(t);
        let attempts = AtomicU32::new(0);
        let err = db
            .retry(quick(5), |_tx| -> Result<(), Error> {
                attempts.fetch_add(1, Ordering::SeqCst);
                Err(Error::Other("not a conflict".into()))
            })
            .unwrap_err();
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        assert!(matches!(err, Error::Other(_)));
    }
}

#[test]
fn backoff_is_bounded_and_jittered() {
    let p = RetryPolicy::attempts(10).backoff(Duration::from_millis(2), Duration::from_millis(40));
    assert_eq!(p.max_attempts, 10);
    assert_eq!(RetryPolicy::default().max_attempts, 5);
}
