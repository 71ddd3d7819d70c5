//! An application's own `datamig` binary: the whole CLI, linked with the application's
//! migrations. In an application this is `src/bin/datamig.rs`.
//!
//!     cargo run -p datamig-examples --example my_datamig -- status

fn main() -> std::process::ExitCode {
    datamig_demo_migrations::link(); // keep the crate of migrations linked
    datamig_cli::main()
}
