#!/usr/bin/env bash
# A real Kafka-protocol broker for tests and `qmtl up --kafka`: nisshi 0.8.1 (Tansu's successor)
# from the crate registry, built once (`cargo install --debug`, ~4-5 min on 2 cores) and cached
# under $QMTL_TOOLS_DIR, then started in the background on 127.0.0.1 with in-memory storage.
# Known limits of this broker: CreatePartitions is not supported; everything the services use
# (topics with configs, produce/fetch, consumer groups and offsets, watermarks, timestamps) is.
#
#   kafka.sh install          build the broker if it is not cached; print its path
#   kafka.sh start PORT DIR   start it on 127.0.0.1:PORT (state and log in DIR); print its pid
#   kafka.sh stop DIR         stop the broker started with that DIR
#
# Env: QMTL_TOOLS_DIR (~/.cache/qmtl-tools), KAFKA_START_TIMEOUT (30 s),
#      QMTL_KAFKA_BIN (a nisshi binary to use as it is, instead of building one).
set -euo pipefail
VERSION=0.8.1
TOOLS_DIR=${QMTL_TOOLS_DIR:-$HOME/.cache/qmtl-tools}
ROOT=$TOOLS_DIR/nisshi-$VERSION
BIN=${QMTL_KAFKA_BIN:-$ROOT/bin/nisshi}
log() { echo "kafka.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

install() {
  if [ -x "$BIN" ]; then echo "$BIN"; return; fi
  command -v cargo >/dev/null || die "cargo is needed to build the broker"
  mkdir -p "$TOOLS_DIR"
  log "building nisshi $VERSION once (cargo install --debug, about 4-5 min on 2 cores)"
  # Its lockfile pins a crate declaring rustc 1.96 that builds with older compilers too.
  CARGO_PROFILE_DEV_DEBUG=0 cargo install nisshi --version "$VERSION" --locked \
    --ignore-rust-version --debug --no-default-features --features dynostore \
    --root "$ROOT" >&2 || die "cargo install nisshi failed"
  echo "$BIN"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  local port=$1 dir=$2
  install >/dev/null
  mkdir -p "$dir"
  if [ -f "$dir/broker.pid" ] && kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null && port_open "$port"; then
    cat "$dir/broker.pid"; return
  fi
  port_open "$port" && die "127.0.0.1:$port is already in use"
  ( cd "$dir" && exec setsid "$BIN" broker \
      --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "memory://nisshi-$port/" --group-initial-rebalance-delay 0s \
      </dev/null >"$dir/broker.log" 2>&1 ) &
  local pid=$!
  sleep 0.1
  if ! grep -qa -- "$BIN" "/proc/$pid/cmdline" 2>/dev/null; then
    pid=$(pgrep -n -f -- "$BIN broker --listener-url tcp://127.0.0.1:$port" || true)
    [ -n "$pid" ] || { cat "$dir/broker.log" >&2; die "the broker did not start"; }
  fi
  echo "$pid" > "$dir/broker.pid"
  local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-30}))
  until port_open "$port" && "$BIN" topic list --broker "tcp://127.0.0.1:$port" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { cat "$dir/broker.log" >&2; die "the broker exited during start-up"; }
    [ "$SECONDS" -lt "$deadline" ] || { kill "$pid"; cat "$dir/broker.log" >&2; die "the broker did not answer in time"; }
    sleep 0.2
  done
  log "ready: bootstrap.servers=127.0.0.1:$port (pid $pid)"
  echo "$pid"
}

stop() {
  local dir=$1 pid
  [ -f "$dir/broker.pid" ] || return 0
  pid=$(cat "$dir/broker.pid")
  if kill -0 "$pid" 2>/dev/null && grep -qa nisshi "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/broker.pid"
}

case "${1:-}" in
  install) install ;;
  start) [ $# -eq 3 ] || die "usage: kafka.sh start PORT DIR"; start "$2" "$3" ;;
  stop) [ $# -eq 2 ] || die "usage: kafka.sh stop DIR"; stop "$2" ;;
  *) die "usage: kafka.sh install | start PORT DIR | stop DIR" ;;
esac
