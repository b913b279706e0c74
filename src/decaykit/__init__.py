"""decaykit: weight decay in PyTorch made correct, visible and measurable.

>>> import torch, decaykit
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
>>> opt = torch.optim.AdamW(decaykit.param_groups(model, 0.05), lr=1e-3)
>>> [(g["weight_decay"], len(g["params"])) for g in opt.param_groups]
[(0.05, 2), (0.0, 4)]

This module is the one public surface. The core (policy, engine, probe, verify, audit, convert)
depends on torch only and is imported with the package; the sweep (which needs the ``sweep``
extra when it runs its built-in tasks) and the documented submodules are imported on first use,
so ``import decaykit`` never imports Optuna, matplotlib, transformers or Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The functions named like their modules (audit, convert, probe, verify) are bound here after
# their modules are imported, so ``decaykit.audit`` is the function, not the module.
from decaykit.audit import AuditReport, Finding, audit
from decaykit.convert import Timescale, convert, timescale, weight_decay_for_timescale
from decaykit.engine import Schedule, WeightDecay
from decaykit.errors import DecayError, DecayWarning
from decaykit.monitor import Monitor
from decaykit.policy import Decision, Plan, Policy, Rule, canonical_name, param_groups, plan
from decaykit.probe import ProbeReport, probe
from decaykit.verify import VerifyReport, verify

__version__ = "0.1.0"

# Imported on first use: name -> module that defines it.
_LAZY: dict[str, str] = {
    "sweep": "decaykit.sweeps",
    "SweepResult": "decaykit.sweeps",
}
# Documented public submodules, reachable as attributes: ``from decaykit import schedules``.
_SUBMODULES: dict[str, str] = {
    "schedules": "decaykit.engine.schedules",
    "models": "decaykit.models",
    "optimizers": "decaykit.optimizers",
    "sweeps": "decaykit.sweeps",
    "integrations": "decaykit.integrations",
}

__all__ = [
    "AuditReport",
    "DecayError",
    "DecayWarning",
    "Decision",
    "Finding",
    "Monitor",
    "Plan",
    "Policy",
    "ProbeReport",
    "Rule",
    "Schedule",
    "SweepResult",
    "Timescale",
    "VerifyReport",
    "WeightDecay",
    "audit",
    "canonical_name",
    "convert",
    "param_groups",
    "plan",
    "probe",
    "sweep",
    "timescale",
    "verify",
    "weight_decay_for_timescale",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(_SUBMODULES[name])
    else:
        raise AttributeError(f"module 'decaykit' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from decaykit.engine import schedules
    from decaykit.sweeps import SweepResult, sweep
