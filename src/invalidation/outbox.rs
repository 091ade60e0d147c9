//! MariaDB/MySQL and SQLite: row triggers append to an outbox table that the listener
//! polls by sequence number.

/// The change table the triggers append to.
pub const CHANGES_TABLE: &str = "diesel_l2_changes";

/// SQL statements that create the change table if needed and install the triggers of
/// `table`: [`mysql_changes_table_sql`] followed by [`mysql_table_triggers_sql`].
pub fn mysql_triggers_sql(table: &str, id_column: &str, version_column: &str) -> Vec<String> {
    let mut out = vec![mysql_changes_table_sql()];
    out.extend(mysql_table_triggers_sql(table, id_column, version_column));
    out
}

/// The change table (`CREATE TABLE IF NOT EXISTS`), once per database.
pub fn mysql_changes_table_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {CHANGES_TABLE} (\
         seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
         tbl VARCHAR(64) NOT NULL, \
         row_id VARCHAR(255) NOT NULL, \
         version BIGINT NOT NULL, \
         changed_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
         KEY diesel_l2_changes_at (changed_at)) ENGINE=InnoDB"
    )
}

/// The statements (one by one, or joined with `;` in a migration) that install `AFTER
/// INSERT`, `UPDATE` and `DELETE` row triggers on `table`, each appending `(table, id,
/// version)` to the change table (for a delete, the old version + 1).
pub fn mysql_table_triggers_sql(table: &str, id_column: &str, version_column: &str) -> Vec<String> {
    let t = mysql_ident(table);
    let (id, v) = (mysql_ident(id_column), mysql_ident(version_column));
    let lit = sql_literal(table);
    let mut out = Vec::new();
    for (suffix, event, row, bump) in TRIGGERS {
        let trigger = mysql_ident(&format!("{table}_diesel_l2_{suffix}"));
        out.push(format!("DROP TRIGGER IF EXISTS {trigger}"));
        out.push(format!(
            "CREATE TRIGGER {trigger} AFTER {event} ON {t} FOR EACH ROW \
             INSERT INTO {CHANGES_TABLE} (tbl, row_id, version) VALUES ({lit}, CAST({row}.{id} AS CHAR), {row}.{v}{bump})"
        ));
    }
    out
}

/// SQL (one batch) that creates the change table if needed and installs the triggers of
/// `table`: [`sqlite_changes_table_sql`] followed by [`sqlite_table_triggers_sql`].
pub fn sqlite_triggers_sql(table: &str, id_column: &str, version_column: &str) -> String {
    sqlite_changes_table_sql() + &sqlite_table_triggers_sql(table, id_column, version_column)
}

/// The change table and its index (`IF NOT EXISTS`), once per database.
pub fn sqlite_changes_table_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {CHANGES_TABLE} (\
         seq INTEGER PRIMARY KEY AUTOINCREMENT, \
         tbl TEXT NOT NULL, \
         row_id TEXT NOT NULL, \
         version BIGINT NOT NULL, \
         changed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')));\n\
         CREATE INDEX IF NOT EXISTS diesel_l2_changes_at ON {CHANGES_TABLE} (changed_at);\n"
    )
}

/// The row triggers of one table, as [`mysql_table_triggers_sql`] does for MySQL.
pub fn sqlite_table_triggers_sql(table: &str, id_column: &str, version_column: &str) -> String {
    let t = sqlite_ident(table);
    let (id, v) = (sqlite_ident(id_column), sqlite_ident(version_column));
    let lit = sql_literal(table);
    let mut sql = String::new();
    for (suffix, event, row, bump) in TRIGGERS {
        let trigger = sqlite_ident(&format!("{table}_diesel_l2_{suffix}"));
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS {trigger};\n\
             CREATE TRIGGER {trigger} AFTER {event} ON {t} FOR EACH ROW BEGIN \
             INSERT INTO {CHANGES_TABLE} (tbl, row_id, version) VALUES ({lit}, CAST({row}.{id} AS TEXT), {row}.{v}{bump}); END;\n"
        ));
    }
    sql
}

/// (name suffix, event, row alias, version adjustment): a delete records the version
/// after the deleted one, as a tombstone would.
const TRIGGERS: [(&str, &str, &str, &str); 3] = [
    ("ins", "INSERT", "NEW", ""),
    ("upd", "UPDATE", "NEW", ""),
    ("del", "DELETE", "OLD", " + 1"),
];

fn mysql_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

fn sqlite_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(any(feature = "mysql", feature = "sqlite"))]
mod poll {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use diesel::connection::{Connection, LoadConnection};
    use diesel::deserialize::QueryableByName;
    use diesel::query_builder::QueryFragment;
    use diesel::sql_types::{BigInt, Text};
    use diesel::{sql_query, QueryResult, RunQueryDsl};

    use super::super::{ListenConfig, Shared};
    use super::CHANGES_TABLE;

    #[derive(QueryableByName)]
    pub(crate) struct Change {
        #[diesel(sql_type = BigInt)]
        seq: i64,
        #[diesel(sql_type = Text)]
        tbl: String,
        #[diesel(sql_type = Text)]
        row_id: String,
        #[diesel(sql_type = BigInt)]
        version: i64,
    }

    #[derive(QueryableByName)]
    pub(crate) struct Max {
        #[diesel(sql_type = BigInt)]
        seq: i64,
    }

    /// How often old change rows are pruned, at most (a short retention prunes sooner).
    const PRUNE_EVERY: Duration = Duration::from_secs(10);

