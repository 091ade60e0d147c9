//! `diesel::table!` declarations matching `migrations/<backend>/`.
//!
//! Written by hand (not `diesel print-schema`) because one file has to serve
//! all three backends: the only type that differs is `documents.id`, so that
//! table is declared twice under two Rust names.

diesel::table! {
    /// `i64` key, nullable column, unique `email`.
    users (id) {
        id -> BigInt,
        version -> BigInt,
        #[max_length = 255]
        email -> Varchar,
        #[max_length = 255]
        name -> Varchar,
        bio -> Nullable<Text>,
    }
}

diesel::table! {
    /// `i32` key and `i32` version.
    products (id) {
        id -> Integer,
        version -> Integer,
        #[max_length = 64]
        sku -> Varchar,
        stock -> Integer,
    }
}

diesel::table! {
    /// String key.
    tags (id) {
        #[max_length = 64]
        id -> Varchar,
        version -> BigInt,
        label -> Text,
    }
}

// Native UUID column: only PostgreSQL has one, and diesel's `Uuid` SQL type
// only exists with diesel's `uuid` feature (enabled by our `postgres` feature).
#[cfg(feature = "postgres")]
diesel::table! {
    /// The `documents` table as PostgreSQL sees it (`UUID` key).
    documents (id) {
        id -> Uuid,
        version -> BigInt,
        title -> Text,
    }
}

diesel::table! {
    /// The same `documents` table as SQLite (`TEXT`) and MariaDB (`CHAR(36)`)
    /// see it: the key is the hyphenated UUID string.
    #[sql_name = "documents"]
    documents_text (id) {
        id -> Text,
        version -> BigInt,
        title -> Text,
    }
}

diesel::table! {
    /// Child of `users`; the FK is DEFERRABLE INITIALLY DEFERRED on PostgreSQL.
    posts (id) {
        id -> BigInt,
        version -> BigInt,
        user_id -> BigInt,
        title -> Text,
    }
}

diesel::joinable!(posts -> users (user_id));
diesel::allow_tables_to_appear_in_same_query!(users, posts);

diesel::table! {
    /// Composite unique key (tenant_id, email).
    accounts (id) {
        id -> BigInt,
        version -> BigInt,
        tenant_id -> BigInt,
        #[max_length = 255]
        email -> Varchar,
        plan -> Text,
    }
}

diesel::table! {
    /// Database-generated id (`BIGSERIAL` / `AUTO_INCREMENT` / `INTEGER PRIMARY KEY`)
    /// and column defaults (`version`, `status`, `created_at`).
    articles (id) {
        id -> BigInt,
        version -> BigInt,
        #[max_length = 255]
        slug -> Varchar,
        title -> Text,
        #[max_length = 32]
        status -> Varchar,
        created_at -> Timestamp,
    }
}

diesel::table! {
    /// Text key of any length; the Rust name differs from the SQL name `notes` (C7
    /// routes notifications by the SQL name).
    #[sql_name = "notes"]
    memos (id) {
        id -> Text,
        version -> BigInt,
        body -> Text,
    }
}

diesel::table! {
    /// Children of `notes`, deleted by an `ON DELETE CASCADE` foreign key.
    note_lines (id) {
        id -> BigInt,
        version -> BigInt,
        note_id -> Text,
        line -> Text,
    }
}

diesel::table! {
    /// A join table with a composite primary key.
    follows (follower_id, followee_id) {
        follower_id -> BigInt,
        followee_id -> BigInt,
        version -> BigInt,
        #[max_length = 255]
        note -> Varchar,
    }
}
