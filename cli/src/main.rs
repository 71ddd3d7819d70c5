//! The `datamig` binary of the demo application: the CLI, linked with the demo migrations.

fn main() -> std::process::ExitCode {
    datamig_demo_migrations::link();
    datamig_cli::main()
}
