"""Terminal progress lines with a rate and an ETA."""

from __future__ import annotations

import time


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """Counts units of work (steps, runs) done in this process and estimates the rest."""

    def __init__(self, total: int, done: int = 0, unit: str = "step"):
        self.total = total
        self._start_done = done
        self._start_time = time.monotonic()
        self._unit = unit

    def line(self, done: int, extra: str = "") -> str:
        elapsed = time.monotonic() - self._start_time
        rate = (done - self._start_done) / elapsed if elapsed > 0 else 0.0
        eta = format_seconds((self.total - done) / rate) if rate > 0 else "?"
        percent = 100.0 * done / max(self.total, 1)
        speed = (f"{rate:.1f} {self._unit}s/s" if rate >= 1 or rate == 0
                 else f"{1 / rate:.0f} s/{self._unit}")
        return (f"{self._unit} {done}/{self.total} ({percent:.0f}%) {extra} | {speed} | "
                f"elapsed {format_seconds(elapsed)} | ETA {eta}")
