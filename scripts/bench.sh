#!/usr/bin/env bash
# The helpers' benchmark in one command (see BENCHMARKS.md):
#
#     scripts/bench.sh                  the helpers against set-based SQL
#     scripts/bench.sh --fingerprint    the fingerprint of a 10M-row table
#     scripts/bench.sh --keys           batched backfills over UUID and composite keys, and
#                                       an application's p99 during a backfill
#     scripts/bench.sh --workers        the 1M-row backfill with 1, 2 and 4 workers
#     scripts/bench.sh --fleet          two migrations to 200 tenant schemas: `run --targets`
#                                       against a shell loop of `datamig run`
#     scripts/bench.sh --copy [SCALE]   `datamig copy` beside pg_dump | psql and pgcopydb
#                                       (its own throwaway server: scripts/bench-copy.sh)
#     scripts/bench.sh --follow [SCALE] `datamig copy --follow` under pgbench: apply rate,
#                                       lag, cut-over, memory (scripts/bench-follow.sh)
#     scripts/bench.sh --sqlite [ROWS]  `datamig copy` from SQLite beside pgloader
#                                       (scripts/bench-sqlite.sh)
#     scripts/bench.sh --mysql          the upsert and batched backfills on MariaDB against
#                                       set-based statements (DATABASE_URL=mysql://.. or a
#                                       throwaway MariaDB; DATAMIG_BENCH_BUFFER_POOL=<bytes>
#                                       sizes the throwaway's InnoDB buffer pool)
#     scripts/bench.sh --mysql-copy [ITEMS]  `datamig copy` from MariaDB beside pgloader
#                                       (scripts/bench-mysql-copy.sh)
#
# With DATABASE_URL set it runs against that server (its own bench_* tables only).
# Otherwise against a throwaway PostgreSQL (scripts/test-env.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "${1:-}" = "--copy" ]; then
  shift
  exec scripts/bench-copy.sh "$@"
fi
if [ "${1:-}" = "--follow" ]; then
  shift
  exec scripts/bench-follow.sh "$@"
fi
if [ "${1:-}" = "--sqlite" ]; then
  shift
  exec scripts/bench-sqlite.sh "$@"
fi
if [ "${1:-}" = "--mysql-copy" ]; then
  shift
  exec scripts/bench-mysql-copy.sh "$@"
fi
if [ -z "${DATABASE_URL:-}" ]; then
  source scripts/test-env.sh
fi
if [ "${1:-}" = "--keys" ]; then
  shift
  cargo run -q --release -p datamig-examples --example keys_benchmark -- "$@"
elif [ "${1:-}" = "--workers" ]; then
  shift
  cargo run -q --release -p datamig-examples --example workers_benchmark -- "$@"
elif [ "${1:-}" = "--mysql" ]; then
  shift
  cargo run -q --release -p datamig-examples --example mysql_benchmark -- "$@"
elif [ "${1:-}" = "--fleet" ]; then
  shift
  cargo run -q --release -p datamig-examples --example fleet_benchmark -- "$@"
else
  cargo run -q --release -p datamig-examples --example benchmark -- "$@"
fi
