//! MariaDB/MySQL and SQLite: row triggers append change-feed payloads to an outbox table
//! that the listener polls by sequence number.

use super::feed::{trigger_name, v1_trigger_name};

/// The change table the triggers append to (payload version 2; version 1 used
/// `diesel_l2_changes`).
pub const CHANGES_TABLE: &str = "diesel_l2_changes_v2";

/// SQL statements that create the change table if needed and install the triggers of
/// `table`: [`mysql_changes_table_sql`] followed by [`mysql_table_triggers_sql`].
pub fn mysql_triggers_sql(table: &str, id_column: &str, version_column: &str) -> Vec<String> {
    let mut out = vec![mysql_changes_table_sql()];
    out.extend(mysql_table_triggers_sql(table, id_column, version_column));
    out
}

/// The change table (`CREATE TABLE IF NOT EXISTS`), once per database. The payload is a
/// `MEDIUMTEXT`, so no id is too long for it (strict mode never fails the user's write).
pub fn mysql_changes_table_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {CHANGES_TABLE} (\
         seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
         payload MEDIUMTEXT NOT NULL, \
         changed_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
         KEY {CHANGES_TABLE}_at (changed_at)) ENGINE=InnoDB"
    )
}

/// The statements (one by one, or joined with `;` in a migration) that install the
/// change feed on `table`, dropping the triggers of version 1 first:
///
/// - a `BEFORE UPDATE` row trigger that makes the version a row clock (an update that
///   does not raise it gets `version = old + 1`);
/// - `AFTER INSERT`, `UPDATE` and `DELETE` row triggers, each appending one payload (see
///   [`crate::invalidation`]) to the change table (for a delete, the old version + 1).
///
/// MariaDB fires no trigger for `TRUNCATE` nor for rows changed by foreign-key cascades:
/// call [`Db::evict_all`](crate::Db::evict_all) after them.
pub fn mysql_table_triggers_sql(table: &str, id_column: &str, version_column: &str) -> Vec<String> {
    mysql_table_triggers_sql_with_keys(table, &[id_column], version_column, &[])
}

/// [`mysql_table_triggers_sql`], with the primary key's columns (several for a composite
/// key, whose id text is `<length>:<value>` per column) and the table's unique keys (each
/// a list of columns): every payload also carries the old and new values of their
/// columns (the `o` and `n` extensions, see [`crate::invalidation`]).
pub fn mysql_table_triggers_sql_with_keys(
    table: &str,
    id_columns: &[&str],
    version_column: &str,
    unique_keys: &[&[&str]],
) -> Vec<String> {
    let numbered: Vec<(usize, &[&str])> = unique_keys.iter().copied().enumerate().collect();
    mysql_table_triggers_sql_numbered(table, id_columns, version_column, &numbered)
}

