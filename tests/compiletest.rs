//! Compile-time behaviour of the attributes: what they reject, with which
//! message at which token (`tests/ui/*.rs`), and what they accept
//! (`tests/ui/pass/*.rs`).
//!
//! Bless changed messages with
//! `TRYBUILD=overwrite cargo test -p multiproc --test compiletest`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
