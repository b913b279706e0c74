"""decaykit.probe: measured decay per tensor, with torch.optim and hand-written optimizers as oracles."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from decaykit import DecayError, ProbeReport, WeightDecay, param_groups, probe

from deep_equal import same

LR, WD = 0.01, 0.1


def _model(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3)).to(dtype)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, sched: Any = None) -> None:
    gen = torch.Generator().manual_seed(1)
    dtype = next(model.parameters()).dtype
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(5, 6, generator=gen, dtype=dtype)).pow(2).sum().backward()
        opt.step()
        if sched is not None:
            sched.step()


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer, sched: Any = None) -> dict[str, Any]:
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "state": copy.deepcopy(opt.state_dict()),
        "groups": copy.deepcopy(groups),
        "attrs": {k: v for k, v in vars(opt).items() if isinstance(v, (bool, int, float, str))},
        "sched": copy.deepcopy(sched.state_dict()) if sched is not None else None,
        "rng": torch.get_rng_state(),
    }


def _by_name(report: ProbeReport) -> dict[str, Any]:
    return {e.name: e for e in report.entries}


OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "adamw-foreach": lambda p: torch.optim.AdamW(p, lr=LR, weight_decay=WD, foreach=True),
    "adamw-fused": lambda p: torch.optim.AdamW(p, lr=LR, weight_decay=WD, fused=True),
    "adam-amsgrad": lambda p: torch.optim.Adam(p, lr=LR, weight_decay=WD, amsgrad=True, foreach=False),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=LR, weight_decay=WD, momentum=0.9, nesterov=True),
    "rmsprop-momentum": lambda p: torch.optim.RMSprop(p, lr=LR, weight_decay=WD, momentum=0.5),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=LR, weight_decay=WD),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_probe_leaves_model_optimizer_and_scheduler_bit_identical(name: str) -> None:
    model, twin = _model(), _model()
    opt, twin_opt = OPTIMIZERS[name](model.parameters()), OPTIMIZERS[name](twin.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    twin_sched = torch.optim.lr_scheduler.StepLR(twin_opt, 1, gamma=0.5)
    _train(model, opt, 3, sched)
    _train(twin, twin_opt, 3, twin_sched)
    hook_calls = []
    opt.register_step_post_hook(lambda *a: hook_calls.append(1))
    opt._opt_called = False  # the scheduler's patched step sets this on the real optimizer when called
    before = _snapshot(model, opt, sched)
    report = probe(opt, model=model)
    probe(opt, model=model, chunk_bytes=64)
    assert report.ok, str(report)
    assert same(before, _snapshot(model, opt, sched))
    assert hook_calls == [] and opt._opt_called is False
    # the trajectory goes on exactly as if no probe had run
    _train(model, opt, 1, sched)
    _train(twin, twin_opt, 1, twin_sched)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


@pytest.mark.parametrize("kernel", [{"foreach": False}, {"foreach": True}, {"fused": True}])
@pytest.mark.parametrize("steps", [0, 3])
def test_adamw_measures_exactly_one_minus_lr_lambda(kernel: dict, steps: int) -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD, **kernel)
    _train(model, opt, steps)
    report = probe(opt, model=model)
    assert report.ok
    for e in report.entries:
        assert (e.kind, e.expected_kind) == ("decoupled", "decoupled")
        assert e.expected == pytest.approx(1 - LR * WD, abs=1e-15)
        assert e.measured == pytest.approx(1 - LR * WD, abs=1e-6)
    assert any("state already built" in n for n in report.notes) == (steps > 0)


def test_float64_measurement_is_exact_to_1e12() -> None:
    model = _model(torch.float64)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    _train(model, opt, 2)
    assert all(abs(e.measured - (1 - LR * WD)) < 1e-12 for e in probe(opt, model=model).entries)


@pytest.mark.parametrize("steps", [0, 3])
def test_coupled_adam_is_told_apart_from_adamw(steps: int) -> None:
    reports = {}
    for cls in (torch.optim.Adam, torch.optim.AdamW):
        model = _model()
        opt = cls(model.parameters(), lr=LR, weight_decay=WD)
        _train(model, opt, steps)
        reports[cls.__name__] = probe(opt, model=model)
    adam, adamw = reports["Adam"], reports["AdamW"]
    assert adam.ok and adamw.ok  # each does what its settings say ...
    assert {e.kind for e in adamw.entries} == {"decoupled"}
    assert {e.kind for e in adam.entries} == {"coupled"}  # ... but Adam's is L2 through √v̂
    assert any("adaptive denominator" in n for n in adam.notes)
    off = [abs((1 - e.measured) / (LR * WD) - 1) for e in adam.entries]
    assert max(off) > 0.1  # not θ·(1 − lr·λ)


def test_plain_sgd_coupled_equals_decoupled_rate() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=LR, weight_decay=WD)
    report = probe(opt, model=model)
    assert {e.kind for e in report.entries} == {"coupled"}
    assert all(e.measured == pytest.approx(1 - LR * WD, abs=1e-6) for e in report.entries)


@pytest.mark.parametrize(("nesterov", "factor"), [(False, 1 - LR * WD), (True, 1 - LR * WD * 1.9)])
def test_momentum_state_is_isolated(nesterov: bool, factor: float) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=LR, weight_decay=WD, momentum=0.9, nesterov=nesterov)
    _train(model, opt, 4)
    buffers = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
    assert min(float(b.abs().max()) for b in buffers) > 0.01  # momentum alone moves the weights
    report = probe(opt, model=model)
    assert report.ok
    # buf ← μ·buf + λθ, θ ← θ − lr·buf (nesterov: − lr·(λθ + μ·buf)): the decay's share is exact
    assert all(e.measured == pytest.approx(factor, abs=2e-6) for e in report.entries)
    assert any("momentum buffer" in n for n in report.notes)


def test_current_scheduler_lr_is_what_counts() -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=WD)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.1)
    _train(model, opt, 2, sched)
    report = probe(opt, model=model)
    assert report.ok
    assert all(e.lr == pytest.approx(1e-3) and e.measured == pytest.approx(1 - 1e-3 * WD, abs=1e-6)
               for e in report.entries)


def test_frozen_parameter_that_still_decays_is_caught() -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    model[0].weight.requires_grad_(False)  # frozen, but zero_grad(set_to_none=False) left it a zero .grad
    model[0].weight.grad = torch.zeros_like(model[0].weight)
    model[0].bias.requires_grad_(False)  # frozen, no .grad: skipped by torch today
    report = probe(opt, model=model)
    e = _by_name(report)
    assert not e["0.weight"].agrees and e["0.weight"].frozen and e["0.weight"].expected == 1.0
    assert "frozen (requires_grad=False) but the decay still moves it" in e["0.weight"].note
    # skipped by torch today, but audit calls a decayed frozen tensor in the optimizer an error: so does the probe
    assert not e["0.bias"].agrees and "as soon as it has a zero .grad" in e["0.bias"].note
    assert not report.ok
    # what the probe predicts is what a real step does
    before = model[0].weight.detach().clone()
    opt.step()
    assert torch.allclose(model[0].weight, before * (1 - LR * WD), rtol=0, atol=1e-7)


def test_grad_zeroed_parameter_listed_as_frozen_is_caught() -> None:
    model = _model()
    model[3].weight.register_hook(torch.zeros_like)  # the diffusers way of "freezing" a weight
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    _train(model, opt, 2)
    report = probe(opt, model=model, frozen=["3.weight"])
    assert [e.name for e in report.disagreements] == ["3.weight"]
    assert "frozen (listed as frozen)" in report.disagreements[0].note
    groups = [{"params": [p for n, p in model.named_parameters() if n != "3.weight"]},
              {"params": [model[3].weight], "weight_decay": 0.0}]
    fixed = torch.optim.AdamW(groups, lr=LR, weight_decay=WD)
    assert probe(fixed, model=model, frozen=[model[3].weight]).ok


def test_no_decay_group_overwritten_back_to_decay_is_caught() -> None:
    model = _model()
    opt = torch.optim.AdamW(param_groups(model, WD), lr=LR)
    assert probe(opt, model=model, policy="decaykit").ok
    for group in opt.param_groups:  # what a framework's "weight_decay=..." override does
        group["weight_decay"] = WD
    report = probe(opt, model=model, policy="decaykit")
    assert sorted(e.name for e in report.disagreements) == ["0.bias", "1.bias", "1.weight", "3.bias"]
    assert all("the policy says no decay" in e.note for e in report.disagreements)
    by_mapping = probe(opt, model=model, policy={"1.*": 0, "*.bias": False, "*": WD})
    assert sorted(e.name for e in by_mapping.disagreements) == ["0.bias", "1.bias", "1.weight", "3.bias"]


def test_groups_swapped_are_caught() -> None:
    model = _model()
    groups = param_groups(model, WD)
    groups[0]["weight_decay"], groups[1]["weight_decay"] = 0.0, WD
    report = probe(torch.optim.AdamW(groups, lr=LR), model=model, policy="decaykit")
    assert sorted(e.name for e in report.disagreements) == ["0.bias", "0.weight", "1.bias", "1.weight", "3.bias",
                                                            "3.weight"]


def test_trainable_parameter_missing_from_the_optimizer_is_caught() -> None:
    model = _model()
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if n != "3.bias"], lr=LR, weight_decay=WD)
    model.add_module("frozen_head", nn.Linear(2, 2).requires_grad_(False))
    report = probe(opt, model=model)
    missing = [e for e in report.entries if e.kind == "missing"]
    assert [e.name for e in missing] == ["3.bias"] and not missing[0].agrees and not report.ok
    assert probe(opt).ok  # without the model nothing says a tensor is missing


def test_chunks_measure_the_same_as_one_copy() -> None:
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WD)
    _train(model, opt, 2)
    whole, chunked = probe(opt, model=model, chunk_bytes=None), probe(opt, model=model, chunk_bytes=100)
    assert chunked.cost["chunks"] > 1 and whole.cost["chunks"] == 1
    assert [(e.name, e.kind, e.measured) for e in whole.entries] == [(e.name, e.kind, e.measured) for e in chunked.entries]
    assert chunked.cost["peak_copy_bytes"] < whole.cost["peak_copy_bytes"]


def test_all_zero_tensor_is_measured_on_a_pattern() -> None:
    model = _model()
    nn.init.zeros_(model[0].bias)
    report = probe(torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD), model=model)
    bias = _by_name(report)["0.bias"]
    assert bias.kind == "decoupled" and bias.measured == pytest.approx(1 - LR * WD, abs=1e-6)
    assert "test pattern" in bias.note
    assert torch.equal(model[0].bias, torch.zeros(8))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decay_lost_to_rounding_is_a_disagreement(dtype: torch.dtype) -> None:
    # θ·(1 − 5e-5) rounds back to θ in bf16/fp16 (half-spacing >= 2.4e-4 of a value): the decay never acts
    model = _model(dtype)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3, eps=1e-3)  # eps=1e-8 is 0 in fp16
    report = probe(opt, model=model)
    weights = [e for e in report.entries if e.weight_decay]
    assert not report.ok and weights and not any(e.agrees for e in weights)
    assert all(e.note.startswith("the decay configured is not applied") and "fp32 master weights" in e.note
               for e in weights)
    assert all(e.agrees for e in report.entries if not e.weight_decay)
    before = model[0].weight.detach().clone()
    for _ in range(50):  # the real optimizer agrees: decay-only steps change nothing
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    assert torch.equal(model[0].weight, before)


def test_decay_rounded_away_inside_a_fused_kernel_is_a_warning_not_a_disagreement() -> None:
    """Fused AdamW computes θ(1 − lr·λ) − lr·u in one kernel and rounds once: with no update the decay rounds
    away, but real updates carry it across some roundings, so "not applied" would be false there."""
    model = _model(torch.bfloat16)
    fused = probe(torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3, fused=True), model=model)
    weights = [e for e in fused.entries if e.weight_decay]
    assert fused.ok and weights and all(e.note.startswith("warning: the decay is mostly lost to rounding") and
                                        "fused kernel" in e.note for e in weights)  # fmt: skip
    # the same kernel in a real step: the decay changes the result of some roundings, not none
    torch.manual_seed(0)
    grads = [torch.randn_like(p) for p in model.parameters()]
    ends = []
    for wd in (0.0, 0.05):
        twin = copy.deepcopy(model)
        opt = torch.optim.AdamW(twin.parameters(), lr=1e-3, weight_decay=wd, fused=True)
        for _ in range(20):
            for p, g in zip(twin.parameters(), grads):
                p.grad = g.clone()
            opt.step()
        ends.append(twin[0].weight.detach().clone())
    assert not torch.equal(*ends)


def test_decay_above_float32_resolution_is_untouched_by_the_rounding_check() -> None:
    model = _model()
    report = probe(torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3), model=model)
    assert report.ok and not any("round" in e.note for e in report.entries)
    assert _by_name(report)["0.weight"].kind == "decoupled"


def test_decay_below_float32_resolution_is_lost_too() -> None:
    model = _model()
    report = probe(torch.optim.AdamW(param_groups(model, 1e-3), lr=1e-5), model=model)  # lr·λ = 1e-8 < 3e-8
    assert not _by_name(report)["0.weight"].agrees
    assert "rounds back to θ in float32" in _by_name(report)["0.weight"].note


def test_decay_partly_lost_to_rounding_is_a_warning() -> None:
    # r = 0.003 lies between bf16's eps/4 and eps/2: 1 + 2^-7 (next value down 2^-7 away, half of it
    # 0.0039 of the value) keeps its value, 1.9 (0.0021) moves; the first is 22% of Σθ², so partly lost
    layer = nn.Linear(2, 1, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1 + 2**-7, 1.9]]))
    report = probe(torch.optim.AdamW(layer.parameters(), lr=0.03, weight_decay=0.1), model=layer)
    w = report.entries[0]
    assert report.ok and w.note.startswith("warning: the decay is partly lost to rounding")
    assert "for 22% of this tensor" in w.note
    assert "0 disagreement(s), but 1 warning(s) below" in str(report)
    layer.weight.data.fill_(1 + 2**-7)  # every value at the low end of its range: all of it is lost
    assert probe(torch.optim.AdamW(layer.parameters(), lr=0.03, weight_decay=0.1)).ok is False


def test_decay_within_bf16_rounding_that_moves_every_value_is_not_lost() -> None:
    model = _model(torch.bfloat16)
    report = probe(torch.optim.AdamW(param_groups(model, 0.1), lr=0.1), model=model)  # r = 0.01 > eps/2
    assert report.ok and not any("warning" in e.note for e in report.entries)
    assert "it moved the values" in _by_name(report)["0.weight"].note


def test_coupled_decay_rounded_away_is_a_warning() -> None:
    model = _model(torch.float16)
    report = probe(torch.optim.SGD(param_groups(model, 0.05), lr=1e-3), model=model)
    w = _by_name(report)["0.weight"]
    assert w.agrees and w.note.startswith("warning: adding λθ (λ = 0.05) to a zero gradient changes no value")


# ---- optimizers that describe themselves with expected_decay(), the WeightDecay protocol ----


def _with_grads(opt: torch.optim.Optimizer) -> Any:
    """(group, parameter) for every parameter with a gradient: what a hand-written step() updates."""
    return ((g, p) for g in opt.param_groups for p in g["params"] if p.grad is not None)


class DecoupledSGD(torch.optim.Optimizer):
    """θ ← θ(1 − lr·λ_k) − lr·g, λ a float or one value per stacked model (dimension 0)."""

    def __init__(self, params: Any, lr: float, weight_decay: float | torch.Tensor) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    def expected_decay(self) -> list[dict[str, Any]]:
        return [{"kind": "decoupled", "rate": g["lr"] * g["weight_decay"]} for g in self.param_groups]

    def _weight_decay(self, g: dict[str, Any], p: torch.Tensor) -> float | torch.Tensor:
        wd = g["weight_decay"]
        return wd.reshape(-1, *([1] * (p.dim() - 1))) if isinstance(wd, torch.Tensor) else wd

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for g, p in _with_grads(self):
            p.mul_(1 - g["lr"] * self._weight_decay(g, p)).add_(p.grad, alpha=-g["lr"])


class CautiousMomentum(torch.optim.Optimizer):
    """u ← μ·u + g; θ ← θ − lr·(u + λ·𝟙(u·θ ≥ 0)·θ), cautious decay (Chen et al. 2025)."""

    def __init__(self, params: Any, lr: float, weight_decay: float) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    def expected_decay(self) -> list[dict[str, Any]]:
        return [{"kind": "cautious", "rate": g["lr"] * g["weight_decay"]} for g in self.param_groups]

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for g, p in _with_grads(self):
            u = self.state[p].setdefault("u", torch.zeros_like(p)).mul_(0.9).add_(p.grad)
            mask = (u * p >= 0).to(p.dtype)
            p.sub_(g["lr"] * (u + g["weight_decay"] * mask * p))


class LyingAdam(torch.optim.Adam):
    """Claims decoupled decay but is torch's coupled Adam: a wrapper that forgot to switch it off."""

    def expected_decay(self) -> list[dict[str, Any]]:
        return [{"kind": "decoupled", "rate": g["lr"] * g["weight_decay"]} for g in self.param_groups]


