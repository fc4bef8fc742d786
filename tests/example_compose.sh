#!/bin/sh
# Runs examples/compose_fashion_mnist for a few steps of every method (the baseline trained here,
# then finetune, kd, prune, qat, amp and composed), then the composed method again in float16
# with the saved baseline reused, and checks results.json: one row per method with the keys the
# example documents, an int8 model file for the QAT rows, zeros in the pruned rows.
set -e
exe="$1"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
quick="--epochs 1 --limit-train 256 --limit-test 128 --batch-size 32 --max-steps 6 --workers 0"
"$exe" $quick --baseline-epochs 1 --out "$out/a"
test -s "$out/a/results.json" || { echo "no results.json"; exit 1; }
test -s "$out/a/baseline/checkpoint.safetensors" || { echo "no baseline checkpoint"; exit 1; }
rows=$(grep -c '"method":' "$out/a/results.json")
# 7 rows (fp32 + 6 methods) and the baseline object repeats fp32's keys
test "$rows" -eq 8 || { echo "expected 8 method entries (baseline + 7 rows), got $rows"; exit 1; }
for k in '"accuracy":' '"size_bytes":' '"params":' '"sparsity":' '"seconds":' '"images_per_s":'; do
  n=$(grep -o "$k" "$out/a/results.json" | wc -l)
  test "$n" -eq "$rows" || { echo "key $k in $n of $rows entries"; exit 1; }
done
for m in fp32 finetune kd prune qat amp composed; do
  grep -q "\"method\": \"$m\"" "$out/a/results.json" || { echo "no $m row"; exit 1; }
  test -s "$out/a/models/$m.safetensors" || { echo "no model file for $m"; exit 1; }
done
# The composed model is int8 and pruned: much smaller than the float32 baseline.
fp32=$(stat -c %s "$out/a/models/fp32.safetensors")
composed=$(stat -c %s "$out/a/models/composed.safetensors")
test $((composed * 8)) -lt "$fp32" || { echo "composed $composed B vs fp32 $fp32 B"; exit 1; }
# float16 autocast with the GradScaler, the baseline reused.
"$exe" $quick --baseline "$out/a/baseline/checkpoint.safetensors" --methods composed \
  --amp fp16 --out "$out/b" > "$out/b.log"
grep -q "baseline: loaded from" "$out/b.log"
grep -q '"amp": "fp16"' "$out/b/results.json"
# Bad settings are refused before any training.
if "$exe" --methods quantize --out "$out/c" 2> "$out/c.err"; then echo "--methods quantize accepted"; exit 1; fi
grep -q "methods" "$out/c.err"
echo "compose example: $rows entries, composed $composed B vs fp32 $fp32 B"
