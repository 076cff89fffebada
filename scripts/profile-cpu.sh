#!/usr/bin/env bash
# Where the CPU time goes: `perf record` (software clock, so it works without hardware
# counters) of one sampling run and a few training steps of JiT-T/4 at 32² on burn's Flex
# backend, one thread, with the samples grouped by kind of work. Prints one Markdown table.
#
#   bash scripts/profile-cpu.sh [MODEL.safetensors]   # default: web/model.safetensors (T/4)
#
# Needs Debian's linux-perf. Env passes through (e.g. MALLOC_* to try allocator settings).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bin="$CARGO_TARGET_DIR/release/jit-native"
model=${1:-web/model.safetensors}
command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Symbol → kind of work (the first pattern that matches).
group() {
  awk -F'\t' '
    { pct = $1 + 0; s = $2; kind = "other" }
    s ~ /gemm/                                              { kind = "matrix products (gemm)" }
    kind == "other" && s ~ /expf|exp_|tanhf|logf/           { kind = "exp/tanh (softmax, SiLU), libm" }
    kind == "other" && s ~ /into_contiguous|copy_2d|StridedIter|memmove|memcpy/ { kind = "layout copies (transpose, reshape, cat)" }
    kind == "other" && s ~ /\[k\]|memset|malloc|_int_free|_int_malloc|cfree|mmap|munmap/ { kind = "allocation (page faults, zeroing, malloc)" }
    kind == "other" && s ~ /unary|binary|zip|macerator|scalar_op|reduce|sum|mean|max/ { kind = "element-wise and reductions (Flex)" }
    kind == "other" && s ~ /rayon|crossbeam|futex|sched|LocalKey/ { kind = "threads and bookkeeping" }
    { t[kind] += pct }
    END { for (k in t) printf "%s\t%.1f\n", k, t[k] }'
}

profile() { # name, command...
  local name=$1; shift
  RAYON_NUM_THREADS=1 perf record -q -e cpu-clock -F 1000 -o "$work/$name.data" "$@" >/dev/null 2>&1
  perf report -i "$work/$name.data" --sort sym --stdio 2>/dev/null |
    sed -n 's/^ *\([0-9.]*\)% *\(.*\)$/\1\t\2/p' | group > "$work/$name.tsv"
}

profile sample "$bin" sample "$model" --backend cpu --class 0 --count 8 --steps 50 --seed 1 --out "$work/img"
profile train "$bin" bench --backend cpu --model JiT-T/4 --batch-size 32 --train-steps 20 --no-sample

echo "| share of CPU time, 1 thread | sampling (8 images, 50 Heun steps, CFG) | training (batch 32) |"
echo "|---|---|---|"
cut -f1 "$work/sample.tsv" "$work/train.tsv" | sort -u | while read -r kind; do
  s=$(awk -F'\t' -v k="$kind" '$1 == k {print $2}' "$work/sample.tsv")
  t=$(awk -F'\t' -v k="$kind" '$1 == k {print $2}' "$work/train.tsv")
  printf '| %s | %s %% | %s %% |\n' "$kind" "${s:-0}" "${t:-0}"
done
