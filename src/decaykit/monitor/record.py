"""One tensor's record at one step, measured from θ before and after the optimizer's step.

Only the tensors of decayed groups at recorded steps are copied (once, before the step); the
rest is read from what the step leaves behind: θ, its gradient and the optimizer's state. A
complex tensor is measured as the real coordinates its optimizer updates (``view_as_real``).

- ``norm``: ‖θ‖ after the step;
- ``angular_update``: the angle between θ before and after, 2·atan2(‖a − b‖, ‖a + b‖) of the
  unit vectors a, b (accurate for the tiny angles of a training step); None where one of them is a
  zero tensor, which has no direction (0 where both are);
- ``decay_to_update``: ‖d‖/‖Δθ + d‖, the decay's step d over the rest of the step, where Δθ is
  the actual step. d = r·θ for decoupled decay (exact: the kernel applies θ(1 − r)), r·𝟙·θ for cautious
  decay (its mask read from the step: the coordinates it moved towards 0), and for L2 decay on SGD (what
  the momentum buffer holds of it so far: lr·λ·θ at the buffer's first step, growing to 1/(1 − α) times
  that); d = η·λ·θ/(√v̂ + ε) per coordinate for L2 decay behind Adam's denominator (times RAdam's
  rectification r_t; η·λ·θ while its step has no denominator).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from decaykit._dtensor import is_sharded
from decaykit.monitor.equilibrium import (
    GroupDecay,
    adaptive_denominator,
    predicted_angle,
    predicted_norm,
    real_view,
    rectification,
)

__all__ = ["FIELDS", "held_values", "measure"]

#: the keys of every history record, in the order the CSV sink writes them
FIELDS: tuple[str, ...] = (
    "step", "name", "group", "numel", "lr", "weight_decay", "decay_rate", "timescale_steps", "cumulative_decay",
    "norm", "angular_update", "decay_to_update", "predicted_norm", "predicted_angular_update", "equilibrium",
)


def _work(x: Tensor) -> Tensor:
    # float32 arithmetic for half-precision tensors; float32 and float64 as they are
    return x.float() if x.is_floating_point() and x.element_size() < 4 else x


def _scalar(t: Tensor) -> float:
    """A reduction's value; of a DTensor (FSDP2), over every rank's shard, not this rank's piece alone (a
    collective: every rank records the same tensors at the same steps)."""
    return float(t.full_tensor() if is_sharded(t) else t)


def _norm(x: Tensor) -> float:
    return _scalar(torch.linalg.vector_norm(x))


def _angle(before: Tensor, after: Tensor, norm_before: float, norm_after: float) -> float | None:
    if not math.isfinite(norm_before * norm_after):
        return math.nan
    if norm_before == 0 or norm_after == 0:  # a zero tensor has no direction (LoRA's B at its first step)
        return None if norm_before != norm_after else 0.0
    chord = _norm(torch.add(after, before, alpha=-norm_after / norm_before))  # ‖b − a‖·‖θ_after‖
    across = _norm(torch.add(after, before, alpha=norm_after / norm_before))
    return 2 * math.atan2(chord, across)


def _decay_to_update(decay: GroupDecay, optimizer: Any, param: Tensor, before: Tensor, after: Tensor,
                     norm_before: float, group: dict[str, Any], fill: float) -> tuple[float | None, float | None]:
    """(‖d‖/‖Δθ + d‖, r): the decay's step d over the rest of the step, and the effective rate r (``fill`` of it in
    this step's d: a momentum buffer not yet at its steady state)."""
    if decay.kind == "cautious" and decay.rate is not None:
        return _cautious(decay.rate, before, after)
    if decay.rate is not None:
        return _shrink_ratio(decay.rate * fill, before, after, norm_before), decay.rate
    if not decay.adaptive:
        return None, None
    rect = rectification(optimizer, param, group)
    if rect == 0:  # RAdam's first steps: θ −= η·m̂, no denominator, so λθ acts as on plain SGD
        r = decay.lr * decay.weight_decay
        return _shrink_ratio(r, before, after, norm_before), r
    denom = adaptive_denominator(optimizer, param, group)
    if denom is None:
        return None, None
    scale = decay.lr * decay.weight_decay * rect
    d = _work(before) * scale / denom
    rest = _norm((after - _work(before)).add_(d))
    rms = _scalar((denom - float(group.get("eps", 1e-8))).pow(2).mean().sqrt())
    return _ratio(_norm(d), rest), (scale / rms if rms > 0 else None)


def _shrink_ratio(step: float, before: Tensor, after: Tensor, norm_before: float) -> float:
    """‖d‖/‖Δθ + d‖ for a decay d = ``step``·θ: Δθ + d = θ_after − (1 − step)·θ_before."""
    return _ratio(step * norm_before, _norm(torch.add(after, before, alpha=-(1.0 - step))))


def held_values(grad: Tensor) -> Tensor:
    """A gradient's values: a sparse one's (nn.Embedding(sparse=True)) are the rows it holds."""
    return grad.coalesce().values() if grad.is_sparse else grad


def _cautious(rate: float, before: Tensor, after: Tensor) -> tuple[float, float | None]:
    """Cautious decay shrinks only the coordinates where the update and θ agree in sign. Those are exactly the ones
    the step moved towards 0 or left (Δθ·θ ≤ 0): where they agree, the inner step and the decay both pull θ in, and
    elsewhere the decay is off and the step pushes it out. So the decay d = r·𝟙·θ is read from the step itself, and
    the rate that acts on ‖θ‖² is r times the share of θ² it kept."""
    kept = (after - before).mul_(before) <= 0
    d = before * kept * rate
    total = _scalar(before.square().sum())
    share = _scalar(before.square().mul_(kept).sum()) / total if total > 0 else 1.0
    return _ratio(_norm(d), _norm((after - before).add_(d))), rate * share


def _ratio(size: float, rest: float) -> float:
    if rest > 0:
        return size / rest
    return math.inf if size > 0 else 0.0


def measure(step: int, name: str, index: int, decay: GroupDecay, optimizer: Any, param: Tensor,
            before: Tensor, fill: float = 1.0) -> dict[str, Any]:
    """The history record of ``param`` (θ after the step) given its copy ``before`` the step; ``fill``: the share
    of the steady-state decay this step applies (:func:`~decaykit.monitor.equilibrium.momentum_fill`)."""
    group = optimizer.param_groups[index]
    after, before = _work(real_view(param.detach())), _work(real_view(before))  # complex: its real coordinates
    norm_before, norm = _norm(before), _norm(after)
    angle = _angle(before, after, norm_before, norm)
    ratio, rate = _decay_to_update(decay, optimizer, param, before, after, norm_before, group, fill)
    grad = param.grad
    grad_norm = _norm(held_values(grad)) if grad is not None and decay.family == "sgd" else math.nan
    pred_norm = predicted_norm(decay, rate, after.numel(), grad_norm, norm)
    pred_angle = predicted_angle(decay, rate)
    return {
        "step": step, "name": name, "group": index, "numel": param.numel(), "lr": decay.lr,
        "weight_decay": decay.weight_decay, "decay_rate": rate,
        "timescale_steps": None if rate is None else (1 / rate if rate > 0 else math.inf),
        "cumulative_decay": None,
        "norm": norm, "angular_update": angle, "decay_to_update": ratio,
        "predicted_norm": pred_norm, "predicted_angular_update": pred_angle,
        "equilibrium": angle / pred_angle if pred_angle and angle is not None else None,
    }
