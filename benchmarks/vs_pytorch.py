"""The phasemix train step against a PyTorch eager implementation of the very same model.

Same architecture (pre-LN transformer, fused QKV, tanh-GELU, learned positions, final LN,
untied head), same parameter count (checked), same data and the same AdamW step. Each round
times N JAX steps then N PyTorch steps in this one process (and, where the step runs in
micro-batch slices, N steps of the 1-slice step); the ratio reported is the median
over rounds, so a change in machine speed hits both sides alike. Needs the `bench` extra:
  pip install -e '.[bench]'
  python -m benchmarks.vs_pytorch
  python -m benchmarks.vs_pytorch --models=small_lm --batch_sizes=64,512 --rounds=7
  python -m benchmarks.vs_pytorch --models=knowledge_base --batch_sizes=32

Besides the three models of the performance issue, `sweep_base` is `critical_data_size`'s base
run and `knowledge_base` the default `knowledge_mixing` run's model (tiny-64, seq 64, its
vocabulary size).
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks.common import matmul_flops, positive_ints, time_matmul
from experiments import critical_data_size, grokking, knowledge_mixing
from phasemix.data import modular
from phasemix.training import (compilation, losses, model as model_lib, optimizer as optimizer_lib,
                               params as params_lib, presets, train)

_MODELS = flags.DEFINE_list("models", ["grokking", "small_lm", "sentiment"], "Models to time "
                            "(also sweep_base, knowledge_base).")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["64", "512"], "Batch sizes.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Alternating rounds; the median is reported.")
_SECONDS = flags.DEFINE_float("seconds", 2.0, "Approximate seconds per side per round.")
_MICRO_BATCHES = flags.DEFINE_integer("micro_batches", 0, "Slices of the batch (0: the "
                                      "library's automatic choice, as in experiments); with "
                                      "more than 1, the 1-slice step is timed beside it.")
_THREADS = flags.DEFINE_integer("threads", 0, "PyTorch intra-op threads (0: all cores).")


@dataclasses.dataclass(frozen=True)
class Bench:
    """A model and its loss: `answer` (last token only), `lm` (every token) or `classify`."""

    cfg: model_lib.TransformerConfig
    loss: str
    seq_len: int
    xla_cpu_ynnpack: bool = True  # as the model's experiment config sets it
    # None: as train.build_programs chooses (compilation.transposed_kernel_grads)
    transposed_kernel_grads: bool | None = None


BENCHES = {
    # The grokking demo: 1 layer, d=128, a + b mod 97 as [a, b, =].
    "grokking": Bench(model_lib.TransformerConfig(vocab_size=98, max_len=3,
                                                  last_position_only=True), "answer", 3,
                      xla_cpu_ynnpack=False),
    # The shared/STACK.md baseline: 2 layers, d=128, seq 32, vocabulary 100.
    "small_lm": Bench(model_lib.TransformerConfig(vocab_size=100, max_len=32, num_layers=2),
                      "lm", 32),
    # A 1-layer sentiment encoder (Zhu et al.'s IMDB model at seq 256, 8k-word vocabulary).
    "sentiment": Bench(model_lib.TransformerConfig(vocab_size=8192, max_len=256, causal=False,
                                                   num_classes=2, pooling="mean"),
                       "classify", 256),
}


def sweep_base_bench() -> Bench:
    """The model of `critical_data_size`'s base run, with the answer-token loss."""
    base = critical_data_size.get_config().base
    return Bench(grokking.model_config(base), "answer", modular.SEQ_LEN)


def knowledge_base_bench() -> Bench:
    """The model of the default `knowledge_mixing` run (every token's loss)."""
    config = knowledge_mixing.get_config()
    return Bench(presets.causal_lm_config(config, config.vocab_size), "lm", config.seq_len)


def benches() -> dict[str, Bench]:
    """The three benchmark models and two experiments' own (not run by default)."""
    return {**BENCHES, "sweep_base": sweep_base_bench(),
            "knowledge_base": knowledge_base_bench()}


def make_batch(bench: Bench, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, bench.cfg.vocab_size, (batch_size, bench.seq_len)).astype(np.int32)
    if bench.loss == "classify":
        return {"inputs": tokens, "labels": rng.integers(0, 2, batch_size).astype(np.int32)}
    targets = rng.integers(0, bench.cfg.vocab_size, tokens.shape).astype(np.int32)
    mask = np.ones(tokens.shape, np.float32)
    if bench.loss == "answer":
        mask[:, :-1] = 0.0
    return {"inputs": tokens, "targets": targets, "loss_mask": mask}


