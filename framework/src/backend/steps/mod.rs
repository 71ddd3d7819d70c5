//! The steps each backend implements, one trait per concern, all required by
//! [`Backend`](super::Backend). The algorithm calls them as `DB::step`; a step a backend
//! cannot take keeps the trait's default, which fails with a typed error.

mod connection;
mod ledger;
mod lock;
mod ranges;
mod tables;
mod unsupported;
mod upsert;
mod walk;

pub use connection::ConnectionSteps;
pub use ledger::{Chained, LedgerSteps};
pub use lock::LockSteps;
pub use ranges::RangeSteps;
pub use tables::TableSteps;
pub use upsert::UpsertSteps;
pub use walk::{KeyColumn, LoadSample, WalkSteps};
