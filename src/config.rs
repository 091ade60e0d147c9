//! Region settings: what `#[cache(...)]` declares and what the builder may override.

use std::time::Duration;

use serde::Serialize;

/// The settings of one cache region (one cached entity type).
///
/// `#[derive(Cached)]` fills it from the `#[cache(...)]` attributes; the builder's
/// [`DbBuilder::cache_with`](crate::DbBuilder::cache_with) may change it before
/// [`DbBuilder::build`](crate::DbBuilder::build) validates it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RegionConfig {
    /// Region name, unique per `Db` (default: the table name).
    pub name: String,
    /// Time to live of an entry after it was written or filled; `None`: no expiry.
    pub ttl: Option<Duration>,
    /// Time to idle: an entry not read for this long expires; `None`: no idle expiry.
    pub tti: Option<Duration>,
    /// Upper bound on the number of entries (used when `max_bytes` is `None`).
    pub max_entries: Option<u64>,
    /// Upper bound on the estimated bytes held: rows weighed by
    /// `CachedEntity::approx_bytes` and, for an entity with unique keys, its key entries
    /// (weighed by `UniqueKey::approx_bytes`), which get a quarter of the budget.
    pub max_bytes: Option<u64>,
    /// How long "no such row" is remembered; `None` disables negative caching.
    pub negative_ttl: Option<Duration>,
    /// Count removals by cause (size, expiry, explicit) in the stats and trace them. On by
    /// default; turning it off saves about 0.3 µs per cache write, because moka then skips
    /// its per-key removal notifications.
    pub track_evictions: bool,
    /// The batch window's room, taken from the bound: rows read by a batch
    /// ([`Db::find_many`](crate::Db::find_many), the members of a list) wait in a small
    /// first-in-first-out window instead of the main cache; the first read of one by id
    /// moves it to the main cache, and rows nobody reads are pushed out unread. A batch of
    /// cold rows then costs a hash-map insert per row instead of a moka insert (about
    /// 1 µs each on 2 cores, a third of reading the row from SQLite), and cannot push hot
    /// rows out of the main cache.
    ///
    /// `None` (the default): a tenth of the bound, for regions bounded at 2,560 entries or
    /// more (or a byte budget of 2.5 MiB for the rows) and without a ttl or tti; smaller regions
    /// and regions with a ttl or tti have none. `Some(n)`: `n` entries, or `n` bytes in a
    /// byte-budgeted region (smaller than the bound; not with a ttl or tti, since a row's
    /// lifetime would start again when it moves). `Some(0)`: no window, batch rows go to
    /// the main cache.
    pub batch_window: Option<u64>,
    /// How the database compares the values of this region's unique keys, which decides
    /// whether [`Db::find_by`](crate::Db::find_by) may cache "no row has this key".
    pub key_compare: KeyCompare,
}

/// How the database compares the values of a region's unique keys (`#[cache(unique)]`).
///
/// A cached "no row has this key" (a negative key entry) is cleared by writes that give a
/// row the *same* key value, compared with the key type's `Eq`. Where the database finds
/// rows by a looser equality (a case- or accent-insensitive collation, trailing spaces
/// ignored), an insert of `ada@x.org` would not clear a cached "not found" for
/// `ADA@X.ORG`; such keys are therefore never negatively cached. Positive key → id
/// entries are always checked against the row, so they stay safe either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub enum KeyCompare {
    /// The backend's default comparison. PostgreSQL and SQLite compare text byte for byte
    /// (with their default collations), so "not found" is cached. MariaDB/MySQL's default
    /// collations ignore case, accents and trailing spaces, so on those backends "not
    /// found" is not cached for keys with a text column (or a column of a type the derive
    /// cannot classify); keys made only of numbers, booleans or UUIDs are still cached.
    #[default]
    BackendDefault,
    /// Declares that every unique key of the region compares byte for byte in the
    /// database (for example a `_bin` collation on MariaDB): "not found" is cached on
    /// every backend.
    Exact,
    /// Declares that a unique key of the region compares loosely (PostgreSQL `citext` or
    /// a nondeterministic collation, SQLite `COLLATE NOCASE`): "not found" is never
    /// cached for the region's keys.
    Loose,
}

impl RegionConfig {
    /// Default number of entries when neither `max_entries` nor `max_bytes` is given.
    pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;
    /// Default negative-cache time to live.
    pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(30);

    /// The defaults for a region called `name`: 10,000 entries, no ttl or tti, absent rows
    /// remembered for 30 seconds.
    pub fn new(name: impl Into<String>) -> Self {
        RegionConfig {
            name: name.into(),
            ttl: None,
            tti: None,
            max_entries: Some(Self::DEFAULT_MAX_ENTRIES),
            max_bytes: None,
            negative_ttl: Some(Self::DEFAULT_NEGATIVE_TTL),
            track_evictions: true,
            batch_window: None,
            key_compare: KeyCompare::BackendDefault,
        }
    }

    /// Turn counting removals by cause on or off.
    #[must_use]
    pub fn track_evictions(mut self, on: bool) -> Self {
        self.track_evictions = on;
        self
    }

    /// Size the batch window: `n` entries, or `n` bytes in a byte-budgeted region, taken
    /// from the bound; 0 turns it off (see [`RegionConfig::batch_window`]).
    #[must_use]
    pub fn batch_window(mut self, n: u64) -> Self {
        self.batch_window = Some(n);
        self
    }

    /// Set the time to live.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Set the time to idle.
    #[must_use]
    pub fn tti(mut self, tti: Duration) -> Self {
        self.tti = Some(tti);
        self
    }

    /// Bound the region by entry count (clears any byte budget).
    #[must_use]
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = Some(n);
        self.max_bytes = None;
        self
    }

    /// Bound the region by estimated bytes (clears any entry count). The budget covers the
    /// rows and, for an entity with unique keys, the key entries (a quarter of it).
    #[must_use]
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self.max_entries = None;
        self
    }

    /// Set how long absent rows are remembered; `None` turns negative caching off.
    #[must_use]
    pub fn negative_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// Declare how the database compares this region's unique keys (see [`KeyCompare`]):
    /// `.key_compare(KeyCompare::Exact)` for `_bin` collations on MariaDB,
    /// `.key_compare(KeyCompare::Loose)` for `citext` or `COLLATE NOCASE` columns.
    #[must_use]
    pub fn key_compare(mut self, compare: KeyCompare) -> Self {
        self.key_compare = compare;
        self
    }

    /// Rename the region.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}
