//! Shared fixtures for diesel-l2's integration tests.
//!
//! Use from a test file (the module must be named `common`, at the crate
//! root, because `backend_tests!` refers to `$crate::common`):
//!
//! ```ignore
//! mod common;
//! use common::schema::users;
//! use diesel::prelude::*;
//! // No `use common::*` needed for the macro: each generated module imports
//! // `Backend`, `SqlLog`, `TestDb`, `TestDbOptions` itself (plus `super::*`).
//!
//! backend_tests! {
//!     // Runs as sqlite::reads_a_row, postgres::reads_a_row, mysql::reads_a_row.
//!     fn reads_a_row(t) {
//!         // t: &TestDb<Conn>; Conn = this backend's connection type;
//!         // BACKEND (== t.backend) says which one.
//!         t.exec("INSERT INTO users (id, version, email, name) VALUES (1, 1, 'a@x', 'A')");
//!         t.sql.reset();
//!         let mut conn = t.pool.get().unwrap();
//!         let n: i64 = users::table.count().get_result(&mut conn).unwrap();
//!         assert_eq!((n, t.sql.selects()), (1, 1));
//!     }
//!     // Custom pool options, attributes passed through, subset of backends.
//!     #[ignore = "slow"]
//!     only(postgres, mysql)
//!     fn one_connection(t, TestDbOptions::default().max_size(1)) { /* ... */ }
//! }
//! ```
//!
//! PostgreSQL/MariaDB tests need `DIESEL_L2_PG_URL` / `DIESEL_L2_MYSQL_URL`;
//! without them they print `SKIPPED: ...` and pass, except under `CI=true`,
//! where they panic.

// Each test binary uses a different part of this module.
#![allow(dead_code, unused_imports, unused_macros)]

mod db;
pub mod models;
#[cfg(feature = "redis")]
pub mod redis;
pub mod schema;
mod sql_log;
pub mod watchdog;

pub use db::{
    Backend, Migrations, TestBackend, TestDb, TestDbOptions, TestPool, MYSQL_URL_ENV, PG_URL_ENV,
};
pub use sql_log::SqlLog;

