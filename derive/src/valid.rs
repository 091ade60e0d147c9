//! Validation: from the parsed input to a model the expansion can trust.

use proc_macro2::Span;
use quote::format_ident;
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Ident, Lit, Path, Type};

use crate::ast::{example, Errors, Field, Input, Setting};

/// Everything the expansion needs, checked.
pub(crate) struct Model {
    pub ident: Ident,
    /// The diesel table module path, e.g. `users` or `crate::schema::users`.
    pub table: Path,
    /// The last segment of `table`, as a string.
    pub table_name: String,
    pub region: String,
    /// Milliseconds.
    pub ttl: Option<u64>,
    /// Milliseconds.
    pub tti: Option<u64>,
    pub max_entries: Option<u64>,
    pub max_bytes: Option<u64>,
    /// `Some(None)`: `negative_ttl = "off"`; `Some(Some(ms))`: a duration.
    pub negative_ttl: Option<Option<u64>>,
    pub fields: Vec<Field>,
    /// Indexes of the primary key's fields in `fields`, in key order (one for a plain id,
    /// several for a composite key).
    pub ids: Vec<usize>,
    /// Index of the version field in `fields`.
    pub version: usize,
    /// Backends named by `#[diesel(check_for_backend(...))]`; `None`: all of them.
    pub backends: Option<Vec<String>>,
    /// The struct's visibility, given to the generated unique-key types.
    pub vis: syn::Visibility,
    /// Unique keys: the generated type's name and the indexes of its fields.
    pub unique_keys: Vec<UniqueKeyDef>,
    /// Index keys (cached collections), named like unique keys.
    pub index_keys: Vec<UniqueKeyDef>,
    /// `#[cache(shared)]`: kept in the shared (Redis) tier too.
    pub shared: bool,
}

/// One unique key (`#[cache(unique)]` on a field or `#[cache(unique(a, b))]`).
pub(crate) struct UniqueKeyDef {
    /// `{Struct}By{Fields}`, like `UserByEmail`.
    pub name: Ident,
    pub fields: Vec<usize>,
}

/// `tenant_id` → `TenantId`.
fn camel(ident: &Ident) -> String {
    ident
        .unraw()
        .to_string()
        .split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map_or_else(String::new, |f| f.to_uppercase().chain(c).collect())
        })
        .collect()
}

impl Model {
    /// The primary key's fields, in key order.
    pub(crate) fn id_fields(&self) -> impl Iterator<Item = &Field> + '_ {
        self.ids.iter().map(|&i| &self.fields[i])
    }

    /// Whether the primary key has more than one column.
    pub(crate) fn composite(&self) -> bool {
        self.ids.len() > 1
    }

    pub(crate) fn version_field(&self) -> &Field {
        &self.fields[self.version]
    }
}

