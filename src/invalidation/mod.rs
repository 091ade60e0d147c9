//! Cross-process invalidation (C7): every committed write to a cached table, made by any
//! process or SQL client, invalidates the entry in every process that listens.
//!
//! # The change feed
//!
//! Triggers installed by a migration report each committed change as one payload, defined
//! once for every backend and versioned ([`FEED_VERSION`]):
//!
//! ```text
//! v2|<op>|<schema>|<table>|<version>|<id length>|<id>[|<extension>…]     op: i, u or d
//! v2|f|<schema>|<table>                                                  flush the table
//! ```
//!
//! `<table>` is the table's SQL name (the `#[sql_name]` of its `table!`, which is how
//! notifications are routed to regions); `<version>` is the row's version after the change
//! (for a delete, the deleted version + 1); `<id length>` counts the characters of `<id>`,
//! so ids may contain `|` and fields may follow. Extensions, `|<name>=<length>:<value>` or
//! `|<name>=null`, carry the old (`o<key>.<column>`, for updates and deletes) and new
//! (`n<key>.<column>`, for inserts and updates) values of the unique-key columns given to
//! the `*_with_keys` helpers (keys and columns numbered from 0, values as text), e.g.
//! `v2|u|public|users|3|2|42|o0.0=9:ada@x.org|n0.0=9:ada@y.org`. Index-key columns
//! (`#[cache(index)]`, in a [`FeedTable`](crate::migration::FeedTable)'s `index_keys`) ride
//! the same way, numbered from [`INDEX_KEY_BASE`] (`o100.0`, `n100.0`), and let a remote
//! change drop exactly the cached lists of its old and new key values (C10); without
//! them every list of the index is dropped. Readers skip extensions they do not know. A payload of an unknown version clears every region; one of
//! version 1 (triggers not upgraded yet) flushes its table.
//!
//! The feed also makes the version a true row clock: an `UPDATE` that does not raise the
//! version (`UPDATE users SET bio = … WHERE id = 1` from psql, a script, a data migration)
//! gets `version = old version + 1` from the database (a `BEFORE UPDATE` trigger on
//! PostgreSQL and MariaDB; on SQLite, which cannot change `NEW` in a `BEFORE` trigger, the
//! `AFTER UPDATE` trigger raises it with an inner `UPDATE` and records the final version).
//!
//! - **PostgreSQL**: statement-level triggers `pg_notify` one payload per row, or one flush
//!   of the table for a statement changing more than the threshold's rows, for `TRUNCATE`
//!   (also of a table truncated by `TRUNCATE … CASCADE`), and for a payload that would not
//!   fit a notification (8,000 bytes: a very long id), so the user's write never fails.
//!   NOTIFY is delivered only at commit. The `Db` owns a dedicated connection that
//!   `LISTEN`s on a background thread.
//! - **MariaDB/MySQL and SQLite**: row triggers append the payload (a `MEDIUMTEXT`/`TEXT`
//!   column, so no id is too long) to the [`CHANGES_TABLE`] outbox, which the `Db`'s
//!   background thread polls by sequence number. Each missing sequence number (a
//!   transaction not committed yet, or rolled back) has its own timer: after `gap_timeout`
//!   the regions are cleared (counted in `gaps`), and the number is still looked for until
//!   `retention` has passed, so a change that commits late is applied then (swept for
//!   every 100 ms, a page of 1,000 per poll). MariaDB never gives back a number a
//!   rolled-back write took: when the listener's user has the `PROCESS` privilege, such a
//!   number is recognised without a clear (counted in `rolled_back`) once every
//!   transaction that had modified rows when it was noticed has ended (listed in
//!   `information_schema.INNODB_TRX`, inside a transaction of the listener's own that
//!   proves the listing fresh; usually within a few hundred milliseconds); without it, it
//!   times out like any gap. On (re)connection the numbers up to 1,000 below the maximum that are
//!   not in the table are watched the same way, without a flush (MariaDB assigns
//!   `AUTO_INCREMENT` at insert, not commit; the regions were just cleared).
//!   New rows are read a page at a time past any gap. Rows are pruned only below the
//!   listener's resolved sequence and once older than `retention`. The SQLite listener
//!   waits up to 2 s for a writer's lock; its prune skips a locked database.
//!
//! A notification drops the cached entry unless the slot already holds that change or a
//! later one (a row at that version or newer for an insert or update, a tombstone at that
//! version or newer for a delete), so this process's own applied writes stay cached; a
//! remote insert always clears a tombstone or a negative entry. When the listener loses its
//! connection, the regions it covers stop serving and filling (reads go to the database)
//! until it has reconnected and cleared them; reconnections back off.
//!
//! # Installing and upgrading
//!
//! Install the feed with [`postgres_triggers_sql`], [`mysql_triggers_sql`] or
//! [`sqlite_triggers_sql`] for each cached table (in a migration), then call
//! [`DbBuilder::listen`](crate::DbBuilder::listen). The same helpers upgrade the triggers
//! of version 1 (they drop them first); once every table is upgraded, run
//! [`postgres_drop_v1_sql`] or [`outbox_drop_v1_sql`] to drop what version 1 left. With a
//! listener, `build()` checks the catalog (`pg_trigger`, `information_schema.TRIGGERS`,
//! `sqlite_master`) for the current triggers on every cached table and otherwise returns
//! [`Error::Config`] naming the missing triggers and the helper.
//! Trigger names are `<table>_diesel_l2_v2_<ins|upd|del|trunc|bump>`; keep table names
//! short enough for your database's identifier limit (64 characters on MariaDB, 63 on
//! PostgreSQL) with that suffix.
//!
//! # What the feed cannot capture
//!
//! After these, call [`Db::evict_all`](crate::Db::evict_all) for the entity types of the
//! tables concerned (or [`Db::evict_everything`](crate::Db::evict_everything)):
//!
//! - **MariaDB/MySQL**: `TRUNCATE`, and rows changed by foreign-key actions (`ON DELETE
//!   CASCADE`, `ON UPDATE CASCADE`, `SET NULL`): MariaDB fires no trigger for either.
//!   PostgreSQL and SQLite fire the child table's triggers for cascades, and PostgreSQL's
//!   `TRUNCATE` trigger flushes the table.
//! - **Every backend**: changes made while triggers are disabled (PostgreSQL
//!   `session_replication_role = replica`, as logical replication and `pg_restore
//!   --disable-triggers` use; dropping or disabling the triggers), and updates of a
//!   row's primary key (reported under the new id only: the old id stays cached).
//! - **Outbox backends**: a change whose transaction held its sequence number longer than
//!   `gap_timeout` + `retention` before committing (the regions were cleared at the gap
//!   timeout, counted in `gaps`), and one of a transaction that started before the
//!   listener connected holding a number more than 1,000 below the maximum.

