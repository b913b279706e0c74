"""A sweep's result in a notebook: the table with its best and failed rows coloured, the verdict,
and the metrics figure embedded, so the notebook carries it with no file beside it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from decaykit._render import Cell, html_details, html_image, html_lines, html_report, html_table, png
from decaykit.errors import DecayError
from decaykit.sweeps.report import results_cells, table_names, trained, verdict

if TYPE_CHECKING:
    from decaykit.sweeps.result import SweepResult

__all__ = ["sweep_html"]


def _table(rows: Sequence[Mapping[str, Any]], best: float | None) -> str:
    headers, body, align = results_cells(rows, table_names(rows), best)
    marked = []
    for row, cells in zip(rows, body):
        if best is not None and row["weight_decay"] == best:
            marked.append([Cell(c, "good", bold=True) for c in cells])
        elif not trained(row):
            marked.append([*cells[:-1], Cell(cells[-1], "bad", bold=True)])
        else:
            marked.append(cells)
    return html_table(headers, marked, align=align)


def _tone(line: str) -> str | None:
    if line.startswith("verdict: weight decay helps"):
        return "good"
    if line.startswith(("verdict: the setup does not train", "verdict: no λ", "every λ diverged")):
        return "bad"
    if line.startswith(("verdict:", "too much decay", "the best λ is the largest")):
        return "warn"
    return None


def _figure(result: SweepResult) -> str:
    try:

        figure = result.figures()["metrics"]
    except DecayError as exc:  # no matplotlib: the table and verdict still show
        return html_lines([Cell(str(exc), "muted")])
    return html_image(png(figure), f"decaykit sweep {result.task}: metrics against weight decay")


def sweep_html(result: SweepResult) -> str:
    """``SweepResult._repr_html_``: verdict first, then the table, the figure, the notes and the settings."""
    best = None if result.best is None else result.best["weight_decay"]
    said = verdict(result.best, result.results, result.settings.get("metric"))
    lines = [Cell(line, _tone(line), bold=line.startswith("verdict")) for line in said]
    notes = [f"note: {n}" for n in result.notes]
    if result.files:
        notes.append("plots: " + ", ".join(result.files.values()))
    # the header's first line is the title above; the rest say what was trained, folded away
    settings = html_details("settings", html_lines(result.header[1:]), raw=True) if result.header else ""
    return html_report(f"decaykit sweep: {result.task}", html_lines(lines), _table(result.results, best),
                       _figure(result), html_lines(notes), settings)
