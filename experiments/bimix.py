"""BiMix on our own proxy runs: fit mixing laws to small LMs, propose a mixture, test it.

Run (offline: 4 real domains, see phasemix/data/domains.py; the whole study on a 2-core CPU):
  python -m experiments.bimix --workdir=runs/bimix
Smoke (2 domains, seconds per run; used by the tests):
  python -m experiments.bimix --config=experiments/bimix.py:smoke --workdir=/tmp/bimix

1. Trains `num_proxies` small LMs (`config.base`) on mixtures drawn from a Dirichlet
   (seeded by `seed`), logging each domain's validation loss every `base.eval_every` steps.
2. Fits every law of `laws` (BiMix, Ye et al., the step-only control; phasemix/analysis/law_fit.py)
   per domain, on steps <= step_cut of the proxies not held out; scores later steps and the
   held-out proxies (fits.csv, predictions.csv, predicted_vs_measured.png).
3. Refits `optimize_law` on every proxy row and minimises the predicted average validation
   loss at the final step over the simplex, each share >= min_weight (and, with
   cap_at_trained_max, <= the largest share any proxy trained on).
4. Trains the optimised, uniform, natural (by domain size) and entropy-driven (conditional
   entropy, normalised) mixtures over `seeds` and compares their average validation loss
   (comparison.csv, strategies.png, summary.json).
Every run is a sweep run in <workdir>/runs/; results.csv has them all. Re-running the command
runs only what is missing.

Overrides: --config.num_proxies=16 --config.seeds='(0,1,2)' --config.base.num_steps=2000
--config.base.domains.names='("reviews","code")' --config.base.mixture='(0.5,0.5)' (one share
per domain) --config.laws='("bimix","ye","linear","step_only")'
--config.extra_mixtures='((0.4,0.3,0.2,0.1),)' (compared too) --config.workers=1.

The default takes 26 minutes on a 2-core CPU (measured; see get_config).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import pathlib
import statistics
import time
from typing import Any

import grain
import ml_collections
import numpy as np

from experiments import knowledge_mixing
from phasemix.base import plotting, run_io, validation
from phasemix.data import domains, mixture, tokenizer
from phasemix.training import losses, optimizer, presets, train
from phasemix.analysis import entropy_mix, transitions
from phasemix.runs import cli, sweep

CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "phasemix", "bimix")
MIX_TOL = 1e-6  # a mixture's shares must sum to 1 within this
RESOLUTION = 10_000  # trained mixtures are multiples of 1e-4 (exact in names and configs)
STRATEGIES = ("uniform", "natural", "entropy", "optimized")


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
    # Slices of each batch whose gradients run as independent chains (the cores of a CPU
    # work on them at once); 0: train.auto_micro_batches decides (1 on accelerators).
    config.micro_batches = 0
    config.steps_per_call = 0  # optimizer steps per host dispatch; 0: chosen per backend
    # On a CPU, YNNPACK's dot kernels (XLA's default); grokking turns them off for its small
    # products. No effect on accelerators.
    config.xla_cpu_ynnpack = True
    # Devices that split each parameter and its optimizer state between them (FSDP; a divisor
    # of the devices); 1: every device holds the whole state.
    config.fsdp = 1
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


# --config=<this file>:<variant> takes these ('': the default); --help lists them.
VARIANTS = ("", "smoke")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Default: the CPU study. `smoke`: 2 domains, tiny runs, for tests.

    Default: 12 proxies + 4 strategies x 2 seeds = 20 runs of tiny-32 (2 layers, d=32;
    4,096-word vocabulary; 294k parameters, 25k of them outside the embeddings and head),
    1,000 steps x 16 x 64 tokens (1.0M tokens, a third of a pass over each domain), 9
    evaluations of 256 windows per domain. Measured on the project's 2-core CPU while two
    other experiments kept both cores busy (so no faster than idle): one run took 245
    CPU-seconds in a sweep worker (279 s wall; ~35 s of it
    loading data and compiling); two seeds of the uniform mixture: 244 and 245 s. The fits
    of the default (3 laws x 4 domains, twice each) on curves of that shape: 44 CPU-seconds.
    The whole default study, measured alone on that CPU: 1,546 s (25.8 min) wall, ~145 s per
    run on 2 workers plus the fits (README: what it found).
    """
    if variant not in ("", "smoke"):
        validation.unknown_variant(variant, "'' or 'smoke'")
    smoke = variant == "smoke"
    config = ml_collections.ConfigDict()
    config.experiment = "bimix"
    config.seed = 0  # the proxies' Dirichlet draws, the held-out proxies, the fits' starts
    config.base = run_config(smoke)  # every run; proxies and strategies set label/mixture/seed
    config.num_proxies = 12
    config.dirichlet_alpha = 1.0  # 1: uniform over the simplex
    config.seeds = (0, 1)  # each compared strategy is trained with every one of these seeds
    config.laws = ("bimix", "ye", "step_only")  # of phasemix.analysis.mixing_laws.LAW_NAMES
    config.optimize_law = "bimix"  # the law whose optimum is trained
    config.step_cut = 625  # fit on steps <= step_cut; later steps score the extrapolation
    config.heldout_fraction = 0.25  # of the proxies, kept out of the fit
    config.epsilon = 1e-3  # BiMix's floor on a zero share (r_i = max(r_i, epsilon))
    config.fit = ml_collections.ConfigDict(dict(
        num_starts=32, max_iter=200, delta=0.01, tol=1e-6))  # as experiments/bimix_fit.py
    config.min_weight = 0.02  # every share of the optimised mixture is at least this
    config.cap_at_trained_max = True  # and at most the largest share a proxy trained on
    config.entropy = ml_collections.ConfigDict(dict(
        measure="conditional",  # of entropy_mix.MEASURES
        method="normalize",  # of entropy_mix.METHODS
        # Equal-size samples (the first tokens of each train stream; fewer if a domain is
        # smaller): plug-in entropies grow with the sample, so sizes must match.
        tokens=300_000))
    config.extra_mixtures = ()  # more mixtures to compare, e.g. ((0.4, 0.3, 0.2, 0.1),)
    config.workers = 2  # parallel runs, each pinned to its share of the CPUs (1: in this process)
    if smoke:
        config.num_proxies = 5
        config.seeds = (0,)
        config.laws = ("bimix",)  # each law family costs one compilation
        config.step_cut = 6
        config.fit.num_starts = 4
        config.fit.max_iter = 40
        config.entropy.tokens = 20_000
        config.workers = 1
    return config