pub(crate) mod feed;
mod outbox;
mod postgres;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

pub use feed::{ChangeOp, FEED_VERSION, INDEX_KEY_BASE};
pub use outbox::{
    mysql_changes_table_sql, mysql_table_triggers_sql, mysql_table_triggers_sql_with_keys,
    mysql_triggers_sql, outbox_drop_v1_sql, sqlite_changes_table_sql, sqlite_table_triggers_sql,
    sqlite_table_triggers_sql_with_keys, sqlite_triggers_sql, CHANGES_TABLE,
};
pub(crate) use outbox::{mysql_table_triggers_sql_numbered, sqlite_table_triggers_sql_numbered};
pub(crate) use postgres::postgres_table_triggers_sql_numbered;
pub use postgres::{
    postgres_drop_v1_sql, postgres_notify_function_sql, postgres_table_triggers_sql,
    postgres_table_triggers_sql_with_keys, postgres_triggers_sql, CHANNEL,
};

use crate::error::{Error, Result};
use crate::region::AnyRegion;

/// How the `Db` listens for changes made by other processes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenConfig {
    /// The database URL of the listener's own connection (not taken from the pool).
    pub url: String,
    /// PostgreSQL: only changes to tables in this schema are applied (several
    /// applications or test schemas may share one database). `None`: every schema.
    pub schema: Option<String>,
    /// How often the connection is checked for notifications (PostgreSQL) or the change
    /// table is read (MariaDB, SQLite).
    pub poll_interval: Duration,
    /// Outbox: a missing sequence number (a transaction not committed yet, or rolled
    /// back) older than this is taken as a possibly lost change: the regions are cleared,
    /// and the number is still watched for `retention`, its change applied if it commits.
    /// Set it above your usual longest transaction that writes cached tables, or long
    /// transactions cost a clear of every region.
    pub gap_timeout: Duration,
    /// Outbox: change rows older than this, and below every number this listener still
    /// waits for, are deleted; a timed-out gap is watched this long.
    pub retention: Duration,
    /// First and largest wait between reconnection attempts.
    pub reconnect_backoff: (Duration, Duration),
    /// How long `build()` waits for the first connection before returning with the
    /// regions untrusted (reads then go to the database until it connects).
    pub connect_timeout: Duration,
}

