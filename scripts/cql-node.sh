#!/usr/bin/env bash
# One Apache Cassandra node on 127.0.0.1 for the ScyllaDB backend's tests
# (same CQL protocol; ScyllaDB itself cannot be installed here).
#
#   scripts/cql-node.sh start   resolves Cassandra with Maven (cached under
#                               target/cassandra), starts one node on free
#                               ports with its data under target/, waits until
#                               CQL answers and its login works, and prints the
#                               contact point to use as FEED__SCYLLA__NODES
#   scripts/cql-node.sh stop    stops it
#   scripts/cql-node.sh status  prints the contact point of a running node
#   scripts/cql-node.sh resume  starts a stopped node again on its data
#
# The node asks for a login (PasswordAuthenticator), so every test proves the
# platform's CQL credentials: FEED__SCYLLA__USERNAME=cassandra and
# FEED__SCYLLA__PASSWORD=cassandra (the default superuser, created at start).
#
# CQL_NODE_DIR (default target/cassandra/node) and CQL_NODE_PORT (default: a
# free port) let a fault test run a node of its own beside the shared one.
#
# Java 17 runs it, with the module flags Cassandra 5 needs on that JDK.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT="$PWD/target/cassandra"
LIB="$ROOT/lib"
NODE="${CQL_NODE_DIR:-$ROOT/node}"
POM="deploy/cassandra/pom.xml"

log() { echo "cql-node: $*" >&2; }

java_bin() {
  # Java 17 first: Cassandra 5.0 supports 11 and 17, not newer.
  for j in "${CQL_NODE_JAVA:-}" /usr/lib/jvm/java-17-openjdk-amd64/bin/java /usr/lib/jvm/java-17-openjdk/bin/java; do
    if [ -n "$j" ] && [ -x "$j" ]; then echo "$j"; return; fi
  done
  if command -v java >/dev/null 2>&1 && java -version 2>&1 | grep -q '"17\.'; then
    command -v java; return
  fi
  log "Java 17 is needed (set CQL_NODE_JAVA to its java binary)"
  exit 1
}

