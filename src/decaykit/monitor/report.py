"""A monitored run read back from its JSON lines file, and its report: the findings and a table per group.

>>> rows = [{"step": 10, "name": "w", "group": 0, "norm": 2.0, "predicted_norm": 2.0, "equilibrium": 1.0,
...          "decay_to_update": 0.1, "timescale_steps": 100.0, "cumulative_decay": 0.1, "angular_update": 0.01}]
>>> group_summary(rows)[0]["norm_to_predicted"]
1.0
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from decaykit._render import Report, format_table
from decaykit.errors import DecayError

__all__ = ["MonitorRun", "group_summary", "read_run"]


def _median(values: list[Any]) -> float | None:
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.median(kept) if kept else None


def group_summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per param group over ``records`` (usually one step's): medians over its tensors of
    ‖θ‖/predicted, the equilibrium ratio, τ and Σ r, and the largest decay-to-update ratio."""
    by_group: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        by_group.setdefault(r["group"], []).append(r)
    rows = []
    for group, rs in sorted(by_group.items()):
        ratios = [r["norm"] / r["predicted_norm"] for r in rs if r.get("predicted_norm") and r.get("norm") is not None]
        dominated = [r["decay_to_update"] for r in rs if r.get("decay_to_update") is not None]
        rows.append({
            "group": group, "tensors": len({r["name"] for r in rs}), "step": max(r["step"] for r in rs),
            "norm_to_predicted": _median(ratios), "equilibrium": _median([r.get("equilibrium") for r in rs]),
            "angular_update": _median([r.get("angular_update") for r in rs]),
            "decay_to_update_max": max(dominated) if dominated else None,
            "timescale_steps": _median([r.get("timescale_steps") for r in rs]),
            "cumulative_decay": _median([r.get("cumulative_decay") for r in rs]),
        })
    return rows


@dataclass
class MonitorRun(Report):
    """What a monitor wrote: the ``run`` header, the history records and the findings."""

    path: str
    header: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def last_step_summary(self) -> list[dict[str, Any]]:
        """:func:`group_summary` of each group's last recorded step."""
        last: dict[int, int] = {}
        for r in self.records:
            last[r["group"]] = max(last.get(r["group"], r["step"]), r["step"])
        return group_summary([r for r in self.records if r["step"] == last[r["group"]]])

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "run": self.header, "groups": self.last_step_summary(),
                "findings": self.findings, "records": len(self.records), "notes": self.notes}

    def __str__(self) -> str:
        steps = sorted({r["step"] for r in self.records})
        head = (f"{self.path}: {len(self.records)} records of {len({r['name'] for r in self.records})} decayed tensors "
                f"over {len(steps)} recorded steps" + (f" ({steps[0]}..{steps[-1]})" if steps else ""))
        cols = ["group", "tensors", "step", "τ (steps)", "Σ r", "‖θ‖/predicted", "angle/predicted", "max decay/update"]
        rows = [[s["group"], s["tensors"], s["step"], _shown(s["timescale_steps"]), _shown(s["cumulative_decay"]),
                 _shown(s["norm_to_predicted"]), _shown(s["equilibrium"]), _shown(s["decay_to_update_max"])]
                for s in self.last_step_summary()]
        lines = [head, format_table(cols, rows, align="rrrrrrrr")]
        found = [f"step {f['step']}: [{f['code']}] {f['name']}: {f['message']}" for f in self.findings]
        unrated = [s["group"] for s in self.last_step_summary() if s["timescale_steps"] is None]
        healthy = ": weight decay looks healthy" + (
            f" where its rate is known; param groups {unrated} decay at a rate per step decaykit cannot read (coupled L2 "
            "through an adaptive denominator it has no formula for), so their τ and Σ r are not known and not judged"
            if unrated else "")
        lines.append(f"{len(found)} findings" + (":" if found else healthy))
        return "\n".join(lines + found + [f"note: {n}" for n in self.notes])


def _shown(value: float | None) -> Any:
    return "-" if value is None else float(value)


_NEEDED = ("step", "name", "group", "norm")


def _entry(line: str, where: str) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DecayError(f"RUN {where}: not a JSON object ({exc.msg}); is it the .jsonl file a Monitor wrote?",
                         argument="RUN") from None
    if not isinstance(entry, dict) or entry.get("kind") not in ("run", "tensor", "finding"):
        raise DecayError(f"RUN {where}: not a monitor entry (an object with kind run, tensor or finding); is it the "
                         ".jsonl file a Monitor wrote?", argument="RUN")
    missing = [k for k in (_NEEDED if entry["kind"] == "tensor" else ("code", "name", "step", "message")
                           if entry["kind"] == "finding" else ()) if k not in entry]
    if missing:
        raise DecayError(f"RUN {where}: a {entry['kind']} entry without {', '.join(missing)}", argument="RUN")
    return entry


def read_run(path: str | os.PathLike[str]) -> MonitorRun:
    """Read a JSON lines file written by ``Monitor(sink="RUN.jsonl")``; a DecayError naming the line otherwise."""
    shown = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise DecayError(f"RUN {shown!r}: cannot read it: {reason}", argument="RUN") from None
    run = MonitorRun(shown)
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if number == len(lines) and not text.endswith("\n"):
            try:
                json.loads(line)
            except json.JSONDecodeError:  # a run killed mid-write: the entries before it are whole
                run.notes.append(f"line {number}, the last, was cut off mid-write (the run stopped while writing "
                                 "it?) and is skipped; the entries before it are read")
                continue
        entry = _entry(line, f"{shown!r} line {number}")
        kind = entry.pop("kind")
        if kind == "run":
            run.header = entry
        else:
            (run.records if kind == "tensor" else run.findings).append(entry)
    if not run.records and not run.findings:
        raise DecayError(f"RUN {shown!r}: holds no records; the monitor records the first step and every `every`-th "
                         "of the groups whose decay acts (weight_decay > 0 and lr > 0): no step was taken, no group "
                         "decays, or the run was not closed (Monitor.close() reports a decay that lr = 0 stopped)",
                         argument="RUN")
    return run
