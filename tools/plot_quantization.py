#!/usr/bin/env python3
"""Draws accuracy against model size from the results.json of examples/quantize_fashion_mnist.

usage: tools/plot_quantization.py RESULTS_JSON OUT_PNG
One panel per model: each run is a point (x: safetensors size in KiB, log scale; y: test accuracy
in %), marked by method (fp32, ptq, qat, lsq) and labelled with its bits, granularity and
calibration; the float baseline is a dashed line.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt

MARKERS = {"fp32": ("k", "*"), "ptq": ("tab:blue", "o"), "qat": ("tab:green", "s"),
           "lsq": ("tab:red", "^")}


def label(r):
    if r["method"] == "fp32":
        return "fp32"
    parts = [f"{r['method']} w{r['weight_bits']}a{r['act_bits']}"]
    if r["granularity"]:
        parts.append("pc" if r["granularity"] == "per_channel" else "pt")
    if r["calibration"]:
        parts.append(r["calibration"])
    return " ".join(parts)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        rows = json.load(f)["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5), squeeze=False)
    for ax, model in zip(axes[0], models):
        rs = [r for r in rows if r["model"] == model]
        for method, (color, marker) in MARKERS.items():
            pts = [r for r in rs if r["method"] == method]
            if pts:
                ax.scatter([r["size_bytes"] / 1024 for r in pts], [100 * r["accuracy"] for r in pts],
                           c=color, marker=marker, s=60 if method != "fp32" else 160, label=method)
        for r in rs:
            ax.annotate(label(r), (r["size_bytes"] / 1024, 100 * r["accuracy"]), fontsize=7,
                        xytext=(4, 2), textcoords="offset points")
        base = [r for r in rs if r["method"] == "fp32"]
        if base:
            ax.axhline(100 * base[0]["accuracy"], color="k", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("model size (KiB, safetensors)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(model)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=120)


if __name__ == "__main__":
    main()
