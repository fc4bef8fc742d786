#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/fuzz_*.cpp: safetensors, IDX plain + gzip, CIFAR
# binary, image decoding) with clang, AddressSanitizer and UndefinedBehaviorSanitizer, runs each
# for a bounded number of executions and time, and prints executions and crashes per target.
#   tools/fuzz.sh                          every target, 1,000,000 runs or 30 minutes each
#   tools/fuzz.sh --runs 50000 idx cifar   some targets, fewer runs
#   tools/fuzz.sh --time 60                at most 60 s per target
#   tools/fuzz.sh --fork 12                12 fuzzing processes per target (libFuzzer -fork; the
#                                          runs and the time are then totals over the processes)
#   tools/fuzz.sh --no-build               run the fuzz_* binaries already in the build directory
#                                          (e.g. a device-kit copy on a machine without clang)
# Needs clang-14 and libclang-rt-14-dev (tools/setup.sh --fuzz). Builds in build-fuzz/
# ($TB_FUZZ_BUILD_DIR); TB_JOBS=1 limits ninja. Each target's growing corpus lives in
# build-fuzz/fuzz/corpus/<target> (seeded from tests/fuzz/corpus/<target>), its log in
# build-fuzz/fuzz/<target>.log and any crashing input in build-fuzz/fuzz/artifacts/<target>/.
# A crashing input becomes a regression test: copy it to tests/fuzz/regressions/<target>/ (the
# faults suite replays that folder), fix the reader, rerun. Exit status 1 when anything crashed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=1000000
max_time=1800
fork=0
build_it=1
targets=()
while (($#)); do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --time) max_time=$2; shift 2 ;;
    --fork) fork=$2; shift 2 ;;
    --no-build) build_it=0; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
((${#targets[@]})) || targets=(safetensors idx cifar image)

build=${TB_FUZZ_BUILD_DIR:-build-fuzz}
if ((build_it)); then
  export CC=${CC:-clang-14} CXX=${CXX:-clang++-14}
  command -v "$CXX" >/dev/null || { echo "fuzz: $CXX not found: run tools/setup.sh --fuzz" >&2; exit 2; }
  flags="-fsanitize=fuzzer-no-link -fno-sanitize-recover=all"
  opts=(-Dcuda=disabled -Dbuildtype=debugoptimized -Ddefault_library=static
        -Db_sanitize=address,undefined -Db_lundef=false "-Dc_args=$flags" "-Dcpp_args=$flags")
  if [[ -f $build/build.ninja ]]; then meson setup --reconfigure "$build" "${opts[@]}" >/dev/null
  else meson setup "$build" "${opts[@]}" >/dev/null; fi
  ninja -C "$build" ${TB_JOBS:+-j "$TB_JOBS"} "${targets[@]/#/tests/fuzz/fuzz_}"
fi

# Longest input per target: a few records / a small image are enough to reach every branch.
declare -A max_len=([safetensors]=4096 [idx]=4096 [cifar]=7000 [image]=4096)
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
out=$build/fuzz
fork_args=()
if ((fork > 0)); then fork_args=(-fork="$fork"); fi
summary=()
failed=0
for t in "${targets[@]}"; do
  corpus=$out/corpus/$t
  artifacts=$out/artifacts/$t
  mkdir -p "$corpus" "$artifacts"
  cp -n tests/fuzz/corpus/"$t"/* "$corpus"/
  echo "fuzz: $t: up to $runs runs or $max_time s (log: $out/$t.log)"
  start=$SECONDS
  # -malloc_limit_mb: no input of a few KB may make a reader allocate 1 GB (see the readers' limits)
  set +e
  "$build/tests/fuzz/fuzz_$t" "${fork_args[@]}" -runs="$runs" -max_total_time="$max_time" -max_len="${max_len[$t]}" \
    -timeout=20 -rss_limit_mb=2560 -malloc_limit_mb=1024 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$corpus" >"$out/$t.log" 2>&1
  rc=$?
  set -e
  # One process prints its total in the final stats; with -fork the parent's "#RUNS: cov: ..."
  # lines count the runs of all its processes.
  if ((fork > 0)); then execs=$(grep -o '^#[0-9]*' "$out/$t.log" | tail -1 | tr -d '#' || true)
  else execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$out/$t.log" | tail -1 | grep -o '[0-9]*$' || true)
  fi
  crashes=$(find "$artifacts" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
  line=$(printf '%-12s %10s execs %6d s  corpus %5d  crashes %d' "$t" "${execs:-?}" $((SECONDS - start)) \
         "$(find "$corpus" -type f | wc -l)" "$crashes")
  summary+=("$line")
  echo "fuzz: $line"
  if ((rc != 0 || crashes > 0)); then
    failed=1
    grep -m1 -E 'ERROR: |runtime error:|tbfuzz:|deadly signal' "$out/$t.log" || true
    for a in "$artifacts"/*; do [[ -f $a ]] && echo "  reproduce: $build/tests/fuzz/fuzz_$t $a"; done
  fi
done
echo "fuzz: summary (clang ASan+UBSan, libFuzzer)"
printf '  %s\n' "${summary[@]}"
exit $failed