/// Defines each test once per enabled backend.
///
/// Grammar, repeated:
/// `[#[attr]...] [only(backend, ...)] fn name(t [, options_expr]) { body }`
///
/// - Generates `mod sqlite`, `mod postgres`, `mod mysql` (each behind its
///   cargo feature), each with `type Conn` (the concrete connection type),
///   `const BACKEND: Backend`, `use super::*`, and one `#[test] fn name`.
/// - In the body, `t` (any identifier you choose) is a `&TestDb<Conn>` made
///   with `options_expr` (default `TestDbOptions::default()`). The body is
///   type-checked per backend, so backend-specific types are fine under
///   `only(..)`.
/// - When a backend is not configured the test prints `SKIPPED:` and passes
///   (panics under `CI=true`), see `TestBackend::open`.
/// - `only(..)` takes `sqlite`, `postgres`, `mysql`; anything else is a
///   compile error. Attributes (e.g. `#[ignore]`, doc comments) are put on
///   every generated test. Avoid `#[should_panic]`: a skipped backend returns
///   normally, which `should_panic` reports as a failure; assert on the
///   `Result`/`catch_unwind` instead.
#[macro_export]
macro_rules! backend_tests {
    // Options expression, or the default.
    (@opts) => { $crate::common::TestDbOptions::default() };
    (@opts $opts:expr) => { $opts };

    // Rejects typos in only(..), which would otherwise silently run nothing.
    (@valid sqlite) => {};
    (@valid postgres) => {};
    (@valid mysql) => {};
    (@valid $other:ident) => {
        compile_error!(concat!(
            "backend_tests!: unknown backend `", stringify!($other),
            "` in only(..); expected sqlite, postgres or mysql"
        ));
    };

    // @filter <backend> [only-list] <test>: no list means every backend.
    (@filter $b:ident [] $test:tt) => { $crate::backend_tests!(@emit $test); };
    (@filter $b:ident [$($only:ident),+] $test:tt) => {
        $crate::backend_tests!(@find $b [$($only),+] $test);
    };
    // @find walks the list; a literal match emits, exhaustion emits nothing.
    (@find sqlite [sqlite $(, $rest:ident)*] $test:tt) => {
        $crate::backend_tests!(@emit $test);
    };
    (@find postgres [postgres $(, $rest:ident)*] $test:tt) => {
        $crate::backend_tests!(@emit $test);
    };
    (@find mysql [mysql $(, $rest:ident)*] $test:tt) => {
        $crate::backend_tests!(@emit $test);
    };
    (@find $b:ident [$first:ident $(, $rest:ident)*] $test:tt) => {
        $crate::backend_tests!(@find $b [$($rest),*] $test);
    };
    (@find $b:ident [] $test:tt) => {};

    // One #[test] fn, expanded inside a backend module (`Conn` in scope).
    (@emit ([$($attr:tt)*] $name:ident $t:ident [$($opts:tt)*] $body:block)) => {
        #[test]
        $($attr)*
        fn $name() {
            let _deadline = $crate::common::watchdog::guard(concat!(
                module_path!(), "::", stringify!($name)
            ));
            let Some(db) = $crate::common::TestDb::<Conn>::open(
                $crate::backend_tests!(@opts $($opts)*)
            ) else {
                return; // backend not configured; already reported
            };
            let $t: &$crate::common::TestDb<Conn> = &db;
            let _ = $t; // a body need not use the fixture
            $body
        }
    };

    // One backend module with every test that applies to it.
    (@module $feature:literal, $module:ident, $conn:ty, $variant:ident;
        $( [$($only:ident),*] $test:tt )*) => {
        #[cfg(feature = $feature)]
        #[allow(unused_imports, dead_code)]
        mod $module {
            use super::*;
            use $crate::common::{Backend, SqlLog, TestDb, TestDbOptions};
            /// This module's connection type.
            type Conn = $conn;
            /// This module's backend.
            const BACKEND: Backend = Backend::$variant;
            $( $crate::backend_tests!(@filter $module [$($only),*] $test); )*
        }
    };

    // Entry point.
    ($(
        $(#[$attr:meta])*
        $(only($($only:ident),+ $(,)?))?
        fn $name:ident ($t:ident $(, $opts:expr)?) $body:block
    )*) => {
        $($($( $crate::backend_tests!(@valid $only); )+)?)*
        $crate::backend_tests!(@module "sqlite", sqlite, diesel::sqlite::SqliteConnection, Sqlite;
            $( [$($($only),+)?] ([$(#[$attr])*] $name $t [$($opts)?] $body) )*);
        $crate::backend_tests!(@module "postgres", postgres, diesel::pg::PgConnection, Postgres;
            $( [$($($only),+)?] ([$(#[$attr])*] $name $t [$($opts)?] $body) )*);
        $crate::backend_tests!(@module "mysql", mysql, diesel::mysql::MysqlConnection, Mysql;
            $( [$($($only),+)?] ([$(#[$attr])*] $name $t [$($opts)?] $body) )*);
    };
}

use diesel::r2d2::R2D2Connection;
use diesel_l2::{CachedOps, Db, DbBuilder};
use models::{Post, Product, Tag, User};

/// A builder over the test database's pool with every portable test model registered.
pub fn builder<C>(t: &TestDb<C>) -> DbBuilder<C>
where
    C: R2D2Connection + 'static,
    User: CachedOps<C>,
    Product: CachedOps<C>,
    Tag: CachedOps<C>,
    Post: CachedOps<C>,
{
    Db::builder(t.pool.clone())
        .cache::<User>()
        .cache::<Product>()
        .cache::<Tag>()
        .cache::<Post>()
}

/// `builder(t).build()`, for tests that need no special settings.
pub fn cached_db<C>(t: &TestDb<C>) -> Db<C>
where
    C: R2D2Connection + 'static,
    User: CachedOps<C>,
    Product: CachedOps<C>,
    Tag: CachedOps<C>,
    Post: CachedOps<C>,
{
    builder(t).build().expect("valid test regions")
}
