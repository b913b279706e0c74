"""Each finding of decaykit.Monitor fires, once per tensor or group, on a case built for it; a healthy
run (tests/test_monitor.py, the scale-invariant toy run for 5τ) shows none."""

from __future__ import annotations

import copy
import math
import re
import warnings

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import decaykit

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(model, opt, steps, make_input, *, before_step=None):
    for step in range(1, steps + 1):
        out = model(make_input())
        (out * torch.randn_like(out)).sum().backward()
        if before_step is not None:
            before_step(step)
        opt.step()
        opt.zero_grad()


def _codes(mon) -> list[tuple[str, str]]:
    return [(f.code, f.name) for f in mon.findings]


def _scale_invariant(inputs: int = 16, outputs: int = 32):
    return torch.nn.Sequential(torch.nn.Linear(inputs, outputs, bias=False),
                               torch.nn.LayerNorm(outputs, elementwise_affine=False))


def test_decayed_norms_and_biases_are_named_once_each():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)   # decays everything
    mon = decaykit.Monitor(model, opt, every=2)
    _train(model, opt, 6, lambda: torch.randn(4, 8))
    assert sorted(_codes(mon)) == sorted([("decayed-bias", "0.bias"), ("decayed-norm", "1.weight"),
                                          ("decayed-norm", "1.bias"), ("decayed-bias", "2.bias")])
    assert all(f.step == 1 for f in mon.findings)  # found at the first recorded step
    # the same model with decaykit's groups: nothing to say
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-3)
    with decaykit.Monitor(model, opt, every=2) as clean:
        _train(model, opt, 6, lambda: torch.randn(4, 8))
    assert clean.findings == [] and {r["name"] for r in clean.history} == {"0.weight", "2.weight"}


def test_decay_dominating_a_tensor_without_gradients_is_found_once():
    """A tensor kept fixed by zeroing its gradients is still decayed: nothing but the decay moves it."""
    model = _scale_invariant()
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-2)
    mon = decaykit.Monitor(model, opt, every=5)
    _train(model, opt, 30, lambda: torch.randn(8, 16), before_step=lambda s: model[0].weight.grad.zero_())
    assert _codes(mon) == [("decay-dominates", "0.weight")]
    assert all(r["decay_to_update"] > 100 for r in mon.history)  # the rest is float rounding


def _timescale(mon) -> list[str]:
    return [f.message for f in mon.findings if f.code == "timescale-exceeds-run"]


@settings(max_examples=40, deadline=None)
@given(lr=st.floats(1e-4, 1e-1), lam=st.floats(1e-3, 10.0), total=st.integers(1, 120))
def test_a_run_with_less_than_one_timescale_of_decay_is_found_at_close(lr, lam, total):
    """A constant LR set without a scheduler may be changed by hand at any step, so nothing is told before close();
    there Σ r over the whole run is known, and the finding fires iff it is below 1 (τ longer than the run)."""
    truth = math.fsum([lr * lam] * total)
    assume(abs(truth - 1) > 1e-9)
    model = _scale_invariant(4, 4)
    opt = torch.optim.AdamW(decaykit.param_groups(model, lam), lr=lr)
    mon = decaykit.Monitor(model, opt, every=50, total_steps=total)
    _train(model, opt, total, lambda: torch.randn(2, 4))
    assert _timescale(mon) == []
    mon.close()
    found = [(f.code, f.name, f.step) for f in mon.findings if f.code == "timescale-exceeds-run"]
    assert found == ([("timescale-exceeds-run", "group 0", total)] if truth < 1 else [])
    if found:  # Σ r and the factor as measured, with the digits that show the factor below 1 (it printed "a factor 1")
        (message,) = _timescale(mon)
        assert f"is {truth:.3g}:" in message
        shown = re.search(r"by a factor (\S+) only", message).group(1)
        assert float(shown) == pytest.approx(math.exp(-truth), rel=1e-2) and (float(shown) < 1 or truth < 1e-15)


T = 400


def _by_hand_warmup(model):  # nanoGPT's get_lr: no scheduler, the LR written into the group every step
    opt = torch.optim.AdamW(decaykit.param_groups(model, 1.0), lr=1e-2)

    def lr_at(it: int) -> float:
        if it < 40:
            return 1e-2 * (it + 1) / 41
        return 1e-3 + 0.5 * (1 + math.cos(math.pi * (it - 40) / (T - 40))) * 9e-3

    def before(step: int) -> float:
        opt.param_groups[0]["lr"] = lr_at(step - 1)
        return lr_at(step - 1) * 1.0

    return opt, before


