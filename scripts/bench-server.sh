# Sourced by the copy benchmarks (scripts/bench-copy.sh, scripts/bench-sqlite.sh): one
# throwaway PostgreSQL 15 server from the machine's binaries on port $PORT, the release
# `datamig` in $DATAMIG, a work directory in $WORK (removed at exit, the server stopped),
# and `need COMMAND PACKAGE` to install a tool from Debian's packages where missing.
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
ROUNDS="${BENCH_ROUNDS:-2}"

need() {
  command -v "$1" >/dev/null 2>&1 && return
  echo "[bench] installing $2 from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null
}
need /usr/bin/time time
[ -x "$PGBIN/pg_ctl" ] || { echo "[bench] no PostgreSQL 15 server binaries in $PGBIN" >&2; exit 2; }

cargo build -q --release -p datamig-cli --bin datamig
DATAMIG="$PWD/target/release/datamig"

WORK="$(mktemp -d)"
chown postgres "$WORK"
cleanup() {
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth=trust >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w \
  -o "-p $PORT -k $WORK -c shared_buffers=1GB -c max_wal_size=8GB -c listen_addresses=127.0.0.1" start >/dev/null
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres
