use diesel::prelude::*;
use diesel_l2::Cached;

diesel::table! {
    users (key) {
        key -> BigInt,
        other -> BigInt,
        both -> BigInt,
        version -> BigInt,
        email -> Text,
    }
}

#[derive(Queryable, Selectable, Clone, Cached)]
#[diesel(table_name = users)]
pub struct User {
    #[cache(id)]
    pub key: i64,
    #[cache(id)]
    pub other: i64,
    #[cache(id, version)]
    pub both: i64,
    #[cache(versoin)]
    pub version: i64,
    pub email: String,
}

fn main() {}
