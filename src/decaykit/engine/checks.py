"""What :class:`decaykit.WeightDecay` checks about its groups, η_max, schedule and checkpoints, each refused with a fix.

Numbers go through the one validator (:mod:`decaykit._validate`); this module adds what is
particular to the engine: groups it cannot decay in place, η_max per group, a per-member λ whose
members every parameter must hold along dim 0, and a schedule's output at a given step.
"""

from __future__ import annotations

import itertools
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from decaykit._validate import check_int, check_number, check_rates
from decaykit.convert import convert
from decaykit.errors import DecayError, DecayWarning
from decaykit.policy.names import canonical_name

__all__ = [
    "PEAK_MODES",
    "PLAUSIBLE_SHRINK",
    "SHAPED_STATE",
    "check_checkpoint",
    "check_group",
    "check_lambda",
    "check_loadable",
    "check_max_lr",
    "check_member_lambda",
    "check_multiplier",
    "check_plausible",
    "check_state_dict",
    "check_within_peak",
    "group_lr",
    "group_peak_lr",
    "lr_scale_on_top",
    "scheduler_peak",
    "short",
    "short_repr",
]

#: the modes whose rate divides by η_max: r = (η_t/η_max)·λ or (η_t²/η_max)·λ
PEAK_MODES = ("lr_independent", "corrected")


def check_group(i: int, group: dict[str, Any], mode: str, facts: Any = None) -> None:
    """Refuse a group the engine's in-place decay would break (``differentiable=True``) or whose decay its mode
    cannot rate (no ``lr``); warn where the group's ``lr`` is a multiplier of the optimizer's own step size, read
    from a ``d`` in an optimizer decaykit has no ``facts`` on (torch's Adafactor's ``d`` is a clipping threshold)."""
    if group.get("differentiable", False):
        raise DecayError(
            f"param_groups[{i}] has differentiable=True; the engine's in-place decay is not differentiable, "
            "so build the inner optimizer with differentiable=False"
        )
    if mode == "coupled_l2":  # λθ added to the gradient: no lr in its rate
        return
    lr = group_lr(i, group, mode)
    d, lam = _real(group.get("d")), group.get("weight_decay", 0.0)
    decays = bool(lam.any()) if isinstance(lam, Tensor) else lam != 0
    if d is not None and d > 0 and decays and facts is None:
        warnings.warn(
            f"param_groups[{i}] holds d = {d:g}, the step-size estimate D-Adaptation-style optimizers keep and step "
            f"by as d·lr: lr = {lr:g} is then a multiplier, not the step size, and mode {mode!r} rates the decay by "
            f"lr alone (θ ← θ(1 − lr·λ) in 'lr_coupled'), {1 / d:.3g}x the optimizer's own decoupled decay "
            "(d·lr·λ) at this d. Use the optimizer's own weight_decay, or scale λ by the d you expect",
            DecayWarning, stacklevel=3)


def group_lr(i: int, group: dict[str, Any], mode: str) -> float:
    """The group's lr, the η_t its decay is rated by; refused when it is no number (transformers' Adafactor keeps
    lr=None with relative_step=True, and computes its step size itself)."""
    lr = _real(group.get("lr"))
    if lr is None:
        raise DecayError(
            f"param_groups[{i}]['lr'] is {group.get('lr')!r}: mode {mode!r} rates the decay by the group's lr, and "
            "this group has none (an optimizer that sets its own step size, such as transformers' Adafactor with "
            "relative_step=True); give the optimizer a fixed lr (Adafactor(..., relative_step=False, lr=1e-3)), or "
            "use mode='coupled_l2', or the optimizer's own weight_decay without the engine", argument="optimizer")
    return lr


def check_max_lr(max_lr: Any, n_groups: int) -> float | list[float] | None:
    """``max_lr=`` as given to the engine: None, one η_max > 0 for every group, or one per group."""
    if max_lr is None:
        return None
    several = isinstance(max_lr, Sequence) and not isinstance(max_lr, (str, bytes))  # "0.01" is not 4 values
    values = list(max_lr) if several else [max_lr]
    for v in values:
        check_number(v, "max_lr", allow_zero=False, strict_type=True)
    if several:
        if len(values) != n_groups:
            raise DecayError(f"max_lr has {len(values)} values but the optimizer has {n_groups} param groups")
        return [float(v) for v in values]
    return float(values[0])


