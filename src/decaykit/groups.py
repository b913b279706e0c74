"""Optimizer param groups from a plan: merged, deterministic, named, each tensor exactly once.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
>>> groups = param_groups(model, 0.05)
>>> [(g["weight_decay"], g["param_names"]) for g in groups]
[(0.05, ['0.weight', '2.weight']), (0.0, ['0.bias', '1.weight', '1.bias', '2.bias'])]
>>> opt = torch.optim.AdamW(groups, lr=1e-3)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from decaykit.errors import DecayError
from decaykit.rules import check_number

__all__ = ["build_groups", "param_groups"]


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


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    lr: float | None = None,
    policy: str = "decaykit",
    rules: Iterable[Any] | None = None,
    exclude: Iterable[str] | str | None = None,
    decay_embeddings: bool = True,
    layer_decay: float | None = None,
    layer_of: Mapping[str, int] | Callable[[str], int | None] | None = None,
    tied: str = "first",
    strict: bool = False,
) -> list[dict[str, Any]]:
    """Param groups for any ``torch.optim`` optimizer, made from :func:`decaykit.plan`.

    ``torch.optim.AdamW(decaykit.param_groups(model, 0.05), lr=1e-3)`` just works. Frozen
    parameters are left out, tied tensors appear once, groups with equal settings are merged.
    The keyword arguments are :func:`decaykit.plan`'s, plus ``lr`` (see :func:`build_groups`).
    """
    from decaykit.policy import plan

    decided = plan(
        model,
        weight_decay,
        policy=policy,
        rules=rules,
        exclude=exclude,
        decay_embeddings=decay_embeddings,
        layer_decay=layer_decay,
        layer_of=layer_of,
        tied=tied,  # type: ignore[arg-type]
        strict=strict,
    )
    return decided.groups(lr=lr)
