//! Test-only pause points (feature `test-hooks`): a callback a test installs on a `Db` to
//! stop a thread at a precise point of a load or a commit and drive an interleaving
//! deterministically, without sleeps. Not part of the stable API.

use std::fmt;
use std::sync::Arc;

/// Where a thread is when the hook is called.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Point {
    /// A read-through load registered its fence and is about to run its query.
    BeforeLoad {
        /// Region name.
        region: String,
        /// The id, formatted with `Debug`.
        id: String,
    },
    /// A read-through load ran its query and is about to fill (or not).
    AfterLoad {
        /// Region name.
        region: String,
        /// The id, formatted with `Debug`.
        id: String,
    },
    /// A shared-tier read (C9) was granted the key's lease and loaded the row from the
    /// database; it is about to fill Redis under the lease.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    BeforeSharedFill {
        /// Region name.
        region: String,
        /// The id, formatted with `Debug`.
        id: String,
    },
    /// A transaction took its soft lock on a key, before its write statement.
    AfterLock {
        /// Region name.
        region: String,
        /// The id, formatted with `Debug`.
        id: String,
    },
    /// The transaction closure returned Ok; `COMMIT` has not been sent.
    BeforeCommit,
    /// `COMMIT` returned Ok; the cache buffer has not been applied.
    AfterCommit,
    /// The cache buffer was applied and the locks released.
    AfterApply,
}

/// The callback: runs on the thread that reached the point, may block it.
#[derive(Clone)]
pub struct Hook(pub(crate) Arc<dyn Fn(&Point) + Send + Sync>);

impl Hook {
    /// Wraps a callback.
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    pub fn new(f: impl Fn(&Point) + Send + Sync + 'static) -> Self {
        Hook(Arc::new(f))
    }
}

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hook")
    }
}

/// Calls the hook, if any; the point is built only when one is installed.
#[inline]
pub(crate) fn reach(hook: &Option<Hook>, point: impl FnOnce() -> Point) {
    if let Some(h) = hook {
        (h.0)(&point());
    }
}
