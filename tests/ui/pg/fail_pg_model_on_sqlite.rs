// A PostgreSQL-only model (a `Uuid` key, no `check_for_backend`) compiles with every
// backend feature on; using it through a SQLite `Db` names the column type that does not
// map and the way out (issue 12, item 4).
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::sqlite::SqliteConnection;
use diesel_l2::{Cached, Db};

diesel::table! {
    documents (id) {
        id -> Uuid,
        version -> BigInt,
        title -> Text,
    }
}

#[derive(Queryable, Selectable, Clone, Debug, Cached)]
#[diesel(table_name = documents)]
pub struct Document {
    pub id: uuid::Uuid,
    pub version: i64,
    pub title: String,
}

fn main() {
    let pool = Pool::builder()
        .build(ConnectionManager::<SqliteConnection>::new(":memory:"))
        .unwrap();
    let db = Db::builder(pool).cache::<Document>().build().unwrap();
    let _ = db.find::<Document>(uuid::Uuid::nil());
}
