r"""Critical data size of modular arithmetic (Zhu et al. 2024): sample-wise and model-wise sweeps.

Sample-wise (default; ~15 minutes on a 2-core CPU): train-set sizes from well below to well
above the critical size, 3 seeds each, every run a grokking run with a fixed step budget:
  python -m experiments.critical_data_size --workdir=runs/cds

Model-wise: widths x depths x train-set sizes:
  python -m experiments.critical_data_size --config=experiments/critical_data_size.py:model \
      --workdir=runs/cds_model

Sentiment (the same analysis over fractions of the IMDB train split, with the sentiment
experiment's runs; hours on a CPU at the default size):
  python -m experiments.critical_data_size --config=experiments/critical_data_size.py:sentiment \
      --workdir=runs/cds_imdb          (:sentiment_model for hidden size x fraction)

Smoke (seconds): --config=experiments/critical_data_size.py:smoke (or :model_smoke,
:sentiment_smoke)
On a cluster, --shard=i/n runs part i of n of the grid (launch/slurm_sweep_array.sbatch runs
one part per array task); the part that finds every run finished writes the analysis.
Any grokking field is a flag under `base`, e.g. --config.base.task.p=97
--config.base.num_steps=20000; the grid is --config.train_counts='(200,400,800)'
--config.seeds='(0,1)'. Re-running a sweep runs only the runs that are missing.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable

import ml_collections

from phasemix.base import plotting, run_io, validation
from phasemix.analysis import transitions
from phasemix.runs import cli, grokking, sentiment_grokking, sweep

MODES = ("sample", "model")


@dataclasses.dataclass(frozen=True)
class Study:
    """What a sweep varies and runs: the data-size field, its label and the run functions."""

    size_field: str  # the config field of the data size
    size_flag: str  # the sweep's flag of its values
    size_label: str  # for tables and figures
    experiment: str  # the experiment whose config `base` must be
    run: Callable[[ml_collections.ConfigDict, str], dict[str, Any]]
    validate: Callable[[ml_collections.ConfigDict], None]
    run_vmapped: Callable[..., list[dict[str, Any]]] | None  # a vmapped group as one program
    vmapped_fields: tuple[str, ...] = ()  # the fields whose runs `run_vmapped` trains together


STUDIES = {
    "modular": Study("task.train_count", "train_counts", "train pairs", "grokking",
                     grokking.run, grokking.validate, grokking.run_vmapped,
                     grokking.VMAPPED_FIELDS),
    "sentiment": Study("task.train_fraction", "train_fractions", "fraction of the train reviews",
                       "sentiment_grokking", sentiment_grokking.run, sentiment_grokking.validate,
                       None),
}


# --config=<this file>:<variant> takes these ('': the default); --help lists them.
VARIANTS = ("", "model", "smoke", "model_smoke", "sentiment", "sentiment_model",
            "sentiment_smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Default: sample-wise. `model`: model-wise. `smoke`: a tiny sample-wise sweep."""
    config = ml_collections.ConfigDict()
    config.experiment = "critical_data_size"
    config.study = "modular"  # modular (train_counts) | sentiment (train_fractions)
    config.mode = "sample"  # sample: sizes x seeds | model: widths x depths x sizes x seeds
    base = grokking.get_config()
    # A smaller task than the demo so that a 24-run sweep fits in minutes: add mod 47
    # (2,209 pairs), a 1-layer d=64 decoder, lr 3e-3, weight decay 1, 3,000 steps.
    base.task.p = 47
    base.model.d_model = 64
    base.model.d_mlp = 256
    base.opt.lr = 3e-3
    base.num_steps = 3000
    base.eval_every = 25
    base.checkpoint_every = 1000
    config.base = base
    # Only the study's own size flag exists, so that the other study's is an unknown flag, not
    # a silent no-op (the sentiment variants swap it for train_fractions).
    config.train_counts = (300, 450, 600, 750, 900, 1100, 1400, 1800)  # of 2,209 pairs
    config.seeds = (0, 1, 2)
    config.widths = (16, 32, 64, 128)  # model mode: d_model (d_mlp = 4 x width, 4 heads)
    config.depths = (1,)  # model mode: num_layers
    config.workers = 2  # parallel processes, each on its share of the CPUs; 1: in this process
    # Train the runs that differ only in seed, size, lr, weight decay or init scale as one
    # vmapped program per group, in this process (not in workers). None: yes on GPUs and
    # TPUs, no on CPUs (benchmarks/sweep_runner.py measures both modes).
    config.vmap_runs = ml_collections.config_dict.placeholder(bool)
    config.max_vmapped_runs = 0  # the most runs one vmapped program trains (memory); 0: all
    if variant == "model":
        config.mode = "model"
        config.train_counts = (450, 750, 1100, 1800)
        config.seeds = (0, 1)
    elif variant in ("smoke", "model_smoke"):
        config.base = grokking.get_config("smoke")
        config.train_counts = (100, 300)
        config.seeds = (0, 1)
        config.workers = 1
        if variant == "model_smoke":
            config.mode = "model"
            config.train_counts = (200,)
            config.seeds = (0,)
            config.widths = (16, 32)
    elif variant in ("sentiment", "sentiment_model", "sentiment_smoke"):
        config.study = "sentiment"
        config.base = sentiment_grokking.get_config("smoke" if variant == "sentiment_smoke"
                                                    else "")
        config.workers = 1  # one run already keeps both cores busy at this size
        del config.train_counts
        # One seed: each run is ~23 min on a 2-core CPU (5 runs ~2 h); add seeds on bigger
        # machines. 0.25 is the single-run default, so the sweep includes it.
        config.train_fractions = (0.05, 0.1, 0.25, 0.5, 1.0)  # of the train split
        config.seeds = (0,)
        if variant == "sentiment_model":
            config.mode = "model"
            config.train_fractions = (0.1, 0.3, 1.0)
            config.widths = (16, 32, 64, 128)
            config.seeds = (0,)
        elif variant == "sentiment_smoke":
            config.train_fractions = (0.5, 1.0)
            config.seeds = (0,)
    elif variant:
        validation.unknown_variant(variant, "'', 'model', 'smoke', 'model_smoke', 'sentiment', "
                                   "'sentiment_model' or 'sentiment_smoke'")
    return config


