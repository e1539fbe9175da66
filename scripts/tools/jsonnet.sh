#!/usr/bin/env bash
# Installs Debian's jsonnet (0.18), which renders the monitoring mixin (deploy/monitoring/), once.
set -euo pipefail
if command -v jsonnet >/dev/null 2>&1; then
  command -v jsonnet
  exit 0
fi
echo "jsonnet.sh: installing jsonnet from Debian (once)" >&2
if [ "$(id -u)" -ne 0 ]; then
  echo "jsonnet.sh: needs root to apt-get install jsonnet; run: sudo apt-get install jsonnet" >&2
  exit 1
fi
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jsonnet >/dev/null
command -v jsonnet
