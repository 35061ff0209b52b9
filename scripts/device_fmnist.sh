#!/usr/bin/env bash
# Runs a Fashion-MNIST preset end to end on a GPU machine that has PyTorch but no Hydra:
# pure-Python deps and the idx files travel in .devdata/ (site/ and fmnist/).
#   scripts/device_fmnist.sh [PRESET] [rmp sweep overrides...]   (default preset: fashion_mnist_cnn)
# The run dir is $OUT/run (or ./device-out/run), so whatever finished comes back even if the
# machine's time runs out; a second call with the same run dir resumes.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$repo/device-out}
preset=${1:-fashion_mnist_cnn}
shift || true
mkdir -p "$out"
export PYTHONPATH="$repo/.devdata/site:$repo/src" CI=true PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__)"
start=$(date +%s)
python3 -m rmp_cli sweep experiment="$preset" dataset.root="$repo/.devdata/fmnist" \
  run_dir="$out/run" "$@" 2>&1 | tee "$out/log.txt" | grep -v "^\s*$" | tail -40
echo "wall seconds: $(( $(date +%s) - start ))" | tee -a "$out/log.txt"
