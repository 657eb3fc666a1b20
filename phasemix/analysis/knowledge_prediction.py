"""Knowledge transitions predicted before their sweep, then checked against it.

`predict` turns a measured capacity (a `knowledge_capacity` table: learned bits against N per
size) and a web-only law fit (a `knowledge_phase :web` sweep) into each size's predicted
critical ratio and the predicted power-law exponent of the critical ratio in model size: the
knapsack model of `capacity.Knapsack`, with the bits per parameter each size was measured to
hold instead of an assumed constant. `compare` sets those predictions beside a size sweep's
measured critical ratios, with the criterion fixed before the sweep: a size is a *hit* when its
measured critical ratio lies within `tolerance` (1.5x) of its prediction either way.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Sequence

from phasemix.analysis import capacity

# Which measured capacity figure matches the parameters that the theory counts.
BITS_KEY = {"non_embedding_params": "bits_per_non_embedding_param", "params": "bits_per_param"}
MEASURED, MEAN_OF_MEASURED = "measured", "mean of measured sizes"


class PredictionError(ValueError):
    """The inputs cannot support a prediction (no measured capacity, a size without a web run)."""


def measured_bits_per_param(capacity_table: list[dict[str, Any]], param_count: str,
                            saturation: float) -> dict[str, float]:
    """Preset -> bits per parameter at its capacity, for the sizes whose learned bits stopped
    growing (the last doubling of N added less than `saturation`x). Refuses when none did: a
    size still gaining bits has not shown its capacity, and a prediction from it would be a
    guess."""
    sizes = capacity.capacity_per_size(capacity_table, saturation)
    reached = {s["preset"]: s[BITS_KEY[param_count]] for s in sizes if s["plateau_reached"]}
    if not reached:
        gaining = ", ".join(f"{s['preset']} ({s['capacity_bits']:,.0f} bits at "
                            f"N={s['capacity_people']})" for s in sizes)
        raise PredictionError(f"no size has reached its capacity (learned bits still grow by "
                              f">= {saturation:g}x per doubling of N): {gaining}")
    return reached


def predict(knapsack: capacity.Knapsack, sizes: dict[str, float],
            bits_per_param: dict[str, float], level: float) -> list[dict[str, Any]]:
    """One row per size: its bits per parameter (its own where measured, else the mean of the
    measured sizes) and its predicted critical ratio (None where half the people do not fit
    even with no web text), with the exponent of a power law through the predictions."""
    fallback = statistics.fmean(bits_per_param.values())
    rows = []
    for preset, params in sizes.items():
        own = preset in bits_per_param
        bits = bits_per_param[preset] if own else fallback
        size_knapsack = dataclasses.replace(knapsack, bits_per_param=bits)
        rows.append({"preset": preset, "params": params, "bits_per_param": bits,
                     "capacity_source": MEASURED if own else MEAN_OF_MEASURED,
                     "predicted_critical_ratio": size_knapsack.critical_ratio(params, level)})
    predicted = [r for r in rows if r["predicted_critical_ratio"] is not None]
    law = (capacity.fit_power_law([r["params"] for r in predicted],
                                  [r["predicted_critical_ratio"] for r in predicted])
           if len(predicted) >= 2 else None)
    for row in rows:
        row.update({"level": level, "num_people": knapsack.num_people,
                    "bits_per_person": knapsack.bits_per_person,
                    "tokens_per_bio": knapsack.tokens_per_bio, "web_C": knapsack.web.C,
                    "web_A": knapsack.web.A, "web_alpha": knapsack.web.alpha,
                    "small_ratio_exponent": knapsack.ratio_exponent,
                    "predicted_exponent": None if law is None else law.exponent})
    return rows


def compare(predicted: Sequence[dict[str, Any]], measured: Sequence[dict[str, Any]],
            tolerance: float = 1.5) -> list[dict[str, Any]]:
    """Predicted beside measured critical ratio per size (`measured`: rows with preset,
    critical, critical_low, critical_high, as the size analysis writes them)."""
    by_preset = {m["preset"]: m for m in measured}
    rows = []
    for p in predicted:
        m = by_preset.get(p["preset"])
        guess, found = p["predicted_critical_ratio"], None if m is None else m["critical"]
        factor = found / guess if guess and found else None
        rows.append({"preset": p["preset"], "params": p["params"],
                     "predicted_critical_ratio": guess, "measured_critical_ratio": found,
                     "measured_low": None if m is None else m["critical_low"],
                     "measured_high": None if m is None else m["critical_high"],
                     "measured_over_predicted": factor,
                     "hit": factor is not None and 1 / tolerance <= factor <= tolerance})
    return rows
