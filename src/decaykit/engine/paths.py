"""How one step of :class:`decaykit.WeightDecay` decays one group: a plan, then one small object per path.

:func:`plan_group` decides, from the group's λ_t, η_t, η_max and what the inner optimizer's own
``weight_decay`` does, a :class:`GroupStep`: the path, the rate r, and the group keys to set while
the inner optimizer steps. :func:`build_paths` turns the plans into path objects, cheapest first:

- ``none`` (:class:`NoDecay`): the inner optimizer's own decay is switched off, nothing else.
- ``inner`` (:class:`InnerKernel`): the inner optimizer's own kernel does it. For AdamW,
  Adam/NAdam/RAdam (their ``decoupled_weight_decay`` flag), Muon and Adafactor the decoupled modes
  are reached by setting the group's ``weight_decay`` to r/η_t for the step; for SGD, Adam, RMSprop,
  Adagrad, Adadelta, Adamax and ASGD ``coupled_l2`` is their native ``weight_decay``. Zero extra
  passes (the fused kernel).
- ``extra_pass`` (:class:`ExtraPass`): one ``torch._foreach_mul_`` before the inner step (any other
  optimizer, or a per-member tensor λ), the place torch's AdamW decays, so u never sees it.
- ``l2_gradient`` (:class:`L2Gradient`): λθ added to copies of the gradients for the inner step
  (the originals put back).
- ``cautious``: for Adam, AdamW, RAdam and Adamax the update has the sign of the first moment
  m_t = β1·m_{t−1} + (1 − β1)·g_t, so the masked decay runs before the inner step from
  (m_{t−1}, g_t, θ_t): one pass, no copy (:class:`CautiousMoment`). For any other optimizer θ_t is
  copied before the inner step (one buffer per parameter, kept between steps) and the sign read
  from the parameter change after it (:class:`CautiousCopy`).

Every path object has ``before()`` (runs before the inner step), ``after()`` (after it),
``undo()`` (when the inner step raised: what ``before()`` did to the parameters taken back) and
``restore()`` (always, in a ``finally``: the group keys and gradients put back, even when
``before()`` did not run to its end). The formulas are in :mod:`decaykit.engine.modes`; a plain
loop of every mode, which these paths are tested against, is :mod:`decaykit.engine.reference`.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from decaykit import _dtensor as shards
from decaykit.engine.cautious import cautious_decay_, cautious_moment_decay_
from decaykit.engine.checks import PEAK_MODES, check_within_peak, group_lr, short
from decaykit.engine.modes import Rate, decay_rate, decoupled_decay_, inner_weight_decay, l2_gradients
from decaykit.errors import DecayError

__all__ = [
    "CautiousCopy",
    "CautiousMoment",
    "ExtraPass",
    "GroupStep",
    "InnerKernel",
    "L2Gradient",
    "NoDecay",
    "Path",
    "Scratch",
    "build_paths",
    "plan_group",
]

_MISSING = object()


@dataclass
class GroupStep:
    """What one step does to one group."""

    path: str  # "none" | "inner" | "extra_pass" | "cautious" | "l2_gradient"
    kind: str  # expected_decay's kind
    rate: Rate = 0.0
    inner: dict[str, Any] = field(default_factory=dict)  # group keys set while the inner optimizer steps


class Scratch(dict):
    """Per-step scratch tensors keyed by parameter: copies of the engine (probe twins, deepcopy) start empty."""

    def __deepcopy__(self, memo: dict[int, Any]) -> Scratch:
        return Scratch()

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (Scratch, ())


def _is_zero(x: Rate) -> bool:
    return not bool(x.any()) if isinstance(x, Tensor) else x == 0


def plan_group(mode: str, i: int, group: dict[str, Any], lam_t: Rate, max_lr: float, native: str | None,
               step: int, scaled_peak: bool = False) -> GroupStep:
    """The path, rate and inner keys of group ``i`` at ``step``, with λ_t = s(t)·λ already scheduled.

    ``native`` says what the inner optimizer's own ``weight_decay`` does for this group: ``"flag"``
    (a ``decoupled_weight_decay`` switch), ``"decoupled"``, ``"coupled"`` or None (unknown).
    Refuses η_t > η_max (η_max = 0 included) in the modes that divide by it, and a rate r > 1.
    """
    off = {"weight_decay": 0.0} if "weight_decay" in group else {}
    if _is_zero(lam_t):
        return GroupStep("none", "none", 0.0, off)
    scalar = not isinstance(lam_t, Tensor)
    if mode == "coupled_l2":
        if scalar and native == "flag":
            return GroupStep("inner", "coupled_l2", lam_t, {"weight_decay": lam_t, "decoupled_weight_decay": False})
        if scalar and native == "coupled":
            return GroupStep("inner", "coupled_l2", lam_t, {"weight_decay": lam_t})
        return GroupStep("l2_gradient", "coupled_l2", lam_t, off)
    lr = group_lr(i, group, mode)
    if mode in PEAK_MODES and max_lr == 0:
        if lr == 0:
            return GroupStep("none", "none", 0.0, off)
        raise DecayError(
            f"param_groups[{i}] has η_max = 0 but lr = {lr:g} at step {step}; mode {mode!r} "
            "divides by η_max: pass WeightDecay(..., max_lr=<peak LR>)"
        )
    check_within_peak(mode, i, lr, max_lr, step, group.get("lr_scale") if scaled_peak else None)
    rate = decay_rate(mode, lam_t, lr, max_lr)
    worst = float(rate.max()) if isinstance(rate, Tensor) else rate
    if worst > 1:
        raise DecayError(
            f"param_groups[{i}] would shrink by r = {worst:.4g} per step at step {step} (mode "
            f"{mode!r}, lr={lr:g}, weight_decay={short(lam_t)}); θ ← θ(1 − r) with r > 1 flips every "
            "weight's sign: lower weight_decay, the LR or the schedule"
        )
    if _is_zero(rate):
        return GroupStep("none", "none", 0.0, off)
    if mode == "cautious":
        return GroupStep("cautious", "cautious", rate, off)
    if scalar and native in ("flag", "decoupled"):
        inner: dict[str, Any] = {"weight_decay": inner_weight_decay(mode, lam_t, lr, max_lr)}
        if native == "flag":
            inner["decoupled_weight_decay"] = True
        return GroupStep("inner", "decoupled", rate, inner)
    return GroupStep("extra_pass", "decoupled", rate, off)


class Path:
    """One group's part of one step. The base sets the plan's keys on the group for the inner step."""

    __slots__ = ("group", "keys", "saved")

    def __init__(self, group: dict[str, Any], plan: GroupStep) -> None:
        self.group, self.keys = group, plan.inner
        self.saved: list[tuple[str, Any]] = []

    def before(self) -> None:
        for key, value in self.keys.items():
            self.saved.append((key, self.group.get(key, _MISSING)))
            self.group[key] = value

    def after(self) -> None:
        pass

    def undo(self) -> None:
        pass

    def restore(self) -> None:
        while self.saved:
            key, old = self.saved.pop()
            if old is _MISSING:
                del self.group[key]
            else:
                self.group[key] = old


class NoDecay(Path):
    """``none``: no decay this step; the inner optimizer's own ``weight_decay`` is 0 while it steps."""

    __slots__ = ()