impl ListenConfig {
    /// Listen through a dedicated connection to `url`, with the defaults: poll every
    /// 2 ms, gap timeout 5 s, retention 10 minutes, reconnect backoff 50 ms to 2 s.
    pub fn new(url: impl Into<String>) -> Self {
        ListenConfig {
            url: url.into(),
            schema: None,
            poll_interval: Duration::from_millis(2),
            gap_timeout: Duration::from_secs(5),
            retention: Duration::from_secs(600),
            reconnect_backoff: (Duration::from_millis(50), Duration::from_secs(2)),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// Apply only changes of tables in `schema` (PostgreSQL).
    #[must_use]
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Set the poll interval.
    #[must_use]
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// Set the outbox gap timeout.
    #[must_use]
    pub fn gap_timeout(mut self, timeout: Duration) -> Self {
        self.gap_timeout = timeout;
        self
    }

    /// Set the outbox retention.
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.url.trim().is_empty() {
            return Err(Error::Config(
                "listen: the URL is empty; pass the database URL the listener connects to".into(),
            ));
        }
        if self.poll_interval.is_zero() || self.gap_timeout.is_zero() || self.retention.is_zero() {
            return Err(Error::Config(
                "listen: poll_interval, gap_timeout and retention must be greater than zero".into(),
            ));
        }
        if self.retention <= self.gap_timeout {
            return Err(Error::Config(
                "listen: retention must exceed gap_timeout, or change rows could be pruned before they are read".into(),
            ));
        }
        Ok(())
    }
}

/// A connection type that can feed changes from other processes to a `Db`.
pub trait ChangeFeed: diesel::r2d2::R2D2Connection + 'static {
    /// Runs the listener loop until `shared.stop` is set.
    #[doc(hidden)]
    fn run_listener(config: ListenConfig, shared: Arc<Shared>);
}

/// What the listener thread and the `Db` share.
#[doc(hidden)]
pub struct Shared {
    /// The regions by the SQL name of their table (what notifications carry).
    pub(crate) regions: HashMap<String, Vec<Arc<dyn AnyRegion>>>,
    pub(crate) stop: AtomicBool,
    pub(crate) connected: AtomicBool,
    pub(crate) counters: ListenerCounters,
    pub(crate) last_error: Mutex<Option<String>>,
    /// Set when the connected database lacks the change feed (or has another version of
    /// it): `build()` returns it as [`Error::Config`].
    pub(crate) config_error: Mutex<Option<String>>,
    /// The `Db`'s query cache: remote changes bump its table clocks (C10).
    pub(crate) queries: Option<Arc<crate::query::QueryCache>>,
}

#[derive(Default)]
pub(crate) struct ListenerCounters {
    pub(crate) changes: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) disconnects: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) gaps: AtomicU64,
    pub(crate) rolled_back: AtomicU64,
    pub(crate) ignored: AtomicU64,
}

impl Shared {
    pub(crate) fn new(regions: &[Arc<dyn AnyRegion>]) -> Self {
        let mut by_table: HashMap<String, Vec<Arc<dyn AnyRegion>>> = HashMap::new();
        for r in regions {
            by_table
                .entry(r.sql_table().to_string())
                .or_default()
                .push(Arc::clone(r));
        }
        Shared {
            regions: by_table,
            stop: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            counters: ListenerCounters::default(),
            last_error: Mutex::new(None),
            config_error: Mutex::new(None),
            queries: None,
        }
    }

    /// The SQL names of the cached tables, for the feed check.
    pub(crate) fn tables(&self) -> Vec<&str> {
        let mut t: Vec<&str> = self.regions.keys().map(String::as_str).collect();
        t.sort_unstable();
        t
    }

    /// The database lacks the change feed at [`FEED_VERSION`]: never trusted (reads go to
    /// the database), and `build()` reports it.
    pub(crate) fn on_feed_missing(&self, message: &str) {
        *self
            .config_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(message.to_string());
        self.on_lost(message);
    }

