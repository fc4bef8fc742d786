#!/usr/bin/python3
"""PyTorch 1.13's side of `tb bench`: the same model, input, batch and threads, the same JSON keys.

  /usr/bin/python3 tools/bench_infer_torch.py MODEL [--precision fp32|int8] [--batch N]
      [--input CxHxW] [--threads N] [--warmup N] [--iters N] [--mode eager|jit]
      [--qengine onednn|qnnpack|fbgemm|x86] [--data DIR] [--json]

MODEL: cnn (the Fashion-MNIST CNN of include/tb/models.h, 1x28x28) or a torchvision model
(resnet18, resnet50, mobilenet_v2, mobilenet_v3_small, shufflenet_v2_x0_5, shufflenet_v2_x1_0,
efficientnet_b0); inputs with H <= 64 get tb's small-input variant (3x3 stride-1 stem, no stem
max-pool; resnet and mobilenet_v2 only) and 10 classes, as `tb bench`.
--mode eager runs the nn.Module; jit runs torch.jit.freeze(torch.jit.script(m)) then
torch.jit.optimize_for_inference (PyTorch's own conv-BN folding and oneDNN fusion), fp32 only.
int8: eager-mode static quantization (torchvision.models.quantization for resnet18 / mobilenet_v2
/ mobilenet_v3_small / shufflenet; the CNN with Quant/DeQuantStub), fused, calibrated on 4 random
batches, converted, on --qengine.
Keys as `tb bench --json`: model, precision, batch, input, threads, images_per_s,
latency_ms {mean, p50, p95, p99} (numpy.percentile, linear), params, madds (Conv2d and Linear
multiply-adds per image, as tb::summary), size_bytes (torch.save of the state_dict; tb writes
safetensors), peak_bytes (null: PyTorch 1.13 has no CPU allocator statistics), accuracy (--data).
Run it as ../shared/README.md says (OpenMP OpenBLAS, malloc tunables): tools/bench_infer_compare.sh
does.
"""
import argparse
import gzip
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn


def cnn(in_channels=1, num_classes=10):
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, num_classes))


class QuantCNN(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.quant = torch.quantization.QuantStub()
        self.net = net
        self.dequant = torch.quantization.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.net(self.quant(x)))


def small_stem(name, m, c):
    """tb's small-input variant: 3x3 stride-1 stem, no stem max-pool."""
    if name.startswith("resnet"):
        m.conv1 = nn.Conv2d(c, 64, 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
    elif name == "mobilenet_v2":
        old = m.features[0][0]
        m.features[0][0] = nn.Conv2d(c, old.out_channels, 3, 1, 1, bias=False)
    else:
        sys.exit(f"bench_infer_torch: no small-input variant of {name} here")
    return m


def build(name, chw, precision):
    c, h, _ = chw
    small = h <= 64
    classes = 10 if (name == "cnn" or small) else 1000
    if name == "cnn":
        return cnn(c, classes), classes
    import torchvision.models as tvm
    import torchvision.models.quantization as tvq
    if precision == "int8":
        fn = getattr(tvq, name, None)
        if fn is None:
            sys.exit(f"bench_infer_torch: torchvision has no quantizable {name}")
        m = fn(weights=None, quantize=False, num_classes=classes)
    else:
        m = getattr(tvm, name)(weights=None, num_classes=classes)
    if c != 3 or small:
        m = small_stem(name, m, c) if small else sys.exit("bench_infer_torch: 3 channels only at full size")
    return m, classes


def madds_and_params(model, x):
    total = [0]

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            total[0] += out.shape[1] * out.shape[2] * out.shape[3] * (mod.in_channels // mod.groups) * \
                mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, nn.Linear):
            total[0] += mod.in_features * mod.out_features
    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x[:1])
    for h in hs:
        h.remove()
    return total[0], sum(p.numel() for p in model.parameters())


