"""decaykit: weight decay in PyTorch made correct, visible and measurable.

>>> import torch, decaykit
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
>>> opt = torch.optim.AdamW(decaykit.param_groups(model, 0.05), lr=1e-3)
>>> [(g["weight_decay"], len(g["params"])) for g in opt.param_groups]
[(0.05, 2), (0.0, 4)]

Public names are imported lazily, so ``import decaykit`` stays cheap and the optional extras
(plots, Optuna, transformers) are only imported by the features that need them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it; the single list of what decaykit exports.
_EXPORTS: dict[str, str] = {
    "DecayError": "decaykit.errors",
    "DecayWarning": "decaykit.errors",
    # the policy: which parameter decays, by how much, and why
    "Decision": "decaykit.policy",
    "Plan": "decaykit.policy",
    "plan": "decaykit.policy",
    "Rule": "decaykit.rules",
    "param_groups": "decaykit.groups",
    "canonical_name": "decaykit.names",
    # checking what an optimizer really does
    "Finding": "decaykit.auditor",
    "AuditReport": "decaykit.auditor",
    "audit": "decaykit.auditor",
    "probe": "decaykit.probing",
    "ProbeReport": "decaykit.probing",
    "verify": "decaykit.verification",
    "VerifyReport": "decaykit.verification",
    # the decay engine
    "WeightDecay": "decaykit.engine",
    "convert": "decaykit.conversion",
    "timescale": "decaykit.conversion",
    "Timescale": "decaykit.conversion",
    "weight_decay_for_timescale": "decaykit.conversion",
    "Schedule": "decaykit.schedules",
    # finding the decay that stops overfitting
    "sweep": "decaykit.sweeps",
    "SweepResult": "decaykit.sweeps",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'decaykit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from decaykit.auditor import AuditReport, Finding, audit
    from decaykit.conversion import Timescale, convert, timescale, weight_decay_for_timescale
    from decaykit.engine import WeightDecay
    from decaykit.errors import DecayError, DecayWarning
    from decaykit.groups import param_groups
    from decaykit.names import canonical_name
    from decaykit.policy import Decision, Plan, plan
    from decaykit.probing import ProbeReport, probe
    from decaykit.rules import Rule
    from decaykit.schedules import Schedule
    from decaykit.sweeps import SweepResult, sweep
    from decaykit.verification import VerifyReport, verify
