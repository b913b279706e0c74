"""The tensors a probe measures: who holds them, what should happen to them, and in which chunks."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from decaykit import optimizers
from decaykit._aliasing import aliased
from decaykit._dtensor import is_sharded, local_shard
from decaykit.errors import DecayError, DecayWarning
from decaykit.policy.names import canonical_name, namer
from decaykit.policy.options import Policy
from decaykit.probe.estimator import Rows
from decaykit.probe.expectations import Expectation

__all__ = ["Target", "byte_size", "chunked", "find_targets", "mark_frozen", "mark_intent"]


@dataclass
class Target:
    """One tensor the probe measures, with what it should do and what it did."""

    param: torch.Tensor
    name: str
    group: int
    expect: Expectation
    total: int  # stacked models sharing the tensor (per-member rates), else 1
    members: int  # rows measured here: total, or 0 for a DTensor with no elements on this rank
    sharded: bool = False  # a DTensor: measured on this rank's shard
    frozen: str = ""  # why it must not change, or ""
    latent: bool = False  # frozen by requires_grad=False and no .grad: torch skips it today
    intent: tuple[bool, str] | None = None  # (the policy says decay, why)
    start: torch.Tensor | None = None  # test pattern for an all-zero tensor
    fresh: bool = True  # nothing but a decay can move it with zero gradients (no state yet, or an ASGD)
    also_in: list[int] = field(default_factory=list)  # further groups that hold the same tensor (torch steps it in each)
    aliases: list[str] = field(default_factory=list)  # other tensors over the same memory (torch steps each of them)
    rows: Rows | None = None
    # a tensor with state: its zero-gradient step at weight_decay=0 on a copy with that state reset, where only a
    # decay outside weight_decay can move it (momentum moves the base twin itself)
    reset: Rows | None = None
    unchecked: str = ""  # why that copy tells nothing, so a decay outside weight_decay went unchecked
    other_setting: str = ""  # the group setting found to control such a decay: with it at 0 too, nothing moves


def _held(name: str, local: torch.Tensor, total: int) -> int:
    """How many rows (stacked members) of a DTensor this rank's shard holds values of: all or none."""
    if not local.numel():
        return 0
    if total > 1 and local.shape[0] != total:
        # the twin would apply all of the group's per-member rates to some of the rows
        raise DecayError(f"{name} stacks {total} models with per-member decay rates, but this rank holds "
                         f"{local.shape[0]} of its rows (sharded on the member dimension 0): probe the stacked "
                         "model unsharded, or shard it on another dimension")
    return total


def find_targets(optimizer: torch.optim.Optimizer, model: nn.Module | None, expects: list[Expectation]) -> list[Target]:
    names: dict[int, str] = {}
    canonical = canonical_name if model is None else namer(model)
    if model is not None:
        for n, p in model.named_parameters():
            names.setdefault(id(p), canonical(n))
    targets = []
    first: dict[int, Target] = {}
    facts = optimizers.info(optimizer)
    # an optimizer with a second decay and no momentum (ASGD): its zero-gradient step at weight_decay=0 moves θ by
    # that decay alone, state or not, so the base twin reads it at every step, not only before the first
    decay_only = facts is not None and bool(facts.other_decay)
    for i, group in enumerate(optimizer.param_groups):
        params = group["params"]
        given = group.get("param_names")
        given = given if isinstance(given, (list, tuple)) and len(given) == len(params) else None
        for j, p in enumerate(params):
            if id(p) in first:  # listed again (groups built by hand): one entry, measured as torch steps it
                first[id(p)].also_in.append(i)
                continue
            name = canonical(str(given[j])) if given else names.get(id(p), f"group{i}.param{j}")
            rate = expects[i].rate
            total = 1
            if isinstance(rate, torch.Tensor):
                if p.dim() == 0 or p.shape[0] != rate.numel():
                    raise DecayError(
                        f"group {i} has {rate.numel()} per-member decay rates but {name} has shape "
                        f"{tuple(p.shape)}: stacked parameters need the members on dimension 0"
                    )
                total = rate.numel()
            sharded = is_sharded(p)
            local = local_shard(p)  # a DTensor's shard on this rank; the tensor itself otherwise
            members = _held(name, local, total) if sharded else total
            start = None
            if members and local.numel() and not bool(local.reshape(members, -1).any(dim=1).all()):
                # decay cannot move zeros: measure the same mechanics on a copy with a test pattern
                pattern = (torch.arange(local.numel(), device=local.device) % 5 + 1).to(local.dtype) / 5
                start = pattern.reshape(local.shape)
            fresh = not optimizer.state.get(p) or decay_only
            targets.append(Target(p, name, i, expects[i], total, members, sharded, start=start, fresh=fresh))
            first[id(p)] = targets[-1]
    for a, b in aliased(first[i].param for i in first):  # copied apart, the twins cannot show it: said instead
        first[a].aliases.append(first[b].name)
        first[b].aliases.append(first[a].name)
    return targets


