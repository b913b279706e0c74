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


#: elements of a storage up to which strided views are compared element by element (a 128 MiB index at most)
_EXACT_LIMIT = 1 << 24


def _share_elements(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors whose spans overlap hold an element in common: contiguous ones always do; strided views of
    one storage (a matrix's column blocks) are compared by the storage offsets they read, where that index is small
    enough to build; beyond it, overlapping spans are taken to share."""
    if a.is_contiguous() and b.is_contiguous():
        return True
    if a.dtype != b.dtype or a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return True
    size = a.untyped_storage().nbytes() // a.element_size()
    if size > _EXACT_LIMIT:
        return True
    index = torch.arange(size, device=a.device)
    def read(t: torch.Tensor) -> torch.Tensor:
        return torch.as_strided(index, t.shape, t.stride(), t.storage_offset()).flatten()

    return bool(torch.isin(read(a), read(b)).any())


def aliased(tensors: Iterable[torch.Tensor]) -> Sequence[tuple[int, int]]:
    """Pairs ``(id(a), id(b))`` of distinct tensors among ``tensors`` that hold an element in common, each pair
    found among the tensors whose byte spans overlap."""
    by_id = {id(t): t for t in tensors}
    spans = sorted((span, tid) for tid, t in by_id.items() if (span := _span(t)) is not None)
    pairs = []
    open_: list[tuple[int, int]] = []  # (end, id) of the spans still open at this start
    for (start, stop), tid in spans:
        open_ = [(end, other) for end, other in open_ if end > start]
        pairs += [(other, tid) for _, other in open_ if _share_elements(by_id[other], by_id[tid])]
        open_.append((stop, tid))
    return pairs
