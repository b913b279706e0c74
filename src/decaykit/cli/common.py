"""Pieces every subcommand shares: plain-text tables and JSON output."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["format_table", "print_json", "to_jsonable"]


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


def add_policy_arguments(parser: Any, *, weight_decay: float | None = 1e-4) -> None:
    """The flags that choose which parameters decay, shared by inspect, audit, probe and sweep."""
    from decaykit.presets import PRESETS

    parser.add_argument("--policy", default="decaykit", choices=sorted(PRESETS),
                        help="which rule decides the decay (default: decaykit, from what each parameter is)")
    if weight_decay is not None:
        parser.add_argument("--weight-decay", "--wd", type=float, default=weight_decay, metavar="λ",
                            help=f"weight decay of decayed tensors (default: {weight_decay:g})")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="no decay for these names or globs (repeatable), the seed's skip list")
    parser.add_argument("--rule", action="append", default=[], metavar="SPEC",
                        help="override, first match wins: 'head.*:wd=0', 're:^blocks\\.0\\.:lr_scale=0.1', "
                             "'type:Embedding:mult=0.1' (repeatable)")
    parser.add_argument("--no-decay-embeddings", action="store_true", help="do not decay embedding tables")
    parser.add_argument("--layer-decay", type=float, default=None, metavar="D",
                        help="layer-wise LR decay: lr_scale = D ** (max_layer - layer)")
    parser.add_argument("--strict", action="store_true", help="a rule or exclude that matches nothing is an error")


def policy_options(args: Any) -> dict[str, Any]:
    """The keyword arguments of decaykit.plan / param_groups chosen by add_policy_arguments' flags."""
    return {
        "policy": args.policy,
        "exclude": list(args.exclude),
        "rules": list(args.rule),
        "decay_embeddings": not args.no_decay_embeddings,
        "layer_decay": args.layer_decay,
        "strict": args.strict,
    }
