"""Audit an optimizer against a model: what is decayed that should not be, and what is missing.

>>> import torch
>>> from decaykit.models import TinyGPT
>>> model = TinyGPT()
>>> report = audit(model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1))
>>> sorted({f.code for f in report.findings})
['decayed-bias', 'decayed-norm']

Each finding has a severity (``error``, ``warning``, ``info``), the parameters it concerns and a
one-line fix. ``report.ok`` is False when any error was found. With ``measure=True`` the audit
also steps a copy of the optimizer (:func:`decaykit.probe`) so the decay it reports is measured,
not inferred from the settings; any decay it measures that the groups' ``weight_decay`` does not
explain is a finding.

What a group's ``weight_decay`` does is decided group by group: from :mod:`decaykit.optimizers` and
the group's ``decoupled_weight_decay``, or, for a :class:`decaykit.WeightDecay` engine (live, or
saved with its ``"decaykit"`` entry), from the engine's mode. Coupled L2 (g ← g + λθ) in any
decaying group of an adaptive optimizer is ``coupled-adaptive``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from decaykit import optimizers
from decaykit._aliasing import aliased as sharing_memory
from decaykit._render import Cell, Report, html_finding, html_lines, html_report
from decaykit._validate import check_number
from decaykit.engine.checks import SHAPED_STATE
from decaykit.engine.modes import DECOUPLED_MODES, MODES
from decaykit.engine.weight_decay import STATE_KEY, WeightDecay, saved_entry
from decaykit.errors import DecayError
from decaykit.optimizers import OptimizerInfo
from decaykit.policy.names import canonical_name, namer
from decaykit.policy.plan import Conflict, Decision, Plan, check_plan_options, collect_params, plan
from decaykit.probe.expectations import Expectation, rate_text, readable_expectations, saved_expectation
from decaykit.probe.report import ProbeReport
from decaykit.probe.rounding import rounded_away, rounding_fix

__all__ = ["COUPLED_ADAPTIVE", "AuditReport", "Finding", "MeasuredProbe", "audit"]

SEVERITIES = ("error", "warning", "info")
#: Optimizers whose ``weight_decay`` can add λθ to the gradient *before* the adaptive
#: denominator (Adam, NAdam, RAdam and AdamW when their ``decoupled_weight_decay`` is off):
#: large-gradient coordinates then get almost no decay (Loshchilov & Hutter 2019).
COUPLED_ADAPTIVE: frozenset[str] = frozenset(
    e.name for e in optimizers.REGISTRY.values()
    if e.module == "torch.optim" and e.adaptive and e.decay in ("coupled", "flag")
)
_ROLE_SEVERITY = {"norm": "error", "hook": "error", "bias": "warning", "scale": "warning", "embedding": "warning"}


@dataclass(frozen=True)
class Finding:
    severity: str
    code: str
    message: str
    fix: str
    params: tuple[str, ...] = ()

    def __str__(self) -> str:
        names = ""
        if self.params:
            shown = ", ".join(self.params[:6]) + (f", ... ({len(self.params)} in all)" if len(self.params) > 6 else "")
            names = f"\n    params: {shown}"
        return f"[{self.severity}] {self.code}: {self.message}{names}\n    fix: {self.fix}"

    def to_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "code": self.code, "message": self.message, "fix": self.fix,
                "params": list(self.params)}


@dataclass
class AuditReport(Report):
    findings: list[Finding]
    optimizer: str
    policy: str
    weight_decay: float
    probe: Any = None  # the ProbeReport when measure=True
    notes: list[str] = field(default_factory=list)
    mapping: str = "by tensor"  # how saved groups were matched to the model's tensors: "by tensor", "by name", "by position"

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def count(self, severity: str) -> int:
        return sum(f.severity == severity for f in self.findings)

    def __str__(self) -> str:
        head = (f"audit of {self.optimizer} against policy {self.policy!r} (weight_decay={self.weight_decay:g}): "
                f"{self.count('error')} errors, {self.count('warning')} warnings, {self.count('info')} notes")
        if self.mapping == "by position":
            head += ("; groups mapped to model.parameters() BY POSITION (the checkpoint has no param_names), so "
                     "findings about which tensor is in which group are only as right as that order")
        lines = [head, *(str(f) for f in self.findings), *(f"note: {n}" for n in self.notes)]
        if not self.findings:
            lines.append("no problems found")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The verdict line coloured, each finding with its severity, parameters (folded) and fix, for notebooks."""
        counts = f"{self.count('error')} errors, {self.count('warning')} warnings, {self.count('info')} notes"
        tone = "bad" if not self.ok else ("warn" if self.count("warning") else "good")
        title = Cell(f"audit of {self.optimizer} against policy {self.policy!r} (weight_decay={self.weight_decay:g}): "
                     f"{counts}", tone)
        findings = "".join(html_finding(f.severity, f.code, f.message, f.fix, f.params) for f in self.findings)
        lines = [] if self.findings else [Cell("no problems found", "good")]
        if self.mapping == "by position":
            lines.append(Cell("groups mapped to model.parameters() by position (the checkpoint has no param_names)",
                              "warn"))
        lines += [f"note: {n}" for n in self.notes]
        probe = self.probe._repr_html_() if self.probe is not None else ""
        return html_report(title, findings, html_lines(lines), probe)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "optimizer": self.optimizer, "policy": self.policy, "weight_decay": self.weight_decay,
                "mapping": self.mapping,
                "findings": [f.to_dict() for f in self.findings], "notes": list(self.notes),
                "probe": self.probe.to_dict() if self.probe is not None else None}


