#!/usr/bin/env bash
# The FID/IS feature extractor beside torch-fidelity's, on the same weights and images, in one run:
#   bash scripts/bench-fid.sh [WEIGHTS.pth] [IMAGE_SIZE] [BATCH] [BATCHES] [THREADS]
# WEIGHTS: torch-fidelity's weights-inception-2015-12-05-6726825d.pth, or any state dict of the
# same network (default: ~/.cache/jit-fid/inception-formula.pth, which scripts/fid-golden.sh
# writes; the values do not change the speed). Random uint8 images of IMAGE_SIZE² (default 256,
# JiT's ImageNet size; both resize them to 299² inside), batches of BATCH (default 32), BATCHES
# timed batches (default 3) after a warm-up one, THREADS threads (default: the cores).
# Prints one Markdown table: `jit-native bench --inception` on the CPU backend and
# torch-fidelity's `inception-v3-compat` FeatureExtractorInceptionV3 (features and
# logits_unbiased, as FID and IS take them) on torch's CPU.
# Python: JIT_PYTHON (default ~/.cache/jit-fid-venv/bin/python) with torch and torch-fidelity.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
weights=${1:-$HOME/.cache/jit-fid/inception-formula.pth}
size=${2:-256}
batch=${3:-32}
batches=${4:-3}
threads=${5:-$(nproc)}
python=${JIT_PYTHON:-$HOME/.cache/jit-fid-venv/bin/python}
"$python" -c "import torch, torch_fidelity" || { echo "needs torch and torch-fidelity in $python (set JIT_PYTHON, or run scripts/fid-golden.sh)" >&2; exit 2; }
[ -f "$weights" ] || { echo "no weights at $weights: give torch-fidelity's .pth, or run scripts/fid-golden.sh" >&2; exit 2; }
cargo build --release --locked -p jit-native
echo "$(lscpu | sed -n 's/^Model name: *//p'), $threads threads, $(date -u +%F)"
echo
RAYON_NUM_THREADS=$threads "$CARGO_TARGET_DIR/release/jit-native" bench --backend cpu --inception "$weights" \
  --image-size "$size" --batch-size "$batch" --train-steps "$batches"
"$python" - "$weights" "$size" "$batch" "$batches" "$threads" <<'PY'
import sys, time, torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
weights, size, batch, batches, threads = sys.argv[1], *map(int, sys.argv[2:])
torch.set_num_threads(threads)
net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                  feature_extractor_weights_path=weights).eval()
x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    net(x)
    t0 = time.perf_counter()
    for _ in range(batches):
        net(x)
    secs = time.perf_counter() - t0
print(f"| torch-fidelity {__import__('torch_fidelity').__version__} inception-v3-compat (torch {torch.__version__}) | cpu ({threads} threads) | 3×{size}×{size} | {batch} | {batches} | {batches * batch / secs:.2f} |")
PY
