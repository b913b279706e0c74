"""Σ r, the decay a tensor has had: its per-step rate summed over every step the optimizer applied.

A step's rate is r_t = c·b_t with b_t = η_t^p·λ·s(t), from the group's ``lr`` and ``weight_decay``
and :class:`decaykit.WeightDecay`'s schedule multiplier s(t) (1 without one); p = 2 in the engine's
``corrected`` mode, else 1. The step pre-hook adds b_t of every group at every step (a few
multiplications per group); a record reads c = r/b_t from the rate it measures and adds c·Σ b_t
over the steps since the tensor's previous record. c is 1 for decoupled decay, 1/η_max in
``lr_independent`` and ``corrected``, S for L2 through SGD's momentum, so Σ r is exact while these
hold; for L2 behind Adam's √v̂, c = 1/RMS(√v̂) is measured at each record and held over the steps
since the previous one.

A tensor without a gradient at a step is not stepped (torch's optimizers and the engine skip it, decay
included): that step's b_t is kept aside for it (a task head used one batch in ten has had a tenth of the
decay). A step that changes nothing is not counted. A GradScaler on a fused optimizer (``AdamW(fused=True)``)
calls ``step()`` on an overflow too, with ``optimizer.found_inf`` set, and the kernel then skips the
update. Reading that flag waits for the device, so it is read at once only where a recorded step is
at stake; the flags of the other steps are kept and read together when the count is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from decaykit.engine.checks import check_multiplier
from decaykit.engine.schedules import Constant
from decaykit.monitor.equilibrium import lr_power

__all__ = ["DecayTally", "found_inf"]

#: flags kept unread at most (then read together): one wait for the device per this many steps
_UNREAD_LIMIT = 1024


def found_inf(optimizer: Any, kwargs: dict[str, Any]) -> Tensor | None:
    """GradScaler's overflow flag for this step of a fused optimizer (nonzero: the kernel skips it), or None."""
    flag = kwargs.get("found_inf", getattr(optimizer, "found_inf", None))
    return flag if isinstance(flag, Tensor) else None


