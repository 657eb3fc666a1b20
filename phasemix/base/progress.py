"""Terminal progress lines with a rate and an ETA."""

from __future__ import annotations

import time


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """Counts units of work (steps) done in this process and estimates the rest from its rate."""

    def __init__(self, total: int, done: int = 0, unit: str = "step"):
        self.total = total
        self._start_done = done
        self._start_time = time.monotonic()
        self._rate_done, self._rate_time = done, self._start_time
        self._unit = unit

    def start_rate(self, done: int) -> None:
        """Measures the rate from here on: the work before (compiling the step program, 10x
        a small model's whole run on an accelerator) would make the first ETAs far too long."""
        self._rate_done, self._rate_time = done, time.monotonic()

    def line(self, done: int, extra: str = "") -> str:
        now = time.monotonic()
        elapsed = now - self._start_time
        rate_elapsed = now - self._rate_time
        rate = (done - self._rate_done) / rate_elapsed if rate_elapsed > 0 else 0.0
        eta = format_seconds((self.total - done) / rate) if rate > 0 else "?"
        percent = 100.0 * done / max(self.total, 1)
        speed = (f"{rate:.1f} {self._unit}s/s" if rate >= 1 or rate == 0
                 else f"{1 / rate:.0f} s/{self._unit}")
        return (f"{self._unit} {done}/{self.total} ({percent:.0f}%) {extra} | {speed} | "
                f"elapsed {format_seconds(elapsed)} | ETA {eta}")


class RunsProgress:
    """A sweep's progress: the grid's finished runs, and this job's ETA from its runs' mean
    time, `parallel` at a time. (A rate over elapsed time counts the runs still in flight as
    nothing, so with 2 workers the first ETA would be twice too long.)"""

    def __init__(self, grid_total: int, todo: int, parallel: int, part: str = ""):
        self._grid_total, self._todo, self._parallel = grid_total, todo, max(parallel, 1)
        self._part = part  # e.g. "shard 0/2": this job runs only part of the grid
        self._seconds: list[float] = []
        self._start_time = time.monotonic()

    def line(self, grid_done: int, run_seconds: float, extra: str = "") -> str:
        self._seconds.append(run_seconds)
        left = max(self._todo - len(self._seconds), 0)
        mean = sum(self._seconds) / len(self._seconds)
        eta = left * mean / min(self._parallel, left) if left else 0.0
        percent = 100.0 * grid_done / max(self._grid_total, 1)
        part = f" | {self._part}: {len(self._seconds)}/{self._todo}" if self._part else ""
        return (f"run {grid_done}/{self._grid_total} ({percent:.0f}%) {extra}{part} | "
                f"elapsed {format_seconds(time.monotonic() - self._start_time)} | "
                f"ETA {format_seconds(eta)}")
