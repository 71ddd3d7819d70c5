//! The error of a step a backend cannot take, which the step traits' defaults return.

use crate::error::Error;

/// What a backend with one writer at a time cannot do.
pub(super) const WORKERS: &str =
    "run a batched migration with several workers: it takes one writer at a time";

/// What a backend without the rest check's guard cannot do.
pub(super) const REST_CHECK: &str = "check the keys left of a batched migration in one statement";

/// Step `step` is not one `backend` can take.
pub(super) fn unsupported(backend: &'static str, step: &'static str) -> Error {
    Error::Unsupported { backend, step }
}

/// The same, for a step whose callers take sqlx's error: carried as its source.
pub(super) fn unsupported_sqlx(backend: &'static str, step: &'static str) -> sqlx::Error {
    sqlx::Error::Configuration(Box::new(unsupported(backend, step)))
}
