"""Timing trials the sweep runs before it trains: real training steps, interleaved, on this machine now.

Two decisions depend on how fast this machine runs the sweep's own step, which no formula predicts: whether
K models train faster stacked than one by one (``batched.stacking_pays``), and how many CPU threads to train
with (``checks.threads_for``). Both time the same thing, :func:`training_step`, through :func:`interleaved`:
the candidates alternate, so a change in the machine's load while the trial runs slows them alike. The
checks before training run on :func:`one_thread`, too small to share.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import Tensor

if TYPE_CHECKING:
    from decaykit.sweeps.trainer import Members

__all__ = ["choose_threads", "interleaved", "one_thread", "thread_trial", "threads_text", "training_step"]

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
    medians = {threads: statistics.median(seconds) for threads, seconds in timings.items() if seconds}
    if not medians:
        raise ValueError("no timings to choose from")
    best = min(sorted(medians), key=lambda threads: medians[threads])
    figures = " vs ".join(f"{threads_text(n)} {medians[n] * 1e3:.3g} ms/step" for n in sorted(medians))
    return best, f"{threads_text(best)} (timed: {figures})"


def thread_trial(
    step: Callable[[], object], candidates: Sequence[int], *, steps: int | None = None, reps: int = 5,
    share: float = 0.05, budget: float = 0.4,
) -> dict[int, list[float]]:  # fmt: skip
    """Seconds per ``step`` with each thread count of ``candidates``, rounds interleaved; torch's count restored.

    A count's first step after a switch is timed as it is: the sweep pays that switch too, once.

    Up to ``reps`` rounds; the trial stops after the first round that has spent ``budget`` seconds or, when
    the sweep will take ``steps`` steps, ``share`` of the time they take at the fastest count timed so far
    (one round at least): a trial that costs more than it can save is no help.
    """
    saved = torch.get_num_threads()
    times: dict[int, list[float]] = {n: [] for n in candidates}
    started = time.perf_counter()
    try:
        torch.set_num_threads(min(candidates))
        step()  # untimed: a first step allocates its buffers; on the fewest threads, the cheapest warm-up
        for _ in range(reps):
            one = interleaved({n: step for n in candidates}, reps=1, warmup=0, before=torch.set_num_threads)
            for n, seconds in one.items():
                times[n] += seconds
            spent = time.perf_counter() - started
            limit = budget if steps is None else min(budget, share * steps * min(min(t) for t in times.values()))
            if spent > limit:
                break
    finally:
        torch.set_num_threads(saved)
    return times


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
