"""What an optimizer's settings say its weight decay should do, one expectation per param group.

Two conventions share the name "weight decay" (Loshchilov & Hutter 2019, "Decoupled Weight
Decay Regularization"):

- coupled L2: λθ is added to the gradient, g ← g + λθ, and then goes wherever the gradient goes
  (through Adam's adaptive denominator too). torch's ``SGD``, ``Adam``, ``RMSprop``, ``Adagrad``,
  ``Adamax``, ``NAdam``, ``RAdam``, ``Adadelta``, ``ASGD`` with ``weight_decay``.
- decoupled: θ ← θ(1 − η·λ) next to the update. torch's ``AdamW``, and ``Adam``/``NAdam``/``RAdam``
  with ``decoupled_weight_decay=True``.

An optimizer that knows better describes itself: ``optimizer.expected_decay()`` returns one dict
per group, ``{"kind": "decoupled" | "coupled_l2" | "cautious" | "none", "rate": r}`` (decaykit's
``WeightDecay`` does). Any other optimizer with a ``weight_decay`` setting is "unknown": the
probe then reports which convention its measured decay follows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from decaykit._validate import check_number, check_rates
from decaykit.errors import DecayError

__all__ = ["COUPLED_TORCH", "Expectation", "expectations", "rate_text"]

# torch.optim classes whose ``weight_decay`` is coupled L2 unless ``decoupled_weight_decay`` is set
COUPLED_TORCH = ("SGD", "Adam", "RMSprop", "Adagrad", "Adamax", "NAdam", "RAdam", "Adadelta", "ASGD")
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
    is_torch = type(optimizer).__module__.startswith("torch.optim")
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
            out.append(Expectation(kind, rate, wd, lr, f"{name}.expected_decay(): {kind}, rate {rate_text(rate)}", maximize))
        elif raw_wd is None:
            out.append(Expectation("none", 0.0, 0.0, lr, f"{name} has no weight_decay setting", maximize))
        elif _is_zero(wd):
            out.append(Expectation("none", 0.0, wd, lr, f"{name} group {i}: weight_decay=0", maximize))
        elif group.get("decoupled_weight_decay") or (is_torch and name == "AdamW"):
            rate = lr * wd
            out.append(Expectation("decoupled", rate, wd, lr,
                                   f"{name}: decoupled, θ·(1 − lr·λ), lr={lr:g}, λ={rate_text(wd)}", maximize))
        elif is_torch and name in COUPLED_TORCH:
            out.append(Expectation("coupled", wd, wd, lr,
                                   f"{name}: coupled L2, λθ added to the gradient, λ={rate_text(wd)}", maximize))
        else:
            out.append(Expectation("unknown", wd, wd, lr,
                                   f"{name} (not a torch.optim class): weight_decay={rate_text(wd)}", maximize))
    return out
