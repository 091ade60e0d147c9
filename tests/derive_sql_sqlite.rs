//! The SQL `#[derive(Cached)]` generates, run against an in-memory SQLite database.
#![cfg(feature = "sqlite")]

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::sqlite::SqliteConnection;
use diesel_l2::{Cached, CachedEntity, CachedOps};

mod schema {
    diesel::table! {
        users (id) {
            id -> BigInt,
            version -> BigInt,
            email -> Text,
            bio -> Nullable<Text>,
        }
    }

    diesel::table! {
        accounts (account_code) {
            account_code -> Text,
            rev -> Integer,
            balance -> BigInt,
        }
    }

    diesel::table! {
        wide (id) {
            id -> BigInt,
            version -> BigInt,
            c0 -> Integer, c1 -> Integer, c2 -> Integer, c3 -> Integer, c4 -> Integer,
            c5 -> Integer, c6 -> Integer, c7 -> Integer, c8 -> Integer, c9 -> Integer,
            c10 -> Integer, c11 -> Integer, c12 -> Integer, c13 -> Integer, c14 -> Integer,
            c15 -> Integer, c16 -> Integer, c17 -> Integer, c18 -> Integer, c19 -> Text,
        }
    }
}

#[derive(Queryable, Selectable, Clone, Debug, PartialEq, Cached)]
#[diesel(table_name = schema::users)]
#[cache(ttl = "10m")]
struct User {
    id: i64,
    version: i64,
    email: String,
    bio: Option<String>,
}

#[derive(Queryable, Selectable, Clone, Debug, PartialEq, Cached)]
#[diesel(table_name = schema::accounts)]
struct Account {
    #[cache(id)]
    #[diesel(column_name = account_code)]
    code: String,
    #[cache(version)]
    #[diesel(column_name = rev)]
    revision: i32,
    balance: i64,
}

#[derive(Queryable, Selectable, Clone, Debug, PartialEq, Cached)]
#[diesel(table_name = schema::wide)]
struct Wide {
    id: i64,
    version: i64,
    c0: i32,
    c1: i32,
    c2: i32,
    c3: i32,
    c4: i32,
    c5: i32,
    c6: i32,
    c7: i32,
    c8: i32,
    c9: i32,
    c10: i32,
    c11: i32,
    c12: i32,
    c13: i32,
    c14: i32,
    c15: i32,
    c16: i32,
    c17: i32,
    c18: i32,
    c19: String,
}

fn connection() -> SqliteConnection {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    for ddl in [
        "CREATE TABLE users (id BIGINT PRIMARY KEY NOT NULL, version BIGINT NOT NULL, \
         email TEXT NOT NULL, bio TEXT)",
        "CREATE TABLE accounts (account_code TEXT PRIMARY KEY NOT NULL, rev INTEGER NOT NULL, \
         balance BIGINT NOT NULL)",
        "CREATE TABLE wide (id BIGINT PRIMARY KEY NOT NULL, version BIGINT NOT NULL, \
         c0 INTEGER NOT NULL, c1 INTEGER NOT NULL, c2 INTEGER NOT NULL, c3 INTEGER NOT NULL, \
         c4 INTEGER NOT NULL, c5 INTEGER NOT NULL, c6 INTEGER NOT NULL, c7 INTEGER NOT NULL, \
         c8 INTEGER NOT NULL, c9 INTEGER NOT NULL, c10 INTEGER NOT NULL, c11 INTEGER NOT NULL, \
         c12 INTEGER NOT NULL, c13 INTEGER NOT NULL, c14 INTEGER NOT NULL, \
         c15 INTEGER NOT NULL, c16 INTEGER NOT NULL, c17 INTEGER NOT NULL, \
         c18 INTEGER NOT NULL, c19 TEXT NOT NULL)",
    ] {
        diesel::sql_query(ddl).execute(&mut conn).unwrap();
    }
    conn
}

#[derive(QueryableByName, Debug, PartialEq)]
struct BioRow {
    #[diesel(sql_type = Nullable<Text>)]
    bio: Option<String>,
    #[diesel(sql_type = BigInt)]
    version: i64,
}