def _cyclic(model, engine: bool = False):  # CyclicLR keeps its max_lr on the scheduler; initial_lr is base_lr
    opt = torch.optim.AdamW(decaykit.param_groups(model, 1.0), lr=1e-4)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=1e-4, max_lr=1e-2, step_size_up=50, cycle_momentum=False)
    if engine:  # the engine told the peak: the bound at step 1 counts 399 steps at 1e-2, so Σ r ≤ 4 says nothing
        opt = decaykit.WeightDecay(opt, max_lr=1e-2)
    lrs = [1e-4 + (1e-2 - 1e-4) * (1 - abs((s % 100) / 50 - 1)) for s in range(T)]  # the triangle, by hand
    return opt, (lambda step: (sched.step() if step > 1 else None, lrs[step - 1] * 1.0)[1])


def _engine_schedule(model):  # λ_t = s(t)·λ rising 1 → 10: the first step's λ is the smallest
    opt = decaykit.WeightDecay(torch.optim.AdamW(decaykit.param_groups(model, 0.06), lr=1e-2),
                               schedule=decaykit.schedules.linear(1.0, 10.0, steps=T))
    return opt, (lambda step: 1e-2 * 0.06 * (1 + 9 * (step - 1) / T))


@pytest.mark.parametrize("loop", [_by_hand_warmup, _cyclic, lambda m: _cyclic(m, engine=True), _engine_schedule],
                         ids=["lr-by-hand", "cyclic-lr", "engine-max-lr", "lambda-schedule"])
def test_a_run_with_enough_decay_is_not_told_it_has_too_little(loop):
    """Loops where the first step's LR or λ is far below the run's: the finding read τ there as "at the peak LR" and
    told the user to raise λ 2-50x, on runs whose decay sums to Σ r ≥ 1. Σ r is checked against r_t summed by hand."""
    torch.manual_seed(0)
    model = _scale_invariant()
    opt, rate_before_step = loop(model)
    mon = decaykit.Monitor(model, opt, every=50, total_steps=T)
    truth = math.fsum(_train_summing(model, opt, rate_before_step))
    mon.close()
    assert truth > 1.2
    assert _timescale(mon) == []
    assert mon.history[-1]["cumulative_decay"] == pytest.approx(truth, rel=1e-9)


def _train_summing(model, opt, rate_before_step):
    rates = []
    for step in range(1, T + 1):
        rates.append(rate_before_step(step))
        out = model(torch.randn(8, 16))
        (out * torch.randn_like(out)).sum().backward()
        opt.step()
        opt.zero_grad()
    return rates


@pytest.mark.parametrize("case", ["one-cycle", "engine-max-lr-and-schedule"])
def test_a_known_peak_lr_bounds_the_run_at_its_first_step(case):
    """Where the peak LR is known (OneCycleLR's max_lr, the engine's max_lr=), Σ r so far plus every other step at
    the peak, with the λ schedule's own multipliers, is a true bound: told at step 1 when below 1."""
    model = _scale_invariant()
    if case == "one-cycle":
        opt = torch.optim.AdamW(decaykit.param_groups(model, 0.05), lr=1e-2)
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=T)
        bound = 1e-2 / 25 * 0.05 + (T - 1) * 1e-2 * 0.05  # step 1 at max_lr/div_factor, the others at most max_lr
    else:
        opt = decaykit.WeightDecay(torch.optim.AdamW(decaykit.param_groups(model, 0.02), lr=1e-2), max_lr=1e-2,
                                   schedule=decaykit.schedules.linear(1.0, 3.0, steps=T))
        bound = math.fsum(1e-2 * 0.02 * (1 + 2 * t / T) for t in range(T))  # s(t) for the steps t = 0..T-1
    mon = decaykit.Monitor(model, opt, every=50, total_steps=T)
    _train(model, opt, 2, lambda: torch.randn(8, 16))
    (message,) = _timescale(mon)
    assert mon.findings[0].step == 1 and f"is at most {bound:.3g}, its {T - 1} steps not watched" in message
    assert f"by at most a factor {math.exp(-bound):.3g} over" in message
    mon.close()
    assert len(_timescale(mon)) == 1


@pytest.mark.parametrize("known", [False, True])
def test_a_resumed_run_counts_the_steps_before_the_monitor_only_at_a_known_peak(known):
    """Resumed at step 50 of 100, closed after 10: at an unknown peak nothing can be said of the steps not watched
    (silent); with the engine's max_lr they count at the peak, told at the first record (step 51): the 50 before and
    the 49 after it at η_max·λ, step 51 at η·λ."""
    model = _scale_invariant(4, 4)
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-3)
    if known:
        opt = decaykit.WeightDecay(opt, max_lr=2e-3)
    mon = decaykit.Monitor(model, opt, every=5, total_steps=100, start_step=50)
    _train(model, opt, 10, lambda: torch.randn(2, 4))
    mon.close()
    assert mon.step == 60
    if not known:
        assert mon.findings == []
        return
    bound = 99 * 2e-3 * 0.1 + 1e-3 * 0.1
    (message,) = _timescale(mon)
    assert mon.findings[0].step == 51 and f"is at most {bound:.3g}, its 99 steps not watched" in message


