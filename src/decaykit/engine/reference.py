"""The reference twin of :class:`decaykit.WeightDecay`: every mode as one formula, in a plain loop.

As schedule_free ships ``*_reference.py`` beside each fast optimizer, this ships the slow,
obvious version of the engine that ``tests/test_reference.py`` checks the engine against. Per
step t, per group, per parameter with a gradient, per member k (row k of every parameter when λ is
a 1-D tensor of K values; the whole tensor otherwise), with λ_t = s(t)·λ and η_t the group's LR:

=================  ===========================================================================
mode               this step
=================  ===========================================================================
``lr_coupled``     θ ← θ(1 − η_t·λ_t), then the inner step
``lr_independent`` θ ← θ(1 − (η_t/η_max)·λ_t), then the inner step
``corrected``      θ ← θ(1 − (η_t²/η_max)·λ_t), then the inner step
``cautious``       θ_t copied; the inner step gives θ' = θ_t − η_t·u; then
                   θ ← θ' − η_t·λ_t·𝟙((θ_t − θ')⊙θ_t ≥ 0)⊙θ_t (ties decay; complex per real part)
``coupled_l2``     g ← g + λ_t·θ (g − λ_t·θ with ``maximize``), the inner step, g put back
=================  ===========================================================================

The inner optimizer never decays: the groups' ``weight_decay`` is taken into the reference when it
is built and set to 0. No foreach, no fused kernels, no chunks, no sharding, no checks beyond λ,
η_max and the schedule's output. Not an ``Optimizer``: attach LR schedulers to ``.optimizer``.

>>> import torch
>>> p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
>>> ref = ReferenceWeightDecay(torch.optim.SGD([p], lr=0.1, weight_decay=0.5), mode="lr_coupled")
>>> p.grad = torch.zeros(2)
>>> ref.step()
>>> p.data  # θ(1 − 0.1·0.5)
tensor([ 0.9500, -1.9000])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from decaykit._validate import check_number, check_rates
from decaykit.engine.checks import group_peak_lr, lr_scale_on_top, scheduler_peak
from decaykit.engine.modes import MODES
from decaykit.engine.schedules import Schedule, as_schedule
from decaykit.errors import DecayError

__all__ = ["ReferenceWeightDecay", "shrink_rate"]


def shrink_rate(mode: str, lam: float, lr: float, max_lr: float) -> float:
    """r of θ ← θ(1 − r) for one member: η·λ, (η/η_max)·λ or (η²/η_max)·λ (cautious: η·λ, masked)."""
    if mode in ("lr_coupled", "cautious"):
        return lr * lam
    if mode == "lr_independent":
        return (lr / max_lr) * lam
    if mode == "corrected":
        return (lr * lr / max_lr) * lam
    raise DecayError(f"mode {mode!r} has no shrink rate; coupled_l2 adds λθ to the gradient")


def _members(t: Tensor, lams: list[float] | None, lam: float) -> list[tuple[Tensor, float]]:
    """(view, λ) pairs: row k of ``t`` with λ_k for a per-member λ, else ``t`` whole with λ."""
    if lams is None:
        return [(t, lam)]
    return [(t[k], lam_k) for k, lam_k in enumerate(lams)]


class ReferenceWeightDecay:
    """``optimizer`` stepped with weight decay per ``mode`` on a λ ``schedule``, one formula per mode.

    Args:
        optimizer: the inner ``torch.optim.Optimizer``; its groups' ``weight_decay`` (a float or a
            1-D tensor, one value per stacked member) become λ and are set to 0 in the groups.
        mode: one of :data:`decaykit.engine.modes.MODES`.
        schedule: λ_t = schedule(t)·λ, t = 0 at the first step; None keeps λ constant.
        max_lr: η_max for every group (a float) or per group (a sequence); default, as the engine:
            each group's ``max_lr``, else ``initial_lr``, read at every step (a scheduler built after
            the reference sets them), else its ``lr`` when the reference is built; times the group's
            ``lr_scale`` where the groups hold several over one base LR (timm's schedulers apply it on top).
    """

    def __init__(self, optimizer: Optimizer, mode: str = "lr_coupled",
                 schedule: Schedule | Callable[[int], float] | None = None,
                 max_lr: float | Sequence[float] | None = None) -> None:
        if mode not in MODES:
            raise DecayError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if not isinstance(optimizer, Optimizer):
            raise DecayError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        groups = optimizer.param_groups
        several = isinstance(max_lr, Sequence) and not isinstance(max_lr, str)
        if several and len(max_lr) != len(groups):
            raise DecayError(f"max_lr has {len(max_lr)} values but the optimizer has {len(groups)} param groups")
        self.optimizer, self.mode, self.schedule = optimizer, mode, as_schedule(schedule)
        self.steps_taken = 0
        self.weight_decays: list[float | list[float]] = []
        self.max_lrs: list[float] = []  # η_max where given or where the group has no scheduler peak
        self.given: list[bool] = []
        for i, group in enumerate(groups):
            lam = group.get("weight_decay", 0.0)
            where = f"param_groups[{i}]['weight_decay']"
            if isinstance(lam, Tensor) and lam.dim() > 0:
                self.weight_decays.append(check_rates(lam, where).tolist())
            else:
                self.weight_decays.append(check_number(lam, where))
            if "weight_decay" in group:
                group["weight_decay"] = 0.0  # the inner step decays nothing; λ lives here now
            peak = max_lr[i] if several else max_lr
            self.given.append(peak is not None)
            peak = group_peak_lr(group, lr_scale_on_top(groups)) if peak is None else peak
            divides = mode in ("lr_independent", "corrected")  # r = (η_t/η_max)·λ or (η_t²/η_max)·λ
            self.max_lrs.append(check_number(peak, f"max_lr for param_groups[{i}]", allow_zero=not divides))

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        """One inner step with this step's decay, as the table in the module docstring says."""
        factor = check_number(self.schedule(self.steps_taken), f"schedule({self.steps_taken})")
        work = []  # (params with a gradient, λ_t per member or None, λ_t, η_t, η_max)
        on_top = lr_scale_on_top(self.param_groups)  # lr_scale applied to a scheduler's base LR (timm)
        for group, lam, max_lr, given in zip(self.param_groups, self.weight_decays, self.max_lrs, self.given):
            found = None if given else scheduler_peak(group, on_top)
            max_lr = max_lr if found is None else found[1]
            params = [p for p in group["params"] if p.grad is not None]
            lams = [factor * v for v in lam] if isinstance(lam, list) else None
            work.append((params, lams, factor * lam if lams is None else 0.0, float(group["lr"]), max_lr))
        if self.mode == "cautious":
            self._cautious(work)
        elif self.mode == "coupled_l2":
            self._coupled_l2(work)
        else:
            for params, lams, lam, lr, max_lr in work:
                for p in params:
                    for view, lam_k in _members(p, lams, lam):
                        view.mul_(1.0 - shrink_rate(self.mode, lam_k, lr, max_lr))
            self.optimizer.step()
        self.steps_taken += 1

    def _cautious(self, work: list[tuple]) -> None:
        before = [[p.clone() for p in params] for params, *_ in work]
        self.optimizer.step()
        for (params, lams, lam, lr, _), copies in zip(work, before):
            for p, b in zip(params, copies):
                p, b = (torch.view_as_real(p), torch.view_as_real(b)) if p.is_complex() else (p, b)
                for (after, lam_k), (start, _) in zip(_members(p, lams, lam), _members(b, lams, lam)):
                    agree = ((start - after) * start >= 0).to(after.dtype)  # 𝟙(u⊙θ_t ≥ 0), η_t·u = θ_t − θ'
                    after.sub_(shrink_rate("cautious", lam_k, lr, 0.0) * agree * start)

    def _coupled_l2(self, work: list[tuple]) -> None:
        kept = []
        for (params, lams, lam, _, _), group in zip(work, self.param_groups):
            sign = -1.0 if group.get("maximize", False) else 1.0
            for p in params:
                kept.append((p, p.grad))
                grad = p.grad.clone()
                for (g, lam_k), (theta, _) in zip(_members(grad, lams, lam), _members(p, lams, lam)):
                    g.add_(theta, alpha=sign * lam_k)
                p.grad = grad
        try:
            self.optimizer.step()
        finally:
            for p, g in kept:
                p.grad = g