def scheduler_peak(group: dict[str, Any], on_top: bool = False) -> tuple[str, float] | None:
    """The peak LR a scheduler wrote into a group: ``("max_lr", v)``, else ``("initial_lr", v)``, else None.

    With ``on_top`` (:func:`lr_scale_on_top`), a base LR (``initial_lr``) is multiplied by the group's
    ``lr_scale``, which the schedule applies on top of it; OneCycleLR's ``max_lr`` is the group's own peak."""
    # OneCycleLR stores its peak as max_lr and its start as initial_lr; other schedulers the base LR
    for key in ("max_lr", "initial_lr"):
        value = _real(group.get(key))
        if value is not None:
            return key, value * _scale(group) if on_top and key == "initial_lr" else value
    return None


def group_peak_lr(group: dict[str, Any], on_top: bool = False) -> float:
    """η_max read from a group: ``max_lr``, else ``initial_lr``, else ``lr``, else 0 (see :func:`scheduler_peak`)."""
    found = scheduler_peak(group, on_top)
    if found is not None:
        return found[1]
    lr = _real(group.get("lr"))
    return 0.0 if lr is None else lr * _scale(group) if on_top else lr


def lr_scale_on_top(groups: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the groups' ``lr_scale`` multiplies the base LR their peak is read from, rather than being in it.

    timm's schedulers and the BEiT/MAE recipes' hand-written ones write ``lr = base·lr_scale`` into every group
    at every step and keep one base in all of them (``initial_lr``, or the ``lr`` the optimizer was built with);
    ``decaykit.param_groups(..., lr=...)`` writes ``lr·lr_scale`` itself, so there the bases differ as the scales
    do. Read from the groups with an ``lr_scale`` and no OneCycleLR ``max_lr`` (which no scale multiplies): on
    top where they hold two different scales over one base. One scale alone cannot tell: taken as in the base.
    """
    bases: dict[float, float] = {}
    for group in groups:
        scale = _real(group.get("lr_scale"))
        base = _real(group.get("initial_lr"))
        base = _real(group.get("lr")) if base is None else base
        if scale is None or not scale > 0 or base is None or _real(group.get("max_lr")) is not None:  # nan too
            continue
        bases.setdefault(scale, base)
    values = list(bases.values())
    return len(bases) > 1 and all(abs(v - values[0]) <= 1e-9 * abs(values[0]) for v in values)


def _scale(group: Mapping[str, Any]) -> float:
    scale = _real(group.get("lr_scale"))
    return scale if scale is not None and scale > 0 else 1.0


def _real(value: Any) -> float | None:
    if isinstance(value, (numbers.Real, Tensor)) and not isinstance(value, bool):
        return float(value)
    return None


def check_within_peak(mode: str, i: int, lr: float, max_lr: float, step: int, lr_scale: Any = None) -> None:
    """Refuse η_t above η_max (beyond rounding) in a mode that divides by η_max: the rate would exceed λ.
    ``lr_scale``: the group's, where η_max was taken as its base LR times it (:func:`lr_scale_on_top`)."""
    if mode not in PEAK_MODES or lr <= max_lr * (1 + 1e-6):  # a 0-dim float32 LR rounds to 6e-8
        return
    scaled = _real(lr_scale) not in (None, 1.0)
    fix = ("η_max is read from the group (max_lr, else initial_lr, else lr), which does not hold the peak of a "
           "schedule that rises above its base LR (CyclicLR keeps its max_lr on the scheduler): pass "
           "WeightDecay(..., max_lr=<the schedule's peak LR>), e.g. CyclicLR's max_lr")
    if scaled:
        fix = (f"The group holds lr_scale = {lr_scale:g} and every group one base LR, so η_max was taken as base·"
               "lr_scale, as timm's schedulers set it; torch's schedulers do not apply lr_scale: build the groups "
               "with the scale in their lr (decaykit.param_groups(..., lr=...)), or pass WeightDecay(..., max_lr=...)")
    raise DecayError(
        f"param_groups[{i}] has lr = {lr:g} at step {step}, above its η_max = {max_lr:g}; mode {mode!r} "
        f"divides by η_max, the schedule's peak LR, so this step would decay {lr / max_lr:.3g}x as much as λ "
        f"promises at the peak. {fix}"
    )


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


def check_checkpoint(own: Any, key: str, mode: str, schedule: Any, saved_groups: list[Any]) -> list[float]:
    """The engine's entry ``state_dict[key]`` of a checkpoint fits this engine; returns its η_max per group.

    Its mode, step, schedule type and η_max (one number per saved group, > 0 where the mode divides
    by it and the group's LR is not 0) are checked; nothing is changed.
    """
    where = f"state_dict[{key!r}]"
    if not isinstance(own, Mapping) or not {"mode", "step", "max_lr", "schedule"} <= set(own):
        raise DecayError(f"{where} must be the dict WeightDecay.state_dict() saves (mode, step, max_lr, schedule), "
                         f"got {short_repr(own)}; save the checkpoint from the engine, or delete {where} to keep "
                         "this engine's schedule step and η_max")
    if own["mode"] != mode:
        raise DecayError(
            f"the checkpoint was saved with mode={own['mode']!r} but this engine has "
            f"mode={mode!r}; build WeightDecay(..., mode={own['mode']!r}) to resume, or "
            f"delete {where} to switch modes on purpose"
        )
    check_int(own["step"], f"{where}['step']")
    saved = own["max_lr"]
    if not isinstance(saved, (list, tuple)) or len(saved) != len(saved_groups):
        raise DecayError(f"{where}['max_lr'] must be a list of η_max, one per param group ({len(saved_groups)}), "
                         f"got {short_repr(saved)}: the checkpoint is damaged or from other groups")
    max_lrs = []
    for i, (value, group) in enumerate(zip(saved, saved_groups)):
        peak = check_number(value, f"{where}['max_lr'][{i}]", strict_type=True)
        lr = _real(group.get("lr")) if isinstance(group, Mapping) else None
        if peak == 0 and mode in PEAK_MODES and lr:  # the engine saves 0 only for a group built at lr 0
            raise DecayError(
                f"{where}['max_lr'][{i}] is 0 but the saved group's lr is {lr:g}, and mode {mode!r} divides by "
                "η_max: the checkpoint is damaged; set it to the run's peak LR (or build the engine with max_lr=)"
            )
        max_lrs.append(peak)
    kind = own["schedule"].get("type") if isinstance(own["schedule"], Mapping) else None
    if kind is None:
        raise DecayError(f"{where}['schedule'] must be the dict Schedule.state_dict() saves ({{'type': ...}}), "
                         f"got {short_repr(own['schedule'])}: the checkpoint is damaged")
    if kind != schedule.state_dict()["type"]:
        raise DecayError(
            f"the checkpoint was saved with a {kind} weight-decay schedule but this "
            f"engine has {schedule!r}; build the engine with the schedule it was saved with"
        )
    return max_lrs


def short_repr(value: Any) -> str:
    """A value for a message, cut to 60 characters, with its type: ``0.001 (float)``."""
    text = repr(value)
    return f"{text[:57] + '...' if len(text) > 60 else text} ({type(value).__name__})"


def short(x: float | Tensor) -> str:
    """λ or a rate for a message: ``0.05``, or the members' values rounded."""
    return f"{x:g}" if isinstance(x, float) else str([round(v, 6) for v in x.tolist()])


#: optimizer state entries shaped like their parameter (Adam, SGD, RMSprop, Adagrad, Adadelta, Adamax, ASGD ...);
#: factored or scalar entries (Adafactor's row/column, ``step``) tell nothing about which tensor they belong to
SHAPED_STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg", "grad_avg", "sum",
                 "acc_delta", "exp_inf", "ax", "prev")