def test_expected_decay_is_used_and_trusted_only_when_measured() -> None:
    model = _model()
    report = probe(DecoupledSGD(model.parameters(), lr=LR, weight_decay=WD), model=model)
    assert report.ok and {e.kind for e in report.entries} == {"decoupled"}
    lying = probe(LyingAdam(model.parameters(), lr=LR, weight_decay=WD), model=model)
    assert not lying.ok and {e.kind for e in lying.entries} == {"coupled"}
    assert "expected_decay(): decoupled" in lying.entries[0].note


def test_per_member_rates_give_one_entry_per_stacked_model() -> None:
    stacked = nn.Parameter(torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(2)))
    lam = torch.tensor([0.0, 0.1, 1.0])
    report = probe(DecoupledSGD([stacked], lr=LR, weight_decay=lam))
    assert [e.name for e in report.entries] == ["group0.param0[0]", "group0.param0[1]", "group0.param0[2]"]
    assert [e.kind for e in report.entries] == ["none", "decoupled", "decoupled"]
    assert [e.measured for e in report.entries] == pytest.approx([1.0, 1 - LR * 0.1, 1 - LR], abs=1e-6)
    assert report.ok and report.entries[1].shape == (4, 5) and report.entries[2].weight_decay == 1.0
    with pytest.raises(DecayError, match="members on dimension 0"):
        probe(DecoupledSGD([nn.Parameter(torch.ones(2, 5))], lr=LR, weight_decay=lam))


