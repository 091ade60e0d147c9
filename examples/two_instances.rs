//! Two instances, one database: a write in one, and a write from a plain SQL client, both
//! reach the other instance's cache (C7, cross-process invalidation).
//!
//! Each instance is a `Db` with its own pool, its own cache and its own change listener,
//! exactly what two processes of an application would have. The example's schema has the
//! change-feed triggers installed by its migrations (see `diesel_l2::invalidation`).
//!
//! ```text
//! cargo run --example two_instances                        # SQLite file (outbox polling)
//! DIESEL_L2_EXAMPLE_BACKEND=postgres DIESEL_L2_PG_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --features postgres --example two_instances  # LISTEN/NOTIFY
//! DIESEL_L2_EXAMPLE_BACKEND=mysql DIESEL_L2_MYSQL_URL=mysql://root@127.0.0.1:3306/test \
//!     cargo run --features mysql --example two_instances     # outbox polling
//! ```
//!
//! It prints how long after each COMMIT the other instance stopped serving the old row,
//! and exits non-zero if the other instance ever serves a stale row after that.
//!
//! `--shared` (feature `redis`) gives both instances the shared tier as well, on the Redis
//! of `DIESEL_L2_REDIS_URL` (default `redis://127.0.0.1:6379/`) under a key prefix of the
//! run's own (C9, see `diesel_l2::shared`): B reads a row that A loaded from Redis without
//! SQL, a write in A is what B's next local miss reads, again without SQL, and a plain SQL
//! write is repaired in Redis by the change feed. It prints both instances' shared-tier
//! figures and exits non-zero if any of this does not hold.
//!
//! ```text
//! cargo run --features redis --example two_instances -- --shared
//! DIESEL_L2_EXAMPLE_BACKEND=postgres cargo run --all-features --example two_instances -- --shared
//! ```

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{BoxError, ExampleBackend, ExampleDb};
use diesel::prelude::*;
use diesel_l2::{Cached, CachedOps, ChangeFeed, Db, ListenConfig};

diesel::table! {
    users (id) {
        id -> BigInt,
        version -> BigInt,
        email -> Varchar,
        name -> Varchar,
        bio -> Nullable<Text>,
    }
}

// serde: only the shared tier (`--shared`) needs it, to store the row in Redis.
#[derive(
    Queryable, Selectable, Clone, Debug, PartialEq, Cached, serde::Serialize, serde::Deserialize,
)]
#[diesel(table_name = users)]
struct User {
    id: i64,
    version: i64,
    email: String,
    name: String,
    bio: Option<String>,
}

