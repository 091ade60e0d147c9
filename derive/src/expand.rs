//! Expansion: the `CachedEntity` impl and one `CachedOps` impl per backend.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use crate::valid::Model;

/// The most elements put in one tuple of `.eq()`s; longer lists are nested in chunks so
/// they stay within diesel's tuple impls.
const CHUNK: usize = 16;

/// The diesel backends the derive writes SQL for.
#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
    Mysql,
}

impl Backend {
    /// The `__with_*` macro that keeps the impl only when diesel-l2 has the feature.
    fn gate(self) -> TokenStream {
        match self {
            Backend::Sqlite => quote!(::diesel_l2::__with_sqlite),
            Backend::Postgres => quote!(::diesel_l2::__with_postgres),
            Backend::Mysql => quote!(::diesel_l2::__with_mysql),
        }
    }

    fn connection(self) -> TokenStream {
        match self {
            Backend::Sqlite => quote!(::diesel_l2::__private::diesel::sqlite::SqliteConnection),
            Backend::Postgres => quote!(::diesel_l2::__private::diesel::pg::PgConnection),
            Backend::Mysql => quote!(::diesel_l2::__private::diesel::mysql::MysqlConnection),
        }
    }

    fn backend(self) -> TokenStream {
        match self {
            Backend::Sqlite => quote!(::diesel_l2::__private::diesel::sqlite::Sqlite),
            Backend::Postgres => quote!(::diesel_l2::__private::diesel::pg::Pg),
            Backend::Mysql => quote!(::diesel_l2::__private::diesel::mysql::Mysql),
        }
    }

    /// The last segment of the backend type's path, as `check_for_backend` names it.
    fn type_name(self) -> &'static str {
        match self {
            Backend::Sqlite => "Sqlite",
            Backend::Postgres => "Pg",
            Backend::Mysql => "Mysql",
        }
    }

    fn has_returning(self) -> bool {
        !matches!(self, Backend::Mysql)
    }
}

