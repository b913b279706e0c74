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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from decaykit._validate import check_number, check_rates
from decaykit.errors import DecayError
from decaykit.optimizers import REGISTRY, OptimizerInfo, info

__all__ = ["COUPLED_TORCH", "Expectation", "expectations", "rate_text", "readable_expectations", "saved_expectation",
           "warmup_lrs"]

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
    # coupled L2 through a plain gradient step (SGD): k of θ ← θ(1 − k·lr·λ) at a step with no momentum carried
    # over (1, or 1 + momentum with nesterov); 0 through an adaptive denominator, where no factor is fixed
    l2_step: float = 0.0

    def factor(self) -> float | torch.Tensor | None:
        """What the decay alone multiplies θ by in one step, where the settings fix it; None where they do not.

        1 − r for decoupled decay (cautious: where it acts); for coupled L2 through a plain gradient step (SGD)
        1 − lr·λ, the same factor (AdamW paper, Prop. 1), at a step with no momentum carried over (momentum 0, or
        the first step; nesterov: 1 − lr·λ·(1 + momentum)). Through an adaptive denominator (Adam) the shrink
        depends on the gradients. A factor <= 0 is no decay: θ changes sign at every such step (zeroed at 0).
        """
        if self.kind in ("decoupled", "cautious"):
            return 1 - self.rate
        if self.kind == "coupled" and self.l2_step and not math.isnan(self.lr):
            return 1 - self.l2_step * self.lr * self.rate
        return None


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


def expectations(optimizer: torch.optim.Optimizer, lrs: Mapping[int, float] | None = None) -> list[Expectation]:
    """One :class:`Expectation` per ``optimizer.param_groups`` entry, from the current settings.

    The LR is read from the group as it is now, so an LR scheduler's current value counts, unless ``lrs`` gives
    the group's index another (:func:`warmup_lrs`). A group whose ``lr`` or ``weight_decay`` is no usable number
    is refused (:class:`DecayError`).
    """
    out = []
    for e in _expectations(optimizer, lrs or {}):
        if isinstance(e, DecayError):
            raise e
        out.append(e)
    return out


def readable_expectations(optimizer: torch.optim.Optimizer) -> list[Expectation | None]:
    """:func:`expectations`, with None for each group whose settings it refuses (every group, where the
    optimizer's own ``expected_decay()`` refuses), for a caller that reports those settings itself (the audit)."""
    return [None if isinstance(e, DecayError) else e for e in _expectations(optimizer, {})]


def saved_expectation(group: Mapping[str, Any], facts: OptimizerInfo | None, i: int) -> Expectation | None:
    """What saved param group ``i`` (of a ``state_dict``, of the class ``facts`` describes) decays by, from its
    settings as :func:`expectations` reads a live group's; None where its settings are refused."""
    try:
        return _expectation(facts.name if facts is not None else "optimizer", facts, i, dict(group), None)
    except DecayError:
        return None


def warmup_lrs(optimizer: torch.optim.Optimizer) -> dict[int, float]:
    """The LR to measure each group at whose LR is 0 now, in a warm-up whose scheduler keeps a base LR above 0
    (``initial_lr``; OneCycleLR's ``max_lr``): {group index: that LR}. A step at lr 0 moves nothing, and the place
    where scripts check their optimizer, right after building it and its scheduler, is where HF's and timm's
    warm-ups hold lr = 0. None for an optimizer whose ``expected_decay()`` reads the LR itself (the engine)."""
    if callable(getattr(optimizer, "expected_decay", None)):
        return {}
    out = {}
    for i, group in enumerate(optimizer.param_groups):
        lr, wd = _scalar(group.get("lr")), _scalar(group.get("weight_decay"))
        if lr != 0 or not wd:
            continue
        base = next((v for k in ("max_lr", "initial_lr") if (v := _scalar(group.get(k))) and v > 0), None)
        if base is not None and math.isfinite(base):
            out[i] = base
    return out


