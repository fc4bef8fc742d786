#!/usr/bin/python3
"""PyTorch twin of tools/bench.cpp: the same GEMMs and conv2d shapes, timed the same way.

Debian's torch 1.13 imports only in /usr/bin/python3. Out of the box it uses the reference BLAS and
glibc's malloc returns every large tensor to the OS, which makes it several times slower than a
normal PyTorch. A fair comparison runs it as /work/shared/README.md says ("A fair PyTorch"):

    export LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp OPENBLAS_NUM_THREADS=2
    export GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=100000000000
    /usr/bin/python3 tools/bench_torch.py [--quick] [--tsv FILE] [--threads N]

tools/bench_compare.sh does that, runs both programs one after the other and prints the ratios.
The shape lists below must match tools/bench.cpp (same names, so the TSV rows join).

Convolutions are timed in both memory formats (NCHW and channels_last, both through oneDNN in
PyTorch 1.13) and the faster one is reported, so tb (channels-last) is compared with PyTorch at its
best, not at its default.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

# (name, M, N, K): C[M, N] = A[M, K] B[K, N]. Keep in sync with tools/bench.cpp.
SQUARE = [256, 512, 1024, 2048]
RECT = [
    ("mlp_fwd_64x256x784", 64, 256, 784),          # batch 64 through Linear(784, 256)
    ("fc_fwd_256x1000x512", 256, 1000, 512),        # ResNet-18 classifier, batch 256
    ("im2col_12544x64x576", 12544, 64, 576),        # 3x3 64->64 conv on 56x56 as a GEMM, batch 4
    ("wgrad_64x576x12544", 64, 576, 12544),         # its weight gradient: long reduction dim
]
# (name, C, O, H(=W), k, stride, pad, groups) at batch N. Keep in sync with tools/bench.cpp.
CONVS = [
    ("stem_3to64_7x7s2_224", 3, 64, 224, 7, 2, 3, 1),
    ("fmnist_1to32_3x3_28", 1, 32, 28, 3, 1, 1, 1),
    ("cifar_3to32_3x3_32", 3, 32, 32, 3, 1, 1, 1),
    ("3x3_64to64_56", 64, 64, 56, 3, 1, 1, 1),
    ("3x3_128to128_28", 128, 128, 28, 3, 1, 1, 1),
    ("3x3_256to256_14", 256, 256, 14, 3, 1, 1, 1),
    ("3x3_512to512_7", 512, 512, 7, 3, 1, 1, 1),
    ("1x1_64to256_56", 64, 256, 56, 1, 1, 0, 1),
    ("dw3x3_144_56", 144, 144, 56, 3, 1, 1, 144),
]


def median_ms(fn, reps, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes, batch 8, few repetitions")
    ap.add_argument("--tsv", help="also write rows kind<TAB>name<TAB>ms<TAB>gflops to this file")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    reps = 3 if args.quick else 7
    batch = 8 if args.quick else 32
    rows = []

    blas = "openblas" if "openblas" in os.environ.get("LD_LIBRARY_PATH", "") else "default BLAS (unfair!)"
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads, BLAS: {blas}, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")

    print("\n== GEMM (float32), median of", reps, "runs")
    print(f"{'name':<28}{'ms':>10}{'GFLOP/s':>10}")
    gemms = [(f"square_{n}", n, n, n) for n in SQUARE if not (args.quick and n > 1024)]
    gemms += [g for g in RECT if not (args.quick and g[1] * g[2] * g[3] > 2e8)]
    for name, m, n, k in gemms:
        a = torch.randn(m, k)
        b = torch.randn(k, n)
        c = torch.empty(m, n)
        ms = median_ms(lambda: torch.mm(a, b, out=c), reps)
        gf = 2.0 * m * n * k / (ms * 1e6)
        print(f"{name:<28}{ms:>10.3f}{gf:>10.1f}")
        rows.append(("gemm", name, ms, gf))

    print(f"\n== conv2d forward + backward (dx, dw, db), float32, batch {batch}, median of {reps} runs")
    print(f"{'name':<28}{'ms NCHW':>10}{'ms NHWC':>10}{'best ms':>10}{'GFLOP/s':>10}")
    for name, c, o, hw, k, s, p, g in CONVS:
        if args.quick and hw > 56:
            continue
        ho = (hw + 2 * p - k) // s + 1
        # forward, backward-data and backward-weight each cost 2 N O Ho Wo (C/g) k k
        flops = 3 * 2.0 * batch * o * ho * ho * (c // g) * k * k
        res = []
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(batch, c, hw, hw).contiguous(memory_format=fmt).requires_grad_()
            w = (torch.randn(o, c // g, k, k) * 0.1).contiguous(memory_format=fmt).requires_grad_()
            b = torch.zeros(o, requires_grad=True)
            gout = torch.randn(batch, o, ho, ho).contiguous(memory_format=fmt)

            def step():
                x.grad = w.grad = b.grad = None
                y = F.conv2d(x, w, b, s, p, 1, g)
                y.backward(gout)

            res.append(median_ms(step, reps))
        best = min(res)
        gf = flops / (best * 1e6)
        print(f"{name:<28}{res[0]:>10.2f}{res[1]:>10.2f}{best:>10.2f}{gf:>10.1f}")
        rows.append(("conv", name, best, gf))

    if args.tsv:
        with open(args.tsv, "w") as f:
            for r in rows:
                f.write(f"{r[0]}\t{r[1]}\t{r[2]:.4f}\t{r[3]:.2f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
