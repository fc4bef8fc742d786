#!/bin/sh
# Runs examples/prune_fashion_mnist for a few steps of everything and checks that results.json
# has one row per model state with exactly the keys the issue names.
set -e
exe="$1"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$exe" --out "$out" --epochs 1 --finetune-epochs 1 --limit-train 256 --limit-test 128 \
  --max-steps 2 --bench-runs 2 --lottery-rounds 2 --lottery-epochs 1 --workers 0
test -s "$out/results.json"
rows=$(grep -c '"model":' "$out/results.json")
# cnn: fp32, 3 x (global, global+sparse), 2 structured, agp, agp+sparse = 11;
# mobilenet_v2: 2; lenet: 3.
test "$rows" -eq 16 || { echo "expected 16 rows, got $rows"; cat "$out/results.json"; exit 1; }
keys='"model": "method": "sparsity": "accuracy": "params": "size_bytes": "images_per_s_b64": "latency_b1_ms":'
for k in $keys; do
  n=$(grep -o "$k" "$out/results.json" | wc -l)
  test "$n" -eq "$rows" || { echo "key $k in $n of $rows rows"; exit 1; }
done
# Exactly these eight keys per row.
n=$(grep '"model":' "$out/results.json" | head -1 | grep -o '": ' | wc -l)
test "$n" -eq 8 || { echo "a row has $n keys, expected 8"; exit 1; }
echo "prune example: $rows rows with the eight keys"
