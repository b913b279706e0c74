"""Measure the weight decay an optimizer really applies, per tensor, without touching it.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
>>> opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
>>> report = probe(opt, model=model)
>>> [(e.name, e.kind, round(e.measured, 6), e.agrees) for e in report.entries[:2]]
[('0.weight', 'decoupled', 0.999, True), ('0.bias', 'decoupled', 0.999, True)]

How: a twin of the optimizer (:mod:`decaykit.probe.twin`) is stepped with zero gradients, so only
the decay can move a parameter (torch skips a parameter whose gradient is None, hence zeros).
Two twins start from the same copied state: θ_λ as configured and θ_0 with every
``weight_decay`` set to 0. Momentum buffers and Adam moments move both alike, so the decay's own
effect on the next step is Δ = θ_λ − θ_0 whatever state the optimizer has built. The measured
shrink factor is the least-squares s in Δ ≈ (s − 1)·θ; a residual above 5% of ‖Δ‖ means the
shrink is not proportional to θ.

- decoupled (AdamW; Loshchilov & Hutter 2019): θ ← θ(1 − η·λ), so Δ = −ηλθ exactly and s = 1 − ηλ.
- coupled L2 (SGD, Adam, RMSprop, Adagrad ``weight_decay``): g ← g + λθ. Checked exactly by a
  third twin with ``weight_decay=0`` and gradient λθ, which must land where θ_λ did. Through an
  adaptive denominator (Adam) Δ is not proportional to θ; for plain SGD it is, s = 1 − ηλ (the
  two conventions coincide for SGD, Prop. 1 of the paper).
- cautious (Chen et al. 2025): decoupled, only where the update u = (θ − θ_0)/η and θ agree in sign.

The probe measures the next step only: coupled decay that enters a momentum buffer keeps
acting on later steps. Cost: two or three optimizer steps on copies. Memory: parameters are
stepped in chunks of at most ``chunk_bytes`` of parameters + state (a tensor larger than that is
a chunk of its own); at the peak a probe holds one chunk's twin (parameters P, state S, zero
gradients P) and two stepped copies of its parameters, 3P + S (4P + S when the coupled twin runs).
On a 103M-parameter AdamW (1.15 GiB of parameters + state) that is 0.56x the parameters + state,
less than one extra copy (``benchmarks/bench_probe.py``); ``chunk_bytes=None`` needs 1.6-1.9x.

Sharded parameters (``DTensor``: FSDP2's ``fully_shard``, tensor parallel) are measured on the
shard this rank holds: decay is elementwise, so θ(1 − ηλ) holds shard by shard, and the twins
step plain copies of the shards with no collective (each rank may probe alone). Entries keep
the global name, shape and size; a tensor of which this rank holds nothing (an (11, 6) table
over 2 ranks is 6 + 5 rows, a (1,) tensor is 1 + 0) is reported as ``empty``. Stacked models
with per-member rates must not be sharded on the member dimension.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from decaykit._dtensor import is_sharded, local_shard
from decaykit._render import Report, format_table
from decaykit.errors import DecayError
from decaykit.policy.names import canonical_name
from decaykit.policy.options import Policy
from decaykit.probe.estimator import Rows, measure_rows
from decaykit.probe.expectations import Expectation, expectations, rate_text
from decaykit.probe.twin import Twin

__all__ = ["DEFAULT_CHUNK_BYTES", "ProbeEntry", "ProbeReport", "probe"]

DEFAULT_CHUNK_BYTES = 256 * 2**20
_LISTED = 20  # notes printed in the summary; the table and to_dict() have them all
_PATTERN_NOTE = "all zeros, so measured on a copy filled with a test pattern"
_EMPTY_NOTE = "sharded, and this rank holds none of it: the ranks that hold it measure it"


@dataclass
class ProbeEntry:
    """The decay one tensor (or one stacked model's slice of it, ``name[k]``) gets per step.

    ``kind`` is what was measured: ``decoupled`` (shrink proportional to θ), ``coupled``
    (equal to adding λθ to the gradient), ``cautious``, ``none``, ``other`` (neither),
    ``missing`` (a trainable parameter of the model that no group holds), or ``empty`` (a
    sharded tensor with no elements on this rank: nothing measured here). ``measured`` and
    ``expected`` are shrink factors per step (0.9999 means 0.01% smaller each step). A sharded
    tensor (DTensor) is measured on this rank's shard; ``shape`` and ``numel`` stay global.
    """

    name: str
    shape: tuple[int, ...]
    kind: str
    measured: float | None
    expected: float | None
    agrees: bool
    note: str = ""
    expected_kind: str = ""
    group: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    numel: int = 0
    frozen: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape"] = list(self.shape)
        return out


@dataclass
class ProbeReport(Report):
    """Per-tensor measurements, notes that apply to all of them, and what the probe cost."""

    optimizer: str
    entries: list[ProbeEntry]
    notes: list[str] = field(default_factory=list)
    cost: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(e.agrees for e in self.entries)

    @property
    def disagreements(self) -> list[ProbeEntry]:
        return [e for e in self.entries if not e.agrees]

    def to_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "ok": self.ok, "entries": [e.to_dict() for e in self.entries],
                "notes": list(self.notes), "cost": dict(self.cost)}

    def summary(self) -> list[str]:
        """One line per family of tensors (kind and shrink factor), then the disagreements."""
        families: dict[tuple[str, str], list[ProbeEntry]] = {}
        for e in self.entries:
            exact = e.kind in ("decoupled", "none")  # one factor for the family; coupled varies per tensor
            families.setdefault((e.kind, _factor(e.measured) if exact else ""), []).append(e)
        lines = []
        for (kind, factor), members in families.items():
            params = sum(e.numel for e in members)
            values = [e.measured for e in members if e.measured is not None and math.isfinite(e.measured)]
            if kind in ("none", "missing", "empty"):
                what = {"none": "unchanged by the decay", "missing": "in no param group",
                        "empty": "no elements on this rank (measured by the ranks that hold them)"}[kind]
            elif not values:
                what = "not measurable"
            elif factor:
                what = f"shrink by {factor} per step"
            else:
                lo, hi = _factor(min(values)), _factor(max(values))
                what = f"shrink by {lo} per step" if lo == hi else f"shrink by {lo} .. {hi} per step"
            lines.append(f"{len(members)} tensors ({params:,} parameters): {kind}, {what}")
        bad = self.disagreements
        lines.append(f"{len(bad)} disagreement(s)" + (":" if bad else ": the decay applied is the decay configured"))
        lines += [f"  {e.name}: {e.note}" for e in bad[:_LISTED]]
        lines += [f"  ... and {len(bad) - _LISTED} more (see the table)"] if len(bad) > _LISTED else []
        noted = [e for e in self.entries if e.agrees and e.note and not e.note.startswith((_PATTERN_NOTE, _EMPTY_NOTE))]
        if noted:
            lines.append(f"{len(noted)} tensor(s) that agree, with a note:")
            lines += [f"  {e.name}: {e.note}" for e in noted[:_LISTED]]
            lines += [f"  ... and {len(noted) - _LISTED} more"] if len(noted) > _LISTED else []
        return lines

    def __str__(self) -> str:

        rows = [[e.name, "x".join(map(str, e.shape)) or "scalar", "" if e.group is None else e.group,
                 e.kind, _factor(e.measured), e.expected_kind or "-", _factor(e.expected), "yes" if e.agrees else "NO"]
                for e in self.entries]
        table = format_table(["name", "shape", "group", "kind", "factor", "expected", "factor", "agrees"],
                             rows, align="llrlrlrl")
        cost = self.cost
        lines = [f"decaykit probe: {self.optimizer}, one zero-gradient step on copies "
                 "(factor: θ_next / θ from the decay alone)", table, "", *self.summary()]
        lines += [f"note: {n}" for n in self.notes]
        if cost:
            lines.append(
                f"cost: {cost['twin_steps']} twin steps in {cost['chunks']} chunk(s), {cost['seconds']:.2f} s, "
                f"at most {_size(cost['peak_copy_bytes'])} copied at once "
                f"(parameters + state: {_size(cost['params_state_bytes'])})"
            )
        return "\n".join(lines)


def _factor(value: float | None) -> str:
    # 7 digits: a float32 step is exact to about 1e-7, more digits would print rounding noise
    return "-" if value is None else f"{value:.7g}"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@dataclass
class _Target:
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
    fresh: bool = True  # no optimizer state yet: nothing but a decay can move it with zero gradients
    rows: Rows | None = None


def probe(
    optimizer: torch.optim.Optimizer,
    *,
    model: nn.Module | None = None,
    frozen: Iterable[str | torch.Tensor] = (),
    policy: Any = None,
    chunk_bytes: int | None = DEFAULT_CHUNK_BYTES,
) -> ProbeReport:
    """Measure, for every tensor ``optimizer`` holds, the decay its next step applies.

    Args:
        optimizer: any ``torch.optim.Optimizer`` (also wrappers such as ``decaykit.WeightDecay``);
            never stepped, its state, groups, hooks and schedulers are left as they are. DTensor
            parameters (FSDP2, tensor parallel) are measured on this rank's shard, with no collective.
        model: names the tensors, and reports trainable parameters no group holds.
        frozen: names (globs) or tensors meant to stay fixed, e.g. weights whose gradients you
            zero; ``requires_grad=False`` tensors count as frozen too. A frozen tensor that the
            decay moves is a disagreement.
        policy: what should decay, to catch a no-decay group overwritten back to decay: a
            decaykit policy name (``"decaykit"``, ``"timm"``, ...) or a ``decaykit.Policy`` (both
            need ``model``), a ``decaykit.Plan``, or a mapping ``name or glob -> weight decay (or bool)``.
        chunk_bytes: step at most this many bytes of parameters + state at a time (None: all).
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise DecayError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if model is not None and not isinstance(model, nn.Module):
        raise DecayError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if chunk_bytes is not None and (not isinstance(chunk_bytes, int) or chunk_bytes <= 0):
        raise DecayError(f"chunk_bytes must be a positive int or None, got {chunk_bytes!r}")
    meta = [i for i, g in enumerate(optimizer.param_groups) if any(p.is_meta for p in g["params"])]
    if meta:
        raise DecayError(f"param groups {meta} hold meta tensors, which have no values to measure; "
                         "probe the optimizer of a materialised model")
    t0 = time.perf_counter()
    expects = expectations(optimizer)
    targets = _targets(optimizer, model, expects)
    _mark_frozen(targets, frozen)
    _mark_intent(targets, policy, model)
    twin = Twin(optimizer)
    chunks = _chunks(targets, optimizer, chunk_bytes)
    steps, peak = 0, 0
    for chunk in chunks:
        s, b = _measure_chunk(twin, chunk, optimizer)
        steps, peak = steps + s, max(peak, b)
    decays_somewhere = any(t.expect.kind != "none" for t in targets)
    entries = [e for t in targets for e in _entries(t, decays_somewhere)]
    entries += _missing(optimizer, model)
    notes = _notes(optimizer, targets, expects, len(chunks))
    total = sum(_bytes(t.param, optimizer) for t in targets)
    cost = {"seconds": time.perf_counter() - t0, "twin_steps": steps, "chunks": len(chunks),
            "peak_copy_bytes": peak, "params_state_bytes": total}
    return ProbeReport(type(optimizer).__name__, entries, notes, cost)


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


def _targets(optimizer: torch.optim.Optimizer, model: nn.Module | None, expects: list[Expectation]) -> list[_Target]:
    names: dict[int, str] = {}
    if model is not None:
        for n, p in model.named_parameters():
            names.setdefault(id(p), canonical_name(n))
    targets = []
    for i, group in enumerate(optimizer.param_groups):
        params = group["params"]
        given = group.get("param_names")
        given = given if isinstance(given, (list, tuple)) and len(given) == len(params) else None
        for j, p in enumerate(params):
            name = canonical_name(str(given[j])) if given else names.get(id(p), f"group{i}.param{j}")
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
            fresh = not optimizer.state.get(p)
            targets.append(_Target(p, name, i, expects[i], total, members, sharded, start=start, fresh=fresh))
    return targets


def _mark_frozen(targets: list[_Target], frozen: Iterable[str | torch.Tensor]) -> None:
    if isinstance(frozen, (str, torch.Tensor)):
        frozen = [frozen]
    patterns = [f for f in frozen if isinstance(f, str)]
    tensors = {id(f) for f in frozen if isinstance(f, torch.Tensor)}
    for t in targets:
        if not t.param.requires_grad:
            t.frozen, t.latent = "requires_grad=False", t.param.grad is None
        elif id(t.param) in tensors or any(fnmatch.fnmatchcase(t.name, pat) for pat in patterns):
            t.frozen = "listed as frozen"


def _mark_intent(targets: list[_Target], policy: Any, model: nn.Module | None) -> None:
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


def _bytes(p: torch.Tensor, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of ``p`` and its state that a twin copies: this rank's shards of DTensors."""
    state = optimizer.state.get(p, {})
    tensors = [p, *(v for v in state.values() if isinstance(v, torch.Tensor))]
    return sum(local_shard(t).numel() * t.element_size() for t in tensors)


def _chunks(targets: list[_Target], optimizer: torch.optim.Optimizer, limit: int | None) -> list[list[_Target]]:
    targets = [t for t in targets if t.members]  # an empty shard has nothing to step
    if limit is None:
        return [targets] if targets else []
    chunks: list[list[_Target]] = []
    size = 0
    for t in targets:
        b = _bytes(t.param, optimizer)
        if not chunks or size + b > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(t)
        size += b
    return chunks


def _measure_chunk(twin: Twin, chunk: list[_Target], optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """Step the twins for one chunk; return (twin steps, bytes held at the peak)."""
    params = [t.param for t in chunk]
    start = {id(t.param): t.start for t in chunk if t.start is not None}
    p_bytes = sum(local_shard(p).numel() * p.element_size() for p in params)
    run_bytes = sum(_bytes(p, optimizer) for p in params) + p_bytes  # copies + zero gradients
    twin.trim(params)
    base = twin.step(params, start=start, decay_off=True)
    decayed = twin.step(params, start=start)
    for t in chunk:
        t.rows = measure_rows(_start(t), decayed[id(t.param)], base[id(t.param)], t.members,
                              _candidates(t.expect))
    need = [t for t in chunk if t.rows is not None and t.rows.needs_coupled_twin(t.expect.kind)]
    steps, peak = 2, run_bytes + p_bytes
    if need:
        lam = {id(t.param): _coupled_rate(t.expect) for t in need}
        maximize = {id(t.param): t.expect.maximize for t in need}

        def grad(p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            # the gradient that coupled L2 adds: λθ (torch negates the gradient first under maximize)
            rate = lam[id(p)]
            if isinstance(rate, torch.Tensor):
                rate = rate.to(c.device, c.dtype).reshape(-1, *([1] * (c.dim() - 1)))
            g = c.detach() * rate
            return -g if maximize[id(p)] else g

        coupled = twin.step([t.param for t in need], grad=grad, start=start, decay_off=True)
        for t in need:
            assert t.rows is not None
            t.rows.add_coupled(_start(t), decayed[id(t.param)], base[id(t.param)], coupled[id(t.param)])
        twin.recycle(coupled.values())
        steps, peak = 3, max(peak, run_bytes + 2 * p_bytes)
    twin.recycle([*base.values(), *decayed.values()])
    return steps, peak


def _start(t: _Target) -> torch.Tensor:
    return local_shard(t.param) if t.start is None else t.start


def _coupled_rate(e: Expectation) -> float | torch.Tensor:
    return e.rate if e.kind == "coupled" else e.weight_decay


def _candidates(e: Expectation) -> dict[str, float | torch.Tensor]:
    """Decoupled rates to test the measurement against: the expected one, or for an unknown
    optimizer both readings of its ``weight_decay`` (times the LR as torch, or alone)."""
    if e.kind in ("decoupled", "cautious"):
        return {e.kind: e.rate}
    if e.kind == "unknown":
        out = {"lr-independent": e.weight_decay}
        return out if math.isnan(e.lr) else {"decoupled": e.lr * e.weight_decay, **out}
    return {}


def _entries(t: _Target, decays_somewhere: bool) -> list[ProbeEntry]:
    out = []
    shape = tuple(t.param.shape[1:] if t.total > 1 else t.param.shape)  # global, also for a shard
    for k in range(t.total):
        name = t.name if t.total == 1 else f"{t.name}[{k}]"
        wd = t.expect.weight_decay
        wd_k = float(wd[k]) if isinstance(wd, torch.Tensor) else float(wd)
        if not t.members:
            out.append(_empty_entry(t, k, name, shape, wd_k))
            continue
        assert t.rows is not None
        r = t.rows.row(k, t.expect)
        notes = [r.note] if r.note else []
        agrees, expected, expected_kind = r.settings_ok, r.expected, r.expected_kind
        moved = r.kind != "none"
        shrink = f"shrinks by {_factor(r.measured)} per step ({r.kind})" if moved else ""
        fix = "give it weight_decay=0 or remove it from the optimizer"
        hidden = t.rows.base_shrink(k) if t.fresh else None
        if hidden is not None:
            # no state, no gradient, weight_decay=0, and still it moves: a decay under another setting
            notes.append(f"with weight_decay=0, zero gradients and no state it still shrinks by {_factor(hidden)} "
                         "per step: a decay under another setting (ASGD's lambd?) that the probe cannot switch "
                         "off, so it is not in the measured factor")
            also = f"shrinks by {_factor(hidden)} per step even with weight_decay=0"
            moved, shrink, fix = True, f"{shrink} and {also}" if moved else also, "remove it from the optimizer"
        if t.frozen:
            expected, expected_kind = 1.0, "none"
            if moved and t.latent:
                notes.append(f"frozen (requires_grad=False) and skipped while its .grad is None, but it {shrink} "
                             "as soon as it has a zero .grad (zero_grad(set_to_none=False)); remove it from "
                             "the optimizer")
            elif moved:
                agrees = False
                notes.append(f"frozen ({t.frozen}) but the decay still moves it: it {shrink}; {fix}")
        elif t.intent is not None:
            decay, why = t.intent
            if not decay:
                expected, expected_kind = 1.0, "none"
                if moved:
                    agrees = False
                    notes.append(f"the policy says no decay ({why}) but it {shrink}: group {t.group} has "
                                 f"weight_decay={rate_text(wd)} (a no-decay group overwritten?)")
            elif not moved and decays_somewhere:
                agrees = False
                notes.append(f"the policy says decay ({why}) but nothing shrinks it while other groups decay "
                             "(groups swapped, or a no-decay list matching too much?)")
        if t.start is not None:
            notes.append(_PATTERN_NOTE)
        out.append(ProbeEntry(name, shape, r.kind, r.measured, expected, agrees, "; ".join(notes), expected_kind,
                              t.group, t.expect.lr, wd_k, t.param.numel() // t.total, bool(t.frozen)))
    return out


def _empty_entry(t: _Target, k: int, name: str, shape: tuple[int, ...], wd_k: float) -> ProbeEntry:
    """A sharded tensor of which this rank holds no element: what the settings say, nothing measured."""
    e = t.expect
    if t.frozen or (t.intent is not None and not t.intent[0]) or e.kind == "none":
        expected, kind = 1.0, "none"
    else:
        rate = e.rate[k] if isinstance(e.rate, torch.Tensor) else e.rate
        expected, kind = (1 - float(rate)) if e.kind == "decoupled" else None, e.kind
    return ProbeEntry(name, shape, "empty", None, expected, True, _EMPTY_NOTE, kind, t.group, e.lr, wd_k,
                      t.param.numel() // t.total, bool(t.frozen))


def _missing(optimizer: torch.optim.Optimizer, model: nn.Module | None) -> list[ProbeEntry]:
    if model is None:
        return []
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    stale = not any(is_sharded(p) for g in optimizer.param_groups for p in g["params"])
    out = []
    for n, p in model.named_parameters():
        if p.requires_grad and id(p) not in held:
            note = ("trainable (requires_grad=True) but in no param group: it never updates or decays; add it to "
                    "the optimizer or set requires_grad=False")
            if stale and is_sharded(p):  # fully_shard registers new DTensor parameters in place of the old
                note += "; the optimizer holds no DTensor at all: was it built before fully_shard?"
            out.append(ProbeEntry(canonical_name(n), tuple(p.shape), "missing", None, None, False, note,
                                  numel=p.numel()))
    return out


def _notes(optimizer: torch.optim.Optimizer, targets: list[_Target], expects: list[Expectation], chunks: int) -> list[str]:
    notes = []
    with_state = sum(1 for t in targets if optimizer.state.get(t.param))
    if with_state:
        notes.append(f"state already built for {with_state} tensors (momentum, moments): the decay is isolated by "
                     "differencing two copies stepped from that same state, with and without weight_decay")
    lrs = sorted({e.lr for e in expects if not math.isnan(e.lr)})
    if lrs:
        notes.append("lr as the groups hold it now (after any LR scheduler): " + ", ".join(f"{v:g}" for v in lrs))
    adaptive = [t for t in targets if t.rows is not None and t.rows.any_kind("coupled") and t.rows.non_proportional()]
    if adaptive:
        notes.append(f"{len(adaptive)} tensors get coupled L2 through an adaptive denominator ({type(optimizer).__name__} "
                     "weight_decay): the shrink is not θ·(1 − lr·λ) and depends on the gradient statistics; "
                     "use AdamW (or decaykit.WeightDecay) for decoupled decay")
    momentum = [i for i, g in enumerate(optimizer.param_groups)
                if expects[i].kind == "coupled" and float(g.get("momentum", 0) or 0) > 0]
    if momentum:
        notes.append(f"groups {momentum}: coupled decay also enters the momentum buffer and keeps acting on later "
                     "steps (about lr·λ/(1 − momentum) in total); this measures the next step only")
    sharded = [t for t in targets if t.sharded]
    if sharded:
        empty = sum(1 for t in sharded if not t.members)
        notes.append(f"{len(sharded)} sharded tensors (DTensor: FSDP2, tensor parallel) measured on this rank's shard "
                     f"({_rank_text()}); names and shapes are global. Decay is elementwise, so a shard shows the "
                     "tensor's factor (an optimizer whose step uses whole-tensor norms would see the shard's here)"
                     + (f"; {empty} hold no elements on this rank (uneven sharding): 'empty', measured by the ranks "
                        "that hold them" if empty else ""))
    if chunks > 1:
        notes.append(f"stepped in {chunks} chunks to bound memory; an optimizer that couples tensors across "
                     "chunks (global norms) needs chunk_bytes=None")
    return notes


def _rank_text() -> str:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return f"rank {dist.get_rank()} of {dist.get_world_size()}"
    return "this process"