/// Reads `id` through `db` until the other instance's cache holds a row, returning it.
fn cached<C>(db: &Db<C>, id: i64) -> Result<std::sync::Arc<User>, BoxError>
where
    C: diesel::r2d2::R2D2Connection + 'static,
    User: CachedOps<C>,
{
    let start = Instant::now();
    loop {
        db.find::<User>(id)?;
        if let Some(u) = db.peek::<User>(&id)? {
            return Ok(u);
        }
        if start.elapsed() > Duration::from_secs(5) {
            return Err("the row never settled in the cache".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until `db` stops serving version `old` of `id`; returns how long that took.
fn invalidated<C>(db: &Db<C>, id: i64, old: i64) -> Result<Duration, BoxError>
where
    C: diesel::r2d2::R2D2Connection + 'static,
    User: CachedOps<C>,
{
    let start = Instant::now();
    while db.peek::<User>(&id)?.is_some_and(|u| u.version == old) {
        if start.elapsed() > Duration::from_secs(5) {
            return Err(format!("instance B still serves version {old} after 5 s").into());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(start.elapsed())
}

fn run<C>(db: ExampleDb<C>, shared: bool) -> Result<(), BoxError>
where
    C: ExampleBackend + ChangeFeed,
    User: CachedOps<C>,
{
    if shared {
        #[cfg(feature = "redis")]
        return run_shared(db);
        #[cfg(not(feature = "redis"))]
        return Err(
            "--shared needs the shared tier: run with `--features redis` (or --all-features)"
                .into(),
        );
    }
    println!("database: {}", db.location);
    let mut listen = ListenConfig::new(db.url.clone());
    if let Some(schema) = &db.schema {
        listen = listen.schema(schema.clone());
    }
    let a = Db::builder(db.pool.clone())
        .cache::<User>()
        .listen(listen.clone())
        .build()?;
    let b = Db::builder(db.second_pool(4)?)
        .cache::<User>()
        .listen(listen)
        .build()?;
    println!("instances A and B are up, each with its own pool, cache and listener");

    let ada = a.transaction(|tx| {
        tx.insert(&User {
            id: 1,
            version: 1,
            email: "ada@example.com".into(),
            name: "Ada".into(),
            bio: None,
        })
    })?;
    let seen = cached(&b, 1)?;
    println!("B reads user 1 (v{}) and caches it", seen.version);

    // 1. A write through instance A.
    let mut next = ada.clone();
    next.name = "Ada Lovelace".into();
    a.transaction(|tx| tx.update(&next))?;
    // Timed from the moment COMMIT returned in A.
    let took = invalidated(&b, 1, 1)?;
    let now = b.get::<User>(1)?;
    println!(
        "A updated user 1 to v2: B dropped v1 {:.2} ms after the commit and now reads v{} {:?}",
        took.as_secs_f64() * 1e3,
        now.version,
        now.name
    );
    if now.version != 2 {
        return Err("B did not see A's write".into());
    }

    // 2. A write from a plain SQL client that knows nothing about the cache.
    cached(&b, 1)?;
    let mut sql = plain_sql(&db)?;
    sql.batch_execute(
        "UPDATE users SET name = 'Countess of Lovelace', version = version + 1 WHERE id = 1",
    )?;
    let took = invalidated(&b, 1, 2)?;
    let now = b.get::<User>(1)?;
    println!(
        "plain SQL updated user 1 to v3: B dropped v2 {:.2} ms after the commit and now reads v{} {:?}",
        took.as_secs_f64() * 1e3,
        now.version,
        now.name
    );
    if now.version != 3 || now.name != "Countess of Lovelace" {
        return Err("B did not see the plain SQL write".into());
    }

    // 3. A's own cache gets the same news (its applied write v2 is older than v3).
    invalidated(&a, 1, 2)?;
    let a_now = a.get::<User>(1)?;
    println!("A reads v{} too", a_now.version);
    if a_now.version != 3 {
        return Err("A did not see the plain SQL write".into());
    }

    let listener = b.stats().listener.ok_or("B has no listener")?;
    println!(
        "B's listener: connected = {}, {} changes received, {} flushes",
        listener.connected, listener.changes, listener.flushes
    );
    println!("OK: both writes reached the other instance");
    Ok(())
}

/// Waits until `db`'s change listener is connected.
#[cfg(feature = "redis")]
fn listening<C>(db: &Db<C>) -> Result<(), BoxError>
where
    C: diesel::r2d2::R2D2Connection + 'static,
{
    let start = Instant::now();
    while !db.stats().listener.is_some_and(|l| l.connected) {
        if start.elapsed() > Duration::from_secs(10) {
            return Err("the change listener did not connect within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// "1 SQL statement", "0 SQL statements".
#[cfg(feature = "redis")]
fn sql_statements(n: u64) -> String {
    format!("{n} SQL statement{}", if n == 1 { "" } else { "s" })
}

/// Waits until `db`'s listener has applied `n` changes of other writers to the users region
/// and its repair thread has taken them to Redis.
#[cfg(feature = "redis")]
fn feed_applied<C>(db: &Db<C>, n: u64) -> Result<(), BoxError>
where
    C: diesel::r2d2::R2D2Connection + 'static,
{
    let start = Instant::now();
    // The listener counts the change, then its repair thread takes it to Redis.
    let repairing = |db: &Db<C>| db.stats().shared.is_some_and(|s| s.repairs_pending > 0);
    while db.region_stats::<User>()?.remote_invalidations < n || repairing(db) {
        if start.elapsed() > Duration::from_secs(5) {
            return Err("the change feed did not deliver the insert within 5 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// A plain SQL connection to the example's database, as any other client has.
fn plain_sql<C: ExampleBackend>(db: &ExampleDb<C>) -> Result<C, BoxError> {
    let mut sql = C::establish(&db.url)?;
    if let Some(schema) = &db.schema {
        sql.batch_execute(&format!("SET search_path TO {schema}"))?;
    }
    Ok(sql)
}

/// `--shared`: the same two instances with the shared tier behind their local caches.
#[cfg(feature = "redis")]
fn run_shared<C>(db: ExampleDb<C>) -> Result<(), BoxError>
where
    C: ExampleBackend + ChangeFeed,
    User: CachedOps<C>,
{
    use diesel_l2::shared::SharedConfig;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    println!("database: {}", db.location);
    let url = std::env::var("DIESEL_L2_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    // Declared first, so it is dropped last, after both instances: deletes the run's keys.
    let keys = RunKeys::connect(&url)?;
    // Every key of both instances is under this prefix: apps (or test runs) sharing one
    // Redis give each deployment its own. The 250 ms limit per call leaves room for a busy
    // machine (the default, 5 ms, suits a Redis close to the application).
    let shared = SharedConfig::new(url.clone())
        .prefix(keys.prefix.clone())
        .timeout(Duration::from_millis(250));
    let mut listen = ListenConfig::new(db.url.clone());
    if let Some(schema) = &db.schema {
        listen = listen.schema(schema.clone());
    }
    // `shared::<User>()` opts the entity in at run time; `#[cache(shared)]` on the struct
    // does the same.
    let a = Db::builder(db.pool.clone())
        .cache::<User>()
        .shared::<User>()
        .shared_tier(shared.clone())
        .listen(listen.clone())
        .build()?;
    // B's pool counts the SQL statements it sends.
    let b_sql = Arc::new(AtomicU64::new(0));
    let b = Db::builder(db.counted_second_pool(4, Arc::clone(&b_sql))?)
        .cache::<User>()
        .shared::<User>()
        .shared_tier(shared)
        .listen(listen)
        .build()?;
    // B reads user 1: the row, and the SQL statements B sent for it.
    let b_reads = || -> Result<(Arc<User>, u64), BoxError> {
        let before = b_sql.load(Ordering::SeqCst);
        let row = b.get::<User>(1)?;
        Ok((row, b_sql.load(Ordering::SeqCst) - before))
    };
    // Until its listener has connected, an instance does not trust its caches (reads go to
    // the database): wait for both.
    listening(&a)?;
    listening(&b)?;
    println!(
        "instances A and B are up, each with its own pool, cache and listener, and one Redis \
         ({url}, key prefix {})",
        keys.prefix
    );

    // A row written by another client: in no cache yet, neither local nor shared.
    let mut sql = plain_sql(&db)?;
    sql.batch_execute(
        "INSERT INTO users (id, version, email, name, bio) VALUES (1, 1, 'ada@example.com', 'Ada', NULL)",
    )?;
    // Both listeners take the insert, and repair Redis for it, before A reads: a repair
    // voids any lease taken before it, so a fill racing the notification would be refused
    // (`rejected_fills`, the fence at work) and B would read the database.
    feed_applied(&a, 1)?;
    feed_applied(&b, 1)?;

    // 1. A misses locally and in Redis: one query, and the row fills both tiers.
    let loaded = a.get::<User>(1)?;
    println!(
        "A reads user 1 (v{}) from the database and puts it in Redis",
        loaded.version
    );

    // 2. B misses locally; Redis answers.
    let (seen, statements) = b_reads()?;
    println!(
        "B reads user 1 (v{}) from Redis: {}",
        seen.version,
        sql_statements(statements)
    );
    if statements != 0 || seen != loaded {
        return Err("B did not read A's row from Redis".into());
    }

    // 3. A write in A: fenced in Redis before COMMIT, the new row stored there before
    // `transaction` returns. B's local copy goes by the change feed (or expiry, or
    // eviction, as here right away); B's next local miss reads the write from Redis.
    let mut next = (*loaded).clone();
    next.name = "Ada Lovelace".into();
    let written = a.transaction(|tx| tx.update(&next))?;
    b.evict::<User>(1)?;
    let (now, statements) = b_reads()?;
    println!(
        "A updated user 1 to v{}: B's next local miss reads v{} {:?} from Redis: {}",
        written.version,
        now.version,
        now.name,
        sql_statements(statements)
    );
    if statements != 0 || *now != written {
        return Err("B's next local miss did not read A's write from Redis".into());
    }

    // 4. A plain SQL write, which no instance fenced: each instance's change listener drops
    // its local copy and repairs Redis first, so B's next read goes to the database.
    cached(&b, 1)?;
    sql.batch_execute(
        "UPDATE users SET name = 'Countess of Lovelace', version = version + 1 WHERE id = 1",
    )?;
    let took = invalidated(&b, 1, now.version)?;
    let (now, statements) = b_reads()?;
    println!(
        "plain SQL updated user 1 to v3: B dropped v2 {:.2} ms after the commit, and reads v{} {:?} \
         from the database ({}), not v2 from Redis",
        took.as_secs_f64() * 1e3,
        now.version,
        now.name,
        sql_statements(statements)
    );
    if now.version != 3 || now.name != "Countess of Lovelace" {
        return Err("B did not see the plain SQL write".into());
    }

    for (name, db) in [("A", &a), ("B", &b)] {
        let region = db
            .region_stats::<User>()?
            .shared
            .ok_or("the users region is not shared")?;
        let tier = db.stats().shared.ok_or("no shared tier")?;
        println!(
            "{name}'s shared tier: hits {}, misses {}, fills {}, rejected fills {}, lease waits {}, \
             repairs {}, errors {}; breaker {:?}, generations started {}",
            region.hits,
            region.misses,
            region.fills,
            region.rejected_fills,
            region.lease_waits,
            region.repairs,
            region.errors + tier.errors,
            tier.breaker,
            tier.generations_started
        );
    }
    let b_hits = b.region_stats::<User>()?.shared.map_or(0, |s| s.hits);
    if b_hits < 2 {
        return Err(format!("B counted {b_hits} Redis hits, expected at least 2").into());
    }
    println!("OK: B read from Redis what A loaded and wrote, without SQL; the feed repaired Redis");
    Ok(())
}

/// The run's key prefix, and the deletion of its keys on drop (an application keeps its
/// prefix; a demonstration leaves nothing behind).
#[cfg(feature = "redis")]
struct RunKeys {
    prefix: String,
    con: redis::Connection,
}

#[cfg(feature = "redis")]
impl RunKeys {
    /// Connects to Redis (failing with a clear message when none answers) and picks the
    /// run's prefix.
    fn connect(url: &str) -> Result<RunKeys, BoxError> {
        let con = redis::Client::open(url)?
            .get_connection_with_timeout(Duration::from_secs(2))
            .map_err(|e| {
                format!("no Redis at {url} ({e}): start one, or set DIESEL_L2_REDIS_URL")
            })?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Ok(RunKeys {
            prefix: format!("two-instances-{}-{nanos:x}", std::process::id()),
            con,
        })
    }
}

#[cfg(feature = "redis")]
impl Drop for RunKeys {
    /// Deletes `<prefix>:*` (SCAN + UNLINK; never FLUSHALL: the server may be shared).
    fn drop(&mut self) {
        let con = &mut self.con;
        let pattern = format!("{}:*", self.prefix);
        let mut cursor = 0u64;
        loop {
            let reply: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query(con);
            let Ok((next, keys)) = reply else {
                eprintln!("warning: could not list the keys under {pattern}");
                return;
            };
            if !keys.is_empty() {
                let _ = redis::cmd("UNLINK").arg(keys).exec(con);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

fn main() -> std::process::ExitCode {
    common::exit_code((|| -> Result<(), BoxError> {
        let mut shared = false;
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--shared" => shared = true,
                other => return Err(format!("unknown argument {other}; expected --shared").into()),
            }
        }
        on_selected_backend!("two_instances", 4, run, shared)
    })())
}
