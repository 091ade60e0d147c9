//! Integer, `String` and UUID primary keys, and `i32` or `i64` versions, on every backend.

mod common;

use common::models::{Product, Tag};

backend_tests! {
    fn i32_keys(t) {
        let db = common::cached_db(t);
        db.transaction(|tx| tx.insert(&Product { id: 7, version: 1, sku: "SKU-7".into(), stock: 3 })).unwrap();
        t.sql.reset();
        assert_eq!(db.find::<Product>(7).unwrap().unwrap().sku, "SKU-7");
        assert_eq!(t.sql.count(), 0);
    }

    fn string_keys_with_renamed_id_and_version_fields(t) {
        let db = common::cached_db(t);
        let tag = db.transaction(|tx| tx.insert(&Tag { name: "rust".into(), rev: 1, label: "Rust".into() })).unwrap();
        let mut next = tag.clone();
        next.label = "Rust lang".into();
        let stored = db.transaction(|tx| tx.update(&next)).unwrap();
        assert_eq!(stored.rev, 2);
        t.sql.reset();
        assert_eq!(db.find::<Tag>(String::from("rust")).unwrap().unwrap().label, "Rust lang");
        assert_eq!(t.sql.count(), 0);
        assert!(matches!(db.transaction(|tx| tx.update(&tag)), Err(diesel_l2::Error::Conflict { expected: 1, found: Some(2), .. })));
    }

    only(sqlite, mysql)
    fn uuid_keys_stored_as_text(t) {
        use common::models::{TextDocument, UuidText};
        let db = diesel_l2::Db::builder(t.pool.clone()).cache::<TextDocument>().build().unwrap();
        let id = UuidText(uuid::Uuid::new_v4());
        let doc = db.transaction(|tx| tx.insert(&TextDocument { id, version: 1, title: "spec".into() })).unwrap();
        let mut next = doc.clone();
        next.title = "spec v2".into();
        db.transaction(|tx| tx.update(&next)).unwrap();
        db.evict::<TextDocument>(&id).unwrap();
        t.sql.reset();
        let rows = db.find_many::<TextDocument>(&[id, UuidText(uuid::Uuid::new_v4())]).unwrap();
        assert_eq!(rows[0].as_ref().unwrap().title, "spec v2");
        assert!(rows[1].is_none());
        assert_eq!(t.sql.selects(), 1, "{:?}", t.sql.statements());
    }

    only(postgres)
    fn native_uuid_keys(t) {
        use common::models::Document;
        let db = diesel_l2::Db::builder(t.pool.clone()).cache::<Document>().build().unwrap();
        let id = uuid::Uuid::new_v4();
        let doc = db.transaction(|tx| tx.insert(&Document { id, version: 1, title: "spec".into() })).unwrap();
        let mut next = doc.clone();
        next.title = "spec v2".into();
        db.transaction(|tx| tx.update(&next)).unwrap();
        db.evict::<Document>(&id).unwrap();
        let rows = db.find_many::<Document>(&[id, uuid::Uuid::new_v4()]).unwrap();
        assert_eq!(rows[0].as_ref().unwrap().title, "spec v2");
        assert!(rows[1].is_none());
        let stmts = t.sql.statements();
        assert!(stmts.iter().any(|s| s.contains("= ANY(")), "PostgreSQL batches with = ANY: {stmts:?}");
    }
}