class InnerKernel(Path):
    """``inner``: the inner optimizer's own kernel decays, its ``weight_decay`` set to reach the mode."""

    __slots__ = ()


class _Decaying(Path):
    """A path that touches the parameters with a gradient (torch's AdamW decays no others)."""

    __slots__ = ("foreach", "params", "rate")

    def __init__(self, group: dict[str, Any], plan: GroupStep, params: list[Tensor], foreach: bool) -> None:
        super().__init__(group, plan)
        self.params, self.rate, self.foreach = params, plan.rate, foreach


class ExtraPass(_Decaying):
    """``extra_pass``: θ ← θ(1 − r) in one foreach pass before the inner step.

    When the inner step then raises (RMSprop refusing a sparse gradient, an out-of-memory on its
    first step), ``undo()`` divides the pass back out, so a retried step does not decay twice; no
    copy of θ is kept, so it comes back to within one rounding (:func:`decoupled_decay_`).
    """

    __slots__ = ("decayed",)

    def __init__(self, group: dict[str, Any], plan: GroupStep, params: list[Tensor], foreach: bool) -> None:
        super().__init__(group, plan, params, foreach)
        self.decayed = False

    def before(self) -> None:
        super().before()
        decoupled_decay_(self.params, self.rate, foreach=self.foreach)
        self.decayed = True

    def undo(self) -> None:
        if self.decayed:
            decoupled_decay_(self.params, self.rate, foreach=self.foreach, undo=True)
            self.decayed = False


