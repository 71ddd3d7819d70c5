#!/usr/bin/env bash
# The one command that runs the whole test suite against real databases:
#
#     scripts/test.sh            (any arguments are passed to `cargo test`)
#
# scripts/test-env.sh provides the PostgreSQL (testcontainers, installing the Docker engine
# and building a local image where needed) and stops what it started when this exits.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/test-env.sh

# The installed binary, built as a user installs it (`cargo install datamig-cli`: no
# migrations compiled in); tests/tests/installed.rs runs it against both databases.
cargo install --quiet --locked --debug --force --path cli --root target/installed --target-dir target
export DATAMIG_INSTALLED_BIN="$PWD/target/installed/bin/datamig"

cargo test --workspace "$@"