@dataclass
class MeasuredProbe(ProbeReport):
    """The probe as the audit shows it: its agreement line says what was compared, and that the audit
    found errors, so "0 disagreements" never reads as an all-clear beside an error finding.

    The probe compares the measured decay with what each param group *configures*; the audit judges
    the configuration itself. Both can be true at once: norms decayed exactly as their group says.
    """

    audit_errors: tuple[str, ...] = ()

    @classmethod
    def of(cls, report: ProbeReport, errors: list[str]) -> MeasuredProbe:
        values = {f.name: getattr(report, f.name) for f in dataclasses.fields(report) if f.init}
        return cls(**values, audit_errors=tuple(dict.fromkeys(errors)))

    def summary(self) -> list[str]:
        lines = super().summary()
        if not self.audit_errors or self.disagreements:
            return lines
        told = (f"0 disagreement(s) between the measured decay and what the param groups configure; the "
                f"configuration itself has errors ({', '.join(self.audit_errors)}): see the audit above")
        head = "0 disagreement(s)"
        at = next((i for i, line in enumerate(lines) if line.startswith(head)), None)
        if at is None:
            return [*lines, told]
        return [*lines[:at], told, *lines[at + 1:]]


@dataclass
class _Group:
    params: list[torch.Tensor]
    weight_decay: float
    settings: dict[str, Any]
    # what its weight_decay does: "decoupled", "coupled" (λθ added to the gradient), "none" or "unknown"
    decay: str = "unknown"
    # what its next step does with zero gradients, as the probe expects it (None: settings it refuses)
    expect: Expectation | None = None


@dataclass
class _View:
    """What the audit reads from an optimizer or a saved state_dict."""

    name: str
    groups: list[_Group]
    notes: list[str]
    mapping: str = "by tensor"
    misfit: str | None = None  # why a positional mapping is proven wrong (a saved moment's shape)
    # the registry entry of the class whose update the gradient goes through (a WeightDecay engine's inner one)
    stepper: OptimizerInfo | None = None
    mode: str | None = None  # the WeightDecay engine's mode, when one does the decay


def _as_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.max()) if value.numel() else 0.0
    return float(value or 0.0)


def _bad_lambda(value: Any) -> str | None:
    """Why a group's weight_decay is not a decay (negative, NaN, inf, not a number), or None."""
    if isinstance(value, torch.Tensor):
        values = value.detach().double().flatten().cpu()
        bad = values[~torch.isfinite(values) | (values < 0)]
        return None if not bad.numel() else f"holds {bad[0].item()!r} among its per-member values"
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"is {value!r} ({type(value).__name__}), not a number"
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        return f"is {number!r}, which turns every weight it touches into NaN/inf at the first step"
    if number < 0:
        return f"is {number!r}: a negative decay grows the weights at every step instead of shrinking them"
    return None


def _group(params: list[torch.Tensor], settings: Mapping[str, Any]) -> _Group:
    raw = settings.get("weight_decay", 0.0)
    # a bad λ is its own finding; NaN keeps its tensors out of every comparison of decayed / not decayed
    wd = math.nan if _bad_lambda(raw) is not None else _as_float(raw)
    return _Group(params, wd, dict(settings))


def _optimizer_view(model: nn.Module, optimizer: Any) -> _View:
    """The name, groups (each with what its weight_decay does) and notes of a live optimizer or a saved state_dict.

    A :class:`decaykit.WeightDecay` engine is read by its mode, not by its inner optimizer's convention:
    it switches the inner decay off and applies λ as the mode says.
    """
    if isinstance(optimizer, torch.optim.Optimizer):
        engine = isinstance(optimizer, WeightDecay)
        inner = optimizer.optimizer if engine else optimizer
        shard = optimizers.sharding_wrapper(inner)  # ZeroRedundancyOptimizer: its optimizer_class steps
        stepper = optimizers.info(inner if shard is None else shard)
        expected = _expected_decay(optimizer)
        expects = readable_expectations(optimizer)
        groups = []
        for i, g in enumerate(optimizer.param_groups):
            group = _group(list(g["params"]), g)
            group.expect = expects[i]
            if expected is not None and expected[i]["kind"] == "none" and not math.isnan(group.weight_decay):
                group.weight_decay = 0.0
            if engine:
                group.decay = _mode_decay(optimizer.mode)
            elif expected is not None:
                group.decay = {"coupled_l2": "coupled", "none": "none"}.get(expected[i]["kind"], "decoupled")
            else:
                group.decay = _decay_in(stepper, g)
            if group.decay == "none" and not math.isnan(group.weight_decay):
                group.weight_decay = 0.0  # its step never reads it (Rprop): the tensors get no decay
            groups.append(group)
        held = type(inner).__name__ + ("" if shard is None else f" over {type(shard).__name__}")
        if not engine:
            return _View(held, groups, [], stepper=stepper)
        name = f"WeightDecay(mode={optimizer.mode!r}) over {held}"
        return _View(name, groups, [], stepper=stepper, mode=optimizer.mode)
    if isinstance(optimizer, Mapping):
        state = optimizer.get("optimizer", optimizer) if "param_groups" not in optimizer else optimizer
        groups = state.get("param_groups") if isinstance(state, Mapping) else None
        if not isinstance(groups, list) or not all(isinstance(g, Mapping) and isinstance(g.get("params"), list)
                                                   for g in groups):
            raise DecayError(
                "optimizer must be a torch.optim.Optimizer or an optimizer state_dict (a dict with "
                "'param_groups', a list of dicts each with a 'params' list, or a checkpoint dict with key 'optimizer')"
            )
        return _from_state_dict(model, state)
    raise DecayError(f"optimizer must be a torch.optim.Optimizer or its state_dict, got {type(optimizer).__name__}")


def _expected_decay(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]] | None:
    """The engine's own account of its groups; None for a plain optimizer, or one whose groups it refuses."""
    if not callable(getattr(optimizer, "expected_decay", None)):
        return None
    if any(_bad_lambda(g.get("weight_decay", 0.0)) for g in optimizer.param_groups):
        return None  # the engine would refuse the bad λ; it is reported as a finding instead
    return optimizer.expected_decay()


def _decay_in(facts: OptimizerInfo | None, group: Mapping[str, Any]) -> str:
    """What the group's own weight_decay does: the registry's convention, else the group's flag."""
    if facts is not None:
        return facts.decay_in(group)
    return "decoupled" if group.get("decoupled_weight_decay", False) else "unknown"


