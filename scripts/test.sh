#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing, then builds and runs
# every test. README's test command; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

step() { printf '\n=== %s (%ss)\n' "$*" "$SECONDS"; }

step "system packages"
need_apt=()
[ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || need_apt+=(mesa-vulkan-drivers)
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

step "rust targets"
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

step "jit-core builds for wasm32 (no filesystem, no threads)"
cargo check --release --locked -p jit-core --no-default-features --features wgpu --target wasm32-unknown-unknown

step "native build and tests"
cargo test --release --locked --workspace -- --test-threads=1
step "done"
