"""Modular arithmetic data: correct answers, nested seeded splits, clear errors."""

import numpy as np
import pytest

from experiments import grokking
from phasemix.base import validation
from phasemix.data import modular


@pytest.mark.parametrize("op", modular.OPS)
def test_answers_are_correct(op):
    p = 11
    a, b, c = modular.all_pairs(op, p)
    assert len(a) == modular.num_pairs(op, p)
    for x, y, z in zip(a, b, c):
        if op == "div":
            assert (z * y) % p == x
        else:
            expected = {"add": x + y, "sub": x - y, "mul": x * y,
                        "x2_xy_y2": x * x + x * y + y * y}[op] % p
            assert z == expected


def test_examples_put_the_answer_at_the_equals_sign():
    ex = modular.to_examples(np.array([3]), np.array([5]), np.array([8]), p=13)
    np.testing.assert_array_equal(ex["inputs"], [[3, 5, 13]])
    np.testing.assert_array_equal(ex["targets"], [[0, 0, 8]])
    np.testing.assert_array_equal(ex["loss_mask"], [[0, 0, 1]])


def test_splits_nest_and_partition():
    config = grokking.get_config()
    config.task.p = 17
    sets = {}
    for n in (30, 100, 200):
        config.task.train_count = n
        train, test = modular.split(config.task, seed=3)
        rows = lambda ex: {tuple(r) for r in ex["inputs"][:, :2]}  # noqa: E731
        assert len(rows(train)) == n and len(rows(test)) == 17 * 17 - n
        assert not rows(train) & rows(test)
        sets[n] = rows(train)
    assert sets[30] < sets[100] < sets[200]
    config.task.train_count = 100
    other_seed, _ = modular.split(config.task, seed=4)
    assert {tuple(r) for r in other_seed["inputs"][:, :2]} != sets[100]


@pytest.mark.parametrize("overrides,flag", [
    ({"p": 1}, "task.p"),
    ({"p": 12, "op": "div"}, "task.p"),
    ({"op": "pow"}, "task.op"),
    ({"train_count": 0}, "task.train_count"),
    ({"train_count": 97 * 97}, "task.train_count"),
    ({"train_fraction": 1.5}, "task.train_fraction"),
    ({"train_fraction": 0.0}, "task.train_fraction"),
    ({"train_fraction": 1.5, "train_count": 100}, "task.train_fraction"),  # unused, still checked
])
def test_bad_task_names_the_flag(overrides, flag):
    config = grokking.get_config()
    config.task.update(overrides)
    with pytest.raises(validation.ConfigError, match=f"--config.{flag}="):
        modular.validate(config.task)


def test_a_modulus_whose_equations_exceed_the_memory_is_refused_before_any_is_built(
        monkeypatch):
    """p = 97 fits; with the machine's memory set below its 9,409 equations' bytes it is
    refused up front, naming the flag and the memory."""
    config = grokking.get_config()
    modular.validate(config.task)
    needed = modular.num_pairs("add", 97) * modular.BYTES_PER_PAIR
    monkeypatch.setattr(validation, "physical_memory_bytes", lambda: needed - 1)
    with pytest.raises(validation.ConfigError,
                       match=r"^--config\.task\.p=97: its 9,409 equations would take at least "
                             r".* GiB, more than this machine's"):
        modular.validate(config.task)
    monkeypatch.setattr(validation, "physical_memory_bytes", lambda: None)  # OS does not say
    modular.validate(config.task)