def check_state_dict(saved: Any) -> None:
    """Refuse what is not an optimizer state_dict at all (None, a list, a dict without ``param_groups``)."""
    if not isinstance(saved, Mapping) or not isinstance(saved.get("param_groups"), list):
        raise DecayError(f"state_dict must be an optimizer state_dict (a dict with 'param_groups' and 'state'), "
                         f"got {short_repr(saved)}; pass what optimizer.state_dict() returned")


def check_loadable(saved: Any, groups: list[dict[str, Any]]) -> None:
    """Refuse a state_dict whose groups do not fit ``groups``: count, sizes, ``param_names`` and state shapes.

    torch loads by position only, so groups saved in another order put the decay and the moments on
    the wrong tensors without a word; everything here is read, nothing is changed.
    """
    check_state_dict(saved)
    saved_groups, state = saved["param_groups"], saved.get("state", {})
    if len(saved_groups) != len(groups):
        raise DecayError(
            f"the state_dict has {len(saved_groups)} param groups but this optimizer has {len(groups)}; build the "
            "optimizer with the same groups the checkpoint was saved from (decaykit.param_groups with the same policy)"
        )
    for i, (old, new) in enumerate(zip(saved_groups, groups)):
        ids, params = list(old.get("params", [])), new["params"]
        if len(ids) != len(params):
            raise DecayError(f"param_groups[{i}] of the state_dict holds {len(ids)} tensors but this optimizer's "
                             f"holds {len(params)}; the checkpoint was saved from other groups")
        _check_names(i, old.get("param_names"), new.get("param_names"))
        names = new.get("param_names") or old.get("param_names") or []
        for j, (k, p) in enumerate(zip(ids, params)):
            entry = state.get(k, {}) if isinstance(state, Mapping) else {}
            for key in SHAPED_STATE:
                value = entry.get(key) if isinstance(entry, Mapping) else None
                if isinstance(value, Tensor) and value.dim() > 0 and tuple(value.shape) != tuple(p.shape):
                    name = names[j] if j < len(names) else f"param_groups[{i}]['params'][{j}]"
                    raise DecayError(
                        f"the state_dict's {key!r} for {name} has shape {tuple(value.shape)} but the tensor in "
                        f"that place has shape {tuple(p.shape)}: the groups were saved in another order or from "
                        "another model; nothing was loaded"
                    )


