#!/usr/bin/python3
"""PyTorch golden fixtures for tests/test_quant.cpp (the `quant` suite).

Run with Debian's torch (1.13, importable only by /usr/bin/python3):

    /usr/bin/python3 tools/make_quant_fixtures.py

It writes tests/fixtures/quant_{fake_quant,observers,qat}.safetensors (committed; tests never
run Python). All randomness is seeded, so a rerun reproduces the files byte for byte.

Conventions: case `c` stores its inputs and settings as tensors named `c.<what>`:
  * quant settings `c.spec` int64 [7]: dtype (0 quint8, 1 qint8), qscheme (0 per_tensor_affine,
    1 per_tensor_symmetric, 2 per_channel_affine, 3 per_channel_symmetric), bits (8 unless a
    custom range), quant_min, quant_max (both -1000 when not given: PyTorch's default range),
    reduce_range (0/1), ch_axis;
  * observers: batches `c.x0`, `c.x1`, ... (`c.nbatches`), the observer's state after them
    (`c.min_val`, `c.max_val`, `c.histogram`) and `c.scale`, `c.zero_point` from
    calculate_qparams();
  * ops: `c.x`, qparams, `c.out`, a random `c.R` and the gradients `c.d<input>` of sum(out * R).

HistogramObserver: 1.13 passes int(min)/int(max) to torch.histc (a regression: values outside the
truncated range are dropped; fixed in later releases). The cases below use `HistogramObserverFixed`,
1.13's class with the true float range in histc (as PyTorch 1.12 and 2.x); the case `hist_stock`
uses the stock 1.13 class on one batch inside (-1, 1), where int() truncation changes nothing
(on later batches it does: the combined range is truncated too).
"""
import os
import sys

import torch
from torch.ao.quantization import observer as O
from torch.ao.quantization.fake_quantize import FakeQuantize
from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save_safetensors  # noqa: E402

OUT_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                        "fixtures"))
QSCHEMES = [torch.per_tensor_affine, torch.per_tensor_symmetric, torch.per_channel_affine,
            torch.per_channel_symmetric]


class HistogramObserverFixed(O.HistogramObserver):
    """1.13's HistogramObserver.forward with histc over the float range (see the module doc)."""

    def forward(self, x_orig):
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach()
        min_val, max_val = self.min_val, self.max_val
        same_values = min_val.item() == max_val.item()
        is_uninitialized = min_val == float("inf") and max_val == float("-inf")
        if is_uninitialized or same_values:
            min_val, max_val = torch.aminmax(x)
            self.min_val.resize_(min_val.shape)
            self.min_val.copy_(min_val)
            self.max_val.resize_(max_val.shape)
            self.max_val.copy_(max_val)
            torch.histc(x, self.bins, min=min_val.item(), max=max_val.item(), out=self.histogram)
        else:
            new_min, new_max = torch.aminmax(x)
            combined_min = torch.min(new_min, min_val)
            combined_max = torch.max(new_max, max_val)
            combined_min, combined_max, downsample_rate, start_idx = self._adjust_min_max(
                combined_min, combined_max, self.upsample_rate)
            combined_histogram = torch.histc(x, self.bins, min=combined_min.item(),
                                             max=combined_max.item())
            if combined_min == min_val and combined_max == max_val:
                combined_histogram += self.histogram
            else:
                combined_histogram = self._combine_histograms(
                    combined_histogram, self.histogram, self.upsample_rate, downsample_rate,
                    start_idx, self.bins)
            self.histogram.detach_().resize_(combined_histogram.shape)
            self.histogram.copy_(combined_histogram)
            self.min_val.detach_().resize_(combined_min.shape)
            self.min_val.copy_(combined_min)
            self.max_val.detach_().resize_(combined_max.shape)
            self.max_val.copy_(combined_max)
        return x_orig


class Fixture:
    def __init__(self):
        self.tensors = {}

    def put(self, case, name, t):
        key = f"{case}.{name}"
        assert key not in self.tensors, key
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(t, dtype=torch.int64 if isinstance(t, (int, list)) else torch.float64)
        self.tensors[key] = t.detach().clone().contiguous()


def spec_tensor(dtype, qscheme, bits=8, qmin=None, qmax=None, reduce_range=False, ch_axis=0):
    return [0 if dtype == torch.quint8 else 1, QSCHEMES.index(qscheme), bits,
            -1000 if qmin is None else qmin, -1000 if qmax is None else qmax, int(reduce_range),
            ch_axis]


