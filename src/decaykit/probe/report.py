"""What :func:`decaykit.probe` returns: one entry per tensor (and per stacked member), and the report."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from decaykit._render import Cell, Report, format_table, html_lines, html_report, html_table

__all__ = ["EMPTY_NOTE", "PATTERN_NOTE", "ProbeEntry", "ProbeReport", "factor_text"]

_LISTED = 20  # notes printed in the summary; the table and to_dict() have them all
PATTERN_NOTE = "all zeros, so measured on a copy filled with a test pattern"
EMPTY_NOTE = "sharded, and this rank holds none of it: the ranks that hold it measure it"


@dataclass
class ProbeEntry:
    """The decay one tensor (or one stacked model's slice of it, ``name[k]``) gets per step.

    ``kind`` is what was measured: ``decoupled`` (shrink proportional to θ), ``coupled``
    (equal to adding λθ to the gradient), ``cautious``, ``none``, ``other`` (neither),
    ``missing`` (a trainable parameter of the model that no group holds), or ``empty`` (a
    sharded tensor with no elements on this rank: nothing measured here). ``measured`` and
    ``expected`` are shrink factors per step (0.9999 means 0.01% smaller each step). A sharded
    tensor (DTensor) is measured on this rank's shard; ``shape`` and ``numel`` stay global.
    ``other_decay`` is the factor by which it shrinks with ``weight_decay=0`` and zero gradients: a decay
    under another setting (ASGD's ``lambd``), not in ``measured``; None when nothing moves it.
    ``other_decay_setting``: the group setting measured to control that decay (with it at 0 too, nothing
    moves the tensor; a ``weight_decay_1d`` for 1-D tensors, say), or "" where none was found. Once the
    optimizer has state, ``other_decay`` is read on a copy with that state reset, and only where such a
    setting is found.
    ``proportional``: the measured change is θ times one factor; False where it is rescaled per coordinate
    (coupled L2 through an adaptive denominator), and ``measured`` is then a least-squares factor.
    ``latent``: frozen by ``requires_grad=False`` with no ``.grad``, so torch's step skips it and nothing moves
    it today; ``measured`` is what the step does to it once its ``.grad`` is a zero tensor.
    ``configured``: the measured decay is the one its group's settings configure. It can be and still not
    agree: a factor <= 0 (the decay overshoots), or a tensor that must not decay (frozen, the policy).
    """

    name: str
    shape: tuple[int, ...]
    kind: str
    measured: float | None
    expected: float | None
    agrees: bool
    note: str = ""
    expected_kind: str = ""
    group: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    numel: int = 0
    frozen: bool = False
    other_decay: float | None = None
    latent: bool = False
    configured: bool = True
    other_decay_setting: str = ""
    proportional: bool = True

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape"] = list(self.shape)
        return out


@dataclass
class ProbeReport(Report):
    """Per-tensor measurements, notes that apply to all of them, and what the probe cost."""

    optimizer: str
    entries: list[ProbeEntry]
    notes: list[str] = field(default_factory=list)
    cost: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(e.agrees for e in self.entries)

    @property
    def disagreements(self) -> list[ProbeEntry]:
        return [e for e in self.entries if not e.agrees]

    def to_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "ok": self.ok, "entries": [e.to_dict() for e in self.entries],
                "notes": list(self.notes), "cost": dict(self.cost)}

    def summary(self) -> list[str]:
        """One line per family of tensors (kind and shrink factor), then the disagreements."""
        families: dict[tuple[str, str], list[ProbeEntry]] = {}
        for e in self.entries:
            exact = e.kind in ("decoupled", "none")  # one factor for the family; coupled varies per tensor
            families.setdefault((e.kind, factor_text(e.measured) if exact else ""), []).append(e)
        lines = []
        for (kind, factor), members in families.items():
            params = sum(e.numel for e in members)
            values = [e.measured for e in members if e.measured is not None and math.isfinite(e.measured)]
            if kind == "none" and factor != "1":  # within the rounding of a half-precision step
                what = f"no decay measurable in one step (factor {factor})"
            elif kind in ("none", "missing", "empty"):
                what = {"none": "unchanged by the decay", "missing": "in no param group",
                        "empty": "no elements on this rank (measured by the ranks that hold them)"}[kind]
            elif not values:
                what = "not measurable"
            elif factor:
                what = f"shrink by {factor} per step"
            else:
                lo, hi = factor_text(min(values)), factor_text(max(values))
                what = f"shrink by {lo} per step" if lo == hi else f"shrink by {lo} .. {hi} per step"
            lines.append(f"{len(members)} tensors ({params:,} parameters): {kind}, {what}")
        bad = self.disagreements
        warned = sum(1 for e in self.entries if e.agrees and "warning: " in e.note)
        verdict = (":" if bad else f", but {warned} warning(s) below" if warned else
                   ": the decay applied is the decay configured")
        lines.append(f"{len(bad)} disagreement(s){verdict}")
        lines += [f"  {e.name}: {e.note}" for e in bad[:_LISTED]]
        lines += [f"  ... and {len(bad) - _LISTED} more (see the table)"] if len(bad) > _LISTED else []
        noted = [e for e in self.entries if e.agrees and e.note and not e.note.startswith((PATTERN_NOTE, EMPTY_NOTE))]
        if noted:
            lines.append(f"{len(noted)} tensor(s) that agree, with a note:")
            lines += [f"  {e.name}: {e.note}" for e in noted[:_LISTED]]
            lines += [f"  ... and {len(noted) - _LISTED} more"] if len(noted) > _LISTED else []
        return lines

    def __str__(self) -> str:

        rows = [[e.name, "x".join(map(str, e.shape)) or "scalar", "" if e.group is None else e.group,
                 e.kind, factor_text(e.measured), e.expected_kind or "-", factor_text(e.expected), "yes" if e.agrees else "NO"]
                for e in self.entries]
        table = format_table(["name", "shape", "group", "kind", "factor", "expected", "factor", "agrees"],
                             rows, align="llrlrlrl")
        cost = self.cost
        lines = [f"decaykit probe: {self.optimizer}, one zero-gradient step on copies "
                 "(factor: θ_next / θ from the decay alone)", table, "", *self.summary()]
        lines += [f"note: {n}" for n in self.notes]
        if cost:
            lines.append(
                f"cost: {cost['twin_steps']} twin steps in {cost['chunks']} chunk(s), {cost['seconds']:.2f} s, "
                f"at most {_size(cost['peak_copy_bytes'])} copied at once "
                f"(parameters + state: {_size(cost['params_state_bytes'])})"
            )
        return "\n".join(lines)


    def _repr_html_(self) -> str:
        """The summary (disagreements coloured), then the per-tensor table in a scrolling box, for notebooks."""
        rows = [[e.name, "x".join(map(str, e.shape)) or "scalar", "" if e.group is None else e.group, e.kind,
                 factor_text(e.measured), e.expected_kind or "-", factor_text(e.expected),
                 Cell("yes", "good") if e.agrees else Cell("NO", "bad", bold=True)] for e in self.entries]
        table = html_table(["name", "shape", "group", "kind", "factor", "expected", "factor", "agrees"], rows,
                           align="llrlrlrl")
        bad = bool(self.disagreements)
        lines: list[Any] = [Cell(line, "bad" if bad and (line.startswith("  ") or "disagreement" in line) else None)
                            for line in self.summary()]
        lines += [f"note: {n}" for n in self.notes]
        title = Cell(f"probe of {self.optimizer}: one zero-gradient step on copies (factor: θ_next / θ from the "
                     "decay alone)", "bad" if bad else "good")
        return html_report(title, html_lines(lines), table)


def factor_text(value: float | None) -> str:
    # 7 digits: a float32 step is exact to about 1e-7, more digits would print rounding noise
    return "-" if value is None else f"{value:.7g}"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
