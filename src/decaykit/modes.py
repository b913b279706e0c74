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
and a ``torch._foreach_*`` fast path; ``tests/test_modes.py`` checks them against each other.
A rate may be a float or a 1-D tensor of length K: per-member decay for K stacked models, applied
along dim 0 (member k of every parameter gets r_k).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "DECOUPLED_MODES",
    "MODES",
    "cautious_decay_",
    "decay_rate",
    "decoupled_decay_",
    "inner_weight_decay",
    "l2_gradients",
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


def _member_view(rate: Tensor, p: Tensor) -> Tensor:
    """A per-member rate of shape (K,) as (K, 1, ..., 1), on p's device and dtype, to broadcast along dim 0."""
    return rate.to(device=p.device, dtype=p.dtype).view(-1, *([1] * (p.dim() - 1)))


def _shrink_factors(params: Sequence[Tensor], rate: Tensor) -> list[Tensor]:
    # 1 − r in float64 then cast, as torch rounds the scalar (1 − η·λ) once to the parameter's dtype
    factor = 1.0 - rate.double()
    return [_member_view(factor, p) for p in params]


def decoupled_decay_(params: Sequence[Tensor], rate: Rate, *, foreach: bool = True) -> None:
    """θ ← θ(1 − r) in place, for every tensor in ``params`` (Loshchilov & Hutter 2019).

    ``rate`` is a float, or a tensor of shape (K,) decaying member k of each parameter (dim 0) by r_k.
    ``foreach=False`` runs the single-tensor reference loop; ``True`` one ``torch._foreach_mul_``.
    """
    if not params:
        return
    if isinstance(rate, Tensor):
        factors = _shrink_factors(params, rate)
        if foreach:
            torch._foreach_mul_(list(params), factors)
        else:
            for p, f in zip(params, factors):
                p.mul_(f)
        return
    if foreach:
        torch._foreach_mul_(list(params), 1.0 - rate)
    else:
        for p in params:
            p.mul_(1.0 - rate)


def cautious_decay_(params: Sequence[Tensor], before: Sequence[Tensor], rate: Rate, *, foreach: bool = True) -> None:
    """Cautious weight decay, applied after the inner step (Chen et al. 2025, "Cautious Weight Decay").

    The rule is θ_{t+1} = θ_t − η_t(u + λ·𝟙(u⊙θ_t ≥ 0)⊙θ_t): decay only the coordinates where the
    update and the parameter agree in sign. A wrapper does not see u, so it is recovered from the
    inner step itself: ``before`` holds θ_t, ``params`` hold θ_t − η_t·u on entry, and
    η_t·u = θ_t − θ_after has the sign of u (η_t > 0). On exit ``params`` hold θ_{t+1}, with
    r = η_t·λ (a float, or a (K,) tensor for stacked members). A zero update decays every coordinate.

    ``foreach=False`` is the single-tensor reference. The fast path uses ``torch._foreach_*`` ops on
    accelerators; on CPU, where every temporary the size of the model costs page faults, it runs the
    same four in-place ops over cache-sized chunks with one reused scratch buffer.
    """
    if not params:
        return
    if not foreach:
        for p, b in zip(params, before):
            agree = (b - p).mul_(b).ge_(0)  # 𝟙(u⊙θ_t ≥ 0) as 0/1 in p's dtype
            if isinstance(rate, Tensor):
                p.addcmul_(b, agree.mul_(_member_view(rate, p)), value=-1.0)
            else:
                p.addcmul_(b, agree, value=-rate)
        return
    cpu = [(p, b) for p, b in zip(params, before) if p.device.type == "cpu" and p.is_contiguous() and b.is_contiguous()]
    other = [(p, b) for p, b in zip(params, before) if not (p.device.type == "cpu" and p.is_contiguous() and b.is_contiguous())]
    if cpu:
        _cautious_chunked(cpu, rate)
    if other:
        _cautious_foreach([p for p, _ in other], [b for _, b in other], rate)


_CHUNK = 1 << 18  # elements: 1 MiB of float32, so the scratch stays in cache between the four ops


def _cautious_chunked(pairs: list[tuple[Tensor, Tensor]], rate: Rate) -> None:
    rates = rate.tolist() if isinstance(rate, Tensor) else None
    scratch: dict[torch.dtype, Tensor] = {}
    for p, b in pairs:
        members = len(rates) if rates is not None else 1
        rows_p, rows_b = p.view(members, -1), b.view(members, -1)
        buf = scratch.get(p.dtype)
        if buf is None:
            buf = scratch[p.dtype] = torch.empty(_CHUNK, dtype=p.dtype)
        for k in range(members):
            r = rates[k] if rates is not None else rate
            if r == 0:
                continue
            row_p, row_b = rows_p[k], rows_b[k]
            for i in range(0, row_p.numel(), _CHUNK):
                pc, bc = row_p[i : i + _CHUNK], row_b[i : i + _CHUNK]
                s = buf[: pc.numel()]
                torch.sub(bc, pc, out=s).mul_(bc).ge_(0)
                pc.addcmul_(bc, s, value=-r)


def _cautious_foreach(params: list[Tensor], before: list[Tensor], rate: Rate) -> None:
    agree = torch._foreach_sub(before, params)
    torch._foreach_mul_(agree, before)
    for a in agree:
        a.ge_(0)
    if isinstance(rate, Tensor):
        torch._foreach_mul_(agree, [_member_view(rate, p) for p in params])
        torch._foreach_addcmul_(params, before, agree, value=-1.0)
    else:
        torch._foreach_addcmul_(params, before, agree, value=-rate)


def l2_gradients(
    params: Sequence[Tensor], grads: Sequence[Tensor], weight_decay: Rate, *, maximize: bool = False, foreach: bool = True
) -> list[Tensor]:
    """New gradients g + λθ: the gradient of loss + (λ/2)‖θ‖² (coupled L2, Krogh & Hertz 1992).

    The caller's ``grads`` are left untouched (torch's SGD and Adam do not modify ``.grad`` either).
    With ``maximize`` the optimizer ascends, so the penalty enters as g − λθ and still shrinks θ.
    ``weight_decay`` is a float or a (K,) tensor for stacked members.
    """
    if not params:
        return []
    sign = -1.0 if maximize else 1.0
    if isinstance(weight_decay, Tensor):
        scales = [_member_view(weight_decay, p).mul(sign) for p in params]
        if foreach:
            return torch._foreach_addcmul(list(grads), list(params), scales)
        return [g.addcmul(p, s) for g, p, s in zip(grads, params, scales)]
    if foreach:
        return torch._foreach_add(list(grads), list(params), alpha=sign * weight_decay)
    return [g.add(p, alpha=sign * weight_decay) for g, p in zip(grads, params)]
