//! The example schema's change-feed and operations migrations are exactly what
//! `diesel_l2::migration` generates for the test entities, so the documented function is
//! what the tests run against (C6, C7); and a generated migration applied to a database
//! makes a plain-SQL write reach a listening `Db`, on every backend.
//!
//! Regenerate after changing the generators:
//! `DIESEL_L2_WRITE_MIGRATIONS=1 cargo test --all-features --test trigger_migrations`.

mod common;

use std::time::{Duration, Instant};

use common::models::{Account, Memo, NoteLine, Post, Product, Tag, TextDocument, User};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_l2::migration::{self, FeedTable, Migration};
use diesel_l2::{Cached, Db, ListenConfig};

/// The change feed at payload version 2, upgrading the version 1 feed installed by
/// `2026-11-22-000003_change_feed` (kept as it was: migrations already run never change).
/// The flush threshold is the default (100 rows).
fn change_feed_v2(backend: migration::Backend) -> Migration {
    migration::change_feed(backend)
        // As it was before `User` had an index key (`2026-12-01-000014` adds it).
        .feed_table(FeedTable::new("users", ["id"], "version").unique_key(["email"]))
        .table::<Product>()
        .table::<Tag>()
        // The same SQL names as the PostgreSQL-only `Document` (`documents`, `id`, `version`).
        .table::<TextDocument>()
        // As it was before `Post` had an index key (`2026-12-01-000013` adds it).
        .feed_table(FeedTable::new("posts", ["id"], "version"))
        .table::<Account>()
        .table::<Memo>()
        .table::<NoteLine>()
        .drop_feed_v1()
        .build()
        .expect("the test entities can be in the feed")
        .with_version("2026-11-30-000002")
        .with_name("change_feed_v2")
}

/// Writes `m` into `migrations/<backend>/` when asked to, then checks it is what is there.
fn write_or_check(backend: migration::Backend, m: &Migration) {
    let dir = format!("{}/migrations/{backend}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var("DIESEL_L2_WRITE_MIGRATIONS").is_ok_and(|v| v == "1") {
        m.write_to(&dir).unwrap();
    }
    m.check(&dir).unwrap_or_else(|e| {
        panic!(
            "{e}\n(in this repository: DIESEL_L2_WRITE_MIGRATIONS=1 cargo test --all-features \
             --test trigger_migrations)"
        )
    });
}

#[test]
fn migrations_install_the_generated_trigger_sql() {
    for backend in migration::Backend::ALL {
        write_or_check(backend, &change_feed_v2(backend));
    }
}

/// The change feed of `follows`, a table with a composite primary key: its id text is
/// `<length>:<value>` per key column (C7). A later migration adding tables keeps the
/// shared parts when reverted.
#[test]
fn composite_key_migrations_install_the_generated_trigger_sql() {
    for backend in migration::Backend::ALL {
        let m = migration::change_feed(backend)
            .table::<common::models::Follow>()
            .drops_shared(false)
            .build()
            .expect("a composite key can be in the feed")
            .with_version("2026-11-30-000012")
            .with_name("follows_change_feed");
        write_or_check(backend, &m);
    }
}

/// The change feed of `posts` with its index key `user_id` (C10): payloads carry the old
/// and new `user_id` as key number 100, so a remote change drops exactly the cached lists
/// it touched. Reinstalls the triggers `2026-11-30-000002` created for the table.
#[test]
fn index_key_migrations_install_the_generated_trigger_sql() {
    for backend in migration::Backend::ALL {
        let m = migration::change_feed(backend)
            .table::<Post>()
            .drops_shared(false)
            .build()
            .expect("an index key can be in the feed")
            .with_version("2026-12-01-000013")
            .with_name("posts_index_feed");
        write_or_check(backend, &m);
    }
}

/// The change feed of `users` with its nullable index key `bio` (C10). Reinstalls the
/// triggers `2026-11-30-000002` created for the table.
#[test]
fn nullable_index_key_migrations_install_the_generated_trigger_sql() {
    for backend in migration::Backend::ALL {
        let m = migration::change_feed(backend)
            .table::<User>()
            .drops_shared(false)
            .build()
            .expect("a nullable index key can be in the feed")
            .with_version("2026-12-01-000014")
            .with_name("users_index_feed");
        write_or_check(backend, &m);
    }
}

/// The operations table's migrations (C6) are what `migration::operations` generates.
#[test]
fn migrations_install_the_generated_operations_table() {
    for backend in migration::Backend::ALL {
        let m = migration::operations(backend)
            .with_version("2026-11-30-000003")
            .with_name("operations");
        write_or_check(backend, &m);
    }
}

diesel::table! {
    /// A table whose SQL names all differ from the Rust ones.
    #[sql_name = "feed_gadgets"]
    gadgets (gadget_id) {
        gadget_id -> BigInt,
        #[sql_name = "row_version"]
        rev -> BigInt,
        #[max_length = 64]
        code -> Varchar,
    }
}

