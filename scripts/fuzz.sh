#!/usr/bin/env bash
# Runs every fuzz target of tests/fuzz for a bounded time each (FUZZ_SECONDS, default 60),
# starting from the committed seed corpus, and fails on the first crash. cargo-fuzz is installed
# if missing; it runs on the stable toolchain with `--sanitizer none` (coverage-guided, panics
# and overflow checks are the findings). New inputs go to a temporary corpus, not to the seeds.
# The targets are built unoptimised by default (FUZZ_BUILD=dev): that build takes half the time of
# an optimised one on two cores, which matters more to a one-minute run from the seeds than
# executions per second; FUZZ_BUILD=release builds them optimised for long runs (10-100x the
# executions per second). The ordinary test run does not fuzz: `cargo test` replays every
# committed input through the same properties (tests/tests/fuzz_corpus.rs); a scheduled workflow
# runs this script. A crash found here is fixed, then its input is committed under
# tests/fuzz/seeds/<target>/ so that every later test run replays it.
# Usage: scripts/fuzz.sh [TARGET...]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${FUZZ_SECONDS:-60}
case ${FUZZ_BUILD:-dev} in
  dev) profile=--dev ;;
  release) profile=--release ;;
  *) echo "FUZZ_BUILD must be dev or release, not ${FUZZ_BUILD}" >&2; exit 2 ;;
esac
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(manifest progress_report checkpoint_manifest idx csv)
fi

# One build of every target, before the clock of the first run starts.
cargo fuzz build --fuzz-dir tests/fuzz --sanitizer none "$profile"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in "${targets[@]}"; do
  mkdir -p "$work/$target"
  log="$work/$target.log"
  if ! cargo fuzz run --fuzz-dir tests/fuzz --sanitizer none "$profile" "$target" \
      "$work/$target" "tests/fuzz/seeds/$target" \
      -- -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
      -artifact_prefix="$work/" >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz target $target failed; the input that crashed it (commit it under tests/fuzz/seeds/$target/ with the fix):" >&2
    for crash in "$work"/crash-* "$work"/timeout-* "$work"/oom-*; do
      [ -e "$crash" ] && { echo "$crash" >&2; base64 -w0 "$crash" >&2; echo >&2; }
    done
    exit 1
  fi
  runs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -1)
  corpus=$(find "$work/$target" -type f | wc -l)
  echo "fuzz $target: ${runs:-no summary} ($corpus new corpus inputs, no crash)"
done
