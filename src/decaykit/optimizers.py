"""What decaykit knows about each optimizer class, in one registry every other module asks.

>>> import torch
>>> from decaykit import optimizers
>>> entry = optimizers.info(torch.optim.Adafactor)
>>> entry.decay, entry.convention, entry.engine
('decoupled', 'lr_coupled', 'inner')
>>> optimizers.info("adam").decay_in({"decoupled_weight_decay": True})
'decoupled'

One frozen :class:`OptimizerInfo` per class: every optimizer in ``torch.optim`` and the
third-party classes decaykit names (Lion, AdamC, Dion, HF's Adafactor, Composer's decoupled
optimizers). The engine (:class:`decaykit.WeightDecay`), the probe's expectations, the audit, the
CLI, :func:`decaykit.verify` and :func:`decaykit.convert` read their facts from here, and
``tests/test_optimizers.py`` measures every torch entry against torch itself.

Two conventions share the name "weight decay" (Loshchilov & Hutter 2019):

- ``coupled``: g ← g + λθ, an L2 penalty whose gradient then goes wherever the gradient goes;
- ``decoupled``: θ ← θ(1 − η·λ) next to the update, η the group's ``lr`` (torch ``AdamW``).

Matching: a ``torch.optim`` entry matches its exact class only (a subclass may override
``step()``); a third-party entry matches a class of its name from its own package (the first part
of :attr:`OptimizerInfo.module`), so that package is never imported and another package's class of
the same name (pytorch_optimizer's ``Lion``, whose decay can be coupled) gets no facts it lacks.

A training framework may hand back its own wrapper around the optimizer (the HF Trainer's
``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``): :func:`unwrap` finds the optimizer
inside, whose class and groups the facts are about.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from decaykit.errors import DecayError

__all__ = ["DECAY_KINDS", "ENGINE_KINDS", "REGISTRY", "WRAPPERS", "OptimizerInfo", "by_cli_name", "cli_choices",
           "from_settings", "info", "sharding_wrapper", "sharing_wrapper", "unwrap", "wrapper_name"]

_TORCH = "torch.optim"
#: values of :attr:`OptimizerInfo.decay`
DECAY_KINDS = ("coupled", "decoupled", "flag", "none", "unknown")
#: values of :attr:`OptimizerInfo.engine`
ENGINE_KINDS = ("inner", "outside", "refused")


@dataclass(frozen=True)
class OptimizerInfo:
    """The weight-decay facts of one optimizer class.

    Attributes:
        name: the class name (``"AdamW"``).
        module: where the class lives: ``"torch.optim"``, or the third-party module; a class matches a
            third-party entry when its name is :attr:`name` and its module is in that package.
        decay: what its ``weight_decay`` does: ``"coupled"`` (g ← g + λθ), ``"decoupled"``
            (θ ← θ(1 − η·λ), or the rate ``convention`` names), ``"flag"`` (chosen per group by
            ``decoupled_weight_decay``), ``"none"`` (no ``weight_decay`` setting) or ``"unknown"``.
        flag_default: for ``decay="flag"``, whether a group without the key decays decoupled.
        cli_name: the lower-case ``--optimizer`` name the CLI builds it by, if it can.
        adaptive: its update divides by a running gradient statistic (√v̂, an RMS), so a coupled
            λθ is rescaled per coordinate: the audit's ``coupled-adaptive`` warning.
        first_moment_sign: its update has the sign of the first moment m_t it stores as
            ``exp_avg`` (m_t = β1·m_{t−1} + (1 − β1)·g_t): the engine's one-pass cautious decay.
        engine: how :class:`decaykit.WeightDecay` drives it: ``"inner"`` (its own
            ``weight_decay``, and flag, set for the step where the mode matches its convention),
            ``"outside"`` (its decay switched off, the engine decays around its step) or ``"refused"``.
        refusal: why the engine refuses it, with the fix.
        convention: the :mod:`decaykit.convert` convention its ``weight_decay`` follows by default
            (``"lr_coupled"`` for θ(1 − η·λ)); None where none applies.
        other_decay: the group setting of a second decay, one that ``weight_decay=0`` does not switch
            off (ASGD's ``lambd``: θ ← θ(1 − lambd·η_t) at every step, norms and biases included);
            "" where there is none. The audit's ``measured-uncontrolled-decay`` names it. An entry with
            one has no momentum: its step with zero gradients and weight_decay=0 moves θ by that decay
            alone, whatever its state, which is how the probe measures it at any step.
        evidence: how the facts were established.
    """

    name: str
    module: str = _TORCH
    decay: str = "unknown"
    flag_default: bool = False
    cli_name: str | None = None
    adaptive: bool = False
    first_moment_sign: bool = False
    engine: str = "outside"
    refusal: str = ""
    convention: str | None = None
    other_decay: str = ""
    evidence: str = ""

    def __post_init__(self) -> None:
        if self.decay not in DECAY_KINDS or self.engine not in ENGINE_KINDS:
            raise DecayError(f"{self.name}: decay must be one of {DECAY_KINDS} and engine one of {ENGINE_KINDS}")
        if (self.engine == "refused") != bool(self.refusal):
            raise DecayError(f"{self.name}: a refusal reason goes with engine='refused', and only with it")
        # the engine's inner path and cautious fast path rely on torch's exact kernels
        if self.module != _TORCH and (self.engine == "inner" or self.first_moment_sign):
            raise DecayError(f"{self.name}: only torch.optim classes can have engine='inner' or first_moment_sign")

    @property
    def key(self) -> str:
        """Its key in :data:`REGISTRY`: the class name for ``torch.optim``, else ``module.name``."""
        return self.name if self.module == _TORCH else f"{self.module}.{self.name}"

    def torch_class(self) -> type | None:
        """The ``torch.optim`` class, or None (a third-party entry, or a class this torch lacks)."""
        return getattr(torch.optim, self.name, None) if self.module == _TORCH else None

    def decay_in(self, group: Mapping[str, Any] | None = None) -> str:
        """The convention of ``weight_decay`` in ``group``: ``"flag"`` resolved by the group's
        ``decoupled_weight_decay`` (default :attr:`flag_default`) to ``"decoupled"`` or ``"coupled"``."""
        if self.decay != "flag":
            return self.decay
        return "decoupled" if (group or {}).get("decoupled_weight_decay", self.flag_default) else "coupled"


_TORCH_DOC = "torch.optim source: where weight_decay enters the step; re-measured by tests/test_optimizers.py"
_ZERO_GRAD = ("measured on torch 2.13: zero gradients, weight_decay 0.5 and 2.0, lr 0.01 and 0.1, 3 steps: every "
              "step θ_t/θ_(t-1) = 1 − lr·λ exactly (1.0 with λ = 0); the step reads the group's raw lr, not ")
_LBFGS = ("LBFGS re-evaluates the closure many times inside one step, so there is no single update to decay "
          "around; add 0.5 * weight_decay * sum(p.pow(2).sum() for p in params) to the loss instead")
_SPARSE = ("SparseAdam updates only the rows present in a sparse gradient, and a decay would touch every row at "
           "every step; use a dense optimizer or add an L2 penalty on the looked-up rows to the loss")


def _torch(name: str, decay: str, cli: str | None = None, **facts: Any) -> OptimizerInfo:
    engine = facts.pop("engine", "inner" if decay in ("coupled", "decoupled", "flag") else "outside")
    return OptimizerInfo(name, _TORCH, decay, cli_name=cli, engine=engine, evidence=facts.pop("evidence", _TORCH_DOC),
                         **facts)


_ENTRIES = (
    _torch("SGD", "coupled", "sgd", convention="sgd_l2"),
    _torch("Adam", "flag", "adam", adaptive=True, first_moment_sign=True, convention="adam_l2"),
    _torch("AdamW", "flag", "adamw", flag_default=True, adaptive=True, first_moment_sign=True, convention="lr_coupled"),
    # NAdam's update mixes g_t and m_t (see decaykit.engine.cautious): its sign is neither's
    _torch("NAdam", "flag", "nadam", adaptive=True),
    _torch("RAdam", "flag", "radam", adaptive=True, first_moment_sign=True),
    _torch("Adamax", "coupled", "adamax", adaptive=True, first_moment_sign=True),
    _torch("Adagrad", "coupled", "adagrad", adaptive=True),
    _torch("Adadelta", "coupled", "adadelta", adaptive=True),
    _torch("RMSprop", "coupled", "rmsprop", adaptive=True),
    # ASGD's own shrink by (1 − lambd·η_t) is not its weight_decay, which is plain L2
    _torch("ASGD", "coupled", "asgd", other_decay="lambd"),
    _torch("Adafactor", "decoupled", "adafactor", adaptive=True, convention="lr_coupled",
           evidence=_ZERO_GRAD + "its relative step size min(lr, 1/√t)"),
    # Muon orthogonalises its momentum (Newton–Schulz) rather than dividing by a statistic; 2-D parameters only
    _torch("Muon", "decoupled", convention="lr_coupled",
           evidence=_ZERO_GRAD + "the shape-adjusted lr of adjust_lr_fn; 2-D parameters"),
    _torch("Rprop", "none"),
    _torch("LBFGS", "none", engine="refused", refusal=_LBFGS),
    _torch("SparseAdam", "none", adaptive=True, engine="refused", refusal=_SPARSE),
    OptimizerInfo("Lion", "lion_pytorch", "decoupled", convention="lr_coupled",
                  evidence="lion_pytorch update_fn: p.mul_(1 - lr * wd) before the sign update; timm's Lion "
                  "alike unless corrected_weight_decay=True"),
    OptimizerInfo("AdamC", "heavyball", "decoupled", adaptive=True, convention="corrected",
                  evidence="Defazio 2025: θ ← θ(1 − (η_t²/η_max)·λ)"),
    OptimizerInfo("Dion", "dion", "decoupled", convention="lr_coupled",
                  evidence="microsoft/dion dion_update: X.mul_(1 - weight_decay * lr) with the unscaled lr"),
    OptimizerInfo("Adafactor", "transformers.optimization", "decoupled", adaptive=True,
                  evidence="transformers Adafactor.step: p ← p − λ·lr·p with lr its own step size (relative_step: "
                  "from the step count, scale_parameter: times the tensor's RMS), so no convention fixes the rate"),
    OptimizerInfo("DecoupledAdamW", "composer.optim", "decoupled", adaptive=True, convention="lr_independent",
                  evidence="composer DecoupledAdamW: θ ← θ(1 − (lr/initial_lr)·λ)"),
    OptimizerInfo("DecoupledSGDW", "composer.optim", "decoupled", convention="lr_independent",
                  evidence="composer DecoupledSGDW: θ ← θ(1 − (lr/initial_lr)·λ)"),
)

#: every entry by :attr:`OptimizerInfo.key`
REGISTRY: Mapping[str, OptimizerInfo] = MappingProxyType({e.key: e for e in _ENTRIES})
_THIRD_PARTY = {e.name: e for e in _ENTRIES if e.module != _TORCH}
_BY_CLI = {e.cli_name: e for e in _ENTRIES if e.cli_name}


@functools.cache
def _by_class() -> dict[type, OptimizerInfo]:
    return {cls: e for e in _ENTRIES if (cls := e.torch_class()) is not None}


def info(optimizer: Any) -> OptimizerInfo | None:
    """The entry for an optimizer, its class, or a name (registry key, class name, CLI name); None if unknown.

    A ``torch.optim`` entry matches its exact class; a subclass (which may override ``step()``)
    matches nothing unless a third-party entry has its name.
    """
    if isinstance(optimizer, str):
        found = REGISTRY.get(optimizer) or _THIRD_PARTY.get(optimizer) or _BY_CLI.get(optimizer)
        if found is None:
            found = next((e for e in _ENTRIES if e.name.lower() == optimizer.lower()), None)
        return found
    cls = optimizer if isinstance(optimizer, type) else type(optimizer)
    found = _by_class().get(cls)
    if found is None:
        found = _THIRD_PARTY.get(cls.__name__)
        if found is not None and _package(cls.__module__) != _package(found.module):
            found = None
    return found


def _package(module: str) -> str:
    return module.partition(".")[0]


def cli_choices() -> tuple[str, ...]:
    """The ``--optimizer`` names the CLI can build, sorted."""
    return tuple(sorted(_BY_CLI))


def by_cli_name(name: str) -> OptimizerInfo:
    """The entry a CLI name stands for (``"adamw"``); a :class:`DecayError` listing the names otherwise."""
    found = _BY_CLI.get(name)
    if found is None or found.torch_class() is None:
        raise DecayError(f"optimizer must be one of {', '.join(cli_choices())}, got {name!r}")
    return found


@functools.cache
def _torch_settings() -> tuple[tuple[OptimizerInfo, frozenset[str]], ...]:
    """Each torch class's group keys, read from a throwaway instance (Muon takes 2-D parameters only)."""
    out = []
    for e in _ENTRIES:
        cls = e.torch_class()
        if cls is not None:
            out.append((e, frozenset(cls([torch.nn.Parameter(torch.zeros(2, 2))]).defaults)))
    return tuple(out)


def from_settings(group: Mapping[str, Any]) -> OptimizerInfo | None:
    """The torch class a saved param group comes from, told by its settings' keys; None if unsure.

    A class matches when all its keys are in the group and the group's other keys are no torch
    optimizer's setting (``lr_scale``, ``initial_lr`` and ``param_names`` may be there). Adam and
    AdamW share their keys: the group's ``decoupled_weight_decay`` tells them apart.
    """
    keys = set(group)
    every = frozenset().union(*(k for _, k in _torch_settings()))
    found = [e for e, k in _torch_settings() if k <= keys and not (keys - k) & every]
    if len(found) > 1:
        found = [e for e in found if e.decay_in(group) == e.decay_in()]
    return found[0] if len(found) == 1 else None


#: Wrappers that forward step() to the optimizer they hold and leave its decay as it is: the wrapper
#: class's name -> the attribute holding that optimizer. Lightning and Fabric rename the wrapper's class after
#: the optimizer inside (``LightningAdamW``, ``FabricAdamW``), so a name is looked for in the class's MRO.
#: A :class:`decaykit.WeightDecay` engine is no such wrapper: it decays by its own mode.
WRAPPERS: Mapping[str, str] = MappingProxyType({
    "AcceleratedOptimizer": "optimizer",  # accelerate; the HF Trainer's trainer.optimizer
    "LightningOptimizer": "_optimizer",  # Lightning's Trainer
    "_FabricOptimizer": "_optimizer",  # Lightning Fabric's setup() / setup_optimizers()
})


def wrapper_name(optimizer: Any, *, sharing: bool = False) -> str | None:
    """The name of the wrapper ``optimizer`` is: a :data:`WRAPPERS` name, or with ``sharing`` the class of a
    :func:`sharing_wrapper`; None when it is no wrapper."""
    known = _framework_wrapper(optimizer)
    if known is None and sharing and sharing_wrapper(optimizer) is not None:
        return type(optimizer).__name__
    return known


def _framework_wrapper(optimizer: Any) -> str | None:
    """The :data:`WRAPPERS` name in ``optimizer``'s class hierarchy, or None."""
    return next((c.__name__ for c in type(optimizer).__mro__ if c.__name__ in WRAPPERS), None)


def sharing_wrapper(optimizer: Any) -> Any:
    """The optimizer that ``optimizer`` holds and whose ``param_groups`` list it shares, or None.

    That is how wrappers that step an optimizer they were given are built (pytorch_optimizer's and
    torch_optimizer's ``Lookahead``, ``SAM``, ``OrthoGrad``): the settings of the groups, ``weight_decay``
    among them, are the inner optimizer's and act as its class makes them act. What the wrapper adds
    around that step (Lookahead's slow weights, SAM's perturbed gradient) is its own, and decaykit has
    no facts on it. decaykit's own :class:`~decaykit.WeightDecay` shares its groups too but decays by its
    own mode, so it is no such wrapper.
    """
    return _held(optimizer, lambda inner, groups: inner.param_groups is groups)


def sharding_wrapper(optimizer: Any) -> Any:
    """The optimizer that ``optimizer`` steps over this process's share of its tensors, or None.

    torch's ``ZeroRedundancyOptimizer`` keeps every group itself and builds, in ``optim``, an optimizer of
    its ``optimizer_class`` over this rank's shard, whose groups repeat its settings: ``weight_decay``
    acts as that class makes it act, on the tensors this rank holds. Read from the instance: an
    optimizer it holds with as many groups, not the same ones, each with the same settings besides its
    tensors.
    """
    return _held(optimizer, lambda inner, groups: inner.param_groups is not groups and len(inner.param_groups)
                 == len(groups) and all(map(_same_settings, inner.param_groups, groups)))


def _held(optimizer: Any, fits: Callable[[torch.optim.Optimizer, list[dict[str, Any]]], bool]) -> Any:
    """The optimizer among ``optimizer``'s attributes whose groups ``fits`` those of ``optimizer``, or None (also
    for decaykit's own optimizers, which decay by their own mode)."""
    if _package(type(optimizer).__module__) == "decaykit" or not isinstance(optimizer, torch.optim.Optimizer):
        return None
    try:
        groups = optimizer.param_groups
    except Exception:  # a wrapper whose property fails says nothing about what it holds
        return None
    for value in vars(optimizer).values():
        if value is not optimizer and isinstance(value, torch.optim.Optimizer) and fits(value, groups):
            return value
    return None


def _same_settings(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Two groups with the same settings (their tensors aside)."""
    keys = set(a) - {"params", "param_names"}
    if keys != set(b) - {"params", "param_names"}:
        return False
    for key in keys:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and torch.equal(x, y)):
                return False
        elif x != y:
            return False
    return True


def unwrap(optimizer: Any, *, sharing: bool = False) -> Any:
    """The optimizer inside any :data:`WRAPPERS` around ``optimizer`` (nested ones too), and with ``sharing``
    inside any :func:`sharing_wrapper`; ``optimizer`` itself when it is no wrapper. The facts of :func:`info`
    and what the audit reads are about that one. The probe and the monitor look through :data:`WRAPPERS`
    only: a sharing wrapper's step is more than the inner one's (Lookahead's slow weights), so they step and
    watch the wrapper itself.

    >>> import torch
    >>> adam = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))], weight_decay=0.1)
    >>> unwrap(adam) is adam
    True
    """
    seen: set[int] = set()
    while id(optimizer) not in seen:
        seen.add(id(optimizer))
        name = _framework_wrapper(optimizer)
        # read from the instance: Lightning's __getattr__ would forward a missing name to the optimizer inside
        inner = (getattr(optimizer, "__dict__", {}).get(WRAPPERS[name]) if name else
                 sharing_wrapper(optimizer) if sharing else None)
        if inner is None:
            break
        optimizer = inner
    return optimizer
