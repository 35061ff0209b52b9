#!/usr/bin/env bash
# The paper's CIFAR-10 VGG-16 row on one GPU, in one call (or two): unpack and verify the JPEG
# copy, train the ANN (preset cifar10_vgg16_fast: batch-norm, folded at conversion), put a
# float16 copy of it under $OUT at once, then balance thresholds and sweep the paper's pairing
# (soft reset + rmp, hard reset + spike_norm) on all 10,000 test images at T = 2^5..2^11.
#
#   scripts/gpu_reproduce_cifar10.sh [extra rmp overrides for train and sweep...]
#
# What comes back fits a device call's limits (at most 8 files, 2 folder levels), and is
# rewritten as the run goes, so a call cut short still returns everything finished:
#   $OUT/log.txt        this script's output, with the wall time of every stage
#   $OUT/run.tar.gz     the run without its checkpoints: train/ (metrics.csv, run.log, config),
#                       sweep/ (ann.json, results.csv rewritten after every grid point, summary,
#                       plot), ann16.pt.sha256; repacked every 15 s and at the end
#   $OUT/ann16.pt.NN    the float16 ANN the sweep converts, in 15 MiB parts (cat them back)
# The sweep stops itself before BUDGET_S and the script exits 3 when grid points are left;
# to continue, put the returned files in a folder of the repo (.gpurun/ is git-ignored), carry
# it, and call again with RESUME=.gpurun: the ANN is reassembled and checked, finished grid
# points are kept, the rest are computed.
#
# Environment (defaults in brackets):
#   PRESET            cifar10_vgg16_fast | cifar10_vgg16_fast_nobn | ...   [cifar10_vgg16_fast]
#   CIFAR10_ARCHIVES  folder with train.tar.xz, test.tar.xz, SHA256SUMS
#                                   [.devdata/cifar10-jpg if present, else ../shared/data/cifar10-jpg]
#   CIFAR10_DIR       where the image folders are unpacked (once)          [data/cifar10-jpg]
#   OUT               what comes back from the call                         [device-out]
#   RESUME            folder holding an earlier call's returned files       [none]
#   BUDGET_S          wall seconds for this whole call                      [540]
#   EPOCHS            ANN training epochs                                    [the preset's]
#   TIMESTEPS         the sweep's T values                                   [2^5..2^11]
#   CALIB_STEPS       time-steps of spike_norm / rmp threshold balancing     [the preset's]
#   PRECISION         simulation currents: fp32 (exact) | bf16 | fp16       [bf16]
#   RUN_DIR           the run: train/, ann16.pt, sweep/                     [outputs/gpu_$PRESET]
#   COMMIT            the source revision, for the log        [git rev-parse, where git is there]
#   PYTHON            the interpreter  [.venv/bin/python if present, else python3]
# .devdata/site (pure-Python packages such as hydra-core, for a machine that lacks them) goes on
# PYTHONPATH when present; `make device-bundle` fills .devdata/ (site/ and the archives).
#
# CPU check at toy size (docs/RESULTS.md): EPOCHS=1 PRECISION=fp32 TIMESTEPS=32,64 CALIB_STEPS=32 \
#   scripts/gpu_reproduce_cifar10.sh model.width=0.0625 train.warmup_epochs=0.2 \
#   dataset.subset=64 device=cpu threads=2
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

preset=${PRESET:-cifar10_vgg16_fast}
if [ -n "${CIFAR10_ARCHIVES:-}" ]; then
  archives=$CIFAR10_ARCHIVES
elif [ -f .devdata/cifar10-jpg/SHA256SUMS ]; then
  archives=.devdata/cifar10-jpg
else
  archives=../shared/data/cifar10-jpg
fi
data=${CIFAR10_DIR:-data/cifar10-jpg}
out=${OUT:-device-out}
resume=${RESUME:-}
budget=${BUDGET_S:-540}
timesteps=${TIMESTEPS:-2^5..2^11}
precision=${PRECISION:-bf16}
run=${RUN_DIR:-outputs/gpu_$preset}
python=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
commit=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
train_args=(${EPOCHS:+train.epochs=$EPOCHS})
sweep_args=(${CALIB_STEPS:+balance.timesteps=$CALIB_STEPS})
part_bytes=15M        # GNU split's M is MiB: under the 16 MiB a returned file may have
max_parts=3           # 45 MiB of checkpoint at most: the call returns 64 MiB in all
pack_margin=30        # seconds kept for stopping the sweep and packing

export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[ -d .devdata/site ] && export PYTHONPATH="$repo/.devdata/site:$PYTHONPATH"
rmp=("$python" -m rmp_cli)

mkdir -p "$out"
exec > >(tee -a "$out/log.txt") 2>&1
stage() { echo "[$(date -u +%H:%M:%S) +${SECONDS}s] $*"; }
die() { echo "gpu_reproduce_cifar10: $*" >&2; exit 2; }

# Everything that should come back, except the checkpoint parts, in one tarball (atomic rename).
pack() {
  [ -d "$run" ] || return 0
  local tmp="$out/.run.tar.gz.$BASHPID"
  tar --exclude='*.pt' --exclude='.lock' --exclude='.*.tmp' -czf "$tmp" -C "$run" . \
    && mv -f "$tmp" "$out/run.tar.gz" || rm -f "$tmp"
}

