"""One LM trained on a mixture of real domains, each domain's validation loss logged: the run
the BiMix study (`experiments/bimix.py`) trains for every proxy and every compared mixture.

`run_config` is the run's config; `make_task` builds its mixture batches and one validation
set per domain (the same windows every run); `run_mixture` trains it (the sweep's run
function) and draws each domain's validation curve.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import grain
import ml_collections
import numpy as np

from phasemix.base import plotting, run_io, validation
from phasemix.data import domains, mixture, tokenizer
from phasemix.training import losses, optimizer, presets, train

# Where the runs keep the tokenizer and the token streams (built once, then read).
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "phasemix", "bimix")
MIX_TOL = 1e-6  # a mixture's shares must sum to 1 within this


def run_config(smoke: bool = False) -> ml_collections.ConfigDict:
    """One LM trained on one mixture: a proxy or a compared strategy."""
    config = ml_collections.ConfigDict()
    config.experiment = "bimix_mixture"
    config.seed = 0  # model init and the order of each domain's training documents
    config.label = "base"  # names the run's folder: proxy00, ..., uniform, optimized, ...
    config.domains = domains.default_config()
    config.mixture = (0.25, 0.25, 0.25, 0.25)  # share of training sequences, domains.names order
    config.vocab_size = 4096  # most frequent words over all domains' train documents
    config.seq_len = 64  # tokens per training sequence
    config.model = ml_collections.ConfigDict(dict(
        preset="tiny-32",  # phasemix/training/presets.py: depth, width, heads
        activation="gelu",  # the MLP's nonlinearity
        pos_embedding="learned",  # learned | sinusoidal | none
        init_scale=1.0,  # alpha: every initial parameter is multiplied by it
        dtype="float32",  # compute dtype (parameters stay float32)
    ))
    config.opt = optimizer.default_config()
    # Constant after warmup: a decaying schedule bends every curve towards its own end, which
    # the laws' step term (one power law in s) cannot describe.
    config.opt.schedule = "constant"
    config.opt.lr = 3e-3
    config.opt.weight_decay = 0.1
    config.opt.warmup_steps = 50
    config.batch_size = 16  # sequences per step
    config.num_steps = 1000  # optimizer steps
    config.eval_every = 125  # every evaluation is a row of the law fits
    config.eval_windows = 256  # validation windows per domain, spread over its documents
    config.eval_batch_size = 256  # rows per evaluation batch
    train.declare_execution_fields(config)
    config.checkpoint_every = 500  # steps between checkpoints (and at the end)
    config.cache_dir = CACHE_DIR  # tokenizer and token streams
    if smoke:
        config.domains.names = ("encyclopedia", "biographies")  # the quickest to load
        config.domains.max_chars = 200_000
        config.domains.num_people = 2000
        config.vocab_size = 512
        config.seq_len = 16
        config.model.preset = "tiny-16"
        config.mixture = (0.5, 0.5)
        config.opt.warmup_steps = 2
        config.batch_size = 8
        config.num_steps = 8
        config.eval_every = 2
        config.eval_windows = 16
        config.eval_batch_size = 16
        config.checkpoint_every = 8
    return config


def check_mixture(weights: Any, num_domains: int, field: str) -> None:
    """One share per domain, none negative, summing to 1 within MIX_TOL."""
    try:
        w = np.asarray(weights, np.float64)
    except (TypeError, ValueError):  # e.g. a flag the parser kept as a string
        validation.fail(field, f"must be numbers, one share per domain ({num_domains}), "
                        f"e.g. --config.{field}='(0.5,0.5)'", weights)
    validation.require(w.shape == (num_domains,), field,
                       f"needs one share per domain ({num_domains})", weights)
    validation.require(bool(np.all(np.isfinite(w))), field, "has a share that is not finite",
                       weights)
    validation.require(bool(np.all(w >= 0)), field, "has a negative share", weights)
    validation.require(abs(w.sum() - 1) <= MIX_TOL, field,
                       f"must sum to 1 within {MIX_TOL} (it sums to {w.sum():.9g})", weights)


def validate_run(config: ml_collections.ConfigDict, prefix: str = "") -> None:
    """The checks of one run that need no data (the sweep runs them for every run first)."""
    import jax

    with run_io.flags_under(prefix):  # the loop's own fields: steps, batch sizes, lr, ...
        train.validate_loop_config(config, jax.device_count())
    domains.validate(config.domains, f"{prefix}domains")
    check_mixture(config.mixture, len(config.domains.names), f"{prefix}mixture")
    for key in ("seq_len", "eval_windows", "vocab_size"):
        validation.require(config[key] > 0, f"{prefix}{key}", "must be positive", config[key])
    validation.require_choice(config.model.preset, presets.PRESETS, f"{prefix}model.preset")


def build_tokenizer(config: ml_collections.ConfigDict,
                    corpus: list[domains.Domain]) -> tokenizer.Tokenizer:
    texts = [t for d in corpus for t in d.train]
    return tokenizer.build_or_load(texts, config.vocab_size, config.cache_dir,
                                   key=f"bimix|{config.domains.source}|"
                                       + "+".join(config.domains.names), flag="vocab_size")



def make_task(config: ml_collections.ConfigDict, num_devices: int = 1) -> train.Task:
    """The mixture's batches and one validation set per domain (the same windows every run)."""
    validate_run(config)
    names = tuple(config.domains.names)
    corpus = domains.load(config.domains)
    tok = build_tokenizer(config, corpus)
    streams = domains.token_streams(corpus, tok, config.seed, config.domains.split_seed,
                                    config.cache_dir)
    batch_size = config.batch_size - config.batch_size % num_devices
    validation.require(batch_size > 0, "batch_size", f"must be >= the {num_devices} devices")
    batches = mixture.MixtureBatches([streams[n].train for n in names], config.mixture,
                                     batch_size, config.seq_len, config.num_steps)
    eval_sets = {f"valid_{n}": domains.valid_windows(streams[n].valid, config.seq_len,
                                                     config.eval_windows) for n in names}
    cfg = presets.causal_lm_config(config, tok.vocab_size)
    facts = {"vocab_size": tok.vocab_size,
             "train_tokens": config.num_steps * batch_size * config.seq_len,
             **{f"epochs_{n}": float(e) for n, e in zip(names, batches.epochs())},
             **presets.param_counts(cfg)}
    return train.Task(model_config=cfg, loss_fn=losses.masked_token_loss,
                      train_batches=grain.MapDataset.source(batches), eval_sets=eval_sets,
                      summarize=functools.partial(summarize, names=names, **facts))


def summarize(rows: list[dict[str, Any]], names: tuple[str, ...], **facts) -> dict[str, Any]:
    """The average over domains of the final validation loss (the loop adds each domain's)."""
    return {**facts, "avg_valid_loss": float(np.mean([rows[-1][f"valid_{n}_loss"]
                                                       for n in names]))}


def run_mixture(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains one mixture run (the sweep's run function)."""
    import jax

    summary = train.train_and_evaluate(config, workdir, make_task(config, jax.device_count()))
    _plot_run(config, workdir)
    return summary


def _plot_run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """curves.png: each domain's validation loss through training (what the laws model)."""
    rows = run_io.read_metrics(workdir)
    shares = dict(zip(config.domains.names, config.mixture))
    curves = {}
    for key in sorted(k for k in rows[0] if k.startswith("valid_") and k.endswith("_loss")):
        name = key[len("valid_"):-len("_loss")]
        label = f"{name} ({shares[name]:g})" if name in shares else name
        curves[label] = [{"step": r["step"], "loss": r[key]} for r in rows if key in r]
    plotting.curves_by_group(curves, "loss", run_io.run_path(workdir) / "curves.png",
                             "Validation loss per domain", "domain (mixture share)",
                             "validation loss", log_y=True)
