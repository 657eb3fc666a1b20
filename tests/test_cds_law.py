"""The critical-data-size law across moduli and the grokking experiment's auto fraction."""

import csv
import logging
import math
import pathlib

import pytest

from conftest import ROOT
from experiments import grokking
from phasemix.analysis import cds_law
from phasemix.base import validation


def _runs(op: str, p: int, critical: int, sizes: list[int]) -> list[dict]:
    """Two seeds per size; both generalise from `critical` on."""
    return [{"op": op, "p": p, "train_count": s, "seed": seed, "step_memorized": 100,
             "step_generalized": 2000 if s >= critical else None,
             "final_test_accuracy": 1.0 if s >= critical else 0.1}
            for s in sizes for seed in (0, 1)]


def test_critical_point_is_the_geometric_mean_of_its_bracket():
    points = cds_law.critical_points(_runs("add", 31, 384, [96, 192, 288, 384, 480]))
    (point,) = points
    assert point["critical_count"] == 384 and point["grid_below"] == 288
    assert point["estimate"] == pytest.approx(math.sqrt(384 * 288))
    assert point["censored"] == ""
    (never,) = cds_law.critical_points(_runs("sub", 31, 10_000, [96, 192]))
    assert never["critical_count"] is None and never["censored"] == "above_grid"


def test_fit_recovers_a_shared_exponent_and_predicts_held_out_moduli():
    runs = []
    for op, a in (("add", 2.0), ("sub", 4.0)):
        for p in (31, 53, 73, 97, 113):
            # A grid fine enough (5%) that the bracket's midpoint tracks a * p^1.5.
            sizes = [round(a * p ** 1.5 * 1.05 ** k) for k in range(-6, 7)]
            runs += _runs(op, p, sizes[6], sizes)
    points = cds_law.critical_points(runs)
    fits = cds_law.fit_laws(points, fit_moduli=[31, 53, 73, 97])
    shared = [r for r in fits if r["law"] == "shared"]
    assert {r["op"] for r in shared} == {"add", "sub"}
    assert all(r["chosen"] for r in shared)  # every per-op interval holds the shared exponent
    assert shared[0]["exponent"] == pytest.approx(1.5, abs=0.02)
    chosen = {r["op"]: (r["coefficient"], r["exponent"]) for r in fits if r["chosen"]}
    checks = cds_law.check_predictions(points, chosen, held_out=[113])
    assert len(checks) == 2 and all(c["safe"] for c in checks)


def test_auto_fraction_and_the_warning_below_the_prediction(monkeypatch, caplog):
    monkeypatch.setattr(cds_law, "FIT", {"sub": (1.0, 1.8)})
    config = grokking.get_config("smoke")
    config.task.op, config.task.p = "sub", 23
    predicted = 23 ** 1.8  # 283 of 529 pairs
    config.task.train_fraction = "auto"
    resolved = grokking.resolve_train_fraction(config)
    assert resolved.task.train_fraction == pytest.approx(1.5 * predicted / 529, abs=1e-4)
    config.task.train_fraction = 0.3  # 158 pairs: below 283
    with caplog.at_level(logging.WARNING):
        grokking.resolve_train_fraction(config)
    assert "below the predicted critical data size of 283 for sub mod 23" in caplog.text
    assert "--config.task.train_fraction=auto" in caplog.text
    config.task.op = "mul"  # not covered: auto refuses, naming the flag
    config.task.train_fraction = "auto"
    with pytest.raises(validation.ConfigError, match="task.train_fraction.*no critical-size"):
        grokking.resolve_train_fraction(config)


def test_the_committed_fit_is_the_table_in_the_docs():
    path = pathlib.Path(ROOT) / "docs" / "results" / "grokking" / "cds_fit.csv"
    if not cds_law.FIT:
        assert not path.exists(), "cds_fit.csv exists but cds_law.FIT is empty: copy it in"
        return
    with open(path, newline="") as f:
        chosen = {r["op"]: (float(r["coefficient"]), float(r["exponent"]))
                  for r in csv.DictReader(f) if r["chosen"] == "True"}
    assert chosen.keys() == cds_law.FIT.keys()
    for op, (a, b) in chosen.items():
        assert cds_law.FIT[op] == pytest.approx((a, b), rel=1e-3)
