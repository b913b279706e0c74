"""Timing trials the sweep runs before it trains: real training steps, interleaved, on this machine now.

Two decisions depend on how fast this machine runs the sweep's own step, which no formula predicts: whether
K models train faster stacked than one by one (``batched.stacking_pays``), and how many CPU threads to train
with (``checks.threads_for``). Both time the same thing, :func:`training_step`, through :func:`interleaved`:
the candidates alternate, so a change in the machine's load while the trial runs slows them alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import Tensor

if TYPE_CHECKING:
    from decaykit.sweeps.trainer import Members

__all__ = ["choose_threads", "interleaved", "thread_trial", "threads_text", "training_step"]

K = TypeVar("K", bound=Hashable)


def training_step(members: Members, x: Tensor, y: Tensor) -> Callable[[], None]:
    """One step exactly as the training loop runs it: forward and backward into ``.grad``, then the optimizer."""

    def step() -> None:
        members.forward_backward(x, y)
        members.optimizer.step()

    return step


def interleaved(
    runs: Mapping[K, Callable[[], object]],
    *,
    reps: int = 5,
    warmup: int = 2,
    before: Callable[[K], object] | None = None,
    budget: float | None = None,
) -> dict[K, list[float]]:
    """Seconds per call of each run, ``reps`` rounds of one call each, the runs taking turns.

    ``warmup`` untimed rounds first (first calls allocate, vmap builds its rules). ``before(key)`` runs
    untimed before each of that key's calls, plus one untimed call after it, so a setting it changes (the
    thread count) is in effect and warm when the timed call starts. ``budget``: stop after the round that
    passes this many seconds (at least two timed rounds), so a trial of slow steps stays short.
    """
    times: dict[K, list[float]] = {key: [] for key in runs}
    started = time.perf_counter()
    for round_ in range(warmup + reps):
        for key, run in runs.items():
            if before is not None:
                before(key)
                run()
            start = time.perf_counter()
            run()
            if round_ >= warmup:
                times[key].append(time.perf_counter() - start)
        timed = round_ + 1 - warmup
        if budget is not None and timed >= 2 and time.perf_counter() - started > budget:
            break
    return times


def threads_text(threads: int) -> str:
    return f"{threads} thread{'s' if threads > 1 else ''}"


def choose_threads(timings: Mapping[int, Sequence[float]]) -> tuple[int, str]:
    """The thread count with the lowest median seconds per step, and the figures, for the sweep's header.

    A tie goes to the fewer threads: they leave the other cores to other work for the same speed.
    """
    medians = {threads: statistics.median(seconds) for threads, seconds in timings.items() if seconds}
    if not medians:
        raise ValueError("no timings to choose from")
    best = min(sorted(medians), key=lambda threads: medians[threads])
    figures = " vs ".join(f"{threads_text(n)} {medians[n] * 1e3:.3g} ms/step" for n in sorted(medians))
    return best, f"{threads_text(best)} (timed: {figures})"


def thread_trial(
    step: Callable[[], object], candidates: Sequence[int], *, reps: int = 5, budget: float = 0.4
) -> dict[int, list[float]]:
    """Seconds per ``step`` with each thread count of ``candidates``, interleaved; torch's count restored after."""
    saved = torch.get_num_threads()
    try:
        return interleaved({n: step for n in candidates}, reps=reps, warmup=0, before=torch.set_num_threads,
                           budget=budget)  # fmt: skip
    finally:
        torch.set_num_threads(saved)
