"""The docs' figures, redrawn from the committed result tables (docs/results/<study>/*.csv).

    python -m phasemix.analysis.figures docs/results [--out docs/figures]

Every figure here is drawn from the tidy CSVs alone, so a figure on a docs page shows exactly
the numbers its page quotes. Figures whose data was never saved as a table (full training
curves, projections, weight histograms, per-point predictions) are not drawn here; their PNGs
stay as the runs wrote them (`PNG_ONLY`).
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import sys
from typing import Any, Callable

from phasemix.base import plotting, validation

# Tables whose rows are single training runs: these carry the `seed` that produced each row.
# Every other table holds aggregates over seeds, fits, grid cells or benchmark measurements.
RUN_TABLES = (
    "grokking/demo.csv",
    "grokking/sentiment_runs.csv",
    "grokking/sentiment_curves.csv",
    "grokking/classifier_weights.csv",
    "grokking/long_budget.csv",
    "grokking/cds_by_task.csv",
    "grokking/cds_model_fine.csv",
    "grokking/cds_auto_check.csv",
    "knowledge/runs.csv",
    "knowledge/frequency.csv",
    "knowledge/capacity_pilot.csv",
    "knowledge/capacity.csv",
    "knowledge/capacity_pilot_600.csv",
    "knowledge/compact_mixing.csv",
    "bimix/proxy_strategies.csv",
)
AGGREGATE_TABLES = (
    "grokking/cds_points.csv",
    "grokking/cds_model_fine_widths.csv",
    "grokking/cds_fit.csv",
    "grokking/cds_predictions.csv",
    "grokking/critical_data_size.csv",
    "grokking/critical_data_size_model.csv",
    "grokking/measurements.csv",
    "knowledge/critical_ratios.csv",
    "knowledge/fits.csv",
    "knowledge/measurements.csv",
    "bimix/published_fits.csv",
    "bimix/proxy_strategy_summary.csv",
    "bimix/proxy_fits.csv",
    "bimix/measurements.csv",
    "performance/ratios.csv",
    "performance/install.csv",
    "performance/step_profile.csv",
    "performance/matmul_bound.csv",
)

# PNGs in docs/figures that no table can redraw (the data behind them was never saved).
PNG_ONLY = (
    "cds_accuracy_by_size.png",
    "cds_pca_subsets.png",
    "sentiment_imdb_curves.png",
    "sentiment_rt_curves.png",
    "sentiment_imdb_accuracy_by_fraction.png",
    "sentiment_imdb_classifier_weights.png",
    "kp_accuracy_vs_exposures.png",
    "bimix_predicted_vs_measured.png",
    "bimix_proxy_predicted_vs_measured.png",
)


def _value(text: str) -> Any:
    """A CSV cell as a number where it is one; empty cells are None."""
    if text == "":
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text else number


def read_table(path: pathlib.Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return [{k: _value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def cds_steps_vs_size(t: Callable[[str], list[dict[str, Any]]], path: pathlib.Path) -> None:
    rows = [r for r in t("grokking/critical_data_size.csv") if r["sweep"] == 2]
    budget = rows[0]["budget_steps"]
    gen = [r for r in rows if r["step_generalized_mean"] is not None]
    never = [r for r in rows if r["seeds_generalized"] == 0]
    critical = min(r["train_pairs"] for r in rows if r["regime"] == "critical")
    top = budget * 1.3
    plotting.xy_lines({
        "memorise (train acc >= 0.99), mean of 3 seeds": {
            "x": [r["train_pairs"] for r in rows], "y": [r["step_memorized_mean"] for r in rows],
            "color": "tab:blue"},
        "generalise (test acc >= 0.95), mean +- std of 3 seeds": {
            "x": [r["train_pairs"] for r in gen], "y": [r["step_generalized_mean"] for r in gen],
            "err": [r["step_generalized_std"] for r in gen], "color": "tab:orange"},
        "no seed generalised within the budget": {
            "x": [r["train_pairs"] for r in never], "y": [budget] * len(never), "style": "x",
            "color": "tab:red"},
        f"critical data size {critical}": {
            "x": [critical, critical], "y": [10, top], "style": "--", "color": "tab:red"},
    }, path, f"a + b mod 47: steps against training pairs ({budget:,}-step budget)",
        "training pairs", "steps", log_x=False, log_y=True, hline=budget)


def cds_law(t: Callable[[str], list[dict[str, Any]]], path: pathlib.Path) -> None:
    """Each task's critical size (grid bracket) against the modulus, with the chosen law."""
    points = [r for r in t("grokking/cds_points.csv") if r["estimate"] is not None]
    chosen = {r["op"]: r for r in t("grokking/cds_fit.csv") if r["chosen"] in (True, "True")}
    series = {}
    for i, op in enumerate(sorted({r["op"] for r in points})):
        mine = sorted((r for r in points if r["op"] == op), key=lambda r: r["p"])
        color = plotting.color(i, 3)
        series[f"{op}: critical size (grid bracket)"] = {
            "x": [r["p"] for r in mine], "y": [r["estimate"] for r in mine],
            "err": [[r["estimate"] - r["grid_below"] for r in mine],
                    [r["critical_count"] - r["estimate"] for r in mine]],
            "style": "o", "color": color}
        if op in chosen:
            fit = chosen[op]
            grid = [25 + 5 * k for k in range(20)]
            series[f"{op}: {fit['coefficient']:.3g} p^{fit['exponent']:.2f} ({fit['law']})"] = {
                "x": grid, "y": [fit["coefficient"] * q ** fit["exponent"] for q in grid],
                "style": "--", "color": color}
    plotting.xy_lines(series, path, "Critical data size against the modulus (2 seeds, "
                      "4,000-step budget)", "modulus p", "training pairs", log_y=True)


