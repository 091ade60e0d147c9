//! Warm-up: preload a region from a diesel query, fenced like any fill.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use common::models::User;
use common::schema::users;
use diesel::prelude::*;
use diesel_l2::Error;

fn seed<C: diesel::r2d2::R2D2Connection + 'static>(t: &common::TestDb<C>) {
    let values: Vec<String> = (1..=100)
        .map(|i| format!("({i}, 1, 'u{i}@x', 'U{i}')"))
        .collect();
    t.exec(&format!(
        "INSERT INTO users (id, version, email, name) VALUES {}",
        values.join(", ")
    ));
    t.sql.reset();
}

backend_tests! {
    fn warm_up_preloads_the_most_recent_rows(t) {
        seed(t);
        let db = common::cached_db(t);
        let report = db
            .warm_up::<User>(|c| users::table.order(users::id.desc()).limit(20).select(User::as_select()).load(c))
            .unwrap();
        assert_eq!((report.queries, report.loaded, report.filled, report.refused), (1, 20, 20, 0));
        t.sql.reset();
        let rows = db.find_many::<User>(&(81..=100).collect::<Vec<_>>()).unwrap();
        assert!(rows.iter().all(Option::is_some));
        assert_eq!(t.sql.count(), 0, "the warmed rows are hits");
        assert_eq!(db.stats().region("users").unwrap().warmed, 20);
    }

    fn a_write_racing_with_the_warm_up_query_is_not_overwritten(t) {
        seed(t);
        let db = common::cached_db(t);
        let attempts = AtomicU32::new(0);
        let report = db
            .warm_up::<User>(|c| {
                let rows = users::table.order(users::id.asc()).limit(10).select(User::as_select()).load(c)?;
                if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                    // After the query read row 1 at v1, another transaction commits v2.
                    let mut v2 = rows[0].clone();
                    v2.name = "written during warm-up".into();
                    db.transaction(|tx| tx.update(&v2)).map_err(|e| match e {
                        Error::Database(d) => d,
                        other => panic!("{other}"),
                    })?;
                }
                Ok(rows)
            })
            .unwrap();
        assert_eq!(report.queries, 2, "the raced query was run again: {report:?}");
        // The first query filled the nine rows nobody wrote; the tenth, refused, was put by
        // the transaction's own commit, which the second query's fill finds in place.
        assert_eq!((report.filled, report.refused), (9, 0), "{report:?}");
        assert_eq!(db.stats().region("users").unwrap().rejected_stale_fills, 1, "C3 per row: only the row the write touched was refused");
        let one = db.find::<User>(1).unwrap().unwrap();
        assert_eq!((one.version, one.name.as_str()), (2, "written during warm-up"), "C3: v1 never landed");
    }
}
