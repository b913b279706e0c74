"""Timing trials of the sweep's own training step, the candidates in turns, on this machine now.

Two decisions depend on how fast this machine runs the sweep's step, which no formula predicts: whether
K models train faster stacked than one by one (``batched.stacking_pays``, before training: throwaway
members, ``trainer.training_step`` through :func:`interleaved`), and how many CPU threads to train with
(:class:`ThreadChoice`, on the sweep's own first steps). The candidates alternate, so a change in the
machine's load while a trial runs slows them alike. The checks before training run on :func:`one_thread`,
too small to share.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import TypeVar

import torch

__all__ = ["ThreadChoice", "choose_threads", "interleaved", "one_thread", "threads_text"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


def interleaved(
    runs: Mapping[K, Callable[[], object]],
    *,
    reps: int = 5,
    warmup: int = 2,
    before: Callable[[K], object] | None = None,
) -> dict[K, list[float]]:
    """Seconds per call of each run, ``reps`` rounds of one call each, the runs taking turns.

    ``warmup`` untimed rounds first (first calls allocate, vmap builds its rules). ``before(key)`` runs
    untimed before each of that key's calls (to put a setting such as the thread count in effect).
    """
    times: dict[K, list[float]] = {key: [] for key in runs}
    for round_ in range(warmup + reps):
        for key, run in runs.items():
            if before is not None:
                before(key)
            start = time.perf_counter()
            run()
            if round_ >= warmup:
                times[key].append(time.perf_counter() - start)
    return times


def threads_text(threads: int) -> str:
    return f"{threads} thread{'s' if threads > 1 else ''}"


def choose_threads(timings: Mapping[int, Sequence[float]]) -> tuple[int, str]:
    """The thread count with the lowest median seconds per step, and the figures, for the sweep's header.

    A tie goes to the fewer threads: they leave the other cores to other work for the same speed.
    """
    medians = _medians(timings)
    best = min(sorted(medians), key=lambda threads: medians[threads])
    return best, f"{threads_text(best)} (timed: {_figures(medians)})"


def _medians(timings: Mapping[int, Sequence[float]]) -> dict[int, float]:
    medians = {threads: statistics.median(seconds) for threads, seconds in timings.items() if seconds}
    if not medians:
        raise ValueError("no timings to choose from")
    return medians


def _figures(medians: Mapping[int, float]) -> str:
    return " vs ".join(f"{threads_text(n)} {_milliseconds(medians[n])} ms/step" for n in sorted(medians))


def _milliseconds(seconds: float) -> str:
    """Three significant figures of ``seconds`` in ms, never in e-notation (a 9e-05 reads as a broken figure)."""
    ms = seconds * 1e3
    if ms <= 0 or not math.isfinite(ms):
        return f"{ms:g}"
    text = f"{ms:.{max(0, 2 - math.floor(math.log10(ms)))}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


class ThreadChoice:
    """How many CPU threads the sweep trains on, and why: fixed before training, or timed on its first steps.

    A fixed choice (:meth:`fixed`: asked for, small steps, one core) holds from the first step. A timed one
    runs the sweep's own first training steps in turns on each of ``candidates``: the first step (it
    allocates buffers) untimed on the fewest threads, then rounds of one step per count, each timed as it
    is (a count's first step after a switch included: the sweep pays that switch too, once). After
    ``reps`` rounds, or after the first round whose extra cost (the time the trial's steps took beyond
    the fastest median so far) passes ``budget`` seconds or ``share`` of the time the sweep's ``steps``
    take at that median, the lowest median wins (:func:`choose_threads`) and every later step runs on
    it. The steps train the sweep's own models, so the trial builds no throwaway ones and costs only the
    gap between the counts on the steps it runs on the slower one; a step's numbers do not depend on the
    count it ran on (``tests/test_sweep_threads.py`` compares a timed sweep with a one-thread one).
    """

    def __init__(
        self, candidates: Sequence[int], why: str = "", *, steps: int | None = None, reps: int = 5,
        share: float = 0.05, budget: float = 0.4,
    ) -> None:  # fmt: skip
        if not candidates:
            raise ValueError("no thread counts to choose from")
        self.candidates = sorted(set(candidates))
        self.times: dict[int, list[float]] = {n: [] for n in self.candidates}
        self.steps, self.reps, self.share, self.budget = steps, reps, share, budget
        self.threads: int | None = self.candidates[0] if len(self.candidates) == 1 else None  # None: still timing
        self.why = why
        self._queue: list[int] = []
        self._warm = False

    @classmethod
    def fixed(cls, threads: int, why: str) -> ThreadChoice:
        return cls([threads], why)

    @property
    def start(self) -> int:
        """The count to set before training (the evaluation of the initial models): the choice, or, while the
        trial has still to time the steps, the most (torch's default); the trial sets its own for each step."""
        return self.threads if self.threads is not None else self.candidates[-1]

    def run(self, step: Callable[[], T]) -> T:
        """``step()``, on the chosen count, or as the trial's next step while it is still timing."""
        if self.threads is not None:
            return step()
        if not self._warm:
            self._warm = True
            torch.set_num_threads(self.candidates[0])
            return step()
        if not self._queue:
            self._queue = list(self.candidates)
        threads = self._queue.pop(0)
        torch.set_num_threads(threads)
        started = time.perf_counter()
        out = step()
        self.times[threads].append(time.perf_counter() - started)
        if not self._queue and self._round_is_last():
            self.threads, self.why = choose_threads(self.times)
            torch.set_num_threads(self.threads)
        return out

    def _round_is_last(self) -> bool:
        rounds = len(self.times[self.candidates[0]])
        fastest = min(statistics.median(t) for t in self.times.values())
        extra = sum(sum(t) for t in self.times.values()) - rounds * len(self.candidates) * fastest
        limit = self.budget if self.steps is None else min(self.budget, self.share * self.steps * fastest)
        return rounds >= self.reps or extra > limit

    def describe(self) -> str:
        """The count and why, for the sweep's header; "" for a trial that timed no step (nothing was trained)."""
        if self.threads is not None:
            return self.why
        if not all(self.times.values()):
            return ""
        counts = " and ".join(str(n) for n in self.candidates)  # the sweep ended before the trial did
        return f"{counts} threads in turns (timed: {_figures(_medians(self.times))}; too few steps to settle)"


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one CPU thread, for the checks before training (a few samples, or one pass over the data); the caller's count after.

    Their ops are too small to share, and on a machine busy with other work a second thread's barrier
    can stall each of them for a time slice (measured on a 2-core machine at load 2-3: the demo's checks
    0.3 s on torch's 2 threads, 0.03 s on one).
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