/// Checks `input`, pushing every problem found into `errors`.
pub(crate) fn validate(input: Input, errors: &mut Errors) -> Option<Model> {
    let Input {
        ident,
        vis,
        table,
        unreadable_diesel,
        backends,
        primary_key,
        attrs,
        fields,
    } = input;

    let table = match (table, unreadable_diesel) {
        (Some(table), _) => Some(table),
        (None, Some(span)) => {
            errors.add(
                span,
                "#[derive(Cached)] could not read this `#[diesel(...)]` attribute: fix the \
                 error diesel reports for it, and make sure it has `table_name = ...`",
            );
            None
        }
        (None, None) => {
            errors.add(
                ident.span(),
                format!(
                    "missing `#[diesel(table_name = ...)]`: #[derive(Cached)] needs the diesel \
                     table this struct maps to; add `#[diesel(table_name = {})]` (or whatever \
                     your `table!` module is called) above the struct",
                    table_guess(&ident.to_string())
                ),
            );
            None
        }
    };

    let region = attrs.region.as_ref().and_then(|s| match &s.value {
        Lit::Str(lit) if lit.value().trim().is_empty() => {
            errors.add(
                lit.span(),
                "`region` must not be empty: write a name like `region = \"users\"`, or \
                 remove it to name the region after the table",
            );
            None
        }
        Lit::Str(lit) => Some(lit.value()),
        other => {
            expected_string(errors, s, other);
            None
        }
    });
    let ttl = attrs.ttl.as_ref().and_then(|s| duration(errors, s, false)?);
    let tti = attrs.tti.as_ref().and_then(|s| duration(errors, s, false)?);
    let negative_ttl = attrs
        .negative_ttl
        .as_ref()
        .and_then(|s| duration(errors, s, true));
    let max_entries = attrs.max_entries.as_ref().and_then(|s| match &s.value {
        Lit::Int(lit) => match lit.base10_parse::<u64>() {
            Ok(0) => {
                errors.add(
                    lit.span(),
                    "`max_entries` must be greater than 0: give the largest number of rows \
                     to keep, like `max_entries = 10_000`, or remove it for the default",
                );
                None
            }
            Ok(n) => Some(n),
            Err(e) => {
                errors.push(e);
                None
            }
        },
        other => {
            errors.add(
                other.span(),
                "`max_entries` takes an integer: write `max_entries = 10_000`",
            );
            None
        }
    });
    let max_bytes = attrs.max_bytes.as_ref().and_then(|s| bytes(errors, s));
    if let (Some(_), Some(second)) = (&attrs.max_entries, &attrs.max_bytes) {
        errors.add(
            second.key.span(),
            "`max_entries` and `max_bytes` cannot both be set: bound the region by entry \
             count or by estimated bytes; remove one of them",
        );
    }

    let ids = primary_key_fields(&ident, &fields, primary_key.as_deref(), errors);
    let version = find_role(
        &fields,
        |f| f.version.as_ref(),
        |f| f.id.is_none() && f.member.unraw() == "version",
        "version",
        errors,
    );
    for field in &fields {
        if let (Some(_), Some(v)) = (&field.id, &field.version) {
            errors.add(
                v.span(),
                "a field cannot be both `#[cache(id)]` and `#[cache(version)]`: keep the \
                 version in a column of its own, like `version: i64`",
            );
        }
    }
    let version = match version {
        Some(Some(i)) => {
            let ty = &fields[i].ty;
            match version_type(ty) {
                Some(_) => Some(i),
                None => {
                    errors.add(
                        ty.span(),
                        format!(
                            "the version field must be `i32` or `i64`, found `{}`; \
                             write `{}: i64`",
                            type_string(ty),
                            fields[i].member
                        ),
                    );
                    None
                }
            }
        }
        Some(None) => {
            errors.add(
                ident.span(),
                "`#[derive(Cached)]` needs a version column: add a `version: i64` field or \
                 mark one with `#[cache(version)]`",
            );
            None
        }
        None => None,
    };

    let key_defs = |kind: &str,
                    marked: &dyn Fn(&Field) -> bool,
                    lists: &[Vec<Ident>],
                    errors: &mut Errors| {
        let mut defs = Vec::new();
        for (i, field) in fields.iter().enumerate() {
            if marked(field) {
                defs.push(UniqueKeyDef {
                    name: format_ident!("{}By{}", ident, camel(&field.member)),
                    fields: vec![i],
                });
            }
        }
        for list in lists {
            let mut idx = Vec::new();
            for name in list {
                match fields.iter().position(|f| f.member.unraw() == *name) {
                    Some(i) => idx.push(i),
                    None => errors.add(
                        name.span(),
                        format!("no field `{name}` in `{ident}`: `{kind}(...)` lists field names of this struct"),
                    ),
                }
            }
            if idx.len() == list.len() {
                let suffix: String = list.iter().map(camel).collect();
                defs.push(UniqueKeyDef {
                    name: format_ident!("{}By{}", ident, suffix),
                    fields: idx,
                });
            }
        }
        defs
    };
    let unique_keys = key_defs("unique", &|f| f.unique.is_some(), &attrs.unique, errors);
    let index_keys = key_defs("index", &|f| f.index.is_some(), &attrs.index, errors);
    for key in &index_keys {
        if unique_keys.iter().any(|u| u.name == key.name) {
            errors.add(
                key.name.span(),
                format!(
                    "`{}` is declared both `unique` and `index`: a unique key already answers \
                     with its one row through `find_by`; keep one of the two",
                    key.name
                ),
            );
        }
    }

    let table = table?;
    let (ids, version) = (ids?, version?);
    if ids.contains(&version) {
        // Reported above.
        return None;
    }
    let table_name = table
        .segments
        .last()
        .map(|s| s.ident.unraw().to_string())
        .unwrap_or_default();
    Some(Model {
        ident,
        region: region.unwrap_or_else(|| table_name.clone()),
        table,
        table_name,
        ttl,
        tti,
        max_entries,
        max_bytes,
        negative_ttl,
        fields,
        ids,
        version,
        backends,
        vis,
        unique_keys,
        index_keys,
        shared: attrs.shared.is_some(),
    })
}

