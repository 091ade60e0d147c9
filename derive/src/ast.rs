//! Parsing: from `syn::DeriveInput` to the attributes and fields the derive reads.
//!
//! This stage reports syntax problems (unknown or duplicate keys, keys without values,
//! values of the wrong kind). Meaning (durations, sizes, which field is the id) is checked
//! in `valid.rs`.

use proc_macro2::{Span, TokenTree};
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::parse::ParseStream;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Expr, Fields, Ident, Lit, LitStr, Path, Token, Type};

/// Collects several errors so one compilation reports all of them.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(first) => first.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn add(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The struct-level `#[cache(...)]` keys.
pub(crate) const STRUCT_KEYS: &[&str] = &[
    "region",
    "ttl",
    "tti",
    "max_entries",
    "max_bytes",
    "negative_ttl",
    "unique",
    "index",
    "shared",
];

/// The field-level `#[cache(...)]` keys.
pub(crate) const FIELD_KEYS: &[&str] = &["id", "version", "shallow", "unique", "index"];

/// One `key = literal` of the struct's `#[cache(...)]`.
pub(crate) struct Setting {
    pub key: Ident,
    pub value: Lit,
}

/// The struct's `#[cache(...)]` settings, as written.
#[derive(Default)]
pub(crate) struct StructAttrs {
    pub region: Option<Setting>,
    pub ttl: Option<Setting>,
    pub tti: Option<Setting>,
    pub max_entries: Option<Setting>,
    pub max_bytes: Option<Setting>,
    pub negative_ttl: Option<Setting>,
    /// `unique(a, b)`: the fields of each composite unique key, in order.
    pub unique: Vec<Vec<Ident>>,
    /// `index(a, b)`: the fields of each composite index key (a cached collection).
    pub index: Vec<Vec<Ident>>,
    /// `shared`: the region is kept in the shared (Redis) tier too.
    pub shared: Option<Ident>,
}

/// One named field.
pub(crate) struct Field {
    /// The Rust field name.
    pub member: Ident,
    pub ty: Type,
    /// The diesel column: the field name or its `#[diesel(column_name = ...)]`.
    pub column: Ident,
    /// The `id` of `#[cache(id)]`, when given.
    pub id: Option<Ident>,
    /// The `version` of `#[cache(version)]`, when given.
    pub version: Option<Ident>,
    /// The `shallow` of `#[cache(shallow)]`, when given.
    pub shallow: Option<Ident>,
    /// The `unique` of `#[cache(unique)]`, when given.
    pub unique: Option<Ident>,
    /// `#[diesel(deserialize_as = ...)]` or `serialize_as`: the field's type is not the
    /// one diesel reads or writes, so no per-backend mapping bound is written for it.
    pub mapped_as: bool,
    /// The `index` of `#[cache(index)]`, when given.
    pub index: Option<Ident>,
}

/// The parsed derive input.
pub(crate) struct Input {
    pub ident: Ident,
    pub vis: syn::Visibility,
    /// `#[diesel(table_name = ...)]`.
    pub table: Option<Path>,
    /// A `#[diesel(...)]` attribute this derive could not read (diesel reports the cause).
    pub unreadable_diesel: Option<Span>,
    /// The last path segments of `#[diesel(check_for_backend(...))]` (`Sqlite`, `Pg`,
    /// `Mysql`): SQL is generated for these backends only. `None`: every backend.
    pub backends: Option<Vec<String>>,
    /// `#[diesel(primary_key(a, b))]`: the fields of the primary key, as diesel's
    /// `Identifiable` reads them.
    pub primary_key: Option<Vec<Ident>>,
    pub attrs: StructAttrs,
    pub fields: Vec<Field>,
}

const NAMED_FIELDS: &str = "#[derive(Cached)] supports structs with named fields, \
     like `struct User { id: i64, version: i64, .. }`";

