"""WeightDecay: every mode against torch.optim or the paper's formula, paths, checkpoints, API, errors."""

from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch
from torch import nn

from decaykit import WeightDecay, schedules
from decaykit.engine.modes import MODES
from decaykit.errors import DecayError, DecayWarning

LAM = 0.05


pytestmark = pytest.mark.usefixtures("one_thread")


class PlainAdam(torch.optim.Optimizer):
    """A third-party Adam with coupled weight decay that decaykit knows nothing about."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
                st = self.state[p]
                if not st:
                    st.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                st["step"] += 1
                st["m"].lerp_(g, 1 - b1)
                st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (st["v"].sqrt() / math.sqrt(1 - b2 ** st["step"])).add_(group["eps"])
                p.addcdiv_(st["m"], denom, value=-group["lr"] / (1 - b1 ** st["step"]))


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 3))


def groups(model: nn.Module, lam=LAM) -> list[dict]:
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() == 2]
    rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.dim() == 2)]
    return [{"params": decay, "weight_decay": lam}, {"params": rest, "weight_decay": 0.0}]


DATA = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
TARGET = torch.randn(64, 3, generator=torch.Generator().manual_seed(2))


def backward(model: nn.Module, step: int) -> torch.Tensor:
    rows = slice((step * 16) % 64, (step * 16) % 64 + 16)
    loss = (model(DATA[rows]) - TARGET[rows]).pow(2).mean()
    loss.backward()
    return loss


def lr_schedule(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=10)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=90, eta_min=1e-5)
    return torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[10])


def train(model, opt, steps, sched=None, before_step=None, start=0):
    for t in range(start, start + steps):
        opt.zero_grad()
        backward(model, t)
        if before_step is not None:
            before_step(t)
        opt.step()
        if sched is not None:
            sched.step()


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


INNERS = {
    "adamw_fused": lambda g: torch.optim.AdamW(g, lr=3e-2, fused=True),
    "adamw_foreach": lambda g: torch.optim.AdamW(g, lr=3e-2, foreach=True),
    "adamw_loop": lambda g: torch.optim.AdamW(g, lr=3e-2, foreach=False),
    "adam_flag": lambda g: torch.optim.Adam(g, lr=3e-2),
    "third_party": lambda g: PlainAdam(g, lr=3e-2),
}


@pytest.mark.parametrize("inner", sorted(INNERS))
def test_lr_coupled_matches_torch_adamw_step_by_step_with_an_lr_scheduler(inner):
    ref_model, model = make_model(), make_model()
    ref = torch.optim.AdamW(groups(ref_model), lr=3e-2, foreach=False)
    opt = WeightDecay(INNERS[inner](groups(model)), mode="lr_coupled")
    ref_sched, sched = lr_schedule(ref), lr_schedule(opt)
    assert opt.paths()[0] == ("extra_pass" if inner == "third_party" else "inner")
    for t in range(100):
        train(ref_model, ref, 1, ref_sched, start=t)
        train(model, opt, 1, sched, start=t)
        for a, b in zip(ref_model.parameters(), model.parameters()):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    assert opt.param_groups[0]["lr"] == pytest.approx(ref.param_groups[0]["lr"])


def manual_decoupled(mode, model, opt_groups, max_lr, schedule):
    """Reference: the formula applied by hand before an inner step that has no decay of its own."""

    def before_step(t):
        group = opt_groups[0]
        lr, lam = group["lr"], LAM * schedule(t)
        r = {"lr_coupled": lr * lam, "lr_independent": lr / max_lr * lam, "corrected": lr * lr / max_lr * lam}[mode]
        with torch.no_grad():
            for p in group["params"]:
                p.mul_(1 - r)

    return before_step


DECOUPLED_INNERS = {
    "adamw_fused": lambda g: torch.optim.AdamW(g, lr=3e-2, fused=True),
    "sgd_momentum": lambda g: torch.optim.SGD(g, lr=3e-2, momentum=0.9),
    "rmsprop": lambda g: torch.optim.RMSprop(g, lr=3e-3),
    "third_party": lambda g: PlainAdam(g, lr=3e-2),
}


@pytest.mark.parametrize("mode", ["lr_coupled", "lr_independent", "corrected"])
@pytest.mark.parametrize("inner", sorted(DECOUPLED_INNERS))
def test_decoupled_modes_follow_their_formula_with_lr_and_decay_schedules(mode, inner):
    schedule = schedules.cosine(1.0, 4.0, steps=30)
    lam = LAM if mode != "lr_independent" else LAM * 1e-2  # an lr_independent λ is ~η_max times smaller
    ref_model, model = make_model(), make_model()
    ref = DECOUPLED_INNERS[inner](groups(ref_model, 0.0))
    opt = WeightDecay(DECOUPLED_INNERS[inner](groups(model, lam)), mode=mode, schedule=schedule)
    ref_sched, sched = lr_schedule(ref), lr_schedule(opt)
    max_lr = ref.param_groups[0]["initial_lr"]
    hook = manual_decoupled(mode, ref_model, ref.param_groups, max_lr, lambda t: schedule(t) * lam / LAM)
    train(ref_model, ref, 30, ref_sched, before_step=hook)
    train(model, opt, 30, sched)
    for a, b in zip(ref_model.parameters(), model.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    assert opt.param_groups[0]["weight_decay"] == lam  # the user's λ is back after every step


class ExplicitCautiousAdam:
    """Adam with cautious weight decay written out as in Chen et al. 2025, u = m̂/(√v̂ + ε) (√max v̂ with AMSGrad)."""

    def __init__(self, params, lr, lam, betas=(0.9, 0.999), eps=1e-8, amsgrad=False, maximize=False):
        self.params, self.lr, self.lam, self.betas, self.eps, self.t = list(params), lr, lam, betas, eps, 0
        self.amsgrad, self.maximize = amsgrad, maximize
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.v_max = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def sync(self, params, state):
        """Start the next step from another run's θ and moments: the mask is discontinuous, so float
        differences that grew over earlier steps could flip a coordinate whose m_t is nearly 0."""
        for p, m, v, v_max, q in zip(self.params, self.m, self.v, self.v_max, params):
            p.copy_(q)
            if q in state:
                m.copy_(state[q]["exp_avg"])
                v.copy_(state[q]["exp_avg_sq"])
                v_max.copy_(state[q].get("max_exp_avg_sq", v))

    @torch.no_grad()
    def step(self, lr=None, lam=None):
        lr, lam = (self.lr if lr is None else lr), (self.lam if lam is None else lam)
        self.t += 1
        b1, b2 = self.betas
        for p, m, v, v_max in zip(self.params, self.m, self.v, self.v_max):
            g = -p.grad if self.maximize else p.grad
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            torch.maximum(v_max, v, out=v_max)
            u = (m / (1 - b1**self.t)) / (((v_max if self.amsgrad else v) / (1 - b2**self.t)).sqrt() + self.eps)
            mask = (u * p >= 0).to(p.dtype)
            p.sub_(lr * (u + lam * mask * p))


CAUTIOUS_INNERS = {
    "adam_loop": lambda p: torch.optim.Adam(p, lr=1e-2, foreach=False, weight_decay=2.0),
    "adamw_fused": lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True, weight_decay=2.0),
    "adam_amsgrad_foreach": lambda p: torch.optim.Adam(p, lr=1e-2, foreach=True, amsgrad=True, weight_decay=2.0),
    "adamw_fused_maximize": lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True, maximize=True, weight_decay=2.0),
}


@pytest.mark.parametrize("inner", sorted(CAUTIOUS_INNERS))
@pytest.mark.parametrize("foreach", [False, True])
def test_cautious_matches_the_paper_written_out_with_lr_and_decay_schedules(inner, foreach):
    """100 steps, warm-up + cosine LR and a cosine λ schedule; the engine reads sign(u) from Adam's m_t.
    Each step is checked from the engine's θ and moments (see ``sync``)."""
    schedule = schedules.cosine(1.0, 0.2, steps=100)
    ref_model, model = make_model(), make_model()
    ref = ExplicitCautiousAdam(ref_model.parameters(), lr=1e-2, lam=2.0, amsgrad="amsgrad" in inner,
                               maximize="maximize" in inner)
    opt = WeightDecay(CAUTIOUS_INNERS[inner](model.parameters()), mode="cautious", schedule=schedule, foreach=foreach)
    sched = lr_schedule(opt)
    assert opt.paths() == ["cautious"]
    for t in range(100):
        ref.sync(list(model.parameters()), opt.state)
        for m in (ref_model, model):
            for p in m.parameters():
                p.grad = None
            backward(m, t)
        ref.step(lr=opt.param_groups[0]["lr"], lam=2.0 * schedule(t))
        opt.step()
        sched.step()
        for a, b in zip(ref_model.parameters(), model.parameters()):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    assert not opt._buffers  # no copy of θ: the sign came from the first moment


