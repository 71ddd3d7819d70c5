//! `datamig new` writes a migration that compiles and shows up in `status`: the test makes
//! a user's crate of migrations with its own `datamig` binary, scaffolds a migration into it,
//! builds it, and runs it against a real database.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const CARGO_TOML: &str = r#"[package]
name = "my-app-migrations"
version = "0.1.0"
edition = "2024"
publish = false

[workspace]

[dependencies]
anyhow = "1"
datamig = { path = "FRAMEWORK" }
datamig-cli = { path = "CLI", default-features = false }
"#;

const LIB_RS: &str = "//! My app's data migrations.\n\n/// Keeps this crate linked.\npub fn link() {\n    datamig::link_marker(module_path!());\n}\n";

const MAIN_RS: &str = "fn main() -> std::process::ExitCode {\n    my_app_migrations::link();\n    datamig_cli::main()\n}\n";

#[tokio::test]
async fn new_writes_a_migration_that_compiles_and_shows_up_in_status() -> anyhow::Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .canonicalize()?;
    let app = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("my-app-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&app);
    std::fs::create_dir_all(app.join("src"))?;
    let manifest = CARGO_TOML
        .replace(
            "FRAMEWORK",
            &workspace.join("framework").display().to_string(),
        )
        .replace("CLI", &workspace.join("cli").display().to_string());
    std::fs::write(app.join("Cargo.toml"), manifest)?;
    std::fs::copy(workspace.join("Cargo.lock"), app.join("Cargo.lock"))?;
    std::fs::write(app.join("src/lib.rs"), LIB_RS)?;
    std::fs::write(app.join("src/main.rs"), MAIN_RS)?;

    let src = app.join("src");
    let created = Command::new(env!("CARGO_BIN_EXE_datamig-demo"))
        .args(["new", "backfill_widgets", "--format", "json", "--dir"])
        .arg(&src)
        .env_remove("DATABASE_URL")
        .output()?;
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let created: Value = serde_json::from_slice(&created.stdout)?;
    let id = created["id"].as_str().expect("an id").to_string();
    assert!(
        id.ends_with("_backfill_widgets") && id.len() == "20241121_0930_backfill_widgets".len(),
        "{id}"
    );
    let module = format!("m{id}");
    assert!(src.join(format!("{module}.rs")).is_file());
    assert!(std::fs::read_to_string(src.join("lib.rs"))?.ends_with(&format!("\nmod {module};\n")));

    let again = Command::new(env!("CARGO_BIN_EXE_datamig-demo"))
        .args(["new", "Bad-Name", "--dir"])
        .arg(&src)
        .output()?;
    assert_eq!(again.status.code(), Some(2));

    // Build the user's binary, in a target directory of its own that later runs reuse.
    let build = Command::new(env!("CARGO"))
        .args(["build", "--offline", "--quiet", "--manifest-path"])
        .arg(app.join("Cargo.toml"))
        .env(
            "CARGO_TARGET_DIR",
            workspace.join("target/tests/user-crate"),
        )
        .output()?;
    assert!(
        build.status.success(),
        "the scaffolded migration must compile:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let binary = workspace.join("target/tests/user-crate/debug/my-app-migrations");

    let db = datamig::testing::postgres().await?;
    let status = Command::new(&binary)
        .arg("status")
        .env("DATABASE_URL", db.url())
        .output()?;
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(text.contains(&format!("{id}  pending")), "{text}");
    assert!(
        text.contains("Describe what this migration does: `datamig status` shows this line."),
        "{text}"
    );

    let run = Command::new(&binary)
        .arg("run")
        .env("DATABASE_URL", db.url())
        .output()?;
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(text.starts_with(&format!("applied {id}  0 rows")), "{text}");
    assert!(text.contains("  nothing done yet\n"), "{text}");
    std::fs::remove_dir_all(&app)?;
    Ok(())
}
