"""The policy: which parameter decays, by how much, and why.

- ``roles``: what a parameter is, from the module that owns it (then its shape);
- ``presets``: the ``"decaykit"`` rule and exact replicas of timm's, HF Trainer's, nanoGPT's, the
  founding notebook's and plain torch's;
- ``rules``: the user's ordered overrides; ``layers``: depth for layer-wise LR decay;
- ``names``: canonical names through DDP / compile / checkpoint / FSDP wrappers;
- ``plan``: one :class:`Decision` per tensor (:func:`plan`) and the optimizer groups made from
  them (:func:`param_groups`, :mod:`groups`).
"""

from __future__ import annotations

from decaykit.policy.names import canonical_name
from decaykit.policy.plan import Conflict, Decision, Plan, param_groups, plan
from decaykit.policy.presets import PRESETS
from decaykit.policy.rules import Rule

__all__ = ["PRESETS", "Conflict", "Decision", "Plan", "Rule", "canonical_name", "param_groups", "plan"]
