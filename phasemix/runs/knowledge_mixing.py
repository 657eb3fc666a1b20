"""The knowledge-mixing run (SynBio + web text at ratio r): config, task, training, the
final scoring of every person. `experiments/knowledge_mixing.py` is its command
line; knowledge_phase and knowledge_capacity sweep it.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import grain
import ml_collections
import numpy as np

from phasemix.base import distributed, plotting, run_io, validation
from phasemix.data import knowledge, mixture, synbio, tokenizer, web_text
from phasemix.training import decoding, losses, model as model_lib, optimizer, presets, train
from phasemix.analysis import transitions
from phasemix.runs import sweep

CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "phasemix", "knowledge")
ATTRIBUTE_SETS = tuple(f"bio_{a}" for a in synbio.ATTRIBUTES)
MIN_BIO_TOKENS = 20_000
PEOPLE_FILE = "people.csv"  # per scored person: exposures and exact-match accuracy


# --config=<this file>:<variant> takes these ('': the default); --help lists them.
VARIANTS = ("", "smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Default: one CPU-scale run at r = 0.3. `smoke`: a seconds-long run for tests."""
    config = ml_collections.ConfigDict()
    config.experiment = "knowledge_mixing"
    config.seed = 0  # model init and the order of web documents; SynBio has its own seed
    config.ratio = 0.3  # r: the fraction of training tokens that are SynBio (1: SynBio alone)
    config.synbio = synbio.default_config()
    config.synbio.num_people = 500  # CPU scale: ~47 exposures each within the default budget
    config.web = web_text.default_config()
    config.mix = ml_collections.ConfigDict(dict(
        keep_fraction=1.0,  # mitigation: train on a seeded random subset of the people
        # Mitigation, replacement form: this share of the SynBio tokens as compact tuples.
        compact_fraction=0.0,
        # Compact knowledge mixing as the paper does it (tau): compact tuples added as this
        # fraction of all training tokens beside the biographies (r kept); web gets 1 - r - tau.
        tuple_fraction=0.0,
    ))
    config.vocab_size = 5200  # every word of every SynBio value, then the top web words
    config.seq_len = 64  # tokens per training sequence (documents are packed)
    config.model = ml_collections.ConfigDict(dict(
        preset="tiny-64",  # phasemix/training/presets.py: tiny-16 ... tiny-128, small-256, pythia-*
        activation="gelu",  # the MLP's nonlinearity
        pos_embedding="learned",  # learned | sinusoidal | none
        init_scale=1.0,  # alpha: every initial parameter is multiplied by it
        dtype="float32",  # compute dtype (parameters stay float32)
    ))
    config.opt = optimizer.default_config()
    config.opt.lr = 5e-3  # the CPU pilot: 1e-3 memorised nothing within the budget
    config.opt.weight_decay = 0.1
    config.opt.schedule = "cosine"
    config.opt.warmup_steps = 100
    config.batch_size = 32  # sequences per step
    config.num_steps = 2000  # optimizer steps
    config.eval_every = 250  # steps between evaluations
    # People scored (at most: all trained on if fewer) at every evaluation, all 5 templates
    # each, and by the final model (summary.json).
    config.eval_people = 200
    config.final_eval_people = 500
    config.eval_web_windows = 256  # held-out web sequences for web_val_loss
    config.eval_batch_size = 512  # rows per evaluation batch
    train.declare_execution_fields(config)
    config.checkpoint_every = 1000  # steps between checkpoints (and at the end)
    config.cache_dir = CACHE_DIR  # tokenizer and tokenised web text
    if variant == "smoke":
        config.synbio.num_people = 50
        config.vocab_size = 3600
        config.seq_len = 32
        config.model.preset = "tiny-16"
        config.batch_size = 16
        config.num_steps = 30
        config.eval_every = 10
        config.eval_people = 20
        config.final_eval_people = 30
        config.eval_web_windows = 32
        config.eval_batch_size = 128
        config.checkpoint_every = 10
        config.opt.warmup_steps = 5
    elif variant:
        validation.unknown_variant(variant, "'' or 'smoke'")
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    """The checks that need no data, so a sweep can run them for every run first."""
    import jax

    train.validate_loop_config(config, jax.device_count())
    validation.require(0 <= config.ratio <= 1, "ratio",
                       "must be in [0, 1] (0: web text alone, 1: SynBio alone)", config.ratio)
    validation.require(0 < config.mix.keep_fraction <= 1, "mix.keep_fraction",
                       "must be in (0, 1]", config.mix.keep_fraction)
    validation.require(0 <= config.mix.compact_fraction < 1, "mix.compact_fraction",
                       "must be in [0, 1)", config.mix.compact_fraction)
    validation.require(0 <= config.mix.tuple_fraction < 1 and
                       config.ratio + config.mix.tuple_fraction <= 1, "mix.tuple_fraction",
                       f"must be in [0, 1 - --config.ratio] = [0, {1 - config.ratio:g}]",
                       config.mix.tuple_fraction)
    if config.ratio == 0:  # no SynBio tokens: a mitigation would silently change nothing
        for field, off in (("keep_fraction", 1.0), ("compact_fraction", 0.0),
                           ("tuple_fraction", 0.0)):
            validation.require(config.mix[field] == off, f"mix.{field}",
                               f"has no effect at --config.ratio=0 (web text alone): leave it "
                               f"at {off:g}", config.mix[field])
    validation.require_positive(config, "seq_len", "eval_people", "final_eval_people",
                                "eval_web_windows")
    presets.model_fields(config.model.preset)
    synbio.validate(config.synbio)


