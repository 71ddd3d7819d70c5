#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/demo.sh: makes a PostgreSQL and a MariaDB available
# to `datamig::testing` and stops, on exit, whatever it started.
#
# - With DATAMIG_TEST_DATABASE_URL set, that server is used as it is.
# - Otherwise PostgreSQL is started by testcontainers. Where Docker is missing and this runs
#   as root on Debian (CI), the engine is installed and started here. Where the official
#   image cannot be pulled (no registry), a local image is built from Debian's packages
#   (scripts/postgres-image/build.sh) and DATAMIG_TEST_POSTGRES_IMAGE points at it.
# - MariaDB (for the MySQL tests, `datamig::testing::mysql()`): with DATAMIG_TEST_MYSQL_URL
#   set, that server; otherwise testcontainers starts the official `mariadb:10.11` image or,
#   where it cannot be pulled, a local image built from Debian's `mariadb-server`
#   (scripts/mariadb-image/build.sh), named by DATAMIG_TEST_MYSQL_IMAGE.
# - PgBouncer (for the pooler tests) is installed from Debian's package where missing.
# - Should the engine fail to start, a PostgreSQL server is started from the machine's own
#   binaries and DATAMIG_TEST_DATABASE_URL points at it; this is said loudly.

OFFICIAL_IMAGE="postgres:15"
LOCAL_IMAGE="local/postgres:15"
OFFICIAL_MYSQL_IMAGE="mariadb:10.11"
LOCAL_MYSQL_IMAGE="local/mariadb:10.11"
started_dockerd=""
fallback_dir=""

log() { echo "[test.sh] $*" >&2; }

cleanup() {
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    leftovers=$(docker ps -aq --filter label=datamig.test=1 2>/dev/null || true)
    [ -n "$leftovers" ] && docker rm -f $leftovers >/dev/null 2>&1 || true
  fi
  if [ -n "$fallback_dir" ]; then
    as_postgres "$(pg_bin)/pg_ctl" -D "$fallback_dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$fallback_dir"
  fi
  if [ -n "$started_dockerd" ]; then
    kill "$started_dockerd" 2>/dev/null || true
    wait "$started_dockerd" 2>/dev/null || true
  fi
}
trap cleanup EXIT

docker_ok() { command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1; }

ensure_docker() {
  docker_ok && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "Docker is not running and cannot be installed from here (needs root and apt-get)."
    return 1
  fi
  if ! command -v dockerd >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1; then
    log "installing the Docker engine and mmdebstrap from Debian's packages"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io mmdebstrap >/dev/null
  fi
  if ! docker_ok; then
    log "starting dockerd"
    dockerd >/tmp/datamig-dockerd.log 2>&1 &
    started_dockerd=$!
    for _ in $(seq 60); do docker_ok && return 0; sleep 1; done
    log "dockerd did not answer within 60 s (see /tmp/datamig-dockerd.log)"
    return 1
  fi
}

ensure_image() {
  [ -n "${DATAMIG_TEST_POSTGRES_IMAGE:-}" ] && return 0
  if docker image inspect "$OFFICIAL_IMAGE" >/dev/null 2>&1 || timeout 120 docker pull -q "$OFFICIAL_IMAGE" >/dev/null 2>&1; then
    export DATAMIG_TEST_POSTGRES_IMAGE="$OFFICIAL_IMAGE"
    return 0
  fi
  if ! docker image inspect "$LOCAL_IMAGE" >/dev/null 2>&1; then
    log "$OFFICIAL_IMAGE cannot be pulled here: building $LOCAL_IMAGE from Debian's packages"
    scripts/postgres-image/build.sh "$LOCAL_IMAGE" >/tmp/datamig-image.log 2>&1 || {
      log "building $LOCAL_IMAGE failed (see /tmp/datamig-image.log)"
      return 1
    }
  fi
  export DATAMIG_TEST_POSTGRES_IMAGE="$LOCAL_IMAGE"
}

