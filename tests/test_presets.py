"""The anchor presets split parameters exactly as the anchors' own rules do (oracle tests)."""

from __future__ import annotations

import fnmatch

import pytest

import decaykit
from decaykit.models import DEMO_MODELS

from hf_models import HF_MODELS

transformers = pytest.importorskip("transformers")

ALL_MODELS = {**HF_MODELS, **DEMO_MODELS}


def decay_names(model, **kwargs) -> set[str]:
    return {d.name for d in decaykit.plan(model, 0.1, **kwargs) if d.decay}


def timm_rule(model) -> set[str]:
    """timm's ``param_groups_weight_decay`` with ``model.no_weight_decay()``, as its docs describe it."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    return {n for n, p in model.named_parameters() if p.requires_grad
            and not (p.ndim <= 1 or n.endswith(".bias") or any(fnmatch.fnmatch(n, s) for s in skip))}


@pytest.mark.parametrize("name", sorted(ALL_MODELS))
def test_hf_preset_equals_transformers_trainer(name):
    model = ALL_MODELS[name]()
    theirs = set(transformers.Trainer.get_decay_parameter_names(None, model))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}  # the Trainer's optimizer takes these
    assert decay_names(model, policy="hf") == theirs & trained


@pytest.mark.parametrize("name", sorted(ALL_MODELS))
def test_timm_preset_equals_timm_rule(name):
    model = ALL_MODELS[name]()
    assert decay_names(model, policy="timm") == timm_rule(model)


@pytest.mark.parametrize("name", sorted(ALL_MODELS))
def test_nanogpt_seed_and_torch_presets(name):
    model = ALL_MODELS[name]()
    named = dict(model.named_parameters())
    assert decay_names(model, policy="nanogpt") == {n for n, p in named.items() if p.dim() >= 2}
    assert decay_names(model, policy="torch") == set(named)
    skip = [n for n, p in named.items() if p.dim() >= 2][-1:]  # the seed's skip_list: here the last matrix
    expected = {n for n, p in named.items() if not (len(p.shape) == 1 or n.endswith(".bias") or n in skip)}
    assert decay_names(model, policy="seed", exclude=skip) == expected


def test_the_holes_the_default_policy_closes():
    """Where the anchors' rules go wrong (the README lists these holes), and decaykit does not."""
    from decaykit.models import ConvNeXt, TinyGPT, resnet50

    from hf_models import t5

    gpt = TinyGPT()  # custom RMSNorm named ln_1: HF decays it
    assert "h.0.ln_1.weight" in decay_names(gpt, policy="hf")
    assert "h.0.ln_1.weight" not in decay_names(gpt)
    rn = resnet50()  # BatchNorm named bn1 / downsample.1: HF decays it
    assert "layer1.0.downsample.1.weight" in decay_names(rn, policy="hf")
    assert "layer1.0.downsample.1.weight" not in decay_names(rn)
    cn = ConvNeXt()  # (C,1,1) layer scale: timm decays it
    assert "stages.0.blocks.0.gamma" in decay_names(cn, policy="timm")
    assert "stages.0.blocks.0.gamma" not in decay_names(cn)
    model = t5()  # relative_attention_bias is an embedding table: HF's 'bias' regex skips it
    name = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    assert name not in decay_names(model, policy="hf")
    assert name in decay_names(model)