def cds_model_heatmap(t: Callable[[str], list[dict[str, Any]]], path: pathlib.Path) -> None:
    rows = t("grokking/critical_data_size_model.csv")
    plotting.heatmap({(r["d_model"], r["train_pairs"]): r["final_test_accuracy_mean"]
                      for r in rows}, path, "final test accuracy, mean of 2 seeds",
                     "training pairs", "d_model", "test accuracy")


def sentiment_steps_vs_fraction(t: Callable[[str], list[dict[str, Any]]],
                                path: pathlib.Path) -> None:
    rows = [r for r in t("grokking/sentiment_runs.csv") if r["study"] == "fraction_sweep"]
    gen = [r for r in rows if r["step_generalized"] is not None]
    never = [r for r in rows if r["step_generalized"] is None]
    budget = rows[0]["num_steps"]
    plotting.xy_lines({
        "memorise (train acc >= 0.99)": {"x": [r["train_fraction"] for r in rows],
                                         "y": [r["step_memorized"] for r in rows],
                                         "color": "tab:blue"},
        "test acc >= 0.8 first": {"x": [r["train_fraction"] for r in gen],
                                  "y": [r["step_generalized"] for r in gen],
                                  "color": "tab:orange"},
        "never within the budget": {"x": [r["train_fraction"] for r in never],
                                    "y": [budget] * len(never), "style": "x",
                                    "color": "tab:red"},
    }, path, "IMDB, one seed: steps against the fraction of the 20k train reviews",
        "train fraction", "steps", log_x=True, hline=budget)


def knowledge_accuracy_vs_ratio(t: Callable[[str], list[dict[str, Any]]],
                                path: pathlib.Path) -> None:
    rows = sorted((r for r in t("knowledge/runs.csv")
                   if r["sweep"] in ("ratio", "bracket") and r["preset"] == "tiny-64"
                   and r["ratio"] < 1), key=lambda r: r["ratio"])
    series = {"mean exact match (bio_accuracy)": {"x": [r["ratio"] for r in rows],
                                                  "y": [r["bio_accuracy"] for r in rows],
                                                  "color": "black"}}
    for i, key in enumerate(("acc_university", "acc_employer", "acc_birth_date")):
        series[key.removeprefix("acc_").replace("_", " ")] = {
            "x": [r["ratio"] for r in rows], "y": [r[key] for r in rows], "style": "o--",
            "color": plotting.color(i, 3)}
    plotting.xy_lines(series, path, "tiny-64, 500 people, 2,000 steps, seed 0",
                      "SynBio ratio r", "exact match", log_x=True, hline=0.5)


def knowledge_mitigations(t: Callable[[str], list[dict[str, Any]]], path: pathlib.Path) -> None:
    rows = [r for r in t("knowledge/runs.csv") if r["sweep"] == "mitigation"]

    def label(r: dict[str, Any]) -> str:
        if r["keep_fraction"] is not None:
            return f"keep {r['keep_fraction']:.0%}"
        if r["compact_fraction"] is not None:
            return f"compact tuples, tau {r['compact_fraction']:g}"
        return "baseline (all 500)"

    plotting.bar_panels([label(r) for r in rows], {
        "exact match on the people trained on": [r["bio_accuracy"] for r in rows],
        "people learned (accuracy x people)": [r["people_learned"] for r in rows],
    }, path, "mitigations at r = 0.15 (tiny-64, seed 0)")


