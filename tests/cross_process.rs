//! C7: several `Db`s (each with its own pool, cache and listener, as separate processes
//! would have) on one database. A write through one, and a raw SQL write from a plain
//! connection, are invalidated in the others; the delay from COMMIT to invalidation is
//! measured and printed (run with `--nocapture` to see it).

mod common;

use std::time::{Duration, Instant};

use common::models::User;
use diesel::connection::SimpleConnection;
use diesel_l2::{Db, Error, ListenConfig};

/// How long a correct listener may take before a test calls it broken. Not a performance
/// claim: the measured delays are printed; this only bounds a hung test.
const BOUND: Duration = Duration::from_secs(5);

fn listen<C: common::TestBackend>(t: &common::TestDb<C>, app: &str) -> ListenConfig {
    let url = match t.pg_schema() {
        // A recognisable application_name lets a test find and terminate the listener.
        Some(_) => format!("{}?application_name={app}", t.url),
        None => t.url.clone(),
    };
    let mut config = ListenConfig::new(url).poll_interval(Duration::from_millis(1));
    if let Some(schema) = t.pg_schema() {
        config = config.schema(schema);
    }
    config
}

/// Waits until `cond` holds, up to `BOUND`; returns how long it took.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < BOUND, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
    start.elapsed()
}

