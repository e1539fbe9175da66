#!/usr/bin/env bash
# Runs the DAG Manager on embedded defaults (no Kafka, no Neo4j) and shows a strategy diff:
# two strategies submit the example moving-average DAG; the second reuses every queue of the
# first. Prints the queue map and the service's key counters, then keeps serving until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p qmtl --locked
qmtl=target/release/qmtl
grpc=$(grep -E '^\s+grpc_port:' qmtl.yml | awk '{print $2}')
admin=$(grep -E '^\s+admin_port:' qmtl.yml | awk '{print $2}')

"$qmtl" service dagmanager server &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null' EXIT INT TERM
for _ in $(seq 100); do
  kill -0 "$server" 2>/dev/null || { echo "demo.sh: the DAG Manager did not start (are ports $grpc and $admin free?)" >&2; exit 1; }
  "$qmtl" service dagmanager queue-stats >/dev/null 2>&1 && break
  sleep 0.1
done
sleep 0.2
kill -0 "$server" 2>/dev/null || { echo "demo.sh: the DAG Manager exited (are ports $grpc and $admin free?)" >&2; exit 1; }

echo
echo "== DAG Manager: gRPC 127.0.0.1:$grpc, metrics http://127.0.0.1:$admin/metrics"
topics() { grep -o '"demo\.backtest\.[^"]*"' | sort; }
echo "== strategy ma-fast diffs examples/ma-crossover.json in world demo:"
fast=$("$qmtl" service dagmanager diff --file examples/ma-crossover.json --strategy-id ma-fast --world-id demo)
echo "$fast"
echo "== strategy ma-slow diffs the same DAG:"
slow=$("$qmtl" service dagmanager diff --file examples/ma-crossover.json --strategy-id ma-slow --world-id demo)
if [ "$(topics <<<"$fast")" = "$(topics <<<"$slow")" ]; then
  echo "   it reuses all $(topics <<<"$slow" | wc -l) of ma-fast's queues; none was created"
else
  echo "   its queues differ from ma-fast's:"; echo "$slow"
fi
echo "== key counters from http://127.0.0.1:$admin/metrics:"
exec 3<>"/dev/tcp/127.0.0.1/$admin"
printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
grep -E '^(diff_requests_total|diff_failures_total|compute_nodes_total|queues_total|diff_duration_ms_p95) ' <&3 | sed 's/^/   /'
exec 3>&-
echo
echo "The DAG Manager keeps serving; press Ctrl-C to stop it."
wait $server
