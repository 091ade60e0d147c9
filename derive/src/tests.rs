//! Unit tests of the expansion and of the error messages.

use proc_macro2::TokenStream;
use quote::quote;

use crate::derive_cached_inner;
use crate::valid::{parse_bytes, parse_duration_ms};

/// The expansion as a string with whitespace removed, for `contains` checks.
fn expand(input: TokenStream) -> String {
    let out = derive_cached_inner(input);
    assert!(
        !out.to_string().contains("compile_error"),
        "unexpected error: {out}"
    );
    squash(&out.to_string())
}

fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// The error messages of an input that must fail.
fn errors(input: TokenStream) -> Vec<String> {
    let input: syn::DeriveInput = syn::parse2(input).expect("test input parses");
    match crate::expand_input(&input) {
        Ok(tokens) => panic!("expected errors, got {tokens}"),
        Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
    }
}

fn single_error(input: TokenStream) -> String {
    let errors = errors(input);
    assert_eq!(errors.len(), 1, "{errors:?}");
    errors.into_iter().next().unwrap()
}

fn user(attrs: TokenStream) -> TokenStream {
    quote! {
        #[derive(Queryable, Selectable, Clone, Debug, Cached)]
        #[diesel(table_name = users)]
        #attrs
        pub struct User { pub id: i64, pub version: i64, pub email: String, pub bio: Option<String> }
    }
}

#[test]
fn durations_and_sizes() {
    assert_eq!(parse_duration_ms("500ms"), Some(500));
    assert_eq!(parse_duration_ms("30s"), Some(30_000));
    assert_eq!(parse_duration_ms("10m"), Some(600_000));
    assert_eq!(parse_duration_ms("2h"), Some(7_200_000));
    assert_eq!(parse_duration_ms("1d"), Some(86_400_000));
    assert_eq!(parse_duration_ms("0s"), Some(0));
    for bad in [
        "10 minutes",
        "10",
        "m",
        "",
        "1.5s",
        "-1s",
        "10M",
        "99999999999999999999s",
    ] {
        assert_eq!(parse_duration_ms(bad), None, "{bad}");
    }
    assert_eq!(parse_bytes("1000B"), Some(1000));
    assert_eq!(parse_bytes("512KiB"), Some(512 * 1024));
    assert_eq!(parse_bytes("64MiB"), Some(64 << 20));
    assert_eq!(parse_bytes("1GiB"), Some(1 << 30));
    for bad in ["64MB", "64", "MiB", "64 MiB"] {
        assert_eq!(parse_bytes(bad), None, "{bad}");
    }
}

