"""The plan: for every parameter of a model, whether it decays, by how much, and why.

>>> from torch import nn
>>> p = plan(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8)), 0.05)
>>> [(d.name, d.weight_decay, d.reason) for d in p]
[('0.weight', 0.05, 'weight of Linear'), ('0.bias', 0.0, 'bias of Linear'), ('1.weight', 0.0, 'norm:LayerNorm'), ('1.bias', 0.0, 'norm:LayerNorm')]

Precedence, first hit wins, per name of a tensor: a frozen tensor (``requires_grad=False``), or one of
an averaged copy the model holds (an EMA's or SWA's, ``AveragedModel``, timm's ``ModelEmaV3``), is
left out; then ``rules`` in order; then ``exclude``; then the model's ``no_weight_decay()`` /
``no_weight_decay_keywords()`` hooks (on any submodule, names relative to it) and a tensor's
own ``_no_weight_decay = True`` attribute (mamba_ssm's convention) or ``_optim = {"weight_decay": 0.0}``
(the state-spaces repositories'); then the policy.
A tensor reachable under several names (tied embeddings) appears once, under its first name;
if its names get different decisions, the one from the strongest source wins (rule > exclude >
hook > policy), and between equals ``tied`` decides: ``"first"`` (the first name, as
``named_parameters`` dedupes), ``"decay"`` or ``"no_decay"``. Every such case is recorded in
``Plan.conflicts`` and reported by the audit.

With ``example_inputs`` the ``"decaykit"`` policy decides from how the forward pass uses each
tensor (:mod:`decaykit.policy.usage`), so tensors of one role get one decision whatever their
shape; where a hook still splits a role (one learned token exempt, another not), the split is
a :class:`RoleConflict` in ``Plan.conflicts``.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from decaykit._render import Cell, Report, format_table, html_lines, html_report, html_table
from decaykit._validate import check_number
from decaykit.errors import DecayError, DecayWarning
from decaykit.policy.collect import check_model, collect_params, lazy_names, refuse_lazy
from decaykit.policy.decide import Conflict, Decider, Decision, RoleConflict, role_conflicts
from decaykit.policy.groups import build_groups
from decaykit.policy.hooks import hook_patterns
from decaykit.policy.layers import layer_ids
from decaykit.policy.names import logical_name, unwrap_model
from decaykit.policy.options import OPTIONS, Policy, Tied
from decaykit.policy.roles import decided_by_shape
from decaykit.policy.rules import Rule
from decaykit.policy.tracing import run_trace, trace_on_own_input
from decaykit.policy.usage import Trace

__all__ = ["Conflict", "Decision", "Plan", "RoleConflict", "check_plan_options", "collect_params", "param_groups",
           "plan"]


def _piece_prefixes(attribute: str) -> tuple[str, ...]:
    """How the names of the pieces of a weight ``attribute`` (``conv.weight``) begin: torch's parametrizations
    (``conv.parametrizations.weight.original0``) and the older weight_norm (``conv.weight_g``)."""
    owner, _, leaf = attribute.rpartition(".")
    base = f"{owner}." if owner else ""
    return f"{base}parametrizations.{leaf}.original", f"{base}{leaf}_g", f"{base}{leaf}_v"


@dataclass
class Plan(Report):
    """Per-parameter decisions for one model, and the optimizer groups made from them.

    ``str(plan)`` is what ``decaykit inspect`` prints: every tensor with its decision and reason,
    then one row per group.
    """

    decisions: list[Decision]
    weight_decay: float
    policy: str
    conflicts: list[Conflict | RoleConflict] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # rules / exclude entries that changed nothing
    layer_decay: float | None = None
    note: str | None = None  # tensors that could only be decided by shape, and why they were not traced

    def __iter__(self) -> Iterator[Decision]:
        return iter(self.decisions)

    def __len__(self) -> int:
        return len(self.decisions)

    def __getitem__(self, name: str) -> Decision:
        for d in self.decisions:
            if d.name == name or name in d.aliases:
                return d
        for d in self.decisions:  # a parametrized tensor by the attribute it computes: "conv.weight"
            if name in (logical_name(n) for n in (d.name, *d.aliases)):
                return d
        pieces = [d.name for d in self.decisions if d.name.startswith(_piece_prefixes(name))]
        if pieces:  # weight_norm computes the attribute from two tensors: name one of them
            raise KeyError(f"{name} is computed from {len(pieces)} tensors, {', '.join(pieces)}: look each up by its name")
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
            "note": self.note,
        }

    def __str__(self) -> str:
        rows = [[d.name, str(tuple(d.shape)), d.numel, d.module_type,
                 "yes" if d.decay else ("frozen" if not d.trainable else "no"), d.weight_decay, round(d.lr_scale, 6),
                 d.reason] for d in self.decisions]
        table = format_table(["name", "shape", "numel", "module", "decay", "weight_decay", "lr_scale", "reason"],
                             rows, align="llrllrrl")
        return f"{table}\n\n{self.summary_text()}"

    def summary_text(self) -> str:
        """The per-group summary: how many tensors and parameters decay, with which λ and LR scale."""
        rows = [["frozen", "-", "-", r["tensors"], r["parameters"]] if r.get("frozen") else
                ["decay" if r["weight_decay"] > 0 else "no decay", r["weight_decay"], round(r["lr_scale"], 6),
                 r["tensors"], r["parameters"]] for r in self.summary()]
        total = sum(d.numel for d in self.decisions)
        decayed = sum(d.numel for d in self.trainable if d.decay)
        lines = [f"summary: policy {self.policy!r}, weight_decay {self.weight_decay:g}, "
                 f"{len(self.decisions)} tensors, {total:,} parameters",
                 format_table(["group", "weight_decay", "lr_scale", "tensors", "parameters"], rows, align="lrrrr"),
                 f"decayed: {decayed:,} of {total:,} parameters ({100 * decayed / max(total, 1):.1f}%)"]
        lines += self._tied_lines()
        lines += [f"conflict: {conflict}" for conflict in self.conflicts]
        lines += [f"changed nothing: {u}" for u in self.unmatched]
        lines += [f"note: {self.note}"] if self.note else []
        return "\n".join(lines)

    def _tied_lines(self) -> list[str]:
        """One line per tensor the model holds under several names (tied weights): listed once, under its first."""
        return [f"tied: {d.name} is also {', '.join(d.aliases)} (one tensor, listed and counted once)"
                for d in self.decisions if d.aliases]  # fmt: skip

    def _repr_html_(self) -> str:
        """The summary per group, then every tensor with its decision (coloured) and reason, for notebooks."""
        groups = [[Cell("frozen", "muted"), "-", "-", r["tensors"], r["parameters"]] if r.get("frozen") else
                  [Cell("decay", "accent") if r["weight_decay"] > 0 else Cell("no decay", "muted"), r["weight_decay"],
                   round(r["lr_scale"], 6), r["tensors"], r["parameters"]] for r in self.summary()]
        scaled = any(d.lr_scale != 1 for d in self.decisions)
        tensors = [[d.name, str(tuple(d.shape)), d.numel, d.module_type, _decision_cell(d), d.weight_decay,
                    *([round(d.lr_scale, 6)] if scaled else []), d.reason] for d in self.decisions]
        headers = ["name", "shape", "numel", "module", "decay", "weight_decay", *(["lr_scale"] if scaled else []),
                   "reason"]
        total = sum(d.numel for d in self.decisions)
        decayed = sum(d.numel for d in self.trainable if d.decay)
        title = (f"plan: policy {self.policy!r}, weight_decay {self.weight_decay:g}: {len(self.decisions)} tensors, "
                 f"{decayed:,} of {total:,} parameters decayed ({100 * decayed / max(total, 1):.1f}%)")
        notes = [Cell(line, "muted") for line in self._tied_lines()]
        notes += [Cell(f"conflict: {c}", "warn") for c in self.conflicts]
        notes += [Cell(f"changed nothing: {u}", "warn") for u in self.unmatched]
        notes += [Cell(f"note: {self.note}", "warn")] if self.note else []
        return html_report(title, html_table(["group", "weight_decay", "lr_scale", "tensors", "parameters"], groups,
                                             align="lrrrr"),
                           html_lines(notes), html_table(headers, tensors, align="llrll" + "r" * (1 + scaled) + "l"))


def _decision_cell(d: Decision) -> Cell:
    if not d.trainable:
        return Cell("frozen", "muted")
    return Cell("yes", "accent", bold=True) if d.decay else Cell("no", "muted")


def plan(
    model: nn.Module,
    weight_decay: float,
    *,
    policy: str | Policy = "decaykit",
    rules: Iterable[Rule | str | Mapping[str, Any]] | None = None,
    exclude: Iterable[str] | str | None = None,
    decay_embeddings: bool = True,
    layer_decay: float | None = None,
    layer_of: Mapping[str, int] | Callable[[str], int | None] | None = None,
    tied: Tied = "first",
    strict: bool = False,
    example_inputs: Any = None,
) -> Plan:
    """Decide, for every parameter of ``model``, whether it decays, by how much and why.

    Args:
        model: any ``nn.Module``, bare or wrapped (DDP, ``torch.compile``, checkpoint wrappers);
            names are canonicalised to the bare model's.
        weight_decay: λ given to decayed parameters (no-decay ones get 0).
        policy: a :class:`Policy`, or the name of its preset: ``"decaykit"`` (default: from what
            the parameter is), or a replica of an anchor's rule: ``"timm"``, ``"hf"``,
            ``"nanogpt"``, ``"seed"``, ``"torch"`` (see ``presets``). The keywords below, where
            given a value other than their default, replace the Policy's fields.
        rules: ordered overrides, first match wins (:class:`Rule`, ``"glob:wd=0"`` strings or dicts).
        exclude: names or globs that get no decay, the founding notebook's ``skip_list``.
        decay_embeddings: decay embedding tables (the default, as the founding notebook and timm do).
        layer_decay: BEiT-style layer-wise LR decay, ``lr_scale = layer_decay ** (max_layer - layer)``.
        layer_of: override the layer found from the structure: mapping or callable name -> layer.
        tied: how to settle different decisions for names of one tensor of equal standing.
        strict: a rule or exclude entry that matches nothing is an error, not a warning.
        example_inputs: an input of ``model`` (a tensor, a tuple of arguments or a dict of keyword
            arguments; only shapes and dtypes matter), or ``"auto"`` to let decaykit make one (the
            model's ``example_inputs()``, a transformers config's vocabulary, timm's input size, a
            first layer's size). One forward pass on fake tensors then shows how each tensor is
            used, and the ``"decaykit"`` policy decides from that; tensors the pass does not reach
            are decided from the structure, and those it would guess about are named in a warning
            and in ``Plan.note``. ``None`` (the default) traces on an input decaykit
            makes only where the structure would have to guess (a tensor outside the layers it
            knows: a 2-D gain, Mamba's ``A_log``, a learned token), and says in a warning and in
            ``Plan.note`` what is still decided by shape; ``False`` never traces.
    """
    model = check_model(model)
    weight_decay = check_number(weight_decay, "weight_decay")
    given = {"rules": rules, "exclude": exclude, "decay_embeddings": decay_embeddings, "layer_decay": layer_decay,
             "layer_of": layer_of, "tied": tied, "strict": strict}
    settings = Policy.of(policy, **{k: v for k, v in given.items() if not _is_default(k, v)})
    if example_inputs is None:
        trace, unseen, why = _trace_where_shape_decides(model, settings)
    else:
        trace = _trace(model, example_inputs)
        guessed = _guessed(model) if trace is not None and settings.name == "decaykit" else []
        unseen, why = _left_to_shape(guessed, trace)
    decided = _plan_for(model, weight_decay, settings, trace)
    decided.note = _by_shape_note(decided, unseen, why, _hint(trace, unseen, given=example_inputs is not None))
    if decided.note is None and example_inputs is not None and trace is not None and trace.stopped is not None:
        _warn_stopped(model, trace)  # no tensor left to its shape, but the known layers it did not reach
    return decided


def _warn_stopped(model: nn.Module, trace: Trace) -> None:
    if not trace.ran:
        message = f"example_inputs='auto': {trace.stopped}; every tensor is decided from the structure"
    else:
        message = (f"example_inputs: the traced forward of {type(unwrap_model(model)).__name__} stopped at "
                   f"{trace.stopped}; tensors it did not reach are decided from the structure")
    warnings.warn(message, DecayWarning, stacklevel=4)


def _trace(model: nn.Module, example_inputs: Any) -> Trace | None:
    """The traced uses for ``example_inputs`` (``False``: none)."""
    if example_inputs is False:
        return None
    if example_inputs is True:
        raise DecayError("example_inputs=True is not an input: pass the model's input, 'auto' to let decaykit make "
                         "one, or False to decide from the structure alone")
    refuse_lazy(lazy_names(model))  # before the pass, which would make them fake tensors
    bare: nn.Module = unwrap_model(model)  # type: ignore[assignment]
    if isinstance(example_inputs, str):
        if example_inputs != "auto":
            raise DecayError(f"example_inputs must be the model's input, 'auto' or False, got {example_inputs!r}")
        return trace_on_own_input(bare)
    return run_trace(bare, example_inputs)


def _trace_where_shape_decides(model: nn.Module, policy: Policy) -> tuple[Trace | None, set[int], str]:
    """Without ``example_inputs``: a trace on an input the model makes itself, only where the structure
    would guess (a trainable tensor outside the layers decaykit knows: a 2-D gain, Mamba's ``A_log``,
    a learned token); else none, as it would change nothing. Also the ``id`` of each such tensor the
    trace did not reach, and why."""
    guessed = _guessed(model) if policy.name == "decaykit" else []
    if not guessed:
        return None, set(), ""  # the replicas decide as their anchors do, from names and shapes
    try:
        trace: Trace | None = trace_on_own_input(unwrap_model(model))  # type: ignore[arg-type]
    except Exception as exc:  # the model's own example_inputs() failed, or its tensors refused a shape-only copy
        return None, {id(p) for p in guessed}, f"no traced pass: {type(exc).__name__}: {exc}"[:200]
    if trace is not None and trace.ran and not trace.uses:
        return None, {id(p) for p in guessed}, f"the traced forward stopped at once: {trace.stopped}"
    unseen, why = _left_to_shape(guessed, trace)
    return (trace if trace is not None and trace.ran else None), unseen, why


def _guessed(model: nn.Module) -> list[torch.Tensor]:
    """The trainable tensors whose role the structure can only guess (:func:`decided_by_shape`)."""
    return [infos[0].param for infos in collect_params(model).values()
            if infos[0].param.requires_grad and decided_by_shape(infos[0])]


def _left_to_shape(guessed: list[torch.Tensor], trace: Trace | None) -> tuple[set[int], str]:
    """The ``id`` of each of the ``guessed`` tensors (:func:`_guessed`; none where the policy ignores the
    trace) that ``trace`` left to the structure (not reached, or reached by a use that does not tell its
    role), and why."""
    if trace is None or not guessed:
        return set(), ""
    if not trace.ran:
        return {id(p) for p in guessed}, str(trace.stopped)
    missed = {id(p) for p in guessed if trace.use_of(p) is None}
    untold = {id(p) for p in guessed if getattr(trace.use_of(p), "kind", None) == "other"}
    stop = f" (it stopped at {trace.stopped})" if trace.stopped else ""
    if missed and untold:
        why = f"the traced forward did not reach some{stop}, and their use did not tell what the others are"
    elif untold:
        why = "their use in the traced forward did not tell what they are"
    else:
        why = "the traced forward did not reach them" + stop
        if missed <= trace.touched:
            why = "the traced forward used them only with learned tensors and constants, never with its input" + stop
        if trace.foreign and not trace.stopped:
            why = (f"the traced forward did not reach them: it used {trace.foreign} learnable tensors that are not the "
                   "model's own in their place (held elsewhere, as pyro's param store does)")
    return missed | untold, why


def _hint(trace: Trace | None, unseen: set[int], given: bool) -> str:
    """What can still decide the ``unseen`` tensors: rules, where a trace ran on your input (or one made
    with ``"auto"``), or saw them all and their use did not tell, which no other input would change;
    else an input of yours, as the one decaykit made did not reach them."""
    told_nothing = bool(unseen) and all(pid in trace.uses for pid in unseen) if trace is not None else False
    if trace is not None and trace.ran and (given or told_nothing):
        return "give them rules= where their shape misleads"
    return "pass example_inputs= to decide them by how the model uses them"


def _by_shape_note(decided: Plan, unseen: set[int], why: str, hint: str) -> str | None:
    """What is decided by its shape alone although its use would tell (``unseen`` tensors the policy decided,
    not a rule or hook), why it was not traced and what to do: warned once and kept in ``Plan.note``."""
    names = [d.name for d in decided.trainable if d.source == "policy" and id(d.param) in unseen]
    if not names:
        return None
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    text = f"{why}; {hint}"
    if len(names) == 1:
        for plural, singular in (("reach them", "reach it"), ("what they are", "what it is"), ("their use", "its use"),
                                 ("decide them", "decide it"), ("uses them", "uses it"), ("give them", "give it"),
                                 ("their shape", "its shape")):
            text = text.replace(plural, singular)
    note = (f"{len(names)} tensor{'s' if len(names) > 1 else ''} outside the layers decaykit knows ({shown}) "
            f"decided by shape, not by use: {text}")
    warnings.warn(note, DecayWarning, stacklevel=3)
    return note


def _plan_for(model: nn.Module, weight_decay: float, policy: Policy, trace: Trace | None = None) -> Plan:
    """The plan for a model already checked, a λ already validated and a :class:`Policy`: the phases."""
    by_tensor = collect_params(model, trace)
    if not by_tensor:
        raise DecayError(f"model {type(model).__name__} has no parameters: there is nothing to decay")
    layers, scale_of = _layer_scales(model, [infos[0].name for infos in by_tensor.values()], policy)
    decider = Decider(policy, weight_decay, hook_patterns(model, policy.preset_info.hooks))
    decisions: list[Decision] = []
    conflicts: list[Conflict] = []
    for infos in by_tensor.values():
        first = infos[0].name
        decision, conflict = decider.tensor(infos, layers.get(first, 0), scale_of(first))
        decisions.append(decision)
        conflicts += [conflict] if conflict is not None else []
    unmatched, shadowed = decider.unmatched(), decider.shadowed()
    _report_unmatched(model, unmatched, shadowed, policy.strict)
    if trace is not None and policy.name == "decaykit":
        # roles seen in use; a structural role is a guess, and the replicas' roles are their anchors' tests
        seen = {key for key, infos in by_tensor.items()
                if infos[0].component is None and infos[0].use is not None and infos[0].use.kind != "other"}
        conflicts += role_conflicts(decisions, seen)
    return Plan(decisions, weight_decay, policy.name, conflicts, unmatched + shadowed, policy.layer_decay)


def _is_default(option: str, value: Any) -> bool:
    default = _KEYWORD_DEFAULTS[option]
    return value is default or (type(value) is type(default) and value == default)


def _layer_scales(
    model: nn.Module, names: list[str], policy: Policy
) -> tuple[dict[str, int], Callable[[str], float]]:
    """Each first name's layer, and its LR scale ``layer_decay ** (max_layer - layer)`` (1 without)."""
    layer_decay = policy.layer_decay
    if layer_decay is None and policy.layer_of is None:
        return {}, lambda name: 1.0
    layers, max_layer = layer_ids(unwrap_model(model), names, policy.layer_of)
    if layer_decay is None:
        return layers, lambda name: 1.0
    if max_layer == 0 and policy.layer_of is None:
        warnings.warn(
            f"layer_decay={layer_decay}: found no repeated blocks in {type(model).__name__}, so every "
            "parameter gets lr_scale 1; pass layer_of= to say which layer each parameter is in",
            DecayWarning,
            stacklevel=4,
        )
    return layers, lambda name: float(layer_decay ** (max_layer - layers.get(name, max_layer)))


def _report_unmatched(model: nn.Module, unmatched: list[str], shadowed: list[str], strict: bool) -> None:
    if not unmatched and not shadowed:
        return
    parts = [f"matched no parameter of {type(model).__name__}: {', '.join(unmatched)}"] if unmatched else []
    if shadowed:
        parts.append(f"changed nothing, as an earlier rule decides every parameter they match (first match wins): "
                     f"{', '.join(shadowed)}")
    message = "; ".join(parts) + "; check the names with `decaykit inspect`"
    if strict:
        raise DecayError(message)
    warnings.warn(message, DecayWarning, stacklevel=4)


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    lr: float | None = None,
    policy: str | Policy = "decaykit",
    **options: Any,
) -> list[dict[str, Any]]:
    """Param groups for any ``torch.optim`` optimizer, made from :func:`decaykit.plan`.

    ``torch.optim.AdamW(decaykit.param_groups(model, 0.05), lr=1e-3)`` just works. Frozen
    parameters are left out, tied tensors appear once, groups with equal settings are merged.
    ``policy`` and ``options`` are :func:`decaykit.plan`'s keyword arguments (``rules=``,
    ``exclude=``, ``decay_embeddings=``, ``layer_decay=``, ``layer_of=``, ``tied=``, ``strict=``);
    ``lr`` sets each group's ``lr`` to ``lr * lr_scale`` (see :func:`build_groups`).

    >>> model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    >>> groups = param_groups(model, 0.05)
    >>> [(g["weight_decay"], g["param_names"]) for g in groups]
    [(0.05, ['0.weight', '2.weight']), (0.0, ['0.bias', '1.weight', '1.bias', '2.bias'])]
    >>> import torch
    >>> opt = torch.optim.AdamW(groups, lr=1e-3)
    """
    check_plan_options(options, "param_groups()")
    return plan(model, weight_decay, policy=policy, **options).groups(lr=lr)


def check_plan_options(options: Mapping[str, Any], caller: str) -> None:
    """Refuse keyword arguments that :func:`plan` does not take, naming them, before Python's TypeError would."""
    unknown = sorted(set(options) - {*OPTIONS[1:], "example_inputs"}, key=str)
    if unknown:
        raise DecayError(f"{caller} got unknown option(s) {', '.join(map(repr, unknown))}; the policy options are: "
                         f"{', '.join(OPTIONS)}")


_KEYWORD_DEFAULTS = {name: p.default for name, p in inspect.signature(plan).parameters.items()
                     if p.kind is p.KEYWORD_ONLY and name not in ("policy", "example_inputs")}
