#!/usr/bin/env bash
# Inference speed, tensorbrain (`tb bench`) against PyTorch 1.13 (tools/bench_infer_torch.py, set
# up fairly as ../shared/README.md says), same model, input, batch and threads, one after the
# other, RUNS times; prints each run's p50 and images/s of both sides, and the median of the
# per-run ratios (the machine is noisy: compare ratios of one run, not absolute times).
#   tools/bench_infer_compare.sh BUILD_DIR MODEL [PRECISION] [BATCH] [THREADS] [ITERS] [RUNS] [INPUT]
#   e.g. tools/bench_infer_compare.sh build-bench resnet18 fp32 1 2 50 3
# PRECISION fp32 (tb: optimize_for_inference; PyTorch: eager and jit-frozen) or int8 (both static,
# PyTorch on onednn; the run also times tb's own fp32 and prints int8's speed-up over it, the
# issue's "x our own FP32" goals). INPUT CxHxW (default 1x28x28 for cnn, 3x224x224 otherwise).
# TB_INT8_FLAGS (environment) adds flags to tb's int8 side, e.g. TB_INT8_FLAGS=--keep-faster.
# fp32 with tools/onnxruntime/node_modules/onnxruntime-node installed (tools/setup.sh --torch prints
# how) also times ONNX Runtime (tools/bench_onnxruntime.mjs) on the same model exported by PyTorch
# (tools/export_onnx.py, once per invocation, to runs/onnx/; its output is first checked against
# PyTorch's for one input) and prints p50(onnxruntime) / p50(tb) per run and its median.
# Needs python3-torch, python3-torchvision, libopenblas0-openmp (tools/setup.sh --torch).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:?build dir}; model=${2:?model}; precision=${3:-fp32}; batch=${4:-1}; threads=${5:-2}
iters=${6:-50}; runs=${7:-3}; input=${8:-}
exe=$build/tools/tb
[[ -x $exe ]] || { echo "build $exe first (ninja -C $build tools/tb)"; exit 1; }
in_args=(); [[ -n $input ]] && in_args=(--input "$input")
common=(--batch "$batch" --threads "$threads" --iters "$iters" --warmup 10 --json "${in_args[@]}")
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
torch_run() {
  LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp OPENBLAS_NUM_THREADS=$threads \
  GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=100000000000 \
    /usr/bin/python3 tools/bench_infer_torch.py "$model" --precision "$precision" "${common[@]}" "$@"
}
field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(eval('d' + sys.argv[2]))" "$1" "$2"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
ratios=(); jit_ratios=(); own_ratios=(); ort_ratios=()
extra=(); [[ $precision == int8 ]] && read -r -a extra <<< "${TB_INT8_FLAGS:-}"
ort=0
if [[ $precision == fp32 ]]; then
  if [[ ! -d tools/onnxruntime/node_modules/onnxruntime-node ]] || ! command -v node >/dev/null; then
    echo "onnxruntime: skipped (not installed: cd tools/onnxruntime && ONNXRUNTIME_NODE_INSTALL=skip npm install)"
  else
    onnx=runs/onnx/${model}_b${batch}${input:+_$input}.onnx; ref=${onnx%.onnx}.ref.safetensors
    rc=0; check=""
    /usr/bin/python3 tools/export_onnx.py "$model" --batch "$batch" "${in_args[@]}" --out "$onnx" --reference "$ref" \
      >/dev/null || rc=$?
    ((rc)) || check=$(node tools/bench_onnxruntime.mjs "$onnx" --threads "$threads" --iters 0 --check "$ref") || rc=$?
    if ((rc == 0)); then ort=1; echo "onnxruntime: $onnx, $check"
    elif [[ -n $check ]]; then echo "onnxruntime: skipped, its output differs from PyTorch's: $check"
    else echo "onnxruntime: skipped, exporting or loading $onnx failed (above)"; fi
  fi
fi
for r in $(seq "$runs"); do
  tb_json=$("$exe" bench "$model" --precision "$precision" "${common[@]}" "${extra[@]}")
  pt_json=$(torch_run --mode eager)
  tb_p50=$(field "$tb_json" "['latency_ms']['p50']"); pt_p50=$(field "$pt_json" "['latency_ms']['p50']")
  ratio=$(awk "BEGIN {printf \"%.2f\", $pt_p50 / $tb_p50}")
  line="run $r: tb p50 $(printf %.3f "$tb_p50") ms ($(printf %.0f "$(field "$tb_json" "['images_per_s']")") img/s), torch eager p50 $(printf %.3f "$pt_p50") ms ($(printf %.0f "$(field "$pt_json" "['images_per_s']")") img/s), torch/tb $ratio"
  ratios+=("$ratio")
  if [[ $precision == fp32 ]]; then
    jit_json=$(torch_run --mode jit)
    jit_p50=$(field "$jit_json" "['latency_ms']['p50']")
    jit_ratio=$(awk "BEGIN {printf \"%.2f\", $jit_p50 / $tb_p50}")
    line+=", torch jit p50 $(printf %.3f "$jit_p50") ms, torch-jit/tb $jit_ratio"
    jit_ratios+=("$jit_ratio")
  fi
  if ((ort)); then
    ort_json=$(node tools/bench_onnxruntime.mjs "$onnx" --model "$model" --batch "$batch" --threads "$threads" \
      --warmup 10 --iters "$iters" --json)
    ort_p50=$(field "$ort_json" "['latency_ms']['p50']")
    ort_ratio=$(awk "BEGIN {printf \"%.2f\", $ort_p50 / $tb_p50}")
    line+=", ort p50 $(printf %.3f "$ort_p50") ms ($(printf %.0f "$(field "$ort_json" "['images_per_s']")") img/s), ort/tb $ort_ratio"
    ort_ratios+=("$ort_ratio")
  fi
  if [[ $precision == int8 ]]; then
    own_json=$("$exe" bench "$model" --precision fp32 "${common[@]}")
    own_p50=$(field "$own_json" "['latency_ms']['p50']")
    own_ratio=$(awk "BEGIN {printf \"%.2f\", $own_p50 / $tb_p50}")
    line+=", tb fp32 p50 $(printf %.3f "$own_p50") ms ($(printf %.0f "$(field "$own_json" "['images_per_s']")") img/s), tb-fp32/tb-int8 $own_ratio"
    own_ratios+=("$own_ratio")
  fi
  echo "$line"
done
echo "median over $runs runs of p50(torch eager) / p50(tb): $(printf '%s\n' "${ratios[@]}" | median)"
[[ ${#jit_ratios[@]} -gt 0 ]] && echo "median over $runs runs of p50(torch jit) / p50(tb): $(printf '%s\n' "${jit_ratios[@]}" | median)"
[[ ${#ort_ratios[@]} -gt 0 ]] && echo "median over $runs runs of p50(onnxruntime) / p50(tb): $(printf '%s\n' "${ort_ratios[@]}" | median) ($(field "$ort_json" "['runtime']"), cpu/wall $(printf %.2f "$(field "$ort_json" "['cpu_per_wall']")"))"
[[ ${#own_ratios[@]} -gt 0 ]] && echo "median over $runs runs of p50(tb fp32) / p50(tb int8): $(printf '%s\n' "${own_ratios[@]}" | median)"
echo "($model $precision, batch $batch, $threads threads, $iters iterations, OMP_WAIT_POLICY=$OMP_WAIT_POLICY, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset})"
