"""What :func:`decaykit.sweep` returns: per-λ rows, the best λ, every trial, and how the run went."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from decaykit._render import Report
from decaykit.sweeps.report import format_report

__all__ = ["SweepResult"]

# the fields ``--json`` prints, in its order (the trials and the header stay out: the report's detail)
_JSON_FIELDS: tuple[str, ...] = ("results", "best", "task", "settings", "notes", "files", "run")


@dataclass
class SweepResult(Report):
    """The outcome of a sweep.

    ``results``: one dict per λ (ascending) with ``weight_decay``, ``seeds``, ``diverged`` and each
    metric's mean over seeds with its standard deviation beside it (``test_accuracy``,
    ``test_accuracy_std``, …) and ``failed``, the seeds that did not train (``failure``: the first
    reason). ``best``: the best λ among rows whose every seed trained, its range within seed noise
    (``range``, also :attr:`best_range`) and the λ rounded to the digits that range supports
    (``rounded``), its value, the λ = 0 baseline, the gain and whether decay helps beyond seed noise
    (None when no λ trained, or when λ = 0 itself failed: then the setup does not train). ``trials``: every
    (λ, seed) trial with its final metrics and learning curves. ``str(result)`` is the report.
    """

    task: str
    results: list[dict[str, Any]]
    best: dict[str, Any] | None
    trials: list[dict[str, Any]]
    header: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)

    @property
    def best_weight_decay(self) -> float | None:
        return None if self.best is None else self.best["weight_decay"]

    @property
    def best_range(self) -> tuple[float, float] | None:
        """The λ tried next to the best whose objective is within seed noise of it, as (low, high):
        any λ in it is as good as the best as far as the seeds can tell (None: no best λ)."""
        if self.best is None or self.best.get("range") is None:
            return None
        low, high = self.best["range"]
        return float(low), float(high)

    def to_dict(self) -> dict[str, Any]:
        """The JSON the CLI prints with ``--json``: results and best first, then the context."""
        return {name: getattr(self, name) for name in _JSON_FIELDS}

    def plot(self, out: str | os.PathLike[str]) -> dict[str, str]:
        """Write the PNG figures into ``out`` (needs matplotlib) and return their paths."""
        from decaykit.sweeps.plots import write_plots

        self.files = write_plots(
            out,
            self.results,
            self.trials,
            best=self.best,
            title=f"decaykit sweep: {self.task}",
            classification=any(r.get("test_accuracy") is not None for r in self.results),
        )
        return self.files

    def figures(self) -> dict[str, Any]:
        """The figures :meth:`plot` writes, as matplotlib ``Figure`` objects (needs matplotlib)."""
        from decaykit.sweeps.plots import figures

        return figures(self.results, self.trials, best=self.best, title=f"decaykit sweep: {self.task}",
                       classification=any(r.get("test_accuracy") is not None for r in self.results))

    def _repr_html_(self) -> str:
        """The table (best row and failed rows coloured), the verdict, and the metrics figure inline."""
        from decaykit.sweeps.display import sweep_html

        return sweep_html(self)

    def __repr__(self) -> str:
        best = "none" if self.best is None else f"{self.best['weight_decay']:g}"
        return f"SweepResult(task={self.task!r}, weight_decays={len(self.results)}, trials={len(self.trials)}, best={best})"

    def __str__(self) -> str:
        return format_report(self.results, self.best, header=self.header, notes=self.notes, files=self.files,
                             objective=self.settings.get("metric"))