class L2Gradient(_Decaying):
    """``l2_gradient``: the inner step sees g + λ_t·θ; the caller's gradients are put back after it."""

    __slots__ = ("swapped",)

    def __init__(self, group: dict[str, Any], plan: GroupStep, params: list[Tensor], foreach: bool) -> None:
        super().__init__(group, plan, params, foreach)
        self.swapped: list[tuple[Tensor, Tensor]] = []

    def before(self) -> None:
        super().before()
        grads = [p.grad for p in self.params]
        maximize = bool(self.group.get("maximize", False))
        # gradients with a graph (create_graph=True, for a Hessian-based step): g + λθ keeps one, λθ's included
        graph = torch.enable_grad() if grads and grads[0].requires_grad else contextlib.nullcontext()
        with graph:
            new = l2_gradients(self.params, grads, self.rate, maximize=maximize, foreach=self.foreach)
        for p, old, g in zip(self.params, grads, new):
            self.swapped.append((p, old))
            p.grad = g

    def restore(self) -> None:
        super().restore()
        for p, g in self.swapped:
            p.grad = g
        self.swapped.clear()


class CautiousMoment(_Decaying):
    """``cautious`` from the first moment: the masked decay before an Adam-family step, no copy of θ."""

    __slots__ = ("beta1", "buffers", "state")

    def __init__(self, group: dict[str, Any], plan: GroupStep, params: list[Tensor], foreach: bool, *, state: Any,
                 beta1: float, buffers: Scratch) -> None:
        super().__init__(group, plan, params, foreach)
        self.state, self.beta1, self.buffers = state, beta1, buffers

    def before(self) -> None:
        super().before()
        moments = [self.state.get(p, {}).get("exp_avg") for p in self.params]
        cautious_moment_decay_(self.params, [p.grad for p in self.params], moments, self.rate, beta1=self.beta1,
                               maximize=bool(self.group.get("maximize", False)), foreach=self.foreach)
        for p in (self.params if self.buffers else ()):  # copies left from the copy path
            self.buffers.pop(p, None)


class CautiousCopy(_Decaying):
    """``cautious`` from the parameter change: θ_t copied before the inner step, the mask read after it."""

    __slots__ = ("before_step", "buffers")

    def __init__(self, group: dict[str, Any], plan: GroupStep, params: list[Tensor], foreach: bool, *,
                 buffers: Scratch) -> None:
        super().__init__(group, plan, params, foreach)
        self.buffers = buffers
        self.before_step: list[Tensor] = []

    def before(self) -> None:
        super().before()
        self.before_step = _snapshot(self.params, self.buffers, self.foreach)

    def after(self) -> None:
        cautious_decay_(self.params, self.before_step, self.rate, foreach=self.foreach)


def _refuse_graph_gradients(i: int, params: list[Tensor], path: str) -> None:
    """Refuse a decay of θ in place before the inner step when the gradients carry an autograd graph
    (``loss.backward(create_graph=True)``): Hessian-based optimizers (Hessian-vector products) differentiate
    through it, and θ changed in place breaks it (torch's "modified by an inplace operation"). One
    gradient tells: a backward with a graph gives every gradient one."""
    if params and params[0].grad is not None and params[0].grad.requires_grad:
        raise DecayError(
            f"param_groups[{i}]'s gradients carry an autograd graph (loss.backward(create_graph=True)), which a "
            f"Hessian-based optimizer differentiates through θ; this step's {path!r} path would shrink θ in place "
            "before the inner step and break that graph: use mode='coupled_l2', or the optimizer's own weight_decay"
        )


