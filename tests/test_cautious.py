"""Cautious weight decay (decaykit.engine.cautious): the sign of the update read from the first moment before
the step, or from the parameter change after it; both against the rule written out and each other."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from decaykit import WeightDecay, schedules
from decaykit.engine import cautious
from decaykit.engine.cautious import FIRST_MOMENT_SIGN, cautious_decay_, cautious_moment_decay_

SHAPES = [(3, 5), (3,), (3, 2, 4)]  # leading dim 3 = three stacked members


pytestmark = pytest.mark.usefixtures("one_thread")


def tensors(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in SHAPES]


def clone(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.clone() for t in ts]


def explicit_cautious(theta: torch.Tensor, u: torch.Tensor, lr: float, lam: torch.Tensor | float) -> torch.Tensor:
    """Chen et al. 2025 as written: θ − η(u + λ·𝟙(u⊙θ ≥ 0)⊙θ)."""
    if isinstance(lam, torch.Tensor):
        lam = lam.view(-1, *[1] * (theta.dim() - 1))
    return theta - lr * (u + lam * (u * theta >= 0).to(theta.dtype) * theta)


@pytest.mark.parametrize("per_member", [False, True])
def test_cautious_decay_matches_the_paper_given_only_the_parameter_change(per_member):
    lr = 0.1
    lam = torch.tensor([0.3, 1.0, 0.0]) if per_member else 0.5
    before = tensors(1)
    updates = tensors(2)
    updates[0][0, :2] = 0.0  # zero updates decay (𝟙(0 ≥ 0) = 1)
    outs = {}
    for foreach in (False, True):
        params = [b - lr * u for b, u in zip(before, updates)]  # what the inner step left
        rate = lr * lam
        cautious_decay_(params, clone(before), rate, foreach=foreach)
        outs[foreach] = params
    for ref, fast, b, u in zip(outs[False], outs[True], before, updates):
        torch.testing.assert_close(ref, fast, rtol=0, atol=1e-7)
        torch.testing.assert_close(ref, explicit_cautious(b, u, lr, lam), rtol=1e-6, atol=1e-7)
    b, u = before[0], updates[0]
    expected_zero_update = b[0, :2] * (1 - lr * (lam[0] if per_member else lam))
    torch.testing.assert_close(outs[True][0][0, :2], expected_zero_update)


@pytest.mark.parametrize("layout", ["transposed", "several_chunks"])
@pytest.mark.parametrize("per_member", [False, True])
def test_cautious_fast_path_handles_strided_and_chunked_tensors(layout, per_member):
    # the CPU fast path works on contiguous chunks of _CHUNK elements; strided tensors take foreach ops
    g = torch.Generator().manual_seed(7)
    if layout == "transposed":
        before = [torch.randn(5, 3, generator=g).t()]  # (3, 5), not contiguous
    else:
        before = [torch.randn(3, cautious._CHUNK + 5, generator=g)]
    updates = [torch.randn(b.shape, generator=g) for b in before]
    lam = torch.tensor([0.3, 1.0, 0.0]) if per_member else 0.5
    outs = []
    for foreach in (False, True):
        params = [b - 0.1 * u for b, u in zip(before, updates)]
        if layout == "transposed":
            params = [p.t().contiguous().t() for p in params]
            assert not params[0].is_contiguous()
        cautious_decay_(params, [b.clone() for b in before] if layout != "transposed" else list(before), 0.1 * lam,
                        foreach=foreach)
        outs.append(params[0])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-6, atol=1e-7)  # r·mask vs r as a scalar: 1 ulp
    torch.testing.assert_close(outs[1], explicit_cautious(before[0], updates[0], 0.1, lam), rtol=1e-6, atol=1e-7)


def test_cautious_decay_leaves_disagreeing_coordinates_to_the_update():
    before = [torch.tensor([1.0, -1.0, 1.0, -1.0])]
    u = torch.tensor([1.0, -1.0, -1.0, 1.0])  # agree, agree, disagree, disagree
    params = [before[0] - 0.1 * u]
    cautious_decay_(params, clone(before), 0.5, foreach=True)
    torch.testing.assert_close(params[0], torch.tensor([0.4, -0.4, 1.1, -1.1]))


def rule(theta: torch.Tensor, direction: torch.Tensor, rate: torch.Tensor | float) -> torch.Tensor:
    """θ − r·𝟙(d⊙θ ≥ 0)⊙θ, in float64, with d anything of the update's sign."""
    if isinstance(rate, torch.Tensor):
        rate = rate.double().view(-1, *[1] * (theta.dim() - 1))
    t = theta.double()
    return (t - rate * (direction.double() * t >= 0).double() * t).to(theta.dtype)


