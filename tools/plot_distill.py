#!/usr/bin/env python3
"""Draws the temperature × alpha sweep of examples/distill_fashion_mnist (OUT/sweep.json) as a
heat map: test accuracy of the distilled student per cell, annotated with the accuracy and the
fraction of the teacher–student gap it closes against the student trained from scratch
(same seed, epochs, schedule and data order).

usage: tools/plot_distill.py SWEEP_JSON OUT_PNG
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
        sweep = json.load(f)
    temps = sorted({c["temperature"] for c in sweep["cells"]})
    alphas = sorted({c["alpha"] for c in sweep["cells"]})
    acc = {(c["temperature"], c["alpha"]): 100 * c["accuracy"] for c in sweep["cells"]}
    teacher, scratch = 100 * sweep["teacher_accuracy"], 100 * sweep["scratch_accuracy"]
    grid = [[acc.get((t, a), float("nan")) for a in alphas] for t in temps]

    fig, ax = plt.subplots(figsize=(1.6 * len(alphas) + 2.5, 0.9 * len(temps) + 2))
    im = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
    fig.colorbar(im, ax=ax, label="test accuracy (%)")
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_yticks(range(len(temps)), [f"{t:g}" for t in temps])
    ax.set_xlabel(f"alpha (weight of the {sweep['alpha_weights'].replace('_', ' ')})")
    ax.set_ylabel("temperature T")
    for i, t in enumerate(temps):
        for j, a in enumerate(alphas):
            if (t, a) not in acc:
                continue
            gap = teacher - scratch
            closed = f"\n{100 * (acc[(t, a)] - scratch) / gap:+.0f}% gap" if gap > 0 else ""
            ax.text(j, i, f"{acc[(t, a)]:.2f}{closed}", ha="center", va="center", color="w",
                    fontsize=8)
    ax.set_title(f"KD of {sweep['student']} ({sweep['epochs']} epochs, seed {sweep['seed']}): "
                 f"scratch {scratch:.2f}%, teacher {teacher:.2f}%", fontsize=9)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=120)


if __name__ == "__main__":
    main()
