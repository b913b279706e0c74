"""Weight-decay schedules: a multiplier s(t) of each param group's λ over optimizer steps.

The engine decays with λ_t = s(t)·λ_group at step t (t = 0 for the first step), the way
``LambdaLR`` multiplies the LR, so per-group λ (decayed or not, per-member tensors) keep their
ratios. The LR schedule is separate and composes: ``lr_coupled`` decays by η_t·s(t)·λ.

>>> from decaykit import schedules
>>> s = schedules.cosine(1.0, 10.0, steps=100)     # DINO: λ = 0.04 → 0.4 with weight_decay=0.04
>>> [round(s(t), 3) for t in (0, 50, 100, 200)]
[1.0, 5.5, 10.0, 10.0]
>>> early = schedules.piecewise([1000], [1.0, 0.0])  # decay early only (Golatkar et al. 2019)
>>> early(999), early(1000)
(1.0, 0.0)

Megatron's ``--weight-decay-incr-style constant|linear|cosine`` between ``--start-weight-decay`` and
``--end-weight-decay`` is ``constant()``, ``linear(start, end, steps)``, ``cosine(start, end, steps)``
with ``weight_decay=1.0`` in the groups (or start/end divided by the group's λ).
Every schedule saves its settings in ``state_dict()``; the engine saves the step.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

from decaykit._validate import check_int, check_number
from decaykit.errors import DecayError

__all__ = [
    "Constant",
    "Cosine",
    "FromCallable",
    "Linear",
    "Piecewise",
    "Schedule",
    "Warmup",
    "as_schedule",
    "constant",
    "cosine",
    "from_callable",
    "linear",
    "piecewise",
    "warmup",
]


def _number(name: str, value: Any) -> float:
    return check_number(value, name, strict_type=True)


def _steps(name: str, value: Any) -> int:
    return check_int(value, name, minimum=1, what="a whole number of steps")


class Schedule:
    """A λ multiplier: ``schedule(step) -> float``, plus ``state_dict()`` / ``load_state_dict()``."""

    #: the settings saved by ``state_dict``; subclasses list their constructor arguments
    _fields: tuple[str, ...] = ()

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"type": type(self).__name__}
        for f in self._fields:
            value = getattr(self, f)
            state[f] = value.state_dict() if isinstance(value, Schedule) else value
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("type") != type(self).__name__:
            raise DecayError(
                f"cannot load a {state.get('type')!r} weight-decay schedule into {type(self).__name__}; "
                "build the engine with the schedule the checkpoint was saved with"
            )
        for f in self._fields:
            current = getattr(self, f)
            if isinstance(current, Schedule):
                current.load_state_dict(state[f])
            else:
                setattr(self, f, type(current)(state[f]) if isinstance(current, tuple) else state[f])

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__.lower()}({args})"


class Constant(Schedule):
    """s(t) = value."""

    _fields = ("value",)

    def __init__(self, value: float = 1.0) -> None:
        self.value = _number("constant(value)", value)

    def __call__(self, step: int) -> float:
        return self.value


class _Ramp(Schedule):
    """From ``start`` at t = 0 to ``end`` at t = ``steps``, then ``end``; subclasses give the shape."""

    _fields = ("start", "end", "steps")

    def __init__(self, start: float, end: float, steps: int) -> None:
        name = type(self).__name__.lower()  # the factory the user called: linear(...), cosine(...)
        self.start = _number(f"{name}(start)", start)
        self.end = _number(f"{name}(end)", end)
        self.steps = _steps(f"{name}(steps)", steps)

    def _progress(self, step: int) -> float:
        return min(step, self.steps) / self.steps


class Linear(_Ramp):
    """s(t) = start + (end − start)·min(t, steps)/steps: Megatron's ``linear`` increment style."""

    def __call__(self, step: int) -> float:
        return self.start + (self.end - self.start) * self._progress(step)


class Cosine(_Ramp):
    """s(t) = end + (start − end)·(1 + cos(π·min(t, steps)/steps))/2: DINO's and Megatron's cosine."""

    def __call__(self, step: int) -> float:
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * self._progress(step)))


class Warmup(Schedule):
    """A linear ramp from ``start`` to ``then(0)`` over ``steps``, then ``then`` (shifted by ``steps``)."""

    _fields = ("steps", "start", "then")

    def __init__(self, steps: int, *, start: float = 0.0, then: Schedule | None = None) -> None:
        self.steps = _steps("warmup(steps)", steps)
        self.start = _number("warmup(start)", start)
        self.then = as_schedule(then)

    def __call__(self, step: int) -> float:
        if step >= self.steps:
            return self.then(step - self.steps)
        return self.start + (self.then(0) - self.start) * step / self.steps


class Piecewise(Schedule):
    """Piecewise constant: ``values[i]`` for ``boundaries[i-1] <= t < boundaries[i]``.

    ``len(values) == len(boundaries) + 1``; boundaries strictly increase.
    """

    _fields = ("boundaries", "values")

    def __init__(self, boundaries: Sequence[int], values: Sequence[float]) -> None:
        bounds = tuple(boundaries)
        vals = tuple(_number("piecewise(values)", v) for v in values)
        if len(vals) != len(bounds) + 1:
            raise DecayError(
                f"piecewise needs one more value than boundaries, got {len(bounds)} boundaries and "
                f"{len(vals)} values"
            )
        for b in bounds:
            _steps("piecewise(boundaries)", b)
        if any(b >= c for b, c in itertools.pairwise(bounds)):
            raise DecayError(f"piecewise(boundaries) must strictly increase, got {list(bounds)}")
        self.boundaries, self.values = bounds, vals

    def __call__(self, step: int) -> float:
        for bound, value in zip(self.boundaries, self.values):
            if step < bound:
                return value
        return self.values[-1]


class FromCallable(Schedule):
    """Any ``fn(step) -> float``; its output is checked by the engine at every step.

    A function cannot be saved, so ``state_dict`` records its name only and ``load_state_dict``
    keeps the function the engine was built with; the step itself is restored by the engine.
    """

    def __init__(self, fn: Callable[[int], float]) -> None:
        if not callable(fn):
            raise DecayError(f"schedule must be a Schedule or a callable step -> multiplier, got {fn!r}")
        try:
            inspect.signature(fn).bind(0)
        except TypeError:
            raise DecayError(
                f"schedule {getattr(fn, '__qualname__', fn)}{inspect.signature(fn)} cannot be called as "
                "schedule(step): the engine calls it with one argument, the step t = 0, 1, ...; give it one "
                "parameter (lambda t: ...)"
            ) from None
        except ValueError:  # a builtin without a signature: its first call tells
            pass
        self.fn = fn

    def __call__(self, step: int) -> float:
        return self.fn(step)

    def state_dict(self) -> dict[str, Any]:
        return {"type": "FromCallable", "name": getattr(self.fn, "__qualname__", repr(self.fn))}

    def __repr__(self) -> str:
        return f"from_callable({getattr(self.fn, '__qualname__', self.fn)!r})"


constant = Constant
linear = Linear
cosine = Cosine
warmup = Warmup
piecewise = Piecewise
from_callable = FromCallable


def as_schedule(schedule: Schedule | Callable[[int], float] | None) -> Schedule:
    """``None`` → ``constant(1.0)``; a :class:`Schedule` → itself; any other callable → ``from_callable``."""
    if schedule is None:
        return Constant(1.0)
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, (int, float)):
        raise DecayError(
            f"schedule must be a Schedule or a callable step -> multiplier, got the number {schedule!r}; "
            "a constant λ belongs in the param groups' weight_decay"
        )
    return FromCallable(schedule)
