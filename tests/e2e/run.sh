#!/usr/bin/env bash
# Ferrotrain end to end on a kind cluster: build and load the images, install MinIO and the chart,
# train examples/mnist-k8s.yaml to Succeeded, kill a worker mid-run and check the gang resumes from
# its checkpoint, suspend and resume a job, and check that the API server rejects a bad manifest.
# Runs only with FERROTRAIN_E2E=1 (the e2e workflow); needs docker, kind, kubectl and helm. Where
# docker or kind is missing it says which and exits 0; any other missing tool or failed check exits 1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cluster=${FERROTRAIN_E2E_CLUSTER:-ferrotrain-e2e}
if [ "${FERROTRAIN_E2E:-}" != 1 ]; then
  echo "e2e skipped: set FERROTRAIN_E2E=1 to build the images and run the kind suite (the e2e workflow does)"
  exit 0
fi
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

# On failure: what happened, for the CI log (job status and events, operator logs, kind's logs).
dump() {
  kubectl get tj -A -o wide || true
  kubectl describe tj -A || true
  kubectl get pods -A -o wide || true
  kubectl -n ferrotrain logs -l app.kubernetes.io/name=ferrotrain --all-containers --tail=200 || true
  kind export logs --name "$cluster" "${FERROTRAIN_E2E_LOGS:-/tmp/ferrotrain-e2e-logs}" || true
}
fail() { echo "e2e FAILED: $*" >&2; dump >&2; exit 1; }
jobfield() { kubectl get tj "$1" -o "jsonpath={$2}"; }
wait_phase() { # job, phase, seconds
  local deadline=$((SECONDS + $3))
  until [ "$(jobfield "$1" .status.phase)" = "$2" ]; do
    [ "$(jobfield "$1" .status.phase)" = Failed ] && fail "$1 failed: $(jobfield "$1" .status.message)"
    ((SECONDS < deadline)) || fail "$1 did not reach $2 within $3 s (phase $(jobfield "$1" .status.phase))"
    sleep 3
  done
}
wait_field() { # job, jsonpath, value, seconds
  local deadline=$((SECONDS + $4))
  until [ "$(jobfield "$1" "$2")" = "$3" ]; do
    ((SECONDS < deadline)) || fail "$1: $2 did not become $3 within $4 s (it is $(jobfield "$1" "$2"))"
    sleep 2
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
# `kind load docker-image` fails with Docker's containerd image store; an archive works with both.
docker save -o /tmp/ferrotrain-e2e-images.tar ferrotrain:e2e ferrotrain-trainer:e2e
kind load image-archive --name "$cluster" /tmp/ferrotrain-e2e-images.tar

echo "==> chart with MinIO"
helm install ferrotrain charts/ferrotrain --namespace ferrotrain --create-namespace --wait --timeout 5m \
  --set image.tag=e2e --set trainerImage.tag=e2e --set image.pullPolicy=Never --set minio.enabled=true
# The jobs run in `default`: the same credentials as the chart's MinIO (values minio.rootUser,
# minio.rootPassword), created directly.
kubectl -n default create secret generic ferrotrain-minio \
  --from-literal=AWS_ACCESS_KEY_ID=ferrotrain --from-literal=AWS_SECRET_ACCESS_KEY=ferrotrain-dev-only

echo "==> examples/mnist-k8s.yaml to Succeeded"
kubectl apply -f examples/mnist-k8s.yaml
wait_phase mnist Succeeded 900
[ "$(jobfield mnist .status.progress.percent)" = 100 ] || fail "progress is not 100 %"
jobfield mnist .status.checkpoint.uri | grep -q '^s3://ferrotrain/mnist/manifests/' || fail "no checkpoint in status"
accuracy=$(jobfield mnist '.status.progress.metrics.valAccuracy')
echo "mnist: test accuracy $accuracy, goodput $(jobfield mnist .status.goodput.ratio)"

# The chaos and suspend jobs train for 30 epochs, so that the deletion and the suspension land
# while they run, not after they have finished; each is deleted once its check has passed.
long_job() { # name
  sed -e "s/name: mnist\$/name: $1/" -e "s|s3://ferrotrain/mnist|s3://ferrotrain/$1|" -e 's/epochs: 3$/epochs: 30/' \
    examples/mnist-k8s.yaml | kubectl apply -f -
}

echo "==> a worker killed mid-run: the gang resumes from its checkpoint"
long_job mnist-chaos
wait_phase mnist-chaos Running 300
deadline=$((SECONDS + 300))
until [ -n "$(jobfield mnist-chaos .status.checkpoint.step)" ]; do
  ((SECONDS < deadline)) || fail "mnist-chaos committed no checkpoint within 300 s"
  sleep 3
done
checkpointed=$(jobfield mnist-chaos .status.checkpoint.step)
kubectl delete pod -l ferrotrain.io/job=mnist-chaos,ferrotrain.io/rank=1 --wait=false
wait_field mnist-chaos .status.attempt 2 300
wait_phase mnist-chaos Running 300
wait_step_above mnist-chaos "$checkpointed" 300
kubectl delete tj mnist-chaos

echo "==> suspend and resume"
long_job mnist-suspend
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
kubectl delete tj mnist-suspend

echo "==> the API server rejects a bad manifest"
if kubectl apply -f tests/manifests/invalid/27-min-replicas-above-replicas.yaml 2>/tmp/ferrotrain-e2e-reject; then
  fail "a manifest with minReplicas > replicas was accepted"
fi
grep -q "minReplicas must not exceed replicas" /tmp/ferrotrain-e2e-reject || fail "unexpected rejection: $(cat /tmp/ferrotrain-e2e-reject)"
if kubectl apply -f tests/manifests/invalid/01-replicas-zero.yaml 2>/dev/null; then
  fail "a manifest with replicas 0 was accepted"
fi

echo "e2e passed"
