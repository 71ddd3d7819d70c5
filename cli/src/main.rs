//! The installed `datamig` binary (`cargo install datamig-cli`): the CLI with no migrations
//! compiled in. It reads and manages the ledger, diagnoses, fingerprints, compares and
//! copies; for `run` and the commands that need migrations' code, it shows how to build the
//! application's own binary.

fn main() -> std::process::ExitCode {
    datamig_cli::main_for(datamig_cli::Build::LedgerOnly)
}