def sizes(config: ml_collections.ConfigDict) -> tuple[Any, ...]:
    return config.train_counts if config.study == "modular" else config.train_fractions


def overrides(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """The grid: one override dict per run."""
    validation.require_choice(config.mode, MODES, "mode")
    validation.require_choice(config.study, STUDIES, "study")
    study = STUDIES[config.study]
    # The study's runs need their experiment's base config, which the variant sets.
    validation.require(config.base.get("experiment") == study.experiment, "study",
                       f"needs a {study.experiment} base config, not "
                       f"{config.base.get('experiment')!r}: choose the study by the variant "
                       "(--config=experiments/critical_data_size.py:sentiment, :sentiment_model "
                       "or :sentiment_smoke for sentiment; none, :model or :smoke for modular)",
                       config.study)
    validation.require(not (config.vmap_runs and study.run_vmapped is None), "vmap_runs",
                       f"is not available for the {config.study} study", config.vmap_runs)
    for field in (study.size_flag, "seeds") + (("widths", "depths") if config.mode == "model"
                                         else ()):
        validation.require(len(config[field]) > 0, field, "the sweep needs at least one value",
                           config[field])
        validation.require_unique(config, field)
    if config.mode == "model":
        heads = config.base.model.num_heads
        validation.require(all(w % heads == 0 for w in config.widths), "widths",
                           f"each width must be a multiple of the {heads} heads "
                           "(--config.base.model.num_heads)", config.widths)
    size_axis = {study.size_field: sizes(config), "seed": config.seeds}
    if config.mode == "sample":
        return sweep.grid(size_axis)
    runs = []
    for depth in config.depths:
        for width in config.widths:
            for override in sweep.grid(size_axis):
                runs.append({"model.num_layers": depth, "model.d_model": width,
                             "model.d_mlp": 4 * width, **override})
    return runs


def grid_flags(config: ml_collections.ConfigDict) -> dict[str, str]:
    """Each grid field -> the sweep flag its values come from (named in a bad value's error)."""
    return {STUDIES[config.study].size_field: STUDIES[config.study].size_flag, "seed": "seeds",
            "model.num_layers": "depths", "model.d_model": "widths"}


def analyse(rows: list[dict[str, Any]], budget: int, size_field: str) -> dict[str, Any]:
    """Critical size, band and regimes of one group of runs (one model size)."""
    stats = transitions.per_size(rows, size_field)
    cds = transitions.critical_data_size(stats)
    stats = transitions.label_sizes(stats, cds)
    return {**cds, **transitions.regime_summary(stats), "step_budget": budget,
            "per_size": stats}


def thresholds(config: ml_collections.ConfigDict) -> tuple[float, float]:
    """(train accuracy that counts as memorised, test accuracy that counts as generalised)."""
    if config.study == "sentiment":
        return config.base.task.memorized_at, config.base.task.generalized_at
    return grokking.MEMORIZED_AT, grokking.GENERALIZED_AT


def _figures(config, workdir: pathlib.Path, rows, analysis) -> None:
    budget = config.base.num_steps
    study = STUDIES[config.study]
    curves = {}
    for row in rows:  # one seed per size: the first in the grid
        if row["seed"] == config.seeds[0] and row["model.d_model"] == rows[0]["model.d_model"]:
            curves[row[study.size_field]] = run_io.read_metrics(
                workdir / sweep.RUNS_DIR / row["run"])
    task = (f"{config.base.task.op} mod {config.base.task.p}" if config.study == "modular"
            else config.base.task.dataset)
    title = f"{task}, d={rows[0]['model.d_model']}, seed {config.seeds[0]}"
    for key, name in (("test_accuracy", "accuracy_by_size"),
                      ("train_accuracy", "train_accuracy_by_size"),
                      ("weight_norm", "weight_norm_by_size")):
        what = "weight L2 norm" if key == "weight_norm" else key.replace("_", " ")
        plotting.curves_by_group(curves, key, workdir / f"{name}.png",
                                 f"{what.capitalize()} per training-set size ({title})",
                                 study.size_label, what)
    if config.mode == "sample":
        if config.study == "modular":
            grokking.plot_pca_subsets(config.base, config.seeds[0], config.train_counts,
                                      workdir, rows)
        seeds = f"{len(config.seeds)} seed{'s' if len(config.seeds) > 1 else ''}"
        plotting.steps_vs_size(analysis["per_size"], analysis, budget,
                               workdir / "steps_vs_size.png",
                               f"Steps to memorise / generalise ({task}, {seeds})",
                               *thresholds(config), xlabel=study.size_label)
    else:
        accuracy: dict[tuple[Any, Any], list[float]] = {}
        for row in rows:
            key = (row["model.d_model"], row[study.size_field])
            accuracy.setdefault(key, []).append(row["final_test_accuracy"])
        means = {k: sum(v) / len(v) for k, v in accuracy.items()}
        plotting.heatmap(means, workdir / "accuracy_heatmap.png",
                         f"Final test accuracy (mean of {len(config.seeds)} seeds)",
                         study.size_label, "model width (d_model)", "test accuracy")


def run(config: ml_collections.ConfigDict, workdir: str,
        shard: sweep.Shard | None = None) -> dict[str, Any]:
    grid = overrides(config)
    workdir_path = run_io.require_workdir(workdir)
    # A sweep that fails part-way (e.g. a damaged checkpoint of the run the PCA figure reads)
    # leaves the tables and figures of its last success.
    with run_io.unchanged_on_failure(workdir_path):
        return _sweep(config, grid, workdir_path, shard)


def _sweep(config: ml_collections.ConfigDict, grid: list[dict[str, Any]],
           workdir_path: pathlib.Path, shard: sweep.Shard | None) -> dict[str, Any]:
    study = STUDIES[config.study]
    vmapped = (sweep.vmapped_groups_by_default() if config.vmap_runs is None
               else config.vmap_runs) and study.run_vmapped is not None
    rows = sweep.run_sweep(config.base, grid, workdir_path, study.run,
                           validate_fn=study.validate, workers=config.workers,
                           group_fn=study.run_vmapped if vmapped else None,
                           vmapped_fields=study.vmapped_fields,
                           max_vmapped_runs=config.max_vmapped_runs, shard=shard,
                           grid_flags=grid_flags(config), base_flag="base")
    run_io.write_json_atomic(workdir_path / run_io.CONFIG_FILE, run_io.config_to_dict(config))
    if len(rows) < len(grid):  # other shards still running: they write the analysis
        return {"runs": len(grid), "runs_finished": len(rows), "shard": str(shard)}
    # Diverged runs are marked in results.csv; the analysis uses the others.
    finished = sweep.finished_rows(rows)
    if not finished:
        sweep.require_none_diverged(rows, workdir_path)
    diverged, rows = len(rows) - len(finished), finished
    budget = config.base.num_steps
    if config.mode == "sample":
        analysis = analyse(rows, budget, study.size_field)
        summary = {k: v for k, v in analysis.items() if k != "per_size"}
        sweep.write_table(analysis["per_size"], workdir_path / "per_size.csv")
    else:
        by_model: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for row in rows:
            by_model.setdefault((row["model.num_layers"], row["model.d_model"]), []).append(row)
        per_model = []
        for (depth, width), group in sorted(by_model.items()):
            result = analyse(group, budget, study.size_field)
            per_model.append({"num_layers": depth, "d_model": width,
                              **{k: v for k, v in result.items() if k != "per_size"}})
        sweep.write_table(per_model, workdir_path / "per_model.csv")
        analysis = {"per_size": []}
        summary = {"critical_size_by_model": [
            {k: m[k] for k in ("num_layers", "d_model", "critical_size", "critical_size_lower",
                               "critical_size_upper")} for m in per_model]}
    summary.update(mode=config.mode, runs=len(rows), runs_diverged=diverged)
    run_io.write_json_atomic(workdir_path / run_io.SUMMARY_FILE, summary)
    _figures(config, workdir_path, rows, analysis)
    return summary


if __name__ == "__main__":
    cli.main(run, config_file=__file__, default_workdir="runs/critical_data_size", sweep=True)
