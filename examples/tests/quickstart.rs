//! The README's first command works from any directory and with any target directory.

use std::path::PathBuf;
use std::process::Command;

/// The quickstart example `cargo test` built beside this test (`<target>/debug/examples/`).
fn quickstart() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let debug = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from <target>/<profile>/deps");
    debug
        .join("examples")
        .join(format!("quickstart{}", std::env::consts::EXE_SUFFIX))
}

#[test]
fn the_quickstart_runs_from_another_directory_and_another_target_directory() {
    let built = quickstart();
    assert!(
        built.exists(),
        "cargo test builds the examples: {}",
        built.display()
    );
    // Another target directory (as CARGO_TARGET_DIR gives), and another current directory.
    let elsewhere = std::env::temp_dir().join(format!("datamig-quickstart-{}", std::process::id()));
    let target = elsewhere.join("target/debug/examples");
    std::fs::create_dir_all(&target).unwrap();
    let cwd = elsewhere.join("somewhere/else");
    std::fs::create_dir_all(&cwd).unwrap();
    let copy = target.join(built.file_name().unwrap());
    std::fs::copy(&built, &copy).unwrap();

    let output = Command::new(&copy)
        .current_dir(&cwd)
        .env("CARGO_TARGET_DIR", elsewhere.join("target"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(target.join("datamig-quickstart.db").exists(), "{stdout}");
    assert!(stdout.contains("exactly once"), "{stdout}");
    std::fs::remove_dir_all(&elsewhere).unwrap();
}