def _mode_decay(mode: str) -> str:
    """What a WeightDecay engine in ``mode`` does with λ: adds λθ to the gradient, or shrinks θ beside the step."""
    return "coupled" if mode == "coupled_l2" else "decoupled"


def _saved_mode(own: Any) -> str:
    """The engine's mode from a checkpoint's ``decaykit`` entry; a DecayError if the entry is not one."""
    mode = own.get("mode") if isinstance(own, Mapping) else None
    if not isinstance(mode, str) or mode not in MODES:
        got = f"mode {mode!r}" if isinstance(own, Mapping) else type(own).__name__
        raise DecayError(f"state_dict[{STATE_KEY!r}] must be the entry decaykit.WeightDecay.state_dict() saves, with "
                         f"'mode' one of {', '.join(MODES)}; got {got}: audit a checkpoint saved by WeightDecay, or "
                         f"delete state_dict[{STATE_KEY!r}] to audit the inner optimizer alone")
    return mode


def _from_state_dict(model: nn.Module, state: Mapping[str, Any]) -> _View:
    by_name = {info.name: info.param for infos in collect_params(model).values() for info in infos}
    ordered = list(model.parameters())
    groups: list[_Group] = []
    first = state["param_groups"][0] if state["param_groups"] else {}
    own = saved_entry(dict(state))[0]  # the top-level entry, or its copy in param_groups[0] (a DCP checkpoint)
    mode = _saved_mode(own) if own is not None else None
    positional = any(g.get("param_names") is None for g in state["param_groups"])
    misfit = None
    canonical = namer(model)
    for g in state["param_groups"]:
        names = g.get("param_names")
        if names is not None:
            # as the model names it (a child of its own called ``module`` kept); else without a DDP ``module.``
            names = [own if (own := canonical(n)) in by_name else canonical_name(n) for n in names]
            missing = [n for n in names if n not in by_name]
            if missing:
                under = [m for m, _ in model.named_modules() if m and all(f"{m}.{n}" in by_name for n in missing)]
                if len(under) == 1:  # built from one submodule's groups (a GAN's generator): names relative to it
                    raise DecayError(
                        f"the saved optimizer names parameters relative to the model's submodule {under[0]!r} "
                        f"({missing[0]} is {under[0]}.{missing[0]}): it was built from that submodule's groups "
                        f"(decaykit.param_groups(model.{under[0]}, ...)); audit it against that submodule (a factory "
                        "returning it, for the CLI's MODEL), as each optimizer of a GAN trains its own network"
                    )
                raise DecayError(
                    f"the saved optimizer names parameters the model does not have ({', '.join(missing[:3])}); "
                    "pass the same model architecture the checkpoint was trained with"
                )
            params = [by_name[n] for n in names]
        else:
            try:
                params = [ordered[int(i)] for i in g["params"]]
            except (IndexError, TypeError, ValueError):
                raise DecayError(
                    f"the saved optimizer refers to parameters {g['params'][:5]!r}{' ...' if len(g['params']) > 5 else ''} "
                    f"by position, but the model has {len(ordered)} (0..{len(ordered) - 1}); pass the model it was trained with"
                ) from None
            misfit = misfit or _state_misfit(state.get("state", {}), g["params"], params, model)
        groups.append(_group(params, g))
    # the class from the first group's keys (torch saves every key in every group); the decay group by group
    facts = optimizers.from_settings(first) or _older_settings(first)
    name = facts.name if facts is not None else "optimizer"
    for i, group in enumerate(groups):
        group.decay = _decay_in(facts, group.settings) if mode is None else _mode_decay(mode)
        # a saved engine's rate hangs on its peak LRs and schedule, which only the live engine reads
        group.expect = saved_expectation(group.settings, facts, i) if mode is None else None
    notes = [f"read from a state_dict; optimizer class inferred as {name} from its settings"]
    mapping = "by position" if positional else "by name"
    if mode is None:
        return _View(f"{name} (state_dict)", groups, notes, mapping, misfit, facts)
    notes.append(f"state_dict[{STATE_KEY!r}] says decaykit.WeightDecay(mode={mode!r}) decayed it: its mode, not "
                 f"{name}'s own weight_decay convention, is audited")
    return _View(f"WeightDecay(mode={mode!r}) over {name} (state_dict)", groups, notes, mapping, misfit, facts, mode)


def _state_misfit(state: Any, ids: list[Any], params: list[torch.Tensor], model: nn.Module) -> str | None:
    """A saved moment whose shape is not its positional tensor's: proof that the positions do not line up."""
    if not isinstance(state, Mapping):
        return None
    names = {id(p): n for n, p in model.named_parameters()}
    for k, p in zip(ids, params):
        entry = state.get(k)
        for key in SHAPED_STATE:
            value = entry.get(key) if isinstance(entry, Mapping) else None
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != tuple(p.shape):
                return (f"saved tensor {k} has {key!r} of shape {tuple(value.shape)} but model.parameters()[{k}] "
                        f"({names.get(id(p), '?')}) has shape {tuple(p.shape)}")
    return None


def _older_settings(group: Mapping[str, Any]) -> OptimizerInfo | None:
    """A guess from one telling key, for groups saved by another torch whose keys differ from this one's."""
    if "decoupled_weight_decay" in group:
        return optimizers.info("AdamW" if group["decoupled_weight_decay"] else "Adam")
    if "nesterov" in group:
        return optimizers.info("SGD")
    if "alpha" in group and "centered" in group:
        return optimizers.info("RMSprop")
    return None


