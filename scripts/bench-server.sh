# Sourced by the copy benchmarks (scripts/bench-copy.sh, scripts/bench-sqlite.sh): one
# throwaway PostgreSQL 15 server from the machine's binaries on port $PORT, the release
# `datamig` in $DATAMIG, a work directory in $WORK (removed at exit, the server stopped),
# `need COMMAND PACKAGE` to install a tool from Debian's packages where missing, and
# `timed NAME COMMAND` (the caller defines `reset_target` and `complete NAME`).
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
ROUNDS="${BENCH_ROUNDS:-2}"

need() {
  command -v "$1" >/dev/null 2>&1 && return
  echo "[bench] installing $2 from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null
}
need /usr/bin/time time
[ -x "$PGBIN/pg_ctl" ] || { echo "[bench] no PostgreSQL 15 server binaries in $PGBIN" >&2; exit 2; }

# DATAMIG_BIN times another build (say, the previous commit's) in place of this tree's.
cargo build -q --release -p datamig-cli --bin datamig
DATAMIG="${DATAMIG_BIN:-$PWD/target/release/datamig}"

WORK="$(mktemp -d)"
chown postgres "$WORK"
cleanup() {
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth=trust >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w \
  -o "-p $PORT -k $WORK -c shared_buffers=1GB -c max_wal_size=8GB -c listen_addresses=127.0.0.1 ${BENCH_SERVER_OPTS:-}" start >/dev/null
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres

# The machine's busy CPU time so far, in hundredths of a second (all cores, from /proc/stat:
# user, nice, system, irq and softirq; not the time the host stole).
busy_ticks() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }

# Runs a command on an emptied target; appends "name seconds peak-kB client-cpu-s
# machine-cpu-s" to the results (client: the command's own processes, user + system;
# machine: every process, the servers' included) and stops the benchmark when the command
# failed or left the copy incomplete.
RESULTS="$WORK/results"
timed() {
  local name="$1"; shift
  reset_target
  local before; before=$(busy_ticks)
  /usr/bin/time -f "%e %M %U %S" -o "$WORK/time" bash -c "$*" >"$WORK/out" 2>&1 || { cat "$WORK/out"; exit 1; }
  local machine; machine=$(awk -v a="$before" -v b="$(busy_ticks)" 'BEGIN {printf "%.1f", (b - a) / 100}')
  read -r secs kb user sys <"$WORK/time"
  echo "$name $secs $kb $(awk -v u="$user" -v s="$sys" 'BEGIN {printf "%.1f", u + s}') $machine" | tee -a "$RESULTS"
  complete || { cat "$WORK/out"; echo "[bench] $name left an incomplete copy" >&2; exit 1; }
}
