#!/usr/bin/env bash
# Regenerates the chart's copy of the TrainingJob CRD from the Rust types.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo run --quiet -p ferrotrain-crds --bin crdgen > charts/ferrotrain/crds/trainingjobs.ferrotrain.io.yaml
echo "wrote charts/ferrotrain/crds/trainingjobs.ferrotrain.io.yaml"
