//! Issue 3, part 4: faults beyond the closure. A connection killed mid-transaction
//! (PostgreSQL `pg_terminate_backend`, MariaDB `KILL`), pool exhaustion, and the database
//! unreachable for a while (a TCP proxy the test pauses) then back. Each gives a typed
//! error, never a stale or uncommitted value in the cache, and the same `Db` recovers
//! without being rebuilt.

// The connection-kill and outage tests need a server backend; with SQLite alone their
// helpers go unused.
#![cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(unused))]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::models::User;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool, R2D2Connection};
use diesel_l2::{CachedOps, Db, Error};

fn renamed(u: &User, name: &str) -> User {
    let mut n = u.clone();
    n.name = name.into();
    n
}

fn in_db<C>(t: &common::TestDb<C>, id: i64) -> Option<User>
where
    C: R2D2Connection + 'static,
    User: CachedOps<C>,
{
    User::load_one(&mut t.raw_connection(), &id).unwrap()
}

/// The cache agrees with the database for `id` (after the fault is over).
fn agrees<C>(t: &common::TestDb<C>, db: &Db<C>, id: i64)
where
    C: R2D2Connection + 'static,
    User: CachedOps<C>,
{
    let cached = db.find::<User>(id).unwrap().map(|u| (*u).clone());
    assert_eq!(
        cached,
        in_db(t, id),
        "the cache holds a stale or uncommitted row"
    );
}

/// Retries `f` until it succeeds (the pool replacing dead connections), at most 5 s.
fn recovers<T>(what: &str, mut f: impl FnMut() -> Result<T, Error>) -> (T, u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut failures = 0;
    loop {
        match f() {
            Ok(v) => return (v, failures),
            Err(e) if Instant::now() < deadline => {
                failures += 1;
                eprintln!("{what}: not yet recovered: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{what}: did not recover within 5 s: {e}"),
        }
    }
}

/// A typed database or pool error, not a panic or a silent success.
fn typed(e: &Error) -> bool {
    matches!(e, Error::Database(_) | Error::Pool { .. })
}

// ---- a pausable TCP proxy ---------------------------------------------------------

/// Forwards 127.0.0.1:<port> to a server; `down()` drops every connection and refuses new
/// ones, `up()` lets them in again.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let live = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
        {
            let (up, live) = (Arc::clone(&up), Arc::clone(&live));
            // Ends with the test process.
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    if !up.load(Ordering::SeqCst) {
                        drop(client); // refused: closed at once
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(upstream) else {
                        continue;
                    };
                    let mut l = live.lock().unwrap();
                    l.push(client.try_clone().unwrap());
                    l.push(server.try_clone().unwrap());
                    drop(l);
                    pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                    pipe(server, client);
                }
            });
        }
        Proxy { addr, up, live }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for s in self.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// `scheme://user@host:port/rest` with host:port replaced by `addr`; also the server's
/// address.
fn retarget(url: &str, addr: SocketAddr) -> (String, SocketAddr) {
    let start = url
        .find('@')
        .map(|i| i + 1)
        .unwrap_or_else(|| url.find("://").unwrap() + 3);
    let end = start + url[start..].find('/').unwrap_or(url.len() - start);
    let hostport = &url[start..end];
    let server: SocketAddr = hostport
        .parse()
        .expect("the test URL names host:port as an IP");
    (format!("{}{}{}", &url[..start], addr, &url[end..]), server)
}

/// A `Db` whose pool goes through a proxy to the test's own database.
fn through_proxy<C>(t: &common::TestDb<C>, url: &str) -> (Db<C>, Proxy)
where
    C: R2D2Connection + 'static,
    User: CachedOps<C>,
    common::models::Product: CachedOps<C>,
    common::models::Tag: CachedOps<C>,
    common::models::Post: CachedOps<C>,
{
    let (_, server) = retarget(url, "127.0.0.1:1".parse().unwrap());
    let proxy = Proxy::start(server);
    let (proxied, _) = retarget(url, proxy.addr);
    let pool = Pool::builder()
        .max_size(4)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_millis(500))
        .build(ConnectionManager::<C>::new(proxied))
        .unwrap();
    let db = Db::builder(pool)
        .cache::<User>()
        .cache::<common::models::Product>()
        .cache::<common::models::Tag>()
        .cache::<common::models::Post>()
        .build()
        .unwrap();
    let _ = t;
    (db, proxy)
}

