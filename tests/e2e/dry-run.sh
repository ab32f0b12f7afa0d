#!/usr/bin/env bash
# For users with a real cluster (there is none on Ferry's CI machines): install the CRDs, then
# ask the API server to admit every example and to refuse every invalid fixture, exactly as
# tests/examples.rs and tests/invalid_specs.rs do offline.
#
#   tests/e2e/dry-run.sh            # uses the current kubectl context
#
# It creates the CRDs (cluster-scoped) and the namespace `shop` if missing; nothing else is
# written: every object is applied with --dry-run=server.
set -euo pipefail
cd "$(dirname "$0")/../.."

kubectl apply --server-side -f crds/
kubectl wait --for condition=established --timeout=60s -f crds/
kubectl get namespace shop >/dev/null 2>&1 || kubectl create namespace shop

echo "== examples must be admitted"
kubectl apply --dry-run=server --validate=strict -f examples/orders/
kubectl apply --dry-run=server --validate=strict -n shop -f examples/brokers/

echo "== invalid fixtures must be refused, naming the field"
failures=0
for fixture in tests/fixtures/invalid/*.yaml; do
  field=$(sed -n 's/^# field: //p' "$fixture")
  if output=$(kubectl apply --dry-run=server --validate=strict -f "$fixture" 2>&1); then
    echo "ACCEPTED (should be refused): $fixture"
    failures=$((failures + 1))
  elif ! grep -qF "${field##*.}" <<<"$output"; then
    echo "refused without naming $field: $fixture: $output"
    failures=$((failures + 1))
  else
    echo "refused: $fixture"
  fi
done
[ "$failures" -eq 0 ] || { echo "$failures fixtures misjudged"; exit 1; }
echo "all examples admitted, all invalid fixtures refused"
