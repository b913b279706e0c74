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
not inferred from the settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from decaykit import optimizers
from decaykit._render import Report
from decaykit.errors import DecayError
from decaykit.optimizers import OptimizerInfo
from decaykit.policy.plan import Decision, Plan, collect_params, plan

__all__ = ["COUPLED_ADAPTIVE", "AuditReport", "Finding", "audit"]

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

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def count(self, severity: str) -> int:
        return sum(f.severity == severity for f in self.findings)

    def __str__(self) -> str:
        head = (f"audit of {self.optimizer} against policy {self.policy!r} (weight_decay={self.weight_decay:g}): "
                f"{self.count('error')} errors, {self.count('warning')} warnings, {self.count('info')} notes")
        lines = [head, *(str(f) for f in self.findings), *(f"note: {n}" for n in self.notes)]
        if not self.findings:
            lines.append("no problems found")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "optimizer": self.optimizer, "policy": self.policy, "weight_decay": self.weight_decay,
                "findings": [f.to_dict() for f in self.findings], "notes": list(self.notes),
                "probe": self.probe.to_dict() if self.probe is not None else None}


@dataclass
class _Group:
    params: list[torch.Tensor]
    weight_decay: float
    settings: dict[str, Any]


def _as_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.max()) if value.numel() else 0.0
    return float(value or 0.0)


def _optimizer_view(model: nn.Module, optimizer: Any) -> tuple[str, bool, list[_Group], list[str]]:
    """(class name, decoupled?, groups, notes) for a live optimizer or a saved state_dict."""
    notes: list[str] = []
    if isinstance(optimizer, torch.optim.Optimizer):
        name = type(optimizer).__name__
        expected = optimizer.expected_decay() if callable(getattr(optimizer, "expected_decay", None)) else None
        groups = []
        for i, g in enumerate(optimizer.param_groups):
            wd = _as_float(g.get("weight_decay", 0.0))
            if expected is not None:
                wd = _as_float(g.get("weight_decay", 0.0)) if expected[i]["kind"] != "none" else 0.0
            groups.append(_Group(list(g["params"]), wd, g))
        decoupled = _is_decoupled(optimizers.info(optimizer), optimizer.param_groups[0] if optimizer.param_groups else {})
        if expected is not None:
            decoupled = all(e["kind"] != "coupled_l2" for e in expected)
        return name, decoupled, groups, notes
    if isinstance(optimizer, Mapping):
        state = optimizer.get("optimizer", optimizer) if "param_groups" not in optimizer else optimizer
        if not isinstance(state, Mapping) or "param_groups" not in state:
            raise DecayError(
                "optimizer must be a torch.optim.Optimizer or an optimizer state_dict (a dict with "
                "'param_groups', or a checkpoint dict with key 'optimizer')"
            )
        return _from_state_dict(model, state, notes)
    raise DecayError(f"optimizer must be a torch.optim.Optimizer or its state_dict, got {type(optimizer).__name__}")


def _is_decoupled(facts: OptimizerInfo | None, group: Mapping[str, Any]) -> bool:
    """Whether the group's weight_decay is decoupled: the registry's convention, else the group's flag."""
    if facts is not None:
        return facts.decay_in(group) == "decoupled"
    return bool(group.get("decoupled_weight_decay", False))