def knowledge_compact_mixing(t: Callable[[str], list[dict[str, Any]]], path: pathlib.Path) -> None:
    """Accuracy and web loss against the share tau of compact tuples added, per seed."""
    rows = t("knowledge/compact_mixing.csv")
    taus = sorted({r["tuple_fraction"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    series = {}
    for i, seed in enumerate(seeds):
        mine = sorted((r for r in rows if r["seed"] == seed), key=lambda r: r["tuple_fraction"])
        web = ", ".join(f"{r['web_val_loss']:.3f}" for r in mine)
        series[f"seed {seed} (web val loss {web})"] = {
            "x": [r["tuple_fraction"] for r in mine], "y": [r["bio_accuracy"] for r in mine],
            "color": plotting.color(i, len(seeds))}
    plotting.xy_lines(series, path, f"compact tuples added at tau, r = {rows[0]['ratio']:g} "
                      f"({rows[0]['preset']}, {rows[0]['num_people']} people; tau in {taus})",
                      "tau (share of training tokens that are tuples)",
                      "exact match, all people", log_x=False, hline=0.5)


def kp_accuracy_vs_ratio_by_size(t: Callable[[str], list[dict[str, Any]]],
                                 path: pathlib.Path) -> None:
    rows = [r for r in t("knowledge/runs.csv") if r["sweep"] == "size"]
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    series = {}
    for i, preset in enumerate(presets):
        mine = sorted((r for r in rows if r["preset"] == preset), key=lambda r: r["ratio"])
        series[f"{preset} ({mine[0]['non_embedding_params']:,} non-embedding)"] = {
            "x": [r["ratio"] for r in mine], "y": [r["bio_accuracy"] for r in mine],
            "color": plotting.color(i, len(presets))}
    plotting.xy_lines(series, path, "accuracy against SynBio ratio per model size (seed 0)",
                      "SynBio ratio r", "bio_accuracy", log_x=True, hline=0.5)


def kp_critical_ratio_vs_size(t: Callable[[str], list[dict[str, Any]]],
                              path: pathlib.Path) -> None:
    crit = t("knowledge/critical_ratios.csv")
    measured = [r for r in crit if r["measured_critical_ratio"] is not None]
    fit = next(r for r in t("knowledge/fits.csv")
               if r["fit"] == "critical_ratio" and r["param_count"] == "non-embedding")
    lo, hi = min(r["non_embedding_params"] for r in crit), max(r["non_embedding_params"]
                                                               for r in crit)
    xs = [lo * (hi / lo) ** (i / 20) for i in range(21)]
    plotting.xy_lines({
        "measured (accuracy 0.5), grid bracket": {
            "x": [r["non_embedding_params"] for r in measured],
            "y": [r["measured_critical_ratio"] for r in measured],
            "err": [[r["measured_critical_ratio"] - r["bracket_low"] for r in measured],
                    [r["bracket_high"] - r["measured_critical_ratio"] for r in measured]],
            "style": "o", "color": "black"},
        f"fit {fit['coefficient']:g} P^{fit['exponent']:g}": {
            "x": xs, "y": [fit["coefficient"] * x ** fit["exponent"] for x in xs],
            "style": "-", "color": "tab:blue"},
        "capacity theory (2 bits per parameter)": {
            "x": [r["non_embedding_params"] for r in crit],
            "y": [r["theory_critical_ratio"] for r in crit], "style": "o--",
            "color": "tab:red"},
    }, path, "critical SynBio ratio against model size", "non-embedding parameters P",
        "critical ratio", log_x=True, log_y=True)


def kp_web_law(t: Callable[[str], list[dict[str, Any]]], path: pathlib.Path) -> None:
    rows = sorted((r for r in t("knowledge/runs.csv") if r["sweep"] == "web"),
                  key=lambda r: r["non_embedding_params"])
    law = next(r for r in t("knowledge/fits.csv") if r["fit"] == "web_law")
    lo, hi = rows[0]["non_embedding_params"], rows[-1]["non_embedding_params"]
    xs = [lo * (hi / lo) ** (i / 20) for i in range(21)]
    plotting.xy_lines({
        "web validation loss, r = 0": {"x": [r["non_embedding_params"] for r in rows],
                                       "y": [r["web_val_loss"] for r in rows], "style": "o",
                                       "color": "black"},
        f"F2(P) = {law['constant']:g} + {law['coefficient']:g} P^{law['exponent']:g}": {
            "x": xs, "y": [law["constant"] + law["coefficient"] * x ** law["exponent"]
                           for x in xs], "style": "-", "color": "tab:blue"},
    }, path, "web loss law (seed 0)", "non-embedding parameters P", "nats per token")


def bimix_proxy_strategies(t: Callable[[str], list[dict[str, Any]]],
                           path: pathlib.Path) -> None:
    rows = t("bimix/proxy_strategies.csv")
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    loss = {(r["strategy"], r["seed"]): r["mean_val_loss"] for r in rows}
    fig, ax = plotting.figure(figsize=(7, 3.5))
    height = 0.8 / len(seeds)
    for j, seed in enumerate(seeds):
        ax.barh([i + j * height for i in range(len(strategies))],
                [loss[(name, seed)] for name in strategies], height=height,
                label=f"seed {seed}", color=plotting.color(j, len(seeds) + 1))
    ax.set_yticks([i + height * (len(seeds) - 1) / 2 for i in range(len(strategies))],
                  strategies)
    values = list(loss.values())
    # The strategies differ by hundredths of a nat: an axis from 0 would hide them.
    ax.set_xlim(min(values) - 0.1, max(values) + 0.05)
    ax.set_xlabel("mean validation loss over the 4 domains (nats)")
    ax.set_title("mixture strategies on tiny-32 proxies", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7)
    plotting.save(fig, path)


def performance_vs_pytorch(t: Callable[[str], list[dict[str, Any]]],
                           path: pathlib.Path) -> None:
    rows = [r for r in t("performance/ratios.csv") if r["benchmark"] == "vs_pytorch"
            and r["unit"] == "x"]
    plotting.bar_panels([f"{r['model']}, batch {r['batch_size']}" for r in rows],
                        {"train step speed / PyTorch eager (median of rounds)":
                         [r["value"] for r in rows]},
                        path, "phasemix against PyTorch, 2-core x86-64 CPU")


FIGURES: dict[str, Callable[[Callable[[str], list[dict[str, Any]]], pathlib.Path], None]] = {
    "cds_steps_vs_size.png": cds_steps_vs_size,
    "cds_model_accuracy_heatmap.png": cds_model_heatmap,
    "cds_law.png": cds_law,
    "sentiment_imdb_steps_vs_fraction.png": sentiment_steps_vs_fraction,
    "knowledge_accuracy_vs_ratio.png": knowledge_accuracy_vs_ratio,
    "knowledge_mitigations.png": knowledge_mitigations,
    "knowledge_compact_mixing.png": knowledge_compact_mixing,
    "kp_accuracy_vs_ratio_by_size.png": kp_accuracy_vs_ratio_by_size,
    "kp_critical_ratio_vs_size.png": kp_critical_ratio_vs_size,
    "kp_web_law.png": kp_web_law,
    "bimix_proxy_strategies.png": bimix_proxy_strategies,
    "performance_vs_pytorch.png": performance_vs_pytorch,
}


def draw_all(results: pathlib.Path, out: pathlib.Path) -> list[pathlib.Path]:
    """Draws every figure of FIGURES from the tables under `results` into `out`."""
    missing = [name for name in RUN_TABLES + AGGREGATE_TABLES if not (results / name).is_file()]
    if missing:
        raise validation.ConfigError(f"RESULTS={results}: missing table(s) {', '.join(missing)}")
    tables: dict[str, list[dict[str, Any]]] = {}

    def table(name: str) -> list[dict[str, Any]]:
        if name not in tables:
            tables[name] = read_table(results / name)
        return tables[name]

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in FIGURES.items():
        draw(table, out / name)
        written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=pathlib.Path, help="folder of <study>/*.csv tables")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/figures"),
                        help="where the PNGs go (default: docs/figures)")
    args = parser.parse_args(argv)
    try:
        validation.require_flag(not args.out.exists() or args.out.is_dir(), "out",
                                "exists and is not a folder", str(args.out))
        for path in draw_all(args.results, args.out):
            print(path)
    except validation.ConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
