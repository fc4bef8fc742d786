#!/usr/bin/python3
"""Draws the pruning results: accuracy against sparsity, and accuracy against inference speed.

    python3 tools/plot_pruning.py runs/prune/results.json runs/prune/pruning.png

results.json is what examples/prune_fashion_mnist writes: {"rows": [{"model", "method",
"sparsity", "accuracy", "params", "size_bytes", "images_per_s_b64", "latency_b1_ms"}, ...]}.
One colour per model, one marker per method. Also draws a sparsity report's per-layer bars when
given {"rows": [{"name", "sparsity", ...}]} (prune::SparsityReport::json()), and a sensitivity
analysis (prune::sensitivity_json: {"rows": [{"name", "sparsity", "metric"}]}) as lines.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MARKERS = {"fp32": "o", "unstructured": "v", "global_unstructured": "s", "structured": "D",
           "agp": "^"}


def results(rows, png):
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5))
    models = sorted({r["model"] for r in rows})
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    for r in rows:
        kw = dict(color=colours[r["model"]], marker=MARKERS.get(r["method"], "x"), s=50)
        a.scatter(100 * r["sparsity"], 100 * r["accuracy"], **kw)
        b.scatter(r["images_per_s_b64"], 100 * r["accuracy"], **kw)
    for m in models:
        a.scatter([], [], color=colours[m], marker="o", label=m)
    for meth, mk in MARKERS.items():
        a.scatter([], [], color="grey", marker=mk, label=meth)
    a.set_xlabel("sparsity: conv/linear weights removed or zero (%)")
    a.set_ylabel("test accuracy (%)")
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    b.set_xscale("log")
    b.set_xlabel("inference images/s (batch 64)")
    b.set_ylabel("test accuracy (%)")
    b.grid(alpha=0.3)
    fig.suptitle("Pruning on Fashion-MNIST")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def sparsity_bars(rows, png):
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(rows)), 4))
    ax.bar(range(len(rows)), [100 * r["sparsity"] for r in rows])
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["name"] for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("zeros (%)")
    ax.set_title("sparsity per layer")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def sensitivity(rows, png):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["name"] for r in rows):
        pts = [(r["sparsity"], r["metric"]) for r in rows if r["name"] == name]
        ax.plot([100 * s for s, _ in pts], [m for _, m in pts], marker="o", label=name)
    ax.set_xlabel("sparsity of the layer alone (%)")
    ax.set_ylabel("metric (e.g. accuracy)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: plot_pruning.py results.json out.png")
    rows = json.load(open(sys.argv[1]))["rows"]
    if rows and "method" in rows[0]:
        results(rows, sys.argv[2])
    elif rows and "metric" in rows[0]:
        sensitivity(rows, sys.argv[2])
    else:
        sparsity_bars(rows, sys.argv[2])


if __name__ == "__main__":
    main()
