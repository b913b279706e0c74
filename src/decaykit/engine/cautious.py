"""Cautious weight decay (Chen et al. 2025): decay only the coordinates where the update and θ agree in sign.

    θ_{t+1} = θ_t − η_t(u_t + λ·𝟙(u_t⊙θ_t ≥ 0)⊙θ_t)

with u_t the inner optimizer's update direction (its step is θ ← θ − η_t·u_t) and r = η_t·λ.
A wrapper does not see u_t; it reads its sign one of two ways.

- **From the first moment, before the step** (:func:`cautious_moment_decay_`). For Adam, AdamW,
  RAdam and Adamax, u_t = c_t·m_t/d_t with c_t > 0 (the bias correction 1/(1 − β1^t), RAdam's
  rectification), d_t > 0 (√v̂_t + ε, with AMSGrad's max v̂, or Adamax's infinity norm ≥ ε) and
  m_t = β1·m_{t−1} + (1 − β1)·g_t (−g_t with ``maximize``), the moment the step is about to
  store. So sign(u_t) = sign(m_t), known from (m_{t−1}, g_t) before the step; and with the inner
  decay off u_t does not depend on θ, so decaying first gives the same θ_{t+1}. One pass, no copy
  of θ: read m, g, θ, write θ. NAdam is not among them: its update mixes g_t and m_t,
  u_t ∝ (1 − μ_t)·g_t/(1 − Π_{i≤t} μ_i) + μ_{t+1}·m_t/(1 − Π_{i≤t+1} μ_i), whose sign is neither's.
- **From the parameter change, after the step** (:func:`cautious_decay_`), for any optimizer:
  θ_t is copied before the step, and η_t·u_t = θ_t − θ_after has the sign of u_t.

Both have a single-tensor reference loop (``foreach=False``) and a fast path: ``torch._foreach_*``
ops on accelerators; on CPU, where every temporary the size of the model costs page faults, the
same few in-place ops over cache-sized chunks with one reused scratch buffer. A rate is a float or
a (K,) tensor decaying member k of every parameter (dim 0) by r_k. Complex parameters are decayed
per real component (the sign torch's Adam sees); DTensor parameters (FSDP2) on their local shards
(:mod:`decaykit._dtensor`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from decaykit import _dtensor as shards
from decaykit.engine.modes import Rate, member_view
from decaykit.optimizers import REGISTRY

__all__ = ["FIRST_MOMENT_SIGN", "cautious_decay_", "cautious_moment_decay_"]

#: torch optimizers whose update has the sign of the new first moment ``exp_avg`` (exact classes:
#: a subclass may override step()), as :mod:`decaykit.optimizers` records them
FIRST_MOMENT_SIGN: tuple[type, ...] = tuple(
    c for e in REGISTRY.values() if e.first_moment_sign and (c := e.torch_class()) is not None
)

_CHUNK = 1 << 18  # elements: 1 MiB of float32, so a chunk stays in cache between the ops on it


def cautious_moment_decay_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    moments: Sequence[Tensor | None],
    rate: Rate,
    *,
    beta1: float,
    maximize: bool = False,
    foreach: bool = True,
) -> None:
    """θ ← θ − r·𝟙(m_t⊙θ ≥ 0)⊙θ in place, BEFORE an Adam-family step (see the module docstring).

    ``moments`` hold m_{t−1} (``exp_avg``), None where the optimizer has no state yet (m_{t−1} = 0,
    so the mask is sign(g)·sign(θ)); m_t = lerp(m_{t−1}, ±g_t, 1 − β1) is computed as torch's Adam
    computes it, so the mask is the inner step's own sign. Nothing is written but θ.
    """
    if not params:
        return
    weight = 1.0 - beta1
    for _, (ps, gs, ms), r, dispatch in shards.parts([params, grads, moments], rate):
        if dispatch:
            with shards.replicated():
                _moment_reference(ps, gs, ms, r, weight, maximize)
            continue
        ps, gs, ms = _real(ps), _real(gs), _real(ms)
        if not foreach:
            _moment_reference(ps, gs, ms, r, weight, maximize)
            continue
        fast = [_chunkable(p, g, m) for p, g, m in zip(ps, gs, ms)]
        if any(fast):
            _moment_chunked([(p, g, m) for p, g, m, f in zip(ps, gs, ms, fast) if f], r, weight, maximize)
        if not all(fast):
            rest = [(p, g, m) for p, g, m, f in zip(ps, gs, ms, fast) if not f]
            _moment_foreach(*(list(c) for c in zip(*rest)), r, weight, maximize)


def _moment_reference(ps: list, gs: list, ms: list, rate: Rate, weight: float, maximize: bool) -> None:
    for p, g, m in zip(ps, gs, ms):
        g = g.neg() if maximize else g
        m_t = g.mul(weight) if m is None else torch.lerp(m, g, weight)  # zeros.lerp(g, w) is w·g exactly
        agree = m_t.mul_(p).ge_(0)
        if isinstance(rate, Tensor):
            p.addcmul_(p, agree.mul_(member_view(rate, p)), value=-1.0)
        else:
            p.addcmul_(p, agree, value=-rate)


def _real(ts: list) -> list:
    # complex tensors are decayed per real component, as torch's Adam steps them (view_as_real)
    return [torch.view_as_real(t) if t is not None and t.is_complex() else t for t in ts]


def _chunkable(*ts: Tensor | None) -> bool:
    p = ts[0]
    return p.device.type == "cpu" and all(
        t is None or (t.is_contiguous() and t.dtype == p.dtype and t.shape == p.shape and t.device == p.device)
        for t in ts
    )


def _rows(rate: Rate) -> tuple[int, list[float]]:
    if isinstance(rate, Tensor):
        rates = rate.tolist()
        return len(rates), rates
    return 1, [rate]


def _chunks(rows: list[tuple[Tensor | None, ...]], rate: Rate) -> Iterator[tuple[float, Tensor, list[Tensor | None]]]:
    """``(r_k, scratch, chunks)`` over cache-sized chunks of member k of each row, for every r_k ≠ 0.

    ``rows`` hold contiguous tensors of one shape (θ first; None for a missing state), so a
    chunk of each lies at the same offsets. ``scratch`` is one buffer per dtype, reused by every
    chunk; ``chunks`` are views into the row's tensors (None stays None).
    """
    members, rates = _rows(rate)
    scratch: dict[torch.dtype, Tensor] = {}
    for row in rows:
        p = row[0]
        buf = scratch.get(p.dtype)
        if buf is None:
            buf = scratch[p.dtype] = torch.empty(_CHUNK, dtype=p.dtype)
        views = [None if t is None else t.view(members, -1) for t in row]
        for k, r in enumerate(rates):
            if r == 0:
                continue
            for i in range(0, views[0].shape[1], _CHUNK):
                chunks = [None if v is None else v[k, i : i + _CHUNK] for v in views]
                yield r, buf[: chunks[0].numel()], chunks


def _moment_chunked(rows: list[tuple[Tensor, Tensor, Tensor | None]], rate: Rate, weight: float, maximize: bool) -> None:
    for r, s, (pc, gc, mc) in _chunks(rows, rate):
        if maximize:
            gc = torch.neg(gc, out=s)
        if mc is None:
            torch.mul(gc, weight, out=s)
        else:
            torch.lerp(mc, gc, weight, out=s)  # m_t: Adam's lerp, bit for bit
        s.mul_(pc).ge_(0)
        pc.addcmul_(pc, s, value=-r)


def _moment_foreach(ps: list, gs: list, ms: list, rate: Rate, weight: float, maximize: bool) -> None:
    if maximize:
        gs = torch._foreach_neg(gs)
    m_t: list[Tensor | None] = [None] * len(ps)
    for fresh in (True, False):
        idx = [i for i, m in enumerate(ms) if (m is None) == fresh]
        if not idx:
            continue
        if fresh:
            out = torch._foreach_mul([gs[i] for i in idx], weight)
        else:
            out = torch._foreach_lerp([ms[i] for i in idx], [gs[i] for i in idx], weight)
        for i, t in zip(idx, out):
            m_t[i] = t
    agree: list[Tensor] = m_t  # type: ignore[assignment]
    torch._foreach_mul_(agree, ps)
    _masked_decay_(ps, ps, agree, rate)


def _masked_decay_(ps: list[Tensor], base: list[Tensor], agree: list[Tensor], rate: Rate) -> None:
    """θ ← θ − r·𝟙(agree ≥ 0)·base, with ``agree`` overwritten by the mask (times r when r is per member)."""
    for a in agree:
        a.ge_(0)
    if isinstance(rate, Tensor):
        torch._foreach_mul_(agree, [member_view(rate, p) for p in ps])
        torch._foreach_addcmul_(ps, base, agree, value=-1.0)
    else:
        torch._foreach_addcmul_(ps, base, agree, value=-rate)


def cautious_decay_(params: Sequence[Tensor], before: Sequence[Tensor], rate: Rate, *, foreach: bool = True) -> None:
    """Cautious weight decay applied AFTER the inner step, the sign of u read from the parameter change.

    ``before`` holds θ_t, ``params`` hold θ_t − η_t·u_t on entry, and η_t·u_t = θ_t − θ_after has the
    sign of u_t (η_t > 0). On exit ``params`` hold θ_{t+1}. A zero update decays every coordinate,
    and so does one too small to change θ_t in floating point.
    """
    if not params:
        return
    for _, (ps, bs), r, dispatch in shards.parts([params, before], rate):
        if dispatch:
            with shards.replicated():
                _change_reference(ps, bs, r)
            continue
        ps, bs = _real(ps), _real(bs)
        if not foreach:
            _change_reference(ps, bs, r)
            continue
        fast = [_chunkable(p, b) for p, b in zip(ps, bs)]
        if any(fast):
            _change_chunked([(p, b) for p, b, f in zip(ps, bs, fast) if f], r)
        if not all(fast):
            _change_foreach([p for p, f in zip(ps, fast) if not f], [b for b, f in zip(bs, fast) if not f], r)


def _change_reference(ps: list, bs: list, rate: Rate) -> None:
    for p, b in zip(ps, bs):
        agree = (b - p).mul_(b).ge_(0)  # 𝟙(u⊙θ_t ≥ 0) as 0/1 in p's dtype
        if isinstance(rate, Tensor):
            p.addcmul_(b, agree.mul_(member_view(rate, p)), value=-1.0)
        else:
            p.addcmul_(b, agree, value=-rate)


def _change_chunked(pairs: list[tuple[Tensor, Tensor]], rate: Rate) -> None:
    for r, s, (pc, bc) in _chunks(pairs, rate):
        torch.sub(bc, pc, out=s).mul_(bc).ge_(0)
        pc.addcmul_(bc, s, value=-r)


def _change_foreach(ps: list[Tensor], bs: list[Tensor], rate: Rate) -> None:
    agree = torch._foreach_sub(bs, ps)
    torch._foreach_mul_(agree, bs)
    _masked_decay_(ps, bs, agree, rate)
