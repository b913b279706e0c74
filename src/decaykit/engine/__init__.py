"""The decay engine: :class:`WeightDecay` drives any torch optimizer's weight decay.

- ``weight_decay``: the engine, an ``Optimizer`` sharing the inner one's groups and state;
  ``paths``: what one step does to one group (plan, then one small object per path);
  ``checks``: what the engine refuses about its groups, η_max, schedule, checkpoints and a λ
  implausible for its mode;
- ``modes``: the decay rules (lr_coupled, lr_independent, corrected, cautious, coupled_l2) and
  their foreach kernels; ``cautious``: the masked decay of Chen et al. 2025;
- ``schedules``: λ over steps (constant, linear, cosine, warmup, piecewise, any callable);
- ``reference``: a plain loop for every mode, one formula each, that the fast engine is tested against.
"""

from __future__ import annotations

from decaykit.engine import reference, schedules
from decaykit.engine.modes import MODES
from decaykit.engine.reference import ReferenceWeightDecay
from decaykit.engine.schedules import Schedule
from decaykit.engine.weight_decay import STATE_KEY, WeightDecay

__all__ = ["MODES", "STATE_KEY", "ReferenceWeightDecay", "Schedule", "WeightDecay", "reference", "schedules"]
