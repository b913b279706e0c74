"""K models that differ only in λ (and seed), trained as one: stacked weights, batched matmuls.

Member k's parameters are slice k of tensors with K in dim 0. Its forward pass runs on its own
batch, ``x[k]``; the members' losses are summed, and one ``backward`` gives each member the
gradient of its own loss. The decay engine then shrinks member k by its own λ_k
(``weight_decay`` is a tensor ``[λ_1 … λ_K]``), so a batched trial equals the same trial run
alone up to float rounding (``tests/test_sweep_batched.py`` holds it to 1e-4).

Two ways to run the stacked forward:

* **layers**: a ``nn.Sequential`` of ``Linear`` layers and element-wise activations becomes a
  chain of ``torch.baddbmm``: K small matmuls in one call, no per-op dispatch for the batch dim.
  With ReLU, tanh or sigmoid activations the whole step, backward included, is written out on
  reused buffers (``backprop.py``); other activations go through autograd, with a hand-written
  Linear backward that puts each gradient straight into its weight's layout.
* **vmap**: any other model runs through ``torch.func.vmap(functional_call(model, params, x))``,
  with ``randomness="error"`` so that a model whose result depends on random draws (dropout)
  is not silently trained with draws that differ from its one-by-one run.

Models that cannot be stacked (BatchNorm in training mode updates running statistics in place;
data-dependent Python control flow; random layers) are detected once, by a trial step on two
throwaway members compared with the members' own forward, and the sweep trains one by one
with a note saying why.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from decaykit.policy.names import namer
from decaykit.sweeps.backprop import LinearChain, chain_supported
from decaykit.sweeps.data import SweepData
from decaykit.sweeps.optim import build_optimizer, decay_plan
from decaykit.sweeps.timing import interleaved
from decaykit.sweeps.trainer import autograd_step, decayed_names, seeded_model, training_step

if TYPE_CHECKING:
    from decaykit.sweeps.settings import Training

__all__ = [
    "NotBatchable", "StackedMembers", "check_batchable", "layer_plan", "stack_path", "stacking_is_timed", "stacking_pays",
]  # fmt: skip

# element-wise modules without parameters: they act on (K, b, ...) exactly as on (b, ...)
_ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
    nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Identity,
)  # fmt: skip


# the steps backprop.LinearChain writes out; convolutions go through autograd
_CHAIN_KINDS = frozenset({"linear", "elementwise", "flatten"})


class NotBatchable(Exception):
    """The model cannot be trained as a stack of members; ``str(exc)`` says why, for the sweep's note."""


def _plain(module: nn.Module, cls: type[nn.Module]) -> bool:
    """``module`` behaves exactly like ``cls``: same forward, no hooks that a rewritten forward would skip."""
    return (
        isinstance(module, cls)
        and type(module).forward is cls.forward
        and not module._forward_hooks
        and not module._forward_pre_hooks
    )


def layer_plan(module: nn.Module, prefix: str = "") -> list[tuple[str, str, nn.Module]] | None:
    """The model as a list of ``(kind, name prefix, module)`` steps for the baddbmm path, or None."""
    if _plain(module, nn.Sequential):
        steps: list[tuple[str, str, nn.Module]] = []
        for name, child in module.named_children():
            sub = layer_plan(child, f"{prefix}{name}.")
            if sub is None:
                return None
            steps.extend(sub)
        return steps
    if _plain(module, nn.Linear):
        return [("linear", prefix, module)]
    if any(_plain(module, cls) for cls in _ELEMENTWISE) and not any(True for _ in module.parameters()):
        return [("elementwise", prefix, module)]
    if _plain(module, nn.Flatten):
        return [("flatten", prefix, module)]
    if _plain(module, nn.Unflatten) and isinstance(module.dim, int):
        return [("unflatten", prefix, module)]
    if _plain(module, nn.Conv1d) and _stackable_conv(module):
        return [("conv1d", prefix, module)]
    if _plain(module, nn.Dropout) and module.p == 0:
        return [("elementwise", prefix, nn.Identity())]
    return None


