"""Layer-wise LR decay: depth found from the module structure, with an override."""

from __future__ import annotations

import pytest
from torch import nn

import decaykit
from decaykit.models import ConvNeXt, TinyViT, resnet50
from decaykit.policy.layers import find_blocks

from hf_models import llama, t5


def test_vit_layers_follow_beit():
    p = decaykit.plan(TinyViT(depth=4), 0.05, layer_decay=0.5)
    assert p["pos_embed"].layer == p["patch_embed.weight"].layer == 0
    for i in range(4):
        assert p[f"blocks.{i}.attn.qkv.weight"].layer == i + 1
    assert p["norm.weight"].layer == p["head.weight"].layer == 5
    assert p["head.weight"].lr_scale == 1.0
    assert p["blocks.3.mlp.0.weight"].lr_scale == 0.5
    assert p["patch_embed.weight"].lr_scale == pytest.approx(0.5**5)


def test_llama_and_resnet_depths():
    p = decaykit.plan(llama(), 0.05, layer_decay=0.9)
    assert p["model.embed_tokens.weight"].layer == 0
    assert p["model.layers.1.mlp.up_proj.weight"].layer == 2
    assert p["model.norm.weight"].layer == p["lm_head.weight"].layer == 3
    rn = decaykit.plan(resnet50(), 0.05, layer_decay=0.9)
    assert len(find_blocks(resnet50())) == 3 + 4 + 6 + 3
    assert rn["bn1.weight"].layer == 0 and rn["layer1.0.conv1.weight"].layer == 1
    assert rn["layer4.2.conv3.weight"].layer == 16 and rn["fc.weight"].layer == 17


def test_nested_stages_and_params_between_blocks():
    cn = decaykit.plan(ConvNeXt(depths=(2, 2, 2, 2)), 0.05, layer_decay=0.8)
    assert cn["stem.0.weight"].layer == 0
    assert cn["stages.0.blocks.1.pwconv1.weight"].layer == 2
    # a stage's downsample goes with that stage's first block
    assert cn["stages.1.downsample.1.weight"].layer == cn["stages.1.blocks.0.dwconv.weight"].layer == 3
    assert cn["head.weight"].layer == 9
    t = decaykit.plan(t5(), 0.05, layer_decay=0.8)
    # encoder's final norm sits between the encoder's and the decoder's blocks: it joins the encoder's last
    assert t["encoder.final_layer_norm.weight"].layer == t["encoder.block.1.layer.0.layer_norm.weight"].layer == 2
    assert t["decoder.block.0.layer.0.SelfAttention.q.weight"].layer == 3


def test_layer_of_override_and_groups_carry_lr():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.warns(decaykit.DecayWarning, match="found no repeated blocks"):
        decaykit.plan(model, 0.1, layer_decay=0.5)
    p = decaykit.plan(model, 0.1, layer_decay=0.5, layer_of={"0.weight": 0, "0.bias": 0, "1.weight": 1, "1.bias": 1})
    assert p["0.weight"].lr_scale == 0.5 and p["1.weight"].lr_scale == 1.0
    fn = decaykit.plan(model, 0.1, layer_decay=0.5, layer_of=lambda n: 0 if n.startswith("0.") else 2)
    assert fn["0.bias"].lr_scale == 0.25
    groups = decaykit.param_groups(model, 0.1, lr=1e-2, layer_decay=0.5, layer_of=lambda n: int(n[0]))
    assert sorted((g["weight_decay"], g["lr_scale"], g["lr"]) for g in groups) == [
        (0.0, 0.5, 5e-3), (0.0, 1.0, 1e-2), (0.1, 0.5, 5e-3), (0.1, 1.0, 1e-2)]
