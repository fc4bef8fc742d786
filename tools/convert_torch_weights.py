#!/usr/bin/python3
"""PyTorch state_dicts -> safetensors for tb's model zoo, block fixtures, end-to-end checks.

Runs with Debian's python3-torch (1.13) and python3-torchvision (0.14). torch 1.13 has no
safetensors package, so the format is written by hand: 8-byte little-endian header length, a
JSON header {name: {dtype, shape, data_offsets}}, then the raw little-endian bytes.

  convert_torch_weights.py convert IN.pth OUT.safetensors
      IN: a saved state_dict, a {"state_dict": ...} / {"model": ...} checkpoint or a whole
      pickled module. Keys are kept as they are: tb's zoo uses torchvision's names, so
      tb::nn::load(*tb::models::create("resnet18"), OUT) loads a torchvision checkpoint.
  convert_torch_weights.py fixtures [DIR]
      writes the block fixtures tests/test_models.cpp compares against (default
      tests/fixtures/blocks_*.safetensors): a block's state_dict, "input" and the eval-mode
      "output", all float32.
  convert_torch_weights.py check-model NAME [--tb build/tools/tb] [--batch 2] [--tol 1e-4]
      random-init torchvision NAME (BN statistics randomised so eval mode is not the identity),
      writes weights, input and torchvision's output to a temporary folder, runs
      `tb forward NAME weights input out` and prints the max abs difference.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision
from torchvision.models import efficientnet, mobilenetv2, mobilenetv3, resnet, shufflenetv2
from torchvision.ops.misc import SqueezeExcitation

from safetensors_io import load_safetensors, save_safetensors


def state_dict_of(obj):
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            return obj[key]
    return obj


def convert(src, dst):
    sd = state_dict_of(torch.load(src, map_location="cpu"))
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    save_safetensors(dst, tensors, {"source": os.path.basename(src)})
    n = sum(v.numel() for v in tensors.values())
    print(f"wrote {dst}: {len(tensors)} tensors, {n} elements")


def randomize_bn(model, gen):
    """Non-trivial eval-mode BN: random affine parameters and running statistics."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(c, generator=gen) * 0.4 - 0.2)
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(3)


# ---- block fixtures ---------------------------------------------------------------------------
# Each entry: file name -> (block constructor, input shape). tests/test_models.cpp builds the same
# blocks with tb's classes; keep both in sync.
def fixture_blocks():
    def basic_block():
        ds = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 1, 2, bias=False), torch.nn.BatchNorm2d(16))
        return resnet.BasicBlock(8, 16, stride=2, downsample=ds)

    def bottleneck():
        ds = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 1, 2, bias=False), torch.nn.BatchNorm2d(32))
        return resnet.Bottleneck(16, 8, stride=2, downsample=ds)

    def shuffle_units():  # both paths: stride 2 (two branches) then stride 1 (split + shuffle)
        return torch.nn.Sequential(shufflenetv2.InvertedResidual(24, 48, 2),
                                   shufflenetv2.InvertedResidual(48, 48, 1))

    def mbconv():  # EfficientNet block with residual, SE (SiLU) and stochastic depth
        cnf = efficientnet.MBConvConfig(6, 5, 1, 16, 16, 1)
        return efficientnet.MBConv(cnf, 0.1, torch.nn.BatchNorm2d)

    def mobilenet_v3_block():  # expansion, hardswish, SE with hardsigmoid, BN eps 1e-3
        cnf = mobilenetv3.InvertedResidualConfig(24, 5, 96, 24, True, "HS", 1, 1, 1.0)
        from functools import partial
        return mobilenetv3.InvertedResidual(cnf, partial(torch.nn.BatchNorm2d, eps=0.001,
                                                         momentum=0.01))

    return {
        "blocks_inverted_residual": (lambda: mobilenetv2.InvertedResidual(16, 16, 1, 6), [2, 16, 8, 8]),
        "blocks_basic_block": (basic_block, [2, 8, 8, 8]),
        "blocks_bottleneck": (bottleneck, [2, 16, 6, 6]),
        "blocks_squeeze_excitation": (lambda: SqueezeExcitation(16, 4), [2, 16, 5, 5]),
        "blocks_shufflenet_units": (shuffle_units, [2, 24, 8, 8]),
        "blocks_mbconv": (mbconv, [2, 16, 6, 6]),
        "blocks_mobilenet_v3": (mobilenet_v3_block, [2, 24, 6, 6]),
    }


def write_fixtures(folder):
    os.makedirs(folder, exist_ok=True)
    for i, (name, (make, shape)) in enumerate(fixture_blocks().items()):
        torch.manual_seed(100 + i)
        gen = torch.Generator().manual_seed(200 + i)
        block = make()
        randomize_bn(block, gen)
        block.eval()
        x = torch.randn(shape, generator=gen)
        with torch.no_grad():
            y = block(x)
        tensors = dict(block.state_dict())
        assert "input" not in tensors and "output" not in tensors
        tensors["input"], tensors["output"] = x, y
        path = os.path.join(folder, name + ".safetensors")
        save_safetensors(path, tensors, {"torch": torch.__version__,
                                         "torchvision": torchvision.__version__})
        print(f"wrote {path} ({os.path.getsize(path)} bytes), output {list(y.shape)}")


# ---- whole-model check against tb -------------------------------------------------------------
def check_model(name, tb, batch):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    randomize_bn(model, gen)
    model.eval()
    x = torch.randn(batch, 3, 224, 224, generator=gen)
    with torch.no_grad():
        y = model(x)
    with tempfile.TemporaryDirectory() as d:
        w, i, o = (os.path.join(d, f) for f in ("weights.safetensors", "input.safetensors",
                                                 "output.safetensors"))
        save_safetensors(w, model.state_dict())
        save_safetensors(i, {"input": x})
        subprocess.run([tb, "forward", name, w, i, o], check=True)
        got = load_safetensors(o)["output"]
    ref = y.numpy()
    diff = float(np.abs(got - ref).max())
    scale = float(np.abs(ref).max())
    print(f"{name}: output {list(ref.shape)}, max |torch| {scale:.4g}, "
          f"max abs diff {diff:.3g} (relative {diff / scale:.3g})")
    return diff / scale


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("src")
    c.add_argument("dst")
    f = sub.add_parser("fixtures")
    f.add_argument("folder", nargs="?",
                   default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    k = sub.add_parser("check-model")
    k.add_argument("name", choices=["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small",
                                    "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "efficientnet_b0"])
    k.add_argument("--tb", default=os.path.join(os.path.dirname(__file__), "..", "build", "tools",
                                                "tb"))
    k.add_argument("--batch", type=int, default=2)
    k.add_argument("--tol", type=float, default=1e-4, help="max relative difference accepted")
    a = ap.parse_args()
    if a.cmd == "convert":
        convert(a.src, a.dst)
    elif a.cmd == "fixtures":
        write_fixtures(a.folder)
    else:
        rel = check_model(a.name, a.tb, a.batch)
        sys.exit(0 if rel <= a.tol else 1)


if __name__ == "__main__":
    main()
