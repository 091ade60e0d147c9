//! The cached models the integration tests use, one per key and version shape.

use diesel::prelude::*;
use diesel_l2::Cached;

use super::schema::{
    accounts, articles, documents_text, follows, memos, note_lines, posts, products, tags, users,
};

/// `i64` id and version, a nullable column, a unique column. Serde, so that tests can
/// share it with `DbBuilder::shared` (C9).
#[derive(
    Queryable, Selectable, Clone, Debug, PartialEq, Cached, serde::Serialize, serde::Deserialize,
)]
#[diesel(table_name = users)]
#[cache(max_entries = 10_000)]
pub struct User {
    pub id: i64,
    pub version: i64,
    #[cache(unique)]
    pub email: String,
    pub name: String,
    /// A nullable non-unique key: `UserByBio(None)` lists the users without a bio (the
    /// history checker's list reads, C10).
    #[cache(index)]
    pub bio: Option<String>,
}

impl User {
    pub fn new(id: i64, name: &str) -> Self {
        User {
            id,
            version: 1,
            email: format!("{}-{id}@example.com", name.to_lowercase()),
            name: name.to_string(),
            bio: None,
        }
    }
}

/// A partial change of a [`User`]: only the fields that are `Some` are set.
#[derive(AsChangeset, Default, Clone, Debug)]
#[diesel(table_name = users)]
pub struct UserChanges {
    pub email: Option<String>,
    pub name: Option<String>,
}

/// `i32` id and `i32` version; in the shared tier by attribute when it is built (C9).
#[derive(
    Queryable, Selectable, Clone, Debug, PartialEq, Cached, serde::Serialize, serde::Deserialize,
)]
#[diesel(table_name = products)]
#[cfg_attr(feature = "redis", cache(shared))]
pub struct Product {
    pub id: i32,
    pub version: i32,
    pub sku: String,
    pub stock: i32,
}

/// `String` id, with the id and version found by attribute and a renamed column.
#[derive(
    Queryable, Selectable, Clone, Debug, PartialEq, Cached, serde::Serialize, serde::Deserialize,
)]
#[diesel(table_name = tags)]
pub struct Tag {
    #[cache(id)]
    #[diesel(column_name = id)]
    pub name: String,
    #[cache(version)]
    #[diesel(column_name = version)]
    pub rev: i64,
    pub label: String,
}

/// `String` id of any length, on a `table!` whose Rust name (`memos`) is not its SQL
/// name (`notes`).
#[derive(Queryable, Selectable, Clone, Debug, PartialEq, Cached)]
#[diesel(table_name = memos)]
pub struct Memo {
    pub id: String,
    pub version: i64,
    pub body: String,
}

impl Memo {
    /// A new memo at version 1.
    pub fn new(id: impl Into<String>, body: &str) -> Self {
        Memo {
            id: id.into(),
            version: 1,
            body: body.into(),
        }
    }
}

/// A child of a `Memo`, deleted with it by `ON DELETE CASCADE`.
#[derive(Queryable, Selectable, Clone, Debug, PartialEq, Cached)]
#[diesel(table_name = note_lines)]
pub struct NoteLine {
    pub id: i64,
    pub version: i64,
    pub note_id: String,
    pub line: String,
}

/// A composite unique key: `AccountByTenantIdEmail(tenant_id, email)`.
#[derive(Queryable, Selectable, Clone, Debug, PartialEq, Cached)]
#[diesel(table_name = accounts)]
#[cache(unique(tenant_id, email))]
pub struct Account {
    pub id: i64,
    pub version: i64,
    pub tenant_id: i64,
    pub email: String,
    pub plan: String,
}

/// Child rows whose foreign key is deferred on PostgreSQL; `PostByUserId(user_id)` lists a
/// user's posts and `PostByUserIdTitle(user_id, title)` those with one title (cached
/// collections, C10).
#[derive(Queryable, Selectable, Clone, Debug, PartialEq, Cached)]
#[diesel(table_name = posts)]
#[cache(index(user_id, title))]
pub struct Post {
    pub id: i64,
    pub version: i64,
    #[cache(index)]
    pub user_id: i64,
    pub title: String,
}

/// Database-generated id and defaults, inserted through [`NewArticle`].
#[derive(Queryable, Selectable, Clone, Debug, PartialEq, Cached)]
#[diesel(table_name = articles)]
pub struct Article {
    pub id: i64,
    pub version: i64,
    #[cache(unique)]
    pub slug: String,
    pub title: String,
    pub status: String,
    pub created_at: chrono::NaiveDateTime,
}

