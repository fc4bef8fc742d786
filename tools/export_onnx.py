#!/usr/bin/python3
"""Exports a benchmark model to ONNX with PyTorch 1.13, for ONNX Runtime's side of the benchmarks.

  /usr/bin/python3 tools/export_onnx.py MODEL [--batch N] [--input CxHxW] --out FILE.onnx
      [--opset 13] [--seed 0] [--reference FILE.safetensors]

MODEL: as tools/bench_infer_torch.py (cnn, resnet18, mobilenet_v2, ...), built by its build() in
fp32, so the graph is the one PyTorch's side times (small-input variant for H <= 64, 10 classes).
The model is exported in eval mode with constant folding (BatchNorm folded into the convolutions),
one fixed input shape BATCHxCxHxW (no dynamic axes), input named "input", output "output".
Weights are random (seeded); the BatchNorm running statistics and affine parameters are drawn at
random too, so that folding them is exercised by the check below (the speed does not depend on
them). The file is written to FILE.onnx.tmp.PID, then renamed.
--reference writes a safetensors file with a random "input" of that shape and PyTorch's eval
"output" for it; `node tools/bench_onnxruntime.mjs FILE.onnx --check REF` compares ONNX Runtime's
output with it. Needs no `onnx` python package (PyTorch 1.13 serializes the graph itself).
"""
import argparse
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_infer_torch import build, parse_chw  # noqa: E402  (the model definitions the benchmarks share)
from safetensors_io import save_safetensors  # noqa: E402


def randomize_batchnorm(model, gen):
    """Non-trivial BatchNorm statistics: gamma, var in [0.5, 1.5), beta, mean ~ N(0, 0.1)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--input", default=None, help="CxHxW (default 1x28x28 for cnn, 3x224x224 otherwise)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--opset", type=int, default=13)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference", default=None)
    a = ap.parse_args()
    if a.batch < 1:
        sys.exit(f"export_onnx: --batch {a.batch}: expected >= 1")
    chw = parse_chw(a.input, a.model, "export_onnx")

    torch.manual_seed(a.seed)
    model, _ = build(a.model, chw, "fp32")
    gen = torch.Generator().manual_seed(a.seed + 1)
    randomize_batchnorm(model, gen)
    model.eval()
    x = torch.randn(a.batch, *chw, generator=gen)

    out_dir = os.path.dirname(os.path.abspath(a.out))
    os.makedirs(out_dir, exist_ok=True)
    tmp = f"{a.out}.tmp.{os.getpid()}"
    try:
        with torch.no_grad():
            torch.onnx.export(model, x, tmp, export_params=True, opset_version=a.opset,
                              do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL,
                              input_names=["input"], output_names=["output"])
        os.replace(tmp, a.out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    shape = "x".join(map(str, [a.batch, *chw]))
    print(f"export_onnx: {a.model} {shape} -> {a.out} ({os.path.getsize(a.out)} bytes, opset {a.opset}, "
          f"torch {torch.__version__})")

    if a.reference:
        with torch.no_grad():
            y = model(x)
        save_safetensors(a.reference, {"input": x, "output": y},
                         metadata={"model": a.model, "shape": shape, "seed": a.seed})
        print(f"export_onnx: reference input/output -> {a.reference}")


if __name__ == "__main__":
    main()
