//! `diesel-l2 migration …` run as a user runs it: against a SQLite file, a schema.rs, and
//! PostgreSQL and MariaDB when `DIESEL_L2_PG_URL` / `DIESEL_L2_MYSQL_URL` are set (each
//! test in a schema or database of its own). The files it writes are what
//! `diesel_l2::migration` generates, and they apply: a plain-SQL update then reaches the
//! change feed, and `down.sql` removes the triggers again.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_l2::migration::{self, Backend, FeedTable};

const VERSION: &str = "2026-01-02-030405";

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diesel-l2"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Runs the tool and returns its stdout; panics with its stderr if it failed.
fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "diesel-l2 {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the tool, which must fail, and returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "diesel-l2 {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(
        dir.join(format!("{VERSION}_diesel_l2_change_feed"))
            .join(file),
    )
    .unwrap()
}

#[derive(QueryableByName)]
struct Payload {
    #[diesel(sql_type = Text)]
    payload: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

const SCHEMA: &str = "CREATE TABLE users (id BIGINT PRIMARY KEY, version BIGINT NOT NULL DEFAULT 1, \
         email VARCHAR(255) NOT NULL UNIQUE, name TEXT NOT NULL);\n\
     CREATE TABLE \"my notes\" (note_id VARCHAR(64) PRIMARY KEY, row_version BIGINT NOT NULL, body TEXT NOT NULL);\n\
     CREATE TABLE logs (id BIGINT PRIMARY KEY, line TEXT NOT NULL);\n\
     CREATE TABLE lines (order_id BIGINT NOT NULL, line BIGINT NOT NULL, version BIGINT NOT NULL, \
         PRIMARY KEY (order_id, line));\n";

fn sqlite_db(dir: &Path) -> (String, SqliteConnection) {
    let path = dir.join("app.db").to_str().unwrap().to_string();
    let mut conn = SqliteConnection::establish(&path).unwrap();
    conn.batch_execute(SCHEMA).unwrap();
    conn.batch_execute(
        "INSERT INTO users (id, version, email, name) VALUES (1, 1, 'ada@x.org', 'Ada')",
    )
    .unwrap();
    (path, conn)
}

#[test]
fn from_a_sqlite_catalog_a_migration_that_applies() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, mut conn) = sqlite_db(tmp.path());
    let migrations = tmp.path().join("migrations");
    let m = migrations.to_str().unwrap();
    let out = ok(&[
        "migration",
        "change-feed",
        "--backend",
        "sqlite",
        "--database-url",
        &url,
        "--table",
        "users",
        "--dir",
        m,
        "--version",
        VERSION,
    ]);
    assert!(out.contains("up.sql"), "{out}");
    let expected = migration::change_feed(Backend::Sqlite)
        .feed_table(FeedTable::new("users", ["id"], "version").unique_key(["email"]))
        .build()
        .unwrap();
    assert_eq!(read(&migrations, "up.sql"), expected.up);
    assert_eq!(read(&migrations, "down.sql"), expected.down);
    // The same directory again is refused, not overwritten.
    let e = fails(&[
        "migration",
        "change-feed",
        "--backend",
        "sqlite",
        "--database-url",
        &url,
        "--table",
        "users",
        "--dir",
        m,
        "--version",
        VERSION,
    ]);
    assert!(e.contains("exists already"), "{e}");

    conn.batch_execute(&read(&migrations, "up.sql")).unwrap();
    conn.batch_execute("UPDATE users SET email = 'ada@y.org' WHERE id = 1")
        .unwrap();
    let rows: Vec<Payload> = diesel::sql_query("SELECT payload FROM diesel_l2_changes_v2")
        .load(&mut conn)
        .unwrap();
    let payloads: Vec<&str> = rows.iter().map(|r| r.payload.as_str()).collect();
    assert_eq!(
        payloads,
        ["v2|u|main|users|2|1|1|o0.0=9:ada@x.org|n0.0=9:ada@y.org"]
    );
    conn.batch_execute(&read(&migrations, "down.sql")).unwrap();
    let left: Vec<Count> = diesel::sql_query(
        "SELECT count(*) AS n FROM sqlite_master WHERE type = 'trigger' OR name = 'diesel_l2_changes_v2'",
    )
    .load(&mut conn)
    .unwrap();
    assert_eq!(left[0].n, 0, "down.sql drops what up.sql created");
}

