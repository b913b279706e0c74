"""One training step of K stacked Linear chains with the backward pass written out: no autograd graph.

Member k's parameters are slice k of tensors with K in dim 0; its batch is ``x[k]``. For the chain

    h_0 = x,   z_l = h_{l−1} W_lᵀ + b_l,   h_l = σ_l(z_l),   output z_L,

a step computes each member's loss L_k on its own batch and writes ∂L_k/∂θ_k into every parameter's
``.grad`` (the members share no parameters, so this is the gradient of Σ_k L_k):

    g_L = ∂L_k/∂z_L                         (cross-entropy, mean over b samples: (softmax(z_L) − onehot(y)) / b)
    ∂L/∂W_l = g_lᵀ h_{l−1},   ∂L/∂b_l = Σ_samples g_l
    g_{l−1} = σ'_{l−1} ⊙ (g_l W_l)          (σ' read from the output: ReLU 1[h > 0], tanh 1 − h², sigmoid h(1 − h))

Every activation, gradient and ``.grad`` lives in a buffer allocated once per batch shape and
overwritten each step; every layer is computed unit-major, z_lᵀ = W_l h_{l−1}ᵀ + b_l (see ``step``). Why not autograd: with the demo's 64-512-10 MLP, K = 16,
batch 32, the step's matmuls take about 0.5 ms, and autograd around them (graph nodes, a fresh
1 MiB tensor per activation and gradient, which the allocator hands back to the OS and faults in
again, the loss as four small ops) added 0.35 ms more; written out, 320 steps take 0.30 s instead
of 0.41 s (measured with the engine's step included). Gradients equal autograd's to float rounding
(``tests/test_sweep_backprop.py``).

Only chains whose activations have an output-only derivative (ReLU, tanh, sigmoid, identity) and
losses with a closed-form gradient (cross-entropy, mse, half_sum_squares) run here, Flattens only before
the first Linear; a callable loss gets its gradient from autograd on the outputs alone. Anything else
trains through autograd (``batched.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from decaykit.sweeps.metrics import member_losses

__all__ = ["LinearChain", "chain_supported"]

# activation -> (forward in place on z, backward in place on g given the activation's output h)
_ACTIVATIONS: dict[type[nn.Module], tuple[Callable[[Tensor], Any], Callable[[Tensor, Tensor], Any]]] = {
    nn.ReLU: (torch.Tensor.relu_, lambda g, h: torch.ops.aten.threshold_backward.grad_input(g, h, 0, grad_input=g)),
    nn.Tanh: (torch.Tensor.tanh_, lambda g, h: torch.ops.aten.tanh_backward.grad_input(g, h, grad_input=g)),
    nn.Sigmoid: (torch.Tensor.sigmoid_, lambda g, h: torch.ops.aten.sigmoid_backward.grad_input(g, h, grad_input=g)),
    nn.Identity: (lambda z: None, lambda g, h: None),
}

Step = tuple[str, str, nn.Module]  # (kind, parameter-name prefix, module), as batched.layer_plan gives


def chain_supported(steps: Sequence[Step], params: dict[str, Tensor]) -> bool:
    """True when :class:`LinearChain` can run these steps: known activations, every parameter trained."""
    kinds = [kind for kind, _, _ in steps if kind != "flatten"]
    if not kinds or kinds[0] != "linear" or steps[-1][0] != "linear":
        return False  # activations run in place: never on the input batch, and the output is a Linear's
    first = next(i for i, (kind, _, _) in enumerate(steps) if kind == "linear")
    if any(kind == "flatten" for kind, _, _ in steps[first:]):
        return False  # the step keeps activations unit-major, (K, units, rows): a Flatten between Linears has no such view
    if not all(p.requires_grad for p in params.values()):
        return False
    return all(kind != "elementwise" or type(module) in _ACTIVATIONS for kind, _, module in steps)


class _Slots:
    """Buffers for one input shape, handed out in the order a pass asks for them: allocated by the first pass."""

    def __init__(self) -> None:
        self.buffers: list[Tensor] = []
        self.next = 0

    def take(self, shape: Sequence[int], like: Tensor) -> Tensor:
        if self.next == len(self.buffers):
            self.buffers.append(torch.empty(tuple(shape), dtype=like.dtype, device=like.device))
        out = self.buffers[self.next]
        self.next += 1
        return out


def _forward(x: Tensor, layers: Sequence[tuple[str, Any, Any]], take: Callable[[Sequence[int], Tensor], Tensor]) -> Tensor:
    """The chain on x (K, b, ...), each Linear one (b)addbmm into a buffer, activations in place."""
    h = x
    for kind, a, b in layers:
        if kind == "linear":
            k, rows = h.shape[0], h[0].numel() // h.shape[-1]
            flat = h.reshape(k, rows, h.shape[-1])
            z = take((k, rows, a.shape[1]), a)
            if b is None:
                torch.bmm(flat, a.transpose(1, 2), out=z)
            else:
                torch.baddbmm(b.unsqueeze(1), flat, a.transpose(1, 2), out=z)
            h = z.view(*h.shape[:-1], a.shape[1])
        elif kind == "act":
            a(h)
        else:
            h = h.flatten(a, b)
    return h


class LinearChain:
    """The stacked chain's training step (forward, loss, backward into ``.grad``) on preallocated buffers."""

    def __init__(self, steps: Sequence[Step], params: dict[str, Tensor], loss: Any) -> None:
        self.loss = loss
        self.layers: list[tuple[str, Any, Any]] = []  # ("linear", W, b) | ("act", forward, backward) | ("flatten", start, end)
        for kind, prefix, module in steps:
            if kind == "linear":
                self.layers.append(("linear", params[prefix + "weight"], params.get(prefix + "bias")))
            elif kind == "flatten":
                flatten: Any = module
                start = flatten.start_dim + 1 if flatten.start_dim >= 0 else flatten.start_dim
                end = flatten.end_dim + 1 if flatten.end_dim >= 0 else flatten.end_dim
                self.layers.append(("flatten", start, end))
            elif type(module) is not nn.Identity:
                self.layers.append(("act", *_ACTIVATIONS[type(module)]))
        self._first_linear = next(i for i, layer in enumerate(self.layers) if layer[0] == "linear")
        self.params = [t for kind, w, b in self.layers if kind == "linear" for t in (w, b) if t is not None]
        self._buffers: dict[tuple[Any, ...], _Slots] = {}
        self._minus_one: Tensor | None = None

    def _slots(self, key: tuple[Any, ...]) -> _Slots:
        slots = self._buffers.get(key)
        if slots is None:
            slots = self._buffers[key] = _Slots()
        slots.next = 0
        return slots

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        """Forward, loss and backward for batches ``x`` (K, b, ...) and targets ``y`` (K, b, ...).

        Writes every parameter's ``.grad`` (the gradient of Σ_k L_k) and returns the (K,) losses.

        Every activation and gradient is kept unit-major, hᵀ (K, units, rows): each Linear is zᵀ = W hᵀ + b
        and its input's gradient Wᵀ gᵀ, so ∂W = gᵀ h reads gᵀ contiguous. For the demo's 64-512-10 MLP
        (K = 16, batch 32, one thread) a step took 10% less CPU time than with row-major hidden layers (1.66
        and 1.90 ms against 1.86 and 2.09, medians of two paired runs); cross-entropy's log-softmax over
        10 classes runs along 32-wide rows.
        """
        take = self._slots(("train", *x.shape)).take  # a step's buffers depend on its batch shape only
        first, layers = self._first_linear, self.layers
        with torch.no_grad():
            h = x
            for _, start, end in layers[:first]:  # Flattens of the input batch
                h = h.flatten(start, end)
            k, rows = h.shape[0], h[0].numel() // h.shape[-1]
            h_t = h.reshape(k, rows, h.shape[-1]).transpose(1, 2)  # a view of the batch, (K, in, rows)
            saved: list[Tensor] = []  # each Linear's input (for ∂W) and each activation's output (for σ')
            for kind, a, b in layers[first:]:
                if kind == "linear":
                    saved.append(h_t)
                    z_t = take((k, a.shape[1], rows), a)
                    if b is None:
                        torch.bmm(a, h_t, out=z_t)
                    else:
                        torch.baddbmm(b.unsqueeze(2), a, h_t, out=z_t)
                    h_t = z_t
                else:
                    a(h_t)
                    saved.append(h_t)
            losses, g_t = self._loss_grad(h_t, y, (*h.shape[:-1], h_t.shape[1]), take(h_t.shape, h_t))
            for i in range(len(layers) - 1, first - 1, -1):  # the input batch needs no gradient
                kind, a, b = layers[i]
                if kind == "linear":
                    g_t = self._linear_backward(g_t, saved.pop(), a, b, i > first, take)
                else:
                    b(g_t, saved.pop())
        return losses

    def evaluate(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """Outputs (K, n, ...) of every member (or of the members in ``rows``) on the shared input ``x`` (n, ...).

        The input is broadcast, not copied, to the members; hidden activations reuse buffers; the
        output is a new tensor, so callers may keep it.
        """
        layers = self.layers
        if rows is not None:
            layers = [(kind, a[rows], None if b is None else b[rows]) if kind == "linear" else (kind, a, b)
                      for kind, a, b in layers]  # fmt: skip
        size = next(a.shape[0] for kind, a, _ in layers if kind == "linear")
        take = self._slots(("eval", size, *x.shape)).take
        with torch.no_grad():
            return _forward(x.unsqueeze(0).expand(size, *x.shape), layers, take).clone()

    def _linear_backward(
        self, g_t: Tensor, h_t: Tensor, weight: Tensor, bias: Tensor | None, input_grad: bool,
        take: Callable[[Sequence[int], Tensor], Tensor],
    ) -> Tensor:  # fmt: skip
        """∂W = gᵀh and ∂b = Σ g into the parameters' own ``.grad`` (kept between steps and overwritten, so
        nothing is zeroed); returns Wᵀgᵀ, the gradient of the layer's input unit-major, if ``input_grad``.

        ``g_t`` is the output's gradient, (K, out, rows); ``h_t`` the layer's input, (K, in, rows); both unit-major.
        """
        for p in (weight, bias):
            if p is not None and (p.grad is None or p.grad.shape != p.shape):
                p.grad = torch.empty_like(p)
        torch.bmm(g_t, h_t.transpose(1, 2), out=weight.grad)  # already in W's (K, out, in) layout
        if bias is not None:
            torch.sum(g_t, 2, out=bias.grad)
        if not input_grad:
            return g_t  # not read: the first Linear ends the backward
        return torch.bmm(weight.transpose(1, 2), g_t, out=take(h_t.shape, h_t))

    def _loss_grad(self, z_t: Tensor, y: Tensor, shape: tuple[int, ...], grad: Tensor) -> tuple[Tensor, Tensor]:
        """Each member's loss (K,) and ∂(Σ_k L_k)/∂z written unit-major into ``grad`` (K, out, rows).

        ``z_t`` is the output unit-major, (K, out, rows); ``shape`` the output's own shape (K, b, ..., out).
        """
        k, units, rows = z_t.shape
        loss = self.loss
        if loss == "cross_entropy" and len(shape) == 3 and y.shape == shape[:2]:
            torch.log_softmax(z_t, 1, out=grad)
            index = y.unsqueeze(1)
            losses = grad.gather(1, index).view(k, rows).mean(1).neg_()
            if self._minus_one is None or self._minus_one.dtype != grad.dtype:
                self._minus_one = torch.full((1, 1, 1), -1.0, dtype=grad.dtype, device=grad.device)
            grad.exp_().scatter_add_(1, index, self._minus_one.expand(k, 1, rows))  # softmax − onehot
            return losses, grad.mul_(1.0 / rows)
        if loss in ("mse", "half_sum_squares") and y.shape == shape:
            diff = torch.sub(z_t, y.reshape(k, rows, units).transpose(1, 2), out=grad)
            squares = diff.view(k, -1).square()
            if loss == "mse":
                return squares.mean(1), diff.mul_(2.0 / squares.shape[1])
            return squares.sum(1).mul_(0.5), diff
        # any other loss: autograd on the outputs alone (vmap per member, as member_losses does)
        leaf = z_t.transpose(1, 2).reshape(shape).requires_grad_()
        with torch.enable_grad():
            losses = member_losses(loss, leaf, y)
            total = losses.sum()
        (g,) = torch.autograd.grad(total, leaf)
        return losses.detach(), grad.copy_(g.reshape(k, rows, units).transpose(1, 2))
