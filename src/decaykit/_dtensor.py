"""The decay kernels on DTensor parameters (FSDP2's ``fully_shard``, tensor parallelism): shard by shard.

Under FSDP2 every parameter, its gradient and its optimizer state are DTensors laid out alike
(``Shard(0)`` over the mesh). An elementwise op on operands laid out alike is the same op on each
rank's local shard, with no communication; so the kernels run on ``to_local()`` shards. That also
avoids ops DTensor has no sharding strategy for (``torch._foreach_copy_``) and its per-op dispatch.
A per-member rate (K,) scales dim 0, so a shard holding global rows [a, b) gets rate[a:b].

Rows whose operands are laid out differently, pending a reduction (``Partial``), or whose rows
are not one contiguous range (``_StridedShard``) stay DTensors for the single-tensor loop, where
DTensor's dispatch redistributes (a per-member rate enters as a replicated tensor).

Plain tensors cost one dictionary lookup per call: when ``torch.distributed.tensor`` has not been
imported, no tensor can be a DTensor.

>>> import torch
>>> from decaykit import _dtensor as shards
>>> [(idx, dispatch) for idx, cols, rate, dispatch in shards.parts([[torch.ones(2)]], 0.1)]
[([0], False)]
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor

__all__ = ["dtensor_class", "is_sharded", "local", "local_shard", "parts", "replicated"]

Rate = float | Tensor


def dtensor_class() -> type | None:
    """``DTensor``, or None while nothing has imported it (then no tensor is one)."""
    return getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)


def local(t: Tensor) -> Tensor:
    """The calling rank's shard of a DTensor; any other tensor as it is."""
    cls = dtensor_class()
    return t.to_local() if cls is not None and isinstance(t, cls) else t


def is_sharded(t: Tensor) -> bool:
    """True for a ``DTensor`` (FSDP2, tensor parallel), whose values live spread over ranks."""
    cls = dtensor_class()
    return cls is not None and isinstance(t, cls)


def local_shard(t: Tensor) -> Tensor:
    """``t`` detached; for a ``DTensor``, the part this rank holds (a view, no copy, no collective)."""
    return local(t.detach())


def parts(columns: Sequence[Sequence[Tensor | None]], rate: Rate) -> Iterator[tuple[list[int], list[list], Rate, bool]]:
    """Split rows of aligned ``columns`` (params, then grads, states...; None allowed after the
    first) into runs a kernel takes whole: ``(row indices, columns, rate, dispatch)``.

    ``dispatch`` False: plain tensors, or local shards with the rate rows they hold. True: DTensors,
    for the single-tensor loop under :func:`replicated`. Empty shards are left out.
    """
    cls = dtensor_class()
    if cls is None or not any(isinstance(p, cls) for p in columns[0]):
        yield list(range(len(columns[0]))), [list(c) for c in columns], rate, False
        return
    runs: dict[Any, tuple[list[int], list[list]]] = {}
    for i, row in enumerate(zip(*columns)):
        first, key = row[0], None  # key: None for the whole rate, (a, b) for rows a..b, "dispatch"
        if isinstance(first, cls):
            key = _local_rows(first, row[1:], rate, cls)
            if key != "dispatch":
                row = tuple(None if t is None else t.to_local() for t in row)
                if row[0].numel() == 0:
                    continue
        idx, cols = runs.setdefault(key, ([], [[] for _ in columns]))
        idx.append(i)
        for col, t in zip(cols, row):
            col.append(t)
    for key, (idx, cols) in runs.items():
        part = rate[key[0] : key[1]] if isinstance(key, tuple) and isinstance(rate, Tensor) else rate
        yield idx, cols, part, key == "dispatch"


def _local_rows(first: Tensor, others: Sequence[Tensor | None], rate: Rate, cls: type) -> Any:
    from torch.distributed.tensor import Shard

    if any(pl.is_partial() for pl in first.placements):
        return "dispatch"
    shape = first.to_local().shape
    for t in others:
        if t is None:
            continue
        if not isinstance(t, cls) or t.placements != first.placements or t.device_mesh != first.device_mesh:
            return "dispatch"
        if t.shape != first.shape or t.to_local().shape != shape:
            return "dispatch"
    if not isinstance(rate, Tensor):
        return None
    if not all(pl.is_replicate() or isinstance(pl, Shard) for pl in first.placements):
        return "dispatch"  # _StridedShard: a rank's rows of dim 0 are not one range
    if not any(isinstance(pl, Shard) and pl.dim % first.dim() == 0 for pl in first.placements):
        return None  # dim 0 whole on every rank
    try:
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        local_shape, offset = compute_local_shape_and_global_offset(first.shape, first.device_mesh, first.placements)
    except (ImportError, TypeError, ValueError):  # a torch without it: let DTensor map the rows
        return "dispatch"
    if tuple(local_shape) != tuple(shape):
        return "dispatch"
    return (int(offset[0]), int(offset[0]) + int(shape[0]))


@contextlib.contextmanager
def replicated() -> Iterator[None]:
    """Plain tensors (a per-member rate) mixed with DTensors act as replicated DTensors."""
    if dtensor_class() is None:
        yield
        return
    from torch.distributed.tensor.experimental import implicit_replication

    with implicit_replication():
        yield