/// Wraps `items` in a tuple, nesting chunks of at most [`CHUNK`] when there are more.
fn tuple(items: Vec<TokenStream>) -> TokenStream {
    if items.len() <= CHUNK {
        return quote!((#(#items,)*));
    }
    let chunks: Vec<TokenStream> = items
        .chunks(CHUNK)
        .map(|chunk| quote!((#(#chunk,)*)))
        .collect();
    tuple(chunks)
}

/// The whole expansion for a validated model.
pub(crate) fn expand(model: &Model) -> TokenStream {
    let ident = &model.ident;
    let entity = entity_impl(model);
    let ops: Vec<TokenStream> = [Backend::Sqlite, Backend::Postgres, Backend::Mysql]
        .into_iter()
        // `check_for_backend` restricts a model to some backends (say, a PostgreSQL-only
        // column type): SQL for the others would not type-check.
        .filter(|b| {
            model
                .backends
                .as_ref()
                .is_none_or(|names| names.iter().any(|n| n == b.type_name()))
        })
        .map(|backend| {
            let ops = ops_impl(model, backend);
            let unique = unique_ops(model, backend);
            let index = index_ops(model, backend);
            let partial = partial_ops(model, backend);
            quote!(#ops #unique #index #partial)
        })
        .collect();
    let unique_types = unique_types(model);
    let index_types = index_types(model);
    quote! {
        #unique_types
        #index_types
        #[allow(non_local_definitions, clippy::all)]
        const _: () = {
            // One clear error first for a model without `Selectable` (the SQL needs it).
            fn __diesel_l2_selectable<__DB: ::diesel_l2::__private::diesel::backend::Backend>() {
                ::diesel_l2::__private::assert_selectable::<#ident, __DB>();
            }
            #entity
            #(#ops)*
        };
    }
}

/// The bounds that keep one backend's SQL for the columns that map to it: per field,
/// `for<'__l> Field: FieldMaps<SqlType, DB>` and `for<'__l> DB: SqlTypeMaps<SqlType>`.
/// A bound that does not hold (a PostgreSQL `Uuid` on SQLite) does not stop the model
/// from compiling (the `for<'__l>` keeps rustc from judging it where it is written); the
/// impl then does not apply, and using the model with that backend reports the field
/// type through the traits' `on_unimplemented` messages.
fn maps_bounds(model: &Model, backend: Backend) -> TokenStream {
    let table = &model.table;
    let db = backend.backend();
    let d = quote!(::diesel_l2::__private::diesel);
    let p = quote!(::diesel_l2::__private);
    let bounds = model.fields.iter().filter(|f| !f.mapped_as).map(|f| {
        let (ty, col) = (&f.ty, &f.column);
        let st = quote!(<#table::#col as #d::Expression>::SqlType);
        quote! {
            for<'__l> #ty: #p::FieldMaps<#st, #db>,
            for<'__l> #db: #p::SqlTypeMaps<#st>,
        }
    });
    quote!(#(#bounds)*)
}

/// What the statements select and return: the model's `Selectable` columns. (A flat
/// tuple of the columns would spare the `Selectable`, but names no backend: rustc then
/// infers a PostgreSQL-only field's backend inside the SQLite impl and rejects it.)
fn select_expr(model: &Model, db: &TokenStream) -> TokenStream {
    let d = quote!(::diesel_l2::__private::diesel);
    let ident = &model.ident;
    quote!(<#ident as #d::SelectableHelper<#db>>::as_select())
}

fn returning_expr(model: &Model, db: &TokenStream) -> TokenStream {
    let d = quote!(::diesel_l2::__private::diesel);
    let ident = &model.ident;
    quote!(<#ident as #d::SelectableHelper<#db>>::as_returning())
}

fn duration(ms: u64) -> TokenStream {
    quote!(::diesel_l2::__private::Duration::from_millis(#ms))
}

/// The most ids of a composite key matched by one `(a = ? AND b = ?) OR …` predicate.
const COMPOSITE_CHUNK: usize = 64;

/// The id's Rust type: the key field's type, or the tuple of a composite key's types.
fn id_type(model: &Model) -> TokenStream {
    let tys: Vec<_> = model.id_fields().map(|f| &f.ty).collect();
    if model.composite() {
        quote!((#(#tys,)*))
    } else {
        let ty = tys[0];
        quote!(#ty)
    }
}

/// The owned id of `row` (an expression of type `&Self`).
fn id_of(model: &Model, row: &TokenStream) -> TokenStream {
    let members: Vec<_> = model.id_fields().map(|f| &f.member).collect();
    if model.composite() {
        quote!((#(::core::clone::Clone::clone(&#row.#members),)*))
    } else {
        let m = members[0];
        quote!(::core::clone::Clone::clone(&#row.#m))
    }
}

/// `.filter(t::id.eq(<id>))` for the id expression `id` (of type `&Id`): one filter per
/// key column.
fn id_filters(model: &Model, id: &TokenStream) -> TokenStream {
    let table = &model.table;
    if model.composite() {
        let filters = model.id_fields().enumerate().map(|(pos, f)| {
            let c = &f.column;
            let pos = syn::Index::from(pos);
            quote!(.filter(#table::#c.eq(&(#id).#pos)))
        });
        quote!(#(#filters)*)
    } else {
        let c = &model.fields[model.ids[0]].column;
        quote!(.filter(#table::#c.eq(#id)))
    }
}

/// `.filter(t::id.eq(&row.id))`: one filter per key column, on the fields of `row` (a
/// `&Self` expression).
fn row_filters(model: &Model, row: &TokenStream) -> TokenStream {
    let table = &model.table;
    let filters = model.id_fields().map(|f| {
        let (c, m) = (&f.column, &f.member);
        quote!(.filter(#table::#c.eq(&#row.#m)))
    });
    quote!(#(#filters)*)
}

/// The key columns, as `returning`/`select` take them: `t::id` or `(t::a, t::b)`.
fn id_columns(model: &Model) -> TokenStream {
    let table = &model.table;
    let cols: Vec<_> = model.id_fields().map(|f| &f.column).collect();
    if model.composite() {
        quote!((#(#table::#cols,)*))
    } else {
        let c = cols[0];
        quote!(#table::#c)
    }
}

/// For a composite key: statements that set `pred` to a boxed
/// `(a = ? AND b = ?) OR …` predicate matching the ids of the slice `chunk`.
fn composite_predicate(model: &Model, db: &TokenStream, chunk: &TokenStream) -> TokenStream {
    let table = &model.table;
    let d = quote!(::diesel_l2::__private::diesel);
    let one = |id: TokenStream| {
        let mut parts = model.id_fields().enumerate().map(|(pos, f)| {
            let c = &f.column;
            let pos = syn::Index::from(pos);
            quote!(#table::#c.eq(&#id.#pos))
        });
        let first = parts.next().expect("a composite key has columns");
        parts.fold(first, |acc, next| quote!(#acc.and(#next)))
    };
    let first = one(quote!(#chunk[0]));
    let each = one(quote!(id));
    quote! {
        #[allow(unused_imports)]
        use #d::prelude::BoolExpressionMethods as _;
        let mut pred: ::std::boxed::Box<
            dyn #d::expression::BoxableExpression<#table::table, #db, SqlType = #d::sql_types::Bool> + '_,
        > = ::std::boxed::Box::new(#first);
        for id in &#chunk[1..] {
            pred = ::std::boxed::Box::new(pred.or(#each));
        }
    }
}

fn entity_impl(model: &Model) -> TokenStream {
    let ident = &model.ident;
    let table_name = &model.table_name;
    let region = &model.region;
    let id_ty = id_type(model);
    let self_id = id_of(model, &quote!(self));
    let version = model.version_field();
    let v_member = &version.member;
    let v_ty = &version.ty;
    let unique_names: Vec<_> = model.unique_keys.iter().map(|k| &k.name).collect();
    let index_names: Vec<_> = model.index_keys.iter().map(|k| &k.name).collect();
    let feed_table = feed_table_impl(model);

    let some = quote!(::core::option::Option::Some);
    let none = quote!(::core::option::Option::None);
    let parse_id_body = if model.composite() {
        let n = model.ids.len();
        let parts = model.id_fields().enumerate().map(|(pos, f)| {
            let ty = &f.ty;
            quote!((&&::diesel_l2::__private::IdParser::<#ty>::new()).parse_id(parts[#pos])?)
        });
        quote! {
            let parts = ::diesel_l2::__private::split_composite_id(text, #n)?;
            #some((#(#parts,)*))
        }
    } else {
        quote!((&&::diesel_l2::__private::IdParser::<#id_ty>::new()).parse_id(text))
    };
    let mut settings = Vec::new();
    if let Some(ms) = model.ttl {
        let d = duration(ms);
        settings.push(quote!(c.ttl = #some(#d);));
    }
    if let Some(ms) = model.tti {
        let d = duration(ms);
        settings.push(quote!(c.tti = #some(#d);));
    }
    if let Some(n) = model.max_entries {
        settings.push(quote!(c.max_entries = #some(#n); c.max_bytes = #none;));
    }
    if let Some(n) = model.max_bytes {
        settings.push(quote!(c.max_bytes = #some(#n); c.max_entries = #none;));
    }
    match model.negative_ttl {
        Some(Some(ms)) => {
            let d = duration(ms);
            settings.push(quote!(c.negative_ttl = #some(#d);));
        }
        Some(None) => settings.push(quote!(c.negative_ttl = #none;)),
        None => {}
    }
    let config_binding = if settings.is_empty() {
        quote!(let c)
    } else {
        quote!(let mut c)
    };

    let heap: Vec<TokenStream> = model
        .fields
        .iter()
        .filter(|f| f.shallow.is_none())
        .map(|f| {
            let m = &f.member;
            quote_spanned!(f.ty.span()=> ::diesel_l2::__private::HeapSize::heap_size(&self.#m))
        })
        .collect();

    let shape = shape_fingerprint(model);
    let shared = if model.shared {
        quote!(::diesel_l2::__shared_codec!();)
    } else {
        quote!()
    };
    quote! {
        #[automatically_derived]
        impl ::diesel_l2::__private::CachedEntity for #ident {
            type Id = #id_ty;

            const TABLE: &'static str = #table_name;

            fn cache_config() -> ::diesel_l2::__private::RegionConfig {
                #config_binding = ::diesel_l2::__private::RegionConfig::new(#region);
                #(#settings)*
                c
            }

            fn id(&self) -> #id_ty {
                #self_id
            }

            fn version(&self) -> i64 {
                ::core::convert::From::from(self.#v_member)
            }

            fn with_version(&self, version: i64) -> ::core::option::Option<Self> {
                let mut next = ::core::clone::Clone::clone(self);
                next.#v_member =
                    <#v_ty as ::core::convert::TryFrom<i64>>::try_from(version).ok()?;
                ::core::option::Option::Some(next)
            }

            fn approx_bytes(&self) -> usize {
                ::core::mem::size_of::<Self>() #(+ #heap)*
            }

            fn parse_id(text: &str) -> ::core::option::Option<#id_ty> {
                // Autoref specialization: `FromStr` when the id type has it, else `None`.
                #[allow(unused_imports)]
                use ::diesel_l2::__private::{ParseFallback as _, ParseViaFromStr as _};
                #parse_id_body
            }

            fn unique_keys(keys: &mut ::diesel_l2::__private::UniqueKeys<Self>) {
                #(keys.add::<#unique_names>();)*
                #(keys.index::<#index_names>();)*
                let _ = keys;
            }

            #feed_table

            const SHAPE: u64 = #shape;

            #shared
        }
    }
}

/// A fingerprint of the entity's shape (table, field names, columns and types as written):
/// the shared tier stores it in each value, so a build with another shape treats the
/// entry as a miss instead of decoding it (C9). FNV-1a, computed at expansion.
fn shape_fingerprint(model: &Model) -> u64 {
    let mut text = format!("{}|{}", model.ident, model.table_name);
    for f in &model.fields {
        let ty = &f.ty;
        text.push_str(&format!("|{}:{}:{}", f.member, f.column, quote!(#ty)));
    }
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `CachedEntity::feed_table`: the SQL names of the table, the id, version and unique-key
/// columns (from diesel's `table!`, so `#[sql_name]` and `column_name` carry over), for
/// `diesel_l2::migration`.
fn feed_table_impl(model: &Model) -> TokenStream {
    let table = &model.table;
    let p = quote!(::diesel_l2::__private);
    let column = |i: usize| {
        let c = &model.fields[i].column;
        quote!(<#table::#c as #p::diesel::Column>::NAME)
    };
    let ids: Vec<TokenStream> = model.ids.iter().map(|&i| column(i)).collect();
    let version = column(model.version);
    let keys = model.unique_keys.iter().map(|k| {
        let columns = k.fields.iter().map(|&i| column(i));
        quote!(&[#(#columns),*])
    });
    let index_keys: Vec<TokenStream> = model
        .index_keys
        .iter()
        .map(|k| {
            let columns = k.fields.iter().map(|&i| column(i));
            quote!(&[#(#columns),*])
        })
        .collect();
    let with_index = if index_keys.is_empty() {
        quote!()
    } else {
        quote!(.with_index_keys(&[#(#index_keys),*]))
    };
    quote! {
        fn feed_table() -> #p::FeedTable {
            #p::FeedTable::from_derive(
                #p::table_sql_name(&#table::table).unwrap_or_else(|| {
                    ::std::string::ToString::to_string(<Self as #p::CachedEntity>::TABLE)
                }),
                &[#(#ids),*],
                #version,
                &[#(#keys),*],
            )
            #with_index
        }
    }
}

/// The unique-key types (outside the `const _` block so users can name them) and their
/// `UniqueKey` impls.
fn unique_types(model: &Model) -> TokenStream {
    let ident = &model.ident;
    let vis = &model.vis;
    let defs = model.unique_keys.iter().map(|k| {
        let name = &k.name;
        let tys = k.fields.iter().map(|&i| &model.fields[i].ty);
        let members: Vec<_> = k.fields.iter().map(|&i| &model.fields[i].member).collect();
        let cols: Vec<String> = k.fields.iter().map(|&i| model.fields[i].column.to_string()).collect();
        let key_name = cols.join(", ");
        let textual = k.fields.iter().any(|&i| !compares_exactly(&model.fields[i].ty));
        let heap = k.fields.iter().enumerate().filter(|&(_, &i)| model.fields[i].shallow.is_none()).map(|(pos, &i)| {
            let pos = syn::Index::from(pos);
            quote_spanned!(model.fields[i].ty.span()=> ::diesel_l2::__private::HeapSize::heap_size(&self.#pos))
        });
        let doc = format!(
            "The unique key ({key_name}) of [`{ident}`], for `Db::find_by`. Generated by `#[derive(Cached)]`."
        );
        quote! {
            #[doc = #doc]
            #[derive(::core::clone::Clone, ::core::fmt::Debug, ::core::cmp::PartialEq, ::core::cmp::Eq, ::core::hash::Hash)]
            #vis struct #name(#(pub #tys),*);

            #[automatically_derived]
            impl ::diesel_l2::__private::UniqueKey for #name {
                type Entity = #ident;
                const NAME: &'static str = #key_name;
                const TEXTUAL: bool = #textual;
                fn of(row: &#ident) -> Self {
                    #name(#(::core::clone::Clone::clone(&row.#members)),*)
                }
                fn approx_bytes(&self) -> usize {
                    ::core::mem::size_of::<Self>() #(+ #heap)*
                }
            }
        }
    });
    quote!(#(#defs)*)
}

/// The index-key types (cached collections) and their `IndexKey` impls.
fn index_types(model: &Model) -> TokenStream {
    let ident = &model.ident;
    let vis = &model.vis;
    let defs = model.index_keys.iter().map(|k| {
        let name = &k.name;
        let tys = k.fields.iter().map(|&i| &model.fields[i].ty);
        let members: Vec<_> = k.fields.iter().map(|&i| &model.fields[i].member).collect();
        let cols: Vec<String> = k.fields.iter().map(|&i| model.fields[i].column.to_string()).collect();
        let key_name = cols.join(", ");
        let heap = k.fields.iter().enumerate().filter(|&(_, &i)| model.fields[i].shallow.is_none()).map(|(pos, &i)| {
            let pos = syn::Index::from(pos);
            quote_spanned!(model.fields[i].ty.span()=> ::diesel_l2::__private::HeapSize::heap_size(&self.#pos))
        });
        let n = k.fields.len();
        // Nullable fields are not read from notifications (a `NULL` and a missing value
        // would need telling apart): such keys fall back to dropping every list.
        let nullable = k.fields.iter().any(|&i| is_option(&model.fields[i].ty));
        let from_text = if nullable {
            quote!()
        } else {
            let parts = k.fields.iter().enumerate().map(|(pos, &i)| {
                let ty = &model.fields[i].ty;
                quote!((&&::diesel_l2::__private::IdParser::<#ty>::new()).parse_id(values[#pos]?)?)
            });
            quote! {
                fn from_text(values: &[::core::option::Option<&str>]) -> ::core::option::Option<Self> {
                    // Autoref specialization: `FromStr` when the field type has it, else `None`.
                    #[allow(unused_imports)]
                    use ::diesel_l2::__private::{ParseFallback as _, ParseViaFromStr as _};
                    if values.len() != #n {
                        return ::core::option::Option::None;
                    }
                    ::core::option::Option::Some(#name(#(#parts),*))
                }
            }
        };
        let doc = format!(
            "The index key ({key_name}) of [`{ident}`]: `Db::find_all_by` answers every row with these values, in id order. Generated by `#[derive(Cached)]`."
        );
        quote! {
            #[doc = #doc]
            #[derive(::core::clone::Clone, ::core::fmt::Debug, ::core::cmp::PartialEq, ::core::cmp::Eq, ::core::hash::Hash)]
            #vis struct #name(#(pub #tys),*);

            #[automatically_derived]
            impl ::diesel_l2::__private::IndexKey for #name {
                type Entity = #ident;
                const NAME: &'static str = #key_name;
                fn of(row: &#ident) -> Self {
                    #name(#(::core::clone::Clone::clone(&row.#members)),*)
                }
                fn approx_bytes(&self) -> usize {
                    ::core::mem::size_of::<Self>() #(+ #heap)*
                }
                #from_text
            }
        }
    });
    quote!(#(#defs)*)
}

/// `IndexOps` for each index key on one backend: the rows of one key value, by id.
fn index_ops(model: &Model, backend: Backend) -> TokenStream {
    let table = &model.table;
    let gate = backend.gate();
    let conn = backend.connection();
    let db = backend.backend();
    let d = quote!(::diesel_l2::__private::diesel);
    let ident = &model.ident;
    let id_cols: Vec<_> = model.id_fields().map(|f| &f.column).collect();
    let first = id_cols[0];
    let rest = &id_cols[1..];
    let maps = maps_bounds(model, backend);
    let impls = model.index_keys.iter().map(|k| {
        let name = &k.name;
        let filters = k.fields.iter().enumerate().map(|(pos, &i)| {
            let field = &model.fields[i];
            let col = &field.column;
            let pos = syn::Index::from(pos);
            if is_option(&field.ty) {
                // `= NULL` matches nothing in SQL: a `None` key value selects the rows
                // whose column IS NULL, as `K::of(row) == key` says in memory.
                quote!(.filter(
                    #table::#col.eq(&key.#pos).or(#table::#col.is_null().and(
                        #d::IntoSql::into_sql::<#d::sql_types::Bool>(
                            ::core::option::Option::is_none(&key.#pos),
                        ),
                    )),
                ))
            } else {
                quote!(.filter(#table::#col.eq(&key.#pos)))
            }
        });
        quote! {
            #gate! {
                #[automatically_derived]
                impl ::diesel_l2::__private::IndexOps<#conn> for #name
                where
                    #maps
                {
                    fn load_all_by(
                        conn: &mut #conn,
                        key: &Self,
                    ) -> #d::QueryResult<::std::vec::Vec<#ident>> {
                        #[allow(unused_imports)]
                        use ::diesel_l2::__private::diesel::prelude::{
                            BoolExpressionMethods as _, ExpressionMethods as _, QueryDsl as _,
                            RunQueryDsl as _,
                        };
                        #table::table
                            #(#filters)*
                            .order_by(#table::#first.asc())
                            #(.then_order_by(#table::#rest.asc()))*
                            .select(<#ident as #d::SelectableHelper<#db>>::as_select())
                            .load(conn)
                    }
                }
            }
        }
    });
    quote!(#(#impls)*)
}

/// Whether the type is an `Option<…>`.
fn is_option(ty: &syn::Type) -> bool {
    matches!(ty, syn::Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "Option"))
}

/// Whether every database type a field of this Rust type maps to compares byte for byte
/// under any collation: numbers, booleans, UUIDs, and `Option`s of them. Anything else (text,
/// or a type the derive cannot see through) may be compared by a collation.
fn compares_exactly(ty: &syn::Type) -> bool {
    let syn::Type::Path(p) = ty else {
        return false;
    };
    let Some(last) = p.path.segments.last() else {
        return false;
    };
    let name = last.ident.to_string();
    if name == "Option" {
        if let syn::PathArguments::AngleBracketed(args) = &last.arguments {
            if let Some(syn::GenericArgument::Type(inner)) = args.args.first() {
                return compares_exactly(inner);
            }
        }
        return false;
    }
    matches!(
        name.as_str(),
        "i8" | "i16"
            | "i32"
            | "i64"
            | "i128"
            | "isize"
            | "u8"
            | "u16"
            | "u32"
            | "u64"
            | "u128"
            | "usize"
            | "bool"
            | "Uuid"
    )
}

/// `UniqueOps` for each unique key on one backend.
fn unique_ops(model: &Model, backend: Backend) -> TokenStream {
    let table = &model.table;
    let gate = backend.gate();
    let conn = backend.connection();
    let db = backend.backend();
    let d = quote!(::diesel_l2::__private::diesel);
    let ident = &model.ident;
    let maps = maps_bounds(model, backend);
    let select = select_expr(model, &db);
    let impls = model.unique_keys.iter().map(|k| {
        let name = &k.name;
        let filters = k.fields.iter().enumerate().map(|(pos, &i)| {
            let col = &model.fields[i].column;
            let pos = syn::Index::from(pos);
            quote!(.filter(#table::#col.eq(&key.#pos)))
        });
        quote! {
            #gate! {
                #[automatically_derived]
                impl ::diesel_l2::__private::UniqueOps<#conn> for #name
                where
                    #maps
                {
                    fn load_by(
                        conn: &mut #conn,
                        key: &Self,
                    ) -> #d::QueryResult<::core::option::Option<#ident>> {
                        #[allow(unused_imports)]
                        use ::diesel_l2::__private::diesel::prelude::{
                            ExpressionMethods as _, OptionalExtension as _, QueryDsl as _,
                            RunQueryDsl as _,
                        };
                        #table::table
                            #(#filters)*
                            .select(#select)
                            .first(conn)
                            .optional()
                    }
                }
            }
        }
    });
    quote!(#(#impls)*)
}

fn ops_impl(model: &Model, backend: Backend) -> TokenStream {
    let ident = &model.ident;
    let table = &model.table;
    let id_ty = id_type(model);
    let version = model.version_field();
    let v_col = &version.column;
    let v_member = &version.member;
    let v_ty = &version.ty;

    let gate = backend.gate();
    let maps = maps_bounds(model, backend);
    let conn = backend.connection();
    let db = backend.backend();
    let d = quote!(::diesel_l2::__private::diesel);
    let traits = quote! {
        #[allow(unused_imports)]
        use ::diesel_l2::__private::diesel::prelude::{
            ExpressionMethods as _, OptionalExtension as _, QueryDsl as _, RunQueryDsl as _,
            SelectableHelper as _,
        };
        #[allow(unused_imports)]
        use ::diesel_l2::__private::ExecuteIn as _;
    };
    let select = select_expr(model, &db);
    let returning = returning_expr(model, &db);
    let ops = quote!(<Self as ::diesel_l2::__private::CachedOps<#conn>>);

    let insert_values = tuple(
        model
            .fields
            .iter()
            .map(|f| {
                let (c, m) = (&f.column, &f.member);
                quote!(#table::#c.eq(&row.#m))
            })
            .collect(),
    );
    let mut changes = vec![quote!(#table::#v_col.eq(&next.#v_member))];
    changes.extend(
        model
            .fields
            .iter()
            .enumerate()
            .filter(|&(i, _)| !model.ids.contains(&i) && i != model.version)
            .map(|(_, f)| {
                let (c, m) = (&f.column, &f.member);
                quote!(#table::#c.eq(&next.#m))
            }),
    );
    let changes = tuple(changes);

    let insert = quote! {
        #d::insert_into(#table::table).values(#insert_values)
    };
    let current_filters = row_filters(model, &quote!(current));
    let update = quote! {
        #d::update(
            #table::table
                #current_filters
                .filter(#table::#v_col.eq(&current.#v_member)),
        )
        .set(#changes)
    };
    let (insert_body, update_body) = if backend.has_returning() {
        (
            quote!(#insert.returning(#returning).get_result(conn)),
            quote!(#update.returning(#returning).get_result(conn).optional()),
        )
    } else {
        (
            quote! {
                #insert.execute_in::<#db, _>(conn)?;
                #ops::load_one(conn, &<Self as ::diesel_l2::__private::CachedEntity>::id(row))?
                    .ok_or(#d::result::Error::NotFound)
            },
            quote! {
                let n = #update.execute_in::<#db, _>(conn)?;
                if n == 0 {
                    ::core::result::Result::Ok(::core::option::Option::None)
                } else {
                    #ops::load_one(conn, &<Self as ::diesel_l2::__private::CachedEntity>::id(next))
                }
            },
        )
    };

    let one_id = id_filters(model, &quote!(id));
    let load_many_body = if model.composite() {
        let pred = composite_predicate(model, &db, &quote!(chunk));
        quote! {
            let mut out = ::std::vec::Vec::with_capacity(ids.len());
            for chunk in ids.chunks(#COMPOSITE_CHUNK) {
                #pred
                out.extend(#table::table.filter(pred).select(#select).load::<Self>(conn)?);
            }
            ::core::result::Result::Ok(out)
        }
    } else {
        let c = &model.fields[model.ids[0]].column;
        quote! {
            #table::table
                .filter(#table::#c.eq_any(ids))
                .select(#select)
                .load(conn)
        }
    };
    quote! {
        #gate! {
            #[automatically_derived]
            impl ::diesel_l2::__private::CachedOps<#conn> for #ident
            where
                #maps
            {
                fn load_one(
                    conn: &mut #conn,
                    id: &#id_ty,
                ) -> #d::QueryResult<::core::option::Option<Self>> {
                    #traits
                    #table::table
                        #one_id
                        .select(#select)
                        .first(conn)
                        .optional()
                }

                fn load_many(
                    conn: &mut #conn,
                    ids: &[#id_ty],
                ) -> #d::QueryResult<::std::vec::Vec<Self>> {
                    #traits
                    #load_many_body
                }

                fn insert_row(conn: &mut #conn, row: &Self) -> #d::QueryResult<Self> {
                    #traits
                    #insert_body
                }

                fn update_row(
                    conn: &mut #conn,
                    current: &Self,
                    next: &Self,
                ) -> #d::QueryResult<::core::option::Option<Self>> {
                    #traits
                    #update_body
                }

                fn delete_row(
                    conn: &mut #conn,
                    id: &#id_ty,
                    version: i64,
                ) -> #d::QueryResult<usize> {
                    #traits
                    let ::core::option::Option::Some(version) =
                        <#v_ty as ::core::convert::TryFrom<i64>>::try_from(version).ok()
                    else {
                        return ::core::result::Result::Ok(0);
                    };
                    #d::delete(
                        #table::table
                            #one_id
                            .filter(#table::#v_col.eq(version)),
                    )
                    .execute_in::<#db, _>(conn)
                }

                fn sql_table() -> ::std::string::String {
                    ::diesel_l2::__private::sql_table_name::<#db, _>(&#table::table)
                        .unwrap_or_else(|| {
                            ::std::string::ToString::to_string(
                                <Self as ::diesel_l2::__private::CachedEntity>::TABLE,
                            )
                        })
                }
            }
        }
    }
}

/// `InsertOps`, `ChangesetOps`, `UpdateWhereOps` and `DeleteWhereOps` on one backend:
/// generic over the user's `Insertable`, `AsChangeset` and filter types, with the diesel
/// bounds that make the statements type-check for this table.
fn partial_ops(model: &Model, backend: Backend) -> TokenStream {
    let ident = &model.ident;
    let table = &model.table;
    let id_ty = id_type(model);
    let id_cols = id_columns(model);
    let one_id = id_filters(model, &quote!(id));
    let version = model.version_field();
    let v_col = &version.column;
    let v_ty = &version.ty;

    let gate = backend.gate();
    let maps = maps_bounds(model, backend);
    let conn = backend.connection();
    let db = backend.backend();
    let d = quote!(::diesel_l2::__private::diesel);
    let p = quote!(::diesel_l2::__private);
    let traits = quote! {
        #[allow(unused_imports)]
        use ::diesel_l2::__private::diesel::prelude::{
            ExpressionMethods as _, OptionalExtension as _, QueryDsl as _, RunQueryDsl as _,
            SelectableHelper as _,
        };
        #[allow(unused_imports)]
        use ::diesel_l2::__private::ExecuteIn as _;
    };
    let returning = returning_expr(model, &db);
    let ops = quote!(<Self as #p::CachedOps<#conn>>);
    let bump = quote!(#table::#v_col.eq(#table::#v_col + (1 as #v_ty)));
    let changeset_bounds = quote! {
        __Ch: #d::query_builder::AsChangeset<Target = #table::table>,
        <__Ch as #d::query_builder::AsChangeset>::Changeset: #d::query_builder::QueryFragment<#db>,
    };
    let filter_bounds = quote! {
        __F: #d::expression::Expression
            + #d::expression::SelectableExpression<#table::table>
            + #d::expression::ValidGrouping<(), IsAggregate = #d::expression::is_aggregate::No>
            + #d::query_builder::QueryFragment<#db>
            + #d::query_builder::QueryId,
        <__F as #d::expression::Expression>::SqlType: #d::sql_types::BoolOrNullableBool,
    };

    let (generated, update_ids, delete_ids) = if model.composite() {
        let pred = composite_predicate(model, &db, &quote!(chunk));
        (
            quote! {
                let generated = "";
                if generated.is_empty() {
                    return ::core::result::Result::Err(#d::result::Error::QueryBuilderError(
                        ::std::convert::From::from(
                            "insert_new on MariaDB/MySQL finds the new row by LAST_INSERT_ID(), \
                             which a composite primary key does not have: insert the row with \
                             its key through Tx::insert",
                        ),
                    ));
                }
            },
            quote! {
                for chunk in ids.chunks(#COMPOSITE_CHUNK) {
                    #pred
                    #d::update(#table::table.filter(pred))
                        .set((::core::clone::Clone::clone(&changes), #bump))
                        .execute_in::<#db, _>(conn)?;
                }
            },
            quote! {
                for chunk in ids.chunks(#COMPOSITE_CHUNK) {
                    #pred
                    #d::delete(#table::table.filter(pred)).execute_in::<#db, _>(conn)?;
                }
            },
        )
    } else {
        let id_col = &model.fields[model.ids[0]].column;
        (
            quote! {
                let generated = ::std::format!(
                    "`{}` = LAST_INSERT_ID()",
                    <#table::#id_col as #d::Column>::NAME,
                );
            },
            quote! {
                #d::update(#table::table.filter(#table::#id_col.eq_any(&ids)))
                    .set((changes, #bump))
                    .execute_in::<#db, _>(conn)?;
            },
            quote! {
                #d::delete(#table::table.filter(#table::#id_col.eq_any(&ids))).execute_in::<#db, _>(conn)?;
            },
        )
    };
    // Updating a composite key's matches chunk by chunk needs the changes more than once.
    let clone_bound = if model.composite() && !backend.has_returning() {
        quote!(__Ch: ::core::clone::Clone,)
    } else {
        quote!()
    };
    let (insert_body, update_one, update_where_body, delete_where_body) = if backend.has_returning()
    {
        (
            quote! {
                #d::insert_into(#table::table)
                    .values(new)
                    .returning(#returning)
                    .get_result(conn)
            },
            quote!(.returning(#returning).get_result(conn).optional()),
            quote! {
                #d::update(#table::table)
                    .filter(filter)
                    .set((changes, #bump))
                    .returning(#id_cols)
                    .load(conn)
            },
            quote! {
                #d::delete(#table::table)
                    .filter(filter)
                    .returning(#id_cols)
                    .load(conn)
            },
        )
    } else {
        let select_ids = quote! {
            let ids: ::std::vec::Vec<#id_ty> = #table::table
                .filter(filter)
                .select(#id_cols)
                .for_update()
                .load(conn)?;
            if ids.is_empty() {
                return ::core::result::Result::Ok(ids);
            }
        };
        (
            quote! {
                // MariaDB's INSERT … RETURNING has no result metadata as a prepared
                // statement (diesel prepares every statement): LAST_INSERT_ID() instead,
                // reset first so that a value left by an earlier insert on this pooled
                // connection can never name another row.
                #d::select(#d::dsl::sql::<#d::sql_types::Unsigned<#d::sql_types::BigInt>>(
                    "LAST_INSERT_ID(0)",
                ))
                .get_result::<u64>(conn)?;
                #d::insert_into(#table::table).values(new).execute_in::<#db, _>(conn)?;
                #generated
                #table::table
                    .filter(#d::dsl::sql::<#d::sql_types::Bool>(&generated))
                    .select(<Self as #d::SelectableHelper<#db>>::as_select())
                    .first(conn)
                    .optional()?
                    .ok_or_else(|| #d::result::Error::QueryBuilderError(::std::convert::From::from(
                        "insert_new on MariaDB/MySQL finds the new row by LAST_INSERT_ID(): \
                         the table needs an AUTO_INCREMENT id that the Insertable leaves out; \
                         to insert a row with an id of your own, use Tx::insert",
                    )))
            },
            quote! {
                .execute_in::<#db, _>(conn)?;
                if n == 0 {
                    ::core::result::Result::Ok(::core::option::Option::None)
                } else {
                    #ops::load_one(conn, id)
                }
            },
            quote! {
                #select_ids
                #update_ids
                ::core::result::Result::Ok(ids)
            },
            quote! {
                #select_ids
                #delete_ids
                ::core::result::Result::Ok(ids)
            },
        )
    };
    let (versioned, unversioned) = if backend.has_returning() {
        (
            quote! {
                #d::update(
                    #table::table
                        #one_id
                        .filter(#table::#v_col.eq(expected)),
                )
                .set((changes, #bump))
                #update_one
            },
            quote! {
                #d::update(#table::table #one_id)
                    .set((changes, #bump))
                    #update_one
            },
        )
    } else {
        (
            quote! {
                let n = #d::update(
                    #table::table
                        #one_id
                        .filter(#table::#v_col.eq(expected)),
                )
                .set((changes, #bump))
                #update_one
            },
            quote! {
                let n = #d::update(#table::table #one_id)
                    .set((changes, #bump))
                    #update_one
            },
        )
    };

    quote! {
        #gate! {
            #[automatically_derived]
            impl<__N> #p::InsertOps<#conn, __N> for #ident
            where
                __N: #d::Insertable<#table::table>,
                <__N as #d::Insertable<#table::table>>::Values: #d::query_builder::QueryFragment<#db>
                    + #d::query_builder::QueryId
                    + #d::insertable::CanInsertInSingleQuery<#db>,
                #maps
            {
                fn insert_new(conn: &mut #conn, new: __N) -> #d::QueryResult<Self> {
                    #traits
                    #insert_body
                }
            }

            #[automatically_derived]
            impl<__Ch> #p::ChangesetOps<#conn, __Ch> for #ident
            where
                #changeset_bounds
                #maps
            {
                fn update_changes(
                    conn: &mut #conn,
                    id: &#id_ty,
                    expected: ::core::option::Option<i64>,
                    changes: __Ch,
                ) -> #d::QueryResult<::core::option::Option<Self>> {
                    #traits
                    match expected {
                        ::core::option::Option::Some(expected) => {
                            let ::core::option::Option::Some(expected) =
                                <#v_ty as ::core::convert::TryFrom<i64>>::try_from(expected).ok()
                            else {
                                return ::core::result::Result::Ok(::core::option::Option::None);
                            };
                            #versioned
                        }
                        ::core::option::Option::None => {
                            #unversioned
                        }
                    }
                }
            }

            #[automatically_derived]
            impl<__F, __Ch> #p::UpdateWhereOps<#conn, __F, __Ch> for #ident
            where
                #filter_bounds
                #changeset_bounds
                #clone_bound
                #maps
            {
                fn update_where(
                    conn: &mut #conn,
                    filter: __F,
                    changes: __Ch,
                ) -> #d::QueryResult<::std::vec::Vec<#id_ty>> {
                    #traits
                    #update_where_body
                }
            }

            #[automatically_derived]
            impl<__F> #p::DeleteWhereOps<#conn, __F> for #ident
            where
                #filter_bounds
                #maps
            {
                fn delete_where(
                    conn: &mut #conn,
                    filter: __F,
                ) -> #d::QueryResult<::std::vec::Vec<#id_ty>> {
                    #traits
                    #delete_where_body
                }
            }
        }
    }
}