def audit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | Mapping[str, Any],
    *,
    weight_decay: float | None = None,
    policy: str = "decaykit",
    measure: bool = False,
    **plan_options: Any,
) -> AuditReport:
    """Check ``optimizer`` (or its saved ``state_dict``) against ``model`` and a policy.

    ``weight_decay`` is the λ the policy should give decayed tensors; by default the largest
    weight decay found in the optimizer's groups. ``plan_options`` go to :func:`decaykit.plan`
    (``exclude=``, ``rules=``, ``decay_embeddings=`` ...).

    A framework's wrapper (the HF Trainer's ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``) is
    audited as the optimizer inside it (:func:`decaykit.optimizers.unwrap`).
    A saved :class:`decaykit.WeightDecay` state_dict is read by the mode in its ``"decaykit"`` entry.
    A state_dict saved without ``param_names`` is matched to ``model.parameters()`` by position;
    the report says so in its first line, findings that depend on that order are warnings (not
    errors) unless the order cannot matter, and a saved moment whose shape contradicts the order
    replaces them with one ``unmapped`` error.
    """
    if not isinstance(model, nn.Module):
        raise DecayError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if weight_decay is not None:
        weight_decay = check_number(weight_decay, "weight_decay")
    if not isinstance(measure, bool):
        raise DecayError(f"measure must be True or False, got {measure!r}")
    check_plan_options(plan_options, "audit()")
    wrapped, wrapper = optimizer, optimizers.wrapper_name(optimizer, sharing=True)
    # the HF Trainer's and Lightning's wrappers step the optimizer inside; a sharing wrapper's groups are its optimizer's
    optimizer = optimizers.unwrap(optimizer, sharing=True)
    view = _optimizer_view(model, optimizer)
    if wrapper is not None:
        view.name += f" (inside {wrapper})"
        if wrapper not in optimizers.WRAPPERS:
            inner = type(optimizer).__name__
            view.notes.append(f"{wrapper} holds {inner} and shares its param groups: their settings are audited as "
                              f"{inner}'s; what {wrapper} does around {inner}'s step is its own, and decaykit has no "
                              "facts on it")
    given = [g.weight_decay for g in view.groups if not math.isnan(g.weight_decay)]
    lam = weight_decay if weight_decay is not None else max(given, default=0.0)
    expected = plan(model, lam, policy=policy, **plan_options)
    findings = _bad_lambda_findings(view.groups) + _mapped_findings(expected, view)
    findings += _convention_findings(view) + _unknown_findings(view) + _unread_findings(view)
    findings += _overshoot_findings(view, expected) + _rounding_findings(view, expected) + _aliased_findings(view, expected)
    findings += [Finding("warning", "tied-conflict", str(conflict),
                         "pass tied='decay' / 'no_decay' or a rule naming the tensor to make the choice explicit",
                         conflict.names) if isinstance(conflict, Conflict) else
                 Finding("warning", "role-conflict", str(conflict), "a rule naming the tensors gives the role one decision",
                         conflict.names) for conflict in expected.conflicts]
    report = AuditReport(findings, view.name, expected.policy, lam, notes=view.notes, mapping=view.mapping)
    if measure:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise DecayError("measure=True needs a live optimizer, not a state_dict: build it, load the state, then audit")
        from decaykit.probe.probe import probe

        measured = probe(wrapped, model=model)
        _measured_findings(measured, expected, findings, view.stepper, set(_overshooting(view)))
        findings[:] = _measured_conventions(findings, measured, view)
        report.probe = MeasuredProbe.of(measured, [f.code for f in findings if f.severity == "error"])
    order = {s: i for i, s in enumerate(SEVERITIES)}
    findings.sort(key=lambda f: order[f.severity])
    return report


#: findings that say which tensor is in which group: only as right as the mapping of a saved state_dict
_MAPPED = ("decayed-", "not-decayed", "policy-difference", "missing", "frozen-in-optimizer", "duplicate", "not-in-model")


def _mapped_findings(expected: Plan, view: _View) -> list[Finding]:
    """The findings about group membership, qualified by how sure the mapping of saved tensors is."""
    if view.misfit is not None:
        return [Finding(
            "error", "unmapped",
            f"the checkpoint has no param_names and its saved state does not fit model.parameters() order "
            f"({view.misfit}): the optimizer was built from other groups, so which tensor has which weight decay "
            "cannot be read from it",
            "audit the live optimizer, or save it from groups that carry param_names (decaykit.param_groups does; "
            "torch keeps them in state_dict())")]
    held = _Membership.of(view.groups, {id(d.param): d for d in expected})
    findings: list[Finding] = []
    _wrongly_decayed(expected, held.actual, findings, view.name)
    _policy_differences(expected, held.actual, findings)
    findings += _membership_findings(expected, held, view.groups)
    order_matters = (len({g.weight_decay for g in view.groups}) > 1
                     or sum(len(g.params) for g in view.groups) != len(expected.decisions))
    if view.mapping != "by position" or not order_matters:
        return findings
    caveat = (" (by position: the checkpoint has no param_names, so saved tensor i was taken to be "
              "model.parameters()[i], which holds only if the optimizer was built from model.parameters() in order)")
    # which tensors are missing hangs on the order; that some are does not, when the optimizer holds fewer
    held_count = len({id(p) for g in view.groups for p in g.params})
    certain = {"missing"} if held_count < len(expected.trainable) else set()
    return [dataclasses.replace(f, severity="warning" if f.severity == "error" and f.code not in certain else f.severity,
                                message=f.message + caveat)
            if f.code.startswith(_MAPPED) else f for f in findings]


def _bad_lambda_findings(groups: list[_Group]) -> list[Finding]:
    """A weight decay that is no decay: negative (the weights grow), NaN or inf (they are destroyed)."""
    out = []
    for i, group in enumerate(groups):
        why = _bad_lambda(group.settings.get("weight_decay", 0.0))
        if why is not None:
            names = group.settings.get("param_names") or ()
            out.append(Finding("error", "bad-weight-decay", f"param_groups[{i}]['weight_decay'] {why}",
                               f"set param_groups[{i}]['weight_decay'] to a finite number >= 0 (0 for no decay) "
                               "before training or resuming from this state", tuple(map(str, names))))
    return out


