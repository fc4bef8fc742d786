#!/usr/bin/python3
"""PyTorch golden fixtures for tests/test_lstm.cpp (the `lstm` suite): nn.LSTM forward and
gradients, and dynamic quantization (torch.ao.quantization.quantize_dynamic, onednn engine:
Debian's 1.13 is built without fbgemm; its onednn dynamic linear computes the same formula, which
the script checks against its own emulation).

Run with Debian's torch (1.13, importable only by /usr/bin/python3):

    /usr/bin/python3 tools/make_lstm_fixtures.py

It writes tests/fixtures/lstm_reference.safetensors and tests/fixtures/dynamic_quant.safetensors
(committed; tests never run Python). All randomness is seeded, so a rerun reproduces the files.

lstm_reference: case `c` stores
  * `c.config` int64 [6]: input_size, hidden_size, num_layers, batch_first (0/1),
    has_initial_state (0/1), batched (0/1: 0 = unbatched 2-D input);
  * the parameters under their state_dict names, `c.weight_ih_l0`, ...;
  * `c.x`, optionally `c.h0`, `c.c0`; the results `c.out`, `c.h_n`, `c.c_n`;
  * random weights `c.R_out`, `c.R_h`, `c.R_c` and the gradients of
    L = sum(out * R_out) + sum(h_n * R_h) + sum(c_n * R_c): `c.dx`, `c.dh0`, `c.dc0` and
    `c.d<param>` for every parameter.

dynamic_quant: after quantize_dynamic with per_channel_dynamic_qconfig (`pc`) or the default
per-tensor default_dynamic_qconfig (`pt`):
  * `lin_<q>`: a Sequential(Linear(16, 24), ReLU, Linear(24, 5)); float parameters `lin_<q>.0.weight`
    ... , PyTorch's int8 weights `lin_<q>.<i>.qweight` with `lin_<q>.<i>.wscale` (float32 [O] or
    [1]); inputs `lin_<q>.x<k>` and outputs `lin_<q>.y<k>`;
  * `lstm_<q>`: nn.LSTM(6, 8, num_layers=2, batch_first=True) float parameters `lstm_<q>.weight_ih_l0`
    ..., input `lstm_<q>.x`, outputs `lstm_<q>.out`, `lstm_<q>.h_n`, `lstm_<q>.c_n`.
The script also runs its own emulation of the x86 dynamic linear (per-batch uint8 activations
with reduce_range, int32 sums, float epilogue: what src/quant/dynamic.cpp implements) and prints
its largest difference from torch's output, so the semantics the C++ code follows are pinned.
"""
import os
import sys

import torch
import torch.nn as nn
from torch.ao.quantization import (default_dynamic_qconfig, per_channel_dynamic_qconfig,
                                   quantize_dynamic)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save_safetensors  # noqa: E402

OUT_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                        "fixtures"))


