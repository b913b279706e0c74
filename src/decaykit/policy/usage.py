"""What a parameter *does*: one forward pass on fake tensors, recording how each parameter is consumed.

A shape cannot tell a per-head norm gain (heads, head_dim) from a projection, nor Mamba's
``A_log`` from a weight; the operation that consumes the tensor can:

- the matrix operand of ``F.linear``, ``@``, ``bmm``, a convolution, or of an ``einsum`` that sums out
  one of its indices -> ``weight``, decayed; a parameter multiplied into such a weight, broadcast
  along it (a weight norm's ``g * v / v.norm()``), is a gain of it -> ``scale``;
- the table of an embedding lookup (``F.embedding``, or rows picked by the inputs' ids that start
  the activations, or rows picked by an index computed from the inputs alone or from the table itself,
  a hash grid's or a codebook's, whatever elementwise op follows) -> ``embedding``; rows picked by a
  router (an index a layer computed) are judged by what they feed;
- concatenated with activations, put where a mask from the inputs is set (a mask token), or the
  input of a layer -> ``token``, treated like an embedding; concatenated with the keys or values
  attention reads, and read only there (``add_bias_kv``'s ``bias_k``) -> ``bias``, a learned
  key/value; one more entry along the activations' last axis, the same for every row (an attention
  sink's logit) -> ``bias``; a column joined there may be one more token of channels-first (B, C, N)
  activations, and is left untold;
- added to activations: per channel or the same for every token, or added to attention scores (a
  relative-position table, as ``attn_mask`` is) -> ``bias``, no decay; a table that varies along the
  tokens, or along one token axis of a grid while broadcast along another (an MSA's row table (1, R, 1, D),
  a conv grid's (1, C, H, 1)) -> ``position``, like an embedding; where the input has no token axis, or its batch axis
  could be its tokens (a (T, 1, C) input), neither can be told and the structure decides; a table
  whose sum is then cut into single rows that shift and scale other activations (adaLN-single's
  ``scale_shift_table``, ``x * (1 + scale) + shift``) -> ``bias``, the modulation's;
- multiplies activations (the gain of a norm, also of a tensor normalised from parameters alone, a learned
  query's ``F.normalize(q) * gamma``; a layer scale; also an ``einsum`` that sums out none
  of its indices, ``x @ torch.diag(g)``) -> ``norm`` / ``scale``, no decay; but where the product is
  then summed over one of the parameter's own axes (``(x * a).sum(-1)``, GAT's attention vector),
  that is the contraction an ``einsum`` writes -> ``weight``, and so where a later ``tensordot`` / ``einsum``
  / matmul contracts it over such an axis with a weight that lacks another of its axes (CP factors on
  opt_einsum's pairwise path); where the activations have one entry
  along its last axis (``x[..., None] * W``, FT-Transformer's tokenizer, a Planar flow's ``u``), an
  outer product -> ``weight``, and what is added along that weight's axes is its ``bias``; where they
  are broadcast along its own axes and the product becomes a matrix operand (StyleGAN2's kernel
  ``weight * style``, then ``F.conv2d``), they are its gain -> ``weight``;
- the weight or bias of ``F.layer_norm`` / ``group_norm`` / ``batch_norm`` / ``rms_norm`` -> ``norm``;
- fed alone through ``exp``, ``softplus``, ``sigmoid``... (a state or temperature) and then into
  anything but a matmul or a lookup, or a vector laid so into a matrix (Glow's log-scales on its
  diagonal, an angle into a rotation) -> ``state``, no decay; what went through the map is tracked per
  parameter (in ``mu + exp(logsigma) * noise`` only ``logsigma`` did); squared after its map, a matrix operand
  that meets only squared activations (gSDE's ``mm(latent ** 2, exp(log_std) ** 2)``, variances) -> ``state``.
  A statistic of a tensor itself, broadcast back over it (``x * rsqrt(x.pow(2).mean(-1))``), only normalises it.

Activations are what derives from the example inputs. Views, casts, slices, arithmetic with
constants or buffers (a weight times a mask), operations on parameters alone (a weight
standardised, tokens concatenated together, a parametrization; not a gain broadcast over a
weight) and writes into a tensor that is no activation (``dense[idx] = param``, a sparse or
spectral weight filled in) pass a parameter through unchanged; one that meets a weight in a
function decaykit does not know (a learnable fake quantizer's step size) is no part of the
matrix, and its role stays untold. The pass runs under ``FakeTensorMode``: no real compute, no
real memory. A test of a tensor's value (``if self.training and torch.rand(1) > p:``) is
answered False, then in a second pass True, and what either saw is kept (a test in an ``assert``
that fails on False is answered True: it checks what holds of a valid input); where a decision rests
on one answer, its reason names the test and the answer (:func:`decaykit.policy.roles.classify`). A number read (``.item()``)
gets a stand-in, 1; at an operation whose output shape depends on values the pass stops, and
what was seen until then is kept.

The pass itself (fake inputs, the retries, the model put back as it was) is
:mod:`decaykit.policy.tracing`; the input a model makes for itself, :mod:`decaykit.policy.own_input`.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch._C import _functorch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = ["Recorder", "Trace", "Use", "decider"]

# Operand roles of the layer functions, by argument name (positions come from the signature).
_LAYER_ARGS: dict[str, dict[str, str]] = {
    "linear": {"input": "input", "weight": "matmul", "bias": "bias"},
    "bilinear": {"input1": "input", "input2": "input", "weight": "matmul", "bias": "bias"},
    **{f"conv{d}": {"input": "input", "weight": "matmul", "bias": "bias"} for d in ("1d", "2d", "3d")},
    **{f"conv_transpose{d}": {"input": "input", "weight": "matmul", "bias": "bias"} for d in ("1d", "2d", "3d")},
    "embedding": {"input": "index", "weight": "lookup"},
    "embedding_bag": {"input": "index", "weight": "lookup"},
    "layer_norm": {"input": "input", "weight": "norm", "bias": "normbias"},
    "group_norm": {"input": "input", "weight": "norm", "bias": "normbias"},
    "batch_norm": {"input": "input", "weight": "norm", "bias": "normbias"},
    "instance_norm": {"input": "input", "weight": "norm", "bias": "normbias"},
    "rms_norm": {"input": "input", "weight": "norm"},
    "prelu": {"input": "input", "weight": "scale"},
    "addmm": {"input": "bias", "mat1": "matmul", "mat2": "matmul"},
    "baddbmm": {"input": "bias", "batch1": "matmul", "batch2": "matmul"},
    "addbmm": {"input": "bias", "batch1": "matmul", "batch2": "matmul"},
    "addmv": {"input": "bias", "mat": "matmul", "vec": "matmul"},
    "multi_head_attention_forward": {"query": "input", "key": "input", "value": "input", "in_proj_weight": "matmul",
                                     "in_proj_bias": "bias", "bias_k": "keys", "bias_v": "values",
                                     "out_proj_weight": "matmul", "out_proj_bias": "bias", "q_proj_weight": "matmul",
                                     "k_proj_weight": "matmul", "v_proj_weight": "matmul"},
    # attention holds no weights: a parameter given as its query or keys is a learned token
    "scaled_dot_product_attention": {"query": "input", "key": "input", "value": "input", "attn_mask": "bias"},
}
_POSITIONS: dict[str, tuple[str, ...]] = {
    "linear": ("input", "weight", "bias"), "bilinear": ("input1", "input2", "weight", "bias"),
    "embedding": ("input", "weight"), "embedding_bag": ("input", "weight"),
    "layer_norm": ("input", "normalized_shape", "weight", "bias"), "group_norm": ("input", "num_groups", "weight", "bias"),
    "batch_norm": ("input", "running_mean", "running_var", "weight", "bias"),
    "instance_norm": ("input", "running_mean", "running_var", "weight", "bias"),
    "rms_norm": ("input", "normalized_shape", "weight"), "prelu": ("input", "weight"),
    "addmm": ("input", "mat1", "mat2"), "baddbmm": ("input", "batch1", "batch2"), "addbmm": ("input", "batch1", "batch2"),
    "multi_head_attention_forward": ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight",
                                     "in_proj_bias", "bias_k", "bias_v", "add_zero_attn", "dropout_p",
                                     "out_proj_weight", "out_proj_bias"),
    "addmv": ("input", "mat", "vec"), "scaled_dot_product_attention": ("query", "key", "value", "attn_mask"),
        **{f"conv{d}": ("input", "weight", "bias") for d in ("1d", "2d", "3d")},
    **{f"conv_transpose{d}": ("input", "weight", "bias") for d in ("1d", "2d", "3d")},
}
_MATMUL = frozenset({"matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "mv", "einsum", "tensordot", "inner", "outer",
                     "dot", "vdot", "kron", "chain_matmul", "multi_dot", "ger",
                     "grouped_mm", "_grouped_mm", "bmm_", "baddbmm_", "addmm_"})
# Where an activation gets spatial axes: feature vectors (B, F) become a sequence of positions.
_CONVOLUTIONS = frozenset({"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"})
# A parameter multiplied into another, broadcast along it, before either meets activations: a gain of a weight.
_SCALES_A_WEIGHT = frozenset({"mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__",
                              "__itruediv__", "true_divide", "multiply", "_weight_norm"})
# Picking rows of a parameter by a tensor of indices: token ids pick embedding rows, a router's
# choice picks an expert's weight or bias; what the rows then feed decides which.
_SELECT = frozenset({"__getitem__", "index_select", "gather", "take", "take_along_dim"})
_CONCAT = frozenset({"cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack", "column_stack",
                     "where", "masked_scatter", "masked_scatter_", "index_put", "index_put_", "scatter", "scatter_",
                     "masked_fill", "masked_fill_", "__setitem__", "index_copy", "index_copy_"})
_ADD = frozenset({"add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__", "__isub__"})
_MUL = frozenset({"mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__", "__itruediv__",
                  "true_divide", "addcmul", "addcmul_", "addcdiv", "addcdiv_", "multiply"})
_DIVIDES = frozenset({"div", "div_", "__truediv__", "__itruediv__", "true_divide", "addcdiv", "addcdiv_"})
# ``input + value * tensor1 * tensor2`` (or ``/ tensor2``): the first operand is added, the others multiply
_ADDS_INPUT = frozenset({"addcmul", "addcmul_", "addcdiv", "addcdiv_"})
# Nonlinear maps of a parameter on its own: what comes out is no longer the parameter (Mamba's
# ``-exp(A_log)``, CLIP's ``logit_scale.exp()``, softmax-ed mixing weights).
_NONLINEAR = frozenset({"exp", "exp_", "exp2", "expm1", "log", "log1p", "log2", "log10", "sigmoid", "softplus", "tanh",
                        "sqrt", "rsqrt", "reciprocal", "softmax", "log_softmax", "sin", "cos", "relu", "gelu", "silu",
                        "elu", "logsigmoid", "erf", "pow", "__pow__", "__rpow__", "square"})
_SQUARES = frozenset({"pow", "__pow__", "square", "float_power"})
# Broadcasting a parameter to the activations' shape: the axes it is spread along are ones it is the same along.
_SPREADS = frozenset({"expand", "expand_as", "broadcast_to", "repeat", "tile"})
# Reductions that sum a product over an axis: over a parameter's own axis, they make it a contraction.
_SUMS = frozenset({"sum", "mean", "nansum", "nanmean"})
# Inverse Fourier transforms: of a product of transforms, a convolution (S4's and Hyena's long kernels, GFNet's
# global filter): they sum the product over the frequencies, the kernel's own axes. name -> default axes
_INVERSE_FFTS: dict[str, tuple[int, ...] | None] = {
    "fft_ifft": (-1,), "fft_irfft": (-1,), "fft_hfft": (-1,), "fft_ifft2": (-2, -1), "fft_irfft2": (-2, -1),
    "fft_hfft2": (-2, -1), "fft_ifftn": None, "fft_irfftn": None, "fft_hfftn": None}
# Ops that leave a tensor what it was: views, casts, slices, copies, plain-number arithmetic.
_PASS = frozenset({"view", "view_as", "reshape", "reshape_as", "transpose", "permute", "t", "expand", "expand_as",
                   "unsqueeze", "squeeze", "flatten", "unflatten", "contiguous", "clone", "detach", "to", "type",
                   "type_as", "float", "double", "half", "bfloat16", "__getitem__", "narrow", "select", "chunk",
                   "split", "unbind", "movedim", "moveaxis", "swapaxes", "swapdims", "repeat", "tile", "broadcast_to",
                   "__get__", "neg", "__neg__", "clamp", "clamp_", "clip", "normalize", "requires_grad_", "as_strided",
                   "repeat_interleave", "roll", "flip", "tensor_split", "split_with_sizes", "interpolate", "pad",
                   "diagonal", "tril", "triu", "abs", "__pos__"})
# Cutting a tensor into pieces along one axis: the rows of a summed table become a modulation's shift and scale.
_SPLITS = frozenset({"chunk", "split", "unbind", "tensor_split", "split_with_sizes", "select", "__getitem__"})
# Joining tensors along an axis: a parameter joined to activations is a learned token, or a learned key/value.
_JOINS = frozenset({"cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack", "column_stack"})
# Every function whose operands' roles decaykit knows; with another, a parameter's role stays untold.
_KNOWN = _PASS | _ADD | _MUL | _CONCAT | _NONLINEAR | _MATMUL | _SELECT | _SPLITS | _SCALES_A_WEIGHT | frozenset(_LAYER_ARGS)
# What attention scores go through and stay scores: views, scaling, masking, adding biases.
_KEEPS_SCORES = _PASS | _MUL | _ADD | {"masked_fill", "masked_fill_", "where"}
# What makes an activation "normalised": a gain multiplying it is a norm gain.
_NORMALISING = frozenset({"rsqrt", "layer_norm", "rms_norm", "group_norm", "normalize", "batch_norm", "instance_norm"})
_WHY = {"matmul": "matrix operand of {f}", "lookup": "table looked up by index in {f}",
        "input": "input of {f}: a learned token", "concat": "joined to activations in {f}: a learned token",
        "norm": "weight of {f}: a norm gain", "normbias": "bias of {f}: a norm bias",
        "scale": "per-channel slope of {f}: a scale", "state": "fed alone through {f}: a state parameter",
        "picked": "rows picked by the input, then fed to {f}: an embedding lookup",
        "outer": "multiplies activations in {f} that have one entry along its last axis: an outer product, the "
                 "weight of a map from each entry (x[..., None] * W)",
        "mapbias": "added in {f} to the outer product of activations and a weight, along that weight's axes: its bias",
        "keyvalue": "joined to the {what} of attention in {f}: a learned key/value, a bias"}
_ROLES = {"matmul": "weight", "lookup": "embedding", "input": "token", "concat": "token", "norm": "norm",
          "normbias": "norm", "scale": "scale", "state": "state", "bias": "bias", "table": "position"}
# A parameter used several ways is what its strongest use says: a table looked up (and maybe tied
# to a head) is an embedding, else a matrix operand is a weight.
_RANK = ("lookup", "matmul", "input", "concat", "table", "bias", "norm", "normbias", "scale", "gain", "state", "other")


class Use(NamedTuple):
    """How one parameter was consumed in the traced forward pass."""

    kind: str  # "matmul", "lookup", "input", "concat", "table", "bias", "norm", "normbias", "scale", "gain", "state", "other"
    func: str  # the function that consumed it, as users write it (``F.linear``, ``einsum``, ``mul``)
    reason: str

    @property
    def role(self) -> str:
        return {"gain": "norm", "other": "unknown"}.get(self.kind, _ROLES.get(self.kind, self.kind))


def decider(seen: list[Use]) -> Use | None:
    """The use that decides among ``seen``: the strongest, or ``None`` for none."""
    return min(seen, key=lambda u: _RANK.index(u.kind)) if seen else None



@dataclass
class Trace:
    """Every use seen per parameter (``id`` of the real tensor), and why the pass stopped, if it did."""

    uses: dict[int, list[Use]]
    stopped: str | None = None  # "RuntimeError: ..." when the forward could not finish on fake tensors
    ran: bool = True  # False: no example input could be made, ``stopped`` says why
    # the tests of a tensor's truth value the pass answered (``if mask.any():``), where the code made
    # them and the answer, in order; for a use seen after one of them, the one it is put down to
    tests: list[tuple[str, bool]] = field(default_factory=list)
    after_test: dict[tuple[int, Use], tuple[str, bool]] = field(default_factory=dict)
    # where the two answers to those tests decide a parameter differently: what the other answer saw
    # (``None``: nothing) and the clause naming the test the deciding use came after, "where ... is true"
    branch: dict[int, tuple[Use | None, str]] = field(default_factory=dict)
    # an ``assert`` the pass made fail by answering its test False, where the pass then stopped
    assertion: str | None = None
    # learnable tensors the forward used that are not the model's own (pyro's param store hands back its own)
    foreign: int = 0
    # ids of parameters used, but only with other parameters and constants, never with the inputs (a pyro
    # guide's ``loc`` in its own sample): reached, though no use tells what they are
    touched: set[int] = field(default_factory=set)

    @property
    def unseen(self) -> str:
        """Why a parameter has no use: the pass never reached it, or stopped before it."""
        if not self.ran:
            return f"no example input ({self.stopped})"
        if self.stopped is None and self.foreign:
            return (f"not reached by the traced forward, which used {self.foreign} learnable tensors that are not the "
                    "model's own (held elsewhere and handed back in their place, as pyro's param store does)")
        if self.stopped is None:
            return "not reached by the traced forward"
        return f"not reached: the traced forward stopped at {self.stopped}"

    def unseen_of(self, param: torch.Tensor) -> str:
        """Why ``param`` has no use: :attr:`unseen`, or that the pass used it only among learned tensors."""
        if id(param) not in self.touched:
            return self.unseen
        stop = f" (it stopped at {self.stopped})" if self.stopped else ""
        return f"used by the traced forward only with learned tensors and constants, never with its input{stop}"

    def use_of(self, param: torch.Tensor) -> Use | None:
        """The use that decides: the strongest seen, or ``None`` if the pass never reached it."""
        return decider(self.uses.get(id(param)) or [])


@dataclass
class _Deferred:
    """A use of a parameter-derived ``tensor`` that what its output feeds may still change."""

    tensor: torch.Tensor
    use: Use  # what it is, unless what follows says otherwise
    joined: bool = False  # joined to activations (``torch.cat``): what reads them decides; else added to them
    attends: set[str] = field(default_factory=set)  # how what it was joined to was read: "keys", "values", "other"
    split: str | None = None  # the function that cut the output into rows
    meets: set[str] = field(default_factory=set)  # "shift" / "scale": how the rows then met other activations
    guard: tuple[str, bool] | None = None  # the test of a value the use came after, if any
    summed: str | None = None  # the reduction that summed the product it multiplied over the parameter's own axis
    # the activations it multiplied were broadcast along its own axes (a style (B, 1, I, 1, 1) over a kernel
    # (1, O, I, K, K)): the parameter is what they modulate, and ``kernel`` the function the product was a matrix operand of
    modulated: bool = False
    kernel: str | None = None
    # a bias broadcast along the axes right after the batch (a series' channels, (B, C, n, d)): the shape
    # those axes and the batch make folded into one, and the view that then folded them into the batch
    fold: tuple[int, ...] | None = None
    folded: str | None = None


def _name(func: Any) -> str:
    name = getattr(func, "__name__", None) or str(func)
    return f"F.{name}" if getattr(torch.nn.functional, name, None) is func else name


def _bare(func: Any) -> str:
    return getattr(func, "__name__", "") or ""


class Recorder(TorchFunctionMode):
    """Records, for every op, which traced parameters it consumes and how; passes provenance on."""

    def __init__(self, params: list[tuple[torch.Tensor, torch.Tensor]], inputs: list[torch.Tensor],
                 answers: Mapping[str, int] | None = None, held: frozenset[str] = frozenset()) -> None:
        super().__init__()
        # the places of ``assert`` tests answered True: an assertion checks what holds of a valid input
        self.held = held
        self.last_assert: str | None = None  # the last test, where it was an ``assert``'s answered False
        # a tensor's truth value (``if mask.any():``) is unknown on fake tensors: a test is answered True
        # the first ``answers[where]`` times the code at ``where`` makes it, else False; ``tests`` says
        # where each was and the answer, ``after_test`` which one preceded a use
        self.answers = collections.Counter(answers or {})
        self.tests: list[tuple[str, bool]] = []
        self.after_test: dict[tuple[int, Use], tuple[str, bool]] = {}
        # the test a use after it is put down to: the last one, or where True answers are given, the last answered True
        self.guard: tuple[str, bool] | None = None
        self.true_pass = answers is not None
        self.ops_since_test = 0  # operations seen since the last test: none, where the pass then stops, blames that test
        # id(tensor) -> ids of the real parameters it still *is*; ``params`` pairs each fake with its real one
        # (the real one too: a forward that fetches it past the module's attributes, as pyro's param store hands
        # back the tensor it holds, uses it as itself)
        self.origin: dict[int, tuple[int, ...]] = {id(t): (id(real),) for fake, real in params for t in (fake, real)}
        self.shapes = {id(real): tuple(real.shape) for _, real in params}
        # ids of activations: what derives from the example inputs; buffers and constants are not,
        # so a weight masked by a buffer or built with torch.eye is still a weight
        self.live: set[int] = {id(t) for t in inputs}
        # ids of the floating-point inputs themselves and their views: data no layer has touched yet
        self.raw: set[int] = {id(t) for t in inputs if t.is_floating_point()}
        # ids of activations that derive from boolean inputs alone (``bool_masked_pos``): a mask, whose
        # product with a parameter puts a learned token where it is set
        self.masks: set[int] = {id(t) for t in inputs if t.dtype == torch.bool}
        self.normalised: set[int] = set()  # ids of activations that came out of a normalisation
        self.foreign: set[int] = set()  # ids of real learnable tensors used that are not the model's parameters
        self.touched: set[int] = set()  # ids of the parameters used among learned tensors alone (:attr:`Trace.touched`)
        self.squared: set[int] = set()  # ids of tensors squared (``x ** 2``): with a squared parameter, variances
        self.via: dict[int, str] = {}  # id(tensor) -> the nonlinear map a parameter went through alone
        self.selected: set[int] = set()  # ids of rows of a parameter picked by indices from the inputs
        self.gathered: set[int] = set()  # ids of a parameter's entries gathered by a constant index (a table)
        self.diagonal: set[int] = set()  # ids of a 1-D parameter laid out as a diagonal matrix (``torch.diag(g)``)
        # id(parameter expanded) -> the axes, counted from the end, it was just broadcast along (``expand``, ``repeat``)
        self.spread: dict[int, set[int]] = {}
        # ids of attention scores: a product of two activations (``q @ k.mT``), scaled and masked; what
        # is added to them is a bias, as ``attn_mask`` is to ``F.scaled_dot_product_attention``
        self.scores: set[int] = set()
        # the batch sizes the inputs may have ((T, 1, ...) may be a batch of 1, sequence first), and
        # whether anything has a token axis: feature vectors (B, F) have none until a convolution
        # makes one, and an addend to them cannot be told a bias or a position table
        self.batch = {t.shape[0] for t in inputs if t.ndim} | {1 for t in inputs if t.ndim > 2 and t.shape[1] == 1}
        self.tokens = any(t.ndim >= (3 if t.is_floating_point() else 2) for t in inputs)
        self.keep: list[Any] = list(inputs)  # keeps traced tensors alive, so their ids are never reused
        self.uses: dict[int, list[Use]] = {}
        # uses that what the output feeds decides (a table added to activations, the sum then cut into
        # rows that shift and scale others, is a modulation's bias), and the activations followed for them
        self.deferred: list[_Deferred] = []
        self.following: dict[int, tuple[_Deferred, tuple[int, ...]]] = {}
        # products of a parameter and activations (``x * a``), followed to a sum over the parameter's own
        # axes (counted from the end), which makes it a contraction: id(activations) -> (use, axes) carried
        self.products: dict[int, list[tuple[_Deferred, tuple[int, ...]]]] = {}
        # id(activations) made by an outer product with a weight (``x[..., None] * W``) -> the weight's own
        # axes in them, counted from the end: an addend that varies along those alone is that map's bias
        self.maps: dict[int, set[int]] = {}
        # ids of activations computed from the inputs alone, no parameter met (token ids, hashed coordinates);
        # and, per activation, the parameters it met since the last layer or matmul (a codebook's distances
        # ``cdist(z, codebook)``, its ``argmin``): an index of either kind picks the rows of a lookup table
        self.param_free: set[int] = {id(t) for t in inputs}
        self.measured: dict[int, frozenset[int]] = {}
        self.looked_up: dict[int, str] = {}  # id(rows picked by such an index) -> how the index was computed
        # what each axis of an activation holds, where the trace can follow it: "b" the batch (or something
        # folded with it), "t" tokens or a grid (the inputs' own axes, a convolution's), "c" channels (a layer's
        # features, heads split from them), "?" unknown: an addend that varies along a token axis is a position table
        self.kinds: dict[int, tuple[str, ...]] = {id(t): _input_kinds(t) for t in inputs if t.ndim}

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Mapping | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if _bare(func) in _VALUE_READS and args and isinstance(args[0], torch.Tensor) and _holds_no_values(args[0]):
            if _bare(func) == "__bool__":
                return self._test()
            return _stand_in(_bare(func), args[0])
        # counted before it runs: an operation that raises (reading a value inside indexing) is no answer's fault;
        # a repr of a failed assert's values (pytest rewrites asserts so) computes nothing
        self.ops_since_test += _bare(func) not in ("__repr__", "__str__", "__format__")
        if _bare(func) == "__getitem__" and len(args) == 2 and _scalar_index(args[1]):
            return self._pick_one(func, args[0], args[1])
        out = func(*args, **kwargs)
        written = args[0] if out is None and _bare(func) == "__setitem__" else out  # ``dense[idx] = param`` fills dense
        self._record(_bare(func), _name(func), args, kwargs, written)
        return out

    def _see_through(self, t: torch.Tensor) -> None:
        """Under ``torch.vmap`` (a ``stack_module_state`` ensemble) an operation meets a batched wrapper of
        a parameter or an activation, made where no operation is seen: it is what it wraps."""
        if id(t) in self.origin or id(t) in self.live or not _functorch.is_batchedtensor(t):
            return
        inner = t
        while _functorch.is_batchedtensor(inner):
            inner = _functorch.get_unwrapped(inner)
        if id(inner) in self.origin:
            self._pass_on(t, set(self.origin[id(inner)]), self.via.get(id(inner)), id(inner) in self.selected)
        elif id(inner) in self.live:
            for marks in (self.live, self.raw, self.masks, self.param_free, self.normalised):
                if id(inner) in marks:
                    marks.add(id(t))
            self.keep.append(t)

    def _provenance(self, bare: str, out: Any, live: list[torch.Tensor], traced: list[torch.Tensor]) -> None:
        """What ``out`` was computed from: the inputs alone, or the parameters it met since the last layer."""
        if not traced and all(id(t) in self.param_free for t in live):
            self._mark(out, self.param_free, skip=self.origin)
        if bare in _LAYER_ARGS or bare in _MATMUL:
            return  # a layer's output: what an index computed from it picks is a router's choice, judged by use
        met = frozenset(p for t in traced for p in self.origin[id(t)]).union(*(self.measured.get(id(a), ()) for a in live))
        if met:
            for o in tree_flatten(out)[0]:
                if isinstance(o, torch.Tensor) and id(o) not in self.origin:
                    self.measured[id(o)] = met
                    self.keep.append(o)

    def _pick_one(self, func: Any, table: Any, index: torch.Tensor) -> Any:
        """``table[i]`` with a 0-d integer tensor ``i`` (a task id from a DataLoader): torch reads its value,
        which a fake tensor has not; picked as ``table[i.reshape(1)].squeeze(0)``, the same shape."""
        one = index.reshape(1)
        self._record("reshape", "reshape", (index, 1), {}, one)
        rows = func(table, one)
        self._record("__getitem__", _name(func), (table, one), {}, rows)
        out = rows.squeeze(0)
        self._record("squeeze", "squeeze", (rows, 0), {}, out)
        return out

    def _test(self) -> bool:
        """The answer to a test of a tensor's truth value, noted with where the model's code made it."""
        where, asserted = _caller()
        answer = where in self.held or self.answers[where] > 0
        self.answers[where] -= answer and where not in self.held
        self.last_assert = where if asserted and not answer else None
        self.tests.append((where, answer))
        self.ops_since_test = 0
        if answer or not self.true_pass:
            self.guard = (where, answer)
        return answer

    def _record(self, bare: str, shown: str, args: tuple, kwargs: dict, out: Any) -> None:
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        for t in tensors:
            self._see_through(t)
            if t.requires_grad and t.is_leaf and not _holds_no_values(t) and id(t) not in self.shapes:
                self.foreign.add(id(t))  # a real learnable tensor the model does not hold, used in its place
                self.keep.append(t)
        live = [t for t in tensors if id(t) in self.live]
        traced = [t for t in tensors if id(t) in self.origin]
        if self.following:
            self._follow(bare, shown, args, kwargs, out, live)
        if self.products:
            self._follow_products(bare, shown, args, kwargs, out, live)
        if bare in _SQUARES and (bare == "square" or _exponent(args, kwargs) == 2):
            self._mark(out, self.squared)
        if traced:
            if not live:
                self.touched.update(p for t in traced for p in self.origin[id(t)])
            self._consume(bare, shown, args, kwargs, out, traced, live)
        elif (bare in _NORMALISING or (bare in _MUL | _PASS and any(id(t) in self.normalised for t in tensors))
              or (bare in ("pow", "__pow__") and _exponent(args, kwargs) == -0.5)):  # rsqrt as a power (Gemma3n's)
            self._mark(out, self.normalised)
        if live:
            self._provenance(bare, out, live, traced)
            self._mark(out, self.live, skip=self.origin)
            self._follow_axes(bare, args, kwargs, out, live)
            if bare in _PASS and not traced and all(id(t) in self.raw for t in live):
                self._mark(out, self.raw)
            if all(id(t) in self.masks for t in live):
                self._mark(out, self.masks, skip=self.origin)
            self.tokens = self.tokens or bare in _CONVOLUTIONS
            product = bare in _MATMUL and sum(id(t) not in self.origin for t in live) >= 2  # q @ k.mT
            if product or (bare in _KEEPS_SCORES and any(id(t) in self.scores for t in live)):
                self._mark(out, self.scores, skip=self.origin)

    def _follow_axes(self, bare: str, args: tuple, kwargs: dict, out: Any, live: list[torch.Tensor]) -> None:
        """What the axes of ``out`` hold (:attr:`kinds`), from those of the activations it was computed from."""
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        if not outs:
            return
        kinds = _out_kinds(bare, args, kwargs, outs[0], [(t, self.kinds[id(t)]) for t in live if id(t) in self.kinds],
                           {id(t) for t in live})
        for o in outs if kinds is not None else ():
            if o.ndim == len(kinds) and id(o) not in self.kinds:
                self.kinds[id(o)] = kinds
                self.keep.append(o)

    def _axial(self, tensor: torch.Tensor, activations: list[torch.Tensor]) -> bool:
        """Whether an addend broadcast along some token axis of ``activations`` varies along another one (a row
        table (1, R, 1, D) on (B, R, L, D), a (1, C, H, 1) on (B, C, H, W)): an axial position table, no bias. Not
        on attention scores, and only where what every axis of the activations holds is known."""
        if not activations or any(id(a) in self.scores or id(a) not in self.kinds for a in activations):
            return False
        for a in activations:
            padded = (1,) * (a.ndim - tensor.ndim) + tuple(tensor.shape)
            if not any(s > 1 and n > 1 and kind == "t" for s, n, kind in zip(padded, a.shape, self.kinds[id(a)])):
                return False
        return True

    def _consume(self, bare: str, shown: str, args: tuple, kwargs: dict, out: Any, traced: list[torch.Tensor],
                 live: list[torch.Tensor]) -> None:
        first = next((t for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor)), None)
        if bare in _PASS and (first is None or id(first) not in self.origin):
            return  # ``x.type_as(weight)``: the parameter only lends its dtype or shape
        index = [t for t in tree_flatten((args[1:], kwargs))[0] if isinstance(t, torch.Tensor) and id(t) not in self.origin]
        if bare in _SELECT and first is not None and id(first) in self.origin and index:
            picked_by_data = any(id(t) in self.live for t in index)  # else a constant index: a table laid out
            self._pass_on(out, set(self.origin[id(first)]), self.via.get(id(first)), picked_by_data)
            how = self._index_of_ids(first, [t for t in index if id(t) in self.live])
            if how is not None:
                for o in tree_flatten(out)[0]:
                    if isinstance(o, torch.Tensor):
                        self.looked_up[id(o)] = how
            if not picked_by_data:
                self._mark(out, self.gathered)
        elif bare in _LAYER_ARGS and (live or bare not in _NORMALISING):
            self._layer(bare, shown, args, kwargs)
        elif bare in _LAYER_ARGS and self._normalises_parameter(bare, shown, args, kwargs, out):
            return  # a norm over a parameter alone (learned queries normalised): its gain is still a gain
        elif not live and ((bare in _MUL and self._norm_by_hand(shown, args, kwargs, out, traced))
                           or (bare in _ADD and self._norm_bias(shown, out, traced))):
            return  # a norm written out on parameters: its statistic, gain and bias
        elif bare in _PASS or not live:
            if bare in _NONLINEAR and not live:  # what it feeds decides; alone, it is a state parameter
                for t in traced:
                    self._use(t, Use("state", shown, _WHY["state"].format(f=_then(self.via.get(id(t), {}), shown))))
            if bare in _SCALES_A_WEIGHT and not live:
                traced = self._without_gains(shown, traced, out)
            elif not live and bare not in _KNOWN:  # a fake quantizer's step size and zero point, with its weight
                traced = self._without_gains(shown, traced, out, known=False)
            params = {p for t in traced for p in self.origin[id(t)]}
            # each parameter keeps the map it went through itself: in ``mu + exp(logsigma) * noise`` only logsigma did
            prior = {p: f for t in traced for p, f in self.via.get(id(t), {}).items()}
            # the maps in turn, first and last (``exp(log_std) ** 2``: "exp then pow"), so the reason keeps the first
            via = {p: _then({p: prior.get(p)}, shown) for p in params} if bare in _NONLINEAR else prior
            self._pass_on(out, params, via,
                          any(id(t) in self.selected for t in traced))
            if bare in _MUL | _PASS and any(id(t) in self.normalised for t in traced):
                self._mark(out, self.normalised)  # a parameter normalised by hand, through its gain and views
            if any(id(t) in self.gathered for t in traced):
                self._mark(out, self.gathered)
            how = next((self.looked_up[id(t)] for t in traced if id(t) in self.looked_up), None)
            if how is not None and bare in _PASS:  # ``table[idx].view(...)``: still the rows looked up
                for o in tree_flatten(out)[0]:
                    if isinstance(o, torch.Tensor):
                        self.looked_up[id(o)] = how
            if bare in _SPREADS and first is not None and isinstance(out, torch.Tensor):
                padded = (1,) * (out.ndim - first.ndim) + tuple(first.shape)
                self.spread[id(out)] = {i - out.ndim for i, (s, n) in enumerate(zip(padded, out.shape)) if s == 1 < n}
            if bare == "diag_embed" or (bare == "diag" and first is not None and first.ndim == 1):
                self._mark(out, self.diagonal)
        else:
            self._with_live(bare, shown, args, kwargs, out, traced, live)

    def _index_of_ids(self, table: torch.Tensor, index: list[torch.Tensor]) -> str | None:
        """How ``index`` picks rows of ``table`` as a lookup: computed from the inputs alone (ids, hashed
        coordinates), or from the table itself (the rows nearest to activations, a codebook's); None for
        a choice computed by a layer (a router's), whose rows are judged by what they feed."""
        if not index:
            return None
        if all(id(t) in self.param_free for t in index):
            return "an index computed from the inputs alone"
        table_params = set(self.origin[id(table)])
        if all(table_params & self.measured.get(id(t), frozenset()) for t in index):
            return "an index computed from the table itself (its rows nearest to activations)"
        return None

    def _with_live(self, bare: str, shown: str, args: tuple, kwargs: dict, out: Any, traced: list[torch.Tensor],
                   live: list[torch.Tensor]) -> None:
        """The uses of parameters ``traced`` that meet activations ``live`` in ``bare``, other than as a layer's operand."""
        # an einsum operand none of whose indices is summed out, or a diagonal matrix, only multiplies
        elementwise = _einsum_elementwise(args) if bare == "einsum" else set()
        added = _named_input(args, kwargs) if bare in _ADDS_INPUT else None  # addcmul's first operand is added
        # ``torch.addcmul(b, W, x[..., None])``: the axes of the map W that b is added along
        mapped = {i for t in traced if t is not added and self._outer(bare, t, live) for i in _own_axes(t)}
        for t in traced:
            how = "mul" if id(t) in elementwise or (bare in _MATMUL and id(t) in self.diagonal) else bare
            how = "add" if t is added else how
            if t is added and mapped and set(_own_axes(t)) <= mapped:
                self._use(t, Use("bias", shown, _WHY["mapbias"].format(f=shown)))
                continue
            use = self._elementwise(how, shown, t, live, _join_axis(bare, args, kwargs))
            if use.kind == "matmul" and how in _MUL and isinstance(out, torch.Tensor):
                self.maps[id(out)] = set(_own_axes(t))  # a bias added along these axes is the map's
                self.keep.append(out)
            fold = self._fold(t, live) if use.kind == "bias" and how in _ADD and isinstance(out, torch.Tensor) else None
            if use.kind in ("table", "other") and how in _ADD and isinstance(out, torch.Tensor):
                self._defer(t, use, out, _varying_axes(t.shape, out.shape))
            elif fold is not None:
                self._defer(t, use, out, ()).fold = fold
            elif use.kind == "concat" and bare in _JOINS:
                self._defer(t, use, out, (), joined=True)
            elif use.kind in ("scale", "gain") and how in _MUL and isinstance(out, torch.Tensor) and _own_axes(t):
                deferred = _Deferred(t, use, guard=self.guard,  # ``(x * a).sum(-1)`` would make it a weight
                                     modulated=_spread_along(t, [a for a in live if id(a) not in self.selected]))
                self.deferred.append(deferred)
                self._carry(out, [(deferred, _einsum_out_axes(args, t) if bare == "einsum" else _own_axes(t))])
                self.keep.append(t)
            else:  # a parameter that went through exp into an outer product (Mamba's A) is a state
                variance = use.kind == "matmul" and self._variance(t, live)
                use = use._replace(reason=f"{use.reason} with squared activations (a variance propagated)") if variance else use
                self._use(t, use, mapped_is_state=use.kind == "matmul" and (how in _MUL or variance))

    def _defer(self, tensor: torch.Tensor, use: Use, out: torch.Tensor, axes: tuple[int, ...],
               joined: bool = False) -> _Deferred:
        """Record ``use`` of ``tensor`` once the trace has seen what ``out`` feeds (:meth:`finish`)."""
        deferred = _Deferred(tensor, use, joined, guard=self.guard)
        self.deferred.append(deferred)
        self.following[id(out)] = (deferred, axes)
        self.keep += [tensor, out]
        return deferred

    def _fold(self, tensor: torch.Tensor, live: list[torch.Tensor]) -> tuple[int, ...] | None:
        """For an addend that varies along more than the channels and is broadcast, besides the batch, only
        along the axes right after it ((n, d) added to (B, C, n, d)): the shape of the activations with the
        batch and those axes folded into one ((B*C, n, d)). Folded so later, those axes were the batch's
        (PatchTST's channels, each series on its own), and the addend varies along every token."""
        if _per_channel(tensor.shape) or len(live) != 1:
            return None
        (a,) = live
        padded = (1,) * (a.ndim - tensor.ndim) + tuple(tensor.shape)
        for b in self.batch:
            batch_axis = _batch_axis(a.shape, b)
            spread = [i for i, (s, n) in enumerate(zip(padded, a.shape)) if s == 1 < n and i != batch_axis]
            # a per-expert bias (E, 1, C) varies along the first axis itself: no table of the tokens
            if batch_axis == 0 and padded[0] == 1 and spread and spread == list(range(1, len(spread) + 1)):
                return (int(torch.Size(a.shape[:len(spread) + 1]).numel()), *a.shape[len(spread) + 1:])
        return None

    def _follow(self, bare: str, shown: str, args: tuple, kwargs: dict, out: Any, live: list[torch.Tensor]) -> None:
        """Follow the sum of a table and activations: cut along the table's rows (``chunk``, ``unbind``,
        ``[:, i]``), each row, through views and arithmetic with constants (``1 + scale``), meets other
        activations in ``mul`` or ``add``, broadcast over their tokens: the rows shift and scale them,
        the table is a modulation's bias (adaLN-single's ``scale_shift_table``), not a table that varies
        along the tokens (steps of a sequence unbound one by one meet activations of their own size).
        And follow activations a parameter was joined to (:meth:`_follow_joined`)."""
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        for t in live:
            if id(t) not in self.following:
                continue
            deferred, axes = self.following[id(t)]
            others = [a for a in live if a is not t and self.following.get(id(a), (None,))[0] is not deferred]
            if deferred.fold is not None:
                self._follow_fold(deferred, t, first, bare, shown, out)
            elif deferred.joined:
                self._follow_joined(deferred, t, first, others, bare, args, kwargs, out)
            elif axes and t is first and bare in _SPLITS:
                if _rows(t, args, kwargs, out, axes, bare):
                    deferred.split = shown
                    self._tag(out, deferred, ())
            elif axes and t is first and bare in _PASS and _same_shapes(t, out):
                self._tag(out, deferred, axes)  # a cast or a copy of the sum
            elif not axes and others and bare in _ADD | _MUL and deferred.split is not None:
                if any(_broadcast_over(t.shape, a.shape) for a in others):  # one row for all of their tokens
                    deferred.meets.add("shift" if bare in _ADD else "scale")
            elif not axes and not others and bare in _PASS | _ADD | _MUL:
                self._tag(out, deferred, ())  # ``1 + scale``, ``shift.to(x.dtype)``: still the row

    def _follow_fold(self, deferred: _Deferred, t: torch.Tensor, first: torch.Tensor | None, bare: str, shown: str,
                     out: Any) -> None:
        """The sum of a bias and activations, through copies and dropout, viewed with the axes the bias is
        broadcast along folded into the batch ((B, C, n, d) -> (B*C, n, d), as PatchTST's encoder does)."""
        if t is not first or not isinstance(out, torch.Tensor):
            return
        if tuple(out.shape) == deferred.fold and bare in _PASS:
            deferred.folded = deferred.folded or shown
        elif _same_shapes(t, out) and (bare in _PASS or bare in ("dropout", "alpha_dropout", "feature_alpha_dropout")):
            self._tag(out, deferred, ())

    def _follow_joined(self, deferred: _Deferred, t: torch.Tensor, first: torch.Tensor | None,
                       others: list[torch.Tensor], bare: str, args: tuple, kwargs: dict, out: Any) -> None:
        """Activations ``t`` a parameter was joined to (``torch.cat``), through views: read by attention as
        its keys or values and nothing else (the key of ``F.scaled_dot_product_attention``, a product
        with other activations, ``q @ k.mT``), the parameter is a learned key/value, the attention's bias
        (what ``add_bias_kv`` appends); used any other way, it stays a learned token."""
        if bare in _PASS and t is first:
            self._tag(out, deferred, ())
        elif bare == "scaled_dot_product_attention":
            named = _named_args(bare, args, kwargs)
            deferred.attends.add(next((w for arg, w in (("key", "keys"), ("value", "values")) if named.get(arg) is t),
                                      "other"))
        elif bare in _MATMUL and others:
            deferred.attends.add("keys or values")
        else:
            deferred.attends.add("other")

    def _follow_products(self, bare: str, shown: str, args: tuple, kwargs: dict, out: Any,
                         live: list[torch.Tensor]) -> None:
        """Follow products of a parameter and activations (``x * a``): summed over one of the parameter's
        own axes (``.sum(-1)``, ``torch.sum(y, dim=1)``), the product is a contraction, the parameter
        the weight of a linear map (GAT's attention vector, KAN's ``scale_base``), as in the ``einsum``
        that writes it. The product is followed through copies and views of its shape, through sums of
        such products (``a * x + b * y``) and through products with what is no activation (a mask);
        not through a sum with other activations (a residual ``x + g * y``, whose next norm takes the
        mean over the channels)."""
        first = _named_input(args, kwargs)
        if not isinstance(first, torch.Tensor):
            first = None
        for operand in self._matrix_operands(bare, args, kwargs):
            for deferred, _ in self.products.get(id(operand), []):
                deferred.kernel = deferred.kernel or shown
        for operand, contracted, shared, others in _contractions(bare, args, kwargs):
            if not others or any(id(o) not in self.origin for o in others):
                continue  # only a contraction with a weight makes a factor of it
            for deferred, axes in self.products.get(id(operand), []):
                # a factor of the weight (a CP factor (x, r) contracted over r by opt_einsum's pairwise path), no
                # gain of it ((x * g) @ W: g has no axis of its own beside the one contracted, or shares them)
                if set(axes) & contracted and set(axes) - contracted - shared and not deferred.modulated:
                    deferred.summed = deferred.summed or shown
        if (bare in _SUMS or bare in _INVERSE_FFTS) and first is not None and id(first) in self.products:
            summed = _reduced_axes(first, args, kwargs) if bare in _SUMS else _fft_axes(bare, first, args, kwargs)
            for deferred, axes in self.products[id(first)]:
                if summed & set(axes) and deferred.summed is None:
                    deferred.summed = shown
            return
        if not isinstance(out, torch.Tensor) or not live:
            return
        if bare in _PASS and first is not None and id(first) in self.products and out.shape == first.shape:
            self._carry(out, self.products[id(first)])
        elif (bare in _ADD and all(id(a) in self.products for a in live)) or (
                bare in _MUL and len(live) == 1 and id(live[0]) in self.products):
            self._carry(out, [c for a in live for c in self.products[id(a)]])
        elif first is not None and id(first) in self.products and (bare in _PASS or (bare in _MUL and out.shape == first.shape)):
            # reshaped into a kernel's layout, or demodulated (``w * rsqrt((w ** 2).sum(...))``): no longer
            # summed over the parameter's axes as such, but still the product a matrix operand may take
            self._carry(out, [(deferred, ()) for deferred, _ in self.products[id(first)] if deferred.modulated])

    @staticmethod
    def _matrix_operands(bare: str, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        """The operands ``bare`` takes as a matrix: a layer function's weight, those of ``@`` / ``bmm`` / ``einsum``."""
        if bare in _LAYER_ARGS:
            return [v for arg, v in _named_args(bare, args, kwargs).items()
                    if _LAYER_ARGS[bare].get(arg) == "matmul" and isinstance(v, torch.Tensor)]
        if bare in _MATMUL:  # an einsum operand none of whose indices is summed out only multiplies
            elementwise = _einsum_elementwise(args) if bare == "einsum" else set()
            return [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and id(t) not in elementwise]
        return []

    def _carry(self, out: torch.Tensor, carried: list[tuple[_Deferred, tuple[int, ...]]]) -> None:
        self.products[id(out)] = self.products.get(id(out), []) + carried
        self.keep.append(out)

    def _tag(self, out: Any, deferred: _Deferred, axes: tuple[int, ...]) -> None:
        for o in tree_flatten(out)[0]:
            if isinstance(o, torch.Tensor):
                self.following[id(o)] = (deferred, axes)
                self.keep.append(o)

    def finish(self) -> None:
        """Record the deferred uses: what their outputs fed settled them, or else they are what they first seemed."""
        for deferred in self.deferred:
            use = deferred.use
            if deferred.attends and "other" not in deferred.attends:
                what = (next(iter(deferred.attends)) if len(deferred.attends) == 1 else
                        "keys and values" if {"keys", "values"} <= deferred.attends else "keys or values")
                use = Use("bias", use.func, _WHY["keyvalue"].format(what=what, f=use.func))
            elif deferred.meets:
                how = " and ".join(sorted(deferred.meets))
                use = Use("bias", use.func, f"added to activations in {use.func}, then cut by {deferred.split} into rows "
                                            f"that {how} other activations: a modulation's bias")
            elif deferred.summed in _INVERSE_FFTS:
                use = Use("matmul", use.func, f"multiplies transformed activations in {use.func}, then transformed "
                                              f"back by {deferred.summed}: a convolution kernel")
            elif deferred.summed is not None:
                use = Use("matmul", use.func, f"multiplies activations in {use.func}, then summed over its own axis "
                                              f"by {deferred.summed}: a matrix operand")
            elif deferred.folded is not None:
                use = Use("table", use.func, f"added to activations in {use.func} as a "
                                             f"{_shape(deferred.tensor.shape)} table, the same along axes that "
                                             f"{deferred.folded} then folds into the batch")
            elif deferred.modulated and deferred.kernel is not None:
                use = Use("matmul", use.func, f"multiplied in {use.func} by activations broadcast along its axes, then "
                                              f"matrix operand of {deferred.kernel}: a kernel modulated per example")
            self.guard = deferred.guard  # the test the use came after, not the last one of the pass
            # what went through exp into a convolution kernel (an SSM's A, dt) is a state
            self._use(deferred.tensor, use, mapped_is_state=deferred.summed in _INVERSE_FFTS)
        self.deferred, self.following, self.products = [], {}, {}

    def _elementwise(self, bare: str, shown: str, tensor: torch.Tensor, live: list[torch.Tensor],
                     axis: str | None = None) -> Use:
        if id(tensor) not in self.selected:
            return self._with_activations(bare, shown, tensor, live, axis)
        others = [a for a in live if id(a) not in self.selected]
        if id(tensor) in self.looked_up and bare not in _MATMUL:  # blended, added, subtracted: still rows of a table
            return Use("lookup", shown, f"rows picked by {self.looked_up[id(tensor)]}, then used in {shown}: an "
                                        "embedding lookup")
        if bare in _MATMUL or others:
            return self._with_activations(bare, shown, tensor, others, axis)
        return Use("lookup", shown, _WHY["picked"].format(f=shown))  # the rows start the activations

    def _without_gains(self, shown: str, traced: list[torch.Tensor], out: Any, known: bool = True) -> list[torch.Tensor]:
        """``traced`` less the gains of a weight: a parameter that multiplies another one of the product's
        whole shape, broadcast along some of its axes (a weight norm's magnitude ``g * v / v.norm()``,
        a per-channel gain folded into a kernel) scales that weight and is no part of the matrix. In a
        function decaykit does not know (``known=False``: a learnable fake quantizer's step size and
        zero point), such a parameter is no part of the matrix either, but what it is stays untold."""
        shape = next((tuple(o.shape) for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)), None)
        whole = {p for t in traced if tuple(t.shape) == shape for p in self.origin[id(t)]}
        if not whole:
            return traced  # no operand has the product's shape: factors of it (``u * v.mT``), not gains
        kept = []
        for t in traced:
            if tuple(t.shape) == shape or set(self.origin[id(t)]) <= whole:  # the weight, or its own norm
                kept.append(t)
            elif known:
                self._use(t, Use("scale", shown, f"scales a weight in {shown}, broadcast along its axes: a gain"))
            else:
                self._use(t, Use("other", shown, f"used with a weight in {shown}, broadcast along its axes"))
        return kept

    def _mark(self, out: Any, into: set[int], skip: Mapping[int, Any] | None = None) -> None:
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and (skip is None or id(t) not in skip):
                into.add(id(t))
                self.keep.append(t)

    def _pass_on(self, out: Any, params: set[int], via: Mapping[int, str] | None = None, selected: bool = False) -> None:
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.origin[id(t)] = tuple(sorted(params))
                if via:
                    self.via[id(t)] = dict(via)
                if selected:  # rows picked by the inputs are the parameter and an activation at once
                    self.selected.add(id(t))
                    self.live.add(id(t))
                self.keep.append(t)

    def _use(self, tensor: torch.Tensor, use: Use, mapped_is_state: bool = False) -> None:
        """Record ``use`` for every parameter ``tensor`` still is; one that went alone through a nonlinear map
        is judged by :func:`_after` (a state parameter, wherever ``mapped_is_state``)."""
        vias = self.via.get(id(tensor), {})
        for p in self.origin[id(tensor)]:
            via = vias.get(p)
            mine = (Use("state", use.func, f"fed alone through {via}, then into {use.reason}: a state parameter")
                    if mapped_is_state and via is not None else _after(use, via, vector=len(self.shapes[p]) <= 1))
            self.uses.setdefault(p, []).append(mine)
            if self.guard is not None:
                self.after_test.setdefault((p, mine), self.guard)

    def _layer(self, bare: str, shown: str, args: tuple, kwargs: dict) -> None:
        named = _named_args(bare, args, kwargs)
        for arg, value in named.items():
            kind = _LAYER_ARGS[bare].get(arg)
            if not isinstance(value, torch.Tensor) or id(value) not in self.origin or kind in (None, "index"):
                continue
            if kind == "input" and id(value) in self.selected:
                self._use(value, Use("lookup", shown, _WHY["picked"].format(f=shown)))
            elif kind == "bias":
                self._use(value, Use("bias", shown, f"added to activations in {shown}: a bias"))
            elif kind in ("keys", "values"):  # add_bias_kv: torch.cat'ed to the keys and values
                self._use(value, Use("bias", shown, _WHY["keyvalue"].format(what=kind, f=shown)))
            elif kind == "matmul" and self._variance(value, [v for a, v in named.items() if _LAYER_ARGS[bare].get(a) == "input"]):
                self._use(value, Use(kind, shown, f"{_WHY[kind].format(f=shown)} with squared activations (a variance "
                                                  "propagated)"), mapped_is_state=True)
            else:
                self._use(value, Use(kind, shown, _WHY[kind].format(f=shown)))

    def _variance(self, t: torch.Tensor, inputs: list[Any]) -> bool:
        """Whether ``t``, squared after a map of its own (``exp(log_std) ** 2``), meets only squared activations
        in a matmul: variances propagated through a linear map (gSDE's ``mm(latent ** 2, std ** 2)``, the local
        reparametrisation's ``F.linear(x ** 2, sigma ** 2)``), a log-std, no weight of a layer."""
        live = [a for a in inputs if isinstance(a, torch.Tensor) and id(a) in self.live]
        return (id(t) in self.squared and bool(live) and all(id(a) in self.squared for a in live)
                and all(self.via.get(id(t), {}).get(p) for p in self.origin[id(t)]))

    def _norm_by_hand(self, shown: str, args: tuple, kwargs: dict, out: Any, traced: list[torch.Tensor]) -> bool:
        """A norm written out on what is no activation: ``x * rsqrt(x.pow(2).mean(-1) + eps)`` (Llama's and T5's
        RMSNorm on learned latents), where the statistic went through its map (``pow``, ``rsqrt``) and is then
        broadcast back over the tensor it was computed from: the map only normalises, and the product is
        that tensor, normalised. Or a gain multiplying a normalised tensor computed from parameters alone
        (a learned query through ``to_q`` then ``F.normalize(q) * gamma``): a norm gain, whatever the
        normalised tensor then feeds. False where neither holds."""
        if not isinstance(out, torch.Tensor):
            return False
        stats = [t for t in traced if self._statistic_of(t, traced, out)]
        if stats:
            rest = [t for t in traced if not any(t is s for s in stats)]
            params = {p for t in rest for p in self.origin[id(t)]}
            self._pass_on(out, params, {p: f for t in rest for p, f in self.via.get(id(t), {}).items()},
                          any(id(t) in self.selected for t in rest))
            self._mark(out, self.normalised)
            return True
        operands = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        normed = [t for t in operands if id(t) in self.normalised and id(t) not in self.origin]
        # the gain spreads along no axis of the normalised tensor: else that tensor scales it
        if not normed or any(_broadcast_over(t.shape, out.shape) for t in normed):
            return False
        for t in traced:
            self._use(t, Use("gain", shown, f"multiplies a normalised tensor computed from parameters in {shown}: "
                                            "a norm gain"))
        self._mark(out, self.normalised)
        return True

    def _norm_bias(self, shown: str, out: Any, traced: list[torch.Tensor]) -> bool:
        """A per-channel tensor added to a parameter normalised by hand (a LayerNorm written out on learned
        latents, ``z_hat * g + b``): the norm's bias, and the sum is the normalised parameter still."""
        normed = [t for t in traced if id(t) in self.normalised]
        biases = [t for t in traced if id(t) not in self.normalised and _per_channel(t.shape)]
        if not normed or not biases or len(normed) + len(biases) != len(traced) or not isinstance(out, torch.Tensor):
            return False
        if any(_broadcast_over(t.shape, out.shape) for t in normed):
            return False
        for t in biases:
            self._use(t, Use("normbias", shown, f"added to a tensor normalised from parameters in {shown}: a norm bias"))
        self._pass_on(out, {p for t in normed for p in self.origin[id(t)]},
                      {p: f for t in normed for p, f in self.via.get(id(t), {}).items()})
        self._mark(out, self.normalised)
        return True

    def _statistic_of(self, t: torch.Tensor, traced: list[torch.Tensor], out: torch.Tensor) -> bool:
        """Whether ``t`` is a statistic of another operand in ``traced``: every parameter it is went alone
        through a nonlinear map (``rsqrt(x.pow(2).mean(-1))``), that operand is those parameters without
        one, and ``t`` is broadcast along the product (reduced over an axis)."""
        params, vias = set(self.origin[id(t)]), self.via.get(id(t), {})
        if not params or not all(vias.get(p) for p in params) or not _broadcast_over(t.shape, out.shape):
            return False
        return any(x is not t and params <= set(self.origin[id(x)]) and not any(self.via.get(id(x), {}).get(p) for p in params)
                   for x in traced)

    def _normalises_parameter(self, bare: str, shown: str, args: tuple, kwargs: dict, out: Any) -> bool:
        """A normalisation of what is not an activation (learned queries, tokens looked up by a constant
        index): its gain and bias are still a norm's, and the output is its input parameter, if it
        is one, normalised. False when the norm has no gain or bias of its own: then everything
        passes through (a weight standardised)."""
        named = _named_args(bare, args, kwargs)
        affine = {arg: v for arg, v in named.items() if _LAYER_ARGS[bare].get(arg) in ("norm", "normbias")
                  and isinstance(v, torch.Tensor) and id(v) in self.origin}
        if not affine:
            return False
        for arg, value in affine.items():
            kind = _LAYER_ARGS[bare][arg]
            self._use(value, Use(kind, shown, _WHY[kind].format(f=shown)))
        source = named.get("input")
        if isinstance(source, torch.Tensor) and id(source) in self.origin:
            self._pass_on(out, set(self.origin[id(source)]), self.via.get(id(source)), id(source) in self.selected)
        return True

    def _with_activations(self, bare: str, shown: str, tensor: torch.Tensor, activations: list[torch.Tensor],
                          axis: str | None) -> Use:
        """The use of ``tensor`` in ``bare`` with ``activations``; ``axis``: where a join is along the
        activations' ``"last"`` or ``"first"`` axis (:func:`_join_axis`)."""
        if bare in _MATMUL:
            return Use("matmul", shown, f"matrix operand of {shown}")
        # a row picked per token (an expert's bias) counts by its row's shape
        rows = 1 if id(tensor) in self.selected else 0
        stored_per_channel = id(tensor) not in self.gathered and all(
            _per_channel(self.shapes[p][rows:]) for p in self.origin[id(tensor)])
        if bare in _CONCAT and axis == "last" and stored_per_channel:
            # one more entry along the activations' last axis, the same for every row (an attention sink's
            # logit, expanded over the queries), not a token; a column joined to channels-first activations
            # (B, C, N) is one more token (SepViT's window token), and nothing here says where the channels are
            rows = self.spread.get(id(tensor), set()) - {-1, -tensor.ndim}
            if rows or any(id(a) in self.scores for a in activations):
                return Use("bias", shown, f"joined to activations along their last axis in {shown}: a bias")
            return Use("other", shown, f"joined to activations along their last axis in {shown}, varying along the "
                                       "axes before it: a bias if that axis holds channels, a learned token if tokens")
        if bare in _CONCAT and axis == "first" and activations and all(id(a) in self.raw for a in activations):
            # rows joined to the model's own inputs along their first axis, before any layer: more examples in
            # the data's own space (a GP's inducing points) as much as learned tokens, and nothing here tells which
            return Use("other", shown, f"joined to the raw inputs along their first axis in {shown}, before any "
                                       "layer: learned inputs in the data's own space (inducing points) or tokens")
        if bare in _CONCAT:
            return Use("concat", shown, _WHY["concat"].format(f=shown))
        if not activations:
            return Use("state", shown, _WHY["state"].format(f=shown))
        if bare in _ADD:
            # per channel as used or as stored (a (24,) bias viewed as (4,4)), or the same for every
            # token (a per-expert bias (E,1,C)): a bias; a table that varies along the tokens is positional
            along = _along_tokens(tensor.shape, activations, self.batch)
            axial = not (_per_channel(tensor.shape) or stored_per_channel) and self._axial(tensor, activations)
            if along == "constant" and axial:
                return Use("table", shown, f"added to activations in {shown} as a {_shape(tensor.shape)} table that "
                                           "varies along one of their token axes, the same along another: an axial "
                                           "position table")
            if _per_channel(tensor.shape) or stored_per_channel or along == "constant":
                return Use("bias", shown, f"added to activations in {shown}: a bias")
            if any(set(_own_axes(tensor)) <= self.maps.get(id(a), set()) for a in activations):
                return Use("bias", shown, _WHY["mapbias"].format(f=shown))
            if any(id(a) in self.scores for a in activations):  # a relative-position table as Swin adds it
                return Use("bias", shown, f"added to attention scores in {shown}: a bias")
            if not self.tokens or along == "unknown":  # a per-head (H, D) bias, or a table: the trace cannot tell
                why = "the input has no token axis" if not self.tokens else "its batch axis could be its tokens"
                return Use("other", shown, f"added to activations in {shown} as a {_shape(tensor.shape)} tensor, "
                                           f"but {why}: a bias or a position table?")
            return Use("table", shown, f"added to activations in {shown} as a {_shape(tensor.shape)} table")
        if bare in _MUL:
            if all(id(a) in self.masks for a in activations):
                return Use("concat", shown, f"put where the input's mask is set, by {shown}: a learned token")
            if any(id(a) in self.normalised for a in activations):
                return Use("gain", shown, f"multiplies normalised activations in {shown}: a norm gain")
            if self._outer(bare, tensor, activations):
                return Use("matmul", shown, _WHY["outer"].format(f=shown))
            return Use("scale", shown, f"multiplies activations in {shown}: a scale")
        return Use("other", shown, f"used in {shown}")

    def _outer(self, bare: str, tensor: torch.Tensor, activations: list[torch.Tensor]) -> bool:
        """Whether ``tensor`` times ``activations`` in ``bare`` is an outer product: the activations have one
        entry along its last axis and it has several (``x[..., None] * W``, a Planar flow's ``u * h(w·z)``),
        so each entry of the activations is mapped to a vector, by one row of ``tensor``: the weight of a
        ``Linear(1, d)`` per entry, no gain of them. Not in a division, nor where every parameter in
        ``tensor`` went alone through a nonlinear map (Mamba's ``dt[..., None] * -exp(A_log)``: a state)."""
        if bare not in _MUL or bare in _DIVIDES or not activations or tensor.ndim == 0 or tensor.shape[-1] < 2:
            return False
        if all(self.via.get(id(tensor), {}).get(p) for p in self.origin[id(tensor)]):
            return False
        return all(_along_last_alone(a.shape, tensor.shape) for a in activations)


def _after(use: Use, via: str | None, vector: bool = False) -> Use:
    """``use`` of a parameter that went alone through the nonlinear map ``via`` (``exp``), if any: a
    matrix operand or a table looked up stays one (a positive weight ``exp(log_w)``); anything else it
    feeds, a learned token's place included (Slot Attention's ``mu + exp(logsigma) * noise``), makes it a
    state parameter, as a log-std or a temperature is. So does a matrix operand a ``vector`` (at most one
    axis) went into: no matrix itself, it is laid into one (Glow's log-scales ``w_s`` on the diagonal of
    its LU 1x1 conv, an angle through cos and sin into a rotation), and the map's zero is no "off"."""
    if via is None or use.kind == "state":
        return use
    if use.kind == "matmul" and vector:
        return Use("state", use.func, f"fed alone through {via}, a vector, then laid into the {use.reason}: a state "
                                      "parameter")
    if use.kind in ("matmul", "lookup"):
        return use._replace(reason=f"{use.reason}, after {via}")
    return Use("state", use.func, f"fed alone through {via}, then used in {use.func}: a state parameter")


# Reading a value out of a fake tensor is impossible. A test of its truth (``if mask.any():``) is
# answered False, and in a second pass True (:func:`_both_ways`); a number read (``.item()``,
# ``int(t)``) gets a stand-in, 1, and lets the pass go on past a model's checks (``assert
# lengths.max().item() <= n``). Every use recorded is one the model's code makes.
_VALUE_READS = frozenset({"__bool__", "item", "__int__", "__index__", "__float__", "tolist"})


def _exponent(args: tuple, kwargs: dict) -> float | None:
    """The plain-number exponent of ``pow(x, e)`` / ``x ** e``; None for a tensor one."""
    exponent = (args[1:2] or [kwargs.get("exponent")])[0]
    return exponent if type(exponent) in (int, float) else None


def _then(vias: Mapping[int, str | None], shown: str) -> str:
    """The maps a tensor went through alone, ``shown`` the last: ``"exp then pow"``, or ``shown`` alone."""
    prior = next((f for f in vias.values() if f), None)
    return f"{prior.split(' then ')[0]} then {shown}" if prior else shown


def _holds_no_values(t: torch.Tensor) -> bool:
    """A meta or fake tensor of the pass: reading its value (a test, ``.item()``, an index) has no answer."""
    return t.is_meta or type(t).__name__ == "FakeTensor"


def _scalar_index(index: Any) -> bool:
    """Whether ``index`` is a 0-d integer tensor without values, which indexing would read."""
    return (isinstance(index, torch.Tensor) and index.ndim == 0 and not index.is_floating_point()
            and index.dtype != torch.bool and _holds_no_values(index))


def _stand_in(read: str, t: torch.Tensor) -> Any:
    one: Any = False if t.dtype == torch.bool else (1 if not t.is_floating_point() else 1.0)
    if read == "__bool__":
        return False
    if read in ("__int__", "__index__"):
        return 1
    if read == "__float__":
        return 1.0
    if read == "tolist":
        out: Any = one
        for size in reversed(t.shape):
            out = [out] * size
        return out
    return one


# torch's own files between a model's code and the mode's ``__torch_function__``
_DISPATCH_FILES = tuple(os.path.join("torch", name) for name in ("overrides.py", "_tensor.py", os.path.join("utils", "_device.py")))


def _caller() -> tuple[str, bool]:
    """Where the model's code made the current read: the frame that called ``__torch_function__``,
    past torch's dispatch, as ``'self.training and torch.rand(1) > p' (peft/tuners/lokr/layer.py:309)``,
    and whether that line is an ``assert``."""
    import linecache
    import sys

    frame: Any = sys._getframe(1)
    while frame is not None and frame.f_code.co_name != "__torch_function__":
        frame = frame.f_back
    frame = frame.f_back if frame is not None else None
    while frame is not None and frame.f_code.co_filename.endswith(_DISPATCH_FILES):
        frame = frame.f_back
    if frame is None:
        return "a test of a tensor's value", False
    path = frame.f_code.co_filename
    where = path.split(f"site-packages{os.sep}")[-1] if "site-packages" in path else os.path.basename(path)
    code = linecache.getline(path, frame.f_lineno).split(" #")[0].strip()
    asserted = code.startswith("assert ")
    for keyword in ("if ", "elif ", "while ", "assert "):
        if code.startswith(keyword):
            code = code[len(keyword):].rstrip(":").strip()
    return (f"{code!r} ({where}:{frame.f_lineno})" if code else f"{where}:{frame.f_lineno}"), asserted


def _named_args(bare: str, args: tuple, kwargs: dict) -> dict[str, Any]:
    """A layer function's operands by argument name, given by position or by keyword."""
    named = dict(zip(_POSITIONS[bare], args))
    named.update({k: v for k, v in kwargs.items() if k in _LAYER_ARGS[bare]})
    return named


def _named_input(args: tuple, kwargs: dict) -> Any:
    """The ``input`` operand, given first or by keyword (``self`` of a method)."""
    return args[0] if args else kwargs.get("input")


def _join_axis(bare: str, args: tuple, kwargs: dict) -> str | None:
    """Along which axis of its tensors ``cat`` joins them: ``"last"``, ``"first"`` (of two or more), or None."""
    if bare not in ("cat", "concat", "concatenate") or not args or not isinstance(args[0], (list, tuple)) or not args[0]:
        return None
    dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
    ndim = args[0][0].ndim
    if not isinstance(dim, int) or isinstance(dim, bool):
        return None
    axis = dim % max(ndim, 1)
    return "last" if axis == ndim - 1 else "first" if axis == 0 else None


def _along_tokens(shape: torch.Size, activations: list[torch.Tensor], batches: set[int]) -> str:
    """How an addend of ``shape`` lies along the tokens of the activations: ``"constant"`` where it is
    broadcast along an axis of more than one entry that is not the batch axis (:func:`_batch_axis`),
    ``"varies"`` where it is not, ``"unknown"`` where the batch sizes the inputs may have (``batches``)
    disagree."""
    verdicts = set()
    for a in activations:
        padded = (1,) * (a.ndim - len(shape)) + tuple(shape)
        seen = set()
        for b in batches or {None}:
            batch_axis = _batch_axis(a.shape, b)
            seen.add(any(s == 1 and n > 1 and i != batch_axis for i, (s, n) in enumerate(zip(padded, a.shape))))
        verdicts.add("unknown" if len(seen) > 1 else "constant" if True in seen else "varies")
    return next((v for v in ("constant", "unknown") if v in verdicts), "varies")


def _batch_axis(shape: torch.Size, batch: int | None) -> int | None:
    """The axis of activations of ``shape`` that holds the batch: the first of the batch size (a seq-first
    (T, 1, H, D) activation of a batch of 1 has it second), else the first axis where its size is a multiple
    of it: the batch folded there with another axis (a video's frames or a series' channels, (B*T, N, D)),
    so that a position table added to each frame is broadcast along the batch alone."""
    if batch is None:
        return None
    same = next((i for i, n in enumerate(shape) if n == batch), None)
    if same is None and shape and batch > 0 and shape[0] % batch == 0:
        return 0
    return same


def _input_kinds(t: torch.Tensor) -> tuple[str, ...]:
    """What the axes of an input hold: ids (B, L) or (B, R, L) are tokens after the batch; floats (B, T, D) or
    (B, C, H, W) tokens or a grid between the batch and a last axis that may hold channels or not."""
    if not t.is_floating_point():
        return ("b",) + ("t",) * (t.ndim - 1)
    return ("b", "c") if t.ndim == 2 else ("b",) + ("t",) * (t.ndim - 2) + ("?",) * (t.ndim > 1)


# ops that may reorder axes without saying how (``x.mT``): what their output's axes hold is not followed
_REORDERS = frozenset({"__get__", "t", "movedim", "moveaxis", "adjoint", "unfold", "as_strided", "diagonal", "einsum"})
_PAIRWISE_MATMUL = frozenset({"matmul", "__matmul__", "mm", "bmm"})  # ``a @ b``, operands in that order
_VIEWS = frozenset({"view", "reshape", "unflatten", "flatten", "view_as", "reshape_as"})


def _out_kinds(bare: str, args: tuple, kwargs: dict, out: torch.Tensor, known: list[tuple[torch.Tensor, tuple[str, ...]]],
               live: set[int]) -> tuple[str, ...] | None:
    """What the axes of ``out`` hold, from ``known`` (activations and what their axes hold); None where unknown."""
    first = _named_input(args, kwargs)
    mine = next((k for t, k in known if t is first), None)
    if bare in _CONVOLUTIONS:
        return ((mine[0] if mine else "?"), "c") + ("t",) * (out.ndim - 2)
    if bare in ("linear", "bilinear", "embedding", "embedding_bag") and mine is not None and len(mine) + (bare[0] == "e") == out.ndim:
        return (*mine[:out.ndim - 1], "c")
    if bare in _MATMUL:
        return _matmul_kinds(args, out, known, live) if bare in _PAIRWISE_MATMUL else None
    if bare in _VIEWS and mine is not None and isinstance(first, torch.Tensor):
        return _regroup(tuple(first.shape), tuple(out.shape), mine)
    if bare in ("transpose", "swapaxes", "swapdims", "permute") and mine is not None:
        return _reordered(bare, args, kwargs, mine)
    if bare in _REORDERS or (bare in _LAYER_ARGS and bare not in _NORMALISING | {"prelu", "scaled_dot_product_attention"}):
        return None
    return next((k for t, k in known if t.ndim == out.ndim), None)


def _matmul_kinds(args: tuple, out: torch.Tensor, known: list[tuple[torch.Tensor, tuple[str, ...]]],
                  live: set[int]) -> tuple[str, ...] | None:
    """``a @ b``: ``a``'s axes but its last, then ``b``'s last; a parameter's axes hold channels."""
    operands = [t for t in args[:2] if isinstance(t, torch.Tensor)]
    if len(operands) != 2 or any(t.ndim < 2 for t in operands):
        return None
    kinds = dict((id(t), k) for t, k in known)
    a, b = ((kinds.get(id(t)) if id(t) in live else ("c",) * t.ndim) for t in operands)
    if a is None or b is None:
        return None
    joined = a[:-1] + b[-1:]
    return joined if len(joined) == out.ndim else b[:-2] + a[-2:-1] + b[-1:] if len(b) == out.ndim else None


def _reordered(bare: str, args: tuple, kwargs: dict, kinds: tuple[str, ...]) -> tuple[str, ...] | None:
    """What the axes hold after ``transpose(d0, d1)`` or ``permute(dims)``."""
    n = len(kinds)
    if bare == "permute":
        dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else kwargs.get("dims", args[1:])
        if len(dims) != n or not all(isinstance(d, int) for d in dims):
            return None
        return tuple(kinds[d % n] for d in dims)
    d0, d1 = kwargs.get("dim0", args[1] if len(args) > 1 else None), kwargs.get("dim1", args[2] if len(args) > 2 else None)
    if not isinstance(d0, int) or not isinstance(d1, int) or not n:
        return None
    out = list(kinds)
    out[d0 % n], out[d1 % n] = kinds[d1 % n], kinds[d0 % n]
    return tuple(out)


def _regroup(src: tuple[int, ...], dst: tuple[int, ...], kinds: tuple[str, ...]) -> tuple[str, ...] | None:
    """What the axes of a view ``dst`` of ``src`` hold: axes split from one hold what it held (heads split from
    channels are channels), axes merged hold what all held (a grid flattened into tokens), else "b" where the
    batch is among them (frames folded into it) or "?"; None where the shapes cannot be matched."""
    if 0 in src or 0 in dst:
        return None
    out: list[str] = []
    i = j = 0
    while i < len(src) or j < len(dst):
        if j < len(dst) and dst[j] == 1 and (i == len(src) or src[i] != 1):
            out.append("?")
            j += 1
            continue
        if i < len(src) and src[i] == 1 and (j == len(dst) or dst[j] != 1):
            i += 1
            continue
        if i == len(src) or j == len(dst):
            return None
        a, b, held, width = src[i], dst[j], {kinds[i]}, 1
        i, j = i + 1, j + 1
        while a != b:
            if a < b and i < len(src):
                a, held, i = a * src[i], held | {kinds[i]}, i + 1
            elif b < a and j < len(dst):
                b, width, j = b * dst[j], width + 1, j + 1
            else:
                return None
        out += [held.pop() if len(held) == 1 else "b" if "b" in held else "?"] * width
    return tuple(out)


def _varying_axes(shape: torch.Size, out: torch.Size) -> tuple[int, ...]:
    """The axes of ``out``, counted from its end, along which an addend of ``shape`` varies, its last (channels) aside."""
    return tuple(i for i in range(-min(len(shape), len(out)), -1) if shape[i] > 1)


def _broadcast_over(shape: torch.Size, other: torch.Size) -> bool:
    """Whether a tensor of ``shape`` is broadcast along an axis of more than one entry of ``other``."""
    padded = (1,) * (len(other) - len(shape)) + tuple(shape)
    return any(s == 1 and n > 1 for s, n in zip(padded, other))


def _same_shapes(t: torch.Tensor, out: Any) -> bool:
    return isinstance(out, torch.Tensor) and out.shape == t.shape


def _rows(t: torch.Tensor, args: tuple, kwargs: dict, out: Any, axes: tuple[int, ...], bare: str) -> bool:
    """Whether ``out`` holds ``t`` cut into single rows along one of ``axes`` (axes counted from the end):
    ``chunk`` / ``split`` into pieces of one, ``unbind``, ``select``, ``t[:, i]``, ``t[:, i : i + 1]``."""
    pieces = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
    if bare == "__getitem__":
        index = args[1] if len(args) > 1 else None
        index = index if isinstance(index, tuple) else (index,)
        cut = next((i for i, x in enumerate(index) if not (isinstance(x, slice) and x == slice(None))), None)
        if cut is None or cut - t.ndim not in axes:
            return False
        if isinstance(index[cut], slice):  # ``t[:, i : i + 1]``
            return len(pieces) == 1 and pieces[0].ndim == t.ndim and pieces[0].shape[cut] == 1
        return isinstance(index[cut], int) and not isinstance(index[cut], bool)
    dim = kwargs.get("dim", args[2] if bare not in ("unbind", "select") and len(args) > 2 else
                     args[1] if bare in ("unbind", "select") and len(args) > 1 else 0)
    found = _axes_from_end(t, dim) if isinstance(dim, int) else set()
    if not found:
        return False
    (axis,) = found
    return axis in axes and bool(pieces) and all(p.ndim == t.ndim - 1 or p.shape[axis] == 1 for p in pieces)


def _einsum_elementwise(args: tuple) -> set[int]:
    """The ids of ``einsum``'s operands none of whose indices is summed out: ``"btd,d->btd"`` multiplies
    by a gain elementwise, where ``"btd,de->bte"`` contracts a matrix. None in the sublist form: every
    operand counts as contracted."""
    terms, rhs, operands = _einsum_terms(args)
    kept = set(rhs.replace("...", "_"))
    return {id(op) for term, op in zip(terms, operands)
            if isinstance(op, torch.Tensor) and set(term.replace("...", "_")) <= kept}


def _einsum_out_axes(args: tuple, t: torch.Tensor) -> tuple[int, ...]:
    """The axes of ``einsum``'s output, counted from its end, along which operand ``t`` has more than one
    entry (``"yrx,rbxy->yrxb"``: those of y, r and x); ``t``'s own axes where the equation says nothing."""
    terms, rhs, operands = _einsum_terms(args)
    term = next((term for term, op in zip(terms, operands) if op is t), None)
    if term is None or len(term) != t.ndim or "." in rhs:
        return _own_axes(t)
    return tuple(rhs.index(c) - len(rhs) for c, n in zip(term, t.shape) if n > 1 and c in rhs)


def _einsum_terms(args: tuple) -> tuple[list[str], str, list[Any]]:
    """``einsum``'s input terms, its output term (written or implicit) and its operands; none for the sublist form."""
    if not args or not isinstance(args[0], str):
        return [], "", []
    operands = list(args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:])
    lhs, arrow, rhs = args[0].replace(" ", "").partition("->")
    terms = lhs.split(",")
    if not arrow:
        letters = "".join(terms).replace(".", "")
        rhs = ("..." if "..." in lhs else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return terms, rhs, operands


def _contractions(bare: str, args: tuple, kwargs: dict) -> list[tuple[torch.Tensor, set[int], set[int], list[torch.Tensor]]]:
    """For each operand of a contraction (``tensordot``, ``einsum``, a matmul): the axes it sums out, those it
    shares with the others and keeps (a batch), counted from its end, and the other operands."""
    tensors = [t for t in args[:2] if isinstance(t, torch.Tensor)]
    if bare == "tensordot" and len(tensors) == 2:
        a, b = tensors
        dims = kwargs.get("dims", args[2] if len(args) > 2 else 2)
        if isinstance(dims, int):
            dims = (list(range(a.ndim - dims, a.ndim)), list(range(dims)))
        return [(t, {d % t.ndim - t.ndim for d in ([d] if isinstance(d, int) else d)}, set(), [o])
                for t, d, o in ((a, dims[0], b), (b, dims[1], a))]
    if bare == "einsum":
        terms, rhs, operands = _einsum_terms(args)
        if "." in "".join(terms) or len(terms) != len(operands):
            return []
        out = []
        for i, (term, op) in enumerate(zip(terms, operands)):
            rest = "".join(terms[:i] + terms[i + 1:])
            others = [o for j, o in enumerate(operands) if j != i and isinstance(o, torch.Tensor)]
            out.append((op, {k - len(term) for k, c in enumerate(term) if c not in rhs},
                        {k - len(term) for k, c in enumerate(term) if c in rhs and c in rest}, others))
        return out
    if bare in _PAIRWISE_MATMUL and len(tensors) == 2 and all(t.ndim >= 2 for t in tensors):
        a, b = tensors
        return [(a, {-1}, set(range(-a.ndim, -2)), [b]), (b, {-2}, set(range(-b.ndim, -2)), [a])]
    return []


def _along_last_alone(activation: torch.Size, shape: torch.Size) -> bool:
    """Whether activations of shape ``activation`` are broadcast along the last axis of a tensor of ``shape``
    and along none of its other axes of more than one entry (``x[..., None]`` (B, F, 1) over W (F, d); not a
    style (B, 1, I, 1, 1) over a kernel (1, O, I, K, K), broadcast along its outputs too)."""
    padded = (1,) * (len(shape) - len(activation)) + tuple(activation)
    if len(activation) < 1 or padded[-1] != 1:
        return False
    return all(a == n for a, n in zip(padded[-len(shape):-1], shape[:-1]) if n > 1)


def _spread_along(t: torch.Tensor, activations: list[torch.Tensor]) -> bool:
    """Whether an activation is broadcast along an axis of ``t`` of more than one entry: in the product
    the activation is the gain (a style over a kernel), ``t`` is what it scales."""
    return any(_broadcast_over(a.shape, (1,) * (a.ndim - t.ndim) + tuple(t.shape)) for a in activations)


def _own_axes(t: torch.Tensor) -> tuple[int, ...]:
    """The axes, counted from the end, along which ``t`` has more than one entry: those it is not broadcast along."""
    return tuple(i for i in range(-t.ndim, 0) if t.shape[i] > 1)


def _reduced_axes(t: torch.Tensor, args: tuple, kwargs: dict) -> set[int]:
    """The axes of ``t``, counted from the end, that ``sum`` / ``mean`` reduces; none where no axis is named."""
    return _axes_from_end(t, kwargs.get("dim", args[1] if len(args) > 1 else None))


def _fft_axes(bare: str, t: torch.Tensor, args: tuple, kwargs: dict) -> set[int]:
    """The axes of ``t``, counted from the end, that the inverse Fourier transform ``bare`` sums over."""
    dim = kwargs.get("dim", args[2] if len(args) > 2 else _INVERSE_FFTS[bare])
    return set(range(-t.ndim, 0)) if dim is None else _axes_from_end(t, dim)


def _axes_from_end(t: torch.Tensor, dim: Any) -> set[int]:
    """The axes of ``t`` that ``dim`` (an int or a sequence of them) names, counted from the end; none where it names none."""
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return {d - t.ndim if d >= 0 else d for d in dims if isinstance(d, int) and not isinstance(d, bool)
            and -t.ndim <= d < t.ndim}


def _per_channel(shape: tuple[int, ...] | torch.Size) -> bool:
    return sum(1 for s in shape if s != 1) <= 1


def _shape(shape: torch.Size) -> str:
    return "(" + ",".join(str(s) for s in shape) + ")"