def build_paths(plans: Sequence[GroupStep], optimizer: Any, buffers: Scratch, *, foreach: bool,
                moment_sign: bool) -> list[Path]:
    """One path object per group of ``optimizer``, from its plan; raises before anything moves.

    The inner step may still raise after the paths' ``before()``: the engine then calls their ``undo()``.

    ``moment_sign``: the inner optimizer's update has the sign of its new first moment
    (:mod:`decaykit.engine.cautious`), so a cautious group may take :class:`CautiousMoment`.
    """
    groups = optimizer.param_groups
    out: list[Path] = []
    for i, (group, plan) in enumerate(zip(groups, plans)):
        if plan.kind == "coupled_l2":
            _refuse_sparse(i, group)
        if plan.path in ("none", "inner"):
            out.append((NoDecay if plan.path == "none" else InnerKernel)(group, plan))
            continue
        # parameters with a gradient only: torch's AdamW does not decay the ones without either
        params = [p for p in group["params"] if p.grad is not None]
        if plan.path == "extra_pass" or (plan.path == "cautious" and moment_sign):
            _refuse_graph_gradients(i, params, plan.path)
        if plan.path == "extra_pass":
            out.append(ExtraPass(group, plan, params, foreach))
        elif plan.path == "l2_gradient":
            out.append(L2Gradient(group, plan, params, foreach))
        elif (beta1 := _moment_beta1(optimizer, group, params) if moment_sign else None) is not None:
            out.append(CautiousMoment(group, plan, params, foreach, state=optimizer.state, beta1=beta1, buffers=buffers))
        else:
            if len(buffers) > 2 * sum(len(g["params"]) for g in groups):
                buffers.clear()  # parameters were replaced; drop the stale copies
            out.append(CautiousCopy(group, plan, params, foreach, buffers=buffers))
    return out


def _refuse_sparse(i: int, group: dict[str, Any]) -> None:
    """coupled_l2 with a sparse gradient, refused while planning, before anything moves.

    g + λθ is dense (every row of an embedding), so no sparse gradient can carry it, and torch's own
    SGD / Adagrad refuse ``weight_decay`` with sparse gradients; the decoupled modes decay every row.
    """
    names = group.get("param_names") or []
    sparse = [names[j] if j < len(names) else f"params[{j}]" for j, p in enumerate(group["params"])
              if p.grad is not None and p.grad.is_sparse]
    if sparse:
        raise DecayError(
            f"param_groups[{i}] has sparse gradients ({', '.join(sparse[:3])}), and mode 'coupled_l2' adds λθ, "
            "which is dense, to the gradient; use a decoupled mode (mode='lr_coupled' decays every row as "
            "torch's AdamW does), make the embedding dense (sparse=False), or add the L2 penalty to the loss"
        )


def _moment_beta1(optimizer: Any, group: dict[str, Any], params: list[Tensor]) -> float | None:
    """β1 of an optimizer whose update has the sign of its new first moment, or None for the copy path.

    None: a step pre-hook on the inner optimizer (it runs before the inner step and may change the
    gradients the engine read; global ones run before the engine's step only), sparse gradients (the inner step refuses
    them, and must do so before anything moves), or no real β1.
    """
    if optimizer._optimizer_step_pre_hooks:
        return None
    if any(p.grad.is_sparse for p in params):
        return None
    beta1 = group.get("betas", (None,))[0]
    if isinstance(beta1, Tensor) and beta1.numel() == 1:
        beta1 = beta1.item()
    return float(beta1) if isinstance(beta1, numbers.Real) and not isinstance(beta1, bool) else None


def _snapshot(params: list[Tensor], buffers: Scratch, foreach: bool) -> list[Tensor]:
    """Copy θ_t into buffers kept between steps (allocating 4 bytes per weight every step costs more)."""
    out = []
    for p in params:
        b = buffers.get(p)
        if b is None or b.shape != p.shape or b.dtype != p.dtype or b.device != p.device:
            b = buffers[p] = torch.empty_like(p)
        out.append(b)
    if foreach:  # DTensors (FSDP2) have no _foreach_copy_: their buffers are laid out alike, copy the shards
        torch._foreach_copy_([shards.local(b) for b in out], [shards.local(p) for p in params])
    else:
        for b, p in zip(out, params):
            b.copy_(p)
    return out
