#!/usr/bin/env bash
# Runs the stack on embedded defaults (no Kafka, no Neo4j): the DAG Manager and the Gateway as
# separate processes, with the ports of qmtl.yml. Two moving-average strategies that share their
# price input are submitted through the Gateway; the second reuses the first's price queue.
# Prints both answers and each service's key counters, then keeps serving until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p qmtl --locked
qmtl=target/release/qmtl
setting() { awk -v section="$1:" -v key="$2:" '$1==section{in_section=1; next} /^[a-z]/{in_section=0} in_section && $1==key{print $2; exit}' qmtl.yml; }
grpc=$(setting dagmanager grpc_port)
admin=$(setting dagmanager admin_port)
http=$(setting gateway port)

pids=()
stop() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop EXIT INT TERM
"$qmtl" service dagmanager server & pids+=($!)
"$qmtl" service gateway & pids+=($!)

scrape() { # host:port -> the body of GET /metrics
  exec 3<>"/dev/tcp/127.0.0.1/$1"
  printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
  cat <&3
  exec 3>&-
}
ready=0
for _ in $(seq 100); do
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "demo.sh: a service exited (are ports $grpc, $admin and $http free?)" >&2; exit 1; }
  done
  if scrape "$admin" >/dev/null 2>&1 && scrape "$http" >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.1
done
[ "$ready" = 1 ] || { echo "demo.sh: the services did not come up" >&2; exit 1; }
sleep 0.3
for pid in "${pids[@]}"; do
  kill -0 "$pid" 2>/dev/null || { echo "demo.sh: a service exited (are ports $grpc, $admin and $http free?)" >&2; exit 1; }
done

echo
echo "== DAG Manager: gRPC 127.0.0.1:$grpc, metrics http://127.0.0.1:$admin/metrics"
echo "== Gateway:     http://127.0.0.1:$http, metrics http://127.0.0.1:$http/metrics"
price=$(grep -m1 -o '"node_id": "blake3:[0-9a-f]*"' examples/ma-crossover.json | cut -d'"' -f4)
price_queue() { { grep -o "\"$price\":\[{[^}]*}" | grep -o '"queue":"[^"]*"' | head -1 | cut -d'"' -f4; } || true; }
submit() { "$qmtl" submit --file "$1" --world-id demo --as-of 2025-01-01 2>&1 || true; }
echo "== submit examples/ma-crossover.json (price feed, fast and slow SMA, crossover):"
first=$(submit examples/ma-crossover.json); echo "$first"
echo "== submit examples/ma-trend.json (the same price feed, a 50-bar SMA, a trend signal):"
second=$(submit examples/ma-trend.json); echo "$second"
q1=$(price_queue <<<"$first"); q2=$(price_queue <<<"$second")
if [ -n "$q1" ] && [ "$q1" = "$q2" ]; then
  echo "== both strategies read the price feed from one queue: $q1"
else
  echo "== the price feed queues differ ('$q1' vs '$q2')"
fi
echo "== DAG Manager counters:"
scrape "$admin" | grep -E '^(diff_requests_total|diff_failures_total|compute_nodes_total|queues_total|diff_duration_ms_p95) ' | sed 's/^/   /'
echo "== Gateway counters:"
scrape "$http" | grep -E '^(gateway_submissions_total|lost_requests_total|dagclient_breaker_state|gateway_e2e_latency_p95)' | sed 's/^/   /'
echo
echo "Both services keep serving; press Ctrl-C to stop them."
wait
