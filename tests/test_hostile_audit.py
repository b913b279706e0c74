"""Issue 10, the audit: no "no problems found" over a broken decay, no certainty it does not have.

- a negative, NaN or inf weight decay in a group (live or saved) is an error finding naming the group;
- a state_dict without param_names is mapped by position, and the report says so in its first line;
  findings that depend on that order are warnings unless the order cannot matter; a saved moment
  that contradicts the order is an ``unmapped`` error instead of false findings;
- ``measure=True`` never prints an all-clear line beside an error finding;
- bad arguments are DecayErrors.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decaykit
from decaykit import DecayError
from decaykit.models import TinyGPT
from decaykit.probe.report import ProbeReport


def codes(report) -> dict[str, str]:
    return {f.code: f.severity for f in report.findings}


def saved(model, lam: float = 0.1, *, names: bool = True, steps: int = 0) -> dict:
    opt = torch.optim.AdamW(decaykit.param_groups(model, lam), lr=1e-3)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
    state = opt.state_dict()
    if not names:
        for g in state["param_groups"]:
            del g["param_names"]
    return state


@settings(max_examples=30, deadline=None)
@given(bad=st.one_of(st.floats(max_value=-1e-12, allow_infinity=True), st.just(math.nan), st.just(math.inf)),
       group=st.integers(0, 1), live=st.booleans())
def test_a_weight_decay_that_is_no_decay_is_an_error_naming_the_group(bad, group, live):
    model = TinyGPT(depth=1)
    if live:
        opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-3)
        opt.param_groups[group]["weight_decay"] = bad  # torch refuses it at construction, not afterwards
        target = opt
    else:
        target = saved(model)
        target["param_groups"][group]["weight_decay"] = bad
    report = decaykit.audit(model, target)
    assert not report.ok and codes(report)["bad-weight-decay"] == "error"
    finding = next(f for f in report.findings if f.code == "bad-weight-decay")
    assert f"param_groups[{group}]" in finding.message and repr(float(bad)) in finding.message
    assert "no problems found" not in str(report)


def test_a_weight_decay_tensor_with_a_negative_member_is_an_error():
    model = TinyGPT(depth=1)
    state = saved(model)
    state["param_groups"][0]["weight_decay"] = torch.tensor([0.1, -0.2])
    assert codes(decaykit.audit(model, state, weight_decay=0.1))["bad-weight-decay"] == "error"


def test_without_param_names_the_first_line_says_by_position_and_order_dependent_findings_are_not_errors():
    model = TinyGPT(depth=1)
    named = decaykit.audit(model, saved(model))
    assert named.ok and named.mapping == "by name" and "BY POSITION" not in str(named)
    unnamed = decaykit.audit(model, saved(model, names=False))  # groups in decaykit's order, not parameters()'
    head = str(unnamed).splitlines()[0]
    assert unnamed.mapping == "by position" and "BY POSITION" in head and "param_names" in head
    assert unnamed.ok, str(unnamed)  # the false decayed-norm errors are warnings with the caveat
    moved = [f for f in unnamed.findings if f.code.startswith("decayed-")]
    assert moved and all(f.severity != "error" and "by position" in f.message for f in moved)
    assert unnamed.to_dict()["mapping"] == "by position"


def test_a_saved_moment_that_contradicts_the_positions_is_one_unmapped_error():
    model = TinyGPT(depth=1)
    report = decaykit.audit(model, saved(model, names=False, steps=1))
    assert codes(report) == {"unmapped": "error"}
    message = report.findings[0].message
    assert "'exp_avg' of shape" in message and "model.parameters()[" in message


def test_measure_never_prints_an_all_clear_beside_an_error():
    model = TinyGPT(depth=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)  # one group: norms decayed
    report = decaykit.audit(model, opt, measure=True)
    assert not report.ok and "measured-decay-on-excluded" in codes(report)
    text = str(report.probe)
    assert "the decay applied is the decay configured" not in text
    assert "the configuration itself has errors (" in text and "measured-decay-on-excluded" in text
    assert isinstance(report.probe, ProbeReport) and report.probe.ok  # the probe's own verdict
    clean = decaykit.audit(model, torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-3), measure=True)
    assert clean.ok and "0 disagreement(s)" in str(clean.probe) and "configuration itself" not in str(clean.probe)


@pytest.mark.parametrize("kwargs, message", [
    ({"weight_decay": -1}, "weight_decay must be a finite number >= 0, got -1"),
    ({"weight_decay": math.nan}, "weight_decay must be a finite number >= 0, got nan"),
    ({"weight_decay": "0.1"}, "weight_decay must be a finite number >= 0, got '0.1'"),
    ({"measure": "yes"}, "measure must be True or False"),
    ({"exlude": ["bias"]}, r"audit\(\) got unknown option\(s\) 'exlude'"),
])
def test_bad_arguments_are_decay_errors(kwargs, message):
    model = TinyGPT(depth=1)
    with pytest.raises(DecayError, match=message):
        decaykit.audit(model, torch.optim.AdamW(model.parameters(), lr=1e-3), **kwargs)


@pytest.mark.parametrize("entry, got", [({"mode": "l2"}, "got mode 'l2'"), ({}, "got mode None"), ("lr_coupled", "got str")])
def test_a_saved_engine_entry_that_names_no_mode_is_a_decay_error(entry, got):
    model = TinyGPT(depth=1)
    state = {**saved(model), "decaykit": entry}
    with pytest.raises(DecayError, match=rf"state_dict\['decaykit'\] must be .*'mode' one of lr_coupled, .*; {got}"):
        decaykit.audit(model, state)


def test_a_checkpoint_with_groups_that_are_not_a_list_or_indices_past_the_model_is_one_decay_error():
    """param_groups as a dict came out as decaykit's internal error (exit 3); an index past the model's
    tensors was told as 'holds more parameters than the model' though it held three."""
    from decaykit.models import TinyGPT

    model = TinyGPT(depth=1)
    with pytest.raises(decaykit.DecayError, match="a list of dicts each with a 'params' list"):
        decaykit.audit(model, {"param_groups": {"a": 1}, "state": {}})
    n = len(list(model.parameters()))
    bad = {"param_groups": [{"params": [0, 1, 999], "lr": 1e-3, "weight_decay": 0.1}], "state": {}}
    with pytest.raises(decaykit.DecayError, match=rf"refers to parameters \[0, 1, 999\] by position, but the model has {n}"):
        decaykit.audit(model, bad)
    assert torch.is_tensor(next(model.parameters()))
