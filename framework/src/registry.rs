//! The global registry of migrations, filled by `#[migration]` through `inventory`.
//!
//! `inventory` collects before `main` in no particular order, so [`load`] sorts by id and
//! rejects duplicates once, in one place.
//!
//! # Linking
//!
//! rustc does not link a crate that nothing refers to, and the registrations of an unlinked
//! crate never run (inventory issues #7 and #50). A crate of migrations therefore exports a
//! `pub fn link()` (see [`link_marker`]), and every binary calls it before running datamig.

use crate::error::Error;
use crate::migration::Migration;

/// What `#[migration]` submits to `inventory`.
#[doc(hidden)]
pub struct Registered(pub &'static Migration);

inventory::collect!(Registered);

/// Every migration registered in this binary, sorted by id.
///
/// # Errors
///
/// [`Error::DuplicateId`] when two migrations share an id, naming both definitions.
pub fn load() -> Result<Vec<&'static Migration>, Error> {
    validate(inventory::iter::<Registered>.into_iter().map(|r| r.0))
}

/// Sorts migrations by id and rejects duplicate ids.
///
/// # Errors
///
/// [`Error::DuplicateId`] when two migrations share an id, naming both definitions.
pub fn validate(
    migrations: impl IntoIterator<Item = &'static Migration>,
) -> Result<Vec<&'static Migration>, Error> {
    let mut sorted: Vec<&'static Migration> = migrations.into_iter().collect();
    // Sort by location too, so that the error names the two definitions in a stable order.
    sorted.sort_by_key(|m| (m.id(), m.location().file, m.location().line));
    if let Some(pair) = sorted.windows(2).find(|w| w[0].id() == w[1].id()) {
        return Err(Error::DuplicateId {
            id: pair[0].id().to_string(),
            first: pair[0].location().to_string(),
            second: pair[1].location().to_string(),
        });
    }
    Ok(sorted)
}

/// Keeps a crate of migrations linked; call it from a crate's `pub fn link()`.
///
/// ```
/// /// Makes sure this crate is linked, so its migrations are registered.
/// ///
/// /// rustc drops a crate that nothing refers to, and with it the crate's registrations.
/// /// Call this from every binary that runs these migrations.
/// pub fn link() {
///     datamig::link_marker(module_path!());
/// }
/// ```
#[inline(never)]
pub fn link_marker(crate_path: &'static str) {
    std::hint::black_box(crate_path);
}
