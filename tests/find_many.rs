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
