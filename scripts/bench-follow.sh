#!/usr/bin/env bash
# `datamig copy --follow` under pgbench's TPC-B load (see BENCHMARKS.md):
#
#     scripts/bench.sh --follow [SCALE]    (pgbench scale, default 50: 5M accounts)
#
# One throwaway PostgreSQL 15 server (wal_level=logical) holds the source and the target.
# 1. pgbench's own rate with 4 clients for 30 s while no follower runs (its changes wait in
#    the slot), then the follower's rate applying exactly those changes once started, and
#    pgcopydb's `follow` (with wal2json, its slot made before pgbench) applying the same
#    changes to a copy of the target as it was before pgbench;
# 2. the lag under a steady 500 tx/s for 60 s, sampled every 0.2 s from the follower's row;
# 3. the cut-over (`cutover --max-lag 1s`, from its start to its exit, verification
#    included);
# 4. the follower's peak memory applying one transaction of 10,000 rows, then one of
#    1,000,000 rows (a database of their own).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SCALE="${1:-50}"
PORT="${BENCH_PORT:-55441}"
BENCH_SERVER_OPTS="-c wal_level=logical -c max_replication_slots=10"
source scripts/bench-server.sh
need pgcopydb pgcopydb
[ -f "$PGBIN/../lib/wal2json.so" ] || need /nonexistent-wal2json postgresql-15-wal2json
SRC="postgres://postgres@127.0.0.1:$PORT/source"
DST="postgres://postgres@127.0.0.1:$PORT/target"
psql -q -d postgres -c "CREATE DATABASE source" -c "CREATE DATABASE target"
echo "[bench] pgbench -i -s $SCALE (pgbench_history given a key: --follow needs one)"
"$PGBIN/pgbench" -q -i -s "$SCALE" source >/dev/null 2>&1
psql -q -d source -c "ALTER TABLE pgbench_history ADD COLUMN id bigserial PRIMARY KEY" -c "VACUUM ANALYZE"
pg_dump --schema-only -d source | psql -q -d target >/dev/null

status() { psql -At -d target -c "SELECT status FROM datamig_copy_follow" 2>/dev/null || true; }
wait_status() {
  until [ "$(status)" = "$1" ]; do
    kill -0 "$2" 2>/dev/null || { echo "[bench] the follower exited"; cat "$WORK/follower.err"; exit 1; }
    sleep 0.2
  done
}
applied() { psql -At -d target -c "SELECT transactions FROM datamig_copy_follow"; }

echo "[bench] the copy, then the follow"
start=$(date +%s.%N)
"$DATAMIG" copy --source "$SRC" --target "$DST" --follow --jobs 2 >/dev/null 2>"$WORK/follower.err" &
follower=$!
wait_status following "$follower"
copied=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
echo "copy_then_following $copied s" | tee -a "$RESULTS"
kill -9 "$follower"; wait "$follower" 2>/dev/null || true
# The target as it is now, for pgcopydb; its slot and replication origin from now on.
until psql -q -d postgres -c "CREATE DATABASE target2 TEMPLATE target" 2>/dev/null; do sleep 0.2; done
DST2="postgres://postgres@127.0.0.1:$PORT/target2"
(cd "$WORK" && pgcopydb stream setup --source "$SRC" --target "$DST2" --dir "$WORK/pgcopydb" >"$WORK/pgcopydb.setup" 2>&1) \
  || { cat "$WORK/pgcopydb.setup"; exit 1; }

echo "[bench] pgbench, 4 clients, 30 s, no follower running"
"$PGBIN/pgbench" -n -c 4 -j 2 -T 30 source >"$WORK/pgbench.out" 2>&1
produced=$(awk '/number of transactions actually processed/ {split($0, a, ": "); split(a[2], b, "/"); print b[1]}' "$WORK/pgbench.out")
tps=$(awk '/^tps = / {print $3; exit}' "$WORK/pgbench.out")
echo "pgbench_rate $tps tx/s ($produced transactions)" | tee -a "$RESULTS"
END=$(psql -At -d source -c "SELECT pg_current_wal_lsn()")
HISTORY=$(psql -At -d source -c "SELECT count(*) FROM pgbench_history")
before=$(applied)
start=$(date +%s.%N)
/usr/bin/time -f "%M" -o "$WORK/follower.rss" "$DATAMIG" copy --source "$SRC" --target "$DST" --follow --exclude pgcopydb.sentinel >/dev/null 2>"$WORK/follower.err" &
follower=$!
until [ "$(applied)" -ge "$((before + produced))" ]; do
  kill -0 "$follower" 2>/dev/null || { echo "[bench] the follower exited"; cat "$WORK/follower.err"; exit 1; }
  sleep 0.05
done
secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
echo "apply_rate $(awk -v n="$produced" -v s="$secs" 'BEGIN {printf "%.0f", n / s}') tx/s ($produced in $secs s, start-up included)" | tee -a "$RESULTS"

