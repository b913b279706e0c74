"""The policy: which parameter decays, by how much, and why.

- ``roles``: what a parameter is, from the module that owns it (then its shape);
- ``presets``: the ``"decaykit"`` rule and exact replicas of timm's, HF Trainer's, nanoGPT's, the
  founding notebook's and plain torch's;
- ``rules``: the user's ordered overrides; ``layers``: depth for layer-wise LR decay;
- ``options``: :class:`Policy`, the preset and the overrides as one validated value;
- ``names``: canonical names through DDP / compile / checkpoint / FSDP wrappers;
- ``usage``: how each tensor is used, op by op, in a forward pass on fake tensors; ``tracing``: that
  pass run, and retried where it stops; ``own_input``: the input a model makes for itself;
- ``collect``: every name of every tensor; ``hooks``: the model's ``no_weight_decay()`` hooks;
- ``decide``: one :class:`Decision` per tensor, in precedence order;
- ``plan``: the decisions for a whole model (:func:`plan`) and the optimizer groups made from
  them (:func:`param_groups`, :mod:`groups`).
"""

from __future__ import annotations

from decaykit.policy.names import canonical_name
from decaykit.policy.options import Policy
from decaykit.policy.plan import Conflict, Decision, Plan, RoleConflict, param_groups, plan
from decaykit.policy.presets import PRESETS
from decaykit.policy.rules import Rule

__all__ = ["PRESETS", "Conflict", "Decision", "Plan", "Policy", "RoleConflict", "Rule", "canonical_name", "param_groups",
           "plan"]
