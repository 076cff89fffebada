#!/usr/bin/env bash
# GPU benchmark table: jit-native (the default build: WGSL + fusion; and the `gpu` build: SPIR-V + fusion + autotune
# cache) against the official PyTorch code on the same card.
#
# Build here (a machine with Rust), run there (a machine with the GPU, PyTorch and no Rust):
#   bash scripts/bench-gpu.sh build [wgsl]   # → .gpu/jit-native-gpu.xz (or -wgsl.xz), stripped
#   bash scripts/bench-gpu.sh run [OUT_DIR]  # on the GPU machine; prints one Markdown table
# `run` expects .gpu/ref/ to hold the official model_jit.py, denoiser.py, util/model_util.py
# (LTH14/JiT at commit cbc743a) and .gpu/bench_ref_gpu.py (shared/bench/), and .gl/*.deb with the
# Vulkan loader when the machine lacks one. Each command has a time limit so that the whole
# table fits in about nine minutes on an H100/H200.
set -uo pipefail
cd "$(dirname "$0")/.."

build() {
  set -e
  source scripts/env.sh
  mkdir -p .gpu
  # A device call carries at most 64 MiB: the tracked files (≈ 38 MiB), one xz binary (≈ 21 MiB)
  # and the autotune cache (≈ 3 MiB) fit; the WGSL build too only with `build wgsl`, in place
  # of the `gpu` one.
  local want="${1:-gpu}"
  rm -f .gpu/jit-native-wgsl.xz .gpu/jit-native-gpu.xz .gpu/jit-native-wgsl .gpu/jit-native-gpu
  if [ "$want" = wgsl ]; then
    cargo build --release --locked -p jit-native
    strip -o .gpu/jit-native-wgsl "$CARGO_TARGET_DIR/release/jit-native"
  else
    # Dependencies built with other features sit beside the default ones (cargo hashes features
    # into their names), so switching back and forth rebuilds only what differs.
    cargo build --release --locked -p jit-native --features gpu
    strip -o .gpu/jit-native-gpu "$CARGO_TARGET_DIR/release/jit-native"
    cargo build --release --locked -p jit-native
  fi
  xz -f -T2 -6 ".gpu/jit-native-$want"
  ls -la .gpu
}

