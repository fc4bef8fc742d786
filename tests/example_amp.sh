#!/usr/bin/env bash
# The Fashion-MNIST example with mixed precision on a small subset: --amp bf16 and --amp fp16 train
# and evaluate; fp16 reports its loss scale, and a run stopped after epoch 1 resumes with the same
# scale and the same losses as an uninterrupted one; a bad --amp value is refused by name.
# Exit 77 (meson: skipped) when the data set is not installed.
set -euo pipefail
exe=$1
data=${TB_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
[[ -f $data/train-images-idx3-ubyte.gz || -f $data/train-images-idx3-ubyte ]] || {
  echo "Fashion-MNIST not found at $data: skipped (apt-get install dataset-fashion-mnist)"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
common=(--epochs 2 --limit-train 640 --limit-test 200 --threads 2 --workers 1 --seed 5 --batch-size 64)
"$exe" "${common[@]}" --amp bf16 --out "$tmp/bf16" >"$tmp/bf16.log"
grep -q "amp bf16" "$tmp/bf16.log" || { echo "FAIL: bf16 run did not say amp bf16"; exit 1; }
grep -q "final test accuracy" "$tmp/bf16.log" || { echo "FAIL: bf16 run did not finish"; exit 1; }
"$exe" "${common[@]}" --amp fp16 --out "$tmp/a" >"$tmp/a.log"
grep -q "loss scale [0-9]*, [0-9]* steps skipped" "$tmp/a.log" || {
  echo "FAIL: fp16 run did not report its loss scale"; cat "$tmp/a.log"; exit 1; }
"$exe" "${common[@]}" --amp fp16 --out "$tmp/c" --stop-after 1 >"$tmp/c1.log"
"$exe" "${common[@]}" --amp fp16 --out "$tmp/c" --resume >"$tmp/c2.log"
cols() { cut -d, -f1-5,8 "$1"; }
if ! diff <(cols "$tmp/a/metrics.csv") <(cols "$tmp/c/metrics.csv"); then
  echo "FAIL: resumed fp16 run differs from the uninterrupted one"; exit 1; fi
# the scale after the last epoch (restored from the checkpoint after epoch 1) is the same
if [[ $(grep "loss scale" "$tmp/a.log" | tail -1) != $(grep "loss scale" "$tmp/c2.log" | tail -1) ]]; then
  echo "FAIL: resumed fp16 run ends with another loss scale"; exit 1; fi
if "$exe" --amp fp8 --out "$tmp/x" >"$tmp/bad.log" 2>&1; then
  echo "FAIL: --amp fp8 accepted"; exit 1; fi
grep -q -- "--amp" "$tmp/bad.log" || { echo "FAIL: bad --amp not named"; cat "$tmp/bad.log"; exit 1; }
echo "example_amp: bf16 and fp16 train; fp16 resumes with its loss scale; bad --amp refused"
