#!/usr/bin/python3
"""Golden PyTorch fixtures for tests/test_golden.cpp.

Run with Debian's torch (1.13, importable only by /usr/bin/python3):

    /usr/bin/python3 tools/make_fixtures.py

It writes tests/fixtures/golden_{conv2d,batchnorm,loss,misc}.safetensors (committed; tests never
run Python). Every case `c` stores its inputs, its parameters (as small int64/float64 tensors, so
the C++ side cannot drift from them), the forward output `c.out`, a fixed random weight `c.R`
shaped like the output, and the gradients of L = sum(out * R) with respect to every differentiable
input, named `c.d<input>` (c.dx, c.dw, c.db, ...).

All randomness is seeded, so rerunning the script reproduces the files byte for byte. Most cases
are float64 (so tb and PyTorch should agree to ~1e-12 and any larger gap is a real bug); a few are
float32 (name ends in `_f32`) to check the float32 kernels (oneDNN, OpenBLAS) against PyTorch's own.

The safetensors format is written by hand (no `safetensors` package on Debian): 8-byte
little-endian header length, a JSON header {name: {dtype, shape, data_offsets}} padded with spaces
to a multiple of 8, then the raw little-endian bytes of every tensor.
"""
import json
import os
import struct

import torch
import torch.nn.functional as F

OUT_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                        "fixtures"))
DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.int64: "I64"}


