#!/bin/sh
# Runs examples/distill_fashion_mnist for a few steps of everything (teacher training, both
# students, the three methods, a 2-cell sweep), then again with the saved teacher reused through
# --teacher, and checks results.json: the teacher's accuracy and one row per student and method
# with exactly the keys the issue names.
set -e
exe="$1"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
quick="--epochs 1 --limit-train 256 --limit-test 128 --batch-size 32 --max-steps 3 --workers 0"
"$exe" $quick --teacher-epochs 1 --seeds 1 --sweep-temperatures 2,4 --sweep-alphas 0.5 \
  --out "$out/a"
for f in results.json summary.json sweep.json teacher/checkpoint.safetensors; do
  test -s "$out/a/$f" || { echo "missing $f"; exit 1; }
done
grep -q '"teacher_accuracy":' "$out/a/results.json"
rows=$(grep -c '"student":' "$out/a/results.json")
test "$rows" -eq 6 || { echo "expected 6 rows (2 students x 3 methods), got $rows"; exit 1; }
for k in '"seed":' '"method":' '"accuracy":' '"params":'; do
  n=$(grep -o "$k" "$out/a/results.json" | wc -l)
  test "$n" -eq "$rows" || { echo "key $k in $n of $rows rows"; exit 1; }
done
for m in scratch kd feature_kd; do
  grep -q "\"method\": \"$m\"" "$out/a/results.json" || { echo "no $m row"; exit 1; }
done
# The teacher reused from its checkpoint: same accuracy, no training.
"$exe" $quick --teacher "$out/a/teacher/checkpoint.safetensors" --students cnn8_16 \
  --methods kd --no-sweep --out "$out/b" > "$out/b.log"
grep -q "teacher: loaded from" "$out/b.log"
a=$(grep -o '"teacher_accuracy": [0-9.e-]*' "$out/a/results.json")
b=$(grep -o '"teacher_accuracy": [0-9.e-]*' "$out/b/results.json")
test "$a" = "$b" || { echo "reused teacher: $b, trained: $a"; exit 1; }
# Bad settings are refused before any training.
if "$exe" --alpha 1.5 --out "$out/c" 2> "$out/c.err"; then echo "--alpha 1.5 accepted"; exit 1; fi
grep -q "alpha" "$out/c.err"
echo "distill example: $rows rows, teacher reused"
