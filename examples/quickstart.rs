//! Quickstart: cache a diesel model, read through, write with versions, see a conflict.
//!
//! Runs on a SQLite file in the system temp directory; nothing to install:
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! It creates users in a transaction (the cache receives them on commit), reads them back
//! (a hit runs no SQL, a miss loads once), updates one with its version, provokes and
//! prints a version conflict, delivers one message twice under its operation id (the
//! second delivery runs nothing and returns the recorded result), and prints the
//! cache statistics.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use diesel::connection::{InstrumentationEvent, SimpleConnection};
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel::sqlite::SqliteConnection;
use diesel_l2::{Cached, Db, Error, RetryPolicy};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

diesel::table! {
    users (id) {
        id -> BigInt,
        version -> BigInt,
        email -> Text,
        name -> Text,
        bio -> Nullable<Text>,
    }
}

/// A plain diesel model; `Cached` adds the cache region and the versioned SQL.
#[derive(Queryable, Selectable, Clone, Debug, PartialEq, Cached)]
#[diesel(table_name = users)]
#[cache(ttl = "10m", max_entries = 100_000)]
pub struct User {
    pub id: i64,
    pub version: i64,
    pub email: String,
    pub name: String,
    pub bio: Option<String>,
}

/// Counts the SQL statements the pool runs, so the example can show that a hit runs none.
static STATEMENTS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug)]
struct Setup;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for Setup {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(diesel::r2d2::Error::QueryError)?;
        conn.set_instrumentation(|event: InstrumentationEvent<'_>| {
            if let InstrumentationEvent::StartQuery { .. } = event {
                STATEMENTS.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(())
    }
}

fn statements() -> usize {
    STATEMENTS.load(Ordering::Relaxed)
}

fn user(id: i64, name: &str) -> User {
    User {
        id,
        version: 1,
        email: format!("{}@example.com", name.to_lowercase()),
        name: name.to_string(),
        bio: None,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let path = std::env::temp_dir().join(format!("diesel-l2-quickstart-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let pool = Pool::builder()
        .max_size(4)
        .test_on_check_out(false)
        .connection_customizer(Box::new(Setup))
        .build(ConnectionManager::<SqliteConnection>::new(
            path.to_string_lossy(),
        ))?;
    pool.get()?.run_pending_migrations(MIGRATIONS)?;
    println!("database: {}", path.display());

    // One derive, one builder.
    let db = Db::builder(pool).cache::<User>().build()?;

    // 1. Insert in a transaction: the cache receives the rows only after COMMIT (C1).
    db.transaction(|tx| {
        tx.insert(&user(1, "Ada"))?;
        tx.insert(&user(2, "Grace"))?;
        // A row written with plain diesel is announced so the cache forgets it.
        diesel::insert_into(users::table)
            .values((
                users::id.eq(3),
                users::version.eq(1),
                users::email.eq("edsger@example.com"),
                users::name.eq("Edsger"),
            ))
            .execute(tx.conn())?;
        tx.invalidate::<User>(3)
    })?;

    // 2. Read through: user 1 came from the commit (a hit), user 3 is loaded once.
    for id in [1, 3, 3] {
        let before = statements();
        let t = Instant::now();
        let u = db.find::<User>(id)?.expect("inserted above");
        println!(
            "find({id}) -> {} v{}: {} SQL statement(s), {:?}",
            u.name,
            u.version,
            statements() - before,
            t.elapsed()
        );
    }
    let before = statements();
    let many = db.find_many::<User>(&[1, 2, 3, 4])?;
    println!(
        "find_many([1, 2, 3, 4]) -> {:?}: {} SQL statement(s) (4 does not exist and is now negatively cached)",
        many.iter().map(|u| u.as_ref().map(|u| u.name.as_str())).collect::<Vec<_>>(),
        statements() - before
    );

    // 3. Update with a version: the UPDATE checks version 1 and writes version 2 (C6).
    let ada: Arc<User> = db.get::<User>(1)?;
    let mut renamed = (*ada).clone();
    renamed.email = "ada@lovelace.org".into();
    let stored = db.transaction(|tx| tx.update(&renamed))?;
    println!("updated Ada to v{}: {}", stored.version, stored.email);
    let after = db.get::<User>(1)?;
    println!(
        "read after commit -> v{} {} (read-your-writes, C2)",
        after.version, after.email
    );

    // 4. A stale write: someone edits from the old copy (version 1) with other content.
    let mut stale = (*ada).clone();
    stale.name = "Countess".into();
    match db.transaction(|tx| tx.update(&stale)) {
        Err(e @ Error::Conflict { .. }) => println!("conflict, as expected: {e}"),
        other => return Err(format!("expected a conflict, got {other:?}").into()),
    }

    // 5. At-least-once delivery: the same message twice. Its id is recorded with the
    //    result in the same transaction, so the redelivery runs nothing (C6).
    for delivery in 1..=2 {
        let outcome = db.transaction_once("msg-ada-bio", |tx| {
            let mut ada = tx.get::<User>(1)?;
            ada.bio = Some("first programmer".into());
            Ok(tx.update(&ada)?.version)
        })?;
        println!(
            "delivery {delivery} of msg-ada-bio: replay = {}, Ada at v{}",
            outcome.is_replay(),
            *outcome
        );
    }

    // 6. retry re-runs the closure on conflicts, re-reading each time.
    let grace = db.retry(RetryPolicy::default(), |tx| {
        let mut g = tx.get::<User>(2)?;
        g.bio = Some("COBOL".into());
        tx.update(&g)
    })?;
    println!("Grace is at v{} with bio {:?}", grace.version, grace.bio);

    println!("\n{}", db.stats());
    let _ = std::fs::remove_file(&path);
    Ok(())
}