@pytest.mark.parametrize("layout", ["small", "several_chunks", "transposed"])
@pytest.mark.parametrize("per_member", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
def test_moment_kernel_reference_fast_path_and_rule_agree(layout, per_member, maximize):
    g = torch.Generator().manual_seed(3)
    shapes = {"small": SHAPES, "several_chunks": [(3, cautious._CHUNK + 5)], "transposed": [(3, 7)]}[layout]
    thetas = [torch.randn(s, generator=g) for s in shapes]
    grads = [torch.randn(s, generator=g) for s in shapes]
    moments: list[torch.Tensor | None] = [torch.randn(s, generator=g) for s in shapes]
    if layout == "transposed":  # not contiguous: the foreach ops instead of the chunks
        thetas = [t.t().contiguous().t() for t in thetas]
    grads[0][0, :4] = 0.0
    moments[0][0, :4] = 0.0  # m_t = 0: a zero update, every such coordinate decays
    if layout == "small":
        moments[1] = None  # no state yet: m_{t-1} = 0, the mask is sign(g)
    rate = torch.tensor([0.3, 0.0, 0.05]) if per_member else 0.1
    beta1 = 0.9
    outs = []
    for foreach in (False, True):
        ps = clone(thetas)
        keep = clone(grads), [None if m is None else m.clone() for m in moments]
        cautious_moment_decay_(ps, grads, moments, rate, beta1=beta1, maximize=maximize, foreach=foreach)
        assert all(torch.equal(a, b) for a, b in zip(keep[0], grads))  # only θ is written
        assert all(m is None or torch.equal(a, m) for a, m in zip(keep[1], moments))
        outs.append(ps)
    for ref, fast, theta, grad, m in zip(*outs, thetas, grads, moments):
        torch.testing.assert_close(fast, ref, rtol=1e-6, atol=1e-7)  # r·mask vs r as a scalar: 1 ulp
        ascent = -grad.double() if maximize else grad.double()
        m_t = (1 - beta1) * ascent if m is None else beta1 * m.double() + (1 - beta1) * ascent
        torch.testing.assert_close(ref, rule(theta, m_t, rate), rtol=1e-6, atol=1e-7)
    r0 = rate[0] if per_member else rate
    torch.testing.assert_close(outs[1][0][0, :4], thetas[0][0, :4] * (1 - r0))


# -- the engine: which optimizers read the sign from the moment, and that it is the same decay -----------


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))


DATA = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
TARGET = torch.randn(64, 3, generator=torch.Generator().manual_seed(2))


def backward(model: nn.Module, step: int) -> None:
    rows = slice((step * 16) % 64, (step * 16) % 64 + 16)
    (model(DATA[rows]) - TARGET[rows]).pow(2).mean().backward()


def groups(model: nn.Module, lam: float = 0.5) -> list[dict]:
    return [{"params": [model[0].weight, model[2].weight], "weight_decay": lam},
            {"params": [model[0].bias, model[2].bias], "weight_decay": 0.0}]


def force_copy_path(opt: WeightDecay) -> WeightDecay:
    """A step pre-hook on the inner optimizer may change the gradients, so the engine copies θ instead."""
    opt.optimizer.register_step_pre_hook(lambda *args: None)
    return opt


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"], total_steps=steps)
    for t in range(steps):
        opt.zero_grad()
        backward(model, t)
        opt.step()
        sched.step()


