#!/usr/bin/env bash
# Runs the sweep examples on this machine and prints the figures docs/benchmarks.md records:
# the best trial of a random and of an ASHA search (12 trials each), the steps ASHA trained
# against the steps of the same 12 trials run to completion, and population-based training
# against the median of the same four starting points trained with fixed hyperparameters for
# the same steps. About ten minutes on two cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --quiet -p ferrotrain
ferrotrain="$PWD/target/debug/ferrotrain"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The fixed-hyperparameter baseline: a random search with PBT's seed draws the same four
# starting points (trial i of either is sample i of the seed).
sed -e 's/name: mnist-pbt/name: mnist-pbt-baseline/' \
    -e 's/    type: pbt/    type: random/' \
    -e '/intervalSteps:/d' -e '/population:/d' \
    -e 's/maxTrials: 16/maxTrials: 4/' examples/sweep-pbt.yaml > "$work/sweep-pbt-baseline.yaml"

run() {
    local file="$1" name="$2"
    local started=$SECONDS
    "$ferrotrain" sweep "$file" --state-dir "$work/state" > "$work/$name.out" 2> "$work/$name.err" || {
        cat "$work/$name.out" "$work/$name.err" >&2
        exit 1
    }
    echo "== $name ($((SECONDS - started)) s)"
    sed -n '/^trial /,$p' "$work/$name.out"
}

run examples/sweep-random.yaml random
run examples/sweep-asha.yaml asha
run examples/sweep-pbt.yaml pbt
run "$work/sweep-pbt-baseline.yaml" pbt-baseline

best() { sed -n 's/^best: [^ ]* with valAccuracy \([0-9.]*\).*/\1/p' "$work/$1.out"; }
median() { sed -n 's/^median valAccuracy of the [a-z ]*: \([0-9.]*\)/\1/p' "$work/$1.out"; }
echo
echo "== figures"
echo "random search, 12 trials: best valAccuracy $(best random)"
echo "asha, 12 trials: best valAccuracy $(best asha); $(grep '^trained steps' "$work/asha.out")"
echo "pbt, population 4: best valAccuracy $(best pbt), median of the members $(median pbt); fixed hyperparameters, same 4 starting points and steps: median $(median pbt-baseline), best $(best pbt-baseline)"
