#!/usr/bin/env bash
# Compares bench binaries on a machine whose speed drifts: runs them in turn, RUNS times each,
# and prints, for every line of figures a bench prints, the median of each figure per binary.
# Works for every bench of the workspace: a "figure line" is any output line holding numbers
# (the machine-facts line aside); lines are matched across runs by their place in the output and
# their text with the numbers taken out.
#
#   scripts/bench/ab.sh RUNS BINARY... [-- BENCH ARGS]
#
# Build a binary per variant first, e.g.:
#   cargo bench -p gateway --bench submit_http --no-run   # prints the executable's path
#   cp target/release/deps/submit_http-<hash> /tmp/bench-a
# then: scripts/bench/ab.sh 3 /tmp/bench-a /tmp/bench-b -- 10 32 3000
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,14p' "$0" >&2
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

outputs=$(mktemp -d)
trap 'rm -rf "$outputs"' EXIT
for ((run = 0; run < runs; run++)); do
  for index in "${!binaries[@]}"; do
    echo "ab.sh: run $((run + 1))/$runs of ${binaries[$index]}" >&2
    "${binaries[$index]}" "${args[@]}" >"$outputs/$index.$run"
  done
done
python3 - "$outputs" "$runs" "${binaries[@]}" <<'PY'
import re, statistics, sys
folder, runs, binaries = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
number = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")

def figure_lines(path):
    """(key, [numbers]) per line that holds figures, in output order. A bench prints its lines
    in a fixed order, so a line's place keeps two cases whose labels differ only in a number
    (a 1000-node and a 5000-node diff) apart."""
    lines = []
    for line in open(path):
        line = line.rstrip("\n")
        if line.startswith("machine:") or not number.search(line):
            continue
        # Columns padded to a number's width would make two lines of one case differ.
        template = re.sub(r"\s+", " ", number.sub("#", line)).strip()
        lines.append(((len(lines), template), [float(n) for n in number.findall(line)]))
    return lines

def fill(template, values):
    parts = template.split("#")
    out = parts[0]
    for value, part in zip(values, parts[1:]):
        out += (f"{value:.0f}" if value >= 100 or value == int(value) else f"{value:.3f}") + part
    return out

order, samples = [], {}
for index, binary in enumerate(binaries):
    for run in range(runs):
        for key, values in figure_lines(f"{folder}/{index}.{run}"):
            if key not in order:
                order.append(key)
            samples.setdefault((key, binary), []).append(values)

for key in order:
    template = key[1]
    print(f"== {template}")
    for binary in binaries:
        runs_of_line = samples.get((key, binary), [])
        if not runs_of_line:
            print(f"  {binary}: (not printed)")
            continue
        medians = [statistics.median(column) for column in zip(*runs_of_line)]
        print(f"  {binary}: {fill(template, medians)}   (median of {len(runs_of_line)})")
PY