def _from_state_dict(model: nn.Module, state: Mapping[str, Any], notes: list[str]) -> tuple[str, bool, list[_Group], list[str]]:
    by_name: dict[str, torch.Tensor] = {}
    for infos in collect_params(model).values():
        for info in infos:
            by_name[info.name] = info.param
    ordered = list(model.parameters())
    groups: list[_Group] = []
    first = state["param_groups"][0] if state["param_groups"] else {}
    for g in state["param_groups"]:
        names = g.get("param_names")
        if names is not None:
            from decaykit.policy.names import canonical_name

            missing = [n for n in names if canonical_name(n) not in by_name]
            if missing:
                raise DecayError(
                    f"the saved optimizer names parameters the model does not have ({', '.join(missing[:3])}); "
                    "pass the same model architecture the checkpoint was trained with"
                )
            params = [by_name[canonical_name(n)] for n in names]
        else:
            try:
                params = [ordered[int(i)] for i in g["params"]]
            except IndexError:
                raise DecayError(
                    "the saved optimizer holds more parameters than the model; pass the model it was trained with"
                ) from None
        groups.append(_Group(params, _as_float(g.get("weight_decay", 0.0)), dict(g)))
    if any("param_names" not in g for g in state["param_groups"]):
        notes.append("the saved param_groups carry no param_names, so indices were mapped to model.parameters() "
                     "order; that is only right if the optimizer was built from model.parameters()")
    facts = optimizers.from_settings(first) or _older_settings(first)
    name = facts.name if facts is not None else "optimizer"
    notes.append(f"read from a state_dict; optimizer class inferred as {name} from its settings")
    return f"{name} (state_dict)", _is_decoupled(facts, first), groups, notes


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
    """
    if not isinstance(model, nn.Module):
        raise DecayError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    opt_name, decoupled, groups, notes = _optimizer_view(model, optimizer)
    lam = weight_decay if weight_decay is not None else max((g.weight_decay for g in groups), default=0.0)
    expected = plan(model, lam, policy=policy, **plan_options)
    held = _Membership.of(groups, {id(d.param): d for d in expected})
    findings: list[Finding] = []
    _wrongly_decayed(expected, held.actual, findings, opt_name)
    _policy_differences(expected, held.actual, findings)
    findings += _membership_findings(expected, held, decoupled)
    findings += _convention_findings(opt_name, decoupled, groups)
    findings += [Finding("warning", "tied-conflict", str(conflict),
                         "pass tied='decay' / 'no_decay' or a rule naming the tensor to make the choice explicit",
                         conflict.names) for conflict in expected.conflicts]
    report = AuditReport(findings, opt_name, expected.policy, lam, notes=notes)
    if measure:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise DecayError("measure=True needs a live optimizer, not a state_dict: build it, load the state, then audit")
        from decaykit.probe.probe import probe

        report.probe = probe(optimizer, model=model)
        _measured_findings(report.probe, expected, findings)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    findings.sort(key=lambda f: order[f.severity])
    return report


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


def _membership_findings(expected: Plan, held: _Membership, decoupled: bool) -> list[Finding]:
    """Tensors missing from the optimizer, frozen inside it, held twice, or not the model's."""
    out = []
    missing = [d.name for d in expected.trainable if id(d.param) not in held.seen]
    if missing:
        out.append(Finding("error", "missing", f"{len(missing)} trainable parameters are not in the optimizer and will never be updated",
                           "build the optimizer from decaykit.param_groups(model, ...) or add them with add_param_group", tuple(missing)))
    frozen = [d.name for d in expected if not d.trainable and id(d.param) in held.seen]
    if frozen:
        decayed_frozen = [d.name for d in expected if not d.trainable and held.actual.get(id(d.param), 0.0) > 0]
        out.append(Finding(
            "error" if decayed_frozen and decoupled else "warning", "frozen-in-optimizer",
            f"{len(frozen)} frozen parameters (requires_grad=False) are in the optimizer"
            + (f"; {len(decayed_frozen)} have weight_decay > 0 and shrink at every step once their grad is a zero tensor "
               "(zero_grad(set_to_none=False), diffusers #1009)" if decayed_frozen else ""),
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


def _convention_findings(opt_name: str, decoupled: bool, groups: list[_Group]) -> list[Finding]:
    """Coupled L2 in front of an adaptive denominator: the decay that is almost never meant."""
    base = opt_name.split(" ")[0]
    if base in COUPLED_ADAPTIVE and not decoupled and any(g.weight_decay > 0 for g in groups):
        return [Finding(
            "warning", "coupled-adaptive",
            f"{base} with weight_decay > 0 adds λθ to the gradient (coupled L2), which the adaptive denominator "
            "rescales, so coordinates with large gradients are barely decayed; this is almost never what is meant",
            "use torch.optim.AdamW (decoupled decay), or Adam(..., decoupled_weight_decay=True), or decaykit.WeightDecay")]
    return []


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


def _measured_findings(report: Any, expected: Plan, findings: list[Finding]) -> None:
    by_name = {d.name: d for d in expected}
    # tensors the optimizer does not hold are already reported as "missing"
    disagree = [e for e in report.entries if not e.agrees and e.kind != "missing"]
    if disagree:
        findings.append(Finding("error", "measured-mismatch",
                                f"{len(disagree)} tensors are decayed differently from what their group settings say",
                                "see the probe table: the optimizer or a wrapper changes the decay",
                                tuple(e.name for e in disagree)))
    shrinking = [e for e in report.entries if e.name in by_name and by_name[e.name].weight_decay == 0
                 and isinstance(e.measured, float) and e.measured < 1.0]
    if shrinking:
        worst = min(e.measured for e in shrinking)
        findings.append(Finding("error", "measured-decay-on-excluded",
                                f"{len(shrinking)} tensors the policy excludes shrink by a factor down to {worst:.6g} per step (measured)",
                                "move them to a weight_decay=0 group", tuple(e.name for e in shrinking)))

