"""``Monitor``: watch what weight decay does to each tensor while a model trains.

>>> import torch, decaykit
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16, elementwise_affine=False))
>>> opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-2)
>>> mon = decaykit.Monitor(model, opt, every=5)
>>> for _ in range(10):
...     model(torch.randn(4, 8)).pow(3).mean().backward(); opt.step(); opt.zero_grad()
>>> [r["step"] for r in mon.history], mon.history[0]["name"], round(mon.history[0]["timescale_steps"])
([1, 5, 10], '0.weight', 1000)
>>> mon.close()

The monitor hooks ``optimizer.step`` (``register_step_pre_hook`` / ``register_step_post_hook``):
at the first step and every ``every``-th, it copies the tensors of the decayed groups before the
step and measures them after it (:mod:`decaykit.monitor.record`), against the rotational-
equilibrium predictions of :mod:`decaykit.monitor.equilibrium`; every step adds each group's
η_t·λ_t to the sums that make Σ r exact (:mod:`decaykit.monitor.tally`).
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from decaykit import optimizers
from decaykit._validate import check_int
from decaykit.errors import DecayError
from decaykit.monitor.equilibrium import GroupDecay, group_decays, momentum_fill
from decaykit.monitor.findings import (
    DOMINATES,
    EQUILIBRIUM_DRIFT,
    MonitorFinding,
    frozen_finding,
    lr_zero_finding,
    other_optimizer_finding,
    policy_findings,
    rounding_finding,
    tensor_findings,
    timescale_finding,
    unheld_finding,
)
from decaykit.monitor.record import held_values, measure
from decaykit.monitor.report import group_summary
from decaykit.monitor.sinks import SCALARS, CsvSink, JsonLinesSink, TensorBoardSink, as_sinks
from decaykit.monitor.tally import DecayTally, found_inf
from decaykit.policy.decide import Decision
from decaykit.policy.options import Policy
from decaykit.policy.plan import plan
from decaykit.probe.rounding import rounded_away

__all__ = ["Monitor"]

_UNSEEN = object()  # a tensor the monitor's plan has not met yet


def _unwrap(optimizer: Any) -> Any:
    """The optimizer to hook: the one inside a framework's wrapper (:func:`decaykit.optimizers.unwrap`)."""
    optimizer = optimizers.unwrap(optimizer)
    if not isinstance(getattr(optimizer, "param_groups", None), list) or not callable(
            getattr(optimizer, "register_step_pre_hook", None)):
        raise DecayError(f"optimizer must be a torch.optim.Optimizer (or decaykit.WeightDecay), got "
                         f"{type(optimizer).__name__}; pass the optimizer whose step() the training loop calls")
    return optimizer


def _drives(optimizer: Any, watched: Any) -> bool:
    """Whether ``optimizer`` is ``watched`` or steps through to it (a WeightDecay engine, a Lightning or
    accelerate wrapper around it, a :func:`~decaykit.optimizers.sharing_wrapper` or sharding one), or is
    what ``watched`` wraps."""
    return _holds(optimizer, watched) or _holds(watched, optimizer)


def _holds(outer: Any, inner: Any) -> bool:
    """Whether ``outer`` is ``inner`` or a wrapper around it (nested ones too)."""
    for _ in range(4):
        if outer is inner:
            return True
        outer = (getattr(outer, "optimizer", None) or getattr(outer, "_optimizer", None)
                 or optimizers.sharing_wrapper(outer) or optimizers.sharding_wrapper(outer))
        if outer is None:
            break
    return False


def _global_step_hook(method: Any) -> Any:
    """torch's global step post hook calling ``method``, holding its monitor weakly: a monitor dropped without
    ``close()`` is not kept alive by it (the hook then does nothing; torch's table cannot change while it runs)."""
    ref = weakref.WeakMethod(method)

    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        bound = ref()
        if bound is not None:
            bound(optimizer, args, kwargs)

    return register_optimizer_step_post_hook(hook)


