use diesel::prelude::*;
use diesel_l2::Cached;

diesel::table! {
    users (id) {
        id -> BigInt,
        version -> BigInt,
        email -> Text,
    }
}

#[derive(Queryable, Selectable, Clone, Cached)]
pub struct BlogPost {
    pub id: i64,
    pub version: i64,
    pub email: String,
}

fn main() {}
