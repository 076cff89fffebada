#!/usr/bin/env bash
# Trains the web demo's models side by side for a fixed time, then exports each as the f16
# file the page loads (docs/demo-models.md has the results and how to evaluate them).
#
#   bash scripts/demo-models.sh OUT_DIR [SECONDS] [BACKEND]
#
# Environment: JIT (the jit-native binary; default: cargo's release build), FASHION (IDX folder;
# default Debian's dataset-fashion-mnist), EMOJI (image folder from scripts/emoji-dataset.mjs;
# default data/emoji). Training stops on SIGTERM (as on Ctrl-C) when the time is up: the runner then
# saves the step it is on, so each run folder stays resumable (`train --resume`).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash scripts/demo-models.sh OUT_DIR [SECONDS] [BACKEND]}
seconds=${2:-3600}
backend=${3:-auto}
JIT=${JIT:-${CARGO_TARGET_DIR:-target}/release/jit-native}
FASHION=${FASHION:-/usr/share/datasets/fashion-mnist}
EMOJI=${EMOJI:-data/emoji}
mkdir -p "$out"

# Common: constant lr 1e-3 after 300 warm-up steps, checkpoints every 1000 steps, no sample
# grids while training (new shapes cost kernel compilation on a GPU).
common=(--backend "$backend" --batch-size 128 --steps 1000000 --lr 1e-3 --warmup-steps 300
  --checkpoint-every 1000 --sample-every 0 --keep 2)
# Fashion-MNIST: 28² grey padded to 32², 4×4 patches (64 tokens).
timeout -s TERM "$seconds" "$JIT" train --out "$out/fashion" --data "idx:$FASHION" \
  --model JiT-S/4 --image-size 32 "${common[@]}" 2> "$out/fashion.log" &
# Twemoji: 64² RGB, 8×8 patches (64 tokens); no flips (flags and hands have a handedness).
timeout -s TERM "$seconds" "$JIT" train --out "$out/emoji" --data "folder:$EMOJI" --flip false \
  --model JiT-S/8 --image-size 64 "${common[@]}" 2> "$out/emoji.log" &
wait || true

for run in fashion emoji; do
  ckpt=$(ls "$out/$run"/ckpt-*.safetensors | sort | tail -1)
  "$JIT" export "$ckpt" --out "$out/$run.safetensors" --dtype f16 --weights ema1
  tail -1 "$out/$run/metrics.jsonl"
done
ls -la "$out"