#[test]
fn expands_entity_with_defaults() {
    let out = expand(user(quote!()));
    for needle in [
        "const_:()=",
        "impl::diesel_l2::__private::CachedEntityforUser",
        "typeId=i64;",
        "constTABLE:&'staticstr=\"users\";",
        "letc=::diesel_l2::__private::RegionConfig::new(\"users\");c",
        "fnid(&self)->i64{::core::clone::Clone::clone(&self.id)}",
        "::core::convert::From::from(self.version)",
        "<i64as::core::convert::TryFrom<i64>>::try_from(version).ok()?",
        "::core::mem::size_of::<Self>()+::diesel_l2::__private::HeapSize::heap_size(&self.id)",
        "::diesel_l2::__with_sqlite!",
        "::diesel_l2::__with_postgres!",
        "::diesel_l2::__with_mysql!",
        "CachedOps<::diesel_l2::__private::diesel::sqlite::SqliteConnection>forUser",
        "CachedOps<::diesel_l2::__private::diesel::pg::PgConnection>forUser",
        "CachedOps<::diesel_l2::__private::diesel::mysql::MysqlConnection>forUser",
        "users::table.filter(users::id.eq(id)).select(<Useras::diesel_l2::__private::diesel::SelectableHelper<::diesel_l2::__private::diesel::sqlite::Sqlite>>::as_select()).first(conn).optional()",
        "users::table.filter(users::id.eq_any(ids))",
        "values((users::id.eq(&row.id),users::version.eq(&row.version),users::email.eq(&row.email),users::bio.eq(&row.bio),))",
        ".set((users::version.eq(&next.version),users::email.eq(&next.email),users::bio.eq(&next.bio),))",
        ".filter(users::id.eq(&current.id)).filter(users::version.eq(&current.version))",
        "::diesel_l2::__private::diesel::delete(users::table.filter(users::id.eq(id)).filter(users::version.eq(version)),).execute_in::<::diesel_l2::__private::diesel::sqlite::Sqlite,_>(conn)",
        // Each backend's SQL applies only where every field maps (issue 12, item 4).
        "wherefor<'__l>i64:::diesel_l2::__private::FieldMaps<<users::idas::diesel_l2::__private::diesel::Expression>::SqlType,::diesel_l2::__private::diesel::sqlite::Sqlite>",
    ] {
        assert!(out.contains(needle), "missing {needle} in\n{out}");
    }
    // No content comparison is generated: replays are recognised by operation id (C6).
    assert!(!out.contains("same_content"));
    // SQLite and PostgreSQL use RETURNING, MySQL reloads: insert and update of whole rows,
    // then insert_new, the versioned and unversioned partial update, update_where and
    // delete_where.
    assert_eq!(out.matches(".returning(").count(), 2 * (2 + 5));
    for needle in [
        "impl<__N>::diesel_l2::__private::InsertOps<::diesel_l2::__private::diesel::pg::PgConnection,__N>forUser",
        "impl<__Ch>::diesel_l2::__private::ChangesetOps<::diesel_l2::__private::diesel::sqlite::SqliteConnection,__Ch>forUser",
        "__Ch:::diesel_l2::__private::diesel::query_builder::AsChangeset<Target=users::table>",
        ".set((changes,users::version.eq(users::version+(1asi64))))",
        "impl<__F,__Ch>::diesel_l2::__private::UpdateWhereOps<::diesel_l2::__private::diesel::mysql::MysqlConnection,__F,__Ch>forUser",
        "impl<__F>::diesel_l2::__private::DeleteWhereOps<::diesel_l2::__private::diesel::mysql::MysqlConnection,__F>forUser",
        ".select(users::id).for_update().load(conn)?",
        "\"LAST_INSERT_ID(0)\"",
    ] {
        assert!(out.contains(needle), "missing {needle} in\n{out}");
    }
    assert!(out.contains(".execute_in::<::diesel_l2::__private::diesel::mysql::Mysql,_>(conn)?;<Selfas::diesel_l2::__private::CachedOps<::diesel_l2::__private::diesel::mysql::MysqlConnection>>::load_one(conn,&<Selfas::diesel_l2::__private::CachedEntity>::id(row))?.ok_or(::diesel_l2::__private::diesel::result::Error::NotFound)"));
}

