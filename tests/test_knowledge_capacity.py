"""Learned bits (Fano's bound) and the knowledge-capacity sweep's grid and table."""

import csv
import math

import numpy as np
import pytest

from experiments import knowledge_capacity
from phasemix.analysis import capacity


def test_attribute_bits_are_zero_at_chance_and_log2_k_when_always_right():
    bits = capacity.attribute_bits([0.0, 1 / 40, 0.5, 1.0], 40)
    assert bits[0] == 0 and bits[1] == 0  # at or below chance: nothing usable is stored
    assert bits[3] == pytest.approx(math.log2(40))
    # Half right, errors spread over the other 39 values: log2 40 - 1 - 0.5 log2 39.
    assert bits[2] == pytest.approx(math.log2(40) - 1 - 0.5 * math.log2(39))
    assert np.all(np.diff(capacity.attribute_bits(np.linspace(0.03, 1, 50), 40)) > 0)


def test_learned_bits_sum_attributes_over_people():
    pools = {"a": 40, "b": 336}
    assert capacity.learned_bits(100, {"a": 1.0, "b": 1.0}, pools) == pytest.approx(
        100 * (math.log2(40) + math.log2(336)))
    with pytest.raises(ValueError, match="different attributes"):
        capacity.learned_bits(100, {"a": 1.0}, pools)


def test_each_run_sees_every_biography_its_exposures_and_seeds_come_last():
    config = knowledge_capacity.get_config()
    grid = knowledge_capacity.overrides(config)
    assert len(grid) == 24 and [g["seed"] for g in grid[:12]] == [0] * 12
    for run in grid:
        tokens = run["num_steps"] * config.base.batch_size * (config.base.seq_len + 1)
        exposures = tokens / (run["synbio.num_people"] * config.tokens_per_bio)
        assert 100 <= exposures < 100.1
        assert run["final_eval_people"] == run["synbio.num_people"]


def test_smoke_sweep_writes_a_capacity_table(tmp_path):
    config = knowledge_capacity.get_config("smoke")
    summary = knowledge_capacity.run(config, str(tmp_path))
    with open(tmp_path / "capacity.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["num_people"]) for r in rows] == [20, 40]
    for r in rows:
        accuracy = {a: float(r[f"accuracy_{a}"]) for a in ("birth_date", "birth_city",
                                                          "university", "major", "employer")}
        pools = {"birth_date": 336, **{a: 10 for a in list(accuracy)[1:]}}
        assert float(r["learned_bits"]) == pytest.approx(
            capacity.learned_bits(int(r["num_people"]), accuracy, pools))
        assert float(r["bits_per_param"]) == pytest.approx(
            float(r["learned_bits"]) / int(r["params"]))
    assert summary["per_size"][0]["preset"] == "tiny-16"
    assert (tmp_path / "learned_bits.png").is_file()
