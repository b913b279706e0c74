"""User rules: matching by glob, regex and module type, first match wins, contradictions refused."""

from __future__ import annotations

import pytest
from torch import nn

import decaykit
from decaykit import DecayError, Rule
from decaykit.models import TinyGPT, TinyViT


def test_glob_regex_and_module_type_matchers():
    model = TinyViT(depth=2)
    p = decaykit.plan(model, 0.1, rules=[
        Rule("head.*", weight_decay=0.0),
        Rule(regex=r"^blocks\.0\.", lr_scale=0.5),
        Rule(module="LayerNorm", weight_decay=0.01),
    ])
    assert p["head.weight"].weight_decay == 0.0 and p["head.weight"].source == "rule"
    assert p["blocks.0.attn.qkv.weight"].lr_scale == 0.5 and p["blocks.0.attn.qkv.weight"].weight_decay == 0.1
    # an absolute weight decay applies even to norms: the user asked for it explicitly
    assert p["blocks.1.norm1.weight"].weight_decay == 0.01
    assert p["blocks.1.norm1.weight"].reason == "rule type:LayerNorm (was: weight of F.layer_norm: a norm gain (traced))"
    # first match wins: blocks.0's norm matched the regex rule, which sets no weight decay
    assert p["blocks.0.norm1.weight"].weight_decay == 0.0 and p["blocks.0.norm1.weight"].lr_scale == 0.5


def test_module_rule_accepts_a_class_and_matches_subclasses():
    model = nn.Sequential(nn.Linear(2, 2), nn.LazyLinear(3))
    model(nn.init.zeros_(nn.Parameter(nn.Linear(1, 2).weight.new_zeros(1, 2))))  # materialise the lazy layer
    p = decaykit.plan(model, 0.1, rules=[Rule(module=nn.Linear, decay_mult=0.5)])
    assert p["0.weight"].weight_decay == pytest.approx(0.05)
    assert p["1.weight"].weight_decay == pytest.approx(0.05)  # LazyLinear became a Linear subclass
    assert p["1.bias"].weight_decay == 0.0  # a multiplier keeps 0 at 0 (Megatron's wd_mult)


def test_decay_mult_and_absolute_are_different_things():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    mult = decaykit.plan(model, 0.2, rules=["1.*:mult=3"])
    assert mult["1.weight"].weight_decay == 0.0
    absolute = decaykit.plan(model, 0.2, rules=["1.*:wd=0.3"])
    assert absolute["1.weight"].weight_decay == 0.3


def test_rules_outrank_exclude_which_outranks_hooks_which_outrank_policy():
    model = TinyViT(depth=1)
    p = decaykit.plan(model, 0.1, rules=["pos_embed:wd=0.5"], exclude=["pos_embed", "head.weight"])
    assert p["pos_embed"].weight_decay == 0.5  # rule beats exclude and hook
    assert p["head.weight"].weight_decay == 0.0 and p["head.weight"].reason == "exclude 'head.weight'"
    assert p["cls_token"].source == "hook"


def test_rule_parsing_from_cli_text():
    assert Rule.parse("head.*:wd=0") == Rule("head.*", weight_decay=0.0)
    assert Rule.parse("fc.bias") == Rule("fc.bias", weight_decay=0.0)
    assert Rule.parse("type:Embedding:mult=0.1,lr_scale=2") == Rule(module="Embedding", decay_mult=0.1, lr_scale=2.0)
    assert Rule.parse(r"re:^h\.[01]\.:lr=0.1").regex == r"^h\.[01]\."
    with pytest.raises(DecayError, match="cannot read 'speed=3'"):
        Rule.parse("head.*:speed=3")
    with pytest.raises(DecayError, match="must be a number"):
        Rule.parse("head.*:wd=lots")


def test_bad_rules_are_refused_with_the_fix():
    with pytest.raises(DecayError, match="needs a matcher"):
        Rule(weight_decay=0.0)
    with pytest.raises(DecayError, match="sets nothing"):
        Rule("head.*")
    with pytest.raises(DecayError, match="contradict"):
        Rule("head.*", weight_decay=0.0, decay_mult=2.0)
    with pytest.raises(DecayError, match="finite number >= 0"):
        Rule("head.*", weight_decay=-1)
    with pytest.raises(DecayError, match="not a valid regular expression"):
        Rule(regex="(", weight_decay=0.0)
    with pytest.raises(DecayError, match=r"rules\[1\].*contradicts rules\[0\]"):
        decaykit.plan(nn.Linear(2, 2), 0.1, rules=["weight:wd=0", "weight:wd=0.5"])
    with pytest.raises(DecayError, match="unknown key"):
        decaykit.plan(nn.Linear(2, 2), 0.1, rules=[{"pattern": "weight", "weight_decay": 0}])


def test_dict_rules_and_unmatched_rule_warning():
    with pytest.warns(decaykit.DecayWarning, match="rules\\[0\\]"):
        p = decaykit.plan(TinyGPT(depth=1), 0.1, rules=[{"match": "transformer.*", "weight_decay": 0.0},
                                                         {"match": "h.0.*", "lr_scale": 0.1}])
    assert p["h.0.attn.qkv.weight"].lr_scale == pytest.approx(0.1)
    with pytest.raises(DecayError, match="matched no parameter"):
        decaykit.plan(TinyGPT(depth=1), 0.1, rules=[{"match": "transformer.*", "weight_decay": 0.0}], strict=True)


def test_a_decayed_tensor_at_lr_scale_0_says_its_decay_never_acts():
    from torch import nn

    import decaykit

    p = decaykit.plan(nn.Sequential(nn.Linear(4, 4)), 0.1, rules=["0.weight:lr_scale=0"], strict=True)
    assert p["0.weight"].decay and "never acts" in p["0.weight"].reason
    assert "never acts" not in decaykit.plan(nn.Sequential(nn.Linear(4, 4)), 0.1)["0.weight"].reason
