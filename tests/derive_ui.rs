//! Compile-time behaviour of `#[derive(Cached)]`: what it accepts, and the errors it gives.

#[test]
fn derive_ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass_*.rs");
    t.compile_fail("tests/ui/fail_*.rs");
    // A PostgreSQL-only model used with SQLite: needs the postgres feature for its types.
    #[cfg(feature = "postgres")]
    t.compile_fail("tests/ui/pg/fail_*.rs");
    // Errors that diesel repeats per backend, and whose type names rustc prints in full or
    // trimmed depending on the crates in scope: one expected output for the default
    // features (what `cargo test` builds), one for every backend (what CI builds).
    #[cfg(not(any(feature = "postgres", feature = "mysql")))]
    t.compile_fail("tests/ui/sqlite_only/fail_*.rs");
    #[cfg(all(feature = "postgres", feature = "mysql"))]
    t.compile_fail("tests/ui/all_backends/fail_*.rs");
}
