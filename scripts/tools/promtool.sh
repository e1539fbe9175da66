#!/usr/bin/env bash
# Installs promtool (with Prometheus 2.42 and Alertmanager 0.25: Debian bookworm's `prometheus`
# and `prometheus-alertmanager` packages) when it is missing, then prints its path. Idempotent.
# The Debian post-install scripts do not start the daemons here (no systemd); the tests only run
# `promtool check metrics`, `promtool check rules` and `promtool test rules`, which work offline.
set -euo pipefail
if ! command -v promtool >/dev/null; then
  echo "promtool.sh: installing prometheus from Debian (once)" >&2
  export DEBIAN_FRONTEND=noninteractive
  sudo_cmd=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get install -y --no-install-recommends prometheus prometheus-alertmanager >&2 \
    || { $sudo_cmd apt-get update >&2 && $sudo_cmd apt-get install -y --no-install-recommends prometheus prometheus-alertmanager >&2; }
fi
command -v promtool
