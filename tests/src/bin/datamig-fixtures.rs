//! A user's own `datamig` binary, linked with the test fixtures' migrations: what the tests
//! run as separate processes.

fn main() -> std::process::ExitCode {
    datamig_tests::link();
    datamig_cli::main()
}