/// The primary key's fields, in key order: those marked `#[cache(id)]` (in the order of
/// `#[diesel(primary_key(...))]` when it is given too, which must name the same fields),
/// else the fields of `#[diesel(primary_key(...))]`, else the field named `id`. `None`
/// when an error was reported.
fn primary_key_fields(
    ident: &Ident,
    fields: &[Field],
    primary_key: Option<&[Ident]>,
    errors: &mut Errors,
) -> Option<Vec<usize>> {
    let marked: Vec<usize> = (0..fields.len())
        .filter(|&i| fields[i].id.is_some())
        .collect();
    if let Some(names) = primary_key {
        let mut ids = Vec::new();
        for name in names {
            match fields.iter().position(|f| f.member.unraw() == *name) {
                Some(i) => ids.push(i),
                None => {
                    errors.add(
                        name.span(),
                        format!(
                            "no field `{name}` in `{ident}`: `#[diesel(primary_key(...))]` lists \
                             field names of this struct"
                        ),
                    );
                    return None;
                }
            }
        }
        if !marked.is_empty() {
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            if sorted != marked {
                let span = fields[marked[0]]
                    .id
                    .as_ref()
                    .map_or_else(Span::call_site, Ident::span);
                errors.add(
                    span,
                    "the fields marked `#[cache(id)]` are not the fields of \
                     `#[diesel(primary_key(...))]`: remove the `#[cache(id)]` marks (the \
                     primary key is enough)",
                );
                return None;
            }
        }
        return (!ids.is_empty()).then_some(ids).or_else(|| {
            errors.add(
                ident.span(),
                "`#[diesel(primary_key())]` names no field: list the primary key's fields",
            );
            None
        });
    }
    if !marked.is_empty() {
        return Some(marked);
    }
    match fields
        .iter()
        .position(|f| f.version.is_none() && f.member.unraw() == "id")
    {
        Some(i) => Some(vec![i]),
        None => {
            errors.add(
                ident.span(),
                "`#[derive(Cached)]` needs a primary key: add an `id` field, mark the key's \
                 field with `#[cache(id)]`, or name a composite key's fields with \
                 `#[diesel(primary_key(a, b))]`",
            );
            None
        }
    }
}

/// The field playing a role: the one marked with the attribute, else the one found by
/// `by_name`. `None` when an error was reported; `Some(None)` when there is no such field.
fn find_role(
    fields: &[Field],
    marker: impl Fn(&Field) -> Option<&Ident>,
    by_name: impl Fn(&Field) -> bool,
    role: &str,
    errors: &mut Errors,
) -> Option<Option<usize>> {
    let marked: Vec<usize> = (0..fields.len())
        .filter(|&i| marker(&fields[i]).is_some())
        .collect();
    if marked.len() > 1 {
        for &i in &marked[1..] {
            let span = marker(&fields[i]).map_or_else(|| fields[i].member.span(), Ident::span);
            errors.add(
                span,
                format!(
                    "two fields are marked `#[cache({role})]`: keep it only on `{}`",
                    fields[marked[0]].member
                ),
            );
        }
        return None;
    }
    Some(
        marked
            .first()
            .copied()
            .or_else(|| fields.iter().position(by_name)),
    )
}

