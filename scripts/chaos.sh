#!/usr/bin/env bash
# The chaos schedule: 20 seeded faults (kill -9, SIGTERM, SIGSTOP/SIGCONT of workers, a store
# outage through the fault proxy, a restart of the runner) over one local run checkpointing to
# a local SeaweedFS, compared with an undisturbed run. Prints the schedule and the figures.
#   scripts/chaos.sh            # seed 7
#   FERROTRAIN_CHAOS_SEED=3 scripts/chaos.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
trap 'scripts/s3-server.sh stop' EXIT
eval "$(scripts/s3-server.sh start)"
cargo test --locked -p ferrotrain-tests --test chaos -- --ignored --nocapture
