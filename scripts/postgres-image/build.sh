#!/usr/bin/env bash
# Builds a PostgreSQL 15 image without a container registry: a minimal Debian root file
# system made by mmdebstrap from the machine's configured Debian mirror, imported with
# `docker import`. Used by scripts/test.sh where `docker pull` cannot reach a registry.
#
# usage: scripts/postgres-image/build.sh [TAG]   (default: local/postgres:15)
set -euo pipefail

tag="${1:-local/postgres:15}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

mirror=""
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
elif [ -f /etc/apt/sources.list ]; then
  mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
fi
if [ -z "$mirror" ]; then
  echo "error: no Debian mirror found in the apt sources; cannot build $tag" >&2
  exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tarball="$work/rootfs.tar"

# The tarball is written to a file first so that a failed build stops here instead of
# importing a truncated stream.
mmdebstrap --variant=minbase --include=postgresql-15 \
  --customize-hook="upload $here/entrypoint.sh /usr/local/bin/docker-entrypoint.sh" \
  --customize-hook='chroot "$1" chmod 0755 /usr/local/bin/docker-entrypoint.sh' \
  bookworm "$tarball" "$mirror"

docker import \
  -c 'ENV PGDATA=/var/lib/postgresql/data' \
  -c 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'EXPOSE 5432' \
  -c 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
  "$tarball" "$tag"
echo "built $tag"
