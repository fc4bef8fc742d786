#!/usr/bin/python3
"""PyTorch golden fixtures for tests/test_distill.cpp (the `distill` suite).

Run with Debian's torch (1.13, importable only by /usr/bin/python3):

    /usr/bin/python3 tools/make_distill_fixtures.py

It writes tests/fixtures/distill_losses.safetensors (committed; tests never run Python). All
randomness is seeded, so a rerun reproduces the file byte for byte. Everything is float64, so the
tests can compare to 1e-12.

Case `c` stores:
  * KD cases (`c.s`, `c.t` logits [N, C], `c.y` labels [N] int64, `c.cfg` float64 [2] =
    temperature, alpha with alpha on the HARD loss, Hinton's form):
      c.kd_hard = CE(s, y); c.kd_soft = T² KL(softmax(t/T) ‖ softmax(s/T)) batchmean;
      c.kd_soft_mean = the same with reduction="mean" (the common mis-scaling);
      c.kd_total = alpha hard + (1 − alpha) soft;  c.ds = d kd_total / d s
      c.kd_total_mean, c.ds_mean: the total and its gradient with the "mean" soft term.
  * Attention-transfer cases (`c.fs` [N, Cs, H, W], `c.ft` [N, Ct, H, W]):
      c.at_map_s = at(fs), c.at_loss = at_loss(fs, ft), c.dfs = d at_loss / d fs, with the
      functions of Zagoruyko & Komodakis' code (attention-transfer/utils.py).
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save_safetensors  # noqa: E402

OUT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                    "fixtures", "distill_losses.safetensors"))


def kd_terms(s, t, y, T, alpha, reduction):
    hard = F.cross_entropy(s, y)
    soft = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1),
                    reduction=reduction) * T * T
    return hard, soft, alpha * hard + (1 - alpha) * soft


def at(x):
    return F.normalize(x.pow(2).mean(1).view(x.size(0), -1))


def at_loss(x, y):
    return (at(x) - at(y)).pow(2).mean()


def main():
    torch.manual_seed(0)
    out = {}
    # (name, N, C, T, alpha, logit scale): small and large T, alpha at both ends, a batch of one.
    kd_cases = [("kd_a", 8, 10, 4.0, 0.5, 3.0), ("kd_b", 5, 3, 1.0, 0.9, 1.0),
                ("kd_c", 16, 10, 20.0, 0.1, 5.0), ("kd_d", 1, 7, 2.0, 0.0, 2.0),
                ("kd_e", 4, 10, 0.5, 1.0, 2.0)]
    for name, n, c, T, alpha, scale in kd_cases:
        s = (torch.randn(n, c, dtype=torch.float64) * scale).requires_grad_(True)
        t = torch.randn(n, c, dtype=torch.float64) * scale
        y = torch.randint(0, c, (n,))
        out[f"{name}.s"], out[f"{name}.t"], out[f"{name}.y"] = s.detach(), t, y
        out[f"{name}.cfg"] = torch.tensor([T, alpha], dtype=torch.float64)
        hard, soft, total = kd_terms(s, t, y, T, alpha, "batchmean")
        (ds,) = torch.autograd.grad(total, s)
        out[f"{name}.kd_hard"], out[f"{name}.kd_soft"] = hard.detach(), soft.detach()
        out[f"{name}.kd_total"], out[f"{name}.ds"] = total.detach(), ds
        _, soft_m, total_m = kd_terms(s, t, y, T, alpha, "mean")
        (ds_m,) = torch.autograd.grad(total_m, s)
        out[f"{name}.kd_soft_mean"], out[f"{name}.kd_total_mean"] = soft_m.detach(), total_m.detach()
        out[f"{name}.ds_mean"] = ds_m
    # (name, N, Cs, Ct, H, W)
    for name, n, cs, ct, h, w in [("at_a", 2, 3, 5, 4, 4), ("at_b", 3, 8, 8, 3, 5)]:
        fs = torch.randn(n, cs, h, w, dtype=torch.float64).requires_grad_(True)
        ft = torch.randn(n, ct, h, w, dtype=torch.float64)
        loss = at_loss(fs, ft)
        (dfs,) = torch.autograd.grad(loss, fs)
        out[f"{name}.fs"], out[f"{name}.ft"] = fs.detach(), ft
        out[f"{name}.at_map_s"], out[f"{name}.at_loss"] = at(fs).detach(), loss.detach()
        out[f"{name}.dfs"] = dfs
    save_safetensors(OUT, out, {"torch": torch.__version__, "script": "make_distill_fixtures.py"})
    print(f"wrote {OUT} ({len(out)} tensors)")


if __name__ == "__main__":
    main()
