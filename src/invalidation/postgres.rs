//! PostgreSQL: statement-level triggers that `pg_notify`, and the `LISTEN` loop.

use super::feed::{trigger_name, v1_trigger_name, FEED_VERSION};

/// The notification channel.
pub const CHANNEL: &str = "diesel_l2";

/// SQL that installs the change feed on `table` (idempotent: safe to run again, and
/// upgrades the triggers of an earlier feed version): [`postgres_notify_function_sql`]
/// followed by [`postgres_table_triggers_sql`].
pub fn postgres_triggers_sql(
    table: &str,
    id_column: &str,
    version_column: &str,
    flush_threshold: u32,
) -> String {
    postgres_notify_function_sql()
        + &postgres_table_triggers_sql(table, id_column, version_column, flush_threshold)
}

/// The shared trigger functions `diesel_l2_notify_v2()` and `diesel_l2_bump_v2()`,
/// installed once per schema (`CREATE OR REPLACE`).
pub fn postgres_notify_function_sql() -> String {
    NOTIFY_FUNCTION.to_string()
}

/// The triggers of one table (needs [`postgres_notify_function_sql`] installed first).
///
/// - A `BEFORE UPDATE` row trigger makes the version a row clock: an update that does not
///   raise it (`UPDATE users SET bio = …` from any client) gets `version = old + 1`.
/// - Three `AFTER … FOR EACH STATEMENT` triggers (insert, update, delete) with transition
///   tables send one payload per row (see [`crate::invalidation`] for the format); a
///   statement changing more than `flush_threshold` rows sends a single flush of the
///   table, so a bulk `UPDATE` does not flood the channel. A payload that would not fit
///   a notification (8,000 bytes: a very long id) is sent as a flush of the table, so the
///   user's write never fails because of the feed.
/// - An `AFTER TRUNCATE` statement trigger flushes the table (also when it is truncated
///   by `TRUNCATE … CASCADE` from another table).
///
/// Notifications are delivered at commit only. Updates of the primary key itself are not
/// supported. The triggers of the version 1 feed are dropped.
pub fn postgres_table_triggers_sql(
    table: &str,
    id_column: &str,
    version_column: &str,
    flush_threshold: u32,
) -> String {
    postgres_table_triggers_sql_with_keys(table, &[id_column], version_column, flush_threshold, &[])
}

/// [`postgres_table_triggers_sql`], with the primary key's columns (several for a
/// composite key, whose id text is `<length>:<value>` per column) and the table's unique
/// keys (each a list of columns): every payload also carries the old and new values of
/// their columns (the `o` and `n` extensions, see [`crate::invalidation`]).
pub fn postgres_table_triggers_sql_with_keys(
    table: &str,
    id_columns: &[&str],
    version_column: &str,
    flush_threshold: u32,
    unique_keys: &[&[&str]],
) -> String {
    let numbered: Vec<(usize, &[&str])> = unique_keys.iter().copied().enumerate().collect();
    postgres_table_triggers_sql_numbered(
        table,
        id_columns,
        version_column,
        flush_threshold,
        &numbered,
    )
}

/// [`postgres_table_triggers_sql_with_keys`] with each key's number given: unique keys
/// from 0, index keys from [`INDEX_KEY_BASE`](crate::invalidation::feed::INDEX_KEY_BASE).
pub(crate) fn postgres_table_triggers_sql_numbered(
    table: &str,
    id_columns: &[&str],
    version_column: &str,
    flush_threshold: u32,
    unique_keys: &[(usize, &[&str])],
) -> String {
    let t = quote_ident(table);
    // One key column is the first argument; a composite key's columns follow the
    // threshold as `'id.<n>', column` pairs, with an empty first argument.
    let single = match id_columns {
        [one] => *one,
        _ => "",
    };
    let mut args = format!(
        "{}, {}, '{flush_threshold}'",
        quote_literal(single),
        quote_literal(version_column)
    );
    if single.is_empty() {
        for (n, column) in id_columns.iter().enumerate() {
            args.push_str(&format!(", 'id.{n}', {}", quote_literal(column)));
        }
    }
    for &(i, key) in unique_keys {
        for (j, column) in key.iter().enumerate() {
            args.push_str(&format!(", '{i}.{j}', {}", quote_literal(column)));
        }
    }
    let upd_transition = if unique_keys.is_empty() {
        "REFERENCING NEW TABLE AS new_rows "
    } else {
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    };
    let v = quote_ident(version_column);
    let mut sql = String::new();
    for suffix in ["ins", "upd", "del"] {
        let old = quote_ident(&v1_trigger_name(table, suffix));
        sql.push_str(&format!("DROP TRIGGER IF EXISTS {old} ON {t};\n"));
    }
    let bump = quote_ident(&trigger_name(table, "bump"));
    sql.push_str(&format!(
        "DROP TRIGGER IF EXISTS {bump} ON {t};\n\
         CREATE TRIGGER {bump} BEFORE UPDATE ON {t} FOR EACH ROW \
         WHEN (NEW.{v} IS NULL OR NEW.{v} <= OLD.{v}) \
         EXECUTE FUNCTION diesel_l2_bump_v{FEED_VERSION}({});\n",
        quote_literal(version_column)
    ));
    for (suffix, event, transition) in [
        ("ins", "INSERT", "REFERENCING NEW TABLE AS new_rows "),
        ("upd", "UPDATE", upd_transition),
        ("del", "DELETE", "REFERENCING OLD TABLE AS old_rows "),
        ("trunc", "TRUNCATE", ""),
    ] {
        let trigger = quote_ident(&trigger_name(table, suffix));
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS {trigger} ON {t};\n\
             CREATE TRIGGER {trigger} AFTER {event} ON {t} {transition}\
             FOR EACH STATEMENT EXECUTE FUNCTION diesel_l2_notify_v{FEED_VERSION}({args});\n"
        ));
    }
    sql
}