def test_a_warm_up_is_not_read_as_the_runs_timescale():
    """A LambdaLR warm-up from 0: its initial_lr is no known peak (a factor may exceed 1), so nothing is told
    before the run's Σ r is known, even where a record's τ is longer than the run."""
    model = _scale_invariant(4, 4)
    opt = torch.optim.AdamW(decaykit.param_groups(model, 1.0), lr=1e-2)   # τ = 100 steps at the peak
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, step / 50))  # from lr = 0
    mon = decaykit.Monitor(model, opt, every=10, total_steps=300)
    for _ in range(30):
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    # lr = 0 at the first step: no decay, no record; at step 10, τ = 1/(η_10·λ) is longer than the run
    assert mon.history[0]["step"] == 10 and mon.history[0]["timescale_steps"] == pytest.approx(1 / (0.01 * 9 / 50))
    assert mon.history[0]["timescale_steps"] > 300
    assert mon.findings == []


def test_a_tensor_far_from_its_equilibrium_after_3_tau_is_found_once():
    """Half the inputs are always 0, so half the weights get no gradient and decay away: ‖W‖ settles
    at √(η·C/2/(2λ)), 0.71x the prediction for all C coordinates."""
    model = _scale_invariant()
    lr, lam = 1e-2, 2.0
    opt = torch.optim.AdamW(decaykit.param_groups(model, lam), lr=lr, betas=(0.5, 0.99))
    mon = decaykit.Monitor(model, opt, every=10)
    half = torch.cat([torch.ones(8), torch.zeros(8)])
    _train(model, opt, 300, lambda: torch.randn(8, 16) * half)   # 6τ
    assert _codes(mon) == [("far-from-equilibrium", "0.weight")]
    found = mon.findings[0]
    assert found.step >= 3 / (lr * lam)
    late = [r["norm"] / r["predicted_norm"] for r in mon.history if r["step"] >= 200]
    assert sum(late) / len(late) == pytest.approx(math.sqrt(0.5), rel=0.1)


@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_a_tensor_following_its_moving_equilibrium_is_not_far_from_it(schedule):
    """The prediction √(η_t·C/(2λ)) follows η_t at once, ‖θ‖ only at the decay's rate η_t·λ: after a ×0.1 LR drop
    (MultiStepLR) at 6τ, or in the second half of a cosine, a tensor at its equilibrium was "3.17x its predicted
    equilibrium" because the 3τ were counted from the start of the run, not from the move."""
    torch.manual_seed(0)
    model = _scale_invariant()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1.0, betas=(0.5, 0.99))  # τ = 100 steps
    steps = 700 if schedule == "step" else 1000
    sched = (torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[600], gamma=0.1) if schedule == "step"
             else torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps))
    mon = decaykit.Monitor(model, opt, every=10, total_steps=steps)
    # the scheduler steps after each optimizer step: before the next one
    _train(model, opt, steps, lambda: torch.randn(8, 16), before_step=lambda step: step > 1 and sched.step())
    mon.close()
    late = [r for r in mon.history if r["step"] == steps]
    assert late and late[0]["cumulative_decay"] > 3 and late[0]["norm"] / late[0]["predicted_norm"] > 1.25
    assert mon.findings == []


def test_non_finite_values_are_found_once():
    model = _scale_invariant()
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-2)
    mon = decaykit.Monitor(model, opt, every=2)

    def poison(step: int) -> None:
        if step == 3:
            with torch.no_grad():
                model[0].weight[0, 0] = math.nan

    _train(model, opt, 8, lambda: torch.randn(8, 16), before_step=poison)
    assert _codes(mon) == [("non-finite", "0.weight")]
    assert mon.findings[0].step == 4


def test_a_run_at_lr_0_throughout_is_found_at_close(tmp_path):
    model = _scale_invariant(4, 4)
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=0.0)
    mon = decaykit.Monitor(model, opt, every=10, sink=tmp_path / "run.jsonl")
    _train(model, opt, 30, lambda: torch.randn(2, 4))
    assert mon.history == [] and mon.findings == []
    mon.close()
    assert _codes(mon) == [("lr-zero", "group 0")] and mon.findings[0].step == 30
    assert "lr = 0 at every recorded step (1..30, 4 recorded)" in mon.findings[0].message
    mon.close()  # twice: found once
    run = decaykit.monitor.read_run(tmp_path / "run.jsonl")  # no records, but the finding says why
    assert run.records == [] and [f["code"] for f in run.findings] == ["lr-zero"] and not run.ok


@pytest.mark.parametrize("factor,every,steps", [
    (lambda step: min(1.0, step / 5), 10, 20),  # warm-up from 0: lr = 0 at the first step, recorded
    # warm-up from 0 and back to 0 in a run shorter than ``every``: the only recorded step sees lr = 0, yet
    # the decay acted on every step between; "the decay never acted" would be false
    (lambda step: 0.0 if step in (0, 9) else 1.0, 50, 10),
])  # fmt: skip
def test_an_lr_that_rises_above_0_is_not_an_lr_0_run(factor, every, steps):
    model = _scale_invariant(4, 4)
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    mon = decaykit.Monitor(model, opt, every=every)
    for _ in range(steps):
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    mon.close()
    assert "lr-zero" not in [code for code, _ in _codes(mon)]


