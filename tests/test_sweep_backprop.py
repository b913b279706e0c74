"""The stacked Linear chain's written-out backward equals autograd on each member's own model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from decaykit import sweep
from decaykit.sweeps.backprop import LinearChain, chain_supported
from decaykit.sweeps.batched import StackedMembers, layer_plan
from decaykit.sweeps.settings import Training

K = 3


def settings(loss, dtype=torch.float32) -> Training:
    return Training(optimizer="adamw", lr=1e-3, momentum=0.0, epochs=1, batch_size=8, mode="lr_coupled",
                    policy="decaykit", loss=loss, dtype=dtype, device=torch.device("cpu"))  # fmt: skip


def members_of(factory, loss, dtype=torch.float32):
    models = []
    for seed in range(K):
        torch.manual_seed(seed)
        models.append(factory().to(dtype))
    return models, StackedMembers([copy.deepcopy(m) for m in models], [0.0, 0.1, 1.0], settings(loss, dtype))


def own_gradients(model: nn.Module, loss, x, y) -> tuple[float, list[torch.Tensor]]:
    """The oracle: member k's own model, its own loss, autograd."""
    model.zero_grad(set_to_none=True)
    out = model(x)
    if loss == "cross_entropy":
        value = F.cross_entropy(out, y)
    elif loss == "mse":
        value = (out - y).square().mean()
    elif loss == "half_sum_squares":
        value = 0.5 * (out - y).square().sum()
    else:
        value = loss(out, y)
    value.backward()
    return float(value.detach()), [p.grad.clone() for p in model.parameters()]


def huber(out, target):
    return F.huber_loss(out, target, delta=0.5)


CHAINS = {
    "relu": lambda: nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)),
    "tanh-sigmoid-identity": lambda: nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8, bias=False), nn.Sigmoid(), nn.Identity(), nn.Linear(8, 4)
    ),
    "flatten-first": lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 16), nn.ReLU(inplace=True), nn.Linear(16, 4)),
    "one-linear": lambda: nn.Sequential(nn.Linear(6, 4, bias=False)),
}


@pytest.mark.parametrize("chain", sorted(CHAINS))
@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "half_sum_squares", huber])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_written_out_backward_equals_autograd_per_member(chain, loss, dtype):
    models, stack = members_of(CHAINS[chain], loss, dtype)
    assert stack._chain is not None
    g = torch.Generator().manual_seed(0)
    shape = (K, 2, 3) if chain == "flatten-first" else (K, 6)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    # two batch shapes (a full and a last, smaller batch) and a repeat: buffers are reused, grads overwritten
    for batch in (8, 5, 8):
        x = torch.randn(shape[0], batch, *shape[1:], generator=g, dtype=dtype)
        if loss == "cross_entropy":
            y = torch.randint(0, 4, (K, batch), generator=g)
        else:
            y = torch.randn(K, batch, 4, generator=g, dtype=dtype)
        losses = stack.forward_backward(x, y)
        assert losses.shape == (K,)
        for k, model in enumerate(models):
            value, grads = own_gradients(model, loss, x[k], y[k])
            assert abs(float(losses[k]) - value) <= tol * max(1.0, abs(value))
            stacked = [p.grad[k] for p in stack.params.values()]
            for got, want in zip(stacked, grads):
                torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_chains_it_cannot_write_out_train_through_autograd():
    def gelu():
        return nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 4))

    def ends_in_activation():
        return nn.Sequential(nn.Linear(6, 4), nn.Tanh())

    for factory in (gelu, ends_in_activation):
        models, stack = members_of(factory, "mse")
        assert stack.path == "layers" and stack._chain is None
        x, y = torch.randn(K, 5, 6), torch.randn(K, 5, 4)
        stack.forward_backward(x, y)
        for k, model in enumerate(models):
            _, grads = own_gradients(model, "mse", x[k], y[k])
            for got, want in zip((p.grad[k] for p in stack.params.values()), grads):
                torch.testing.assert_close(got, want)
    frozen = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    frozen[0].weight.requires_grad_(False)
    params = {n: p.unsqueeze(0) for n, p in frozen.named_parameters()}
    assert not chain_supported(layer_plan(frozen), params)