def test_cautious_decay_with_state_is_masked_and_recognised() -> None:
    model = _model()
    opt = CautiousMomentum(model.parameters(), lr=LR, weight_decay=WD)
    _train(model, opt, 3)
    report = probe(opt, model=model)
    kinds = {e.name: e.kind for e in report.entries}
    assert report.ok and set(kinds.values()) == {"cautious", "none"}
    # with momentum, only coordinates where u and θ agree decay: less than the full lr·λ
    assert all(1 - LR * WD <= e.measured < 1 for e in report.entries if e.kind == "cautious")
    assert any(e.measured > 1 - LR * WD + 1e-4 for e in report.entries if e.kind == "cautious")
    # a bias grown from zero by -lr·Σu has every coordinate against its update: nothing decays
    assert kinds["1.bias"] == "none" and "same sign" in _by_name(report)["1.bias"].note


class IndependentDecay(torch.optim.Optimizer):
    """No expected_decay(): θ ← θ(1 − λ) − lr·g, decay independent of the LR."""

    def __init__(self, params: Any, lr: float, weight_decay: float, sign: bool = False) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "sign": sign})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    shrink = g["weight_decay"] * (torch.sign(p) if g["sign"] else p)
                    p.sub_(shrink).add_(p.grad, alpha=-g["lr"])


