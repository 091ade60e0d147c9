//! `find_many`: hits from the cache, every miss in one query, results in input order with
//! duplicates repeated and missing ids as `None`.

mod common;

use std::sync::Arc;

use common::models::{Tag, User};

fn seed<C: diesel::r2d2::R2D2Connection + 'static>(
    t: &common::TestDb<C>,
    ids: impl IntoIterator<Item = i64>,
) {
    let values: Vec<String> = ids
        .into_iter()
        .map(|id| format!("({id}, 1, 'u{id}@example.com', 'U{id}')"))
        .collect();
    for chunk in values.chunks(500) {
        t.exec(&format!(
            "INSERT INTO users (id, version, email, name) VALUES {}",
            chunk.join(", ")
        ));
    }
    t.sql.reset();
}

fn ids(rows: &[Option<Arc<User>>]) -> Vec<Option<i64>> {
    rows.iter().map(|r| r.as_ref().map(|u| u.id)).collect()
}

backend_tests! {
    fn misses_load_in_one_query_in_input_order(t) {
        seed(t, 1..=5);
        let db = common::cached_db(t);
        let rows = db.find_many::<User>(&[5, 3, 99, 1, 3]).unwrap();
        assert_eq!(ids(&rows), vec![Some(5), Some(3), None, Some(1), Some(3)]);
        assert_eq!(t.sql.selects(), 1, "{:?}", t.sql.statements());
        assert!(Arc::ptr_eq(rows[1].as_ref().unwrap(), rows[4].as_ref().unwrap()), "a duplicate id yields the same row");
    }

    fn all_hits_run_no_sql(t) {
        seed(t, 1..=5);
        let db = common::cached_db(t);
        db.find_many::<User>(&[1, 2, 3, 4, 5, 6]).unwrap();
        t.sql.reset();
        let rows = db.find_many::<User>(&[6, 5, 4, 3, 2, 1]).unwrap();
        assert_eq!(ids(&rows), vec![None, Some(5), Some(4), Some(3), Some(2), Some(1)]);
        assert_eq!(t.sql.count(), 0, "{:?}", t.sql.statements());
        let s = db.stats();
        let r = s.region("users").unwrap();
        assert_eq!((r.hits, r.negative_hits, r.loads), (5, 1, 1));
    }

    fn mixed_hits_and_misses_query_only_the_misses(t) {
        seed(t, 1..=10);
        let db = common::cached_db(t);
        db.find::<User>(2).unwrap();
        db.find::<User>(4).unwrap();
        t.sql.reset();
        let rows = db.find_many::<User>(&[1, 2, 3, 4]).unwrap();
        assert_eq!(ids(&rows), vec![Some(1), Some(2), Some(3), Some(4)]);
        let stmts = t.sql.statements();
        assert_eq!(stmts.len(), 1, "{stmts:?}");
        assert!(!stmts[0].contains("-- binds: [1, 2, 3, 4]"), "cached ids are not queried: {stmts:?}");
    }

    fn a_thousand_misses_are_one_query(t) {
        seed(t, 1..=1000);
        let db = common::cached_db(t);
        let wanted: Vec<i64> = (1..=1000).rev().collect();
        let rows = db.find_many::<User>(&wanted).unwrap();
        assert_eq!(t.sql.selects(), 1);
        assert!(rows.iter().zip(&wanted).all(|(r, id)| r.as_ref().unwrap().id == *id));
        t.sql.reset();
        db.find_many::<User>(&wanted).unwrap();
        assert_eq!(t.sql.count(), 0, "the batch filled the cache");
    }

    fn string_keys_work_in_batches(t) {
        t.exec("INSERT INTO tags (id, version, label) VALUES ('rust', 1, 'Rust'), ('sql', 1, 'SQL')");
        t.sql.reset();
        let db = common::cached_db(t);
        let rows = db.find_many::<Tag>(&["sql".to_string(), "nope".to_string(), "rust".to_string()]).unwrap();
        let labels: Vec<Option<&str>> = rows.iter().map(|r| r.as_ref().map(|t| t.label.as_str())).collect();
        assert_eq!(labels, vec![Some("SQL"), None, Some("Rust")]);
        assert_eq!(t.sql.selects(), 1);
    }

    fn empty_input_runs_no_sql(t) {
        let db = common::cached_db(t);
        assert!(db.find_many::<User>(&[]).unwrap().is_empty());
        assert_eq!(t.sql.count(), 0);
    }
}

