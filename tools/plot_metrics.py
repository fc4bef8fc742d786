#!/usr/bin/env python3
"""Draws the training curves of a metrics.json written by examples/train_fashion_mnist.

usage: tools/plot_metrics.py METRICS_JSON OUT_PNG
Left: train and test loss per epoch; right: train and test accuracy (%).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        epochs = json.load(f)["epochs"]
    x = [e["epoch"] for e in epochs]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(x, [e["train_loss"] for e in epochs], "o-", label="train")
    ax_loss.plot(x, [e["test_loss"] for e in epochs], "s-", label="test")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_acc.plot(x, [100 * e["train_acc"] for e in epochs], "o-", label="train")
    ax_acc.plot(x, [100 * e["test_acc"] for e in epochs], "s-", label="test")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    for ax in (ax_loss, ax_acc):
        ax.set_xticks(x)
    fig.suptitle("tensorbrain: Fashion-MNIST CNN")
    fig.tight_layout()
    tmp = sys.argv[2] + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    import os
    os.replace(tmp, sys.argv[2])  # atomic: a reader never sees half a PNG


if __name__ == "__main__":
    main()