/// Parses `input`, pushing every problem found into `errors`. Returns `None` when the
/// input is not something the derive can work on at all.
pub(crate) fn parse(input: &DeriveInput, errors: &mut Errors) -> Option<Input> {
    let named = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => named,
            Fields::Unnamed(fields) => {
                errors.add(fields.span(), NAMED_FIELDS);
                return None;
            }
            Fields::Unit => {
                errors.add(input.ident.span(), NAMED_FIELDS);
                return None;
            }
        },
        Data::Enum(data) => {
            errors.add(data.enum_token.span, NAMED_FIELDS);
            return None;
        }
        Data::Union(data) => {
            errors.add(data.union_token.span, NAMED_FIELDS);
            return None;
        }
    };

    if !input.generics.params.is_empty() {
        errors.add(
            input.generics.span(),
            "#[derive(Cached)] does not support generic parameters: cached rows are owned \
             `'static` values; remove the `<...>` and use concrete field types",
        );
    }

    let mut table = None;
    let mut backends: Option<Vec<String>> = None;
    let mut primary_key: Option<Vec<Ident>> = None;
    let mut unreadable_diesel = None;
    let mut attrs = StructAttrs::default();
    for attr in &input.attrs {
        if attr.path().is_ident("diesel") {
            let result = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("table_name") {
                    let path: Path = meta.value()?.parse()?;
                    table.get_or_insert(path);
                    Ok(())
                } else if meta.path.is_ident("primary_key") {
                    let list = primary_key.get_or_insert_with(Vec::new);
                    meta.parse_nested_meta(|k| {
                        if let Some(ident) = k.path.get_ident() {
                            list.push(ident.clone());
                        }
                        Ok(())
                    })
                } else if meta.path.is_ident("check_for_backend") {
                    let list = backends.get_or_insert_with(Vec::new);
                    meta.parse_nested_meta(|b| {
                        if let Some(last) = b.path.segments.last() {
                            list.push(last.ident.to_string());
                        }
                        Ok(())
                    })
                } else {
                    skip_value(meta.input)
                }
            });
            if result.is_err() {
                unreadable_diesel.get_or_insert(attr.span());
            }
        } else if attr.path().is_ident("cache") {
            let result = attr.parse_nested_meta(|meta| parse_struct_key(&meta, &mut attrs, errors));
            if let Err(e) = result {
                errors.push(e);
            }
        }
    }

    let fields = named
        .named
        .iter()
        .map(|field| parse_field(field, errors, &mut unreadable_diesel))
        .collect();

    Some(Input {
        ident: input.ident.clone(),
        vis: input.vis.clone(),
        table,
        unreadable_diesel,
        backends,
        primary_key,
        attrs,
        fields,
    })
}

fn parse_struct_key(
    meta: &ParseNestedMeta<'_>,
    attrs: &mut StructAttrs,
    errors: &mut Errors,
) -> syn::Result<()> {
    let Some(key) = meta.path.get_ident().map(IdentExt::unraw) else {
        errors.add(meta.path.span(), unknown_struct_key(&meta.path));
        return skip_value(meta.input);
    };
    if key == "unique" || key == "index" {
        let example = if key == "unique" {
            "tenant_id, email"
        } else {
            "tenant_id, author_id"
        };
        if !meta.input.peek(syn::token::Paren) {
            errors.add(
                key.span(),
                format!(
                    "on the struct, `{key}` lists the fields of a composite key: write \
                     `#[cache({key}({example}))]`; for a one-field key put \
                     `#[cache({key})]` on the field"
                ),
            );
            return skip_value(meta.input);
        }
        let mut fields = Vec::new();
        meta.parse_nested_meta(|f| {
            match f.path.get_ident() {
                Some(ident) => fields.push(ident.unraw()),
                None => errors.add(
                    f.path.span(),
                    format!("`{key}(...)` lists field names, like `{key}({example})`"),
                ),
            }
            Ok(())
        })?;
        if fields.is_empty() {
            errors.add(
                key.span(),
                format!("`{key}()` needs at least one field, like `{key}({example})`"),
            );
        } else if key == "unique" {
            attrs.unique.push(fields);
        } else {
            attrs.index.push(fields);
        }
        return Ok(());
    }
    if key == "shared" {
        if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
            errors.add(
                key.span(),
                "`shared` takes no value: write `#[cache(shared)]` to keep this region in the \
                 shared (Redis) tier as well",
            );
            return skip_value(meta.input);
        }
        if attrs.shared.is_some() {
            errors.add(
                key.span(),
                "duplicate `cache` attribute `shared`: remove one of them",
            );
        }
        attrs.shared = Some(key);
        return Ok(());
    }
    let slot = match key.to_string().as_str() {
        "region" => &mut attrs.region,
        "ttl" => &mut attrs.ttl,
        "tti" => &mut attrs.tti,
        "max_entries" => &mut attrs.max_entries,
        "max_bytes" => &mut attrs.max_bytes,
        "negative_ttl" => &mut attrs.negative_ttl,
        name if FIELD_KEYS.contains(&name) => {
            errors.add(
                key.span(),
                format!(
                    "`{name}` is a field attribute: put `#[cache({name})]` on the field \
                     instead of on the struct"
                ),
            );
            return skip_value(meta.input);
        }
        _ => {
            errors.add(key.span(), unknown_struct_key(&meta.path));
            return skip_value(meta.input);
        }
    };
    if !meta.input.peek(Token![=]) {
        errors.add(
            key.span(),
            format!("`{key}` needs a value: write `{key} = {}`", example(&key)),
        );
        return skip_value(meta.input);
    }
    let expr: Expr = meta.value()?.parse()?;
    let value = match expr {
        Expr::Lit(lit) => lit.lit,
        other => {
            errors.add(
                other.span(),
                format!(
                    "`{key}` takes a literal value: write `{key} = {}`",
                    example(&key)
                ),
            );
            return Ok(());
        }
    };
    if slot.is_some() {
        errors.add(
            key.span(),
            format!("duplicate `cache` attribute `{key}`: remove one of them"),
        );
        return Ok(());
    }
    *slot = Some(Setting { key, value });
    Ok(())
}

