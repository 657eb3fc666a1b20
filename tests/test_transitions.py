"""Transition analysis on hand-made sweeps whose answers are known."""

import pytest

from phasemix.analysis import transitions as tr


def runs(size, generalized, memorized=100, acc=1.0):
    return [{"size": size, "step_generalized": g, "step_memorized": memorized,
             "final_test_accuracy": acc if g else 0.1} for g in generalized]


def test_first_step_at_least():
    rows = [{"step": 0, "a": 0.1}, {"step": 10, "a": 0.5}, {"step": 20, "a": 0.99}]
    assert tr.first_step_at_least(rows, "a", 0.5) == 10
    assert tr.first_step_at_least(rows, "a", 0.999) is None


def test_three_regimes_and_critical_size():
    table = (runs(100, [None, None, None]) + runs(200, [None, 2500, None]) +
             runs(300, [2000, 2600, None]) + runs(400, [1800, 2200, 2000]) +
             runs(600, [900, 800, 1000]) + runs(800, [500, 450, 550]))
    stats = tr.per_size(table, "size")
    assert [s["fraction_generalized"] for s in stats] == pytest.approx([0, 1 / 3, 2 / 3, 1, 1, 1])
    cds = tr.critical_data_size(stats)
    assert cds == {"critical_size": 300, "critical_size_lower": 200, "critical_size_upper": 400,
                   "peak_steps_size": 200}
    labelled = tr.label_sizes(stats, cds)
    assert [s["regime"] for s in labelled] == ["insufficient", "insufficient", "critical",
                                               "critical", "surplus", "surplus"]
    summary = tr.regime_summary(labelled)
    assert summary["all_three_regimes"] and summary["peak_in_critical_regime"]
    assert summary["step_memorized_spread"] == 1.0
    assert summary["step_generalized_spread"] == pytest.approx(2500 / 500)


def test_a_lucky_seed_below_a_failing_size_does_not_set_the_critical_size():
    table = runs(100, [3000, None]) + runs(200, [None, None]) + runs(300, [1000, 1200])
    cds = tr.critical_data_size(tr.per_size(table, "size"))
    assert cds["critical_size"] == 300 and cds["critical_size_lower"] == 100


def test_nothing_generalises():
    stats = tr.per_size(runs(100, [None]) + runs(200, [None]), "size")
    cds = tr.critical_data_size(stats)
    assert cds["critical_size"] is None and cds["peak_steps_size"] is None
    assert {s["regime"] for s in tr.label_sizes(stats, cds)} == {"insufficient"}
