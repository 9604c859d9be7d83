#!/usr/bin/env bash
# The split deployment on one host, as SRE runs it in Kubernetes: every
# service its own process talking gRPC, on one Redis, configured by
# deploy/local/feed.toml. Ctrl-C (or SIGTERM) stops every process.
#
#   scripts/split-local.sh            # embedded stores: one replica of each
#                                     # stateful service, timeline x2,
#                                     # fanout-worker x2
#   FEED__SCYLLA__NODES=127.0.0.1:9042 scripts/split-local.sh
#                                     # on a CQL node: follow-graph, publish
#                                     # and notify x2 as well (schema applied
#                                     # first, as the migration Job does)
#
# Environment: FEED__REDIS__URL (default: a redis-server started here on
# port 6390), FEED_SPLIT_DIR (data and logs, default ./data-split),
# FEED_SPLIT_PROFILE (release or debug, default release).
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${FEED_SPLIT_PROFILE:-release}"
dir="${FEED_SPLIT_DIR:-./data-split}"
mkdir -p "$dir/logs"
dir="$(cd "$dir" && pwd)"
if [ "$profile" = release ]; then
  cargo build --release --workspace --bins
else
  cargo build --workspace --bins
fi
bin="target/$profile"
export FEED_CONFIG="$PWD/deploy/local/feed.toml"
export FEED__STORAGE__DATA_DIR="$dir"

pids=()
stop() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM

if [ -z "${FEED__REDIS__URL:-}" ]; then
  redis-server --port 6390 --save '' --appendonly no --dir "$dir" \
    --logfile "$dir/logs/redis.log" &
  pids+=($!)
  export FEED__REDIS__URL="redis://127.0.0.1:6390"
fi

stateful=1
if [ -n "${FEED__SCYLLA__NODES:-}" ]; then
  stateful=2
  for b in follow-graph publish notify; do "$bin/$b" --migrate; done
fi

# Ports: the binary's default for replica 0, +10 for replica 1.
list() { # base port, replicas -> comma-separated URLs
  local urls=() i
  for ((i = 0; i < $2; i++)); do urls+=("http://127.0.0.1:$(($1 + 10 * i))"); done
  (IFS=,; echo "${urls[*]}")
}
export FEED__CLIENTS__FOLLOW_GRAPH_URL="$(list 50061 $stateful)"
export FEED__CLIENTS__PUBLISH_URL="$(list 50062 $stateful)"

start() { # binary, base gRPC port, base admin port, replicas
  local i
  for ((i = 0; i < $4; i++)); do
    FEED__SERVER__LISTEN="127.0.0.1:$(($2 + 10 * i))" \
    FEED__SERVER__ADMIN_LISTEN="127.0.0.1:$(($3 + 10 * i))" \
      "$bin/$1" > "$dir/logs/$1-$i.log" 2>&1 &
    pids+=($!)
    echo "$1[$i]: grpc 127.0.0.1:$(($2 + 10 * i)), metrics http://127.0.0.1:$(($3 + 10 * i))/metrics"
  done
}
start follow-graph 50061 9091 "$stateful"
start publish 50062 9092 "$stateful"
start timeline 50063 9093 2
start notify 50064 9094 "$stateful"
start fanout-worker 50065 9095 2
echo "logs in $dir/logs; tokens in deploy/local/feed.toml; Ctrl-C stops everything"
wait -n "${pids[@]}" || true
echo "a process exited; stopping the rest (see $dir/logs)" >&2
