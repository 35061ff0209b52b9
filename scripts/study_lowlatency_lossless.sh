#!/usr/bin/env bash
# Low latency beyond QCFS on lossless CIFAR-10 (all 1,000 offline test images), on CPU:
#   1. train a QCFS ResNet-20 (L = $LEVELS) with the cifar10_lowlatency_lossless preset (resumes);
#   2. T = 1..64 for QCFS alone, + signed spikes, + bursts of 2, + COS and + SRP (4 pre-steps),
#      its trained ceilings as thresholds, soft reset, v_init 0.5;
#   3. the same options on the plain ReLU ResNet-20 of study_resnet20_lossless.sh ($RELU_CKPT),
#      with MSE thresholds tuned for T=8.
# Wall time of every step goes to $OUT/times.txt; each step is skipped once done, and a sweep
# resumes its own run dir.
#   make cifar10-lossless-data && scripts/study_lowlatency_lossless.sh
set -euo pipefail

RMP=${RMP:-rmp}
OUT=${OUT:-outputs/study/lowlatency_lossless}
THREADS=${THREADS:-2}
ROOT=${ROOT:-data/cifar10-lossless}
LEVELS=${LEVELS:-4}
RELU_CKPT=${RELU_CKPT:-outputs/study/resnet20_lossless/ann/model.pt}
COMMON=(experiment=cifar10_lowlatency_lossless "dataset.root=$ROOT" "threads=$THREADS")
ANN=$OUT/ann_qcfs_l$LEVELS

mkdir -p "$OUT"
source "$(dirname "$0")/steps.sh"

if [ -e "$ANN/last.pt" ] && [ ! -e "$ANN/model.pt" ]; then
    step "ann-qcfs-l$LEVELS" $RMP train resume="$ANN/last.pt" "threads=$THREADS"
else
    step "ann-qcfs-l$LEVELS" $RMP train "${COMMON[@]}" model.act_levels="$LEVELS" run_dir="$ANN"
fi
step "sweep-qcfs-l$LEVELS" $RMP sweep "${COMMON[@]}" ckpt="$ANN/model.pt" \
    run_dir="$OUT/sweep_qcfs_l$LEVELS"
step sweep-relu-mse $RMP sweep "${COMMON[@]}" ckpt="$RELU_CKPT" \
    balance=mse balance.timesteps=8 run_dir="$OUT/sweep_relu_mse"
