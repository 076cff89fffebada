#!/usr/bin/env bash
# Both sides on this machine's CPU: `jit-native bench --backend cpu` against the official PyTorch
# code on the same work (`../shared/bench/bench_ref_cpu.py`: JiT-T/4 and JiT-S/4 at 32², batch
# 32 training, 16 samples with 50 Heun steps and CFG 2.9 on (0.1, 1)), alternating, ROUNDS
# rounds each (default 3), every run on all cores. Prints one Markdown table of the ranges and
# the ratios of the medians.
#
#   bash scripts/bench-vs-pytorch.sh PYTHON REF_DIR [ROUNDS]
#
# PYTHON: an interpreter with torch, einops and numpy (python3 -m venv V && V/bin/pip install
# torch einops numpy). REF_DIR: the official model_jit.py, denoiser.py and util/ (see
# ../shared/bench/README.md). Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
python=${1:?usage: bench-vs-pytorch.sh PYTHON REF_DIR [ROUNDS]}
ref=${2:?usage: bench-vs-pytorch.sh PYTHON REF_DIR [ROUNDS]}
rounds=${3:-3}
bin="$CARGO_TARGET_DIR/release/jit-native"
script=../shared/bench/bench_ref_cpu.py
[ -x "$bin" ] || { echo "build the runner first: cargo build --release -p jit-native" >&2; exit 2; }
[ -f "$script" ] || { echo "$script is missing (it is beside developer checkouts only)" >&2; exit 2; }
[ -f "$ref/model_jit.py" ] || { echo "$ref has no model_jit.py: see ../shared/bench/README.md" >&2; exit 2; }
threads=$(nproc)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Rows "model train_img_s sample_img_s" from each side's Markdown table; ours is the mean step's
# rate, the statistic the PyTorch script reports.
ours() { "$bin" bench --backend cpu --model JiT-T/4,JiT-S/4 --sample-count 16 2>/dev/null |
  awk -F'|' '$2 ~ /JiT-/ {gsub(/ /, "", $2); gsub(/ /, "", $13); gsub(/ /, "", $11); print $2, $13, $11}'; }
theirs() { OMP_NUM_THREADS=$threads "$python" "$script" "$ref" 2>/dev/null |
  awk -F'|' '$2 ~ /JiT-/ {gsub(/ /, "", $2); gsub(/ /, "", $5); gsub(/ /, "", $6); print $2, $5, $6}'; }
for r in $(seq "$rounds"); do
  ours >> "$out/ours"
  theirs >> "$out/theirs"
done

# min–max of column $3 for model $2 in file $1; median with `med`.
range() { awk -v m="$2" -v c="$3" '$1 == m {print $c}' "$1" | sort -g | awk '{a[NR]=$1} END {print a[1] "–" a[NR]}'; }
med() { awk -v m="$2" -v c="$3" '$1 == m {print $c}' "$1" | sort -g |
  awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f×", a / b}'; }

echo "| model (32², $threads threads) | train img/s ours | PyTorch | ours ÷ PyTorch | sample img/s ours | PyTorch | ours ÷ PyTorch |"
echo "|---|---|---|---|---|---|---|"
for m in JiT-T/4 JiT-S/4; do
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$m" \
    "$(range "$out/ours" "$m" 2)" "$(range "$out/theirs" "$m" 2)" \
    "$(ratio "$(med "$out/ours" "$m" 2)" "$(med "$out/theirs" "$m" 2)")" \
    "$(range "$out/ours" "$m" 3)" "$(range "$out/theirs" "$m" 3)" \
    "$(ratio "$(med "$out/ours" "$m" 3)" "$(med "$out/theirs" "$m" 3)")"
done
echo
echo "ours: $("$bin" --version 2>/dev/null || echo jit-native) (burn Flex), PyTorch $("$python" -c 'import torch; print(torch.__version__)') eager f32, $rounds rounds alternating, $(date -u +%F)"
