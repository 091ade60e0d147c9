// A model without `Selectable`: the first error says what to add (issue 12, item 8).
use diesel::prelude::*;
use diesel_l2::Cached;

diesel::table! {
    users (id) {
        id -> BigInt,
        version -> BigInt,
        email -> Text,
    }
}

#[derive(Queryable, Clone, Cached)]
#[diesel(table_name = users)]
pub struct User {
    pub id: i64,
    pub version: i64,
    pub email: String,
}

fn main() {}
