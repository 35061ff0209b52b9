#!/usr/bin/env bash
# Simulation speed of the cifar10 presets' nets on one GPU, per precision (fp32, tf32, bf16, fp16):
# synthetic 32x32 images, so no data has to travel. Results land in benchmarks/results/ (and $OUT).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$repo/.devdata/site:$repo/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 "$repo/benchmarks/bench_presets.py" --images 500 --timesteps 256 "$@"
[ -n "${OUT:-}" ] && cp "$repo"/benchmarks/results/presets_*.json "$OUT/" || true
