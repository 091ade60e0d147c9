//! Proves the shared fixtures in `tests/common` with plain diesel, on every
//! configured backend: schema, isolation, SQL counting, pool options, and the
//! PostgreSQL deferred foreign key that makes COMMIT itself fail.

mod common;

use common::schema::{documents_text, posts, products, tags, users};
use common::*;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use std::time::Duration;

/// A `users` row as a plain tuple (the fixtures define no models).
type UserRow = (i64, i64, String, String, Option<String>);

// Macros rather than generic fns: each backend module has a concrete
// connection type, and diesel's generic bounds would be longer than the code.

/// Inserts a `users` row with version 1.
macro_rules! insert_user {
    ($conn:expr, $id:expr, $email:expr) => {
        diesel::insert_into(users::table)
            .values((
                users::id.eq($id as i64),
                users::version.eq(1i64),
                users::email.eq($email),
                users::name.eq("Name"),
            ))
            .execute($conn)
            .expect("insert user")
    };
}

/// `SELECT COUNT(*) FROM users`.
macro_rules! user_count {
    ($conn:expr) => {
        users::table
            .count()
            .get_result::<i64>($conn)
            .expect("count users")
    };
}

backend_tests! {
    /// The embedded migrations created all five tables with the expected
    /// column types (doc comments pass through to the generated tests).
    fn migrations_create_the_example_schema(t) {
        let mut conn = t.conn();
        insert_user!(&mut conn, 1, "a@example.com");
        let row: UserRow = users::table.find(1i64).first(&mut conn).unwrap();
        assert_eq!(row, (1, 1, "a@example.com".into(), "Name".into(), None));

        diesel::insert_into(products::table)
            .values((
                products::id.eq(7i32),
                products::version.eq(1i32),
                products::sku.eq("SKU-7"),
                products::stock.eq(3i32),
            ))
            .execute(&mut conn)
            .unwrap();
        let product: (i32, i32, String, i32) =
            products::table.find(7i32).first(&mut conn).unwrap();
        assert_eq!(product, (7, 1, "SKU-7".into(), 3));

        diesel::insert_into(tags::table)
            .values((tags::id.eq("rust"), tags::version.eq(1i64), tags::label.eq("Rust")))
            .execute(&mut conn)
            .unwrap();
        let tag: (String, i64, String) = tags::table.find("rust").first(&mut conn).unwrap();
        assert_eq!(tag, ("rust".into(), 1, "Rust".into()));

        diesel::insert_into(posts::table)
            .values((
                posts::id.eq(10i64),
                posts::version.eq(1i64),
                posts::user_id.eq(1i64),
                posts::title.eq("Hello"),
            ))
            .execute(&mut conn)
            .unwrap();
        let joined: Vec<(String, String)> = posts::table
            .inner_join(users::table)
            .select((posts::title, users::email))
            .load(&mut conn)
            .unwrap();
        assert_eq!(joined, vec![("Hello".into(), "a@example.com".into())]);

        // Only counted, so it compiles on every backend whatever `id` is.
        let documents: i64 = documents_text::table.count().get_result(&mut conn).unwrap();
        assert_eq!(documents, 0);
    }

    only(sqlite, mysql)
    fn documents_have_text_uuid_keys(t) {
        let mut conn = t.conn();
        let id = uuid::Uuid::new_v4().to_string();
        diesel::insert_into(documents_text::table)
            .values((
                documents_text::id.eq(&id),
                documents_text::version.eq(1i64),
                documents_text::title.eq("Doc"),
            ))
            .execute(&mut conn)
            .unwrap();
        let row: (String, i64, String) =
            documents_text::table.find(&id).first(&mut conn).unwrap();
        assert_eq!(row, (id, 1, "Doc".into()));
    }

    only(postgres)
    fn documents_have_native_uuid_keys(t) {
        use common::schema::documents;
        let mut conn = t.conn();
        let id = uuid::Uuid::new_v4();
        diesel::insert_into(documents::table)
            .values((
                documents::id.eq(id),
                documents::version.eq(1i64),
                documents::title.eq("Doc"),
            ))
            .execute(&mut conn)
            .unwrap();
        let row: (uuid::Uuid, i64, String) =
            documents::table.find(id).first(&mut conn).unwrap();
        assert_eq!(row, (id, 1, "Doc".into()));
    }

    fn backend_is_reported(t) {
        assert_eq!(t.backend, BACKEND);
        assert_eq!(<Conn as TestBackend>::BACKEND, BACKEND);
        assert_eq!(t.options.max_size, 8);
    }

    fn two_test_dbs_are_isolated(t) {
        let other = t.fresh();
        insert_user!(&mut t.conn(), 1, "one@example.com");
        assert_eq!(user_count!(&mut t.conn()), 1);
        assert_eq!(user_count!(&mut other.conn()), 0);
        // Same key and unique email again: no conflict across databases.
        insert_user!(&mut other.conn(), 1, "one@example.com");
        assert_eq!(user_count!(&mut other.conn()), 1);
        // Each log only sees its own pool.
        assert_eq!(t.sql.writes(), 1);
        assert_eq!(other.sql.writes(), 1);
    }

    fn sql_log_counts_exactly_one_select_for_find(t) {
        t.exec("INSERT INTO users (id, version, email, name) VALUES (1, 1, 'a@example.com', 'A')");
        assert_eq!(t.sql.writes(), 1, "exec is recorded too");
        t.sql.reset();
        assert_eq!(t.sql.count(), 0);

        let mut conn = t.pool.get().unwrap();
        assert_eq!(t.sql.count(), 0, "checkout must not run SQL");
        let row: UserRow = users::table.find(1i64).first(&mut conn).unwrap();
        assert_eq!(row.2, "a@example.com");
        assert_eq!(t.sql.count(), 1, "{:?}", t.sql.statements());
        assert_eq!(t.sql.selects(), 1);
        assert_eq!(t.sql.writes(), 0);
        assert!(t.sql.statements()[0].contains("users"));

        t.sql.reset();
        assert_eq!((t.sql.count(), t.sql.selects()), (0, 0));
        assert!(t.sql.statements().is_empty());
    }

    fn sql_log_records_transaction_control(t) {
        let mut conn = t.conn();
        t.sql.reset();
        conn.transaction::<_, DieselError, _>(|c| {
            users::table.count().get_result::<i64>(c)?;
            c.transaction::<_, DieselError, _>(|c| users::table.count().get_result::<i64>(c))
        })
        .unwrap();
        let _ = conn.transaction::<(), _, _>(|_| Err(DieselError::RollbackTransaction));

        // Strip diesel's `-- binds: [..]` suffix for an exact comparison.
        let statements: Vec<String> = t
            .sql
            .statements()
            .iter()
            .map(|s| s.split(" -- binds").next().unwrap().trim().to_owned())
            .collect();
        let count = statements[1].clone();
        assert!(count.starts_with("SELECT COUNT(*)"), "{statements:?}");
        assert_eq!(
            statements,
            vec![
                "BEGIN".to_owned(),
                count.clone(),
                "SAVEPOINT diesel_savepoint_1".to_owned(),
                count,
                "RELEASE SAVEPOINT diesel_savepoint_1".to_owned(),
                "COMMIT".to_owned(),
                "BEGIN".to_owned(),
                "ROLLBACK".to_owned(),
            ]
        );
        assert_eq!((t.sql.count(), t.sql.selects(), t.sql.tx_control()), (8, 2, 6));
    }

    fn sql_log_sees_every_pooled_connection(t) {
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let pool = t.pool.clone();
                std::thread::spawn(move || {
                    let mut conn = pool.get().unwrap();
                    users::table.count().get_result::<i64>(&mut conn).unwrap()
                })
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().unwrap(), 0);
        }
        assert_eq!(t.sql.selects(), 3, "{:?}", t.sql.statements());
    }

    fn raw_connection_is_not_recorded(t) {
        let mut raw = t.raw_connection();
        insert_user!(&mut raw, 5, "raw@example.com");
        assert_eq!(t.sql.count(), 0);
        // ... but it wrote to the same database the pool sees.
        assert_eq!(user_count!(&mut t.conn()), 1);
    }

    fn pool_options_apply(
        t,
        TestDbOptions::default()
            .max_size(1)
            .connection_timeout(Duration::from_millis(300))
    ) {
        assert_eq!(t.options.max_size, 1);
        let held = t.conn();
        let started = std::time::Instant::now();
        assert!(t.pool.get().is_err(), "max_size 1: second checkout must time out");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(held);
        assert_eq!(t.pool.state().connections, 1);
        assert!(t.pool.get().is_ok());
    }

    only(sqlite, mysql)
    fn foreign_key_is_checked_at_insert(t) {
        let mut conn = t.conn();
        let err = diesel::insert_into(posts::table)
            .values((
                posts::id.eq(1i64),
                posts::version.eq(1i64),
                posts::user_id.eq(999i64),
                posts::title.eq("orphan"),
            ))
            .execute(&mut conn)
            .unwrap_err();
        assert!(
            matches!(err, DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _)),
            "{err:?}"
        );
    }

    only(postgres)
    fn deferred_foreign_key_fails_at_commit(t) {
        let mut conn = t.conn();
        t.sql.reset();
        let mut insert_succeeded = false;
        let result = conn.transaction::<(), DieselError, _>(|c| {
            diesel::insert_into(posts::table)
                .values((
                    posts::id.eq(1i64),
                    posts::version.eq(1i64),
                    posts::user_id.eq(999i64),
                    posts::title.eq("orphan"),
                ))
                .execute(c)?;
            insert_succeeded = true;
            Ok(())
        });
        assert!(insert_succeeded, "the deferred FK must not fire at INSERT");
        let err = result.unwrap_err();
        assert!(
            matches!(err, DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _)),
            "{err:?}"
        );
        // The failing statement was the COMMIT.
        assert_eq!(t.sql.statements().last().map(String::as_str), Some("COMMIT"));
        // Nothing was written, and the connection is usable again.
        let posts: i64 = posts::table.count().get_result(&mut conn).unwrap();
        assert_eq!(posts, 0);
    }
}