/// Reads `id` through `db` until the cache holds it.
fn cache_in<C: diesel::r2d2::R2D2Connection + 'static>(db: &Db<C>, id: i64)
where
    User: diesel_l2::CachedOps<C>,
{
    wait_for("the row to be cached", || {
        db.find::<User>(id).unwrap();
        db.peek::<User>(&id).unwrap().is_some()
    });
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

backend_tests! {
    fn writes_through_one_db_and_raw_sql_reach_the_other(t) {
        let (pool_b, _) = t.another_pool();
        let a = Db::builder(t.pool.clone()).cache::<User>().listen(listen(t, "l2_a")).build().unwrap();
        let b = Db::builder(pool_b).cache::<User>().listen(listen(t, "l2_b")).build().unwrap();
        assert!(b.stats().listener.unwrap().connected);

        let v1 = a.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        assert_eq!(b.find::<User>(1).unwrap().unwrap().version, 1);
        // The insert's own notification may fence b's first fill; b caches v1 soon after.
        cache_in(&b, 1);

        // A write through another Db.
        let mut next = v1.clone();
        next.name = "via a".into();
        a.transaction(|tx| tx.update(&next)).unwrap();
        wait_for("b to drop v1 after a's write", || b.peek::<User>(&1).unwrap().is_none());
        assert_eq!(b.find::<User>(1).unwrap().unwrap().name, "via a");

        // A write from a plain SQL client.
        cache_in(&b, 1);
        let mut raw = t.raw_connection();
        raw.batch_execute("UPDATE users SET name = 'via raw SQL', version = version + 1 WHERE id = 1").unwrap();
        wait_for("b to drop v2 after the raw write", || b.peek::<User>(&1).unwrap().is_none());
        assert_eq!(b.find::<User>(1).unwrap().unwrap().name, "via raw SQL");
        wait_for("a too", || a.peek::<User>(&1).unwrap().is_none_or(|u| u.version == 3));
        assert_eq!(a.find::<User>(1).unwrap().unwrap().version, 3);

        // A raw delete.
        cache_in(&b, 1);
        raw.batch_execute("DELETE FROM users WHERE id = 1").unwrap();
        wait_for("b to drop the deleted row", || b.peek::<User>(&1).unwrap().is_none());
        assert!(b.find::<User>(1).unwrap().is_none());
    }

    fn own_applied_writes_are_not_thrown_away(t) {
        let a = Db::builder(t.pool.clone()).cache::<User>().listen(listen(t, "l2_own")).build().unwrap();
        let v1 = a.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
        let mut next = v1.clone();
        next.name = "mine".into();
        a.transaction(|tx| tx.update(&next)).unwrap();
        // Wait until the listener has seen both of its own changes.
        wait_for("a's own notifications", || a.stats().listener.unwrap().changes >= 2);
        let cached = a.peek::<User>(&1).unwrap().expect("own write still cached");
        assert_eq!((cached.version, cached.name.as_str()), (2, "mine"));
        assert_eq!(a.stats().region("users").unwrap().remote_invalidations, 0);
    }

    fn rolled_back_writes_do_not_invalidate(t) {
        let (pool_b, _) = t.another_pool();
        let a = Db::builder(t.pool.clone()).cache::<User>().build().unwrap();
        let b = Db::builder(pool_b).cache::<User>().listen(listen(t, "l2_rb")).build().unwrap();
        a.transaction(|tx| {
            tx.insert(&User::new(1, "one"))?;
            tx.insert(&User::new(2, "two"))
        })
        .unwrap();
        wait_for("the inserts", || b.stats().listener.unwrap().changes >= 2);
        b.find_many::<User>(&[1, 2]).unwrap();
        let before = b.stats().listener.unwrap().changes;
        let one = b.get::<User>(1).unwrap();
        let _ = a.transaction(|tx| -> Result<(), Error> {
            let mut n = (*one).clone();
            n.name = "rolled back".into();
            tx.update(&n)?;
            Err(Error::Other("roll back".into()))
        });
        // A committed marker write after the rollback: once b has seen it, it would have
        // seen the rolled-back one too had it been delivered.
        let two = b.get::<User>(2).unwrap();
        let mut n = (*two).clone();
        n.name = "marker".into();
        a.transaction(|tx| tx.update(&n)).unwrap();
        wait_for("the marker", || b.peek::<User>(&2).unwrap().is_none());
        assert_eq!(b.stats().listener.unwrap().changes, before + 1, "only the committed write was notified");
        assert_eq!(b.peek::<User>(&1).unwrap().map(|u| u.version), Some(1), "user 1 stays cached");
    }

    fn commit_to_invalidation_delay_is_bounded_and_measured(t) {
        let (pool_b, _) = t.another_pool();
        let b = Db::builder(pool_b).cache::<User>().listen(listen(t, "l2_delay")).build().unwrap();
        let mut raw = t.raw_connection();
        raw.batch_execute("INSERT INTO users (id, version, email, name) VALUES (1, 1, 'd@x', 'D')").unwrap();
        const N: usize = 200;
        let mut delays = Vec::with_capacity(N);
        for i in 0..N {
            wait_for("b to cache the row", || {
                b.find::<User>(1).unwrap();
                b.peek::<User>(&1).unwrap().is_some()
            });
            raw.batch_execute(&format!("UPDATE users SET name = 'n{i}', version = version + 1 WHERE id = 1")).unwrap();
            // COMMIT has returned (autocommit): time until b stops serving the old row.
            delays.push(wait_for("invalidation", || b.peek::<User>(&1).unwrap().is_none()));
        }
        delays.sort();
        let (p50, p99, max) = (percentile(&delays, 0.5), percentile(&delays, 0.99), delays[N - 1]);
        println!(
            "C7 delay {BACKEND:?}: COMMIT -> invalidated in another Db over {N} writes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
        let s = b.stats();
        assert!(s.listener.as_ref().unwrap().changes >= N as u64);
        // Each update dropped the cached row; the insert's notification may have fenced
        // the first fill too.
        assert!(s.region("users").unwrap().remote_invalidations >= N as u64);
    }

    only(postgres)
    fn a_bulk_statement_sends_one_flush(t) {
        let b = Db::builder(t.pool.clone()).cache::<User>().listen(listen(t, "l2_bulk")).build().unwrap();
        let values: Vec<String> = (1..=300).map(|i| format!("({i}, 1, 'u{i}@x', 'U')")).collect();
        let mut raw = t.raw_connection();
        raw.batch_execute(&format!("INSERT INTO users (id, version, email, name) VALUES {}", values.join(", "))).unwrap();
        wait_for("the insert flush", || b.stats().listener.unwrap().flushes >= 1);
        b.find_many::<User>(&(1..=300).collect::<Vec<_>>()).unwrap();
        let before = b.stats().listener.unwrap();
        raw.batch_execute("UPDATE users SET version = version + 1").unwrap();
        wait_for("the update flush", || b.stats().listener.unwrap().flushes > before.flushes);
        let after = b.stats().listener.unwrap();
        assert_eq!(after.changes, before.changes, "no per-row notifications for 300 rows");
        assert_eq!(after.flushes, before.flushes + 1);
        assert!(b.peek::<User>(&7).unwrap().is_none(), "the region was cleared");
        assert_eq!(b.find::<User>(7).unwrap().unwrap().version, 2);
    }

    only(postgres)
    fn losing_the_listener_stops_trusting_until_reconnected_and_cleared(t) {
        let app = format!("l2_loss_{}", std::process::id());
        let b = Db::builder(t.pool.clone()).cache::<User>().listen(listen(t, &app)).build().unwrap();
        let mut raw = t.raw_connection();
        raw.batch_execute("INSERT INTO users (id, version, email, name) VALUES (1, 1, 'a@x', 'A')").unwrap();
        wait_for("caching", || {
            b.find::<User>(1).unwrap();
            b.peek::<User>(&1).unwrap().is_some()
        });
        let mut admin = t.raw_connection();
        admin
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{app}'"
            ))
            .unwrap();
        // Written while the listener may be down: its notification can be lost.
        raw.batch_execute("UPDATE users SET name = 'during the outage', version = 2 WHERE id = 1").unwrap();
        wait_for("the listener to notice and reconnect", || {
            let l = b.stats().listener.unwrap();
            l.disconnects >= 1 && l.connected && l.connects >= 2
        });
        let read = b.find::<User>(1).unwrap().unwrap();
        assert_eq!((read.version, read.name.as_str()), (2, "during the outage"), "the region was cleared on reconnection");
        let l = b.stats().listener.unwrap();
        assert!(l.last_error.is_some());
    }

    fn dropping_the_db_stops_the_listener(t) {
        let b = Db::builder(t.pool.clone()).cache::<User>().listen(listen(t, "l2_drop")).build().unwrap();
        let clone = b.clone();
        drop(b);
        assert!(clone.stats().listener.unwrap().connected, "a clone keeps it running");
        let started = Instant::now();
        drop(clone);
        assert!(started.elapsed() < BOUND, "the listener thread stopped and was joined");
    }
}

