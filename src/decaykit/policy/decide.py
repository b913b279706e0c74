"""One tensor, decided: a :class:`Decision` (and a :class:`Conflict` where its names disagree).

Each name is decided in turn (:class:`Decider`): the preset speaks first, then the model's
hooks, then ``exclude``, then the user's rules; the last to speak wins, and its reason is kept.

Tied names (one tensor, several names) are decided one by one and then settled
(:func:`settle`): the strongest source wins (rule > exclude > hook > policy), and between equals
the policy's ``tied`` setting decides.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from decaykit.policy.hooks import Hook, hook_reason
from decaykit.policy.names import logical_name
from decaykit.policy.options import Policy, Tied
from decaykit.policy.roles import ParamInfo

__all__ = ["Candidate", "Conflict", "Decider", "Decision", "RoleConflict", "averaged_copy", "conflict", "role_conflicts",
           "settle"]

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


@dataclass(frozen=True)
class RoleConflict:
    """Tensors of one role in one model that did not get one decision (a hook exempting some of them)."""

    role: str
    decayed: tuple[str, ...]
    undecayed: tuple[tuple[str, str], ...]  # (name, reason)

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.decayed, *(n for n, _ in self.undecayed))

    def __str__(self) -> str:
        spared = "; ".join(f"{n} ({why})" for n, why in self.undecayed[:3])
        more = f" and {len(self.undecayed) - 3} more" if len(self.undecayed) > 3 else ""
        return (f"role {self.role!r} split: {len(self.decayed)} decayed ({', '.join(self.decayed[:3])}"
                f"{'...' if len(self.decayed) > 3 else ''}) but not {spared}{more}; "
                "give the role one decision with a rule or the model's no_weight_decay()")


def role_conflicts(decisions: Sequence[Decision], seen: Collection[int]) -> list[RoleConflict]:
    """One :class:`RoleConflict` per role whose automatic decisions (policy, hooks) split into decayed
    and not, among tensors whose role was seen in use (``id`` in ``seen``): a role guessed from the
    structure is no evidence of a split. What the user's rules and ``exclude`` decide is meant and
    left out."""
    by_role: dict[str, list[Decision]] = {}
    for d in decisions:
        if d.trainable and d.source in ("policy", "hook") and id(d.param) in seen:
            by_role.setdefault(d.role, []).append(d)
    out = []
    for role, members in by_role.items():
        decayed = tuple(d.name for d in members if d.decay)
        undecayed = tuple((d.name, d.reason) for d in members if not d.decay)
        if decayed and undecayed:
            out.append(RoleConflict(role, decayed, undecayed))
    return out


class Candidate(NamedTuple):
    """The decision for one name of a tensor, before its other names are heard."""

    info: ParamInfo
    role: str
    weight_decay: float
    lr_scale: float
    reason: str
    source: str  # "policy", "hook", "exclude" or "rule"


def averaged_copy(info: ParamInfo) -> str | None:
    """The averaged copy of a model (an EMA or SWA) ``info``'s tensor lies in below the root, as ``'AveragedModel
    'ema''``, else None: torch's ``AveragedModel`` (``update_parameters``), or a module that holds a ``module`` and
    averages it with a ``decay`` in ``update`` (timm's ``ModelEmaV2`` / ``ModelEmaV3``). Its tensors keep
    ``requires_grad=True`` (a deep copy), yet no optimizer steps them: a LightningModule's ``self.ema``."""
    modules = (*info.ancestors[1:], info.owner) if info.ancestors else ()
    names = info.raw_name.split(".")
    for depth, module in enumerate(modules, 1):
        averaged = isinstance(module, torch.optim.swa_utils.AveragedModel) or (
            isinstance(getattr(module, "module", None), torch.nn.Module) and callable(getattr(module, "update", None))
            and isinstance(getattr(module, "decay", None), float))
        if averaged:
            return f"{type(module).__name__} {'.'.join(names[:depth])!r}"
    return None


class Decider:
    """Decides names in precedence order and counts what each rule and exclude entry matched."""

    def __init__(self, policy: Policy, weight_decay: float, hooks: Sequence[Hook]) -> None:
        self.policy, self.weight_decay, self.hooks = policy, weight_decay, hooks
        self.preset = policy.preset_info
        self.rule_hits = [0] * len(policy.rules)
        self.rule_shadowed = [0] * len(policy.rules)  # matched, but an earlier rule took the name
        self.exclude_hits = [0] * len(policy.exclude)

    def tensor(self, infos: Sequence[ParamInfo], layer: int, scale: float) -> tuple[Decision, Conflict | None]:
        """The decision for one tensor from all its names (the first one names it), and the
        conflict between its names if they were decided differently."""
        first = infos[0]
        shape = tuple(first.param.shape)
        aliases = tuple(i.name for i in infos[1:])
        average = averaged_copy(first)
        if not first.param.requires_grad or average is not None:
            why = "frozen (requires_grad=False)" if average is None else (
                f"frozen: a copy inside {average}, updated by averaging the trained weights, not by gradients")
            return Decision(first.name, first.param, shape, math.prod(shape), first.module_type, "frozen", False, 0.0,
                            0.0, why, "frozen", trainable=False, layer=layer, aliases=aliases), None
        candidates = [self.decide(info, scale) for info in infos]
        c = candidates[0] if len(candidates) == 1 else settle(candidates, self.policy.tied)
        reason = c.reason
        if c.weight_decay > 0 and c.lr_scale == 0:  # decoupled θ(1 − lr·λ) and coupled lr·λθ are both 0 here
            reason += " (lr_scale 0: the step never moves it, so this weight decay never acts)"
        decision = Decision(first.name, first.param, shape, math.prod(shape), c.info.module_type, c.role,
                            c.weight_decay > 0, c.weight_decay, c.lr_scale, reason, c.source, layer=layer,
                            aliases=aliases)
        return decision, conflict(candidates, c)

    def decide(self, info: ParamInfo, scale: float) -> Candidate:
        """``scale`` is the name's layer-wise LR scale (1 without layer decay)."""
        candidate = self.by_preset(info, scale)
        candidate = self.by_hook(candidate)
        candidate = self.by_exclude(candidate)
        return self.by_rule(candidate, scale)

    def by_preset(self, info: ParamInfo, scale: float) -> Candidate:
        role, decay, reason = self.preset.classify(info, self.policy.decay_embeddings)
        return Candidate(info, role, self.weight_decay if decay else 0.0, scale, reason, "policy")

    def by_hook(self, c: Candidate) -> Candidate:
        for name in _spellings(c.info):
            reason = hook_reason(name, c.info.param, self.hooks, tensor_attribute=self.preset.hooks == "all")
            if reason is not None:
                return c._replace(weight_decay=0.0, reason=reason, source="hook")
        return c

    def by_exclude(self, c: Candidate) -> Candidate:
        for j, pattern in enumerate(self.policy.exclude):
            if any(n == pattern or fnmatch.fnmatchcase(n, pattern) for n in _spellings(c.info)):
                self.exclude_hits[j] += 1
                return c._replace(weight_decay=0.0, reason=f"exclude {pattern!r}", source="exclude")
        return c

    def by_rule(self, c: Candidate, scale: float) -> Candidate:
        names = _spellings(c.info)
        for j, rule in enumerate(self.policy.rules):
            if any(rule.matches(n, c.info.owner) for n in names):
                self.rule_hits[j] += 1
                wd = c.weight_decay
                if rule.weight_decay is not None:
                    wd = rule.weight_decay
                elif rule.decay_mult is not None:
                    wd = wd * rule.decay_mult
                lr_scale = c.lr_scale if rule.lr_scale is None else scale * rule.lr_scale
                for k in range(j + 1, len(self.policy.rules)):
                    if any(self.policy.rules[k].matches(n, c.info.owner) for n in names):
                        self.rule_shadowed[k] += 1
                return c._replace(weight_decay=wd, lr_scale=lr_scale, source="rule",
                                  reason=f"rule {rule.describe()} (was: {c.reason})")
        return c

    def unmatched(self) -> list[str]:
        """The rules and exclude entries that matched no name, as messages and plans name them."""
        rules = zip(self.policy.rules, self.rule_hits, self.rule_shadowed)
        out = [f"rules[{j}] {r!r}" for j, (r, n, shadowed) in enumerate(rules) if n == 0 and shadowed == 0]
        return out + [f"exclude {p!r}" for p, n in zip(self.policy.exclude, self.exclude_hits) if n == 0]

    def shadowed(self) -> list[str]:
        """The rules that matched names only where an earlier rule had already decided (first match wins)."""
        rules = zip(self.policy.rules, self.rule_hits, self.rule_shadowed)
        return [f"rules[{j}] {r!r}" for j, (r, n, shadowed) in enumerate(rules) if n == 0 and shadowed > 0]


def _spellings(info: ParamInfo) -> tuple[str, ...]:
    """The names a rule, an exclude entry or a hook may use for ``info``: its real name, and for a
    parametrized tensor also the attribute it computes (``conv.weight`` for ``conv.parametrizations.weight.original``);
    a piece of a weight (weight_norm's magnitude or direction, ``conv.parametrizations.weight.original0`` or the
    older ``conv.weight_g``) also as ``conv.weight.original0`` and as the weight, ``conv.weight``, which names both pieces."""
    logical = logical_name(info.name)
    names = [info.name] if logical == info.name else [info.name, logical]
    if info.component is not None:
        owner = logical.rpartition(".")[0]  # "conv.weight" from "conv.weight.original0"; "conv" from "conv.weight_g"
        names.append(owner if logical != info.name else f"{owner}.{info.leaf}" if owner else info.leaf)
    return tuple(names)


def settle(candidates: Sequence[Candidate], tied: Tied) -> Candidate:
    """The one decision for a tensor named several times: strongest source, then ``tied``."""
    best = max(_SOURCE_RANK[c.source] for c in candidates)
    top = [c for c in candidates if _SOURCE_RANK[c.source] == best]
    if tied == "decay":
        return max(top, key=lambda c: c.weight_decay)
    if tied == "no_decay":
        return min(top, key=lambda c: c.weight_decay)
    return top[0]


def conflict(candidates: Sequence[Candidate], kept: Candidate) -> Conflict | None:
    """The names of one tensor decided differently, with the one kept; ``None`` if they agree."""
    if len(candidates) == 1 or len({(c.weight_decay, c.lr_scale) for c in candidates}) == 1:
        return None
    return Conflict(tuple(c.info.name for c in candidates),
                    tuple((c.weight_decay, c.lr_scale, c.reason) for c in candidates), kept.info.name)