def test_cautious_with_plain_sgd_decays_only_where_gradient_and_weight_agree():
    p = nn.Parameter(torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0]))
    opt = WeightDecay(torch.optim.SGD([p], lr=0.1, weight_decay=0.5), mode="cautious")
    p.grad = torch.tensor([1.0, -1.0, -1.0, 1.0, 0.0])
    opt.step()
    # θ − η(g + λ·𝟙(gθ ≥ 0)·θ), η = 0.1, λ = 0.5
    torch.testing.assert_close(p.detach(), torch.tensor([0.85, -0.85, 1.1, -1.1, 1.9]))


@pytest.mark.parametrize(
    ("inner", "path"),
    [
        (lambda g: torch.optim.AdamW(g, lr=1e-2, fused=True), "inner"),
        (lambda g: PlainAdam(g, lr=1e-2), "l2_gradient"),
    ],
)
def test_coupled_l2_matches_torch_adam_and_leaves_gradients_alone(inner, path):
    ref_model, model = make_model(), make_model()
    ref = torch.optim.Adam(groups(ref_model), lr=1e-2, foreach=False)
    opt = WeightDecay(inner(groups(model)), mode="coupled_l2")
    assert opt.paths()[0] == path
    for t in range(30):
        for m, o in ((ref_model, ref), (model, opt)):
            o.zero_grad()
            backward(m, t)
        grads = [p.grad for p in model.parameters()]
        kept = [g.clone() for g in grads]
        ref.step()
        opt.step()
        assert all(p.grad is g and torch.equal(g, k) for p, g, k in zip(model.parameters(), grads, kept))
    for a, b in zip(ref_model.parameters(), model.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    assert opt.param_groups[0]["decoupled_weight_decay"] if path == "inner" else True  # AdamW's flag restored


def test_coupled_l2_on_sgd_is_sgds_own_weight_decay():
    ref_model, model = make_model(), make_model()
    ref = torch.optim.SGD(groups(ref_model), lr=0.05, momentum=0.9)
    opt = WeightDecay(torch.optim.SGD(groups(model), lr=0.05, momentum=0.9), mode="coupled_l2")
    train(ref_model, ref, 20)
    train(model, opt, 20)
    for a, b in zip(ref_model.parameters(), model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", MODES)
def test_reference_loop_and_foreach_paths_agree_in_the_engine(mode):
    lam = torch.tensor([0.02, 0.5, 0.1])  # per-member forces the extra passes even on a fused AdamW
    results = []
    for foreach in (False, True):
        models = stacked_models(3)
        opt = WeightDecay(torch.optim.AdamW(stacked_groups(models, lam), lr=1e-2, fused=True), mode=mode,
                          foreach=foreach, allow_large_decay=True)
        train_stacked(models, opt, 15)
        results.append([p.detach().clone() for p in models.values()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


# -- per-member λ for K stacked models -------------------------------------------------------------


def stacked_models(k: int, seed: int = 0) -> dict[str, nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w1": nn.Parameter(torch.randn(k, 16, 6, generator=g) * 0.4),
        "b1": nn.Parameter(torch.zeros(k, 16)),
        "w2": nn.Parameter(torch.randn(k, 3, 16, generator=g) * 0.25),
    }


def stacked_groups(models, lam):
    return [{"params": [models["w1"], models["w2"]], "weight_decay": lam}, {"params": [models["b1"]], "weight_decay": 0.0}]


def stacked_loss(w1, b1, w2, t):
    rows = slice((t * 16) % 64, (t * 16) % 64 + 16)
    h = torch.tanh(DATA[rows] @ w1.transpose(-1, -2) + b1.unsqueeze(-2))
    return (h @ w2.transpose(-1, -2) - TARGET[rows]).pow(2).mean(dim=(-1, -2)).sum()


def train_stacked(models, opt, steps):
    for t in range(steps):
        opt.zero_grad()
        stacked_loss(models["w1"], models["b1"], models["w2"], t).backward()
        opt.step()


@pytest.mark.parametrize("mode", MODES)
def test_per_member_lambda_equals_separate_scalar_runs(mode):
    lams = [0.01, 0.3, 0.0] if mode != "lr_independent" else [1e-4, 3e-3, 0.0]
    schedule = schedules.linear(1.0, 2.0, steps=20)
    stacked = stacked_models(3)
    opt = WeightDecay(torch.optim.AdamW(stacked_groups(stacked, torch.tensor(lams)), lr=1e-2, fused=True),
                      mode=mode, schedule=schedule)
    assert opt.paths()[0] == {"cautious": "cautious", "coupled_l2": "l2_gradient"}.get(mode, "extra_pass")
    train_stacked(stacked, opt, 20)
    for k, lam in enumerate(lams):
        single = {n: nn.Parameter(p.detach()[k].clone()) for n, p in stacked_models(3).items()}
        one = WeightDecay(torch.optim.AdamW(stacked_groups(single, lam), lr=1e-2, fused=True), mode=mode,
                          schedule=schedule)
        train_stacked(single, one, 20)
        for name, p in single.items():
            torch.testing.assert_close(stacked[name].detach()[k], p.detach(), rtol=0, atol=1e-6)


def test_a_reused_plan_follows_every_change_of_lambda_and_lr():
    """Steps that repeat λ, the LR and the schedule reuse the last plan and its shrink factors; a change of any
    of them (the LR by a scheduler, λ in place, λ replaced) must reach the next step, as in torch's AdamW."""

    def changes(opt, t, lams):
        group = opt.param_groups[0]
        if t == 1 and isinstance(opt, WeightDecay):
            opt.expected_decay()[0]["rate"].mul_(100.0)  # the caller's copy: the plan the next step reuses is not it
        if t == 3:
            for g in opt.param_groups:
                g["lr"] = 5e-3
        if t == 5:
            if isinstance(group["weight_decay"], torch.Tensor):
                group["weight_decay"].mul_(3.0)  # in place: same object, new version
            else:
                group["weight_decay"] *= 3.0
        if t == 7:
            group["weight_decay"] = torch.tensor([2 * x for x in lams]) if isinstance(group["weight_decay"], torch.Tensor) else 2 * lams

    def run(models, opt, lams):
        for t in range(10):
            changes(opt, t, lams)
            opt.zero_grad()
            stacked_loss(models["w1"], models["b1"], models["w2"], t).backward()
            opt.step()

    lams = [0.05, 0.4, 0.0]
    stacked = stacked_models(3)
    opt = WeightDecay(torch.optim.AdamW(stacked_groups(stacked, torch.tensor(lams)), lr=1e-2, fused=True))
    run(stacked, opt, lams)
    for k, lam in enumerate(lams):
        single = {n: nn.Parameter(p.detach()[k].clone()) for n, p in stacked_models(3).items()}
        run(single, torch.optim.AdamW(stacked_groups(single, lam), lr=1e-2), lam)  # torch's own decay: the oracle
        for name, p in single.items():
            torch.testing.assert_close(stacked[name].detach()[k], p.detach(), rtol=0, atol=1e-6)


def test_per_member_lambda_needs_every_parameter_stacked():
    models = stacked_models(3)
    bad = [{"params": [models["w1"], nn.Parameter(torch.ones(2, 5))], "weight_decay": torch.tensor([0.1, 0.2, 0.3])}]
    with pytest.raises(DecayError, match=r"leading dim of 3.*shape \(2, 5\)"):
        WeightDecay(torch.optim.AdamW(bad, lr=1e-3))
    with pytest.raises(DecayError, match=r"finite numbers >= 0, got \[0.1, -1, 0\]"):
        WeightDecay(torch.optim.AdamW([{"params": [models["w1"]], "weight_decay": torch.tensor([0.1, -1.0, 0.0])}]))
    with pytest.raises(DecayError, match=r"1-D real tensor"):
        WeightDecay(torch.optim.AdamW([{"params": [models["w1"]], "weight_decay": torch.ones(3, 1)}]))


# -- checkpoints -----------------------------------------------------------------------------------

RESUME_CONFIGS = {
    "adamw_fused_lr_independent_cosine": (
        lambda g: torch.optim.AdamW(g, lr=3e-2, fused=True), "lr_independent", lambda: schedules.cosine(1.0, 3.0, 100)),
    "sgd_cautious_piecewise": (
        lambda g: torch.optim.SGD(g, lr=5e-2, momentum=0.9), "cautious", lambda: schedules.piecewise([30, 70], [1, 2, 0])),
    "adamw_fused_cautious_linear": (
        lambda g: torch.optim.AdamW(g, lr=1e-2, fused=True), "cautious", lambda: schedules.linear(1.0, 3.0, 100)),
    "third_party_coupled_l2_callable": (
        lambda g: PlainAdam(g, lr=1e-2), "coupled_l2", lambda: (lambda t: 1.0 + 0.01 * t)),
}


def build(config):
    inner, mode, schedule = RESUME_CONFIGS[config]
    model = make_model()
    lam = 1e-3 if mode == "lr_independent" else LAM
    opt = WeightDecay(inner(groups(model, lam)), mode=mode, schedule=schedule())
    return model, opt, lr_schedule(opt)


@pytest.mark.parametrize("config", sorted(RESUME_CONFIGS))
def test_resuming_from_a_checkpoint_is_bit_identical(config):
    model, opt, sched = build(config)
    train(model, opt, 100, sched)
    straight = params_of(model)

    model, opt, sched = build(config)
    train(model, opt, 50, sched)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    del model, opt, sched
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    model, opt, sched = build(config)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    assert opt.steps_taken == 50
    train(model, opt, 50, sched, start=50)
    for a, b in zip(straight, model.parameters()):
        assert torch.equal(a, b)


def test_state_dict_keeps_the_inner_layout_and_adds_the_engines_entry():
    model, opt, _ = build("adamw_fused_lr_independent_cosine")
    train(model, opt, 3)
    state = opt.state_dict()
    assert set(state) == {"state", "param_groups", "decaykit"}
    assert state["decaykit"] == {
        "mode": "lr_independent", "step": 3, "max_lr": [3e-2, 3e-2],
        "schedule": {"type": "Cosine", "start": 1.0, "end": 3.0, "steps": 100},
    }
    assert state["param_groups"][0]["weight_decay"] == 1e-3  # the user's λ, not the per-step kernel value


def test_loading_a_checkpoint_of_another_mode_schedule_or_a_plain_optimizer():
    model, opt, _ = build("adamw_fused_lr_independent_cosine")
    train(model, opt, 2)
    other = WeightDecay(torch.optim.AdamW(groups(model, 1e-3), lr=3e-2), mode="corrected")
    with pytest.raises(DecayError, match="mode='lr_independent'"):
        other.load_state_dict(opt.state_dict())
    linear = WeightDecay(torch.optim.AdamW(groups(model, 1e-3), lr=3e-2), mode="lr_independent",
                         schedule=schedules.linear(1, 2, 5))
    with pytest.raises(DecayError, match="saved with a Cosine weight-decay schedule"):
        linear.load_state_dict(opt.state_dict())
    assert linear.optimizer.state == {}  # refused before anything was loaded
    with pytest.warns(DecayWarning, match="no 'decaykit' entry"):
        other.load_state_dict(opt.optimizer.state_dict())


# -- behaving as a torch.optim.Optimizer -----------------------------------------------------------


def test_shares_groups_and_state_and_works_with_lr_schedulers_without_warnings():
    model = make_model()
    inner = torch.optim.AdamW(groups(model), lr=0.1, fused=True)
    opt = WeightDecay(inner)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is inner.param_groups and opt.state is inner.state and opt.defaults is inner.defaults
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(model, opt, 3, sched)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0125)
    assert opt.expected_decay()[0]["rate"] == pytest.approx(0.0125 * LAM)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_add_param_group_on_either_object_and_bad_groups_are_rolled_back():
    model, extra, extra2 = make_model(), nn.Linear(3, 3), nn.Linear(3, 3)
    opt = WeightDecay(torch.optim.AdamW(groups(model, 1e-3), lr=1e-3), mode="lr_independent")
    opt.add_param_group({"params": [extra.weight], "lr": 4e-3, "weight_decay": 2e-3})
    opt.optimizer.add_param_group({"params": [extra2.weight], "lr": 5e-3, "weight_decay": 1e-3})
    assert [d["rate"] for d in opt.expected_decay()][2:] == pytest.approx([2e-3, 1e-3])  # η_t = η_max: r = λ
    assert opt.state_dict()["decaykit"]["max_lr"] == [1e-3, 1e-3, 4e-3, 5e-3]
    with pytest.raises(DecayError, match=r"param_groups\[4\]\['weight_decay'\] must be a finite number >= 0.*nan"):
        opt.add_param_group({"params": [extra.bias], "weight_decay": float("nan")})
    assert len(opt.param_groups) == 4


def test_step_hooks_closures_deepcopy_and_state_dict_hooks():
    model = make_model()
    opt = WeightDecay(torch.optim.SGD(groups(model), lr=0.1), mode="lr_coupled")
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append(("pre", o is opt)))
    opt.register_step_post_hook(lambda o, a, k: calls.append(("post", o is opt)))
    opt.optimizer.register_step_post_hook(lambda o, a, k: calls.append(("inner", o is opt.optimizer)))
    opt.register_state_dict_post_hook(lambda o, sd: sd.setdefault("seen", True) and None)

    def closure():
        opt.zero_grad()
        return backward(model, 0)

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad
    assert calls == [("pre", True), ("inner", True), ("post", True)]
    assert opt.state_dict()["seen"] is True
    twin = copy.deepcopy(opt)
    assert twin.optimizer is not opt.optimizer and twin.steps_taken == 1
    assert twin.param_groups[0]["params"][0] is not opt.param_groups[0]["params"][0]


def test_grad_scaler_skips_the_whole_step_on_overflow():
    model = make_model()
    opt = WeightDecay(torch.optim.AdamW(groups(model), lr=0.1))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    scaler.scale(model(DATA).pow(2).mean()).backward()
    model[0].weight.grad[0, 0] = float("inf")
    before = params_of(model)
    scaler.step(opt)
    scaler.update()
    assert opt.steps_taken == 0 and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    opt.zero_grad()
    scaler.scale(model(DATA).pow(2).mean()).backward()
    scaler.step(opt)
    assert opt.steps_taken == 1 and not torch.equal(before[0], model[0].weight)


def test_parameters_without_gradients_are_not_decayed():
    model = make_model()
    opt = WeightDecay(torch.optim.SGD(groups(model), lr=0.1), mode="lr_coupled")
    frozen = model[0].weight.detach().clone()
    backward(model, 0)
    model[0].weight.grad = None
    opt.step()
    assert torch.equal(model[0].weight, frozen)
    assert not torch.equal(model[3].weight.detach(), make_model()[3].weight.detach())


def test_max_lr_comes_from_one_cycle_initial_lr_or_the_argument():
    model = make_model()
    inner = torch.optim.AdamW(groups(model, 1e-3), lr=1e-3)
    torch.optim.lr_scheduler.OneCycleLR(inner, max_lr=1e-2, total_steps=100)
    assert WeightDecay(inner, mode="lr_independent").state_dict()["decaykit"]["max_lr"] == [1e-2, 1e-2]
    inner = torch.optim.AdamW(groups(model), lr=1e-3)
    torch.optim.lr_scheduler.LinearLR(inner, start_factor=0.1, total_iters=10)  # lr now 1e-4, initial_lr 1e-3
    assert WeightDecay(inner, mode="corrected").state_dict()["decaykit"]["max_lr"] == [1e-3, 1e-3]
    given = WeightDecay(torch.optim.AdamW(groups(model), lr=1e-3), mode="corrected", max_lr=[2e-3, 3e-3])
    assert given.state_dict()["decaykit"]["max_lr"] == [2e-3, 3e-3]


def adamw_oracle_step(oracle, mode, lam, max_lr):
    """torch's AdamW decays θ(1 − η_t·wd): wd = λ/η_max is lr_independent, λ·η_t/η_max corrected."""
    for group in oracle.param_groups:
        group["weight_decay"] = lam / max_lr if mode == "lr_independent" else lam * group["lr"] / max_lr


@pytest.mark.parametrize("mode", ["lr_independent", "corrected"])
@pytest.mark.parametrize("order", ["scheduler_on_inner_first", "engine_first", "scheduler_on_inner_after"])
def test_eta_max_is_the_one_cycle_peak_whichever_order_engine_and_scheduler_are_built(mode, order):
    """The README's order (engine, then OneCycleLR on it) must read η_max = OneCycleLR's max_lr, as the others do."""
    lam, peak = 1e-3, 1e-2
    ref_model, model = make_model(), make_model()
    oracle = torch.optim.AdamW(ref_model.parameters(), lr=1e-3)
    ref_sched = torch.optim.lr_scheduler.OneCycleLR(oracle, max_lr=peak, total_steps=20)
    inner = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=lam)
    if order == "scheduler_on_inner_first":
        sched = torch.optim.lr_scheduler.OneCycleLR(inner, max_lr=peak, total_steps=20)
    opt = WeightDecay(inner, mode=mode)
    if order != "scheduler_on_inner_first":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt if order == "engine_first" else inner, max_lr=peak,
                                                    total_steps=20)
    assert opt.state_dict()["decaykit"]["max_lr"] == [peak]
    for t in range(20):  # up to the peak at step 6 and down again
        adamw_oracle_step(oracle, mode, lam, peak)
        train(ref_model, oracle, 1, ref_sched, start=t)
        train(model, opt, 1, sched, start=t)
        for a, b in zip(ref_model.parameters(), model.parameters()):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-7)


