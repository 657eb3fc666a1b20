"""Figures drawn from the tidy metric files (never from in-memory state)."""

from __future__ import annotations

import io
import os
from typing import Any, Sequence

import matplotlib
from matplotlib.figure import Figure

from phasemix.base import distributed, run_io


def figure(nrows: int = 1, ncols: int = 1, **kwargs):
    """A figure and its axes outside pyplot: no global backend or state, so importing this
    module leaves a notebook's inline plotting alone, and figures are freed with their object."""
    fig = Figure(figsize=kwargs.pop("figsize", None))
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save(fig, path: str | os.PathLike) -> None:
    fig.tight_layout()
    if not distributed.is_primary():  # in a multi-process job, one process writes each file
        return
    if run_io.is_remote(path):  # matplotlib writes local files: draw to memory, upload once
        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=120, format=os.fspath(path).rsplit(".", 1)[-1])
        run_io.write_bytes_atomic(path, buffer.getvalue())
    else:
        fig.savefig(path, dpi=120)


def training_curves(rows: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "",
                    markers: dict[str, int | None] | None = None) -> None:
    """Train/test accuracy on a log-step axis above the weight norm; optional vertical markers."""
    rows = [r for r in rows if r["step"] > 0]  # step 0 has no place on a log axis
    steps = [r["step"] for r in rows]
    fig, (ax_acc, ax_norm) = figure(2, 1, figsize=(7, 6), sharex=True,
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
    save(fig, path)


def curves_by_group(curves: dict[Any, Sequence[dict[str, Any]]], key: str, path: str | os.PathLike,
                    title: str, legend_title: str, ylabel: str, log_y: bool = False) -> None:
    """One line of `key` against step (log axis) per group, e.g. test accuracy per data size."""
    fig, ax = figure(figsize=(7, 4.5))
    cmap = matplotlib.colormaps["viridis"]
    for i, (group, rows) in enumerate(sorted(curves.items())):
        rows = [r for r in rows if r["step"] > 0 and key in r]
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=str(group),
                color=cmap(i / max(len(curves) - 1, 1)))
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(title=legend_title, fontsize=7, ncol=2)
    save(fig, path)


def steps_vs_size(stats: Sequence[dict[str, Any]], cds: dict[str, Any], budget: int,
                  path: str | os.PathLike, title: str, memorized_at: float = 0.99,
                  generalized_at: float = 0.95, xlabel: str = "training set size") -> None:
    """Mean (+- std over seeds) steps to memorise and to generalise against data size, with the
    critical size and its band; sizes where no seed generalised sit at the budget line."""
    fig, ax = figure(figsize=(7, 4.5))
    sizes = [s["size"] for s in stats]
    for prefix, label, color in (
            ("step_memorized", f"memorise (train acc >= {memorized_at:g})", "tab:blue"),
            ("step_generalized", f"generalise (test acc >= {generalized_at:g})", "tab:orange")):
        xs = [s["size"] for s in stats if s[f"{prefix}_mean"] is not None]
        ys = [s[f"{prefix}_mean"] for s in stats if s[f"{prefix}_mean"] is not None]
        es = [s[f"{prefix}_std"] for s in stats if s[f"{prefix}_mean"] is not None]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label, color=color)
    never = [s["size"] for s in stats if s["fraction_generalized"] == 0]
    if never:
        ax.scatter(never, [budget] * len(never), marker="x", color="tab:red",
                   label="no seed generalised within budget")
    ax.axhline(budget, color="grey", linestyle=":", linewidth=0.8)
    if cds.get("critical_size_lower") is not None and cds.get("critical_size_upper") is not None:
        ax.axvspan(cds["critical_size_lower"], cds["critical_size_upper"], color="tab:orange",
                   alpha=0.12, label="seed spread of the transition")
    if cds.get("critical_size") is not None:
        ax.axvline(cds["critical_size"], color="tab:red", linestyle="--",
                   label=f"critical data size {cds['critical_size']}")
    ax.set_yscale("log")
    ax.set_xticks(sizes)
    ax.tick_params(axis="x", labelrotation=45)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("steps")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, path)


def heatmap(values: dict[tuple[Any, Any], float], path: str | os.PathLike, title: str,
            xlabel: str, ylabel: str, colorbar: str) -> None:
    """A (row, column) -> value grid, annotated, e.g. test accuracy over width x data size."""
    rows = sorted({r for r, _ in values})
    cols = sorted({c for _, c in values})
    grid = [[values.get((r, c), float("nan")) for c in cols] for r in rows]
    fig, ax = figure(figsize=(1.0 + 0.8 * len(cols), 1.0 + 0.5 * len(rows)))
    image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=1)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.6 else "black")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], rotation=45)
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=colorbar)
    save(fig, path)


def projection_by_subset(all_values: Sequence[float], subsets: dict[Any, Sequence[float]],
                         path: str | os.PathLike, title: str, xlabel: str) -> None:
    """Density of a 1-D projection for the whole dataset and for each (nested) subset."""
    fig, ax = figure(figsize=(7, 4.5))
    bins = 40
    ax.hist(all_values, bins=bins, density=True, color="lightgrey", label="all pairs")
    cmap = matplotlib.colormaps["viridis"]
    for i, (name, values) in enumerate(sorted(subsets.items())):
        ax.hist(values, bins=bins, density=True, histtype="step", linewidth=1.2,
                color=cmap(i / max(len(subsets) - 1, 1)), label=f"{name} train pairs")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    save(fig, path)


