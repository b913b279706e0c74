"""``torch.compile``: the same groups as the bare model, and the decay engine in a compiled step.

A compiled module names its parameters ``_orig_mod.<name>`` (a compiled block inside a model:
``blocks.0._orig_mod.<name>``); decaykit must see through that, or rules, ``no_weight_decay()``
and layer ids would stop matching. A compiled step must decay exactly as the eager one, also
while a λ schedule changes the decay every step (a value captured at trace time would not).
"""

from __future__ import annotations

import copy
import runpy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import decaykit
from decaykit import schedules
from decaykit.models import TinyGPT, TinyViT

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STEPS = 4


def decision_key(p: decaykit.Plan) -> list[tuple]:
    return [(d.name, d.shape, d.role, d.decay, d.weight_decay, d.lr_scale, d.reason, d.module_type, d.aliases,
             d.layer, id(d.param)) for d in p]


def compile_blocks(model: nn.Module) -> nn.Module:
    blocks = model.h if hasattr(model, "h") else model.blocks
    for i in range(len(blocks)):
        blocks[i] = torch.compile(blocks[i])
    return model


@pytest.mark.parametrize("factory", [TinyGPT, TinyViT], ids=["gpt-tied-rmsnorm", "vit-no_weight_decay"])
def test_compiled_model_gets_the_bare_models_groups(factory):
    bare = factory(depth=2)
    options = dict(layer_decay=0.7, rules=["head.weight:wd=0.3"] if factory is TinyViT else ["lm_head.weight:wd=0.3"])
    expected = decaykit.plan(bare, 0.1, **options)
    whole = torch.compile(bare)
    assert next(iter(dict(whole.named_parameters()))).startswith("_orig_mod.")
    per_block = compile_blocks(bare)  # same tensors, compiled blocks inside the bare model
    assert any("._orig_mod." in n for n, _ in per_block.named_parameters())
    for model in (whole, per_block):
        assert decision_key(decaykit.plan(model, 0.1, **options)) == decision_key(expected)
        groups = decaykit.param_groups(model, 0.1, lr=1e-3, **options)
        assert [(g["param_names"], [id(p) for p in g["params"]], g["weight_decay"], g["lr"]) for g in groups] == [
            (g["param_names"], [id(p) for p in g["params"]], g["weight_decay"], g["lr"]) for g in expected.groups(lr=1e-3)
        ]
    hook = [d for d in expected if d.source == "hook"]
    assert (len(hook) == 2) == (factory is TinyViT)  # pos_embed, cls_token found through _orig_mod


def test_audit_and_probe_name_a_compiled_model_like_the_bare_one():
    bare = TinyGPT(depth=1)
    compiled = torch.compile(bare)
    opt = torch.optim.AdamW(compiled.parameters(), lr=1e-2, weight_decay=0.1)  # decays everything
    report = decaykit.audit(compiled, opt, measure=True)
    norms = next(f for f in report.findings if f.code == "decayed-norm")
    assert set(norms.params) == {"h.0.ln_1.weight", "h.0.ln_2.weight", "ln_f.weight"}
    names = [e.name for e in report.probe.entries]
    assert names == [n for n, _ in bare.named_parameters()]
    good = torch.optim.AdamW(decaykit.param_groups(compiled, 0.1), lr=1e-2)
    assert decaykit.audit(compiled, good, measure=True).ok


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.RMSNorm(16), nn.GELU(), nn.Linear(16, 2))


def train(model: nn.Module, forward: nn.Module, mode: str, inner: type, compile_step: str | None = None) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 8, generator=g), torch.randn(16, 2, generator=g)
    kwargs = {"momentum": 0.9} if inner is torch.optim.SGD else {}
    lam = 1e-3 if mode == "lr_independent" else 0.1  # 0.1 at η_max = 1e-2, each in its mode's convention
    opt = decaykit.WeightDecay(inner(decaykit.param_groups(forward, lam, lr=1e-2), **kwargs), mode=mode,
                               schedule=schedules.cosine(1.0, 3.0, steps=STEPS))
    step = torch.compile(opt.step, backend=compile_step) if compile_step else opt.step
    for _ in range(STEPS):
        (forward(x) - y).square().mean().backward()
        step()
        opt.zero_grad()
    assert opt.steps_taken == STEPS
    return [p.detach().clone() for p in model.parameters()]


# one mode per path of the engine: the inner kernel, an extra foreach pass, the cautious snapshot, L2 gradients
MODES = [("lr_coupled", torch.optim.AdamW), ("lr_independent", torch.optim.SGD), ("cautious", torch.optim.AdamW),
         ("coupled_l2", torch.optim.Adam)]


def test_decay_engine_with_a_compiled_training_step():
    base = net()
    start = copy.deepcopy(base.state_dict())
    compiled = torch.compile(base, backend="aot_eager")  # graph capture as inductor gets it, no C++ build
    for mode, inner in MODES:
        base.load_state_dict(start)
        eager = train(base, base, mode, inner)
        base.load_state_dict(start)
        traced = train(base, compiled, mode, inner)
        for a, b in zip(eager, traced):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=0, msg=mode)
        if mode in ("lr_coupled", "cautious"):  # the optimizer step itself compiled too
            base.load_state_dict(start)
            both = train(base, compiled, mode, inner, compile_step="aot_eager")
            for a, b in zip(eager, both):
                torch.testing.assert_close(b, a, atol=1e-5, rtol=0, msg=f"{mode}, compiled step")
        decayed = [i for i, (a, s) in enumerate(zip(eager, start.values())) if not torch.equal(a, s)]
        assert decayed == [0, 1, 2, 3, 4]  # everything trained


def test_decay_engine_with_an_inductor_compiled_model():
    base = net()
    start = copy.deepcopy(base.state_dict())
    eager = train(base, base, "cautious", torch.optim.AdamW)
    base.load_state_dict(start)
    traced = train(base, torch.compile(base), "cautious", torch.optim.AdamW)  # default backend: inductor
    for a, b in zip(eager, traced):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


def test_example_compile_step_runs(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["compile_step.py", "--steps", "3", "--backend", "aot_eager"])
    runpy.run_path(str(EXAMPLES / "compile_step.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "_orig_mod" not in out
    assert "weight_decay=0.1: 2 tensors ['0.weight', '3.weight']" in out
    assert "step 3" in out
