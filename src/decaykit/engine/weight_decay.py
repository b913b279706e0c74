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

How each group is decayed (``opt.paths()``: ``inner``, ``extra_pass``, ``l2_gradient``, ``cautious``
or ``none``) is planned afresh at every step, one small object per group and path
(:mod:`decaykit.engine.paths`); a plain loop of every mode to test them against is
:mod:`decaykit.engine.reference`.

DTensor parameters (FSDP2) take the same paths, on each rank's local shard (:mod:`decaykit._dtensor`).

η_max (``lr_independent``, ``corrected``) is ``max_lr=`` where given; else it is read from each group:
its ``max_lr`` (set by ``OneCycleLR``), else its ``initial_lr`` (set by other LR schedulers), else its
``lr`` when the engine first sees the group; a base LR (``initial_lr``, ``lr``) times the group's
``lr_scale`` where the groups hold several scales over one base, which timm's schedulers apply on top
(:func:`decaykit.engine.checks.lr_scale_on_top`). It is read again when a scheduler writes another peak
into the group, so ``OneCycleLR(engine, max_lr=...)`` built after the engine sets it. A step whose
η_t is above η_max is refused in these modes: the peak of a schedule that keeps it elsewhere
(``CyclicLR``'s ``max_lr``) has to be given as ``max_lr=``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim import optimizer as torch_optimizer

from decaykit import optimizers
from decaykit._dtensor import local
from decaykit._thread_hooks import ThreadQuiet
from decaykit._validate import check_number
from decaykit.engine.cautious import FIRST_MOMENT_SIGN
from decaykit.engine.checks import (
    check_checkpoint,
    check_group,
    check_lambda,
    check_loadable,
    check_max_lr,
    check_multiplier,
    check_plausible,
    check_state_dict,
    group_peak_lr,
    lr_scale_on_top,
    scheduler_peak,
)
from decaykit.engine.modes import MODES
from decaykit.engine.paths import GroupStep, Scratch, build_paths, plan_group
from decaykit.engine.schedules import Schedule, as_schedule
from decaykit.errors import DecayError, DecayWarning
from decaykit.probe.rounding import rounding_fix, rounds_every_value

__all__ = ["STATE_KEY", "WeightDecay", "saved_entry"]

#: the key of the engine's own entry in ``state_dict()``, next to the inner ``state``/``param_groups``
STATE_KEY = "decaykit"


# What each optimizer's own weight_decay does (inner path, cautious fast path, refusals) lives in
# decaykit.optimizers; torch.optim entries match exact classes only, as a subclass may override step().

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
        max_lr: η_max for every group (a float) or per group (a sequence), kept whatever the LR
            schedulers write; default: read from the groups, and again when a scheduler writes a
            new peak into them (see the module docstring).
        foreach: ``True`` for the ``torch._foreach_*`` kernels (default), ``False`` for the
            single-tensor reference loops.
        allow_large_decay: keep a λ that is implausible for ``mode`` (an ``lr_independent`` λ that
            shrinks the weights by more than 1% per step, :func:`decaykit.engine.checks.check_plausible`);
            by default it is refused, as it is almost always a λ of another convention: when the engine
            is built, and at the first step that sees a new group, a changed λ or a new η_max.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        mode: str = "lr_coupled",
        schedule: Schedule | Callable[[int], float] | None = None,
        max_lr: float | Sequence[float] | None = None,
        *,
        foreach: bool | None = None,
        allow_large_decay: bool = False,
    ) -> None:
        _check_inner(optimizer)
        if mode not in MODES:
            raise DecayError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if foreach is not None and not isinstance(foreach, bool):
            raise DecayError(f"foreach must be True, False or None, got {foreach!r}")
        if not isinstance(allow_large_decay, bool):
            raise DecayError(f"allow_large_decay must be True or False, got {allow_large_decay!r}")
        self.allow_large_decay = allow_large_decay
        self.optimizer = optimizer
        self.mode = mode
        self.schedule = as_schedule(schedule)
        self.foreach = foreach
        self._max_lr_arg = check_max_lr(max_lr, len(optimizer.param_groups))
        self._max_lrs: list[float] = []
        self._peaks: list[tuple[str, float] | None] = []  # the scheduler peak each read η_max came from
        self._step = 0
        self._buffers: dict[Tensor, Tensor] = Scratch()
        self._checked: dict[int, tuple[Tensor, tuple[int, int], Tensor]] = Scratch()
        self._plans: dict[int, tuple[float | Tensor, _PlanInputs, GroupStep]] = Scratch()
        # Optimizer.__init__ would rebuild the groups; __setstate__ only installs the hook tables
        # and the profiling/hook wrapper around step(), which is all this wrapper needs from it.
        super().__setstate__({})
        facts = optimizers.info(self.optimizer)
        for i, group in enumerate(self.param_groups):
            check_group(i, group, mode, facts)
            check_lambda(i, group, self._checked)
        self._sync_max_lrs()
        for i, group in enumerate(self.param_groups):
            self._check_plausible(i, check_lambda(i, group, self._checked))
        check_multiplier(self.schedule, 0)
        self._warn_rounded_away()

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
            check_group(i, self.param_groups[i], self.mode, optimizers.info(self.optimizer))
            lam = check_lambda(i, self.param_groups[i], self._checked)
            self._sync_max_lrs()
            self._check_plausible(i, lam)
        except DecayError:
            self.param_groups.pop()
            del self._max_lrs[i:], self._peaks[i:]
            raise

    # -- the step --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Apply the decay of every group and the inner optimizer's step; return the closure's loss."""
        loss = None
        if closure is not None:  # evaluated first, as torch optimizers do, so decay sees fresh grads
            with torch.enable_grad():
                loss = closure()
        # torch.distributed.checkpoint fills an empty state before loading into it with a step at lr 0 on zero
        # gradients: it moves nothing and is no step of the schedule (counted, a resumed run ran one step ahead)
        counted = bool(self.optimizer.state) or not _fills_state(self.param_groups)
        paths = build_paths(self._plan_all(), self.optimizer, self._buffers, foreach=self.foreach is not False,
                            moment_sign=type(self.optimizer) in FIRST_MOMENT_SIGN)
        try:
            try:
                for path in paths:
                    path.before()
                with _global_step_hooks_paused():  # they ran once for this step, around the engine's
                    result = self.optimizer.step()
            except BaseException:  # a failed step leaves θ as it was: a retry must not decay twice
                for path in reversed(paths):
                    path.undo()
                raise
            for path in paths:
                path.after()
        finally:
            for path in reversed(paths):
                path.restore()
        self._step += counted
        return loss if closure is not None else result

    def expected_decay(self) -> list[dict[str, Any]]:
        """What the next ``step()`` does to each group with zero gradients and no other update.

        One dict per group: ``{"kind": "decoupled", "rate": r}`` (θ ← θ(1 − r); r a (K,) tensor for
        per-member λ), ``{"kind": "cautious", "rate": r}`` (the same, masked by sign agreement),
        ``{"kind": "coupled_l2", "rate": λ_t}`` (λ_t·θ added to the gradient) or
        ``{"kind": "none", "rate": 0.0}``; plus ``"path"``, the mechanism (see :meth:`paths`).
        """
        # a copy of a rate tensor: the plan that holds it is reused by the next steps
        return [{"kind": p.kind, "rate": p.rate.clone() if isinstance(p.rate, Tensor) else p.rate, "path": p.path}
                for p in self._plan_all()]  # fmt: skip

    def paths(self) -> list[str]:
        """Per group, how the next step decays it: ``inner``, ``extra_pass``, ``cautious``, ``l2_gradient`` or ``none``."""
        return [p.path for p in self._plan_all()]

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's ``state_dict()`` plus ``"decaykit"``: mode, step, η_max per group, schedule."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        self._sync_max_lrs()  # the η_max the next step uses, a peak written since the last step included
        state = dict(self.optimizer.state_dict())
        own = {"mode": self.mode, "step": self._step, "max_lr": list(self._max_lrs),
               "schedule": self.schedule.state_dict()}  # fmt: skip
        state[STATE_KEY] = own
        groups = [dict(g) for g in state.get("param_groups", [])]
        if groups:  # a copy rides in the first group: tools that keep only "state" and "param_groups" keep it
            groups[0][STATE_KEY] = {**own, "state_steps": _state_steps(state.get("state"))}
            state["param_groups"] = groups
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, state)
            if result is not None:
                state = result
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; the schedule continues from the saved step.

        Checked before anything changes (a refused load leaves the engine as it was): the group
        count and sizes, each group's ``param_names`` where both sides have them, the shapes of the
        saved moments against the tensors they would land on, the engine's mode, schedule and step,
        and each saved λ against its mode.
        """
        check_state_dict(state_dict)
        state_dict = dict(state_dict)
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        own, why = saved_entry(state_dict)
        max_lrs = self._check_load(state_dict, own)
        self.optimizer.load_state_dict(state_dict)
        if own is None:
            warnings.warn(f"{why}: the weight-decay schedule stays at step {self._step} and η_max is kept",
                          DecayWarning, stacklevel=2)
        else:
            self.schedule.load_state_dict(own["schedule"])
            self._step = int(own["step"])
            # the saved η_max holds until a scheduler writes another peak into the loaded groups
            self._max_lrs = max_lrs
            on_top = lr_scale_on_top(self.param_groups)
            self._peaks = [None if self._given_max_lr(i) is not None else scheduler_peak(g, on_top)
                           for i, g in enumerate(self.param_groups)]
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def _check_load(self, state_dict: dict[str, Any], own: Any) -> list[float]:
        """Everything :meth:`load_state_dict` would refuse, read only; the η_max per group it would keep."""
        check_loadable(state_dict, self.param_groups)
        max_lrs = list(self._max_lrs)
        if own is not None:
            max_lrs = check_checkpoint(own, STATE_KEY, self.mode, self.schedule, state_dict["param_groups"])
            try:  # refused here, not half-way through the load
                copy.deepcopy(self.schedule).load_state_dict(own["schedule"])
            except DecayError:
                raise
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise DecayError(f"state_dict[{STATE_KEY!r}]['schedule'] cannot be loaded into {self.schedule!r}: "
                                 f"{type(exc).__name__}: {exc}; save and load with the same schedule") from None
        for i, (old, new) in enumerate(zip(state_dict["param_groups"], self.param_groups)):
            lam = check_lambda(i, {**old, "params": new["params"]}, {})
            self._check_plausible(i, lam, max_lrs[i])
        return max_lrs

    def __getstate__(self) -> dict[str, Any]:
        # the LR scheduler's step wrapper and the cautious scratch buffers are not state
        skip = ("step", "_opt_called")
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._buffers, self._checked, self._plans = Scratch(), Scratch(), Scratch()
        if "_peaks" not in state:  # pickled by a decaykit that did not follow the schedulers' peaks
            on_top = lr_scale_on_top(self.param_groups)
            self._peaks = [scheduler_peak(g, on_top) for g in self.param_groups][: len(self._max_lrs)]

    def __getattr__(self, name: str) -> Any:
        # schedule-free optimizers switch θ between their train and eval points: a loop (and the HF Trainer, which
        # looks for them) calls optimizer.train() / .eval(), which the engine's inner optimizer answers
        inner = self.__dict__.get("optimizer")
        if name in _FORWARDED and inner is not None:
            return getattr(inner, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        lines = [f"WeightDecay(mode={self.mode!r}, schedule={self.schedule!r}, step={self._step}) over "]
        inner = repr(self.optimizer).splitlines()
        return lines[0] + "\n".join(inner)

    # -- internals -------------------------------------------------------------------------------
    def _check_plausible(self, i: int, lam: float | Tensor, max_lr: float | None = None) -> None:
        if not self.allow_large_decay:
            check_plausible(self.mode, i, lam, self._max_lrs[i] if max_lr is None else max_lr)

    def _warn_rounded_away(self) -> None:
        """Warn where a group's rate, as it stands, is below a quarter of its half-precision tensors' spacing: θ·(1 −
        r) rounds back to θ for every value (bf16 at lr 1e-3, λ 0.05), so the decay expected_decay() reports never
        acts. Told from the rate and the dtype alone; the audit and the Monitor read the values."""
        try:
            expected_decay = self.expected_decay()
        except DecayError:  # a rate the first step refuses (allow_large_decay aside): that says more
            return
        told = []
        for i, (group, expected) in enumerate(zip(self.param_groups, expected_decay)):
            rate = expected["rate"]
            if expected["kind"] not in ("decoupled", "cautious") or isinstance(rate, Tensor) or not rate > 0:
                continue
            if expected["path"] == "inner" and group.get("fused"):  # rounded with the update: it may act, partly
                continue
            dtypes = {p.dtype for p in group["params"] if p.is_floating_point() and p.element_size() < 4}
            lost = sorted((str(d).removeprefix("torch."), d) for d in dtypes if rounds_every_value(rate, d))
            if lost:
                told.append((i, rate, lost[0]))
        if told:
            where = ", ".join(f"param_groups[{i}] (r = {r:.3g}, {name})" for i, r, (name, _) in told)
            warnings.warn(f"the decay rounds back to θ for every value of the half-precision tensors of {where}: "
                          f"θ·(1 − r) with r below a quarter of their spacing is θ, so it never acts; "
                          f"{rounding_fix(told[0][2][1])}", DecayWarning, stacklevel=3)

    def _given_max_lr(self, i: int) -> float | None:
        given = self._max_lr_arg
        if isinstance(given, list):
            return given[i] if i < len(given) else None
        return given

    def _sync_max_lrs(self) -> None:
        """η_max for groups added since (by ``add_param_group`` on either object), and read again where
        a scheduler wrote another peak into a group (``OneCycleLR`` built on the engine after it)."""
        groups = self.param_groups
        del self._max_lrs[len(groups) :], self._peaks[len(groups) :]
        on_top = self._on_top = lr_scale_on_top(groups)
        for i, group in enumerate(groups):
            given = self._given_max_lr(i)
            peak = None if given is not None else scheduler_peak(group, on_top)
            if i < len(self._max_lrs):
                if peak is not None and peak != self._peaks[i]:
                    self._max_lrs[i] = check_number(peak[1], f"param_groups[{i}][{peak[0]!r}]")
                    self._peaks[i] = peak
                continue
            value = given if given is not None else group_peak_lr(group, on_top)
            self._max_lrs.append(check_number(value, f"max_lr for param_groups[{i}]"))
            self._peaks.append(peak)

    def _plan_all(self) -> list[GroupStep]:
        self._sync_max_lrs()
        factor = check_multiplier(self.schedule, self._step)
        plans = []
        for i, group in enumerate(self.param_groups):
            lam, native = check_lambda(i, group, self._checked), _native(self.optimizer, group)
            # a plan follows from these alone: a step that repeats them reuses the last one and its rate
            # tensor (a stacked sweep's per-member rates are then not rebuilt every step)
            inputs = _PlanInputs(self.mode, factor, _number(group.get("lr")), self._max_lrs[i], native)
            last = self._plans.get(i)
            if last is not None and _same_lambda(last[0], lam) and last[1] == inputs:
                plans.append(last[2])
                continue
            if last is None or not _same_lambda(last[0], lam) or last[1].max_lr != inputs.max_lr:
                # a group added through the inner optimizer, a λ changed, or η_max read again at a new peak
                self._check_plausible(i, lam)
            plan = plan_group(self.mode, i, group, lam * factor, self._max_lrs[i], native, self._step, self._on_top)
            self._plans[i] = (lam, inputs, plan)
            plans.append(plan)
        return plans


def _fills_state(groups: list[dict[str, Any]]) -> bool:
    """A step that only creates the optimizer's state: every group at lr 0, every gradient there all zeros
    (torch.distributed.checkpoint's ``_init_optim_state``; read on this rank's shards, no collective)."""
    if not all(_number(g.get("lr", 0.0)) == 0 for g in groups):
        return False
    grads = [p.grad for g in groups for p in g["params"] if p.grad is not None]
    return bool(grads) and not any(bool(local(grad).any()) for grad in grads)


def _state_steps(state: Any) -> float | None:
    """The largest ``step`` count in an optimizer's saved state (Adam's, per tensor), or None where it keeps none."""
    steps = [float(v["step"]) for v in (state.values() if isinstance(state, Mapping) else ())
             if isinstance(v, Mapping) and isinstance(v.get("step"), (int, float, Tensor))]  # fmt: skip
    return max(steps) if steps else None


def saved_entry(state_dict: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The engine's entry of a state_dict, taken out of it (``state_dict`` is the caller's copy), and if there is
    none, why. Its copy in ``param_groups[0]`` serves where the top-level one was dropped on the way
    (``torch.distributed.checkpoint``'s ``get_optimizer_state_dict`` keeps "state" and "param_groups" only), unless
    the optimizer state moved on since (the copy then came through a plain optimizer that loaded it and trained)."""
    own = state_dict.pop(STATE_KEY, None)
    groups = state_dict.get("param_groups") or []
    copy_ = groups[0].get(STATE_KEY) if groups and isinstance(groups[0], Mapping) else None
    if any(isinstance(g, Mapping) and STATE_KEY in g for g in groups):
        state_dict["param_groups"] = [{k: v for k, v in g.items() if k != STATE_KEY} if isinstance(g, Mapping) else g
                                      for g in groups]  # fmt: skip
    if own is not None or not isinstance(copy_, Mapping):
        return own, f"state_dict has no {STATE_KEY!r} entry: it was saved from a plain optimizer"
    saved, now = copy_.get("state_steps"), _state_steps(state_dict.get("state"))
    if saved is not None and now is not None and saved != now:
        return None, (f"the {STATE_KEY!r} entry in param_groups[0] is from optimizer step {saved:g} but the state is at "
                      f"{now:g}: a plain optimizer loaded it and trained on")
    return {k: v for k, v in copy_.items() if k != "state_steps"}, ""


