#!/usr/bin/env bash
# ThreadSanitizer over the code that shares memory between threads: a short Fashion-MNIST training
# run with 2 DataLoader worker threads (batches collated in workers, tensors allocated there and
# freed by the training thread through the caching allocator), then the data and train test
# suites (DataLoader ordering, early exit while workers are busy, a worker's error rethrown,
# grad mode being thread-local). Any report fails the run.
#   tools/tsan_train.sh                 build in build-tsan/ ($TB_TSAN_BUILD_DIR) and run
#   TB_JOBS=1 tools/tsan_train.sh       limit ninja's parallel jobs
#
# OpenMP: Debian's libgomp is not built with TSan, so TSan cannot see its barriers and would
# report every parallel kernel's hand-off as a race. The run therefore uses OMP_NUM_THREADS=1:
# the OpenMP kernels run (parallel regions included) on one thread, while the DataLoader's
# std::threads, the caching allocator's locks and everything else run truly concurrently. The
# OpenMP kernels' own correctness is checked against the reference kernels by the normal suite.
# No suppressions are used (tests/ holds no tsan.supp).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${TB_TSAN_BUILD_DIR:-build-tsan}
opts=(-Dcuda=disabled -Dbuildtype=debugoptimized -Db_sanitize=thread -Db_lundef=false)
start=$SECONDS
if [[ -f $build/build.ninja ]]; then meson setup --reconfigure "$build" "${opts[@]}" >/dev/null
else meson setup "$build" "${opts[@]}" >/dev/null; fi
ninja -C "$build" ${TB_JOBS:+-j "$TB_JOBS"} examples/train_fashion_mnist tests/tb_tests
built=$SECONDS

export OMP_NUM_THREADS=1
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:exitcode=66:second_deadlock_stack=1:history_size=4}
# TSan maps its shadow at fixed addresses, which high-entropy ASLR (vm.mmap_rnd_bits > 28 on
# recent kernels) can collide with: run without address randomisation when setarch allows it.
run=()
if command -v setarch >/dev/null && setarch "$(uname -m)" -R true 2>/dev/null; then
  run=(setarch "$(uname -m)" -R)
fi

data=${TB_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
if [[ -f $data/train-images-idx3-ubyte.gz || -f $data/train-images-idx3-ubyte ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "tsan: training run (2 DataLoader workers, OMP_NUM_THREADS=1)"
  "${run[@]}" "$build/examples/train_fashion_mnist" --epochs 2 --limit-train 1024 --limit-test 256 \
    --batch-size 64 --workers 2 --threads 1 --seed 1 --out "$tmp/run"
else
  echo "tsan: Fashion-MNIST not found at $data: training run skipped (apt-get install dataset-fashion-mnist)"
fi
echo "tsan: test suites data and train"
"${run[@]}" "$build/tests/tb_tests" --test-suite=data,train --no-intro
echo "tsan: build $((built - start)) s, runs $((SECONDS - built)) s, zero ThreadSanitizer reports"