#[test]
fn every_table_with_the_version_column_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, _conn) = sqlite_db(tmp.path());
    // `lines` has a version column and a composite key: its id text is
    // `<length>:<value>` per key column.
    let out = ok(&[
        "migration",
        "change-feed",
        "--backend",
        "sqlite",
        "--database-url",
        &url,
        "--print",
    ]);
    assert!(
        out.contains("CREATE TRIGGER \"lines_diesel_l2_v2_upd\"")
            && out.contains("length(CAST(NEW.\"order_id\" AS TEXT)) || ':'"),
        "{out}"
    );
    let out = ok(&[
        "migration",
        "change-feed",
        "--backend",
        "sqlite",
        "--database-url",
        &url,
        "--print",
        "--version-column",
        "row_version",
    ]);
    assert!(
        out.contains("CREATE TRIGGER \"my notes_diesel_l2_v2_upd\""),
        "{out}"
    );
    assert!(!out.contains("users_diesel_l2"), "{out}");
    let e = fails(&[
        "migration",
        "change-feed",
        "--backend",
        "sqlite",
        "--database-url",
        &url,
        "--print",
        "--table",
        "logs",
    ]);
    assert!(e.contains("table `logs` has no `version` column"), "{e}");
    let e = fails(&[
        "migration",
        "change-feed",
        "--backend",
        "sqlite",
        "--database-url",
        &url,
        "--print",
        "--table",
        "nope",
    ]);
    assert!(e.contains("no table `nope`"), "{e}");
    let e = fails(&[
        "migration",
        "change-feed",
        "--backend",
        "oracle",
        "--schema",
        "x.rs",
    ]);
    assert!(e.contains("postgres, mysql or sqlite"), "{e}");
    let e = fails(&["migration", "change-feed", "--backend", "sqlite", "--print"]);
    assert!(
        e.contains("--database-url") && e.contains("--schema"),
        "{e}"
    );
}

const SCHEMA_RS: &str = r#"
// @generated automatically by Diesel CLI.

diesel::table! {
    users (id) {
        id -> Int8,
        version -> Int8,
        #[max_length = 255]
        email -> Varchar,
        name -> Text,
    }
}

diesel::table! {
    #[sql_name = "my notes"]
    notes (note_id) {
        #[max_length = 64]
        note_id -> Varchar,
        #[sql_name = "row_version"]
        rev -> Int8,
        body -> Text,
    }
}

diesel::table! {
    logs (id) {
        id -> Int8,
        line -> Text,
    }
}
"#;

#[test]
fn from_a_schema_rs() {
    let tmp = tempfile::tempdir().unwrap();
    let schema = tmp.path().join("schema.rs");
    std::fs::write(&schema, SCHEMA_RS).unwrap();
    let schema = schema.to_str().unwrap();
    let migrations = tmp.path().join("migrations");
    ok(&[
        "migration",
        "change-feed",
        "--backend",
        "sqlite",
        "--schema",
        schema,
        "--table",
        "users",
        "--unique",
        "users:email",
        "--index",
        "users:name",
        "--dir",
        migrations.to_str().unwrap(),
        "--version",
        VERSION,
    ]);
    let expected = migration::change_feed(Backend::Sqlite)
        .feed_table(
            FeedTable::new("users", ["id"], "version")
                .unique_key(["email"])
                .index_key(["name"]),
        )
        .build()
        .unwrap();
    assert!(
        expected.up.contains("|n100.0="),
        "index keys are numbered from 100"
    );
    assert_eq!(read(&migrations, "up.sql"), expected.up);
    assert_eq!(read(&migrations, "down.sql"), expected.down);
    let (_, mut conn) = sqlite_db(tmp.path());
    conn.batch_execute(&expected.up).unwrap();
    conn.batch_execute(&expected.down).unwrap();

    // `#[sql_name]` on the table and a column, by the table's SQL or Rust name.
    for table in ["my notes", "notes"] {
        let out = ok(&[
            "migration",
            "change-feed",
            "--backend",
            "postgres",
            "--schema",
            schema,
            "--table",
            table,
            "--version-column",
            "row_version",
            "--print",
        ]);
        let expected = migration::change_feed(Backend::Postgres)
            .feed_table(FeedTable::new("my notes", ["note_id"], "row_version"))
            .build()
            .unwrap();
        assert_eq!(
            out,
            format!("-- up.sql\n{}\n-- down.sql\n{}", expected.up, expected.down)
        );
    }
    let e = fails(&[
        "migration",
        "change-feed",
        "--backend",
        "mysql",
        "--schema",
        schema,
        "--table",
        "users",
        "--unique",
        "users:mail",
        "--print",
    ]);
    assert!(e.contains("table `users` has no column `mail`"), "{e}");
    let e = fails(&[
        "migration",
        "change-feed",
        "--backend",
        "mysql",
        "--schema",
        schema,
        "--table",
        "logs",
        "--print",
    ]);
    assert!(e.contains("table `logs` has no `version` column"), "{e}");
}

#[test]
fn operations_table() {
    let tmp = tempfile::tempdir().unwrap();
    let migrations = tmp.path().join("migrations");
    ok(&[
        "migration",
        "operations",
        "--backend",
        "sqlite",
        "--dir",
        migrations.to_str().unwrap(),
        "--version",
        VERSION,
    ]);
    let dir = migrations.join(format!("{VERSION}_diesel_l2_operations"));
    let expected = migration::operations(Backend::Sqlite);
    let up = std::fs::read_to_string(dir.join("up.sql")).unwrap();
    assert_eq!(up, expected.up);
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    conn.batch_execute(&up).unwrap();
    conn.batch_execute(&std::fs::read_to_string(dir.join("down.sql")).unwrap())
        .unwrap();
}