/// Drops what version 1 of the feed left, once every table's triggers are upgraded (the
/// table helpers drop version 1's triggers): its function `diesel_l2_notify()`.
pub fn postgres_drop_v1_sql() -> String {
    "DROP FUNCTION IF EXISTS diesel_l2_notify();\n".to_string()
}

/// The trigger suffixes the feed check expects on every cached table.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
const SUFFIXES: [&str; 5] = ["bump", "ins", "upd", "del", "trunc"];

/// The shared trigger functions. Payloads: see [`crate::invalidation`].
const NOTIFY_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION diesel_l2_notify_v2() RETURNS trigger LANGUAGE plpgsql AS $diesel_l2$
DECLARE
    op text := CASE TG_OP WHEN 'INSERT' THEN 'i' WHEN 'UPDATE' THEN 'u' ELSE 'd' END;
    src text := CASE WHEN TG_OP = 'DELETE' THEN 'old_rows' ELSE 'new_rows' END;
    bump int := CASE WHEN TG_OP = 'DELETE' THEN 1 ELSE 0 END;
    head text := 'v2|' || op || '|' || TG_TABLE_SCHEMA || '|' || TG_TABLE_NAME || '|';
    flush text := 'v2|f|' || TG_TABLE_SCHEMA || '|' || TG_TABLE_NAME;
    n bigint;
    ext text := '';
    joined text := '';
    idtext text := '';
    samerow text := '';
    i int := 3;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('diesel_l2', flush);
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT count(*) FROM %I', src) INTO n;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    IF n > TG_ARGV[2]::bigint THEN
        PERFORM pg_notify('diesel_l2', flush);
    ELSE
        -- Unique-key columns (arguments 4, 5, …: '<key>.<column>', column name): old and
        -- new values as extensions, `|o<k>.<c>=<length>:<value>` or `…=null`.
        -- A composite key's columns (arguments 4, 5, …: 'id.<n>', column name): the id
        -- text is `<length>:<value>` per column.
        WHILE i + 1 < TG_NARGS LOOP
            IF left(TG_ARGV[i], 3) = 'id.' THEN
                idtext := idtext || format(' || length(r.%I::text) || '':'' || r.%I::text',
                    TG_ARGV[i + 1], TG_ARGV[i + 1]);
                samerow := samerow || format(' AND o.%I = r.%I', TG_ARGV[i + 1], TG_ARGV[i + 1]);
            ELSIF TG_OP = 'DELETE' THEN
                ext := ext || format(' || COALESCE(''|o%s='' || length(r.%I::text) || '':'' || r.%I::text, ''|o%s=null'')',
                    TG_ARGV[i], TG_ARGV[i + 1], TG_ARGV[i + 1], TG_ARGV[i]);
            ELSE
                IF TG_OP = 'UPDATE' THEN
                    ext := ext || format(' || COALESCE(''|o%s='' || length(o.%I::text) || '':'' || o.%I::text, ''|o%s=null'')',
                        TG_ARGV[i], TG_ARGV[i + 1], TG_ARGV[i + 1], TG_ARGV[i]);
                END IF;
                ext := ext || format(' || COALESCE(''|n%s='' || length(r.%I::text) || '':'' || r.%I::text, ''|n%s=null'')',
                    TG_ARGV[i], TG_ARGV[i + 1], TG_ARGV[i + 1], TG_ARGV[i]);
            END IF;
            i := i + 2;
        END LOOP;
        IF TG_ARGV[0] <> '' THEN
            idtext := format('r.%I::text', TG_ARGV[0]);
            samerow := format(' AND o.%I = r.%I', TG_ARGV[0], TG_ARGV[0]);
        ELSE
            idtext := '''''' || idtext;
        END IF;
        IF TG_OP = 'UPDATE' AND ext <> '' THEN
            joined := ' LEFT JOIN old_rows o ON ' || substr(samerow, 6);
        END IF;
        EXECUTE format(
            'SELECT pg_notify(''diesel_l2'', CASE WHEN octet_length(p) < 8000 THEN p ELSE %L END) '
            'FROM (SELECT %L || (r.%I + %s)::text || ''|'' || length(%s)::text || ''|'' || %s%s AS p FROM %I r%s) s',
            flush, head, TG_ARGV[1], bump, idtext, idtext, ext, src, joined);
    END IF;
    RETURN NULL;