def test_a_given_max_lr_is_kept_whatever_a_scheduler_writes():
    model = make_model()
    opt = WeightDecay(torch.optim.AdamW(groups(model, 1e-3), lr=1e-3), mode="lr_independent", max_lr=2e-2)
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=10)
    assert opt.state_dict()["decaykit"]["max_lr"] == [2e-2, 2e-2]


@pytest.mark.parametrize("mode", ["lr_independent", "corrected"])
def test_a_step_above_eta_max_is_refused_before_anything_moves(mode):
    """CyclicLR keeps its peak on the scheduler and writes initial_lr = base_lr, the cycle's minimum."""
    model = make_model()
    inner = torch.optim.AdamW(groups(model, 1e-3), lr=1e-3)
    sched = torch.optim.lr_scheduler.CyclicLR(inner, base_lr=1e-4, max_lr=1e-2, step_size_up=4, cycle_momentum=False)
    opt = WeightDecay(inner, mode=mode)
    train(model, opt, 1, sched)  # lr = base_lr = η_max: allowed
    before = params_of(model)
    message = rf"param_groups\[0\] has lr = 0.002575 at step 1, above its η_max = 0.0001; mode '{mode}'.*max_lr="
    with pytest.raises(DecayError, match=message):
        train(model, opt, 1, start=1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())) and opt.steps_taken == 1
    assert opt.param_groups[0]["weight_decay"] == 1e-3


