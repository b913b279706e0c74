"""A throwaway twin of an optimizer: step it as often as needed, the real one never moves.

The probe has to run an optimizer's own ``step`` (that is the only honest way to see what it
does), but on copies. ``copy.deepcopy(optimizer)`` is not a safe copy, for three reasons:

- torch's ``Optimizer.__getstate__`` keeps only ``defaults``, ``state`` and ``param_groups``
  (pickle semantics), so a wrapper's own attributes, such as its inner optimizer, are lost;
- an LR scheduler replaces ``optimizer.step`` on the instance by a closure over a weak
  reference to the *original* optimizer, so ``copy.step()`` would step the real model;
- a full copy holds every parameter and all of its state at once.

So a twin is built attribute by attribute: parameters of the current chunk become clones,
every other parameter and state tensor a ``meta`` placeholder that takes no memory (if some
code path still reaches one, it fails on ``meta`` instead of writing to the real tensor),
instance hooks and patched ``step`` methods are dropped, and ``step`` is called from the class.

A sharded parameter (a ``DTensor``: FSDP2's ``fully_shard``, tensor parallel) and its sharded
state enter the twin as plain copies of this rank's shard (:func:`local_shard`). Decay is
elementwise, so the shard alone shows it; and a twin of plain tensors runs no collective, so
each rank can probe on its own (rank 0 alone too) without waiting for the others.
"""

from __future__ import annotations

import copy
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from decaykit._dtensor import is_sharded, local_shard
from decaykit.errors import DecayError

__all__ = ["Twin", "is_number", "reachable_optimizers"]

GradFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def reachable_optimizers(optimizer: torch.optim.Optimizer, depth: int = 3) -> list[torch.optim.Optimizer]:
    """``optimizer`` and the optimizers it wraps (attributes, lists, dicts), outermost first."""
    found = [optimizer]
    seen = {id(optimizer)}
    frontier = [optimizer]
    for _ in range(depth):
        nxt = []
        for opt in frontier:
            for value in vars(opt).values():
                items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
                for item in items:
                    if isinstance(item, torch.optim.Optimizer) and id(item) not in seen:
                        seen.add(id(item))
                        found.append(item)
                        nxt.append(item)
        frontier = nxt
    return found



def _placeholder(t: torch.Tensor) -> torch.Tensor:
    try:
        meta = torch.empty_like(local_shard(t), device="meta")
    except (RuntimeError, TypeError, NotImplementedError):  # exotic tensor subclasses
        meta = torch.empty(0, device="meta", dtype=t.dtype)
    if isinstance(t, nn.Parameter):
        return nn.Parameter(meta, requires_grad=t.requires_grad)
    return meta


def _is_hook_dict(key: str) -> bool:
    return key.startswith("_optimizer_") and key.endswith("_hooks")


def _key(t: torch.Tensor) -> tuple[Any, ...] | None:
    """Pool key of a plain dense tensor (a DTensor's shard); None for anything a fresh ``clone`` should handle."""
    if is_sharded(t):
        t = local_shard(t)
    if type(t) not in (torch.Tensor, nn.Parameter) or t.layout != torch.strided or not t.is_contiguous():
        return None
    return (tuple(t.shape), t.dtype, t.device)


def is_number(value: Any) -> bool:
    """A plain int or float setting (not a bool, not a tensor): one the twin can set to 0."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _state_tensors(state: Any) -> list[torch.Tensor]:
    """The tensors of one ``optimizer.state`` value: a parameter's state dict, or a value an optimizer keeps
    under a key of its own (a step count as an int or a tensor)."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [v for v in state.values() if isinstance(v, torch.Tensor)]
    return []


