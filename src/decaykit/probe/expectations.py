"""What an optimizer's settings say its weight decay should do, one expectation per param group.

Two conventions share the name "weight decay" (Loshchilov & Hutter 2019, "Decoupled Weight
Decay Regularization"):

- coupled L2: λθ is added to the gradient, g ← g + λθ, and then goes wherever the gradient goes
  (through Adam's adaptive denominator too). torch's ``SGD``, ``Adam``, ``RMSprop``, ``Adagrad``,
  ``Adamax``, ``NAdam``, ``RAdam``, ``Adadelta``, ``ASGD`` with ``weight_decay``.
- decoupled: θ ← θ(1 − η·λ) next to the update. torch's ``AdamW``, ``Adafactor``, ``Muon``, and
  ``Adam``/``NAdam``/``RAdam`` with ``decoupled_weight_decay=True``.

Which class does which is read from :mod:`decaykit.optimizers`, for exact ``torch.optim`` classes.
An optimizer that knows better describes itself: ``optimizer.expected_decay()`` returns one dict
per group, ``{"kind": "decoupled" | "coupled_l2" | "cautious" | "none", "rate": r}`` (decaykit's
``WeightDecay`` does). Any other optimizer with a ``weight_decay`` setting is "unknown" (a
third-party class's rate may hang on its own settings and step size), unless its group says
``decoupled_weight_decay=True``: the probe then reports which convention its measured decay follows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from decaykit._validate import check_number, check_rates
from decaykit.errors import DecayError
from decaykit.optimizers import REGISTRY, OptimizerInfo, info

__all__ = ["COUPLED_TORCH", "Expectation", "expectations", "rate_text"]

#: torch.optim classes whose ``weight_decay`` is coupled L2 unless ``decoupled_weight_decay`` is set
COUPLED_TORCH: tuple[str, ...] = tuple(e.name for e in REGISTRY.values() if e.module == "torch.optim"
                                       and e.decay_in() == "coupled")
_HOOK_KINDS = {"decoupled": "decoupled", "coupled_l2": "coupled", "cautious": "cautious", "none": "none"}


@dataclass(frozen=True)
class Expectation:
    """What one param group's next zero-gradient step should do to its parameters.

    ``kind`` is ``decoupled`` (θ ← θ(1 − rate)), ``coupled`` (g ← g + rate·θ), ``cautious``
    (decoupled where update and θ agree in sign), ``none`` or ``unknown``. ``rate`` is a float,
    or a 1-D tensor with one value per stacked model (leading dimension of every parameter).
    ``weight_decay`` and ``lr`` are the group's settings, ``source`` says where the expectation
    comes from, for messages.
    """

    kind: str
    rate: float | torch.Tensor
    weight_decay: float | torch.Tensor
    lr: float
    source: str
    maximize: bool = False
    # the decay is computed inside a fused kernel with the update and rounded once with it (fused=True AdamW),
    # not as a pass of its own: a zero-gradient step cannot show how much of it real updates keep
    fused: bool = False


def rate_text(rate: float | torch.Tensor) -> str:
    if isinstance(rate, torch.Tensor):
        return "[" + ", ".join(f"{v:g}" for v in rate.tolist()) + "]"
    return f"{rate:g}"


def _number(value: Any, what: str) -> float | torch.Tensor:
    if isinstance(value, torch.Tensor) and value.numel() > 1:
        return check_rates(value.flatten(), what)
    return check_number(value, what)


def _is_zero(rate: float | torch.Tensor) -> bool:
    return bool((rate == 0).all()) if isinstance(rate, torch.Tensor) else rate == 0


def expectations(optimizer: torch.optim.Optimizer) -> list[Expectation]:
    """One :class:`Expectation` per ``optimizer.param_groups`` entry, from the current settings.

    The LR is read from the group as it is now, so an LR scheduler's current value counts.
    """
    name = type(optimizer).__name__
    groups = optimizer.param_groups
    described = None
    hook = getattr(optimizer, "expected_decay", None)
    if callable(hook):
        described = hook()
        if not isinstance(described, (list, tuple)) or len(described) != len(groups):
            raise DecayError(
                f"{name}.expected_decay() must return one dict per param group ({len(groups)}), got {described!r}"
            )
    facts = info(optimizer)
    out = []
    for i, group in enumerate(groups):
        # HF Adafactor's relative_step leaves lr None and computes the step size inside step()
        raw_lr = group.get("lr")
        lr = math.nan if raw_lr is None else float(_number(raw_lr, f"param_groups[{i}]['lr']"))  # type: ignore[arg-type]
        raw_wd = group.get("weight_decay")
        wd = 0.0 if raw_wd is None else _number(raw_wd, f"param_groups[{i}]['weight_decay']")
        maximize = bool(group.get("maximize", False))
        if described is not None:
            entry = described[i]
            kind = entry.get("kind") if isinstance(entry, dict) else None
            if kind not in _HOOK_KINDS:
                raise DecayError(
                    f"{name}.expected_decay()[{i}] must be a dict with 'kind' in "
                    f"{sorted(_HOOK_KINDS)}, got {entry!r}"
                )
            rate = _number(entry.get("rate", 0.0), f"{name}.expected_decay()[{i}]['rate']")
            kind = "none" if _is_zero(rate) else _HOOK_KINDS[kind]
            fused = bool(group.get("fused")) and entry.get("path") == "inner"  # the engine sets the inner decay
            out.append(Expectation(kind, rate, wd, lr, f"{name}.expected_decay(): {kind}, rate {rate_text(rate)}", maximize,
                                   fused))
        elif raw_wd is None:
            out.append(Expectation("none", 0.0, 0.0, lr, f"{name} has no weight_decay setting", maximize))
        elif _is_zero(wd):
            out.append(Expectation("none", 0.0, wd, lr, f"{name} group {i}: weight_decay=0", maximize))
        elif lr == 0:  # a warm-up from 0: the step moves nothing, so there is no decay to see
            out.append(Expectation("none", 0.0, wd, lr, f"{name} group {i}: lr=0, the next step moves nothing",
                                   maximize))
        else:
            out.append(_from_settings(name, facts, group, lr, wd, maximize))
    return out


def _from_settings(name: str, facts: OptimizerInfo | None, group: dict[str, Any], lr: float,
                   wd: float | torch.Tensor, maximize: bool) -> Expectation:
    """A group with weight_decay > 0 and no ``expected_decay()``: the registry's convention, where it fixes one.

    A third-party entry stays "unknown": its rate may hang on settings and step sizes of its own.
    """
    torch_class = facts is not None and facts.module == "torch.optim"
    if torch_class:
        kind = facts.decay_in(group)  # type: ignore[union-attr]
    else:
        kind = "decoupled" if facts is None and group.get("decoupled_weight_decay") else "unknown"
    if kind == "decoupled":
        return Expectation("decoupled", lr * wd, wd, lr,
                           f"{name}: decoupled, θ·(1 − lr·λ), lr={lr:g}, λ={rate_text(wd)}", maximize,
                           bool(group.get("fused")))
    if kind == "coupled":
        return Expectation("coupled", wd, wd, lr,
                           f"{name}: coupled L2, λθ added to the gradient, λ={rate_text(wd)}", maximize)
    if torch_class:
        where = "its step does not read weight_decay"
    elif facts is not None:
        where = f"not a torch.optim class; {facts.module}'s decays {facts.decay}" + (
            f", {facts.convention}" if facts.convention else "")
    else:
        where = "not a torch.optim class"
    return Expectation("unknown", wd, wd, lr, f"{name} ({where}): weight_decay={rate_text(wd)}", maximize)
