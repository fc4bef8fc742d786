#!/bin/sh
# tools/bench_compare.sh [BUILD_DIR] [--quick] — runs tools/bench (tb) and then tools/bench_torch.py
# (PyTorch 1.13 set up fairly, as /work/shared/README.md "A fair PyTorch" says: OpenMP OpenBLAS,
# 2 threads, glibc malloc keeping freed memory), one after the other, and prints tb / torch ratios
# of GFLOP/s for every shape both measured (> 1: tb is faster).
# Needs: python3-torch and libopenblas0-openmp (apt), and a built BUILD_DIR (default: build).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=build
case "${1:-}" in --*|"") ;; *) build=$1; shift ;; esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$build/tools/bench" --tsv "$tmp/tb.tsv" "$@"
echo
LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp OPENBLAS_NUM_THREADS=2 \
GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=100000000000 \
  /usr/bin/python3 "$here/bench_torch.py" --threads 2 --tsv "$tmp/torch.tsv" "$@"

echo
echo "== tb vs PyTorch (GFLOP/s ratio, > 1 means tb is faster)"
awk -F'\t' 'NR == FNR { torch[$1 "\t" $2] = $4; next }
  ($1 "\t" $2) in torch {
    printf "%-5s %-28s tb %8.1f  torch %8.1f  ratio %5.2f\n", $1, $2, $4, torch[$1 "\t" $2],
           $4 / torch[$1 "\t" $2]
  }' "$tmp/torch.tsv" "$tmp/tb.tsv"
