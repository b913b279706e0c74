"""Where the monitor's entries go: any callable, JSON lines, CSV or TensorBoard.

An entry is a dict with ``"kind"``: ``"run"`` (once, first: the optimizer and the settings),
``"tensor"`` (a history record) or ``"finding"``. A sink is any callable taking one entry; it may
also have ``flush()`` (called after each recorded step) and ``close()`` (called by
``Monitor.close()``). ``as_sinks`` turns what ``Monitor(sink=...)`` was given into a list:

- a path ending ``.jsonl`` or ``.json``: :class:`JsonLinesSink` (every entry, one JSON object a
  line; what ``decaykit monitor RUN.jsonl`` reads);
- a path ending ``.csv``: :class:`CsvSink` (the history records only, columns
  :data:`decaykit.monitor.record.FIELDS`);
- an object with ``add_scalar`` (``torch.utils.tensorboard.SummaryWriter``): :class:`TensorBoardSink`;
- a callable; or a list of any of these.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from decaykit._render import to_jsonable
from decaykit.errors import DecayError
from decaykit.monitor.record import FIELDS

__all__ = ["SCALARS", "CsvSink", "JsonLinesSink", "TensorBoardSink", "as_sinks"]

Sink = Callable[[dict[str, Any]], None]

#: the record fields written as TensorBoard scalars, one chart per tensor and field
SCALARS: tuple[str, ...] = ("norm", "predicted_norm", "angular_update", "predicted_angular_update",
                            "decay_to_update", "equilibrium")


def _open(path: str | os.PathLike[str], what: str) -> Any:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return open(path, "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise DecayError(f"sink {str(path)!r}: cannot write the {what} file: {exc.strerror or exc}") from None


class JsonLinesSink:
    """Every entry as one JSON object a line (non-finite numbers as ``null``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file = _open(path, "JSON lines")

    def __call__(self, entry: dict[str, Any]) -> None:
        self._file.write(json.dumps(to_jsonable(entry), allow_nan=False) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class CsvSink:
    """The history records as CSV rows, one column per field of :data:`FIELDS`; other entries are skipped."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file = _open(path, "CSV")
        self._writer = csv.DictWriter(self._file, fieldnames=list(FIELDS), extrasaction="ignore")
        self._writer.writeheader()

    def __call__(self, entry: dict[str, Any]) -> None:
        if entry.get("kind") == "tensor":
            self._writer.writerow({k: "" if v is None else v for k, v in entry.items()})

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardSink:
    """Scalars ``decay/<tensor>/<field>`` for :data:`SCALARS`, and findings as text ``decay/findings``.

    ``writer`` is a ``SummaryWriter`` (or anything with ``add_scalar``/``add_text``), or a log
    folder to open one in (needs ``pip install 'decaykit[tensorboard]'``).
    """

    def __init__(self, writer: Any) -> None:
        self._owned = isinstance(writer, (str, os.PathLike))
        if self._owned:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise DecayError("sink: TensorBoard needs tensorboard, which is not installed: "
                                 "pip install 'decaykit[tensorboard]'") from None
            writer = SummaryWriter(os.fspath(writer))
        self.writer = writer

    def __call__(self, entry: dict[str, Any]) -> None:
        kind = entry.get("kind")
        if kind == "tensor":
            for field in SCALARS:
                value = entry.get(field)
                if value is not None:
                    self.writer.add_scalar(f"decay/{entry['name']}/{field}", value, entry["step"])
        elif kind == "finding" and hasattr(self.writer, "add_text"):
            self.writer.add_text("decay/findings", f"[{entry['code']}] {entry['name']}: {entry['message']}",
                                 entry["step"])

    def flush(self) -> None:
        if hasattr(self.writer, "flush"):
            self.writer.flush()

    def close(self) -> None:
        if self._owned:
            self.writer.close()


def as_sinks(sink: Any) -> list[Sink]:
    """The sinks ``Monitor(sink=...)`` names (see the module docstring); a DecayError for anything else."""
    if sink is None:
        return []
    if isinstance(sink, (list, tuple)):
        return [s for item in sink for s in as_sinks(item)]
    if isinstance(sink, (str, os.PathLike)):
        suffix = Path(sink).suffix.lower()
        if suffix in (".jsonl", ".json"):
            return [JsonLinesSink(sink)]
        if suffix == ".csv":
            return [CsvSink(sink)]
        raise DecayError(f"sink must be a path ending .jsonl or .csv, a SummaryWriter or a callable, got {str(sink)!r}; "
                         "name the file RUN.jsonl (read by `decaykit monitor`) or RUN.csv")
    if hasattr(sink, "add_scalar"):
        return [TensorBoardSink(sink)]
    if callable(sink):
        return [sink]
    raise DecayError(f"sink must be a callable, a path ending .jsonl or .csv, or a SummaryWriter, got "
                     f"{type(sink).__name__}")
