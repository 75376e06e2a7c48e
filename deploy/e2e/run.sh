#!/usr/bin/env bash
# End-to-end test on a real k3s cluster (k3d): builds the operator and agent images,
# creates a cluster, installs the Helm chart, runs a Mosquitto broker on the edge node,
# applies deploy/examples/temperature-significant-change.yaml, waits for Ready, and checks
# the DaemonSet, its pods, the data path (an MQTT reading reaches the agent), the Invalid
# condition on a bad spec (the running agents stay untouched) and garbage collection.
#
# Needs Docker, k3d, kubectl and helm. Not part of tests/run.sh (no Docker engine there).
#   deploy/e2e/run.sh                        # k3s at the oldest supported Kubernetes
#   K3S_IMAGE=rancher/k3s:<v1.37 tag> deploy/e2e/run.sh
#   KEEP_CLUSTER=1 deploy/e2e/run.sh         # leave the cluster up for a look around
#   SKIP_BUILD=1 deploy/e2e/run.sh           # reuse images built by an earlier run
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"

CLUSTER="${CLUSTER:-edgepipe-e2e}"
K3S_IMAGE="${K3S_IMAGE:-rancher/k3s:v1.33.5-k3s1}"
TAG="${TAG:-e2e}"
OPERATOR_IMAGE="ghcr.io/edgepipe/edge-operator:${TAG}"
AGENT_IMAGE="ghcr.io/edgepipe/edge-agent:${TAG}"
EXAMPLE="deploy/examples/temperature-significant-change.yaml"
NS=factory
PIPELINE=line1-temperature
AGENT="${PIPELINE}-agent"
TIMEOUT="${TIMEOUT:-180s}"

log() { printf '\n== %s\n' "$*"; }
fail() { printf '\nFAIL: %s\n' "$*" >&2; diagnostics; exit 1; }

diagnostics() {
    set +e
    echo "--- EdgePipelines"; kubectl get epl -A -o wide
    echo "--- status"; kubectl -n "$NS" get epl "$PIPELINE" -o jsonpath='{.status}'; echo
    echo "--- DaemonSets and pods"; kubectl -n "$NS" get ds,pods -o wide
    echo "--- events"; kubectl -n "$NS" get events --sort-by=.lastTimestamp | tail -30
    echo "--- operator logs"; kubectl -n edgepipe-system logs deploy/edge-operator --tail=80
    echo "--- agent logs"; kubectl -n "$NS" logs "ds/$AGENT" --all-containers --tail=80
}

cleanup() {
    if [ "${KEEP_CLUSTER:-}" = "1" ]; then
        echo "cluster $CLUSTER kept (k3d cluster delete $CLUSTER)"
    else
        k3d cluster delete "$CLUSTER" >/dev/null 2>&1 || true
    fi
}

for tool in docker k3d kubectl helm; do
    command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 2; }
done

if [ "${SKIP_BUILD:-}" != "1" ]; then
    log "building $OPERATOR_IMAGE and $AGENT_IMAGE"
    docker build -f deploy/docker/Dockerfile --target operator -t "$OPERATOR_IMAGE" .
    docker build -f deploy/docker/Dockerfile --target agent -t "$AGENT_IMAGE" .
fi

log "creating k3d cluster $CLUSTER ($K3S_IMAGE): one server, one edge agent node"
k3d cluster delete "$CLUSTER" >/dev/null 2>&1 || true
trap cleanup EXIT
k3d cluster create "$CLUSTER" --image "$K3S_IMAGE" --agents 1 --wait --timeout 180s \
    --k3s-arg '--disable=traefik@server:0'
kubectl config use-context "k3d-$CLUSTER" >/dev/null
k3d image import -c "$CLUSTER" "$OPERATOR_IMAGE" "$AGENT_IMAGE"
EDGE_NODE="k3d-${CLUSTER}-agent-0"
kubectl label node "$EDGE_NODE" edgepipe.dev/edge=true --overwrite

log "installing the chart"
helm install edge-operator charts/edge-operator --namespace edgepipe-system --create-namespace \
    --set image.tag="$TAG" --set agent.image.tag="$TAG" --wait --timeout "$TIMEOUT"
kubectl -n edgepipe-system rollout status deploy/edge-operator --timeout "$TIMEOUT"

log "starting Mosquitto on the edge node"
kubectl apply -f deploy/e2e/mosquitto.yaml
kubectl -n edge-broker rollout status ds/mosquitto --timeout "$TIMEOUT"

log "applying $EXAMPLE"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" create secret generic ingest-token --from-literal=authorization='Bearer e2e' \
    --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" label secret ingest-token edgepipe.dev/allow-pipelines=true --overwrite
