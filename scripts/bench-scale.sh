#!/usr/bin/env bash
# The operator at scale, on a fresh control plane of 100 fake nodes for each size:
#   scripts/bench-scale.sh [JOBS...]        # default: 1000 3000 5000; 10000 runs too
# Each size creates JOBS TrainingJobs of 4 workers in a burst, reports progress for every running
# job every 2 s, then completes them, and prints a report (tests/src/bin/scale-bench.rs).
# Environment: FERROTRAIN_SCALE_STEADY_SECONDS (steady-state window, default 60),
# FERROTRAIN_SCALE_OPERATOR_ARGS (extra operator arguments, e.g. "--api-qps 300 --api-burst 500"),
# FERROTRAIN_SCALE_REPLICAS=2 (a second operator replica beside the leader, reported too),
# FERROTRAIN_SCALE_HEAP_PROFILE=1 (the operator built with its heap profiler: allocations are slower;
# the profile, written at the end of each size, is printed by owner; the timings are not comparable).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 3000 5000)
steady=${FERROTRAIN_SCALE_STEADY_SECONDS:-60}

# The operator as shipped (without the trainer, Cargo.toml's size-optimised `operator` profile);
# the driver needs no optimisation.
profile_features=()
if [ "${FERROTRAIN_SCALE_HEAP_PROFILE:-0}" = 1 ]; then
  profile_features=(--features heap-profile)
fi
cargo build --profile operator --locked -p ferrotrain --no-default-features "${profile_features[@]}" --bin ferrotrain
cargo build --locked -p ferrotrain-tests --bin scale-bench --bin heap-owners
# Another build to compare: FERROTRAIN_OPERATOR_BINARY.
export FERROTRAIN_OPERATOR_BINARY=${FERROTRAIN_OPERATOR_BINARY:-$PWD/target/operator/ferrotrain}
export FERROTRAIN_CLUSTER_DIR=$PWD/.tools/cluster-scale
export FERROTRAIN_CLUSTER_NODES=100
trap 'scripts/cluster.sh stop' EXIT

bash scripts/cluster.sh build
for jobs in "${sizes[@]}"; do
  # Room for every worker with a quarter to spare: 5,000 jobs are 20,000 pods, 200 a node.
  node_pods=$((jobs * 4 * 5 / 4 / FERROTRAIN_CLUSTER_NODES))
  export FERROTRAIN_CLUSTER_NODE_PODS=$((node_pods > 256 ? node_pods : 256))
  environment=$(scripts/cluster.sh start)
  eval "$environment"
  if [ ${#profile_features[@]} -gt 0 ]; then
    export FERROTRAIN_HEAP_PROFILE=$FERROTRAIN_CLUSTER_DIR/../heap-$jobs.json
  fi
  target/debug/scale-bench "$jobs" "$steady"
  if [ ${#profile_features[@]} -gt 0 ]; then
    echo "Heap profile of the operator, $jobs jobs ($FERROTRAIN_HEAP_PROFILE):"
    target/debug/heap-owners "$FERROTRAIN_HEAP_PROFILE"
  fi
  scripts/cluster.sh stop
done
