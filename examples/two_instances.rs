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

#[derive(Queryable, Selectable, Clone, Debug, PartialEq, Cached)]
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

fn run<C>(db: ExampleDb<C>) -> Result<(), BoxError>
where
    C: ExampleBackend + ChangeFeed,
    User: CachedOps<C>,
{
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
    let mut sql = C::establish(&db.url)?;
    if let Some(schema) = &db.schema {
        sql.batch_execute(&format!("SET search_path TO {schema}"))?;
    }
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

fn main() -> std::process::ExitCode {
    common::exit_code((|| -> Result<(), BoxError> {
        on_selected_backend!("two_instances", 4, run)
    })())
}