@dataclass
class _Membership:
    """Which optimizer group holds each tensor, with what weight decay, and what is held wrongly."""

    seen: dict[int, int]  # id(tensor) -> group index
    actual: dict[int, float]  # id(tensor) -> the group's weight decay
    duplicates: list[str]
    foreign: list[str]  # tensors of the optimizer that are not the model's

    @classmethod
    def of(cls, groups: list[_Group], by_id: Mapping[int, Decision]) -> _Membership:
        held = cls({}, {}, [], [])
        for gi, group in enumerate(groups):
            for p in group.params:
                if id(p) in held.seen:
                    held.duplicates.append(by_id[id(p)].name if id(p) in by_id else f"group{gi}")
                held.seen[id(p)] = gi
                held.actual[id(p)] = group.weight_decay
                if id(p) not in by_id:
                    held.foreign.append(f"group{gi}:{tuple(p.shape)}")
        return held


def _membership_findings(expected: Plan, held: _Membership, groups: list[_Group]) -> list[Finding]:
    """Tensors missing from the optimizer, frozen inside it, held twice, or not the model's.

    A decayed frozen tensor is an error where its group decays decoupled: θ(1 − ηλ) moves it even
    when its gradient is a zero tensor.
    """
    out = []
    missing = [d.name for d in expected.trainable if id(d.param) not in held.seen]
    if missing:
        out.append(Finding("error", "missing", f"{len(missing)} trainable parameters are not in the optimizer and will never be updated",
                           "build the optimizer from decaykit.param_groups(model, ...) or add them with add_param_group", tuple(missing)))
    frozen = [d.name for d in expected if not d.trainable and id(d.param) in held.seen]
    if frozen:
        decayed_frozen = [d for d in expected if not d.trainable and held.actual.get(id(d.param), 0.0) > 0]
        decoupled = any(groups[held.seen[id(d.param)]].decay == "decoupled" for d in decayed_frozen)
        out.append(Finding(
            "error" if decoupled else "warning", "frozen-in-optimizer",
            f"{len(frozen)} frozen parameters (requires_grad=False, or an averaged copy's: an EMA updated without "
            "gradients) are in the optimizer"
            + (f"; {len(decayed_frozen)} have weight_decay > 0: torch skips them while their .grad is None, and they "
               "shrink at every step once it is a zero tensor (one left from before they were frozen, which "
               "zero_grad(set_to_none=False) zeroes instead of removing; diffusers #1009)" if decayed_frozen else ""),
            "leave frozen parameters out of the optimizer (decaykit.param_groups does) or set their weight_decay to 0",
            tuple(frozen)))
    if held.duplicates:
        out.append(Finding("error", "duplicate", f"{len(held.duplicates)} tensors appear more than once in the optimizer "
                           "(updated and decayed twice per step)", "make sure every tensor is in exactly one group; "
                           "decaykit.param_groups never repeats a tensor", tuple(held.duplicates)))
    if held.foreign:
        out.append(Finding("warning", "not-in-model", f"{len(held.foreign)} optimizer tensors are not parameters of this model",
                           "pass the model the optimizer was built for", tuple(held.foreign)))
    return out


#: group settings named like a decay that are not one: Adagrad's lr_decay, Adafactor's decay_rate (its β2 schedule)
_NOT_DECAY = frozenset({"weight_decay", "lr_decay", "decay_rate", "beta2_decay"})


def _unknown_findings(view: _View) -> list[Finding]:
    """What the settings of an optimizer decaykit has no facts on cannot tell: what its weight_decay does
    (``unknown-convention``), and whether a second setting named like a decay (a ``weight_decay_1d`` for 1-D tensors)
    decays what weight_decay=0 leaves alone (``unread-decay-setting``, a warning where it sits in a group of
    weight_decay=0). Said, not guessed; ``measure=True`` measures both."""
    if view.mode is not None or view.stepper is not None:
        return []
    name = _bare_name(view)
    measure = ("measure it: decaykit.audit(model, optimizer, measure=True) or decaykit.probe(optimizer, model=model) "
               "steps a copy and says how each tensor is decayed")
    out = []
    unknown = _unknown_groups(view)
    if unknown:
        out.append(Finding("info", "unknown-convention",
                           f"decaykit has no facts on {name}: whether its weight_decay in param_groups {unknown} is "
                           "coupled L2 (λθ added to the gradient, rescaled by any adaptive denominator) or a decoupled "
                           "shrink, and at what rate, is not known from its settings", measure))
    others: dict[tuple[str, float], list[int]] = {}
    for i, g in enumerate(view.groups):
        for key, value in g.settings.items():
            if "decay" in key.lower() and key not in _NOT_DECAY and _nonzero_number(value):
                others.setdefault((key, value), []).append(i)
    if others:
        undecayed = sorted({i for where in others.values() for i in where if view.groups[i].weight_decay == 0})
        shown = "; ".join(f"{k}={v:g} in param_groups {where}" for (k, v), where in others.items())
        message = (f"{name}'s groups hold {shown}: a setting named like a decay, which decaykit does not know and "
                   "weight_decay=0 may not switch off")
        if undecayed:
            message += f"; param_groups {undecayed} have weight_decay=0, and their tensors may be decayed all the same"
        out.append(Finding("warning" if undecayed else "info", "unread-decay-setting", message,
                           f"{measure}; set the setting to 0 in groups meant to get no decay"))
    return out


def _unread_findings(view: _View) -> list[Finding]:
    """A weight_decay set in the groups of an optimizer whose step never reads it (torch's Rprop): the decay the
    user configured is silently not applied (the tensors are audited as undecayed)."""
    if view.mode is not None or view.stepper is None or view.stepper.decay != "none":
        return []
    unread = [(i, g.settings["weight_decay"]) for i, g in enumerate(view.groups)
              if g.decay == "none" and _nonzero_number(g.settings.get("weight_decay"))]
    if not unread:
        return []
    name = view.stepper.name
    shown = ", ".join(f"param_groups[{i}] (weight_decay={v:g})" for i, v in unread)
    return [Finding("warning", "unread-weight-decay",
                    f"{name}'s step never reads weight_decay, set in {shown}: their tensors get no weight decay at all",
                    f"wrap it in decaykit.WeightDecay({name}(...), mode='lr_coupled'), which applies λ beside its step, "
                    "or set weight_decay=0 to say no decay is meant")]