END
$diesel_l2$;
CREATE OR REPLACE FUNCTION diesel_l2_bump_v2() RETURNS trigger LANGUAGE plpgsql AS $diesel_l2$
BEGIN
    NEW := jsonb_populate_record(NEW, jsonb_build_object(TG_ARGV[0],
        (to_jsonb(OLD) ->> TG_ARGV[0])::bigint + 1));
    RETURN NEW;
END
$diesel_l2$;
"#;

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(feature = "postgres")]
mod listen {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use diesel::connection::SimpleConnection;
    use diesel::pg::PgConnection;
    use diesel::Connection;

    use diesel::deserialize::QueryableByName;
    use diesel::sql_types::Text;
    use diesel::{sql_query, RunQueryDsl};

    use super::super::{check_feed, ChangeFeed, ListenConfig, Shared};
    use super::{quote_literal, SUFFIXES};

    #[derive(QueryableByName)]
    struct Trigger {
        #[diesel(sql_type = Text)]
        tbl: String,
        #[diesel(sql_type = Text)]
        name: String,
    }

    /// Whether every cached table of `schema` (the connection's current schema if `None`)
    /// has the triggers of the current feed version.
    fn feed_installed(
        conn: &mut PgConnection,
        schema: Option<&str>,
        shared: &Shared,
    ) -> Result<(), Result<String, String>> {
        let hint = match schema {
            Some(s) => format!(" (looked in schema `{s}`, set by ListenConfig::schema)"),
            None => " (looked in the listener connection's current schema; set \
                      ListenConfig::schema if the tables are in another one)"
                .to_string(),
        };
        let schema = schema.map_or_else(|| "current_schema()".to_string(), quote_literal);
        let rows: Vec<Trigger> = sql_query(format!(
            "SELECT c.relname::text AS tbl, t.tgname::text AS name FROM pg_trigger t \
             JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = {schema} AND NOT t.tgisinternal"
        ))
        .load(conn)
        .map_err(|e| Err(e.to_string()))?;
        let installed: Vec<(String, String)> = rows.into_iter().map(|r| (r.tbl, r.name)).collect();
        check_feed(
            &shared.tables(),
            &installed,
            &SUFFIXES,
            "postgres_triggers_sql",
        )
        .map_err(|m| Ok(m + &hint))
    }

    /// How often an idle listener checks that its connection is alive.
    const HEALTH_CHECK: Duration = Duration::from_millis(500);

    impl ChangeFeed for PgConnection {
        fn run_listener(config: ListenConfig, shared: Arc<Shared>) {
            let (first, max) = config.reconnect_backoff;
            let mut backoff = first;
            while !shared.stopping() {
                let mut conn = match PgConnection::establish(&config.url)
                    .map_err(|e| e.to_string())
                    .and_then(|mut c| {
                        c.batch_execute("LISTEN diesel_l2")
                            .map(|_| c)
                            .map_err(|e| e.to_string())
                    }) {
                    Ok(c) => c,
                    Err(e) => {
                        shared.on_lost(&e);
                        shared.nap(backoff);
                        backoff = (backoff * 2).min(max);
                        continue;
                    }
                };
                match feed_installed(&mut conn, config.schema.as_deref(), &shared) {
                    Ok(()) => {}
                    Err(Ok(missing)) => {
                        shared.on_feed_missing(&missing);
                        shared.nap(backoff);
                        backoff = (backoff * 2).min(max);
                        continue;
                    }
                    Err(Err(e)) => {
                        shared.on_lost(&e);
                        shared.nap(backoff);
                        backoff = (backoff * 2).min(max);
                        continue;
                    }
                }
                backoff = first;
                // LISTEN is active: anything committed from now on is notified, so
                // clearing now covers whatever happened while disconnected.
                shared.on_connected();
                let error = listen(&mut conn, &config, &shared);
                if let Some(e) = error {
                    shared.on_lost(&e);
                }
            }
        }
    }

    /// Runs until stopped (`None`) or the connection fails (`Some(error)`).
    fn listen(conn: &mut PgConnection, config: &ListenConfig, shared: &Shared) -> Option<String> {
        let mut last_check = Instant::now();
        while !shared.stopping() {
            let mut got = false;
            for n in conn.notifications_iter() {
                match n {
                    Ok(n) => {
                        got = true;
                        shared.on_payload(&n.payload, config.schema.as_deref());
                    }
                    Err(e) => return Some(e.to_string()),
                }
            }
            if last_check.elapsed() >= HEALTH_CHECK {
                if let Err(e) = conn.batch_execute("SELECT 1") {
                    return Some(e.to_string());
                }
                last_check = Instant::now();
            }
            if !got {
                std::thread::sleep(config.poll_interval);
            }
        }
        None
    }
}