def test_a_replaced_optimizer_is_told_once_and_the_finding_reaches_the_sink(tmp_path):
    """The loop builds a new optimizer mid-run (after unfreezing, a new schedule): the records stop, and the
    monitor says so instead of going silent."""
    model = _scale_invariant(4, 4)
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-2)
    mon = decaykit.Monitor(model, opt, every=2, sink=tmp_path / "run.jsonl")
    _train(model, opt, 4, lambda: torch.randn(2, 4))
    assert mon.findings == []
    replaced = torch.optim.SGD(decaykit.param_groups(model, 0.1), lr=1e-2)
    _train(model, replaced, 6, lambda: torch.randn(2, 4))
    assert _codes(mon) == [("other-optimizer", "SGD")]
    finding = mon.findings[0]
    assert finding.step == 4 and "start_step=4" in finding.message and "(0.weight)" in finding.message
    assert max(r["step"] for r in mon.history) == 4  # what the finding warns of: nothing after step 4
    mon.close()
    _train(model, torch.optim.Adam(model.parameters()), 1, lambda: torch.randn(2, 4))  # closed: hooks gone
    assert len(mon.findings) == 1
    run = decaykit.monitor.read_run(tmp_path / "run.jsonl")
    assert [f["code"] for f in run.findings] == ["other-optimizer"] and not run.ok


def test_optimizers_that_step_other_tensors_or_drive_the_watched_one_are_not_another_optimizer():
    """Two optimizers on disjoint parts of one model (Muon + AdamW), an engine around the watched optimizer,
    or the engine watched while its inner optimizer steps: nothing to tell."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    first = torch.optim.AdamW([model[0].weight], lr=1e-2, weight_decay=0.1)
    second = torch.optim.AdamW([p for p in model.parameters() if p is not model[0].weight], lr=1e-2)
    engine = decaykit.WeightDecay(first, mode="lr_coupled")
    watched_inner = decaykit.Monitor(model, first, every=1)
    watched_engine = decaykit.Monitor(model, engine, every=1)
    for _ in range(3):
        model(torch.randn(2, 4)).sum().backward()
        engine.step()
        second.step()
        engine.zero_grad()
        second.zero_grad()
    assert watched_inner.findings == [] and watched_engine.findings == []
    assert len(watched_inner.history) == len(watched_engine.history) == 3
    watched_inner.close()
    watched_engine.close()


class _SAM(torch.optim.Optimizer):
    """SAM as pytorch_optimizer and davda54/sam write it: it shares its base optimizer's groups, step(closure)
    climbs, then steps the base optimizer; first_step/second_step let the loop do the two passes itself."""

    def __init__(self, params, base_optimizer, rho: float = 0.05, **kwargs):
        super().__init__(params, {"rho": rho, **kwargs})
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.state[p]["e"] = e = group["rho"] * p.grad / (p.grad.norm() + 1e-12)
                    p.add_(e)

    @torch.no_grad()
    def second_step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if "e" in self.state[p]:
                    p.sub_(self.state[p].pop("e"))
        self.base_optimizer.step()

    def step(self, closure=None):
        self.first_step()
        with torch.enable_grad():
            closure()
        self.second_step()


@pytest.mark.parametrize("loop", ["step", "two_passes"])
def test_a_wrapper_sharing_its_optimizers_groups_is_watched_through_its_own_step(loop):
    """SAM stepping its base optimizer inside SAM.step() is one step of the watched SAM: it was "another optimizer
    ... each update happens twice". Stepped by first_step/second_step, SAM.step() never runs: that is told."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    sam = _SAM(decaykit.param_groups(model, 0.1), torch.optim.AdamW, lr=1e-2)
    monitor = decaykit.Monitor(model, sam, every=1)
    x = torch.randn(2, 4)
    for _ in range(2):
        model(x).pow(2).sum().backward()
        if loop == "step":
            sam.step(lambda: model(x).pow(2).sum().backward())
        else:
            sam.first_step()
            sam.zero_grad()
            model(x).pow(2).sum().backward()
            sam.second_step()
        sam.zero_grad()
    monitor.close()
    if loop == "step":
        assert monitor.findings == [] and monitor.step == 2 and len(monitor.history) == 4  # 2 decayed weights
    else:
        assert monitor.history == [] and [f.code for f in monitor.findings] == ["other-optimizer"]
        assert "AdamW inside the watched _SAM" in monitor.findings[0].message
        assert "outside _SAM.step()" in monitor.findings[0].message


