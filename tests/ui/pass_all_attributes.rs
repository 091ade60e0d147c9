use std::time::Duration;

use diesel::prelude::*;
use diesel_l2::Cached;

diesel::table! {
    users (id) {
        id -> BigInt,
        version -> BigInt,
        email -> Text,
    }
}

diesel::table! {
    sessions (id) {
        id -> BigInt,
        version -> Integer,
        token -> Text,
    }
}

#[derive(Queryable, Selectable, Clone, Debug, Cached)]
#[diesel(table_name = users)]
#[cache(
    region = "people",
    ttl = "10m",
    tti = "5m",
    max_entries = 100_000,
    negative_ttl = "30s"
)]
pub struct User {
    pub id: i64,
    pub version: i64,
    pub email: String,
}

#[derive(Queryable, Selectable, Clone, Debug, Cached)]
#[diesel(table_name = sessions)]
#[cache(ttl = "500ms", tti = "1d")]
#[cache(max_bytes = "64MiB", negative_ttl = "off")]
pub struct Session {
    pub id: i64,
    pub version: i32,
    pub token: String,
}

fn main() {
    let c = <User as diesel_l2::CachedEntity>::cache_config();
    assert!(c.name == "people");
    assert!(c.ttl == Some(Duration::from_secs(600)));
    assert!(c.tti == Some(Duration::from_secs(300)));
    assert!(c.max_entries == Some(100_000));
    assert!(c.max_bytes.is_none());
    assert!(c.negative_ttl == Some(Duration::from_secs(30)));

    let c = <Session as diesel_l2::CachedEntity>::cache_config();
    assert!(c.name == "sessions");
    assert!(c.ttl == Some(Duration::from_millis(500)));
    assert!(c.tti == Some(Duration::from_secs(86_400)));
    assert!(c.max_entries.is_none());
    assert!(c.max_bytes == Some(64 * 1024 * 1024));
    assert!(c.negative_ttl.is_none());
}