/// The outage scenario, shared by PostgreSQL and MariaDB.
fn outage<C>(t: &common::TestDb<C>, db: &Db<C>, proxy: &Proxy)
where
    C: R2D2Connection + 'static,
    User: CachedOps<C>,
{
    let v1 = db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
    db.transaction(|tx| tx.insert(&User::new(2, "other")))
        .unwrap();
    db.evict::<User>(&2).unwrap();
    let mut errors = 0;

    // A transaction in flight when the database goes away: its COMMIT cannot happen.
    let r = db.transaction(|tx| {
        tx.update(&renamed(&v1, "lost in the outage"))?;
        proxy.down();
        Ok(())
    });
    let e = r.expect_err("COMMIT over a dropped connection cannot succeed");
    assert!(typed(&e), "{e:?}");
    errors += 1;

    // While down: writes and uncached reads fail with typed errors; nothing is cached.
    for _ in 0..3 {
        let e = db
            .transaction(|tx| tx.update(&renamed(&v1, "never")))
            .expect_err("database is down");
        assert!(typed(&e), "{e:?}");
        let e = db.find::<User>(2).expect_err("uncached read while down");
        assert!(typed(&e), "{e:?}");
        errors += 2;
    }
    // Key 1 was invalidated by the failed transaction: no stale value is served either.
    let e = db
        .find::<User>(1)
        .expect_err("key 1 is not cached after the failed write");
    assert!(typed(&e), "{e:?}");
    errors += 1;

    proxy.up();
    let (_, failures) = recovers("read after the outage", || db.find::<User>(1));
    let (w, f2) = recovers("write after the outage", || {
        db.transaction(|tx| {
            let cur = tx.get::<User>(1)?;
            tx.update(&renamed(&cur, "after the outage"))
        })
    });
    assert_eq!(
        w.version, 2,
        "the in-flight write of the outage never committed"
    );
    agrees(t, db, 1);
    agrees(t, db, 2);
    println!(
        "[{}] outage: {errors} typed errors while down, recovered after {} more failed attempts, same Db",
        t.backend,
        failures + f2
    );
}