def make_task(config: ml_collections.ConfigDict, num_devices: int = 1) -> tuple[train.Task, dict]:
    """The mixture's batches, the evaluation sets, and facts for the summary."""
    validate(config)
    bio = synbio.make(config.synbio)
    web_train, web_valid = web_text.load(config.web)
    tok = tokenizer.build_or_load(web_train.texts, config.vocab_size, config.cache_dir,
                                  key=f"knowledge|{web_train.name}",
                                  required_words=bio.required_words(), flag="vocab_size")
    people = None
    if config.mix.keep_fraction < 1:
        keep = max(int(round(config.mix.keep_fraction * len(bio))), 1)
        people = np.sort(np.random.default_rng([config.synbio.seed, 17])
                         .permutation(len(bio))[:keep])
    batch_size = config.batch_size - config.batch_size % num_devices
    validation.require(batch_size > 0, "batch_size", f"must be >= the {num_devices} devices")
    tau = config.mix.tuple_fraction
    # With tuples the mixture has three domains (biographies, tuples, web); without, two, as
    # every run before tuples existed.
    weights = [config.ratio, tau, 1 - config.ratio - tau] if tau else [config.ratio,
                                                                       1 - config.ratio]
    rows_K = mixture.apportion(weights, config.num_steps * batch_size)
    bio_rows = int(rows_K[0])
    # At least MIN_BIO_TOKENS, so that tokens_per_bio is an average even when few (r = 0:
    # none) are trained on; the stream's prefix does not depend on its length.
    bios = knowledge.bio_stream(bio, tok, max(bio_rows * (config.seq_len + 1) + 1,
                                              MIN_BIO_TOKENS),
                                config.synbio.seed, people, config.mix.compact_fraction)
    web = knowledge.web_stream(tok, web_train.texts, config.seed, config.cache_dir)
    streams = [bios.tokens, web]
    if tau:
        streams.insert(1, knowledge.tuple_stream(
            bio, tok, max(int(rows_K[1]) * (config.seq_len + 1) + 1, MIN_BIO_TOKENS),
            config.synbio.seed, people))
    batches = mixture.MixtureBatches(streams, weights, batch_size, config.seq_len,
                                     config.num_steps)

    trained_people = np.arange(len(bio)) if people is None else people
    eval_people = trained_people[:config.eval_people]
    eval_sets = {}
    all_queries = bio.queries(eval_people)
    for attribute, name in zip(synbio.ATTRIBUTES, ATTRIBUTE_SETS):
        queries = [q for q in all_queries if q.attribute == attribute]
        eval_sets[name] = knowledge.query_arrays(tok, queries, config.seq_len)
    valid_stream = knowledge.web_stream(tok, web_valid.texts, config.seed)
    eval_sets["web_val"] = knowledge.window_arrays(valid_stream, config.seq_len,
                                                   config.eval_web_windows)

    exposures = bios.exposures(bio_rows * (config.seq_len + 1), len(bio))
    trained = exposures if people is None else exposures[people]
    counts = presets.param_counts(presets.causal_lm_config(config, tok.vocab_size))
    facts = {
        "num_people": len(bio), "people_trained": len(bio) if people is None else len(people),
        "web_source": web_train.name, "vocab_size": tok.vocab_size,
        "train_tokens": config.num_steps * batch_size * config.seq_len,
        "bio_token_fraction": bio_rows / (config.num_steps * batch_size),
        "exposures_mean": float(np.mean(trained)),
        "exposures_min": int(np.min(trained)),
        "exposures_max": int(np.max(trained)),
        # Tokens per drawn biography, its separator included: T of the capacity theory.
        "tokens_per_bio": float(bios.end_D[-1] / len(bios.end_D)),
        "web_epochs": float(batches.epochs()[-1]), **counts,
        "tuple_token_fraction": float(rows_K[1] / rows_K.sum()) if tau else 0.0,
        # How many values each attribute can take: the pool sizes behind learned bits.
        **{f"pool_{a}": n for a, n in bio.value_counts().items()},
    }
    task = train.Task(
        model_config=presets.causal_lm_config(config, tok.vocab_size),
        loss_fn=functools.partial(losses.masked_token_loss, exact_match=True),
        train_batches=grain.MapDataset.source(batches),
        eval_sets=eval_sets,
        summarize=functools.partial(summarize, **facts),
        progress=progress_fields)
    return task, {"tokenizer": tok, "synbio": bio, "exposures": exposures,
                  "final_people": trained_people[:config.final_eval_people]}


