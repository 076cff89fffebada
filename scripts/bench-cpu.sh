#!/usr/bin/env bash
# The browser's CPU fallback against the native CPU build, on this machine: sampling images/s
# for the demo's models, native (all cores, and one thread) vs the wasm module in headless
# Chromium with WebGPU disabled (one worker, and one worker per core: the page's default).
# Prints a Markdown table of that, then one of the page's start-up (opened with a fresh profile →
# the model loaded on every worker).
#
#   bash scripts/bench-cpu.sh [DIST]     # DIST: a site built by scripts/build-web.sh (dist)
#   JIT_SIMD=simd128 bash scripts/bench-cpu.sh   # the plain SIMD128 module, not the relaxed one
#
# Each figure is the median of three runs (the browser's first run, which includes start-up
# work, is not counted). Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
dist=${1:-dist}
bin="$CARGO_TARGET_DIR/release/jit-native"
[ -x "$bin" ] || { echo "build the runner first: cargo build --release -p jit-native" >&2; exit 2; }
[ -f "$dist/pkg/jit_web_bg.wasm" ] || { echo "build the site first: bash scripts/build-web.sh" >&2; exit 2; }
(cd tests/browser && [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund --silent)

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
native() { # model count steps threads → images/s
  for _ in 1 2 3; do
    RAYON_NUM_THREADS=$4 "$bin" sample "$1" --backend cpu --class 0 --count "$2" --steps "$3" --seed 1 \
      --out "$(mktemp -d)" 2>&1 | sed -n 's/.*(\([0-9.]*\) images\/s).*/\1/p'
  done | median
}
ready=$(mktemp)
trap 'rm -f "$ready"' EXIT
browser() { # model count steps workers → images/s; appends "model workers seconds-to-ready" to $ready
  local q="class=0&count=$2&seed=1&steps=$3&sampler=heun&cfg=2.9&low=0.1&high=1&lanes=$4${JIT_SIMD:+&simd=$JIT_SIMD}" out
  out=$(node tests/browser/bench-cpu.mjs "$dist" "$1" "$q" 4)
  echo "$1 $4 $(head -n 1 <<<"$out" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const r=JSON.parse(s);console.log(r.ready, r.simd)})')" >> "$ready"
  tail -n +3 <<<"$out" |  # the first round includes start-up work
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{for(const l of s.trim().split("\n")){const r=JSON.parse(l);console.log(r.count/r.seconds)}})' | median
}

echo "| sampling (Heun, CFG 2.9 on (0.1, 1)) | images × steps | native, $(nproc) threads | native, 1 thread | browser wasm, 1 worker | browser wasm, $(nproc) workers | wasm slower than native by |"
echo "|---|---|---|---|---|---|---|"
mkdir -p "$dist/bench"
# One image shows the costs per call into the module (the yield between evaluations, the
# previews), which larger batches hide.
for spec in "web/model.safetensors Shapes_JiT-T/4_32² 1 20" \
            "web/model.safetensors Shapes_JiT-T/4_32² 8 50" \
            "web/models/fashion-mnist.safetensors Fashion-MNIST_JiT-S/4_32² 2 20"; do
  read -r file name count steps <<<"$spec"
  name=${name//_/ }
  served="bench/$(basename "$file")"
  cp "$file" "$dist/$served"
  n_all=$(native "$file" "$count" "$steps" "$(nproc)")
  n_one=$(native "$file" "$count" "$steps" 1)
  web=$(browser "$served" "$count" "$steps" 1)
  web_all=$(browser "$served" "$count" "$steps" "$(nproc)")
  printf '| %s | %s × %s | %.3f img/s | %.3f img/s | %.3f img/s | %.3f img/s | %.2f× on all cores (%.2f× per thread) |\n' "$name" "$count" "$steps" \
    "$n_all" "$n_one" "$web" "$web_all" "$(awk -v a="$n_all" -v b="$web_all" 'BEGIN {print a / b}')" "$(awk -v a="$n_one" -v b="$web" 'BEGIN {print a / b}')"
done

# Start-up: page opened (fresh profile) → model loaded on every worker, median over its rows.
echo
echo "wasm module: $(awk '{print $4}' "$ready" | sort -u | paste -sd, -) (relaxed: built with relaxed SIMD; JIT_SIMD=simd128 times the plain one)"
echo
echo "| model file | page ready, 1 worker | page ready, $(nproc) workers |"
echo "|---|---|---|"
for f in $(awk '{print $1}' "$ready" | sort -u); do
  printf '| %s | %.2f s | %.2f s |\n' "$f" "$(awk -v f="$f" '$1 == f && $2 == 1 {print $3}' "$ready" | median)" \
    "$(awk -v f="$f" -v n="$(nproc)" '$1 == f && $2 == n {print $3}' "$ready" | median)"
done