MOMENT_INNERS = {
    "adam_amsgrad": lambda g: torch.optim.Adam(g, lr=2e-2, amsgrad=True, foreach=True),
    "adamw_fused_maximize": lambda g: torch.optim.AdamW(g, lr=2e-2, fused=True, maximize=True),
    "adamw_loop": lambda g: torch.optim.AdamW(g, lr=2e-2, foreach=False),
    "radam_decoupled": lambda g: torch.optim.RAdam(g, lr=2e-2, decoupled_weight_decay=True),
    "radam_l2": lambda g: torch.optim.RAdam(g, lr=2e-2, foreach=False),
    "adamax": lambda g: torch.optim.Adamax(g, lr=2e-2),
    "adamax_maximize_loop": lambda g: torch.optim.Adamax(g, lr=2e-2, maximize=True, foreach=False),
}


@torch.no_grad()
def sync(dst: nn.Module, dst_opt: torch.optim.Optimizer, src: nn.Module, src_opt: torch.optim.Optimizer) -> None:
    """dst starts the next step from src's θ and optimizer state: the mask is discontinuous, so float
    differences grown over earlier steps could flip a coordinate whose m_t is nearly 0."""
    for p, q in zip(dst.parameters(), src.parameters()):
        p.copy_(q)
        for key, value in src_opt.state[q].items():
            dst_opt.state[p][key] = value.clone()


