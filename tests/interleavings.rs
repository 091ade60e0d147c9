//! Issue 3, part 2: deterministic interleavings of the races that matter — a read-through
//! load against a commit, a rollback, a failing COMMIT and an eviction, in each order —
//! driven by the library's test-only pause points (feature `test-hooks`), never by sleeps.
//!
//! Each test names the order it drives. Threads are parked at a pause point until the
//! test releases them, so every run executes exactly the interleaving written down.
//!
//! At the end: reproductions of the bugs the consistency work found (ignored until fixed;
//! run them with `--ignored`).
#![cfg(feature = "test-hooks")]

mod common;

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use common::models::{Post, User, UserByEmail};
use diesel::connection::SimpleConnection;
use diesel_l2::testing::{Hook, Point};
use diesel_l2::{CachedOps, Db, Error, KeyCompare, ListenConfig};

/// Which pause point, without its fields.
fn tag(p: &Point) -> &'static str {
    match p {
        Point::BeforeLoad { .. } => "before_load",
        Point::AfterLoad { .. } => "after_load",
        Point::AfterLock { .. } => "after_lock",
        Point::BeforeCommit => "before_commit",
        Point::AfterCommit => "after_commit",
        Point::AfterApply => "after_apply",
        Point::BeforeSharedFill { .. } => "before_shared_fill",
        _ => "other",
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Armed,
    Arrived,
    Released,
}

/// Per (thread name, point): where that pause is.
type Pauses = Mutex<HashMap<(String, &'static str), State>>;

/// Pauses: "the thread named T stops at point P once, until released".
#[derive(Clone, Default)]
struct Script {
    inner: Arc<(Pauses, Condvar)>,
}

impl Script {
    fn hook(&self) -> Hook {
        let s = self.clone();
        Hook::new(move |p| s.reach(p))
    }

    fn reach(&self, p: &Point) {
        let Some(name) = std::thread::current().name().map(str::to_owned) else {
            return;
        };
        let (m, cv) = &*self.inner;
        let mut map = m.lock().unwrap();
        let k = (name, tag(p));
        if map.get(&k) != Some(&State::Armed) {
            return;
        }
        map.insert(k.clone(), State::Arrived);
        cv.notify_all();
        while map.get(&k) != Some(&State::Released) {
            map = cv.wait(map).unwrap();
        }
    }

    /// Thread `thread` will stop at `point` the next time it reaches it.
    fn arm(&self, thread: &str, point: &'static str) {
        self.inner
            .0
            .lock()
            .unwrap()
            .insert((thread.to_owned(), point), State::Armed);
    }

    /// Blocks until `thread` is parked at `point`.
    fn wait(&self, thread: &str, point: &'static str) {
        let (m, cv) = &*self.inner;
        let mut map = m.lock().unwrap();
        let k = (thread.to_owned(), point);
        while map.get(&k) != Some(&State::Arrived) {
            let (m2, timeout) = cv
                .wait_timeout(map, std::time::Duration::from_secs(30))
                .unwrap();
            map = m2;
            assert!(
                !timeout.timed_out() || map.get(&k) == Some(&State::Arrived),
                "{thread} never reached {point}"
            );
        }
    }

    fn release(&self, thread: &str, point: &'static str) {
        let (m, cv) = &*self.inner;
        m.lock()
            .unwrap()
            .insert((thread.to_owned(), point), State::Released);
        cv.notify_all();
    }
}

fn spawn<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .unwrap()
}

fn db_with<C>(t: &common::TestDb<C>, script: &Script) -> Db<C>
where
    C: diesel::r2d2::R2D2Connection + 'static,
    User: CachedOps<C>,
    common::models::Product: CachedOps<C>,
    common::models::Tag: CachedOps<C>,
    Post: CachedOps<C>,
{
    common::builder(t).test_hook(script.hook()).build().unwrap()
}

fn renamed(u: &User, name: &str) -> User {
    let mut n = u.clone();
    n.name = name.into();
    n
}

/// The row in the database, past the cache.
fn in_db<C>(t: &common::TestDb<C>, id: i64) -> Option<User>
where
    C: diesel::r2d2::R2D2Connection + 'static,
    User: CachedOps<C>,
{
    User::load_one(&mut t.raw_connection(), &id).unwrap()
}

/// A change listener on the test's database (C7).
fn listen_to<C: common::TestBackend>(t: &common::TestDb<C>) -> ListenConfig {
    let mut config =
        ListenConfig::new(t.url.clone()).poll_interval(std::time::Duration::from_millis(1));
    if let Some(schema) = t.pg_schema() {
        config = config.schema(schema);
    }
    config
}

/// Waits (up to 10 s, then fails) until `cond` holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