def _unknown_groups(view: _View) -> list[int]:
    """The decaying groups whose weight_decay does what decaykit does not know."""
    return [i for i, g in enumerate(view.groups) if g.decay == "unknown" and g.weight_decay > 0]


def _bare_name(view: _View) -> str:
    """The optimizer's class name, without what the view adds ("(inside ...)", "(state_dict)")."""
    return view.name.partition(" (")[0]


def _nonzero_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value != 0


def _convention_findings(view: _View) -> list[Finding]:
    """Coupled L2 in front of an adaptive denominator, in any decaying group: the decay that is almost never meant."""
    stepper = view.stepper
    coupled = [i for i, g in enumerate(view.groups) if g.decay == "coupled" and g.weight_decay > 0]
    if stepper is None or not stepper.adaptive or not coupled:
        return []
    where = ", ".join(f"param_groups[{i}] (weight_decay={view.groups[i].weight_decay:g})" for i in coupled)
    if view.mode is not None:
        how = (f"decaykit.WeightDecay in mode 'coupled_l2' adds λθ to the gradient (coupled L2) of {where}, "
               f"which {stepper.name}'s adaptive denominator rescales")
        fix = (f"build the engine with a decoupled mode, WeightDecay(..., mode='lr_coupled') (or "
               f"{', '.join(repr(m) for m in DECOUPLED_MODES if m != 'lr_coupled')}): θ then shrinks beside {stepper.name}'s step")
    else:
        how = f"{stepper.name} adds λθ to the gradient (coupled L2) in {where}, which its adaptive denominator rescales"
        if stepper.decay == "flag":
            groups = ", ".join(f"param_groups[{i}]" for i in coupled)
            fix = (f"set decoupled_weight_decay=True in {groups} (torch.optim.AdamW's default), "
                   f"or wrap the optimizer in decaykit.WeightDecay")
        else:
            fix = _wrap_fix(stepper.name)
    return [Finding("warning", "coupled-adaptive",
                    f"{how}, so coordinates with large gradients are barely decayed; this is almost never what is meant",
                    fix)]


def _wrap_fix(name: str) -> str:
    """The fix for coupled L2 through the adaptive denominator of an optimizer with no decoupled flag."""
    return (f"wrap it in decaykit.WeightDecay({name}(...), mode='lr_coupled'), which switches its own decay off and "
            "shrinks θ beside its step, or use torch.optim.AdamW")


def _overshooting(view: _View) -> dict[int, tuple[Expectation, float | torch.Tensor, float]]:
    """The groups whose decay factor per step, as the settings fix it, is <= 0: index -> (expectation, factor,
    its least value)."""
    out = {}
    for i, group in enumerate(view.groups):
        factor = group.expect.factor() if group.expect is not None else None
        if factor is None:
            continue
        worst = float(factor.min()) if isinstance(factor, torch.Tensor) else float(factor)
        if worst <= 0:
            out[i] = (group.expect, factor, worst)
    return out


def _overshoot_findings(view: _View, expected: Plan) -> list[Finding]:
    """A decay whose factor per step is <= 0 (lr·λ >= 1 in torch's AdamW and SGD): each such step sends θ through
    0, or zeroes it at exactly 0, instead of shrinking it. The factor is the one the probe expects
    (:meth:`decaykit.probe.expectations.Expectation.factor`), at the lr the groups hold now."""
    names = {id(d.param): d.name for d in expected}
    where, params = [], []
    for i, (e, factor, worst) in _overshooting(view).items():
        how = e.source
        if e.kind == "coupled":  # through SGD's plain step: the same factor as decoupled decay
            how += f", lr={e.lr:g}: a step with no momentum carried over moves θ by −lr·λθ" + (
                f"·{e.l2_step:g} (nesterov)" if e.l2_step != 1 else "")
        shown = f"{rate_text(factor)} (down to {worst:.4g})" if isinstance(factor, torch.Tensor) else f"{worst:.4g}"
        where.append(f"param_groups[{i}] multiplies θ by {shown} per step ({how})")
        held = [names.get(id(p), f"group{i}:{tuple(p.shape)}") for p in view.groups[i].params]
        if isinstance(factor, torch.Tensor):  # per stacked model: the members it flips, as the probe names them
            held = [f"{n}[{k}]" for n in held for k in (factor.flatten() <= 0).nonzero().flatten().tolist()]
        params += held
    if not where:
        return []
    return [Finding(
        "error", "decay-overshoots",
        f"the decay overshoots: {'; '.join(where)}. A factor <= 0 is no decay: each such step sends θ through 0 (or "
        "zeroes it) instead of shrinking it",
        "lower weight_decay or lr until the decay per step is far below 1 (torch AdamW at its usual lr 1e-3 and λ "
        "0.01 .. 0.1: lr·λ = 1e-5 .. 1e-4); a λ meant for another convention is carried over by decaykit.convert",
        tuple(params))]


def _aliased_findings(view: _View, expected: Plan) -> list[Finding]:
    """Distinct tensors of the optimizer whose values share memory (tied through ``.data``, a Parameter made from a
    view of another): torch steps each, so the shared values are updated and decayed once per alias."""
    names = {id(d.param): d.name for d in expected}
    held = {id(p): (i, p) for i, g in enumerate(view.groups) for p in g.params}
    aliased: dict[str, None] = {}
    for pair in sharing_memory(p for _, p in held.values()):
        for pid in pair:
            i, p = held[pid]
            aliased[names.get(pid, f"param_groups[{i}]:{tuple(p.shape)}")] = None
    if not aliased:
        return []
    return [Finding("error", "aliased",
                    f"{len(aliased)} tensors of the optimizer share memory with another one (tied through .data, or a "
                    "Parameter made from a view of another): torch steps each on its own, so the shared values are "
                    "updated, and decayed, once per alias at every step (θ·(1 − lr·λ)² for two)",
                    "tie the modules' parameters themselves (head.weight = embedding.weight), not their .data, so the "
                    "model and the optimizer hold one tensor", tuple(aliased))]


