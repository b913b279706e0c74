"""The per-mode kernels: reference loops against foreach paths, and both against the formulas."""

from __future__ import annotations

import pytest
import torch

from decaykit.engine.modes import (
    DECOUPLED_MODES,
    MODES,
    decay_rate,
    decoupled_decay_,
    inner_weight_decay,
    l2_gradients,
)

SHAPES = [(3, 5), (3,), (3, 2, 4)]  # leading dim 3 = three stacked members


def tensors(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in SHAPES]


def clone(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.clone() for t in ts]


def test_decay_rate_formulas():
    lam, lr, max_lr = 0.2, 3e-4, 1e-3
    assert decay_rate("lr_coupled", lam, lr, max_lr) == pytest.approx(lr * lam)
    assert decay_rate("lr_independent", lam, lr, max_lr) == pytest.approx(lr / max_lr * lam)
    assert decay_rate("corrected", lam, lr, max_lr) == pytest.approx(lr**2 / max_lr * lam)
    assert decay_rate("cautious", lam, lr, max_lr) == pytest.approx(lr * lam)
    assert decay_rate("coupled_l2", lam, lr, max_lr) == 0.0
    with pytest.raises(ValueError):
        decay_rate("nope", lam, lr, max_lr)


@pytest.mark.parametrize("mode", DECOUPLED_MODES)
@pytest.mark.parametrize("lr", [0.0, 1e-4, 1e-3])
def test_inner_weight_decay_gives_the_rate_through_an_adamw_kernel(mode, lr):
    # AdamW's kernel decays by lr·wd; the engine relies on lr·inner_weight_decay == decay_rate
    lam, max_lr = 0.05, 1e-3
    assert lr * inner_weight_decay(mode, lam, lr, max_lr) == pytest.approx(decay_rate(mode, lam, lr, max_lr), abs=1e-15)


def test_modes_list_is_the_engines():
    assert MODES == ("lr_coupled", "lr_independent", "corrected", "cautious", "coupled_l2")
    assert set(DECOUPLED_MODES) < set(MODES)


@pytest.mark.parametrize("per_member", [False, True])
def test_decoupled_decay_reference_equals_foreach_and_formula(per_member):
    rate = torch.tensor([0.1, 0.0, 0.5]) if per_member else 0.25
    ref, fast = tensors(), tensors()
    original = clone(ref)
    decoupled_decay_(ref, rate, foreach=False)
    decoupled_decay_(fast, rate, foreach=True)
    for r, f, o in zip(ref, fast, original):
        torch.testing.assert_close(r, f, rtol=0, atol=0)
        factor = (1 - rate).view(-1, *[1] * (o.dim() - 1)) if per_member else 1 - rate
        torch.testing.assert_close(r, o * factor)
    if per_member:  # member 1 has rate 0: untouched
        assert all(torch.equal(r[1], o[1]) for r, o in zip(ref, original))


@pytest.mark.parametrize("per_member", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
def test_l2_gradients_add_lambda_theta_without_touching_the_inputs(per_member, maximize):
    lam = torch.tensor([0.1, 0.2, 0.0]) if per_member else 0.3
    params, grads = tensors(3), tensors(4)
    keep = clone(grads)
    ref = l2_gradients(params, grads, lam, maximize=maximize, foreach=False)
    fast = l2_gradients(params, grads, lam, maximize=maximize, foreach=True)
    sign = -1.0 if maximize else 1.0
    for r, f, g, p, k in zip(ref, fast, grads, params, keep):
        torch.testing.assert_close(r, f, rtol=0, atol=0)
        scale = lam.view(-1, *[1] * (p.dim() - 1)) if per_member else lam
        torch.testing.assert_close(r, g + sign * scale * p)
        assert torch.equal(g, k) and r.data_ptr() != g.data_ptr()


def test_per_member_rate_equals_separate_scalar_rates():
    rate = torch.tensor([0.01, 0.2, 0.7])
    stacked = tensors(5)
    slices = [[t[k].clone() for t in stacked] for k in range(3)]
    decoupled_decay_(stacked, rate, foreach=True)
    for k in range(3):
        decoupled_decay_(slices[k], float(rate[k]), foreach=True)
        for t, s in zip(stacked, slices[k]):
            torch.testing.assert_close(t[k], s, rtol=0, atol=0)


def test_empty_parameter_lists_are_a_no_op():
    decoupled_decay_([], 0.1)
    assert l2_gradients([], [], 0.1) == []