/// The query cache (C10): `Db::query` and `Db::query_keyed` keep a query's rows, unusable
/// after any committed write to a table the query reads, never filled by a load that raced
/// a write.
mod query_cache {
    use std::sync::mpsc;
    use std::sync::Arc;

    use diesel::prelude::*;
    use diesel_l2::{Db, Error, QueryKey};

    use crate::backend_tests;
    use crate::common;
    use crate::common::models::{Post, User};
    use crate::common::schema::{posts, users};

    fn seed<C: diesel::r2d2::R2D2Connection + 'static>(t: &common::TestDb<C>) {
        t.exec("INSERT INTO users (id, version, email, name) VALUES (1, 1, 'ada@example.com', 'Ada'), (2, 1, 'grace@example.com', 'Grace')");
        t.exec("INSERT INTO posts (id, version, user_id, title) VALUES (10, 1, 1, 'b'), (11, 1, 1, 'a'), (12, 1, 2, 'c')");
        t.sql.reset();
    }

    fn titles(rows: &[Arc<Post>]) -> Vec<&str> {
        rows.iter().map(|p| p.title.as_str()).collect()
    }

    backend_tests! {
        /// C10: a stored result is served with no SQL; each parameter is its own entry.
        fn a_cached_query_runs_no_sql_and_parameters_are_part_of_the_key(t) {
            seed(t);
            let db = common::cached_db(t);
            let q = |u: i64| posts::table.filter(posts::user_id.eq(u)).order(posts::title.asc()).select(Post::as_select());
            let first = db.query::<Post, _>(q(1)).unwrap();
            assert_eq!(titles(&first), ["a", "b"]);
            assert_eq!(t.sql.selects(), 1, "one statement loads the list: {:?}", t.sql.statements());
            t.sql.reset();
            let again = db.query::<Post, _>(q(1)).unwrap();
            assert!(Arc::ptr_eq(&first, &again), "a hit returns the stored list itself");
            assert_eq!(t.sql.count(), 0, "a hit runs no SQL: {:?}", t.sql.statements());
            let other = db.query::<Post, _>(q(2)).unwrap();
            assert_eq!(titles(&other), ["c"]);
            assert_eq!(t.sql.selects(), 1, "another parameter is another entry");
            let page = |off: i64| posts::table.order(posts::id.asc()).limit(1).offset(off).select(Post::as_select());
            assert_eq!(db.query::<Post, _>(page(0)).unwrap()[0].id, 10);
            assert_eq!(db.query::<Post, _>(page(1)).unwrap()[0].id, 11, "the page is part of the key");
            let stats = db.query_stats();
            assert_eq!((stats.hits, stats.misses, stats.fills), (1, 4, 4), "{stats:?}");
        }

        /// C10, C2: every committed write to a table the query reads (insert, an update of
        /// the column it is ordered by, delete) is seen by the next read; a write to a table
        /// it does not read leaves it cached.
        fn a_committed_write_to_a_read_table_makes_the_stored_result_unusable(t) {
            seed(t);
            let db = common::cached_db(t);
            let q = || posts::table.filter(posts::user_id.eq(1)).order(posts::title.asc()).select(Post::as_select());
            let joined = || posts::table.inner_join(users::table).filter(users::name.eq("Ada")).order(posts::id.asc()).select(Post::as_select());
            assert_eq!(titles(&db.query::<Post, _>(q()).unwrap()), ["a", "b"]);
            assert_eq!(db.query::<Post, _>(joined()).unwrap().len(), 2);
            db.transaction(|tx| tx.insert(&Post { id: 13, version: 1, user_id: 1, title: "0".into() })).unwrap();
            assert_eq!(titles(&db.query::<Post, _>(q()).unwrap()), ["0", "a", "b"], "the insert is seen");
            let mut moved = db.find::<Post>(10).unwrap().unwrap().as_ref().clone();
            moved.title = "z".into();
            db.transaction(|tx| tx.update(&moved)).unwrap();
            let read = db.query::<Post, _>(q()).unwrap();
            assert_eq!(titles(&read), ["0", "a", "z"], "re-ordered by the changed column");
            db.transaction(|tx| tx.delete(&*db.find::<Post>(11).unwrap().unwrap())).unwrap();
            assert_eq!(titles(&db.query::<Post, _>(q()).unwrap()), ["0", "z"], "the delete is seen");
            // A write to `users` leaves the posts-only result cached, not the join.
            assert_eq!(db.query::<Post, _>(joined()).unwrap().len(), 2);
            t.sql.reset();
            let mut ada = db.find::<User>(1).unwrap().unwrap().as_ref().clone();
            ada.name = "Ada L.".into();
            db.transaction(|tx| tx.update(&ada)).unwrap();
            t.sql.reset();
            db.query::<Post, _>(q()).unwrap();
            assert_eq!(t.sql.count(), 0, "no table of this query was written");
            assert!(db.query::<Post, _>(joined()).unwrap().is_empty(), "the join reads users: no Ada any more");
            assert_eq!(t.sql.selects(), 1);
            let stats = db.query_stats();
            assert!(stats.invalidations.iter().any(|(table, n)| table == "users" && *n >= 1), "{stats:?}");
        }

        /// C3 for queries: a load that a commit raced (the commit lands after the query
        /// read, before its result is stored) never fills; the next read sees the commit.
        fn a_query_that_raced_a_commit_never_fills(t) {
            seed(t);
            let db = common::cached_db(t);
            let writer = db.clone();
            let key = || QueryKey::new("posts-of").param(1).reads("posts");
            let rows = db.query_keyed::<Post, _>(key(), |conn| {
                let rows = posts::table.filter(posts::user_id.eq(1)).order(posts::id.asc()).select(Post::as_select()).load(conn)?;
                // Another connection commits an insert to the list after the read.
                writer.transaction(|tx| tx.insert(&Post { id: 14, version: 1, user_id: 1, title: "late".into() })).unwrap();
                Ok(rows)
            }).unwrap();
            assert_eq!(rows.len(), 2, "the load returns what it read");
            assert_eq!(db.query_stats().refused_fills, 1);
            t.sql.reset();
            let rows = db.query_keyed::<Post, _>(key(), |conn| {
                posts::table.filter(posts::user_id.eq(1)).order(posts::id.asc()).select(Post::as_select()).load(conn)
            }).unwrap();
            assert_eq!(rows.len(), 3, "the commit is seen: the raced result was not stored");
            assert_eq!(t.sql.selects(), 1);
        }

        /// C4 for queries: while a transaction holds an uncommitted write to a read table,
        /// stored results are not served and loads do not fill; its commit is seen at once.
        fn a_write_in_flight_blocks_fills_and_its_commit_is_seen(t) {
            seed(t);
            let db = common::cached_db(t);
            let q = || posts::table.filter(posts::user_id.eq(2)).select(Post::as_select());
            assert_eq!(db.query::<Post, _>(q()).unwrap().len(), 1);
            let (held_tx, held_rx) = mpsc::channel();
            let (go_tx, go_rx) = mpsc::channel::<()>();
            let writer = db.clone();
            let handle = std::thread::spawn(move || {
                writer.transaction(|tx| {
                    tx.insert(&Post { id: 15, version: 1, user_id: 2, title: "held".into() })?;
                    held_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    Ok(())
                })
            });
            held_rx.recv().unwrap();
            t.sql.reset();
            // Not committed yet: the stored result is unusable, the database still has one
            // row, and that load is not stored.
            assert_eq!(db.query::<Post, _>(q()).unwrap().len(), 1);
            assert_eq!(db.query::<Post, _>(q()).unwrap().len(), 1);
            assert_eq!(t.sql.selects(), 2, "no fill while the write is in flight: {:?}", t.sql.statements());
            go_tx.send(()).unwrap();
            handle.join().unwrap().unwrap();
            assert_eq!(db.query::<Post, _>(q()).unwrap().len(), 2, "the commit is seen");
            t.sql.reset();
            assert_eq!(db.query::<Post, _>(q()).unwrap().len(), 2);
            assert_eq!(t.sql.count(), 0, "filled again once no write is in flight");
        }

        /// The query cache is bounded (entries, bytes, ttl) and its settings are checked
        /// (C8).
        fn the_query_cache_is_bounded_and_its_settings_checked(t) {
            use diesel_l2::QueryCacheConfig;
            use std::time::Duration;
            seed(t);
            for (bad, what) in [
                (QueryCacheConfig::new().max_entries(0), "max_entries is 0"),
                (QueryCacheConfig::new().max_bytes(0), "max_bytes is 0"),
                (QueryCacheConfig::new().ttl(Duration::ZERO), "ttl is zero"),
            ] {
                match common::builder(t).query_cache(bad).build() {
                    Err(Error::Config(msg)) => assert!(msg.contains(what), "{msg}"),
                    other => panic!("expected a configuration error, got {:?}", other.map(|_| ())),
                }
            }
            let db = common::builder(t).query_cache(QueryCacheConfig::new().max_entries(2)).build().unwrap();
            for user in 0..6_i64 {
                db.query::<Post, _>(posts::table.filter(posts::user_id.eq(user)).select(Post::as_select())).unwrap();
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while db.query_stats().entries > 2 {
                assert!(std::time::Instant::now() < deadline, "{:?}", db.query_stats());
                let _ = db.query_stats();
                std::thread::sleep(Duration::from_millis(10));
            }
            let db = common::builder(t).query_cache(QueryCacheConfig::new().ttl(Duration::from_millis(50))).build().unwrap();
            let q = || posts::table.filter(posts::user_id.eq(1)).select(Post::as_select());
            db.query::<Post, _>(q()).unwrap();
            std::thread::sleep(Duration::from_millis(120));
            t.sql.reset();
            db.query::<Post, _>(q()).unwrap();
            assert_eq!(t.sql.selects(), 1, "the stored result expired");
        }

        /// C8: a query over a table no cached entity maps, or whose tables cannot be read
        /// from its SQL, is a configuration error that says what to do; a keyed raw query
        /// works.
        fn queries_over_unknown_tables_are_refused_and_keyed_queries_declare_theirs(t) {
            seed(t);
            let db = Db::builder(t.pool.clone()).cache::<Post>().build().unwrap();
            let joined = || posts::table.inner_join(users::table).select(Post::as_select());
            match db.query::<Post, _>(joined()) {
                Err(Error::Config(msg)) => assert!(msg.contains("`users`") && msg.contains(".cache::<E>()"), "{msg}"),
                other => panic!("expected a configuration error, got {other:?}"),
            }
            let key = || QueryKey::new("raw-titles").reads("posts");
            // A raw SQL condition: the key declares the table.
            let raw = || db.query_keyed::<Post, _>(key(), |conn| {
                posts::table
                    .filter(diesel::dsl::sql::<diesel::sql_types::Bool>("user_id = 1"))
                    .order(posts::id.asc())
                    .select(Post::as_select())
                    .load(conn)
            });
            assert_eq!(raw().unwrap().len(), 2);
            t.sql.reset();
            assert_eq!(raw().unwrap().len(), 2);
            assert_eq!(t.sql.count(), 0);
            db.transaction(|tx| tx.insert(&Post { id: 16, version: 1, user_id: 1, title: "x".into() })).unwrap();
            assert_eq!(raw().unwrap().len(), 3, "a declared table's write is seen");
            match db.query_keyed::<Post, _>(QueryKey::new("none"), |conn| posts::table.select(Post::as_select()).load(conn)) {
                Err(Error::Config(msg)) => assert!(msg.contains("QueryKey::reads"), "{msg}"),
                other => panic!("expected a configuration error, got {other:?}"),
            }
        }
    }
}