def test_cyclic_lr_with_its_peak_given_steps_as_torch_adamw_through_the_cycle():
    lam, peak = 1e-3, 1e-2
    ref_model, model = make_model(), make_model()
    oracle = torch.optim.AdamW(ref_model.parameters(), lr=1e-4, weight_decay=lam / peak)
    opt = WeightDecay(torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=lam), mode="lr_independent",
                      max_lr=peak)
    ref_sched, sched = (torch.optim.lr_scheduler.CyclicLR(o, 1e-4, peak, step_size_up=4, cycle_momentum=False)
                        for o in (oracle, opt))
    train(ref_model, oracle, 12, ref_sched)
    train(model, opt, 12, sched)
    for a, b in zip(ref_model.parameters(), model.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-7)


def test_a_checkpoint_keeps_the_one_cycle_peak_and_resumes_bit_identically():
    def build():
        model = make_model()
        opt = WeightDecay(torch.optim.AdamW(groups(model, 1e-3), lr=1e-3), mode="lr_independent")
        return model, opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=20)

    model, opt, sched = build()
    train(model, opt, 20, sched)
    straight = params_of(model)
    model, opt, sched = build()
    train(model, opt, 8, sched)
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()})
    assert saved["opt"]["decaykit"]["max_lr"] == [1e-2, 1e-2]
    model, opt, sched = build()
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    train(model, opt, 12, sched, start=8)
    assert all(torch.equal(a, b) for a, b in zip(straight, model.parameters()))
    plain = WeightDecay(torch.optim.AdamW(groups(make_model(), 1e-3), lr=1e-3), mode="lr_independent")
    saved["opt"]["decaykit"]["max_lr"] = [5e-2, 5e-2]
    plain.load_state_dict(saved["opt"])  # the saved η_max, not the peak the saved groups carry
    assert plain.state_dict()["decaykit"]["max_lr"] == [5e-2, 5e-2]
    torch.optim.lr_scheduler.OneCycleLR(plain, max_lr=2e-2, total_steps=20)  # until a scheduler writes another
    assert plain.state_dict()["decaykit"]["max_lr"] == [2e-2, 2e-2]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("make", [lambda g: torch.optim.SGD(g, lr=0.1), lambda g: torch.optim.AdamW(g, lr=0.1)])
