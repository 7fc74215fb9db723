#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on this machine, for the cluster tests:
# nodes cb1@localhost, cb2@localhost, cb3@localhost with AMQP on
# 127.0.0.1:5681-5683, Erlang distribution on 25681-25683, the management
# plugin off, their own data and log directories under $CLUSTERBUS_RABBIT_CLUSTER_DIR
# (default /tmp/clusterbus-rabbit-cluster) and a shared Erlang cookie there.
# The machine's own RabbitMQ (rabbit@localhost, 5672) is left alone.
#
#   .ci/rabbitmq-cluster.sh start          # idempotent: quick when all three answer
#   .ci/rabbitmq-cluster.sh stop           # stop all three
#   .ci/rabbitmq-cluster.sh ctl N ARGS…    # rabbitmqctl against node N (1-3)
#   .ci/rabbitmq-cluster.sh start-node N   # start one node again (after a kill)
#   .ci/rabbitmq-cluster.sh pid N          # the OS pid of node N (for kill -9)
#
# Needs rabbitmq-server (Debian package; installed by .ci/rabbitmq.sh).
set -euo pipefail
DIR="${CLUSTERBUS_RABBIT_CLUSTER_DIR:-/tmp/clusterbus-rabbit-cluster}"
BIN=/usr/lib/rabbitmq/bin
[ -x "$BIN/rabbitmq-server" ] || BIN="$(dirname "$(command -v rabbitmq-server)")"
log() { printf '== rabbitmq-cluster: %s\n' "$*" >&2; }

port() { echo $((5680 + $1)); }
name() { echo "cb$1@localhost"; }

# env N: the environment of node N.
nodeenv() {
  local n=$1 d="$DIR/cb$1"
  mkdir -p "$d/mnesia" "$d/log"
  if [ ! -f "$d/rabbitmq.conf" ]; then
    cat >"$d/rabbitmq.conf" <<CONF
listeners.tcp.local = 127.0.0.1:$(port "$n")
loopback_users = none
# A loaded CI machine can miss net ticks; heal a partition by itself.
cluster_partition_handling = autoheal
CONF
    echo '[].' >"$d/enabled_plugins"
    : >"$d/rabbitmq-env.conf"
  fi
  export HOME="$DIR" # the shared Erlang cookie: $DIR/.erlang.cookie
  export RABBITMQ_NODENAME="$(name "$n")"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT="$(port "$n")"
  export RABBITMQ_DIST_PORT=$((25680 + n))
  export RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf"
  export RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
  export RABBITMQ_MNESIA_BASE="$d/mnesia"
  export RABBITMQ_LOG_BASE="$d/log"
  export RABBITMQ_PID_FILE="$d/pid"
  export ERL_EPMD_ADDRESS=127.0.0.1
}

ctl() { local n=$1; shift; (nodeenv "$n"; "$BIN/rabbitmqctl" -n "$(name "$n")" "$@"); }
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$(port "$1")") 2>/dev/null; }

cookie() {
  mkdir -p "$DIR"
  if [ ! -s "$DIR/.erlang.cookie" ]; then
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/.erlang.cookie"
    chmod 400 "$DIR/.erlang.cookie"
  fi
}

start_node() {
  local n=$1
  cookie
  answers "$n" && return 0
  log "starting $(name "$n") on 127.0.0.1:$(port "$n")"
  (nodeenv "$n"; "$BIN/rabbitmq-server" >"$DIR/cb$n/log/stdout.log" 2>&1 &)
  for _ in $(seq 1 120); do
    ctl "$n" -q await_startup --timeout 5 >/dev/null 2>&1 && return 0
    sleep 1
  done
  log "$(name "$n") did not start; see $DIR/cb$n/log"
  tail -20 "$DIR/cb$n/log/stdout.log" >&2 || true
  return 1
}

clustered() { ctl 1 -q cluster_status --formatter json 2>/dev/null | grep -q '"cb3@localhost"' && ctl 1 -q cluster_status --formatter json 2>/dev/null | grep -o '"running_nodes":\[[^]]*\]' | grep -q cb3; }

start() {
  if ! command -v "$BIN/rabbitmq-server" >/dev/null; then
    log "rabbitmq-server is not installed (run .ci/rabbitmq.sh)"
    exit 1
  fi
  for n in 1 2 3; do start_node "$n" & done
  wait
  for n in 1 2 3; do answers "$n" || { log "node $n does not answer"; exit 1; }; done
  for n in 2 3; do
    if ! ctl 1 -q cluster_status --formatter json | grep -q "\"cb$n@localhost\""; then
      log "joining $(name "$n") to $(name 1)"
      ctl "$n" -q stop_app >/dev/null 2>&1
      ctl "$n" -q reset >/dev/null 2>&1
      ctl "$n" -q join_cluster "$(name 1)" >/dev/null 2>&1
      ctl "$n" -q start_app >/dev/null 2>&1
      ctl "$n" -q await_startup
    fi
  done
  # A partition left by an earlier run (autoheal covers new ones): restart
  # the application on the nodes that report one.
  for n in 1 2 3; do
    if ctl "$n" -q cluster_status --formatter json 2>/dev/null | grep -q '"partitions":{"'; then
      log "$(name "$n") reports a network partition: restarting it"
      ctl "$n" -q stop_app >/dev/null 2>&1 || true
      ctl "$n" -q start_app >/dev/null 2>&1
      ctl "$n" -q await_startup
    fi
  done
  log "running: $(ctl 1 -q cluster_status --formatter json | grep -o '"running_nodes":\[[^]]*\]')"
}

stop() {
  for n in 1 2 3; do
    if answers "$n" || [ -s "$DIR/cb$n/pid" ]; then
      ctl "$n" -q shutdown >/dev/null 2>&1 || { p=$(node_pid "$n" 2>/dev/null) && kill "$p" 2>/dev/null; } || true
    fi
  done
}

# node_pid N: the OS pid of node N, from its pid file when that names a
# live process, else from the node itself (CI saw cb1 running with its pid
# file gone).
node_pid() {
  local n=$1 f="$DIR/cb$1/pid" p
  if [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
    cat "$f"
    return
  fi
  p=$(ctl "$n" -q status --formatter json 2>/dev/null | grep -o '"pid":[0-9]*' | head -1 | cut -d: -f2)
  if [ -z "$p" ]; then
    log "$(name "$n") is not running (no pid file, no answer)"
    return 1
  fi
  echo "$p" >"$f"
  echo "$p"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  start-node) start_node "$2" ;;
  ctl) shift; ctl "$@" ;;
  pid) node_pid "$2" ;;
  *) echo "usage: $0 start|stop|start-node N|ctl N ARGS…|pid N" >&2; exit 2 ;;
esac
