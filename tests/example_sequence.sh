#!/bin/sh
# Runs examples/sequence_fashion_mnist for a few steps (1 and 2 LSTM layers) and checks
# results.json: one fp32 and one dynamic_int8 row with the keys the issue names, and an int8
# checkpoint smaller than a third of the float one.
set -e
exe="$1"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for layers in 1 2; do
  "$exe" --out "$out/l$layers" --layers "$layers" --hidden 32 --epochs 1 --limit-train 256 \
    --limit-test 128 --batch-size 32 --max-steps 3 --bench-runs 2 --workers 0 > "$out/l$layers.log"
  r="$out/l$layers/results.json"
  test -s "$r" || { echo "no results.json"; cat "$out/l$layers.log"; exit 1; }
  for p in fp32 dynamic_int8; do
    grep -q "\"precision\": \"$p\"" "$r" || { echo "no $p row"; cat "$r"; exit 1; }
  done
  for k in '"model": "lstm"' '"accuracy":' '"size_bytes":' '"latency_ms":'; do
    n=$(grep -o "$k" "$r" | wc -l)
    test "$n" -eq 2 || { echo "key $k in $n of 2 rows"; cat "$r"; exit 1; }
  done
  grep -q "DynamicQuantizedLSTM\|quantized" "$out/l$layers.log" || { echo "no report"; exit 1; }
  f=$(stat -c %s "$out/l$layers/model_fp32.safetensors")
  q=$(stat -c %s "$out/l$layers/model_dynamic_int8.safetensors")
  test $((q * 3)) -lt "$f" || { echo "int8 file $q bytes vs fp32 $f"; exit 1; }
done
echo "sequence example: fp32 and dynamic_int8 rows for 1 and 2 layers"
