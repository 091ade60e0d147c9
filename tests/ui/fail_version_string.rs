use diesel::prelude::*;
use diesel_l2::Cached;

diesel::table! {
    users (id) {
        id -> BigInt,
        version -> Text,
        email -> Text,
    }
}

#[derive(Queryable, Selectable, Clone, Cached)]
#[diesel(table_name = users)]
pub struct User {
    pub id: i64,
    pub version: String,
}

fn main() {}