@pytest.mark.parametrize("loss", ["mse", "half_sum_squares", huber])
def test_linears_over_a_sequence_are_written_out_and_a_flatten_between_them_goes_to_autograd(loss):
    """Rows of the unit-major step are samples x positions; a Flatten after a Linear has no unit-major view."""
    def sequence():
        return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))

    def flattened():
        return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Flatten(), nn.Linear(15, 4))

    g = torch.Generator().manual_seed(1)
    x = torch.randn(K, 5, 3, 6, generator=g)
    for factory, written_out, y in ((sequence, True, torch.randn(K, 5, 3, 4, generator=g)),
                                    (flattened, False, torch.randn(K, 5, 4, generator=g))):  # fmt: skip
        models, stack = members_of(factory, loss)
        assert (stack._chain is not None) == written_out
        losses = stack.forward_backward(x, y)
        for k, model in enumerate(models):
            value, grads = own_gradients(model, loss, x[k], y[k])
            assert abs(float(losses[k]) - value) <= 1e-5 * max(1.0, abs(value))
            for got, want in zip((p.grad[k] for p in stack.params.values()), grads):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_steps_do_not_accumulate_and_losses_are_each_members_own():
    _, stack = members_of(CHAINS["relu"], "cross_entropy")
    x, y = torch.randn(K, 8, 6), torch.randint(0, 4, (K, 8))
    first = stack.forward_backward(x, y).clone()
    grads = [p.grad.clone() for p in stack.params.values()]
    y2 = y.clone()
    y2[1] = (y2[1] + 1) % 4  # only member 1's targets change
    second = stack.forward_backward(x, y2)
    assert second[0] == first[0] and second[2] == first[2] and second[1] != first[1]
    stack.forward_backward(x, y)
    for p, g in zip(stack.params.values(), grads):
        assert torch.equal(p.grad, g)  # overwritten, not summed


def test_linear_chain_is_used_by_the_demo_model():
    from decaykit.sweeps.tasks.digits import digits_mlp

    steps = layer_plan(digits_mlp())
    chain = LinearChain(steps, {n: p.unsqueeze(0) for n, p in digits_mlp().named_parameters()}, "cross_entropy")
    assert [kind for kind, _, _ in chain.layers] == ["linear", "act", "linear"]


class CountingInit(nn.Module):
    """Each build draws one extra number from a counter, not from the seed: equal seeds, different starts."""

    built = 0

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))
        CountingInit.built += 1
        with torch.no_grad():
            self.net[2].bias[0] = 0.1 * CountingInit.built  # not on every class: softmax ignores a shift

    def forward(self, x):
        return self.net(x)


def test_the_start_is_measured_once_per_distinct_initial_model():
    from tests.test_sweep_batched import blobs

    def seeded():
        return nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))

    kw = dict(seeds=2, epochs=2, batch_size=16, curve_points=1, progress=False, lr=1e-2)
    result = sweep(seeded, blobs(), weight_decays=[0.0, 0.1, 1.0], **kw)
    starts = {}
    for t in result.trials:  # one seed, one start: every λ of a seed reports the same epoch-0 point
        starts.setdefault(t["seed"], set()).add((t["curves"]["test_loss"][0], t["curves"]["train_accuracy"][0]))
    assert all(len(v) == 1 for v in starts.values()) and len(starts) == 2
    counted = sweep(CountingInit, blobs(), weight_decays=[0.0, 0.1, 1.0], **kw)
    firsts = [t["curves"]["test_loss"][0] for t in counted.trials]
    assert len(set(firsts)) == len(firsts)  # different starts despite equal seeds: each measured on its own


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_evaluation_equals_each_members_own_forward(chain):
    models, stack = members_of(CHAINS[chain], "mse")
    x = torch.randn(7, 2, 3) if chain == "flatten-first" else torch.randn(7, 6)
    every = stack.eval_forward(x)
    some = stack.eval_forward(x, torch.tensor([2, 0]))
    again = stack.eval_forward(x[:5])  # buffers of another shape; the outputs returned before stay intact
    with torch.no_grad():
        own = [m(x) for m in models]
    for k in range(K):
        torch.testing.assert_close(every[k], own[k])
    torch.testing.assert_close(some[0], own[2])
    torch.testing.assert_close(some[1], own[0])
    torch.testing.assert_close(again[1], own[1][:5])