def test_expected_decay_is_what_a_zero_gradient_step_does(mode, make):
    model = make_model()
    opt = WeightDecay(make(groups(model, 0.2)), mode=mode, max_lr=0.2, allow_large_decay=True)
    expected = opt.expected_decay()
    assert expected[1] == {"kind": "none", "rate": 0.0, "path": "none"}
    kind = {"coupled_l2": "coupled_l2", "cautious": "cautious"}.get(mode, "decoupled")
    rate = {"lr_coupled": 0.02, "lr_independent": 0.1, "corrected": 0.01, "cautious": 0.02, "coupled_l2": 0.2}[mode]
    assert expected[0]["kind"] == kind and expected[0]["rate"] == pytest.approx(rate)
    before = params_of(model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    w0, w1 = before[0], model[0].weight.detach()
    if mode != "coupled_l2":
        torch.testing.assert_close(w1, w0 * (1 - rate))
    elif isinstance(opt.optimizer, torch.optim.SGD):
        torch.testing.assert_close(w1, w0 * (1 - 0.1 * rate))  # plain SGD: g = λθ, θ ← θ − ηλθ
    else:
        assert not torch.equal(w1, w0)
    torch.testing.assert_close(model[0].bias.detach(), before[1])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("inner", ["adamw_fused", "sgd_momentum"])
def test_probe_reports_the_engines_decay_for_every_mode(mode, inner):
    from decaykit import probe

    model = make_model()
    opt = WeightDecay(DECOUPLED_INNERS[inner](groups(model, 0.01)), mode=mode)
    train(model, opt, 3)
    report = probe(opt, model=model)
    assert report.ok, str(report)
    weight = next(e for e in report.entries if e.name == "0.weight")
    assert weight.kind == {"coupled_l2": "coupled", "cautious": "cautious"}.get(mode, "decoupled")
    assert opt.steps_taken == 3  # the probe steps copies


# -- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weight_decay", "shown"), [(-1.0, "-1.0"), (float("nan"), "nan"), (float("inf"), "inf"), ("0.1", "'0.1'"), (True, "True")]
)
def test_bad_lambda_is_refused_naming_group_and_value(weight_decay, shown):
    model = make_model()
    inner = torch.optim.SGD([{"params": model.parameters(), "weight_decay": weight_decay}], lr=0.1)
    with pytest.raises(DecayError, match=rf"param_groups\[0\]\['weight_decay'\] must be a finite number >= 0.*got {shown}"):
        WeightDecay(inner)


