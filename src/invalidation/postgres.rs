//! PostgreSQL: statement-level triggers that `pg_notify`, and the `LISTEN` loop.

/// The notification channel.
pub const CHANNEL: &str = "diesel_l2";

/// SQL that installs change notification on `table` (idempotent: safe to run again):
/// [`postgres_notify_function_sql`] followed by [`postgres_table_triggers_sql`].
pub fn postgres_triggers_sql(
    table: &str,
    id_column: &str,
    version_column: &str,
    flush_threshold: u32,
) -> String {
    postgres_notify_function_sql()
        + &postgres_table_triggers_sql(table, id_column, version_column, flush_threshold)
}

/// The shared trigger function `diesel_l2_notify()`, installed once per schema.
pub fn postgres_notify_function_sql() -> String {
    NOTIFY_FUNCTION.to_string()
}

/// The triggers of one table (needs [`postgres_notify_function_sql`] installed first).
///
/// Three `AFTER … FOR EACH STATEMENT` triggers (insert, update, delete) with transition
/// tables call the shared function. A statement changing at most `flush_threshold` rows
/// sends one notification per row (`id`, and the new version; for a delete, the old
/// version + 1); a larger one sends a single flush of the table, so a bulk `UPDATE` does
/// not flood the channel. Notifications are delivered at commit only. Updates of the
/// primary key itself are not supported.
pub fn postgres_table_triggers_sql(
    table: &str,
    id_column: &str,
    version_column: &str,
    flush_threshold: u32,
) -> String {
    let t = quote_ident(table);
    let args = format!(
        "{}, {}, '{flush_threshold}'",
        quote_literal(id_column),
        quote_literal(version_column)
    );
    let mut sql = String::new();
    for (suffix, event, transition) in [
        ("ins", "INSERT", "NEW TABLE AS new_rows"),
        ("upd", "UPDATE", "NEW TABLE AS new_rows"),
        ("del", "DELETE", "OLD TABLE AS old_rows"),
    ] {
        let trigger = quote_ident(&format!("{table}_diesel_l2_{suffix}"));
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS {trigger} ON {t};\n\
             CREATE TRIGGER {trigger} AFTER {event} ON {t} REFERENCING {transition} \
             FOR EACH STATEMENT EXECUTE FUNCTION diesel_l2_notify({args});\n"
        ));
    }
    sql
}

/// The shared trigger function. Payload: `v1|schema|table|version|id`, or
/// `v1|schema|table|*` to flush the table.
const NOTIFY_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION diesel_l2_notify() RETURNS trigger LANGUAGE plpgsql AS $diesel_l2$
DECLARE
    src text := CASE WHEN TG_OP = 'DELETE' THEN 'old_rows' ELSE 'new_rows' END;
    bump int := CASE WHEN TG_OP = 'DELETE' THEN 1 ELSE 0 END;
    prefix text := 'v1|' || TG_TABLE_SCHEMA || '|' || TG_TABLE_NAME || '|';
    n bigint;
BEGIN
    EXECUTE format('SELECT count(*) FROM %I', src) INTO n;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    IF n > TG_ARGV[2]::bigint THEN
        PERFORM pg_notify('diesel_l2', prefix || '*');
    ELSE
        EXECUTE format(
            'SELECT pg_notify(''diesel_l2'', %L || (r.%I + %s)::text || ''|'' || r.%I::text) FROM %I r',
            prefix, TG_ARGV[1], bump, TG_ARGV[0], src);
    END IF;
    RETURN NULL;
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

    use super::super::{parse_payload, ChangeFeed, ListenConfig, Payload, Shared};

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
                        apply(&n.payload, config, shared);
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

    fn apply(payload: &str, config: &ListenConfig, shared: &Shared) {
        let wanted = |schema: &str| config.schema.as_deref().is_none_or(|s| s == schema);
        match parse_payload(payload) {
            Some(Payload::Row {
                schema,
                table,
                version,
                id,
            }) if wanted(schema) => shared.on_change(table, id, version),
            Some(Payload::Flush { schema, table }) if wanted(schema) => {
                shared.on_flush(Some(table))
            }
            Some(_) => {}
            None => {
                tracing::warn!(
                    payload,
                    "unreadable change notification; clearing every region"
                );
                shared.on_flush(None);
            }
        }
    }
}