/// [`mysql_table_triggers_sql_with_keys`] with each key's number given: unique keys from
/// 0, index keys from [`INDEX_KEY_BASE`](crate::invalidation::feed::INDEX_KEY_BASE).
pub(crate) fn mysql_table_triggers_sql_numbered(
    table: &str,
    id_columns: &[&str],
    version_column: &str,
    unique_keys: &[(usize, &[&str])],
) -> Vec<String> {
    let t = mysql_ident(table);
    let v = mysql_ident(version_column);
    let lit = sql_literal(table);
    let mut out = Vec::new();
    for suffix in ["ins", "upd", "del"] {
        out.push(format!(
            "DROP TRIGGER IF EXISTS {}",
            mysql_ident(&v1_trigger_name(table, suffix))
        ));
    }
    let bump = mysql_ident(&trigger_name(table, "bump"));
    out.push(format!("DROP TRIGGER IF EXISTS {bump}"));
    out.push(format!(
        "CREATE TRIGGER {bump} BEFORE UPDATE ON {t} FOR EACH ROW \
         SET NEW.{v} = IF(NEW.{v} IS NULL OR NEW.{v} <= OLD.{v}, OLD.{v} + 1, NEW.{v})"
    ));
    for (suffix, event, op, row, bump) in TRIGGERS {
        let trigger = mysql_ident(&trigger_name(table, suffix));
        let id_text = id_text(
            id_columns,
            |c| format!("CAST({row}.{} AS CHAR)", mysql_ident(c)),
            "CHAR_LENGTH",
            |parts| format!("CONCAT({})", parts.join(", ")),
        );
        out.push(format!("DROP TRIGGER IF EXISTS {trigger}"));
        let ext = key_extensions(op, unique_keys, |row, column| {
            let value = format!("CAST({row}.{} AS CHAR)", mysql_ident(column));
            format!("IFNULL(CONCAT(CHAR_LENGTH({value}), ':', {value}), 'null')")
        })
        .into_iter()
        .map(|(name, value)| format!(", '|{name}=', {value}"))
        .collect::<String>();
        out.push(format!(
            "CREATE TRIGGER {trigger} AFTER {event} ON {t} FOR EACH ROW \
             INSERT INTO {CHANGES_TABLE} (payload) VALUES (CONCAT('v2|{op}|', DATABASE(), '|', {lit}, '|', \
             IFNULL({row}.{v}, 0){bump}, '|', CHAR_LENGTH({id_text}), '|', {id_text}{ext}))"
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
         payload TEXT NOT NULL, \
         changed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')));\n\
         CREATE INDEX IF NOT EXISTS {CHANGES_TABLE}_at ON {CHANGES_TABLE} (changed_at);\n"
    )
}

/// The row triggers of one table, as [`mysql_table_triggers_sql`] does for MySQL. SQLite
/// cannot change `NEW` in a `BEFORE` trigger, so the `AFTER UPDATE` trigger raises the
/// version of an update that did not (`version = old + 1`, an inner `UPDATE` that fires no
/// trigger unless `recursive_triggers` is on) and records that final version.
pub fn sqlite_table_triggers_sql(table: &str, id_column: &str, version_column: &str) -> String {
    sqlite_table_triggers_sql_with_keys(table, &[id_column], version_column, &[])
}

/// [`sqlite_table_triggers_sql`], with the primary key's columns (several for a composite
/// key, whose id text is `<length>:<value>` per column) and the table's unique keys (each
/// a list of columns): every payload also carries the old and new values of their
/// columns (the `o` and `n` extensions, see [`crate::invalidation`]).
pub fn sqlite_table_triggers_sql_with_keys(
    table: &str,
    id_columns: &[&str],
    version_column: &str,
    unique_keys: &[&[&str]],
) -> String {
    let numbered: Vec<(usize, &[&str])> = unique_keys.iter().copied().enumerate().collect();
    sqlite_table_triggers_sql_numbered(table, id_columns, version_column, &numbered)
}

/// [`sqlite_table_triggers_sql_with_keys`] with each key's number given: unique keys from
/// 0, index keys from [`INDEX_KEY_BASE`](crate::invalidation::feed::INDEX_KEY_BASE).
pub(crate) fn sqlite_table_triggers_sql_numbered(
    table: &str,
    id_columns: &[&str],
    version_column: &str,
    unique_keys: &[(usize, &[&str])],
) -> String {
    let t = sqlite_ident(table);
    let v = sqlite_ident(version_column);
    let same_row = id_columns
        .iter()
        .map(|c| {
            let c = sqlite_ident(c);
            format!("{c} = NEW.{c}")
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    let lit = sql_literal(table);
    let mut sql = String::new();
    for suffix in ["ins", "upd", "del"] {
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS {};\n",
            sqlite_ident(&v1_trigger_name(table, suffix))
        ));
    }
    for (suffix, event, op, row, bump) in TRIGGERS {
        let trigger = sqlite_ident(&trigger_name(table, suffix));
        let id_text = id_text(
            id_columns,
            |c| format!("CAST({row}.{} AS TEXT)", sqlite_ident(c)),
            "length",
            |parts| format!("({})", parts.join(" || ")),
        );
        let (raise, version) = if suffix == "upd" {
            (
                format!(
                    "UPDATE {t} SET {v} = OLD.{v} + 1 WHERE {same_row} AND (NEW.{v} IS NULL OR NEW.{v} <= OLD.{v}); "
                ),
                format!("CASE WHEN NEW.{v} IS NULL OR NEW.{v} <= OLD.{v} THEN OLD.{v} + 1 ELSE NEW.{v} END"),
            )
        } else {
            (String::new(), format!("IFNULL({row}.{v}, 0){bump}"))
        };
        let ext = key_extensions(op, unique_keys, |row, column| {
            let value = format!("CAST({row}.{} AS TEXT)", sqlite_ident(column));
            format!("IFNULL(length({value}) || ':' || {value}, 'null')")
        })
        .into_iter()
        .map(|(name, value)| format!(" || '|{name}=' || {value}"))
        .collect::<String>();
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS {trigger};\n\
             CREATE TRIGGER {trigger} AFTER {event} ON {t} FOR EACH ROW BEGIN {raise}\
             INSERT INTO {CHANGES_TABLE} (payload) VALUES ('v2|{op}|main|' || {lit} || '|' || ({version}) || '|' || length({id_text}) || '|' || {id_text}{ext}); END;\n"
        ));
    }
    sql
}