def observer_kwargs(dtype, qscheme, qmin, qmax, reduce_range):
    kw = dict(dtype=dtype, qscheme=qscheme, reduce_range=reduce_range)
    if qmin is not None:
        kw.update(quant_min=qmin, quant_max=qmax)
    return kw


def observe(fx, case, obs, batches, spec):
    fx.put(case, "spec", spec)
    fx.put(case, "nbatches", [len(batches)])
    for i, x in enumerate(batches):
        fx.put(case, f"x{i}", x)
        obs(x)
    scale, zp = obs.calculate_qparams()
    fx.put(case, "min_val", obs.min_val)
    fx.put(case, "max_val", obs.max_val)
    if hasattr(obs, "histogram"):
        fx.put(case, "histogram", obs.histogram)
    fx.put(case, "scale", scale.to(torch.float32))
    fx.put(case, "zero_point", zp.to(torch.int32))


# ---------------------------------------------------------------------------------------------
# Observers: qparams for every dtype / scheme / bit width / range, running and moving-average
# statistics, per channel on several axes, and the histogram search on several distributions.
def make_observers(fx):
    def data(n, kind="normal", scale=1.0, shift=0.0):
        if kind == "normal":
            x = torch.randn(n)
        elif kind == "uniform":
            x = torch.rand(n) * 2 - 1
        elif kind == "laplace":
            x = torch.distributions.Laplace(0.0, 1.0).sample((n,))
        elif kind == "relu":
            x = torch.relu(torch.randn(n))
        elif kind == "bimodal":
            x = torch.cat([torch.randn(n // 2) * 0.3 - 2, torch.randn(n - n // 2) * 0.5 + 1.5])
        return (x * scale + shift).float()

    # MinMax: qparams across dtypes, schemes, bit widths and ranges (two batches each).
    settings = []
    for dtype in (torch.quint8, torch.qint8):
        for qs in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            settings.append((dtype, qs, 8, None, None, False))
            for bits in (2, 3, 4, 5, 6, 7):
                lo, hi = (0, 2 ** bits - 1) if dtype == torch.quint8 else (-2 ** (bits - 1),
                                                                          2 ** (bits - 1) - 1)
                settings.append((dtype, qs, bits, lo, hi, False))
    settings += [(torch.quint8, torch.per_tensor_affine, 8, None, None, True),
                 (torch.qint8, torch.per_tensor_symmetric, 8, None, None, True),
                 (torch.qint8, torch.per_tensor_affine, 8, None, None, True),
                 (torch.quint8, torch.per_tensor_symmetric, 8, 0, 255, False),  # zp 127
                 (torch.quint8, torch.per_tensor_affine, 4, 0, 15, True)]
    for i, (dtype, qs, bits, lo, hi, rr) in enumerate(settings):
        obs = O.MinMaxObserver(**observer_kwargs(dtype, qs, lo, hi, rr))
        shift = [0.0, 0.7, -0.9, 3.0][i % 4]
        observe(fx, f"minmax_{i}", obs, [data(64, "normal", 1.5, shift), data(64, "uniform", 2.0)],
                spec_tensor(dtype, qs, bits, lo, hi, rr))
    # All-positive, all-negative and constant data; a tiny range (scale clamped to eps).
    for name, x in [("pos", torch.rand(50) + 0.5), ("neg", -torch.rand(50) - 0.25),
                    ("const", torch.full((10,), 0.3)), ("tiny", torch.rand(20) * 1e-9)]:
        for dtype, qs in [(torch.quint8, torch.per_tensor_affine),
                          (torch.qint8, torch.per_tensor_symmetric)]:
            obs = O.MinMaxObserver(dtype=dtype, qscheme=qs)
            observe(fx, f"minmax_{name}_{QSCHEMES.index(qs)}", obs, [x.float()],
                    spec_tensor(dtype, qs))

    # Moving average (averaging constant 0.1 in the spec's place of honour: the case name).
    obs = O.MovingAverageMinMaxObserver(averaging_constant=0.1)
    observe(fx, "moving_avg", obs, [data(100, "normal", 1.0, s) for s in (0.0, 1.0, -2.0)],
            spec_tensor(torch.quint8, torch.per_tensor_affine))

    # Per channel: axis 0, 1, -1; affine and symmetric; 4-bit; moving average.
    pc = [("pc_axis0", O.PerChannelMinMaxObserver, dict(ch_axis=0), (4, 3, 5), torch.qint8,
           torch.per_channel_symmetric, 8, None, None),
          ("pc_axis1", O.PerChannelMinMaxObserver, dict(ch_axis=1), (2, 6, 3, 3), torch.quint8,
           torch.per_channel_affine, 8, None, None),
          ("pc_axis_last", O.PerChannelMinMaxObserver, dict(ch_axis=-1), (5, 4), torch.qint8,
           torch.per_channel_affine, 8, None, None),
          ("pc_4bit", O.PerChannelMinMaxObserver, dict(ch_axis=0), (8, 2, 3, 3), torch.qint8,
           torch.per_channel_symmetric, 4, -8, 7),
          ("pc_moving", O.MovingAveragePerChannelMinMaxObserver,
           dict(ch_axis=0, averaging_constant=0.01), (6, 10), torch.qint8,
           torch.per_channel_symmetric, 8, None, None)]
    for name, cls, kw, shape, dtype, qs, bits, lo, hi in pc:
        obs = cls(**kw, **observer_kwargs(dtype, qs, lo, hi, False))
        batches = [(torch.randn(*shape) * (1 + i)).float() for i in range(3)]
        observe(fx, name, obs, batches, spec_tensor(dtype, qs, bits, lo, hi, False, kw["ch_axis"]))

    # Histogram: distributions, growing ranges (re-binning), symmetric, 4-bit, fewer bins.
    hist = [("hist_normal", [data(1000, "normal"), data(1000, "normal", 1.5),
                             data(1000, "normal", 0.5)], {}, (torch.quint8, torch.per_tensor_affine)),
            ("hist_laplace", [data(1500, "laplace", 2.0), data(1500, "laplace", 2.0, 0.5)], {},
             (torch.quint8, torch.per_tensor_affine)),
            ("hist_relu", [data(1000, "relu", 3.0), data(1000, "relu", 4.5), data(500, "relu")],
             {}, (torch.quint8, torch.per_tensor_affine)),
            ("hist_bimodal", [data(1200, "bimodal"), data(800, "bimodal", 1.3)], {},
             (torch.quint8, torch.per_tensor_affine)),
            ("hist_uniform_sym", [data(1000, "uniform", 5.0), data(1000, "uniform", 7.0, 1.0)], {},
             (torch.qint8, torch.per_tensor_symmetric)),
            ("hist_outliers", [torch.cat([data(990, "normal"), torch.tensor([25.0, -18.0])]),
                               data(1000, "normal")], {}, (torch.quint8, torch.per_tensor_affine)),
            ("hist_4bit", [data(1000, "normal", 2.0), data(1000, "normal", 2.5)],
             dict(quant_min=0, quant_max=15), (torch.quint8, torch.per_tensor_affine)),
            ("hist_bins256", [data(800, "laplace"), data(800, "laplace", 3.0)], dict(bins=256),
             (torch.quint8, torch.per_tensor_affine))]
    for name, batches, kw, (dtype, qs) in hist:
        obs = HistogramObserverFixed(dtype=dtype, qscheme=qs, **kw)
        bits = 4 if "quant_min" in kw else 8
        observe(fx, name, obs, batches,
                spec_tensor(dtype, qs, bits, kw.get("quant_min"), kw.get("quant_max")))
        fx.put(name, "bins", [obs.bins])
    obs = O.HistogramObserver()  # stock 1.13, one batch inside (-1, 1)
    observe(fx, "hist_stock", obs, [data(1000, "uniform", 0.6, 0.1)],
            spec_tensor(torch.quint8, torch.per_tensor_affine))
    fx.put("hist_stock", "bins", [obs.bins])


# ---------------------------------------------------------------------------------------------
# Fake-quant ops: per tensor and per channel (float32 and float64; ties at .5 steps and values
# outside the range), and the learnable (LSQ) ops with their scale / zero-point gradients.
def make_fake_quant(fx):
    def put_grads(case, out, leaves):
        r = torch.randn(out.shape, dtype=out.dtype)
        fx.put(case, "out", out)
        fx.put(case, "R", r)
        (out * r).sum().backward()
        for k, v in leaves.items():
            fx.put(case, "d" + k, v.grad)

    def per_tensor(case, x, scale, zp, qmin, qmax):
        fx.put(case, "x", x)
        fx.put(case, "scale", torch.tensor([scale], dtype=torch.float32))
        fx.put(case, "zero_point", torch.tensor([zp], dtype=torch.int32))
        fx.put(case, "range", [qmin, qmax])
        xl = x.clone().requires_grad_(True)
        out = torch.fake_quantize_per_tensor_affine(
            xl, torch.tensor([scale], dtype=torch.float32), torch.tensor([zp], dtype=torch.int32),
            qmin, qmax)
        put_grads(case, out, {"x": xl})

    def ties(n, scale, dtype):  # exact .5 steps: round half to even decides
        k = torch.randint(-40, 40, (n,)).to(dtype)
        return (k + 0.5) * torch.tensor(scale, dtype=torch.float32).to(dtype)

    per_tensor("pt_u8", torch.randn(200) * 3, 0.05, 128, 0, 255)
    per_tensor("pt_i8_ties", ties(200, 0.125, torch.float32), 0.125, 0, -128, 127)
    per_tensor("pt_u4", torch.randn(100), 0.2, 7, 0, 15)
    per_tensor("pt_i2", torch.randn(100), 0.5, 0, -2, 1)
    per_tensor("pt_f64", torch.randn(150, dtype=torch.float64) * 2, 0.03, 10, 0, 255)
    per_tensor("pt_f64_ties", ties(100, 0.25, torch.float64), 0.25, 3, -8, 7)
    per_tensor("pt_odd_scale", torch.randn(300) * 2, 0.0123456789, 37, 0, 255)

    def per_channel(case, shape, axis, qmin, qmax, dtype=torch.float32):
        x = torch.randn(*shape, dtype=dtype) * 2
        c = shape[axis]
        scale = (torch.rand(c) * 0.1 + 0.01).float()
        zp = torch.randint(qmin, qmax + 1, (c,)).to(torch.int32)
        fx.put(case, "x", x)
        fx.put(case, "scale", scale)
        fx.put(case, "zero_point", zp)
        fx.put(case, "range", [qmin, qmax])
        fx.put(case, "axis", [axis])
        xl = x.clone().requires_grad_(True)
        out = torch.fake_quantize_per_channel_affine(xl, scale, zp, axis, qmin, qmax)
        put_grads(case, out, {"x": xl})

    per_channel("pc_axis0", (4, 3, 3, 3), 0, -128, 127)
    per_channel("pc_axis1", (2, 5, 4, 4), 1, 0, 255)
    per_channel("pc_axis3", (2, 3, 2, 6), 3, -8, 7)
    per_channel("pc_2d_f64", (6, 7), 1, 0, 15, torch.float64)

    def learnable(case, shape, scale, zp, qmin, qmax, axis=None):
        x = (torch.randn(*shape) * 1.5).float()
        g = 1.0 / (x.numel() * qmax) ** 0.5
        fx.put(case, "x", x)
        fx.put(case, "scale", scale)
        fx.put(case, "zero_point", zp)
        fx.put(case, "range", [qmin, qmax])
        fx.put(case, "grad_factor", torch.tensor([g], dtype=torch.float64))
        xl = x.clone().requires_grad_(True)
        sl = scale.clone().requires_grad_(True)
        zl = zp.clone().requires_grad_(True)
        if axis is None:
            out = torch._fake_quantize_learnable_per_tensor_affine(xl, sl, zl, qmin, qmax, g)
        else:
            fx.put(case, "axis", [axis])
            out = torch._fake_quantize_learnable_per_channel_affine(xl, sl, zl, axis, qmin, qmax, g)
        put_grads(case, out, {"x": xl, "scale": sl, "zero_point": zl})

    learnable("lsq_i4", (300,), torch.tensor([0.3]), torch.tensor([0.0]), -8, 7)
    learnable("lsq_u4_zp", (4, 50), torch.tensor([0.2]), torch.tensor([2.6]), 0, 15)
    learnable("lsq_u8", (200,), torch.tensor([0.02]), torch.tensor([120.4]), 0, 255)
    learnable("lsq_pc_axis0", (3, 4, 5), torch.tensor([0.1, 0.25, 0.5]),
              torch.tensor([0.0, 1.3, -2.2]), -8, 7, axis=0)

    # The LSQ module (PyTorch's _LearnableFakeQuantize, grad scaling on) after learning is on.
    x = (torch.randn(8, 16) * 2).float()
    m = _LearnableFakeQuantize(observer=O.MovingAverageMinMaxObserver, quant_min=0, quant_max=15,
                               scale=0.3, zero_point=1.0, use_grad_scaling=True)
    m.enable_param_learning()
    out = m(x.clone())
    r = torch.randn(out.shape)
    (out * r).sum().backward()
    fx.put("lsq_module", "x", x)
    fx.put("lsq_module", "out", out)
    fx.put("lsq_module", "R", r)
    fx.put("lsq_module", "dscale", m.scale.grad)
    fx.put("lsq_module", "dzero_point", m.zero_point.grad)


# ---------------------------------------------------------------------------------------------
# QAT: PyTorch's intrinsic QAT ConvBn2d / ConvBnReLU2d (weights fake-quantized per channel
# symmetric int8 with a moving-average observer): a training step with batch statistics, then
# freeze_bn_stats and a step with the running statistics; outputs, running statistics and the
# gradients of sum(y * R). Also fuse_conv_bn_weights.
def make_qat(fx):
    import torch.nn as nn
    import torch.nn.intrinsic as nni
    import torch.nn.intrinsic.qat as nniqat
    from torch.ao.quantization import QConfig
    from torch.nn.utils import fuse_conv_bn_weights

    wfq = FakeQuantize.with_args(observer=O.MovingAveragePerChannelMinMaxObserver, quant_min=-128,
                                 quant_max=127, dtype=torch.qint8,
                                 qscheme=torch.per_channel_symmetric, ch_axis=0)
    qconfig = QConfig(activation=torch.nn.Identity, weight=wfq)
    for case, relu, bias, groups in [("convbn", False, False, 1), ("convbnrelu", True, True, 1),
                                     ("convbn_dw", False, False, 4)]:
        conv = nn.Conv2d(4, 4 if groups > 1 else 6, 3, padding=1, bias=bias, groups=groups)
        bn = nn.BatchNorm2d(conv.out_channels)
        with torch.no_grad():
            bn.weight.copy_(torch.rand(conv.out_channels) + 0.5)
            bn.bias.copy_(torch.randn(conv.out_channels) * 0.1)
            bn.running_mean.copy_(torch.randn(conv.out_channels) * 0.1)
            bn.running_var.copy_(torch.rand(conv.out_channels) + 0.5)
        fx.put(case, "weight", conv.weight)
        if bias:
            fx.put(case, "bias", conv.bias)
        for k in ("weight", "bias", "running_mean", "running_var"):
            fx.put(case, "bn_" + k, getattr(bn, k))
        fused = nni.ConvBnReLU2d(conv, bn, nn.ReLU()) if relu else nni.ConvBn2d(conv, bn)
        fused.qconfig = qconfig
        cls = nniqat.ConvBnReLU2d if relu else nniqat.ConvBn2d
        qat = cls.from_float(fused)
        qat.train()

        def step(k):  # a forward and backward on fresh data; what it produced, suffixed k
            x = torch.randn(2, 4, 5, 5)
            y = qat(x)
            r = torch.randn(y.shape)
            (y * r).sum().backward()
            for name, t in [("x", x), ("y", y), ("R", r), ("dweight", qat.weight.grad),
                            ("running_mean", qat.bn.running_mean),
                            ("running_var", qat.bn.running_var)]:
                fx.put(case, f"{name}{k}", t)

        step(1)  # batch statistics
        fx.put(case, "dbn_weight1", qat.bn.weight.grad)
        qat.zero_grad()
        qat.freeze_bn_stats()
        step(2)  # running statistics
        w, b = fuse_conv_bn_weights(qat.weight, qat.bias, qat.bn.running_mean, qat.bn.running_var,
                                    qat.bn.eps, qat.bn.weight, qat.bn.bias)
        fx.put(case, "fused_weight", w)
        fx.put(case, "fused_bias", b)


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # reproducible reductions
    os.makedirs(OUT_DIR, exist_ok=True)
    total = 0
    for name, make in [("observers", make_observers), ("fake_quant", make_fake_quant),
                       ("qat", make_qat)]:
        fx = Fixture()
        make(fx)
        path = os.path.join(OUT_DIR, f"quant_{name}.safetensors")
        save_safetensors(path, fx.tensors, {"generator": "tools/make_quant_fixtures.py",
                                            "torch": torch.__version__})
        size = os.path.getsize(path)
        total += size
        print(f"{path}: {len(fx.tensors)} tensors, {size} bytes")
    print(f"total {total} bytes")
    assert total < 400_000, "fixtures must stay small"


if __name__ == "__main__":
    main()
