#!/usr/bin/env bash
# Renders the monitoring mixin (deploy/monitoring/) into the files Prometheus loads:
# alert_rules.yml at the top of the repository. With --check, renders into a temporary file and
# fails when the committed file differs (what the test command runs).
#
#   scripts/monitoring/render.sh [--check]
set -euo pipefail
cd "$(dirname "$0")/../.."
check=false
[[ ${1:-} == "--check" ]] && check=true
jsonnet=$(./scripts/tools/jsonnet.sh)

rendered=$(mktemp)
trap 'rm -f "$rendered"' EXIT
# A Jsonnet error names its file and line; nothing is written then.
"$jsonnet" -S -J deploy/monitoring deploy/monitoring/alert_rules.jsonnet >"$rendered"
if $check; then
  if ! diff -u alert_rules.yml "$rendered"; then
    echo "render.sh: alert_rules.yml differs from what deploy/monitoring renders; run scripts/monitoring/render.sh" >&2
    exit 1
  fi
  echo "render.sh: alert_rules.yml is what deploy/monitoring renders"
else
  cp "$rendered" alert_rules.yml
  echo "render.sh: wrote alert_rules.yml"
fi
