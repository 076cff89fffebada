# Shared environment of the build and test scripts (sourced).
# One target folder outside the clone, so repeated runs (and CI after a session) reuse builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jit-target}"
# Software Vulkan (Mesa lavapipe) on CI: use both cores, keep kernel autotuning minimal.
export LP_NUM_THREADS="${LP_NUM_THREADS:-2}"
export CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