def test_lambda_made_bad_during_training_stops_the_next_step_before_anything_moves():
    model = make_model()
    opt = WeightDecay(torch.optim.SGD(groups(model), lr=0.1))
    train(model, opt, 1)
    opt.param_groups[0]["weight_decay"] = -0.5
    backward(model, 1)
    before = params_of(model)
    with pytest.raises(DecayError, match=r"got -0\.5"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_schedule_returning_nan_is_reported_with_its_step():
    model = make_model()
    opt = WeightDecay(torch.optim.AdamW(groups(model), lr=0.1), schedule=lambda t: float("nan") if t == 2 else 1.0)
    train(model, opt, 2)
    before = params_of(model)
    with pytest.raises(DecayError, match=r"returned nan at step 2; a weight-decay schedule must return a finite"):
        train(model, opt, 1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert opt.param_groups[0]["weight_decay"] == LAM


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda ps: torch.optim.LBFGS(ps), "cannot drive LBFGS: LBFGS re-evaluates the closure"),
        (lambda ps: torch.optim.SparseAdam(ps), "cannot drive SparseAdam"),
        (lambda ps: torch.optim.SGD(ps, lr=0.1, differentiable=True), "differentiable=True"),
        (lambda ps: WeightDecay(torch.optim.SGD(ps, lr=0.1)), "already a WeightDecay engine"),
        (lambda ps: list(ps), "must be a torch.optim.Optimizer"),
    ],
)
def test_optimizers_the_engine_cannot_drive_are_refused(make, message):
    with pytest.raises(DecayError, match=message):
        WeightDecay(make(make_model().parameters()))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "decoupled"}, "mode must be one of lr_coupled, lr_independent, corrected, cautious, coupled_l2; got 'decoupled'"),
        ({"schedule": 0.5}, "got the number 0.5; a constant λ belongs in the param groups"),
        ({"schedule": lambda t: -1.0}, "returned -1.0 at step 0"),
        ({"max_lr": -1.0}, "max_lr must be a finite number > 0"),
        ({"max_lr": [1e-3]}, "max_lr has 1 values but the optimizer has 2 param groups"),
        ({"foreach": "yes"}, "foreach must be True, False or None, got 'yes'"),
        ({"allow_large_decay": 1}, "allow_large_decay must be True or False, got 1"),
        ({"max_lr": "0.01"}, "max_lr must be a finite number > 0, got '0.01' (str)"),
        ({"schedule": lambda t, total: 1.0}, "<lambda>(t, total) cannot be called as schedule(step)"),
    ],
)
def test_bad_engine_arguments_are_refused(kwargs, message):
    with pytest.raises(DecayError, match=message.replace("(", r"\(").replace(")", r"\)")):
        WeightDecay(torch.optim.AdamW(groups(make_model()), lr=1e-3), **kwargs)


