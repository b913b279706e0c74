"""A one-line progress bar with ETA on stderr, or plain log lines when stderr is not a terminal.

Work is counted in member-epochs (one model through the training set once), the unit that
takes the same time whichever chunk it is trained in; the ETA is elapsed time divided by the
fraction done, measured from the first finished unit so that start-up is not extrapolated.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "format_seconds"]


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """``mode``: "bar" (redrawn in place), "log" (a line per finished chunk) or "off"."""

    def __init__(self, total: int, *, mode: str = "bar", stream: TextIO | None = None, width: int = 28) -> None:
        self.total = max(0, total)
        self.done = 0
        self.mode = mode
        self.stream = stream or sys.stderr
        self.width = width
        self.status = ""
        self._start = time.perf_counter()
        self._first: tuple[float, int] | None = None
        self._drawn = 0.0

    def eta(self) -> float | None:
        if self._first is None or self.done <= self._first[1]:
            return None
        t0, d0 = self._first
        rate = (self.done - d0) / (time.perf_counter() - t0)
        return (self.total - self.done) / rate if rate > 0 else None

    def advance(self, units: int) -> None:
        if self._first is None:
            self._first = (time.perf_counter(), self.done)
        self.done = min(max(self.total, self.done), self.done + units)
        if self.mode == "bar" and time.perf_counter() - self._drawn > 0.1:
            self._draw()

    def add_total(self, units: int) -> None:
        """More work became known (a search round): extend the bar."""
        self.total += max(0, units)

    def message(self, text: str) -> None:
        """A line above the bar (bar mode) or a log line (log mode)."""
        if self.mode == "off":
            return
        if self.mode == "bar":
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()
        if self.mode == "bar":
            self._draw()

    def _line(self) -> str:
        frac = min(1.0, self.done / max(1, self.total))
        filled = int(frac * self.width)
        bar = "█" * filled + "·" * (self.width - filled)
        eta = self.eta()
        elapsed = format_seconds(time.perf_counter() - self._start)
        eta_text = format_seconds(eta) if eta is not None else "?"
        return f"{bar} {frac:4.0%}  {elapsed} elapsed, ETA {eta_text}  {self.status}".rstrip()

    def _draw(self) -> None:
        self._drawn = time.perf_counter()
        self.stream.write("\r\033[K" + self._line())
        self.stream.flush()

    def close(self) -> None:
        if self.mode == "bar":
            self.stream.write("\r\033[K")
            self.stream.flush()