/// The id text of a row: its one key column as text, or for a composite key
/// `<length>:<value>` per column (`concat` joins the SQL parts), as
/// [`CachedEntity::parse_id`](crate::CachedEntity::parse_id) reads it.
fn id_text(
    id_columns: &[&str],
    column_text: impl Fn(&str) -> String,
    length: &str,
    concat: impl Fn(&[String]) -> String,
) -> String {
    if let [one] = id_columns {
        return column_text(one);
    }
    let mut parts = Vec::new();
    for column in id_columns {
        let text = column_text(column);
        parts.extend([format!("{length}({text})"), "':'".to_string(), text]);
    }
    concat(&parts)
}

/// The unique-key extensions of a row trigger's payload, `(name, SQL value)`: old values
/// (`o<key>.<column>`) for updates and deletes, new ones (`n…`) for inserts and updates.
fn key_extensions(
    op: &str,
    unique_keys: &[(usize, &[&str])],
    value: impl Fn(&str, &str) -> String,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for &(i, key) in unique_keys {
        for (j, column) in key.iter().enumerate() {
            if op != "i" {
                out.push((format!("o{i}.{j}"), value("OLD", column)));
            }
            if op != "d" {
                out.push((format!("n{i}.{j}"), value("NEW", column)));
            }
        }
    }
    out
}

/// Drops what version 1 of the feed left once every table's triggers are upgraded (the
/// table helpers drop version 1's triggers): its change table `diesel_l2_changes`.
pub fn outbox_drop_v1_sql() -> String {
    "DROP TABLE IF EXISTS diesel_l2_changes".to_string()
}

