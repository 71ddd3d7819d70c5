//! Runnable examples of datamig: `cargo run -p datamig-examples --example demo`.