# --- Validation -------------------------------------------------------------------------------

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

    with sweep.flags_under(prefix):  # the loop's own fields: steps, batch sizes, lr, ...
        train.validate_loop_config(config, jax.device_count())
    domains.validate(config.domains, f"{prefix}domains")
    check_mixture(config.mixture, len(config.domains.names), f"{prefix}mixture")
    for key in ("seq_len", "eval_windows", "vocab_size"):
        validation.require(config[key] > 0, f"{prefix}{key}", "must be positive", config[key])
    validation.require_choice(config.model.preset, presets.PRESETS, f"{prefix}model.preset")


def law_param_count(name: str, num_domains: int) -> int:
    """How many numbers a fit of law `name` moves."""
    import jax

    from phasemix.analysis import mixing_laws

    law = mixing_laws.make_law(name, num_domains)
    shapes = jax.eval_shape(law.init, jax.random.key(0))
    return sum(math.prod(s.shape) for s in jax.tree.leaves(shapes))


def _heldout_count(num_mixtures: int, fraction: float) -> int:
    from phasemix.analysis import law_fit

    return len(law_fit.choose_heldout_mixtures(np.arange(num_mixtures), fraction, seed=0))


def eval_steps(config: ml_collections.ConfigDict) -> list[int]:
    """The steps after 0 at which every run is evaluated: the rows of the law fits."""
    base = config.base
    return sorted(set(range(base.eval_every, base.num_steps + 1, base.eval_every))
                  | {base.num_steps})


