"""Build an optimizer's state (momentum, moments) before a probe, with a bounded number of real steps.

>>> import torch
>>> p = torch.nn.Parameter(torch.ones(3))
>>> opt = torch.optim.Adam([p], lr=1e-3)
>>> warm_up(opt, 2)
>>> int(opt.state[p]["step"])
2

The steps are real: they move the parameters, on stand-in gradients drawn from a seeded
generator. Their only purpose is the state a probe differences away, so a few suffice; a long
run is bounded by :data:`MAX_STATE_STEPS`: after it Adam's bias corrections are within
0.999^10000 ≈ 5e-5 of their limits, and more steps would change nothing the probe measures.
"""

from __future__ import annotations

import torch

from decaykit._validate import check_int
from decaykit.errors import DecayError

__all__ = ["MAX_STATE_STEPS", "check_state_steps", "warm_up"]

#: the most stand-in steps :func:`warm_up` takes (and ``decaykit probe --state-steps``)
MAX_STATE_STEPS = 10_000


def warm_up(optimizer: torch.optim.Optimizer, steps: int, *, seed: int = 0) -> None:
    """Take ``steps`` real steps of ``optimizer`` on seeded random gradients, for its trainable parameters.

    Raises :class:`DecayError` above :data:`MAX_STATE_STEPS` rather than run for hours.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise DecayError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    steps = check_state_steps(steps)
    generator = torch.Generator().manual_seed(check_int(seed, "seed"))
    params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        optimizer.step()


def check_state_steps(steps: int, argument: str = "state_steps") -> int:
    """``steps`` as a count from 0 to :data:`MAX_STATE_STEPS`, else a DecayError naming ``argument``
    (the CLI checks ``--state-steps`` with it before it builds the model)."""
    steps = check_int(steps, argument)
    if steps > MAX_STATE_STEPS:
        raise DecayError(f"{argument} must be <= {MAX_STATE_STEPS} (real optimizer steps on stand-in gradients, "
                         f"only to build momentum and moments; Adam's bias correction is settled after "
                         f"{MAX_STATE_STEPS}), got {steps}; use fewer steps", argument=argument)
    return steps
