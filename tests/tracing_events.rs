//! Observability: loads, commits, discarded buffers, conflicts, rejected fills and
//! evictions are reported through `tracing`.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::models::User;
use diesel_l2::Error;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

backend_tests! {
    fn events_describe_what_the_cache_did(t) {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let db = common::cached_db(t);
            let v1 = db.transaction(|tx| tx.insert(&User::new(1, "Ada"))).unwrap();
            db.evict::<User>(&1).unwrap();
            db.find::<User>(1).unwrap();
            let mut next = v1.clone();
            next.name = "v2".into();
            db.transaction(|tx| tx.update(&next)).unwrap();
            let _ = db.transaction(|tx| tx.update(&v1));
            let _ = db.transaction(|_tx| -> Result<(), Error> { Err(Error::Other("x".into())) });
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        for expected in [
            "transaction committed, cache buffer applied",
            "transaction did not commit, cache buffer discarded",
            "version conflict",
            "evict",
            "loaded from the database",
            "cache entry removed",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }
}
