"""Distinct tensors over the same memory: two Parameters tied through ``.data``, or one made from a view of another.

torch's optimizers step each Parameter on its own, so values two of them share are updated, and decayed, once per
alias at every step. Told from the bytes each tensor's values span (strided views counted by their extent).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

__all__ = ["aliased"]


def _span(t: torch.Tensor) -> tuple[int, int] | None:
    """The bytes ``t``'s values span, [start, end), or None where it has no memory of its own to read (meta, sparse,
    a DTensor's shards, no values)."""
    if t.layout != torch.strided or t.device.type == "meta" or type(t) not in (torch.Tensor, nn.Parameter):
        return None
    try:
        start = t.data_ptr()
    except RuntimeError:
        return None
    if not t.numel() or not start:
        return None
    extent = 1 + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride()))
    return start, start + extent * t.element_size()


def aliased(tensors: Iterable[torch.Tensor]) -> Sequence[tuple[int, int]]:
    """Pairs ``(id(a), id(b))`` of distinct tensors among ``tensors`` whose memory overlaps, each tensor paired with
    the one before it in address order that it overlaps."""
    spans = sorted((span, id(t)) for t in {id(t): t for t in tensors}.values() if (span := _span(t)) is not None)
    pairs = []
    end, last = -1, None
    for (start, stop), tid in spans:
        if start < end and last is not None:
            pairs.append((last, tid))
        if stop > end:
            end, last = stop, tid
    return pairs
