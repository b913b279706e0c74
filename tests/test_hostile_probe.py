"""Issue 10, the probe: no overshoot, frozen tensor, wrong hint or unbounded run passes as fine."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from decaykit import DecayError, DecayWarning, audit, param_groups
from decaykit.models import TinyGPT
from decaykit.probe import MAX_STATE_STEPS, probe, warm_up

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


@SETTINGS
@given(cls=st.sampled_from([torch.optim.AdamW, torch.optim.SGD]), lr=st.floats(1e-3, 10.0),
       rate=st.floats(1e-4, 1e6))
def test_a_factor_at_or_below_zero_never_agrees(cls: type, lr: float, rate: float) -> None:
    # plain SGD and AdamW both multiply θ by 1 − lr·λ with zero gradients: it flips sign once lr·λ >= 1
    report = probe(cls(_model().parameters(), lr=lr, weight_decay=rate / lr))
    overshoots = 1 - rate <= 1e-6  # at exactly 1, float32 rounding decides the sign of a ~0 factor
    if overshoots:
        assert not report.ok
        assert all("the decay overshoots" in e.note and not e.agrees for e in report.entries)
    elif rate < 1 - 1e-3:
        assert report.ok, report.disagreements[:1]


def test_a_huge_lambda_is_measured_or_refused_by_name() -> None:
    model = _model()
    report = probe(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e30))
    assert not report.ok and all("overshoots" in e.note for e in report.entries)
    assert all(e.measured is not None and e.measured < -1e27 for e in report.entries)  # measured, not nan
    adam = probe(torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e30))  # (λθ)² overflows in v
    assert not adam.ok and all("second moment overflows" in e.note for e in adam.entries)
    for cls in (torch.optim.AdamW, torch.optim.SGD, torch.optim.Adam):
        with pytest.raises(DecayError, match=r"param_groups\[0\]\['weight_decay'\] = 1e\+300 is beyond the largest "
                                             r"float32 .*lower weight_decay"):
            probe(cls(model.parameters(), lr=1e-2, weight_decay=1e300))


def test_decayed_frozen_tensors_disagree_as_audit_says() -> None:
    model = TinyGPT()
    for p in model.wte.parameters():
        p.requires_grad_(False)  # frozen but still handed to the optimizer, with no .grad yet
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    report = probe(optimizer, model=model, frozen=["wte.*"])
    bad = {e.name for e in report.disagreements if e.frozen}
    assert bad == {"wte.weight"} and not report.ok
    note = next(e.note for e in report.entries if e.name == "wte.weight")
    assert "set their weight_decay to 0" in note and "zero_grad(set_to_none=False)" in note
    finding = next(f for f in audit(model, optimizer).findings if f.code == "frozen-in-optimizer")
    assert finding.severity == "error" and set(finding.params) == bad
    # the same tensor left out of the optimizer (as param_groups does) is fine, and the glob matched it
    kept = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert probe(kept, model=model, frozen=["wte.*"]).ok


def test_a_frozen_glob_that_matches_nothing_warns() -> None:
    model = _model()
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
    with pytest.warns(DecayWarning, match=r"frozen=\['text_encoder\.\*'\] matched no tensor"):
        probe(optimizer, model=model, frozen=["text_encoder.*", "0.*"])


def test_the_hint_names_the_real_cause_of_decayed_norms() -> None:
    model = _model()
    one = probe(torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1), model=model, policy="decaykit")
    notes = [e.note for e in one.disagreements]
    assert notes and all("single param group" in n and "overwritten" not in n for n in notes)
    mixed = [{"params": [model[0].weight, model[0].bias], "weight_decay": 0.1},
             {"params": [*model[1].parameters(), *model[2].parameters()], "weight_decay": 0.0}]
    two = probe(torch.optim.AdamW(mixed, lr=1e-3), model=model, policy="decaykit")
    bias = next(e for e in two.disagreements if e.name == "0.bias")
    assert "group 0 holds tensors the policy decays and tensors it excludes" in bias.note
    overwritten = param_groups(model, 0.1)
    for g in overwritten:
        g["weight_decay"] = 0.1
    three = probe(torch.optim.AdamW(overwritten, lr=1e-3), model=model, policy="decaykit")
    assert three.disagreements and all("overwritten?" in e.note for e in three.disagreements)


@pytest.mark.parametrize("cls", [torch.optim.AdamW, torch.optim.SGD])
def test_lr_zero_says_there_is_no_step_to_measure(cls: type) -> None:
    model = _model()
    report = probe(cls(param_groups(model, 0.1), lr=0.0), model=model, policy="decaykit")
    assert report.ok
    assert any("lr = 0: the next step moves nothing" in n for n in report.notes)
    assert not any("resolution" in e.note for e in report.entries)


@pytest.mark.parametrize("scheduler", ["warmup", "onecycle"])
def test_a_warm_up_at_lr_zero_is_measured_at_its_schedulers_base_lr(scheduler: str) -> None:
    """Right after building AdamW and an HF-style warm-up from 0 (where scripts check their setup), the probe said
    ok: nothing moves at lr 0. The groups hold the scheduler's base LR: measured there, the decayed LayerNorm shows."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    if scheduler == "warmup":
        torch.optim.lr_scheduler.LambdaLR(opt, lambda step: step / 10)
    else:  # starts at max_lr / div_factor: lr 0 only with an infinite div_factor, so written by hand here
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=10)
        opt.param_groups[0]["lr"] = 0.0
    assert opt.param_groups[0]["lr"] == 0.0
    report = probe(opt, model=model, policy="decaykit")
    assert not report.ok and {e.name for e in report.disagreements} >= {"1.weight", "1.bias"}
    assert next(e for e in report.entries if e.name == "0.weight").measured == pytest.approx(1 - 1e-4, abs=1e-6)
    assert any("have lr = 0 now (a warm-up): measured at their scheduler's base LR" in n for n in report.notes)
    assert opt.param_groups[0]["lr"] == 0.0  # the user's optimizer is left as it was