class DecayTally:
    """The steps the optimizer applied, and Σ r per group and per recorded tensor over them."""

    def __init__(self, optimizer: Any, start_step: int) -> None:
        from decaykit.engine.weight_decay import WeightDecay

        self.optimizer = optimizer
        self._steps = start_step  # applied, steps whose flag is unread included
        self._sums: list[Any] = []  # per group: Σ b_t over the applied steps
        self._power = lr_power(optimizer)
        self._schedule = optimizer.schedule if isinstance(optimizer, WeightDecay) else None
        # (flag, b_t per group, tensors without a gradient) of steps not read yet
        self._unread: list[tuple[Tensor, list[Any], list[tuple[int, int]]]] = []
        self._current: tuple[list[Any], Tensor | None, int, float] | None = None
        self._skipped: dict[int, Any] = {}  # id(param) -> Σ b_t of the applied steps it had no gradient in
        # id(param) -> (group, Σ b_t at its last record, its skipped Σ b_t there, Σ r there, c there)
        self._progress: dict[int, tuple[int, Any, Any, float, float | None]] = {}
        self._rated: set[int] = set()  # id(param) of the tensors some record of which had a rate

    # -- counting --------------------------------------------------------------------------------
    def next_step(self, recorded_within: Callable[[int, int], bool]) -> int:
        """The number the coming step gets if it is applied; the unread flags are read first where a step
        ``recorded_within(low, high)`` could be it (each unread one may have been skipped)."""
        high = self._steps + 1
        if self._unread and (len(self._unread) >= _UNREAD_LIMIT or recorded_within(high - len(self._unread), high)):
            self.read_flags()
        return self._steps + 1

    @property
    def steps(self) -> int:
        """Steps applied (``start_step`` included): the unread flags are read."""
        self.read_flags()
        return self._steps

    def start(self, flag: Tensor | None) -> None:
        """At a step's pre-hook: its b_t per group, and its unread GradScaler flag (None: it is applied)."""
        index = self._schedule_index()
        s = 1.0 if self._schedule is None else self._multiplier(index)
        bases = []
        for group in self.optimizer.param_groups:
            lr, lam = group.get("lr"), group.get("weight_decay")
            bases.append(0.0 if lr is None or lam is None else (lr * lr if self._power == 2 else lr) * lam * s)
        self._current = (bases, flag, index, s)

    def _skipped_now(self) -> list[tuple[int, int]]:
        """(group, id) of the decaying groups' tensors without a gradient, read after the step: a closure passed to
        ``step()`` (Lightning's automatic optimization) computes the gradients inside it, after the pre-hook."""
        return [(i, id(p)) for i, group in enumerate(self.optimizer.param_groups)
                if group.get("lr") and group.get("weight_decay") is not None for p in group["params"] if p.grad is None]

    def applied(self) -> tuple[list[Any], int, float] | None:
        """At the post-hook: count the step started (its b_t per group, schedule index and multiplier), or None
        where none was (an overflow step GradScaler's flag already showed)."""
        if self._current is None:
            return None
        bases, flag, index, s = self._current
        missing = self._skipped_now()
        self._current = None
        self._steps += 1
        if flag is None:
            self._add(bases, missing)
        else:
            self._unread.append((flag, bases, missing))
        return bases, index, s

    def read_flags(self) -> None:
        """Read the unread flags: a flagged step changed nothing, so it is neither counted nor summed."""
        for flag, bases, missing in self._unread:
            if bool(flag):
                self._steps -= 1
            else:
                self._add(bases, missing)
        self._unread.clear()

    def _add(self, bases: list[Any], missing: list[tuple[int, int]]) -> None:
        self._sums.extend([0.0] * (len(bases) - len(self._sums)))  # groups added since
        for i, b in enumerate(bases):
            self._sums[i] = self._sums[i] + b
        for i, key in missing:
            self._skipped[key] = self._skipped.get(key, 0.0) + bases[i]

    def _schedule_index(self) -> int:
        return self.optimizer.steps_taken if self._schedule is not None else 0

    def _multiplier(self, index: int) -> float:
        # a float as it is (the engine checks it in the step about to run); anything else checked here, with its message
        value = self._schedule(index)  # type: ignore[misc]
        return value if type(value) is float else check_multiplier(self._schedule, index)

    # -- Σ r -------------------------------------------------------------------------------------
    def advance(self, param: Tensor, group: int, rate: float | None, base: Any) -> float | None:
        """Σ r of ``param`` at its record now: c = ``rate``/``base`` (this step's r and b_t) over the steps since
        its last record (no rate: nothing is added). None while no record of it had a rate: a decay that acts at a
        rate decaykit cannot read (coupled L2 through RMSprop's or Adagrad's denominator) has a Σ r that is not
        known, not 0."""
        c = None if rate is None or float(base) == 0 else rate / float(base)
        _, since, skipped_since, done, _ = self._progress.get(id(param), (group, 0.0, 0.0, 0.0, None))
        now, skipped = self._sums[group], self._skipped.get(id(param), 0.0)
        if c is not None:
            done += c * float((now - since) - (skipped - skipped_since))
            self._rated.add(id(param))
        self._progress[id(param)] = (group, now, skipped, done, c)
        return done if id(param) in self._rated else None

    def group_sum(self, group: int) -> float | None:
        """Σ r of the group's recorded tensors up to now (their mean), or None without a known rate."""
        done = [d + c * float((self._sums[group] - since) - (self._skipped.get(key, 0.0) - skipped))
                for key, (g, since, skipped, d, c) in self._progress.items() if g == group and c is not None]
        return sum(done) / len(done) if done else None

    def peak_sum(self, rate: float, index: int, step: int, steps: list[range], limit: float) -> float | None:
        """Σ over the run's ``steps`` of ``rate``·s(t), r at the peak LR, with t the schedule index of a step
        (``index`` was that of ``step``); stops once past ``limit``; None where a step comes before the schedule's
        first (the engine was not there yet)."""
        if self._schedule is None or isinstance(self._schedule, Constant):  # s(t) the same at every step
            s = 1.0 if self._schedule is None else check_multiplier(self._schedule, 0)
            return rate * s * sum(len(r) for r in steps)
        total = 0.0
        for r in steps:
            for u in r:
                t = index + u - step
                if t < 0:
                    return None
                total += rate * check_multiplier(self._schedule, t)
                if total > limit:
                    return total
        return total
