"""The probe: measure the decay an optimizer really applies, without moving it.

- ``probe``: :func:`probe`, the measurement; ``report``: what it returns; ``targets``: the tensors it
  measures and in which chunks; ``twin``: a throwaway copy of the optimizer to step;
- ``estimator``: from a tensor before and after the twins' steps to a measured factor;
- ``rounding``: a decay below the dtype's resolution, which the step rounds away;
- ``expectations``: what each group should do, read from the optimizer registry and the engine;
- ``warmup``: :func:`warm_up`, a bounded number of real steps to build state before probing.
"""

from __future__ import annotations

from decaykit.probe.probe import ProbeEntry, ProbeReport, probe
from decaykit.probe.warmup import MAX_STATE_STEPS, warm_up

__all__ = ["MAX_STATE_STEPS", "ProbeEntry", "ProbeReport", "probe", "warm_up"]
