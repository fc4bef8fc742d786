#!/usr/bin/env python3
"""Draws the training curves of a metrics.json written by tb::experiment::MetricsLog
(examples/train_fashion_mnist).

usage: tools/plot_metrics.py METRICS_JSON OUT_PNG
Left: train and test loss per epoch; middle: train and test accuracy (%) per epoch; right: the
training loss of every step (faint) and its running mean over about 2% of the steps.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt


def running_mean(values, window):
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        metrics = json.load(f)
    epochs = metrics["epochs"]
    steps = [s for s in metrics.get("steps", []) if s["loss"] is not None]  # null: NaN/Inf
    fig, (ax_loss, ax_acc, ax_step) = plt.subplots(1, 3, figsize=(15, 4))
    x = [e["epoch"] for e in epochs]
    for ax, key, scale, label in ((ax_loss, "loss", 1, "cross-entropy loss"),
                                  (ax_acc, "acc", 100, "accuracy (%)")):
        for split, marker in (("train", "o-"), ("test", "s-")):
            ax.plot(x, [scale * e[f"{split}_{key}"] for e in epochs], marker, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_xticks(x)
        ax.legend()
        ax.grid(alpha=0.3)
    if steps:
        sx = [s["step"] for s in steps]
        sy = [s["loss"] for s in steps]
        window = len(sy) // 50  # the running mean only once there are enough steps to smooth
        ax_step.plot(sx, sy, color="tab:blue", alpha=0.25 if window > 1 else 1, linewidth=0.8,
                     label="step")
        if window > 1:
            ax_step.plot(sx, running_mean(sy, window), color="tab:blue",
                         label=f"mean of {window} steps")
        ax_step.legend()
    ax_step.set_xlabel("step")
    ax_step.set_ylabel("training loss")
    ax_step.grid(alpha=0.3)
    fig.suptitle("tensorbrain: Fashion-MNIST CNN")
    fig.tight_layout()
    tmp = sys.argv[2] + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, sys.argv[2])  # atomic: a reader never sees half a PNG


if __name__ == "__main__":
    main()
