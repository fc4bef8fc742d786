#!/usr/bin/env python3
"""Draws the rows of examples/compose_fashion_mnist (OUT/results.json) as test accuracy against
model size (bytes of the saved model, log scale): the float32 baseline, each compression method
alone after the same fine-tune, and all of them composed.

usage: tools/plot_compose.py RESULTS_JSON OUT_PNG
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
        results = json.load(f)
    rows = results["rows"]
    base = results["baseline"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        kb = r["size_bytes"] / 1024
        acc = 100 * r["accuracy"]
        style = dict(marker="*", s=220, color="tab:red") if r["method"] == "composed" else \
            dict(marker="o", s=60, color="tab:blue")
        ax.scatter([kb], [acc], zorder=3, **style)
        label = r["method"]
        if r["sparsity"] > 0.01:
            label += f" ({100 * r['sparsity']:.0f}% zeros)"
        ax.annotate(label, (kb, acc), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.axhline(100 * base["accuracy"], color="gray", lw=0.8, ls="--", label="float32 baseline")
    ax.set_xscale("log")
    ax.set_xlabel("model file size (KiB, log scale)")
    ax.set_ylabel("test accuracy (%)")
    rec = results["recipe"]
    ax.set_title(f"Fashion-MNIST CNN: {rec['epochs']} fine-tune epochs per method "
                 f"(channels {rec['channels']:g}, sparsity {rec['target_sparsity']:g}, "
                 f"T {rec['temperature']:g}, {rec['amp']})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=120)


if __name__ == "__main__":
    main()
