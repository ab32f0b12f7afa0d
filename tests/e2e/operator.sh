#!/usr/bin/env bash
# For users with a real cluster (there is none on Ferry's CI machines): run the whole pipeline of
# examples/orders under the operator and check it end to end.
#
#   tests/e2e/operator.sh                 # a new kind cluster "ferry-e2e", deleted at the end
#   FERRY_E2E_CONTEXT=my-ctx tests/e2e/operator.sh   # an existing cluster (kubectl context)
#
# Needs docker, kubectl and helm; kind too unless FERRY_E2E_CONTEXT is set. With an existing
# cluster the image must be pullable by its nodes: set FERRY_E2E_IMAGE to an image you pushed
# (built from this repository's Dockerfile).
#
# What it does: builds the image, installs the chart, starts PostgreSQL, RabbitMQ and an HTTP
# echo service standing in for the inventory service in namespace `shop`, applies
# examples/orders, creates the outbox table, commits orders with their outbox rows in one
# transaction each, then waits (with deadlines, never a guessed sleep) until:
#   - the OutboxSource and the Consumer report Ready=True and ReferencesResolved=True,
#   - every outbox row is published (the relay's own pending count is 0),
#   - the consumer has delivered every event (its idempotency table holds one done record per
#     event id).
# A missing reference is then introduced and the Consumer must turn Ready=False naming it.
set -euo pipefail
cd "$(dirname "$0")/../.."

ORDERS=${FERRY_E2E_ORDERS:-200}
IMAGE=${FERRY_E2E_IMAGE:-ferry:e2e}
CLUSTER=ferry-e2e
NS=shop

log() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }

# Polls `$@` until it succeeds or `timeout` seconds pass.
wait_until() {
  local timeout=$1 what=$2
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what (waited ${timeout}s)"
    sleep 2
  done
  echo "ok: $what"
}

psql_shop() {
  kubectl -n "$NS" exec deploy/postgres -- psql -v ON_ERROR_STOP=1 -qtA -U postgres "$@"
}

if [ -z "${FERRY_E2E_CONTEXT:-}" ]; then
  log "kind cluster $CLUSTER"
  kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
  trap 'kind delete cluster --name "$CLUSTER"' EXIT
  kubectl config use-context "kind-$CLUSTER"
  log "image $IMAGE"
  docker build -t "$IMAGE" .
  kind load docker-image "$IMAGE" --name "$CLUSTER"
else
  kubectl config use-context "$FERRY_E2E_CONTEXT"
fi

log "operator (Helm chart)"
helm upgrade --install ferry charts/ferry --namespace ferry-system --create-namespace \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" \
  --set image.pullPolicy=IfNotPresent --wait --timeout 180s

log "PostgreSQL, RabbitMQ and the inventory service in namespace $NS"
kubectl get namespace "$NS" >/dev/null 2>&1 || kubectl create namespace "$NS"
kubectl -n "$NS" apply -f - <<'YAML'
apiVersion: v1
kind: ConfigMap
metadata: {name: postgres-init}
data:
  init.sql: |
    CREATE USER orders PASSWORD 'orders';
    CREATE DATABASE orders OWNER orders;
    CREATE USER inventory PASSWORD 'inventory';
    CREATE DATABASE inventory OWNER inventory;
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: postgres}
spec:
  selector: {matchLabels: {app: postgres}}
  template:
    metadata: {labels: {app: postgres}}
    spec:
      containers:
        - name: postgres
          image: postgres:16
          env: [{name: POSTGRES_HOST_AUTH_METHOD, value: trust}]
          ports: [{containerPort: 5432}]
          readinessProbe: {exec: {command: [pg_isready, -U, postgres]}, periodSeconds: 2}
          volumeMounts: [{name: init, mountPath: /docker-entrypoint-initdb.d}]
      volumes: [{name: init, configMap: {name: postgres-init}}]