def test_coupled_l2_refuses_sparse_gradients_before_touching_anything():
    emb = nn.Embedding(10, 4, sparse=True)
    opt = WeightDecay(PlainAdam(emb.parameters(), lr=0.1, weight_decay=0.1), mode="coupled_l2")
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(DecayError, match=r"param_groups\[0\] has sparse gradients.*decoupled mode"):
        opt.step()
    assert torch.equal(emb.weight, before) and opt.param_groups[0]["weight_decay"] == 0.1


def test_lr_independent_with_zero_peak_lr_and_rates_above_one():
    model = make_model()
    opt = WeightDecay(torch.optim.SGD(groups(model), lr=0.0), mode="lr_independent")
    assert opt.paths()[0] == "none"  # η_t = η_max = 0: nothing moves, nothing to decay
    opt.param_groups[0]["lr"] = 0.1
    with pytest.raises(DecayError, match=r"η_max = 0 but lr = 0.1.*max_lr="):
        opt.step()
    with pytest.raises(DecayError, match=r"η·λ = 2 >= 1 per step.*flips the sign"):
        WeightDecay(torch.optim.AdamW(groups(model, 20.0), lr=0.1))
    opt = WeightDecay(torch.optim.AdamW(groups(model, 20.0), lr=0.1), allow_large_decay=True)
    with pytest.raises(DecayError, match=r"shrink by r = 2 per step.*flips every weight's sign"):
        opt.expected_decay()