def test_unknown_optimizer_gets_its_convention_named() -> None:
    model = _model()
    report = probe(IndependentDecay(model.parameters(), lr=LR, weight_decay=1e-3), model=model)
    assert report.ok and {e.expected_kind for e in report.entries} == {"unknown"}
    assert all("independent of the LR" in e.note for e in report.entries)
    odd = probe(IndependentDecay(model.parameters(), lr=LR, weight_decay=1e-3, sign=True), model=model)
    assert not odd.ok and "matches none of" in odd.entries[0].note


class Wrapper(torch.optim.Optimizer):
    """Shares param_groups and state with an inner optimizer, as decaykit.WeightDecay does."""

    def __init__(self, inner: torch.optim.Optimizer) -> None:
        self.inner = inner
        self.defaults = inner.defaults
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}
        self.param_groups = inner.param_groups
        self.state = inner.state
        self.calls = 0

    def step(self, closure: Any = None) -> None:
        self.calls += 1
        self.inner.step()


def test_wrapper_and_a_scheduler_patching_the_inner_step_stay_untouched() -> None:
    model = _model()
    inner = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    sched = torch.optim.lr_scheduler.StepLR(inner, 1, gamma=0.5)  # patches inner.step on the instance
    wrapper = Wrapper(inner)
    _train(model, wrapper, 2, sched)
    before, calls = _snapshot(model, inner, sched), wrapper.calls
    report = probe(wrapper, model=model)
    assert report.ok and {e.kind for e in report.entries} == {"decoupled"}
    assert same(before, _snapshot(model, inner, sched)) and wrapper.calls == calls


