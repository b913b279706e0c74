"""Policies: the built-in ``"decaykit"`` rule and exact replicas of the anchors' rules.

Each preset maps one parameter name to ``(role, decayed, reason)``. The replicas exist so a user
can compare (``decaykit inspect MODEL --diff hf``) and migrate without surprises; they copy the
anchors' rules as written, holes included (the README lists them):

- ``timm``: no decay if ``ndim <= 1``, the name ends ``.bias``, or it matches (fnmatch) a name
  from the top-level ``model.no_weight_decay()`` (``timm.optim.param_groups_weight_decay``);
- ``hf``: no decay inside an ``nn.LayerNorm`` or when the lower-cased name matches ``bias``,
  ``layernorm``, ``rmsnorm``, ``(^|.)norm($|.)`` or ``_norm($|.)`` (``Trainer.get_decay_parameter_names``,
  transformers 5);
- ``nanogpt``: decay iff ``p.dim() >= 2`` (``GPT.configure_optimizers``);
- ``seed``: the founding notebook's ``custom_weight_decay`` as it was meant, its ``if`` inside the
  loop: no decay if ``len(shape) == 1``, the name ends ``.bias``, or it is in the skip list
  (pass the skip list as ``exclude=``);
- ``torch``: decay everything, which is what ``torch.optim.AdamW(model.parameters(), weight_decay=...)`` does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from decaykit.errors import DecayError
from decaykit.policy.roles import ParamInfo, classify

__all__ = ["HF_FORBIDDEN_NAME_PATTERNS", "PRESETS", "Preset", "get_preset"]

HF_FORBIDDEN_NAME_PATTERNS: tuple[str, ...] = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
_HF_PATTERNS = [re.compile(p) for p in HF_FORBIDDEN_NAME_PATTERNS]

Classifier = Callable[[ParamInfo, bool], tuple[str, bool, str]]


@dataclass(frozen=True)
class Preset:
    name: str
    classify: Classifier
    hooks: str  # "all": every module's no_weight_decay()/keywords; "top": timm's top-level fnmatch; "none"
    summary: str


def _decaykit(info: ParamInfo, decay_embeddings: bool) -> tuple[str, bool, str]:
    return classify(info, decay_embeddings=decay_embeddings)


def _timm(info: ParamInfo, decay_embeddings: bool) -> tuple[str, bool, str]:
    if info.param.ndim <= 1:
        return "ndim<=1", False, "timm: ndim <= 1"
    if info.raw_name.endswith(".bias"):
        return "bias", False, "timm: name ends .bias"
    return "weight", True, "timm: ndim >= 2"


def _hf(info: ParamInfo, decay_embeddings: bool) -> tuple[str, bool, str]:
    for module in (*info.ancestors[1:], info.owner):  # the root itself is never type-checked by HF
        if isinstance(module, nn.LayerNorm):
            return "norm", False, f"hf: inside nn.LayerNorm ({type(module).__name__})"
    lowered = info.raw_name.lower()
    for pattern in _HF_PATTERNS:
        if pattern.search(lowered):
            return "name", False, f"hf: name matches {pattern.pattern!r}"
    return "weight", True, "hf: not a LayerNorm, name has no bias/norm"


def _nanogpt(info: ParamInfo, decay_embeddings: bool) -> tuple[str, bool, str]:
    if info.param.dim() >= 2:
        return "weight", True, "nanogpt: dim >= 2"
    return "ndim<2", False, "nanogpt: dim < 2"


def _seed(info: ParamInfo, decay_embeddings: bool) -> tuple[str, bool, str]:
    if len(info.param.shape) == 1:
        return "1-D", False, "seed: 1-D"
    if info.raw_name.endswith(".bias"):
        return "bias", False, "seed: name ends .bias"
    return "weight", True, "seed: not 1-D, not .bias"


def _torch(info: ParamInfo, decay_embeddings: bool) -> tuple[str, bool, str]:
    return "any", True, "torch: every parameter"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("decaykit", _decaykit, "all", "decide from the owning module and role, shape rule as fallback"),
        Preset("timm", _timm, "top", "no decay if ndim <= 1, .bias, or model.no_weight_decay()"),
        Preset("hf", _hf, "none", "HF Trainer: no decay for nn.LayerNorm and names with bias/norm"),
        Preset("nanogpt", _nanogpt, "none", "decay iff dim >= 2"),
        Preset("seed", _seed, "none", "the founding notebook's rule, bug fixed: 1-D, .bias, skip list"),
        Preset("torch", _torch, "none", "decay every parameter (a plain torch optimizer)"),
    )
}


def get_preset(policy: str | Preset) -> Preset:
    if isinstance(policy, Preset):
        return policy
    if not isinstance(policy, str) or policy not in PRESETS:
        raise DecayError(f"unknown policy {policy!r}; choose one of: {', '.join(PRESETS)}", argument="policy")
    return PRESETS[policy]
