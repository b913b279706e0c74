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

A zero gradient is orthogonal to θ, a branch of its own in some optimizers (Heo et al. 2021 scale the decay
by ``wd_ratio`` for scale-invariant weights, where cos(g, θ) ≈ 0). So for an optimizer whose convention the
registry does not fix ("unknown"), the pair θ_λ, θ_0 is stepped again with a nonzero gradient (the tensor's
``.grad``, else a small seeded one), and a decay that differs between the two is reported, with both rates,
as depending on the gradient rather than agreeing.

A decay that ``weight_decay=0`` leaves on (ASGD's ``lambd``, a ``weight_decay_1d``) moves θ_0 itself
where nothing else can: before the first step, or once there is state on a copy with that state reset
(momentum then moves nothing; for an optimizer decaykit has no facts on, a torch class's decays being
known). The group setting behind it is found by measurement: the first numeric setting named like a
decay (or the registry's ``other_decay``) with which at 0 as well nothing moves.
A reset copy that moves with no such setting to explain it (parameters rebuilt from state) is reported
as not checked.

The probe measures the next step only: coupled decay that enters a momentum buffer keeps
acting on later steps. Cost: two or three optimizer steps on copies (two more for an unknown
optimizer, one more where it has state too). Memory: parameters are stepped in chunks of at most
``chunk_bytes`` of parameters + state (a tensor larger than that is a chunk of its own); at the
peak a probe holds one chunk's twin (parameters P, state S, zero gradients P) and two stepped
copies of its parameters, 3P + S (4P + S when the coupled twin or the nonzero-gradient twins run).
On a 103M-parameter AdamW (1.15 GiB of parameters + state) that is 0.56x the parameters + state,
less than one extra copy (``benchmarks/bench_probe.py``); ``chunk_bytes=None`` needs 1.6-1.9x.

Sharded parameters (``DTensor``: FSDP2's ``fully_shard``, tensor parallel) are measured on the
shard this rank holds: decay is elementwise, so θ(1 − ηλ) holds shard by shard, and the twins
step plain copies of the shards with no collective (each rank may probe alone). Entries keep
the global name, shape and size; a tensor of which this rank holds nothing (an (11, 6) table
over 2 ranks is 6 + 5 rows, a (1,) tensor is 1 + 0) is reported as ``empty``. Stacked models
with per-member rates must not be sharded on the member dimension.
"""

import math
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from decaykit import optimizers
from decaykit._dtensor import is_sharded, local_shard
from decaykit.errors import DecayError
from decaykit.policy.names import namer
from decaykit.probe.estimator import measure_rows
from decaykit.probe.expectations import Expectation, expectations, rate_text, warmup_lrs
from decaykit.probe.report import EMPTY_NOTE, PATTERN_NOTE, ProbeEntry, ProbeReport, factor_text
from decaykit.probe.targets import Target, byte_size, chunked, find_targets, mark_frozen, mark_intent
from decaykit.probe.twin import Twin, is_number

__all__ = ["DEFAULT_CHUNK_BYTES", "ProbeEntry", "ProbeReport", "probe"]

DEFAULT_CHUNK_BYTES = 256 * 2**20


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
            never stepped, its state, groups, hooks and schedulers are left as they are. A framework's
            wrapper (the HF Trainer's ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``) is
            measured as the optimizer inside it (:func:`decaykit.optimizers.unwrap`), and torch's
            ``ZeroRedundancyOptimizer`` as the one that steps this rank's share of the tensors. DTensor
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
    wrapper = optimizers.wrapper_name(optimizer)
    optimizer = optimizers.unwrap(optimizer)  # its twin steps the optimizer inside, not the framework's wrapper
    shard = optimizers.sharding_wrapper(optimizer)
    if shard is not None:  # ZeroRedundancyOptimizer: the optimizer that steps this rank's tensors
        wrapper, optimizer = f"{type(optimizer).__name__}, on this rank's shard", shard
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise DecayError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if model is not None and not isinstance(model, nn.Module):
        raise DecayError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if chunk_bytes is not None and (not isinstance(chunk_bytes, int) or chunk_bytes <= 0):
        raise DecayError(f"chunk_bytes must be a positive int or None, got {chunk_bytes!r}")
    lazy = [i for i, g in enumerate(optimizer.param_groups)
            if any(isinstance(p, nn.parameter.UninitializedParameter) for p in g["params"])]  # fmt: skip
    if lazy:
        raise DecayError(f"param groups {lazy} hold parameters of lazy modules (nn.LazyLinear, ...), which have no "
                         "shape or values until the model's first forward pass; run one, model(x), then probe")
    meta = [i for i, g in enumerate(optimizer.param_groups) if any(p.is_meta for p in g["params"])]
    if meta:
        raise DecayError(f"param groups {meta} hold meta tensors, which have no values to measure; "
                         "probe the optimizer of a materialised model")
    t0 = time.perf_counter()
    lrs = warmup_lrs(optimizer)  # groups at lr 0 in a warm-up: measured at their scheduler's base LR
    expects = expectations(optimizer, lrs)
    _check_representable(optimizer)
    targets = find_targets(optimizer, model, expects)
    mark_frozen(targets, frozen, model)
    mark_intent(targets, policy, model)
    twin = Twin(optimizer, lrs)
    chunks = chunked(targets, optimizer, chunk_bytes)
    steps, peak = 0, 0
    for chunk in chunks:
        s, b = _measure_chunk(twin, chunk, optimizer)
        steps, peak = steps + s, max(peak, b)
    decays_somewhere = any(t.expect.kind != "none" for t in targets)
    groups = _mixed_groups(optimizer, targets)
    facts = optimizers.info(optimizer)
    known = facts.other_decay if facts is not None else ""
    other = f"{facts.name}'s {known}" if facts is not None and known else "another setting"
    entries = [e for t in targets for e in _entries(t, decays_somewhere, groups, other, known)]
    entries += _missing(optimizer, model)
    notes = _notes(optimizer, targets, expects, len(chunks), warmup=lrs)
    total = sum(byte_size(t.param, optimizer) for t in targets)
    cost = {"seconds": time.perf_counter() - t0, "twin_steps": steps, "chunks": len(chunks),
            "peak_copy_bytes": peak, "params_state_bytes": total}
    name = type(optimizer).__name__ + (f" (inside {wrapper})" if wrapper is not None else "")
    return ProbeReport(name, entries, notes, cost)


def _check_representable(optimizer: torch.optim.Optimizer) -> None:
    """torch cannot step at all with an lr or weight_decay beyond its parameters' dtype: say so first."""
    for i, group in enumerate(optimizer.param_groups):
        dtypes = {p.dtype for p in group["params"] if p.is_floating_point()}
        if not dtypes:
            continue
        biggest = min(torch.finfo(d).max for d in dtypes)
        for key in ("lr", "weight_decay"):
            value = group.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > biggest:
                raise DecayError(f"param_groups[{i}]['{key}'] = {value:g} is beyond the largest "
                                 f"{'/'.join(str(d).removeprefix('torch.') for d in dtypes)} ({biggest:.3g}) that "
                                 f"its parameters hold: torch cannot step it; lower {key}")


def _measure_chunk(twin: Twin, chunk: list[Target], optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """Step the twins for one chunk; return (twin steps, bytes held at the peak)."""
    params = [t.param for t in chunk]
    start = {id(t.param): t.start for t in chunk if t.start is not None}
    p_bytes = sum(local_shard(p).numel() * p.element_size() for p in params)
    run_bytes = sum(byte_size(p, optimizer) for p in params) + p_bytes  # copies + zero gradients
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
    again = [t for t in chunk if t.rows is not None and t.rows.needs_gradient_twins(t.expect.kind)]
    if again:
        _measure_with_gradient(twin, again, start)
        steps, peak = steps + 2, max(peak, run_bytes + 3 * p_bytes)  # the gradients are kept for both twins
    stateful = [t for t in chunk if not t.fresh] if _may_hide_a_decay(optimizer) else []
    if stateful:
        _measure_reset(twin, stateful, start)
        steps += 1
    moved = [t for t in chunk if any(_moved(t, k) is not None for k in range(t.members))]
    if moved:
        steps += _find_setting(twin, moved, start, optimizer)
    for t in moved:
        if not t.fresh and not t.other_setting:
            t.unchecked = ("a copy with its state reset moves with weight_decay=0 and zero gradients, and no group "
                           "setting named like a decay stops it (parameters rebuilt from the state?), so that move "
                           "tells nothing about a decay")
    return steps, peak


def _may_hide_a_decay(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` may decay under a setting other than weight_decay that only a copy with its state reset
    shows: not a torch class (its decays are weight_decay and the registry's ``other_decay``, which has no
    momentum and is read at any step); for decaykit's engine, whether the optimizer it drives may."""
    if callable(getattr(optimizer, "expected_decay", None)) and isinstance(getattr(optimizer, "optimizer", None),
                                                                            torch.optim.Optimizer):
        return _may_hide_a_decay(optimizer.optimizer)  # type: ignore[attr-defined]
    facts = optimizers.info(optimizer)
    return facts is None or facts.torch_class() is None


def _measure_reset(twin: Twin, targets: list[Target], start: dict[int, torch.Tensor]) -> None:
    """Step tensors that have state once more at weight_decay=0 with zero gradients, from no state: momentum
    cannot move them then, so whatever does is a decay that weight_decay does not control."""
    try:
        out = twin.step([t.param for t in targets], start=start, decay_off=True, reset=True)
    except DecayError as refused:
        for t in targets:
            t.unchecked = f"a copy with its state reset could not step ({refused})"
        return
    for t in targets:
        t.reset = measure_rows(_start(t), out[id(t.param)], out[id(t.param)], t.members, {})
    twin.recycle(out.values())


def _moved(t: Target, k: int) -> float | None:
    """The factor by which row ``k`` of ``t`` shrinks with weight_decay=0 and no gradient or momentum to move it."""
    if t.fresh:  # no state (or no momentum): the base twin itself
        return None if t.rows is None else t.rows.base_shrink(k)
    return None if t.reset is None else t.reset.base_shrink(k)


def _hidden(t: Target, k: int) -> float | None:
    """:func:`_moved`, where it is a decay: on a copy with its state reset, only once a setting is found that
    stops it (an optimizer that rebuilds its parameters from state moves them too when that state is gone)."""
    return _moved(t, k) if t.fresh or t.other_setting else None


def _find_setting(twin: Twin, targets: list[Target], start: dict[int, torch.Tensor],
                  optimizer: torch.optim.Optimizer) -> int:
    """Name the group setting behind a decay weight_decay=0 leaves on, by measurement: the first numeric setting,
    the registry's ``other_decay`` or one named like a decay, with which at 0 too nothing moves ``targets``.
    Returns the twin steps taken."""
    facts = optimizers.info(optimizer)
    known = facts.other_decay if facts is not None else ""
    keys = dict.fromkeys(key for t in targets for key, value in optimizer.param_groups[t.group].items()
                         if key != "weight_decay" and is_number(value) and value != 0
                         and (key == known or "decay" in key.lower()))
    steps = 0
    for key in keys:
        left = [t for t in targets if not t.other_setting and key in optimizer.param_groups[t.group]]
        if not left:
            continue
        steps += 1
        try:
            out = twin.step([t.param for t in left], start=start, decay_off=True, also_off=(key,), reset=True)
        except DecayError:  # the optimizer refuses the setting at 0: not the one to name
            continue
        for t in left:
            rows = measure_rows(_start(t), out[id(t.param)], out[id(t.param)], t.members, {})
            if all(rows.base_shrink(k) is None for k in range(t.members)):
                t.other_setting = key
        twin.recycle(out.values())
    return steps


def _measure_with_gradient(twin: Twin, targets: list[Target], start: dict[int, torch.Tensor]) -> None:
    """Step the pair of twins (weight_decay as set and 0) again with a nonzero gradient (:func:`_nonzero_grad`):
    a zero gradient is orthogonal to θ, a branch of its own in optimizers that change their decay for
    scale-invariant weights, and real gradients are rarely that."""
    grads = {id(t.param): _nonzero_grad(t) for t in targets}

    def grad(p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return grads[id(p)][0].clone()  # a copy each: some optimizers change the gradient in place

    params = [t.param for t in targets]
    base = twin.step(params, grad=grad, start=start, decay_off=True)
    decayed = twin.step(params, grad=grad, start=start)
    for t in targets:
        assert t.rows is not None
        t.rows.gradient = measure_rows(_start(t), decayed[id(t.param)], base[id(t.param)], t.members, {})
        t.rows.gradient_source = grads[id(t.param)][1]
    twin.recycle([*base.values(), *decayed.values()])


def _nonzero_grad(t: Target) -> tuple[torch.Tensor, str]:
    """(gradient, what it is): the gradient the tensor holds (``.grad``, from the last backward) where it is a
    finite nonzero tensor of its shape; else a small seeded one, g = 10⁻³·rms(θ)·(n + θ/rms(θ)) with n standard
    normal, so cos(g, θ) ≈ 0.7, and small so that an adaptive optimizer's moments barely change."""
    theta = _start(t).detach()
    held = t.param.grad
    if isinstance(held, torch.Tensor) and not held.is_sparse:
        held = local_shard(held).detach()
        if held.shape == theta.shape and bool(torch.isfinite(held).all()) and bool(held.any()):
            return held, "the gradient it holds (.grad)"
    rms = float(torch.linalg.vector_norm(theta)) / max(theta.numel(), 1) ** 0.5
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(theta.shape, generator=generator, dtype=theta.dtype).to(theta.device)
    if not (rms > 0 and math.isfinite(rms)):
        return noise, "a random gradient"
    return (noise * rms + theta) * 1e-3, "a random gradient"


def _start(t: Target) -> torch.Tensor:
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


def _entries(t: Target, decays_somewhere: bool, groups: dict[int, str], other_setting: str,
             known: str = "") -> list[ProbeEntry]:
    """``t``'s entries, one per stacked member; ``other_setting`` names a decay weight_decay=0 leaves on, the
    registry's setting ``known`` of the optimizer (ASGD's lambd), where a measurement does not name another."""
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
        agrees, expected, expected_kind = r.settings_ok and not r.overshoots, r.expected, r.expected_kind
        moved = r.kind != "none"
        shrink = f"shrinks by {factor_text(r.measured)} per step ({r.kind})" if moved else ""
        fix = "give it weight_decay=0 or remove it from the optimizer"
        hidden = _hidden(t, k)
        if hidden is not None:
            # no state (or a copy with it reset), no gradient, weight_decay=0, and still it moves: another decay
            how = "" if t.fresh else (" (on a copy with its state reset, so no momentum moves it; a decay on a "
                                      "schedule of its own is read at its first step)")
            setting = other_setting if t.other_setting == known else f"its group's {t.other_setting!r}"
            under = (f"{setting} (with that at 0 as well, nothing moves it), which "
                     "weight_decay=0 does not switch off" if t.other_setting else
                     f"{other_setting}, which the probe cannot switch off")
            notes.append(f"with weight_decay=0 and zero gradients it still shrinks by {factor_text(hidden)} per step"
                         f"{how}: a decay under {under}, so it is not in the measured factor")
            also = f"shrinks by {factor_text(hidden)} per step even with weight_decay=0"
            moved, shrink, fix = True, f"{shrink} and {also}" if moved else also, "remove it from the optimizer"
        if t.frozen:
            expected, expected_kind = 1.0, "none"
            if moved:
                agrees = False
                notes.append(_frozen_note(t, shrink, fix))
        elif t.intent is not None:
            decay, why = t.intent
            if not decay:
                expected, expected_kind = 1.0, "none"
                if moved:
                    agrees = False
                    notes.append(f"the policy says no decay ({why}) but it {shrink}: {groups.get(t.group, '')}"
                                 if t.group in groups else
                                 f"the policy says no decay ({why}) but it {shrink}: group {t.group} has "
                                 f"weight_decay={rate_text(wd)} (a no-decay group overwritten?)")
            elif not moved and decays_somewhere and t.expect.lr != 0:
                agrees = False
                notes.append(f"the policy says decay ({why}) but nothing shrinks it while other groups decay "
                             "(groups swapped, or a no-decay list matching too much?)")
        if t.also_in:
            agrees = False
            notes.insert(0, _duplicate_note(t, k))
        if t.aliases:
            agrees = False
            notes.insert(0, f"shares its memory with {', '.join(t.aliases)} (tied through .data, or a view made a "
                            "Parameter): torch steps each on its own, so every step applies the update and decay of each "
                            "to the shared values (measured here on copies apart); tie the parameters themselves, "
                            "head.weight = embedding.weight, so the optimizer holds one tensor")
        if t.start is not None:
            notes.append(PATTERN_NOTE)
        out.append(ProbeEntry(name, shape, r.kind, r.measured, expected, agrees, "; ".join(notes), expected_kind,
                              t.group, t.expect.lr, wd_k, t.param.numel() // t.total, bool(t.frozen), hidden,
                              t.latent, r.settings_ok, t.other_setting if hidden is not None else "",
                              t.rows.proportional(k)))
    return out


def _duplicate_note(t: Target, k: int) -> str:
    groups = sorted({t.group, *t.also_in})
    where = (f"listed {len(t.also_in) + 1} times in param group {t.group}" if len(groups) == 1 else
             "in param groups " + ", ".join(map(str, groups[:-1])) + f" and {groups[-1]}")
    wd = t.expect.weight_decay
    return (f"{where}: torch steps it once per listing, so every step applies the update and decay of each (measured: "
            f"all of them; expected: group {t.group}'s, weight_decay="
            f"{float(wd[k]) if isinstance(wd, torch.Tensor) else float(wd):g}); keep each tensor in exactly one group "
            "(torch's add_param_group refuses a repeat; decaykit.param_groups never makes one)")


def _frozen_note(t: Target, shrink: str, fix: str) -> str:
    if t.latent:  # the wording of audit's frozen-in-optimizer finding, which calls the same thing an error
        return (f"frozen (requires_grad=False) but in the optimizer with weight_decay > 0: skipped while its .grad is "
                f"None, it {shrink} as soon as it has a zero .grad (one left from before it was frozen, which "
                "zero_grad(set_to_none=False) zeroes instead of removing; diffusers #1009); "
                "leave frozen parameters out of the optimizer (decaykit.param_groups does) or set their weight_decay "
                "to 0")
    return f"frozen ({t.frozen}) but the decay still moves it: it {shrink}; {fix}"


def _mixed_groups(optimizer: torch.optim.Optimizer, targets: list[Target]) -> dict[int, str]:
    """Groups holding tensors the policy decays and tensors it excludes, with why that happened."""
    intents: dict[int, set[bool]] = {}
    for t in targets:
        if t.intent is not None and not t.frozen:
            intents.setdefault(t.group, set()).add(t.intent[0])
    out = {}
    for g, seen in intents.items():
        if len(seen) < 2:
            continue
        wd = rate_text(optimizer.param_groups[g].get("weight_decay", 0.0))
        if len(optimizer.param_groups) == 1:
            out[g] = (f"the optimizer has a single param group (model.parameters()?), so every tensor decays with "
                      f"weight_decay={wd}, norms and biases too; build the groups with "
                      "decaykit.param_groups(model, weight_decay)")
        else:
            out[g] = (f"group {g} holds tensors the policy decays and tensors it excludes, so its weight_decay={wd} "
                      "reaches both; move the excluded ones to a weight_decay=0 group (decaykit.param_groups)")
    return out


def _empty_entry(t: Target, k: int, name: str, shape: tuple[int, ...], wd_k: float) -> ProbeEntry:
    """A sharded tensor of which this rank holds no element: what the settings say, nothing measured."""
    e = t.expect
    if t.frozen or (t.intent is not None and not t.intent[0]) or e.kind == "none":
        expected, kind = 1.0, "none"
    else:
        rate = e.rate[k] if isinstance(e.rate, torch.Tensor) else e.rate
        expected, kind = (1 - float(rate)) if e.kind == "decoupled" else None, e.kind
    return ProbeEntry(name, shape, "empty", None, expected, True, EMPTY_NOTE, kind, t.group, e.lr, wd_k,
                      t.param.numel() // t.total, bool(t.frozen), latent=t.latent)


def _missing(optimizer: torch.optim.Optimizer, model: nn.Module | None) -> list[ProbeEntry]:
    if model is None:
        return []
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    stale = not any(is_sharded(p) for g in optimizer.param_groups for p in g["params"])
    out = []
    canonical = namer(model)
    for n, p in model.named_parameters():
        if p.requires_grad and id(p) not in held:
            note = ("trainable (requires_grad=True) but in no param group: it never updates or decays; add it to "
                    "the optimizer or set requires_grad=False")
            if stale and is_sharded(p):  # fully_shard registers new DTensor parameters in place of the old
                note += "; the optimizer holds no DTensor at all: was it built before fully_shard?"
            out.append(ProbeEntry(canonical(n), tuple(p.shape), "missing", None, None, False, note,
                                  numel=p.numel(), configured=False))
    return out


def _notes(optimizer: torch.optim.Optimizer, targets: list[Target], expects: list[Expectation], chunks: int,
           warmup: dict[int, float]) -> list[str]:
    notes = []
    with_state = sum(1 for t in targets if optimizer.state.get(t.param))
    if with_state:
        notes.append(f"state already built for {with_state} tensors (momentum, moments): the decay is isolated by "
                     "differencing two copies stepped from that same state, with and without weight_decay")
    unchecked = [t for t in targets if t.unchecked]
    if unchecked:
        notes.append(f"{len(unchecked)} tensors with state were not checked for a decay that weight_decay=0 leaves on "
                     f"(under another group setting): {unchecked[0].unchecked}; probe a fresh optimizer with the "
                     "same settings (before its first step) to check")
    lrs = sorted({0.0 if i in warmup else e.lr for i, e in enumerate(expects) if not math.isnan(e.lr)})
    if lrs:
        notes.append("lr as the groups hold it now (after any LR scheduler): " + ", ".join(f"{v:g}" for v in lrs))
    if warmup:
        at = ", ".join(f"{i}: {v:g}" for i, v in warmup.items())
        notes.append(f"groups {sorted(warmup)} have lr = 0 now (a warm-up): measured at their scheduler's base LR "
                     f"(initial_lr, or OneCycleLR's max_lr; group: lr {at}), as the steps after the warm-up decay")
    idle = [i for i, e in enumerate(expects) if e.lr == 0]
    if idle:
        notes.append(f"groups {idle} have lr = 0: the next step moves nothing, so there is no decay to measure there "
                     "(a warm-up that starts at 0?); probe again once the LR is above 0")
    adaptive = [t for t in targets if t.rows is not None and t.rows.any_kind("coupled") and t.rows.non_proportional()]
    if adaptive:
        notes.append(f"{len(adaptive)} tensors get coupled L2 through an adaptive denominator ({type(optimizer).__name__} "
                     "weight_decay): the shrink is not θ·(1 − lr·λ) and depends on the gradient statistics; "
                     "use AdamW (or decaykit.WeightDecay) for decoupled decay")
    beta = {i: float(g.get("momentum", 0) or 0) for i, g in enumerate(optimizer.param_groups)}
    momentum = [i for i, e in enumerate(expects) if e.kind == "coupled" and 0 < beta[i] < 1]
    if momentum:
        notes.append(f"groups {momentum}: coupled decay also enters the momentum buffer and keeps acting on later "
                     "steps (about lr·λ/(1 − momentum) in total); this measures the next step only")
    runaway = [i for i, b in beta.items() if b >= 1]
    if runaway:  # torch.optim checks only momentum >= 0
        notes.append(f"groups {runaway} have momentum >= 1 ({', '.join(f'{beta[i]:g}' for i in runaway)}): the "
                     "momentum buffer grows without bound instead of averaging, so later steps (and the decay in "
                     "them) grow too; use a momentum in [0, 1)")
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
