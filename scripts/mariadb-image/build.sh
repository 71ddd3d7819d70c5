#!/usr/bin/env bash
# Builds a MariaDB 10.11 image without a container registry: a minimal Debian root file
# system with Debian's `mariadb-server` made by mmdebstrap from the machine's configured
# Debian mirror, imported with `docker import`. Used by scripts/test-env.sh where the
# official `mariadb` image cannot be pulled.
#
# usage: scripts/mariadb-image/build.sh [TAG]   (default: local/mariadb:10.11)
set -euo pipefail

tag="${1:-local/mariadb:10.11}"
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

# bookworm packages MariaDB 10.11. The tarball is written to a file first so that a failed
# build stops here instead of importing a truncated stream.
mmdebstrap --variant=minbase --include=mariadb-server \
  --customize-hook="upload $here/entrypoint.sh /usr/local/bin/docker-entrypoint.sh" \
  --customize-hook='chroot "$1" chmod 0755 /usr/local/bin/docker-entrypoint.sh' \
  --customize-hook='rm -rf "$1"/var/lib/mysql/*' \
  bookworm "$tarball" "$mirror"

docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'EXPOSE 3306' \
  -c 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
  -c 'CMD ["mariadbd"]' \
  "$tarball" "$tag"
echo "built $tag"
