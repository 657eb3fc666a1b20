"""Training-loop steps/s with batches read ahead (`--config.data_prefetch`, `--config.data_workers`)
against reading each batch when its step needs it, as ratios measured in one process:
  python -m benchmarks.data_prefetch --rounds=15 --seconds=1
  python -m benchmarks.data_prefetch --setups=grokking --settings=0:0,2:0,8:0,2:1,4:2

Each setting is prefetch:workers, the first the baseline. The loop is the trainer's dispatch
(steps_per_call batches drawn from `batching.iterate`, stacked, one transfer, one call) for the
grokking demo's step on its own batches and for the default knowledge_mixing model on a mixture
of random token streams (`mixture.MixtureBatches`, as its runs read them). The settings take
turns within every round, so that the load of the machine hits all alike. Worker processes start
before the timing; their start-up, paid at every start and resume of a run, is reported apart.
"""

from __future__ import annotations

import statistics
import time

import grain
import jax
import numpy as np
from absl import app, flags

from benchmarks import vs_pytorch
from benchmarks.common import positive_ints
from benchmarks.vs_pytorch import _ROUNDS, _SECONDS  # --rounds, --seconds
from experiments import grokking, knowledge_mixing
from phasemix.data import batching, mixture
from phasemix.training import losses, presets, sharding, train

READS = 200  # batches read directly, to time the read alone

_SETTINGS = flags.DEFINE_list("settings", ["0:0", "2:0", "2:1"],
                              "prefetch:workers pairs to compare; the first is the baseline.")
_SETUPS = flags.DEFINE_list("setups", ["grokking", "small_lm"],
                            "grokking: the demo's step; small_lm: the knowledge_mixing model.")


def parse_settings(values: list[str]) -> list[tuple[int, int]]:
    """'prefetch:workers' strings -> pairs; exits naming the flag on a malformed one."""
    pairs = []
    for value in values:
        parts = value.split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise SystemExit(f"error: --settings={','.join(values)}: {value!r} is not "
                             "prefetch:workers (two non-negative integers)")
        prefetch, workers = map(int, parts)
        if workers and not prefetch:
            raise SystemExit(f"error: --settings={','.join(values)}: {value!r} has workers "
                             "but no prefetch")
        pairs.append((prefetch, workers))
    return pairs


def knowledge_lm(num_steps: int) -> tuple:
    """The default knowledge_mixing model, fed a two-domain mixture of random token streams."""
    config = knowledge_mixing.get_config()
    rng = np.random.default_rng(0)
    streams = [rng.integers(0, config.vocab_size, n).astype(np.int32)
               for n in (4_000_000, 1_000_000)]
    batches = mixture.MixtureBatches(streams, [0.5, 0.5], config.batch_size, config.seq_len,
                                     num_steps)
    task = train.Task(model_config=presets.causal_lm_config(config, config.vocab_size),
                      loss_fn=losses.masked_token_loss,
                      train_batches=grain.MapDataset.source(batches), eval_sets={},
                      summarize=lambda rows: {})
    return config, task


def calls_runner(programs: train.Programs, mesh, iterator):
    """`run(n)`: n calls of the trainer's dispatch (steps_per_call batches drawn from
    `iterator`, stacked, one transfer, one call), from the state the last call reached."""
    holder = {"state": programs.init(jax.random.key(0))}
    k = programs.steps_per_call

    def run(n: int) -> None:
        state = holder["state"]
        for _ in range(n):
            host = jax.tree.map(lambda *xs: np.stack(xs), *[next(iterator) for _ in range(k)])
            state, means = programs.steps(state, sharding.put_batch(host, mesh, batch_axis=1),
                                          np.int32(k), np.bool_(False))
        jax.block_until_ready(means)
        holder["state"] = state

    return run


def compare(name: str, config, task: train.Task, settings: list[tuple[int, int]]) -> None:
    mesh = sharding.make_mesh()
    programs = train.build_programs(config, task, mesh)
    runners, iterators, startup = {}, [], {}
    for setting in settings:
        began = time.perf_counter()
        iterators.append(batching.iterate(task.train_batches, *setting))
        next(iterators[-1])  # workers started and the first batch read
        startup[setting] = time.perf_counter() - began
        runners[setting] = calls_runner(programs, mesh, iterators[-1])
    rates = vs_pytorch.alternated_rates(runners, _ROUNDS.value, _SECONDS.value)
    for iterator in iterators:
        iterator.close()
    began = time.perf_counter()
    for step in range(READS):
        task.train_batches[step]
    read = (time.perf_counter() - began) / READS
    step_seconds = 1 / (statistics.median(rates[settings[0]]) * programs.steps_per_call)
    print(f"{name:<28} reading a batch: {read * 1e3:.3f} ms, {read / step_seconds:.2%} of a "
          f"step of the baseline ({step_seconds * 1e3:.1f} ms): the most read-ahead can hide")
    for (prefetch, workers), values in rates.items():
        ratios = vs_pytorch.round_ratios(values, rates[settings[0]])
        low, high = vs_pytorch.quartiles(ratios)
        print(f"{name:<28} prefetch={prefetch:<2} workers={workers}  "
              f"{statistics.median(values) * programs.steps_per_call:>7.1f} steps/s  "
              f"x{statistics.median(ratios):.2f} (middle half of rounds {low:.2f}-{high:.2f})  "
              f"first batch after {startup[prefetch, workers]:.2f} s")


def main(argv):
    del argv
    positive_ints(_ROUNDS)
    if not _SECONDS.value > 0:
        raise SystemExit(f"error: --seconds={_SECONDS.value}: must be positive")
    settings = parse_settings(_SETTINGS.value)
    unknown = set(_SETUPS.value) - {"grokking", "small_lm"}
    if unknown:
        raise SystemExit(f"error: --setups={','.join(_SETUPS.value)}: unknown {sorted(unknown)}")
    num_steps = 1_000_000  # more than any setting trains: batches are computed when read
    print(f"devices: {jax.devices()}; prefetch:workers {_SETTINGS.value}, ratios against "
          f"{_SETTINGS.value[0]}, steps_per_call as the trainer picks it")
    if "grokking" in _SETUPS.value:
        grok = grokking.get_config()
        grok.num_steps = num_steps
        compare("grokking demo step", grok, grokking.make_task(grok, jax.device_count()),
                settings)
    if "small_lm" in _SETUPS.value:
        compare("small LM (knowledge_mixing)", *knowledge_lm(num_steps), settings)


if __name__ == "__main__":
    app.run(main)
