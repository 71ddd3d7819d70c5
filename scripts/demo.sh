#!/usr/bin/env bash
# The demo in one command: the notification-settings backfill, run twice.
#
#     scripts/demo.sh
#
# With DATABASE_URL set it migrates that database. Otherwise it runs against a throwaway
# PostgreSQL (scripts/test-env.sh: testcontainers, the Docker engine installed where needed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${DATABASE_URL:-}" ]; then
  source scripts/test-env.sh
fi
cargo run -q -p datamig-examples --example demo
