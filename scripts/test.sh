#!/usr/bin/env bash
# The whole test suite, as the README gives it and CI runs it: formatting, lints, then every
# test of every crate with cargo-nextest. Installs what the tests need on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# No incremental caches: they would double the build's disk use, and a clean clone never reads
# them. The build needs about 1.5 GB under target/; say so plainly when the disk is short.
export CARGO_INCREMENTAL=0
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
if [ "${free_kb:-0}" -lt 2097152 ]; then
  echo "test.sh: WARNING: only $((free_kb / 1024)) MB free here; the build needs about 1.5 GB" >&2
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test.sh: installing cargo-nextest (once)"
  cargo install cargo-nextest --locked
fi

# The tidy test (crates/tidy) asks cargo-machete for dependencies that no code uses.
if ! cargo machete --version >/dev/null 2>&1; then
  echo "test.sh: installing cargo-machete (once)"
  cargo install cargo-machete --locked
fi

# promtool checks every service's exposition (Debian's prometheus package); the Kafka tests
# start a real broker, built once from the crate registry (about 5 min the first time).
./scripts/tools/promtool.sh >/dev/null
./scripts/tools/kafka.sh install >/dev/null
# jsonnet renders the monitoring mixin, which the tidy crate's monitoring test checks.
./scripts/tools/jsonnet.sh >/dev/null

echo "test.sh: cargo fmt --check"
cargo fmt --all -- --check
echo "test.sh: cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "test.sh: cargo nextest"
cargo nextest run --workspace --locked --no-fail-fast "$@"
