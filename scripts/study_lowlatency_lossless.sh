#!/usr/bin/env bash
# Low latency beyond QCFS on lossless CIFAR-10 (all 1,000 offline test images), on CPU:
#   1. train a QCFS ResNet-20 (L = $LEVELS) with the cifar10_lowlatency_lossless preset (resumes);
#   2. T = 1..64 for QCFS alone, + signed spikes, + bursts of 2 (full and half threshold),
#      + COS and + SRP (4 pre-steps), its trained ceilings as thresholds, soft reset, v_init 0.5;
#   3. the same options on a plain ReLU ResNet-20 with MSE thresholds tuned for T=8: by default
#      one trained here with the same recipe and epochs (model.activation=relu, resumes); set
#      RELU_CKPT to sweep another, e.g. the 140-epoch net of study_resnet20_lossless.sh
#      (outputs/study/resnet20_lossless/ann/model.pt).
# Wall time of every step goes to $OUT/times.txt; each step is skipped once done, and a sweep
# resumes its own run dir.
#   make cifar10-lossless-data && scripts/study_lowlatency_lossless.sh
set -euo pipefail

RMP=${RMP:-rmp}
OUT=${OUT:-outputs/study/lowlatency_lossless}
THREADS=${THREADS:-2}
ROOT=${ROOT:-data/cifar10-lossless}
LEVELS=${LEVELS:-4}
RELU_CKPT=${RELU_CKPT:-}
COMMON=(experiment=cifar10_lowlatency_lossless "dataset.root=$ROOT" "threads=$THREADS")
ANN=$OUT/ann_qcfs_l$LEVELS

mkdir -p "$OUT"
source "$(dirname "$0")/steps.sh"

# train_step NAME RUN_DIR OVERRIDES...: train into RUN_DIR, or resume it if it was interrupted.
train_step() {
    local name=$1 run=$2
    shift 2
    if [ -e "$run/last.pt" ] && [ ! -e "$run/model.pt" ]; then
        step "$name" $RMP train resume="$run/last.pt" "threads=$THREADS"
    else
        step "$name" $RMP train "${COMMON[@]}" "$@" run_dir="$run"
    fi
}

train_step "ann-qcfs-l$LEVELS" "$ANN" model.act_levels="$LEVELS"
step "sweep-qcfs-l$LEVELS" $RMP sweep "${COMMON[@]}" ckpt="$ANN/model.pt" \
    run_dir="$OUT/sweep_qcfs_l$LEVELS"
if [ -z "$RELU_CKPT" ]; then
    train_step ann-relu "$OUT/ann_relu" model.activation=relu
    RELU_CKPT=$OUT/ann_relu/model.pt
fi
step sweep-relu-mse $RMP sweep "${COMMON[@]}" ckpt="$RELU_CKPT" \
    balance=mse balance.timesteps=8 run_dir="$OUT/sweep_relu_mse"