def test_a_head_added_after_the_monitor_was_built_is_named_and_judged():
    """A head added to the model and the optimizer (add_param_group) after the monitor was built: its records were
    named param_groups[1][i] and its decayed LayerNorm and bias went untold."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    mon = decaykit.Monitor(model, opt, every=1)
    _train(model, opt, 2, lambda: torch.randn(2, 4))
    head = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    model.add_module("head", head)
    opt.add_param_group({"params": list(head.parameters()), "weight_decay": 0.1})
    _train(model, opt, 2, lambda: torch.randn(2, 4))
    mon.close()
    assert {r["name"] for r in mon.history if r["group"] == 1} == {"head.0.weight", "head.0.bias", "head.1.weight",
                                                                     "head.1.bias"}
    assert sorted(_codes(mon)) == [("decayed-bias", "head.0.bias"), ("decayed-norm", "head.1.bias"),
                                   ("decayed-norm", "head.1.weight")]


def test_a_frozen_tensor_that_the_decay_still_moves_is_found():
    """requires_grad=False with a zero gradient tensor left in a decaying group: AdamW shrinks it every step."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 2, bias=False))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model(torch.randn(2, 4)).sum().backward()
    model[0].weight.requires_grad_(False)  # frozen after a backward: its .grad stays a tensor
    model[0].weight.grad.zero_()
    mon = decaykit.Monitor(model, opt, every=1)
    before = model[0].weight.detach().clone()
    for _ in range(3):
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
    assert not torch.equal(model[0].weight, before)  # the frozen weights did shrink
    assert _codes(mon) == [("decayed-frozen", "0.weight")] and "zero tensor, not None" in mon.findings[0].message
    mon.close()
    model[0].weight.grad = None  # the fix the finding gives: torch then skips the tensor
    with decaykit.Monitor(model, opt, every=1) as fixed:
        for _ in range(3):
            model(torch.randn(2, 4)).sum().backward()
            opt.step()
            opt.zero_grad()
    assert fixed.findings == []


def test_a_tensor_unfrozen_after_the_monitor_was_built_is_judged_as_it_is_now():
    """A LayerNorm frozen when the monitor is built, unfrozen later and added to a decaying group: decayed-norm,
    as a monitor built after the unfreeze says (the decisions were taken once, "frozen", and never looked at again)."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    model[1].requires_grad_(False)
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-3)
    mon = decaykit.Monitor(model, opt, every=1)
    _train(model, opt, 3, lambda: torch.randn(4, 8))
    assert mon.findings == []
    model[1].requires_grad_(True)
    opt.add_param_group({"params": list(model[1].parameters()), "param_names": ["1.weight", "1.bias"],
                         "weight_decay": 0.1})
    _train(model, opt, 3, lambda: torch.randn(4, 8))
    assert [(f.code, f.name, f.step) for f in mon.findings] == [("decayed-norm", "1.weight", 4),
                                                                 ("decayed-norm", "1.bias", 4)]
    mon.close()


def test_a_monitor_dropped_without_close_is_freed_and_its_global_hook_does_nothing():
    import gc
    import weakref

    from torch.optim import optimizer as torch_optimizer

    model = _scale_invariant(4, 4)
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-2)
    hooks = len(torch_optimizer._global_optimizer_post_hooks)
    mon = decaykit.Monitor(model, opt, every=1)
    assert len(torch_optimizer._global_optimizer_post_hooks) == hooks + 1
    dropped = weakref.ref(mon)
    del mon, opt
    gc.collect()
    assert dropped() is None
    _train(model, torch.optim.SGD(model.parameters(), lr=0.1), 1, lambda: torch.randn(2, 4))  # the hook: a no-op
    next(reversed(torch_optimizer._global_optimizer_post_hooks.values()))(None, (), {})


@pytest.mark.parametrize("make", [lambda ps: torch.optim.RMSprop(ps, lr=1e-2), lambda ps: torch.optim.Adagrad(ps, lr=1e-2),
                                  lambda ps: torch.optim.Adamax(ps, lr=1e-2)])
def test_a_decay_whose_rate_is_not_known_has_no_sum_and_is_not_called_healthy(make, tmp_path):
    """RMSprop's coupled L2 goes through a denominator decaykit has no formula for: the decay acts (the weights end
    smaller than without it), but its Σ r is unknown, not 0, and the report says it was not judged."""
    def trained(lam: float):
        torch.manual_seed(0)
        model = _scale_invariant(8, 8)
        opt = make(decaykit.param_groups(model, lam))
        mon = decaykit.Monitor(model, opt, every=10, total_steps=40, sink=tmp_path / f"run{lam}.jsonl")
        _train(model, opt, 40, lambda: torch.randn(8, 8))
        mon.close()
        return model[0].weight.norm().item(), mon

    decayed, mon = trained(0.1)
    assert decayed < trained(0.0)[0]  # the decay acted
    assert mon.history and all(r["cumulative_decay"] is None and r["timescale_steps"] is None for r in mon.history)
    assert "timescale-exceeds-run" not in {f.code for f in mon.findings}
    text = str(decaykit.monitor.read_run(tmp_path / "run0.1.jsonl"))
    assert "looks healthy where its rate is known; param groups [0] decay at a rate per step decaykit cannot read" in text


def test_a_sparse_gradient_is_measured_by_the_rows_it_holds():
    """nn.Embedding(sparse=True) under the engine's SGD: the monitor's norm of the gradient reads its values."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 8, sparse=True), torch.nn.Flatten(), torch.nn.Linear(40, 2))
    opt = decaykit.WeightDecay(torch.optim.SGD(decaykit.param_groups(model, 1e-2), lr=0.1), mode="lr_coupled")
    mon = decaykit.Monitor(model, opt, every=1)
    _train(model, opt, 3, lambda: torch.randint(0, 50, (4, 5)))
    rows = [r for r in mon.history if r["name"] == "0.weight"]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(math.isfinite(r["norm"]) for r in rows)