/// Fields renamed again on the struct: the feed must use the SQL names.
#[derive(Queryable, Selectable, Clone, Debug, PartialEq, Cached)]
#[diesel(table_name = gadgets)]
struct Gadget {
    #[cache(id)]
    #[diesel(column_name = gadget_id)]
    key: i64,
    #[cache(version)]
    #[diesel(column_name = rev)]
    v: i64,
    #[cache(unique)]
    code: String,
}

const GADGETS_TABLE: &str = "CREATE TABLE feed_gadgets (gadget_id BIGINT PRIMARY KEY, \
     row_version BIGINT NOT NULL, code VARCHAR(64) NOT NULL UNIQUE)";

#[test]
fn entities_name_their_sql_table_and_columns() {
    assert_eq!(
        FeedTable::of::<Gadget>(),
        FeedTable::new("feed_gadgets", ["gadget_id"], "row_version").unique_key(["code"])
    );
    assert_eq!(
        FeedTable::of::<Memo>(),
        FeedTable::new("notes", ["id"], "version")
    );
    assert_eq!(
        FeedTable::of::<Account>(),
        FeedTable::new("accounts", ["id"], "version").unique_key(["tenant_id", "email"])
    );
}

/// Waits until `cond` holds, up to 10 s.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

backend_tests! {
    /// A generated migration, applied to a database that has the feed for other tables
    /// (so it keeps the shared parts on the way down): `build()` with `listen` accepts the
    /// table, a plain-SQL `UPDATE` that leaves the version alone gets a new version from the
    /// database and reaches the listening `Db`, and `down.sql` removes every trigger again.
    fn a_generated_migration_feeds_a_listening_db(t) {
        let backend: migration::Backend = BACKEND.name().parse().unwrap();
        let m = migration::change_feed(backend)
            .table::<Gadget>()
            .drops_shared(false)
            .build()
            .unwrap();
        t.exec(GADGETS_TABLE);
        t.exec(&m.up);
        t.exec("INSERT INTO feed_gadgets (gadget_id, row_version, code) VALUES (1, 1, 'a')");

        let mut config = ListenConfig::new(t.url.clone()).poll_interval(Duration::from_millis(1));
        if let Some(schema) = t.pg_schema() {
            config = config.schema(schema);
        }
        let db = Db::builder(t.pool.clone())
            .cache::<Gadget>()
            .listen(config)
            .build()
            .expect("the generated migration installs what `listen` checks");
        wait_for("the row to be cached", || {
            db.find::<Gadget>(1).unwrap();
            db.peek::<Gadget>(&1).unwrap().is_some()
        });

        let mut other = t.raw_connection();
        other
            .batch_execute("UPDATE feed_gadgets SET code = 'b' WHERE gadget_id = 1")
            .unwrap();
        wait_for("the plain-SQL update to reach the cache", || {
            db.peek::<Gadget>(&1).unwrap().is_none_or(|g| g.v == 2)
        });
        let g = db.find::<Gadget>(1).unwrap().unwrap();
        assert_eq!((g.v, g.code.as_str()), (2, "b"));
        drop(db);

        t.exec(&m.down);
        let triggers = match backend {
            migration::Backend::Postgres => "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = current_schema() AND t.tgname::text LIKE 'feed_gadgets_diesel_l2%'",
            migration::Backend::Mysql => "SELECT count(*) FROM information_schema.TRIGGERS \
                 WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME LIKE 'feed_gadgets_diesel_l2%'",
            _ => "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'feed_gadgets_diesel_l2%'",
        };
        let n: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!("({triggers})")))
            .get_result(&mut t.conn())
            .unwrap();
        assert_eq!(n, 0, "down.sql leaves no trigger of the table");
        // The shared parts stay for the other tables: their feed still works.
        t.exec("INSERT INTO users (id, version, email, name) VALUES (1, 1, 'a@x', 'A')");
    }
}

/// The blog example's change feed and operations table (`examples/blog/migrations/`) are
/// what `diesel_l2::migration` generates for its tables, like the project's own above.
#[test]
fn blog_example_migrations_install_the_generated_sql() {
    let dir = |backend: migration::Backend| {
        format!(
            "{}/examples/blog/migrations/{backend}",
            env!("CARGO_MANIFEST_DIR")
        )
    };
    for backend in migration::Backend::ALL {
        // Each table with its unique keys: their values ride along in the payloads (C7).
        let feed = migration::change_feed(backend)
            .feed_table(FeedTable::new("users", ["id"], "version").unique_key(["email"]))
            .feed_table(FeedTable::new("posts", ["id"], "version").unique_key(["slug"]))
            // `post_id`: the comments' `#[cache(index)]`, precise list invalidation.
            .feed_table(FeedTable::new("comments", ["id"], "version").index_key(["post_id"]))
            .build()
            .unwrap()
            .with_version("2026-12-01-000002")
            .with_name("change_feed");
        let ops = migration::operations(backend)
            .with_version("2026-12-01-000003")
            .with_name("operations");
        for m in [feed, ops] {
            if std::env::var("DIESEL_L2_WRITE_MIGRATIONS").is_ok_and(|v| v == "1") {
                m.write_to(dir(backend)).unwrap();
            }
            m.check(dir(backend)).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