resolve() {
  # Re-resolved only when the pom changes.
  if [ -f "$LIB/.pom" ] && cmp -s "$POM" "$LIB/.pom"; then return; fi
  if ! command -v mvn >/dev/null 2>&1; then
    log "installing maven"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven >/dev/null
  fi
  log "resolving Cassandra and its dependencies with Maven"
  rm -rf "$LIB"
  # Its output goes to stderr: stdout carries only the contact point.
  mvn -q -B -Dstyle.color=never -f "$POM" -Dmaven.repo.local="$ROOT/m2" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIB" >&2
  cp "$POM" "$LIB/.pom"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

running() {
  [ -f "$NODE/pid" ] && kill -0 "$(cat "$NODE/pid")" 2>/dev/null
}

write_config() {
  local native=$1 storage=$2
  mkdir -p "$NODE/conf" "$NODE/logs"
  # A single node sized for a small test machine: small memtables and
  # caches, few threads, one token, no gossip wait.
  cat > "$NODE/conf/cassandra.yaml" <<EOF
cluster_name: feed-test
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $storage
native_transport_port: $native
start_native_transport: true
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$storage"
data_file_directories:
  - $NODE/data
commitlog_directory: $NODE/commitlog
saved_caches_directory: $NODE/saved_caches
hints_directory: $NODE/hints
cdc_raw_directory: $NODE/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 8MiB
memtable_heap_space: 64MiB
memtable_offheap_space: 64MiB
# Tests create hundreds of small tables: no slab per table.
memtable_allocation_type: unslabbed_heap_buffers
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 4
concurrent_compactors: 1
key_cache_size: 8MiB
# Every test keyspace prepares its store's statements (~70 per store):
# 8 MiB evicted statements between prepare and execute late in a run.
prepared_statements_cache_size: 64MiB
authenticator: PasswordAuthenticator
authorizer: AllowAllAuthorizer
auto_snapshot: false
snapshot_on_duplicate_row_detection: false
# Tests create and drop a keyspace each; no snapshot, no wait.
disk_failure_policy: stop
# ScyllaDB's batch limits (the engine the platform targets; Cassandra's
# default refuses a batch over 50 KiB): a publish of a maximum-size
# activity (1,000-entry allow and deny lists, 8 KiB of extra) writes it
# twice, in its row and its event job, about 65 KB in one logged batch.
batch_size_warn_threshold: 128KiB
batch_size_fail_threshold: 1024KiB
read_request_timeout: 10000ms
write_request_timeout: 10000ms
cas_contention_timeout: 5000ms
EOF
  cat > "$NODE/conf/logback.xml" <<EOF
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$NODE/logs/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
EOF
}

start() {
  if running; then cat "$NODE/contact"; return; fi
  resolve
  rm -rf "$NODE"
  local native storage
  native=${CQL_NODE_PORT:-$(free_port)}; storage=$(free_port)
  while [ "$storage" = "$native" ]; do storage=$(free_port); done
  write_config "$native" "$storage"
  launch "$native"
}

resume() {
  if running; then cat "$NODE/contact"; return; fi
  [ -f "$NODE/conf/cassandra.yaml" ] || { log "no node in $NODE to resume"; exit 1; }
  launch "$(sed -n 's/^native_transport_port: //p' "$NODE/conf/cassandra.yaml")"
}

launch() {
  local native=$1
  local java; java=$(java_bin)
  log "starting Cassandra on 127.0.0.1:$native (log: $NODE/logs/system.log)"
  # Module flags: the JPMS section of Cassandra's jvm17-server.options.
  nohup "$java" \
    -Xms1g -Xmx3g -Xss512k -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 \
    -XX:+ExitOnOutOfMemoryError \
    -Djava.net.preferIPv4Stack=true \
    -Djdk.attach.allowAttachSelf=true \
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED \
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED \
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED \
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED \
    --add-exports java.sql/java.sql=ALL-UNNAMED \
    --add-exports java.base/java.lang.ref=ALL-UNNAMED \
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED \
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED \
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED \
    --add-opens java.base/java.lang.module=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED \
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED \
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED \
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED \
    --add-opens java.base/java.io=ALL-UNNAMED \
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED \
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED \
    --add-opens java.base/java.lang=ALL-UNNAMED \
    --add-opens java.base/java.util=ALL-UNNAMED \
    -Dio.netty.tryReflectionSetAccessible=true \
    -Dcassandra.config="file://$NODE/conf/cassandra.yaml" \
    -Dlogback.configurationFile="$NODE/conf/logback.xml" \
    -Dcassandra.logdir="$NODE/logs" \
    -Dcassandra.storagedir="$NODE" \
    -Dcassandra.skip_wait_for_gossip_to_settle=0 \
    -Dcassandra.unsafesystem=true \
    -Dcassandra.ring_delay_ms=100 \
    -Dcassandra.superuser_setup_delay_ms=0 \
    -Dcassandra-foreground=yes \
    -cp "$LIB/*" org.apache.cassandra.service.CassandraDaemon \
    >> "$NODE/logs/stdout.log" 2>&1 &
  echo $! > "$NODE/pid"
  # CQL answers once the native transport listens: it starts last.
  local deadline=$((SECONDS + ${CQL_NODE_START_TIMEOUT:-180}))
  until (exec 3<>"/dev/tcp/127.0.0.1/$native") 2>/dev/null; do
    if ! running; then
      log "Cassandra exited during start-up:"
      tail -n 30 "$NODE/logs/stdout.log" "$NODE/logs/system.log" >&2 2>/dev/null || true
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "CQL did not answer within ${CQL_NODE_START_TIMEOUT:-180} s"
      tail -n 30 "$NODE/logs/system.log" >&2 2>/dev/null || true
      stop
      exit 1
    fi
    sleep 1
  done
  # The default superuser is created just after the first start: until
  # then a login is refused. (The log is appended to, so a resumed node's
  # log still has the line.)
  until grep -q "Created default superuser role" "$NODE/logs/system.log" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "the default superuser was not created within ${CQL_NODE_START_TIMEOUT:-180} s"
      tail -n 30 "$NODE/logs/system.log" >&2 2>/dev/null || true
      stop
      exit 1
    fi
    sleep 1
  done
  echo "127.0.0.1:$native" > "$NODE/contact"
  log "CQL answers on 127.0.0.1:$native"
  cat "$NODE/contact"
}

stop() {
  if ! running; then rm -f "$NODE/pid"; return; fi
  local pid; pid=$(cat "$NODE/pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$NODE/pid" "$NODE/contact"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  resume) resume ;;
  stop) stop ;;
  status) if running; then cat "$NODE/contact"; else log "not running"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status|resume" >&2; exit 2 ;;
esac