def test_a_zero_initialised_start_is_not_decay_dominating_but_a_tensor_that_never_gets_gradients_is():
    """LoRA: B = 0, so A's first gradient is exactly zero and the decay is all its first step does; from the
    second step it trains. A tensor whose gradient stays zero is still told, with that reason."""
    torch.manual_seed(0)
    a, b = torch.nn.Linear(16, 4, bias=False), torch.nn.Linear(4, 16, bias=False)
    torch.nn.init.zeros_(b.weight)
    model = torch.nn.Sequential(a, b, torch.nn.LayerNorm(16, elementwise_affine=False))
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-2)
    mon = decaykit.Monitor(model, opt, every=2)
    _train(model, opt, 10, lambda: torch.randn(8, 16))
    first = next(r for r in mon.history if r["name"] == "0.weight")
    assert first["step"] == 1 and first["decay_to_update"] > 1  # the decay alone moved A at step 1
    b_first = next(r for r in mon.history if r["name"] == "1.weight")
    assert b_first["angular_update"] is None and b_first["equilibrium"] is None  # from 0: no direction to turn from
    assert "decay-dominates" not in {f.code for f in mon.findings}
    dead = _scale_invariant()
    opt = torch.optim.AdamW(decaykit.param_groups(dead, 0.1), lr=1e-2)
    mon = decaykit.Monitor(dead, opt, every=2)
    _train(dead, opt, 6, lambda: torch.randn(8, 16), before_step=lambda s: dead[0].weight.grad.zero_())
    assert [(f.code, f.step) for f in mon.findings] == [("decay-dominates", 2)]
    assert "gradient was exactly zero at its last 2 recorded steps" in mon.findings[0].message


def test_a_run_that_went_non_finite_is_not_told_to_raise_its_decay():
    model = _scale_invariant()
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.01), lr=1e-3)
    mon = decaykit.Monitor(model, opt, every=2, total_steps=8)

    def poison(step: int) -> None:
        if step == 3:
            with torch.no_grad():
                model[0].weight[0, 0] = math.nan

    _train(model, opt, 8, lambda: torch.randn(8, 16), before_step=poison)
    mon.close()
    assert _codes(mon) == [("non-finite", "0.weight")]  # no timescale-exceeds-run advice for a diverged run