    fn all(&self) -> impl Iterator<Item = &Arc<dyn AnyRegion>> {
        self.regions.values().flatten()
    }

    /// Connected (again): drop everything cached before, then serve again.
    pub(crate) fn on_connected(&self) {
        for r in self.all() {
            r.set_trusted(true);
        }
        if let Some(q) = &self.queries {
            q.set_trusted(true);
        }
        self.connected.store(true, Relaxed);
        self.counters.connects.fetch_add(1, Relaxed);
        tracing::info!("change listener connected; regions cleared and trusted");
    }

    /// Connection lost: stop serving until reconnected.
    pub(crate) fn on_lost(&self, error: &str) {
        for r in self.all() {
            r.set_trusted(false);
        }
        if let Some(q) = &self.queries {
            q.set_trusted(false);
        }
        if self.connected.swap(false, Relaxed) {
            self.counters.disconnects.fetch_add(1, Relaxed);
        }
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
        tracing::warn!(
            error,
            "change listener lost its connection; regions untrusted until it reconnects"
        );
    }

    /// One changed row. Counted once applied, so that a change counted in
    /// `ListenerStats::changes` has reached the regions and queued its shared-tier repair.
    pub(crate) fn on_change(&self, table: &str, op: ChangeOp, id: &str, version: i64, ext: &str) {
        if let Some(q) = &self.queries {
            q.table_changed(table);
        }
        match self.regions.get(table) {
            Some(regions) => {
                tracing::trace!(table, ?op, id, version, "remote change");
                for r in regions {
                    r.remote_change(id, op, version, ext);
                }
            }
            None => {
                self.counters.ignored.fetch_add(1, Relaxed);
            }
        }
        self.counters.changes.fetch_add(1, Relaxed);
    }

    /// One payload of the change feed; an unreadable one clears every region.
    pub(crate) fn on_payload(&self, payload: &str, schema: Option<&str>) {
        let wanted = |s: &str| schema.is_none_or(|w| w == s);
        match feed::parse_payload(payload) {
            Some(feed::Payload::Row {
                op,
                schema,
                table,
                version,
                id,
                ext,
            }) if wanted(schema) => self.on_change(table, op, id, version, ext),
            Some(feed::Payload::Flush { schema, table }) if wanted(schema) => {
                self.on_flush(Some(table))
            }
            Some(feed::Payload::Legacy { schema, table }) if wanted(schema) => {
                if self.regions.contains_key(table) {
                    tracing::warn!(
                        table,
                        "a version 1 change-feed payload for a cached table; upgrade its triggers"
                    );
                    self.on_flush(Some(table));
                } else {
                    self.counters.ignored.fetch_add(1, Relaxed);
                }
            }
            Some(_) => {}
            None => {
                tracing::warn!(
                    payload,
                    "unreadable change-feed payload (another feed version?); clearing every region"
                );
                self.on_flush(None);
            }
        }
    }

    /// Many changed rows, or changes that may have been missed: clear.
    pub(crate) fn on_flush(&self, table: Option<&str>) {
        self.counters.flushes.fetch_add(1, Relaxed);
        tracing::debug!(table, "remote flush");
        if let Some(q) = &self.queries {
            match table {
                Some(t) => q.table_changed(t),
                None => q.all_changed(),
            }
        }
        match table {
            Some(t) => {
                for r in self.regions.get(t).into_iter().flatten() {
                    r.remote_flush();
                }
            }
            None => {
                for r in self.all() {
                    r.remote_flush();
                }
            }
        }
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }

    /// Sleeps up to `d`, waking early when asked to stop.
    pub(crate) fn nap(&self, d: Duration) {
        let step = Duration::from_millis(20);
        let mut left = d;
        while !left.is_zero() && !self.stopping() {
            let s = left.min(step);
            std::thread::sleep(s);
            left = left.saturating_sub(s);
        }
    }

