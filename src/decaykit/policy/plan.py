"""The plan: for every parameter of a model, whether it decays, by how much, and why.

>>> from torch import nn
>>> p = plan(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8)), 0.05)
>>> [(d.name, d.weight_decay, d.reason) for d in p]
[('0.weight', 0.05, 'weight of Linear'), ('0.bias', 0.0, 'bias of Linear'), ('1.weight', 0.0, 'norm:LayerNorm'), ('1.bias', 0.0, 'norm:LayerNorm')]

Precedence, first hit wins, per name of a tensor: a frozen tensor (``requires_grad=False``) is
left out; then ``rules`` in order; then ``exclude``; then the model's ``no_weight_decay()`` /
``no_weight_decay_keywords()`` hooks (on any submodule, names relative to it) and a tensor's
own ``_no_weight_decay = True`` attribute (mamba_ssm's convention); then the policy.
A tensor reachable under several names (tied embeddings) appears once, under its first name;
if its names get different decisions, the one from the strongest source wins (rule > exclude >
hook > policy), and between equals ``tied`` decides: ``"first"`` (the first name, as
``named_parameters`` dedupes), ``"decay"`` or ``"no_decay"``. Every such case is recorded in
``Plan.conflicts`` and reported by the audit.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from decaykit._validate import check_number
from decaykit.errors import DecayError, DecayWarning
from decaykit.policy.groups import build_groups
from decaykit.policy.layers import layer_ids
from decaykit.policy.names import canonical_name, unwrap_model
from decaykit.policy.presets import Preset, get_preset
from decaykit.policy.roles import ParamInfo
from decaykit.policy.rules import Rule, as_rules

__all__ = ["Conflict", "Decision", "Plan", "collect_params", "param_groups", "plan"]

Tied = Literal["first", "decay", "no_decay"]
_SOURCE_RANK = {"rule": 3, "exclude": 2, "hook": 1, "policy": 0}


@dataclass(frozen=True)
class Decision:
    """What the plan decided for one tensor."""

    name: str
    param: torch.Tensor = field(repr=False, compare=False)
    shape: tuple[int, ...]
    numel: int
    module_type: str
    role: str
    decay: bool
    weight_decay: float
    lr_scale: float
    reason: str
    source: str  # "policy", "hook", "exclude", "rule" or "frozen"
    trainable: bool = True
    layer: int = 0
    aliases: tuple[str, ...] = ()  # other names of the same tensor (tied weights)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "numel": self.numel,
            "module_type": self.module_type,
            "role": self.role,
            "decay": self.decay,
            "weight_decay": self.weight_decay,
            "lr_scale": self.lr_scale,
            "layer": self.layer,
            "reason": self.reason,
            "source": self.source,
            "trainable": self.trainable,
            "aliases": list(self.aliases),
        }


@dataclass(frozen=True)
class Conflict:
    """One tensor whose names were given different decisions, and which one was kept."""

    names: tuple[str, ...]
    decisions: tuple[tuple[float, float, str], ...]  # (weight_decay, lr_scale, reason) per name
    kept: str

    def __str__(self) -> str:
        parts = "; ".join(f"{n}: wd={wd:g} lr_scale={lr:g} ({why})" for n, (wd, lr, why) in zip(self.names, self.decisions))
        return f"tied tensor {' = '.join(self.names)} got different decisions ({parts}); kept {self.kept}"


@dataclass
class Plan:
    """Per-parameter decisions for one model, and the optimizer groups made from them."""

    decisions: list[Decision]
    weight_decay: float
    policy: str
    conflicts: list[Conflict] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # rules / exclude entries that matched nothing
    layer_decay: float | None = None

    def __iter__(self) -> Iterator[Decision]:
        return iter(self.decisions)

    def __len__(self) -> int:
        return len(self.decisions)

    def __getitem__(self, name: str) -> Decision:
        for d in self.decisions:
            if d.name == name or name in d.aliases:
                return d
        raise KeyError(name)

    @property
    def trainable(self) -> list[Decision]:
        return [d for d in self.decisions if d.trainable]

    def groups(self, lr: float | None = None) -> list[dict[str, Any]]:
        """Optimizer param groups: one per distinct (weight_decay, lr_scale), in model order."""
        return build_groups(self.decisions, lr=lr)

    def summary(self) -> list[dict[str, Any]]:
        """Tensors and parameter counts per group, for people and for ``--json``."""
        rows: dict[tuple[float, float], dict[str, Any]] = {}
        for d in self.trainable:
            row = rows.setdefault(
                (d.weight_decay, d.lr_scale),
                {"weight_decay": d.weight_decay, "lr_scale": d.lr_scale, "tensors": 0, "parameters": 0},
            )
            row["tensors"] += 1
            row["parameters"] += d.numel
        frozen = [d for d in self.decisions if not d.trainable]
        out = list(rows.values())
        if frozen:
            out.append({"weight_decay": None, "lr_scale": None, "tensors": len(frozen),
                        "parameters": sum(d.numel for d in frozen), "frozen": True})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "weight_decay": self.weight_decay,
            "layer_decay": self.layer_decay,
            "parameters": [d.to_dict() for d in self.decisions],
            "groups": self.summary(),
            "conflicts": [str(c) for c in self.conflicts],
            "unmatched": list(self.unmatched),
        }


def collect_params(model: nn.Module) -> dict[int, list[ParamInfo]]:
    """Every name of every tensor, grouped by tensor, in ``named_parameters`` order.

    One walk of the module tree gives each name with its owning module and ancestors, so the
    policy never has to look a module up by name.
    """
    by_tensor: dict[int, list[ParamInfo]] = {}

    def walk(module: nn.Module, prefix: str, ancestors: tuple[nn.Module, ...]) -> None:
        for leaf, param in module._parameters.items():
            if param is None:
                continue
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
            info = ParamInfo(canonical_name(raw), raw, attr, param, owner, ancestors, component)
            by_tensor.setdefault(id(param), []).append(info)
        for name, child in module._modules.items():
            if child is not None:
                walk(child, f"{prefix}{name}.", (*ancestors, module))

    walk(model, "", ())
    return by_tensor


def _check_model(model: Any) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, Iterator) or type(model).__name__ == "generator":
        raise DecayError(
            "model must be a torch.nn.Module, got a generator (did you pass model.parameters()?); "
            "pass the model itself: param_groups(model, 0.05)"
        )
    raise DecayError(f"model must be a torch.nn.Module, got {type(model).__name__}; pass the model itself")


def _hook_patterns(model: nn.Module, scope: str) -> list[tuple[str, str, str, bool]]:
    """(module prefix, pattern, hook name, is_keyword) from ``no_weight_decay`` hooks."""
    out: list[tuple[str, str, str, bool]] = []
    if scope == "none":
        return out
    modules = [("", unwrap_model(model))] if scope == "top" else list(model.named_modules())
    for path, module in modules:
        for hook, keyword in (("no_weight_decay", False), ("no_weight_decay_keywords", True)):
            if scope == "top" and keyword:
                continue
            # hooks are methods: looking on the class avoids nn.Module.__getattr__ for every module
            if not hasattr(type(module), hook) and hook not in module.__dict__:
                continue
            prefix = canonical_name(path)
            fn = getattr(module, hook, None)
            if not callable(fn):
                continue
            try:
                names = fn()
            except Exception as exc:
                raise DecayError(f"{type(module).__name__}.{hook}() raised {type(exc).__name__}: {exc}") from exc
            if isinstance(names, str):
                names = [names]
            for pattern in names or ():
                out.append((prefix, str(pattern), hook, keyword))
    return out


def _hook_hit(name: str, hooks: Sequence[tuple[str, str, str, bool]]) -> str | None:
    for prefix, pattern, hook, keyword in hooks:
        if prefix:
            if not name.startswith(prefix + "."):
                continue
            rel = name[len(prefix) + 1:]
        else:
            rel = name
        if (pattern in rel) if keyword else (rel == pattern or fnmatch.fnmatchcase(rel, pattern)):
            where = f"{prefix}." if prefix else "model."
            return f"{where}{hook}() {pattern!r}"
    return None


def plan(
    model: nn.Module,
    weight_decay: float,
    *,
    policy: str | Preset = "decaykit",
    rules: Iterable[Rule | str | Mapping[str, Any]] | None = None,
    exclude: Iterable[str] | str | None = None,
    decay_embeddings: bool = True,
    layer_decay: float | None = None,
    layer_of: Mapping[str, int] | Callable[[str], int | None] | None = None,
    tied: Tied = "first",
    strict: bool = False,
) -> Plan:
    """Decide, for every parameter of ``model``, whether it decays, by how much and why.

    Args:
        model: any ``nn.Module``, bare or wrapped (DDP, ``torch.compile``, checkpoint wrappers);
            names are canonicalised to the bare model's.
        weight_decay: λ given to decayed parameters (no-decay ones get 0).
        policy: ``"decaykit"`` (default: from what the parameter is), or a replica of an anchor's
            rule: ``"timm"``, ``"hf"``, ``"nanogpt"``, ``"seed"``, ``"torch"`` (see ``presets``).
        rules: ordered overrides, first match wins (:class:`Rule`, ``"glob:wd=0"`` strings or dicts).
        exclude: names or globs that get no decay, the seed's ``skip_list``.
        decay_embeddings: decay embedding tables (the default, as the seed and timm do).
        layer_decay: BEiT-style layer-wise LR decay, ``lr_scale = layer_decay ** (max_layer - layer)``.
        layer_of: override the layer found from the structure: mapping or callable name -> layer.
        tied: how to settle different decisions for names of one tensor of equal standing.
        strict: a rule or exclude entry that matches nothing is an error, not a warning.
    """
    model = _check_model(model)
    weight_decay = check_number(weight_decay, "weight_decay")
    preset = get_preset(policy)
    if tied not in ("first", "decay", "no_decay"):
        raise DecayError(f"tied must be 'first', 'decay' or 'no_decay', got {tied!r}")
    if layer_decay is not None:
        layer_decay = check_number(layer_decay, "layer_decay", allow_zero=False, upper=1.0)
    user_rules = as_rules(rules)
    if isinstance(exclude, str):
        exclude = [exclude]
    skip = [str(e) for e in (exclude or ())]

    by_tensor = collect_params(model)
    if not by_tensor:
        raise DecayError(f"model {type(model).__name__} has no parameters: there is nothing to decay")
    hooks = _hook_patterns(model, preset.hooks)
    rule_hits = [0] * len(user_rules)
    skip_hits = [0] * len(skip)

    first_names = [infos[0].name for infos in by_tensor.values()]
    layers, max_layer = ({}, 0)
    if layer_decay is not None or layer_of is not None:
        layers, max_layer = layer_ids(unwrap_model(model), first_names, layer_of)  # type: ignore[arg-type]
        if layer_decay is not None and max_layer == 0:
            warnings.warn(
                f"layer_decay={layer_decay}: found no repeated blocks in {type(model).__name__}, so every "
                "parameter gets lr_scale 1; pass layer_of= to say which layer each parameter is in",
                DecayWarning,
                stacklevel=2,
            )

    def base_scale(name: str) -> float:
        if layer_decay is None:
            return 1.0
        return float(layer_decay ** (max_layer - layers.get(name, max_layer)))

    decisions: list[Decision] = []
    conflicts: list[Conflict] = []
    for infos in by_tensor.values():
        first = infos[0]
        param = first.param
        shape = tuple(param.shape)
        numel = math.prod(shape)
        if not param.requires_grad:
            decisions.append(Decision(first.name, param, shape, numel, first.module_type, "frozen", False, 0.0,
                                      0.0, "frozen (requires_grad=False)", "frozen", trainable=False,
                                      layer=layers.get(first.name, 0),
                                      aliases=tuple(i.name for i in infos[1:])))
            continue
        scale = base_scale(first.name)
        candidates = []
        for info in infos:
            role, decay, reason = preset.classify(info, decay_embeddings)
            wd, lr_scale, source = (weight_decay if decay else 0.0), scale, "policy"
            hook = _hook_hit(info.name, hooks)
            if hook is None and getattr(param, "_no_weight_decay", False) and preset.hooks == "all":
                hook = "tensor attribute _no_weight_decay=True"  # mamba_ssm's A_log, D
            if hook:
                wd, reason, source = 0.0, hook, "hook"
            for j, pattern in enumerate(skip):
                if info.name == pattern or fnmatch.fnmatchcase(info.name, pattern):
                    skip_hits[j] += 1
                    wd, reason, source = 0.0, f"exclude {pattern!r}", "exclude"
                    break
            for j, rule in enumerate(user_rules):
                if rule.matches(info.name, info.owner):
                    rule_hits[j] += 1
                    if rule.weight_decay is not None:
                        wd = rule.weight_decay
                    elif rule.decay_mult is not None:
                        wd = wd * rule.decay_mult
                    if rule.lr_scale is not None:
                        lr_scale = scale * rule.lr_scale
                    reason, source = f"rule {rule.describe()} (was: {reason})", "rule"
                    break
            candidates.append((info, role, wd, lr_scale, reason, source))
        chosen = _settle(candidates, tied)
        if len({(c[2], c[3]) for c in candidates}) > 1:
            conflicts.append(Conflict(tuple(c[0].name for c in candidates),
                                      tuple((c[2], c[3], c[4]) for c in candidates), chosen[0].name))
        info, role, wd, lr_scale, reason, source = chosen
        decisions.append(Decision(first.name, param, shape, numel, info.module_type, role, wd > 0, wd, lr_scale,
                                  reason, source, layer=layers.get(first.name, 0),
                                  aliases=tuple(i.name for i in infos[1:])))

    unmatched = [f"rules[{j}] {r!r}" for j, (r, n) in enumerate(zip(user_rules, rule_hits)) if n == 0]
    unmatched += [f"exclude {p!r}" for p, n in zip(skip, skip_hits) if n == 0]
    if unmatched:
        message = f"matched no parameter of {type(model).__name__}: {', '.join(unmatched)}; check the names with `decaykit inspect`"
        if strict:
            raise DecayError(message)
        warnings.warn(message, DecayWarning, stacklevel=2)
    return Plan(decisions, weight_decay, preset.name, conflicts, unmatched, layer_decay)


def _settle(candidates: list[tuple[Any, ...]], tied: Tied) -> tuple[Any, ...]:
    best = max(_SOURCE_RANK[c[5]] for c in candidates)
    top = [c for c in candidates if _SOURCE_RANK[c[5]] == best]
    if tied == "decay":
        return max(top, key=lambda c: c[2])
    if tied == "no_decay":
        return min(top, key=lambda c: c[2])
    return top[0]


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    lr: float | None = None,
    policy: str = "decaykit",
    rules: Iterable[Any] | None = None,
    exclude: Iterable[str] | str | None = None,
    decay_embeddings: bool = True,
    layer_decay: float | None = None,
    layer_of: Mapping[str, int] | Callable[[str], int | None] | None = None,
    tied: str = "first",
    strict: bool = False,
) -> list[dict[str, Any]]:
    """Param groups for any ``torch.optim`` optimizer, made from :func:`decaykit.plan`.

    ``torch.optim.AdamW(decaykit.param_groups(model, 0.05), lr=1e-3)`` just works. Frozen
    parameters are left out, tied tensors appear once, groups with equal settings are merged.
    The keyword arguments are :func:`decaykit.plan`'s, plus ``lr`` (see :func:`build_groups`).

    >>> model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    >>> groups = param_groups(model, 0.05)
    >>> [(g["weight_decay"], g["param_names"]) for g in groups]
    [(0.05, ['0.weight', '2.weight']), (0.0, ['0.bias', '1.weight', '1.bias', '2.bias'])]
    >>> opt = torch.optim.AdamW(groups, lr=1e-3)
    """
    decided = plan(
        model,
        weight_decay,
        policy=policy,
        rules=rules,
        exclude=exclude,
        decay_embeddings=decay_embeddings,
        layer_decay=layer_decay,
        layer_of=layer_of,
        tied=tied,  # type: ignore[arg-type]
        strict=strict,
    )
    return decided.groups(lr=lr)
