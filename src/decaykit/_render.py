"""The one renderer: plain-text tables, strict JSON, notebook HTML and PNG figures, for every report and command."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from decaykit.errors import DecayError

__all__ = [
    "TONES",
    "Cell",
    "Report",
    "escape",
    "format_table",
    "html_details",
    "html_finding",
    "html_image",
    "html_lines",
    "html_pre",
    "html_report",
    "html_table",
    "new_figure",
    "png",
    "print_json",
    "to_jsonable",
]


class Report:
    """What every result decaykit prints is: plain text, a JSON-able dict, and strict JSON.

    ``str(report)`` is what the command line prints (tables by :func:`format_table`);
    ``report.to_dict()`` is what ``--json`` prints; ``report.to_json()`` is that dict as strict JSON
    (tensors as lists, non-finite floats as null). Plan, AuditReport, ProbeReport, VerifyReport,
    Timescale and SweepResult all render this way, and each has a ``_repr_html_`` built from the
    ``html_*`` functions below, which Jupyter, Colab and VS Code show in place of the text.
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


# -- HTML: what a notebook shows (``_repr_html_``), one markup for every report -------------------
# Inline styles only: JupyterLab, Colab, VS Code and GitHub keep them, some drop <style> blocks.
# Mid-tone colours, so a tone reads on light and dark themes alike.
TONES: dict[str, str] = {
    "good": "#2da44e",
    "bad": "#d1242f",
    "warn": "#bf8700",
    "muted": "#8c959f",
    "accent": "#218bff",
}
_SCROLL_ROWS = 12  # a longer table scrolls inside a box, as pandas truncates: the summary stays in view
_MOST_ROWS = 400  # beyond this the middle rows are left out (a Llama has 3,603 tensors); str() lists them all


@dataclass(frozen=True)
class Cell:
    """A table cell or a line of text with a tone (a key of :data:`TONES`) and optionally bold.

    The value is formatted like a plain-text cell and escaped like any other text.
    """

    value: Any
    tone: str | None = None
    bold: bool = False

    def html(self) -> str:
        text = escape(_cell(self.value))
        style = [f"color:{TONES[self.tone]}"] if self.tone else []
        style += ["font-weight:bold"] if self.bold else []
        return f'<span style="{";".join(style)}">{text}</span>' if style else text


def escape(value: Any) -> str:
    """``value`` as text safe inside HTML: ``<``, ``>``, ``&`` and quotes escaped."""
    return html.escape(str(value), quote=True)


def _inline(value: Any) -> str:
    if isinstance(value, Cell):
        return value.html()
    # counts of parameters run to millions: group the digits, as a reader would write them
    return escape(f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else _cell(value))


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, align: str | None = None,
               most: int = _MOST_ROWS) -> str:
    """``rows`` under ``headers`` as a compact HTML table; cells are values or :class:`Cell`.

    ``align`` as in :func:`format_table`. A table of more than a dozen rows scrolls in its own box;
    one of more than ``most`` rows shows the first and last ones and says how many it left out.

    >>> html_table(["name", "n"], [["<b>", 1]])  # doctest: +ELLIPSIS
    '<table ...<td style="text-align:left">&lt;b&gt;</td><td style="text-align:right">1</td></tr></tbody></table>'
    """
    plain = [[c.value if isinstance(c, Cell) else c for c in row] for row in rows]
    if align is None:
        align = "".join("r" if plain and all(_is_number(r[i]) for r in plain) else "l" for i in range(len(headers)))
    sides = ["right" if a == "r" else "left" for a in align]
    head = "".join(f'<th style="text-align:{s}">{escape(h)}</th>' for h, s in zip(headers, sides))
    def line(row: Sequence[Any]) -> str:
        return "<tr>" + "".join(f'<td style="text-align:{s}">{_inline(v)}</td>' for v, s in zip(row, sides)) + "</tr>"

    if len(rows) > most:
        head_rows, tail_rows = rows[: most - most // 4], rows[len(rows) - most // 4:]
        left_out = len(rows) - len(head_rows) - len(tail_rows)
        gap = Cell(f"… {left_out:,} more rows (print() or to_dict() lists them all) …", "muted").html()
        body = "".join(map(line, head_rows)) + f'<tr><td colspan="{len(headers)}">{gap}</td></tr>' + \
            "".join(map(line, tail_rows))
    else:
        body = "".join(map(line, rows))
    table = (f'<table style="border-collapse:collapse;font-size:0.9em"><thead><tr>{head}</tr></thead>'
             f"<tbody>{body}</tbody></table>")
    if len(rows) > _SCROLL_ROWS:
        return f'<div style="max-height:26em;overflow:auto;display:inline-block">{table}</div>'
    return table


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def html_lines(lines: Sequence[Any]) -> str:
    """Lines of text (values or :class:`Cell`), one per line, escaped."""
    if not lines:
        return ""
    return "<div>" + "<br>".join(_inline(line) for line in lines) + "</div>"


def html_pre(text: str) -> str:
    """Preformatted text (tensors printed side by side), escaped."""
    return f'<pre style="font-size:0.85em;margin:0.3em 0">{escape(text)}</pre>'


def html_finding(severity: str, code: str, message: str, fix: str, params: Sequence[str]) -> str:
    """One audit finding: the severity coloured, the message, the parameters concerned (all, folded), the fix."""
    tone = {"error": "bad", "warning": "warn"}.get(severity, "muted")
    names = ""
    if params:
        shown = ", ".join(f"<code>{escape(p)}</code>" for p in params)
        names = html_details(f"{len(params)} parameter{'s' if len(params) != 1 else ''}", shown, raw=True)
    return (f'<div style="margin:0.4em 0">{Cell(severity, tone, bold=True).html()} <code>{escape(code)}</code>: '
            f"{escape(message)}{names}<div>fix: {escape(fix)}</div></div>")


def html_details(summary: str, body: str, *, raw: bool = False, open: bool = False) -> str:
    """A folded section; ``body`` is escaped unless ``raw`` (markup already built from escaped parts)."""
    inner = body if raw else escape(body)
    return f"<details{' open' if open else ''}><summary>{escape(summary)}</summary>{inner}</details>"


def html_image(png: bytes, alt: str) -> str:
    """A PNG embedded in the page, so the notebook carries it with no file beside it."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}" style="max-width:100%">'


def html_report(title: str | Cell, *parts: str) -> str:
    """The frame every report's ``_repr_html_`` returns: a bold title line, then its parts (markup)."""
    head = title.html() if isinstance(title, Cell) else escape(title)
    return f'<div class="decaykit-report"><div style="font-weight:bold;margin-bottom:0.3em">{head}</div>' \
        + "".join(p for p in parts if p) + "</div>"


def new_figure(width: float, height: float) -> Any:
    """A matplotlib figure made with the object API, not pyplot: drawing it never switches the backend of a
    notebook or a script that uses pyplot itself (``pip install 'decaykit[plot]'``)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise DecayError("plots need matplotlib: pip install 'decaykit[plot]' (or pass --no-plots)") from None
    return Figure(figsize=(width, height), layout="constrained")


def png(figure: Any, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (what the files hold and the notebook embeds)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