def validate(config: ml_collections.ConfigDict) -> None:
    """Every check that needs no data, before anything is read or trained."""
    from phasemix.analysis import mixing_laws

    validate_run(config.base, "base.")
    num_domains = len(config.base.domains.names)
    validation.require(len(config.laws) > 0, "laws", "name at least one law", config.laws)
    validation.require_unique(config, "laws")
    for law in config.laws:
        validation.require_choice(law, mixing_laws.LAW_NAMES, "laws")
    aware = [law for law in config.laws if mixing_laws.FAMILIES[law].uses_mixture]
    validation.require_choice(config.optimize_law, aware, "optimize_law")
    validation.require(0 < config.heldout_fraction < 1, "heldout_fraction", "must be in (0, 1)",
                       config.heldout_fraction)
    validation.require(config.num_proxies >= 3, "num_proxies",
                       "needs >= 3 (some are held out, >= 2 are fitted)", config.num_proxies)
    for law in config.laws:
        params = law_param_count(law, num_domains)
        fitted = config.num_proxies - _heldout_count(config.num_proxies, config.heldout_fraction)
        needed = next(n for n in itertools.count(3)
                      if n - _heldout_count(n, config.heldout_fraction) >= params)
        validation.require(fitted >= params, "num_proxies",
                           f"leaves {fitted} proxies to fit after holding out "
                           f"{config.num_proxies - fitted}: fewer than the {params} parameters "
                           f"of the {law} law with {num_domains} domains; use >= {needed}",
                           config.num_proxies)
    validation.require_positive(config, "dirichlet_alpha")
    validation.require(len(config.seeds) > 0, "seeds", "needs at least one seed", config.seeds)
    validation.require_unique(config, "seeds")
    steps = eval_steps(config)
    fit_steps = [s for s in steps if s <= config.step_cut]
    validation.require(len(fit_steps) >= 3 and len(fit_steps) < len(steps), "step_cut",
                       f"must leave >= 3 evaluation steps to fit and >= 1 after it (evaluations "
                       f"at {steps})", config.step_cut)
    validation.require(0 < config.min_weight <= 1 / num_domains, "min_weight",
                       f"must be in (0, 1/{num_domains}]", config.min_weight)
    validation.require(0 < config.epsilon < 1, "epsilon", "must be in (0, 1)", config.epsilon)
    validation.require_choice(config.entropy.measure, entropy_mix.MEASURES, "entropy.measure")
    validation.require_choice(config.entropy.method, entropy_mix.METHODS, "entropy.method")
    validation.require(config.entropy.tokens > 1, "entropy.tokens", "must be > 1",
                       config.entropy.tokens)
    for i, weights in enumerate(config.extra_mixtures):
        check_mixture(weights, num_domains, f"extra_mixtures[{i}]")
    validation.require_positive(config, "fit.num_starts", "fit.max_iter", "fit.delta")
    validation.require(config.fit.tol >= 0, "fit.tol", "must be >= 0", config.fit.tol)


# --- One run ----------------------------------------------------------------------------------

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
    cfg = knowledge_mixing.model_config(config, tok.vocab_size)  # the same fields
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
    plotting.curves_by_group(curves, "loss", pathlib.Path(workdir) / "curves.png",
                             "Validation loss per domain", "domain (mixture share)",
                             "validation loss", log_y=True)


# --- Mixtures ---------------------------------------------------------------------------------

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
    tok = build_tokenizer(base, corpus)
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


# --- Fits -------------------------------------------------------------------------------------

