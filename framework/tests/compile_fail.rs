//! `#[migration]` rejects bad ids, wrong signatures and bad arguments at compile time, with
//! messages that say what is expected.

#[test]
fn bad_migrations_do_not_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
