#!/usr/bin/python3
"""PyTorch golden fixtures for tests/test_amp.cpp (the `amp` suite).

Run with Debian's torch (1.13, importable only by /usr/bin/python3):

    /usr/bin/python3 tools/make_amp_fixtures.py

It writes (committed; tests never run Python; seeded, so reruns reproduce the files):

tests/fixtures/amp_scaler.safetensors — GradScaler scale trajectories. PyTorch 1.13 has no CPU
  GradScaler: torch.cuda.amp.GradScaler needs CUDA, and torch._amp_update_scale_ has no CPU kernel
  in 1.13 ("Could not run 'aten::_amp_update_scale_' with arguments from the 'CPU' backend"). So
  the scale update below is a line-by-line transcription of that kernel
  (aten/src/ATen/native/cuda/AmpKernels.cu, amp_update_scale_cuda_kernel) on a float32 scale:
      if found_inf: scale = float(scale * backoff_factor); tracker = 0
      else: successful = tracker + 1
            if successful == growth_interval:
                new_scale = float(scale * growth_factor)
                if isfinite(new_scale): scale = new_scale
                tracker = 0
            else: tracker = successful
  (float * double is computed in double and stored as float, as in the CUDA kernel.)
  Case `c`: `c.options` float64 [4] = init_scale, growth_factor, backoff_factor, growth_interval;
  `c.found_inf` int64 [T] (1 = that step had an inf/NaN gradient); `c.scale` float32 [T] and
  `c.tracker` int64 [T]: get_scale() and the growth tracker after each update().

tests/fixtures/amp_autocast.safetensors — torch.autocast("cpu", dtype=torch.bfloat16):
  * `dtypes.<op>` int64 [1]: the output dtype code (0 float32, 1 float64, 2 float16, 3 bfloat16)
    of each op under CPU autocast, for float32 inputs unless the name says otherwise;
  * `conv.*`: x [2, 3, 7, 7], weight [4, 3, 3, 3], bias [4] in float32, R [2, 4, 7, 7]; y =
    conv2d(x, w, b, padding=1) under autocast (bfloat16), then sum(y.float() * R).backward():
    `conv.y` (bfloat16) and the float32 gradients `conv.dx`, `conv.dw`, `conv.db`;
  * `linear.*`: x [5, 6], weight [3, 6], bias [3], R [5, 3]; the same for F.linear.

tests/fixtures/amp_batchnorm.safetensors — F.batch_norm under torch.autocast("cpu",
  dtype=torch.bfloat16) on a bfloat16 input with float32 weight, bias and running stats (autocast
  lists no batch norm; the CPU kernel takes the mixed dtypes): x bfloat16 [4, 6, 5, 5] (mean 3,
  std 2 per channel, so the statistics are not trivially centred), `weight`, `bias`,
  `running_mean`, `running_var` float32 [6] (the values before the step), R float32 [4, 6, 5, 5].
  `train.*`: y = batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5), then
  sum(y.float() * R).backward(): `train.y` (bfloat16), `train.running_mean`, `train.running_var`
  (float32, updated in place), `train.dx` (bfloat16), `train.dw`, `train.db` (float32).
  `eval.*`: the same with training=False on the updated running stats.
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save_safetensors  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def update_scale(scale, tracker, found_inf, growth, backoff, interval):
    scale = np.float32(scale)
    if found_inf:
        return np.float32(np.float64(scale) * backoff), 0
    successful = tracker + 1
    if successful == interval:
        with np.errstate(over="ignore"):
            new_scale = np.float32(np.float64(scale) * growth)
        if np.isfinite(new_scale):
            scale = new_scale
        return scale, 0
    return scale, successful


def make_scaler(t):
    cases = {
        # non-default interval: grows after 3 clean steps, backs off on each overflow
        "interval3": (65536.0, 2.0, 0.5, 3, [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0]),
        # odd factors: float32 rounding of scale * factor matters
        "odd_factors": (1000.0, 3.0, 0.3, 2, [0, 0, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0]),
        # growth overflowing float32 is refused (the isfinite check), the tracker still resets
        "overflow_guard": (2.0 ** 126, 2.0, 0.5, 1, [0, 0, 0, 1, 0, 0]),
        # many overflows in a row: repeated backoff, as after a bad initial scale
        "backoff_run": (65536.0, 2.0, 0.5, 2000, [1] * 10 + [0] * 5),
    }
    for name, (init, growth, backoff, interval, infs) in cases.items():
        scale, tracker, scales, trackers = np.float32(init), 0, [], []
        for f in infs:
            scale, tracker = update_scale(scale, tracker, f, growth, backoff, interval)
            scales.append(scale)
            trackers.append(tracker)
        t[f"{name}.options"] = torch.tensor([init, growth, backoff, interval], dtype=torch.float64)
        t[f"{name}.found_inf"] = torch.tensor(infs, dtype=torch.int64)
        t[f"{name}.scale"] = torch.tensor(np.array(scales, dtype=np.float32))
        t[f"{name}.tracker"] = torch.tensor(trackers, dtype=torch.int64)


def make_autocast(t):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g)
    w = torch.randn(3, 6, generator=g)
    img = torch.randn(2, 3, 6, 6, generator=g)
    cw = torch.randn(4, 3, 3, 3, generator=g)
    tgt = torch.tensor([0, 1, 2, 0])
    b = x.to(torch.bfloat16)
    bimg = img.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = {
            "conv2d": F.conv2d(img, cw, padding=1),
            "linear": F.linear(x, w),
            "matmul": torch.matmul(x, w.t()),
            "linear_float64": F.linear(x.double(), w.double()),
            "cross_entropy_bf16": F.cross_entropy(F.linear(x, w), tgt[:4] % 3),
            "nll_loss_bf16": F.nll_loss(b[:, :3], tgt % 3),
            "mse_loss_bf16": F.mse_loss(b, b * 2),
            "kl_div_bf16": F.kl_div(b, b.exp(), reduction="batchmean"),
            "relu_bf16": F.relu(b),
            "max_pool2d_bf16": F.max_pool2d(bimg, 2),
            "avg_pool2d_bf16": F.avg_pool2d(bimg, 2),
            "batch_norm_bf16": F.batch_norm(bimg, torch.zeros(3), torch.ones(3), torch.ones(3),
                                            torch.zeros(3), training=True),
            "add_bf16_float32": b + x,
            "add_bf16_bf16": b + b,
            # PyTorch 1.13's CPU list keeps these in the input dtype (its CUDA list runs them in
            # float32; tb follows the CUDA list here, see docs/mixed_precision.md)
            "softmax_bf16": torch.softmax(b, 1),
            "log_softmax_bf16": F.log_softmax(b, 1),
            "sum_bf16": b.sum(),
            "mean_bf16": b.mean(),
        }
    for k, v in outs.items():
        t[f"dtypes.{k}"] = torch.tensor([CODES[v.dtype]], dtype=torch.int64)

    def run(prefix, xs, ws, bs, rs, fn):
        xx, ww, bb = (a.clone().requires_grad_(True) for a in (xs, ws, bs))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = fn(xx, ww, bb)
        assert y.dtype == torch.bfloat16
        (y.float() * rs).sum().backward()
        t[f"{prefix}.x"], t[f"{prefix}.weight"], t[f"{prefix}.bias"], t[f"{prefix}.R"] = xs, ws, bs, rs
        t[f"{prefix}.y"] = y.detach()
        t[f"{prefix}.dx"], t[f"{prefix}.dw"], t[f"{prefix}.db"] = xx.grad, ww.grad, bb.grad

    run("conv", torch.randn(2, 3, 7, 7, generator=g), torch.randn(4, 3, 3, 3, generator=g),
        torch.randn(4, generator=g), torch.randn(2, 4, 7, 7, generator=g),
        lambda a, w_, b_: F.conv2d(a, w_, b_, padding=1))
    run("linear", torch.randn(5, 6, generator=g), torch.randn(3, 6, generator=g),
        torch.randn(3, generator=g), torch.randn(5, 3, generator=g), F.linear)


def make_batchnorm(t):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(4, 6, 5, 5, generator=g) * 2 + 3).to(torch.bfloat16)
    w = torch.randn(6, generator=g) * 0.5 + 1
    b = torch.randn(6, generator=g)
    rm = torch.randn(6, generator=g)
    rv = torch.rand(6, generator=g) + 0.5
    r = torch.randn(4, 6, 5, 5, generator=g)
    t["x"], t["weight"], t["bias"], t["R"] = x, w, b, r
    t["running_mean"], t["running_var"] = rm.clone(), rv.clone()
    for mode in ("train", "eval"):
        xx, ww, bb = (a.clone().requires_grad_(True) for a in (x, w, b))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = F.batch_norm(xx, rm, rv, ww, bb, training=mode == "train", momentum=0.1, eps=1e-5)
        assert y.dtype == torch.bfloat16 and rm.dtype == torch.float32
        (y.float() * r).sum().backward()
        assert xx.grad.dtype == torch.bfloat16 and ww.grad.dtype == torch.float32
        t[f"{mode}.y"] = y.detach()
        if mode == "train":
            t["train.running_mean"], t["train.running_var"] = rm.clone(), rv.clone()
        t[f"{mode}.dx"], t[f"{mode}.dw"], t[f"{mode}.db"] = xx.grad, ww.grad, bb.grad


def main():
    meta = {"generator": "tools/make_amp_fixtures.py", "torch": torch.__version__}
    for name, fn in (("amp_scaler", make_scaler), ("amp_autocast", make_autocast),
                     ("amp_batchnorm", make_batchnorm)):
        t = {}
        fn(t)
        path = os.path.join(ROOT, "tests", "fixtures", f"{name}.safetensors")
        save_safetensors(path, t, meta)
        print(f"wrote {path} ({len(t)} tensors)")


if __name__ == "__main__":
    main()