def test_a_bf16_decay_that_rounds_back_to_theta_is_told_and_no_run_advice_counts_it():
    """bf16 AdamW at lr 1e-3, λ 0.05: θ·(1 − 5e-5) is θ in bfloat16, so the run equals λ = 0 bit for bit; the
    monitor says so, and does not advise raising λ from a Σ r that never acted."""
    def run(lam: float):
        torch.manual_seed(0)
        model = _scale_invariant().to(torch.bfloat16)
        opt = torch.optim.AdamW(decaykit.param_groups(model, lam), lr=1e-3)
        mon = decaykit.Monitor(model, opt, every=20, total_steps=40)
        _train(model, opt, 40, lambda: torch.randn(8, 16, dtype=torch.bfloat16))
        mon.close()
        return model[0].weight.detach(), mon

    decayed, mon = run(0.05)
    assert torch.equal(decayed, run(0.0)[0])  # the decay never acted
    assert _codes(mon) == [("decay-rounded-away", "0.weight")]
    assert "rounds back to θ in bfloat16 for every value" in mon.findings[0].message
    float32 = _scale_invariant()
    opt = torch.optim.AdamW(decaykit.param_groups(float32, 0.05), lr=1e-3)
    with decaykit.Monitor(float32, opt, every=20, total_steps=40) as clean:
        _train(float32, opt, 40, lambda: torch.randn(8, 16))
    assert [f.code for f in clean.findings] == ["timescale-exceeds-run"]  # in float32 the same run is judged


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.RAdam])
def test_coupled_l2_through_an_adaptive_step_is_measured_as_the_step_applies_it(cls):
    """Adam's L2 share of the step is ‖λθ/d‖/‖m̂_g/d‖, with m̂_g the momentum of the loss gradients alone (kept
    here beside the optimizer); RAdam rectifies its adaptive step by r_t and takes none at all while ρ_t ≤ 5
    (θ −= η·m̂): its share is then ‖λθ‖/‖m̂_g‖. The monitor's decay_to_update is checked against that."""
    beta1, beta2, lam = 0.9, 0.999, 0.1
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32, bias=False), torch.nn.LayerNorm(32, elementwise_affine=False),
                                torch.nn.Linear(32, 4, bias=False))
    opt = cls(model.parameters(), lr=1e-3, weight_decay=lam)
    mon = decaykit.Monitor(model, opt, every=1)
    w, loss_momentum = model[0].weight, torch.zeros(32, 16)
    for step in range(1, 101):
        x, y = torch.randn(8, 16), torch.randn(8, 4)
        (model(x) - y).square().mean().backward()
        loss_momentum.mul_(beta1).add_(w.grad, alpha=1 - beta1)
        theta = w.detach().clone()
        opt.step()
        opt.zero_grad()
        if step in (2, 6, 100):
            m_hat = loss_momentum / (1 - beta1**step)
            denom = (opt.state[w]["exp_avg_sq"] / (1 - beta2**step)).sqrt() + 1e-8
            plain = cls is torch.optim.RAdam and step < 6  # ρ_t ≤ 5 at β2 = 0.999 for the first 5 steps
            truth = (lam * theta).norm() / m_hat.norm() if plain else (lam * theta / denom).norm() / (m_hat / denom).norm()
            record = next(r for r in mon.history if r["name"] == "0.weight" and r["step"] == step)
            assert record["decay_to_update"] == pytest.approx(float(truth), rel=0.02), step


@pytest.mark.parametrize("make", [lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.5, 0.99)),
                                  lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)])
def test_cautious_decay_is_rated_by_the_share_of_theta_it_shrinks(make):
    """Cautious decay acts where the update and θ agree in sign, about half of θ² here: its rate is r times that
    share. Checked step by step against a twin with λ = 0 (same state, same gradient): their difference is the
    decay's step d, and Σ d·θ / Σ θ² is the rate that acted."""
    torch.manual_seed(0)
    model = _scale_invariant()
    engine = decaykit.WeightDecay(make(decaykit.param_groups(model, 0.5)), mode="cautious")
    mon = decaykit.Monitor(model, engine, every=1)
    w = model[0].weight
    for step in range(1, 6):
        out = model(torch.randn(8, 16))
        (out * torch.randn_like(out)).sum().backward()
        twin_model, twin = copy.deepcopy((model, engine))
        for mine, theirs in zip(twin_model.parameters(), model.parameters()):
            mine.grad = theirs.grad.clone()  # deepcopy leaves .grad out
        for g in twin.param_groups:
            g["weight_decay"] = 0.0
        before = w.detach().clone()
        engine.step()
        twin.step()
        engine.zero_grad()
        d = twin_model[0].weight.detach() - w.detach()
        acted = float((d * before).sum() / before.square().sum())
        record = next(r for r in mon.history if r["name"] == "0.weight" and r["step"] == step)
        assert 0 < acted < 0.9 * engine.param_groups[0]["lr"] * 0.5  # the mask holds back a real share
        assert record["decay_rate"] == pytest.approx(acted, rel=1e-4)


def test_a_step_with_a_closure_counts_the_gradients_the_closure_makes():
    """torch and Lightning's automatic optimization run the closure (zero_grad, forward, backward) inside step(),
    after the monitor's pre-hook: which tensors had a gradient is read after the step. A branch used in steps 1-5
    only has had 5 steps of decay."""
    torch.manual_seed(0)
    trunk, aux = torch.nn.Linear(8, 8, bias=False), torch.nn.Linear(8, 8, bias=False)
    model = torch.nn.ModuleDict({"trunk": trunk, "aux": aux})
    lr, lam = 1e-2, 0.1
    opt = torch.optim.AdamW(decaykit.param_groups(model, lam, example_inputs=False), lr=lr)
    mon = decaykit.Monitor(model, opt, every=1)
    for step in range(1, 21):
        def closure(step=step):
            opt.zero_grad(set_to_none=True)
            x = trunk(torch.randn(4, 8))
            loss = (aux(x) if step <= 5 else x).square().mean()
            loss.backward()
            return loss
        opt.step(closure)
    last = {r["name"]: r["cumulative_decay"] for r in mon.history if r["step"] == 20}
    assert last["trunk.weight"] == pytest.approx(20 * lr * lam)
    assert next(r["cumulative_decay"] for r in mon.history if r["step"] == 1) == pytest.approx(lr * lam)
    assert [r["cumulative_decay"] for r in mon.history if r["name"] == "aux.weight"][-1] == pytest.approx(5 * lr * lam)


