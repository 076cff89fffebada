# Shared environment of the build and test scripts (sourced).
# Cargo's own target folder (./target), so the README's two commands, `cargo run` and
# scripts/test.sh, share one build. CI (.ci/run) keeps its builds outside the clone instead.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# Software Vulkan (Mesa lavapipe) on CI: use both cores, keep kernel autotuning minimal.
export LP_NUM_THREADS="${LP_NUM_THREADS:-2}"
export CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
