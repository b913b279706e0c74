"""The five ways :class:`decaykit.WeightDecay` applies a group's weight decay, and their kernels.

Notation: η_t the group's LR at this step, η_max its peak LR, λ its weight decay (already multiplied
by the schedule), u the inner optimizer's update direction (its step is θ ← θ − η_t·u).

======================  ==========================================  ==========================================
mode                    update rule                                 source
======================  ==========================================  ==========================================
``lr_coupled``          θ ← θ(1 − η_t·λ) − η_t·u                    torch/optax AdamW (Loshchilov & Hutter 2019)
``lr_independent``      θ ← θ(1 − (η_t/η_max)·λ) − η_t·u            Wortsman et al. 2023; Composer; optimi
``corrected``           θ ← θ(1 − (η_t²/η_max)·λ) − η_t·u           AdamC (Defazio 2025); timm ``*c`` optimizers
``cautious``            θ ← θ − η_t(u + λ·𝟙(u⊙θ ≥ 0)⊙θ)             Chen et al. 2025, cautious weight decay
``coupled_l2``          g ← g + λθ, then the inner step             L2 penalty (torch SGD/Adam ``weight_decay``)
======================  ==========================================  ==========================================

The three decoupled modes shrink θ by a factor (1 − r) before the inner step, which is where torch's
AdamW does it, so the update u never sees the decay. Each kernel has a single-tensor reference loop
and a ``torch._foreach_*`` fast path; ``tests/test_modes.py`` checks them against each other. The
cautious kernels are in :mod:`decaykit.engine.cautious`; DTensor parameters run shard by shard
(:mod:`decaykit._dtensor`). The whole engine is checked against :mod:`decaykit.engine.reference`,
this table as a plain loop (``tests/test_reference.py``).
A rate may be a float or a 1-D tensor of length K: per-member decay for K stacked models, applied
along dim 0 (member k of every parameter gets r_k).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from decaykit import _dtensor as shards

__all__ = [
    "DECOUPLED_MODES",
    "MODES",
    "decay_rate",
    "decoupled_decay_",
    "inner_weight_decay",
    "l2_gradients",
    "member_view",
]

MODES: tuple[str, ...] = ("lr_coupled", "lr_independent", "corrected", "cautious", "coupled_l2")
DECOUPLED_MODES: tuple[str, ...] = ("lr_coupled", "lr_independent", "corrected")

Rate = float | Tensor


def decay_rate(mode: str, weight_decay: Rate, lr: float, max_lr: float) -> Rate:
    """The per-step shrink rate r of θ ← θ(1 − r) that ``mode`` applies.

    - ``lr_coupled``: r = η_t·λ (torch AdamW: the decay follows the LR's size and shape).
    - ``lr_independent``: r = (η_t/η_max)·λ (Composer's DecoupledAdamW, Wortsman et al. 2023: the
      decay follows the schedule's shape, not the LR's size, so λ keeps its meaning when η moves).
    - ``corrected``: r = (η_t²/η_max)·λ (AdamC, Defazio 2025: for layers followed by a normalisation,
      keeps the equilibrium gradient norm steady as the LR decays).
    - ``cautious``: r = η_t·λ, applied only where the update and θ agree in sign (Chen et al. 2025).
    - ``coupled_l2``: no decoupled shrink; λ is a gradient term (returns 0).

    >>> decay_rate("lr_independent", 0.1, lr=5e-4, max_lr=1e-3)
    0.05
    """
    if mode in ("lr_coupled", "cautious"):
        return lr * weight_decay
    if mode == "lr_independent":
        return (lr / max_lr) * weight_decay
    if mode == "corrected":
        return (lr * lr / max_lr) * weight_decay
    if mode == "coupled_l2":
        return 0.0
    raise ValueError(f"unknown mode {mode!r}")


def inner_weight_decay(mode: str, weight_decay: float, lr: float, max_lr: float) -> float:
    """The ``weight_decay`` to give an AdamW-style kernel, θ ← θ(1 − η_t·wd), so it applies ``mode``.

    This is how the three decoupled modes cost no extra pass over the parameters: η_t·wd = r, with
    wd = λ (``lr_coupled``), λ/η_max (``lr_independent``) or λ·η_t/η_max (``corrected``). No division
    by η_t, so a zero LR stays exact.

    >>> inner_weight_decay("corrected", 0.1, lr=5e-4, max_lr=1e-3)
    0.05
    """
    if mode == "lr_coupled":
        return weight_decay
    if mode == "lr_independent":
        return weight_decay / max_lr
    if mode == "corrected":
        return weight_decay * (lr / max_lr)
    raise ValueError(f"mode {mode!r} has no AdamW-kernel form")


def member_view(rate: Tensor, p: Tensor) -> Tensor:
    """A per-member rate of shape (K,) as (K, 1, ..., 1), on p's device and dtype, to broadcast along dim 0."""
    return rate.to(device=p.device, dtype=p.dtype).view(-1, *([1] * (p.dim() - 1)))


# Per rate tensor, while it lives and is unchanged, its factors (1 − r) per parameter dtype, device and rank:
# the engine keeps one step's plan, and its rate tensor, while λ, the LR and the schedule stay the same.
# Keyed by id (a tensor's == is element-wise); the weak reference drops the entry when the rate is freed.
_FACTORS: dict[int, tuple[weakref.ref[Tensor], int, dict[tuple[Any, ...], Tensor]]] = {}


def _shrink_factors(params: Sequence[Tensor], rate: Tensor) -> list[Tensor]:
    known = _FACTORS.get(id(rate))
    if known is None or known[0]() is not rate or known[1] != rate._version:
        key = id(rate)
        known = _FACTORS[key] = (weakref.ref(rate, lambda _: _FACTORS.pop(key, None)), rate._version, {})
    out = []
    for p in params:
        where = (p.dtype, p.device, p.dim())
        factor = known[2].get(where)
        if factor is None:
            # 1 − r in float64 then cast, as torch rounds the scalar (1 − η·λ) once to the parameter's dtype
            factor = known[2][where] = member_view(1.0 - rate.double(), p)
        out.append(factor)
    return out


def decoupled_decay_(params: Sequence[Tensor], rate: Rate, *, foreach: bool = True, undo: bool = False) -> None:
    """θ ← θ(1 − r) in place, for every tensor in ``params`` (Loshchilov & Hutter 2019).

    ``rate`` is a float, or a tensor of shape (K,) decaying member k of each parameter (dim 0) by r_k.
    ``foreach=False`` runs the single-tensor reference loop; ``True`` one ``torch._foreach_mul_``.
    DTensor parameters are decayed shard by shard (:mod:`decaykit._dtensor`).

    ``undo=True`` takes a decay back, θ ← θ/(1 − r) by the same rounded factor, for a step that
    failed after it: θ comes back to within one rounding (where 1 − r rounds to 0 it stays 0), and in
    float32/float64 decaying it again gives the decayed θ of the failed step.
    """
    if not params:
        return
    for _, (ps,), r, dispatch in shards.parts([params], rate):
        if dispatch:
            with shards.replicated():
                _decoupled(ps, r, False, undo)
        else:
            _decoupled(ps, r, foreach, undo)


def _decoupled(params: list[Tensor], rate: Rate, foreach: bool, undo: bool = False) -> None:
    if isinstance(rate, Tensor):
        factors = _shrink_factors(params, rate)
        if undo:  # a member zeroed by r = 1 cannot come back
            factors = [f.masked_fill(f == 0, 1.0) for f in factors]
        if foreach:
            (torch._foreach_div_ if undo else torch._foreach_mul_)(params, factors)
        else:
            for p, f in zip(params, factors):
                (p.div_ if undo else p.mul_)(f)
        return
    factor = 1.0 - rate
    if undo and factor == 0:
        return
    if foreach:
        (torch._foreach_div_ if undo else torch._foreach_mul_)(params, factor)
    else:
        for p in params:
            (p.div_ if undo else p.mul_)(factor)


def l2_gradients(
    params: Sequence[Tensor], grads: Sequence[Tensor], weight_decay: Rate, *, maximize: bool = False, foreach: bool = True
) -> list[Tensor]:
    """New gradients g + λθ: the gradient of loss + (λ/2)‖θ‖² (coupled L2, Krogh & Hertz 1992).

    The caller's ``grads`` are left untouched (torch's SGD and Adam do not modify ``.grad`` either).
    With ``maximize`` the optimizer ascends, so the penalty enters as g − λθ and still shrinks θ.
    ``weight_decay`` is a float or a (K,) tensor for stacked members. DTensor gradients get DTensor
    gradients laid out alike, computed shard by shard.
    """
    if not params:
        return []
    cls = shards.dtensor_class()
    if cls is None:
        return _l2(params, grads, weight_decay, maximize, foreach)
    out: list[Tensor | None] = [None] * len(params)
    for idx, (ps, gs), lam, dispatch in shards.parts([params, grads], weight_decay):
        with shards.replicated() if dispatch else contextlib.nullcontext():
            new = _l2(ps, gs, lam, maximize, foreach and not dispatch)
        for i, g in zip(idx, new):
            old = grads[i]
            if isinstance(old, cls) and not isinstance(g, cls):  # a local shard: wrap it as the old gradient
                g = cls.from_local(g, old.device_mesh, old.placements, shape=old.shape, stride=old.stride(),
                                   run_check=False)
            out[i] = g
    for i, g in enumerate(grads):
        if out[i] is None:  # an empty shard: nothing to add
            out[i] = g.clone()
    return out  # type: ignore[return-value]


def _l2(params: Sequence[Tensor], grads: Sequence[Tensor], weight_decay: Rate, maximize: bool, foreach: bool) -> list[Tensor]:
    sign = -1.0 if maximize else 1.0
    if isinstance(weight_decay, Tensor):
        scales = [member_view(weight_decay, p).mul(sign) for p in params]
        if foreach:
            return torch._foreach_addcmul(list(grads), list(params), scales)
        return [g.addcmul(p, s) for g, p, s in zip(grads, params, scales)]
    if foreach:
        return torch._foreach_add(list(grads), list(params), alpha=sign * weight_decay)
    return [g.add(p, alpha=sign * weight_decay) for g, p in zip(grads, params)]