class _PlanInputs(NamedTuple):
    """What a group's plan follows from, besides λ: equal inputs and the same λ give the same plan."""

    mode: str
    factor: float
    lr: Any
    max_lr: float
    native: str | None


# torch's global step hooks ran once for the engine's step: its inner optimizer's step skips them (in this thread)
_global_step_hooks_paused = ThreadQuiet(
    lambda: (torch_optimizer._global_optimizer_pre_hooks, torch_optimizer._global_optimizer_post_hooks))


#: methods of the inner optimizer the engine answers with: schedule-free's mode switch
_FORWARDED = frozenset({"train", "eval"})


def _same_lambda(a: float | Tensor, b: float | Tensor) -> bool:
    """The same λ: one checked tensor (check_lambda hands out the same object until λ changes), or equal numbers."""
    return a is b or (not isinstance(a, Tensor) and not isinstance(b, Tensor) and a == b)


def _number(value: Any) -> Any:
    """A group's LR as a plain number where it is a one-element tensor, so plans can be compared by it."""
    return value.item() if isinstance(value, Tensor) and value.numel() == 1 else value


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


def _check_inner(optimizer: Any) -> None:
    if isinstance(optimizer, WeightDecay):
        raise DecayError("optimizer is already a WeightDecay engine; wrapping it again would decay twice")
    if not isinstance(getattr(optimizer, "param_groups", None), list) or not callable(getattr(optimizer, "step", None)):
        raise DecayError(
            f"optimizer must be a torch.optim.Optimizer (with param_groups and step), got {type(optimizer).__name__}; "
            "build it first: WeightDecay(torch.optim.AdamW(params, lr=...), mode=...)"
        )
    wrapper = optimizers.wrapper_name(optimizer)
    if wrapper is not None:  # it decides whether its optimizer steps: a decay outside would act on every call
        raise DecayError(
            f"WeightDecay cannot wrap {wrapper} ({type(optimizer).__name__}): it steps the optimizer it holds only on "
            "some calls (a gradient-accumulation boundary, an fp16 step not skipped), so a decay applied around it "
            "would act on every micro-batch; build WeightDecay(optimizer) first and hand the engine to the framework "
            "(accelerator.prepare(model, engine), or return it from configure_optimizers)"
        )
    for cls in type(optimizer).__mro__:  # a subclass of a refused optimizer steps alike
        entry = optimizers.info(cls)
        if entry is not None and entry.engine == "refused":
            raise DecayError(f"WeightDecay cannot drive {type(optimizer).__name__}: {entry.refusal}")

