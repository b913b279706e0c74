"""What :class:`decaykit.WeightDecay` checks about its groups, η_max, schedule and checkpoints, each refused with a fix.

Numbers go through the one validator (:mod:`decaykit._validate`); this module adds what is
particular to the engine: groups it cannot decay in place, η_max per group, a per-member λ whose
members every parameter must hold along dim 0, and a schedule's output at a given step.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from decaykit._validate import check_number, check_rates
from decaykit.errors import DecayError

__all__ = [
    "check_checkpoint",
    "check_group",
    "check_lambda",
    "check_max_lr",
    "check_member_lambda",
    "check_multiplier",
    "group_peak_lr",
    "short",
]


def check_group(i: int, group: dict[str, Any]) -> None:
    """Refuse a group the engine's in-place decay would break (``differentiable=True``)."""
    if group.get("differentiable", False):
        raise DecayError(
            f"param_groups[{i}] has differentiable=True; the engine's in-place decay is not differentiable, "
            "so build the inner optimizer with differentiable=False"
        )


def check_max_lr(max_lr: Any, n_groups: int) -> float | list[float] | None:
    """``max_lr=`` as given to the engine: None, one η_max > 0 for every group, or one per group."""
    if max_lr is None:
        return None
    values = list(max_lr) if isinstance(max_lr, Sequence) else [max_lr]
    for v in values:
        check_number(v, "max_lr", allow_zero=False, strict_type=True)
    if isinstance(max_lr, Sequence):
        if len(values) != n_groups:
            raise DecayError(f"max_lr has {len(values)} values but the optimizer has {n_groups} param groups")
        return [float(v) for v in values]
    return float(values[0])


def group_peak_lr(group: dict[str, Any]) -> float:
    """η_max read from a group: ``max_lr``, else ``initial_lr``, else ``lr``, else 0."""
    # OneCycleLR stores its peak as max_lr and its start as initial_lr; other schedulers the base LR
    for key in ("max_lr", "initial_lr", "lr"):
        value = group.get(key)
        if isinstance(value, (numbers.Real, Tensor)) and not isinstance(value, bool):
            return float(value)
    return 0.0


def check_lambda(i: int, group: dict[str, Any], cache: dict[int, tuple[Tensor, tuple[int, int], Tensor]]) -> float | Tensor:
    """λ of group ``i``: a float, or a per-member (K,) tensor as float64 on the CPU (:func:`check_member_lambda`).

    A tensor is checked once per value, its check kept in ``cache`` under the group's index: a
    tensor's ``_version`` moves on every in-place change, so a changed λ is checked again.
    """
    lam = group.get("weight_decay", 0.0)
    if isinstance(lam, Tensor) and lam.dim() == 0:
        lam = lam.item()
    elif isinstance(lam, Tensor):
        key = (lam._version, len(group["params"]))
        cached = cache.get(i)
        if cached is not None and cached[0] is lam and cached[1] == key:
            return cached[2]
        values = check_member_lambda(i, group, lam)
        cache[i] = (lam, key, values)
        return values
    return check_number(lam, f"param_groups[{i}]['weight_decay']", strict_type=True)


def check_member_lambda(i: int, group: dict[str, Any], lam: Tensor) -> Tensor:
    """A per-member λ as float64 on the CPU: 1-D, finite, >= 0, and every parameter of the group stacked along dim 0."""
    where = f"param_groups[{i}]['weight_decay']"
    values = check_rates(lam, where)  # rates are computed and checked on the host
    k = values.numel()
    names = group.get("param_names") or []
    for j, p in enumerate(group["params"]):
        if p.dim() == 0 or p.shape[0] != k:
            name = names[j] if j < len(names) else f"param_groups[{i}]['params'][{j}]"
            raise DecayError(
                f"{where} has {k} per-member values, so every parameter of the group needs a leading dim "
                f"of {k} (one slice per stacked model); {name} has shape {tuple(p.shape)}"
            )
    return values


def check_multiplier(schedule: Any, step: int) -> float:
    """s(t), the schedule's λ multiplier at ``step``: a finite number >= 0 (a one-element tensor is read)."""
    value = schedule(step)
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    try:
        return check_number(value, "s(t)", strict_type=True)
    except DecayError:
        raise DecayError(
            f"schedule {schedule!r} returned {value!r} at step {step}; a weight-decay schedule "
            "must return a finite multiplier >= 0"
        ) from None


def check_checkpoint(own: dict[str, Any], key: str, mode: str, schedule: Any, n_groups: int) -> None:
    """The engine's entry ``state_dict[key]`` of a checkpoint fits this engine: its mode, groups and schedule type."""
    if own.get("mode") != mode:
        raise DecayError(
            f"the checkpoint was saved with mode={own.get('mode')!r} but this engine has "
            f"mode={mode!r}; build WeightDecay(..., mode={own.get('mode')!r}) to resume, or "
            f"delete state_dict[{key!r}] to switch modes on purpose"
        )
    if len(own["max_lr"]) != n_groups:
        raise DecayError(f"the checkpoint has η_max for {len(own['max_lr'])} groups but {n_groups} param groups")
    if own["schedule"].get("type") != schedule.state_dict()["type"]:
        raise DecayError(
            f"the checkpoint was saved with a {own['schedule'].get('type')} weight-decay schedule but this "
            f"engine has {schedule!r}; build the engine with the schedule it was saved with"
        )


def short(x: float | Tensor) -> str:
    """λ or a rate for a message: ``0.05``, or the members' values rounded."""
    return f"{x:g}" if isinstance(x, float) else str([round(v, 6) for v in x.tolist()])