/// What the application supplies for a new [`Article`]: no id, version, status or date.
#[derive(Insertable, Clone, Debug)]
#[diesel(table_name = articles)]
pub struct NewArticle<'a> {
    pub slug: &'a str,
    pub title: &'a str,
}

/// A partial change of an [`Article`].
#[derive(AsChangeset, Clone, Debug)]
#[diesel(table_name = articles)]
pub struct ArticleChanges<'a> {
    pub title: Option<&'a str>,
    pub status: Option<&'a str>,
}

/// Native `UUID` key (PostgreSQL only).
#[cfg(feature = "postgres")]
#[derive(Queryable, Selectable, Clone, Debug, PartialEq, Cached)]
#[diesel(table_name = super::schema::documents)]
// No `check_for_backend`: a PostgreSQL-only model as applications write it. It compiles
// with every backend feature on and works through a `Db<PgConnection>` (issue 12, item 4).
pub struct Document {
    pub id: uuid::Uuid,
    pub version: i64,
    pub title: String,
}

/// UUID key stored as text (SQLite, MariaDB), through a newtype of the application's.
#[derive(Queryable, Selectable, Clone, Debug, PartialEq, Cached)]
#[diesel(table_name = documents_text)]
#[cfg_attr(
    feature = "mysql",
    diesel(check_for_backend(diesel::sqlite::Sqlite, diesel::mysql::Mysql))
)]
#[cfg_attr(
    not(feature = "mysql"),
    diesel(check_for_backend(diesel::sqlite::Sqlite))
)]
pub struct TextDocument {
    pub id: UuidText,
    pub version: i64,
    pub title: String,
}

/// A UUID mapped to a text column, as applications do on backends without a UUID type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, diesel::AsExpression, diesel::FromSqlRow)]
#[diesel(sql_type = diesel::sql_types::Text)]
pub struct UuidText(pub uuid::Uuid);

impl diesel_l2::HeapSize for UuidText {
    fn heap_size(&self) -> usize {
        0
    }
}

#[cfg(feature = "sqlite")]
mod sqlite_uuid {
    use diesel::deserialize::{self, FromSql};
    use diesel::serialize::{self, IsNull, Output, ToSql};
    use diesel::sql_types::Text;
    use diesel::sqlite::{Sqlite, SqliteValue};

    use super::UuidText;

    impl ToSql<Text, Sqlite> for UuidText {
        fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
            out.set_value(self.0.hyphenated().to_string());
            Ok(IsNull::No)
        }
    }

    impl FromSql<Text, Sqlite> for UuidText {
        fn from_sql(bytes: SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
            let s = <String as FromSql<Text, Sqlite>>::from_sql(bytes)?;
            Ok(UuidText(uuid::Uuid::parse_str(&s)?))
        }
    }
}

#[cfg(feature = "mysql")]
mod mysql_uuid {
    use std::io::Write;

    use diesel::deserialize::{self, FromSql};
    use diesel::mysql::{Mysql, MysqlValue};
    use diesel::serialize::{self, IsNull, Output, ToSql};
    use diesel::sql_types::Text;

    use super::UuidText;

    impl ToSql<Text, Mysql> for UuidText {
        fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Mysql>) -> serialize::Result {
            out.write_all(self.0.hyphenated().to_string().as_bytes())?;
            Ok(IsNull::No)
        }
    }

    impl FromSql<Text, Mysql> for UuidText {
        fn from_sql(bytes: MysqlValue<'_>) -> deserialize::Result<Self> {
            let s = <String as FromSql<Text, Mysql>>::from_sql(bytes)?;
            Ok(UuidText(uuid::Uuid::parse_str(&s)?))
        }
    }
}

/// A composite primary key, named by diesel's own `primary_key(...)` (a join table).
#[derive(Queryable, Selectable, Insertable, Identifiable, Clone, Debug, PartialEq, Cached)]
#[diesel(table_name = follows, primary_key(follower_id, followee_id))]
pub struct Follow {
    pub follower_id: i64,
    pub followee_id: i64,
    pub version: i64,
    pub note: String,
}

impl Follow {
    pub fn new(follower_id: i64, followee_id: i64, note: &str) -> Self {
        Follow {
            follower_id,
            followee_id,
            version: 1,
            note: note.to_string(),
        }
    }
}