/// An example value for `key`, for messages.
pub(crate) fn example(key: &Ident) -> &'static str {
    match key.to_string().as_str() {
        "region" => "\"users\"",
        "max_entries" => "10_000",
        "max_bytes" => "\"64MiB\"",
        "negative_ttl" => "\"30s\"",
        "tti" => "\"5m\"",
        _ => "\"10m\"",
    }
}

fn unknown_struct_key(path: &Path) -> String {
    let word = path_string(path);
    format!(
        "unknown `cache` attribute `{word}`;{} expected one of: {}",
        did_you_mean(&word, STRUCT_KEYS),
        STRUCT_KEYS.join(", ")
    )
}

/// " did you mean `x`?" for a misspelled or foreign key (moka's and Hibernate's names
/// included), or nothing when no key is close.
fn did_you_mean(word: &str, keys: &[&str]) -> String {
    let alias = match word {
        "time_to_live" | "expire" | "expiry" | "expire_after_write" => Some("ttl"),
        "time_to_idle" | "idle" | "expire_after_access" => Some("tti"),
        "capacity" | "max_capacity" | "size" | "max_size" | "entries" => Some("max_entries"),
        "bytes" | "max_memory" | "weight" | "max_weight" => Some("max_bytes"),
        "name" | "cache_name" => Some("region"),
        "primary_key" | "key" | "pk" => Some("id"),
        "unique_key" | "natural_id" => Some("unique"),
        "has_many" | "collection" | "non_unique" => Some("index"),
        "negative_cache_ttl" | "not_found_ttl" => Some("negative_ttl"),
        "redis" | "distributed" | "shared_tier" | "two_tier" => Some("shared"),
        _ => None,
    }
    .filter(|a| keys.contains(a));
    let close = || {
        keys.iter()
            .map(|k| (edit_distance(word, k), *k))
            .filter(|(d, k)| *d <= 2 && *d < k.len())
            .min()
            .map(|(_, k)| k)
    };
    match alias.or_else(close) {
        Some(k) => format!(" did you mean `{k}`?"),
        None => String::new(),
    }
}

/// Levenshtein distance, for suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn path_string(path: &Path) -> String {
    let segments: Vec<String> = path
        .segments
        .iter()
        .map(|s| s.ident.unraw().to_string())
        .collect();
    segments.join("::")
}