def progress_fields(row: dict[str, Any]) -> str:
    """The progress line: mean exact match over the attributes (the paper's metric) and web loss."""
    exact = np.mean([row[f"{name}_exact_match"] for name in ATTRIBUTE_SETS])
    return f"bio_exact_match={exact:.3f} web_val_loss={row['web_val_loss']:.3f}"


def summarize(rows: list[dict[str, Any]], **facts) -> dict[str, Any]:
    """Final per-attribute exact match, their mean, web loss, and when the mean crossed 0.5.

    `accuracy_<attribute>` is the exact match of the greedy completion (all the value's
    tokens); the loop's `final_bio_<attribute>_accuracy` is per-token accuracy on the values.
    """
    last = rows[-1]
    per_attribute = {f"accuracy_{name[len('bio_'):]}": last[f"{name}_exact_match"]
                     for name in ATTRIBUTE_SETS}
    curve = [(r["step"], np.mean([r[f"{n}_exact_match"] for n in ATTRIBUTE_SETS]))
             for r in rows]
    return {**facts, **per_attribute,
            "bio_accuracy": float(np.mean(list(per_attribute.values()))),
            "web_val_loss": last["web_val_loss"],
            "step_bio_accuracy_half": next((s for s, a in curve if a >= 0.5), None)}


