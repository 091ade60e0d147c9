//! Tables from an app's `schema.rs`: diesel's `table!` declarations, read with the parser
//! diesel's own macro uses (so `#[sql_name]` on tables and columns counts the same way).

use std::path::Path;

use diesel_table_macro_syntax::TableDecl;
use syn::ext::IdentExt;

use crate::TableInfo;

/// Every `table!` of the file at `path` (also inside inline modules).
pub(crate) fn tables(path: &Path) -> Result<Vec<TableInfo>, String> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    parse(&source).map_err(|e| format!("`{}`: {e}", path.display()))
}

/// Every `table!` of `source`.
pub(crate) fn parse(source: &str) -> Result<Vec<TableInfo>, String> {
    let file = syn::parse_file(source).map_err(|e| format!("not Rust that parses: {e}"))?;
    let mut out = Vec::new();
    collect(&file.items, &mut out)?;
    if out.is_empty() {
        return Err("no `table!` declaration found: give the file diesel's \
                    `print-schema` writes (or your own `diesel::table!` calls)"
            .into());
    }
    Ok(out)
}

fn collect(items: &[syn::Item], out: &mut Vec<TableInfo>) -> Result<(), String> {
    for item in items {
        match item {
            syn::Item::Macro(m)
                if m.mac
                    .path
                    .segments
                    .last()
                    .is_some_and(|s| s.ident == "table") =>
            {
                let decl: TableDecl = syn::parse2(m.mac.tokens.clone())
                    .map_err(|e| format!("a `table!` that does not parse: {e}"))?;
                out.push(table(&decl)?);
            }
            syn::Item::Mod(m) => {
                if let Some((_, items)) = &m.content {
                    collect(items, out)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn table(decl: &TableDecl) -> Result<TableInfo, String> {
    let rust_name = decl.table_name.unraw().to_string();
    let columns: Vec<(String, String)> = decl
        .column_defs
        .iter()
        .map(|c| (c.column_name.unraw().to_string(), c.sql_name.clone()))
        .collect();
    // `table! { users { … } }` without a key list means `(id)`, as in diesel.
    let keys: Vec<String> = match &decl.primary_keys {
        Some(pk) => pk.keys.iter().map(|k| k.unraw().to_string()).collect(),
        None => vec!["id".to_string()],
    };
    let primary_key = keys
        .iter()
        .map(|k| {
            columns
                .iter()
                .find(|(rust, _)| rust == k)
                .map(|(_, sql)| sql.clone())
                .ok_or_else(|| {
                    format!(
                        "`table! {{ {rust_name} ({}) … }}`: no column `{k}` is declared",
                        keys.join(", ")
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TableInfo {
        name: decl.sql_name.clone(),
        rust_name: Some(rust_name),
        columns: columns.into_iter().map(|(_, sql)| sql).collect(),
        primary_key,
        unique_keys: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sql_names_and_keys() {
        let tables = parse(
            r#"
            // @generated automatically by Diesel CLI.
            diesel::table! {
                users (id) { id -> Int8, version -> Int8, email -> Varchar }
            }
            pub mod inner {
                diesel::table! {
                    #[sql_name = "notes"]
                    memos (note_id) {
                        note_id -> Text,
                        #[sql_name = "row_version"]
                        rev -> BigInt,
                    }
                }
            }
            table! { plain { id -> Integer, version -> Integer } }
            diesel::joinable!(a -> b (c));
            "#,
        )
        .unwrap();
        let names: Vec<_> = tables
            .iter()
            .map(|t| (t.name.as_str(), t.primary_key.clone(), t.columns.clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                (
                    "users",
                    vec!["id".to_string()],
                    vec!["id".into(), "version".into(), "email".into()]
                ),
                (
                    "notes",
                    vec!["note_id".to_string()],
                    vec!["note_id".into(), "row_version".into()]
                ),
                (
                    "plain",
                    vec!["id".to_string()],
                    vec!["id".into(), "version".into()]
                ),
            ]
        );
        assert!(parse("fn main() {}").unwrap_err().contains("no `table!`"));
        assert!(parse("diesel::table! { t (nope) { id -> Int8 } }")
            .unwrap_err()
            .contains("no column `nope`"));
    }
}
