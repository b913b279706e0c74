"""Which λ values a sweep tries: a given grid, or a log-range search that zooms in on the best.

The search is deterministic so that it batches, resumes and shares between workers like a grid:
round 0 tries ``points`` values spread log-evenly over [low, high] (plus λ = 0, the baseline);
each later round tries ``points`` values log-evenly between the two neighbours of the best λ
found so far, never leaving [low, high]. Given the same finished trials every worker computes the same next round, and a
resumed search retraces the same rounds, reusing every finished trial.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from decaykit._validate import check_int, check_number
from decaykit.errors import DecayError

__all__ = ["check_seeds", "check_weight_decays", "log_points", "parse_range", "parse_weight_decays", "zoom"]


def _clean(value: float) -> float:
    """Round to 12 significant digits, so 10**-2.5 computed twice is the same key in the store."""
    return float(f"{value:.12g}")


def check_weight_decays(values: Iterable[float] | float, *, argument: str = "weight_decays") -> list[float]:
    """Sorted, distinct, finite, >= 0; a clear error for an empty or negative grid."""
    if isinstance(values, str):
        raise DecayError(f"{argument} must be a list of numbers, got the string {values!r}; pass a list such as "
                         "[0, 0.01, 0.1] (the command line's --wd takes '0,0.01,0.1')", argument=argument)  # fmt: skip
    if isinstance(values, (int, float)):
        values = [values]
    out = []
    for v in values:
        try:
            out.append(check_number(v, argument))
        except DecayError:
            raise DecayError(f"{argument} must be finite numbers >= 0, got {v!r}", argument=argument) from None
    if not out:
        raise DecayError(f"{argument} is empty: give at least one λ, e.g. 0,0.01,0.1,1", argument=argument)
    return sorted(set(out))


def parse_weight_decays(text: str, *, flag: str = "--wd") -> list[float]:
    """``"0,1e-3,0.01"`` → [0.0, 0.001, 0.01]; empty text or an empty item is refused, never skipped
    (``0,,1`` is more likely a lost value than a wish for two)."""
    example = f"e.g. {flag} 0,0.01,0.1,1"
    if not text.strip():
        raise DecayError(f"{flag} is empty (got {text!r}): give comma-separated λ values, {example}, "
                         "or leave the flag out for the task's grid")  # fmt: skip
    values = []
    for i, part in enumerate(text.split(","), start=1):
        if not part.strip():
            raise DecayError(f"{flag} item {i} of {text!r} is empty: give a number between every pair of commas, {example}")
        try:
            values.append(float(part))
        except ValueError:
            raise DecayError(f"{flag} must be comma-separated numbers, got {part.strip()!r} in {text!r}; {example}") from None
        if values[-1] == 0 and any(c in "123456789" for c in part.lower().split("e")[0]):
            raise DecayError(f"{flag} item {part.strip()!r} is below the smallest float and would read as 0: "
                             f"give a λ >= 1e-300, or 0 itself; {example}")  # fmt: skip
    for value in values:
        if not math.isfinite(value) or value < 0:
            raise DecayError(f"{flag} must be finite numbers >= 0, got {value!r} in {text!r}; {example}")
    return check_weight_decays(values, argument=flag)


def parse_range(text: str) -> tuple[float, float]:
    """``"1e-3:10"`` → (0.001, 10.0), with 0 < low < high."""
    try:
        low_text, high_text = text.split(":")
        low, high = float(low_text), float(high_text)
    except ValueError:
        raise DecayError(f"--search must look like LOW:HIGH (e.g. 1e-3:100), got {text!r}") from None
    return check_range(low, high, argument="--search")


def check_range(low: float, high: float, *, argument: str = "search") -> tuple[float, float]:
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
        raise DecayError(f"the search range must satisfy 0 < low < high (a log range), got {low}:{high}",
                         argument=argument)
    return float(low), float(high)


def log_points(low: float, high: float, points: int) -> list[float]:
    """``points`` values from ``low`` to ``high`` inclusive, evenly spaced in log λ."""
    if points == 1:
        return [_clean(math.sqrt(low * high))]
    a, b = math.log10(low), math.log10(high)
    return [_clean(10 ** (a + (b - a) * i / (points - 1))) for i in range(points)]


def zoom(
    tried: Sequence[float], best: float, points: int, bounds: tuple[float, float] | None = None
) -> list[float]:
    """The next round: ``points`` new values around ``best``, between its neighbours among ``tried``.

    Half of them lie between the lower neighbour and ``best``, half between ``best`` and the upper
    one, evenly in log λ. At the edge of what was tried the search looks a factor 10 further, unless
    ``bounds`` (the search range) stops it: then all the points go to the side inside the range.
    """
    positive = sorted(v for v in tried if v > 0)
    if not positive:
        return []
    done = set(tried)
    if best <= 0:  # λ = 0 won: look below the smallest λ tried (or just above it, inside bounds)
        if bounds is None:
            candidates = _interior(positive[0] / 10, positive[0], points)
        else:
            candidates = _interior(positive[0], positive[1], points) if len(positive) > 1 else []
        return [v for v in candidates if v not in done]
    i = positive.index(best)
    low = positive[i - 1] if i > 0 else (None if bounds is not None else best / 10)
    high = positive[i + 1] if i + 1 < len(positive) else (None if bounds is not None else best * 10)
    below = 0 if low is None else (points if high is None else (points + 1) // 2)
    above = points - below if high is not None else 0
    candidates = (_interior(low, best, below) if low is not None else []) + (
        _interior(best, high, above) if high is not None else []
    )
    return [v for v in candidates if v not in done]


def _interior(low: float, high: float, k: int) -> list[float]:
    return log_points(low, high, k + 2)[1:-1] if k > 0 else []


def search_rounds(
    low: float, high: float, points: int, rounds: int, best_of: Callable[[Sequence[float]], float | None]
) -> Iterable[list[float]]:
    """Yield each round's new λ values; ``best_of(tried)`` reads the finished trials between rounds."""
    tried = [0.0, *log_points(low, high, points)]
    yield tried
    for _ in range(rounds - 1):
        best = best_of(tried)
        if best is None:
            return
        new = zoom(tried, best, points, bounds=(low, high))
        if not new:
            return
        tried = sorted({*tried, *new})
        yield new


def check_seeds(seeds: int | Iterable[int]) -> list[int]:
    if isinstance(seeds, bool) or not isinstance(seeds, (int, Iterable)) or isinstance(seeds, str):
        raise DecayError(f"seeds must be a count or a list of integers, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise DecayError(f"seeds must be >= 1, got {seeds}")
        return list(range(seeds))
    out = [check_int(s, "seeds", what="integers") for s in seeds]
    if not out:
        raise DecayError("seeds is empty: give a count (3) or a list ([0, 1, 2])")
    return sorted(set(out))