class Twin:
    """Twins of ``optimizer`` holding copies of a chunk of its parameters and their state.

    >>> p = nn.Parameter(torch.ones(3))
    >>> opt = torch.optim.AdamW([p], lr=0.1, weight_decay=0.5)
    >>> stepped = Twin(opt).step([p])   # zero gradients: only the decay acts
    >>> stepped[id(p)], p.data
    (tensor([0.9500, 0.9500, 0.9500]), tensor([1., 1., 1.]))
    """

    def __init__(self, optimizer: torch.optim.Optimizer, lrs: dict[int, float] | None = None) -> None:
        self.optimizer = optimizer
        self.lrs = dict(lrs or {})  # group index -> the LR its twins step at (a warm-up's base LR where it is 0 now)
        self.optimizers = reachable_optimizers(optimizer)
        # built once: meta tensors are cheap but a large model has thousands of tensors
        self._placeholders: dict[int, Any] = {}
        for opt in self.optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    self._placeholders.setdefault(id(p), _placeholder(p))
            for p, state in opt.state.items():
                if isinstance(p, torch.Tensor):
                    self._placeholders.setdefault(id(p), _placeholder(p))
                for value in _state_tensors(state):
                    self._placeholders.setdefault(id(value), _placeholder(value))
        # Buffers of finished twins, reused by the next ones: a twin of 100M parameters would
        # otherwise map (and page-fault in) fresh memory for every step.
        self._pool: dict[tuple[Any, ...], list[torch.Tensor]] = {}
        self._lent: list[torch.Tensor] = []  # state copies and gradients of the running twin

    def _take(self, src: torch.Tensor, *, zero: bool = False) -> torch.Tensor:
        src = local_shard(src)
        key = _key(src)
        free = self._pool.get(key) if key is not None else None
        if free:
            buf = free.pop()
            return buf.zero_() if zero else buf.copy_(src)
        if zero:
            return torch.zeros_like(src, memory_format=torch.preserve_format)
        return src.clone(memory_format=torch.preserve_format)

    def recycle(self, tensors: Iterable[torch.Tensor]) -> None:
        """Give back stepped copies once read, for the next twin's buffers."""
        for t in tensors:
            key = _key(t)
            if key is not None:
                self._pool.setdefault(key, []).append(t.detach())

    def trim(self, params: Iterable[torch.Tensor]) -> None:
        """Keep only buffers the next chunk can use (4 per parameter: copy, gradient and two results,
        one per state tensor), so the pool never holds more than one chunk's peak."""
        need: dict[tuple[Any, ...], int] = {}
        for p in params:
            need[_key(p) or ()] = need.get(_key(p) or (), 0) + 4
            for opt in self.optimizers:
                for value in _state_tensors(opt.state.get(p)):
                    if _key(value) is not None:
                        need[_key(value)] = need.get(_key(value), 0) + 1  # type: ignore[index]
        self._pool = {k: v[: need.get(k, 0)] for k, v in self._pool.items() if need.get(k, 0)}

    def step(
        self,
        params: Iterable[torch.Tensor],
        *,
        grad: GradFn | None = None,
        start: dict[int, torch.Tensor] | None = None,
        decay_off: bool = False,
        also_off: tuple[str, ...] = (),
        reset: bool = False,
    ) -> dict[int, torch.Tensor]:
        """Step a twin holding copies of ``params`` once; return ``{id(param): stepped copy}``
        (of this rank's shard, for a DTensor).

        ``grad(param, copy)`` gives each copy's gradient (zeros by default: torch skips a
        parameter whose ``.grad`` is None, so zeros are what lets the decay act alone).
        ``start`` maps ``id(param)`` to values to start from instead of the parameter's own
        (shard-sized for a DTensor).
        ``decay_off`` sets every group's ``weight_decay`` to 0 in the twin, and with it each numeric group
        setting named in ``also_off``. ``reset`` starts ``params`` with no state of their own (as before their
        first step); state the optimizer keeps under keys of its own is copied all the same.
        """
        params = list(params)
        start = start or {}
        memo: dict[int, Any] = dict(self._placeholders)
        clones: dict[int, torch.Tensor] = {}
        for p in params:
            value = self._take(start.get(id(p), p))
            c = nn.Parameter(value, requires_grad=p.requires_grad) if isinstance(p, nn.Parameter) else value
            if grad is None:
                c.grad = self._take(c, zero=True)
                self._lent.append(c.grad)
            else:
                c.grad = grad(p, c)
            memo[id(p)] = c
            clones[id(p)] = c
        twins = {id(opt): object.__new__(type(opt)) for opt in self.optimizers}
        memo.update(twins)
        try:
            self._copy_into(twins, clones, memo, reset)
        except DecayError:
            raise
        except Exception as exc:  # state the optimizer keeps in tensor subclasses without clone, a process group
            raise DecayError(
                f"could not copy {type(self.optimizer).__name__}'s state to step a twin of it ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); the probe measures on copies and never steps "
                "the real optimizer, so an optimizer whose state cannot be copied cannot be probed"
            ) from exc
        self._restrict(twins.values(), {id(c) for c in clones.values()}, ("weight_decay", *also_off) if decay_off else ())
        top = twins[id(self.optimizer)]
        for i, lr in self.lrs.items():
            top.param_groups[i]["lr"] = lr
        step = type(top).step
        if getattr(step, "hooked", False):  # torch's profiling wrapper also runs global step hooks
            step = step.__wrapped__
        devices = sorted({c.device.index or 0 for c in clones.values() if c.device.type == "cuda"})
        try:
            with torch.random.fork_rng(devices=devices):
                step(top)
        except DecayError:
            raise
        except Exception as exc:
            raise DecayError(
                f"could not step a copy of {type(self.optimizer).__name__} with zero gradients "
                f"({type(exc).__name__}: {exc}); optimizers that need a closure (LBFGS), sparse gradients "
                "(SparseAdam) or gradients that carry a graph (Hessian-based ones, stepped after "
                "loss.backward(create_graph=True)) cannot be probed"
            ) from exc
        finally:
            lent, self._lent = self._lent, []
            del twins, memo
            self.recycle(lent)
        out = {}
        for key, c in clones.items():
            c.grad = None
            out[key] = c.detach()
        return out

    def _copy_into(self, twins: dict[int, Any], clones: dict[int, torch.Tensor], memo: dict[int, Any],
                   reset: bool) -> None:
        """Fill the twins: each optimizer's state (for ``clones``) and its other attributes, hooks left empty."""
        for opt in self.optimizers:
            if id(opt.state) not in memo:
                memo[id(opt.state)] = self._copy_states(opt, clones, memo, reset)
        for opt in self.optimizers:
            twin = twins[id(opt)]
            for key, value in vars(opt).items():
                if key == "step":  # an LR scheduler's patch: a closure over the real optimizer
                    continue
                twin.__dict__[key] = OrderedDict() if _is_hook_dict(key) else copy.deepcopy(value, memo)

    def _copy_states(self, opt: torch.optim.Optimizer, clones: dict[int, torch.Tensor], memo: dict[int, Any],
                     reset: bool) -> defaultdict[Any, Any]:
        """``opt.state`` for a twin holding ``clones``: their state copied (none with ``reset``), that of parameters
        outside the chunk left out, and state under keys of its own copied whole."""
        state: defaultdict[Any, Any] = defaultdict(dict)
        # parameters outside the chunk: their state stays out of the twin, also inside a shared dict
        other = {id(q) for group in opt.param_groups for q in group["params"]} - set(clones)
        for key, values in opt.state.items():
            if id(key) in clones:
                if not reset:
                    state[clones[id(key)]] = self._copy_values(values, memo, other)
            elif id(key) not in other:
                # shared state under a key of its own (a step count under a string key, a dict keyed by
                # parameter, as some pytorch_optimizer classes keep): the whole optimizer reads it, so every
                # twin gets its own copy, with the chunk's parameters as keys
                state[copy.deepcopy(key, memo)] = self._copy_values(values, memo, other)
        return state

    def _copy_values(self, values: Any, memo: dict[int, Any], other: set[int]) -> Any:
        """A state dict with its tensors copied into pooled buffers, its parameter keys mapped to the twin's and
        the entries of parameters in ``other`` (outside the chunk) left out; any other state value as a copy."""
        if isinstance(values, dict):
            return {copy.deepcopy(k, memo): self._copy_state(v, memo) for k, v in values.items() if id(k) not in other}
        return self._copy_state(values, memo)

    def _copy_state(self, value: Any, memo: dict[int, Any]) -> Any:
        if isinstance(value, torch.Tensor):
            clone = self._take(value)
            self._lent.append(clone)
            memo[id(value)] = clone  # another reference to the same buffer gets the same copy
            return clone
        return copy.deepcopy(value, memo)

    @staticmethod
    def _restrict(twins: Iterable[torch.optim.Optimizer], keep: set[int], off: tuple[str, ...]) -> None:
        """Drop placeholders from the twins' groups; keep the groups so indices still line up; set ``off``
        settings to 0 where a group has them as numbers."""
        seen: set[int] = set()
        for twin in twins:
            for group in twin.param_groups:
                if id(group) in seen:
                    continue
                seen.add(id(group))
                idx = [i for i, q in enumerate(group["params"]) if id(q) in keep]
                names = group.get("param_names")
                if isinstance(names, list) and len(names) == len(group["params"]):
                    group["param_names"] = [names[i] for i in idx]
                group["params"] = [group["params"][i] for i in idx]
                for key in off:
                    if key in group and (key == "weight_decay" or is_number(group[key])):
                        group[key] = 0.0