echo "[bench] pgcopydb follow, the same changes (at most ${PGCOPYDB_SECONDS:=120} s)"
(cd "$WORK" && pgcopydb stream sentinel set apply --source "$SRC" >/dev/null 2>&1)
start=$(date +%s.%N)
# In a process group of its own: its processes do not all stop on SIGTERM.
(cd "$WORK" && exec setsid pgcopydb follow --source "$SRC" --target "$DST2" --dir "$WORK/pgcopydb" --resume --not-consistent --endpos "$END" >"$WORK/pgcopydb.out" 2>&1) &
pgc=$!
for _ in $(seq 1 "$PGCOPYDB_SECONDS"); do kill -0 "$pgc" 2>/dev/null || break; sleep 1; done
if kill -0 "$pgc" 2>/dev/null; then
  echo "[bench] pgcopydb follow stopped after $PGCOPYDB_SECONDS s"
  kill -KILL -- "-$pgc" 2>/dev/null || true
fi
wait "$pgc" 2>/dev/null || true
secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
# Each pgbench transaction inserts one pgbench_history row.
done_txns=$(psql -At -d target2 -c "SELECT count(*) FROM pgbench_history")
echo "pgcopydb_follow_rate $(awk -v n="$done_txns" -v s="$secs" 'BEGIN {printf "%.1f", n / s}') tx/s ($done_txns of $produced in $secs s, start-up included)" | tee -a "$RESULTS"
echo "pgcopydb_sample_statement $(grep -m1 -o 'UPDATE "public"."pgbench_accounts" SET "aid" = [0-9.e+]*' "$WORK"/pgcopydb/cdc/*.sql | grep 'e+' | head -1 | cut -d: -f2-)" | tee -a "$RESULTS"
(cd "$WORK" && pgcopydb stream cleanup --source "$SRC" --target "$DST2" --dir "$WORK/pgcopydb" >/dev/null 2>&1) || true
# Its slot must not keep WAL for the rest (its sentinel table stays, left out of the copy).
psql -q -d source -At -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'pgcopydb'" >/dev/null 2>&1 || true

echo "[bench] lag at 500 tx/s for 60 s"
"$PGBIN/pgbench" -n -c 4 -j 2 -R 500 -T 60 source >"$WORK/pgbench-500.out" 2>&1 &
load=$!
: >"$WORK/lag"
while kill -0 "$load" 2>/dev/null; do
  psql -At -d target -c "SELECT COALESCE(lag_seconds, 0) FROM datamig_copy_follow" >>"$WORK/lag"
  sleep 0.2
done
wait "$load"
sort -n "$WORK/lag" | awk '{v[NR] = $1} END {printf "lag_at_500 p50 %.2f s, p99 %.2f s, max %.2f s (%d samples)\n", v[int(NR * 0.5)], v[int(NR * 0.99)], v[NR], NR}' | tee -a "$RESULTS"
echo "pgbench_at_500 $(awk '/^tps = / {print $3; exit}' "$WORK/pgbench-500.out") tx/s" | tee -a "$RESULTS"

echo "[bench] cut-over"
start=$(date +%s.%N)
"$DATAMIG" cutover --source "$SRC" --target "$DST" --max-lag 1s >"$WORK/cutover.out" 2>&1 || { cat "$WORK/cutover.out"; exit 1; }
secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
wait "$follower" || { echo "[bench] the follower failed"; cat "$WORK/follower.err"; exit 1; }
grep -q "all equal" "$WORK/cutover.out" || { cat "$WORK/cutover.out"; exit 1; }
echo "cutover $secs s ($(tail -2 "$WORK/cutover.out" | head -1))" | tee -a "$RESULTS"
echo "follower_peak_rss $(cat "$WORK/follower.rss") kB (pgbench changes)" | tee -a "$RESULTS"

echo "[bench] memory against transaction size"
for rows in 10000 1000000; do
  psql -q -d postgres -c "DROP DATABASE IF EXISTS msrc" -c "DROP DATABASE IF EXISTS mdst" \
    -c "CREATE DATABASE msrc" -c "CREATE DATABASE mdst"
  for db in msrc mdst; do psql -q -d $db -c "CREATE TABLE big (id int PRIMARY KEY, v text)"; done
  M_SRC="postgres://postgres@127.0.0.1:$PORT/msrc"
  M_DST="postgres://postgres@127.0.0.1:$PORT/mdst"
  /usr/bin/time -f "%M" -o "$WORK/m.rss" "$DATAMIG" copy --source "$M_SRC" --target "$M_DST" --follow >/dev/null 2>"$WORK/follower.err" &
  follower=$!
  until [ "$(psql -At -d mdst -c "SELECT status FROM datamig_copy_follow" 2>/dev/null || true)" = following ]; do sleep 0.2; done
  psql -q -d msrc -c "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, $rows) g"
  "$DATAMIG" cutover --source "$M_SRC" --target "$M_DST" >/dev/null
  wait "$follower"
  echo "follower_peak_rss_one_transaction_of_$rows $(cat "$WORK/m.rss") kB" | tee -a "$RESULTS"
done

echo
echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), pgcopydb $(pgcopydb --version 2>&1 | grep -o "version [0-9.-]*" | head -1 | cut -d" " -f2) with wal2json, pgbench $("$PGBIN/pgbench" --version | awk '{print $3}'), $("$DATAMIG" --version); $(nproc) cores"
cat "$RESULTS"