def test_an_optimizer_whose_state_cannot_be_copied_is_refused_in_one_line() -> None:
    """torchao's low-bit states (tensor subclasses without clone) and a process group held by the optimizer cannot
    be copied for a twin: that was a bare NotImplementedError / TypeError from deep inside the copy."""
    import threading

    class Locked(torch.optim.AdamW):
        def __init__(self, params: object, **kwargs: float) -> None:
            super().__init__(params, **kwargs)
            self.lock = threading.Lock()  # as a process group: no copy of it exists

    model = _model()
    opt = Locked(model.parameters(), lr=1e-3, weight_decay=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(DecayError, match=r"could not copy Locked's state .*TypeError.*cannot be probed"):
        probe(opt, model=model)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_state_steps_are_bounded() -> None:
    p = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([p], lr=1e-3)
    with pytest.raises(DecayError, match=rf"state_steps must be <= {MAX_STATE_STEPS} .*got 100000000"):
        warm_up(optimizer, 100_000_000)
    assert not optimizer.state  # refused before any step
    warm_up(optimizer, 3)
    assert int(optimizer.state[p]["step"]) == 3 and not math.isnan(float(p.detach().sum()))
    with pytest.raises(DecayError, match="state_steps must be an integer >= 0"):
        warm_up(optimizer, -1)


def test_lazy_parameters_are_refused_before_anything_is_measured() -> None:
    model = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), weight_decay=0.1)
    with pytest.raises(DecayError, match=r"param groups \[0\] hold parameters of lazy modules.*run one, model\(x\)"):
        probe(opt, model=model)


def test_momentum_of_1_or_more_is_noted_not_given_a_negative_total() -> None:
    model = nn.Linear(3, 2)
    report = probe(torch.optim.SGD(model.parameters(), lr=0.1, momentum=1.5, weight_decay=0.1), model=model)
    assert any("momentum >= 1 (1.5)" in n for n in report.notes)
    assert not any("1 − momentum" in n for n in report.notes)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_weight_is_not_blamed_on_a_hidden_decay(bad: float) -> None:
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight[0, 0] = bad
    report = probe(torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1), model=model)
    w = report.entries[0]
    assert not w.agrees and w.note == "non-finite values (inf/nan) in the parameter or its step: nothing can be measured"
    assert w.other_decay is None and "ASGD" not in str(report)


def test_tensor_in_two_groups_is_one_entry_that_names_both() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
    opt.param_groups[1]["params"].append(model[0].weight)  # by hand: torch's add_param_group refuses this
    report = probe(opt, model=model)
    assert [e.name for e in report.entries].count("0.weight") == 1 and len(report.entries) == 4
    assert [e.name for e in report.disagreements] == ["0.weight"]
    assert report.disagreements[0].note.startswith("in param groups 0 and 1: torch steps it once per listing")
    opt.param_groups[1]["params"].pop()
    opt.param_groups[0]["params"].append(model[0].weight)
    assert probe(opt, model=model).disagreements[0].note.startswith("listed 2 times in param group 0")
