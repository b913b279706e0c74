"""The one renderer: plain-text tables and strict JSON, for every report and command."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["Report", "format_table", "print_json", "to_jsonable"]


class Report:
    """What every result decaykit prints is: plain text, a JSON-able dict, and strict JSON.

    ``str(report)`` is what the command line prints (tables by :func:`format_table`);
    ``report.to_dict()`` is what ``--json`` prints; ``report.to_json()`` is that dict as strict JSON
    (tensors as lists, non-finite floats as null). Plan, AuditReport, ProbeReport, VerifyReport,
    Timescale and SweepResult all render this way.
    """

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - every report overrides it
        raise NotImplementedError

    def to_json(self) -> str:
        return json.dumps(to_jsonable(self.to_dict()), indent=2, allow_nan=False)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, align: str | None = None) -> str:
    """Render ``rows`` under ``headers`` as aligned plain text.

    ``align`` holds one character per column, ``l`` or ``r``; numbers default to right-aligned.

    >>> print(format_table(["name", "n"], [["a", 1], ["bb", 22]]))
    name   n
    a      1
    bb    22
    """
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    if align is None:
        align = "".join(
            "r" if rows and all(isinstance(r[i], (int, float)) and not isinstance(r[i], bool) for r in rows) else "l"
            for i in range(len(headers))
        )

    def line(values: Sequence[str]) -> str:
        out = [v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(values, widths, align)]
        return "  ".join(out).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in cells)])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if math.isfinite(value) and (abs(value) >= 1e4 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4g}"
    return str(value)


def to_jsonable(value: Any) -> Any:
    """Convert tuples, tensors, dataclasses-as-dicts and non-finite floats into strict JSON values."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "tolist"):
        return to_jsonable(value.tolist())
    return value


def print_json(value: Any, *, stream: TextIO | None = None) -> None:
    json.dump(to_jsonable(value), stream or sys.stdout, indent=2, allow_nan=False)
    (stream or sys.stdout).write("\n")
