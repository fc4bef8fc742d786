#!/usr/bin/env bash
# Installs the Debian packages tensorbrain needs, only those missing (idempotent; run as root).
#   tools/setup.sh          build + test dependencies and the Fashion-MNIST data
#   tools/setup.sh --torch  also Debian's PyTorch (for tools/make_fixtures.py and the benchmarks)
#   tools/setup.sh --fuzz   also clang and its libFuzzer/sanitizer runtimes (for tools/fuzz.sh)
set -euo pipefail
packages=(
  build-essential meson ninja-build pkg-config cmake   # cmake: meson finds doctest through it
  libopenblas-dev libopenblas-openmp-dev   # BLAS; the OpenMP build shares oneDNN's thread pool
  libdnnl-dev                              # oneDNN 2.x: convolution, pooling
  libfmt-dev doctest-dev libstb-dev zlib1g-dev
  libcli11-dev nlohmann-json3-dev          # example flags (CLI11), metrics JSON (nlohmann)
  dataset-fashion-mnist                    # /usr/share/datasets/fashion-mnist
  python3-matplotlib                       # tools/plot_metrics.py draws the training curves
)
if [[ ${1:-} == --torch ]]; then
  packages+=(python3-torch python3-torchvision libopenblas0-openmp)
fi
if [[ ${1:-} == --fuzz ]]; then
  packages+=(clang-14 libclang-rt-14-dev)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: all packages present"
fi
if [[ ${1:-} == --torch ]]; then echo "setup: optional, ONNX Runtime for tools/bench_infer_compare.sh (needs node, npm): cd tools/onnxruntime && ONNXRUNTIME_NODE_INSTALL=skip npm install"; fi
