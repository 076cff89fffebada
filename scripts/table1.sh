#!/usr/bin/env bash
# The paper's Table 1 (prediction target × loss space) at small scale, on Fashion-MNIST padded to
# 32×32 with 8×8 patches: a token has 64 values, more than the network is wide (32).
#   bash scripts/table1.sh [STEPS] [OUT]       (defaults: 3000 steps, docs/table1)
# At STEPS=3000 all nine runs and their evaluation take ~20 minutes on 2 CPU cores; STEPS=20000
# is about two hours. On a GPU add e.g. BACKEND=wgpu and larger sizes through EXTRA, e.g.
#   BACKEND=wgpu EXTRA="--hidden-size 64 --batch-size 256" bash scripts/table1.sh 50000
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
steps="${1:-3000}"
out="${2:-docs/table1}"
backend="${BACKEND:-cpu}"
bin="$CARGO_TARGET_DIR/release/jit-native"
cargo build --release --locked -p jit-native >/dev/null
mkdir -p "$out"
runs="$out/runs"
rows=()
for pred in x eps v; do
  for loss in x eps v; do
    run="$runs/$pred-$loss"
    if [ ! -f "$run/eval.json" ]; then
    rm -rf "$run"
    "$bin" train --backend "$backend" --data fashion-mnist --image-size 32 --model JiT-T/8 --hidden-size 32 \
      --num-heads 2 --depth 4 --bottleneck-dim 16 --in-context-len 4 --in-context-start 1 \
      --prediction "$pred" --loss "$loss" --batch-size 64 --steps "$steps" --lr 1e-3 \
      --ema-decay1 0.999 --cfg 2.0 --sample-steps 50 --checkpoint-every "$steps" --sample-every 0 \
      --grid-images 20 --seed 0 ${EXTRA:-} --out "$run" 2>&1 | tail -n 1
    ckpt=$(ls "$run"/ckpt-*.safetensors | tail -n 1)
    "$bin" eval "$ckpt" --backend "$backend" --data fashion-mnist --count 1000 --steps 50 \
      --json "$run/eval.json" 2>/dev/null | tail -n 1
    cp "$(ls "$run"/samples-*.png | tail -n 1)" "$out/grid-$pred-pred-$loss-loss.png"
    fi
    rows+=("$pred $loss $(node -e '
      const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
      const f = (x) => x.toFixed(2), p = (x) => (100 * x).toFixed(1);
      console.log(`${f(r[2].fd_classifier)} ${p(r[2].class_accuracy)} ${f(r[0].fd_classifier)} ${p(r[0].class_accuracy)}`);
    ' "$run/eval.json")")
  done
done
{
  echo "FD-classifier ↓ (class accuracy ↑) of 1000 samples, $steps steps per run, backend $backend."
  echo
  echo "| prediction \\ loss | x-loss | ε-loss | v-loss |"
  echo "|---|---|---|---|"
  for pred in x eps v; do
    line="| $pred-pred |"
    for r in "${rows[@]}"; do
      set -- $r
      [ "$1" = "$pred" ] && line="$line $3 ($4%) |"
    done
    echo "$line"
  done
  set -- ${rows[0]}
  echo
  echo "Real held-out test images (floor): FD-classifier $5, class accuracy $6%."
} > "$out/results.md"
cat "$out/results.md"
