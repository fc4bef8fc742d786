#!/usr/bin/env python3
"""PyTorch side of tools/bench_fashion_mnist.sh: trains the same CNN as
examples/train_fashion_mnist.cpp (same layers, batch size, SGD with momentum and weight decay) on
the first N Fashion-MNIST training images and prints training images/s.

Run it as tools/bench_fashion_mnist.sh does: Debian's /usr/bin/python3 with the OpenMP OpenBLAS and
a malloc that keeps big buffers (see ../shared/README.md, "A fair PyTorch").
usage: bench_fashion_mnist_torch.py [--images N] [--batch-size B] [--threads T] [--epochs E]
                                    [--model cnn|mobilenet_v2|resnet18]
A zoo model gets the same small-input change as tb::models (3x3 stride-1 stem on 1 channel, no
stem max-pool).
"""
import argparse
import gzip
import os
import time

import numpy as np
import torch
import torch.nn as nn


def load(root, n):
    with gzip.open(os.path.join(root, "train-images-idx3-ubyte.gz")) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n]
    with gzip.open(os.path.join(root, "train-labels-idx1-ubyte.gz")) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    x = (torch.from_numpy(x.astype(np.float32)) / 255.0 - 0.2860) / 0.3530
    return x, torch.from_numpy(y.astype(np.int64))


def make_model(name):
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))
    import torchvision.models as tvm
    net = getattr(tvm, name)(num_classes=10)
    if name == "mobilenet_v2":
        net.features[0][0] = nn.Conv2d(1, 32, 3, 1, 1, bias=False)
    elif name == "resnet18":
        net.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    else:
        raise SystemExit(f"no small-input recipe for {name}")
    return net


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=12800)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--data", default=os.environ.get("TB_FASHION_MNIST_DIR",
                                                     "/usr/share/datasets/fashion-mnist"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x, y = load(a.data, a.images)
    net = make_model(a.model)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(a.epochs):
        perm = torch.randperm(len(x))
        t0 = time.perf_counter()
        for i in range(0, len(x), a.batch_size):
            idx = perm[i:i + a.batch_size]
            loss = loss_fn(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        dt = time.perf_counter() - t0
        print(f"torch epoch {epoch + 1}: {len(x) / dt:.0f} images/s ({dt:.2f} s, loss {loss.item():.4f})")


if __name__ == "__main__":
    main()
