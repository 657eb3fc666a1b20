"""Figures drawn from the tidy metric files (never from in-memory state)."""

from __future__ import annotations

import os
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402


def training_curves(rows: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "",
                    markers: dict[str, int | None] | None = None) -> None:
    """Train/test accuracy on a log-step axis above the weight norm; optional vertical markers."""
    rows = [r for r in rows if r["step"] > 0]  # step 0 has no place on a log axis
    steps = [r["step"] for r in rows]
    fig, (ax_acc, ax_norm) = plt.subplots(2, 1, figsize=(7, 6), sharex=True,
                                          gridspec_kw={"height_ratios": [2, 1]})
    for key, label in (("train_accuracy", "train"), ("test_accuracy", "test")):
        if rows and key in rows[0]:
            ax_acc.plot(steps, [r[key] for r in rows], label=label)
    for name, step in (markers or {}).items():
        if step:
            ax_acc.axvline(step, linestyle="--", color="grey", linewidth=0.8)
            ax_acc.annotate(name, (step, 0.02), rotation=90, fontsize=8, color="grey")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(-0.02, 1.02)
    ax_acc.legend(loc="upper left")
    ax_acc.set_title(title)
    if rows and "weight_norm" in rows[0]:
        ax_norm.plot(steps, [r["weight_norm"] for r in rows], color="black")
    ax_norm.set_ylabel("weight L2 norm")
    ax_norm.set_xlabel("step")
    ax_norm.set_xscale("log")
    for ax in (ax_acc, ax_norm):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
