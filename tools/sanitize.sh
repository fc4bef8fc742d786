#!/usr/bin/env bash
# Builds tensorbrain with AddressSanitizer + UndefinedBehaviorSanitizer and runs the whole test
# suite (every meson test: doctest suites and examples) under them. Any report fails the run:
# UBSan is compiled with -fno-sanitize-recover=all and halts; ASan aborts on the first error and
# checks leaks at exit.
#   tools/sanitize.sh                 build in build-sanitize/ and run everything
#   TB_JOBS=1 tools/sanitize.sh       limit ninja's parallel jobs (shared machines)
#   TB_SAN_BUILD_DIR=dir              another build folder
# CUDA is off in this build: the CUDA runtime and ASan's shadow memory do not mix.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${TB_SAN_BUILD_DIR:-build-sanitize}
opts=(-Dcuda=disabled -Dbuildtype=debugoptimized
      -Db_sanitize=address,undefined -Db_lundef=false
      -Dc_args=-fno-sanitize-recover=all -Dcpp_args=-fno-sanitize-recover=all)
start=$SECONDS
if [[ -f $build/build.ninja ]]; then meson setup --reconfigure "$build" "${opts[@]}" >/dev/null
else meson setup "$build" "${opts[@]}" >/dev/null; fi
ninja -C "$build" ${TB_JOBS:+-j "$TB_JOBS"}
built=$SECONDS

# abort_on_error: a report ends the process with a signal, so meson counts the test as failed.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:strict_string_checks=1:check_initialization_order=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
# Every test except install_pkgconfig, which links a plain (uninstrumented) program against the
# installed library as a user would: an ASan library cannot be loaded into such a program.
mapfile -t tests < <(meson test -C "$build" --list --no-rebuild 2>/dev/null | grep -vx install_pkgconfig)
# Sanitized code runs 2-5x slower: give every test three times its normal limit. Passive OpenMP
# waiting, as in tools/run_tests.sh: two test programs share the cores.
OMP_WAIT_POLICY=passive meson test -C "$build" --no-rebuild --print-errorlogs --num-processes "${TB_TEST_PROCS:-2}" \
  --timeout-multiplier 3 "${tests[@]}"
echo "sanitize: build $((built - start)) s, tests $((SECONDS - built)) s, zero sanitizer reports"
