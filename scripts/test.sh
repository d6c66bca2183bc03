#!/usr/bin/env bash
# Ferrotrain's test command: formatting, lints, then every unit and integration test.
# Installs what it needs (idempotent) and prints the elapsed time. The cluster suites run against
# a control plane that scripts/cluster.sh builds from source (Go 1.26); the real-node suite adds a
# kubelet with containerd (scripts/node.sh, needs root) running the images of scripts/images.sh.
# Everything listens on 127.0.0.1 or on the node address, which only this machine reaches.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$(date +%s)
step() { printf '\n==> %s (%ss)\n' "$1" "$(( $(date +%s) - started ))"; }
# A hang guard for the long suites: one that runs past its limit (several times its usual time)
# fails here, naming itself, instead of running into CI's limit unexplained.
guarded() {
  local limit=$1
  shift
  local rc=0
  timeout --kill-after=30 "$limit" "$@" || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "hang guard: still running after ${limit}s, stopped: $*" >&2
  fi
  return "$rc"
}

step "toolchain"
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi
cargo --version

step "cargo fmt --check"
cargo fmt --all --check

# One feature set for every test build: the workspace's defaults plus the GPU engine on burn's
# CPU backend (`ferrotrain-trainer/burn`), whose tests compare it with the native kernels. It
# changes nothing else (the CPU engine stays the default), so one build serves every test step.
test_features=(--features ferrotrain-trainer/burn)

# Lints of every feature set the project ships. Each clippy run after the first checks only what
# its features change.
step "cargo clippy (default features)"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The GPU engine: burn's CUDA backend compiles without a CUDA toolkit. With it, the operator's
# heap profiler of scripts/bench-scale.sh (FERROTRAIN_SCALE_HEAP_PROFILE=1).
step "cargo clippy --features ferrotrain-trainer/cuda,ferrotrain/heap-profile (GPU engine, heap profiler)"
cargo clippy --workspace --all-targets --locked --features ferrotrain-trainer/cuda,ferrotrain/heap-profile \
  -- -D warnings
# The operator image is built without the embedded trainer: keep that build compiling and clean.
step "cargo clippy -p ferrotrain --no-default-features (the operator image's build)"
cargo clippy -p ferrotrain --no-default-features --locked -- -D warnings

# Unit and integration tests, the GPU engine's on burn's CPU backend, and every committed fuzz
# input replayed through its target's property (tests/tests/fuzz_corpus.rs).
step "cargo test"
cargo test --workspace --locked "${test_features[@]}"

# The binary the tests just built (with the same features, so nothing is compiled again).
step "ferrotrain validate examples/*.yaml"
"${CARGO_TARGET_DIR:-target}/debug/ferrotrain" validate examples/*.yaml

# Exported ONNX models run in onnxruntime (installed from PyPI beside the other tools), against
# Ferrotrain's own logits on 1,000 MNIST test images.
step "ONNX export: onnxruntime computes Ferrotrain's logits"
onnxruntime_dir=.tools/onnxruntime
[[ -d $onnxruntime_dir/onnxruntime ]] || python3 -m pip install --quiet --disable-pip-version-check \
  --target "$onnxruntime_dir" onnxruntime==1.32.0 >&2
FERROTRAIN_ONNXRUNTIME="$PWD/$onnxruntime_dir" cargo test --workspace --locked "${test_features[@]}" \
  --test export -- --ignored --nocapture

step "Helm chart: lint (helm 3, 4), kubernetes-validate, shellcheck, RBAC and Pod Security tests"
helm4=$(bash scripts/check-chart.sh)
# The main test build's packages and features, so nothing is compiled again.
FERROTRAIN_HELM="$helm4" cargo test --workspace --locked "${test_features[@]}" --test chart -- --ignored

step "kind e2e suite (runs only where Docker and kind exist)"
bash tests/e2e/run.sh

step "S3 tests against a local SeaweedFS, faults through the proxy, a full disk"
trap 'scripts/s3-server.sh stop; scripts/kueue.sh stop; scripts/node.sh stop; scripts/cluster.sh stop' EXIT
eval "$(scripts/s3-server.sh start)"
cargo test --workspace --locked "${test_features[@]}" --test s3 --test local_run --test s3_faults \
  --test full_disk -- --ignored

# etcd, kube-apiserver, kube-scheduler, kube-controller-manager and kwok, built from their
# released sources (cached outside the clone by the hash of tests/cluster/*/go.sum).
step "control plane: build or reuse the components, and Kueue"
bash scripts/cluster.sh build
bash scripts/kueue.sh build
step "real node: containerd, runc, CNI plugins (apt)"
bash scripts/node.sh deps
# The API server listens on the node address, which the real node's pods can reach.
node_address=10.250.0.1
step "control plane: start"
eval "$(FERROTRAIN_CLUSTER_ADDRESS=$node_address scripts/cluster.sh start)"
# Kueue manages only the namespaces of the queue scenarios (label ferrotrain.io/kueue=enabled).
eval "$(scripts/kueue.sh start)"
step "cluster suites (the real ferrotrain operator against the control plane, Kueue's queues)"
# One at a time: the scenarios share the fake nodes, and some take a node away.
guarded 2400 cargo test --workspace --locked "${test_features[@]}" --test cluster -- --ignored \
  --test-threads=1

step "images: trainer and operator as OCI image tars (no container engine)"
bash scripts/images.sh
step "real node: start, import the images"
bash scripts/node.sh start
scripts/s3-server.sh stop
eval "$(FERROTRAIN_S3_ADDRESS=$node_address scripts/s3-server.sh start)"
step "real-node suite: helm install, training in containers, kills, OOM, image pull errors"
# The images agree with their Dockerfiles; then the scenarios, one at a time on the one node
# (their figures printed: --nocapture).
guarded 1200 cargo test --workspace --locked "${test_features[@]}" --test images --test node -- --ignored \
  --nocapture --test-threads=1
scripts/node.sh stop
scripts/kueue.sh stop
scripts/cluster.sh stop

step "done"
echo "scripts/test.sh passed in $(( $(date +%s) - started ))s"