/// The outbox backends' gap handling and pruning.
mod outbox {
    use super::*;

    backend_tests! {
        only(mysql)
        fn an_outbox_gap_that_times_out_clears_the_regions(t) {
            let config = listen(t, "gap").gap_timeout(Duration::from_millis(200)).retention(Duration::from_secs(60));
            let b = Db::builder(t.pool.clone()).cache::<User>().listen(config).build().unwrap();
            let mut raw = t.raw_connection();
            raw.batch_execute("INSERT INTO users (id, version, email, name) VALUES (1, 1, 'a@x', 'A'), (2, 1, 'b@x', 'B')").unwrap();
            cache_in(&b, 1);
            // A rolled-back write still consumes an AUTO_INCREMENT value: a gap in the feed.
            raw.batch_execute("BEGIN; UPDATE users SET version = 5 WHERE id = 2; ROLLBACK;").unwrap();
            raw.batch_execute("UPDATE users SET version = 2 WHERE id = 2").unwrap();
            wait_for("the gap to time out", || b.stats().listener.unwrap().gaps >= 1);
            assert!(b.peek::<User>(&1).unwrap().is_none(), "the regions were cleared on the gap");
            cache_in(&b, 1);
            raw.batch_execute("UPDATE users SET version = 2 WHERE id = 1").unwrap();
            wait_for("later changes to flow again", || b.peek::<User>(&1).unwrap().is_none());
        }

        only(mysql, sqlite)
        fn old_change_rows_are_pruned(t) {
            use diesel::prelude::*;
            let config = listen(t, "prune").gap_timeout(Duration::from_millis(100)).retention(Duration::from_millis(400));
            let _b = Db::builder(t.pool.clone()).cache::<User>().listen(config).build().unwrap();
            t.exec("INSERT INTO users (id, version, email, name) VALUES (1, 1, 'a@x', 'A')");
            #[derive(QueryableByName)]
            struct Count {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                n: i64,
            }
            let count = || {
                let mut c = t.conn();
                diesel::sql_query("SELECT COUNT(*) AS n FROM diesel_l2_changes").get_result::<Count>(&mut c).unwrap().n
            };
            assert!(count() >= 1);
            wait_for("pruning", || count() == 0);
        }
    }
}

#[test]
fn ids_are_parsed_from_text_when_the_type_allows() {
    use common::models::{Product, Tag, TextDocument};
    use diesel_l2::CachedEntity;
    assert_eq!(User::parse_id("42"), Some(42));
    assert_eq!(User::parse_id("x"), None);
    assert_eq!(Product::parse_id("-7"), Some(-7));
    assert_eq!(Tag::parse_id("rust"), Some("rust".to_string()));
    // A newtype without FromStr: a notification for it clears the region instead.
    assert_eq!(
        TextDocument::parse_id("2f1e6b9a-0000-4000-8000-000000000000"),
        None
    );
}