#[test]
fn i64_id_entity_round_trip() {
    let conn = &mut connection();
    let alice = User {
        id: 1,
        version: 1,
        email: "alice@example.com".into(),
        bio: Some("hello".into()),
    };
    let bob = User {
        id: 2,
        version: 1,
        email: "bob@example.com".into(),
        bio: None,
    };

    let stored = <User as CachedOps<SqliteConnection>>::insert_row(conn, &alice).unwrap();
    assert_eq!(stored, alice);
    let stored = <User as CachedOps<SqliteConnection>>::insert_row(conn, &bob).unwrap();
    assert_eq!(stored, bob);
    // Inserting the same id again is a database error, not a silent overwrite.
    assert!(<User as CachedOps<SqliteConnection>>::insert_row(conn, &alice).is_err());

    assert_eq!(
        <User as CachedOps<SqliteConnection>>::load_one(conn, &1).unwrap(),
        Some(alice.clone())
    );
    assert_eq!(
        <User as CachedOps<SqliteConnection>>::load_one(conn, &99).unwrap(),
        None
    );
    let mut many = <User as CachedOps<SqliteConnection>>::load_many(conn, &[2, 1, 99]).unwrap();
    many.sort_by_key(|u| u.id);
    assert_eq!(many, vec![alice.clone(), bob.clone()]);
    assert!(<User as CachedOps<SqliteConnection>>::load_many(conn, &[])
        .unwrap()
        .is_empty());

    // A matching update sets every column, None included, and bumps the version.
    let mut next = alice.with_version(2).unwrap();
    next.bio = None;
    next.email = "alice@new.example.com".into();
    let updated = <User as CachedOps<SqliteConnection>>::update_row(conn, &alice, &next)
        .unwrap()
        .expect("version 1 matches");
    assert_eq!(updated, next);
    let raw: BioRow = diesel::sql_query("SELECT bio, version FROM users WHERE id = 1")
        .get_result(conn)
        .unwrap();
    assert_eq!(
        raw,
        BioRow {
            bio: None,
            version: 2
        }
    );
    assert_eq!(alice.with_version(7).unwrap().version, 7);

    // A stale update (version 1 again) matches nothing and changes nothing.
    let stale = alice.with_version(3).unwrap();
    assert_eq!(
        <User as CachedOps<SqliteConnection>>::update_row(conn, &alice, &stale).unwrap(),
        None
    );
    assert_eq!(
        <User as CachedOps<SqliteConnection>>::load_one(conn, &1).unwrap(),
        Some(next.clone())
    );

    // Deletes check the version.
    assert_eq!(
        <User as CachedOps<SqliteConnection>>::delete_row(conn, &1, 1).unwrap(),
        0
    );
    assert_eq!(
        <User as CachedOps<SqliteConnection>>::delete_row(conn, &1, 2).unwrap(),
        1
    );
    assert_eq!(
        <User as CachedOps<SqliteConnection>>::load_one(conn, &1).unwrap(),
        None
    );
    assert_eq!(
        <User as CachedOps<SqliteConnection>>::delete_row(conn, &2, 1).unwrap(),
        1
    );

    let config = User::cache_config();
    assert_eq!(config.name, "users");
    assert_eq!(config.ttl, Some(std::time::Duration::from_secs(600)));
    assert_eq!(User::TABLE, "users");
    assert!(alice.approx_bytes() >= std::mem::size_of::<User>() + "alice@example.com".len());
}

#[test]
fn string_id_i32_version_entity_round_trip() {
    let conn = &mut connection();
    let acct = Account {
        code: "ACC-1".into(),
        revision: 1,
        balance: 100,
    };
    assert_eq!(acct.version(), 1);
    assert_eq!(acct.id(), "ACC-1");
    // An i32 version cannot carry a version beyond i32::MAX.
    assert!(acct.with_version(i64::from(i32::MAX) + 1).is_none());

    let stored = <Account as CachedOps<SqliteConnection>>::insert_row(conn, &acct).unwrap();
    assert_eq!(stored, acct);
    let key = "ACC-1".to_string();
    assert_eq!(
        <Account as CachedOps<SqliteConnection>>::load_one(conn, &key).unwrap(),
        Some(acct.clone())
    );
    let many = <Account as CachedOps<SqliteConnection>>::load_many(
        conn,
        &[key.clone(), "nope".to_string()],
    )
    .unwrap();
    assert_eq!(many, vec![acct.clone()]);

    let mut next = acct.with_version(2).unwrap();
    next.balance = 50;
    assert_eq!(
        <Account as CachedOps<SqliteConnection>>::update_row(conn, &acct, &next).unwrap(),
        Some(next.clone())
    );
    assert_eq!(
        <Account as CachedOps<SqliteConnection>>::update_row(conn, &acct, &next).unwrap(),
        None,
        "stale: the row is at version 2"
    );

    // A version that does not fit i32 deletes nothing (and does not error).
    assert_eq!(
        <Account as CachedOps<SqliteConnection>>::delete_row(conn, &key, i64::MAX).unwrap(),
        0
    );
    assert_eq!(
        <Account as CachedOps<SqliteConnection>>::delete_row(conn, &key, 1).unwrap(),
        0
    );
    assert_eq!(
        <Account as CachedOps<SqliteConnection>>::delete_row(conn, &key, 2).unwrap(),
        1
    );
    assert_eq!(Account::cache_config().name, "accounts");
}

#[test]
fn wide_entity_nests_its_tuples() {
    let conn = &mut connection();
    let row = Wide {
        id: 1,
        version: 1,
        c0: 0,
        c1: 1,
        c2: 2,
        c3: 3,
        c4: 4,
        c5: 5,
        c6: 6,
        c7: 7,
        c8: 8,
        c9: 9,
        c10: 10,
        c11: 11,
        c12: 12,
        c13: 13,
        c14: 14,
        c15: 15,
        c16: 16,
        c17: 17,
        c18: 18,
        c19: "nineteen".into(),
    };
    let stored = <Wide as CachedOps<SqliteConnection>>::insert_row(conn, &row).unwrap();
    assert_eq!(stored, row);
    let mut next = row.with_version(2).unwrap();
    next.c18 = 180;
    next.c19 = "changed".into();
    assert_eq!(
        <Wide as CachedOps<SqliteConnection>>::update_row(conn, &row, &next).unwrap(),
        Some(next.clone())
    );
    assert_eq!(
        <Wide as CachedOps<SqliteConnection>>::load_one(conn, &1).unwrap(),
        Some(next)
    );
}

/// The PostgreSQL and MySQL impls exist (and type-check) when those features are on.
#[allow(dead_code)]
fn other_backends_are_implemented() {
    #[cfg(feature = "postgres")]
    {
        fn ops<T: CachedOps<diesel::pg::PgConnection>>() {}
        ops::<User>();
        ops::<Account>();
        ops::<Wide>();
    }
    #[cfg(feature = "mysql")]
    {
        fn ops<T: CachedOps<diesel::mysql::MysqlConnection>>() {}
        ops::<User>();
        ops::<Account>();
        ops::<Wide>();
    }
}