class _StackedLinear(torch.autograd.Function):
    """K linear layers at once: y[k] = x[k] W[k]ᵀ + b[k], with W stacked as (K, out, in) like nn.Linear's.

    The backward is written out so that dW = gᵀx lands directly in W's own layout: autograd's
    bmm backward would compute xᵀg, shaped (K, in, out), and copy it transposed. Measured here
    for the demo's 512 → 10 head (K = 16, batch 32): 0.054 ms instead of 0.24 ms for dW, and the
    forward with W transposed in place 0.066 ms instead of 0.13 ms with W stored as (K, in, out).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        wt = weight.transpose(1, 2)
        return torch.bmm(x, wt) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, wt)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def _stackable_conv(conv: nn.Conv1d) -> bool:
    """A Conv1d the stacked convolution reproduces: zero padding given as numbers, no dilation, no groups."""
    return (
        conv.padding_mode == "zeros" and not isinstance(conv.padding, str) and conv.dilation == (1,) and conv.groups == 1
    )


class _StackedConv1d(torch.autograd.Function):
    """K Conv1d at once on activations h (K, C, L, b), batch innermost → (K, out, L', b).

    Each member's windows are copied into columns (K, C·k, L'·b), one strided copy per tap, and its
    weight (K, out, C·k) multiplies them in one batched matmul whose long side, L'·b, is the
    output's. The batch is innermost so that every copy, add and activation moves rows of b
    contiguous numbers. With the batch outside, (K, C, b, L), those rows were L' = 5 to 19 long and
    the element-wise work ran at a few ns per number: a training step of the MNIST-1D CNN (K = 16,
    batch 100, one thread, optimizer included) took 21.8 ms, 18.6 ms with the batch innermost and 15.9 ms
    with the linear head read unit-major too (medians of 9 interleaved rounds; 16 one-by-one steps 48-54 ms). Mkldnn's grouped convolution (groups = K, through
    autograd) took 43 ms for the forward and backward alone. Zero padding is never materialised: the
    taps that read it are zeroed in the columns and skipped in the backward. The backward is written
    out: dW lands in W's own layout, and the windows' gradient is added back tap by tap.
    """

    @staticmethod
    def forward(ctx: Any, h: Tensor, weight: Tensor, bias: Tensor | None, stride: int, pad: int) -> Tensor:
        size, channels, length_in, batch = h.shape
        k = weight.shape[-1]
        length = (length_in + 2 * pad - k) // stride + 1
        taps = _tap_ranges(length_in, k, stride, pad, length)
        columns = h.new_empty((size, channels, k, length, batch))
        for tap, (lo, hi, start) in enumerate(taps):
            columns[:, :, tap, :lo].zero_()
            columns[:, :, tap, hi:].zero_()
            if lo < hi:
                columns[:, :, tap, lo:hi].copy_(h[:, :, start : start + stride * (hi - lo - 1) + 1 : stride])
        columns = columns.view(size, channels * k, length * batch)
        w = weight.reshape(size, weight.shape[1], -1)
        out = torch.bmm(w, columns) if bias is None else torch.baddbmm(bias.unsqueeze(-1), w, columns)
        ctx.save_for_backward(columns, weight)
        ctx.geometry = (tuple(h.shape), taps, stride, bias is not None)
        return out.view(size, weight.shape[1], length, batch)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        columns, weight = ctx.saved_tensors
        shape, taps, stride, has_bias = ctx.geometry
        size, out_channels, k = weight.shape[0], weight.shape[1], weight.shape[-1]
        g = grad.reshape(size, out_channels, -1)
        grad_w = torch.bmm(g, columns.transpose(1, 2)).reshape(weight.shape) if ctx.needs_input_grad[1] else None
        grad_b = g.sum(2) if has_bias and ctx.needs_input_grad[2] else None
        grad_h = None
        if ctx.needs_input_grad[0]:
            w = weight.reshape(size, out_channels, -1)
            grad_cols = torch.bmm(w.transpose(1, 2), g).view(size, shape[1], k, -1, shape[3])
            grad_h = grad.new_zeros(shape)
            for tap, (lo, hi, start) in enumerate(taps):
                if lo < hi:
                    grad_h[:, :, start : start + stride * (hi - lo - 1) + 1 : stride] += grad_cols[:, :, tap, lo:hi]
        return grad_h, grad_w, grad_b, None, None


def _tap_ranges(length_in: int, k: int, stride: int, pad: int, length: int) -> list[tuple[int, int, int]]:
    """Per tap, the outputs ``lo:hi`` whose window reads a real input at that tap, and the input it reads for ``lo``.

    Output l reads input ``stride·l + tap − pad`` at tap ``tap``; outside ``0 ≤ i < length_in`` it reads padding."""
    ranges = []
    for tap in range(k):
        lo = max(0, -((tap - pad) // stride))
        hi = min(length, (length_in - 1 - tap + pad) // stride + 1)
        ranges.append((lo, max(lo, hi), stride * lo + tap - pad))
    return ranges


def _run_layers(steps: Sequence[tuple[str, str, nn.Module]], params: dict[str, Tensor], x: Tensor) -> Tensor:
    """Member k's forward on x[k] for every k: x is (K, b, ...), each Linear one batched matmul.

    Between Conv1d layers the activations stay channel-major with the batch innermost, (K, C, L, b), the
    layout the stacked convolution reads and writes. A Flatten of their features then is a view, (K, C·L, b):
    unit-major, where a Linear is zᵀ = W hᵀ + b and its input's gradient Wᵀgᵀ lands in the convolution's
    layout. Element-wise steps do not care; any other step gets the rows, (K, b, ...), back.
    """
    h, layout = x, "rows"
    for kind, prefix, module in steps:
        if kind == "flatten" and layout == "conv" and _flattens_features(module):
            h, layout = h.flatten(1, 2), "units"
            continue
        if layout != "rows" and kind != "elementwise" and (kind, layout) not in (("conv1d", "conv"), ("linear", "units")):
            h, layout = _as_rows(h, layout), "rows"
        weight, bias = params.get(prefix + "weight"), params.get(prefix + "bias")
        if kind == "linear" and layout == "units":
            h = torch.bmm(weight, h) if bias is None else torch.baddbmm(bias.unsqueeze(2), weight, h)
        elif kind == "linear":
            shape = h.shape
            flat = _StackedLinear.apply(h.reshape(shape[0], -1, shape[-1]), weight, bias)
            h = flat.reshape(*shape[:-1], weight.shape[1])
        elif kind == "conv1d":
            conv: Any = module
            if layout == "rows":
                h, layout = h.permute(0, 2, 3, 1), "conv"
            h = _StackedConv1d.apply(h, weight, bias, conv.stride[0], conv.padding[0])
        elif kind == "flatten":
            flatten: Any = module
            start = flatten.start_dim + 1 if flatten.start_dim >= 0 else flatten.start_dim
            end = flatten.end_dim + 1 if flatten.end_dim >= 0 else flatten.end_dim
            h = h.flatten(start, end)
        elif kind == "unflatten":
            unflatten: Any = module
            h = h.unflatten(unflatten.dim + 1 if unflatten.dim >= 0 else unflatten.dim, unflatten.unflattened_size)
        else:
            h = module(h)
    return _as_rows(h, layout)


def _flattens_features(flatten: Any) -> bool:
    """The Flatten turns a convolution's (b, C, L) into (b, C·L)."""
    return flatten.start_dim in (1, -2) and flatten.end_dim in (2, -1)