def proxy_curves(workdir: pathlib.Path, grid: list[dict[str, Any]],
                 names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """{mixture_N, step_N, props_NxK, loss_NxK}: every evaluation after step 0 of every proxy,
    read from the runs' metrics.jsonl."""
    out: dict[str, list] = {"mixture_N": [], "step_N": [], "props_NxK": [], "loss_NxK": []}
    for i, override in enumerate(grid):
        for row in run_io.read_metrics(workdir / sweep.RUNS_DIR / sweep.run_name(override)):
            if row["step"] > 0:
                out["mixture_N"].append(i)
                out["step_N"].append(row["step"])
                out["props_NxK"].append(override["mixture"])
                out["loss_NxK"].append([row[f"valid_{n}_loss"] for n in names])
    return {k: np.asarray(v, np.int64 if k == "mixture_N" else np.float64)
            for k, v in out.items()}


def _coefficients(values: dict[str, Any], names: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        v = np.asarray(v)
        if v.ndim:  # Ye's t and the linear law's w: one coefficient per training domain
            out.update({f"coef_{k}_{n}": float(x) for n, x in zip(names, v)})
        else:
            out[f"coef_{k}"] = float(v)
    return out


def fit_laws(config: ml_collections.ConfigDict, curves: dict[str, np.ndarray],
             names: tuple[str, ...]) -> tuple[list[dict], list[dict], dict]:
    """(fits rows, prediction rows, law -> [(law, params of the fit on every row)] per domain).

    Each law and domain is fitted twice: by the protocol (steps <= step_cut of the proxies not
    held out; scored on the rest), and on every proxy row, for the mixture optimisation.
    """
    from phasemix.analysis import law_fit, mixing_laws

    heldout = law_fit.choose_heldout_mixtures(curves["mixture_N"], config.heldout_fraction,
                                              seed=[config.seed, 1])
    pad_to = law_fit.padded_size(len(curves["step_N"]))  # one compilation per law family
    rows, predictions, fitted = [], [], {}
    for law_name in config.laws:
        for d, domain in enumerate(names):
            law = mixing_laws.make_law(law_name, len(names), d, config.epsilon)
            key = law_fit.fit_key(config.seed, mixing_laws.LAW_NAMES.index(law_name), d)
            loss_N = curves["loss_NxK"][:, d]
            result = law_fit.evaluate_protocol(
                law, key, curves["step_N"], curves["props_NxK"], loss_N, curves["mixture_N"],
                step_cut=config.step_cut, heldout_ids=heldout, pad_to=pad_to,
                **config.fit.to_dict())
            full_key = law_fit.fit_key(config.seed, 99, mixing_laws.LAW_NAMES.index(law_name), d)
            full = law_fit.fit(law, full_key, curves["step_N"], curves["props_NxK"], loss_N,
                               pad_to=pad_to, **config.fit.to_dict())
            fitted.setdefault(law_name, []).append((law, full.params))
            row = {"law": law_name, "domain": domain,
                   "heldout_proxies": " ".join(map(str, heldout)),
                   "fit_objective": float(result.fit.loss),
                   "all_rows_objective": float(full.loss)}
            for split, scores in result.metrics.items():
                row.update({f"{split}_{k}": v for k, v in scores.items()})
            row.update(_coefficients(law.constrain(full.params), names))
            rows.append(row)
            predictions += [{"law": law_name, "domain": domain, "proxy": int(m), "step": int(s),
                             "split": str(sp), "loss": float(y), "pred": float(p)}
                            for m, s, sp, y, p in zip(curves["mixture_N"], curves["step_N"],
                                                      result.split_N, loss_N, result.pred_N)]
    return rows, predictions, fitted


def predicted_average(fitted: list[tuple], step: float, mix_MxK: Any) -> np.ndarray:
    """The laws' average over domains of the predicted loss of each mixture at `step`."""
    from phasemix.analysis import law_fit

    mix_MxK = np.asarray(mix_MxK, np.float64)
    steps = np.full(len(mix_MxK), float(step))
    return np.mean([law_fit.predict(law, p, steps, mix_MxK) for law, p in fitted], axis=0)


def optimize(config: ml_collections.ConfigDict, fitted: dict, curves: dict[str, np.ndarray]
             ) -> tuple[np.ndarray, dict[str, Any]]:
    """The mixture `optimize_law` predicts best (average over domains) at the final step."""
    from phasemix.analysis import mixture_opt

    laws_params = fitted[config.optimize_law]
    num_domains = len(laws_params)
    step = config.base.num_steps
    lo = np.full(num_domains, config.min_weight)
    hi = np.ones(num_domains)
    if config.cap_at_trained_max:
        hi = np.maximum(np.minimum(hi, curves["props_NxK"].max(axis=0)), lo)
    try:
        mixture_opt.check_bounds(lo, hi)
    except ValueError as e:
        raise validation.ConfigError(f"--config.min_weight={config.min_weight}: {e}") from e
    facts = {"min_share": lo.tolist(), "max_share": hi.tolist(), "step": step}
    r, method = mixture_opt.optimal_mixture(*zip(*laws_params), step,
                                            np.full(num_domains, 1 / num_domains), lo, hi)
    return r, {"method": method, **facts}


# --- Comparison -------------------------------------------------------------------------------

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
                entry[f"predicted_{law_name}"] = float(predicted_average(
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


# --- Figures (drawn from the written tables) --------------------------------------------------

def plot_predictions(predictions_csv: pathlib.Path, path: pathlib.Path) -> None:
    """Predicted against measured validation loss: a row per law, a column per domain."""
    from phasemix.base import plotting

    plotting.predicted_vs_measured(sweep.read_table(predictions_csv), "law", "domain", path,
                                   "Predicted vs measured validation loss of the proxies")


def plot_strategies(comparison_csv: pathlib.Path, path: pathlib.Path, title: str) -> None:
    """Average validation loss per strategy: seed mean +- std, and every seed as a dot."""
    from phasemix.base import plotting

    rows = sweep.read_table(comparison_csv)
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


# --- The study --------------------------------------------------------------------------------

def run(config: ml_collections.ConfigDict, workdir: str,
        shard: sweep.Shard | None = None) -> dict[str, Any]:
    validate(config)
    workdir_path = run_io.require_workdir(workdir)
    # A study that fails part-way leaves the tables and figures of its last success.
    with run_io.unchanged_on_failure(workdir_path):
        return _study(config, workdir_path, shard)


def _study(config: ml_collections.ConfigDict, workdir_path: pathlib.Path,
           shard: sweep.Shard | None) -> dict[str, Any]:
    began = time.monotonic()
    names = tuple(config.base.domains.names)
    domain_rows, mixtures = prepare(config)
    proxies = proxy_grid(config)
    common = dict(validate_fn=validate_run, workers=config.workers, shard=shard, base_flag="base")
    # The compared runs, added by the second call, are not known yet: not "dropped".
    rows = sweep.run_sweep(config.base, proxies, workdir_path, run_mixture, **common,
                           check_dropped=False)
    sweep.require_none_diverged(rows, workdir_path)  # the fits need every proxy's curve
    run_io.write_json_atomic(workdir_path / run_io.CONFIG_FILE, run_io.config_to_dict(config))
    sweep.write_table(domain_rows, workdir_path / "domains.csv")
    if len(rows) < len(proxies):  # other shards still train proxies: re-run when they are done
        return {"proxies": len(proxies), "proxies_finished": len(rows), "shard": str(shard)}

    curves = proxy_curves(workdir_path, proxies, names)
    fit_rows, predictions, fitted = fit_laws(config, curves, names)
    sweep.write_table(fit_rows, workdir_path / "fits.csv")
    sweep.write_table(predictions, workdir_path / "predictions.csv")
    plot_predictions(workdir_path / "predictions.csv", workdir_path / "predicted_vs_measured.png")
    optimum, opt_facts = optimize(config, fitted, curves)
    strategies = {**mixtures, "optimized": quantize(optimum),
                  **{f"extra{i}": quantize(m) for i, m in enumerate(config.extra_mixtures)}}
    compared = [{"label": label, "mixture": mix, "seed": seed}
                for label, mix in strategies.items() for seed in config.seeds]
    rows = sweep.run_sweep(config.base, proxies + compared, workdir_path, run_mixture, **common)
    sweep.require_none_diverged(rows, workdir_path)
    if len(rows) < len(proxies) + len(compared):
        return {"runs": len(proxies) + len(compared), "runs_finished": len(rows),
                "shard": str(shard)}

    comparison = compare(config, strategies, rows, fitted, names)
    sweep.write_table(comparison, workdir_path / "comparison.csv")
    plot_strategies(workdir_path / "comparison.csv", workdir_path / "strategies.png",
                    f"{config.base.model.preset}, {config.base.num_steps} steps, "
                    f"{len(config.seeds)} seed(s); domains {', '.join(names)}")
    fit_quality = [{k: r[k] for k in ("law", "domain", "extrap_step_mre", "heldout_mix_r2",
                                      "heldout_mix_within_step_r2", "heldout_both_mre",
                                      "heldout_both_r2")} for r in fit_rows]
    summary = {
        "domains": names, "proxies": len(proxies), "seeds": list(config.seeds),
        "proxy_zero_shares": int(np.sum(np.asarray([p["mixture"] for p in proxies]) == 0)),
        "mixtures": {k: dict(zip(names, v)) for k, v in strategies.items()},
        "optimization": {"law": config.optimize_law, **opt_facts},
        "versus_uniform": headline(comparison),
        "avg_valid_loss": {c["strategy"]: {"mean": c["avg_valid_loss_mean"],
                                           "std": c["avg_valid_loss_std"]} for c in comparison},
        "fit_quality": fit_quality,
        "domain_facts": domain_rows,
        "note": "beyond_seed_spread: |mean difference| > the larger seed std of the two "
                "strategies; fit quality: extrap_step = fitted proxies at steps > step_cut, "
                "heldout_mix = held-out proxies at fitted steps, heldout_both = both",
        # This invocation's wall time (a resumed study counts only what it ran).
        "wall_seconds": time.monotonic() - began,
    }
    summary = run_io.nan_to_none(summary)
    run_io.write_json_atomic(workdir_path / run_io.SUMMARY_FILE, summary)
    print("\n".join([f"{q['law']:>10} {q['domain']:>12}: extrapolation MRE "
                      f"{q['extrap_step_mre']:.4f}, held-out R^2 {q['heldout_mix_r2']:.3f}, "
                      f"within-step R^2 {q['heldout_mix_within_step_r2']:.3f}"
                      for q in fit_quality]
                    + [v["verdict"] for v in summary["versus_uniform"].values()]), flush=True)
    return summary


if __name__ == "__main__":
    cli.main(run, config_file=__file__, default_workdir="runs/bimix", sweep=True)