    /// The backend-specific bits of the outbox poller.
    pub(crate) trait Outbox: Connection + LoadConnection + 'static
    where
        Self::Backend: diesel::backend::Backend,
    {
        /// Deletes change rows older than `secs` seconds.
        fn prune_sql(secs: f64) -> String;
    }

    /// Reads changes after the contiguous sequence `low`, applying each once, and takes a
    /// gap older than the gap timeout as lost changes (regions cleared).
    pub(crate) fn run<C>(config: ListenConfig, shared: Arc<Shared>)
    where
        C: Outbox,
        Change: QueryableByName<C::Backend>,
        Max: QueryableByName<C::Backend>,
        diesel::query_builder::SqlQuery: QueryFragment<C::Backend>,
    {
        let (first, max) = config.reconnect_backoff;
        let mut backoff = first;
        while !shared.stopping() {
            let mut conn = match C::establish(&config.url) {
                Ok(c) => c,
                Err(e) => {
                    shared.on_lost(&e.to_string());
                    shared.nap(backoff);
                    backoff = (backoff * 2).min(max);
                    continue;
                }
            };
            let start = match current_max(&mut conn) {
                Ok(s) => s,
                Err(e) => {
                    shared.on_lost(&format!(
                        "cannot read {CHANGES_TABLE} (are the triggers installed?): {e}"
                    ));
                    shared.nap(backoff);
                    backoff = (backoff * 2).min(max);
                    continue;
                }
            };
            backoff = first;
            // Changes up to `start` are covered by clearing the regions now.
            shared.on_connected();
            if let Err(e) = poll(&mut conn, start, &config, &shared) {
                shared.on_lost(&e.to_string());
            }
        }
    }

    fn current_max<C>(conn: &mut C) -> QueryResult<i64>
    where
        C: Outbox,
        Max: QueryableByName<C::Backend>,
        diesel::query_builder::SqlQuery: QueryFragment<C::Backend>,
    {
        let rows: Vec<Max> = sql_query(format!(
            "SELECT COALESCE(MAX(seq), 0) AS seq FROM {CHANGES_TABLE}"
        ))
        .load(conn)?;
        Ok(rows.first().map_or(0, |m| m.seq))
    }

    fn poll<C>(conn: &mut C, start: i64, config: &ListenConfig, shared: &Shared) -> QueryResult<()>
    where
        C: Outbox,
        Change: QueryableByName<C::Backend>,
        diesel::query_builder::SqlQuery: QueryFragment<C::Backend>,
    {
        // Every change with seq <= low has been applied; `seen` holds those above it.
        let mut low = start;
        let mut seen: BTreeSet<i64> = BTreeSet::new();
        let mut gap_since: Option<Instant> = None;
        let prune_every = PRUNE_EVERY.min(config.retention / 4);
        let mut last_prune: Option<Instant> = None;
        while !shared.stopping() {
            let rows: Vec<Change> = sql_query(format!(
                "SELECT seq, tbl, row_id, version FROM {CHANGES_TABLE} WHERE seq > {low} ORDER BY seq LIMIT 1000"
            ))
            .load(conn)?;
            let full = rows.len() == 1000;
            for c in &rows {
                if seen.insert(c.seq) {
                    shared.on_change(&c.tbl, &c.row_id, c.version);
                }
            }
            while seen.first() == Some(&(low + 1)) {
                seen.pop_first();
                low += 1;
            }
            if seen.is_empty() {
                gap_since = None;
            } else {
                // A missing seq below a seen one: a transaction that has not committed yet,
                // or one that rolled back. Wait for it up to the gap timeout.
                let since = *gap_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= config.gap_timeout {
                    shared
                        .counters
                        .gaps
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(
                        after = low,
                        "change feed gap timed out; clearing every region"
                    );
                    shared.on_flush(None);
                    if let Some(&next) = seen.first() {
                        low = next - 1;
                    }
                    while seen.first() == Some(&(low + 1)) {
                        seen.pop_first();
                        low += 1;
                    }
                    gap_since = None;
                }
            }
            if last_prune.is_none_or(|at| at.elapsed() >= prune_every) {
                sql_query(C::prune_sql(config.retention.as_secs_f64())).execute(conn)?;
                last_prune = Some(Instant::now());
            }
            if !full {
                std::thread::sleep(config.poll_interval);
            }
        }
        Ok(())
    }

    #[cfg(feature = "mysql")]
    impl Outbox for diesel::mysql::MysqlConnection {
        fn prune_sql(secs: f64) -> String {
            let micros = (secs * 1e6) as u64;
            format!("DELETE FROM {CHANGES_TABLE} WHERE changed_at < NOW(6) - INTERVAL {micros} MICROSECOND")
        }
    }

    #[cfg(feature = "mysql")]
    impl super::super::ChangeFeed for diesel::mysql::MysqlConnection {
        fn run_listener(config: ListenConfig, shared: Arc<Shared>) {
            run::<Self>(config, shared);
        }
    }

    #[cfg(feature = "sqlite")]
    impl Outbox for diesel::sqlite::SqliteConnection {
        fn prune_sql(secs: f64) -> String {
            format!("DELETE FROM {CHANGES_TABLE} WHERE changed_at < strftime('%Y-%m-%d %H:%M:%f', 'now', '-{secs:.3} seconds')")
        }
    }

    #[cfg(feature = "sqlite")]
    impl super::super::ChangeFeed for diesel::sqlite::SqliteConnection {
        fn run_listener(config: ListenConfig, shared: Arc<Shared>) {
            run::<Self>(config, shared);
        }
    }
}
