"""User rules: ordered overrides of the policy, matched by name glob, regex or module type.

Precedence, first hit wins: ``rules`` in the order given, then the ``exclude`` skip list, then
the model's ``no_weight_decay()`` / ``no_weight_decay_keywords()`` hooks, then the policy's own
decision from what the parameter is. A tensor reachable under several names (tied weights) is
matched under each of them; see :func:`decaykit.plan` for how disagreements are settled.

>>> Rule("head.*", weight_decay=0.0)
Rule('head.*', weight_decay=0.0)
>>> Rule.parse(r"re:^blocks\\.0\\.:lr_scale=0.1,mult=0.5")
Rule(regex='^blocks\\\\.0\\\\.', decay_mult=0.5, lr_scale=0.1)
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from decaykit._validate import check_number
from decaykit.errors import DecayError

__all__ = ["Rule", "as_rules"]


@dataclass(frozen=True)
class Rule:
    """Override the decision for the parameters it matches.

    Matching (all given criteria must hold):
      ``match``  a glob on the canonical name (``fnmatch``: ``head.*``, ``*.pos_embed``);
      ``regex``  a regular expression searched in the canonical name;
      ``module`` the owning module's type, or a class name (a base class's name matches too).
    Action (at least one):
      ``weight_decay`` an absolute value, which applies even to norms and biases;
      ``decay_mult``   a multiplier on what the policy would give (0 stays 0, as Megatron's ``wd_mult``);
      ``lr_scale``     a multiplier on the LR (combined with layer-wise LR decay).
    """

    match: str | None = None
    regex: str | None = None
    module: type | str | None = None
    weight_decay: float | None = None
    decay_mult: float | None = None
    lr_scale: float | None = None
    label: str | None = None  # how reasons name the rule; defaults to its matcher

    def __post_init__(self) -> None:
        if self.match is None and self.regex is None and self.module is None:
            raise DecayError("Rule needs a matcher: give match='glob', regex='...' or module=Type")
        if self.weight_decay is None and self.decay_mult is None and self.lr_scale is None:
            raise DecayError(
                f"Rule {self.describe()} sets nothing: give weight_decay=, decay_mult= or lr_scale="
            )
        if self.weight_decay is not None and self.decay_mult is not None:
            raise DecayError(
                f"Rule {self.describe()} gives both weight_decay={self.weight_decay} and "
                f"decay_mult={self.decay_mult}; they contradict: keep one"
            )
        for name in ("weight_decay", "decay_mult", "lr_scale"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_number(value, f"Rule {self.describe()}: {name}"))
        if self.regex is not None:
            try:
                object.__setattr__(self, "_compiled", re.compile(self.regex))
            except re.error as exc:
                raise DecayError(f"Rule regex {self.regex!r} is not a valid regular expression: {exc}") from None
        if self.module is not None and not isinstance(self.module, (str, type)):
            raise DecayError(f"Rule module must be a class or a class name, got {self.module!r}")

    def __repr__(self) -> str:
        parts = [repr(self.match)] if self.match is not None else []
        for f in fields(self)[1:]:
            value = getattr(self, f.name)
            if value is not None:
                shown = value.__name__ if isinstance(value, type) else value
                parts.append(f"{f.name}={shown!r}")
        return f"Rule({', '.join(parts)})"

    def describe(self) -> str:
        """Short text naming the rule in reasons and messages."""
        if self.label:
            return repr(self.label)
        bits = []
        if self.match is not None:
            bits.append(repr(self.match))
        if self.regex is not None:
            bits.append(f"re:{self.regex!r}")
        if self.module is not None:
            bits.append(f"type:{self.module if isinstance(self.module, str) else self.module.__name__}")
        return " ".join(bits)

    def text(self) -> str | None:
        """The ``MATCHER:ACTIONS`` text :meth:`parse` reads back as this rule, or ``None`` where there is
        none (a label, two matchers, a glob that would read as ``re:`` / ``type:``).

        >>> Rule("head.*", weight_decay=0.0).text()
        'head.*:wd=0'
        """
        matchers = [m for m in self.matcher() if m is not None]
        if self.label is not None or len(matchers) != 1:
            return None
        if self.match is not None:
            if self.match.startswith(("re:", "type:")):
                return None
            matcher = self.match
        elif self.regex is not None:
            matcher = f"re:{self.regex}"
        else:
            matcher = f"type:{self.module if isinstance(self.module, str) else self.module.__name__}"  # type: ignore[union-attr]
        actions = [f"{key}={_number(value)}" for key, value in zip(("wd", "mult", "lr_scale"), self.action())
                   if value is not None]
        text = f"{matcher}:{','.join(actions)}"
        try:  # a glob with ':' and '=' in it could read as more actions
            back = Rule.parse(text)
        except DecayError:
            return None
        return text if back.describe() == self.describe() and back.action() == self.action() else None

    def matcher(self) -> tuple[Any, ...]:
        return (self.match, self.regex, self.module)

    def action(self) -> tuple[Any, ...]:
        return (self.weight_decay, self.decay_mult, self.lr_scale)

    def matches(self, name: str, owner: nn.Module) -> bool:
        if self.match is not None and not fnmatch.fnmatchcase(name, self.match):
            return False
        if self.regex is not None and not self._compiled.search(name):  # type: ignore[attr-defined]
            return False
        if self.module is not None:
            if isinstance(self.module, str):
                return any(cls.__name__ == self.module for cls in type(owner).__mro__)
            return isinstance(owner, self.module)
        return True

    @classmethod
    def parse(cls, text: str) -> Rule:
        """Build a rule from the CLI's ``MATCHER:ACTIONS`` text.

        MATCHER is a glob, ``re:REGEX`` or ``type:ClassName``; ACTIONS are ``wd=X`` (or
        ``weight_decay=X``), ``mult=X`` (``decay_mult``) and ``lr_scale=X`` (or ``lr=X``), separated by
        commas or colons: ``0.*:wd=0,lr_scale=2`` and ``0.*:wd=0:lr_scale=2`` are the same rule, both
        actions applied. Trailing ``:``-fields that read as actions are actions, the rest is the matcher
        (so a regex may hold ``:``). ``head.*:wd=0`` turns decay off for the head; a bare glob means
        ``wd=0``. Anything else (an unknown key, a repeated key, a value that is not a number, an
        empty matcher) is refused with a :class:`DecayError`, never dropped.
        """
        if not isinstance(text, str) or not text.strip():
            raise DecayError(f"rule must be a non-empty string like 'head.*:wd=0', got {text!r}")
        matcher, actions = _split_rule(text)
        kwargs: dict[str, Any] = {}
        if matcher.startswith("re:"):
            kwargs["regex"] = matcher[3:]
        elif matcher.startswith("type:"):
            kwargs["module"] = matcher[5:].strip()
        else:
            kwargs["match"] = matcher
        if not matcher or kwargs.get("module") == "":
            raise DecayError(f"rule {text!r} has no matcher before its actions; write 'GLOB:wd=X', 're:REGEX:wd=X' "
                             "or 'type:ClassName:wd=X'")
        for key, value in actions or [("wd", "0")]:
            field = _ACTION_KEYS[key]
            if field in kwargs:
                raise DecayError(f"rule {text!r} sets {field} twice; give each action once")
            try:
                kwargs[field] = float(value)
            except ValueError:
                raise DecayError(f"rule {text!r}: {key} must be a number, got {value!r}") from None
        return cls(**kwargs)


_ACTION_KEYS = {"wd": "weight_decay", "weight_decay": "weight_decay", "mult": "decay_mult", "decay_mult": "decay_mult",
                "lr_scale": "lr_scale", "lr": "lr_scale"}


def _actions(field: str) -> list[tuple[str, str]] | None:
    """``key=value`` items of one ``:``-field, or None when the field is not a list of known actions."""
    items = [item.strip() for item in field.split(",") if item.strip()]
    if not items:
        return None
    pairs = [tuple(part.strip() for part in item.partition("=")[::2]) for item in items]
    if all(item.partition("=")[1] and key in _ACTION_KEYS for item, (key, _) in zip(items, pairs)):
        return pairs  # type: ignore[return-value]
    return None


def _split_rule(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(matcher, actions) of ``MATCHER:ACTIONS``: trailing ``:``-fields are actions while they read as actions.

    The last field decides whether there are actions at all: with an ``=`` in it, it must be one.
    """
    fields = text.split(":")
    last = fields[-1]
    if len(fields) == 1 and _actions(last) is not None:
        raise DecayError(f"rule {text!r} has actions but no matcher; write 'GLOB:{text.strip()}'")
    if len(fields) > 1 and not last.strip():
        raise DecayError(f"rule {text!r} ends with ':' and no action; write 'MATCHER:wd=X' (or the bare glob for wd=0)")
    if len(fields) == 1 or "=" not in last:
        return text.strip(), []
    if _actions(last) is None:
        bad = [i.strip() for i in last.split(",")
               if i.strip() and (not i.partition("=")[1] or i.partition("=")[0].strip() not in _ACTION_KEYS)]
        raise DecayError(
            f"rule {text!r}: cannot read {bad[0] if bad else last!r}; actions are wd=X, mult=X or lr_scale=X, "
            "separated by ',' or ':' (for example 'head.*:wd=0' or 'type:Embedding:mult=0.1,lr_scale=2')"
        )
    actions: list[tuple[str, str]] = []
    while len(fields) > 1 and (found := _actions(fields[-1])) is not None:
        actions = found + actions
        fields.pop()
    return ":".join(fields).strip(), actions


def _number(value: float) -> str:
    # the shortest text float() reads back exactly: 0 for 0.0, 0.1, 1e-05
    return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)


