#!/usr/bin/python3
"""Writes the PyTorch fixtures that tests/test_safetensors.cpp loads.

Run with Debian's torch (torch 1.13 has no safetensors package, so the format is written here:
8-byte little-endian header length, JSON header, raw little-endian bytes):
    /usr/bin/python3 tools/make_safetensors_fixture.py
Outputs (tests/fixtures/):
  nn_tiny_cnn.safetensors     state_dict of Sequential(Conv2d(2,3,3,padding=1), BatchNorm2d(3),
                              ReLU(), Flatten(), Linear(48,5)) after 3 training-mode forwards
                              (so the BN running stats and num_batches_tracked are non-trivial)
  nn_tiny_cnn_io.safetensors  "input" [2,2,4,4] and the eval-mode "output" [2,5] of that model,
                              plus one small tensor per dtype (f64 f32 f16 bf16 i64 i32 i8 u8 bool),
                              a scalar and an empty tensor, to check byte layouts against torch's.
"""
import os

import torch

from safetensors_io import save_safetensors


def main():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.BatchNorm2d(3), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    with torch.no_grad():  # non-trivial affine BN parameters
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
        model.train()
        for _ in range(3):
            model(torch.randn(4, 2, 4, 4) * 2 + 0.5)
        model.eval()
        x = torch.randn(2, 2, 4, 4)
        y = model(x)

    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
    os.makedirs(out, exist_ok=True)
    save_safetensors(os.path.join(out, "nn_tiny_cnn.safetensors"), model.state_dict(),
         {"format": "pt", "source": "tools/make_safetensors_fixture.py",
          "torch_version": torch.__version__})
    samples = {
        "input": x, "output": y,
        "f64": torch.tensor([1.5, -2.25, 1e-300, 3.141592653589793], dtype=torch.float64),
        "f32": torch.tensor([[1.5, -2.25], [65504.0, 1e-7]], dtype=torch.float32),
        "f16": torch.tensor([1.5, -2.25, 65504.0, 6.1035e-05, 0.1], dtype=torch.float16),
        "bf16": torch.tensor([1.5, -2.25, 3.0e38, 0.1], dtype=torch.bfloat16),
        "i64": torch.tensor([1, -2, 2**40, -(2**62)], dtype=torch.int64),
        "i32": torch.tensor([[7, -8, 2**31 - 1]], dtype=torch.int32),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 1, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True], dtype=torch.bool),
        "scalar": torch.tensor(2.5, dtype=torch.float32),
        "empty": torch.zeros(0, 3, dtype=torch.float32),
    }
    save_safetensors(os.path.join(out, "nn_tiny_cnn_io.safetensors"), samples, {"what": "tb test fixture"})
    print("f16 bits", torch.tensor([1.5, -2.25, 65504.0, 6.1035e-05, 0.1], dtype=torch.float16).view(torch.int16).tolist())
    print("bf16 bits", torch.tensor([1.5, -2.25, 3.0e38, 0.1], dtype=torch.bfloat16).view(torch.int16).tolist())
    print("bf16 values", torch.tensor([1.5, -2.25, 3.0e38, 0.1], dtype=torch.bfloat16).float().tolist())
    print("f16 values", torch.tensor([1.5, -2.25, 65504.0, 6.1035e-05, 0.1], dtype=torch.float16).float().tolist())
    for k, v in model.state_dict().items():
        print(k, list(v.shape), v.flatten()[:3].tolist())
    print("output", y.tolist())


if __name__ == "__main__":
    main()
