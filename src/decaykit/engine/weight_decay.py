"""``WeightDecay``: one weight-decay engine for any torch optimizer, with modes and schedules.

>>> import torch, decaykit
>>> from decaykit import schedules
>>> model = torch.nn.Linear(4, 2)
>>> inner = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)  # an lr_independent λ
>>> opt = decaykit.WeightDecay(inner, mode="lr_independent", schedule=schedules.cosine(1.0, 10.0, steps=100))
>>> isinstance(opt, torch.optim.Optimizer), opt.param_groups is inner.param_groups
(True, True)
>>> opt.expected_decay()[0]["kind"], opt.expected_decay()[0]["rate"]  # θ ← θ(1 − (η_t/η_max)·λ)
('decoupled', 0.0001)
>>> opt.paths()   # reached through AdamW's own kernel: weight_decay = λ/η_max during each step
['inner']

The engine reads λ from each param group's ``weight_decay`` (a float, or a 1-D tensor of K values
for K stacked models) and takes it over: while the inner optimizer steps, its own decay is switched
off, and the engine applies λ as ``mode`` says (formulas in :mod:`decaykit.engine.modes`). Outside
``step()`` the groups keep the user's λ, so loggers, ``state_dict`` and ``probe`` see it.

How each group is decayed (``opt.paths()``), cheapest first:

- ``inner``: the inner optimizer's own kernel does it. For AdamW, Adam/NAdam/RAdam (their
  ``decoupled_weight_decay`` flag), Muon and Adafactor the decoupled modes are reached by setting the
  group's ``weight_decay`` to r/η_t for the step; for SGD, Adam, RMSprop, Adagrad, Adadelta, Adamax
  and ASGD ``coupled_l2`` is their native ``weight_decay``. Zero extra passes (the fused kernel).
- ``extra_pass``: one ``torch._foreach_mul_`` before the inner step (any other optimizer, or a
  per-member tensor λ), the place torch's AdamW decays, so u never sees it.
- ``l2_gradient``: λθ added to copies of the gradients for the inner step (originals restored).
- ``cautious``: for Adam, AdamW, RAdam and Adamax the update has the sign of the first moment
  m_t = β1·m_{t−1} + (1 − β1)·g_t, so the masked decay runs before the inner step from
  (m_{t−1}, g_t, θ_t): one pass, no copy (:func:`decaykit.engine.cautious.cautious_moment_decay_`). For
  any other optimizer θ_t is copied before the inner step (one buffer per parameter, kept between
  steps) and the sign read from the parameter change (:func:`decaykit.engine.cautious.cautious_decay_`).

DTensor parameters (FSDP2) take the same paths, on each rank's local shard (:mod:`decaykit._dtensor`).

η_max (``lr_independent``, ``corrected``) is each group's ``max_lr`` (set by ``OneCycleLR``), else its
``initial_lr`` (set by other LR schedulers), else its ``lr`` when the engine is built; or ``max_lr=``.
"""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from decaykit import _dtensor as shards
from decaykit import optimizers
from decaykit._validate import check_number, check_rates
from decaykit.engine.cautious import cautious_decay_, cautious_moment_decay_
from decaykit.engine.modes import (
    MODES,
    decay_rate,
    decoupled_decay_,
    inner_weight_decay,
    l2_gradients,
)
from decaykit.engine.schedules import Schedule, as_schedule
from decaykit.errors import DecayError, DecayWarning

__all__ = ["STATE_KEY", "WeightDecay"]

#: the key of the engine's own entry in ``state_dict()``, next to the inner ``state``/``param_groups``
STATE_KEY = "decaykit"


# What each optimizer's own weight_decay does (inner path, cautious fast path, refusals) lives in
# decaykit.optimizers; torch.optim entries match exact classes only, as a subclass may override step().

_MISSING = object()


@dataclass
class _GroupStep:
    """What one step does to one group."""

    path: str  # "none" | "inner" | "extra_pass" | "cautious" | "l2_gradient"
    kind: str  # expected_decay's kind
    rate: float | Tensor = 0.0
    inner: dict[str, Any] = field(default_factory=dict)  # group keys set while the inner optimizer steps


