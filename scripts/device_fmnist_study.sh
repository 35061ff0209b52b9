#!/usr/bin/env bash
# Runs the fashion_mnist_cnn preset end to end on a GPU machine that has PyTorch but no Hydra:
# pure-Python deps and the idx files travel in .devdata/. Outputs go to $OUT (or ./device-out).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$repo/device-out}
export PYTHONPATH="$repo/.devdata/site:$repo/src" CI=true PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader || true
start=$(date +%s)
python3 -m rmp_cli sweep experiment=fashion_mnist_cnn dataset.root="$repo/.devdata/fmnist" \
  run_dir=/tmp/fmnist_run 2>&1 | tee "$out/log.txt" | grep -v "^\s*$" | tail -40
echo "wall seconds: $(( $(date +%s) - start ))" | tee -a "$out/log.txt"
r=/tmp/fmnist_run; cp $r/results.csv $r/summary.md $r/accuracy_vs_timesteps.png $r/run.log $r/ann/metrics.csv "$out/"