kubectl apply -f "$EXAMPLE"
kubectl -n "$NS" wait --for=condition=Ready "epl/$PIPELINE" --timeout "$TIMEOUT" || fail "pipeline not Ready"

log "checking the DaemonSet and its pods"
desired="$(kubectl -n "$NS" get ds "$AGENT" -o jsonpath='{.status.desiredNumberScheduled}')"
ready="$(kubectl -n "$NS" get ds "$AGENT" -o jsonpath='{.status.numberReady}')"
[ "$desired" = "1" ] && [ "$ready" = "1" ] || fail "DaemonSet $AGENT: desired=$desired ready=$ready (want 1/1: only the labelled node)"
node="$(kubectl -n "$NS" get pods -l app.kubernetes.io/instance="$PIPELINE" -o jsonpath='{.items[0].spec.nodeName}')"
[ "$node" = "$EDGE_NODE" ] || fail "agent runs on $node, not on the edge node $EDGE_NODE"
owner="$(kubectl -n "$NS" get ds "$AGENT" -o jsonpath='{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}')"
[ "$owner" = "EdgePipeline/$PIPELINE" ] || fail "DaemonSet owner is $owner"
uid="$(kubectl -n "$NS" get pods -l app.kubernetes.io/instance="$PIPELINE" -o jsonpath='{.items[0].spec.securityContext.runAsUser}')"
[ "$uid" = "65532" ] || fail "agent pod runs as $uid"
status_nodes="$(kubectl -n "$NS" get epl "$PIPELINE" -o jsonpath='{.status.readyNodes}/{.status.desiredNodes}')"
[ "$status_nodes" = "1/1" ] || fail "status reports $status_nodes nodes"
kubectl -n "$NS" get events --field-selector involvedObject.name="$PIPELINE" -o jsonpath='{.items[*].reason}' \
    | grep -q Created || fail "no Created Event"

log "publishing a reading on the node's broker and reading the agent's metrics"
pod="$(kubectl -n "$NS" get pods -l app.kubernetes.io/instance="$PIPELINE" -o jsonpath='{.items[0].metadata.name}')"
broker="$(kubectl -n edge-broker get pods -l app=mosquitto -o jsonpath='{.items[0].metadata.name}')"
received=0
for _ in $(seq 1 30); do
    kubectl -n edge-broker exec "$broker" -- mosquitto_pub -h 127.0.0.1 -q 1 -t sensors/t1/temperature \
        -m '{"device_id":"t1","value":21.5}'
    metrics="$(kubectl get --raw "/api/v1/namespaces/$NS/pods/$pod:9464/proxy/metrics" || true)"
    received="$(printf '%s\n' "$metrics" | awk '/^edge_agent_messages_received_total/ {s += $NF} END {print s + 0}')"
    [ "${received%.*}" -ge 1 ] && break
    sleep 2
done
[ "${received%.*}" -ge 1 ] || fail "the agent received no MQTT message"
echo "agent received $received message(s)"

log "an invalid spec sets Invalid and leaves the running agents alone"
generation="$(kubectl -n "$NS" get ds "$AGENT" -o jsonpath='{.metadata.generation}')"
kubectl -n "$NS" patch epl "$PIPELINE" --type merge -p '{"spec":{"source":{"mqtt":{"topics":["sensors/#/bad"]}}}}'
kubectl -n "$NS" wait --for=condition=Invalid "epl/$PIPELINE" --timeout "$TIMEOUT" || fail "Invalid not set"
kubectl -n "$NS" get epl "$PIPELINE" -o jsonpath='{.status.conditions[?(@.type=="Invalid")].message}' \
    | grep -q 'spec.source.mqtt.topics\[0\]' || fail "Invalid message does not name the field"
[ "$(kubectl -n "$NS" get ds "$AGENT" -o jsonpath='{.metadata.generation}')" = "$generation" ] \
    || fail "the DaemonSet was changed for an invalid spec"
kubectl apply -f "$EXAMPLE"
kubectl -n "$NS" wait --for=condition=Invalid=false "epl/$PIPELINE" --timeout "$TIMEOUT" || fail "Invalid not cleared"
kubectl -n "$NS" wait --for=condition=Ready "epl/$PIPELINE" --timeout "$TIMEOUT" || fail "not Ready again"

log "deleting the pipeline garbage-collects its DaemonSet and ConfigMap"
kubectl -n "$NS" delete epl "$PIPELINE" --wait
kubectl -n "$NS" wait --for=delete "ds/$AGENT" "configmap/$AGENT" --timeout "$TIMEOUT" || fail "children not deleted"

log "e2e passed on $K3S_IMAGE"
