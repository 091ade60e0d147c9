//! The change-feed payload, defined once for every backend (C7).
//!
//! Every change the database reports is one text payload, sent by `pg_notify` on
//! PostgreSQL and stored in the `payload` column of the outbox table on MariaDB/MySQL and
//! SQLite:
//!
//! ```text
//! v2|<op>|<schema>|<table>|<version>|<id length>|<id>[|<extension>…]
//! v2|f|<schema>|<table>
//! ```
//!
//! - `v2` is [`FEED_VERSION`]; a reader ignores nothing silently: an unknown version makes
//!   the listener clear every region.
//! - `<op>` is `i` (insert), `u` (update) or `d` (delete); `f` flushes the whole table
//!   (a statement changing many rows, `TRUNCATE`, an id too long for a notification).
//! - `<schema>` is the PostgreSQL schema, the MariaDB database, or `main` on SQLite;
//!   `<table>` is the table's SQL name (not the Rust name of its `table!`).
//! - `<version>` is the row's version after the change; for a delete, the deleted
//!   version + 1 (what a tombstone holds).
//! - `<id length>` is the number of characters of `<id>`, the id as text, so the id may
//!   contain `|` and fields may follow it.
//! - Extensions: further `|`-separated fields, each `<name>=<length>:<value>` or
//!   `<name>=null`: `o<key>.<column>` and `n<key>.<column>` carry the old and new values
//!   of unique-key columns (keys numbered from 0) and of index-key columns (keys numbered
//!   from [`INDEX_KEY_BASE`], 100, so that a feed generated from the database catalog,
//!   which knows unique constraints only, never gives an index key's number to another
//!   key). Readers use the index-key values to drop exactly the cached lists a change
//!   touched (C10), and skip the others.

/// The payload version the installed triggers must send, and this library reads.
pub const FEED_VERSION: u32 = 2;

/// The number of the first index key in payload extensions (`o100.0`, `n100.0`, …).
pub const INDEX_KEY_BASE: usize = 100;

/// The prefix of every payload of this version.
pub(crate) const PREFIX: &str = "v2|";

/// What happened to a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeOp {
    /// A row was inserted.
    Insert,
    /// A row was updated (its version raised, by the writer or the database).
    Update,
    /// A row was deleted.
    Delete,
}

/// One parsed payload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Payload<'a> {
    Row {
        op: ChangeOp,
        schema: &'a str,
        table: &'a str,
        version: i64,
        id: &'a str,
        /// The extensions after the id, `|name=…|name=…` (empty when none).
        ext: &'a str,
    },
    Flush {
        schema: &'a str,
        table: &'a str,
    },
    /// A version 1 payload (`v1|schema|table|…`), from triggers not upgraded yet (here or
    /// in another schema sharing the channel): the listener flushes that table.
    Legacy {
        schema: &'a str,
        table: &'a str,
    },
}

/// Parses one payload; `None` if it is not a well-formed version 2 payload.
pub(crate) fn parse_payload(p: &str) -> Option<Payload<'_>> {
    if let Some(rest) = p.strip_prefix("v1|") {
        let mut parts = rest.splitn(3, '|');
        let schema = parts.next()?;
        let table = parts.next()?;
        return Some(Payload::Legacy { schema, table });
    }
    let rest = p.strip_prefix(PREFIX)?;
    let (op, rest) = rest.split_once('|')?;
    let (schema, rest) = rest.split_once('|')?;
    if op == "f" {
        let table = rest.split('|').next()?;
        return Some(Payload::Flush { schema, table });
    }
    let op = match op {
        "i" => ChangeOp::Insert,
        "u" => ChangeOp::Update,
        "d" => ChangeOp::Delete,
        _ => return None,
    };
    let (table, rest) = rest.split_once('|')?;
    let (version, rest) = rest.split_once('|')?;
    let (len, rest) = rest.split_once('|')?;
    let version: i64 = version.parse().ok()?;
    let len: usize = len.parse().ok()?;
    // `len` characters, not bytes.
    let end = match rest.char_indices().nth(len) {
        Some((at, _)) => at,
        None if rest.chars().count() == len => rest.len(),
        None => return None,
    };
    let (id, tail) = rest.split_at(end);
    if !(tail.is_empty() || tail.starts_with('|')) {
        return None;
    }
    Some(Payload::Row {
        op,
        schema,
        table,
        version,
        id,
        ext: tail,
    })
}

/// The extensions of a row payload (the `ext` of [`Payload::Row`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Extensions<'a>(pub(crate) &'a str);

impl<'a> Extensions<'a> {
    /// The extension `name`: `Some(Some(value))`, `Some(None)` for `null`, `None` when
    /// absent or when the extensions cannot be read (a malformed length).
    pub fn get(&self, name: &str) -> Option<Option<&'a str>> {
        let mut rest = self.0;
        while let Some(after) = rest.strip_prefix('|') {
            let (n, value) = after.split_once('=')?;
            if let Some(next) = value.strip_prefix("null") {
                if next.is_empty() || next.starts_with('|') {
                    if n == name {
                        return Some(None);
                    }
                    rest = next;
                    continue;
                }
            }
            let (len, value) = value.split_once(':')?;
            let len: usize = len.parse().ok()?;
            // `len` characters, not bytes.
            let end = match value.char_indices().nth(len) {
                Some((at, _)) => at,
                None if value.chars().count() == len => value.len(),
                None => return None,
            };
            if n == name {
                return Some(Some(&value[..end]));
            }
            rest = &value[end..];
        }
        None
    }
}

