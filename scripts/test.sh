#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing, then builds and runs
# every test (Rust unit/integration tests, then the browser end-to-end test in Chromium).
# README's test command; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export JIT_ARTIFACTS="${JIT_ARTIFACTS:-$PWD/artifacts}"

step() { printf '\n=== %s (%ss)\n' "$*" "$SECONDS"; }

step "system packages"
need_apt=()
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || need_apt+=(mesa-vulkan-drivers)
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# Data-parallel tests (jit-native's `mpi` feature): Open MPI, and libclang for the bindings.
for pkg in openmpi-bin libopenmpi-dev libclang-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Trunk, for the Trunk-site step at the end: found, or installed once into a cache outside the
# clone as a user would (without the fat LTO of Trunk's release profile: the test only has it copy
# files and run its build hook). The install runs in the background at the lowest priority, so it
# mostly uses the core that the one-at-a-time Rust tests below leave idle; the browser tests wait
# for it.
trunk_version=0.21.14
trunk=trunk
trunk_pid=
if [ "$(trunk --version 2>/dev/null)" != "trunk $trunk_version" ]; then
  trunk="$HOME/.cache/jit-tools/bin/trunk"
  if [ "$("$trunk" --version 2>/dev/null)" != "trunk $trunk_version" ]; then
    trunk_log="$HOME/.cache/jit-tools/install.log"
    mkdir -p "$HOME/.cache/jit-tools"
    nice -n 19 env -u CARGO_TARGET_DIR CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
      cargo install trunk --version "$trunk_version" --locked --root "$HOME/.cache/jit-tools" >"$trunk_log" 2>&1 &
    trunk_pid=$!
  fi
fi
# A failing step leaves no install behind it.
trap '[ -z "$trunk_pid" ] || kill "$trunk_pid" 2>/dev/null || true' EXIT

step "native build and Rust tests (with the mpi feature: its tests run 2 ranks with mpirun)"
if [ "$(id -u)" = 0 ]; then
  # Open MPI refuses to start as root unless told it is on purpose (CI runs as root).
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
cargo test --release --locked --workspace --exclude jit-web --features jit-native/mpi -- --test-threads=1

step "formatting (rustfmt.toml; cargo fmt --all fixes it)"
cargo fmt --all --check

step "lints (clippy on every crate and test, warnings are errors)"
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --release --locked --workspace --all-targets --features jit-native/mpi -- -D warnings
else
  echo "SKIP: clippy is not installed (rustup component add clippy)"
fi

step "web build (jit-core and jit-web for wasm32)"
bash scripts/build-web.sh

step "browser end-to-end test (scripts/build-web.sh's site)"
# Trunk's install is done before the browser runs: its timing tests get the whole machine.
if [ -n "$trunk_pid" ]; then
  echo "waiting for Trunk's install (log: $trunk_log) …"
  wait "$trunk_pid" || { tail -n 20 "$trunk_log"; echo "installing Trunk $trunk_version failed" >&2; exit 1; }
  trunk_pid=
fi
(cd tests/browser && npm ci --no-audit --no-fund --silent)
bin="$CARGO_TARGET_DIR/release/jit-native"
work=$(mktemp -d)
trap 'rm -rf "$work"; [ -z "$trunk_pid" ] || kill "$trunk_pid" 2>/dev/null || true' EXIT
"$bin" train --backend cpu --model JiT-T/4 --image-size 16 --depth 2 --hidden-size 32 --num-heads 2 \
  --batch-size 16 --steps 40 --checkpoint-every 40 --sample-every 0 --lr 2e-3 --out "$work/run" 2>&1 | tail -n 2
# raw weights: after 40 steps the EMA is still close to the zero-initialised output layer
"$bin" export "$work/run/ckpt-00000040.safetensors" --weights net --force --out dist/model.safetensors
"$bin" sample dist/model.safetensors --backend cpu --class 1 --count 2 --seed 7 --steps 4 --sampler heun \
  --cfg 2.0 --interval-low 0.1 --interval-high 1.0 --out "$work/samples" --save-tensor "$work/ref.safetensors"
JIT_DIST="$PWD/dist" JIT_REF="$work/ref.safetensors" \
JIT_QUERY="class=1&count=2&seed=7&steps=4&sampler=heun&cfg=2&low=0.1&high=1" \
  node --test --test-concurrency=1 tests/browser/e2e.test.mjs
step "Trunk site (trunk build --release): the same pkg/ as scripts/build-web.sh, and the whole browser suite on it"
rm -rf dist-trunk
TRUNK_SKIP_VERSION_CHECK=true "$trunk" build --release --offline 2>&1 | tail -n 3
# Trunk's build hook runs scripts/web-pkg.sh, as build-web.sh does: the same files, byte for byte.
diff -r dist/pkg dist-trunk/pkg
for f in jit_web_bg.wasm jit_web_relaxed_bg.wasm; do
  echo "$f: dist $(stat -c %s "dist/pkg/$f") bytes, dist-trunk $(stat -c %s "dist-trunk/pkg/$f") bytes, $(gzip -9 -c "dist/pkg/$f" | wc -c) gzipped"
done
cp dist/model.safetensors dist-trunk/model.safetensors  # the test's model, as in dist/
JIT_DIST="$PWD/dist-trunk" JIT_REF="$work/ref.safetensors" JIT_ARTIFACTS="$JIT_ARTIFACTS/trunk" \
JIT_QUERY="class=1&count=2&seed=7&steps=4&sampler=heun&cfg=2&low=0.1&high=1" \
  node --test --test-concurrency=1 tests/browser/e2e.test.mjs
step "done; screenshots in $JIT_ARTIFACTS"
