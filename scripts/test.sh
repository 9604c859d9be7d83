#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, checks
# formatting and lints, builds once, runs every test with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (tests start their own on free ports)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi

if [ -z "${FEED__SCYLLA__NODES:-}" ]; then
  echo "note: FEED__SCYLLA__NODES is not set: ScyllaDB contract tests will skip (no ScyllaDB server can be installed here)"
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo nextest run --workspace --no-fail-fast
