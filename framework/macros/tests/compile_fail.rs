//! `#[migration]` rejects bad ids, wrong signatures and bad arguments at compile time, with
//! messages that say what is expected.
//!
//! The cases build against `datamig` with its PostgreSQL backend alone (this crate's
//! dev-dependency): the messages are the attribute's own, the same with every backend, and
//! the build of each case's dependencies is the smallest that shows them. That a migration
//! for one backend or generic over all of them compiles and registers is
//! `framework/tests/backends.rs`.

#[test]
fn bad_migrations_do_not_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
