//! Bodies generic over the backend (`async fn m<DB: Backend>(..)`): the `#[migration]`
//! attribute wraps one in a type implementing [`Portable`], and [`Migration::portable`]
//! registers it for every backend compiled into datamig. The `cfg` lives here, since the
//! user's crate cannot see datamig's features.

#[cfg(feature = "mysql")]
use crate::MySql;
#[cfg(feature = "postgres")]
use crate::Postgres;
#[cfg(feature = "sqlite")]
use crate::Sqlite;
use crate::backend::Backend;
use crate::ctx::Ctx;
use crate::migration::{Batch, BatchSpec, BoxFuture, Migration};

/// A migration body generic over the backend (`async fn m<DB: Backend>(..)`), as the
/// `#[migration]` attribute wraps it: one function for every backend compiled in.
#[doc(hidden)]
pub trait Portable {
    /// The body, for backend `DB`.
    fn run<'a, 'c, DB: Backend>(ctx: &'a mut Ctx<'c, DB>) -> BoxFuture<'a, anyhow::Result<()>>;
}

/// A batched migration body generic over the backend.
#[doc(hidden)]
pub trait PortableBatched {
    /// The body of one batch, for backend `DB`.
    fn run<'a, 'c, DB: Backend>(
        ctx: &'a mut Ctx<'c, DB>,
        batch: Batch,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
}

impl Migration {
    /// Registers a body generic over the backend for every backend compiled into datamig.
    #[doc(hidden)]
    pub const fn portable<P: Portable>(self) -> Self {
        #[cfg(feature = "postgres")]
        let this = self.postgres(P::run::<Postgres>);
        #[cfg(not(feature = "postgres"))]
        let this = self;
        #[cfg(feature = "sqlite")]
        let this = this.sqlite(P::run::<Sqlite>);
        #[cfg(feature = "mysql")]
        let this = this.mysql(P::run::<MySql>);
        this
    }

    /// Registers a batched body generic over the backend for every backend compiled in.
    #[doc(hidden)]
    pub const fn portable_batched<P: PortableBatched>(self, spec: BatchSpec) -> Self {
        #[cfg(feature = "postgres")]
        let this = self.postgres_batched(P::run::<Postgres>, spec);
        #[cfg(not(feature = "postgres"))]
        let this = self;
        #[cfg(feature = "sqlite")]
        let this = this.sqlite_batched(P::run::<Sqlite>, spec);
        #[cfg(feature = "mysql")]
        let this = this.mysql_batched(P::run::<MySql>, spec);
        this.with_batch(spec)
    }
}
