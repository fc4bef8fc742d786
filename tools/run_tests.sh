#!/usr/bin/env bash
# Installs what is missing, builds (with CUDA when nvcc is present) and runs every test.
# This is the README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
[[ -d /usr/local/cuda/bin ]] && export PATH="/usr/local/cuda/bin:$PATH"
build=${TB_BUILD_DIR:-build}
if [[ -f $build/build.ninja ]]; then meson setup --reconfigure "$build" | tail -n 25
else meson setup "$build" | tail -n 25; fi
ninja -C "$build"
# Two test programs share the 2 cores, each with an OpenMP pool: passive waiting keeps idle OpenMP
# threads from spinning against the other program (tests check results, never speed).
OMP_WAIT_POLICY=passive meson test -C "$build" --print-errorlogs --num-processes 2