ensure_mysql_image() {
  [ -n "${DATAMIG_TEST_MYSQL_IMAGE:-}" ] && return 0
  if docker image inspect "$OFFICIAL_MYSQL_IMAGE" >/dev/null 2>&1 || timeout 120 docker pull -q "$OFFICIAL_MYSQL_IMAGE" >/dev/null 2>&1; then
    export DATAMIG_TEST_MYSQL_IMAGE="$OFFICIAL_MYSQL_IMAGE"
    return 0
  fi
  if ! docker image inspect "$LOCAL_MYSQL_IMAGE" >/dev/null 2>&1; then
    log "$OFFICIAL_MYSQL_IMAGE cannot be pulled here: building $LOCAL_MYSQL_IMAGE from Debian's packages"
    scripts/mariadb-image/build.sh "$LOCAL_MYSQL_IMAGE" >/tmp/datamig-mariadb-image.log 2>&1 || {
      log "building $LOCAL_MYSQL_IMAGE failed (see /tmp/datamig-mariadb-image.log)"
      return 1
    }
  fi
  export DATAMIG_TEST_MYSQL_IMAGE="$LOCAL_MYSQL_IMAGE"
}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_fallback_server() {
  local bin port
  bin=$(pg_bin)
  [ -n "$bin" ] || { log "no PostgreSQL server binaries under /usr/lib/postgresql either"; return 1; }
  fallback_dir=$(mktemp -d /tmp/datamig-pg.XXXXXX)
  [ "$(id -u)" = 0 ] && chown postgres "$fallback_dir"
  port=55999
  # Password authentication over TCP, as in the container: the tests check that a wrong
  # password is refused.
  echo postgres > "$fallback_dir/pwfile"
  [ "$(id -u)" = 0 ] && chown postgres "$fallback_dir/pwfile"
  as_postgres "$bin/initdb" -D "$fallback_dir/data" -U postgres --pwfile="$fallback_dir/pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C >/dev/null
  as_postgres "$bin/pg_ctl" -D "$fallback_dir/data" -l "$fallback_dir/log" -w \
    -o "-p $port -k $fallback_dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
  export DATAMIG_TEST_DATABASE_URL="postgres://postgres:postgres@127.0.0.1:$port/postgres"
}

# PgBouncer, for the pooler tests (tests/tests/pooler.rs start it in front of the test
# server, from the binary): Debian's package where it is missing and this runs as root.
ensure_pgbouncer() {
  command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing pgbouncer from Debian's packages"
    apt-get update -qq >/dev/null
    # Only the binary: the package's own service is not wanted.
    NEEDRESTART_SUSPEND=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
    if command -v service >/dev/null 2>&1; then service pgbouncer stop >/dev/null 2>&1 || true; fi
  else
    log "pgbouncer is missing: the pooler tests need it (install your system's pgbouncer package)"
  fi
}
ensure_pgbouncer

if [ -z "${DATAMIG_TEST_DATABASE_URL:-}" ]; then
  if ensure_docker && ensure_image; then
    log "tests start PostgreSQL with testcontainers from image $DATAMIG_TEST_POSTGRES_IMAGE"
  else
    echo "########################################################################" >&2
    echo "## WARNING: the Docker engine is not usable here. The database tests    ##" >&2
    echo "## run against a PostgreSQL server started from this machine's binaries ##" >&2
    echo "## (DATAMIG_TEST_DATABASE_URL), NOT through testcontainers.             ##" >&2
    echo "########################################################################" >&2
    start_fallback_server
  fi
else
  log "tests use the server in DATAMIG_TEST_DATABASE_URL"
fi

if [ -n "${DATAMIG_TEST_MYSQL_URL:-}" ]; then
  log "the MySQL tests use the server in DATAMIG_TEST_MYSQL_URL"
elif docker_ok && ensure_mysql_image; then
  log "the MySQL tests start MariaDB with testcontainers from image $DATAMIG_TEST_MYSQL_IMAGE"
else
  log "WARNING: no MariaDB for the MySQL tests (tests/tests/mysql.rs): they need the Docker engine or DATAMIG_TEST_MYSQL_URL"
fi
