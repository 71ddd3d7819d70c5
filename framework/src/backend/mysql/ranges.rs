//! MySQL's steps of several workers: none yet (batched migrations are not yet available
//! on MySQL), so the trait's defaults, which fail with a typed error.

use sqlx::MySql;

use crate::backend::steps::RangeSteps;

impl RangeSteps for MySql {}
