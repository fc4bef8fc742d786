#!/usr/bin/env bash
# Installs what is missing, builds (with CUDA when nvcc is present) and runs every test; then
# builds again with AddressSanitizer + UndefinedBehaviorSanitizer and runs the suite under them
# (tools/sanitize.sh). This is the README's test command; .ci/run calls it.
#   tools/run_tests.sh                  both runs (about 20 minutes on 2 cores from scratch)
#   tools/run_tests.sh --no-sanitize    the normal build's tests only
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
tools/setup.sh
[[ -d /usr/local/cuda/bin ]] && export PATH="/usr/local/cuda/bin:$PATH"
build=${TB_BUILD_DIR:-build}
if [[ -f $build/build.ninja ]]; then meson setup --reconfigure "$build" | tail -n 25
else meson setup "$build" | tail -n 25; fi
ninja -C "$build"
# Two test programs share the 2 cores, each with an OpenMP pool: passive waiting keeps idle OpenMP
# threads from spinning against the other program (tests check results, never speed).
OMP_WAIT_POLICY=passive meson test -C "$build" --print-errorlogs --num-processes 2
normal=$SECONDS
echo "run_tests: set-up, build and tests took $((normal - start)) s"
[[ ${1:-} == --no-sanitize ]] && exit 0
tools/sanitize.sh
echo "run_tests: sanitized build and tests took $((SECONDS - normal)) s; $((SECONDS - start)) s in all"