/// The name of a change-feed trigger of `table` (`suffix`: `ins`, `upd`, `del`, `trunc`,
/// `bump`), with the payload version in it so the catalog tells which version is installed.
pub(crate) fn trigger_name(table: &str, suffix: &str) -> String {
    format!("{table}_diesel_l2_v{FEED_VERSION}_{suffix}")
}

/// The trigger names of the version 1 feed, dropped by the upgrade.
pub(crate) fn v1_trigger_name(table: &str, suffix: &str) -> String {
    format!("{table}_diesel_l2_{suffix}")
}

/// The SQL name of a table as a backend renders it (`"users"`, `` `users` `` or
/// `"schema"."users"`): the last identifier, unquoted. Used by `#[derive(Cached)]`.
pub fn sql_table_name<DB, T>(table: &T) -> Option<String>
where
    DB: diesel::backend::Backend + Default,
    DB::QueryBuilder: Default,
    T: diesel::query_builder::QueryFragment<DB>,
{
    let rendered = diesel::debug_query::<DB, _>(table).to_string();
    let sql = rendered.split(" -- binds:").next()?;
    last_identifier(sql)
}

/// The last quoted (or bare) identifier of `a.b`, `"a"."b"` or `` `a`.`b` ``.
fn last_identifier(sql: &str) -> Option<String> {
    let mut names = Vec::new();
    let mut chars = sql.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '`' => {
                let mut name = String::new();
                loop {
                    match chars.next()? {
                        q if q == c && chars.peek() == Some(&c) => {
                            chars.next();
                            name.push(c);
                        }
                        q if q == c => break,
                        other => name.push(other),
                    }
                }
                names.push(name);
            }
            '.' => {}
            c if c.is_whitespace() => {}
            c => {
                let mut name = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n == '.' || n.is_whitespace() {
                        break;
                    }
                    name.push(n);
                    chars.next();
                }
                names.push(name);
            }
        }
    }
    names.pop().filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_parse() {
        let e = Extensions("|o0.0=9:ada@x.org|n0.0=null|o100.0=3:a|b|n100.0=2:é7");
        assert_eq!(e.get("o0.0"), Some(Some("ada@x.org")));
        assert_eq!(e.get("n0.0"), Some(None));
        assert_eq!(e.get("o100.0"), Some(Some("a|b")));
        assert_eq!(e.get("n100.0"), Some(Some("é7")));
        assert_eq!(e.get("n100.1"), None);
        assert_eq!(Extensions("").get("o0.0"), None);
        assert_eq!(Extensions("|o0.0=5:ab").get("o0.0"), None);
        assert_eq!(Extensions("|o0.0=x:ab").get("o0.0"), None);
    }

    #[test]
    fn payloads_parse() {
        assert_eq!(
            parse_payload("v2|u|public|users|3|2|42"),
            Some(Payload::Row {
                op: ChangeOp::Update,
                schema: "public",
                table: "users",
                version: 3,
                id: "42",
                ext: ""
            })
        );
        assert_eq!(
            parse_payload("v2|i|s|tags|1|3|a|b|k=1:x"),
            Some(Payload::Row {
                op: ChangeOp::Insert,
                schema: "s",
                table: "tags",
                version: 1,
                id: "a|b",
                ext: "|k=1:x"
            })
        );
        assert_eq!(
            parse_payload("v2|u|public|users|3|2|42|o0.0=9:ada@x.org|n0.0=null"),
            Some(Payload::Row {
                op: ChangeOp::Update,
                schema: "public",
                table: "users",
                version: 3,
                id: "42",
                ext: "|o0.0=9:ada@x.org|n0.0=null"
            })
        );
        assert_eq!(
            parse_payload("v2|d|s|tags|2|2|é|"),
            Some(Payload::Row {
                op: ChangeOp::Delete,
                schema: "s",
                table: "tags",
                version: 2,
                id: "é|",
                ext: ""
            })
        );
        assert_eq!(
            parse_payload("v2|f|s|users"),
            Some(Payload::Flush {
                schema: "s",
                table: "users"
            })
        );
        assert_eq!(
            parse_payload("v1|s|users|1|1"),
            Some(Payload::Legacy {
                schema: "s",
                table: "users"
            })
        );
        assert!(parse_payload("v3|u|s|users|1|1|1").is_none());
        assert!(parse_payload("v2|x|s|users|1|1|1").is_none());
        assert!(parse_payload("v2|u|s|users|x|1|1").is_none());
        assert!(parse_payload("v2|u|s|users|1|5|1").is_none());
        assert!(parse_payload("v2|u|s|users|1|1|12").is_none());
        assert!(parse_payload("garbage").is_none());
    }

    #[test]
    fn identifiers_unquote() {
        assert_eq!(last_identifier("\"users\"").as_deref(), Some("users"));
        assert_eq!(last_identifier("`my``t`").as_deref(), Some("my`t"));
        assert_eq!(last_identifier("\"s\".\"a\"\"b\"").as_deref(), Some("a\"b"));
        assert_eq!(last_identifier("s.t").as_deref(), Some("t"));
        assert_eq!(last_identifier(""), None);
    }
}