backend_tests! {
    /// load(v1) → commit(v2) returns → fill attempt: rejected; the next read sees v2.
    fn load_then_commit_then_fill(t) {
        let s = Script::default();
        let db = db_with(t, &s);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
        db.evict::<User>(&1).unwrap(); // so the reader misses and loads
        s.arm("reader", "after_load");
        let r = { let db = db.clone(); spawn("reader", move || db.find::<User>(1).unwrap()) };
        s.wait("reader", "after_load");
        let v2 = db.transaction(|tx| tx.update(&renamed(&v1, "v2"))).unwrap();
        s.release("reader", "after_load");
        assert_eq!(r.join().unwrap().unwrap().version, 1, "the read began before the commit: v1 is linearizable");
        assert_eq!(db.find::<User>(1).unwrap().unwrap().version, v2.version, "C3: the old load did not land");
    }

    /// load(v1) → commit(v2) → eviction of v2 → fill attempt: rejected even though the
    /// newer entry is gone (the fence outlives the value).
    fn load_then_commit_then_eviction_then_fill(t) {
        let s = Script::default();
        let db = db_with(t, &s);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
        db.evict::<User>(&1).unwrap(); // so the reader misses and loads
        s.arm("reader", "after_load");
        let r = { let db = db.clone(); spawn("reader", move || db.find::<User>(1).unwrap()) };
        s.wait("reader", "after_load");
        db.transaction(|tx| tx.update(&renamed(&v1, "v2"))).unwrap();
        db.evict::<User>(&1).unwrap();
        s.release("reader", "after_load");
        r.join().unwrap();
        let read = db.find::<User>(1).unwrap().unwrap();
        assert_eq!((read.version, read.name.as_str()), (2, "v2"), "C3 after an eviction");
        assert!(db.stats().region("users").unwrap().rejected_stale_fills >= 1);
    }

    /// Writer locked (pending v2) → load starts → rollback → load ends: the load never
    /// filled (it bypassed the locked key), and nothing of v2 is visible.
    fn lock_then_load_then_rollback(t) {
        let s = Script::default();
        let db = db_with(t, &s);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
        let (locked_tx, locked_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let w = {
            let db = db.clone();
            let next = renamed(&v1, "never");
            spawn("writer", move || db.transaction(|tx| -> Result<(), Error> {
                tx.update(&next)?;
                locked_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                Err(Error::Other("rolled back".into()))
            }))
        };
        locked_rx.recv().unwrap();
        let read = db.find::<User>(1).unwrap().unwrap();
        assert_eq!(read.name, "v1", "C1/C4: the pending write is invisible; read from the database");
        go_tx.send(()).unwrap();
        assert!(w.join().unwrap().is_err());
        t.sql.reset();
        assert_eq!(db.find::<User>(1).unwrap().unwrap().name, "v1");
        assert_eq!(t.sql.selects(), 1, "the bypassing read did not fill: the first read after the rollback loads");
    }

    /// load(v1) starts → writer locks and rolls back → load fills? The rollback bumped the
    /// fence, so the fill is rejected (conservative); the value stays correct.
    fn load_then_lock_then_rollback_then_fill(t) {
        let s = Script::default();
        let db = db_with(t, &s);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
        db.evict::<User>(&1).unwrap(); // so the reader misses and loads
        s.arm("reader", "after_load");
        let r = { let db = db.clone(); spawn("reader", move || db.find::<User>(1).unwrap()) };
        s.wait("reader", "after_load");
        let next = renamed(&v1, "never");
        let _ = db.transaction(|tx| -> Result<(), Error> { tx.update(&next)?; Err(Error::Other("no".into())) });
        s.release("reader", "after_load");
        assert_eq!(r.join().unwrap().unwrap().name, "v1");
        assert_eq!(db.find::<User>(1).unwrap().unwrap().name, "v1");
        assert_eq!(in_db(t, 1).unwrap().name, "v1");
    }

    /// COMMIT returned, cache not yet applied → a read starts: it must see v2 (C4), from
    /// the database, without filling; then the apply lands v2.
    fn commit_returned_then_read_before_apply(t) {
        let s = Script::default();
        let db = db_with(t, &s);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
        assert_eq!(db.find::<User>(1).unwrap().unwrap().version, 1);
        s.arm("writer", "after_commit");
        let w = { let db = db.clone(); let n = renamed(&v1, "v2"); spawn("writer", move || db.transaction(|tx| tx.update(&n))) };
        s.wait("writer", "after_commit");
        let read = db.find::<User>(1).unwrap().unwrap();
        assert_eq!(read.version, 2, "C4: committed in the database, the key is locked: read past the cache");
        s.release("writer", "after_commit");
        w.join().unwrap().unwrap();
        t.sql.reset();
        assert_eq!(db.find::<User>(1).unwrap().unwrap().version, 2);
        assert_eq!(t.sql.count(), 0, "C2: applied after commit");
    }

    /// Closure done, COMMIT not sent → a read: v1 from the database, no fill → COMMIT
    /// fails (deferred FK) → no trace of v2, and the key reloads v1.
    only(sqlite, postgres)
    fn pending_commit_then_read_then_commit_fails(t) {
        if t.backend == common::Backend::Sqlite {
            // SQLite's migration checks this FK immediately; a deferred one of our own:
            t.exec("CREATE TABLE commit_guard (id BIGINT PRIMARY KEY NOT NULL, user_ref BIGINT NOT NULL REFERENCES users (id) DEFERRABLE INITIALLY DEFERRED)");
        }
        let s = Script::default();
        let db = db_with(t, &s);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
        s.arm("writer", "before_commit");
        let backend = t.backend;
        let w = {
            let db = db.clone();
            let n = renamed(&v1, "never");
            spawn("writer", move || db.transaction(|tx| {
                tx.update(&n)?;
                let doomed = if backend == common::Backend::Sqlite {
                    "INSERT INTO commit_guard (id, user_ref) VALUES (1, 404)"
                } else {
                    "INSERT INTO posts (id, version, user_id, title) VALUES (1, 1, 404, 'orphan')"
                };
                tx.conn().batch_execute(doomed)?;
                Ok(())
            }))
        };
        s.wait("writer", "before_commit");
        assert_eq!(db.find::<User>(1).unwrap().unwrap().name, "v1");
        s.release("writer", "before_commit");
        assert!(w.join().unwrap().is_err(), "COMMIT fails on the deferred FK");
        assert_eq!(db.find::<User>(1).unwrap().unwrap().name, "v1", "C1");
        assert_eq!(in_db(t, 1).unwrap().name, "v1");
    }

    /// load(absent) → insert(v1) commits → negative fill attempt: rejected; the row is seen.
    fn negative_load_then_insert_then_fill(t) {
        let s = Script::default();
        let db = db_with(t, &s);
        s.arm("reader", "after_load");
        let r = { let db = db.clone(); spawn("reader", move || db.find::<User>(1).unwrap()) };
        s.wait("reader", "after_load");
        db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
        s.release("reader", "after_load");
        assert!(r.join().unwrap().is_none());
        assert_eq!(db.find::<User>(1).unwrap().unwrap().version, 1, "C3: no stale negative entry");
    }

    /// load(v1) → delete commits → tombstone evicted → fill attempt: rejected; the row
    /// stays gone.
    fn load_then_delete_then_eviction_then_fill(t) {
        let s = Script::default();
        let db = db_with(t, &s);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
        db.evict::<User>(&1).unwrap(); // so the reader misses and loads
        s.arm("reader", "after_load");
        let r = { let db = db.clone(); spawn("reader", move || db.find::<User>(1).unwrap()) };
        s.wait("reader", "after_load");
        db.transaction(|tx| tx.delete(&v1)).unwrap();
        db.evict::<User>(&1).unwrap();
        s.release("reader", "after_load");
        assert_eq!(r.join().unwrap().unwrap().version, 1);
        assert!(db.find::<User>(1).unwrap().is_none(), "C3: the deleted row did not come back");
    }

    /// Two loads of a key: the first (v1) parked; a commit (v2); a second read starts
    /// after the commit returned and must not join the first load's flight (C4).
    fn second_reader_after_commit_does_not_join_an_older_flight(t) {
        let s = Script::default();
        let db = db_with(t, &s);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
        db.evict::<User>(&1).unwrap();
        s.arm("reader", "after_load");
        let r = { let db = db.clone(); spawn("reader", move || db.find::<User>(1).unwrap()) };
        s.wait("reader", "after_load");
        db.transaction(|tx| tx.update(&renamed(&v1, "v2"))).unwrap();
        db.evict::<User>(&1).unwrap();
        let second = { let db = db.clone(); spawn("second", move || db.find::<User>(1).unwrap()) };
        assert_eq!(second.join().unwrap().unwrap().version, 2, "C4: not the older flight's v1");
        s.release("reader", "after_load");
        r.join().unwrap();
        assert_eq!(db.find::<User>(1).unwrap().unwrap().version, 2);
    }

    /// Writer locked → a load that started before the lock finishes: no fill (the lock
    /// bumped the fence) → writer commits v2: v2 is read.
    fn load_then_lock_then_fill_then_commit(t) {
        let s = Script::default();
        let db = db_with(t, &s);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
        db.evict::<User>(&1).unwrap();
        s.arm("reader", "after_load");
        s.arm("writer", "after_lock");
        let r = { let db = db.clone(); spawn("reader", move || db.find::<User>(1).unwrap()) };
        s.wait("reader", "after_load");
        let w = { let db = db.clone(); let n = renamed(&v1, "v2"); spawn("writer", move || db.transaction(|tx| tx.update(&n))) };
        s.wait("writer", "after_lock");
        s.release("reader", "after_load");
        assert_eq!(r.join().unwrap().unwrap().version, 1);
        s.release("writer", "after_lock");
        w.join().unwrap().unwrap();
        assert_eq!(db.find::<User>(1).unwrap().unwrap().version, 2);
    }

    /// C7 (region-wide clears fence commits in flight): COMMIT(v2) returned, the buffer is
    /// not applied yet → another client commits v3 → a region-wide clear (`evict_all`
    /// here; a PostgreSQL bulk flush, an outbox gap flush and a listener reconnect end in
    /// the same clear) → the apply must not put v2 over v3.
    fn a_region_clear_between_commit_and_apply_fences_the_commit(t) {
        let s = Script::default();
        let db = db_with(t, &s);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
        assert_eq!(db.find::<User>(1).unwrap().unwrap().version, 1);
        s.arm("writer", "after_commit");
        let w = { let db = db.clone(); let n = renamed(&v1, "v2"); spawn("writer", move || db.transaction(|tx| tx.update(&n))) };
        s.wait("writer", "after_commit");
        t.exec("UPDATE users SET name = 'v3 elsewhere', version = 3 WHERE id = 1");
        db.evict_all::<User>().unwrap();
        s.release("writer", "after_commit");
        assert_eq!(w.join().unwrap().unwrap().version, 2);
        let read = db.find::<User>(1).unwrap().unwrap();
        assert_eq!((read.version, read.name.as_str()), (3, "v3 elsewhere"), "C7: the clear fenced the commit in flight; v2 must not hide v3");
    }

    /// The same race with a real PostgreSQL bulk flush: COMMIT(v2) returned, not applied →
    /// another client's many-row UPDATE moves row 1 on and is notified as one flush of the
    /// region → the apply must not put v2 over the bulk write (C7).
    only(postgres)
    fn a_bulk_flush_between_commit_and_apply_fences_the_commit(t) {
        let s = Script::default();
        let db = Db::builder(t.pool.clone()).cache::<User>().listen(listen_to(t)).test_hook(s.hook()).build().unwrap();
        let values: Vec<String> = (2..=300).map(|i| format!("({i}, 1, 'u{i}@x', 'U')")).collect();
        t.exec(&format!("INSERT INTO users (id, version, email, name) VALUES {}", values.join(", ")));
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
        s.arm("writer", "after_commit");
        let w = { let db = db.clone(); let n = renamed(&v1, "v2"); spawn("writer", move || db.transaction(|tx| tx.update(&n))) };
        s.wait("writer", "after_commit");
        let before = db.stats().listener.unwrap().flushes;
        t.exec("UPDATE users SET name = 'bulk', version = version + 1");
        wait_until("the bulk statement's flush", || db.stats().listener.unwrap().flushes > before);
        s.release("writer", "after_commit");
        assert_eq!(w.join().unwrap().unwrap().version, 2);
        let read = db.find::<User>(1).unwrap().unwrap();
        assert_eq!((read.version, read.name.as_str()), (3, "bulk"), "C7: the flush fenced the commit in flight");
    }

    /// C7 with unique keys ("is this email taken?" under contention): "new@x.org" is
    /// cached as taken by no row → a local transaction locks row 1 (paused before its
    /// UPDATE) → another client moves row 1 to "new@x.org", and the notification arrives
    /// while the key is soft-locked → the local transaction fails (version conflict) and
    /// rolls back → `find_by("new@x.org")` must find row 1.
    fn a_remote_key_change_while_the_row_is_held_clears_the_negative_key_entry(t) {
        let s = Script::default();
        // Declared exact so that MariaDB caches "not found" too (the keys are lower case).
        let db = Db::builder(t.pool.clone())
            .cache_with::<User>(|c| c.key_compare(KeyCompare::Exact))
            .listen(listen_to(t))
            .test_hook(s.hook())
            .build()
            .unwrap();
        assert!(db.stats().listener.unwrap().connected);
        let mut ada = User::new(1, "Ada");
        ada.email = "old@x.org".into();
        let v1 = db.transaction(|tx| tx.insert(&ada)).unwrap();
        wait_until("the insert's own notification", || db.stats().listener.unwrap().changes >= 1);
        let new_key = || UserByEmail("new@x.org".into());
        assert!(db.find_by(new_key()).unwrap().is_none());
        t.sql.reset();
        assert!(db.find_by(new_key()).unwrap().is_none());
        assert_eq!(t.sql.selects(), 0, "\"new@x.org\" is negatively cached");
        s.arm("writer", "after_lock");
        let w = { let db = db.clone(); let n = renamed(&v1, "local"); spawn("writer", move || db.transaction(|tx| tx.update(&n))) };
        s.wait("writer", "after_lock");
        let before = db.stats().listener.unwrap().changes;
        t.exec("UPDATE users SET email = 'new@x.org', version = 2 WHERE id = 1");
        wait_until("the remote change's notification", || db.stats().listener.unwrap().changes > before);
        s.release("writer", "after_lock");
        let r = w.join().unwrap();
        assert!(matches!(r, Err(Error::Conflict { .. })), "the local write conflicts and rolls back: {r:?}");
        let found = db.find_by(new_key()).unwrap();
        assert_eq!(found.map(|u| u.version), Some(2), "C7: a stale \"not found\" outlived the remote key change");
        assert!(db.find_by(UserByEmail("old@x.org".into())).unwrap().is_none());
    }

    /// C3 for `refresh()`: a refresh load reads version 1 (paused after its query) →
    /// another client updates the row to version 2 with plain SQL → a batch read (which
    /// joins no flight) loads and fills version 2 → version 2's notification finds the
    /// slot already at 2 → the refresh's put must not replace 2 with 1.
    fn a_refresh_that_read_an_older_version_never_replaces_a_newer_fill(t) {
        t.exec("INSERT INTO users (id, version, email, name) VALUES (1, 1, 'a@x.org', 'A')");
        let s = Script::default();
        let db = Db::builder(t.pool.clone()).cache::<User>().listen(listen_to(t)).test_hook(s.hook()).build().unwrap();
        let changes = || db.stats().listener.unwrap().changes;
        let seen = changes();
        s.arm("refresher", "after_load");
        let r = {
            let db = db.clone();
            spawn("refresher", move || db.refresh().find::<User>(1).unwrap())
        };
        s.wait("refresher", "after_load");
        t.exec("UPDATE users SET name = 'B', version = 2 WHERE id = 1");
        let batch = db.find_many::<User>(&[1]).unwrap();
        assert_eq!(batch[0].as_ref().map(|u| u.version), Some(2));
        wait_until("version 2's notification", || changes() > seen);
        s.release("refresher", "after_load");
        assert_eq!(r.join().unwrap().map(|u| u.version), Some(1), "the refresh returns what it read");
        // Version 2, or nothing if the notification came before the batch's fill; never 1.
        let cached = db.peek::<User>(&1).unwrap().map(|u| u.version);
        assert!(matches!(cached, None | Some(2)), "C3: the refresh put version 1 over version 2: {cached:?}");
        assert_eq!(db.find::<User>(1).unwrap().map(|u| u.version), Some(2));
    }

    /// C3 for `find_many`: a batch reads versions 1 of rows 1 and 2 (paused after its
    /// query) → another client updates row 1 to version 2 with plain SQL, and its
    /// notification arrives → the batch fills. Row 2 is cached (in the batch window); row
    /// 1's version 1 is refused, so the next read loads version 2. The batch registers no
    /// key: it is fenced by the region's write log, which the notification wrote.
    fn a_batch_load_racing_a_plain_sql_write_never_fills_the_written_row(t) {
        t.exec("INSERT INTO users (id, version, email, name) VALUES (1, 1, 'a@x.org', 'A'), (2, 1, 'b@x.org', 'B')");
        let s = Script::default();
        let db = Db::builder(t.pool.clone()).cache::<User>().listen(listen_to(t)).test_hook(s.hook()).build().unwrap();
        let changes = || db.stats().listener.unwrap().changes;
        let seen = changes();
        s.arm("batch", "after_load");
        let r = {
            let db = db.clone();
            spawn("batch", move || db.find_many::<User>(&[1, 2]).unwrap())
        };
        s.wait("batch", "after_load");
        t.exec("UPDATE users SET name = 'A2', version = 2 WHERE id = 1");
        wait_until("version 2's notification", || changes() > seen);
        s.release("batch", "after_load");
        let read: Vec<Option<i64>> = r.join().unwrap().iter().map(|u| u.as_ref().map(|u| u.version)).collect();
        assert_eq!(read, vec![Some(1), Some(1)], "the batch returns what it read");
        assert_eq!(db.peek::<User>(&1).unwrap().map(|u| u.version), None, "C3: the batch filled version 1 after version 2 committed");
        assert_eq!(db.peek::<User>(&2).unwrap().map(|u| u.version), Some(1));
        assert_eq!(db.find::<User>(1).unwrap().map(|u| u.version), Some(2));
        assert_eq!(db.stats().region("users").unwrap().rejected_stale_fills, 1);
    }

    // ---- Regressions: bugs the consistency work found, now fixed -------------------

    /// Was a bug (C1, PostgreSQL), fixed by the pre-COMMIT probe: a statement error swallowed inside the closure aborts the
    /// PostgreSQL transaction; the closure returns Ok, diesel sends COMMIT, PostgreSQL
    /// answers ROLLBACK *without an error*, so `transaction` returns Ok and the buffered
    /// write-through publishes a version that never committed.
    only(postgres)
    fn an_aborted_postgres_transaction_is_reported_and_not_cached(t) {
        let db = common::cached_db(t);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
        let r = db.transaction(|tx| {
            tx.update(&renamed(&v1, "never committed"))?;
            // E.g. an optional insert whose unique violation the application ignores.
            let _ = tx.conn().batch_execute("SELECT 1/0");
            Ok(())
        });
        let cached = db.find::<User>(1).unwrap().unwrap();
        let row = in_db(t, 1).unwrap();
        assert_eq!(row.name, "v1", "PostgreSQL rolled the transaction back");
        assert!(matches!(r, Err(Error::RolledBack)), "transaction() must report the rollback: {r:?}");
        assert_eq!(cached.name, "v1", "C1: the cache holds a version that never committed");
    }

    /// Was a bug (C1, MariaDB), fixed by the pre-COMMIT probe: InnoDB rolls back the *whole* transaction when a statement
    /// inside a savepoint is chosen as a deadlock victim. The savepoint reports its error,
    /// the closure (rightly) carries on, COMMIT succeeds on an empty transaction, and the
    /// writes made before the savepoint — rolled back — are published to the cache.
    /// Also a bug (C1, found later): a write of ours after that point ran in the autocommit
    /// mode InnoDB leaves the connection in, and committed on its own although the
    /// transaction reports `RolledBack`; such writes are now refused.
    only(mysql)
    fn a_deadlock_victim_does_not_publish_its_rolled_back_writes(t) {
        use diesel::prelude::*;
        let db = common::cached_db(t);
        let a = db.transaction(|tx| tx.insert(&User::new(1, "a1"))).unwrap();
        let b = db.transaction(|tx| tx.insert(&User::new(2, "b1"))).unwrap();
        let c = db.transaction(|tx| tx.insert(&User::new(3, "c1"))).unwrap();
        t.exec("CREATE TABLE ballast (id INT PRIMARY KEY, n INT NOT NULL) ENGINE=InnoDB");
        t.exec(&format!("INSERT INTO ballast VALUES {}", (0..200).map(|i| format!("({i}, 0)")).collect::<Vec<_>>().join(",")));
        // The other transaction: b locked, plus 200 ballast rows so InnoDB picks ours
        // (the lighter one) as the deadlock victim.
        let mut other = t.raw_connection();
        other.batch_execute("BEGIN; UPDATE users SET bio = 'x' WHERE id = 2; UPDATE ballast SET n = 1").unwrap();
        let (a_locked_tx, a_locked_rx) = mpsc::channel();
        let ours = {
            let db = db.clone();
            spawn("ours", move || db.transaction(|tx| {
                tx.update(&renamed(&a, "a2 never committed"))?;
                a_locked_tx.send(()).unwrap();
                // Blocks on b (held by `other`), then is the deadlock victim.
                let sp = tx.savepoint(|sp| sp.update(&renamed(&b, "b2")).map(|_| ()));
                assert!(sp.is_err(), "the savepoint failed: {sp:?}");
                // The closure carries on. InnoDB has ended the transaction, and the
                // connection is now in autocommit mode: this write must be refused, not
                // committed on its own.
                let after = tx.update(&renamed(&c, "c2 autocommitted"));
                assert!(matches!(after, Err(Error::RolledBack)), "a write after the rollback: {after:?}");
                Ok(())
            }))
        };
        a_locked_rx.recv().unwrap();
        // Wait until ours waits for b, by polling the server rather than sleeping blindly.
        // Polls are spaced 200 ms apart on purpose: InnoDB refreshes
        // information_schema.innodb_trx only when nobody has read it for 100 ms, so a
        // tight loop keeps reading the snapshot from before ours began to wait, forever.
        let mut probe = t.raw_connection();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            #[derive(QueryableByName)]
            struct N { #[diesel(sql_type = diesel::sql_types::BigInt)] n: i64 }
            let w: N = diesel::sql_query(
                "SELECT COUNT(*) AS n FROM information_schema.innodb_trx t \
                 JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id \
                 WHERE t.trx_state = 'LOCK WAIT' AND p.db = DATABASE()",
            ).get_result(&mut probe).unwrap();
            if w.n > 0 { break; }
            assert!(std::time::Instant::now() < deadline, "ours never waited for b's row lock");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        // Close the cycle: other waits for a, held by ours -> deadlock, ours is the victim.
        other.batch_execute("UPDATE users SET bio = 'y' WHERE id = 1").unwrap();
        other.batch_execute("ROLLBACK").unwrap();
        let r = ours.join().unwrap();
        let row = in_db(t, 1).unwrap();
        assert_eq!(row.name, "a1", "InnoDB rolled ours back as the deadlock victim");
        let cached = db.find::<User>(1).unwrap().unwrap();
        assert!(r.is_err(), "transaction() reported Ok for a transaction InnoDB rolled back");
        assert_eq!(cached.name, "a1", "C1: the cache holds a version that never committed");
        assert_eq!(in_db(t, 3).unwrap().name, "c1", "a write after the rollback committed on its own");
    }

    /// C1 with a statement-level failure: a lock-wait timeout inside a savepoint rolls
    /// back only that statement (InnoDB's default). The closure handles it, so the
    /// transaction commits its other write, which must then be both in the database and
    /// in the cache, and the failed write in neither.
    only(mysql)
    fn a_lock_wait_timeout_in_a_savepoint_commits_the_rest(t) {
        let db = common::cached_db(t);
        let a = db.transaction(|tx| tx.insert(&User::new(1, "a1"))).unwrap();
        let b = db.transaction(|tx| tx.insert(&User::new(2, "b1"))).unwrap();
        db.find::<User>(2).unwrap(); // cached, so a wrongly published b2 would show
        let mut other = t.raw_connection();
        other.batch_execute("BEGIN; UPDATE users SET bio = 'x' WHERE id = 2").unwrap();
        let r = db.transaction(|tx| {
            tx.conn().batch_execute("SET SESSION innodb_lock_wait_timeout = 1").map_err(Error::from)?;
            tx.update(&renamed(&a, "a2"))?;
            let sp = tx.savepoint(|sp| sp.update(&renamed(&b, "b2")).map(|_| ()));
            assert!(matches!(sp, Err(Error::Database(_))), "b's row is locked by `other`: {sp:?}");
            Ok(())
        });
        other.batch_execute("ROLLBACK").unwrap();
        assert!(r.is_ok(), "only the timed-out statement was rolled back: {r:?}");
        assert_eq!(in_db(t, 1).unwrap().name, "a2");
        assert_eq!(db.find::<User>(1).unwrap().unwrap().name, "a2", "C2: the committed write is read back");
        assert_eq!(in_db(t, 2).unwrap().name, "b1");
        assert_eq!(db.find::<User>(2).unwrap().unwrap().name, "b1", "C1: the rolled-back write is not cached");
    }

    /// Was a bug (C2/C4, MariaDB at its default REPEATABLE READ), fixed by invalidating on
    /// the already-applied path: a replayed update inside a
    /// transaction that already read something checks "already applied" with a
    /// consistent (snapshot) read. The snapshot can show the replay's target version while
    /// the row has moved on; `update` then reports already-applied and the commit puts that
    /// older row in the cache over a newer committed one, where it stays (no ttl here).
    only(mysql)
    fn a_replay_under_repeatable_read_does_not_cache_a_snapshot(t) {
        let db = common::cached_db(t);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
        db.transaction(|tx| tx.insert(&User::new(2, "other"))).unwrap();
        let x = renamed(&v1, "X");
        db.transaction(|tx| tx.update(&x)).unwrap(); // version 2 = X
        let (snap_tx, snap_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let replayer = {
            let db = db.clone();
            let replay = x.clone();
            spawn("replayer", move || db.transaction(|tx| {
                tx.get::<User>(2)?; // the first read: InnoDB takes the snapshot here
                snap_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                tx.update(&replay) // the retried delivery of "X from version 1"
            }))
        };
        snap_rx.recv().unwrap();
        let cur = db.find::<User>(1).unwrap().unwrap();
        let v3 = db.transaction(|tx| tx.update(&renamed(&cur, "Y"))).unwrap();
        assert_eq!(v3.version, 3);
        go_tx.send(()).unwrap();
        let replayed = replayer.join().unwrap();
        assert!(matches!(replayed, Err(Error::Conflict { expected: 1, .. })), "a repeated write is a conflict (C6): {replayed:?}");
        let read = db.find::<User>(1).unwrap().unwrap();
        assert_eq!((read.version, read.name.as_str()), (3, "Y"), "C2/C4: version 3 had returned before this read; the cache holds version 2");
    }
}

/// C10: a list load that raced a commit changing its membership or one of its members
/// never fills; the next read reflects the commit (C3, C4 for lists).
mod lists {
    use super::*;
    use common::models::PostByUserId;

    fn seed<C: diesel::r2d2::R2D2Connection + 'static>(t: &common::TestDb<C>) {
        t.exec("INSERT INTO users (id, version, email, name) VALUES (1, 1, 'a@x.org', 'A')");
        t.exec("INSERT INTO posts (id, version, user_id, title) VALUES (1, 1, 1, 'one'), (2, 1, 1, 'two')");
    }

    fn post(id: i64, title: &str) -> Post {
        Post {
            id,
            version: 1,
            user_id: 1,
            title: title.into(),
        }
    }

    fn titles(list: &[Arc<Post>]) -> Vec<String> {
        list.iter().map(|p| p.title.clone()).collect()
    }

    /// Starts a reader of user 1's posts named "reader" and parks it right after its
    /// list query, until `s.release("reader", "after_load")`.
    fn parked_reader<C>(db: &Db<C>, s: &Script) -> JoinHandle<diesel_l2::List<Post>>
    where
        C: diesel::r2d2::R2D2Connection + 'static,
        Post: CachedOps<C>,
        PostByUserId: diesel_l2::IndexOps<C>,
    {
        s.arm("reader", "after_load");
        let r = {
            let db = db.clone();
            spawn("reader", move || db.find_all_by(PostByUserId(1)).unwrap())
        };
        s.wait("reader", "after_load");
        r
    }

    /// Parks a reader after its list query, runs `write` (which commits), releases it:
    /// the reader's list is the old one, and it did not land.
    fn race<C>(t: &common::TestDb<C>, write: impl FnOnce(&Db<C>)) -> (Vec<String>, Db<C>)
    where
        C: diesel::r2d2::R2D2Connection + 'static,
        User: CachedOps<C>,
        common::models::Product: CachedOps<C>,
        common::models::Tag: CachedOps<C>,
        Post: CachedOps<C>,
        PostByUserId: diesel_l2::IndexOps<C>,
    {
        seed(t);
        let s = Script::default();
        let db = db_with(t, &s);
        let r = parked_reader(&db, &s);
        write(&db);
        s.release("reader", "after_load");
        let stale = titles(&r.join().unwrap());
        assert!(
            db.peek_all_by(&PostByUserId(1)).unwrap().is_none(),
            "C3 for lists: the load that raced the commit filled the list"
        );
        (stale, db)
    }

    backend_tests! {
        /// list load → commit of an insert that joins the list → fill attempt: refused.
        fn a_list_load_racing_an_insert_never_fills(t) {
            let (stale, db) = race(t, |db| { db.transaction(|tx| tx.insert(&post(3, "three"))).unwrap(); });
            assert_eq!(stale, ["one", "two"], "the read began before the commit");
            assert_eq!(titles(&db.find_all_by(PostByUserId(1)).unwrap()), ["one", "two", "three"], "C4 for lists");
            assert!(db.region_stats::<Post>().unwrap().rejected_stale_fills >= 1);
        }

        /// list load → commit of an update of a member's other column → refused.
        fn a_list_load_racing_a_member_update_never_fills(t) {
            let (stale, db) = race(t, |db| {
                let mut two = db.bypass().find::<Post>(2).unwrap().unwrap().as_ref().clone();
                two.title = "two, edited".into();
                db.transaction(|tx| tx.update(&two)).unwrap();
            });
            assert_eq!(stale, ["one", "two"]);
            assert_eq!(titles(&db.find_all_by(PostByUserId(1)).unwrap()), ["one", "two, edited"]);
        }

        /// list load → another connection inserts a child with plain SQL → its
        /// notification is applied → fill attempt: refused (C7 fences list loads too).
        fn a_list_load_racing_a_remote_insert_never_fills(t) {
            seed(t);
            let s = Script::default();
            let db = Db::builder(t.pool.clone()).cache::<Post>().listen(listen_to(t)).test_hook(s.hook()).build().unwrap();
            // The seed was committed before the listener started: none of it is reported.
            let changes = || db.stats().listener.unwrap().changes;
            let seen = changes();
            let r = parked_reader(&db, &s);
            t.exec("INSERT INTO posts (id, version, user_id, title) VALUES (3, 1, 1, 'three')");
            wait_until("the insert's notification", || changes() > seen);
            s.release("reader", "after_load");
            assert_eq!(titles(&r.join().unwrap()), ["one", "two"]);
            assert!(db.peek_all_by(&PostByUserId(1)).unwrap().is_none(), "C3/C7 for lists: the load that raced the remote insert filled the list");
            assert_eq!(titles(&db.find_all_by(PostByUserId(1)).unwrap()), ["one", "two", "three"]);
        }

        /// list load of user 1's posts → commit of an insert into user 2's list → fill:
        /// accepted. The fence is per key (C10): a write to another list does not void
        /// the load, so a table with steady writes still caches its lists.
        fn a_list_load_racing_a_write_to_another_list_fills(t) {
            seed(t);
            t.exec("INSERT INTO users (id, version, email, name) VALUES (2, 1, 'b@x.org', 'B')");
            let s = Script::default();
            let db = db_with(t, &s);
            let r = parked_reader(&db, &s);
            let other = Post { user_id: 2, ..post(3, "three") };
            db.transaction(|tx| tx.insert(&other)).unwrap();
            s.release("reader", "after_load");
            assert_eq!(titles(&r.join().unwrap()), ["one", "two"]);
            let cached = db.peek_all_by(&PostByUserId(1)).unwrap();
            assert_eq!(cached.as_deref().map(titles), Some(vec!["one".to_string(), "two".to_string()]), "C10: the load raced only another list's write; it fills");
            assert!(db.peek::<Post>(1).unwrap().is_some() && db.peek::<Post>(2).unwrap().is_some(), "C3: no write touched the members: they fill the region too");
            assert_eq!(db.region_stats::<Post>().unwrap().rejected_stale_fills, 0);
            assert_eq!(db.peek_all_by(&PostByUserId(2)).unwrap(), None);
            assert_eq!(titles(&db.find_all_by(PostByUserId(2)).unwrap()), ["three"]);
        }

        /// list load → another connection edits member 2 with plain SQL → its
        /// notification drops the row → fill: the list and member 2 are refused (a write
        /// touched them), member 1 fills the region (none touched it; C3 per row).
        fn a_member_written_during_a_list_load_is_refused_alone(t) {
            seed(t);
            let s = Script::default();
            let db = Db::builder(t.pool.clone()).cache::<Post>().listen(listen_to(t)).test_hook(s.hook()).build().unwrap();
            let changes = || db.stats().listener.unwrap().changes;
            let seen = changes();
            let r = parked_reader(&db, &s);
            t.exec("UPDATE posts SET title = 'two, edited', version = 2 WHERE id = 2");
            wait_until("the update's notification", || changes() > seen);
            s.release("reader", "after_load");
            assert_eq!(titles(&r.join().unwrap()), ["one", "two"], "the read began before the update");
            assert!(db.peek_all_by(&PostByUserId(1)).unwrap().is_none(), "C3 for lists: the list raced its member's update");
            assert!(db.peek::<Post>(2).unwrap().is_none(), "C3: the old member 2 was filled over the remote update");
            assert_eq!(db.peek::<Post>(1).unwrap().map(|p| p.version), Some(1), "member 1 was not written: it fills");
            assert_eq!(db.find::<Post>(2).unwrap().unwrap().title, "two, edited");
        }

        /// Single flight for lists: while one reader's list query is parked, three more
        /// misses of the same list wait for it instead of querying, and all four get it.
        fn concurrent_misses_of_one_list_run_one_query(t) {
            seed(t);
            let s = Script::default();
            let db = db_with(t, &s);
            let leader = parked_reader(&db, &s);
            t.sql.reset();
            let others: Vec<_> = (0..3)
                .map(|i| {
                    let db = db.clone();
                    spawn(&format!("other{i}"), move || db.find_all_by(PostByUserId(1)).unwrap())
                })
                .collect();
            // Without single flight they would run their queries now: give them the time.
            std::thread::sleep(std::time::Duration::from_millis(200));
            s.release("reader", "after_load");
            assert_eq!(titles(&leader.join().unwrap()), ["one", "two"]);
            for other in others {
                assert_eq!(titles(&other.join().unwrap()), ["one", "two"]);
            }
            assert_eq!(t.sql.selects(), 0, "the waiting misses ran no query of their own");
            let st = db.region_stats::<Post>().unwrap();
            assert_eq!((st.list_misses, st.list_flight_joins), (1, 3));
        }

        /// list load parked → commit of an insert joining the list → a new miss: it does
        /// not wait for the older load (which cannot have seen the insert) but runs its own
        /// query, and sees the insert (C4 for lists).
        fn a_miss_after_a_commit_does_not_wait_for_an_older_load(t) {
            seed(t);
            let s = Script::default();
            let db = db_with(t, &s);
            let leader = parked_reader(&db, &s);
            db.transaction(|tx| tx.insert(&post(3, "three"))).unwrap();
            let late = {
                let db = db.clone();
                spawn("late", move || db.find_all_by(PostByUserId(1)).unwrap())
            };
            let waited = std::time::Instant::now();
            while !late.is_finished() && waited.elapsed() < std::time::Duration::from_secs(5) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let finished = late.is_finished();
            s.release("reader", "after_load");
            assert!(finished, "the miss after the commit waited for the load that began before it");
            assert_eq!(titles(&late.join().unwrap()), ["one", "two", "three"], "C4 for lists");
            assert_eq!(titles(&leader.join().unwrap()), ["one", "two"]);
            assert_eq!(db.region_stats::<Post>().unwrap().list_flight_joins, 0);
        }

        /// list load → commit of a delete of a member → refused.
        fn a_list_load_racing_a_delete_never_fills(t) {
            let (stale, db) = race(t, |db| {
                let one = db.bypass().find::<Post>(1).unwrap().unwrap();
                db.transaction(|tx| tx.delete(one.as_ref())).unwrap();
            });
            assert_eq!(stale, ["one", "two"]);
            assert_eq!(titles(&db.find_all_by(PostByUserId(1)).unwrap()), ["two"]);
        }
    }
}

/// C3 and C4 for unique-key entries: a "no row has this key" load that raced an insert of
/// the key never fills.
mod key_entries {
    use super::*;

    backend_tests! {
        /// `find_by` reads "no row has late@x.org" → an insert giving a row that email
        /// commits → fill attempt: refused, so the next lookup finds the row (C3, C4).
        fn a_negative_key_load_racing_an_insert_never_fills(t) {
            let s = Script::default();
            // Declared exact so that MariaDB caches "not found" too.
            let db = Db::builder(t.pool.clone()).cache_with::<User>(|c| c.key_compare(KeyCompare::Exact)).test_hook(s.hook()).build().unwrap();
            let key = || UserByEmail("late@x.org".into());
            s.arm("reader", "after_load");
            let r = {
                let db = db.clone();
                spawn("reader", move || db.find_by(key()).unwrap())
            };
            s.wait("reader", "after_load");
            let mut late = User::new(5, "Late");
            late.email = "late@x.org".into();
            db.transaction(|tx| tx.insert(&late)).unwrap();
            s.release("reader", "after_load");
            assert!(r.join().unwrap().is_none(), "the read began before the insert");
            assert_eq!(db.find_by(key()).unwrap().map(|u| u.id), Some(5), "C3 for key entries: the raced \"absent\" was cached");
            assert!(db.region_stats::<User>().unwrap().rejected_stale_fills >= 1);
        }
    }
}

/// C9: the races the shared tier's leases and fences close, between instances (separate
/// `Db`s, pools and local caches) sharing one Redis, without listeners, so that nothing
/// but the shared tier's own protocol keeps Redis right. Each test checks what Redis holds
/// and what a third, cold instance reads.
#[cfg(feature = "redis")]
mod shared_tier {
    use super::*;
    use common::redis::{client, entry, entry_version, set_entry, shared_config};
    use diesel_l2::shared::SharedConfig;
    use std::time::Duration;

    fn instance<C>(pool: common::TestPool<C>, cfg: &SharedConfig, hook: Option<Hook>) -> Db<C>
    where
        C: diesel::r2d2::R2D2Connection + 'static,
        User: CachedOps<C>,
    {
        let b = Db::builder(pool)
            .cache::<User>()
            .shared::<User>()
            .shared_tier(cfg.clone());
        match hook {
            Some(h) => b.test_hook(h),
            None => b,
        }
        .build()
        .unwrap()
    }

    /// What Redis holds for user `id`: ('V' or 'T', version), or None.
    fn redis_version(cfg: &SharedConfig, id: i64) -> Option<(char, i64)> {
        entry(cfg, "users", &id.to_string()).and_then(|e| entry_version(&e))
    }

    /// The version the change feed marked user `id`'s fence with (`F<token>|<version>[i]`),
    /// or `None` when the key holds no marked fence.
    fn fence_mark(cfg: &SharedConfig, id: i64) -> Option<i64> {
        let e = entry(cfg, "users", &id.to_string())?;
        let bar = e
            .iter()
            .position(|&b| b == b'|')
            .filter(|_| e.starts_with(b"F"))?;
        let hex = std::str::from_utf8(e.get(bar + 1..bar + 17)?).ok()?;
        Some((u64::from_str_radix(hex, 16).ok()? ^ (1 << 63)) as i64)
    }

    fn del_entry(cfg: &SharedConfig, id: i64) {
        let mut con = client(cfg);
        let gen: String = redis::cmd("GET")
            .arg(format!("{}:gen", cfg.prefix))
            .query(&mut con)
            .unwrap();
        let _: i64 = redis::cmd("DEL")
            .arg(format!("{}:{gen}:users:{id}", cfg.prefix))
            .query(&mut con)
            .unwrap();
    }

    backend_tests! {
        /// Instance A is granted the lease and loads v1 → instance B commits v2 (its fence
        /// voids A's lease, its settle stores v2) → A's fill: refused. Redis keeps v2, and a
        /// cold instance reads v2 from it.
        fn a_leased_load_racing_another_instances_commit_never_fills(t) {
            let Some(cfg) = shared_config() else { return };
            let s = Script::default();
            let a = instance(t.pool.clone(), &cfg, Some(s.hook()));
            let (pool_b, _) = t.another_pool();
            let b = instance(pool_b, &cfg, None);
            let v1 = b.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
            del_entry(&cfg, 1); // a cold Redis: A's read is granted the lease
            s.arm("reader", "before_shared_fill");
            let r = { let a = a.clone(); spawn("reader", move || a.find::<User>(1).unwrap()) };
            s.wait("reader", "before_shared_fill");
            b.transaction(|tx| tx.update(&renamed(&v1, "v2"))).unwrap();
            assert_eq!(redis_version(&cfg, 1), Some(('V', 2)), "C9: the write is in Redis when transaction returns");
            s.release("reader", "before_shared_fill");
            assert_eq!(r.join().unwrap().unwrap().version, 1, "the read began before the commit");
            assert_eq!(redis_version(&cfg, 1), Some(('V', 2)), "C9: the stale fill landed over v2");
            let shared = a.region_stats::<User>().unwrap().shared.unwrap();
            assert_eq!(shared.rejected_fills, 1, "{shared:?}");
            let (pool_c, sql_c) = t.another_pool();
            let c = instance(pool_c, &cfg, None);
            sql_c.reset();
            assert_eq!(c.find::<User>(1).unwrap().unwrap().version, 2);
            assert_eq!(sql_c.selects(), 0, "served from Redis");
        }

        /// A loads v1 under its lease → B commits v2 → Redis evicts v2 → A's fill: refused
        /// (its lease went with the eviction), so v1 never replaces the evicted newer row.
        fn a_leased_load_never_fills_over_a_newer_row_redis_evicted(t) {
            let Some(cfg) = shared_config() else { return };
            let s = Script::default();
            let a = instance(t.pool.clone(), &cfg, Some(s.hook()));
            let (pool_b, _) = t.another_pool();
            let b = instance(pool_b, &cfg, None);
            let v1 = b.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
            del_entry(&cfg, 1);
            s.arm("reader", "before_shared_fill");
            let r = { let a = a.clone(); spawn("reader", move || a.find::<User>(1).unwrap()) };
            s.wait("reader", "before_shared_fill");
            b.transaction(|tx| tx.update(&renamed(&v1, "v2"))).unwrap();
            del_entry(&cfg, 1); // evicted
            s.release("reader", "before_shared_fill");
            r.join().unwrap();
            assert_eq!(redis_version(&cfg, 1), None, "C9: v1 was put where v2 had been evicted");
            let (pool_c, _) = t.another_pool();
            let c = instance(pool_c, &cfg, None);
            assert_eq!(c.find::<User>(1).unwrap().unwrap().version, 2);
            assert_eq!(redis_version(&cfg, 1), Some(('V', 2)), "the next miss fills v2");
        }

        /// B fences (parked before COMMIT) → Redis evicts the fence → A reads: granted a
        /// lease, loads v1 (B has not committed) and fills it → B commits v2 and settles:
        /// its fence is gone, so it deletes the older v1 instead of trusting the key. A read
        /// that begins after B's transaction returned never sees v1 (fences fail closed).
        fn an_evicted_fence_fails_closed(t) {
            let Some(cfg) = shared_config() else { return };
            let s = Script::default();
            let a = instance(t.pool.clone(), &cfg, None);
            let (pool_b, _) = t.another_pool();
            let b = instance(pool_b, &cfg, Some(s.hook()));
            let v1 = b.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
            s.arm("writer", "before_commit");
            let w = { let b = b.clone(); spawn("writer", move || b.transaction(|tx| tx.update(&renamed(&v1, "v2"))).unwrap()) };
            s.wait("writer", "before_commit");
            assert!(entry(&cfg, "users", "1").unwrap().starts_with(b"F"), "fenced before COMMIT");
            del_entry(&cfg, 1); // the fence is evicted
            assert_eq!(a.find::<User>(1).unwrap().unwrap().version, 1);
            assert_eq!(redis_version(&cfg, 1), Some(('V', 1)), "A filled v1 while the fence was gone");
            s.release("writer", "before_commit");
            w.join().unwrap();
            assert_eq!(redis_version(&cfg, 1), None, "C9: the settle left the older v1 in Redis");
            let (pool_c, _) = t.another_pool();
            let c = instance(pool_c, &cfg, None);
            assert_eq!(c.find::<User>(1).unwrap().unwrap().version, 2);
        }

        /// B commits v2 (parked before settling) → a plain SQL update commits v3 → the change
        /// feed marks B's fence with v3 → B settles: it deletes instead of storing its older
        /// v2. A cold instance reads v3.
        fn a_plain_write_after_commit_marks_the_fence_and_the_older_settle_yields(t) {
            let Some(cfg) = shared_config() else { return };
            let s = Script::default();
            let (pool_b, _) = t.another_pool();
            let b = instance(pool_b, &cfg, Some(s.hook()));
            let (pool_l, _) = t.another_pool();
            let listening = Db::builder(pool_l).cache::<User>().shared::<User>().shared_tier(cfg.clone()).listen(listen_to(t)).build().unwrap();
            let v1 = b.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
            s.arm("writer", "after_commit");
            let w = { let b = b.clone(); spawn("writer", move || b.transaction(|tx| tx.update(&renamed(&v1, "v2"))).unwrap()) };
            s.wait("writer", "after_commit");
            t.exec("UPDATE users SET name = 'plain' WHERE id = 1");
            // The insert's and the writer's own notifications mark the fence too (with v1
            // and v2): wait for the plain update's.
            wait_until("the feed marked the fence with v3", || fence_mark(&cfg, 1).is_some_and(|v| v >= 3));
            s.release("writer", "after_commit");
            w.join().unwrap();
            assert_eq!(redis_version(&cfg, 1), None, "C9: the settle stored v2 over the plain v3");
            let (pool_c, _) = t.another_pool();
            let c = instance(pool_c, &cfg, None);
            let read = c.find::<User>(1).unwrap().unwrap();
            assert_eq!((read.version, read.name.as_str()), (3, "plain"));
            drop(listening);
        }

        /// B deletes user 1 (v1) and is parked between COMMIT and its settle → a plain SQL
        /// INSERT brings the row back at version 1 (versions start again) → the change feed
        /// marks B's fence with both changes → B settles. Its tombstone (T2) is "newer" than
        /// the re-inserted v1 by version, but older in time: storing it would make every
        /// instance read the row as absent until the next write (C9). Seen failing (a
        /// stored T2, a cold instance reading `None`) before the fence kept the insert.
        fn a_delete_settled_after_a_plain_re_insert_leaves_no_tombstone(t) {
            let Some(cfg) = shared_config() else { return };
            let s = Script::default();
            let (pool_b, _) = t.another_pool();
            let b = instance(pool_b, &cfg, Some(s.hook()));
            let (pool_l, _) = t.another_pool();
            let listening = Db::builder(pool_l).cache::<User>().shared::<User>().shared_tier(cfg.clone()).listen(listen_to(t)).build().unwrap();
            let v1 = b.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
            wait_until("the insert's notification", || listening.stats().listener.unwrap().changes >= 1);
            s.arm("writer", "after_commit");
            let w = { let b = b.clone(); spawn("writer", move || b.transaction(|tx| tx.delete(&v1)).unwrap()) };
            s.wait("writer", "after_commit");
            t.exec("INSERT INTO users (id, version, email, name) VALUES (1, 1, 'again@x', 'again')");
            wait_until("the delete's and the re-insert's notifications", || listening.stats().listener.unwrap().changes >= 3);
            // The repairs run on the tier's own thread: wait until both have run, then the
            // delete's has marked the fence (v2) and the insert's has added its `i`.
            wait_until("the repairs", || listening.stats().shared.unwrap().repairs_pending == 0);
            assert!(fence_mark(&cfg, 1).is_some_and(|v| v >= 2), "the feed marked the fence with the delete");
            s.release("writer", "after_commit");
            w.join().unwrap();
            assert_ne!(redis_version(&cfg, 1).map(|(kind, _)| kind), Some('T'), "C9: the delete's settle stored its tombstone over the re-inserted row");
            let (pool_c, _) = t.another_pool();
            let c = instance(pool_c, &cfg, None);
            let read = c.find::<User>(1).unwrap().expect("C9: a cold instance read the re-inserted row as absent");
            assert_eq!((read.version, read.name.as_str()), (1, "again"));
            drop(listening);
        }

        /// A re-insert's floor outlives the updates after it: a listening instance that saw
        /// user 1 reach v5, be deleted (T6), re-inserted at v1 and updated to v2 refuses a
        /// T6 tombstone found in Redis (the row's earlier life), although 6 > 2. Seen
        /// failing (the row read as absent) while an update's floor dropped the insert.
        fn a_re_inserted_rows_floor_refuses_its_earlier_lifes_tombstone(t) {
            let Some(cfg) = shared_config() else { return };
            let (pool_l, _) = t.another_pool();
            let listening = Db::builder(pool_l).cache::<User>().shared::<User>().shared_tier(cfg.clone()).listen(listen_to(t)).build().unwrap();
            t.exec("INSERT INTO users (id, version, email, name) VALUES (1, 5, 'a@x', 'first life'), (2, 1, 's@x', 'sentinel')");
            t.exec("DELETE FROM users WHERE id = 1");
            t.exec("INSERT INTO users (id, version, email, name) VALUES (1, 1, 'b@x', 'second life')");
            t.exec("UPDATE users SET version = 2, name = 'second life, v2' WHERE id = 1");
            wait_until("the four notifications of user 1", || listening.stats().listener.unwrap().changes >= 5);
            // And their repairs: the first one also starts the tier's generation, which
            // `set_entry` writes under (CI once read no generation here).
            wait_until("the repairs", || listening.stats().shared.unwrap().repairs_pending == 0);
            // Repairs run in order on one thread: once the sentinel's v1 entry is repaired
            // away by its v2 notification, user 1's repairs have run too.
            let stale = format!("V{:016x}{:016x}", 1u64 ^ (1 << 63), 0);
            set_entry(&cfg, "users", "2", stale.as_bytes());
            t.exec("UPDATE users SET version = 2 WHERE id = 2");
            wait_until("the sentinel's repair", || entry(&cfg, "users", "2").is_none());
            let earlier_life = format!("T{:016x}", 6u64 ^ (1 << 63));
            set_entry(&cfg, "users", "1", earlier_life.as_bytes());
            let read = listening.find::<User>(1).unwrap().expect("C9: the earlier life's tombstone was taken from Redis");
            assert_eq!((read.version, read.name.as_str()), (2, "second life, v2"));
            assert_eq!(listening.region_stats::<User>().unwrap().shared.unwrap().rejected_values, 1);
        }

        /// B commits v2 and dies (panics) before replacing its fence: readers pass the fence
        /// to the database and do not fill; once the fence expires, the next miss fills v2.
        fn a_writer_dying_after_commit_leaves_a_fence_that_readers_pass(t) {
            let Some(cfg) = shared_config() else { return };
            // Long enough that the fence outlives the writer's unwinding on a loaded
            // machine (300 ms did not, in CI on MariaDB).
            let cfg = cfg.fence_and_lease_ttl(Duration::from_millis(1500), Duration::from_secs(2));
            let dying = Hook::new(|p| {
                if *p == Point::AfterCommit && std::thread::current().name() == Some("writer") {
                    panic!("the writer dies between COMMIT and its Redis update");
                }
            });
            let (pool_b, _) = t.another_pool();
            let b = instance(pool_b, &cfg, Some(dying));
            let v1 = b.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
            let w = { let b = b.clone(); spawn("writer", move || b.transaction(|tx| tx.update(&renamed(&v1, "v2"))).map(|_| ())) };
            assert!(w.join().is_err(), "the writer panicked");
            assert!(entry(&cfg, "users", "1").unwrap().starts_with(b"F"), "its fence is left");
            let (pool_c, sql_c) = t.another_pool();
            let c = instance(pool_c, &cfg, None);
            assert_eq!(c.find::<User>(1).unwrap().unwrap().version, 2, "read past the fence");
            assert!(entry(&cfg, "users", "1").unwrap().starts_with(b"F"), "no fill over a fence");
            std::thread::sleep(Duration::from_millis(1600));
            c.evict::<User>(1).unwrap();
            sql_c.reset();
            assert_eq!(c.find::<User>(1).unwrap().unwrap().version, 2);
            assert_eq!(sql_c.selects(), 1);
            assert_eq!(redis_version(&cfg, 1), Some(('V', 2)), "filled once the fence expired");
        }
    }
}