def _check_names(i: int, saved: Any, current: Any) -> None:
    if not saved or not current:
        return
    for j, (a, b) in enumerate(itertools.zip_longest(saved, current)):
        if a is None or b is None or canonical_name(str(a)) != canonical_name(str(b)):
            raise DecayError(
                f"param_groups[{i}] was saved with {a!r} in place {j} but this optimizer has {b!r} there: the "
                "groups are in another order (or from another model), and torch would load the decay and the "
                "optimizer state onto the wrong tensors; build the groups in the order they were saved; nothing was loaded"
            )


#: a per-step shrink this large at the peak LR is not a weight decay anyone means in the LR-scaled modes
PLAUSIBLE_SHRINK = 0.01


def check_plausible(mode: str, i: int, lam: float | Tensor, max_lr: float) -> None:
    """Refuse a λ whose meaning in ``mode`` is implausible, judged by the per-step shrink r at the peak LR η_max.

    ``lr_independent``: r = λ, refused above 1% per step (a λ meant for torch's AdamW, 0.05, given to
    this mode shrinks every weight by 5% per step); the message gives the λ that decays as torch's
    AdamW would with this number (:func:`decaykit.convert`). ``lr_coupled``, ``corrected`` and
    ``cautious``: r = η_max·λ, refused from 1 up (at 1 the weights are zeroed, above it their sign flips).
    The error names ``weight_decay`` as its argument (``--weight-decay`` on the command line).
    """
    if mode == "coupled_l2" or max_lr <= 0:
        return
    worst = float(lam.max()) if isinstance(lam, Tensor) else float(lam)
    where = f"param_groups[{i}]['weight_decay'] = {worst:g}"
    if mode != "lr_independent":
        if max_lr * worst >= 1:
            raise DecayError(
                f"{where} with peak lr {max_lr:g} in mode {mode!r} means θ ← θ(1 − η·λ) with η·λ = "
                f"{max_lr * worst:.4g} >= 1 per step, which zeroes or flips the sign of every decayed weight; a "
                "torch AdamW λ is typically 0.01 .. 0.1: lower weight_decay or the LR", argument="weight_decay"
            )
        return
    if worst > PLAUSIBLE_SHRINK * (1 + 1e-9):  # a converted 1% (0.2 × 0.05) may round just above it
        as_independent = convert(worst, from_="lr_coupled", to="lr_independent", max_lr=max_lr)
        raise DecayError(
            f"{where} in mode 'lr_independent' shrinks every decayed weight by r = (η_t/η_max)·λ = {worst:.4g} "
            f"({100 * worst:.3g}%) per step at the peak LR, refused as implausible (more than "
            f"{100 * PLAUSIBLE_SHRINK:g}%; an lr_independent λ is typically 1e-5 .. 1e-3). If {worst:g} is a torch "
            f"AdamW (lr_coupled) λ, its lr_independent equivalent at η_max = {max_lr:g} is {as_independent:.6g} "
            f"(decaykit.convert({worst:g}, from_='lr_coupled', to='lr_independent', max_lr={max_lr:g})); "
            "or keep the number with mode='lr_coupled' (or on purpose, as in a sweep over λ, with allow_large_decay=True)",
            argument="weight_decay",
        )
