#!/usr/bin/env bash
# Ferrotrain's test command: formatting, lints, then every unit and integration test.
# Installs what it needs (idempotent) and prints the elapsed time. The cluster suites run against
# a control plane that scripts/cluster.sh builds from source (Go 1.26) and starts on 127.0.0.1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$(date +%s)
step() { printf '\n==> %s (%ss)\n' "$1" "$(( $(date +%s) - started ))"; }

step "toolchain"
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi
cargo --version

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# The operator image is built without the embedded trainer: keep that build compiling and clean.
step "cargo clippy -p ferrotrain --no-default-features (the operator image's build)"
cargo clippy -p ferrotrain --no-default-features --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

# The binary the tests just built (with the same features, so nothing is compiled again).
step "ferrotrain validate examples/*.yaml"
"${CARGO_TARGET_DIR:-target}/debug/ferrotrain" validate examples/*.yaml

# The GPU engine: lints of the `cuda` build (burn's CUDA backend compiles without a CUDA toolkit),
# and its tests on burn's CPU backend, which compare it with the native kernels. No GPU is needed.
step "trainer GPU engine: clippy --features cuda, tests --features burn"
cargo clippy -p ferrotrain-trainer --all-targets --locked --features cuda -- -D warnings
cargo test -p ferrotrain-trainer --locked --features burn --lib

step "Helm chart: lint (helm 3, 4), kubernetes-validate, shellcheck, RBAC and Pod Security tests"
helm4=$(bash scripts/check-chart.sh)
# `--workspace` keeps the feature set of the main test build, so nothing is compiled again.
FERROTRAIN_HELM="$helm4" cargo test --workspace --locked --test chart -- --ignored

step "kind e2e suite (runs only where Docker and kind exist)"
bash tests/e2e/run.sh

step "S3 tests against a local SeaweedFS, faults through the proxy, a full disk"
trap 'scripts/s3-server.sh stop; scripts/cluster.sh stop' EXIT
eval "$(scripts/s3-server.sh start)"
cargo test --workspace --locked --test s3 --test local_run --test s3_faults --test full_disk \
  -- --ignored

# etcd, kube-apiserver, kube-scheduler, kube-controller-manager and kwok, built from their
# released sources (cached outside the clone by the hash of tests/cluster/*/go.sum).
step "control plane: build or reuse the components"
bash scripts/cluster.sh build
step "control plane: start"
eval "$(scripts/cluster.sh start)"
step "cluster suites (the real ferrotrain operator against the control plane)"
# One at a time: the scenarios share the fake nodes, and some take a node away.
cargo test --workspace --locked --test cluster -- --ignored --test-threads=1
scripts/cluster.sh stop

# Coverage-guided fuzzing of the parsers (cargo-fuzz on the stable toolchain), each target for
# a bounded time from the committed seed corpus; a crash fails the run.
step "fuzz targets (${FUZZ_SECONDS:-60}s each)"
bash scripts/fuzz.sh

step "done"
echo "scripts/test.sh passed in $(( $(date +%s) - started ))s"
