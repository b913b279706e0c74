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

import re

__all__ = ["WRAPPER_PREFIXES", "canonical_name", "logical_name", "unwrap_model"]

# Path components that wrappers insert and that never belong to the user's own naming.
WRAPPER_PREFIXES: tuple[str, ...] = (
    "_orig_mod",
    "_checkpoint_wrapped_module",
    "_fsdp_wrapped_module",
    "_offload_wrapped_module",
)

_PARAMETRIZED = re.compile(r"(^|\.)parametrizations\.([^.]+)\.original$")
_PARAMETRIZED_PART = re.compile(r"(^|\.)parametrizations\.([^.]+)\.(original\d+)$")


def canonical_name(name: str, *, strip_module: bool = True) -> str:
    """Return ``name`` as it reads on the unwrapped model.

    >>> canonical_name("module._orig_mod.blocks.0._checkpoint_wrapped_module.attn.qkv.weight")
    'blocks.0.attn.qkv.weight'
    >>> canonical_name("module.conv.parametrizations.weight.original0")  # weight_norm's magnitude
    'conv.parametrizations.weight.original0'

    ``strip_module`` removes a leading ``module.`` (DDP, DataParallel); only leading ones are
    removed, so a user's own submodule called ``module`` deeper in the tree is kept.
    """
    if "_" in name or name.startswith("module"):  # fast path: most names carry no wrapper prefix
        parts = [p for p in name.split(".") if p not in WRAPPER_PREFIXES]
        while strip_module and parts and parts[0] == "module":
            parts = parts[1:]
        name = ".".join(parts)
    return name


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


def _wrapped(obj: object) -> object | None:
    for attr in ("_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module"):
        inner = getattr(obj, "_modules", {}).get(attr)
        if inner is not None:
            return inner
    # ``module`` is a common user attribute name, so only follow it on data-parallel wrappers
    if type(obj).__name__.endswith(("DataParallel", "DDP")):
        return getattr(obj, "module", None)
    return None
