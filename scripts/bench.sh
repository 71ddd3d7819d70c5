#!/usr/bin/env bash
# The helpers' benchmark in one command (see BENCHMARKS.md):
#
#     scripts/bench.sh                  the helpers against set-based SQL
#     scripts/bench.sh --fingerprint    the fingerprint of a 10M-row table
#
# With DATABASE_URL set it runs against that server (its own bench_* tables only).
# Otherwise against a throwaway PostgreSQL (scripts/test-env.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${DATABASE_URL:-}" ]; then
  source scripts/test-env.sh
fi
cargo run -q --release -p datamig-examples --example benchmark -- "$@"