def mark_frozen(targets: list[Target], frozen: Iterable[str | torch.Tensor], model: nn.Module | None = None) -> None:
    """Mark what must not move: ``requires_grad=False`` tensors, and those ``frozen`` names or holds.

    A glob of ``frozen`` that matches no tensor of the optimizer nor of ``model`` warns (a typo
    would otherwise pass silently; a frozen tensor rightly left out of the optimizer is a match).
    """
    if isinstance(frozen, (str, torch.Tensor)):
        frozen = [frozen]
    frozen = list(frozen)
    patterns = [f for f in frozen if isinstance(f, str)]
    tensors = {id(f) for f in frozen if isinstance(f, torch.Tensor)}
    used: set[str] = set()
    for t in targets:
        hits = [pat for pat in patterns if fnmatch.fnmatchcase(t.name, pat)]
        used.update(hits)
        if not t.param.requires_grad:
            t.frozen, t.latent = "requires_grad=False", t.param.grad is None
        elif id(t.param) in tensors or hits:
            t.frozen = "listed as frozen"
    names = [namer(model)(n) for n, _ in model.named_parameters()] if model is not None else []
    unmatched = [pat for pat in dict.fromkeys(patterns)
                 if pat not in used and not any(fnmatch.fnmatchcase(n, pat) for n in names)]
    if unmatched:
        warnings.warn(f"frozen={unmatched!r} matched no tensor of the optimizer{' or the model' if names else ''}; "
                      "check the names with `decaykit inspect`", DecayWarning, stacklevel=3)


def mark_intent(targets: list[Target], policy: Any, model: nn.Module | None) -> None:
    if policy is None:
        return
    if isinstance(policy, Mapping):
        for t in targets:
            for pattern, value in policy.items():
                if t.name == pattern or fnmatch.fnmatchcase(t.name, str(pattern)):
                    decay = bool(value) if isinstance(value, bool) else float(value) > 0
                    t.intent = (decay, f"policy[{pattern!r}]={value}")
                    break
        return
    if isinstance(policy, (str, Policy)):
        if model is None:
            raise DecayError(f"policy={policy!r} needs model=: the policy decides from the model's structure")
        from decaykit.policy.plan import plan

        policy = plan(model, 1.0, policy=policy)
    decisions = getattr(policy, "decisions", None)
    if decisions is None:
        raise DecayError(
            "policy must be a policy name, a decaykit.Policy, a decaykit.Plan or a mapping name -> weight decay, "
            f"got {type(policy).__name__}"
        )
    by_tensor = {id(d.param): d for d in decisions}
    for t in targets:
        d = by_tensor.get(id(t.param))
        if d is not None and d.trainable:
            t.intent = (bool(d.decay), d.reason)


def byte_size(p: torch.Tensor, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of ``p`` and its state that a twin copies: this rank's shards of DTensors."""
    state = optimizer.state.get(p, {})
    tensors = [p, *(v for v in state.values() if isinstance(v, torch.Tensor))]
    return sum(local_shard(t).numel() * t.element_size() for t in tensors)


def chunked(targets: list[Target], optimizer: torch.optim.Optimizer, limit: int | None) -> list[list[Target]]:
    targets = [t for t in targets if t.members]  # an empty shard has nothing to step
    if limit is None:
        return [targets] if targets else []
    chunks: list[list[Target]] = []
    size = 0
    for t in targets:
        b = byte_size(t.param, optimizer)
        if not chunks or size + b > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(t)
        size += b
    return chunks