# -- frameworks that expect a torch.optim.Optimizer ------------------------------------------------


def test_lightning_trains_schedules_and_checkpoints_through_the_engine(tmp_path):
    lightning = pytest.importorskip("lightning")

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 2)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return (self.net(x) - y).pow(2).mean()

        def configure_optimizers(self):
            inner = torch.optim.AdamW(self.parameters(), lr=0.1, weight_decay=1e-3)
            self.engine = WeightDecay(inner, mode="lr_independent", schedule=schedules.linear(1.0, 2.0, 10))
            sched = torch.optim.lr_scheduler.StepLR(self.engine, 1, 0.5)
            return {"optimizer": self.engine, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randn(8, 2))
    module = Module()
    trainer = lightning.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))
        trainer.save_checkpoint(tmp_path / "last.ckpt")
    assert module.engine.steps_taken == 3
    assert module.engine.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["optimizer_states"][0]
    assert saved["decaykit"]["step"] == 3 and saved["decaykit"]["mode"] == "lr_independent"


def test_hugging_face_trainer_accepts_the_engine(tmp_path):
    transformers = pytest.importorskip("transformers")

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 2)

        def forward(self, x, labels):
            return {"loss": (self.net(x) - labels).pow(2).mean()}

    model = Model()
    data = [{"x": torch.randn(4), "labels": torch.randn(2)} for _ in range(8)]
    opt = WeightDecay(torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1), mode="corrected")
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2,
                                          report_to=[], save_strategy="no", use_cpu=True, logging_strategy="no",
                                          disable_tqdm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, sched)).train()
    assert opt.steps_taken == 3
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


class _OwnStepSize(torch.optim.SGD):
    """transformers' Adafactor with relative_step=True: it computes its step size itself and keeps lr=None."""

    def __init__(self, params) -> None:
        super().__init__(params, lr=0.1)
        for group in self.param_groups:
            group["lr"] = None


class _DistanceEstimate(torch.optim.SGD):
    """Prodigy and D-Adaptation: lr = 1 multiplies the step size d they estimate, kept in each group as 'd'."""

    def __init__(self, params) -> None:
        super().__init__(params, lr=1.0)
        for group in self.param_groups:
            group["d"] = 1e-3


def test_a_group_without_an_lr_is_refused_by_the_modes_that_rate_decay_by_it():
    """lr=None reached float() in the step: a bare TypeError from inside decaykit, at every step."""
    for mode in ("lr_coupled", "lr_independent", "corrected", "cautious"):
        with pytest.raises(DecayError, match=r"param_groups\[0\]\['lr'\] is None: mode .* relative_step=False") as err:
            WeightDecay(_OwnStepSize(groups(make_model())), mode=mode)
        assert err.value.argument == "optimizer"
    model = make_model()
    engine = WeightDecay(_OwnStepSize(groups(model)), mode="coupled_l2")  # λθ on the gradient needs no lr
    assert [p["kind"] for p in engine.expected_decay()] == ["coupled_l2", "none"]
    engine = WeightDecay(torch.optim.SGD(groups(model), lr=0.1))
    engine.param_groups[0]["lr"] = None  # set after it was built: refused at the step, nothing moved
    before = params_of(model)
    with pytest.raises(DecayError, match=r"param_groups\[0\]\['lr'\] is None"):
        train(model, engine, 1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_an_lr_that_multiplies_the_optimizer_s_own_step_size_is_warned():
    """Prodigy's lr = 1: 'lr_coupled' decayed by 1·λ per step, 566x Prodigy's own d·lr·λ, and nothing said so."""
    with pytest.warns(DecayWarning, match=r"param_groups\[0\] holds d = 0.001, .* 1e\+03x the optimizer's own"):
        WeightDecay(_DistanceEstimate(groups(make_model())), mode="lr_coupled")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WeightDecay(_DistanceEstimate(groups(make_model())), mode="coupled_l2")
        WeightDecay(torch.optim.AdamW(groups(make_model()), lr=1e-3))
        # torch's Adafactor keeps a d too, its update-clipping threshold (1.0): no step-size estimate to warn of
        WeightDecay(torch.optim.Adafactor(groups(make_model()), lr=1e-2), mode="lr_coupled")
