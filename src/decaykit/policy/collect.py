"""What the plan decides over: every name of every tensor of a model, with its owning module.

>>> from torch import nn
>>> [[i.name for i in infos] for infos in collect_params(nn.Sequential(nn.Linear(2, 2))).values()]
[['0.weight'], ['0.bias']]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter

from decaykit.errors import DecayError
from decaykit.policy.names import namer
from decaykit.policy.roles import ParamInfo
from decaykit.policy.usage import Trace

__all__ = ["check_model", "collect_params", "lazy_names", "refuse_lazy"]


def check_model(model: Any) -> nn.Module:
    """``model`` itself if it is an ``nn.Module``; a DecayError saying what to pass otherwise."""
    if isinstance(model, torch.jit.ScriptModule):
        # its modules are all RecursiveScriptModule: no layer can be told, and no fake pass runs through it
        raise DecayError(
            f"model is a TorchScript {type(model).__name__} (torch.jit.script or trace), whose layers decaykit "
            "cannot tell apart; pass the eager module it was made from: its parameters are the same tensors, "
            "so param_groups(eager_model, 0.05) can drive an optimizer for the scripted one"
        )
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, Iterator) or type(model).__name__ == "generator":
        raise DecayError(
            "model must be a torch.nn.Module, got a generator (did you pass model.parameters()?); "
            "pass the model itself: param_groups(model, 0.05)"
        )
    raise DecayError(f"model must be a torch.nn.Module, got {type(model).__name__}; pass the model itself")


def refuse_lazy(names: list[str]) -> None:
    """A DecayError for parameters of lazy modules (``nn.LazyLinear``): they have no shape until the model's
    first forward pass, and the policy decides from what a tensor is, its shape included. Checked before
    any traced pass, which would materialise them as fake tensors."""
    if names:
        raise DecayError(
            f"model has {len(names)} parameter(s) whose shapes are not known yet ({', '.join(names[:3])}"
            f"{', ...' if len(names) > 3 else ''}: lazy modules such as nn.LazyLinear); run one forward pass on "
            "an example batch first, model(x), then build the groups (in a sweep: inside the model factory, "
            "before it returns the model)"
        )


def lazy_names(model: nn.Module) -> list[str]:
    """The names of ``model``'s parameters that lazy modules have not initialised yet."""
    return [name for name, p in model.named_parameters() if isinstance(p, UninitializedParameter)]


def collect_params(model: nn.Module, trace: Trace | None = None) -> dict[int, list[ParamInfo]]:
    """Every name of every tensor, grouped by tensor, in ``named_parameters`` order.

    One walk of the module tree gives each name with its owning module and ancestors, so the
    policy never has to look a module up by name. With a ``trace``, each name carries the use
    the traced forward pass saw for its tensor.
    """
    by_tensor: dict[int, list[ParamInfo]] = {}
    canonical = namer(model)

    def walk(module: nn.Module, prefix: str, ancestors: tuple[nn.Module, ...]) -> None:
        for leaf, param in module._parameters.items():
            if param is None:
                continue
            info = _info(module, prefix, leaf, param, ancestors, canonical)
            if trace is not None:
                info = dataclasses.replace(info, use=trace.use_of(param), traced=trace.unseen_of(param),
                                           branch=trace.branch.get(id(param)))
            by_tensor.setdefault(id(param), []).append(info)
        for name, child in module._modules.items():
            if child is not None:
                walk(child, f"{prefix}{name}.", (*ancestors, module))

    walk(model, "", ())
    refuse_lazy([infos[0].name for infos in by_tensor.values() if isinstance(infos[0].param, UninitializedParameter)])
    return by_tensor


def _weight_norm_piece(module: nn.Module, leaf: str) -> tuple[str, str] | None:
    """``(attribute, piece)`` for a tensor the older ``torch.nn.utils.weight_norm`` split a weight into.

    That API (still in torch, and in much published vocoder and TTS code) keeps ``weight_g``, the
    per-channel magnitude, and ``weight_v``, the direction, as parameters of the layer and recomputes
    ``weight`` from them in a forward pre-hook: the pieces of ``parametrizations.weight_norm``'s
    ``original0`` and ``original1`` under other names, decided alike (the magnitude is a gain).
    """
    for hook in module._forward_pre_hooks.values():
        name = getattr(hook, "name", None)
        if type(hook).__name__ == "WeightNorm" and isinstance(name, str) and leaf in (f"{name}_g", f"{name}_v"):
            return name, leaf
    return None


def _info(
    module: nn.Module, prefix: str, leaf: str, param: Any, ancestors: tuple[nn.Module, ...], canonical: Callable[[str], str]
) -> ParamInfo:
    raw = f"{prefix}{leaf}"
    if type(param).__name__ == "FlatParameter":
        raise DecayError(
            f"{raw} is an FSDP flat parameter: FSDP (v1) without use_orig_params=True flattens every "
            "tensor into one 1-D buffer, so no rule can tell a norm from a weight (pytorch #101343); "
            "wrap with use_orig_params=True, or use FSDP2 (fully_shard), or build the groups first"
        )
    owner, attr, component = module, leaf, None
    if type(module).__name__ == "ParametrizationList" and len(ancestors) >= 2:
        # ``lin.parametrizations.weight.original``: the tensor belongs to ``lin``
        owner, attr = ancestors[-2], prefix.rstrip(".").rsplit(".", 1)[-1]
        component = None if leaf == "original" else leaf
    elif (piece := _weight_norm_piece(module, leaf)) is not None:
        attr, component = piece
    return ParamInfo(canonical(raw), raw, attr, param, owner, ancestors, component)
