"""The optimizer a sweep trains with: decaykit's policy decides which parameters decay, the engine applies λ.

One model (trained one by one) gets ``WeightDecay(inner(param_groups(model, λ)), mode=mode)``.
K stacked models get the same groups built from the policy's decision for each member, with
each group's ``weight_decay`` a tensor ``[λ_1 … λ_K]``: the engine decays member k of every
stacked parameter (dim 0) by its own λ_k, which equals K separate scalar runs.

The inner optimizer's own decay is off; the engine's ``mode`` says what λ means
(``lr_coupled``: torch AdamW's θ ← θ(1 − ηλ); ``coupled_l2``: g ← g + λθ, the L2 penalty).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from decaykit.errors import DecayError
from decaykit.optimizers import by_cli_name
from decaykit.policy.names import namer
from decaykit.policy.options import Policy
from decaykit.policy.plan import param_groups

__all__ = ["INNER_OPTIMIZERS", "as_policy", "build_optimizer", "decay_plan", "describe_optimizer"]

# the registry's CLI names of the inner optimizers a sweep builds; "adamw" and "adam" differ only in
# their decay, which the engine owns
INNER_OPTIMIZERS: tuple[str, ...] = ("adamw", "adam", "sgd")

OptimizerSpec = str | Callable[..., torch.optim.Optimizer]


def as_policy(policy: str | Policy | Mapping[str, Any]) -> Policy:
    """The sweep's ``policy`` as a :class:`decaykit.Policy`: a preset name, a ``Policy``, or the keyword
    arguments of :func:`decaykit.param_groups` (``policy``, ``rules``, ``exclude``, ``layer_decay``, …)."""
    if not isinstance(policy, (str, Policy, Mapping)):
        raise DecayError(
            f"policy must be a policy name or a dict of param_groups options (or a decaykit.Policy), "
            f"got {type(policy).__name__}"
        )
    return Policy.of(policy)


def decay_plan(model: nn.Module, weight_decay: float, policy: str | Policy | Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """``{parameter name: (weight_decay, lr_scale)}`` for the trainable parameters of ``model``, per the policy."""
    out: dict[str, tuple[float, float]] = {}
    canonical = namer(model)
    for group in param_groups(model, weight_decay, policy=as_policy(policy)):
        for name in group["param_names"]:
            out[canonical(name)] = (float(group["weight_decay"]), float(group.get("lr_scale", 1.0)))
    return out


def _inner(
    spec: OptimizerSpec, groups: list[dict[str, Any]], lr: float, momentum: float, fused: bool
) -> torch.optim.Optimizer:
    if callable(spec):
        try:
            opt = spec(groups, lr=lr)
        except TypeError as exc:
            raise DecayError(
                f"optimizer={spec!r} must accept (param_groups, lr=...) and return a torch optimizer ({exc})"
            ) from exc
        if not isinstance(opt, torch.optim.Optimizer):
            raise DecayError(f"optimizer={spec!r} returned a {type(opt).__name__}, not a torch.optim.Optimizer")
        return opt  # the groups keep their λ: the engine reads it and switches the inner decay off
    if spec in ("adamw", "adam"):
        cls = by_cli_name(spec).torch_class()
        # fused: one kernel per step instead of a dozen foreach passes, ~5x faster on CPU
        return cls(groups, lr=lr, weight_decay=0.0, fused=fused or None)
    if spec == "sgd":
        return by_cli_name(spec).torch_class()(groups, lr=lr, momentum=momentum, weight_decay=0.0)
    raise DecayError(f"optimizer must be one of {', '.join(INNER_OPTIMIZERS)} or a function, got {spec!r}")


def _can_fuse(params: Sequence[Tensor]) -> bool:
    return all(p.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16) for p in params) and all(
        p.device.type in ("cpu", "cuda") for p in params
    )


def build_optimizer(
    named_params: Mapping[str, Tensor],
    member_plans: Sequence[Mapping[str, tuple[float, float]]],
    *,
    optimizer: OptimizerSpec,
    lr: float,
    momentum: float,
    mode: str,
) -> torch.optim.Optimizer:
    """The engine over the inner optimizer, with one group per distinct per-member (λ vector, lr_scale).

    ``named_params`` are the trainable tensors; with K members each has K in dim 0 and
    ``member_plans[k]`` is member k's :func:`decay_plan`. With one member, plain float decay.
    """
    from decaykit.engine.weight_decay import WeightDecay

    stacked = len(member_plans) > 1
    groups: dict[tuple[tuple[float, ...], float], dict[str, Any]] = {}
    for name, tensor in named_params.items():
        decays, scales = zip(*(plan.get(name, (0.0, 1.0)) for plan in member_plans))
        if len(set(scales)) != 1:  # the policy never varies lr_scale with λ; guard against a future one that does
            raise DecayError(f"parameter {name!r} gets a different lr_scale per member; cannot stack it")
        key = (tuple(decays), scales[0])
        group = groups.get(key)
        if group is None:
            wd: float | Tensor = decays[0]
            if stacked and len(set(decays)) > 1:
                wd = torch.tensor(decays, dtype=torch.float64)
            group = {"params": [], "param_names": [], "weight_decay": wd, "lr_scale": scales[0], "lr": lr * scales[0]}
            groups[key] = group
        group["params"].append(tensor)
        group["param_names"].append(name)
    if not groups:
        raise DecayError("the model has no trainable parameters: nothing to sweep")
    params = [p for g in groups.values() for p in g["params"]]
    inner = _inner(optimizer, list(groups.values()), lr, momentum, fused=_can_fuse(params))
    try:
        # a sweep measures what each λ does on purpose; check_shrink already warned about implausible ones
        return WeightDecay(inner, mode=mode, allow_large_decay=True)
    except DecayError:
        raise
    except (ValueError, TypeError) as exc:
        raise DecayError(f"the decay engine refused the settings (mode={mode!r}): {exc}") from exc


def describe_optimizer(optimizer: OptimizerSpec, lr: float, momentum: float, mode: str) -> str:
    if callable(optimizer):
        name = getattr(optimizer, "__qualname__", type(optimizer).__name__)
    else:
        name = by_cli_name(optimizer).name if optimizer in INNER_OPTIMIZERS else str(optimizer)
    extra = f", momentum {momentum:g}" if optimizer == "sgd" and momentum else ""
    return f"{name} (lr {lr:g}{extra}), decay mode {mode}"
