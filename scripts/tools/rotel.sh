#!/usr/bin/env bash
# An OTLP collector for tests: rotel (PyPI `rotel`, a Rust OpenTelemetry collector), installed
# once into a virtualenv, started on 127.0.0.1 with an OTLP/gRPC and an OTLP/HTTP receiver. It
# exports nowhere (blackhole) and writes every span it receives, with its service name, trace id,
# span id and parent span id, to $RUN_DIR/server.log, which the tests read. No query API.
# Env: QMTL_TOOLS_DIR (~/.cache/qmtl-tools) RUN_DIR (required) GRPC_PORT HTTP_PORT (required).
# Prints the collector's pid as the last stdout line. Stop: kill "$(cat "$RUN_DIR/pid")".
set -euo pipefail
VERSION=0.0.1a15
SHA256=2f4117e58410c933e0dc042a268ef738dab2e3a5d63b5831209acdac2a6ddcb7
TOOLS_DIR=${QMTL_TOOLS_DIR:-$HOME/.cache/qmtl-tools}
: "${RUN_DIR:?RUN_DIR is required}" "${GRPC_PORT:?GRPC_PORT is required}" "${HTTP_PORT:?HTTP_PORT is required}"
VENV=$TOOLS_DIR/rotel-$VERSION
mkdir -p "$TOOLS_DIR" "$RUN_DIR"
bin() { find "$VENV" -path '*site-packages/rotel/rotel-agent' -type f 2>/dev/null | head -1; }
if [ -z "$(bin)" ]; then
  echo "rotel.sh: installing rotel $VERSION from PyPI (once)" >&2
  python3 -m venv "$VENV" >&2 || {
    echo "rotel.sh: python3 -m venv failed; installing python3-venv from Debian" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv >&2 \
      || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv >&2; }
    python3 -m venv "$VENV" >&2
  }
  echo "rotel==$VERSION --hash=sha256:$SHA256" > "$VENV/requirements.txt"
  "$VENV/bin/pip" install -q --no-deps --require-hashes -r "$VENV/requirements.txt" >&2
fi
BIN=$(bin)
[ -x "$BIN" ] || { echo "rotel.sh: rotel-agent not found under $VENV" >&2; exit 1; }
nohup "$BIN" start --otlp-grpc-endpoint "127.0.0.1:$GRPC_PORT" --otlp-http-endpoint "127.0.0.1:$HTTP_PORT" \
  --exporter blackhole --debug-log traces --debug-log-verbosity detailed \
  > "$RUN_DIR/server.log" 2>&1 < /dev/null &
echo $! > "$RUN_DIR/pid"
for _ in $(seq 1 80); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$GRPC_PORT") 2>/dev/null; then
    echo "rotel.sh: ready, OTLP/HTTP http://127.0.0.1:$HTTP_PORT/v1/traces" >&2
    cat "$RUN_DIR/pid"; exit 0
  fi
  kill -0 "$(cat "$RUN_DIR/pid")" 2>/dev/null || { tail -20 "$RUN_DIR/server.log" >&2; exit 1; }
  sleep 0.25
done
echo "rotel.sh: the collector did not become ready" >&2; exit 1
