#!/usr/bin/env bash
# The Fashion-MNIST example on a small subset: (1) the same seed gives the same losses twice;
# (2) a run stopped after epoch 1 and resumed gives the same losses as an uninterrupted run;
# (3) an output folder that cannot be written fails before training starts; (4) a bad flag value
# fails at once with a message naming the flag and what it accepts; --help lists every flag.
# Exit 77 (meson: skipped) when the data set is not installed.
set -euo pipefail
exe=$1
data=${TB_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
[[ -f $data/train-images-idx3-ubyte.gz || -f $data/train-images-idx3-ubyte ]] || {
  echo "Fashion-MNIST not found at $data: skipped (apt-get install dataset-fashion-mnist)"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
common=(--epochs 2 --limit-train 1280 --limit-test 500 --threads 2 --workers 1 --seed 5 --batch-size 64)
"$exe" "${common[@]}" --out "$tmp/a" >"$tmp/a.log"
"$exe" "${common[@]}" --out "$tmp/b" >"$tmp/b.log"
"$exe" "${common[@]}" --out "$tmp/c" --stop-after 1 >"$tmp/c1.log"
[[ $(wc -l <"$tmp/c/metrics.csv") == 2 ]] || { echo "FAIL: --stop-after 1 wrote $(wc -l <"$tmp/c/metrics.csv") lines"; exit 1; }
"$exe" "${common[@]}" --out "$tmp/c" --resume >"$tmp/c2.log"
grep -q "resumed from" "$tmp/c2.log" || { echo "FAIL: resume did not resume"; cat "$tmp/c2.log"; exit 1; }
# compare epoch, losses, accuracies and lr (columns 1-5 and 8), not timings
cols() { cut -d, -f1-5,8 "$1"; }
if ! diff <(cols "$tmp/a/metrics.csv") <(cols "$tmp/b/metrics.csv"); then
  echo "FAIL: same seed, different losses"; exit 1; fi
if ! diff <(cols "$tmp/a/metrics.csv") <(cols "$tmp/c/metrics.csv"); then
  echo "FAIL: resumed run differs from the uninterrupted one"; exit 1; fi
for f in metrics.csv metrics.json checkpoint.safetensors; do
  [[ -s $tmp/a/$f ]] || { echo "FAIL: $f missing"; exit 1; }; done
# an unwritable output folder fails at once, with a message naming it
mkdir -p "$tmp/ro" && chmod 555 "$tmp/ro"
if [[ $(id -u) != 0 ]]; then
  if "$exe" "${common[@]}" --out "$tmp/ro/x" >"$tmp/ro.log" 2>&1; then echo "FAIL: wrote into a read-only folder"; exit 1; fi
  grep -q "ro/x" "$tmp/ro.log" || { echo "FAIL: message does not name the folder"; cat "$tmp/ro.log"; exit 1; }
fi
if "$exe" --out /proc/tb_cannot_write "${common[@]:0:2}" >"$tmp/proc.log" 2>&1; then echo "FAIL: wrote into /proc"; exit 1; fi
grep -q "tb_cannot_write" "$tmp/proc.log" || { echo "FAIL: message does not name the folder"; cat "$tmp/proc.log"; exit 1; }
# a diverging run (absurd learning rate) stops with the step named; with skip it runs to the end
if "$exe" "${common[@]:0:2}" --limit-train 640 --limit-test 100 --lr 1e30 --out "$tmp/nan" >"$tmp/nan.log" 2>&1; then
  echo "FAIL: a NaN loss did not stop the run"; exit 1; fi
grep -q "training stopped.*step" "$tmp/nan.log" || { echo "FAIL: no step in the message"; cat "$tmp/nan.log"; exit 1; }
"$exe" --epochs 1 --limit-train 640 --limit-test 100 --lr 1e30 --on-nonfinite skip --out "$tmp/nan2" >"$tmp/nan2.log" 2>&1 ||
  { echo "FAIL: --on-nonfinite skip did not finish"; cat "$tmp/nan2.log"; exit 1; }
# a zoo model (small-input variant) trains through the same program
"$exe" --model shufflenet_v2_x0_5 --epochs 1 --limit-train 256 --limit-test 100 --threads 2 --out "$tmp/zoo" >"$tmp/zoo.log"
grep -q "final test accuracy" "$tmp/zoo.log" || { echo "FAIL: --model run"; cat "$tmp/zoo.log"; exit 1; }
if "$exe" --model no_such_net --out "$tmp/x" >"$tmp/bad.log" 2>&1; then echo "FAIL: unknown model accepted"; exit 1; fi
grep -q "no_such_net" "$tmp/bad.log" || { echo "FAIL: message does not name the model"; cat "$tmp/bad.log"; exit 1; }
# bad flag values: non-zero exit, a message naming the flag and what it accepts
refuse() { # refuse FLAG ARGS...: running with ARGS must fail, and the message must name FLAG
  local flag=$1; shift
  if "$exe" "$@" --out "$tmp/bad" >"$tmp/flag.log" 2>&1; then echo "FAIL: $* was accepted"; exit 1; fi
  grep -q -- "$flag.*accepts" "$tmp/flag.log" ||
    { echo "FAIL: $*: the message does not name $flag and what it accepts"; cat "$tmp/flag.log"; exit 1; }
}
refuse --epochs --epochs abc
refuse --epochs --epochs 0
refuse --threads --threads -3
refuse --lr --lr -1
refuse --on-nonfinite --on-nonfinite maybe
refuse --model --model no_such_net
refuse --seed --out "$tmp/bad" --seed
refuse --batch-size --batch-size 5000 --limit-train 1000 --limit-test 100 --epochs 1
if "$exe" --bogus >"$tmp/flag.log" 2>&1; then echo "FAIL: an unknown flag was accepted"; exit 1; fi
grep -q -- "--bogus" "$tmp/flag.log" || { echo "FAIL: unknown flag not named"; cat "$tmp/flag.log"; exit 1; }
[[ ! -e $tmp/bad/metrics.csv ]] || { echo "FAIL: a run with a bad flag trained"; exit 1; }
# --help: exit 0, every flag listed with its default
"$exe" --help >"$tmp/help.log" || { echo "FAIL: --help exited non-zero"; exit 1; }
for f in --epochs --batch-size --lr --momentum --weight-decay --seed --data --out --threads --workers \
         --resume --limit-train --limit-test --stop-after --on-nonfinite --model; do
  grep -q -- "$f" "$tmp/help.log" || { echo "FAIL: --help does not list $f"; cat "$tmp/help.log"; exit 1; }
done
grep -q "(default 64)" "$tmp/help.log" || { echo "FAIL: --help shows no defaults"; exit 1; }
echo "example_resume: same seed -> same losses; resume after epoch 1 -> same losses; bad output folder refused; zoo model trains; bad flags refused; --help"
cat "$tmp/a/metrics.csv"