# The float16 ANN as numbered parts of $OUT (skipped, with a warning, when it is too large).
send_checkpoint() {
  rm -f "$out"/ann16.pt.[0-9][0-9]
  local size limit
  size=$(stat -c %s "$run/ann16.pt")
  limit=$((max_parts * 15 * 1024 * 1024))
  if [ "$size" -gt "$limit" ]; then
    stage "WARNING: ann16.pt is $size bytes, more than a call can return ($limit): not sent back, so RESUME will not work for this run"
    return 0
  fi
  split -b "$part_bytes" -d -a 2 "$run/ann16.pt" "$out/ann16.pt."
}

stage "start: preset=$preset commit=$commit budget=${budget}s T=$timesteps precision=$precision"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'

if [ -n "$resume" ]; then
  [ -f "$resume/run.tar.gz" ] || die "RESUME=$resume holds no run.tar.gz from an earlier call"
  [ -e "$run" ] && die "RUN_DIR $run already exists; RESUME unpacks into a fresh one (remove it or set RUN_DIR)"
  mkdir -p "$run"
  tar -xzf "$resume/run.tar.gz" -C "$run"
  if [ -f "$run/ann16.pt.sha256" ]; then
    compgen -G "$resume/ann16.pt.[0-9][0-9]" >/dev/null \
      || die "RESUME=$resume lacks the checkpoint parts ann16.pt.00, ..."
    cat "$resume"/ann16.pt.[0-9][0-9] > "$run/ann16.pt"
    (cd "$run" && sha256sum --quiet -c ann16.pt.sha256) \
      || die "the checkpoint parts in $resume do not reassemble into the ann16.pt that was sent"
    send_checkpoint
  fi
  stage "resumed from $resume"
fi

if [ ! -d "$data/train" ]; then
  "${rmp[@]}" unpack-cifar10 "$archives" "$data"
  stage "unpacked and verified $archives into $data"
fi

# Training gets the time that is left too: a run cut short returns its metrics.csv (epoch times).
train_status=0
if [ ! -f "$run/ann16.pt" ]; then
  if [ ! -f "$run/train/model.pt" ]; then
    train_cmd=("${rmp[@]}" train --quiet)
    if [ -f "$run/train/last.pt" ]; then
      train_cmd+=(resume="$run/train/last.pt")
    else
      rm -rf "$run/train"
      train_cmd+=(experiment="$preset" dataset.root="$data" run_dir="$run/train" "${train_args[@]}" "$@")
    fi
    limit=$((budget - SECONDS - pack_margin))
    timeout --signal=INT --kill-after=20 "$((limit > 1 ? limit : 1))" "${train_cmd[@]}" \
      || train_status=$?
  fi
  if [ "$train_status" -ne 0 ]; then
    pack
    [ "$train_status" -eq 124 ] || [ "$train_status" -eq 130 ] \
      || { stage "training failed (exit $train_status)"; exit "$train_status"; }
    stage "time budget reached during training: lower EPOCHS (metrics.csv has the epoch times)"
    exit 3
  fi
  stage "trained: $(tail -1 "$run/train/metrics.csv")"
  "$python" -m rmp_cli.training.half_checkpoint "$run/train/model.pt" "$run/ann16.pt"
  (cd "$run" && sha256sum ann16.pt > ann16.pt.sha256)
  send_checkpoint
  pack
  stage "float16 ANN saved under $out"
fi

remaining=$((budget - SECONDS - pack_margin))
status=0
if [ "$remaining" -lt 10 ]; then
  stage "no time left for the sweep in this call"
  status=124
else
  stage "sweep: up to ${remaining}s"
  (while sleep 15; do pack; done) &
  packer=$!
  # SIGINT lets rmp stop cleanly; every grid point finished so far is in results.csv already.
  timeout --signal=INT --kill-after=20 "$remaining" "${rmp[@]}" sweep --quiet \
    experiment="$preset" ckpt="$run/ann16.pt" dataset.root="$data" \
    snn.precision="$precision" "${sweep_args[@]}" --timesteps "$timesteps" \
    run_dir="$run/sweep" "$@" || status=$?
  kill "$packer" 2>/dev/null || true
  wait "$packer" 2>/dev/null || true
  rm -f "$out"/.run.tar.gz.*  # a pack cut off by the kill: not a file to send back
fi
pack

points_done=0
if [ -f "$run/sweep/results.csv" ]; then
  points_done=$(tail -n +2 "$run/sweep/results.csv" | cut -d, -f3-8 | sort -u | wc -l)
fi
if [ "$status" -eq 0 ]; then
  stage "done: $points_done grid points; wall seconds: $SECONDS"
  exit 0
fi
if [ "$status" -eq 124 ] || [ "$status" -eq 130 ]; then
  stage "time budget reached with $points_done grid points done; wall seconds: $SECONDS"
  echo "to continue: copy the files of $out into .gpurun/ and call again with RESUME=.gpurun"
  exit 3
fi
stage "the sweep failed (exit $status); wall seconds: $SECONDS"
exit "$status"
