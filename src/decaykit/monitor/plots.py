"""PNG figures of a monitored run (``pip install 'decaykit[plot]'``), one line per tensor:

* ``norm.png``: ‖θ‖ over steps (solid) and its predicted equilibrium (dashed, same colour);
* ``angular_update.png``: the angle per step (solid) and its prediction (dashed), log scale;
* ``decay_to_update.png``: the decay's step over the rest of the update, log scale, with the
  line at 1 above which the decay dominates.

At most :data:`MAX_LINES` tensors are drawn, the largest first, so a big model stays readable. Built
without pyplot, as the sweep's figures are, so a notebook's backend is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from decaykit._render import new_figure, png
from decaykit.errors import DecayError

__all__ = ["MAX_LINES", "write_plots"]

MAX_LINES = 8
_FIGURES = (
    ("norm.png", "norm", "predicted_norm", "‖θ‖ (dashed: predicted equilibrium)", False),
    ("angular_update.png", "angular_update", "predicted_angular_update", "angle per step, rad (dashed: predicted)", True),
    ("decay_to_update.png", "decay_to_update", None, "decay step / rest of the update", True),
)


def _series(records: Sequence[dict[str, Any]], name: str, key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if r["name"] == name and r.get(key) is not None]
    return [s for s, _ in points], [float(v) for _, v in points]


def _tensors(records: Sequence[dict[str, Any]]) -> list[str]:
    size: dict[str, int] = {}
    for r in records:
        size[r["name"]] = int(r.get("numel") or 0)
    return sorted(size, key=lambda n: (-size[n], n))[:MAX_LINES]


def write_plots(records: Sequence[dict[str, Any]], out: str | os.PathLike[str], title: str = "") -> list[Path]:
    """Write the three figures into ``out``; return their paths."""
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DecayError(f"--out {str(out)!r}: cannot create the folder: {exc.strerror or exc}") from None
    names = _tensors(records)
    written = []
    for filename, key, predicted, label, log in _FIGURES:
        fig = new_figure(7, 4.2)
        ax = fig.subplots()
        for i, name in enumerate(names):
            color = f"C{i % 10}"
            ax.plot(*_series(records, name, key), color=color, lw=1.2, label=name)
            if predicted is not None:
                ax.plot(*_series(records, name, predicted), color=color, lw=1.0, ls="--")
        if key == "decay_to_update":
            ax.axhline(1.0, color="k", lw=0.8, ls=":")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.set_title(f"{title}{label}" if title else label, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        path = folder / filename
        path.write_bytes(png(fig))
        written.append(path)
    return written
