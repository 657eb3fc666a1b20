"""The grokking run (modular arithmetic, 1-layer decoder): config, task, training, summary.

`experiments/grokking.py` is its command line; `critical_data_size` sweeps it.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any, Sequence

import ml_collections
from absl import logging

from phasemix.base import plotting, run_io, validation
from phasemix.data import batching, modular
from phasemix.training import losses, model as model_lib, optimizer, train
from phasemix.analysis import cds_law, representations, transitions
from phasemix.runs import sweep

MEMORIZED_AT = 0.99  # train accuracy that counts as memorised
GENERALIZED_AT = 0.95  # test accuracy that counts as generalised


# The task fields that change only a run's data (the size of its training subset): runs that
# differ in them, as in seed, lr, weight decay or init scale, train as one vmapped program.
DATA_FIELDS = ("task.train_count", "task.train_fraction")
VMAPPED_FIELDS = train.VMAPPED_FIELDS + DATA_FIELDS


# --config=<this file>:<variant> takes these ('': the default); --help lists them.
VARIANTS = ("", "smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Default: the demo. `smoke`: a seconds-long run for tests."""
    config = ml_collections.ConfigDict()
    config.experiment = "grokking"
    config.seed = 0  # model init, train/test split and batch order all derive from it
    config.task = ml_collections.ConfigDict(dict(
        op="add",  # add | sub | mul | div | x2_xy_y2  (a op b mod p)
        p=97,  # the modulus (prime for div)
        # Fraction of all pairs used for training (if train_count is None), or "auto": a margin
        # above this op and modulus's predicted critical data size (phasemix/analysis/cds_law.py).
        train_fraction=ml_collections.FieldReference(0.3, field_type=object),
        train_count=ml_collections.config_dict.placeholder(int),  # or an exact count
    ))
    config.model = ml_collections.ConfigDict(dict(
        num_layers=1,  # decoder blocks
        d_model=128,  # residual stream width
        num_heads=4,  # attention heads (d_model / num_heads each)
        d_mlp=512,  # hidden width of each block's MLP
        activation="gelu",  # the MLP's nonlinearity
        pos_embedding="learned",  # learned | sinusoidal | none
        init_scale=1.0,  # alpha: every initial parameter is multiplied by it
        dtype="float32",  # compute dtype (parameters stay float32)
    ))
    config.opt = optimizer.default_config()
    # Constant lr through the grokking phase, then linear decay over the last 20% of steps:
    # Adam's occasional loss spikes (the "slingshot") would otherwise decide the final numbers.
    config.opt.schedule = "wsd"
    config.batch_size = 512  # a batch_size >= the train set means full-batch training
    config.num_steps = 4000  # optimizer steps
    config.eval_every = 50  # steps between evaluations of the full train and test sets
    config.eval_batch_size = 2048  # rows per evaluation batch
    # XLA's own dot kernels on a CPU: 1.07-1.19x faster steps for this model's small
    # products (docs/performance.md).
    train.declare_execution_fields(config, xla_cpu_ynnpack=False)
    config.checkpoint_every = 1000  # steps between checkpoints (and at the end)
    if variant == "smoke":
        config.task.p = 23
        config.task.train_fraction = 0.5
        config.model.d_model = 32
        config.model.d_mlp = 64
        config.batch_size = 64
        config.num_steps = 60
        config.eval_every = 10
        config.eval_batch_size = 256
        config.checkpoint_every = 20
    elif variant:
        validation.unknown_variant(variant, "'' or 'smoke'")
    return config


def summarize(rows: list[dict], *, memorized_at: float = MEMORIZED_AT,
              generalized_at: float = GENERALIZED_AT, **fixed) -> dict:
    """The headline numbers of a run from its metric rows; `fixed` adds known facts."""
    return {**fixed,
        "step_memorized": transitions.first_step_at_least(rows, "train_accuracy", memorized_at),
        "step_generalized": transitions.first_step_at_least(rows, "test_accuracy",
                                                            generalized_at),
    }


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
    """Every check a run makes before training, without building anything."""
    modular.validate(config.task)
    train.validate_loop_config(config, num_devices)
    model_config(config).validate()


def model_config(config: ml_collections.ConfigDict) -> model_lib.TransformerConfig:
    # The loss reads the answer token only, so the head runs at the last position alone: the
    # same numbers as the full decoder (tested) for half the FLOPs of the 1-layer model.
    return model_lib.TransformerConfig.from_config(
        config.model, vocab_size=config.task.p + 1, max_len=modular.SEQ_LEN, causal=True,
        last_position_only=True)


def make_task(config: ml_collections.ConfigDict, num_devices: int = 1) -> train.Task:
    """Validates the config, builds the split, the batches and the model hyper-parameters."""
    validate(config, num_devices)
    train_set, test_set = modular.split(config.task, config.seed)
    num_train = len(train_set["inputs"])
    batch_size = min(config.batch_size, num_train)
    batch_size -= batch_size % num_devices
    validation.require(batch_size > 0, "batch_size",
                       f"the train set ({num_train}) is smaller than the {num_devices} devices")
    return train.Task(
        model_config=model_config(config),
        loss_fn=losses.masked_token_loss,
        train_batches=batching.epoch_batches(train_set, batch_size, config.seed,
                                             config.num_steps),
        eval_sets={"train": train_set, "test": test_set},
        summarize=functools.partial(summarize, train_size=num_train,
                                    test_size=len(test_set["inputs"])))