def write_safetensors(path, tensors):
    """tensors: dict name -> torch tensor (float64/float32/int64), written in insertion order."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        data = t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"generator": "tools/make_fixtures.py", "torch": torch.__version__}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


class Fixture:
    """Collects the cases of one file."""

    def __init__(self):
        self.tensors = {}

    def put(self, case, name, t):
        key = f"{case}.{name}"
        assert key not in self.tensors, key
        self.tensors[key] = t.detach().clone()

    def case(self, name, fn, inputs, params=None, extra=None, differentiable=None):
        """Runs out = fn(**inputs), stores inputs, params, out, R and d<input> = dL/d input for
        L = sum(out * R). `differentiable` lists the inputs that get gradients (default: every
        floating input). `extra` is a dict of tensors to store after the forward (e.g. updated
        running statistics), given as a callable returning the dict."""
        if differentiable is None:
            differentiable = [k for k, v in inputs.items() if v is not None and v.is_floating_point()]
        leaves = {}
        for k, v in inputs.items():
            if v is None:
                leaves[k] = None
                continue
            self.put(name, k, v)  # stored before the forward: in-place updates don't leak in
            leaves[k] = v.detach().clone().requires_grad_(k in differentiable)
        for k, v in (params or {}).items():
            self.put(name, k, torch.as_tensor(v, dtype=torch.float64 if isinstance(v, float) or (
                isinstance(v, (list, tuple)) and isinstance(v[0], float)) else torch.int64))
        out = fn(**leaves)
        r = torch.randn(out.shape, dtype=out.dtype)
        self.put(name, "out", out)
        self.put(name, "R", r)
        (out * r).sum().backward()
        for k in differentiable:
            self.put(name, "d" + k, leaves[k].grad)
        if extra is not None:
            for k, v in extra(leaves).items():
                self.put(name, k, v)


def randn(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# conv2d: x [N, C, H, W], w [O, C/groups, kh, kw], b [O] (absent in `conv_nobias_dil2`).
# params: stride [sh, sw], padding [ph, pw], dilation [dh, dw], groups [g].
def make_conv(fx):
    def conv(case, n, c, h, w, o, k, stride=1, padding=0, dilation=1, groups=1, bias=True,
             dtype=torch.float64):
        kh, kw = (k, k) if isinstance(k, int) else k
        pair = lambda v: [v, v] if isinstance(v, int) else list(v)
        inputs = {"x": randn(n, c, h, w, dtype=dtype),
                  "w": randn(o, c // groups, kh, kw, dtype=dtype) / (c // groups * kh * kw) ** 0.5,
                  "b": randn(o, dtype=dtype) if bias else None}
        params = {"stride": pair(stride), "padding": pair(padding), "dilation": pair(dilation),
                  "groups": [groups]}
        fx.case(case, lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups),
                inputs, params)

    conv("conv_plain", 1, 3, 6, 5, 4, 3)                                  # 3x3, no padding
    conv("conv_s2p1", 1, 3, 7, 8, 4, 3, stride=2, padding=1)              # ResNet downsampling
    conv("conv_nobias_dil2", 1, 2, 9, 8, 3, 3, dilation=2, padding=2, bias=False)
    conv("conv_groups2", 1, 4, 5, 6, 6, 3, padding=1, groups=2)           # 2 groups, 2 in / 3 out
    conv("conv_depthwise", 1, 4, 6, 6, 4, 3, padding=1, groups=4)         # MobileNet depthwise
    conv("conv_depthwise_mult2", 1, 3, 5, 5, 6, 3, stride=2, padding=1, groups=3)
    conv("conv_1x1", 2, 5, 4, 3, 3, 1)                                    # pointwise
    conv("conv_rect", 1, 2, 7, 9, 3, (3, 1), stride=(2, 1), padding=(1, 0))  # asymmetric
    conv("conv_s2p1_f32", 1, 8, 7, 7, 8, 3, stride=2, padding=1, dtype=torch.float32)
    conv("conv_plain_f32", 1, 8, 6, 6, 8, 3, padding=1, dtype=torch.float32)
    conv("conv_depthwise_f32", 2, 8, 5, 5, 8, 3, padding=1, groups=8, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# batch_norm: x [N, C] or [N, C, H, W]; running_mean/var [C]; weight/bias [C] (absent when
# affine is off). params: training [0/1], momentum, eps. Training cases also store the running
# statistics after the update (running_mean_after, running_var_after: PyTorch uses the unbiased
# batch variance there, the biased one for normalising).
def make_batchnorm(fx):
    def bn(case, shape, training, affine=True, momentum=0.1, eps=1e-5, dtype=torch.float64):
        c = shape[1]
        inputs = {"x": randn(*shape, dtype=dtype) * 2 + 0.5,
                  "running_mean": randn(c, dtype=dtype) * 0.1,
                  "running_var": torch.rand(c, dtype=dtype) + 0.5,
                  "weight": randn(c, dtype=dtype) if affine else None,
                  "bias": randn(c, dtype=dtype) if affine else None}
        diff = ["x"] + (["weight", "bias"] if affine else [])
        params = {"training": [int(training)], "momentum": [momentum], "eps": [eps]}

        def fn(x, running_mean, running_var, weight, bias):
            return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)

        extra = (lambda l: {"running_mean_after": l["running_mean"],
                            "running_var_after": l["running_var"]}) if training else None
        fx.case(case, fn, inputs, params, extra=extra, differentiable=diff)

    bn("bn_train_2d", (6, 3), True)
    bn("bn_train_4d", (3, 4, 5, 3), True)
    bn("bn_train_4d_noaffine", (2, 3, 4, 4), True, affine=False, momentum=0.3, eps=1e-3)
    bn("bn_eval_2d", (5, 4), False)
    bn("bn_eval_4d", (2, 3, 3, 4), False)
    bn("bn_train_4d_f32", (2, 8, 4, 4), True, dtype=torch.float32)
    bn("bn_eval_4d_f32", (2, 8, 4, 4), False, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Losses. cross_entropy: logits [N, C], target [N] int64. params: label_smoothing, reduction
# (0 = mean, 1 = sum, 2 = none), ignore_index. Out is a scalar (shape []) for mean/sum, [N] for none.
REDUCTIONS = ["mean", "sum", "none"]


def make_loss(fx):
    def ce(case, n, c, smoothing=0.0, reduction="mean", ignore_index=-100, ignored=(),
           dtype=torch.float64):
        target = torch.randint(0, c, (n,), dtype=torch.int64)
        for i in ignored:
            target[i] = ignore_index
        inputs = {"logits": randn(n, c, dtype=dtype) * 2, "target": target}
        params = {"label_smoothing": [smoothing], "reduction": [REDUCTIONS.index(reduction)],
                  "ignore_index": [ignore_index]}
        fx.case(case, lambda logits, target: F.cross_entropy(
            logits, target, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=smoothing), inputs, params)

    ce("ce_plain", 6, 5)
    ce("ce_smooth", 6, 5, smoothing=0.1)
    ce("ce_ignore", 7, 4, ignored=(1, 4))                               # default ignore_index -100
    ce("ce_ignore2_smooth", 7, 4, smoothing=0.1, ignore_index=2, ignored=(0, 5))
    ce("ce_sum", 5, 3, reduction="sum")
    ce("ce_none", 5, 3, reduction="none", ignored=(2,))
    ce("ce_smooth_none", 5, 6, smoothing=0.1, reduction="none")
    ce("ce_smooth_sum", 5, 6, smoothing=0.2, reduction="sum", ignored=(3,))
    ce("ce_plain_f32", 8, 10, dtype=torch.float32)

    # kl_div: input log-probabilities [N, C], target probabilities (or log-probabilities when
    # log_target). params: log_target [0/1]; reduction is always "batchmean" (sum / N).
    def kl(case, n, c, log_target):
        p = torch.softmax(randn(n, c), 1)
        inputs = {"input": torch.log_softmax(randn(n, c), 1),
                  "target": p.log() if log_target else p}
        fx.case(case, lambda input, target: F.kl_div(input, target, reduction="batchmean",
                                                     log_target=log_target),
                inputs, {"log_target": [int(log_target)]})

    kl("kl_batchmean", 4, 5, False)
    kl("kl_batchmean_logtarget", 4, 5, True)

    # mse_loss: input and target [N, ...]. params: reduction (0 mean, 1 sum, 2 none).
    for red in REDUCTIONS:
        fx.case(f"mse_{red}", lambda input, target: F.mse_loss(input, target, reduction=red),
                {"input": randn(3, 4), "target": randn(3, 4)},
                {"reduction": [REDUCTIONS.index(red)]})


# ---------------------------------------------------------------------------------------------
# Softmax, pooling, linear, gelu.
def make_misc(fx):
    # softmax / log_softmax: params dim [d].
    fx.case("softmax_last", lambda x: torch.softmax(x, -1), {"x": randn(3, 5) * 3}, {"dim": [-1]})
    fx.case("softmax_dim0", lambda x: torch.softmax(x, 0), {"x": randn(4, 3, 2) * 3}, {"dim": [0]})
    fx.case("log_softmax_dim1", lambda x: torch.log_softmax(x, 1), {"x": randn(2, 4, 3) * 3},
            {"dim": [1]})
    fx.case("log_softmax_last_f32", lambda x: torch.log_softmax(x, -1),
            {"x": randn(4, 10, dtype=torch.float32) * 3}, {"dim": [-1]})

    # Pooling: x [N, C, H, W]. params: kernel [kh, kw], stride [sh, sw], padding [ph, pw],
    # ceil_mode [0/1], count_include_pad [0/1] (avg only). Inputs are a random permutation of
    # distinct values, so max pooling has no ties and its gradient is unambiguous.
    def distinct(*shape, dtype=torch.float64):
        n = 1
        for s in shape:
            n *= s
        return (torch.randperm(n).to(dtype) / n * 4 - 2).reshape(shape)

    def pool(case, kind, shape, k, s, p, ceil=False, cip=True, dtype=torch.float64):
        params = {"kernel": list(k), "stride": list(s), "padding": list(p), "ceil_mode": [int(ceil)],
                  "count_include_pad": [int(cip)]}
        if kind == "max":
            fn = lambda x: F.max_pool2d(x, k, s, p, ceil_mode=ceil)
        else:
            fn = lambda x: F.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=cip)
        fx.case(case, fn, {"x": distinct(*shape, dtype=dtype)}, params)

    pool("maxpool_k2s2", "max", (1, 3, 6, 6), (2, 2), (2, 2), (0, 0))
    pool("maxpool_k3s2p1", "max", (1, 2, 7, 7), (3, 3), (2, 2), (1, 1))   # ResNet stem pool
    pool("maxpool_k3s2_ceil", "max", (1, 2, 6, 7), (3, 3), (2, 2), (0, 0), ceil=True)
    pool("maxpool_k3s2p1_f32", "max", (1, 4, 7, 7), (3, 3), (2, 2), (1, 1), dtype=torch.float32)
    pool("avgpool_k2s2", "avg", (1, 3, 6, 6), (2, 2), (2, 2), (0, 0))
    pool("avgpool_k3s2p1", "avg", (1, 2, 7, 7), (3, 3), (2, 2), (1, 1))
    pool("avgpool_k3s2p1_nopad", "avg", (1, 2, 7, 7), (3, 3), (2, 2), (1, 1), cip=False)
    pool("avgpool_k3s2_ceil", "avg", (1, 2, 6, 7), (3, 3), (2, 2), (1, 1), ceil=True)
    pool("avgpool_k3s1p1_f32", "avg", (1, 4, 6, 6), (3, 3), (1, 1), (1, 1), dtype=torch.float32)

    # adaptive_avg_pool2d: params output_size [oh, ow]; windows [floor(i H / oh), ceil((i+1) H / oh)).
    for case, shape, osz in [("adaptive_7x5_to_3x2", (2, 3, 7, 5), (3, 2)),
                             ("adaptive_to_1x1", (2, 4, 5, 5), (1, 1)),
                             ("adaptive_4x4_to_6x5", (1, 2, 4, 4), (6, 5))]:   # upsampling windows
        fx.case(case, lambda x, osz=osz: F.adaptive_avg_pool2d(x, osz), {"x": randn(*shape)},
                {"output_size": list(osz)})

    # linear: x [..., in], weight [out, in], bias [out] (absent in linear_nobias).
    fx.case("linear_2d", lambda x, weight, bias: F.linear(x, weight, bias),
            {"x": randn(4, 5), "weight": randn(3, 5), "bias": randn(3)})
    fx.case("linear_3d", lambda x, weight, bias: F.linear(x, weight, bias),
            {"x": randn(2, 3, 5), "weight": randn(4, 5), "bias": randn(4)})
    fx.case("linear_nobias", lambda x, weight: F.linear(x, weight),
            {"x": randn(3, 6), "weight": randn(2, 6)})
    fx.case("linear_f32", lambda x, weight, bias: F.linear(x, weight, bias),
            {"x": randn(8, 16, dtype=torch.float32), "weight": randn(12, 16, dtype=torch.float32),
             "bias": randn(12, dtype=torch.float32)})

    # gelu: params approximate [0 = "none" (erf), 1 = "tanh"].
    fx.case("gelu_erf", lambda x: F.gelu(x), {"x": randn(3, 7) * 2}, {"approximate": [0]})
    fx.case("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), {"x": randn(3, 7) * 2},
            {"approximate": [1]})


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # reproducible reductions
    os.makedirs(OUT_DIR, exist_ok=True)
    total = 0
    for name, make in [("conv2d", make_conv), ("batchnorm", make_batchnorm), ("loss", make_loss),
                       ("misc", make_misc)]:
        fx = Fixture()
        make(fx)
        path = os.path.join(OUT_DIR, f"golden_{name}.safetensors")
        write_safetensors(path, fx.tensors)
        size = os.path.getsize(path)
        total += size
        print(f"{path}: {len(fx.tensors)} tensors, {size} bytes")
    print(f"total {total} bytes")
    assert total < 200_000, "fixtures must stay small"


if __name__ == "__main__":
    main()