#[test]
fn expands_all_settings() {
    let out = expand(user(quote! {
        #[cache(region = "people", ttl = "10m", tti = "5m", max_entries = 100_000, negative_ttl = "30s")]
    }));
    for needle in [
        "letmutc=::diesel_l2::__private::RegionConfig::new(\"people\");",
        "c.ttl=::core::option::Option::Some(::diesel_l2::__private::Duration::from_millis(600000u64));",
        "c.tti=::core::option::Option::Some(::diesel_l2::__private::Duration::from_millis(300000u64));",
        "c.max_entries=::core::option::Option::Some(100000u64);c.max_bytes=::core::option::Option::None;",
        "c.negative_ttl=::core::option::Option::Some(::diesel_l2::__private::Duration::from_millis(30000u64));",
    ] {
        assert!(out.contains(needle), "missing {needle} in\n{out}");
    }
    let out = expand(user(quote! {
        #[cache(max_bytes = "64MiB")]
        #[cache(negative_ttl = "off")]
    }));
    assert!(out.contains(
        "c.max_bytes=::core::option::Option::Some(67108864u64);c.max_entries=::core::option::Option::None;"
    ));
    assert!(out.contains("c.negative_ttl=::core::option::Option::None;"));
    let out = expand(user(quote!(#[cache(max_bytes = 1000)])));
    assert!(out.contains("c.max_bytes=::core::option::Option::Some(1000u64);"));
}

#[test]
fn renamed_id_version_and_columns() {
    let out = expand(quote! {
        #[derive(Queryable, Selectable, Clone, Cached)]
        #[diesel(table_name = crate::schema::accounts, primary_key(code), check_for_backend(diesel::sqlite::Sqlite))]
        struct Account {
            #[cache(id)]
            #[diesel(column_name = account_code)]
            code: String,
            #[diesel(deserialize_as = HashMap<String, i32>, column_name = "rev")]
            #[cache(version)]
            revision: i32,
            #[cache(shallow)]
            blob: Vec<u8>,
            r#type: String,
        }
    });
    for needle in [
        "typeId=String;",
        "constTABLE:&'staticstr=\"accounts\";",
        "RegionConfig::new(\"accounts\")",
        "&self.code",
        "From::from(self.revision)",
        "<i32as::core::convert::TryFrom<i64>>::try_from(version).ok()?",
        "crate::schema::accounts::table.filter(crate::schema::accounts::account_code.eq(id))",
        "crate::schema::accounts::rev.eq(&next.revision)",
        "crate::schema::accounts::r#type.eq(&next.r#type)",
        "fnload_many(conn:&mut::diesel_l2::__private::diesel::sqlite::SqliteConnection,ids:&[String],)",
    ] {
        assert!(out.contains(needle), "missing {needle} in\n{out}");
    }
    assert!(!out.contains("heap_size(&self.blob)"));
    assert!(out.contains("heap_size(&self.r#type)"));
}

#[test]
fn nests_long_tuples() {
    let extra: Vec<proc_macro2::Ident> = (0..20usize)
        .map(|i| quote::format_ident!("c{}", i))
        .collect();
    let out = expand(quote! {
        #[diesel(table_name = wide)]
        struct Wide { id: i64, version: i64, #(#extra: i32,)* }
    });
    // 22 insert values: a chunk of 16 and one of 6.
    assert!(out.contains("values(((wide::id.eq(&row.id),"), "{out}");
    assert!(
        out.contains("wide::c13.eq(&row.c13),),(wide::c14.eq(&row.c14),"),
        "{out}"
    );
    // 21 changes: 16 + 5.
    assert!(
        out.contains(".set(((wide::version.eq(&next.version),"),
        "{out}"
    );
}

#[test]
fn wrapper_turns_errors_into_compile_error() {
    let out = derive_cached_inner(quote!(
        enum E {
            A,
        }
    ));
    let out = out.to_string();
    assert!(out.contains("compile_error"), "{out}");
    assert!(out.contains("supports structs with named fields"), "{out}");
}

#[test]
fn shape_errors() {
    for input in [
        quote!(
            #[diesel(table_name = t)]
            enum E {
                A,
            }
        ),
        quote!(
            #[diesel(table_name = t)]
            struct S(i64, i64);
        ),
        quote!(
            #[diesel(table_name = t)]
            struct S;
        ),
        quote!(#[diesel(table_name = t)] union U { a: i64 }),
    ] {
        let e = single_error(input);
        assert!(
            e.starts_with("#[derive(Cached)] supports structs with named fields"),
            "{e}"
        );
    }
    let e = single_error(quote! {
        #[diesel(table_name = t)] struct S<T> { id: i64, version: i64, t: T }
    });
    assert!(e.contains("does not support generic parameters"), "{e}");
}

#[test]
fn missing_pieces() {
    let e = single_error(quote!(
        struct User {
            id: i64,
            version: i64,
        }
    ));
    assert!(
        e.starts_with("missing `#[diesel(table_name = ...)]`: #[derive(Cached)] needs the diesel table this struct maps to"),
        "{e}"
    );
    let e = single_error(quote!(
        #[diesel(table_name = users)]
        struct User {
            id: i64,
            v: i64,
        }
    ));
    assert!(
        e.starts_with("`#[derive(Cached)]` needs a version column: add a `version: i64` field or mark one with `#[cache(version)]`"),
        "{e}"
    );
    let e = single_error(quote!(
        #[diesel(table_name = users)]
        struct User {
            key: i64,
            version: i64,
        }
    ));
    assert!(e.contains("needs a primary key: add an `id` field"), "{e}");
    // All three at once.
    assert_eq!(
        errors(quote!(
            struct User {
                key: i64,
            }
        ))
        .len(),
        3
    );
}

#[test]
fn attribute_errors() {
    let e = single_error(user(quote!(#[cache(foo = 1)])));
    assert_eq!(
        e,
        "unknown `cache` attribute `foo`; expected one of: region, ttl, tti, max_entries, max_bytes, negative_ttl, unique, index, shared"
    );
    let e = single_error(user(quote!(#[cache(ttl = "10 minutes")])));
    assert_eq!(
        e,
        "invalid duration \"10 minutes\": write an integer and a unit, like \"500ms\", \"30s\", \"10m\", \"2h\" or \"1d\""
    );
    let e = single_error(user(quote!(#[cache(ttl = "0s")])));
    assert!(e.starts_with("`ttl` must be greater than 0"), "{e}");
    let e = single_error(user(quote!(#[cache(ttl = 10)])));
    assert!(e.contains("takes a string duration"), "{e}");
    let e = single_error(user(quote!(#[cache(ttl)])));
    assert!(e.starts_with("`ttl` needs a value"), "{e}");
    let e = single_error(user(quote!(#[cache(max_entries = 0)])));
    assert!(e.starts_with("`max_entries` must be greater than 0"), "{e}");
    let e = single_error(user(quote!(#[cache(max_bytes = "64MB")])));
    assert!(e.starts_with("invalid size \"64MB\""), "{e}");
    let e = single_error(user(quote!(#[cache(max_bytes = 0)])));
    assert!(e.starts_with("`max_bytes` must be greater than 0"), "{e}");
    let e = single_error(user(quote!(#[cache(max_entries = 10, max_bytes = "1MiB")])));
    assert!(
        e.starts_with("`max_entries` and `max_bytes` cannot both be set"),
        "{e}"
    );
    let e = single_error(user(quote!(#[cache(region = "")])));
    assert!(e.starts_with("`region` must not be empty"), "{e}");
    let e = single_error(user(quote!(#[cache(ttl = "1m")] #[cache(ttl = "2m")])));
    assert_eq!(e, "duplicate `cache` attribute `ttl`: remove one of them");
    let e = single_error(user(quote!(#[cache(id)])));
    assert!(e.starts_with("`id` is a field attribute"), "{e}");
    let e = single_error(user(quote!(#[cache(negative_ttl = "never")])));
    assert!(e.contains("or \"off\""), "{e}");
    // Several errors in one attribute are all reported.
    let all = errors(user(quote!(#[cache(foo, ttl = "x", max_entries = 0)])));
    assert_eq!(all.len(), 3, "{all:?}");
}

#[test]
fn field_errors() {
    let e = single_error(quote! {
        #[diesel(table_name = users)] struct User { id: i64, version: String }
    });
    assert_eq!(
        e,
        "the version field must be `i32` or `i64`, found `String`; write `version: i64`"
    );
    let e = single_error(quote! {
        #[diesel(table_name = users)] struct User { id: i64, version: Option<i64> }
    });
    assert!(e.contains("found `Option<i64>`"), "{e}");
    let e = single_error(quote! {
        #[diesel(table_name = users)]
        struct User { #[cache(id, version)] key: i64, other: i64 }
    });
    assert!(
        e.starts_with("a field cannot be both `#[cache(id)]` and `#[cache(version)]`"),
        "{e}"
    );
    // Two marked fields are a composite key; diesel's primary_key must agree with them.
    let out = expand(quote! {
        #[diesel(table_name = users)]
        struct User { #[cache(id)] a: i64, #[cache(id)] b: i64, version: i64 }
    });
    assert!(out.contains("typeId=(i64,i64,);"), "{out}");
    let e = single_error(quote! {
        #[diesel(table_name = users, primary_key(a, version))]
        struct User { #[cache(id)] a: i64, #[cache(id)] b: i64, version: i64 }
    });
    assert!(
        e.starts_with("the fields marked `#[cache(id)]` are not the fields of"),
        "{e}"
    );
    let e = single_error(quote! {
        #[diesel(table_name = users, primary_key(a, c))]
        struct User { a: i64, b: i64, version: i64 }
    });
    assert_eq!(
        e,
        "no field `c` in `User`: `#[diesel(primary_key(...))]` lists field names of this struct"
    );
    let e = single_error(quote! {
        #[diesel(table_name = users)]
        struct User { id: i64, #[cache(versoin)] version: i64 }
    });
    assert_eq!(
        e,
        "unknown `cache` field attribute `versoin`; did you mean `version`? expected one of: id, version, shallow, unique, index"
    );
    let e = single_error(quote! {
        #[diesel(table_name = users)]
        struct User { #[cache(id = true)] id: i64, version: i64 }
    });
    assert_eq!(e, "`id` takes no value: write `#[cache(id)]`");
    let e = single_error(quote! {
        #[diesel(table_name = users)]
        struct User { id: i64, #[cache(ttl = "1m")] version: i64 }
    });
    assert!(e.starts_with("`ttl` is a struct attribute"), "{e}");
    let e = single_error(quote! {
        #[diesel(table_name = users)]
        struct User { id: i64, version: i64, #[diesel(embed)] other: Other }
    });
    assert!(e.contains("does not support `#[diesel(embed)]`"), "{e}");
}

#[test]
fn unique_keys_generate_named_key_types() {
    let out = expand(quote! {
        #[diesel(table_name = accounts)]
        #[cache(unique(tenant_id, email))]
        pub struct Account { id: i64, version: i64, tenant_id: i64, #[cache(unique)] login: String, email: String }
    });
    assert!(out.contains("pubstructAccountByLogin(pubString);"), "{out}");
    assert!(
        out.contains("pubstructAccountByTenantIdEmail(pubi64,pubString);"),
        "{out}"
    );
    assert!(out.contains("keys.add::<AccountByLogin>();"), "{out}");
    assert!(out.contains("accounts::tenant_id.eq(&key.0)"), "{out}");
    assert!(out.contains("accounts::email.eq(&key.1)"), "{out}");
}

/// C7/C3: keys with a text column are marked `TEXTUAL` (MariaDB collations may compare them
/// loosely, so their "not found" is not cached there); numbers, booleans and UUIDs are not.
#[test]
fn unique_keys_say_whether_a_collation_may_compare_them() {
    let out = expand(quote! {
        #[diesel(table_name = accounts)]
        #[cache(unique(tenant_id, email), unique(tenant_id, seat))]
        pub struct Account { id: i64, version: i64, tenant_id: i64, seat: Option<i32>, #[cache(unique)] login: String, #[cache(unique)] token: uuid::Uuid, email: String }
    });
    let textual = |key: &str| {
        let at = out
            .find(&format!("impl::diesel_l2::__private::UniqueKeyfor{key}"))
            .unwrap_or_else(|| panic!("no UniqueKey impl for {key}: {out}"));
        let rest = &out[at..];
        let c = rest
            .find("constTEXTUAL:bool=")
            .expect("TEXTUAL is generated")
            + 18;
        rest[c..].starts_with("true;")
    };
    assert!(textual("AccountByLogin"));
    assert!(textual("AccountByTenantIdEmail"));
    assert!(!textual("AccountByToken"));
    assert!(!textual("AccountByTenantIdSeat"));
}

#[test]
fn unique_key_errors() {
    let e = single_error(quote! {
        #[diesel(table_name = users)]
        #[cache(unique(tenant, email))]
        struct User { id: i64, version: i64, email: String }
    });
    assert_eq!(
        e,
        "no field `tenant` in `User`: `unique(...)` lists field names of this struct"
    );
    let e = single_error(quote! {
        #[diesel(table_name = users)]
        #[cache(unique)]
        struct User { id: i64, version: i64, email: String }
    });
    assert!(
        e.starts_with("on the struct, `unique` lists the fields of a composite key"),
        "{e}"
    );
}

/// C10: `#[cache(index)]` and `#[cache(index(a, b))]` generate `{Entity}By{Fields}` key
/// types, register them as collections, and load a key's rows ordered by id.
#[test]
fn index_keys_generate_named_key_types_and_ordered_loads() {
    let out = expand(quote! {
        #[diesel(table_name = comments)]
        #[cache(index(post_id, author_id))]
        pub struct Comment { id: i64, version: i64, #[cache(index)] post_id: i64, author_id: i32, body: String }
    });
    assert!(out.contains("pubstructCommentByPostId(pubi64);"), "{out}");
    assert!(
        out.contains("pubstructCommentByPostIdAuthorId(pubi64,pubi32);"),
        "{out}"
    );
    assert!(out.contains("keys.index::<CommentByPostId>();"), "{out}");
    assert!(
        out.contains("keys.index::<CommentByPostIdAuthorId>();"),
        "{out}"
    );
    assert!(
        out.contains("impl::diesel_l2::__private::IndexKeyforCommentByPostId"),
        "{out}"
    );
    assert!(out.contains("comments::author_id.eq(&key.1)"), "{out}");
    assert!(out.contains(".order_by(comments::id.asc())"), "{out}");
    assert!(!out.contains("UniqueKeyforCommentByPostId"), "{out}");
    // Remote changes carry the index columns (C7, C10), read back with `from_text`.
    assert!(out.contains(".with_index_keys(&[&["), "{out}");
    assert!(out.contains("fnfrom_text("), "{out}");
}

#[test]
fn index_key_errors() {
    let e = single_error(quote! {
        #[diesel(table_name = comments)]
        #[cache(index(post))]
        struct Comment { id: i64, version: i64, post_id: i64 }
    });
    assert_eq!(
        e,
        "no field `post` in `Comment`: `index(...)` lists field names of this struct"
    );
    let e = single_error(quote! {
        #[diesel(table_name = comments)]
        #[cache(index)]
        struct Comment { id: i64, version: i64, post_id: i64 }
    });
    assert!(
        e.starts_with("on the struct, `index` lists the fields of a composite key"),
        "{e}"
    );
    let e = single_error(quote! {
        #[diesel(table_name = comments)]
        struct Comment { id: i64, version: i64, #[cache(unique, index)] post_id: i64 }
    });
    assert!(
        e.starts_with("`CommentByPostId` is declared both `unique` and `index`"),
        "{e}"
    );
}

/// `#[cache(shared)]` puts the shared tier's codec in the impl (C9); every entity gets a
/// shape fingerprint, which changes with a field's name or type and nothing else.
#[test]
fn shared_and_shape() {
    let shared = expand(user(quote!(#[cache(shared)])));
    assert!(
        shared.contains("::diesel_l2::__shared_codec!();"),
        "{shared}"
    );
    let local = expand(user(quote!()));
    assert!(!local.contains("__shared_codec"), "{local}");
    let shape = |s: &str| {
        let at = s.find("constSHAPE:u64=").expect("a SHAPE") + "constSHAPE:u64=".len();
        s[at..].split(';').next().unwrap().to_string()
    };
    assert_eq!(
        shape(&shared),
        shape(&local),
        "settings are not part of the shape"
    );
    let renamed = expand(quote! {
        #[derive(Queryable, Selectable, Clone, Debug, Cached)]
        #[diesel(table_name = users)]
        pub struct User { pub id: i64, pub version: i64, pub mail: String, pub bio: Option<String> }
    });
    let retyped = expand(quote! {
        #[derive(Queryable, Selectable, Clone, Debug, Cached)]
        #[diesel(table_name = users)]
        pub struct User { pub id: i64, pub version: i64, pub email: String, pub bio: String }
    });
    assert_ne!(shape(&renamed), shape(&local));
    assert_ne!(shape(&retyped), shape(&local));

    let e = single_error(user(quote!(#[cache(shared = true)])));
    assert!(e.starts_with("`shared` takes no value"), "{e}");
    let e = single_error(user(quote!(#[cache(shared, shared)])));
    assert!(e.starts_with("duplicate `cache` attribute `shared`"), "{e}");
    let e = single_error(user(quote!(#[cache(redis)])));
    assert!(e.contains("did you mean `shared`?"), "{e}");
}