class _Scratch(dict):
    """Per-step scratch tensors keyed by parameter: copies of the engine (probe twins, deepcopy) start empty."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _Scratch:
        return _Scratch()

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (_Scratch, ())


def _is_zero(x: float | Tensor) -> bool:
    return not bool(x.any()) if isinstance(x, Tensor) else x == 0


class WeightDecay(Optimizer):
    """Weight decay for any ``torch.optim`` optimizer, per ``mode``, on a λ ``schedule``.

    Args:
        optimizer: the inner optimizer (any ``torch.optim.Optimizer``); its ``param_groups`` and
            ``state`` are shared, not copied, so LR schedulers, ``zero_grad``, ``add_param_group``
            and checkpoints work on either object.
        mode: one of ``"lr_coupled"`` θ ← θ(1 − η_t·λ) (torch AdamW), ``"lr_independent"``
            θ ← θ(1 − (η_t/η_max)·λ) (Composer, Wortsman et al. 2023), ``"corrected"``
            θ ← θ(1 − (η_t²/η_max)·λ) (AdamC, Defazio 2025), ``"cautious"`` decay only where
            sign(u) = sign(θ) (Chen et al. 2025), ``"coupled_l2"`` g ← g + λθ (L2 penalty).
        schedule: a :class:`decaykit.engine.schedules.Schedule` or ``step -> multiplier`` callable;
            λ_t = schedule(t)·λ. ``None`` keeps λ constant.
        max_lr: η_max for every group (a float) or per group (a sequence); default: read from the
            groups when the engine is built (see the module docstring).
        foreach: ``True`` for the ``torch._foreach_*`` kernels (default), ``False`` for the
            single-tensor reference loops.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        mode: str = "lr_coupled",
        schedule: Schedule | Callable[[int], float] | None = None,
        max_lr: float | Sequence[float] | None = None,
        *,
        foreach: bool | None = None,
    ) -> None:
        _check_inner(optimizer)
        if mode not in MODES:
            raise DecayError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if foreach is not None and not isinstance(foreach, bool):
            raise DecayError(f"foreach must be True, False or None, got {foreach!r}")
        self.optimizer = optimizer
        self.mode = mode
        self.schedule = as_schedule(schedule)
        self.foreach = foreach
        self._max_lr_arg = _check_max_lr(max_lr, len(optimizer.param_groups))
        self._max_lrs: list[float] = []
        self._step = 0
        self._buffers: dict[Tensor, Tensor] = _Scratch()
        self._checked: dict[int, tuple[Tensor, tuple[int, int], Tensor]] = _Scratch()
        # Optimizer.__init__ would rebuild the groups; __setstate__ only installs the hook tables
        # and the profiling/hook wrapper around step(), which is all this wrapper needs from it.
        super().__setstate__({})
        for i, group in enumerate(self.param_groups):
            _check_group(i, group)
            self._group_lambda(i, group)
        self._sync_max_lrs()
        self._factor(0)

    # -- shared with the inner optimizer ---------------------------------------------------------
    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property  # type: ignore[override]
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property  # type: ignore[override]
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    @property
    def steps_taken(self) -> int:
        """Optimizer steps applied so far; the schedule's next input."""
        return self._step

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)
        i = len(self.param_groups) - 1
        try:
            _check_group(i, self.param_groups[i])
            self._group_lambda(i, self.param_groups[i])
        except DecayError:
            self.param_groups.pop()
            raise
        self._sync_max_lrs()

    # -- the step --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Apply the decay of every group and the inner optimizer's step; return the closure's loss."""
        loss = None
        if closure is not None:  # evaluated first, as torch optimizers do, so decay sees fresh grads
            with torch.enable_grad():
                loss = closure()
        plans = self._plan_all()
        foreach = self.foreach is not False
        # parameters with a gradient only: torch's AdamW does not decay the ones without either
        params = [
            [p for p in group["params"] if p.grad is not None] if plan.path not in ("none", "inner") else []
            for group, plan in zip(self.param_groups, plans)
        ]
        for i, (plan, ps) in enumerate(zip(plans, params)):
            if plan.path == "l2_gradient" and any(p.grad.is_sparse for p in ps):
                raise DecayError(
                    f"param_groups[{i}] has sparse gradients, which mode 'coupled_l2' cannot add λθ to; "
                    "use a decoupled mode or add the L2 penalty to the loss"
                )
        saved: list[tuple[dict[str, Any], str, Any]] = []
        swapped: list[tuple[Tensor, Tensor]] = []
        cautious: list[tuple[list[Tensor], list[Tensor], float | Tensor]] = []
        try:
            for group, plan, ps in zip(self.param_groups, plans, params):
                for key, value in plan.inner.items():
                    saved.append((group, key, group.get(key, _MISSING)))
                    group[key] = value
                if plan.path == "extra_pass":
                    decoupled_decay_(ps, plan.rate, foreach=foreach)
                elif plan.path == "cautious" and (beta1 := self._first_moment_beta1(group, ps)) is not None:
                    moments = [self.state.get(p, {}).get("exp_avg") for p in ps]
                    cautious_moment_decay_(ps, [p.grad for p in ps], moments, plan.rate, beta1=beta1,
                                           maximize=bool(group.get("maximize", False)), foreach=foreach)
                    for p in (ps if self._buffers else ()):  # copies left from the copy path
                        self._buffers.pop(p, None)
                elif plan.path == "cautious":
                    cautious.append((ps, self._snapshot(ps, foreach), plan.rate))
                elif plan.path == "l2_gradient":
                    grads = [p.grad for p in ps]
                    maximize = bool(group.get("maximize", False))
                    new = l2_gradients(ps, grads, plan.rate, maximize=maximize, foreach=foreach)
                    for p, old, g in zip(ps, grads, new):
                        swapped.append((p, old))
                        p.grad = g
            result = self.optimizer.step()
            for params, before, rate in cautious:
                cautious_decay_(params, before, rate, foreach=foreach)
        finally:
            for group, key, old in reversed(saved):
                if old is _MISSING:
                    del group[key]
                else:
                    group[key] = old
            for p, g in swapped:
                p.grad = g
        self._step += 1
        return loss if closure is not None else result

    def expected_decay(self) -> list[dict[str, Any]]:
        """What the next ``step()`` does to each group with zero gradients and no other update.

        One dict per group: ``{"kind": "decoupled", "rate": r}`` (θ ← θ(1 − r); r a (K,) tensor for
        per-member λ), ``{"kind": "cautious", "rate": r}`` (the same, masked by sign agreement),
        ``{"kind": "coupled_l2", "rate": λ_t}`` (λ_t·θ added to the gradient) or
        ``{"kind": "none", "rate": 0.0}``; plus ``"path"``, the mechanism (see :meth:`paths`).
        """
        return [{"kind": p.kind, "rate": p.rate, "path": p.path} for p in self._plan_all()]

    def paths(self) -> list[str]:
        """Per group, how the next step decays it: ``inner``, ``extra_pass``, ``cautious``, ``l2_gradient`` or ``none``."""
        return [p.path for p in self._plan_all()]

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's ``state_dict()`` plus ``"decaykit"``: mode, step, η_max per group, schedule."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        state = dict(self.optimizer.state_dict())
        state[STATE_KEY] = {
            "mode": self.mode,
            "step": self._step,
            "max_lr": list(self._max_lrs),
            "schedule": self.schedule.state_dict(),
        }
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, state)
            if result is not None:
                state = result
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; the schedule continues from the saved step."""
        state_dict = dict(state_dict)
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        own = state_dict.pop(STATE_KEY, None)
        if own is not None and own.get("mode") != self.mode:
            raise DecayError(
                f"the checkpoint was saved with mode={own.get('mode')!r} but this engine has "
                f"mode={self.mode!r}; build WeightDecay(..., mode={own.get('mode')!r}) to resume, or "
                f"delete state_dict[{STATE_KEY!r}] to switch modes on purpose"
            )
        if own is not None and len(own["max_lr"]) != len(state_dict["param_groups"]):
            raise DecayError(
                f"the checkpoint has η_max for {len(own['max_lr'])} groups but "
                f"{len(state_dict['param_groups'])} param groups"
            )
        if own is not None and own["schedule"].get("type") != self.schedule.state_dict()["type"]:
            raise DecayError(
                f"the checkpoint was saved with a {own['schedule'].get('type')} weight-decay schedule but this "
                f"engine has {self.schedule!r}; build the engine with the schedule it was saved with"
            )
        self.optimizer.load_state_dict(state_dict)
        if own is None:
            warnings.warn(
                f"state_dict has no {STATE_KEY!r} entry (saved from a plain optimizer?): the weight-decay "
                f"schedule stays at step {self._step} and η_max is kept",
                DecayWarning,
                stacklevel=2,
            )
        else:
            self.schedule.load_state_dict(own["schedule"])
            self._step = int(own["step"])
            self._max_lrs = [float(v) for v in own["max_lr"]]
        for i, group in enumerate(self.param_groups):
            self._group_lambda(i, group)
        self._sync_max_lrs()
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def __getstate__(self) -> dict[str, Any]:
        # the LR scheduler's step wrapper and the cautious scratch buffers are not state
        skip = ("step", "_opt_called")
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._buffers, self._checked = _Scratch(), _Scratch()

    def __repr__(self) -> str:
        lines = [f"WeightDecay(mode={self.mode!r}, schedule={self.schedule!r}, step={self._step}) over "]
        inner = repr(self.optimizer).splitlines()
        return lines[0] + "\n".join(inner)

    # -- internals -------------------------------------------------------------------------------
    def _sync_max_lrs(self) -> None:
        """Give η_max to groups added since (by ``add_param_group`` on either object)."""
        groups = self.param_groups
        del self._max_lrs[len(groups) :]
        for i in range(len(self._max_lrs), len(groups)):
            given = self._max_lr_arg
            if isinstance(given, list):
                value = given[i] if i < len(given) else _group_peak_lr(groups[i])
            else:
                value = given if given is not None else _group_peak_lr(groups[i])
            self._max_lrs.append(check_number(value, f"max_lr for param_groups[{i}]"))

    def _factor(self, step: int) -> float:
        value = self.schedule(step)
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if isinstance(value, Tensor) and value.numel() == 1:
            value, ok = value.item(), True
        if not ok or not math.isfinite(value) or value < 0:
            raise DecayError(
                f"schedule {self.schedule!r} returned {value!r} at step {step}; a weight-decay schedule "
                "must return a finite multiplier >= 0"
            )
        return float(value)

    def _group_lambda(self, i: int, group: dict[str, Any]) -> float | Tensor:
        lam = group.get("weight_decay", 0.0)
        if isinstance(lam, Tensor) and lam.dim() == 0:
            lam = lam.item()
        elif isinstance(lam, Tensor):
            # checked once per value: a tensor's _version moves on every in-place change
            key = (lam._version, len(group["params"]))
            cached = self._checked.get(i)
            if cached is not None and cached[0] is lam and cached[1] == key:
                return cached[2]
            values = _check_member_lambda(i, group, lam)
            self._checked[i] = (lam, key, values)
            return values
        return check_number(lam, f"param_groups[{i}]['weight_decay']", strict_type=True)

    def _plan_all(self) -> list[_GroupStep]:
        self._sync_max_lrs()
        factor = self._factor(self._step)
        return [self._plan(i, g, factor) for i, g in enumerate(self.param_groups)]

    def _plan(self, i: int, group: dict[str, Any], factor: float) -> _GroupStep:
        lam = self._group_lambda(i, group)
        lam_t = lam * factor
        native = _native(self.optimizer, group)
        off = {"weight_decay": 0.0} if "weight_decay" in group else {}
        if _is_zero(lam_t):
            return _GroupStep("none", "none", 0.0, off)
        scalar = not isinstance(lam_t, Tensor)
        if self.mode == "coupled_l2":
            if scalar and native == "flag":
                return _GroupStep("inner", "coupled_l2", lam_t, {"weight_decay": lam_t, "decoupled_weight_decay": False})
            if scalar and native == "coupled":
                return _GroupStep("inner", "coupled_l2", lam_t, {"weight_decay": lam_t})
            return _GroupStep("l2_gradient", "coupled_l2", lam_t, off)
        lr = float(group["lr"])
        max_lr = self._max_lrs[i]
        if self.mode in ("lr_independent", "corrected") and max_lr == 0:
            if lr == 0:
                return _GroupStep("none", "none", 0.0, off)
            raise DecayError(
                f"param_groups[{i}] has η_max = 0 but lr = {lr:g} at step {self._step}; mode {self.mode!r} "
                "divides by η_max: pass WeightDecay(..., max_lr=<peak LR>)"
            )
        rate = decay_rate(self.mode, lam_t, lr, max_lr)
        worst = float(rate.max()) if isinstance(rate, Tensor) else rate
        if worst > 1:
            raise DecayError(
                f"param_groups[{i}] would shrink by r = {worst:.4g} per step at step {self._step} (mode "
                f"{self.mode!r}, lr={lr:g}, weight_decay={_short(lam_t)}); θ ← θ(1 − r) with r > 1 flips every "
                "weight's sign: lower weight_decay, the LR or the schedule"
            )
        if _is_zero(rate):
            return _GroupStep("none", "none", 0.0, off)
        if self.mode == "cautious":
            return _GroupStep("cautious", "cautious", rate, off)
        if scalar and native in ("flag", "decoupled"):
            inner: dict[str, Any] = {"weight_decay": inner_weight_decay(self.mode, lam_t, lr, max_lr)}
            if native == "flag":
                inner["decoupled_weight_decay"] = True
            return _GroupStep("inner", "decoupled", rate, inner)
        return _GroupStep("extra_pass", "decoupled", rate, off)

    def _first_moment_beta1(self, group: dict[str, Any], params: list[Tensor]) -> float | None:
        """β1 when the inner step's update has the sign of its new first moment (see :mod:`decaykit.engine.cautious`).

        None sends the group to the copy-and-compare path: another optimizer, a step pre-hook on
        the inner optimizer or a global one (they run again before the inner step and may change the
        gradients the engine read), sparse gradients (the inner step refuses them, and must do so
        before anything moves).
        """
        entry = optimizers.info(self.optimizer)
        if entry is None or not entry.first_moment_sign or self.optimizer._optimizer_step_pre_hooks:
            return None
        if getattr(sys.modules.get("torch.optim.optimizer"), "_global_optimizer_pre_hooks", None):
            return None
        if any(p.grad.is_sparse for p in params):
            return None
        beta1 = group.get("betas", (None,))[0]
        if isinstance(beta1, Tensor) and beta1.numel() == 1:
            beta1 = beta1.item()
        return float(beta1) if isinstance(beta1, numbers.Real) and not isinstance(beta1, bool) else None

    def _snapshot(self, params: list[Tensor], foreach: bool) -> list[Tensor]:
        """Copy θ_t into buffers kept between steps (allocating 4 bytes per weight every step costs more)."""
        if len(self._buffers) > 2 * sum(len(g["params"]) for g in self.param_groups):
            self._buffers.clear()  # parameters were replaced; drop the stale copies
        out = []
        for p in params:
            b = self._buffers.get(p)
            if b is None or b.shape != p.shape or b.dtype != p.dtype or b.device != p.device:
                b = self._buffers[p] = torch.empty_like(p)
            out.append(b)
        if foreach:  # DTensors (FSDP2) have no _foreach_copy_: their buffers are laid out alike, copy the shards
            torch._foreach_copy_([shards.local(b) for b in out], [shards.local(p) for p in params])
        else:
            for b, p in zip(out, params):
                b.copy_(p)
        return out


def _short(x: float | Tensor) -> str:
    return f"{x:g}" if isinstance(x, float) else str([round(v, 6) for v in x.tolist()])


def _native(optimizer: Any, group: dict[str, Any]) -> str | None:
    """How the inner optimizer's own ``weight_decay`` acts on this group, if the engine may drive it.

    ``"flag"``, ``"decoupled"`` or ``"coupled"`` for a registry entry with ``engine="inner"``
    (:mod:`decaykit.optimizers`); a flag optimizer only while its group holds the flag to set.
    """
    if "weight_decay" not in group or group.get("differentiable", False):
        return None
    entry = optimizers.info(optimizer)
    if entry is None or entry.engine != "inner":
        return None
    if entry.decay == "flag":
        return "flag" if "decoupled_weight_decay" in group else None
    return entry.decay if entry.decay in ("coupled", "decoupled") else None


def _group_peak_lr(group: dict[str, Any]) -> float:
    # OneCycleLR stores its peak as max_lr and its start as initial_lr; other schedulers the base LR
    for key in ("max_lr", "initial_lr", "lr"):
        value = group.get(key)
        if isinstance(value, (numbers.Real, Tensor)) and not isinstance(value, bool):
            return float(value)
    return 0.0


def _check_inner(optimizer: Any) -> None:
    if isinstance(optimizer, WeightDecay):
        raise DecayError("optimizer is already a WeightDecay engine; wrapping it again would decay twice")
    if not isinstance(getattr(optimizer, "param_groups", None), list) or not callable(getattr(optimizer, "step", None)):
        raise DecayError(
            f"optimizer must be a torch.optim.Optimizer (with param_groups and step), got {type(optimizer).__name__}; "
            "build it first: WeightDecay(torch.optim.AdamW(params, lr=...), mode=...)"
        )
    for cls in type(optimizer).__mro__:  # a subclass of a refused optimizer steps alike
        entry = optimizers.info(cls)
        if entry is not None and entry.engine == "refused":
            raise DecayError(f"WeightDecay cannot drive {type(optimizer).__name__}: {entry.refusal}")


def _check_group(i: int, group: dict[str, Any]) -> None:
    if group.get("differentiable", False):
        raise DecayError(
            f"param_groups[{i}] has differentiable=True; the engine's in-place decay is not differentiable, "
            "so build the inner optimizer with differentiable=False"
        )


def _check_max_lr(max_lr: Any, n_groups: int) -> float | list[float] | None:
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


def _check_member_lambda(i: int, group: dict[str, Any], lam: Tensor) -> Tensor:
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
