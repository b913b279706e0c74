"""What a parameter *is*: found from how the model uses it, else from its owning module, then its shape.

With an example input (``plan(model, wd, example_inputs=...)``) the role comes from the traced
forward pass (:mod:`decaykit.policy.usage`): a matrix operand is a weight, a gain a norm, an
addend a bias, whatever the owner is called and whatever the shape. Without one, or for a
tensor the pass never reached, the structural rules below decide, and a traced plan's reason
says the decision was structural. Where the forward tests a value and the pass saw a tensor only
on one answer (the other saw it used otherwise, or not at all) and the other answer would decide
it differently, the reason names the test: ``..., where 'torch.rand(1) > p' (<file>:<line>) is true``.

This is the ``"decaykit"`` policy's source of truth. Names are never pattern-matched to find a
norm (HF's ``bias`` regex also hits T5's ``relative_attention_bias`` embedding, and norms called
``ln_1`` or ``attn_nw`` escape it); the owning module's class decides, and a parameter of a
module decaykit does not know falls back to a shape rule whose reason says so.

Order of the checks, first hit wins:

1. the owner is a normalisation layer (any torch norm, or a class whose name contains ``Norm``
   such as ``LlamaRMSNorm`` / ``T5LayerNorm``, for its per-channel parameters) -> ``norm``, no decay;
2. the owner is an embedding table -> ``embedding``, decayed unless ``decay_embeddings=False``;
3. the owner is a weight layer (Linear, Bilinear, Conv of any dims and transposed, HF ``Conv1D``,
   MultiheadAttention, RNN/LSTM/GRU): its ``*weight*`` tensors -> ``weight``, decayed; its
   ``*bias*`` tensors -> ``bias``, no decay;
4. any module: a tensor named like a bias (``bias``, ``in_proj_bias``, ``bias_k``, a stacked
   per-expert ``gate_up_proj_bias``, Swin's ``relative_position_bias_table``, LeViT's
   ``attention_biases``) -> ``bias``, no decay, whatever its shape: their authors exclude them;
5. any module: at most one non-singleton dimension (a (C,), (C,1,1) or (1,1,C) layer scale,
   a scalar temperature) -> ``scale``, no decay; a (1,1,C) or (C,) one may as well be a learned
   token, which a trace decays, and the reason says the shape cannot tell;
6. any module: a table named like an embedding (``pos_embed``, ``position_embeddings``) ->
   ``embedding``, following ``decay_embeddings`` like ``nn.Embedding`` tables;
7. anything else (two or more non-singleton dimensions on an unknown module) -> ``matrix``,
   decayed, with a reason that says the shape decided.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from decaykit.policy.usage import Use

__all__ = [
    "EMBEDDING_TYPES",
    "NORM_CLASS_NAME",
    "NORM_TYPES",
    "WEIGHT_CLASS_NAMES",
    "WEIGHT_TYPES",
    "ParamInfo",
    "classify",
    "classify_structure",
    "classify_use",
    "decided_by_shape",
    "is_norm_module",
    "is_per_channel",
    "module_type_name",
    "shape_str",
]

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*d, SyncBatchNorm, InstanceNorm*d, Lazy variants
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
)
# Custom norm classes in the wild: LlamaRMSNorm, T5LayerNorm, LayerNorm2d, FusedRMSNorm, ScaleNorm ...
NORM_CLASS_NAME = re.compile(r"norm(?!al(?!i))", re.IGNORECASE)  # not "Normal", yes "Normalization"
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)
WEIGHT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.modules.conv._ConvNd,
    nn.MultiheadAttention,
    nn.RNNBase,
    nn.RNNCellBase,
)
# Weight layers known by class name, so their packages need not be imported:
# transformers' GPT-2 ``Conv1D`` is a Linear whose weight is stored transposed.
WEIGHT_CLASS_NAMES: frozenset[str] = frozenset({"Conv1D"})

_BIAS_LEAF = re.compile(r"(^|_)bias(es)?($|_)")
_EMBED_LEAF = re.compile(r"embed", re.IGNORECASE)
_WEIGHT_LEAF = re.compile(r"(^|_)weight($|_)")


@dataclass(frozen=True)
class ParamInfo:
    """One name under which a tensor is reachable in the model, with its owner."""

    name: str  # canonical dotted name
    raw_name: str  # the name as ``named_parameters`` spells it (wrapper prefixes kept)
    leaf: str  # attribute name on the owner, after undoing parametrizations
    param: torch.Tensor = field(repr=False)
    owner: nn.Module = field(repr=False)
    ancestors: tuple[nn.Module, ...] = field(repr=False, default=())  # root ... owner's parent
    component: str | None = None  # ``original0`` etc. for a parametrized tensor's pieces
    use: Use | None = field(default=None, compare=False)  # what the traced forward pass saw, if traced
    traced: str = ""  # with a traced plan: why a tensor without a ``use`` was not seen ("" when not traced)
    # where the forward tested a value and the two answers saw it differently: what the other answer saw, and
    # the clause naming the test ("where 'torch.rand(1) > p' (<file>:<line>) is true")
    branch: tuple[Use | None, str] | None = field(default=None, compare=False)

    @property
    def module_type(self) -> str:
        return module_type_name(self.owner)


def module_type_name(module: nn.Module) -> str:
    """The class name a user wrote: FSDP2's ``fully_shard`` swaps in a ``FSDP<Name>`` subclass, and
    ``torch.nn.utils.parametrize`` a ``Parametrized<Name>`` one."""
    cls = type(module)
    while cls.__module__.startswith("torch.distributed.fsdp") and len(cls.__bases__) > 1:
        cls = cls.__bases__[-1]
    if cls.__module__ == "torch.nn.utils.parametrize" and cls.__name__.startswith("Parametrized") and cls.__bases__:
        cls = cls.__bases__[0]
    return cls.__name__


def shape_str(shape: tuple[int, ...] | torch.Size) -> str:
    return "(" + ",".join(str(s) for s in shape) + ")"


def is_per_channel(shape: tuple[int, ...] | torch.Size) -> bool:
    """True for tensors with at most one dimension larger than 1: (C,), (C,1,1), (1,1,C), ()."""
    return sum(1 for s in shape if s != 1) <= 1


def is_norm_module(module: nn.Module) -> bool:
    """A torch norm layer, or a class whose name (or a base class's name) says it normalises."""
    if isinstance(module, NORM_TYPES):
        return True
    return any(NORM_CLASS_NAME.search(cls.__name__) for cls in type(module).__mro__[:-2])


def _norm_rule(owner: nn.Module, leaf: str, shape: tuple[int, ...]) -> bool:
    """Whether the norm rule decides a parameter: any of a torch norm layer's, a per-channel one of a class
    whose name says it normalises; not the weight or bias of such a class that is itself a weight layer
    (TD-MPC2's ``NormedLinear(nn.Linear)``: a Linear whose output a child LayerNorm normalises), whose
    (1, F) weight of a single output is still the matrix of its map."""
    if isinstance(owner, NORM_TYPES):
        return True
    if not is_norm_module(owner) or not is_per_channel(shape):
        return False
    return not (_is_weight_layer(owner) and (_BIAS_LEAF.search(leaf) or _WEIGHT_LEAF.search(leaf)))


def _is_weight_layer(module: nn.Module) -> bool:
    return isinstance(module, WEIGHT_TYPES) or any(
        cls.__name__ in WEIGHT_CLASS_NAMES for cls in type(module).__mro__
    ) or _declares_its_map(module)


def _declares_its_map(module: nn.Module) -> bool:
    """A layer of a package decaykit does not know that says which map its ``weight`` is: it holds its sizes,
    ``in_features``/``out_features`` or ``in_channels``/``out_channels``, and its weight's first axes are
    (out, in), or (out, in / groups) for a convolution (PyG's ``Linear``, behind its MLP and most of its
    convolutions). Its weight is then a matrix, whatever its shape: a (1, F) output head included."""
    weight = module._parameters.get("weight")
    if not isinstance(weight, torch.Tensor) or isinstance(weight, nn.parameter.UninitializedParameter) or weight.ndim < 2:
        return False
    for fan_in, fan_out in (("in_features", "out_features"), ("in_channels", "out_channels")):
        n_in, n_out = getattr(module, fan_in, None), getattr(module, fan_out, None)
        if isinstance(n_in, int) and isinstance(n_out, int) and n_in > 0 and weight.shape[0] == n_out and (
                weight.shape[1] == n_in or (n_in % weight.shape[1] == 0 and n_out % (n_in // weight.shape[1]) == 0)):
            return True
    return False


def classify(info: ParamInfo, *, decay_embeddings: bool = True) -> tuple[str, bool, str]:
    """Return ``(role, decayed, reason)`` for one parameter name. See the module docstring."""
    if not info.traced:
        return classify_structure(info, decay_embeddings=decay_embeddings)
    if info.component is None and info.use is not None and info.use.kind != "other":
        role, decay, reason = classify_use(info.use, decay_embeddings=decay_embeddings)
        if info.branch is not None:  # seen one way on one answer to a test of a value: does the decision rest on it?
            other, clause = info.branch
            alternative = (classify_use(other, decay_embeddings=decay_embeddings) if other is not None and
                           other.kind != "other" else classify_structure(info, decay_embeddings=decay_embeddings))
            if alternative[1] != decay:
                return classify_use(info.use._replace(reason=f"{info.use.reason}, {clause}"),
                                    decay_embeddings=decay_embeddings)
        return role, decay, reason
    role, decay, reason = classify_structure(info, decay_embeddings=decay_embeddings)
    if info.component is not None:
        return role, decay, f"{reason} (structural: a parametrization's piece)"
    seen = info.traced if info.use is None else info.use.reason
    return role, decay, f"{reason} (structural: {seen})"


def classify_use(use: Use, *, decay_embeddings: bool = True) -> tuple[str, bool, str]:
    """``(role, decayed, reason)`` from the traced use: see :mod:`decaykit.policy.usage`."""
    role, reason = use.role, f"{use.reason} (traced)"
    if role in ("embedding", "token", "position"):
        if decay_embeddings:
            return role, True, reason
        return role, False, f"{reason} (decay_embeddings=False)"
    return role, role == "weight", reason


def decided_by_shape(info: ParamInfo) -> bool:
    """Whether the structure can only guess this tensor's role (rules 4-7: from its name or shape on
    a module decaykit does not know), so that how the model uses it should decide."""
    if info.component is not None or isinstance(info.owner, EMBEDDING_TYPES):
        return False
    if _norm_rule(info.owner, info.leaf, tuple(info.param.shape)):
        return False
    return not (_is_weight_layer(info.owner) and (_BIAS_LEAF.search(info.leaf) or _WEIGHT_LEAF.search(info.leaf)))


def _piece(info: ParamInfo) -> str | None:
    """What a piece of a parametrized weight is, from the sizes of the pieces and of the weight they make.

    weight_norm and friends split a weight into a direction of the weight's own size and a smaller
    magnitude (one per output, or one in all): ``"direction"`` and ``"magnitude"``, whatever the shape of
    the layer (a direction of Linear(16, 1) is (1, 16)). Pieces none of which is the weight's size are
    its factors (a low-rank A @ B): ``"factor"``, each a matrix of the map. None where the weight is
    itself per channel (a parametrized norm gain; a layer's weight, as Linear(16, 1)'s, is a matrix whatever
    its shape) or cannot be computed.
    """
    pieces = _pieces(info)
    try:
        with torch.no_grad():
            weight = getattr(info.owner, info.leaf)
    except Exception:  # a parametrization that cannot run here: the shape decides
        return None
    layer_weight = _is_weight_layer(info.owner) and _WEIGHT_LEAF.search(info.leaf)  # a matrix whatever its shape
    if not isinstance(weight, torch.Tensor) or not pieces or (is_per_channel(tuple(weight.shape)) and not layer_weight):
        return None
    if info.param.numel() == weight.numel():
        return "direction"
    return "magnitude" if any(p.numel() == weight.numel() for p in pieces) else "factor"


def _pieces(info: ParamInfo) -> list[torch.Tensor]:
    """The tensors a parametrized weight is made of: a ``ParametrizationList``'s ``original0``, ``original1``
    ..., or the older weight_norm's ``<name>_g`` and ``<name>_v``."""
    holder = getattr(info.owner, "parametrizations", None)
    plist = holder[info.leaf] if isinstance(holder, nn.ModuleDict) and info.leaf in holder else None
    if plist is not None:
        return [p for n, p in plist.named_parameters(recurse=False) if n.startswith("original")]
    return [p for n in (f"{info.leaf}_g", f"{info.leaf}_v") if isinstance(p := getattr(info.owner, n, None), torch.Tensor)]


def classify_structure(info: ParamInfo, *, decay_embeddings: bool = True) -> tuple[str, bool, str]:
    """``(role, decayed, reason)`` from the owning module, the name's role and the shape."""
    owner, leaf, shape = info.owner, info.leaf, tuple(info.param.shape)
    kind = info.module_type
    per_channel = is_per_channel(shape)
    if info.component is not None:
        piece = _piece(info)
        if piece == "magnitude" or (piece is None and per_channel):
            return "scale", False, f"per-channel {info.component} of parametrized {kind}.{leaf} {shape_str(shape)}"
        if piece is not None:  # the direction, or a factor of a low-rank weight
            return "weight", True, f"{info.component} of parametrized {kind}.{leaf}, its {piece} {shape_str(shape)}"
        return "weight", True, f"{info.component} of parametrized {kind}.{leaf}"
    if _norm_rule(owner, leaf, shape):
        return "norm", False, f"norm:{kind}"
    if isinstance(owner, EMBEDDING_TYPES):
        if decay_embeddings:
            return "embedding", True, f"embedding table of {kind}"
        return "embedding", False, f"embedding table of {kind} (decay_embeddings=False)"
    if _is_weight_layer(owner):
        if _BIAS_LEAF.search(leaf):
            return "bias", False, f"bias of {kind}"
        if _WEIGHT_LEAF.search(leaf):
            return "weight", True, f"weight of {kind}"
    if _BIAS_LEAF.search(leaf):
        what = "per-channel tensor" if per_channel else f"{shape_str(shape)} table"
        return "bias", False, f"bias-named {what} on {kind}"
    if per_channel:
        if len(shape) == 0 or all(s == 1 for s in shape):
            return "scale", False, f"scalar on {kind} (shape rule)"
        # a ViT's cls token is (1,1,C) too, and ResMLP's gain and shift: only its use tells them apart
        could = "a gain, a bias, a learned token..." if shape[-1] > 1 else "a gain, a bias..."
        return "scale", False, f"per-channel {shape_str(shape)} on {kind}: {could}? the shape cannot tell (shape rule)"
    if _EMBED_LEAF.search(leaf):
        if decay_embeddings:
            return "embedding", True, f"embedding-named {shape_str(shape)} table on {kind}"
        return "embedding", False, f"embedding-named {shape_str(shape)} table on {kind} (decay_embeddings=False)"
    return "matrix", True, f"{len(shape)}-D tensor on {kind} (shape rule: unknown module)"