def fashion_mnist_test(root):
    def read(name):
        with gzip.open(os.path.join(root, name), "rb") as f:
            return f.read()
    img = read("t10k-images-idx3-ubyte.gz")
    lab = read("t10k-labels-idx1-ubyte.gz")
    x = np.frombuffer(img, np.uint8, offset=16).reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    y = np.frombuffer(lab, np.uint8, offset=8).astype(np.int64)
    x = (x - 0.2860) / 0.3530  # tb's transform (training set mean and std)
    return torch.from_numpy(x), torch.from_numpy(y)


def parse_chw(text, model, prog):
    """--input "CxHxW" as [C, H, W]; without it 1x28x28 for the CNN, 3x224x224 for the zoo."""
    if not text:
        return [1, 28, 28] if model == "cnn" else [3, 224, 224]
    try:
        chw = [int(v) for v in text.split("x")]
        assert len(chw) == 3 and all(v > 0 for v in chw)
    except (ValueError, AssertionError):
        sys.exit(f"{prog}: --input '{text}': expected CxHxW, e.g. 3x224x224")
    return chw


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "int8"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--input", default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--mode", default="eager", choices=["eager", "jit"])
    ap.add_argument("--qengine", default="onednn")
    ap.add_argument("--data", default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    chw = parse_chw(a.input, a.model, "bench_infer_torch")
    model, classes = build(a.model, chw, a.precision)
    model.eval()
    x = torch.randn(a.batch, *chw)
    madds, params = madds_and_params(model, x)

    run = model
    notes = f"torch {torch.__version__}, {a.mode}"
    if a.precision == "int8":
        torch.backends.quantized.engine = a.qengine
        q = QuantCNN(model) if a.model == "cnn" else model
        q.eval()
        if a.model == "cnn":
            torch.quantization.fuse_modules(q.net, [["0", "1", "2"], ["4", "5", "6"], ["9", "10"]], inplace=True)
        else:
            q.fuse_model()
        q.qconfig = torch.quantization.get_default_qconfig(a.qengine if a.qengine != "onednn" else "onednn")
        torch.quantization.prepare(q, inplace=True)
        with torch.no_grad():
            for _ in range(4):
                q(torch.randn(min(a.batch, 32), *chw))
        torch.quantization.convert(q, inplace=True)
        run = q
        notes += f", int8 static ({a.qengine}), calibrated on random inputs"
    elif a.mode == "jit":
        with torch.no_grad():
            run = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(model.eval())))
    with tempfile.NamedTemporaryFile(suffix=".pt") as f:
        torch.save(run.state_dict() if hasattr(run, "state_dict") and a.mode == "eager" else model.state_dict(), f.name)
        size = os.path.getsize(f.name)

    ms = []
    with torch.no_grad():
        for _ in range(a.warmup):
            run(x)
        for _ in range(a.iters):
            t0 = time.perf_counter()
            run(x)
            ms.append((time.perf_counter() - t0) * 1000.0)
    ms = np.array(ms)
    mean = float(ms.mean())
    out = {"model": a.model, "precision": a.precision, "batch": a.batch, "input": chw,
           "threads": torch.get_num_threads(), "warmup": a.warmup, "iters": a.iters,
           "images_per_s": a.batch / (mean / 1000.0),
           "latency_ms": {"mean": mean, "p50": float(np.percentile(ms, 50)),
                          "p95": float(np.percentile(ms, 95)), "p99": float(np.percentile(ms, 99))},
           "params": params, "madds": madds, "size_bytes": size, "peak_bytes": None, "notes": notes}
    if a.data:
        xs, ys = fashion_mnist_test(a.data)
        correct = 0
        with torch.no_grad():
            for i in range(0, len(xs), 500):
                correct += int((run(xs[i:i + 500]).argmax(1) == ys[i:i + 500]).sum())
        out["accuracy"] = correct / len(xs)
    if a.json:
        print(json.dumps(out))
    else:
        l = out["latency_ms"]
        print(f"{a.model} {a.precision} ({notes}), batch {a.batch}, input {'x'.join(map(str, chw))}, "
              f"{out['threads']} threads: p50 {l['p50']:.3f} ms, mean {l['mean']:.3f}, p95 {l['p95']:.3f}, "
              f"p99 {l['p99']:.3f}; {out['images_per_s']:.1f} images/s")


if __name__ == "__main__":
    main()
