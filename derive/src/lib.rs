//! `#[derive(Cached)]` for [diesel-l2](https://docs.rs/diesel-l2): use it through the
//! re-export `diesel_l2::Cached`; this crate is an implementation detail.

mod ast;
mod expand;
mod valid;

use proc_macro::TokenStream;

/// Makes a diesel model cacheable: derives `diesel_l2::CachedEntity` and, for every
/// backend diesel-l2 was built with, `diesel_l2::CachedOps` (the SQL that loads and writes
/// rows).
///
/// # Example
///
/// ```ignore
/// use diesel::prelude::*;
/// use diesel_l2::Cached;
///
/// diesel::table! {
///     users (id) {
///         id -> BigInt,
///         version -> BigInt,
///         email -> Text,
///         bio -> Nullable<Text>,
///     }
/// }
///
/// #[derive(Queryable, Selectable, Clone, Debug, Cached)]
/// #[diesel(table_name = users)]
/// #[cache(region = "users", ttl = "10m", tti = "5m", max_entries = 100_000, negative_ttl = "30s")]
/// pub struct User {
///     pub id: i64,
///     pub version: i64,
///     pub email: String,
///     pub bio: Option<String>,
/// }
/// ```
///
/// # Requirements
///
/// - A struct with named fields and no generic parameters, that also derives diesel's
///   `Queryable` and `Selectable`, and `Clone`.
/// - `#[diesel(table_name = path)]`: the module of the `table!` the struct maps to, like
///   `users` or `crate::schema::users`. Other `#[diesel(...)]` keys are left to diesel.
/// - Every field is a column of that table: the field name, or the name given by
///   `#[diesel(column_name = name)]` on the field. (`#[diesel(embed)]` and
///   `#[diesel(select_expression = ...)]` are not supported.)
/// - A primary key field: the field marked `#[cache(id)]`, else the field named `id`. Its
///   type becomes `CachedEntity::Id`.
/// - A version field: the field marked `#[cache(version)]`, else the field named
///   `version`. Its type must be `i32` or `i64`. Every write checks and bumps it.
/// - Every field type (except `#[cache(shallow)]` ones) implements `diesel_l2::HeapSize`
///   and `PartialEq`.
/// - SQL is generated for every backend diesel-l2 is built with, and applies where the
///   model's field types map: a model with a PostgreSQL-only column (`Uuid`, `Jsonb`, an
///   array) compiles with every backend feature on and works through a
///   `Db<PgConnection>`; used through a SQLite or MySQL `Db`, it is a compile error that
///   names the field type that does not map and the way out. diesel's own
///   `#[diesel(check_for_backend(diesel::pg::Pg))]` restricts the SQL to the backends it
///   names.
/// - Without `Selectable`, the first error says to add it.
///
/// # Struct attributes: `#[cache(...)]`
///
/// All optional; several `#[cache(...)]` attributes may be given, each key at most once.
///
/// | Key | Value | Default |
/// |-----|-------|---------|
/// | `region = "name"` | the region name, not empty, unique per `Db` | the table name |
/// | `ttl = "10m"` | time to live of an entry after it was written or loaded | no expiry |
/// | `tti = "5m"` | time to idle: an entry not read for this long expires | no idle expiry |
/// | `max_entries = 100_000` | the most entries kept (an integer > 0) | 10,000 |
/// | `max_bytes = "64MiB"` | the most estimated bytes kept: an integer, or a string with a unit `B`, `KiB`, `MiB`, `GiB` or `TiB` (> 0) | unset |
/// | `negative_ttl = "30s"` | how long "no such row" is remembered; `"off"` disables it | 30 seconds |
/// | `unique(tenant_id, email)` | a composite unique key: generates `{Struct}By{Fields}` (here `UserByTenantIdEmail(i64, String)`) for `Db::find_by`; may be repeated | none |
/// | `index(post_id, author_id)` | a composite index key (a cached collection): generates `{Struct}By{Fields}` (here `CommentByPostIdAuthorId(i64, i32)`) for `Db::find_all_by`, which lists the matching rows in id order; may be repeated | none |
/// | `shared` | keep the region in the shared (Redis) tier too, when the `Db` has one (`DbBuilder::shared_tier`); needs diesel-l2's `redis` feature and serde's `Serialize` and `Deserialize` on the struct | local only |
///
/// `max_entries` and `max_bytes` are exclusive: give one or the other.
///
/// Durations are an integer and a unit, greater than 0: `"500ms"`, `"30s"`, `"10m"`,
/// `"2h"`, `"1d"`.
///
/// The builder (`DbBuilder::cache_with`) may override any of these at run time.
///
/// # Field attributes: `#[cache(...)]`
///
/// | Attribute | Meaning |
/// |-----------|---------|
/// | `#[cache(id)]` | this field is the primary key (instead of the field named `id`) |
/// | `#[cache(version)]` | this field is the version column (instead of the field named `version`) |
/// | `#[cache(unique)]` | a one-column unique key: generates `{Struct}By{Field}` (for `email`, `UserByEmail(String)`), with the struct's visibility, for `Db::find_by`. The column must be unique in the database |
/// | `#[cache(index)]` | a one-column non-unique key, typically a foreign key: generates `{Struct}By{Field}` (for `post_id`, `CommentByPostId(i64)`) for `Db::find_all_by`, the cached list of the rows with that value (C10). A field cannot be both `unique` and `index` |
/// | `#[cache(shallow)]` | count only the inline size of this field when weighing rows for `max_bytes` (for types that do not implement `HeapSize`) |
///
/// # Generated SQL
///
/// On each enabled backend (SQLite, PostgreSQL, MySQL) the derive writes, without using
/// your `Insertable` or `AsChangeset`:
///
/// - `load_one`: `SELECT … WHERE id = ?`; `load_many`: `WHERE id IN (…)` (`= ANY(?)` on
///   PostgreSQL);
/// - `insert_row`: `INSERT` of every column (`None` writes `NULL`), `RETURNING` the row
///   (MySQL: reloaded by id);
/// - `update_row`: `UPDATE … SET <version and every other non-id column> WHERE id = ? AND
///   version = ?`, returning the row or `None` when the version did not match;
/// - `delete_row`: `DELETE … WHERE id = ? AND version = ?`.
#[proc_macro_derive(Cached, attributes(cache))]
pub fn derive_cached(input: TokenStream) -> TokenStream {
    derive_cached_inner(input.into()).into()
}

/// The derive on `proc_macro2` tokens: the expansion, or `compile_error!`s for every
/// problem found.
fn derive_cached_inner(input: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    match syn::parse2::<syn::DeriveInput>(input).and_then(|input| expand_input(&input)) {
        Ok(tokens) => tokens,
        Err(error) => error.to_compile_error(),
    }
}

/// Parses, validates and expands, combining every error found.
fn expand_input(input: &syn::DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let mut errors = ast::Errors::default();
    let model = ast::parse(input, &mut errors).and_then(|i| valid::validate(i, &mut errors));
    errors.finish()?;
    let model = model.ok_or_else(|| {
        syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[derive(Cached)] could not read this struct",
        )
    })?;
    Ok(expand::expand(&model))
}

#[cfg(test)]
mod tests;
