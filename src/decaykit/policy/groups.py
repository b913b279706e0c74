"""Optimizer param groups from a plan's decisions: merged, deterministic, named, each tensor exactly once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from decaykit._validate import check_number
from decaykit.errors import DecayError

__all__ = ["build_groups"]


def build_groups(decisions: Sequence[Any], lr: float | None = None) -> list[dict[str, Any]]:
    """One group per distinct ``(weight_decay, lr_scale)``, in order of first appearance.

    Each group carries ``params``, ``param_names`` (kept by torch optimizers in their
    ``state_dict``), ``weight_decay`` and ``lr_scale``; with ``lr`` given, also ``lr = lr * lr_scale``
    (timm's schedulers apply ``lr_scale`` themselves, torch's need the ``lr``).
    """
    if lr is not None:
        lr = check_number(lr, "lr")
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for d in decisions:
        if not d.trainable:
            continue
        group = groups.get((d.weight_decay, d.lr_scale))
        if group is None:
            group = {"params": [], "param_names": [], "weight_decay": d.weight_decay, "lr_scale": d.lr_scale}
            if lr is not None:
                group["lr"] = lr * d.lr_scale
            groups[(d.weight_decay, d.lr_scale)] = group
        group["params"].append(d.param)
        group["param_names"].append(d.name)
    if not groups:
        raise DecayError("the model has no trainable parameters (all have requires_grad=False): nothing to optimize")
    return list(groups.values())
