"""Knowledge capacity at CPU scale (Allen-Zhu & Li 2024): bits per parameter on SynBio alone.

Each run trains one model size on N biographies and nothing else (ratio 1), for a fixed number
of exposures per person, then scores every person on every attribute. Learned bits are
N x sum over attributes of [log2 K - H(errors)] (capacity.learned_bits: Fano's bound on the
conditional entropy of the errors, K the attribute's pool size). N grows per size until the
learned bits stop growing: that plateau is the size's capacity.

The value pools are cut to 40 values each (birth dates: one year, 336 dates), so that N, not
the pool sizes, decides the total bits (29.7 bits per person), and the vocabulary shrinks to
543 words, which makes the output layer, the largest cost of these small models, 10x cheaper.

Run (3 sizes x 4 N x 2 seeds = 24 runs, 100 exposures each; ~266k steps, 8+ hours on a
2-core CPU):
  python -m experiments.knowledge_capacity --workdir=runs/knowledge_capacity
Smoke (seconds): --config=experiments/knowledge_capacity.py:smoke
Any knowledge_mixing field is a flag under `base` (--config.base.opt.lr=1e-3); the grid is
--config.presets='("tiny-16",)' --config.people_per_preset='((250,500),)' --config.seeds='(0,)'.
Re-running the command runs only the runs that are missing.
"""

from __future__ import annotations

import math
import pathlib
import time
from typing import Any

import ml_collections

from phasemix.base import plotting, run_io, validation
from phasemix.analysis import capacity
from phasemix.runs import cli, knowledge_mixing, sweep

POOL_FIELDS = ("num_first_names", "num_middle_names", "num_last_names", "num_cities",
               "num_universities", "num_majors", "num_employers")