def jax_step(bench: Bench, batch: dict[str, np.ndarray], micro_batches: int):
    opt_config = optimizer_lib.default_config()
    optimizer = optimizer_lib.make_optimizer(opt_config, 10_000)
    platform = jax.devices()[0].platform
    transposed = bench.transposed_kernel_grads
    if transposed is None:  # as train.build_programs makes it
        transposed = compilation.transposed_kernel_grads(platform, bench.xla_cpu_ynnpack)
    model = model_lib.Transformer(dataclasses.replace(bench.cfg,
                                                      transposed_kernel_grads=transposed))
    loss_fn = losses.classification_loss if bench.loss == "classify" else losses.masked_token_loss
    # Jitted, as the experiments' init is: eagerly, each of its operations compiles alone (~8 s).
    state = jax.jit(functools.partial(train.init_state, model=model, optimizer=optimizer,
                                      init_scale=1.0))(
        jax.random.key(0), tokens_BxL=jnp.asarray(batch["inputs"][:1]))
    options = compilation.compiler_options(platform, bench.xla_cpu_ynnpack)
    step = jax.jit(functools.partial(train.train_step, model=model, optimizer=optimizer,
                                     loss_fn=loss_fn, micro_batches=micro_batches),
                   donate_argnums=0, compiler_options=options)
    device_batch = jax.device_put(batch)
    return step, state, device_batch, params_lib.count_params(state.params)


def torch_step(bench: Bench, batch: dict[str, np.ndarray]):
    import torch
    from torch import nn
    from torch.nn import functional as F

    cfg = bench.cfg

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_attn, self.ln_mlp = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
            self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
            self.out = nn.Linear(cfg.d_model, cfg.d_model)
            self.mlp_in = nn.Linear(cfg.d_model, cfg.d_mlp)
            self.mlp_out = nn.Linear(cfg.d_mlp, cfg.d_model)

        def forward(self, x, last_only=False):
            b, l, d = x.shape
            q, k, v = self.qkv(self.ln_attn(x)).view(b, l, 3, cfg.num_heads, -1).unbind(2)
            if last_only:  # the last query sees every key: no mask needed
                q, x = q[:, -1:], x[:, -1:]
            attn = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                  v.transpose(1, 2),
                                                  is_causal=cfg.causal and not last_only)
            x = x + self.out(attn.transpose(1, 2).reshape(b, q.shape[1], d))
            return x + self.mlp_out(F.gelu(self.mlp_in(self.ln_mlp(x)), approximate="tanh"))

    class Transformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.pos_embed = nn.Embedding(cfg.max_len, cfg.d_model)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.num_layers))
            self.ln_final = nn.LayerNorm(cfg.d_model)
            self.head = nn.Linear(cfg.d_model, cfg.num_classes or cfg.vocab_size)

        def forward(self, tokens):
            x = self.embed(tokens) + self.pos_embed(torch.arange(tokens.shape[1]))[None]
            for i, block in enumerate(self.blocks):
                x = block(x, cfg.last_position_only and i == len(self.blocks) - 1)
            x = self.ln_final(x)
            return self.head(x.mean(1) if cfg.num_classes else x)

    torch.manual_seed(0)
    model = Transformer()
    opt_config = optimizer_lib.default_config()
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt_config.lr,
                                  betas=(opt_config.b1, opt_config.b2),
                                  weight_decay=opt_config.weight_decay)
    tokens = torch.from_numpy(batch["inputs"]).long()
    if bench.loss == "classify":
        labels = torch.from_numpy(batch["labels"]).long()
    else:
        targets = torch.from_numpy(batch["targets"]).long()

    def step():
        logits = model(tokens)
        if bench.loss == "classify":
            loss = F.cross_entropy(logits, labels)
        elif bench.loss == "answer":
            loss = F.cross_entropy(logits[:, -1], targets[:, -1])  # (B, 1, V) or (B, L, V)
        else:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step, sum(p.numel() for p in model.parameters())


def attention_flops(bench: Bench, batch_size: int) -> float:
    """Matmul FLOPs of attention in a train step, which FlopCounterMode skips on CPU.

    Per layer QK^T and PV, 2*B*Q*L*D each, and the backward pass twice the forward.
    """
    cfg, seq_len = bench.cfg, bench.seq_len
    total = 0.0
    for i in range(cfg.num_layers):
        queries = 1 if cfg.last_position_only and i == cfg.num_layers - 1 else seq_len
        total += 3 * 2 * (2 * batch_size * queries * seq_len * cfg.d_model)
    return total


def steps_per_second(run_steps, seconds: float) -> tuple[float, int]:
    """Times `run_steps(n)` with n chosen to take about `seconds`."""
    n, elapsed = 1, 0.0
    while elapsed < seconds / 4:
        start = time.perf_counter()
        run_steps(n)
        elapsed = time.perf_counter() - start
        if elapsed < seconds / 4:
            n *= 2
    n = max(1, int(n * seconds / max(elapsed, 1e-9)))
    start = time.perf_counter()
    run_steps(n)
    return n / (time.perf_counter() - start), n


