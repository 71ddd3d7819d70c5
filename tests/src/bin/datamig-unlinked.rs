//! A user's datamig binary that forgot to call its migrations crate's `link()`: nothing of
//! `datamig_tests` is referenced, so none of its migrations is registered here.

fn main() -> std::process::ExitCode {
    datamig_cli::main()
}