def test_bad_input_is_a_decay_error() -> None:
    model = _model()
    with pytest.raises(DecayError, match=r"torch\.optim\.Optimizer"):
        probe(model)  # type: ignore[arg-type]
    with pytest.raises(DecayError, match="needs model="):
        probe(torch.optim.AdamW(model.parameters()), policy="decaykit")
    with pytest.raises(DecayError, match="chunk_bytes"):
        probe(torch.optim.AdamW(model.parameters()), chunk_bytes=0)
    with pytest.raises(DecayError, match="closure"):
        probe(torch.optim.LBFGS(model.parameters()))
    bad = DecoupledSGD(model.parameters(), lr=LR, weight_decay=WD)
    bad.expected_decay = lambda: [{"kind": "sideways", "rate": 1}]  # type: ignore[method-assign]
    with pytest.raises(DecayError, match="expected_decay"):
        probe(bad)


# ---- decaykit.WeightDecay, the engine that implements expected_decay() ----

ENGINE_KINDS = {"lr_coupled": {"decoupled"}, "lr_independent": {"decoupled"}, "corrected": {"decoupled"},
                "cautious": {"cautious", "none"}, "coupled_l2": {"coupled"}}


@pytest.mark.parametrize("mode", sorted(ENGINE_KINDS))
def test_weight_decay_engine_measures_as_it_describes_itself(mode: str) -> None:
    from decaykit import WeightDecay

    model = _model()
    lam = WD * LR if mode == "lr_independent" else WD  # the same decay at the peak LR in the mode's own convention
    inner = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=lam)
    sched = torch.optim.lr_scheduler.StepLR(inner, 1, gamma=0.5)
    engine = WeightDecay(inner, mode=mode)
    _train(model, engine, 3, sched)
    before, steps = _snapshot(model, inner, sched), engine.steps_taken
    report = probe(engine, model=model)
    assert report.ok, str(report)
    assert {e.kind for e in report.entries} <= ENGINE_KINDS[mode]
    rate = engine.expected_decay()[0]["rate"]
    if ENGINE_KINDS[mode] == {"decoupled"}:
        assert all(e.measured == pytest.approx(1 - rate, abs=1e-6) for e in report.entries)
    assert same(before, _snapshot(model, inner, sched)) and engine.steps_taken == steps


def test_weight_decay_engine_per_member_rates() -> None:
    from decaykit import WeightDecay

    stacked = nn.Parameter(torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(3)))
    lam = torch.tensor([0.0, 0.1, 1.0])
    engine = WeightDecay(torch.optim.AdamW([{"params": [stacked], "weight_decay": lam}], lr=LR, fused=True))
    report = probe(engine)
    assert report.ok and [e.kind for e in report.entries] == ["none", "decoupled", "decoupled"]
    assert [e.measured for e in report.entries] == pytest.approx([1.0, 1 - LR * 0.1, 1 - LR], abs=1e-6)


def test_complex_scalar_and_non_finite_tensors() -> None:
    c = nn.Parameter(torch.randn(3, 4, dtype=torch.complex64, generator=torch.Generator().manual_seed(4)))
    s, bad = nn.Parameter(torch.tensor(2.0)), nn.Parameter(torch.tensor([1.0, float("nan")]))
    report = probe(torch.optim.AdamW([c, s, bad], lr=LR, weight_decay=WD))
    good, scalar, broken = report.entries
    assert good.kind == scalar.kind == "decoupled"
    assert good.measured == pytest.approx(1 - LR * WD, abs=1e-6) and scalar.shape == ()
    assert not broken.agrees and "non-finite" in broken.note and "not measurable" in str(report)
    with torch.device("meta"):
        meta = nn.Linear(2, 2)
    with pytest.raises(DecayError, match="meta tensors"):
        probe(torch.optim.AdamW(meta.parameters()))


