"""Param groups: accepted by torch optimizers, merged, deterministic, every tensor exactly once."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import decaykit
from decaykit.models import DEMO_MODELS, TinyGPT

from hf_models import HF_MODELS


@pytest.mark.parametrize("name", sorted({**HF_MODELS, **DEMO_MODELS}))
def test_groups_cover_every_trainable_tensor_once(name):
    model = {**HF_MODELS, **DEMO_MODELS}[name]()
    if name == "mlp":  # a plain Sequential has no repeated blocks: layer decay says so
        with pytest.warns(decaykit.DecayWarning, match="no repeated blocks"):
            groups = decaykit.param_groups(model, 0.05, layer_decay=0.9)
    else:
        groups = decaykit.param_groups(model, 0.05, layer_decay=0.9)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len({id(p) for p in model.parameters()})
    settings = [(g["weight_decay"], g["lr_scale"]) for g in groups]
    assert len(settings) == len(set(settings))  # merged: one group per setting
    for g in groups:
        assert len(g["param_names"]) == len(g["params"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", decaykit.DecayWarning)  # already checked above
        again = decaykit.param_groups(model, 0.05, layer_decay=0.9)
    assert [g["param_names"] for g in again] == [g["param_names"] for g in groups]  # deterministic


@pytest.mark.parametrize("cls", [torch.optim.AdamW, torch.optim.SGD, torch.optim.Adam, torch.optim.RMSprop])
def test_any_torch_optimizer_takes_the_groups_and_keeps_names(cls):
    model = TinyGPT(depth=1)
    opt = cls(decaykit.param_groups(model, 0.05), lr=1e-3)
    x = torch.randint(0, 256, (2, 8))
    model(x).sum().backward()
    opt.step()
    state = opt.state_dict()
    names = [n for g in state["param_groups"] for n in g["param_names"]]
    assert "wte.weight" in names and "lm_head.weight" not in names
    assert {g["weight_decay"] for g in state["param_groups"]} == {0.05, 0.0}


def test_decay_actually_applied_per_group():
    """One AdamW step with zero gradients: decayed tensors shrink by (1 - lr·λ), the others do not move."""
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.5), lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    torch.testing.assert_close(after["0.weight"], before["0.weight"] * (1 - 0.1 * 0.5))
    for n in ("0.bias", "1.weight", "1.bias"):
        torch.testing.assert_close(after[n], before[n])


def test_lr_option_sets_group_lr_and_validates():
    groups = decaykit.param_groups(nn.Linear(2, 2), 0.1, lr=3e-4)
    assert {g["lr"] for g in groups} == {3e-4}
    with pytest.raises(decaykit.DecayError, match="lr"):
        decaykit.param_groups(nn.Linear(2, 2), 0.1, lr=-1.0)


def test_plan_summary_and_json():
    p = decaykit.plan(TinyGPT(depth=1), 0.1)
    summary = p.summary()
    assert sum(r["tensors"] for r in summary) == len(p)
    assert sum(r["parameters"] for r in summary) == sum(q.numel() for q in TinyGPT(depth=1).parameters())
    data = p.to_dict()
    assert data["parameters"][0]["name"] == "wte.weight" and data["parameters"][0]["aliases"] == ["lm_head.weight"]
