#!/usr/bin/env bash
# Regenerates the chart's copies of the TrainingJob and TrainingSweep CRDs from the Rust types.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo run --quiet -p ferrotrain-crds --bin crdgen > charts/ferrotrain/crds/trainingjobs.ferrotrain.io.yaml
cargo run --quiet -p ferrotrain-crds --bin crdgen sweep > charts/ferrotrain/crds/trainingsweeps.ferrotrain.io.yaml
echo "wrote charts/ferrotrain/crds/trainingjobs.ferrotrain.io.yaml and trainingsweeps.ferrotrain.io.yaml"
