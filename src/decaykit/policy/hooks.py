"""The model's own say: ``no_weight_decay()`` / ``no_weight_decay_keywords()`` hooks (timm, DeiT,
Swin, Mamba) and a tensor's ``_no_weight_decay = True`` attribute (mamba_ssm's convention) or
``_optim = {"weight_decay": 0.0}`` attribute (the state-spaces convention: S4, S5, Hyena, safari).

A preset chooses how far it listens (``Preset.hooks``): ``"all"`` every module's hooks, names
relative to that module; ``"top"`` timm's reading, the top-level ``no_weight_decay()`` matched
with fnmatch; ``"none"`` not at all.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import nn

from decaykit.errors import DecayError
from decaykit.policy.names import namer, unwrap_model

__all__ = ["Hook", "hook_patterns", "hook_reason"]


class Hook(NamedTuple):
    """One name or keyword a hook exempts from decay."""

    prefix: str  # canonical name of the module that owns the hook ("" for the model)
    pattern: str
    method: str  # "no_weight_decay" or "no_weight_decay_keywords"
    keyword: bool  # a substring to look for, not a name or glob

    def matches(self, name: str) -> bool:
        if self.prefix:
            if not name.startswith(self.prefix + "."):
                return False
            name = name[len(self.prefix) + 1:]
        if self.keyword:
            return self.pattern in name
        return name == self.pattern or fnmatch.fnmatchcase(name, self.pattern)

    def reason(self) -> str:
        return f"{self.prefix or 'model'}.{self.method}() {self.pattern!r}"


def hook_patterns(model: nn.Module, scope: str) -> list[Hook]:
    """Every pattern the model's hooks name, for the preset's ``scope`` (``"all"``, ``"top"``, ``"none"``)."""
    if scope == "none":
        return []
    modules = [("", unwrap_model(model))] if scope == "top" else list(model.named_modules())
    out: list[Hook] = []
    canonical = namer(model)
    for path, module in modules:
        for method, keyword in (("no_weight_decay", False), ("no_weight_decay_keywords", True)):
            if not (scope == "top" and keyword):
                out += _ask(module, path, method, keyword, canonical)
    return out


def _ask(module: nn.Module, path: str, method: str, keyword: bool, canonical: Callable[[str], str]) -> list[Hook]:
    # hooks are methods: looking on the class avoids nn.Module.__getattr__ for every module
    if not hasattr(type(module), method) and method not in module.__dict__:
        return []
    prefix = canonical(path)  # only for the few modules that have a hook
    fn = getattr(module, method, None)
    if isinstance(fn, (set, frozenset, list, tuple, str)):
        names = fn  # the names themselves (an attribute or property), not the method timm calls
    elif not callable(fn):
        return []
    else:
        try:
            names = fn()
        except Exception as exc:
            raise DecayError(f"{type(module).__name__}.{method}() raised {type(exc).__name__}: {exc}") from exc
    if isinstance(names, str):
        names = [names]
    return [Hook(prefix, str(pattern), method, keyword) for pattern in names or ()]


def hook_reason(name: str, param: torch.Tensor, hooks: Sequence[Hook], tensor_attribute: bool) -> str | None:
    """Why a hook exempts ``name`` from decay, or ``None``; the first matching hook names it."""
    for hook in hooks:
        if hook.matches(name):
            return hook.reason()
    if tensor_attribute and getattr(param, "_no_weight_decay", False):
        return "tensor attribute _no_weight_decay=True"  # mamba_ssm's A_log, D
    optim = getattr(param, "_optim", None) if tensor_attribute else None
    if isinstance(optim, Mapping) and optim.get("weight_decay") == 0:
        return f"tensor attribute _optim={{'weight_decay': {optim['weight_decay']!r}}}"  # S4's log_dt, A; S5, Hyena, safari
    return None