def _as_rows(h: Tensor, layout: str) -> Tensor:
    """Activations back to the members' rows, (K, b, ...), from ``layout`` ("conv" (K, C, L, b), "units" (K, F, b))."""
    if layout == "conv":
        return h.permute(0, 3, 1, 2)
    return h.transpose(1, 2) if layout == "units" else h


class StackedMembers:
    """K models with identical architecture held as stacked tensors, one optimizer over all of them."""

    batched = True

    def __init__(self, models: Sequence[nn.Module], weight_decays: Sequence[float], training: Training) -> None:
        if len(models) != len(weight_decays) or not models:
            raise ValueError("one weight decay per model, at least one model")
        self.size = len(models)
        base = models[0]
        names = [n for n, _ in base.named_parameters()]
        for m in models[1:]:
            if [(n, p.shape) for n, p in m.named_parameters()] != [(n, p.shape) for n, p in base.named_parameters()]:
                raise NotBatchable("the model factory built models with different parameters for different seeds")
        self.skeleton = copy.deepcopy(base)
        member_params = [dict(m.named_parameters()) for m in models]
        member_buffers = [dict(m.named_buffers()) for m in models]
        self.path = stack_path(base)
        self._steps = layer_plan(base) if self.path == "layers" else None
        with torch.no_grad():
            self.params: dict[str, Tensor] = {}
            for name, p in base.named_parameters():
                stacked = torch.stack([mp[name].detach() for mp in member_params])
                self.params[name] = nn.Parameter(stacked, requires_grad=p.requires_grad)
            self.buffers: dict[str, Tensor] = {
                name: torch.stack([mb[name] for mb in member_buffers]) for name, _ in base.named_buffers()
            }
        canonical = namer(base)
        trainable = {canonical(n): self.params[n] for n in names if self.params[n].requires_grad}
        plans = [decay_plan(m, wd, training.policy) for m, wd in zip(models, weight_decays)]
        self.optimizer = build_optimizer(
            trainable, plans, optimizer=training.optimizer, lr=training.lr, momentum=training.momentum, mode=training.mode
        )
        decayed = decayed_names(base, training.policy)
        self._decayed = [t for n, t in trainable.items() if n in decayed]
        self._vmapped: dict[bool, Callable[..., Tensor]] = {}
        self.loss = training.loss
        # the layers path's backward written out (backprop.py) where its activations allow, else autograd
        self._chain = (
            LinearChain(self._steps, self.params, training.loss)
            if self._steps is not None
            and all(kind in _CHAIN_KINDS for kind, _, _ in self._steps)
            and chain_supported(self._steps, self.params)
            else None
        )

    def _vmap(self, shared_input: bool) -> Callable[..., Tensor]:
        fn = self._vmapped.get(shared_input)
        if fn is None:
            skeleton = self.skeleton

            def call(params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
                return torch.func.functional_call(skeleton, (params, buffers), (x,))

            fn = torch.func.vmap(call, in_dims=(0, 0, None if shared_input else 0), randomness="error")
            self._vmapped[shared_input] = fn
        return fn

    def train_forward(self, x: Tensor) -> Tensor:
        if self._steps is not None:
            return _run_layers(self._steps, self.params, x)
        self.skeleton.train()
        return self._vmap(False)(self.params, self.buffers, x)

    def forward_backward(self, x: Tensor, y: Tensor) -> Tensor:
        if self._chain is not None:
            return self._chain.step(x, y)
        return autograd_step(self, x, y)

    def eval_forward(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """Outputs (K, n, ...) of every member on the shared ``x`` (n, ...), or of the members in ``rows``."""
        if self._chain is not None:
            return self._chain.evaluate(x, rows)
        params, buffers = self.params, self.buffers
        if rows is not None:
            params = {name: t[rows] for name, t in params.items()}
            buffers = {name: t[rows] for name, t in buffers.items()}
        if self._steps is not None:
            size = next(iter(params.values())).shape[0]
            return _run_layers(self._steps, params, x.unsqueeze(0).expand(size, *x.shape).contiguous())
        self.skeleton.eval()
        return self._vmap(True)(params, buffers, x)

    def same_start(self, i: int, j: int) -> bool:
        return all(torch.equal(t[i], t[j]) for t in (*self.params.values(), *self.buffers.values()))

    def decayed_norm(self) -> Tensor:
        with torch.no_grad():
            total = torch.zeros(self.size, dtype=torch.float64)
            for t in self._decayed:
                total += t.detach().double().reshape(self.size, -1).square().sum(1).cpu()
        return total.sqrt()

    def member_module(self, k: int) -> nn.Module:
        model = copy.deepcopy(self.skeleton)
        state = {name: t[k].detach().clone() for name, t in (*self.params.items(), *self.buffers.items())}
        model.load_state_dict(state, strict=False)
        return model


def check_batchable(model_fn: Callable[[], nn.Module], data: SweepData, training: Training) -> str | None:
    """None if the model trains correctly as a stack, else the reason it does not (for the sweep's note).

    Two throwaway members (seeds 0 and 1) take one stacked training step's forward and backward
    on two samples each; their outputs, in training and in evaluation mode, must match each
    member's own forward. Any error from vmap or from the model counts as "cannot batch".
    """
    models = [seeded_model(model_fn, s, training.dtype, training.device) for s in (0, 1)]
    for module in models[0].modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            return (
                f"{type(module).__name__} updates its running statistics in place during training, "
                "which stacked members cannot share"
            )
    twins = [copy.deepcopy(m) for m in models]
    x = data.x_train[:2].to(training.device)  # load_data put floating inputs in the training dtype; ids stay ids
    try:
        stack = StackedMembers(models, [0.0, 0.0], training)
        batched_train = stack.train_forward(x.unsqueeze(0).expand(2, *x.shape).contiguous())
        batched_train.float().sum().backward()
        batched_eval = stack.eval_forward(x)
    except NotBatchable as exc:
        return str(exc)
    except Exception as exc:  # vmap and the model's own code can raise anything; all mean "cannot stack"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"the model cannot run under torch.func.vmap ({type(exc).__name__}: {_shortened(first, 200)})"
    with torch.no_grad():
        for k, twin in enumerate(twins):
            twin.train()
            own_train = twin(x)
            twin.eval()
            own_eval = twin(x)
            for own, got in ((own_train, batched_train[k]), (own_eval, batched_eval[k])):
                if own.shape != got.shape or not torch.allclose(own, got.detach(), rtol=1e-4, atol=1e-5):
                    return "the stacked forward pass does not reproduce the model's own (data-dependent control flow?)"
    return None


def _shortened(text: str, most: int) -> str:
    """``text`` cut at the last word boundary within ``most`` characters, with an ellipsis: never mid-word.

    >>> _shortened("If error is occurring somewhere", 22), _shortened("If error is occurring somewhere", 20)
    ('If error is occurring…', 'If error is…')
    """
    if len(text) <= most:
        return text
    cut = text[: most - 1]
    if text[len(cut)] != " " and " " in cut:  # the cut fell inside a word: drop that word
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip() + "…"


def stack_path(model: nn.Module) -> str:
    """"layers" (baddbmm chain) or "vmap": how :class:`StackedMembers` would run ``model``."""
    tied = len(list(model.named_parameters(remove_duplicate=False))) != len(list(model.named_parameters()))
    plain = not tied and not any(True for _ in model.buffers())
    return "layers" if plain and layer_plan(model) is not None else "vmap"


def stacking_is_timed(model: nn.Module) -> bool:
    """Whether stacking ``model`` must first be timed against one-by-one steps: vmap, or stacked
    convolutions, whose speed against the one-model convolution kernels depends on the machine and its load."""
    if stack_path(model) == "vmap":
        return True
    return any(kind == "conv1d" for kind, _, _ in layer_plan(model) or [])


def stacking_pays(
    model_fn: Callable[[], nn.Module], data: SweepData, training: Training, members: int, reps: int = 5
) -> tuple[bool, str]:
    """Time training steps of ``members`` stacked models against the same steps one model at a time.

    vmap turns some layers into slower kernels (a convolution with K stacked weights becomes a grouped
    convolution, measured 2x slower than K separate ones for a small CNN here), so stacking is only
    used when it is faster. Best of up to ``reps`` interleaved timings, after one untimed round: from the
    second on, the trial stops once the best times differ by 2x or more either way, which further rounds
    do not overturn (the MNIST-1D CNN stacked: 3x faster). Returns (faster?, the figures).
    """
    from decaykit.sweeps.trainer import SingleMember

    batch = training.batch_for(data.train_size)
    x, y = data.x_train[:batch], data.y_train[:batch]
    decays = [1e-4 * k for k in range(members)]  # distinct: the per-member decay path, as in a sweep
    stack = StackedMembers([seeded_model(model_fn, k, training.dtype, training.device) for k in range(members)],
                           decays, training)  # fmt: skip
    single = SingleMember(seeded_model(model_fn, 0, training.dtype, training.device), decays[-1], training)
    xs, ys = x.unsqueeze(0).expand(members, *x.shape).contiguous(), y.unsqueeze(0).expand(members, *y.shape)
    runs = {"stacked": functools.partial(training_step, stack, xs, ys),
            "single": functools.partial(training_step, single, x[None], y[None])}  # fmt: skip
    times: dict[str, list[float]] = {key: [] for key in runs}
    for round_ in range(reps):
        for key, seconds in interleaved(runs, reps=1, warmup=1 if round_ == 0 else 0).items():
            times[key] += seconds
        t_stack, t_single = min(times["stacked"]), min(times["single"])
        if round_ >= 1 and not 0.5 < t_stack / (members * t_single) < 2.0:
            break
    detail = (f"{t_stack * 1e3:.2f} ms per stacked step of {members} models vs {members} x "
              f"{t_single * 1e3:.2f} ms one at a time")  # fmt: skip
    return t_stack < 0.9 * members * t_single, detail