# The Vulkan loader (when the machine lacks one), the NVIDIA ICD, the unpacked binaries, and
# the cache a run on another machine left (cubecl's autotune results and compiled kernels in
# .gpu/cubecl-cache.tgz; a driver shader cache in .gpu/driver-cache.tgz where one was put
# there), unless JIT_FRESH=1.
setup() {
  if [ -z "${JIT_FRESH:-}" ]; then
    [ -f .gpu/cubecl-cache.tgz ] && tar xzf .gpu/cubecl-cache.tgz && echo "cubecl cache: from .gpu"
    [ -f .gpu/driver-cache.tgz ] && tar xzf .gpu/driver-cache.tgz -C "$HOME" && echo "driver cache: from .gpu"
  fi
  if ! ldconfig -p | grep -q libvulkan.so.1 && ls .gl/*.deb >/dev/null 2>&1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
  fi
  if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  fi
  for b in wgsl gpu; do
    [ -f ".gpu/jit-native-$b.xz" ] || continue # a build left behind (the 64 MiB a call carries)
    [ -x "/tmp/jit-$b" ] || xz -dc ".gpu/jit-native-$b.xz" > "/tmp/jit-$b"
    chmod +x "/tmp/jit-$b"
  done
}

run() {
  local out="${1:-/tmp/bench-gpu}"
  mkdir -p "$out"
  setup
  # Autotune at its minimal level: the default level did not finish a B/16 step in 150 s.
  export CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  # cubecl keeps its autotune cache under ./target/environment (a Cargo.toml is above).
  local b16=(--model JiT-B/16 --image-size 256 --num-classes 1000 --batch-size 64 --sample-count 16 --train-steps 5)
  local s4=(--model JiT-S/4 --image-size 32 --num-classes 10 --batch-size 128 --sample-count 64 --train-steps 10)
  local deadline=$((SECONDS + ${JIT_BENCH_BUDGET_S:-520}))
  # limit NAME CAP: the command's time limit, at most what is left of the budget.
  limit() { local left=$((deadline - SECONDS)); echo $(( left < $1 ? left : $1 )); }
  bench() { # name cap binary args...
    local name=$1 cap=$2 bin=$3; shift 3
    local t; t=$(limit "$cap")
    if [ "$t" -le 5 ]; then echo "### $name: skipped (time budget spent)"; return; fi
    if [ ! -x "/tmp/jit-$bin" ]; then echo "### $name: skipped (no $bin build)"; return; fi
    echo "### $name"
    timeout "$t" "/tmp/jit-$bin" bench --backend vulkan "$@" 2>&1 | grep -v '^\s*$' | tee -a "$out/$name.log"
  }
  pytorch() { # mode cap
    local t; t=$(limit "$2")
    if [ "$t" -le 5 ] || [ ! -f .gpu/bench_ref_gpu.py ]; then echo "### PyTorch $1: skipped"; return; fi
    echo "### PyTorch $1"
    PYTHONUNBUFFERED=1 timeout "$t" python3 .gpu/bench_ref_gpu.py .gpu/ref "$1" 2>&1 | grep -v Warning | tee -a "$out/pytorch-$1.log"
  }
  # Most important first, so that a slow start still leaves the headline numbers.
  bench "B16-spirv-f16" 170 gpu "${b16[@]}" --precision f16
  pytorch bf16 75
  # The same again: compiled kernels and autotune results come from the persistence cache.
  bench "B16-spirv-f16-second-run" 50 gpu "${b16[@]}" --precision f16 --no-sample
  # Attention as the flash pair (scores on chip, f32 FMA) against two products (tensor cores).
  bench "B16-spirv-f16-flash" 90 gpu "${b16[@]}" --precision f16 --attention flash
  # What the kernels of shaders/ gain in training (the tracked chains, adamw_ema).
  bench "B16-spirv-f16-no-fused" 100 gpu "${b16[@]}" --precision f16 --no-sample --no-fused
  pytorch f32 75
  bench "B16-spirv-f32" 90 gpu "${b16[@]}" --no-sample
  bench "B16-spirv-f32-flash" 60 gpu "${b16[@]}" --no-sample --attention flash
  bench "B16-spirv-bf16" 90 gpu "${b16[@]}" --precision bf16 --no-sample
  bench "B16-wgsl-f32" 90 wgsl "${b16[@]}" --no-sample
  bench "S4-spirv-f32" 45 gpu "${s4[@]}"
  bench "S4-spirv-f32-no-fused" 45 gpu "${s4[@]}" --no-fused
  bench "S4-spirv-f16" 45 gpu "${s4[@]}" --precision f16
  tar czf "$out/cubecl-cache.tgz" target/environment 2>/dev/null # for the next machine's .gpu/
  echo "total ${SECONDS} s"
}

# Where a B/16 training step's time goes: the first run logs every autotune candidate
# (compilation and bench time, the winner) to OUT/autotune.log; a second run, with the autotune
# results from the persistence cache, times every kernel (cubecl's profiler, one sync per kernel)
# into OUT/profile.log, summed per kernel name into OUT/profile-summary.txt.
profile() {
  local out="${1:-/tmp/bench-gpu}" precision="${2:-f16}"
  mkdir -p "$out"
  setup
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  local b16=(--model JiT-B/16 --image-size 256 --num-classes 1000 --batch-size 64 --no-sample)
  [ "$precision" = f32 ] || b16+=(--precision "$precision")
  printf '[autotune]\nlevel = "minimal"\n[autotune.logger]\nlevel = "full"\nfile = "%s/autotune.log"\n' \
    "$out" > cubecl.toml
  echo "### B16-$precision first run (autotune log)"
  timeout "${JIT_PROFILE_FIRST_S:-240}" /tmp/jit-gpu bench --backend vulkan "${b16[@]}" --train-steps 3 2>&1 | tee "$out/first.log"
  echo "### B16-$precision second run (persistence cache)"
  timeout 60 /tmp/jit-gpu bench --backend vulkan "${b16[@]}" --train-steps 3 2>&1 | tee "$out/second.log"
  printf '[autotune]\nlevel = "minimal"\n[profiling.logger]\nlevel = "basic"\nfile = "%s/profile.log"\n' \
    "$out" > cubecl.toml
  echo "### B16-$precision profiled"
  timeout 90 /tmp/jit-gpu bench --backend vulkan "${b16[@]}" --train-steps 1 2>&1 | tee "$out/profiled.log"
  rm -f cubecl.toml
  # cubecl's autotune results and compiled kernels, for a run on a fresh machine (copied to
  # .gpu/; the driver's shader cache, ≈ 6 MiB more, does not fit beside a binary in one call).
  tar czf "$out/cubecl-cache.tgz" target/environment 2>/dev/null
  ls -la "$out"/cubecl-cache.tgz
  python3 scripts/profile-summary.py "$out/profile.log" "$out/autotune.log" | tee "$out/profile-summary.txt"
  echo "total ${SECONDS} s"
}

case "${1:-}" in
  build) shift; build "$@" ;;
  run) shift; run "$@" ;;
  profile) shift; profile "$@" ;;
  *) echo "usage: bash scripts/bench-gpu.sh build [wgsl] | run [OUT_DIR] | profile [OUT_DIR] [f16|f32]" >&2; exit 2 ;;
esac