def as_rules(rules: Iterable[Rule | str | Mapping[str, Any]] | None, argument: str = "rules") -> list[Rule]:
    """Accept Rule objects, ``MATCHER:ACTIONS`` strings and dicts of Rule's fields."""
    if rules is None:
        return []
    if isinstance(rules, (str, Rule, Mapping)):
        rules = [rules]  # type: ignore[list-item]
    elif not isinstance(rules, Iterable):
        raise DecayError(f"{argument} must be a rule or a list of rules (Rule, 'glob:wd=X' string or dict), "
                         f"got {rules!r} ({type(rules).__name__})")
    out: list[Rule] = []
    for i, rule in enumerate(rules):
        if isinstance(rule, Rule):
            out.append(rule)
        elif isinstance(rule, str):
            out.append(Rule.parse(rule))
        elif isinstance(rule, Mapping):
            try:
                out.append(Rule(**rule))
            except TypeError as exc:
                names = ", ".join(f.name for f in fields(Rule))
                raise DecayError(f"{argument}[{i}] has an unknown key ({exc}); a rule's keys are: {names}") from None
        else:
            raise DecayError(f"{argument}[{i}] must be a Rule, a 'glob:wd=X' string or a dict, got {rule!r}")
    seen: dict[tuple[Any, ...], int] = {}
    for i, rule in enumerate(out):
        j = seen.setdefault(rule.matcher(), i)
        if j != i and out[j].action() != rule.action():
            raise DecayError(
                f"{argument}[{i}] {rule!r} contradicts {argument}[{j}] {out[j]!r}: same matcher, other "
                f"settings, and the first one always wins; delete one of them"
            )
    return out
