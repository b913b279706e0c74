"""Canonical parameter names: the name a parameter has in the bare model, whatever wraps it.

DDP adds ``module.``, ``torch.compile`` adds ``_orig_mod.``, activation checkpointing adds
``_checkpoint_wrapped_module.``, FSDP1 adds ``_fsdp_wrapped_module.`` (and flattens into
``_flat_param``). Rules and ``no_weight_decay()`` tokens are written against the bare model, so
every name is canonicalised before it is matched.

torch's parametrizations move ``weight`` to ``parametrizations.weight.original`` (or
``original0``, ``original1``): that *is* the parameter's name on the model and in a checkpoint,
so a canonical name keeps it; :func:`logical_name` gives the name as the module's attribute
reads (``conv.weight``), which rules may also be written against.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

__all__ = ["WRAPPER_PREFIXES", "canonical_name", "logical_name", "namer", "unwrap_model"]

# Path components that wrappers insert and that never belong to the user's own naming.
WRAPPER_PREFIXES: tuple[str, ...] = (
    "_orig_mod",
    "_checkpoint_wrapped_module",
    "_fsdp_wrapped_module",
    "_offload_wrapped_module",
)

_PARAMETRIZED = re.compile(r"(^|\.)parametrizations\.([^.]+)\.original$")
_PARAMETRIZED_PART = re.compile(r"(^|\.)parametrizations\.([^.]+)\.(original\d+)$")


def canonical_name(name: str, *, strip_module: bool | int = True) -> str:
    """Return ``name`` as it reads on the unwrapped model.

    >>> canonical_name("module._orig_mod.blocks.0._checkpoint_wrapped_module.attn.qkv.weight")
    'blocks.0.attn.qkv.weight'
    >>> canonical_name("module.conv.parametrizations.weight.original0")  # weight_norm's magnitude
    'conv.parametrizations.weight.original0'

    ``strip_module`` removes a leading ``module.`` (DDP, DataParallel); only leading ones are
    removed, so a user's own submodule called ``module`` deeper in the tree is kept; a number removes
    at most that many (one per data-parallel wrapper). For the names of
    a model's own tensors, :func:`namer` decides it from the model: a top-level child called ``module``
    that no data-parallel wrapper put there is the user's and is kept too.
    """
    if "_" in name or name.startswith("module"):  # fast path: most names carry no wrapper prefix
        parts = [p for p in name.split(".") if p not in WRAPPER_PREFIXES]
        strip = len(parts) if strip_module is True else int(strip_module)
        while strip > 0 and parts and parts[0] == "module":
            parts, strip = parts[1:], strip - 1
        name = ".".join(parts)
    return name


def namer(model: object) -> Callable[[str], str]:
    """:func:`canonical_name` for the names of ``model``'s own tensors and modules.

    A leading ``module.`` is stripped only where ``model`` is, or wraps, a data-parallel wrapper (DDP,
    DataParallel), which put it there. Otherwise it is the user's own child called ``module`` (an EMA
    holder, a research wrapper), and stripping it would give names that are not keys of
    ``model.named_parameters()`` and could give two tensors one name (``module.weight`` and ``weight``).

    >>> from torch import nn
    >>> class Holder(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.module = nn.Linear(2, 2)
    >>> namer(Holder())("module.weight"), namer(nn.DataParallel(Holder()))("module.module.weight")
    ('module.weight', 'module.weight')
    """
    return functools.partial(canonical_name, strip_module=_data_parallel_wrappers(model))


def logical_name(name: str) -> str:
    """``name`` with torch's parametrization path folded into the attribute it computes.

    >>> logical_name("conv.parametrizations.weight.original")
    'conv.weight'
    >>> logical_name("conv.parametrizations.weight.original0")
    'conv.weight.original0'
    """
    if "parametrizations." not in name:
        return name
    return _PARAMETRIZED_PART.sub(r"\1\2.\3", _PARAMETRIZED.sub(r"\1\2", name))


def unwrap_model(model: object) -> object:
    """Peel DDP / DataParallel / ``torch.compile`` / checkpoint / FSDP1 wrappers off ``model``.

    Used to find hooks such as ``no_weight_decay()`` that live on the user's model class, not on
    the wrapper (deit #39: the hook was lost once DDP wrapped the model first).
    """
    current = model
    for _ in range(32):  # wrappers nest a few levels at most; the bound guards against cycles
        inner = _wrapped(current)
        if inner is None or inner is current:
            return current
        current = inner
    return current


def _data_parallel_wrappers(model: object) -> int:
    """How many of ``model`` and the wrappers inside it are DDP / DataParallel, each naming its inner model ``module``."""
    count, current = 0, model
    for _ in range(32):
        count += _is_data_parallel(current)
        inner = _wrapped(current)
        if inner is None or inner is current:
            break
        current = inner
    return count


def _is_data_parallel(obj: object) -> bool:
    # FSDP (v1) is a FullyShardedDataParallel too, but holds its model as _fsdp_wrapped_module
    return type(obj).__name__.endswith(("DataParallel", "DDP")) and _child(obj, "module") is not None


def _child(obj: object, attr: str) -> object | None:
    """``obj``'s registered child ``attr``, or ``None``: a TorchScript module keeps its children in an
    ``OrderedModuleDict``, which has ``in`` and ``[]`` but no ``.get``."""
    modules = getattr(obj, "_modules", None)
    try:
        return modules[attr] if modules is not None and attr in modules else None
    except (KeyError, TypeError):
        return None


def _wrapped(obj: object) -> object | None:
    for attr in ("_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module"):
        inner = _child(obj, attr)
        if inner is not None:
            return inner
    # ``module`` is a common user attribute name, so only follow it on data-parallel wrappers
    if _is_data_parallel(obj):
        return getattr(obj, "module", None)
    return None
