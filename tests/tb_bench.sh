#!/bin/sh
# `tb bench` on the tiny CNN: fp32 (optimize_for_inference), int8 (calibrated on random inputs)
# and dynamic, a few passes each; the JSON has the keys the issue names; with --data (when the
# Fashion-MNIST files are installed) an accuracy in [0, 1]; bad input exits nonzero with a
# tb::Error message.
set -e
tb="$1"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for p in fp32 int8 dynamic; do
  "$tb" bench cnn --precision "$p" --batch 2 --warmup 1 --iters 3 --threads 1 --json > "$out/$p.json"
  for k in '"model":"cnn"' "\"precision\":\"$p\"" '"batch":2' '"images_per_s":' '"latency_ms":{"mean":' \
           '"p50":' '"p95":' '"p99":' '"params":421834' '"madds":4241152' '"size_bytes":' '"peak_bytes":'; do
    grep -q "$k" "$out/$p.json" || { echo "$p: no $k in"; cat "$out/$p.json"; exit 1; }
  done
  if grep -q '"accuracy"' "$out/$p.json"; then echo "$p: accuracy without --data"; exit 1; fi
done
# The human-readable table too, on a zoo model at a small input.
"$tb" bench mobilenet_v2 --input 1x28x28 --warmup 0 --iters 2 --threads 1 > "$out/table.txt"
grep -q "latency ms" "$out/table.txt" || { cat "$out/table.txt"; exit 1; }
# int8 with the residual adds folded into their conv (--fuse-add): the notes count them.
"$tb" bench mobilenet_v2 --input 1x28x28 --precision int8 --fuse-add --warmup 0 --iters 2 \
  --threads 1 > "$out/fused.txt"
grep -q "10 adds fused into their conv" "$out/fused.txt" || { cat "$out/fused.txt"; exit 1; }
data=${TB_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
if [ -f "$data/t10k-images-idx3-ubyte.gz" ]; then
  "$tb" bench cnn --warmup 0 --iters 1 --threads 1 --data "$data" --json > "$out/acc.json"
  grep -Eq '"accuracy":(0(\.[0-9]+)?(e-?[0-9]+)?|1(\.0+)?)[,}]' "$out/acc.json" ||
    { echo "no accuracy in [0, 1]:"; cat "$out/acc.json"; exit 1; }
fi
# Bad input: a tb::Error message and a nonzero exit.
expect_error() {
  needle="$1"; shift
  if "$tb" bench "$@" > "$out/err.txt" 2>&1; then echo "accepted: $*"; exit 1; fi
  grep -q -e "$needle" "$out/err.txt" || { echo "no '$needle' for $*:"; cat "$out/err.txt"; exit 1; }
}
expect_error "unknown model 'no_such_net'" no_such_net --iters 1
expect_error "expected CxHxW, e.g. 3x224x224" cnn --input 1x28
expect_error "expected CxHxW, e.g. 3x224x224" cnn --input 1x0x28
expect_error "expected CxHxW, e.g. 3x224x224" resnet18 --input abc
expect_error "--precision" cnn --precision int4
echo "tb bench: ok"
