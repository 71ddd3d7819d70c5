#!/bin/bash
# Entrypoint of the locally built PostgreSQL image (see scripts/postgres-image/build.sh).
#
# It mimics the parts of the official image's entrypoint that the test suite relies on:
# POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB / POSTGRES_HOST_AUTH_METHOD are honoured,
# extra arguments (`-c fsync=off`) go to `postgres`, and "database system is ready to accept
# connections" is printed first on stdout (by a temporary server used for initialisation) and
# then on stderr (by the final server): testcontainers' Postgres module waits for both.
set -euo pipefail

PGBIN=/usr/lib/postgresql/15/bin
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"
auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"

mkdir -p "$PGDATA" /var/run/postgresql
chown -R postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"

if [ "${1:-}" = "postgres" ]; then shift; fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwargs=()
  if [ -n "${POSTGRES_PASSWORD:-}" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    chown postgres "$pwfile"
    pwargs=(--pwfile="$pwfile")
  elif [ "$auth" != "trust" ]; then
    echo "error: POSTGRES_PASSWORD is empty and POSTGRES_HOST_AUTH_METHOD is not trust" >&2
    exit 1
  fi
  runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA" -U "$user" "${pwargs[@]}" \
    --encoding=UTF8 --locale=C --auth-local=trust --auth-host="$auth" >/dev/null
  rm -f "${pwfile:-}"
  echo "host all all all $auth" >> "$PGDATA/pg_hba.conf"

  # Temporary server, local socket only: its log (and so its "ready" line) goes to stdout.
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -w -o "-c listen_addresses=''" start 2>&1
  if [ "$db" != "postgres" ]; then
    runuser -u postgres -- psql -v ON_ERROR_STOP=1 -U "$user" -d postgres -q \
      -c "CREATE DATABASE \"$db\"" >/dev/null
  fi
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
fi

# Final server: logs to stderr.
exec runuser -u postgres -- "$PGBIN/postgres" -D "$PGDATA" -c listen_addresses='*' "$@"