/// `Some("i32" | "i64")` when `ty` is one of the supported version types.
pub(crate) fn version_type(ty: &Type) -> Option<&'static str> {
    let Type::Path(p) = ty else { return None };
    if p.qself.is_some() {
        return None;
    }
    let last = p.path.segments.last()?;
    if !last.arguments.is_none() {
        return None;
    }
    match last.ident.to_string().as_str() {
        "i32" => Some("i32"),
        "i64" => Some("i64"),
        _ => None,
    }
}

fn type_string(ty: &Type) -> String {
    quote::quote!(#ty)
        .to_string()
        .replace(" < ", "<")
        .replace(" >", ">")
        .replace(" :: ", "::")
        .replace(" ,", ",")
}

fn expected_string(errors: &mut Errors, setting: &Setting, lit: &Lit) {
    let key = &setting.key;
    errors.add(
        lit.span(),
        format!("`{key}` takes a string: write `{key} = {}`", example(key)),
    );
}

const DURATION_HELP: &str =
    "write an integer and a unit, like \"500ms\", \"30s\", \"10m\", \"2h\" or \"1d\"";

/// Milliseconds of a duration setting; `Some(None)` for `"off"` when `allow_off`.
fn duration(errors: &mut Errors, setting: &Setting, allow_off: bool) -> Option<Option<u64>> {
    let key = &setting.key;
    let Lit::Str(lit) = &setting.value else {
        let hint = if allow_off {
            format!("`{key}` takes a string duration or \"off\": {DURATION_HELP}, or \"off\"")
        } else {
            format!("`{key}` takes a string duration: {DURATION_HELP}")
        };
        errors.add(setting.value.span(), hint);
        return None;
    };
    let text = lit.value();
    if allow_off && text == "off" {
        return Some(None);
    }
    match parse_duration_ms(&text) {
        Some(0) => {
            let instead = if allow_off {
                "write \"off\" to disable negative caching"
            } else {
                "remove it for no expiry"
            };
            errors.add(
                lit.span(),
                format!("`{key}` must be greater than 0: {instead}"),
            );
            None
        }
        Some(ms) => Some(Some(ms)),
        None => {
            let off = if allow_off {
                " (or \"off\" to disable negative caching)"
            } else {
                ""
            };
            errors.add(
                lit.span(),
                format!("invalid duration {text:?}: {DURATION_HELP}{off}"),
            );
            None
        }
    }
}

/// `"10m"` → 600000. `None` when malformed or too large.
pub(crate) fn parse_duration_ms(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

const BYTES_HELP: &str =
    "write an integer of bytes or a string with a unit, like `max_bytes = 1000000`, \
     \"1000B\", \"512KiB\", \"64MiB\" or \"1GiB\"";

fn bytes(errors: &mut Errors, setting: &Setting) -> Option<u64> {
    let n = match &setting.value {
        Lit::Int(lit) => match lit.base10_parse::<u64>() {
            Ok(n) => n,
            Err(e) => {
                errors.push(e);
                return None;
            }
        },
        Lit::Str(lit) => match parse_bytes(&lit.value()) {
            Some(n) => n,
            None => {
                errors.add(
                    lit.span(),
                    format!("invalid size {:?}: {BYTES_HELP}", lit.value()),
                );
                return None;
            }
        },
        other => {
            errors.add(other.span(), format!("invalid `max_bytes`: {BYTES_HELP}"));
            return None;
        }
    };
    if n == 0 {
        errors.add(
            setting.value.span(),
            "`max_bytes` must be greater than 0: give a budget like `max_bytes = \"64MiB\"`, \
             or remove it",
        );
        return None;
    }
    Some(n)
}

/// `"64MiB"` → 67108864. `None` when malformed or too large.
pub(crate) fn parse_bytes(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let factor: u64 = match unit {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// The table name diesel users usually give a struct's table: `UserName` → `user_names`.
fn table_guess(ident: &str) -> String {
    let mut out = String::new();
    for (i, c) in ident.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    if !out.ends_with('s') {
        out.push('s');
    }
    out
}
