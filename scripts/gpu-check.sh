#!/usr/bin/env bash
# First contact with a GPU: run on a machine with one NVIDIA GPU, from binaries built elsewhere:
#   cargo build --release -p ferrotrain-trainer --features cuda
#   cargo build --release -p ferrotrain --features cuda
#   scripts/gpu-check.sh [BIN_DIR]        # default target/release; about 5 minutes
# Reports the GPU, driver, NVRTC and CUDA headers it finds; trains MNIST MLP and LeNet-5 in fp32,
# bf16 and fp16 on the GPU and in fp32 on the CPU (native kernels) for a few hundred steps; prints
# samples/s (the first step, which compiles the kernels, is not counted), the final loss (bf16
# and fp16 must differ from fp32), the peak GPU memory, and runs a two-rank gang on the one GPU.
# Without a GPU the GPU runs are reported as unavailable and the CPU runs still run.
# Writes everything under ${FERROTRAIN_GPU_CHECK_OUT:-gpu-check}/ and the table to summary.txt.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
bin=${1:-target/release}
out=${FERROTRAIN_GPU_CHECK_OUT:-gpu-check}
steps=${FERROTRAIN_GPU_CHECK_STEPS:-300}
trainer=$bin/ferrotrain-trainer
cli=$bin/ferrotrain
mkdir -p "$out"
summary=$out/summary.txt
: >"$summary"
say() { printf '%s\n' "$*" | tee -a "$summary"; }

[ -x "$trainer" ] || { echo "gpu-check: $trainer missing (build it with --features cuda)" >&2; exit 2; }
export FERROTRAIN_DATA_DIR=${FERROTRAIN_DATA_DIR:-$PWD/data}

say "== environment"
if command -v nvidia-smi >/dev/null 2>&1; then
  say "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
else
  say "gpu: nvidia-smi not found"
fi
say "libcuda: $(ldconfig -p 2>/dev/null | grep -m1 'libcuda.so.1' | awk '{print $NF}' || true)"
say "nvrtc: $(ldconfig -p 2>/dev/null | grep -m1 'libnvrtc.so' | awk '{print $NF}' || true) ${CUDA_PATH:+(CUDA_PATH=$CUDA_PATH)}"
include=${CUDA_PATH:-/usr/local/cuda}/include
for header in cuda_runtime.h cuda_fp16.h cuda_bf16.h; do
  if [ -f "$include/$header" ]; then say "header: $include/$header"; else say "header: $include/$header MISSING"; fi
done

# Peak GPU memory while a command runs (MiB), sampled every 0.5 s.
peak_memory() { # pid
  local peak=0 used
  while kill -0 "$1" 2>/dev/null; do
    used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1)
    [[ "$used" =~ ^[0-9]+$ ]] && ((used > peak)) && peak=$used
    sleep 0.5
  done
  echo "$peak"
}

# One standalone run; prints "samples/s loss peak-MiB exit".
train() { # name, model yaml, device, precision
  local config=$out/$1.yaml log=$out/$1.log pid peak code
  cat >"$config" <<YAML
model: $2
dataset: {type: mnist}
batchSize: 64
maxSteps: $steps
optimizer: {type: adam, lr: 0.001}
precision: $4
device: $3
seed: 7
YAML
  timeout 240 "$trainer" --config "$config" >"$log" 2>&1 &
  pid=$!
  peak=0
  if command -v nvidia-smi >/dev/null 2>&1 && [ "$3" != cpu ]; then peak=$(peak_memory "$pid"); fi
  wait "$pid"
  code=$?
  local done_line
  done_line=$(grep '"event":"completed"' "$log" | tail -1)
  if [ -z "$done_line" ]; then
    echo "- - $peak $code"
    return
  fi
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(round(d["samplesPerSecond"]), d["loss"], sys.argv[2], sys.argv[3])' \
    "$done_line" "$peak" "$code"
}

say ""
say "== training, $steps steps, batch 64 (samples/s after the first step)"
printf '%-8s %-6s %-5s %12s %12s %9s %5s\n' model engine prec samples/s final-loss gpu-MiB exit | tee -a "$summary"
declare -A losses
for model in mlp lenet; do
  case $model in
    mlp) spec='{type: mlp, hidden: [256, 128], dropout: 0.1}' ;;
    lenet) spec='{type: lenet}' ;;
  esac
  for run in "cpu fp32" "cuda fp32" "cuda bf16" "cuda fp16"; do
    read -r device precision <<<"$run"
    read -r rate loss peak code < <(train "$model-$device-$precision" "$spec" "$device" "$precision")
    losses[$model-$device-$precision]=$loss
    engine=$([ "$device" = cpu ] && echo native || echo burn)
    printf '%-8s %-6s %-5s %12s %12.12s %9s %5s\n' "$model" "$engine" "$precision" "$rate" "$loss" "$peak" "$code" \
      | tee -a "$summary"
    if [ "$code" != 0 ]; then
      say "  $(grep -m1 -iE 'error|cuda|panick' "$out/$model-$device-$precision.log" | cut -c1-200)"
    fi
  done
  for precision in bf16 fp16; do
    a=${losses[$model-cuda-fp32]} b=${losses[$model-cuda-$precision]}
    if [ "$a" = - ] || [ "$b" = - ]; then
      say "check $model $precision: not run on a GPU"
    elif [ "$a" = "$b" ]; then
      say "check $model $precision: FAILED, the loss equals fp32's ($a): it computed in fp32"
    else
      say "check $model $precision: differs from fp32 ($b vs $a)"
    fi
  done
done

say ""
say "== a two-rank gang on one GPU (ferrotrain run)"
if [ -x "$cli" ]; then
  cat >"$out/gang.yaml" <<YAML
apiVersion: ferrotrain.io/v1alpha1
kind: TrainingJob
metadata: {name: gpu-gang}
spec:
  workers: {replicas: 2}
  trainer:
    model: {type: mlp, hidden: [256, 128]}
    dataset: {type: mnist}
    batchSize: 64
    maxSteps: $steps
    optimizer: {type: adam, lr: 0.001}
    device: auto
YAML
  rm -rf "$out/state"
  timeout 300 "$cli" run "$out/gang.yaml" --state-dir "$out/state" --output json >"$out/gang.log" 2>&1
  code=$?
  say "ferrotrain run exit $code; $(grep -h -m1 'compute device' "$out"/state/gpu-gang/logs/*rank-0.log 2>/dev/null | cut -c1-160)"
else
  say "skipped: $cli missing (build ferrotrain with --features cuda)"
fi
say ""
say "summary written to $summary"