def _rounding_findings(view: _View, expected: Plan) -> list[Finding]:
    """Low-precision tensors whose decay apart from the update rounds back to θ (bf16 AdamW at lr 1e-3, λ 0.05): the
    decay configured never acts. Read from the tensors' values and the rate the groups set now: an error where most
    of a tensor rounds back, a warning where part does; an info where a fused kernel rounds the decay with the update
    (:mod:`~decaykit.probe.rounding`)."""
    names = {id(d.param): d.name for d in expected}
    # still agreeable (a fused kernel, or a part lost): a warning; else an error -> (name, dtype, note)
    lost: dict[bool, list[tuple[str, torch.dtype, str]]] = {True: [], False: []}
    fused: list[str] = []  # decayed in a fused kernel with the update: how much acts cannot be told
    for i, group in enumerate(view.groups):
        e = group.expect
        if e is None or e.kind not in ("decoupled", "cautious") or isinstance(e.rate, torch.Tensor):
            continue
        for p in group.params:
            said = rounded_away(p, float(e.rate))
            name = names.get(id(p), f"param_groups[{i}]:{tuple(p.shape)}")
            if said is not None and e.fused:
                fused.append(name)
            elif said is not None:
                lost[said[0]].append((name, p.dtype, said[1]))
    out = [] if not fused else [Finding(
        "info", "decay-rounded-away",
        f"{len(fused)} low-precision tensors ({', '.join(fused[:3])}{' ...' if len(fused) > 3 else ''}) are decayed "
        "inside a fused kernel at a rate whose θ·(1 − r) alone would round back to θ: the kernel rounds the decay "
        "together with the update, so how much of it acts depends on the updates (most of it where they are large, "
        "little where they are small), which the settings cannot tell",
        "measure it over real steps (a λ = 0 twin fed the same gradients), or keep fp32 master weights", tuple(fused))]
    for warning, found in lost.items():
        if found:
            shown = ", ".join(n for n, _, _ in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            first, dtype, note = found[0]
            fix = rounding_fix(dtype)
            cause = note.removeprefix("warning: ").removesuffix(f"; {fix}")
            out.append(Finding("warning" if warning else "error", "decay-rounded-away",
                               f"{len(found)} low-precision tensors ({shown}) lose their decay to rounding; {first}: "
                               f"{cause}", fix, tuple(n for n, _, _ in found)))
    return out


def _wrongly_decayed(expected: Plan, actual: Mapping[int, float], findings: list[Finding], opt_name: str) -> None:
    by_role: dict[str, list[Decision]] = {}
    for d in expected.trainable:
        if d.weight_decay == 0 and actual.get(id(d.param), 0.0) > 0:
            role = "hook" if d.source == "hook" else d.role
            by_role.setdefault(role, []).append(d)
    labels = {"norm": "normalisation-layer parameters", "hook": "parameters the model declares in no_weight_decay()",
              "bias": "biases", "scale": "per-channel scales / shifts", "embedding": "embedding tables"}
    for role, decisions in by_role.items():
        kinds = sorted({d.reason for d in decisions})
        findings.append(Finding(
            _ROLE_SEVERITY.get(role, "warning"), f"decayed-{role}" if role in labels else "decayed-excluded",
            f"{len(decisions)} {labels.get(role, 'parameters the policy excludes')} are decayed by {opt_name} "
            f"({'; '.join(kinds[:3])})",
            "build the optimizer from decaykit.param_groups(model, weight_decay) so they land in a weight_decay=0 group",
            tuple(d.name for d in decisions)))


def _policy_differences(expected: Plan, actual: Mapping[int, float], findings: list[Finding]) -> None:
    undecayed = [d.name for d in expected.trainable
                 if d.weight_decay > 0 and id(d.param) in actual and actual[id(d.param)] == 0]
    if undecayed:
        findings.append(Finding("warning", "not-decayed", f"{len(undecayed)} weight tensors the policy decays get no weight decay",
                                "check the group settings; the policy gives them weight_decay="
                                f"{expected.weight_decay:g}", tuple(undecayed)))
    differ = [f"{d.name} ({actual[id(d.param)]:g} vs {d.weight_decay:g})" for d in expected.trainable
              if d.weight_decay > 0 and actual.get(id(d.param), 0) > 0 and abs(actual[id(d.param)] - d.weight_decay) > 1e-12 * d.weight_decay]
    if differ:
        findings.append(Finding("info", "policy-difference", f"{len(differ)} tensors have a weight decay other than the policy's",
                                "fine if intended (per-layer values); otherwise rebuild the groups", tuple(differ)))


def _measured_findings(report: Any, expected: Plan, findings: list[Finding], stepper: OptimizerInfo | None,
                       overshooting: set[int]) -> None:
    """What the probe measured that the settings do not explain: a decay other than the groups' weight_decay,
    decay on tensors the policy excludes, and a decay that weight_decay=0 does not switch off.

    A frozen tensor with no .grad (``latent``) is skipped by torch's step: nothing moves it today, so none of
    these is said of it; ``frozen-in-optimizer`` says what happens once its .grad is a zero tensor.
    """
    by_name = {d.name: d for d in expected}
    stepped = [e for e in report.entries if not e.latent]
    # tensors the optimizer does not hold are already reported as "missing"; a decay that overshoots as configured
    # is decay-overshoots, and a frozen tensor decayed as configured is frozen-in-optimizer
    disagree = [e for e in stepped if not e.configured and e.kind != "missing"]
    if disagree:
        findings.append(Finding("error", "measured-mismatch",
                                f"{len(disagree)} tensors are decayed differently from what their group settings say",
                                "see the probe table: the optimizer or a wrapper changes the decay",
                                tuple(e.name for e in disagree)))
    shrinking = [e for e in stepped if e.name in by_name and by_name[e.name].weight_decay == 0
                 and isinstance(e.measured, float) and e.measured < 1.0]
    if shrinking:
        worst = min(e.measured for e in shrinking)
        findings.append(Finding("error", "measured-decay-on-excluded",
                                f"{len(shrinking)} tensors the policy excludes shrink by a factor down to {worst:.6g} per step (measured)",
                                "move them to a weight_decay=0 group", tuple(e.name for e in shrinking)))
    # a factor <= 0 the settings give is decay-overshoots already; one they do not fix (coupled L2 through an
    # adaptive step, an optimizer decaykit does not know) is measured only
    flipped = [e for e in stepped if e.group not in overshooting and e.kind not in ("none", "missing", "empty")
               and e.measured is not None and e.measured <= 0]
    if flipped:
        worst = min(e.measured for e in flipped if e.measured is not None)
        findings.append(Finding("error", "measured-decay-overshoots",
                                f"{len(flipped)} tensors are multiplied by a factor down to {worst:.4g} <= 0 by the "
                                "decay in the next step (measured, a least-squares factor per tensor): it overshoots, "
                                "sending θ through 0 instead of shrinking it",
                                "lower weight_decay or lr until the decay per step is far below 1",
                                tuple(e.name for e in flipped)))
    other = [e for e in stepped if e.other_decay is not None]
    if other:
        findings.append(_uncontrolled_finding(other, expected, stepper))


def _measured_conventions(findings: list[Finding], report: Any, view: _View) -> list[Finding]:
    """``unknown-convention`` replaced by what the probe measured, group by group: coupled L2 or a decoupled
    shrink (``measured-convention``), and coupled L2 rescaled per coordinate (an adaptive denominator) as
    ``coupled-adaptive``. Groups the step cannot tell about stay unknown."""
    unknown = next((f for f in findings if f.code == "unknown-convention"), None)
    if unknown is None:
        return findings
    groups = _unknown_groups(view)
    kinds: dict[int, set[str]] = {}
    rescaled: set[int] = set()
    for e in report.entries:
        if e.group in groups and not e.latent and e.kind not in ("missing", "empty"):
            kinds.setdefault(e.group, set()).add(e.kind if e.agrees or e.kind == "coupled" else "other")
            if e.kind == "coupled" and not e.proportional:
                rescaled.add(e.group)
    told = {i: k.pop() for i, k in kinds.items() if len(k) == 1 and next(iter(k)) in ("coupled", "decoupled")}
    name = _bare_name(view)
    out = [f for f in findings if f is not unknown]
    if told:
        how = {"coupled": "coupled L2 (λθ added to the gradient)", "decoupled": "a decoupled shrink of θ"}
        said = "; ".join(f"{how[kind]} in param_groups {[i for i in told if told[i] == kind]}"
                         for kind in ("coupled", "decoupled") if kind in told.values())
        out.append(Finding("info", "measured-convention",
                           f"decaykit has no facts on {name}; measured on a copy, its weight_decay acts as {said}",
                           "see the probe table for the rate each tensor gets"))
    if rescaled:
        where = ", ".join(f"param_groups[{i}] (weight_decay={view.groups[i].weight_decay:g})" for i in sorted(rescaled))
        out.append(Finding(
            "warning", "coupled-adaptive",
            f"{name} adds λθ to the gradient (coupled L2) in {where}, and the shrink it measures varies per coordinate: "
            "an adaptive denominator rescales it, so coordinates with large gradients are barely decayed; this is "
            "almost never what is meant", _wrap_fix(name)))
    left = [i for i in groups if i not in told]
    if left:
        out.append(dataclasses.replace(unknown, message=unknown.message.replace(
            f"param_groups {groups}", f"param_groups {left}") + "; one measured step could not tell either (see the "
            "probe table)"))
    return out


def _uncontrolled_finding(other: list[Any], expected: Plan, stepper: OptimizerInfo | None) -> Finding:
    """Tensors that move with weight_decay=0 and zero gradients (ASGD's lambd): an error where the policy excludes them."""
    by_name = {d.name: d for d in expected}
    excluded = [by_name[e.name] for e in other if e.name in by_name and not by_name[e.name].decay]
    lo, hi = min(e.other_decay for e in other), max(e.other_decay for e in other)
    how = f"shrink by a factor down to {lo:.6g}" if hi < 1 else f"change by a factor of {lo:.6g} .. {hi:.6g}"
    found = sorted({e.other_decay_setting for e in other if e.other_decay_setting})
    if stepper is not None and stepper.other_decay:
        setting: str | None = f"{stepper.name}'s {stepper.other_decay}"
    elif found:
        setting = f"the group setting {', '.join(repr(k) for k in found)} (measured: with it at 0 as well, nothing moves them)"
    else:
        setting = None
    message = (f"{len(other)} tensors {how} per step with weight_decay=0 and zero gradients "
               f"(measured): a decay under {setting or 'a setting other than weight_decay'}, which weight_decay=0 "
               "does not switch off")
    if excluded and expected.weight_decay == 0:
        message += "; the audit's weight_decay is 0, so none of them should shrink"
    elif excluded:
        message += (f"; {len(excluded)} of them are tensors the policy excludes "
                    f"({'; '.join(sorted({d.reason for d in excluded})[:3])})")
    keys = [stepper.other_decay] if stepper is not None and stepper.other_decay else found
    fix = (f"set {', '.join(f'{k}=0' for k in keys)} in their param groups, so weight_decay is their only decay"
           if keys else "find the optimizer's setting that moves them and set it to 0")
    fix += ", or train them with an optimizer whose only decay is weight_decay (AdamW, SGD) and decaykit.param_groups"
    return Finding("error" if excluded else "warning", "measured-uncontrolled-decay", message, fix,
                   tuple(e.name for e in other))
