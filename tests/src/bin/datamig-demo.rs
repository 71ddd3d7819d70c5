//! The demo application's own `datamig` binary: the CLI, linked with the demo migrations
//! (what an application writes as `src/bin/datamig.rs`). The CLI tests run it.

fn main() -> std::process::ExitCode {
    datamig_demo_migrations::link(); // keeps the crate of migrations linked
    datamig_cli::main()
}
