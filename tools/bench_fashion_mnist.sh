#!/usr/bin/env bash
# Training speed of the Fashion-MNIST CNN: PyTorch (fairly configured, see ../shared/README.md)
# and tensorbrain, same model, batch size, images and threads, one after the other; prints both
# images/s and the ratio. Needs `tools/setup.sh --torch`.
#   tools/bench_fashion_mnist.sh [BUILD_DIR] [IMAGES] [THREADS] [RUNS] [MODEL]
# MODEL: cnn (default), mobilenet_v2 or resnet18 (small-input variants on both sides).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}; images=${2:-12800}; threads=${3:-2}; runs=${4:-3}; model=${5:-cnn}
exe=$build/examples/train_fashion_mnist
[[ -x $exe ]] || { echo "build $exe first (ninja -C $build)"; exit 1; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
torch_ips=(); tb_ips=()
for r in $(seq "$runs"); do
  t=$(LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp OPENBLAS_NUM_THREADS=$threads \
      GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=100000000000 \
      /usr/bin/python3 tools/bench_fashion_mnist_torch.py --images "$images" --threads "$threads" --model "$model" |
      awk '{print $4}')
  out=$(mktemp -d)
  "$exe" --epochs 1 --limit-train "$images" --limit-test 500 --threads "$threads" --model "$model" --out "$out" >/dev/null
  b=$(tail -1 "$out/metrics.csv" | cut -d, -f7); rm -rf "$out"
  echo "run $r: torch $t images/s, tb $b images/s"
  torch_ips+=("$t"); tb_ips+=("$b")
done
tm=$(printf '%s\n' "${torch_ips[@]}" | median); bm=$(printf '%s\n' "${tb_ips[@]}" | median)
echo "median of $runs: torch $tm images/s, tb $bm images/s, ratio tb/torch $(awk "BEGIN {printf \"%.2f\", $bm / $tm}")"
echo "($model, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}, $threads threads, batch 64, $images images)"
