#!/usr/bin/env python3
"""PyTorch twin of tools/bench_cuda.cpp: the same GPU cases, timed the same way (median of
synchronised runs after warm-up), printed in the same columns. Runs where PyTorch has CUDA (the GPU
machine: python3 tools/bench_cuda_torch.py [--quick]).
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

dev = torch.device("cuda")


def median_ms(fn, reps, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def row(name, ms, rate, unit):
    print(f"{name:<34}{ms:>10.3f}{rate:>12.1f} {unit}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    reps = 5 if args.quick else 21
    torch.backends.cuda.matmul.allow_tf32 = False  # true float32, as tb
    torch.manual_seed(0)
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}, median of {reps} runs")
    for n in (1024, 4096, 8192):
        if args.quick and n > 1024:
            continue
        a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
        ms = median_ms(lambda: a @ b, reps)
        row(f"gemm_f32_{n}", ms, 2 * n**3 / (ms * 1e9), "TFLOP/s")
    n = (1 << 20) if args.quick else (1 << 26)
    x, y = torch.randn(n, device=dev), torch.randn(n, device=dev)
    gb = n * 4 / 1e9
    ms = median_ms(lambda: x + y, reps)
    row("add_f32_64M", ms, 3 * gb / (ms * 1e-3), "GB/s")
    ms = median_ms(lambda: torch.relu(x), reps)
    row("relu_f32_64M", ms, 2 * gb / (ms * 1e-3), "GB/s")
    ms = median_ms(lambda: x.sum(), reps)
    row("sum_f32_64M", ms, gb / (ms * 1e-3), "GB/s")
    g = torch.randn(4096, 1024, device=dev)
    ms = median_ms(lambda: g.sum(0), reps)
    row("sum_dim0_4096x1024", ms, 4096 * 1024 * 4 / 1e9 / (ms * 1e-3), "GB/s")
    ms = median_ms(lambda: g.min(0), reps)
    row("min_dim0_4096x1024", ms, 4096 * 1024 * 4 / 1e9 / (ms * 1e-3), "GB/s")

    logits = torch.randn(4096, 1000, device=dev, requires_grad=True)
    target = torch.randint(0, 1000, (4096,), device=dev)

    def ce():
        logits.grad = None
        F.cross_entropy(logits, target).backward()

    ms = median_ms(ce, reps)
    row("cross_entropy_4096x1000", ms, 3 * 4096 * 1000 * 4 / 1e9 / (ms * 1e-3), "GB/s")

    for batch in (64, 1024):
        model = torch.nn.Sequential(torch.nn.Linear(784, 1024), torch.nn.ReLU(),
                                    torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
                                    torch.nn.Linear(1024, 10)).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        xb = torch.randn(batch, 784, device=dev)
        yb = torch.randint(0, 10, (batch,), device=dev)

        def step():
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()

        ms = median_ms(step, reps)
        row(f"mlp_train_step_b{batch}", ms, batch / (ms * 1e-3), "img/s")


if __name__ == "__main__":
    main()
