//! How many rows one multi-row `INSERT .. ON DUPLICATE KEY UPDATE` should carry: 1,000,000
//! rows of three values (`bigint`, `varchar`, `boolean`) sent from Rust into one InnoDB
//! table in one transaction, as the MySQL upsert sends them, at several statement sizes.
//! The figures chose the upsert's size (`STATEMENT_PARAMETERS` in
//! `framework/src/backend/mysql/upsert.rs`; see BENCHMARKS.md).
//!
//!     cargo run --release -p datamig-examples --example mysql_statement_sizes
//!
//! Uses DATABASE_URL if it is a mysql:// URL (creates and drops `bench_sizes` there), else
//! a throwaway MariaDB from `datamig::testing::mysql()`.

use std::time::{Duration, Instant};

use sqlx::{Executor, MySqlPool};

const ROWS: i64 = 1_000_000;

/// Sends every row in statements of `per_statement` rows; `prepared_once` keeps each
/// statement prepared (sqlx's statement cache) for the next chunk of the same size.
async fn load(
    pool: &MySqlPool,
    per_statement: usize,
    prepared_once: bool,
) -> anyhow::Result<Duration> {
    pool.execute("TRUNCATE bench_sizes").await?;
    let mut conn = pool.acquire().await?;
    conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION")
        .await?;
    let start = Instant::now();
    let mut id = 1_i64;
    while id <= ROWS {
        let n = usize::try_from(ROWS + 1 - id)
            .unwrap_or(usize::MAX)
            .min(per_statement);
        let sql = format!(
            "INSERT INTO bench_sizes (user_id, plan, enabled) VALUES {} \
             ON DUPLICATE KEY UPDATE plan = IF((@hits := @hits + 1) > 0, VALUES(plan), plan), \
             enabled = VALUES(enabled)",
            vec!["(?, ?, ?)"; n].join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(prepared_once);
        for key in id..id + n as i64 {
            query = query
                .bind(key)
                .bind(format!("plan-{}", key % 5))
                .bind(key % 3 == 0);
        }
        query.execute(&mut *conn).await?;
        id += n as i64;
    }
    conn.execute("COMMIT").await?;
    Ok(start.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("mysql://"));
    let _db;
    let pool = match url {
        Some(url) => MySqlPool::connect(&url).await?,
        None => {
            let db = datamig::testing::mysql().await?;
            let pool = db.pool().clone();
            _db = db;
            pool
        }
    };
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&pool)
        .await?;
    println!("server: {version}; {ROWS} rows of 3 values, one transaction; best of 2");
    pool.execute("DROP TABLE IF EXISTS bench_sizes").await?;
    pool.execute(
        "CREATE TABLE bench_sizes (user_id bigint PRIMARY KEY, plan varchar(20) NOT NULL, \
         enabled boolean NOT NULL) ENGINE=InnoDB",
    )
    .await?;
    let sizes = [
        (100, true),
        (250, true),
        (500, true),
        (500, false),
        (1_000, true),
        (2_000, true),
        (21_845, false),
    ];
    for (rows, prepared_once) in sizes {
        let first = load(&pool, rows, prepared_once).await?;
        let second = load(&pool, rows, prepared_once).await?;
        println!(
            "{rows:>6} rows a statement, {:<24} {:.3}s",
            if prepared_once {
                "prepared once"
            } else {
                "prepared for each"
            },
            first.min(second).as_secs_f64()
        );
    }
    pool.execute("DROP TABLE bench_sizes").await?;
    Ok(())
}