def _fingerprint(t: Tensor) -> tuple[float, float]:
    """Σθ and Σθ² of a tensor: any step that trains it moves them."""
    values = t.detach().double()
    return float(values.sum()), float(values.square().sum())


def _lr_above_zero(group: dict[str, Any]) -> bool:
    lr = group.get("lr", 0.0)
    return bool(lr > 0) if isinstance(lr, (int, float, Tensor)) else False


class Monitor:
    """Record, per decayed tensor and recorded step, what weight decay does; tell what looks wrong.

    Args:
        model: the model being trained (bare or wrapped); names are :func:`decaykit.plan`'s.
        optimizer: the optimizer whose ``step()`` the loop calls: any ``torch.optim`` optimizer or a
            :class:`decaykit.WeightDecay` (Lightning's and accelerate's wrappers are looked through).
        every: record the first step and every ``every``-th step.
        total_steps: the run's length in optimizer steps, to tell a run shorter than one timescale of
            decay (Σ r < 1): from the Σ r measured at ``close()``, or earlier where the peak LR is known.
        sink: where each entry also goes: a callable, a ``.jsonl`` or ``.csv`` path, a
            ``SummaryWriter``, or a list of them (:mod:`decaykit.monitor.sinks`).
        policy: the policy whose decisions a decayed tensor is checked against (default ``"decaykit"``).
        start_step: the optimizer steps taken before the monitor was attached (a resumed run).

    ``history``: one dict per decayed tensor per recorded step (keys
    :data:`decaykit.monitor.record.FIELDS`); ``findings``: :class:`MonitorFinding` each once per
    tensor or group; ``close()`` removes the hooks and closes the file sinks.
    """

    def __init__(self, model: nn.Module, optimizer: Any, every: int = 50, total_steps: int | None = None,
                 sink: Any = None, *, policy: str | Policy = "decaykit", start_step: int = 0) -> None:
        self.every = check_int(every, "every", minimum=1)
        self.total_steps = None if total_steps is None else check_int(total_steps, "total_steps", minimum=1)
        self.start_step = check_int(start_step, "start_step")
        self.optimizer = _unwrap(optimizer)
        self._model, self._policy = model, policy
        self._decisions: dict[int, Decision | None] = {id(d.param): d for d in plan(model, 1.0, policy=policy).decisions}
        self.history: list[dict[str, Any]] = []
        self.findings: list[MonitorFinding] = []
        self._sinks = as_sinks(sink)
        self._tally = DecayTally(self.optimizer, self.start_step)
        self._pending: tuple[int, list[GroupDecay], list[tuple[int, Tensor, Tensor]]] | None = None
        self._peaks: dict[int, tuple[float, int, int]] = {}  # group -> (r at the peak LR / s(t), t, step) where known
        self._bounded: set[int] = set()  # groups whose run was bounded from their known peak LR
        self._fired: set[tuple[str, str]] = set()
        self._idle: dict[int, tuple[float, list[int]]] = {}  # group -> (λ, recorded steps) where lr = 0 stopped its decay
        self._acted: set[int] = set()  # groups whose decay acted at some recorded step
        self._zero_grads: dict[str, int] = {}  # name -> its records in a row with a gradient of zeros (decay dominating)
        self._diverged: set[int] = set()  # groups with a tensor that went NaN/inf: no Σ r says what the decay did
        self._rounded: set[int] = set()  # groups with a tensor whose decay rounds back to θ: Σ r counts no real decay
        self._others: weakref.WeakSet[Any] = weakref.WeakSet()  # other optimizers already looked at
        self._steppers: weakref.WeakSet[Any] = weakref.WeakSet()  # every other optimizer seen stepping
        # id -> (name, tensor, step first seen, fingerprint) of model tensors with a gradient no optimizer held
        self._unheld: dict[int, tuple[str, Tensor, int, tuple[float, float]]] = {}
        self._stepping = False  # inside the watched optimizer's step (between its pre- and post-hook)
        self._born: dict[int, int] = {}  # id(param) -> the step that created its SGD momentum buffer, where seen
        self._settling: dict[str, tuple[float, float]] = {}  # name -> (√(η²/r), Σ r) where that equilibrium began
        self._handles = [self.optimizer.register_step_pre_hook(self._before_step),
                         self.optimizer.register_step_post_hook(self._after_step),
                         _global_step_hook(self._other_step)]
        self._emit({"kind": "run", "optimizer": type(self.optimizer).__name__,
                    "every": self.every, "total_steps": self.total_steps, "start_step": self.start_step,
                    "groups": [{"group": i, "weight_decay": g.get("weight_decay"), "tensors": len(g["params"])}
                               for i, g in enumerate(self.optimizer.param_groups)]})

    # -- the hooks -------------------------------------------------------------------------------
    def records_at(self, step: int) -> bool:
        """Whether the optimizer step numbered ``step`` (1 = the first after attaching) is recorded."""
        return step == self.start_step + 1 or step % self.every == 0

    def _records_within(self, low: int, high: int) -> bool:
        return low <= self.start_step + 1 <= high or high // self.every * self.every >= low

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._stepping = True
        flag = found_inf(optimizer, kwargs)
        step = self._tally.next_step(self._records_within)
        recorded = self.records_at(step)
        if recorded and flag is not None and bool(flag):
            return  # GradScaler's overflow on a fused optimizer: the kernel changes nothing, the step is not counted
        self._tally.start(None if recorded else flag)
        if len(self._idle) > len(self._acted):  # a group seen at lr = 0: an unrecorded step with lr > 0 decays it
            self._acted.update(i for i in self._idle if _lr_above_zero(self.optimizer.param_groups[i]))
        if not recorded:
            return
        decays = group_decays(self.optimizer)
        for i, decay in enumerate(decays):
            if decay.decays:
                self._acted.add(i)
            elif decay.lr == 0 and decay.weight_decay > 0:
                self._idle.setdefault(i, (decay.weight_decay, []))[1].append(step)
        tensors = [(i, p, p.detach().clone()) for i, (group, decay) in enumerate(zip(self.optimizer.param_groups, decays))
                   if decay.decays for p in group["params"]]
        state = self.optimizer.state
        for i, p, _ in tensors:  # a momentum buffer this step creates: its decay builds up from this step on
            if decays[i].family == "sgd" and "momentum_buffer" not in state.get(p, {}):
                self._born[id(p)] = step
        self._pending = (step, decays, tensors)

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._stepping = False
        applied = self._tally.applied()
        if applied is None or self._pending is None:
            return
        bases, index, multiplier = applied
        step, decays, tensors = self._pending
        self._pending = None
        self._replan(tensors)
        records, params = [], []
        for i, param, before in tensors:
            if param.grad is None and torch.equal(param.detach(), before):
                continue  # torch skips a tensor without a gradient: no step, no decay to record
            record = measure(step, self._name(param, i), i, decays[i], self.optimizer, param, before,
                             self._fill(param, i, step, decays[i]))
            record["cumulative_decay"] = self._tally.advance(param, i, record["decay_rate"], bases[i])
            if not math.isfinite(record["norm"]):
                self._diverged.add(i)
            records.append(record)
            params.append(param)
        self.history.extend(records)
        found = self._policy_findings(step, tensors) + self._timescale_findings(step, decays, index, multiplier)
        found += self._rounding_findings(step, decays, tensors)
        self._note_unheld(step)
        for record, param in zip(records, params):
            found += tensor_findings(record, self._settled(record), self._gradless(record, param))
        for record in records:
            self._emit({"kind": "tensor", **record})
        self._add_findings(found)

    def _held(self) -> set[int]:
        """The tensors the watched optimizer and every other one seen stepping hold."""
        return {id(p) for opt in (self.optimizer, *self._steppers) for g in opt.param_groups for p in g["params"]}

    def _note_unheld(self, step: int) -> None:
        """At a record: the model's tensors with a gradient that no optimizer seen stepping holds, each with the step
        it was first seen and a fingerprint of its values, for :meth:`_unheld_findings` to judge at ``close()``."""
        held = self._held()
        for name, p in self._model.named_parameters():
            if p.requires_grad and p.grad is not None and id(p) not in held and id(p) not in self._unheld:
                self._unheld[id(p)] = (name, p, step, _fingerprint(p))

    def _unheld_findings(self, step: int) -> list[MonitorFinding]:
        """Tensors that got gradients, that no optimizer seen stepping holds even now, and whose values have not moved
        since a record first saw them, steps ago (unfrozen after the optimizer was built from the trainable ones, a
        head replaced): never trained. An optimizer of their own that steps them, however rarely, moves them."""
        held = self._held()
        never = [name for pid, (name, p, first, seen) in self._unheld.items()
                 if pid not in held and step > first and _fingerprint(p) == seen]
        return [unheld_finding(never, step)] if never else []

    def _rounding_findings(self, step: int, decays: list[GroupDecay],
                           tensors: list[tuple[int, Tensor, Tensor]]) -> list[MonitorFinding]:
        """Low-precision tensors whose decay, a pass apart from the update, rounds back to θ (bf16 AdamW at lr·λ
        below bfloat16's spacing); their group's run is then not judged by a Σ r that did not act. A decay inside a
        fused kernel rounds with the update, and how much of it acts depends on the updates: not told."""
        out = []
        for i, param, before in tensors:
            decay = decays[i]
            if (decay.kind not in ("decoupled", "cautious") or not decay.rate or decay.fused
                    or before.element_size() >= 4):
                continue
            said = rounded_away(before, decay.rate)
            if said is not None:
                out.append(rounding_finding(self._name(param, i), step, said[1]))
                if not said[0]:
                    self._rounded.add(i)
        return out

    def _gradless(self, record: dict[str, Any], param: Tensor) -> int:
        """How many of the tensor's records in a row, this one included, had a gradient of exact zeros; read only
        where the decay dominates the update (a wait for the device)."""
        ratio, grad = record["decay_to_update"], param.grad
        if ratio is None or not ratio > DOMINATES or grad is None:
            self._zero_grads.pop(record["name"], None)
            return 0
        if bool(held_values(grad).any()):
            self._zero_grads.pop(record["name"], None)
            return 0
        count = self._zero_grads[record["name"]] = self._zero_grads.get(record["name"], 0) + 1
        return count

    def _settled(self, record: dict[str, Any]) -> float | None:
        """Σ r of the record's tensor since its predicted equilibrium last moved by more than EQUILIBRIUM_DRIFT (the
        prediction follows η_t at once, ‖θ‖ only at the decay's rate: an LR drop starts the count again)."""
        done, lr, rate = record["cumulative_decay"], record["lr"], record["decay_rate"]
        if not record["predicted_norm"] or done is None or not lr or not rate:
            return None
        # where the equilibrium is, apart from the gradient's noise: ‖θ‖² ∝ η²/r (Adam; its fourth root for SGD)
        where = math.sqrt(lr * lr / rate)
        start = self._settling.get(record["name"])
        if start is None:
            start = self._settling[record["name"]] = (where, 0.0)
        elif abs(where / start[0] - 1) > EQUILIBRIUM_DRIFT:
            start = self._settling[record["name"]] = (where, done)
        return done - start[1]

    def _add_findings(self, found: list[MonitorFinding]) -> None:
        """Keep and emit the findings not seen before (each code once per tensor or group), then flush the sinks."""
        new = [f for f in found if (f.code, f.name) not in self._fired]
        self._fired.update((f.code, f.name) for f in new)
        self.findings.extend(new)
        for finding in new:
            self._emit({"kind": "finding", **finding.to_dict()})
        for sink in self._sinks:
            if callable(getattr(sink, "flush", None)):
                sink.flush()  # type: ignore[attr-defined]

    def _other_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Any optimizer's step (torch's global hook): another one stepping tensors this monitor watches is
        told once (``other-optimizer``): a replaced optimizer would otherwise leave the records silently stopped."""
        if optimizer is not self.optimizer:
            self._steppers.add(optimizer)
        # the watched optimizer's own inner one, stepped outside its step (SAM's second_step), records nothing
        inside = not self._stepping and optimizer is not self.optimizer and _holds(self.optimizer, optimizer)
        if (_drives(optimizer, self.optimizer) and not inside) or optimizer in self._others:
            return
        self._others.add(optimizer)
        watched = {id(p): (i, p) for i, g in enumerate(self.optimizer.param_groups) for p in g["params"]}
        shared = [watched[id(p)] for g in optimizer.param_groups for p in g["params"] if id(p) in watched]
        if shared:
            names = list(dict.fromkeys(self._name(p, i) for i, p in shared))
            self._add_findings([other_optimizer_finding(type(optimizer).__name__, names, self.step,
                                                        type(self.optimizer).__name__ if inside else None)])

    # -- findings --------------------------------------------------------------------------------
    def _fill(self, param: Tensor, group: int, step: int, decay: GroupDecay) -> float:
        """The share of SGD's steady-state L2 decay this step applies: its momentum buffer's age, where the monitor
        saw it created (else it is taken as settled)."""
        born = self._born.get(id(param))
        if decay.family != "sgd" or decay.kind != "coupled" or born is None:
            return 1.0
        settings = self.optimizer.param_groups[group]
        return momentum_fill(float(settings.get("momentum", 0.0)), float(settings.get("dampening", 0.0)),
                             bool(settings.get("nesterov", False)), step - born + 1)

    def _replan(self, tensors: list[tuple[int, Tensor, Tensor]]) -> None:
        """Plan the model again where a recorded tensor was added to it since the monitor was built (a new head
        and its add_param_group), or was frozen then and is trained now: names and decisions as they are now."""
        stale = any(self._decisions.get(id(p), _UNSEEN) is _UNSEEN
                    or (p.requires_grad and not getattr(self._decisions[id(p)], "trainable", True))
                    for _, p, _ in tensors)  # fmt: skip
        if stale:
            self._decisions.update({id(e.param): e for e in plan(self._model, 1.0, policy=self._policy).decisions})
            for _, p, _ in tensors:  # in no module of the model: planned only once
                self._decisions.setdefault(id(p), None)

    def _policy_findings(self, step: int, tensors: list[tuple[int, Tensor, Tensor]]) -> list[MonitorFinding]:
        """Tensors the policy would not decay in a decaying group, and frozen ones that the step moved all the
        same; both as the tensors are now (requires_grad read at this step, not when the monitor was built)."""
        decided, frozen = [], []
        for i, p, before in tensors:
            d = self._decisions.get(id(p))
            if d is None:
                continue
            if not p.requires_grad:
                if not torch.equal(p.detach(), before):
                    frozen.append(frozen_finding(d.name, i, step))
                continue
            decided.append((d, i))
        return policy_findings(decided, step) + frozen

    def _timescale_findings(self, step: int, decays: list[GroupDecay], index: int, multiplier: float) -> list[MonitorFinding]:
        """``timescale-exceeds-run`` before the run ends, only from a known peak LR: Σ r so far plus the rest of the
        run at the peak is a bound, checked once per group."""
        out = []
        for i, decay in enumerate(decays):
            if not decay.decays:
                continue
            peak = decay.peak_rate()
            if peak is None or multiplier <= 0:  # not known now, or the LR went above it: it bounds nothing
                self._peaks.pop(i, None)
                continue
            self._peaks[i] = (peak / multiplier, index, step)
            if self.total_steps is not None and i not in self._bounded:
                self._bounded.add(i)
                out += self._run_finding(i, step)
        return out

    def _run_finding(self, group: int, step: int) -> list[MonitorFinding]:
        """``timescale-exceeds-run`` where Σ r over the whole run (total_steps) is below 1: measured over the steps
        watched, and bounded at the known peak LR over the others (before ``start_step``, after this step)."""
        done = self._tally.group_sum(group)
        if (self.total_steps is None or done is None or group in self._diverged or group in self._rounded
                or ("timescale-exceeds-run", f"group {group}") in self._fired):
            return []
        unwatched = [range(1, self.start_step + 1), range(self._tally.steps + 1, self.total_steps + 1)]
        count = sum(len(r) for r in unwatched)
        if count:
            peak = self._peaks.get(group)
            rest = None if peak is None else self._tally.peak_sum(*peak, unwatched, 1 - done)
            if rest is None:
                return []  # the peak LR is not known: no bound on the steps not seen
            done += rest
        lam = self.optimizer.param_groups[group].get("weight_decay")
        finding = timescale_finding(group, done, self._tally.steps - self.start_step, count, self.total_steps, step, lam,
                                    getattr(self.optimizer, "mode", None))
        return [] if finding is None else [finding]

    # -- output ----------------------------------------------------------------------------------
    def _name(self, param: Tensor, group: int) -> str:
        decision = self._decisions.get(id(param))
        if decision is not None:
            return decision.name
        index = next(j for j, p in enumerate(self.optimizer.param_groups[group]["params"]) if p is param)
        return f"param_groups[{group}][{index}]"

    def _emit(self, entry: dict[str, Any]) -> None:
        for sink in self._sinks:
            sink(entry)

    @property
    def step(self) -> int:
        """Optimizer steps applied, ``start_step`` included (a step GradScaler skipped is not)."""
        return self._tally.steps

    def summary(self) -> list[dict[str, Any]]:
        """One row per param group at the latest recorded step (:func:`decaykit.monitor.report.group_summary`)."""
        if not self.history:
            return []
        last = self.history[-1]["step"]
        return group_summary([r for r in self.history if r["step"] == last])

    def latest_metrics(self, *, per_tensor: bool = False) -> dict[str, float]:
        """Scalars of the latest recorded step for a logger: ``decay/group<i>/<field>`` from :meth:`summary`,
        ``decay/findings`` (how many so far), and with ``per_tensor`` ``decay/<tensor>/<field>`` too."""
        metrics: dict[str, float] = {"decay/findings": float(len(self.findings))}
        for row in self.summary():
            for key, value in row.items():
                if key not in ("group", "step") and value is not None:
                    metrics[f"decay/group{row['group']}/{key}"] = float(value)
        if per_tensor and self.history:
            last = self.history[-1]["step"]
            for r in (r for r in self.history if r["step"] == last):
                for key in SCALARS:
                    if r.get(key) is not None:
                        metrics[f"decay/{r['name']}/{key}"] = float(r[key])
        return metrics

    def close(self) -> None:
        """Remove the hooks, report a group whose decay never acted (lr = 0 throughout: ``lr-zero``) or whose run
        held less than one timescale of it (``timescale-exceeds-run``, from the Σ r measured), tensors that got
        gradients and were never trained (``not-in-optimizer``), and close the file sinks the monitor opened; the
        history stays."""
        if self._handles:
            step = self.step
            found = [lr_zero_finding(i, lam, steps, step) for i, (lam, steps) in sorted(self._idle.items())
                     if i not in self._acted]
            for i in range(len(self.optimizer.param_groups)):
                found += self._run_finding(i, step)
            self._add_findings(found + self._unheld_findings(step))
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for sink in self._sinks:
            if isinstance(sink, (JsonLinesSink, CsvSink, TensorBoardSink)):
                sink.close()
        self._sinks = []

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Monitor(every={self.every}, total_steps={self.total_steps}, step={self.step}, "
                f"records={len(self.history)}, findings={len(self.findings)})")
