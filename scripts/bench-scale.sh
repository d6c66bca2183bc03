#!/usr/bin/env bash
# The operator at scale, on a fresh control plane of 100 fake nodes for each size:
#   scripts/bench-scale.sh [JOBS...]        # default: 1000 3000 5000
# Each size creates JOBS TrainingJobs of 4 workers in a burst, reports progress for every running
# job every 2 s, then completes them, and prints a report (tests/src/bin/scale-bench.rs).
# Environment: FERROTRAIN_SCALE_STEADY_SECONDS (steady-state window, default 60),
# FERROTRAIN_SCALE_OPERATOR_ARGS (extra operator arguments, e.g. "--api-qps 300 --api-burst 500").
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 3000 5000)
steady=${FERROTRAIN_SCALE_STEADY_SECONDS:-60}

# The operator as shipped (release, without the trainer); the driver needs no optimisation.
cargo build --release --locked -p ferrotrain --no-default-features --bin ferrotrain
cargo build --locked -p ferrotrain-tests --bin scale-bench
# Another build to compare: FERROTRAIN_OPERATOR_BINARY.
export FERROTRAIN_OPERATOR_BINARY=${FERROTRAIN_OPERATOR_BINARY:-$PWD/target/release/ferrotrain}
export FERROTRAIN_CLUSTER_DIR=$PWD/.tools/cluster-scale
export FERROTRAIN_CLUSTER_NODES=100
# 5,000 jobs are 20,000 pods: 200 a node.
export FERROTRAIN_CLUSTER_NODE_PODS=256
trap 'scripts/cluster.sh stop' EXIT

bash scripts/cluster.sh build
for jobs in "${sizes[@]}"; do
  environment=$(scripts/cluster.sh start)
  eval "$environment"
  target/debug/scale-bench "$jobs" "$steady"
  scripts/cluster.sh stop
done