def lstm_case(out, name, input_size, hidden, layers, batch_first, init, batched=True, T=4, B=3,
              dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    m = nn.LSTM(input_size, hidden, num_layers=layers, batch_first=batch_first).to(dtype)
    if batched:
        shape = (B, T, input_size) if batch_first else (T, B, input_size)
        hshape = (layers, B, hidden)
    else:
        shape = (T, input_size)
        hshape = (layers, hidden)
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    h0 = torch.randn(*hshape, dtype=dtype, requires_grad=True) if init else None
    c0 = torch.randn(*hshape, dtype=dtype, requires_grad=True) if init else None
    y, (h, c) = m(x, (h0, c0)) if init else m(x)
    r_out, r_h, r_c = torch.randn_like(y), torch.randn_like(h), torch.randn_like(c)
    loss = (y * r_out).sum() + (h * r_h).sum() + (c * r_c).sum()
    loss.backward()
    out[f"{name}.config"] = torch.tensor([input_size, hidden, layers, int(batch_first), int(init),
                                         int(batched)], dtype=torch.int64)
    for k, p in m.named_parameters():
        out[f"{name}.{k}"] = p.detach()
    out[f"{name}.x"] = x.detach()
    if init:
        out[f"{name}.h0"] = h0.detach()
        out[f"{name}.c0"] = c0.detach()
    out[f"{name}.out"] = y.detach()
    out[f"{name}.h_n"] = h.detach()
    out[f"{name}.c_n"] = c.detach()
    out[f"{name}.R_out"] = r_out
    out[f"{name}.R_h"] = r_h
    out[f"{name}.R_c"] = r_c
    out[f"{name}.dx"] = x.grad
    if init:
        out[f"{name}.dh0"] = h0.grad
        out[f"{name}.dc0"] = c0.grad
    for k, p in m.named_parameters():
        out[f"{name}.d{k}"] = p.grad


# ---- fbgemm's dynamic linear, emulated (what src/quant/dynamic.cpp implements) ----------------

def choose_qparams(xmin, xmax, qmin=0, qmax=255, reduce_range=True):
    """fbgemm / ATen quant_utils::ChooseQuantizationParams (no sparsity, no power-of-two)."""
    if reduce_range:
        qmin, qmax = qmin // 2, qmax // 2
    xmin, xmax = min(xmin, 0.0), max(xmax, 0.0)
    xmin = float(torch.tensor(xmin, dtype=torch.float32))
    xmax = float(torch.tensor(xmax, dtype=torch.float32))
    scale = (xmax - xmin) / (qmax - qmin)  # double
    if float(torch.tensor(scale, dtype=torch.float32)) == 0.0:
        scale = 0.1
    small = 6.1e-5
    if scale < small:
        org = scale
        scale = small
        if xmin == 0.0:
            xmax = small * (qmax - qmin)
        elif xmax == 0.0:
            xmin = -small * (qmax - qmin)
        else:
            xmin, xmax = xmin * small / org, xmax * small / org
    scale = float(torch.tensor(scale, dtype=torch.float32))
    zp_min = qmin - xmin / scale
    zp_max = qmax - xmax / scale
    err_min = abs(qmin) - abs(xmin / scale)
    err_max = abs(qmax) - abs(xmax / scale)
    zp = zp_min if err_min < err_max else zp_max
    if zp < qmin:
        zp = qmin
    elif zp > qmax:
        zp = qmax
    else:
        zp = int(torch.tensor(zp).round().item())
    return scale, int(zp)


def emulate_linear(x, qweight, wscale, bias):
    """y = float(sum (xq - zp) * wq) * (x_scale * w_scale) + bias, xq uint8 per batch."""
    x = x.float()
    s, zp = choose_qparams(x.min().item(), x.max().item())
    inv = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(s, dtype=torch.float32)
    xq = torch.clamp(torch.round(x * inv) + zp, 0, 255)
    acc = (xq - zp).double() @ qweight.double().t()  # exact integers
    mult = torch.tensor(s, dtype=torch.float32) * wscale.float()
    y = acc.float() * mult
    if bias is not None:
        y = y + bias.float()
    return y


def dynamic_case(out, name, qconfig, seed):
    torch.backends.quantized.engine = "onednn"  # fbgemm is not built into Debian's 1.13
    torch.manual_seed(seed)
    lin = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 5)).eval()
    qlin = quantize_dynamic(lin, {nn.Linear: qconfig}, dtype=torch.qint8)
    for k, p in lin.state_dict().items():
        out[f"lin_{name}.{k}"] = p.detach().clone()
    xs = [torch.randn(7, 16) * 2.0,
          torch.rand(2, 3, 16) * 3.0,        # all positive, 3-D
          -torch.rand(1, 16),               # all negative, batch 1
          torch.zeros(2, 16)]               # all zero: PyTorch's scale 0.1 fallback
    for i in (0, 2):
        mod = qlin[i]
        w, b = mod._packed_params._weight_bias()
        out[f"lin_{name}.{i}.qweight"] = w.int_repr()
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            out[f"lin_{name}.{i}.wscale"] = w.q_per_channel_scales().float()
        else:
            out[f"lin_{name}.{i}.wscale"] = torch.tensor([w.q_scale()], dtype=torch.float32)
    worst = 0.0
    for k, x in enumerate(xs):
        with torch.no_grad():
            y = qlin(x)
            # emulate: two dynamic linears with a ReLU between
            h = x
            for i in (0, 2):
                mod = qlin[i]
                w, b = mod._packed_params._weight_bias()
                wscale = (w.q_per_channel_scales() if w.qscheme() in
                          (torch.per_channel_affine, torch.per_channel_symmetric)
                          else torch.tensor([w.q_scale()]))
                h = emulate_linear(h, w.int_repr(), wscale, b)
                if i == 0:
                    h = torch.relu(h)
            worst = max(worst, (h - y).abs().max().item())
        out[f"lin_{name}.x{k}"] = x
        out[f"lin_{name}.y{k}"] = y
    print(f"lin_{name}: emulation vs torch max |diff| = {worst:.3g}")

    torch.manual_seed(seed + 1)
    lstm = nn.LSTM(6, 8, num_layers=2, batch_first=True).eval()
    qlstm = quantize_dynamic(nn.Sequential(lstm), {nn.LSTM: qconfig}, dtype=torch.qint8)[0]
    for k, p in lstm.state_dict().items():
        out[f"lstm_{name}.{k}"] = p.detach().clone()
    x = torch.randn(3, 5, 6)
    with torch.no_grad():
        y, (h, c) = qlstm(x)
        yf, _ = lstm(x)
    out[f"lstm_{name}.x"] = x
    out[f"lstm_{name}.out"] = y
    out[f"lstm_{name}.h_n"] = h
    out[f"lstm_{name}.c_n"] = c
    print(f"lstm_{name}: dynamic int8 vs float max |diff| = {(y - yf).abs().max().item():.3g}")


def main():
    ref = {}
    lstm_case(ref, "l1", 5, 4, 1, False, False, seed=1)
    lstm_case(ref, "l2", 5, 4, 2, False, False, seed=2)
    lstm_case(ref, "bf", 3, 4, 2, True, False, seed=3)
    lstm_case(ref, "init", 5, 3, 2, False, True, seed=4)
    lstm_case(ref, "init_bf", 5, 3, 1, True, True, seed=5)
    lstm_case(ref, "unbatched", 4, 3, 2, False, True, batched=False, seed=6)
    lstm_case(ref, "f32", 5, 6, 2, True, False, dtype=torch.float32, seed=7)
    save_safetensors(os.path.join(OUT_DIR, "lstm_reference.safetensors"), ref)

    dyn = {}
    dynamic_case(dyn, "pc", per_channel_dynamic_qconfig, 10)
    dynamic_case(dyn, "pt", default_dynamic_qconfig, 20)
    save_safetensors(os.path.join(OUT_DIR, "dynamic_quant.safetensors"), dyn)
    print("wrote lstm_reference.safetensors, dynamic_quant.safetensors")


if __name__ == "__main__":
    main()
