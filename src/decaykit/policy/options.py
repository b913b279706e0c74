"""The policy as one value: which preset decides, and the user's overrides, validated once.

>>> p = Policy.of("timm", exclude="head.*")
>>> p
Policy(preset='timm', rules=(), exclude=('head.*',), decay_embeddings=True, layer_decay=None, layer_of=None, tied='first', strict=False)
>>> p == Policy.of({"policy": "timm", "exclude": ["head.*"]}) == Policy(preset="timm", exclude=("head.*",))
True
>>> p.describe()
'{"exclude": ["head.*"], "policy": "timm"}'

Everything users pass today as the policy (a preset name, a mapping of options, the keyword
arguments of :func:`decaykit.plan`) becomes a :class:`Policy` through :meth:`Policy.of`, so
every entry point (``plan``, ``param_groups``, ``audit``, ``probe``, the integrations, the CLI)
reads the same settings the same way.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from decaykit._validate import check_number
from decaykit.errors import DecayError
from decaykit.policy.presets import PRESETS, Preset, get_preset
from decaykit.policy.rules import Rule, as_rules

__all__ = ["OPTIONS", "Policy", "Tied"]

Tied = Literal["first", "decay", "no_decay"]
LayerOf = Mapping[str, int] | Callable[[str], int | None]

# The keyword arguments that choose a policy, as plan() and the integrations spell them; the
# ``policy`` key names the preset (the field ``preset``), the others are the fields' names.
OPTIONS: tuple[str, ...] = ("policy", "rules", "exclude", "decay_embeddings", "layer_decay", "layer_of", "tied", "strict")


class _FrozenMapping(Mapping[str, int]):
    """A read-only, hashable copy of a ``layer_of`` mapping, so a Policy stays a value."""

    def __init__(self, items: Mapping[str, int]) -> None:
        self._items = dict(items)

    def __getitem__(self, key: str) -> int:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return repr(self._items)


@dataclass(frozen=True)
class Policy:
    """Which parameters decay, by how much: a preset and the user's overrides, validated once.

    Args:
        preset: the rule that decides from what a parameter is: ``"decaykit"`` (default), or a
            replica of an anchor's: ``"timm"``, ``"hf"``, ``"nanogpt"``, ``"seed"``, ``"torch"``.
        rules: ordered overrides, first match wins (:class:`Rule`, ``"glob:wd=0"`` strings or dicts).
        exclude: names or globs that get no decay (one string or several), the founding notebook's skip list.
        decay_embeddings: decay embedding tables (the default, as the founding notebook and timm do).
        layer_decay: BEiT-style layer-wise LR decay, ``lr_scale = layer_decay ** (max_layer - layer)``.
        layer_of: override the layer found from the structure: mapping or callable name -> layer.
        tied: how to settle different decisions for names of one tensor of equal standing:
            ``"first"`` (the first name's), ``"decay"`` or ``"no_decay"``.
        strict: a rule or exclude entry that matches nothing is an error, not a warning.

    Equal settings give equal, hashable policies: a ``layer_of`` mapping is copied into a
    read-only one, a callable ``layer_of`` compares by identity.
    """

    preset: str | Preset = "decaykit"
    rules: tuple[Rule, ...] = ()
    exclude: tuple[str, ...] = ()
    decay_embeddings: bool = True
    layer_decay: float | None = None
    layer_of: LayerOf | None = None
    tied: Tied = "first"
    strict: bool = False

    def __post_init__(self) -> None:
        preset = get_preset(self.preset)
        # a registered preset is kept by name, so Policy("timm") == Policy(PRESETS["timm"])
        self._set("preset", preset.name if PRESETS.get(preset.name) is preset else preset)
        if self.tied not in ("first", "decay", "no_decay"):
            raise DecayError(f"tied must be 'first', 'decay' or 'no_decay', got {self.tied!r}")
        if self.layer_decay is not None:
            self._set("layer_decay", check_number(self.layer_decay, "layer_decay", allow_zero=False, upper=1.0))
        self._set("rules", tuple(as_rules(self.rules)))
        self._set("exclude", _as_names(self.exclude))
        self._set("decay_embeddings", _as_bool(self.decay_embeddings, "decay_embeddings"))
        self._set("layer_of", _as_layer_of(self.layer_of))
        self._set("strict", _as_bool(self.strict, "strict"))

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # frozen: normalised once, here

    @classmethod
    def of(cls, policy: str | Preset | Policy | Mapping[str, Any] | None = None, **options: Any) -> Policy:
        """THE mapping from whatever names a policy to a :class:`Policy`.

        ``policy`` is a preset name, a :class:`Policy` (returned as is, or with ``options``
        replacing its fields), a mapping of options (``{"policy": "timm", "exclude": [...]}``: its
        ``policy`` key names the preset) or ``None`` (the default preset). ``options`` are the
        keyword arguments of :func:`decaykit.plan`: ``rules``, ``exclude``, ``decay_embeddings``,
        ``layer_decay``, ``layer_of``, ``tied``, ``strict``.

        >>> Policy.of("hf", rules=["head.*:wd=0"]) == Policy.of({"policy": "hf", "rules": ["head.*:wd=0"]})
        True
        """
        if isinstance(policy, Mapping):
            merged = {**policy, **options}
            _check_keys(merged, OPTIONS)
            return cls.of(merged.pop("policy", None), **merged)
        _check_keys(options, OPTIONS[1:])
        if isinstance(policy, Policy):
            return dataclasses.replace(policy, **options) if options else policy
        return cls(**options) if policy is None else cls(preset=policy, **options)  # type: ignore[arg-type]

    @property
    def preset_info(self) -> Preset:
        """The preset's entry in the registry (:data:`decaykit.policy.presets.PRESETS`)."""
        return get_preset(self.preset)

    @property
    def name(self) -> str:
        """The preset's name, as plans, reports and tables show it."""
        return self.preset_info.name

    def to_dict(self) -> dict[str, Any]:
        """Every setting, JSON-able, keyed as :func:`decaykit.plan`'s keyword arguments.

        ``Policy.of(p.to_dict()) == p`` whenever the rules' modules are named by strings and
        ``layer_of`` is not a callable (that one is shown as ``"module:qualname"``).
        """
        return {
            "policy": self.name,
            "rules": [_rule_value(r) for r in self.rules],
            "exclude": list(self.exclude),
            "decay_embeddings": self.decay_embeddings,
            "layer_decay": self.layer_decay,
            "layer_of": _layer_of_value(self.layer_of),
            "tied": self.tied,
            "strict": self.strict,
        }

    def describe(self) -> str:
        """The preset's name alone when nothing else is set, otherwise the settings that differ from
        the defaults, with the preset, as compact JSON (the sweep's header and store identity)."""
        settings = self.to_dict()
        changed = {k: v for k, v in settings.items() if k != "policy" and v != _DEFAULTS[k]}
        if not changed:
            return self.name
        return json.dumps({"policy": self.name, **changed}, sort_keys=True, default=repr)


def _check_keys(options: Mapping[str, Any], valid: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(valid), key=str)
    if unknown:
        hint = "; the preset is named by the key 'policy'" if "preset" in unknown else ""
        raise DecayError(
            f"unknown policy option(s) {', '.join(map(repr, unknown))}; the options are: {', '.join(valid)}{hint}"
        )


def _as_names(exclude: Iterable[str] | str | None) -> tuple[str, ...]:
    if exclude is None:
        return ()
    if isinstance(exclude, str):
        return (exclude,)
    if not isinstance(exclude, Iterable) or isinstance(exclude, (bytes, Mapping)):
        raise DecayError(f"exclude must be a name or glob, or a list of them, got {exclude!r}")
    names = tuple(exclude)
    wrong = [e for e in names if not isinstance(e, str) or not e]
    if wrong:
        raise DecayError(f"exclude must hold names or globs (non-empty strings), got {wrong[0]!r} in {list(names)!r}")
    return names


def _as_bool(value: Any, argument: str) -> bool:
    # type(value).__name__ == "bool_": numpy's booleans, which are not bool's subclass
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise DecayError(f"{argument} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def _as_layer_of(layer_of: Any) -> LayerOf | None:
    if layer_of is None or callable(layer_of) or isinstance(layer_of, _FrozenMapping):
        return layer_of
    if isinstance(layer_of, Mapping):
        return _FrozenMapping(layer_of)
    raise DecayError(
        f"layer_of must be a mapping name -> layer or a callable name -> layer (or None), got {type(layer_of).__name__}"
    )


def _rule_value(rule: Rule) -> str | dict[str, Any]:
    text = rule.text()
    if text is not None:
        return text
    values = {f.name: getattr(rule, f.name) for f in dataclasses.fields(rule) if getattr(rule, f.name) is not None}
    if isinstance(values.get("module"), type):
        values["module"] = values["module"].__name__  # matches by class name, base classes included
    return values


def _layer_of_value(layer_of: LayerOf | None) -> dict[str, int] | str | None:
    if layer_of is None or isinstance(layer_of, Mapping):
        return None if layer_of is None else dict(layer_of)
    return f"{getattr(layer_of, '__module__', '?')}:{getattr(layer_of, '__qualname__', type(layer_of).__name__)}"


_DEFAULTS = Policy().to_dict()
