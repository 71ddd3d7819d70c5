//! `datamig new NAME`: a new migration file with a fresh timestamped id, declared in the
//! crate's module tree so that it is compiled and registered.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::opt::NewOpts;
use crate::output::Output;
use crate::{Failure, exit};

/// Writes `DIR/m<id>.rs` and declares it in the crate root (`lib.rs`, `mod.rs` or
/// `main.rs` in `DIR`).
pub(crate) fn new_migration(opts: &NewOpts, out: &Output) -> Result<u8, Failure> {
    let name = opts.name.as_str();
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "invalid migration name {name:?}: use lowercase letters, digits and underscores, \
                 starting with a letter (e.g. backfill_notification_settings)"
            ),
        ));
    }
    let root = ["lib.rs", "mod.rs", "main.rs"].iter().map(|f| opts.dir.join(f)).find(|p| p.is_file()).ok_or_else(|| {
        Failure::new(
            exit::USAGE,
            format!(
                "{} holds no lib.rs, mod.rs or main.rs: pass --dir with the source directory of your crate of migrations",
                opts.dir.display()
            ),
        )
    })?;

    let id = format!("{}_{name}", chrono::Utc::now().format("%Y%m%d_%H%M"));
    let module = format!("m{id}");
    let file: PathBuf = opts.dir.join(format!("{module}.rs"));
    if file.exists() {
        return Err(Failure::new(
            exit::USAGE,
            format!("{} exists already; choose another name", file.display()),
        ));
    }
    fs::write(&file, template(&id, name)).map_err(|e| write_failed(&file, &e))?;
    let declaration = format!("\nmod {module};\n");
    fs::OpenOptions::new()
        .append(true)
        .open(&root)
        .and_then(|mut f| f.write_all(declaration.as_bytes()))
        .map_err(|e| write_failed(&root, &e))?;
    out.done(
        &format!(
            "created {} with migration {id}, declared in {}",
            file.display(),
            root.display()
        ),
        &id,
    )?;
    Ok(exit::OK)
}

fn write_failed(path: &Path, err: &std::io::Error) -> Failure {
    Failure::new(
        exit::UNEXPECTED,
        format!("cannot write {}: {err}", path.display()),
    )
}

fn template(id: &str, name: &str) -> String {
    format!(
        r#"//! Data migration {id}.

use datamig::prelude::*;

/// Describe what this migration does: `datamig status` shows this line.
///
/// Keep it idempotent: a second run must change nothing (see `datamig::testing`).
// For SQLite take `Ctx<'_, Sqlite>`; for every backend, write it once as
// `async fn {name}<DB: Backend>(ctx: &mut Ctx<'_, DB>)`.
#[datamig::migration(id = "{id}")]
pub async fn {name}(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> {{
    // Change rows through `ctx.tx()` (any sqlx query) or the helpers: `ctx.execute(..)`,
    // `ctx.upsert(..)`. Everything commits with the ledger row, or not at all.
    ctx.note("nothing done yet");
    Ok(())
}}
"#
    )
}