/// A name no other test run uses.
fn unique_name() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "l2cli_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn server_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{var} is not set under CI=true"
            );
            eprintln!("SKIPPED: {var} is not set");
            None
        }
    }
}

const SERVER_SCHEMA: &str =
    "CREATE TABLE users (id BIGINT PRIMARY KEY, version BIGINT NOT NULL DEFAULT 1, \
     email VARCHAR(255) NOT NULL, name TEXT NOT NULL, CONSTRAINT users_email UNIQUE (email)); \
     CREATE TABLE logs (id BIGINT PRIMARY KEY, line TEXT NOT NULL); \
     INSERT INTO users (id, version, email, name) VALUES (1, 1, 'ada@x.org', 'Ada');";

#[test]
fn from_a_postgres_catalog() {
    let Some(base) = server_url("DIESEL_L2_PG_URL") else {
        return;
    };
    let schema = unique_name();
    let mut admin = PgConnection::establish(&base).unwrap();
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .unwrap();
    let cleanup = scopeguard(|| {
        if let Ok(mut c) = PgConnection::establish(&base) {
            let _ = c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"));
        }
    });
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
    let mut conn = PgConnection::establish(&url).unwrap();
    conn.batch_execute(SERVER_SCHEMA).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let migrations = tmp.path().join("migrations");
    ok(&[
        "migration",
        "change-feed",
        "--backend",
        "postgres",
        "--database-url",
        &url,
        "--dir",
        migrations.to_str().unwrap(),
        "--version",
        VERSION,
    ]);
    let expected = migration::change_feed(Backend::Postgres)
        .feed_table(FeedTable::new("users", ["id"], "version").unique_key(["email"]))
        .build()
        .unwrap();
    assert_eq!(read(&migrations, "up.sql"), expected.up);
    conn.batch_execute(&expected.up).unwrap();
    conn.batch_execute("LISTEN diesel_l2").unwrap();
    let mut writer = PgConnection::establish(&url).unwrap();
    writer
        .batch_execute("UPDATE users SET name = 'Lovelace' WHERE id = 1")
        .unwrap();
    let mut payloads = Vec::new();
    for _ in 0..500 {
        payloads.extend(conn.notifications_iter().map(|n| n.unwrap().payload));
        if !payloads.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        payloads,
        [format!(
            "v2|u|{schema}|users|2|1|1|o0.0=9:ada@x.org|n0.0=9:ada@x.org"
        )]
    );
    conn.batch_execute(&read(&migrations, "down.sql")).unwrap();
    let left: Vec<Count> = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND NOT t.tgisinternal",
    )
    .load(&mut conn)
    .unwrap();
    assert_eq!(left[0].n, 0, "down.sql drops what up.sql created");
    drop(cleanup);
}

#[test]
fn from_a_mariadb_catalog() {
    let Some(base) = server_url("DIESEL_L2_MYSQL_URL") else {
        return;
    };
    let db = unique_name();
    let mut admin = MysqlConnection::establish(&base).unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .unwrap();
    let cleanup = scopeguard(|| {
        if let Ok(mut c) = MysqlConnection::establish(&base) {
            let _ = c.batch_execute(&format!("DROP DATABASE {db}"));
        }
    });
    let (server, _) = base.rsplit_once('/').unwrap();
    let url = format!("{server}/{db}");
    let mut conn = MysqlConnection::establish(&url).unwrap();
    conn.batch_execute(SERVER_SCHEMA).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let migrations = tmp.path().join("migrations");
    ok(&[
        "migration",
        "change-feed",
        "--backend",
        "mysql",
        "--database-url",
        &url,
        "--dir",
        migrations.to_str().unwrap(),
        "--version",
        VERSION,
    ]);
    let expected = migration::change_feed(Backend::Mysql)
        .feed_table(FeedTable::new("users", ["id"], "version").unique_key(["email"]))
        .build()
        .unwrap();
    assert_eq!(read(&migrations, "up.sql"), expected.up);
    conn.batch_execute(&expected.up).unwrap();
    conn.batch_execute("UPDATE users SET name = 'Lovelace' WHERE id = 1")
        .unwrap();
    let rows: Vec<Payload> = diesel::sql_query("SELECT payload FROM diesel_l2_changes_v2")
        .load(&mut conn)
        .unwrap();
    let payloads: Vec<&str> = rows.iter().map(|r| r.payload.as_str()).collect();
    assert_eq!(
        payloads,
        [format!(
            "v2|u|{db}|users|2|1|1|o0.0=9:ada@x.org|n0.0=9:ada@x.org"
        )]
    );
    conn.batch_execute(&read(&migrations, "down.sql")).unwrap();
    let left: Vec<Count> = diesel::sql_query(
        "SELECT CAST(count(*) AS SIGNED) AS n FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()",
    )
    .load(&mut conn)
    .unwrap();
    assert_eq!(left[0].n, 0, "down.sql drops what up.sql created");
    drop(cleanup);
}

/// Runs `f` when dropped, also when the test panics.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
