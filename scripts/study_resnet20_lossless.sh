#!/usr/bin/env bash
# The paper's ResNet-20 row on lossless CIFAR-10 (all 1,000 offline test images), on CPU:
#   1. train the ANN with the cifar10_resnet20_lossless preset (resumes an interrupted run);
#   2. the paper's pairing, hard reset + spike_norm against soft reset + rmp (scale 0.8, 0.7),
#      T = 2^3..2^11;
#   3. the modern route: soft reset, percentile thresholds, v_init 0 and 0.5, T = 2^3..2^10,
#      beside hard reset with the same thresholds (v_init 0), so that one run pairs the resets.
# Wall time of every step goes to $OUT/times.txt; each step is skipped once done, and a sweep
# resumes its own run dir.
#   make cifar10-lossless-data && scripts/study_resnet20_lossless.sh
set -euo pipefail

RMP=${RMP:-rmp}
OUT=${OUT:-outputs/study/resnet20_lossless}
THREADS=${THREADS:-2}
ROOT=${ROOT:-data/cifar10-lossless}
COMMON=(experiment=cifar10_resnet20_lossless "dataset.root=$ROOT" "threads=$THREADS")

mkdir -p "$OUT"
source "$(dirname "$0")/steps.sh"

if [ -e "$OUT/ann/last.pt" ] && [ ! -e "$OUT/ann/model.pt" ]; then
    step ann $RMP train resume="$OUT/ann/last.pt" "threads=$THREADS"
else
    step ann $RMP train "${COMMON[@]}" run_dir="$OUT/ann"
fi
step sweep $RMP sweep "${COMMON[@]}" ckpt="$OUT/ann/model.pt" run_dir="$OUT/sweep"
step sweep-percentile $RMP sweep "${COMMON[@]}" ckpt="$OUT/ann/model.pt" balance=percentile \
    'sweep.grid=[]' 'sweep.variants=[["snn.reset=soft","snn.v_init=0"],["snn.reset=soft","snn.v_init=0.5"],["snn.reset=hard","snn.v_init=0"]]' \
    --timesteps '2^3..2^10' run_dir="$OUT/sweep_percentile"
