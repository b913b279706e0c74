"""Watch the decay while training: :class:`Monitor` and what it writes (``decaykit.Monitor``).

- :mod:`~decaykit.monitor.monitor`: ``Monitor``, the hooks on ``optimizer.step`` and the history;
- :mod:`~decaykit.monitor.record`: one tensor measured from θ before and after a step;
- :mod:`~decaykit.monitor.equilibrium`: the effective decay rate, τ and the equilibrium predictions;
- :mod:`~decaykit.monitor.tally`: Σ r over every step the optimizer applied (GradScaler's skips left out);
- :mod:`~decaykit.monitor.findings`: what the monitor tells, once per tensor or group;
- :mod:`~decaykit.monitor.sinks`: JSON lines, CSV, TensorBoard or any callable;
- :mod:`~decaykit.monitor.report`: a run file read back, its findings and per-group table;
- :mod:`~decaykit.monitor.plots`: the PNG figures of ``decaykit monitor RUN.jsonl``.
"""

from __future__ import annotations

from decaykit.monitor.findings import MonitorFinding
from decaykit.monitor.monitor import Monitor
from decaykit.monitor.report import MonitorRun, read_run
from decaykit.monitor.sinks import CsvSink, JsonLinesSink, TensorBoardSink

__all__ = ["CsvSink", "JsonLinesSink", "Monitor", "MonitorFinding", "MonitorRun", "TensorBoardSink", "read_run"]