def test_a_decay_outside_weight_decay_is_reported() -> None:
    model = _model()
    # ASGD shrinks θ by (1 − lambd·eta) every step whatever weight_decay is
    report = probe(torch.optim.ASGD(model.parameters(), lr=0.1, weight_decay=0.0, lambd=1e-3), model=model,
                   frozen=["3.*"])
    entries = _by_name(report)
    assert all("it still shrinks by 0.9999 per step" in e.note for e in report.entries)
    assert {e.name for e in report.disagreements} == {"3.weight", "3.bias"}
    assert "remove it from the optimizer" in entries["3.weight"].note


def test_hf_adafactor_decay_is_measured_per_tensor() -> None:
    optimization = pytest.importorskip("transformers.optimization")
    model = _model()
    # relative_step: lr is None and the step size comes from the step count and each tensor's RMS
    opt = optimization.Adafactor(model.parameters(), weight_decay=WD)
    _train(model, opt, 2)
    report = probe(opt, model=model)
    assert report.ok and {e.kind for e in report.entries} == {"decoupled"}
    assert all("its decay is decoupled" in e.note for e in report.entries)
    assert len({round(e.measured, 6) for e in report.entries}) > 1  # a different rate per tensor
    fixed = optimization.Adafactor(model.parameters(), lr=LR, weight_decay=WD, relative_step=False,
                                   scale_parameter=False)
    assert all(e.measured == pytest.approx(1 - LR * WD, abs=1e-6) for e in probe(fixed, model=model).entries)


@pytest.mark.parametrize("cls", [torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW])
def test_maximize_keeps_the_decay_a_shrink(cls: type) -> None:
    model = _model()
    report = probe(cls(model.parameters(), lr=LR, weight_decay=WD, maximize=True), model=model)
    assert report.ok and all(e.measured < 1 for e in report.entries)


# ---- third-party conventions, mimicked by hand-written stand-ins (pytorch_optimizer, torch_optimizer) ----


class SharedStepState(torch.optim.Optimizer):
    """θ ← θ(1 − lr·λ) − lr·g/√k, with state under keys of its own as pytorch_optimizer's MADGRAD (a tensor
    ``state['k']``), SPAM (an int ``state['total_step']``) and TRAC (a dict keyed by parameter) keep it."""

    def __init__(self, params: Any, lr: float, weight_decay: float) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        if "k" not in self.state:
            self.state["k"] = torch.tensor([0], dtype=torch.long)
            self.state["total_step"] = 0
            self.state["start"] = {"step": 0, **{p: p.clone() for g in self.param_groups for p in g["params"]}}
        k = float(self.state["k"] + 1)
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    assert self.state["start"][p].shape == p.shape  # found under the twin's own parameter
                    avg = self.state[p].setdefault("grad_avg", torch.zeros_like(p)).add_(p.grad)
                    p.mul_(1 - g["lr"] * g["weight_decay"]).add_(avg, alpha=-g["lr"] / k**0.5)
        self.state["k"].add_(1)
        self.state["total_step"] += 1


def test_state_under_keys_of_its_own_is_copied_into_the_twin() -> None:
    model = _model()
    opt = SharedStepState(model.parameters(), lr=LR, weight_decay=WD)
    _train(model, opt, 2)
    report = probe(opt, model=model)
    assert report.ok and {e.kind for e in report.entries} == {"decoupled"}, str(report)
    assert all(e.measured == pytest.approx(1 - LR * WD, abs=1e-6) for e in report.entries)
    assert int(opt.state["k"]) == 2 and opt.state["total_step"] == 2  # the twins stepped copies


class InternalStepSize(torch.optim.Optimizer):
    """m ← 0.9·m + d·g; θ ← θ(1 − d·lr·λ) − lr·m, after ``skip`` steps that move nothing (a rectified Adam's
    first steps); ``d`` an internal step size that starts tiny (Prodigy, D-Adaptation)."""

    def __init__(self, params: Any, lr: float, weight_decay: float, d: float = 1.0, skip: int = 0) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "d": d, "skip": skip, "step": 0})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for g in self.param_groups:
            g["step"] += 1
            for p in g["params"]:
                if p.grad is None or g["step"] <= g["skip"]:
                    continue
                m = self.state[p].setdefault("m", torch.zeros_like(p)).mul_(0.9).add_(p.grad, alpha=g["d"])
                p.mul_(1 - g["d"] * g["lr"] * g["weight_decay"]).sub_(m, alpha=g["lr"])


