#!/usr/bin/env bash
# The paper's CIFAR-10 VGG-16 row on one GPU, in one script: unpack + verify the JPEG copy, train
# VGG-16 the paper's way (no bias, no BN, average pooling, dropout; bf16 AMP), convert, and sweep
# T = 32..2048 on the full 10,000 test images for the paper's pairing: hard reset + spike_norm
# (Sengupta 2019) against soft reset + rmp thresholds (RMP-SNN). Sized for about 10 minutes on
# one H100 (an estimate from the engine's measured speed; see docs/RESULTS.md for what was run).
#
#   scripts/gpu_reproduce_cifar10.sh [extra rmp overrides...]
#
# Environment (defaults in brackets):
#   CIFAR10_ARCHIVES  folder with train.tar.xz, test.tar.xz, SHA256SUMS [../shared/data/cifar10-jpg]
#   CIFAR10_DIR       where the image folders are (unpacked once)       [data/cifar10-jpg]
#   EPOCHS            ANN training epochs (the paper trains ~200)        [20]
#   PRECISION         simulation currents: fp32 (exact) | bf16 | fp16    [bf16]
#   TIMESTEPS         the sweep's T values                                [2^5..2^11]
#   CALIB_STEPS       time-steps of spike_norm / rmp threshold balancing  [512]
#   RUN_DIR           the run dir (resumable: rerun to continue)         [outputs/gpu_cifar10_vgg16]
#   RMP               the command             [rmp on PATH, else .venv/bin/rmp, else python3 -m rmp_cli]
# CPU check at toy size: EPOCHS=1 PRECISION=fp32 scripts/gpu_reproduce_cifar10.sh \
#   model.width=0.0625 dataset.subset=256 --timesteps 32,64 device=cpu
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
archives=${CIFAR10_ARCHIVES:-../shared/data/cifar10-jpg}
data=${CIFAR10_DIR:-data/cifar10-jpg}
epochs=${EPOCHS:-20}
precision=${PRECISION:-bf16}
timesteps=${TIMESTEPS:-2^5..2^11}
calib_steps=${CALIB_STEPS:-512}
run_dir=${RUN_DIR:-outputs/gpu_cifar10_vgg16}
default_rmp=$(command -v rmp || { [ -x .venv/bin/rmp ] && echo .venv/bin/rmp; } || echo "python3 -m rmp_cli")
read -r -a rmp <<< "${RMP:-$default_rmp}"

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
[ -d "$data/train" ] || "${rmp[@]}" unpack-cifar10 "$archives" "$data"

# The preset's two grid points (hard + spike_norm, soft + rmp); calibration shortened to fit.
start=$(date +%s)
"${rmp[@]}" sweep experiment=cifar10_vgg16 dataset.root="$data" train.epochs="$epochs" \
  snn.precision="$precision" balance.num_images=256 balance.timesteps="$calib_steps" \
  --timesteps "$timesteps" run_dir="$run_dir" "$@"
echo "wall seconds: $(( $(date +%s) - start )) (epochs=$epochs, precision=$precision, T=$timesteps, calibration steps=$calib_steps)"