def main(argv):
    del argv
    positive_ints(_BATCH_SIZES, _ROUNDS)
    positive_ints(_MICRO_BATCHES, _THREADS, at_least=0)
    if not _SECONDS.value > 0:  # NaN fails too
        raise SystemExit(f"error: --seconds={_SECONDS.value}: must be positive")
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if _THREADS.value:
        torch.set_num_threads(_THREADS.value)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"with {torch.get_num_threads()} threads")
    print(f"{'model':<10} {'batch':>5} {'params':>9} {'slices':>6} {'jax steps/s':>12} "
          f"{'torch steps/s':>14} {'jax/torch':>10} {'middle half':>11} {'jax FLOP/s':>11} "
          f"{'torch FLOP/s':>13} "
          f"{'1 slice/torch':>14}")
    print("(jax/torch: the median over rounds of each round's ratio; middle half: the first "
          "to third quartile of those ratios, this machine's noise. FLOP/s: the matrix "
          "products' FLOPs per step x steps/s, as a fraction of a 1024^3 matmul timed in the "
          "same rounds)")
    for name in _MODELS.value:
        bench = benches()[name]
        for batch_size in map(int, _BATCH_SIZES.value):
            batch = make_batch(bench, batch_size)
            micro_batches = (_MICRO_BATCHES.value
                             or train.auto_micro_batches(*batch["inputs"].shape, 1))
            step, state, device_batch, jax_params = jax_step(bench, batch, micro_batches)
            t_step, torch_params = torch_step(bench, batch)
            assert jax_params == torch_params, (name, jax_params, torch_params)
            with FlopCounterMode(display=False) as counter:
                t_step()
            jax_matmul = matmul_flops(step, state, device_batch)
            torch_matmul = counter.get_total_flops() + attention_flops(bench, batch_size)
            # The same model, data and optimizer must mean the same matrix products.
            assert abs(jax_matmul / torch_matmul - 1) < 1e-3, (name, jax_matmul, torch_matmul)
            contestants = {"jax": jax_runner(step, state, device_batch)}
            if micro_batches > 1:  # what the slices gain, measured beside them
                contestants["jax_1"] = jax_runner(*jax_step(bench, batch, 1)[:3])

            def run_torch(n):
                for _ in range(n):
                    t_step()

            contestants["torch"] = run_torch
            peaks = []
            rates = alternated_rates(contestants, _ROUNDS.value, _SECONDS.value,
                                     after_round=lambda: peaks.append(time_matmul(1024)))

            def ratio(key):  # median over rounds of the per-round ratio
                return statistics.median(round_ratios(rates[key], rates["torch"]))

            jax_rate, torch_rate = statistics.median(rates["jax"]), statistics.median(rates["torch"])
            peak = statistics.median(peaks)
            single = f"{ratio('jax_1'):>13.2f}x" if "jax_1" in rates else f"{'-':>14}"
            jax_ratios = round_ratios(rates["jax"], rates["torch"])
            low, high = quartiles(jax_ratios)
            print(f"{name:<10} {batch_size:>5} {jax_params:>9,} {micro_batches:>6} "
                  f"{jax_rate:>12.1f} {torch_rate:>14.1f} {statistics.median(jax_ratios):>9.2f}x "
                  f"{f'{low:.2f}-{high:.2f}':>11} "
                  f"{jax_rate * jax_matmul / peak:>11.0%} {torch_rate * jax_matmul / peak:>13.0%} "
                  f"{single}", flush=True)


def alternated_rates(runners: dict[Any, Callable[[int], None]], rounds: int, seconds: float,
                     after_round: Callable[[], Any] = lambda: None) -> dict[Any, list[float]]:
    """Steps/second of each runner (`run(n)` runs n steps) per round, the runners taking turns
    within each round, after two warm-up steps each."""
    for run in runners.values():
        run(2)
    rates = {key: [] for key in runners}
    for _ in range(rounds):
        for key, run in runners.items():
            rates[key].append(steps_per_second(run, seconds)[0])
        after_round()
    return rates


def round_ratios(rates: list[float], baseline_rates: list[float]) -> list[float]:
    """Each round's speed over the baseline's speed in that same round."""
    return [a / b for a, b in zip(rates, baseline_rates)]


def quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles: the spread of the middle half of the rounds."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def jax_runner(step, state, device_batch):
    """Runs n steps from the last state it reached (the state's buffers are donated)."""
    holder = {"state": state}

    def run(n):
        s = holder["state"]
        for _ in range(n):
            s, metrics = step(s, device_batch)
        jax.block_until_ready(metrics)
        holder["state"] = s

    return run


if __name__ == "__main__":
    app.run(main)
