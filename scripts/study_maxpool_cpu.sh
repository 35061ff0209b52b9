#!/usr/bin/env bash
# Max-pooling in the SNN at CPU scale (Fashion-MNIST, mnist_cnn width 0.5, the
# fashion_mnist_cnn preset's recipe): one max-pool network converted with spike-gated
# max-pooling (snn.maxpool=gate), with average pooling swapped in at conversion (snn.maxpool=avg,
# no retraining), and after fine-tuning it with average pooling (rmp train weights=...
# model.pool=avg), against the same network trained with average pooling from the start.
# Soft reset, rmp and percentile thresholds, T = 1..512, the preset's seeded 2,000-image test
# subset. Wall time of every step goes to $OUT/times.txt.
#   make fmnist-data && scripts/study_maxpool_cpu.sh      (about an hour on 2 cores)
set -euo pipefail

RMP=${RMP:-rmp}
OUT=${OUT:-outputs/study/maxpool}
THREADS=${THREADS:-2}
FT_EPOCHS=${FT_EPOCHS:-2}
FT_LR=${FT_LR:-0.005}
TIMESTEPS=${TIMESTEPS:-2^0..2^9}
GRID=${GRID:-"snn.reset=soft balance=rmp,percentile"}
EXTRA=${EXTRA:-}  # overrides for every step, e.g. "train.epochs=4 dataset.subset=1000"
# shellcheck disable=SC2206  # EXTRA is a list of overrides
COMMON=(experiment=fashion_mnist_cnn "threads=$THREADS" $EXTRA)

mkdir -p "$OUT"
source "$(dirname "$0")/steps.sh"

step ann-max $RMP train "${COMMON[@]}" model.pool=max run_dir="$OUT/ann-max"
step ann-avg $RMP train "${COMMON[@]}" model.pool=avg run_dir="$OUT/ann-avg"
step ann-max-finetuned-avg $RMP train "${COMMON[@]}" model.pool=avg \
    weights="$OUT/ann-max/model.pt" train.epochs="$FT_EPOCHS" train.lr="$FT_LR" \
    train.warmup_epochs=0 run_dir="$OUT/ann-max-finetuned-avg"

# shellcheck disable=SC2086  # GRID is a list of overrides
sweep() {  # sweep NAME CKPT OVERRIDES...
    local name=$1 ckpt=$2
    shift 2
    step "$name" $RMP sweep "${COMMON[@]}" --timesteps "$TIMESTEPS" ckpt="$ckpt" $GRID "$@" \
        run_dir="$OUT/$name"
}
sweep max-gate "$OUT/ann-max/model.pt" snn.maxpool=gate
sweep max-avg-no-finetune "$OUT/ann-max/model.pt" snn.maxpool=avg
sweep max-finetuned-avg "$OUT/ann-max-finetuned-avg/model.pt"
sweep avg-trained "$OUT/ann-avg/model.pt"

$RMP plot "$OUT/max-gate" "$OUT/max-avg-no-finetune" "$OUT/max-finetuned-avg" \
    "$OUT/avg-trained" -o "$OUT/accuracy_vs_timesteps"
cat "$OUT/times.txt"