@pytest.mark.parametrize("inner", sorted(MOMENT_INNERS))
def test_first_moment_path_equals_the_copy_path_with_lr_and_decay_schedules(inner):
    """60 steps with OneCycleLR and a cosine λ schedule: reading sign(u) from m_t before the step decays
    exactly what reading it from θ_t − θ_{t+1} after the step does, with no copy of θ kept."""
    models, engines, lrs = [], [], []
    for copy_path in (False, True):
        models.append(make_model())
        opt = WeightDecay(MOMENT_INNERS[inner](groups(models[-1])), mode="cautious", schedule=schedules.cosine(1.0, 3.0, 60))
        engines.append(force_copy_path(opt) if copy_path else opt)
        lrs.append(torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"], total_steps=60))
    for t in range(60):
        if t:
            sync(models[1], engines[1], models[0], engines[0])
        for model, opt, lr in zip(models, engines, lrs):
            opt.zero_grad()
            backward(model, t)
            opt.step()
            lr.step()
        for a, b in zip(*(m.parameters() for m in models)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert type(engines[0].optimizer) in FIRST_MOMENT_SIGN
    assert not engines[0]._buffers and len(engines[1]._buffers) == 2  # the decayed group's θ copies
    moved = max(float((a - b).detach().abs().max()) for a, b in zip(models[0].parameters(), make_model().parameters()))
    assert moved > 0.05


def test_nadam_update_has_not_its_moments_sign_so_it_keeps_the_copy_path():
    """NAdam steps along (1 − μ_t)·g_t and μ_{t+1}·m_t mixed: sign(u) ≠ sign(m_t) on some coordinates,
    so the engine reads the sign from the parameter change; checked against the rule with u from a twin."""
    model, ref_model = make_model(), make_model()
    opt = WeightDecay(torch.optim.NAdam(groups(model), lr=2e-2), mode="cautious")
    ref = torch.optim.NAdam(groups(ref_model, 0.0), lr=2e-2)  # the update alone
    disagree = 0
    for t in range(20):
        for m, o in ((model, opt), (ref_model, ref)):
            o.zero_grad()
            backward(m, t)
        before = [p.detach().clone() for p in ref.param_groups[0]["params"]]
        ref.step()
        opt.step()
        with torch.no_grad():
            for p, b in zip(ref.param_groups[0]["params"], before):
                disagree += int(((b - p) * ref.state[p]["exp_avg"] < 0).sum())
                p.sub_(2e-2 * 0.5 * ((b - p) * b >= 0) * b)  # θ_{t+1} = θ_t − η·u − η·λ·𝟙(u⊙θ_t ≥ 0)⊙θ_t
    assert disagree > 0 and opt._buffers
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_a_gradient_changing_pre_hook_on_the_inner_optimizer_is_seen_by_the_mask():
    """A hook that negates the gradients (ascent) must decay like maximize=True, which the moment path takes."""
    hooked, plain = make_model(), make_model()
    opt = WeightDecay(torch.optim.AdamW(groups(hooked), lr=2e-2, fused=True), mode="cautious")

    def negate(optimizer, args, kwargs):
        for p in hooked.parameters():
            p.grad.neg_()

    opt.optimizer.register_step_pre_hook(negate)
    ref = WeightDecay(torch.optim.AdamW(groups(plain), lr=2e-2, fused=True, maximize=True), mode="cautious")
    train(hooked, opt, 30)
    train(plain, ref, 30)
    assert opt._buffers and not ref._buffers
    for a, b in zip(hooked.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_a_gradient_changing_global_pre_hook_runs_once_before_the_engine_reads_the_gradients():
    """A global hook runs for the engine's step only (not again for the inner one), so the moment path stays."""
    hooked, plain = make_model(), make_model()
    opt = WeightDecay(torch.optim.AdamW(groups(hooked), lr=2e-2, fused=True), mode="cautious")
    ref = WeightDecay(torch.optim.AdamW(groups(plain), lr=2e-2, fused=True, maximize=True), mode="cautious")
    calls = []

    def negate(optimizer, args, kwargs):
        if optimizer is opt or optimizer is opt.optimizer:
            calls.append(optimizer)
            for p in hooked.parameters():
                p.grad.neg_()

    handle = register_optimizer_step_pre_hook(negate)
    try:
        train(hooked, opt, 30)
    finally:
        handle.remove()
    train(plain, ref, 30)
    assert calls == [opt] * 30  # once per step, with the optimizer the user steps
    assert not opt._buffers  # no copy of θ: nothing changes the gradients between the engine and the inner step
    for a, b in zip(hooked.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_complex_parameters_decay_per_real_component_as_adam_steps_them():
    g = torch.Generator().manual_seed(4)
    z = nn.Parameter(torch.randn(3, 4, dtype=torch.complex64, generator=g))
    r = nn.Parameter(torch.view_as_real(z.detach()).clone())
    opts = [WeightDecay(torch.optim.Adam([p], lr=5e-2, weight_decay=0.5), mode="cautious") for p in (z, r)]
    opts.append(force_copy_path(WeightDecay(torch.optim.Adam([z2 := nn.Parameter(z.detach().clone())], lr=5e-2,
                                                                weight_decay=0.5), mode="cautious")))
    for _ in range(10):
        grad = torch.randn(3, 4, dtype=torch.complex64, generator=g)
        z.grad, z2.grad, r.grad = grad.clone(), grad.clone(), torch.view_as_real(grad).clone()
        for o in opts:
            o.step()
    torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(z2.detach(), z.detach(), rtol=0, atol=1e-6)


def test_sparse_gradients_are_refused_by_adam_before_anything_moves():
    emb = nn.Embedding(10, 4, sparse=True)
    opt = WeightDecay(torch.optim.Adam(emb.parameters(), lr=0.1, weight_decay=0.1), mode="cautious")
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(emb.weight, before)


def test_fresh_state_masks_by_the_gradients_sign_and_a_zero_gradient_decays_everything():
    p = nn.Parameter(torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0]))
    opt = WeightDecay(torch.optim.AdamW([p], lr=0.1, weight_decay=0.5, fused=True), mode="cautious")
    p.grad = torch.tensor([1.0, -1.0, -1.0, 1.0, 0.0])
    opt.step()
    # Adam's first step moves each coordinate by lr·sign(g) (|m̂|/√v̂ = 1); decay θ·η·λ where g·θ ≥ 0
    torch.testing.assert_close(p.detach(), torch.tensor([0.85, -0.85, 1.1, -1.1, 1.9]), rtol=0, atol=1e-6)
    q = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = WeightDecay(torch.optim.Adamax([q], lr=0.1, weight_decay=0.5), mode="cautious")
    q.grad = torch.zeros(2)
    opt.step()
    torch.testing.assert_close(q.detach(), torch.tensor([0.95, -1.9]))


def test_empty_parameter_lists_are_a_no_op():
    cautious_decay_([], [], 0.1)
    cautious_moment_decay_([], [], [], 0.1, beta1=0.9)
