#!/usr/bin/python3
"""Golden pruning masks from torch.nn.utils.prune, for tests/test_prune.cpp.

Run with Debian's torch 1.13 (importable only by /usr/bin/python3):

    /usr/bin/python3 tools/make_prune_fixtures.py

It writes tests/fixtures/prune_masks.safetensors (committed; the tests never run Python). Every
case `c` stores the tensor(s) it prunes (`c.w`, float32 as PyTorch's default, so tb sorts the very
same values) and the mask after each pruning call (`c.mask0`, `c.mask1`, ...). The settings of each
call are spelled in the C++ test next to the case name; the metadata records the state_dict key
orders PyTorch gives a pruned and an un-pruned Linear. The `train` case records a pruned Linear
after three SGD-momentum-weight-decay steps and three Adam steps (weight_orig and weight).

Random pruning is not here: PyTorch's generator is not tb's; the tests check its statistics.
All randomness is seeded: rerunning the script reproduces the file byte for byte.
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save_safetensors  # noqa: E402

OUT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                    "fixtures", "prune_masks.safetensors"))
INF = float("inf")

tensors = {}


def put(name, t):
    assert name not in tensors, name
    tensors[name] = t.detach().clone().contiguous()


def sequence(case, module, calls):
    """Applies `calls` (functions of the module) one after another on module.weight, storing the
    weight before and the mask after each call."""
    put(f"{case}.w", module.weight)
    for i, call in enumerate(calls):
        call(module)
        put(f"{case}.mask{i}", module.weight_mask)


def main():
    torch.manual_seed(0)
    # Unstructured L1 by fraction: 0.3 * 15 = 4.5 rounds to 4 (half to even), 0.1 * 15 = 1.5 to 2.
    sequence("l1_frac", nn.Linear(5, 3), [lambda m: prune.l1_unstructured(m, "weight", amount=0.3)])
    sequence("l1_round_up", nn.Linear(5, 3),
             [lambda m: prune.l1_unstructured(m, "weight", amount=0.1)])
    # By count.
    sequence("l1_count", nn.Conv2d(3, 4, 3),
             [lambda m: prune.l1_unstructured(m, "weight", amount=50)])
    # Iterative: 0.5 of 108 (54), then 0.5 of the 54 left (27), then a count of 10 of what is left.
    sequence("l1_iter", nn.Conv2d(3, 4, 3),
             [lambda m: prune.l1_unstructured(m, "weight", amount=0.5),
              lambda m: prune.l1_unstructured(m, "weight", amount=0.5),
              lambda m: prune.l1_unstructured(m, "weight", amount=10)])
    # Ln structured along several dims and norms.
    sequence("ln_l2_dim0", nn.Conv2d(4, 6, 3),
             [lambda m: prune.ln_structured(m, "weight", amount=0.5, n=2, dim=0)])
    sequence("ln_l1_dim1", nn.Conv2d(4, 6, 3),
             [lambda m: prune.ln_structured(m, "weight", amount=0.25, n=1, dim=1)])
    sequence("ln_inf_dimm1", nn.Conv2d(4, 6, 3),
             [lambda m: prune.ln_structured(m, "weight", amount=1, n=INF, dim=-1)])
    sequence("ln_ninf_dim2", nn.Conv2d(4, 6, 3),
             [lambda m: prune.ln_structured(m, "weight", amount=2, n=-INF, dim=2)])
    sequence("ln_l3_linear", nn.Linear(7, 9),
             [lambda m: prune.ln_structured(m, "weight", amount=0.4, n=3, dim=0)])
    # Iterative structured: 0.5 of 6 filters (3), then 0.5 of the 3 left (round(1.5) = 2), then
    # unstructured 0.3 of the remaining entries, then structured along dim 1 (PyTorch allows it).
    sequence("ln_iter", nn.Conv2d(4, 6, 3),
             [lambda m: prune.ln_structured(m, "weight", amount=0.5, n=2, dim=0),
              lambda m: prune.ln_structured(m, "weight", amount=0.5, n=2, dim=0),
              lambda m: prune.l1_unstructured(m, "weight", amount=0.3),
              lambda m: prune.ln_structured(m, "weight", amount=1, n=1, dim=1)])
    # Unstructured first, then structured: the norms are of the masked weight (PyTorch scores
    # with getattr(module, name), the effective tensor).
    sequence("l1_then_ln", nn.Conv2d(4, 6, 3),
             [lambda m: prune.l1_unstructured(m, "weight", amount=0.6),
              lambda m: prune.ln_structured(m, "weight", amount=0.5, n=1, dim=0)])
    # importance_scores instead of the weight.
    lin = nn.Linear(6, 4)
    scores = torch.randn(4, 6)
    put("scores.s", scores)
    sequence("scores", lin,
             [lambda m: prune.l1_unstructured(m, "weight", amount=0.5, importance_scores=scores)])

    # Global unstructured over three tensors, by fraction then again by count.
    a, b, c = nn.Linear(8, 6), nn.Conv2d(2, 3, 3), nn.Linear(6, 4)
    for name, m in (("a", a), ("b", b), ("c", c)):
        put(f"global.{name}.w", m.weight)
    params = ((a, "weight"), (b, "weight"), (c, "weight"))
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.4)
    for name, m in (("a", a), ("b", b), ("c", c)):
        put(f"global.{name}.mask0", m.weight_mask)
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=20)
    for name, m in (("a", a), ("b", b), ("c", c)):
        put(f"global.{name}.mask1", m.weight_mask)

    # Training a pruned Linear: SGD (momentum, weight decay) then Adam, three steps each.
    lin = nn.Linear(5, 3)
    put("train.w", lin.weight)
    put("train.b", lin.bias)
    prune.l1_unstructured(lin, "weight", amount=0.4)
    put("train.mask", lin.weight_mask)
    x, y = torch.randn(4, 5), torch.randn(4, 3)
    put("train.x", x)
    put("train.y", y)
    for opt_name, opt in (("sgd", torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9,
                                                    weight_decay=0.01)),
                          ("adam", torch.optim.Adam(lin.parameters(), lr=0.01))):
        for _ in range(3):
            opt.zero_grad()
            loss = ((lin(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
        put(f"train.{opt_name}.weight_orig", lin.weight_orig)
        put(f"train.{opt_name}.grad", lin.weight_orig.grad)
        lin(x)  # the hook recomputes weight from the updated weight_orig
        put(f"train.{opt_name}.weight", lin.weight)

    # state_dict key orders: pruned, then after remove().
    m = nn.Linear(3, 2)
    prune.l1_unstructured(m, "weight", amount=0.5)
    pruned_keys = ",".join(m.state_dict().keys())
    prune.remove(m, "weight")
    removed_keys = ",".join(m.state_dict().keys())

    save_safetensors(OUT, tensors, metadata={"generator": "tools/make_prune_fixtures.py",
                                             "torch": torch.__version__,
                                             "keys_pruned": pruned_keys,
                                             "keys_removed": removed_keys})
    print(f"wrote {OUT}: {len(tensors)} tensors; pruned keys {pruned_keys}; removed {removed_keys}")


if __name__ == "__main__":
    main()
