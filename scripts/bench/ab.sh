#!/usr/bin/env bash
# Compares bench binaries on a machine whose speed drifts: runs them in turn, RUNS times each,
# and prints the median of each figure. Built for the Gateway's submit_http bench, whose last
# line carries "N completed/s" and "cpu X ms/submission".
#
#   scripts/bench/ab.sh RUNS BINARY... [-- BENCH ARGS]     (bench args default: 10 32 3000)
#
# Build a binary per variant first, e.g.:
#   cargo bench -p gateway --bench submit_http --no-run   # prints the executable's path
#   cp target/release/deps/submit_http-<hash> /tmp/bench-a
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,10p' "$0" >&2
  exit 2
fi
runs=$1
shift
binaries=()
while [[ $# -gt 0 && $1 != "--" ]]; do
  binaries+=("$1")
  shift
done
[[ ${1:-} == "--" ]] && shift
args=("$@")
[[ ${#args[@]} -eq 0 ]] && args=(10 32 3000)

results=$(mktemp)
trap 'rm -f "$results"' EXIT
for ((run = 0; run < runs; run++)); do
  for binary in "${binaries[@]}"; do
    last=$("$binary" "${args[@]}" | tail -n 1)
    rate=$(grep -o '[0-9]* completed/s' <<<"$last" | grep -o '^[0-9]*')
    cpu=$(grep -o 'cpu [0-9.]*' <<<"$last" | grep -o '[0-9.]*$')
    echo "$binary $rate $cpu" >>"$results"
  done
done
python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    binary, rate, cpu = line.split()
    rows.setdefault(binary, []).append((float(rate), float(cpu)))
for binary, samples in rows.items():
    rates = sorted(r for r, _ in samples)
    cpus = [c for _, c in samples]
    print(f"{binary}: median {statistics.median(rates):.0f} completed/s, "
          f"cpu {statistics.median(cpus):.3f} ms/submission "
          f"(runs: {', '.join(f'{r:.0f}' for r in rates)})")
PY
