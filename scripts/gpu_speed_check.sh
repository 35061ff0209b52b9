#!/usr/bin/env bash
# Simulation speed of the CIFAR-10 presets' nets on one GPU, with the fused Triton neuron kernel
# against the eager neuron loop, plus one whole-test-set grid point to T=2048. Synthetic 32x32
# images and random weights (max_act thresholds x 0.8), so no data has to travel. Every result
# is a JSON file in $OUT (default ./device-out); the log says what ran and how long it took.
#
#   scripts/gpu_speed_check.sh
#
# Steps: (1) the compiled kernel against eager on the GPU, bit for bit (tests/kernel_check.py,
# and the CUDA tests of tests/test_kernels.py where pytest is installed); (2) before / after:
# eager vs kernel, exact fp32 (TF32 off) and bf16, batch IMAGES, T=TIMESTEPS; (3) the kernel with
# channels_last off / on and chunks auto / 8 / 32 in bf16; (4) a larger batch in bf16;
# (5) one grid point: GRID_IMAGES images to T=GRID_T in bf16, every power of two scored.
#
# Environment: IMAGES [500], BIG_IMAGES [1000], TIMESTEPS [256], GRID_IMAGES [10000],
# GRID_T [2048], DEVICE [cuda], PYTHON [python3], OUT [./device-out]. Toy run on CPU (the CPU
# kernel stands in for the GPU one):
#   DEVICE=cpu IMAGES=4 BIG_IMAGES=8 TIMESTEPS=8 GRID_IMAGES=8 GRID_T=64 scripts/gpu_speed_check.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
out=${OUT:-$repo/device-out}
images=${IMAGES:-500}
big=${BIG_IMAGES:-1000}
steps=${TIMESTEPS:-256}
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$repo/.devdata/site:$repo/src:$repo:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
bench=("$py" benchmarks/bench_presets.py --device "$device" --timesteps "$steps")
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$out/log.txt"; }

log "start: $(git rev-parse --short HEAD 2>/dev/null || echo unknown) on $device"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true; } \
  | tee -a "$out/log.txt"
"$py" -c "import torch; print('torch', torch.__version__)" | tee -a "$out/log.txt"
"$py" -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -1 | tee -a "$out/log.txt"

if [ "$device" = cuda ]; then
  log "1. exactness of the compiled kernel on the GPU"
  "$py" tests/kernel_check.py --device cuda > "$out/kernel_check_cuda.json"
  "$py" -c "import json,sys; r=json.load(open(sys.argv[1])); bad={k:v for k,v in r['cases'].items() if v}; print(len(r['cases']), 'cases,', len(bad), 'differ', bad)" "$out/kernel_check_cuda.json" | tee -a "$out/log.txt"
  if "$py" -c "import pytest" 2>/dev/null; then
    "$py" -m pytest -q -p no:cacheprovider tests/test_kernels.py -k cuda 2>&1 | tail -3 | tee -a "$out/log.txt"
  else
    log "pytest not installed: kernel_check.py above is the exactness check"
  fi
fi

log "2. before / after: eager vs fused kernel, fp32 (TF32 off) and bf16, batch $images, T=$steps"
"${bench[@]}" --images "$images" --modes fp32,bf16 --backends eager,auto \
  --out "$out/presets_before_after.json" | tail -12 | tee -a "$out/log.txt"

log "3. kernel: channels_last off / on, chunks auto / 8 / 32, bf16"
"${bench[@]}" --images "$images" --modes bf16 --channels-last off,on --chunks auto,8,32 \
  --out "$out/presets_layout_chunk.json" | tail -16 | tee -a "$out/log.txt"

log "4. kernel, batch $big, bf16 and fp32"
"${bench[@]}" --images "$big" --modes bf16,fp32 --out "$out/presets_batch_$big.json" \
  | tail -8 | tee -a "$out/log.txt"

log "5. one grid point: ${GRID_IMAGES:-10000} images to T=${GRID_T:-2048}, bf16, batch $images"
"${bench[@]}" --images "$images" --modes bf16 --nets cifar10_vgg16 --grid-point \
  --grid-images "${GRID_IMAGES:-10000}" --grid-timesteps "${GRID_T:-2048}" \
  --out "$out/grid_point.json" | tail -3 | tee -a "$out/log.txt"
log "done"