def test_an_unknown_decay_a_step_cannot_show_is_not_called_rounding() -> None:
    model = _model()
    skipping = InternalStepSize(model.parameters(), lr=LR, weight_decay=WD, skip=10)
    _train(model, skipping, 3)
    for e in probe(skipping, model=model).entries:
        assert e.agrees and e.kind == "none", e
        assert "the step moved the values by no more than float32 rounding" in e.note
        assert "cannot show its decay" in e.note and "per step" not in e.note
    tiny = InternalStepSize(model.parameters(), lr=LR, weight_decay=WD)
    _train(model, tiny, 3)
    tiny.param_groups[0]["d"] = 1e-9  # momentum still moves θ; the decay, d·lr·λ = 1e-12, is below float32
    for e in probe(tiny, model=model).entries:
        assert e.agrees and e.kind == "none", e
        assert "the step moved the values, but with weight_decay=0.1 they land where they do with 0" in e.note
        assert "adding λθ to the gradient moves nothing measurable" in e.note and "per step" not in e.note


class ProjectedDecay(DecoupledSGD):
    """SGD with θ ← θ(1 − lr·λ·w) − lr·g, w = ``wd_ratio`` where the gradient is nearly orthogonal to θ
    (|cos(g, θ)| < δ/√n: scale-invariant weights) and 1 elsewhere, as AdamP and SGDP (Heo et al. 2021) do;
    no expected_decay(): an optimizer decaykit has no facts on."""

    expected_decay = None  # type: ignore[assignment]

    def __init__(self, params: Any, lr: float, weight_decay: float, wd_ratio: float = 0.1, delta: float = 0.1) -> None:
        torch.optim.Optimizer.__init__(self, params, {"lr": lr, "weight_decay": weight_decay, "wd_ratio": wd_ratio,
                                                      "delta": delta})

    def _weight_decay(self, g: dict[str, Any], p: torch.Tensor) -> float | torch.Tensor:
        cos = abs(float((p.grad * p).sum())) / (float(p.grad.norm() * p.norm()) + 1e-8)
        return g["weight_decay"] * (g["wd_ratio"] if cos < g["delta"] / p.numel() ** 0.5 else 1.0)


@pytest.mark.parametrize("grad", ["held", "none"])
def test_a_decay_only_a_zero_gradient_shows_is_not_passed_off_as_the_decay(grad: str) -> None:
    model = _model()
    opt = ProjectedDecay(model.parameters(), lr=LR, weight_decay=WD)
    _train(model, opt, 2)
    if grad == "none":
        opt.zero_grad(set_to_none=True)
    for e in probe(opt, model=model).entries:
        assert e.measured == pytest.approx(1 - LR * WD * 0.1, abs=1e-6)  # the zero-gradient branch, as measured
        assert not e.agrees and "its decay depends on the gradient" in e.note, e
        assert "with a zero gradient θ·(1 − r) with r = 0.0001" in e.note and "θ·(1 − r) with r = 0.001 " in e.note
        assert ("the gradient it holds (.grad)" if grad == "held" else "a random gradient") in e.note
    plain = probe(IndependentDecay(model.parameters(), lr=LR, weight_decay=1e-3), model=model)
    assert plain.ok and "depends on the gradient" not in str(plain)  # a decay the gradient leaves alone agrees


class TrustRatio(torch.optim.Optimizer):
    """LARS as timm writes it: u ← 0.9·u + t·(g + λθ), θ ← θ − lr·u, t = c·‖θ‖/(‖g‖ + λ‖θ‖), and t = 1 where g = 0; with
    ``trust_coeff=None`` plain coupled SGD (t = 1). No expected_decay(): an optimizer decaykit has no facts on."""

    def __init__(self, params: Any, lr: float, weight_decay: float, trust_coeff: float | None = 1e-3) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "trust_coeff": trust_coeff})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for g, p in _with_grads(self):
            d = p.grad + g["weight_decay"] * p
            trust = 1.0
            if g["trust_coeff"] is not None and float(p.grad.norm()) > 0:
                trust = g["trust_coeff"] * float(p.norm()) / (float(p.grad.norm()) + g["weight_decay"] * float(p.norm()))
            buf = self.state[p].setdefault("momentum", torch.zeros_like(p)).mul_(0.9).add_(d, alpha=trust)
            p.sub_(buf, alpha=g["lr"])


def test_a_coupled_decay_only_a_zero_gradient_shows_is_not_passed_off_as_the_decay() -> None:
    """LARS takes its trust ratio as 1 on a zero gradient: both twins there decay by lr·λ and "agreed", while a real
    step decays by lr·t·λ (t = 0.02 here, 49x less). The twins are now stepped with a gradient for coupled too."""
    model = _model()
    # trust_coeff = λ: the coupled twin (gradient λθ, weight_decay 0) then takes t = 1 too, so a zero gradient
    # reads as coupled L2 exactly, as timm's Lars (with its momentum) read in an outside run
    lars = TrustRatio(model.parameters(), lr=0.1, weight_decay=1e-4, trust_coeff=1e-4)
    _train(model, lars, 2)
    report = probe(lars, model=model)
    assert not report.ok
    for e in report.entries:
        assert e.kind == "coupled" and not e.agrees and "its decay depends on the gradient" in e.note, e
        assert "(as coupled L2)" in e.note
    sgd = TrustRatio(model.parameters(), lr=0.1, weight_decay=1e-4, trust_coeff=None)
    assert probe(sgd, model=model).ok  # coupled L2 the gradient leaves alone agrees