    pub(crate) fn snapshot(&self) -> ListenerStats {
        let c = &self.counters;
        ListenerStats {
            connected: self.connected.load(Relaxed),
            changes: c.changes.load(Relaxed),
            flushes: c.flushes.load(Relaxed),
            connects: c.connects.load(Relaxed),
            disconnects: c.disconnects.load(Relaxed),
            gaps: c.gaps.load(Relaxed),
            rolled_back: c.rolled_back.load(Relaxed),
            ignored: c.ignored.load(Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

/// Compares the installed triggers (`(table, trigger name)`) with those the feed at
/// [`FEED_VERSION`] needs on each cached table; the error says how to install them.
#[cfg_attr(
    not(any(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(dead_code)
)]
pub(crate) fn check_feed(
    tables: &[&str],
    installed: &[(String, String)],
    suffixes: &[&str],
    helper: &str,
) -> std::result::Result<(), String> {
    let mut missing = Vec::new();
    for table in tables {
        for suffix in suffixes {
            let name = feed::trigger_name(table, suffix);
            if !installed.iter().any(|(t, n)| t == table && *n == name) {
                missing.push(format!("`{name}` on `{table}`"));
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let old = installed.iter().any(|(t, n)| {
        tables.contains(&t.as_str()) && n.contains("_diesel_l2_") && !n.contains("_diesel_l2_v2_")
    });
    Err(format!(
        "listen: the change feed (payload version {FEED_VERSION}) is not installed{}: missing trigger(s) {}. \
         Generate the migration with `diesel-l2 migration change-feed` (the cli/ crate) or \
         `diesel_l2::migration::change_feed(backend).table::<E>()` for each cached entity \
         (or run the SQL of `diesel_l2::invalidation::{helper}` per table), apply it, \
         then build again; it drops the triggers of an earlier version (C7)",
        if old { " (an earlier version is)" } else { "" },
        missing.join(", ")
    ))
}

/// The listener's counters, in [`Stats::listener`](crate::Stats::listener).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ListenerStats {
    /// Whether the listener's connection is up (regions are trusted).
    pub connected: bool,
    /// Changed rows received and applied: a counted change has reached the regions (and
    /// queued its shared-tier repair, see `SharedTierStats::repairs_pending`).
    pub changes: u64,
    /// Region clears received or decided (many-row statements, gaps).
    pub flushes: u64,
    /// Successful (re)connections.
    pub connects: u64,
    /// Lost connections.
    pub disconnects: u64,
    /// Outbox sequence gaps that timed out (taken as lost changes).
    pub gaps: u64,
    /// Outbox sequence numbers found to belong to rolled-back transactions before their
    /// gap timed out, so no region was cleared for them (MariaDB/MySQL, when the
    /// listener's user may read `information_schema.INNODB_TRX`: the `PROCESS` privilege).
    pub rolled_back: u64,
    /// Changes of tables with no region here.
    pub ignored: u64,
    /// The last connection error.
    pub last_error: Option<String>,
}

/// Owns the listener thread; stops and joins it when dropped (with the last `Db` clone).
pub(crate) struct Listener {
    pub(crate) shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    pub(crate) fn start<C: ChangeFeed>(
        config: ListenConfig,
        regions: &[Arc<dyn AnyRegion>],
        queries: Arc<crate::query::QueryCache>,
    ) -> Result<Self> {
        config.validate()?;
        let mut shared = Shared::new(regions);
        // Untrusted until the first connection has been made and the regions cleared.
        queries.set_trusted(false);
        shared.queries = Some(queries);
        let shared = Arc::new(shared);
        for r in shared.all() {
            r.set_trusted(false);
        }
        let connect_timeout = config.connect_timeout;
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("diesel-l2-listener".into())
            .spawn(move || C::run_listener(config, thread_shared))
            .map_err(|e| Error::Config(format!("could not start the listener thread: {e}")))?;
        let started = std::time::Instant::now();
        let config_error = || {
            shared
                .config_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        };
        while !shared.connected.load(Relaxed) && started.elapsed() < connect_timeout {
            if let Some(message) = config_error() {
                // Dropping the listener stops and joins its thread.
                drop(Listener {
                    shared,
                    thread: Some(thread),
                });
                return Err(Error::Config(message));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if !shared.connected.load(Relaxed) {
            tracing::warn!(
                "change listener not connected yet; reads go to the database until it is"
            );
        }
        Ok(Listener {
            shared,
            thread: Some(thread),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated() {
        assert!(ListenConfig::new("").validate().is_err());
        assert!(ListenConfig::new("x")
            .gap_timeout(Duration::ZERO)
            .validate()
            .is_err());
        assert!(ListenConfig::new("x")
            .retention(Duration::from_secs(1))
            .validate()
            .is_err());
        assert!(ListenConfig::new("x").validate().is_ok());
    }
}
