"""The mixtures the BiMix study (`experiments/bimix.py`) trains and compares.

The proxies' Dirichlet draws, the training-free strategies (uniform, natural by domain size,
entropy-driven), shares made exact multiples of 1/RESOLUTION, and the comparison of the
trained strategies against uniform (a table, a verdict per strategy, a figure).
"""

from __future__ import annotations

import pathlib
import statistics
from typing import Any

import ml_collections
import numpy as np

from phasemix.base import results_table, validation
from phasemix.data import domains, mixture
from phasemix.training import mixture_run
from phasemix.analysis import entropy_mix, proxy_law_fits, transitions

RESOLUTION = 10_000  # trained mixtures are multiples of 1e-4 (exact in names and configs)
# The compared mixtures every study trains, in the order of comparison.csv.
STRATEGIES = ("uniform", "natural", "entropy", "optimized")


def quantize(weights: Any) -> tuple[float, ...]:
    """Shares as multiples of 1/RESOLUTION (Webster-rounded, so they still sum to 1)."""
    counts = mixture.apportion(np.asarray(weights, np.float64), RESOLUTION)
    return tuple(float(c) / RESOLUTION for c in counts)


def proxy_grid(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """The proxies' overrides: Dirichlet(alpha) mixtures seeded by `config.seed`."""
    num_domains = len(config.base.domains.names)
    draws = np.random.default_rng([config.seed, 21]).dirichlet(
        np.full(num_domains, config.dirichlet_alpha), size=config.num_proxies)
    return [{"label": f"proxy{i:02d}", "mixture": quantize(d), "seed": config.seed}
            for i, d in enumerate(draws)]


def prepare(config: ml_collections.ConfigDict) -> tuple[list[dict], dict[str, tuple]]:
    """Loads and tokenises the domains once (filling the caches the runs read) and returns
    the per-domain table and the training-free mixtures (natural, entropy)."""
    base = config.base
    corpus = domains.load(base.domains, "base.domains")
    tok = mixture_run.build_tokenizer(base, corpus)
    streams = domains.token_streams(corpus, tok, config.seed, base.domains.split_seed,
                                    base.cache_dir)
    rows = domains.describe(corpus, streams)
    sample = min(config.entropy.tokens, *(len(s.train) for s in streams.values()))
    measure = entropy_mix.ENTROPIES[config.entropy.measure]
    for row in rows:
        row["entropy"] = measure(streams[row["domain"]].train[:sample])
        row["entropy_sample_tokens"] = sample
    try:
        entropy_shares = entropy_mix.proportions([r["entropy"] for r in rows],
                                                 config.entropy.method)
    except ValueError as e:  # e.g. a sample too short to tell the domains apart
        raise validation.ConfigError(f"--config.entropy.tokens={config.entropy.tokens}: "
                                     f"{sample} tokens per domain give no usable entropy "
                                     f"({e}); sample more") from e
    for row, share in zip(rows, entropy_shares):
        row["entropy_share"] = float(share)
    num_domains = len(rows)
    mixtures = {"uniform": quantize(np.full(num_domains, 1 / num_domains)),
                "natural": quantize([r["natural_share"] for r in rows]),
                "entropy": quantize(entropy_shares)}
    return rows, mixtures



def compare(config: ml_collections.ConfigDict, strategies: dict[str, tuple],
            rows: list[dict[str, Any]], fitted: dict, names: tuple[str, ...]) -> list[dict]:
    """One row per strategy: its mixture, the seeds' average validation loss (mean, std, each
    seed), each domain's mean, the paired difference to uniform, and each law's prediction."""
    by_label = {}
    for row in rows:
        by_label.setdefault(row["label"], {})[row["seed"]] = row
    uniform = by_label["uniform"]
    out = []
    for label, mix in strategies.items():
        runs = by_label[label]
        seeds = sorted(runs)
        mean, std = transitions.mean_std([runs[s]["avg_valid_loss"] for s in seeds])
        diffs = [runs[s]["avg_valid_loss"] - uniform[s]["avg_valid_loss"] for s in seeds]
        diff_mean, diff_std = transitions.mean_std(diffs)
        entry = {"strategy": label, **{f"share_{n}": w for n, w in zip(names, mix)},
                 "seeds": len(seeds), "avg_valid_loss_mean": mean, "avg_valid_loss_std": std,
                 **{f"avg_valid_loss_seed{s}": runs[s]["avg_valid_loss"] for s in seeds},
                 "minus_uniform_mean": diff_mean, "minus_uniform_std": diff_std}
        for n in names:
            entry[f"valid_{n}_loss_mean"] = statistics.fmean(
                runs[s][f"final_valid_{n}_loss"] for s in seeds)
        for law_name, laws_params in fitted.items():
            if law_name != "step_only":
                entry[f"predicted_{law_name}"] = float(proxy_law_fits.predicted_average(
                    laws_params, config.base.num_steps, [mix])[0])
        out.append(entry)
    return out


def headline(comparison: list[dict]) -> dict[str, Any]:
    """For every strategy against uniform: the difference of the seed means, the larger of
    the two seed standard deviations, and whether the difference exceeds it."""
    uniform = next(c for c in comparison if c["strategy"] == "uniform")
    out = {}
    for c in comparison:
        if c["strategy"] == "uniform":
            continue
        spread = max(c["avg_valid_loss_std"], uniform["avg_valid_loss_std"])
        diff = c["avg_valid_loss_mean"] - uniform["avg_valid_loss_mean"]
        beyond = abs(diff) > spread if spread > 0 else None
        out[c["strategy"]] = {
            "minus_uniform": diff, "seed_spread": spread, "beats_uniform": diff < 0,
            "beyond_seed_spread": beyond, "paired_minus_uniform_std": c["minus_uniform_std"],
            "verdict": (f"{c['strategy']} {c['avg_valid_loss_mean']:.4f} vs uniform "
                        f"{uniform['avg_valid_loss_mean']:.4f} ({diff:+.4f}; "
                        + (f"larger seed std {spread:.4f}" if spread > 0 else "no seed spread")
                        + f"): {'lower' if diff < 0 else 'not lower'}"
                        + ("" if beyond is None else
                           ", beyond the seed spread" if beyond else ", within the seed spread"))}
    return out



def plot_strategies(comparison_csv: pathlib.Path, path: pathlib.Path, title: str) -> None:
    """Average validation loss per strategy: seed mean +- std, and every seed as a dot."""
    from phasemix.base import plotting

    rows = results_table.read_table(comparison_csv)
    fig, ax = plotting.figure(figsize=(1.6 + 1.3 * len(rows), 4.2))
    for x, row in enumerate(rows):
        ax.errorbar([x], [row["avg_valid_loss_mean"]], yerr=[row["avg_valid_loss_std"]],
                    fmt="o", capsize=5, color="black")
        seeds = [v for k, v in row.items() if k.startswith("avg_valid_loss_seed")]
        ax.scatter([x + 0.12] * len(seeds), seeds, s=12, color="tab:blue")
    ax.set_xticks(range(len(rows)), [r["strategy"] for r in rows])
    ax.set_ylabel("average validation loss over domains")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    plotting.save(fig, path)