backend_tests! {
    /// Pool exhaustion: typed `Error::Pool` after the checkout timeout, hits still served,
    /// no trace in the cache, and recovery once connections come back.
    fn pool_exhaustion_is_a_typed_error_and_recovers(t, common::TestDbOptions::default().max_size(2).connection_timeout(Duration::from_millis(200))) {
        let db = common::cached_db(t);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
        db.transaction(|tx| tx.insert(&User::new(2, "two"))).unwrap();
        db.evict::<User>(&2).unwrap();
        let held = (t.pool.get().unwrap(), t.pool.get().unwrap());
        let e = db.transaction(|tx| tx.update(&renamed(&v1, "never"))).unwrap_err();
        assert!(matches!(e, Error::Pool { .. }), "{e:?}");
        let e = db.find::<User>(2).unwrap_err();
        assert!(matches!(e, Error::Pool { .. }), "{e:?}");
        assert!(e.to_string().contains("max_size"), "the message says what to do: {e}");
        assert_eq!(db.find::<User>(1).unwrap().unwrap().name, "v1", "a hit needs no connection");
        drop(held);
        agrees(t, &db, 1);
        agrees(t, &db, 2);
        let w = db.transaction(|tx| tx.update(&renamed(&v1, "v2"))).unwrap();
        assert_eq!(w.version, 2);
        agrees(t, &db, 1);
        println!("[{}] pool exhaustion: 2 typed Error::Pool, recovered", t.backend);
    }

    /// PostgreSQL: the transaction's backend is terminated after its write; the
    /// transaction fails with a typed error, the cache never sees the write, and the pool
    /// replaces the dead connection.
    only(postgres)
    fn pg_terminated_backend_mid_transaction(t) {
        let db = common::cached_db(t);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
        let mut killer = t.raw_connection();
        let mut kills = 0;
        for round in 0..3 {
            let r = db.transaction(|tx| {
                let cur = tx.get::<User>(1)?;
                tx.update(&renamed(&cur, "killed"))?;
                #[derive(QueryableByName)]
                struct Pid { #[diesel(sql_type = diesel::sql_types::Integer)] pid: i32 }
                let pid: Pid = diesel::sql_query("SELECT pg_backend_pid() AS pid").get_result(tx.conn())?;
                killer.batch_execute(&format!("SELECT pg_terminate_backend({})", pid.pid)).unwrap();
                kills += 1;
                if round == 2 {
                    // A statement after the kill, instead of going straight to COMMIT.
                    tx.get::<User>(1)?;
                }
                Ok(())
            });
            let e = r.expect_err("the backend was terminated before COMMIT");
            assert!(typed(&e), "{e:?}");
            agrees(t, &db, 1);
        }
        let (w, failures) = recovers("write after the kills", || db.transaction(|tx| tx.update(&renamed(&v1, "v2"))));
        assert_eq!(w.version, 2);
        agrees(t, &db, 1);
        println!("[postgres] {kills} backends terminated mid-transaction: typed errors, recovered after {failures} more failures");
    }

    /// C6 under a killed connection: an operation whose backend is terminated after its
    /// claim and its write (before COMMIT) recorded nothing, so the redelivery runs it;
    /// the delivery after that replays, and the row moved exactly one version.
    only(postgres)
    fn pg_operation_killed_before_commit_runs_again_once(t) {
        let db = common::cached_db(t);
        db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
        let mut killer = t.raw_connection();
        let mut kill = true;
        let mut deliver = || db.transaction_once("rename-1", |tx| {
            let cur = tx.get::<User>(1)?;
            let stored = tx.update(&renamed(&cur, "renamed once"))?;
            if std::mem::take(&mut kill) {
                #[derive(QueryableByName)]
                struct Pid { #[diesel(sql_type = diesel::sql_types::Integer)] pid: i32 }
                let pid: Pid = diesel::sql_query("SELECT pg_backend_pid() AS pid").get_result(tx.conn())?;
                killer.batch_execute(&format!("SELECT pg_terminate_backend({})", pid.pid)).unwrap();
            }
            Ok(stored.version)
        });
        let e = deliver().expect_err("the backend was terminated before COMMIT");
        assert!(typed(&e), "{e:?}");
        let (first, _) = recovers("the redelivery", &mut deliver);
        assert_eq!((first.is_replay(), *first), (false, 2), "nothing was recorded by the killed delivery");
        let again = deliver().unwrap();
        assert_eq!((again.is_replay(), *again), (true, 2));
        assert_eq!(in_db(t, 1).unwrap().version, 2, "applied exactly once");
        agrees(t, &db, 1);
    }

    /// MariaDB: `KILL <CONNECTION_ID()>` of the transaction's connection after its write.
    only(mysql)
    fn mysql_killed_connection_mid_transaction(t) {
        let db = common::cached_db(t);
        let v1 = db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
        let mut killer = t.raw_connection();
        let mut kills = 0;
        for round in 0..3 {
            let r = db.transaction(|tx| {
                let cur = tx.get::<User>(1)?;
                tx.update(&renamed(&cur, "killed"))?;
                #[derive(QueryableByName)]
                struct Id { #[diesel(sql_type = diesel::sql_types::Unsigned<diesel::sql_types::BigInt>)] id: u64 }
                let id: Id = diesel::sql_query("SELECT CONNECTION_ID() AS id").get_result(tx.conn())?;
                killer.batch_execute(&format!("KILL {}", id.id)).unwrap();
                kills += 1;
                if round == 2 {
                    tx.get::<User>(1)?;
                }
                Ok(())
            });
            let e = r.expect_err("the connection was killed before COMMIT");
            assert!(typed(&e), "{e:?}");
            agrees(t, &db, 1);
        }
        let (w, failures) = recovers("write after the kills", || db.transaction(|tx| tx.update(&renamed(&v1, "v2"))));
        assert_eq!(w.version, 2);
        agrees(t, &db, 1);
        println!("[mysql] {kills} connections killed mid-transaction: typed errors, recovered after {failures} more failures");
    }

    /// PostgreSQL unreachable (proxy down) for a while, then back.
    only(postgres)
    fn pg_unreachable_then_back(t) {
        let mut raw = t.raw_connection();
        #[derive(QueryableByName)]
        struct S { #[diesel(sql_type = diesel::sql_types::Text)] s: String }
        let schema: S = diesel::sql_query("SELECT current_schema()::text AS s").get_result(&mut raw).unwrap();
        let base = std::env::var(common::PG_URL_ENV).unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{}", schema.s);
        let (db, proxy) = through_proxy(t, &url);
        outage(t, &db, &proxy);
    }

    /// MariaDB unreachable (proxy down) for a while, then back.
    only(mysql)
    fn mysql_unreachable_then_back(t) {
        let (db, proxy) = through_proxy(t, &t.url);
        outage(t, &db, &proxy);
    }
}

/// C9 under Redis faults, each on a `redis-server` of the test's own (Unix socket):
/// killed, restarted empty, flushed, paused. Reads never fail (degrade, the default) and
/// never return an old row; a write that could not reach Redis is made safe by a new
/// generation before the tier is read again.
#[cfg(feature = "redis")]
mod shared_tier_faults {
    use super::*;
    use common::redis::PrivateRedis;
    use diesel_l2::shared::{BreakerState, SharedConfig, SharedFailure};
    use diesel_l2::{CachedOps, Db, Error};

    fn instance<C>(pool: common::TestPool<C>, cfg: &SharedConfig) -> Db<C>
    where
        C: diesel::r2d2::R2D2Connection + 'static,
        User: CachedOps<C>,
    {
        Db::builder(pool)
            .cache::<User>()
            .shared::<User>()
            .shared_tier(cfg.clone())
            .build()
            .unwrap()
    }

    fn faulty(r: &PrivateRedis) -> SharedConfig {
        r.config()
            .timeout(Duration::from_millis(100))
            .breaker(2, Duration::from_millis(300))
    }

    fn renamed(u: &User, name: &str) -> User {
        let mut n = u.clone();
        n.name = name.into();
        n
    }

    backend_tests! {
        /// Redis killed: reads go to the database without an error, the breaker opens (no
        /// call waits for its timeout any more), writes commit. Restarted empty: the tier
        /// starts a new generation and serves again.
        fn a_killed_redis_degrades_to_the_database_and_recovers(t) {
            let Some(mut redis) = PrivateRedis::start(&[]) else { return };
            let cfg = faulty(&redis);
            let db = instance(t.pool.clone(), &cfg);
            let v1 = db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
            redis.kill();
            for _ in 0..3 {
                db.evict::<User>(1).unwrap();
                assert_eq!(db.find::<User>(1).unwrap().unwrap().version, 1);
            }
            let tier = db.stats().shared.unwrap();
            assert_eq!(tier.breaker, BreakerState::Open, "{tier:?}");
            assert!(tier.breaker_opened >= 1 && tier.errors >= 2, "{tier:?}");
            // While open, a miss makes no call: it does not wait for the timeout, and it is
            // counted as a breaker skip, not as an error.
            let region = || db.region_stats::<User>().unwrap().shared.unwrap();
            let before = region();
            assert!(before.errors >= 2, "{before:?}");
            db.evict::<User>(1).unwrap();
            let started = Instant::now();
            db.find::<User>(1).unwrap();
            assert!(started.elapsed() < Duration::from_millis(100), "an open breaker skips Redis");
            let after = region();
            assert_eq!((after.errors, after.breaker_skips), (before.errors, before.breaker_skips + 1), "{after:?}");
            let v2 = db.transaction(|tx| tx.update(&renamed(&v1, "v2"))).unwrap();
            assert!(db.stats().shared.unwrap().untrusted, "the settle could not reach Redis");
            let before = db.stats().shared.unwrap().generations_started;
            redis.restart();
            std::thread::sleep(Duration::from_millis(350)); // the breaker's cooldown
            db.evict::<User>(1).unwrap();
            assert_eq!(db.find::<User>(1).unwrap().unwrap().version, v2.version);
            let tier = db.stats().shared.unwrap();
            assert_eq!((tier.breaker, tier.untrusted), (BreakerState::Closed, false), "{tier:?}");
            assert!(tier.generations_started > before, "{tier:?}");
            db.evict::<User>(1).unwrap();
            let hits = db.region_stats::<User>().unwrap().shared.unwrap().hits;
            db.find::<User>(1).unwrap();
            assert_eq!(db.region_stats::<User>().unwrap().shared.unwrap().hits, hits + 1, "served by Redis again");
        }

        /// Writer A commits v2 while Redis is paused (its fence and settle time out); B,
        /// which filled v1 before, would read v1 from Redis. As soon as Redis answers, A
        /// starts a new generation, after which B reads v2: the write that could not reach
        /// Redis was made safe before A trusted the tier again.
        fn a_write_during_a_pause_is_made_safe_by_a_new_generation(t) {
            let Some(redis) = PrivateRedis::start(&[]) else { return };
            let cfg = faulty(&redis).breaker(100, Duration::from_millis(300));
            let a = instance(t.pool.clone(), &cfg);
            let (pool_b, _) = t.another_pool();
            let b = instance(pool_b, &cfg);
            let v1 = a.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
            a.transaction(|tx| tx.insert(&User::new(2, "other"))).unwrap();
            assert_eq!(b.find::<User>(1).unwrap().unwrap().version, 1);
            redis.cmd(&["CLIENT", "PAUSE", "600", "ALL"]);
            a.transaction(|tx| tx.update(&renamed(&v1, "v2"))).unwrap();
            assert!(a.stats().shared.unwrap().untrusted);
            // Once Redis answers again, A's repair thread starts a new generation on its
            // own (no call of A's needed), which makes B's v1 entry unreachable.
            let started = Instant::now();
            while a.stats().shared.unwrap().untrusted {
                assert!(started.elapsed() < Duration::from_secs(10), "A never started a new generation");
                std::thread::sleep(Duration::from_millis(5));
            }
            b.evict::<User>(1).unwrap();
            let read = b.find::<User>(1).unwrap().unwrap();
            assert_eq!((read.version, read.name.as_str()), (2, "v2"), "C9: B read the old row from Redis");
            assert!(b.stats().shared.unwrap().generation_moves_seen >= 1);
        }

        /// FLUSHALL (or a restart, or an evicted generation key): every call finds no
        /// generation and fails closed until one is set; nothing older is ever read.
        fn a_flushed_redis_fails_closed(t) {
            let Some(redis) = PrivateRedis::start(&[]) else { return };
            let cfg = faulty(&redis);
            let db = instance(t.pool.clone(), &cfg);
            db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
            let before = db.stats().shared.unwrap().generations_started;
            redis.cmd(&["FLUSHALL"]);
            db.evict::<User>(1).unwrap();
            assert_eq!(db.find::<User>(1).unwrap().unwrap().version, 1);
            let tier = db.stats().shared.unwrap();
            assert_eq!(tier.generations_started, before + 1, "{tier:?}");
            assert_eq!(tier.errors, 0, "{tier:?}");
        }

        /// `SharedFailure::Fail`: with Redis down, a local miss fails instead of reading the
        /// database, and a write whose fence cannot be placed rolls back.
        fn fail_mode_fails_instead_of_degrading(t) {
            let Some(mut redis) = PrivateRedis::start(&[]) else { return };
            let cfg = faulty(&redis).on_failure(SharedFailure::Fail);
            let db = instance(t.pool.clone(), &cfg);
            let v1 = db.transaction(|tx| tx.insert(&User::new(1, "v1"))).unwrap();
            redis.kill();
            db.evict::<User>(1).unwrap();
            assert!(matches!(db.find::<User>(1), Err(Error::SharedTierUnavailable { .. })));
            let r = db.transaction(|tx| tx.update(&renamed(&v1, "v2")));
            assert!(matches!(r, Err(Error::SharedTierUnavailable { .. })), "{r:?}");
            assert_eq!(db.bypass().get::<User>(1).unwrap().version, 1, "rolled back");
        }
    }
}
