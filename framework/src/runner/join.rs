//! Joining another runner's workers: while another runner holds the runner lock and walks
//! a batched migration with workers, this run works its ranges too (same code only).

use chrono::Utc;

use super::Migrator;
use super::apply::Failure;
use super::report::AppliedMigration;
use super::workers::{Job, team_report};
use crate::backend::{Backend, pinned};
use crate::error::Error;
use crate::ledger::Action;
use crate::migration::{Code, Migration};

impl<DB: Backend> Migrator<DB> {
    /// While another runner holds the runner lock: joins every batched migration it is
    /// walking with workers, for which this binary has the same code, as this run's
    /// workers, until no range is left. Returns what this run did in each.
    pub(super) async fn join_running(
        &self,
        conn: &mut DB::Connection,
        code: &[(&'static Migration, Code<DB>)],
    ) -> Result<Vec<AppliedMigration>, Error> {
        if self.dry_run || !self.join || !DB::WORKERS {
            return Ok(Vec::new());
        }
        let ranges = pinned::<DB, _>(conn, async |c| {
            Ok(DB::read_ranges(c, &self.ledger, None).await?)
        })
        .await?;
        let mut ids: Vec<String> = ranges
            .iter()
            .filter(|r| !r.done)
            .map(|r| r.migration_id.clone())
            .collect();
        ids.dedup();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (ledger, pauses) = pinned::<DB, _>(conn, async |c| {
            Ok((
                DB::read_ledger(c, &self.ledger).await?,
                DB::pause_state(c, &self.ledger, None).await?,
            ))
        })
        .await?;
        let mut joined = Vec::new();
        for id in ids {
            let Some((migration, Code::Batched(run))) =
                code.iter().find(|(m, _)| m.id() == id).copied()
            else {
                continue;
            };
            let Some(spec) = migration.batch() else {
                continue;
            };
            // Only what this run would apply (`only`, `up_to`).
            let selected = self.only.as_ref().is_none_or(|only| &id == only)
                && self.up_to.as_ref().is_none_or(|last| &id <= last);
            if !selected {
                continue;
            }
            // Only the same code, still running, not paused.
            if !ledger.iter().any(|row| {
                row.id == id
                    && row.is_running()
                    && row.checksum == migration.checksum()
                    && row.revision == migration.revision()
            }) || pauses.iter().any(|p| p.migration_id == id)
            {
                continue;
            }
            let Ok((shape, _)) = pinned::<DB, _>(conn, async |c| {
                super::batch_key::<DB>(c, migration.id(), spec, false).await
            })
            .await
            else {
                continue;
            };
            let job = Job {
                migration,
                run,
                spec,
                shape,
                action: Action::Resume,
                started_at: Utc::now(),
            };
            match self
                .work_ranges(conn, &job, self.workers_for(spec), Vec::new())
                .await
            {
                Ok(team) => joined.push(team_report(&team, &id, Action::Resume)),
                // Paused: the runner that takes the lock next reports it.
                Err(Failure::Paused(_) | Failure::Cancelled(_)) => {}
                Err(Failure::Migration {
                    message,
                    panicked,
                    source,
                }) => {
                    return Err(Error::MigrationFailed {
                        id,
                        message,
                        panicked,
                        applied_before: Vec::new(),
                        source,
                    });
                }
                Err(Failure::Stopped { batches, .. }) => {
                    return Err(Error::Stopped {
                        after: format!(
                            "{batches} batch(es) of {id}, joined as a worker, committed; the \
                             next run resumes it"
                        ),
                        applied: Vec::new(),
                    });
                }
                Err(Failure::Interrupted { batches }) => {
                    return Err(Error::Interrupted { id, batches });
                }
                Err(Failure::Other(err)) => return Err(err),
            }
        }
        Ok(joined)
    }
}
