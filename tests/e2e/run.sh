#!/usr/bin/env bash
# Ferrotrain end to end on a kind cluster: build and load the images, install MinIO and the chart,
# train examples/mnist-k8s.yaml to Succeeded, kill a worker mid-run and check the gang resumes from
# its checkpoint, suspend and resume a job, and check that the API server rejects a bad manifest.
# Needs docker, kind, kubectl and helm. Where docker or kind is missing it says which and exits 0;
# any other missing tool or failed check exits 1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cluster=${FERROTRAIN_E2E_CLUSTER:-ferrotrain-e2e}
missing=()
for tool in docker kind; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "e2e skipped: ${missing[*]} not installed (the kind suite needs Docker and kind)"
  exit 0
fi
if ! docker info >/dev/null 2>&1; then
  echo "e2e skipped: docker is installed but no Docker engine answers"
  exit 0
fi
for tool in kubectl helm; do
  command -v "$tool" >/dev/null 2>&1 || { echo "e2e FAILED: $tool is not installed" >&2; exit 1; }
done

fail() { echo "e2e FAILED: $*" >&2; exit 1; }
jobfield() { kubectl get tj "$1" -o "jsonpath={$2}"; }
wait_phase() { # job, phase, seconds
  local deadline=$((SECONDS + $3))
  until [ "$(jobfield "$1" .status.phase)" = "$2" ]; do
    [ "$(jobfield "$1" .status.phase)" = Failed ] && fail "$1 failed: $(jobfield "$1" .status.message)"
    ((SECONDS < deadline)) || fail "$1 did not reach $2 within $3 s (phase $(jobfield "$1" .status.phase))"
    sleep 3
  done
}
wait_step_above() { # job, step, seconds
  local deadline=$((SECONDS + $3))
  until [ "$(jobfield "$1" .status.progress.step || echo 0)" -gt "$2" ] 2>/dev/null; do
    ((SECONDS < deadline)) || fail "$1 did not pass step $2 within $3 s"
    sleep 2
  done
}

cleanup() { kind delete cluster --name "$cluster" >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "==> kind cluster $cluster"
kind create cluster --name "$cluster" --wait 120s

echo "==> images"
docker build -t ferrotrain:e2e -f operator/Dockerfile .
docker build -t ferrotrain-trainer:e2e -f trainer/Dockerfile .
kind load docker-image --name "$cluster" ferrotrain:e2e ferrotrain-trainer:e2e

echo "==> chart with MinIO"
helm install ferrotrain charts/ferrotrain --namespace ferrotrain --create-namespace --wait --timeout 5m \
  --set image.tag=e2e --set trainerImage.tag=e2e --set image.pullPolicy=Never --set minio.enabled=true
kubectl -n ferrotrain get secret ferrotrain-minio -o json \
  | sed -e 's/"namespace": "ferrotrain"/"namespace": "default"/' -e '/"resourceVersion"/d' -e '/"uid"/d' -e '/"creationTimestamp"/d' \
  | kubectl apply -f -

echo "==> examples/mnist-k8s.yaml to Succeeded"
kubectl apply -f examples/mnist-k8s.yaml
wait_phase mnist Succeeded 900
[ "$(jobfield mnist .status.progress.percent)" = 100 ] || fail "progress is not 100 %"
jobfield mnist .status.checkpoint.uri | grep -q '^s3://ferrotrain/mnist/manifests/' || fail "no checkpoint in status"
accuracy=$(jobfield mnist '.status.progress.metrics.valAccuracy')
echo "mnist: test accuracy $accuracy, goodput $(jobfield mnist .status.goodput.ratio)"

echo "==> a worker killed mid-run: the gang resumes from its checkpoint"
sed -e 's/name: mnist$/name: mnist-chaos/' -e 's|s3://ferrotrain/mnist|s3://ferrotrain/mnist-chaos|' examples/mnist-k8s.yaml | kubectl apply -f -
wait_phase mnist-chaos Running 300
until [ -n "$(jobfield mnist-chaos .status.checkpoint.step)" ]; do sleep 3; done
checkpointed=$(jobfield mnist-chaos .status.checkpoint.step)
kubectl delete pod mnist-chaos-worker-1 --wait=false
wait_phase mnist-chaos Running 300
[ "$(jobfield mnist-chaos .status.attempt)" = 2 ] || fail "expected attempt 2, got $(jobfield mnist-chaos .status.attempt)"
wait_step_above mnist-chaos "$checkpointed" 300
wait_phase mnist-chaos Succeeded 900

echo "==> suspend and resume"
sed -e 's/name: mnist$/name: mnist-suspend/' -e 's|s3://ferrotrain/mnist|s3://ferrotrain/mnist-suspend|' examples/mnist-k8s.yaml | kubectl apply -f -
wait_phase mnist-suspend Running 300
wait_step_above mnist-suspend 50 300
kubectl patch tj mnist-suspend --type merge -p '{"spec":{"runPolicy":{"suspend":true}}}'
wait_phase mnist-suspend Suspended 120
kubectl wait --for=delete pod -l ferrotrain.io/job=mnist-suspend --timeout=120s
suspended_at=$(jobfield mnist-suspend .status.checkpoint.step)
kubectl patch tj mnist-suspend --type merge -p '{"spec":{"runPolicy":{"suspend":false}}}'
wait_phase mnist-suspend Running 300
wait_step_above mnist-suspend "$suspended_at" 300
[ "$(jobfield mnist-suspend .status.restarts.app)" = 0 ] || fail "resuming charged a budget"

echo "==> the API server rejects a bad manifest"
if kubectl apply -f tests/manifests/invalid/27-min-replicas-above-replicas.yaml 2>/tmp/ferrotrain-e2e-reject; then
  fail "a manifest with minReplicas > replicas was accepted"
fi
grep -q "minReplicas must not exceed replicas" /tmp/ferrotrain-e2e-reject || fail "unexpected rejection: $(cat /tmp/ferrotrain-e2e-reject)"
if kubectl apply -f tests/manifests/invalid/01-replicas-zero.yaml 2>/dev/null; then
  fail "a manifest with replicas 0 was accepted"
fi

echo "e2e passed"