def test_tensors_that_get_gradients_but_no_optimizer_holds_are_told_and_a_gan_is_not():
    """An optimizer built from the trainable tensors, then the body unfrozen: it gets gradients and never moves.
    In a GAN the discriminator gets gradients in the generator's step too, but its own optimizer steps it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    model[0].requires_grad_(False)
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.05), lr=1e-2)
    mon = decaykit.Monitor(model, opt, every=2)
    _train(model, opt, 2, lambda: torch.randn(4, 8))
    model[0].requires_grad_(True)
    before = model[0].weight.detach().clone()
    _train(model, opt, 4, lambda: torch.randn(4, 8))
    mon.close()
    assert torch.equal(model[0].weight.detach(), before)  # never trained, as told at close:
    assert [(f.code, f.name, f.step) for f in mon.findings] == [("not-in-optimizer", "0.weight, 0.bias", 6)]

    # a second optimizer that steps its tensors every 4th step, and fp32 master weights copied back into a model
    # whose tensors get the gradients: both train them, nothing to tell
    body, head = torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)
    slow = torch.optim.SGD(body.parameters(), lr=0.1)
    fast = torch.optim.AdamW(decaykit.param_groups(head, 0.05), lr=1e-2)
    two = decaykit.Monitor(torch.nn.Sequential(body, head), fast, every=1)
    for step in range(1, 9):
        head(body(torch.randn(4, 8))).square().mean().backward()
        fast.step()
        fast.zero_grad()
        if step % 4 == 0:
            slow.step()
            slow.zero_grad()
    two.close()
    assert "not-in-optimizer" not in {f.code for f in two.findings}
    model = torch.nn.Linear(8, 8)
    master = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    opt = torch.optim.AdamW(master, lr=1e-2, weight_decay=0.05)
    with decaykit.Monitor(model, opt, every=1) as copied:
        for _ in range(4):
            model(torch.randn(4, 8)).square().mean().backward()
            for m, p in zip(master, model.parameters()):
                m.grad = p.grad.clone()
            opt.step()
            with torch.no_grad():
                for m, p in zip(master, model.parameters()):
                    p.copy_(m)
            model.zero_grad()
    assert "not-in-optimizer" not in {f.code for f in copied.findings}

    gen, disc = torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)
    opt_g = torch.optim.AdamW(decaykit.param_groups(gen, 0.05), lr=1e-3)
    opt_d = torch.optim.AdamW(decaykit.param_groups(disc, 0.05), lr=1e-3)
    gan = torch.nn.ModuleDict({"gen": gen, "disc": disc})
    watch = decaykit.Monitor(gan, opt_g, every=1)
    for _ in range(4):
        disc(gen(torch.randn(4, 4))).mean().backward()  # the generator's loss reaches the discriminator too
        opt_g.step()
        opt_g.zero_grad()
        disc(gen(torch.randn(4, 4)).detach()).mean().neg().backward()
        opt_d.step()
        opt_d.zero_grad()
    assert "not-in-optimizer" not in {f.code for f in watch.findings}


def test_a_converted_lambda_is_named_as_the_engines_and_the_factor_holds_for_the_one_it_came_from():
    """The HF Trainer converts TrainingArguments.weight_decay into an lr_independent λ = λ·η_max: raising either by
    the factor the finding gives is the same fix, and it says so rather than name 0.001 as the user's setting."""
    model = _scale_invariant()
    engine = decaykit.WeightDecay(torch.optim.AdamW(decaykit.param_groups(model, 1e-3), lr=1e-2),
                                  mode="lr_independent", max_lr=1e-2)
    mon = decaykit.Monitor(model, engine, every=10, total_steps=40)
    _train(model, engine, 40, lambda: torch.randn(8, 16))
    mon.close()
    (finding,) = [f for f in mon.findings if f.code == "timescale-exceeds-run"]
    assert ("raise weight_decay (0.001, the group's λ in mode 'lr_independent'; a λ converted into it, such as "
            "TrainingArguments.weight_decay, is raised by the same factor) at least 25x") in finding.message


def test_the_monitor_judges_rounding_by_where_the_decay_is_applied_not_by_the_fused_flag():
    """The engine's own pass around a fused SGD rounds the decay alone (told); fused AdamW rounds it with the update,
    where how much acts depends on the updates (not told)."""
    def findings(make, engine: bool):
        torch.manual_seed(0)
        model = _scale_invariant().to(torch.bfloat16)
        opt = make(decaykit.param_groups(model, 0.05))
        opt = decaykit.WeightDecay(opt) if engine else opt
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mon = decaykit.Monitor(model, opt, every=5)
        _train(model, opt, 5, lambda: torch.randn(8, 16, dtype=torch.bfloat16))
        return [f.code for f in mon.findings]

    assert findings(lambda ps: torch.optim.SGD(ps, lr=1e-3, fused=True), engine=True) == ["decay-rounded-away"]
    assert findings(lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True), engine=False) == []