---
apiVersion: v1
kind: Service
metadata: {name: postgres}
spec: {selector: {app: postgres}, ports: [{port: 5432}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: rabbitmq}
spec:
  selector: {matchLabels: {app: rabbitmq}}
  template:
    metadata: {labels: {app: rabbitmq}}
    spec:
      containers:
        - name: rabbitmq
          image: rabbitmq:3.13
          env:
            - {name: RABBITMQ_DEFAULT_USER, value: ferry}
            - {name: RABBITMQ_DEFAULT_PASS, value: ferry}
          ports: [{containerPort: 5672}]
          readinessProbe: {exec: {command: [rabbitmq-diagnostics, -q, check_port_connectivity]}, periodSeconds: 5, timeoutSeconds: 10}
---
apiVersion: v1
kind: Service
metadata: {name: rabbitmq}
spec: {selector: {app: rabbitmq}, ports: [{port: 5672}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: inventory}
spec:
  selector: {matchLabels: {app: inventory}}
  template:
    metadata: {labels: {app: inventory}}
    spec:
      containers:
        - name: echo
          image: ealen/echo-server:0.9.2
          env: [{name: PORT, value: "8080"}]
          ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: inventory}
spec: {selector: {app: inventory}, ports: [{port: 8080}]}
YAML
kubectl -n "$NS" rollout status deploy/postgres deploy/rabbitmq deploy/inventory --timeout 300s

log "outbox table and a business table"
kubectl -n "$NS" run outbox-migrate --rm -i --restart=Never --image "$IMAGE" \
  --image-pull-policy IfNotPresent -- \
  outbox migrate --engine postgres --url postgres://orders:orders@postgres.shop.svc:5432/orders
psql_shop -d orders -c "CREATE TABLE IF NOT EXISTS orders (id BIGINT PRIMARY KEY, customer TEXT NOT NULL)"
psql_shop -d orders -c "GRANT ALL ON ALL TABLES IN SCHEMA public TO orders"

log "the pipeline: examples/orders"
kubectl apply --server-side -f examples/orders/
wait_until 180 "OutboxSource orders Ready" \
  kubectl -n "$NS" wait --for=condition=Ready outboxsource/orders --timeout=5s
wait_until 180 "Consumer inventory Ready" \
  kubectl -n "$NS" wait --for=condition=Ready consumer/inventory --timeout=5s

log "commit $ORDERS orders, each with its outbox row in the same transaction"
psql_shop -d orders <<SQL
DO \$\$
BEGIN
  FOR n IN 1..$ORDERS LOOP
    INSERT INTO orders (id, customer) VALUES (n, 'customer-' || (n % 20));
    INSERT INTO ferry_outbox (id, aggregate_type, aggregate_id, event_type, payload)
    VALUES (gen_random_uuid(), 'Order', 'order-' || n, 'order.created',
            json_build_object('order', n)::text);
    COMMIT;
  END LOOP;
END
\$\$;
SQL

published() {
  [ "$(psql_shop -d orders -c "SELECT count(*) FROM ferry_outbox WHERE published_at IS NULL")" = 0 ]
}
delivered() {
  [ "$(psql_shop -d inventory -c "SELECT count(*) FROM ferry_processed WHERE state = 'done'")" -ge "$ORDERS" ]
}
wait_until 300 "every outbox row published" published
wait_until 300 "every event delivered once to the inventory service" delivered
kubectl -n "$NS" get outboxsource/orders consumer/inventory -o wide

log "a missing reference turns the Consumer Ready=False, naming it"
kubectl -n "$NS" patch consumer/inventory --type merge -p '{"spec":{"retryPolicyRef":{"name":"no-such-policy"}}}'
not_ready() {
  kubectl -n "$NS" get consumer/inventory \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].message}' |
    grep -q '^False .*no-such-policy'
}
wait_until 120 "Consumer inventory Ready=False naming no-such-policy" not_ready
kubectl -n "$NS" patch consumer/inventory --type merge -p '{"spec":{"retryPolicyRef":{"name":"inventory-retries"}}}'
wait_until 120 "Consumer inventory Ready again" \
  kubectl -n "$NS" wait --for=condition=Ready consumer/inventory --timeout=5s

echo
echo "e2e passed: $ORDERS orders committed, published and delivered under the operator"