# --config=<this file>:<variant> takes these ('': the default); --help lists them.
VARIANTS = ("", "smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Default: tiny-16/32/48, N doubling from below to above each size's capacity."""
    if variant not in ("", "smoke"):
        validation.unknown_variant(variant, "'' or 'smoke'")
    smoke = variant == "smoke"
    config = ml_collections.ConfigDict()
    config.experiment = "knowledge_capacity"
    base = knowledge_mixing.get_config("smoke" if smoke else "")
    base.ratio = 1.0  # biographies only: no web text competes for the capacity
    pool = 10 if smoke else 40
    for field in POOL_FIELDS:
        base.synbio[field] = pool
    base.synbio.min_birth_year = base.synbio.max_birth_year = 1990  # 336 birth dates
    # Every SynBio word (493 with 40-value pools, 163 with the smoke's 10) and the top web words.
    base.vocab_size = 300 if smoke else 543
    base.batch_size = 16 if smoke else 64
    base.seq_len = 32 if smoke else 64
    config.base = base
    config.presets = ("tiny-16",) if smoke else ("tiny-16", "tiny-32", "tiny-48")
    # One N grid per preset (same order), doubling through where 1-2 bits per parameter,
    # embeddings included, would fill it (tiny-16: 25.5k params, 29.7 bits a person: ~1,700
    # people at 2 bits/param). Below ~1,000 people 100 exposures are too few steps to learn
    # anything (pilot: tiny-16 at N = 250-1,000 stayed at chance, 0.02-0.03).
    config.people_per_preset = (((20, 40),) if smoke else
                                ((1000, 2000, 4000, 8000), (2000, 4000, 8000, 16000),
                                 (4000, 8000, 16000, 32000)))
    config.exposures = 2 if smoke else 100  # times each biography is seen in training
    # Tokens per biography with its separator, measured for these pools (53.0 at 40 values);
    # it turns exposures into steps. The run's summary records the exposures it really got.
    config.tokens_per_bio = 30.0 if smoke else 53.0
    config.evals_per_run = 4 if smoke else 8  # evaluations (and checkpoints) per run
    config.seeds = (0,) if smoke else (0, 1)
    # Learned bits count as stopped growing when doubling N adds less than this factor.
    config.saturation = 1.1
    config.workers = 1 if smoke else 2  # parallel runs, each pinned to its share of the CPUs
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    with run_io.flags_under("base."):  # before the grid divides by the base's batch size
        knowledge_mixing.validate(config.base)
    validation.require(len(config.presets) > 0, "presets", "needs at least one preset",
                       config.presets)
    validation.require(len(config.people_per_preset) == len(config.presets),
                       "people_per_preset", f"needs one N grid per preset "
                       f"{tuple(config.presets)}", config.people_per_preset)
    validation.require(all(len(g) > 0 and all(isinstance(n, int) and n >= 1 for n in g)
                           for g in config.people_per_preset), "people_per_preset",
                       "every grid needs positive integers", config.people_per_preset)
    validation.require_positive(config, "exposures", "tokens_per_bio", "evals_per_run")
    validation.require(config.saturation > 1, "saturation", "must be > 1", config.saturation)
    validation.require(len(config.seeds) > 0, "seeds", "needs at least one seed", config.seeds)
    validation.require(config.base.ratio == 1, "base.ratio",
                       "must be 1: capacity is measured on biographies alone", config.base.ratio)


def num_steps(config: ml_collections.ConfigDict, num_people: int) -> int:
    """Steps that show each of N biographies `exposures` times."""
    base = config.base
    tokens = config.exposures * num_people * config.tokens_per_bio
    return max(math.ceil(tokens / (base.batch_size * (base.seq_len + 1))), config.evals_per_run)


def overrides(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """The grid: preset x its N x seed, each with the steps its exposures need."""
    grid = []
    for seed in config.seeds:  # seed-major: a first seed of every point finishes first
        for preset, people in zip(config.presets, config.people_per_preset):
            for n in people:
                steps = num_steps(config, n)
                every = math.ceil(steps / config.evals_per_run)
                grid.append({"model.preset": preset, "synbio.num_people": n,
                             "num_steps": steps, "eval_every": every,
                             "checkpoint_every": every, "final_eval_people": n, "seed": seed})
    return grid


def grid_flags() -> dict[str, str]:
    return {"model.preset": "presets", "synbio.num_people": "people_per_preset",
            "final_eval_people": "people_per_preset", "num_steps": "exposures",
            "eval_every": "evals_per_run", "checkpoint_every": "evals_per_run", "seed": "seeds"}


def run(config: ml_collections.ConfigDict, workdir: str,
        shard: sweep.Shard | None = None) -> dict[str, Any]:
    validate(config)
    grid = overrides(config)
    path = run_io.require_workdir(workdir)
    # A sweep that fails part-way leaves the tables and figures of its last success.
    with run_io.unchanged_on_failure(path):
        return _sweep(config, grid, path, shard)


def _sweep(config: ml_collections.ConfigDict, grid: list[dict[str, Any]], path: pathlib.Path,
           shard: sweep.Shard | None) -> dict[str, Any]:
    began = time.monotonic()
    rows = sweep.run_sweep(config.base, grid, path, knowledge_mixing.run,
                           validate_fn=knowledge_mixing.validate, workers=config.workers,
                           shard=shard, grid_flags=grid_flags(), base_flag="base")
    sweep.require_none_diverged(rows, path)  # learned bits need every size's run
    run_io.write_json_atomic(path / run_io.CONFIG_FILE, run_io.config_to_dict(config))
    if len(rows) < len(grid):  # other shards still running: they write the analysis
        return {"runs": len(grid), "runs_finished": len(rows), "shard": str(shard)}
    table = capacity.capacity_rows(rows)
    sweep.write_table(table, path / "capacity.csv")
    sizes = capacity.capacity_per_size(table, config.saturation)
    sweep.write_table(sizes, path / "analysis.csv")
    series = {}
    for preset in config.presets:
        mine = sorted((r for r in table if r["preset"] == preset), key=lambda r: r["num_people"])
        series[preset] = {"x": [r["num_people"] for r in mine],
                          "y": [r["learned_bits"] for r in mine]}
    plotting.xy_lines(series, path / "learned_bits.png",
                      f"Learned bits on SynBio alone, {config.exposures:g} exposures",
                      "people N", "learned bits (Fano bound)")
    summary = run_io.nan_to_none({"runs": len(rows), "per_size": sizes,
                                  "wall_seconds": time.monotonic() - began})
    run_io.write_json_atomic(path / run_io.SUMMARY_FILE, summary)
    for s in sizes:
        print(f"{s['preset']}: {s['capacity_bits']:,.0f} bits at N={s['capacity_people']} = "
              f"{s['bits_per_param']:.3f} bits/param ({s['bits_per_non_embedding_param']:.3f} "
              f"per non-embedding param); plateau {'reached' if s['plateau_reached'] else 'not'}",
              flush=True)
    return summary


if __name__ == "__main__":
    cli.main(run, config_file=__file__, default_workdir="runs/knowledge_capacity", sweep=True)