def _score_people(config, workdir, task, extras) -> dict[str, Any]:
    """Per-person exact matches of the final model: who has every attribute right."""
    import jax
    import jax.numpy as jnp

    params = train.restore_params(config, workdir, task)
    began = time.monotonic()
    model = model_lib.Transformer(task.model_config)
    bio, tok, final_people = extras["synbio"], extras["tokenizer"], extras["final_people"]
    queries = bio.queries(final_people)
    arrays = knowledge.query_arrays(tok, queries, config.seq_len)

    @jax.jit
    def row_scores(inputs, targets, mask):
        predicted = jnp.argmax(model.apply({"params": params}, inputs), -1)
        right = (predicted == targets) | (mask == 0)
        first = jnp.argmax(mask, -1)
        first_right = jnp.take_along_axis(predicted == targets, first[:, None], 1)[:, 0]
        return right.all(-1), first_right

    exact, first = [], []
    for start in range(0, len(queries), config.eval_batch_size):
        part = {k: jnp.asarray(v[start:start + config.eval_batch_size]) for k, v in arrays.items()}
        e, f = row_scores(part["inputs"], part["targets"], part["loss_mask"])
        exact.append(np.asarray(e))
        first.append(np.asarray(f))
    exact, first = np.concatenate(exact), np.concatenate(first)
    person = np.array([q.person for q in queries])
    misses = np.bincount(person[~exact], minlength=len(bio))
    all_right = misses[final_people] == 0
    # A few greedy generations next to the gold values, to read what the model says.
    sample = [q for q in queries if q.template == 0][:10]
    new = decoding.greedy_decode(model, params, [
        [knowledge.SEPARATOR, *tok.token_ids(q.prompt)] for q in sample], num_new=6)
    if distributed.is_primary():
        run_io.write_json_atomic(os.path.join(workdir, "samples.json"), [
            {"prompt": q.prompt, "gold": q.value, "generated": tok.detokenize(ids)}
            for q, ids in zip(sample, new)])
    seconds = time.monotonic() - began  # all queries and the samples, compilation included
    attribute = np.array([q.attribute for q in queries])
    return {**_per_person(workdir, person[exact], person, final_people, extras["exposures"]),
            "people_all_attributes": float(np.mean(all_right)),
            "bio_first_token_accuracy": float(first.mean()),
            "final_people_scored": len(final_people), "final_scoring_seconds": seconds,
            **{f"final_accuracy_{a}": float(exact[attribute == a].mean())
               for a in synbio.ATTRIBUTES},
            "final_bio_accuracy": float(exact.mean())}


def _per_person(workdir: str, person_right: np.ndarray, person_asked: np.ndarray,
                people: np.ndarray, exposures_N: np.ndarray) -> dict[str, Any]:
    """Writes people.csv (exposures and accuracy of each scored person) and, when exposures
    vary (power-law popularity), the exposure count at which half the answers are right."""
    num = len(exposures_N)
    accuracy = (np.bincount(person_right, minlength=num)[people]
                / np.maximum(np.bincount(person_asked, minlength=num)[people], 1))
    exposures = exposures_N[people]
    if distributed.is_primary():
        sweep.write_table([{"person": int(p), "exposures": int(e), "accuracy": float(a)}
                           for p, e, a in zip(people, exposures, accuracy)],
                          run_io.run_path(workdir) / PEOPLE_FILE)
    if exposures.max() < 2 * max(exposures.min(), 1):
        return {"threshold_exposures": None}
    mean_x, mean_y, _ = transitions.binned_means(exposures, accuracy)
    found = transitions.crossing(mean_x, mean_y, 0.5)
    return {"threshold_exposures": found["value"], "threshold_exposures_low": found["low"],
            "threshold_exposures_high": found["high"]}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    import jax

    run_io.require_workdir(workdir)
    task, extras = make_task(config, jax.device_count())
    summary = train.train_and_evaluate(config, workdir, task)
    if distributed.is_primary():  # the run's vocabulary travels with its checkpoints
        extras["tokenizer"].save(os.path.join(workdir, "tokenizer.json"))
    summary.update(_score_people(config, workdir, task, extras))
    if distributed.is_primary():
        run_io.write_json_atomic(os.path.join(workdir, run_io.SUMMARY_FILE), summary)
    rows = run_io.read_metrics(workdir)
    plotting.metric_lines(
        rows, [{a: f"bio_{a}_exact_match" for a in synbio.ATTRIBUTES}, {"web": "web_val_loss"}],
        ["exact match", "web val loss"], os.path.join(workdir, "knowledge_curves.png"),
        f"r={config.ratio:g}, {config.model.preset}, {summary['people_trained']} people, "
        f"{summary['exposures_mean']:.0f} exposures each")
    return summary