def _scalar(value: Any) -> float | None:
    """A number or a one-element tensor as a float; None for anything else (a per-member λ, None, a bool)."""
    if isinstance(value, torch.Tensor):
        return float(value) if value.numel() == 1 else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _expectations(optimizer: torch.optim.Optimizer, lrs: Mapping[int, float]) -> list[Expectation | DecayError]:
    name = type(optimizer).__name__
    groups = optimizer.param_groups
    described = None
    hook = getattr(optimizer, "expected_decay", None)
    if callable(hook):
        try:
            described = hook()
        except DecayError as refused:
            return [refused] * len(groups)
        if not isinstance(described, (list, tuple)) or len(described) != len(groups):
            return [DecayError(
                f"{name}.expected_decay() must return one dict per param group ({len(groups)}), got {described!r}"
            )] * len(groups)
    # the class whose step the gradient goes through: a decaykit.WeightDecay engine's inner optimizer
    facts = info(getattr(optimizer, "optimizer", None) if described is not None else optimizer)
    out: list[Expectation | DecayError] = []
    for i, group in enumerate(groups):
        try:
            settings = {**group, "lr": lrs[i]} if i in lrs else group
            out.append(_expectation(name, facts, i, settings, None if described is None else described[i]))
        except DecayError as refused:
            out.append(refused)
    return out


def _expectation(name: str, facts: OptimizerInfo | None, i: int, group: dict[str, Any], described: Any) -> Expectation:
    """Group ``i``'s expectation: from ``described`` (its ``expected_decay()`` entry) if given, else its settings."""
    # HF Adafactor's relative_step leaves lr None and computes the step size inside step()
    raw_lr = group.get("lr")
    lr = math.nan if raw_lr is None else float(_number(raw_lr, f"param_groups[{i}]['lr']"))  # type: ignore[arg-type]
    raw_wd = group.get("weight_decay")
    wd = 0.0 if raw_wd is None else _number(raw_wd, f"param_groups[{i}]['weight_decay']")
    maximize = bool(group.get("maximize", False))
    if described is not None:
        kind = described.get("kind") if isinstance(described, dict) else None
        if kind not in _HOOK_KINDS:
            raise DecayError(
                f"{name}.expected_decay()[{i}] must be a dict with 'kind' in {sorted(_HOOK_KINDS)}, got {described!r}"
            )
        rate = _number(described.get("rate", 0.0), f"{name}.expected_decay()[{i}]['rate']")
        kind = "none" if _is_zero(rate) else _HOOK_KINDS[kind]
        fused = bool(group.get("fused")) and described.get("path") == "inner"  # the engine sets the inner decay
        return Expectation(kind, rate, wd, lr, f"{name}.expected_decay(): {kind}, rate {rate_text(rate)}", maximize,
                           fused, _plain_step(facts, group) if kind == "coupled" else 0.0)
    if raw_wd is None:
        return Expectation("none", 0.0, 0.0, lr, f"{name} has no weight_decay setting", maximize)
    if _is_zero(wd):
        return Expectation("none", 0.0, wd, lr, f"{name} group {i}: weight_decay=0", maximize)
    if lr == 0:  # a warm-up from 0: the step moves nothing, so there is no decay to see
        return Expectation("none", 0.0, wd, lr, f"{name} group {i}: lr=0, the next step moves nothing", maximize)
    return _from_settings(name, facts, group, lr, wd, maximize)


def _plain_step(facts: OptimizerInfo | None, group: dict[str, Any]) -> float:
    """k of θ ← θ(1 − k·η·λ) where coupled L2 goes through a plain gradient step θ ← θ − η·g, with no adaptive
    denominator and no decay of its own (torch's SGD), at a step with no momentum carried over: 1, and 1 + μ
    with nesterov (g + μ·buf, buf = g); 0 for any other step."""
    if facts is None or facts.module != "torch.optim" or facts.decay_in() != "coupled" or facts.adaptive \
            or facts.other_decay:
        return 0.0
    return 1.0 + float(group.get("momentum") or 0.0) if group.get("nesterov") else 1.0


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
                           f"{name}: coupled L2, λθ added to the gradient, λ={rate_text(wd)}", maximize,
                           l2_step=_plain_step(facts, group))
    if torch_class:
        where = "its step does not read weight_decay"
    elif facts is not None:
        where = f"not a torch.optim class; {facts.module}'s decays {facts.decay}" + (
            f", {facts.convention}" if facts.convention else "")
    else:
        where = "not a torch.optim class"
    return Expectation("unknown", wd, wd, lr, f"{name} ({where}): weight_decay={rate_text(wd)}", maximize)
