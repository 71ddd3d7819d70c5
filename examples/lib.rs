//! Runnable examples of datamig: `cargo run -p datamig-examples --example demo`.

/// What the benchmarks share: timing, medians, and the lines that compare a figure with its
/// target.
pub mod bench {
    use std::time::{Duration, Instant};

    /// How long `work` took.
    ///
    /// # Errors
    ///
    /// The error of `work`.
    pub async fn timed<F: Future<Output = Result<(), E>>, E: Into<anyhow::Error>>(
        work: F,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        work.await.map_err(Into::into)?;
        Ok(started.elapsed())
    }

    /// The median of `repeat` measurements (at least one).
    ///
    /// # Errors
    ///
    /// The first error of a measurement.
    pub async fn median<F, Fut>(repeat: usize, mut measure: F) -> anyhow::Result<Duration>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<Duration>>,
    {
        let mut runs = Vec::new();
        for _ in 0..repeat.max(1) {
            runs.push(measure().await?);
        }
        Ok(middle(&runs))
    }

    /// Prints `ratio WHAT = ours / base` against its target; whether it is met.
    pub fn ratio(what: &str, ours: Duration, base: Duration, target: f64) -> bool {
        ratio_value(what, ours.as_secs_f64(), base.as_secs_f64(), target)
    }

    /// As [`ratio`], of two numbers.
    pub fn ratio_value(what: &str, ours: f64, base: f64, target: f64) -> bool {
        let r = ours / base.max(1e-9);
        println!(
            "ratio {what} = {r:.2}x  (target <= {target}x)  {}",
            verdict(r <= target)
        );
        r <= target
    }

    /// `ok` or `MISSED`.
    pub fn verdict(ok: bool) -> &'static str {
        if ok { "ok" } else { "MISSED" }
    }

    /// This process's peak resident set (VmHWM), in KiB.
    ///
    /// # Errors
    ///
    /// Without `/proc/self/status` (not Linux).
    pub fn peak_rss_kib() -> anyhow::Result<u64> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/self/status"))
    }

    /// Creates `bench_users` (1,000,000 users) and the empty `bench_settings` that the
    /// backfills fill, and vacuums the users: the helpers' and the workers' benchmarks
    /// measure the same backfill.
    ///
    /// # Errors
    ///
    /// Any database error.
    pub async fn create_users_and_settings(pool: &sqlx::PgPool) -> anyhow::Result<()> {
        sqlx::raw_sql(
            "CREATE TABLE bench_users (id bigint PRIMARY KEY, email text NOT NULL);
             CREATE TABLE bench_settings (user_id bigint PRIMARY KEY REFERENCES bench_users (id),
                 email_enabled boolean NOT NULL, push_enabled boolean NOT NULL);
             INSERT INTO bench_users SELECT n, 'user' || n || '@example.com' FROM generate_series(1, 1000000) AS n;",
        )
        .execute(pool)
        .await?;
        sqlx::raw_sql("VACUUM ANALYZE bench_users")
            .execute(pool)
            .await?;
        Ok(())
    }

    /// The ledger the benchmarks record their runs in (`bench_ledger`, `bench_runs`).
    pub fn ledger() -> datamig::LedgerConfig {
        datamig::LedgerConfig::default()
            .ledger_table("bench_ledger")
            .runs_table("bench_runs")
    }

    /// Empties `bench_settings` and the benchmarks' ledger (and ranges, where a run with
    /// workers left the table): the next run is a first run.
    ///
    /// # Errors
    ///
    /// Any database error.
    pub async fn empty_settings_and_ledger(pool: &sqlx::PgPool) -> anyhow::Result<()> {
        sqlx::raw_sql(
            "TRUNCATE bench_settings;
             DO $$ BEGIN
               IF to_regclass('bench_ledger') IS NOT NULL THEN TRUNCATE bench_ledger, bench_runs; END IF;
               IF to_regclass('bench_ledger_ranges') IS NOT NULL THEN TRUNCATE bench_ledger_ranges; END IF;
             END $$;",
        )
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Seconds, to the millisecond.
    pub fn secs(d: Duration) -> String {
        format!("{:.3}s", d.as_secs_f64())
    }

    /// Two measurements taken side by side round after round, a baseline's and datamig's,
    /// in turns (the baseline first in even rounds, datamig first in odd ones): a machine
    /// that runs slower for a while weighs on both of a round, and the ratio is the median
    /// of the rounds' own ratios.
    #[derive(Debug, Default)]
    pub struct Paired {
        base: Vec<Duration>,
        ours: Vec<Duration>,
    }

    impl Paired {
        /// Measures one round: `base`, then `ours` (or the other way round, see above).
        ///
        /// # Errors
        ///
        /// The first error of a measurement.
        pub async fn round<B, O>(&mut self, base: B, ours: O) -> anyhow::Result<()>
        where
            B: Future<Output = anyhow::Result<Duration>>,
            O: Future<Output = anyhow::Result<Duration>>,
        {
            let (b, o) = if self.base.len().is_multiple_of(2) {
                let b = base.await?;
                (b, ours.await?)
            } else {
                let o = ours.await?;
                (base.await?, o)
            };
            self.base.push(b);
            self.ours.push(o);
            Ok(())
        }

        /// Adds one round measured by the caller (who takes care of the turns).
        pub fn record(&mut self, base: Duration, ours: Duration) {
            self.base.push(base);
            self.ours.push(ours);
        }

        /// The median of the baseline's measurements.
        pub fn base(&self) -> Duration {
            middle(&self.base)
        }

        /// The median of datamig's measurements.
        pub fn ours(&self) -> Duration {
            middle(&self.ours)
        }

        /// Prints `ratio WHAT = r` (the median of the rounds' ratios, each listed) against
        /// its target; whether it is met.
        pub fn ratio(&self, what: &str, target: f64) -> bool {
            let (r, rounds) = self.ratios();
            println!(
                "ratio {what} = {r:.2}x  (rounds: {rounds})  (target <= {target}x)  {}",
                verdict(r <= target)
            );
            r <= target
        }

        /// Prints `ratio WHAT = r` (as [`Self::ratio`]), a figure without a target.
        pub fn note(&self, what: &str) {
            let (r, rounds) = self.ratios();
            println!("ratio {what} = {r:.2}x  (rounds: {rounds})");
        }

        /// The median of the rounds' ratios, and each of them as printed.
        fn ratios(&self) -> (f64, String) {
            let mut ratios: Vec<f64> = self
                .ours
                .iter()
                .zip(&self.base)
                .map(|(o, b)| o.as_secs_f64() / b.as_secs_f64().max(1e-9))
                .collect();
            let rounds = ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" ");
            ratios.sort_by(f64::total_cmp);
            let r = ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN);
            (r, rounds)
        }
    }

    /// The median of `runs` (zero without any).
    fn middle(runs: &[Duration]) -> Duration {
        let mut runs = runs.to_vec();
        runs.sort();
        runs.get(runs.len() / 2).copied().unwrap_or_default()
    }
}