def weight_distribution(snapshots: dict[int, Any], stages: dict[str, int | None],
                        path: str | os.PathLike, title: str) -> None:
    """Histograms of one weight array at named stages (Zhu et al. Fig. 5), and its L2 norm.

    `snapshots` maps step -> the array at that step; each stage is drawn at the first
    snapshot at or after its step (stages that never happened are skipped).
    """
    import numpy as np

    steps = sorted(snapshots)
    fig, (ax_hist, ax_norm) = figure(1, 2, figsize=(11, 4))
    for name, stage_step in stages.items():
        at = next((s for s in steps if stage_step is not None and s >= stage_step), None)
        if at is None:
            continue
        values = np.ravel(snapshots[at])
        ax_hist.hist(values, bins=40, density=True, histtype="step", linewidth=1.5,
                     label=f"{name} (step {at}), L2 {np.linalg.norm(values):.1f}")
    ax_hist.set_xlabel("weight value")
    ax_hist.set_ylabel("density")
    ax_hist.legend(fontsize=8)
    ax_hist.set_title(title)
    ax_norm.plot(steps, [float(np.linalg.norm(snapshots[s])) for s in steps], color="black")
    for name, stage_step in stages.items():
        if stage_step:
            ax_norm.axvline(stage_step, linestyle="--", color="grey", linewidth=0.8)
            ax_norm.annotate(name, (stage_step, 0), rotation=90, fontsize=8, color="grey",
                             xycoords=("data", "axes fraction"))
    ax_norm.set_xlabel("step")
    ax_norm.set_ylabel("L2 norm")
    for ax in (ax_hist, ax_norm):
        ax.grid(alpha=0.3)
    save(fig, path)


def metric_lines(rows: Sequence[dict[str, Any]], panels: Sequence[dict[str, str]],
                 ylabels: Sequence[str], path: str | os.PathLike, title: str) -> None:
    """Stacked panels sharing a log-step axis; panel i draws {label: metric key} of `rows`."""
    rows = [r for r in rows if r["step"] > 0]
    fig, axes = figure(len(panels), 1, figsize=(7, 2.6 * len(panels) + 0.6), sharex=True,
                             squeeze=False)
    for ax, lines, ylabel in zip(axes[:, 0], panels, ylabels):
        for label, key in lines.items():
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), label=label)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xscale("log")
    axes[-1, 0].set_xlabel("step")
    save(fig, path)


def xy_lines(series: dict[str, dict[str, Any]], path: str | os.PathLike, title: str, xlabel: str,
             ylabel: str, log_x: bool = True, log_y: bool = False,
             hline: float | None = None) -> None:
    """One line per series against a shared x axis: e.g. accuracy against mixing ratio.

    Each series is {"x": [...], "y": [...]} with optional "err" (error bars), "style"
    ("o-" markers and line, "--" a prediction, "o" markers only) and "color".
    """
    fig, ax = figure(figsize=(7, 4.5))
    for label, s in series.items():
        style = s.get("style", "o-")
        if s.get("err") is not None:
            ax.errorbar(s["x"], s["y"], yerr=s["err"], fmt=style, capsize=3, label=label,
                        color=s.get("color"))
        else:
            ax.plot(s["x"], s["y"], style, label=label, color=s.get("color"),
                    linewidth=s.get("linewidth", 1.5))
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle=":", linewidth=0.8)
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    save(fig, path)


def bar_panels(labels: Sequence[str], panels: dict[str, Sequence[float]],
               path: str | os.PathLike, title: str) -> None:
    """Horizontal bars of several quantities side by side, one panel each, for named variants."""
    fig, axes = figure(1, len(panels), figsize=(5.5 * len(panels), 1.2 + 0.45 * len(labels)),
                             squeeze=False)
    for ax, (panel_title, values) in zip(axes[0], panels.items()):
        ax.barh(list(labels), list(values), color="tab:blue")
        ax.set_title(panel_title, fontsize=10)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(title)
    save(fig, path)


def color(i: int, n: int):
    """The i-th of n colours along viridis, for lines ordered by a quantity."""
    return matplotlib.colormaps["viridis"](i / max(n - 1, 1))


SPLIT_COLORS = {"fit": "lightgrey", "extrap_step": "tab:blue", "heldout_mix": "tab:orange",
                "heldout_both": "tab:red"}


def predicted_vs_measured(rows: Sequence[dict[str, Any]], row_key: str, col_key: str,
                          path: str | os.PathLike, title: str = "") -> None:
    """A fitted law's predicted against measured loss: a panel per (row_key, col_key) value,
    points coloured by the evaluation split, the diagonal drawn."""
    row_values = list(dict.fromkeys(r[row_key] for r in rows))
    col_values = list(dict.fromkeys(r[col_key] for r in rows))
    fig, axes = figure(len(row_values), len(col_values), squeeze=False,
                       figsize=(3.1 * len(col_values), 2.9 * len(row_values)))
    for i, row_value in enumerate(row_values):
        for j, col_value in enumerate(col_values):
            ax = axes[i][j]
            cell = [r for r in rows if r[row_key] == row_value and r[col_key] == col_value]
            for split, split_color in SPLIT_COLORS.items():
                points = [(r["loss"], r["pred"]) for r in cell if r["split"] == split]
                if points:
                    ax.scatter(*zip(*points), s=5, color=split_color, label=split, alpha=0.8)
            if cell:
                ends = [min(min(r["loss"], r["pred"]) for r in cell),
                        max(max(r["loss"], r["pred"]) for r in cell)]
                ax.plot(ends, ends, color="black", linewidth=0.6)
            ax.set_title(f"{row_value}: {col_value}", fontsize=9)
            ax.set_xlabel("measured loss", fontsize=8)
            ax.set_ylabel("predicted", fontsize=8)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6, markerscale=2)
    if title:
        fig.suptitle(title)
    save(fig, path)
