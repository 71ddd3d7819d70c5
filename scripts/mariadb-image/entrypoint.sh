#!/bin/bash
# Entrypoint of the locally built MariaDB image (see scripts/mariadb-image/build.sh).
#
# It mimics the parts of the official image's entrypoint that the test suite relies on:
# MARIADB_ROOT_PASSWORD (or MYSQL_ROOT_PASSWORD), MARIADB_ALLOW_EMPTY_ROOT_PASSWORD,
# MARIADB_DATABASE, MARIADB_USER / MARIADB_PASSWORD are honoured, extra arguments
# (`--innodb-flush-log-at-trx-commit=0`) go to `mariadbd`, and the final server prints
# "mariadbd: ready for connections." with "port: 3306" on stderr, which testcontainers'
# MariaDB module waits for. The server that initialises the data directory listens on no
# port and logs to a file, so that line is printed once, by the server that serves.
set -euo pipefail

datadir=/var/lib/mysql
root_password="${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:-}}"
allow_empty="${MARIADB_ALLOW_EMPTY_ROOT_PASSWORD:-${MYSQL_ALLOW_EMPTY_PASSWORD:-}}"
database="${MARIADB_DATABASE:-${MYSQL_DATABASE:-}}"
user="${MARIADB_USER:-${MYSQL_USER:-}}"
password="${MARIADB_PASSWORD:-${MYSQL_PASSWORD:-}}"

case "${1:-}" in mariadbd | mysqld) shift ;; esac

mkdir -p "$datadir" /run/mysqld
chown -R mysql:mysql "$datadir" /run/mysqld

if [ ! -d "$datadir/mysql" ]; then
  if [ -z "$root_password" ] && [ -z "$allow_empty" ]; then
    echo "error: set MARIADB_ROOT_PASSWORD or MARIADB_ALLOW_EMPTY_ROOT_PASSWORD=1" >&2
    exit 1
  fi
  mariadb-install-db --user=mysql --datadir="$datadir" --skip-test-db \
    --auth-root-authentication-method=normal >/dev/null
  socket=/run/mysqld/init.sock
  mariadbd --user=mysql --datadir="$datadir" --skip-networking --socket="$socket" \
    --log-error=/run/mysqld/init.log "$@" &
  pid=$!
  for _ in $(seq 60); do
    mariadb --protocol=socket --socket="$socket" -uroot -e 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.5
  done
  sql="CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY '$root_password';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
ALTER USER 'root'@'localhost' IDENTIFIED BY '$root_password';"
  if [ -n "$database" ]; then
    sql="$sql
CREATE DATABASE IF NOT EXISTS \`$database\`;"
  fi
  if [ -n "$user" ]; then
    sql="$sql
CREATE USER '$user'@'%' IDENTIFIED BY '$password';"
    [ -n "$database" ] && sql="$sql
GRANT ALL PRIVILEGES ON \`$database\`.* TO '$user'@'%';"
  fi
  mariadb --protocol=socket --socket="$socket" -uroot -e "$sql"
  kill "$pid"
  wait "$pid" || true
fi

# Final server: logs to stderr (no --log-error file).
exec mariadbd --user=mysql --datadir="$datadir" --bind-address=0.0.0.0 --port=3306 \
  --skip-name-resolve "$@"