/// (name suffix, event, payload op, row alias, version adjustment): a delete records the
/// version after the deleted one, as a tombstone would.
const TRIGGERS: [(&str, &str, &str, &str, &str); 3] = [
    ("ins", "INSERT", "i", "NEW", ""),
    ("upd", "UPDATE", "u", "NEW", ""),
    ("del", "DELETE", "d", "OLD", " + 1"),
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
    use std::collections::{BTreeMap, BTreeSet, HashSet};
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use diesel::connection::{Connection, LoadConnection};
    use diesel::deserialize::QueryableByName;
    use diesel::query_builder::QueryFragment;
    use diesel::sql_types::{BigInt, Text};
    use diesel::{sql_query, QueryResult, RunQueryDsl};

    use super::super::{check_feed, ListenConfig, Shared};
    use super::CHANGES_TABLE;

    #[derive(QueryableByName)]
    pub(crate) struct Change {
        #[diesel(sql_type = BigInt)]
        seq: i64,
        #[diesel(sql_type = Text)]
        payload: String,
    }

    #[derive(QueryableByName)]
    pub(crate) struct Seq {
        #[diesel(sql_type = BigInt)]
        seq: i64,
    }

    #[derive(QueryableByName)]
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub(crate) struct Trx {
        #[diesel(sql_type = Text)]
        id: String,
        /// 1 for the listener's own transaction.
        #[diesel(sql_type = BigInt)]
        mine: i64,
    }

    /// What a listing of the open transactions gave.
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub(crate) enum OpenTransactions {
        /// The database cannot list them (or the user may not).
        Unsupported,
        /// Not this time: the listing was not fresh, or failed.
        Unknown,
        /// The ids of the transactions open that have modified rows.
        Writing(HashSet<String>),
    }

    #[derive(QueryableByName)]
    pub(crate) struct Trigger {
        #[diesel(sql_type = Text)]
        tbl: String,
        #[diesel(sql_type = Text)]
        name: String,
    }

    /// How often old change rows are pruned, at most (a short retention prunes sooner).
    const PRUNE_EVERY: Duration = Duration::from_secs(10);
    /// Rows read per query.
    const PAGE: usize = 1000;
    /// On (re)connect, the sequence numbers this far below the maximum that are not in
    /// the table yet are watched (until the retention has passed): MariaDB assigns
    /// `AUTO_INCREMENT` at insert, so a transaction still open holds a lower number than
    /// rows committed after it.
    const CONNECT_WINDOW: i64 = 1000;
    /// How often a sweep over the seqs whose gap already timed out starts again. A sweep
    /// looks for one page of them per poll, so the poller never spends a poll on all of
    /// them (up to `MAX_TRACKED`: every rolled-back write leaves one for `retention`).
    const LATE_EVERY: Duration = Duration::from_millis(100);
    /// Most missing or late seqs tracked; beyond, the regions are cleared instead.
    const MAX_TRACKED: usize = 100_000;
    /// How often the open transactions are listed to resolve gaps, at most. InnoDB serves
    /// `INNODB_TRX` from a cache it refreshes only when nobody read it in the last 100 ms,
    /// so listings closer together than that would all be stale.
    const RESOLVE_EVERY: Duration = Duration::from_millis(150);
    /// A session shorter than this does not reset the reconnect backoff.
    const HEALTHY: Duration = Duration::from_secs(1);

    /// The backend-specific bits of the outbox poller.
    pub(crate) trait Outbox: Connection + LoadConnection + 'static
    where
        Self::Backend: diesel::backend::Backend,
    {
        /// Deletes the change rows up to `seq` older than `secs` seconds. The poller waits
        /// for it, so it must not wait for a writer's transaction.
        fn prune(conn: &mut Self, seq: i64, secs: f64) -> QueryResult<()>;
        /// `(tbl, name)` of the triggers installed in this database.
        const TRIGGERS_SQL: &'static str;
        /// The trigger suffixes each cached table needs.
        const SUFFIXES: &'static [&'static str];
        /// The helper whose SQL installs the feed.
        const HELPER: &'static str;
        /// Set-up of a new listener connection.
        fn prepare(_conn: &mut Self) -> QueryResult<()> {
            Ok(())
        }
        /// The open transactions that have modified rows, as of a moment after the call
        /// began (SQLite, whose numbers a rollback gives back, has no gaps to resolve).
        fn writing_transactions(_conn: &mut Self) -> OpenTransactions {
            OpenTransactions::Unsupported
        }
    }

    /// The sequence numbers still awaited, and the highest one read.
    struct Cursor {
        /// Every seq up to `hi` has been read, or is in `missing` or `late`.
        hi: i64,
        /// Seqs below `hi` not read yet, with when the gap was noticed.
        missing: BTreeMap<i64, Instant>,
        /// Seqs whose gap timed out (the regions were cleared), still looked for until
        /// the retention has passed: one that commits later is applied then.
        late: BTreeMap<i64, Instant>,
        /// When the last sweep over `late` ended.
        last_late_poll: Instant,
        /// Where the sweep in progress over `late` resumes (`None`: no sweep under way).
        late_next: Option<i64>,
        /// Whether the open transactions can be listed (see `resolve_rolled_back`).
        resolvable: bool,
        /// When they were last listed.
        last_resolve: Instant,
        /// The writing transactions open when the missing seqs up to the second field
        /// were looked at (all noticed before that listing began): once all of them have
        /// ended, those seqs are resolved.
        waiting: Option<(HashSet<String>, i64)>,
    }

    impl Cursor {
        /// Every seq at or below this one has been read or given up on.
        fn watermark(&self) -> i64 {
            let first = |m: &BTreeMap<i64, Instant>| m.keys().next().copied();
            match (first(&self.missing), first(&self.late)) {
                (Some(a), Some(b)) => a.min(b) - 1,
                (Some(a), None) | (None, Some(a)) => a - 1,
                (None, None) => self.hi,
            }
        }

        /// Seqs `from..to` are not in the table yet.
        fn notice_gap(&mut self, from: i64, to: i64, shared: &Shared) {
            if from >= to {
                return;
            }
            let n = usize::try_from(to - from).unwrap_or(usize::MAX);
            if self.missing.len().saturating_add(n) > MAX_TRACKED {
                tracing::warn!(
                    from,
                    to,
                    "change feed gap too large to track; clearing every region"
                );
                shared.on_flush(None);
                shared.counters.gaps.fetch_add(1, Relaxed);
                return;
            }
            let now = Instant::now();
            for s in from..to {
                self.missing.insert(s, now);
            }
        }
    }

    /// Reads the change table by sequence number, applying each change once: new rows
    /// page by page, missing seqs by their own timers (a gap that times out clears the
    /// regions, and is still applied if it commits later).
    pub(crate) fn run<C>(config: ListenConfig, shared: Arc<Shared>)
    where
        C: Outbox,
        Change: QueryableByName<C::Backend>,
        Seq: QueryableByName<C::Backend>,
        Trigger: QueryableByName<C::Backend>,
        diesel::query_builder::SqlQuery: QueryFragment<C::Backend>,
    {
        let (first, max) = config.reconnect_backoff;
        let mut backoff = first;
        while !shared.stopping() {
            let retry = |shared: &Shared, backoff: &mut Duration| {
                shared.nap(*backoff);
                *backoff = (*backoff * 2).min(max);
            };
            let mut conn = match C::establish(&config.url) {
                Ok(c) => c,
                Err(e) => {
                    shared.on_lost(&e.to_string());
                    retry(&shared, &mut backoff);
                    continue;
                }
            };
            if let Err(e) = C::prepare(&mut conn) {
                shared.on_lost(&e.to_string());
                retry(&shared, &mut backoff);
                continue;
            }
            match sql_query(C::TRIGGERS_SQL).load::<Trigger>(&mut conn) {
                Ok(rows) => {
                    let installed: Vec<(String, String)> =
                        rows.into_iter().map(|r| (r.tbl, r.name)).collect();
                    if let Err(m) = check_feed(&shared.tables(), &installed, C::SUFFIXES, C::HELPER)
                    {
                        shared.on_feed_missing(&m);
                        retry(&shared, &mut backoff);
                        continue;
                    }
                }
                Err(e) => {
                    shared.on_lost(&e.to_string());
                    retry(&shared, &mut backoff);
                    continue;
                }
            }
            let cursor = match start::<C>(&mut conn, &shared) {
                Ok(c) => c,
                Err(e) => {
                    shared.on_lost(&format!(
                        "cannot read {CHANGES_TABLE} (is the change feed installed?): {e}"
                    ));
                    retry(&shared, &mut backoff);
                    continue;
                }
            };
            // Changes already in the table are covered by clearing the regions now.
            shared.on_connected();
            let session = Instant::now();
            if let Err(e) = poll(&mut conn, cursor, &config, &shared) {
                shared.on_lost(&e.to_string());
                if session.elapsed() >= HEALTHY {
                    backoff = first;
                }
                retry(&shared, &mut backoff);
            }
        }
    }

    /// The cursor of a new connection: after the maximum, watching the seqs of the window
    /// below it that are not in the table (transactions still open).
    fn start<C>(conn: &mut C, shared: &Shared) -> QueryResult<Cursor>
    where
        C: Outbox,
        Seq: QueryableByName<C::Backend>,
        diesel::query_builder::SqlQuery: QueryFragment<C::Backend>,
    {
        let max: Vec<Seq> = sql_query(format!(
            "SELECT COALESCE(MAX(seq), 0) AS seq FROM {CHANGES_TABLE}"
        ))
        .load(conn)?;
        let hi = max.first().map_or(0, |m| m.seq);
        let from = (hi - CONNECT_WINDOW).max(0);
        let present: BTreeSet<i64> = sql_query(format!(
            "SELECT seq FROM {CHANGES_TABLE} WHERE seq > {from} AND seq <= {hi}"
        ))
        .load::<Seq>(conn)?
        .into_iter()
        .map(|s| s.seq)
        .collect();
        let mut cursor = Cursor {
            hi,
            missing: BTreeMap::new(),
            late: BTreeMap::new(),
            last_late_poll: Instant::now(),
            late_next: None,
            resolvable: true,
            last_resolve: Instant::now(),
            waiting: None,
        };
        // Watched like gaps that timed out, without their flush: the regions are cleared
        // at connection anyway, so a number that never commits (rolled back, or pruned
        // long ago) loses nothing, and one that commits later is applied then.
        let now = Instant::now();
        for s in (from + 1)..=hi {
            if !present.contains(&s) {
                cursor.late.insert(s, now);
            }
        }
        let _ = shared;
        Ok(cursor)
    }

    /// Resolves missing seqs of transactions that rolled back, so that they need not time
    /// out (which clears every region, and starts a new generation in the shared tier).
    ///
    /// MariaDB numbers a change row when the trigger inserts it and never gives a number
    /// back, so a rolled-back write leaves a gap that looks like a transaction still open.
    /// The writer of a missing seq had modified a row (the one whose trigger took the
    /// number) before the seq was noticed. So once every transaction that had modified
    /// rows and was open at a listing that began after a set of seqs was noticed has
    /// ended, each seq of the set is either in the table (read now, after the listing) or
    /// will never be: it is dropped without a clear (counted in `rolled_back`, and still
    /// watched with the late ones).
    fn resolve_rolled_back<C>(conn: &mut C, cursor: &mut Cursor, shared: &Shared) -> QueryResult<()>
    where
        C: Outbox,
        Change: QueryableByName<C::Backend>,
        diesel::query_builder::SqlQuery: QueryFragment<C::Backend>,
    {
        if !cursor.resolvable
            || cursor.missing.is_empty()
            || cursor.last_resolve.elapsed() < RESOLVE_EVERY
        {
            return Ok(());
        }
        // Every seq missing now was noticed before the listing begins.
        let noticed = cursor.missing.keys().next_back().copied();
        cursor.last_resolve = Instant::now();
        let open = match C::writing_transactions(conn) {
            OpenTransactions::Unsupported => {
                cursor.resolvable = false;
                cursor.waiting = None;
                return Ok(());
            }
            OpenTransactions::Unknown => return Ok(()),
            OpenTransactions::Writing(open) => open,
        };
        if let Some((before, upto)) = cursor.waiting.take() {
            if before.iter().any(|t| open.contains(t)) {
                cursor.waiting = Some((before, upto));
                return Ok(());
            }
            let pending: Vec<i64> = cursor.missing.range(..=upto).map(|(s, _)| *s).collect();
            read_awaited(conn, cursor, shared, &pending)?;
            let now = Instant::now();
            let mut gone = 0;
            for s in pending {
                if cursor.missing.remove(&s).is_some() {
                    gone += 1;
                    if cursor.late.len() < MAX_TRACKED {
                        cursor.late.insert(s, now);
                    }
                }
            }
            if gone > 0 {
                shared.counters.rolled_back.fetch_add(gone, Relaxed);
                tracing::debug!(
                    count = gone,
                    "change feed gaps of rolled-back transactions resolved"
                );
            }
        }
        cursor.waiting = noticed.map(|upto| (open, upto));
        Ok(())
    }

    /// Reads the awaited (missing or late) `seqs` that are in the table now, a page per
    /// query, and applies each once.
    fn read_awaited<C>(
        conn: &mut C,
        cursor: &mut Cursor,
        shared: &Shared,
        seqs: &[i64],
    ) -> QueryResult<()>
    where
        C: Outbox,
        Change: QueryableByName<C::Backend>,
        diesel::query_builder::SqlQuery: QueryFragment<C::Backend>,
    {
        for chunk in seqs.chunks(PAGE) {
            let list = chunk
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            let rows: Vec<Change> = sql_query(format!(
                "SELECT seq, payload FROM {CHANGES_TABLE} WHERE seq IN ({list}) ORDER BY seq"
            ))
            .load(conn)?;
            for c in &rows {
                let was_late = cursor.late.remove(&c.seq).is_some();
                if cursor.missing.remove(&c.seq).is_some() || was_late {
                    if was_late {
                        tracing::debug!(
                            seq = c.seq,
                            "a change whose gap timed out committed after all"
                        );
                    }
                    shared.on_payload(&c.payload, None);
                }
            }
        }
        Ok(())
    }

    fn poll<C>(
        conn: &mut C,
        mut cursor: Cursor,
        config: &ListenConfig,
        shared: &Shared,
    ) -> QueryResult<()>
    where
        C: Outbox,
        Change: QueryableByName<C::Backend>,
        diesel::query_builder::SqlQuery: QueryFragment<C::Backend>,
    {
        let prune_every = PRUNE_EVERY.min(config.retention / 4);
        let mut last_prune: Option<Instant> = None;
        while !shared.stopping() {
            // New rows, page by page: a gap never makes the same page be read again.
            let rows: Vec<Change> = sql_query(format!(
                "SELECT seq, payload FROM {CHANGES_TABLE} WHERE seq > {} ORDER BY seq LIMIT {PAGE}",
                cursor.hi
            ))
            .load(conn)?;
            let full = rows.len() == PAGE;
            for c in &rows {
                if c.seq <= cursor.hi {
                    continue;
                }
                cursor.notice_gap(cursor.hi + 1, c.seq, shared);
                cursor.hi = c.seq;
                shared.on_payload(&c.payload, None);
            }
            // Seqs still missing; those already timed out less often.
            // The late ones a page per poll: all of them at once (up to `MAX_TRACKED`, a
            // hundred queries of a thousand keys) held up every change behind them, by
            // about 80 ms per sweep for 90,000 late seqs on an idle machine and by seconds
            // on a loaded one (the soak's C4 reads of a listening Db lagging > 1 s).
            let mut wanted: Vec<i64> = cursor.missing.keys().copied().collect();
            if cursor.late_next.is_none() && cursor.last_late_poll.elapsed() >= LATE_EVERY {
                cursor.late_next = Some(i64::MIN);
            }
            if let Some(from) = cursor.late_next {
                let page: Vec<i64> = cursor
                    .late
                    .range(from..)
                    .map(|(s, _)| *s)
                    .take(PAGE)
                    .collect();
                if page.len() < PAGE {
                    cursor.late_next = None;
                    cursor.last_late_poll = Instant::now();
                } else {
                    cursor.late_next = page.last().map(|s| s + 1);
                }
                wanted.extend(page);
            }
            read_awaited(conn, &mut cursor, shared, &wanted)?;
            resolve_rolled_back(conn, &mut cursor, shared)?;
            // Each missing seq has its own timer.
            let now = Instant::now();
            let timed_out: Vec<i64> = cursor
                .missing
                .iter()
                .filter(|(_, at)| now.saturating_duration_since(**at) >= config.gap_timeout)
                .map(|(s, _)| *s)
                .collect();
            if !timed_out.is_empty() {
                tracing::warn!(
                    first = timed_out[0],
                    count = timed_out.len(),
                    "change feed gap timed out; clearing every region and still watching it"
                );
                shared.on_flush(None);
                // Counted once the regions are clear.
                shared
                    .counters
                    .gaps
                    .fetch_add(timed_out.len() as u64, Relaxed);
                for s in timed_out {
                    cursor.missing.remove(&s);
                    if cursor.late.len() < MAX_TRACKED {
                        cursor.late.insert(s, now);
                    }
                }
            }
            cursor
                .late
                .retain(|_, at| now.saturating_duration_since(*at) < config.retention);
            if last_prune.is_none_or(|at| at.elapsed() >= prune_every) {
                // Only rows every change up to which has been read or given up on; a
                // failure (a writer holds the lock) is retried at the next prune.
                if let Err(e) = C::prune(conn, cursor.watermark(), config.retention.as_secs_f64()) {
                    tracing::debug!(error = %e, "could not prune the change table; will retry");
                }
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
        /// InnoDB ends a range scan by reading (and, under REPEATABLE READ, locking) the
        /// first row past the range. `DELETE … WHERE seq <= watermark` therefore waited for
        /// the row just above the watermark, which is typically a change row of a
        /// transaction still open (its number is what holds the watermark back): the
        /// poller, which runs the prune, applied no change until that writer ended or
        /// `innodb_lock_wait_timeout` (50 s by default) passed. So the bound is an existing
        /// committed row `c` at or below the watermark (a plain read, no lock): rows
        /// strictly below it are deleted by a range scan that stops at `c`, which no writer
        /// holds, then `c` by its key (a unique lookup reads no other row). Rows below `c`
        /// were inserted before it, so are at least as old.
        fn prune(conn: &mut Self, seq: i64, secs: f64) -> QueryResult<()> {
            let micros = (secs * 1e6) as u64;
            let bound: Vec<Seq> = sql_query(format!(
                "SELECT COALESCE(MAX(seq), 0) AS seq FROM {CHANGES_TABLE} \
                 WHERE seq <= {seq} AND changed_at < NOW(6) - INTERVAL {micros} MICROSECOND"
            ))
            .load(conn)?;
            let bound = bound.first().map_or(0, |b| b.seq);
            if bound == 0 {
                return Ok(());
            }
            sql_query(format!("DELETE FROM {CHANGES_TABLE} WHERE seq < {bound}")).execute(conn)?;
            sql_query(format!("DELETE FROM {CHANGES_TABLE} WHERE seq = {bound}"))
                .execute(conn)
                .map(drop)
        }
        const TRIGGERS_SQL: &'static str =
            "SELECT CAST(EVENT_OBJECT_TABLE AS CHAR) AS tbl, CAST(TRIGGER_NAME AS CHAR) AS name \
             FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()";
        const SUFFIXES: &'static [&'static str] = &["bump", "ins", "upd", "del"];
        const HELPER: &'static str = "mysql_triggers_sql";
        /// From `information_schema.INNODB_TRX`, which needs the `PROCESS` privilege
        /// (without it the query fails, and gaps are waited out as before). InnoDB serves
        /// it from a cache refreshed only after 100 ms without a reader, so the listing is
        /// made inside a transaction of the listener's own: if that transaction is not
        /// listed, the cache predates the call and the listing is not used.
        fn writing_transactions(conn: &mut Self) -> OpenTransactions {
            use diesel::connection::SimpleConnection;
            if let Err(e) = conn.batch_execute("START TRANSACTION WITH CONSISTENT SNAPSHOT") {
                tracing::debug!(error = %e, "change feed: could not start the listing");
                return OpenTransactions::Unknown;
            }
            let listed = sql_query(
                "SELECT CAST(trx_id AS CHAR) AS id, \
                 CAST(trx_mysql_thread_id = CONNECTION_ID() AS SIGNED) AS mine \
                 FROM information_schema.INNODB_TRX \
                 WHERE trx_rows_modified > 0 OR trx_mysql_thread_id = CONNECTION_ID()",
            )
            .load::<Trx>(conn);
            // Ended before anything else runs: a later read must see every commit.
            if let Err(e) = conn.batch_execute("COMMIT") {
                tracing::debug!(error = %e, "change feed: could not end the listing");
                return OpenTransactions::Unknown;
            }
            match listed {
                Ok(rows) if rows.iter().any(|t| t.mine == 1) => OpenTransactions::Writing(
                    rows.into_iter()
                        .filter(|t| t.mine == 0)
                        .map(|t| t.id)
                        .collect(),
                ),
                Ok(_) => OpenTransactions::Unknown,
                Err(e) if e.to_string().contains("PROCESS") => {
                    tracing::info!(
                        error = %e,
                        "change feed: cannot list open transactions (information_schema.INNODB_TRX \
                         needs the PROCESS privilege); a rolled-back write's gap is waited out \
                         (`gap_timeout`) and then clears the regions"
                    );
                    OpenTransactions::Unsupported
                }
                Err(e) => {
                    tracing::debug!(error = %e, "change feed: could not list open transactions");
                    OpenTransactions::Unknown
                }
            }
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
        fn prune(conn: &mut Self, seq: i64, secs: f64) -> QueryResult<()> {
            sql_query(format!("DELETE FROM {CHANGES_TABLE} WHERE seq <= {seq} AND changed_at < strftime('%Y-%m-%d %H:%M:%f', 'now', '-{secs:.3} seconds')"))
                .execute(conn)
                .map(drop)
        }
        const TRIGGERS_SQL: &'static str =
            "SELECT tbl_name AS tbl, name FROM sqlite_master WHERE type = 'trigger'";
        const SUFFIXES: &'static [&'static str] = &["ins", "upd", "del"];
        const HELPER: &'static str = "sqlite_triggers_sql";
        fn prepare(conn: &mut Self) -> QueryResult<()> {
            // Wait for a writer's lock rather than fail (and reconnect, clearing the
            // regions) whenever one holds it.
            diesel::connection::SimpleConnection::batch_execute(conn, "PRAGMA busy_timeout = 2000")
        }
    }

    #[cfg(feature = "sqlite")]
    impl super::super::ChangeFeed for diesel::sqlite::SqliteConnection {
        fn run_listener(config: ListenConfig, shared: Arc<Shared>) {
            run::<Self>(config, shared);
        }
    }
}
