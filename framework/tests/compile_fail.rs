//! `#[migration]` rejects bad ids, wrong signatures and bad arguments at compile time, with
//! messages that say what is expected; and accepts a migration for one backend or generic
//! over all of them.

#[test]
fn bad_migrations_do_not_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}

#[test]
fn migrations_for_one_or_every_backend_compile_and_register() {
    let t = trybuild::TestCases::new();
    t.pass("tests/pass/*.rs");
}
