#!/usr/bin/env bash
# `datamig copy` of this tree against another build of it (an earlier commit's release
# binary), interleaved on one throwaway server, to tell whether a change made the copy
# slower (see BENCHMARKS.md):
#
#     BENCH_BASE=path/to/older/datamig scripts/bench-copy-ab.sh [SCALE] [ROUNDS]
#
# Same source and target as scripts/bench-copy.sh; each round runs the older build and
# this one with `--jobs 1`, then with `--jobs 2`, and the medians are printed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SCALE="${1:-50}"
AB_ROUNDS="${2:-4}"
PORT="${BENCH_PORT:-55441}"
BASE="${BENCH_BASE:?set BENCH_BASE to the older datamig binary}"
source scripts/bench-server.sh
SRC="postgres://postgres@127.0.0.1:$PORT/source"
DST="postgres://postgres@127.0.0.1:$PORT/target"
psql -q -d postgres -c "CREATE DATABASE source" -c "CREATE DATABASE target"
"$PGBIN/pgbench" -q -i -s "$SCALE" source >/dev/null 2>&1
psql -q -d source -c "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2), created_at timestamptz NOT NULL DEFAULT now())" \
  -c "INSERT INTO items (name, price) SELECT 'item ' || g, g % 1000 / 10.0 FROM generate_series(1, 1000000) g" -c "VACUUM ANALYZE"
pg_dump --schema-only -d source | psql -q -d target >/dev/null
reset_target() {
  psql -q -d target -c "TRUNCATE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history, items" \
    -c "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS datamig_copy_progress" -c "SELECT setval('items_id_seq', 1, false)" -c "CHECKPOINT" >/dev/null
}
complete() { psql -At -d target -c "SELECT count(*) FROM pgbench_accounts" | grep -qx "$((SCALE * 100000))"; }
for round in $(seq 1 "$AB_ROUNDS"); do
  timed base_1 "'$BASE' copy --source '$SRC' --target '$DST' --jobs 1"
  timed main_1 "'$DATAMIG' copy --source '$SRC' --target '$DST' --jobs 1"
  timed base_2 "'$BASE' copy --source '$SRC' --target '$DST' --jobs 2"
  timed main_2 "'$DATAMIG' copy --source '$SRC' --target '$DST' --jobs 2"
done
echo "== medians"
for n in base_1 main_1 base_2 main_2; do
  awk -v n=$n '$1 == n {print $2}' "$RESULTS" | sort -n | awk -v n=$n '{a[NR]=$1} END {printf "%s median %.2f (%s rounds)\n", n, (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2), NR}'
done
