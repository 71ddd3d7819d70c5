#!/usr/bin/env bash
# `datamig copy` side by side with `pg_dump --data-only | psql` and pgcopydb, in one run
# (see BENCHMARKS.md):
#
#     scripts/bench.sh --copy [SCALE]      (pgbench scale, default 50: 5M accounts)
#
# One throwaway PostgreSQL 15 server from the machine's binaries holds both databases:
# the source (pgbench's tables plus `items`, a table with a serial key) and the target (the
# same schema, emptied before every run). Each command is timed with /usr/bin/time (wall
# seconds, the client's peak RSS and CPU time) and /proc/stat (the machine's busy CPU time);
# runs alternate between the tools, BENCH_ROUNDS times (default 2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SCALE="${1:-50}"
PORT="${BENCH_PORT:-55439}"
source scripts/bench-server.sh
need pgcopydb pgcopydb
SRC="postgres://postgres@127.0.0.1:$PORT/source"
DST="postgres://postgres@127.0.0.1:$PORT/target"
psql -q -d postgres -c "CREATE DATABASE source" -c "CREATE DATABASE target"
echo "[bench] pgbench -i -s $SCALE, and items (1M rows, serial key)"
"$PGBIN/pgbench" -q -i -s "$SCALE" source >/dev/null 2>&1
psql -q -d source -c "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2), created_at timestamptz NOT NULL DEFAULT now())" \
  -c "INSERT INTO items (name, price) SELECT 'item ' || g, g % 1000 / 10.0 FROM generate_series(1, 1000000) g" \
  -c "VACUUM ANALYZE"
pg_dump --schema-only -d source | psql -q -d target >/dev/null
SIZE=$(psql -At -d source -c "SELECT pg_size_pretty(pg_database_size('source'))")

reset_target() {
  psql -q -d target -c "TRUNCATE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history, items" \
    -c "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS datamig_copy_progress" -c "SELECT setval('items_id_seq', 1, false)" -c "CHECKPOINT" >/dev/null
}

complete() {
  psql -At -d target -c "SELECT count(*) FROM pgbench_accounts" | grep -qx "$((SCALE * 100000))"
}

for round in $(seq 1 "$ROUNDS"); do
  echo "[bench] round $round"
  timed pg_dump_pipe "pg_dump --data-only -d source | psql -q -d target"
  timed pgcopydb_1 "pgcopydb copy table-data --source '$SRC' --target '$DST' --table-jobs 1 --dir '$WORK/pgcopydb' --restart"
  timed pgcopydb_2 "pgcopydb copy table-data --source '$SRC' --target '$DST' --table-jobs 2 --dir '$WORK/pgcopydb' --restart"
  timed datamig_1 "'$DATAMIG' copy --source '$SRC' --target '$DST' --jobs 1"
  timed datamig_2 "'$DATAMIG' copy --source '$SRC' --target '$DST' --jobs 2"
done

# A copy killed half-way through (by the time of an uninterrupted one), then run again.
FULL=$(awk '$1 == "datamig_1" {print $2}' "$RESULTS" | sort -n | head -1)
HALF=$(awk -v f="$FULL" 'BEGIN {print f / 2}')
reset_target
start=$(date +%s.%N)
"$DATAMIG" copy --source "$SRC" --target "$DST" --jobs 1 >/dev/null 2>&1 &
pid=$!
sleep "$HALF"
kill -9 "$pid"; wait "$pid" 2>/dev/null || true
committed=$(psql -At -d target -c "SELECT count(*) FILTER (WHERE copied_at IS NOT NULL) || ' of ' || count(*) FROM datamig_copy_progress")
"$DATAMIG" copy --source "$SRC" --target "$DST" --jobs 1 >/dev/null
end=$(date +%s.%N)
echo "killed_and_resumed $(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.2f", b - a}') - (killed at ${HALF}s with $committed chunks committed)" | tee -a "$RESULTS"
# --verify on the finished copy: copies nothing, fingerprints both sides.
/usr/bin/time -f "%e %M" -o "$WORK/time" "$DATAMIG" copy --source "$SRC" --target "$DST" --verify >"$WORK/out" 2>&1
read -r secs kb <"$WORK/time"
grep -q "0 tables differ" "$WORK/out" || { cat "$WORK/out"; exit 1; }
echo "verify $secs $kb" | tee -a "$RESULTS"

echo
echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), pgcopydb $(pgcopydb --version 2>&1 | grep -o "version [0-9.-]*" | head -1 | cut -d" " -f2), pg_dump $(pg_dump --version | awk '{print $3}'), $("$DATAMIG" --version)"
echo "source: pgbench scale $SCALE + items (1M rows), $SIZE; $(nproc) cores"
best() { awk -v n="$1" '$1 == n {print $2}' "$RESULTS" | sort -n | head -1; }
rss() { awk -v n="$1" '$1 == n {print $3}' "$RESULTS" | sort -n | tail -1; }
# The middle of the sorted numbers on standard input ("-" when there are none).
middle() {
  sort -n | awk '{v[NR] = $1} END {if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
# The median of column $2 over the rounds of command $1 ("-" where not measured).
median() { awk -v n="$1" -v c="$2" '$1 == n && $c ~ /^[0-9.]+$/ {print $c}' "$RESULTS" | middle; }
# The median over the rounds of command $1's time divided by the pipe's in the same round
# (each round runs the pipe first): paired, so a slow minute of the host weighs on both.
paired() {
  awk -v n="$1" '$1 == "pg_dump_pipe" {pipe = $2} $1 == n && $2 ~ /^[0-9.]+$/ && pipe > 0 {printf "%.2f\n", $2 / pipe}' "$RESULTS" | middle
}
BASE=$(best pg_dump_pipe)
MED=$(median pg_dump_pipe 2)
printf "%-20s %8s %10s %8s %10s %9s %12s %11s %12s\n" command "best s" "x pg_dump" "median s" "x median" "x paired" "peak RSS MB" "client CPU" "machine CPU"
for name in pg_dump_pipe pgcopydb_1 pgcopydb_2 datamig_1 datamig_2 killed_and_resumed verify; do
  b=$(best $name)
  m=$(median $name 2)
  r=$(rss $name)
  [ "$r" = "-" ] || r=$(awk -v k="$r" 'BEGIN {printf "%.0f", k / 1024}')
  x=-
  case $name in pgcopydb_* | datamig_*) x=$(paired $name) ;; esac
  printf "%-20s %8s %10s %8s %10s %9s %12s %11s %12s\n" "$name" "$b" "$(awk -v a="$b" -v c="$BASE" 'BEGIN {printf "%.2f", a / c}')" \
    "$m" "$(awk -v a="$m" -v c="$MED" 'BEGIN {printf "%.2f", a / c}')" "$x" "$r" "$(median $name 4)" "$(median $name 5)"
done
