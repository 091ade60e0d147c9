//! Compile-time behaviour of `#[derive(Cached)]`: what it accepts, and the errors it gives.

#[test]
fn derive_ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass_*.rs");
    t.compile_fail("tests/ui/fail_*.rs");
    // A PostgreSQL-only model used with SQLite: needs the postgres feature for its types.
    #[cfg(feature = "postgres")]
    t.compile_fail("tests/ui/pg/fail_*.rs");
}