fn parse_field(
    field: &syn::Field,
    errors: &mut Errors,
    unreadable_diesel: &mut Option<Span>,
) -> Field {
    let member = field
        .ident
        .clone()
        .expect("named fields always have an identifier");
    let mut column = None;
    let mut id = None;
    let mut version = None;
    let mut shallow = None;
    let mut unique = None;
    let mut mapped_as = false;
    let mut index = None;
    for attr in &field.attrs {
        if attr.path().is_ident("diesel") {
            let result = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("column_name") {
                    let value = meta.value()?;
                    let ident = if value.peek(LitStr) {
                        let lit: LitStr = value.parse()?;
                        let mut ident = syn::parse_str::<Ident>(&lit.value())
                            .or_else(|_| syn::parse_str::<Ident>(&format!("r#{}", lit.value())))
                            .map_err(|_| {
                                syn::Error::new(
                                    lit.span(),
                                    "`column_name` must be a valid Rust identifier",
                                )
                            })?;
                        ident.set_span(lit.span());
                        ident
                    } else {
                        value.call(Ident::parse_any)?
                    };
                    column.get_or_insert(ident);
                    Ok(())
                } else if meta.path.is_ident("deserialize_as") || meta.path.is_ident("serialize_as")
                {
                    mapped_as = true;
                    skip_value(meta.input)
                } else if meta.path.is_ident("embed") || meta.path.is_ident("select_expression") {
                    errors.add(
                        meta.path.span(),
                        format!(
                            "#[derive(Cached)] does not support `#[diesel({})]`: every field \
                             must be a column of the table; cache the embedded struct's \
                             entity separately",
                            path_string(&meta.path)
                        ),
                    );
                    skip_value(meta.input)
                } else {
                    skip_value(meta.input)
                }
            });
            if result.is_err() {
                unreadable_diesel.get_or_insert(attr.span());
            }
        } else if attr.path().is_ident("cache") {
            let result = attr.parse_nested_meta(|meta| {
                let key = meta.path.get_ident().map(IdentExt::unraw);
                let name = key.as_ref().map(Ident::to_string).unwrap_or_default();
                let slot = match name.as_str() {
                    "id" => &mut id,
                    "version" => &mut version,
                    "shallow" => &mut shallow,
                    "unique" => &mut unique,
                    "index" => &mut index,
                    other if STRUCT_KEYS.contains(&other) => {
                        errors.add(
                            meta.path.span(),
                            format!(
                                "`{other}` is a struct attribute: move it to the \
                                 `#[cache(...)]` above the struct"
                            ),
                        );
                        return skip_value(meta.input);
                    }
                    _ => {
                        errors.add(
                            meta.path.span(),
                            format!(
                                "unknown `cache` field attribute `{}`;{} expected one of: {}",
                                path_string(&meta.path),
                                did_you_mean(&path_string(&meta.path), FIELD_KEYS),
                                FIELD_KEYS.join(", ")
                            ),
                        );
                        return skip_value(meta.input);
                    }
                };
                let key = key.expect("matched a known key");
                if !meta.input.is_empty() && !meta.input.peek(Token![,]) {
                    errors.add(
                        meta.input.span(),
                        format!("`{key}` takes no value: write `#[cache({key})]`"),
                    );
                    skip_value(meta.input)?;
                }
                if slot.is_some() {
                    errors.add(
                        key.span(),
                        format!("duplicate `cache` attribute `{key}`: remove one of them"),
                    );
                } else {
                    *slot = Some(key);
                }
                Ok(())
            });
            if let Err(e) = result {
                errors.push(e);
            }
        }
    }
    Field {
        column: column.unwrap_or_else(|| member.clone()),
        member,
        ty: field.ty.clone(),
        id,
        version,
        shallow,
        unique,
        mapped_as,
        index,
    }
}

/// Skips the rest of one nested-meta item (`= value` or `(...)`), up to the next
/// top-level comma. Commas inside `<...>` (as in `HashMap<K, V>`) do not end the item.
fn skip_value(input: ParseStream<'_>) -> syn::Result<()> {
    let mut depth = 0usize;
    let mut after_dash = false;
    while !input.is_empty() {
        if depth == 0 && input.peek(Token![,]) {
            break;
        }
        let tree: TokenTree = input.parse()?;
        let mut dash = false;
        if let TokenTree::Punct(p) = &tree {
            match p.as_char() {
                '<' => depth += 1,
                '>' if !after_dash => depth = depth.saturating_sub(1),
                '-' => dash = true,
                _ => {}
            }
        }
        after_dash = dash;
    }
    Ok(())
}