class SecondDecay(torch.optim.Optimizer):
    """Momentum SGD that decays 1-D tensors by θ(1 − lr·λ₁) under ``weight_decay_1d`` whatever ``weight_decay`` says,
    as pytorch_optimizer's MARS does; ``lr_decay`` (Adagrad's) is named like a decay but only scales the LR."""

    def __init__(self, params: Any, lr: float, weight_decay: float = 0.0, weight_decay_1d: float = 0.1,
                 lr_decay: float = 0.01) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "weight_decay_1d": weight_decay_1d,
                                  "lr_decay": lr_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for g, p in _with_grads(self):
            state = self.state[p]
            state["step"] = state.get("step", 0) + 1
            lr = g["lr"] / (1 + (state["step"] - 1) * g["lr_decay"])
            buf = state.setdefault("momentum", torch.zeros_like(p)).mul_(0.9).add_(p.grad)
            wd = g["weight_decay_1d"] if p.dim() == 1 else g["weight_decay"]
            p.mul_(1 - lr * wd).sub_(buf, alpha=lr)


class RebuiltFromState(torch.optim.Optimizer):
    """θ = −lr·z with z the sum of gradients (FTRL's dual averaging): with its state reset, θ jumps to 0."""

    def __init__(self, params: Any, lr: float, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    z = self.state[p].setdefault("z", torch.zeros_like(p)).add_(p.grad)
                    p.copy_(z * -g["lr"])


def test_a_decay_weight_decay_does_not_control_is_found_with_state_too() -> None:
    model = _model()
    opt = SecondDecay(param_groups(model, WD), lr=LR)
    _train(model, opt, 3)
    report = probe(opt, model=model, policy="decaykit")
    norm = _by_name(report)["1.weight"]  # LayerNorm: in the weight_decay=0 group, decayed by weight_decay_1d
    # read on a copy with its state reset: at the LR of a first step, LR, not LR/(1 + 3·lr_decay)
    assert norm.other_decay == pytest.approx(1 - LR * 0.1, abs=1e-6) and not norm.agrees
    assert "its group's 'weight_decay_1d' (with that at 0 as well, nothing moves it)" in norm.note
    assert "state reset" in norm.note and "lr_decay" not in norm.note and norm.other_decay_setting == "weight_decay_1d"
    assert _by_name(report)["0.weight"].other_decay is None  # 2-D: only weight_decay decays it
    rebuilt = RebuiltFromState(model.parameters(), lr=LR)
    _train(model, rebuilt, 2)
    report = probe(rebuilt, model=model)
    assert all(e.other_decay is None for e in report.entries)
    assert any(n.startswith("6 tensors with state were not checked for a decay that weight_decay=0 leaves on")
               for n in report.notes), report.notes


def test_only_an_optimizer_decaykit_has_no_facts_on_pays_the_step_from_reset_state():
    """The copy with its state reset looks for a decay outside weight_decay; a torch class has none beyond the
    registry's (ASGD's lambd, read without it), so its probe keeps its two twin steps (it had taken three,
    +32% peak memory on a 100M-parameter AdamW); an unknown class, or the engine driving one, takes the third."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    for make, steps in ((lambda g: torch.optim.AdamW(g, lr=1e-3), 2),
                        (lambda g: WeightDecay(torch.optim.AdamW(g, lr=1e-3)), 2),
                        (lambda g: SecondDecay(g, lr=1e-3, weight_decay_1d=0.0), 3),
                        (lambda g: WeightDecay(SecondDecay(g, lr=1e-3, weight_decay_1d=0.0)), 3)):
        opt = make(param_groups(model, 0.05))
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        taken = probe(opt, model=model).cost["twin_steps"]
        assert taken == 2 if steps == 2 else taken >= 3, type(opt).__name__
        model.zero_grad()


def test_tensors_over_the_same_memory_do_not_agree_and_say_why():
    """Twins copy each tensor apart, so both 'agree' at 0.999; the real step decays the shared memory once per
    alias (0.999² for a head tied to the embedding through .data): the probe says so instead."""
    emb, head = torch.nn.Embedding(20, 4), torch.nn.Linear(4, 20, bias=False)
    head.weight.data = emb.weight.data
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    report = probe(torch.optim.AdamW(param_groups(model, 0.1), lr=1e-2), model=model)
    rows = {e.name: e for e in report.entries}
    assert not report.ok and not rows["emb.weight"].agrees and not rows["head.weight"].agrees
    assert rows["emb.weight"].note.startswith("shares its memory with head.weight")
    apart = torch.nn.ModuleDict({"emb": torch.nn.Embedding(20, 4), "head": torch.nn.Linear(4, 20, bias=False)})
    assert probe(torch.optim.AdamW(param_groups(apart, 0.1), lr=1e-2), model=apart).ok
