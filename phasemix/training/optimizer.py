"""AdamW with the learning-rate schedules the studies use."""

from __future__ import annotations

import jax
import ml_collections
import optax

from phasemix.base import validation

SCHEDULES = ("constant", "cosine", "wsd")


# A peak learning rate or weight decay: a number, or a traced scalar where one program trains
# several runs with their own (train.py's vmapped groups).
Scalar = float | jax.Array


def make_schedule(opt: ml_collections.ConfigDict, num_steps: int,
                  lr: Scalar | None = None) -> optax.Schedule:
    """Linear warmup, then constant, cosine decay to 0, or warmup-stable-decay (linear to 0),
    peaking at `lr` (default `opt.lr`). The step counts stay numbers: they shape the program."""
    lr = opt.lr if lr is None else lr
    warmup = min(opt.warmup_steps, num_steps)
    warmup_fn = optax.linear_schedule(0.0, lr, warmup) if warmup else None
    rest = max(num_steps - warmup, 1)
    if opt.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif opt.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, rest)
    else:  # wsd: hold the peak, then decay linearly over the last `decay_fraction` of steps.
        decay = max(int(rest * opt.decay_fraction), 1)
        main = optax.join_schedules(
            [optax.constant_schedule(lr), optax.linear_schedule(lr, 0.0, decay)],
            [rest - decay])
    if warmup_fn is None:
        return main
    return optax.join_schedules([warmup_fn, main], [warmup])


def make_optimizer(opt: ml_collections.ConfigDict, num_steps: int, lr: Scalar | None = None,
                   weight_decay: Scalar | None = None) -> optax.GradientTransformation:
    """AdamW (decoupled weight decay on every parameter, as in the grokking papers); `lr` and
    `weight_decay` replace `opt.lr` and `opt.weight_decay` where given."""
    weight_decay = opt.weight_decay if weight_decay is None else weight_decay
    transforms = []
    if opt.grad_clip:
        transforms.append(optax.clip_by_global_norm(opt.grad_clip))
    transforms.append(optax.adamw(make_schedule(opt, num_steps, lr), b1=opt.b1, b2=opt.b2,
                                  weight_decay=weight_decay))
    return optax.chain(*transforms)


def validate(opt: ml_collections.ConfigDict) -> None:
    finite = validation.is_finite_number
    validation.require(finite(opt.lr) and opt.lr > 0, "opt.lr", "must be positive and finite",
                       opt.lr)
    validation.require(finite(opt.weight_decay) and opt.weight_decay >= 0, "opt.weight_decay",
                       "must be >= 0 and finite", opt.weight_decay)
    for field in ("b1", "b2"):  # Adam's moment decays
        validation.require(finite(opt[field]) and 0 <= opt[field] < 1, f"opt.{field}",
                           "must be in [0, 1)", opt[field])
    validation.require(finite(opt.grad_clip) and opt.grad_clip >= 0, "opt.grad_clip",
                       "must be >= 0 and finite (0: no clipping)", opt.grad_clip)
    validation.require(opt.warmup_steps >= 0, "opt.warmup_steps", "must be >= 0",
                       opt.warmup_steps)
    validation.require_choice(opt.schedule, SCHEDULES, "opt.schedule")
    if opt.schedule == "wsd":
        validation.require(0 < opt.decay_fraction <= 1, "opt.decay_fraction",
                           "must be in (0, 1]", opt.decay_fraction)


def default_config() -> ml_collections.ConfigDict:
    """The `config.opt` block every experiment starts from."""
    return ml_collections.ConfigDict(dict(
        lr=1e-3,  # peak learning rate
        weight_decay=1.0,  # AdamW decoupled weight decay (grokking configuration)
        b1=0.9,
        b2=0.98,
        schedule="constant",  # constant | cosine | wsd (after linear warmup)
        warmup_steps=10,
        decay_fraction=0.2,  # wsd only: fraction of the post-warmup steps spent decaying
        grad_clip=0.0,  # 0 disables global-norm clipping
    ))