def resolve_train_fraction(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`task.train_fraction="auto"` becomes the predicted safe fraction; an explicit size below
    the predicted critical data size gets a one-line warning before training."""
    task = config.task
    if task.train_fraction != "auto":
        if task.train_count is None and isinstance(task.train_fraction, (int, float)):
            predicted = cds_law.predicted_count(task.op, task.p)
            size = modular.train_size(task)
            if predicted is not None and size < predicted:
                safe = cds_law.auto_fraction(task.op, task.p)
                logging.warning(
                    "--config.task.train_fraction=%g gives %d training pairs, below the "
                    "predicted critical data size of %d for %s mod %d: the run will likely "
                    "memorise and never generalise; use --config.task.train_fraction=auto "
                    "(%.3f) or more", task.train_fraction, size, round(predicted), task.op,
                    task.p, min(safe, cds_law.MAX_FRACTION))
        return config
    validation.require(task.train_count is None, "task.train_count",
                       "must be unset with --config.task.train_fraction=auto", task.train_count)
    fraction = cds_law.auto_fraction(task.op, task.p)
    validation.require(fraction is not None, "task.train_fraction",
                       f"'auto' has no critical-size prediction for op {task.op!r} (predicted: "
                       f"{sorted(cds_law.FIT) or 'none yet'}); give a fraction", "auto")
    validation.require(fraction <= cds_law.MAX_FRACTION, "task.train_fraction",
                       f"'auto' would need {fraction:.3f} of the pairs ({cds_law.MARGIN}x the "
                       f"predicted critical size {cds_law.predicted_count(task.op, task.p):.0f}),"
                       f" above {cds_law.MAX_FRACTION}: too little test data is left", "auto")
    values = config.to_dict()
    values["task"]["train_fraction"] = round(fraction, 4)
    resolved = ml_collections.ConfigDict(values)
    logging.info("--config.task.train_fraction=auto: %.4f of the %d pairs (%gx the predicted "
                 "critical size %.0f of %s mod %d)", resolved.task.train_fraction,
                 modular.num_pairs(task.op, task.p), cds_law.MARGIN,
                 cds_law.predicted_count(task.op, task.p), task.op, task.p)
    return resolved


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    import jax

    run_io.require_workdir(workdir)
    config = resolve_train_fraction(config)
    task = make_task(config, jax.device_count())
    summary = train.train_and_evaluate(config, workdir, task)
    _plot(config, workdir, summary)
    return summary


def run_vmapped(configs: list[ml_collections.ConfigDict], workdirs: list[str]) -> list[dict]:
    """Runs that differ only in `VMAPPED_FIELDS`, trained together as one vmapped program."""
    import jax

    configs = [resolve_train_fraction(c) for c in configs]
    train.check_vmappable(configs, DATA_FIELDS)  # before any split is built
    tasks = [make_task(c, jax.device_count()) for c in configs]
    summaries = train.train_and_evaluate_vmapped(configs, workdirs, tasks, DATA_FIELDS)
    for config, workdir, summary in zip(configs, workdirs, summaries):
        _plot(config, workdir, summary)
    return summaries


def _plot(config: ml_collections.ConfigDict, workdir: str, summary: dict) -> None:
    train.plot_run(workdir, f"{config.task.op} mod {config.task.p}, "
                   f"{summary['train_size']} train pairs",
                   {"memorised": summary["step_memorized"],
                    "generalised": summary["step_generalized"]})


def plot_pca_subsets(base: ml_collections.ConfigDict, seed: int, train_counts: Sequence[int],
                     workdir: pathlib.Path, rows: list[dict[str, Any]]) -> None:
    """Fig. 1D: every pair projected on the first principal axis of the hidden states of the
    largest run of a finished sample-wise sweep (`seed`), with its nested training subsets
    (`train_counts`) drawn over it."""
    largest = max((r for r in rows if r["seed"] == seed),
                  key=lambda r: r["task.train_count"])
    run_config = sweep.apply_overrides(base, {"task.train_count": largest["task.train_count"],
                                              "seed": seed})
    task = make_task(run_config)
    params = train.restore_params(run_config, str(workdir / sweep.RUNS_DIR / largest["run"]), task)
    a, b, c = modular.all_pairs(run_config.task.op, run_config.task.p)
    everything = modular.to_examples(a, b, c, run_config.task.p)["inputs"]
    projection, explained = representations.first_principal_component(
        representations.final_hidden_states(task.model_config, params, everything))
    order = modular.pair_order(run_config.task.op, run_config.task.p, seed)
    subsets = {n: projection[order[:n]] for n in train_counts}
    plotting.projection_by_subset(
        projection, subsets, workdir / "pca_subsets.png",
        f"First principal axis of the hidden state at '=' ({explained:.0%} of variance), "
        f"model trained on {largest['task.train_count']} pairs", "PC 1")
