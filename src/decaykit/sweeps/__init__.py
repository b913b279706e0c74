"""Sweeps: show and find the weight decay that stops overfitting, fast and resumable.

``decaykit.sweep()`` trains a model for a grid (or a search) of λ over several seeds, many
configurations at once as one stacked model, keeps every finished trial in a store, and
reports the best λ against λ = 0, honestly. Modules, one job each:

- ``data``: the data contract; ``tasks``: what is trained, built in (``digits``, ``ridge``) or yours
- ``settings``: the settings as three frozen values, :class:`Trials`, :class:`Training`, :class:`Execution`
- ``prepare``, ``checks``, ``describe``: settings resolved and input checked before training; the
  sweep's identity and header
- ``grid``: λ grids and the zooming log-range search
- ``metrics``: per-member losses and evaluation
- ``optim``: the policy's groups and the decay engine around the inner optimizer
- ``trainer``: the training loop, and one model trained at a time; ``sanity``: whether a finished trial
  trained (else it is failed, with the reason, and never the best λ)
- ``batched``: K models as stacked tensors (baddbmm layers or ``torch.func.vmap``)
- ``timing``: timing trials of the sweep's own step (stacked or one by one, the thread count)
- ``store``: the Optuna-backed store (claims, results, recovery after a kill)
- ``report``, ``result``, ``plots``, ``progress``: what the user sees
- ``worker``: claims chunks of trials, trains them, writes each back; ``runner``: :func:`run_sweep`, the
  phases over the settings values, and :func:`sweep`, its facade with flat keyword arguments
"""

from __future__ import annotations

from decaykit.sweeps.data import SweepData
from decaykit.sweeps.result import SweepResult
from decaykit.sweeps.runner import run_sweep, sweep
from decaykit.sweeps.settings import Execution, Training, Trials
from decaykit.sweeps.tasks import TASK_NAMES, Task, builtin_task, task_from_user

__all__ = [
    "TASK_NAMES",
    "Execution",
    "SweepData",
    "SweepResult",
    "Task",
    "Training",
    "Trials",
    "builtin_task",
    "run_sweep",
    "sweep",
    "task_from_user",
]
