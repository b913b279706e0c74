"""Decide by how a tensor is used: the families a shape rule gets wrong, rebuilt by hand.

Each module below keeps a parameter outside the standard layers, the way real model code does
(a per-head qk-norm gain in a class not called *Norm, a stacked layer scale, Mamba's ``A_log``
and ``D``, learned tokens and queries, a raw relative-position table, MoE experts stacked in one
tensor, raw matrices used through ``F.linear`` / ``@`` / ``einsum``). Shapes are drawn by
Hypothesis: the decision must follow the use, whatever the shape.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import decaykit
from checked_models import TaskTable
from decaykit import DecayWarning
from decaykit.policy import RoleConflict
from decaykit.policy.tracing import run_trace

DIMS = st.integers(1, 6)


class HeadGain(nn.Module):
    """A per-head qk-norm: gain (heads, head_dim) initialised to ones, in a class without "Norm"."""

    def __init__(self, heads: int, head_dim: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(heads, head_dim))

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + 1e-6) * self.gain


class Block(nn.Module):
    """Attention-free block with qk-norm, a stacked layer scale (branches, C) and raw matrices."""

    def __init__(self, heads: int, head_dim: int, branches: int, experts: int) -> None:
        super().__init__()
        c = heads * head_dim
        self.heads = heads
        self.qk = nn.Linear(c, c)
        self.qk_gain = HeadGain(heads, head_dim)
        self.scale = nn.Parameter(torch.full((branches, c), 1e-5))  # stacked layer scale
        self.w_raw = nn.Parameter(torch.randn(c, c))  # used through F.linear
        self.w_at = nn.Parameter(torch.randn(c, c))  # used through @
        self.router = nn.Parameter(torch.randn(experts, c))  # raw router via F.linear
        self.experts = nn.Parameter(torch.randn(experts, c, c))  # stacked experts via einsum
        self.experts_bias = nn.Parameter(torch.zeros(experts, c))  # stacked expert biases
        self.log_weight = nn.Parameter(torch.zeros(c, c))  # a positive weight: exp(log_weight)
        self.picked_experts = nn.Parameter(torch.randn(experts, c, c))  # an expert's matrix, picked per token
        self.picked_bias = nn.Parameter(torch.zeros(experts, c))  # and its bias (GPT-OSS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q = self.qk_gain(self.qk(x).view(b, t, self.heads, -1)).reshape(b, t, c)
        gates = F.linear(x, self.router).softmax(-1)
        moe = torch.einsum("btc,ecd->bted", x, self.experts) + self.experts_bias[None, None]
        choice = gates.argmax(-1)  # the router's pick, per token
        picked = torch.einsum("btc,btcd->btd", x, self.picked_experts[choice]) + self.picked_bias[choice]
        branches = [q, F.linear(x, self.w_raw), x @ self.w_at, (gates[..., None] * moe).sum(2),
                    F.linear(x, self.log_weight.exp()), picked]
        for i in range(self.scale.shape[0]):
            x = x + self.scale[i] * branches[i % len(branches)]
        return x


class SSM(nn.Module):
    """Mamba's state parameters: 2-D ``A_log`` (d_inner, d_state), a 1-D one per head, and ``D``."""

    def __init__(self, c: int, state: int) -> None:
        super().__init__()
        self.A_log = nn.Parameter(torch.zeros(c, state))
        self.A_log_heads = nn.Parameter(torch.zeros(c))
        self.D = nn.Parameter(torch.ones(c))
        self.dt_bias = nn.Parameter(torch.zeros(c))
        self.mix_bias = nn.Parameter(torch.zeros(4))  # a bias stored flat, added as (2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.type_as(self.D)  # a parameter that only lends its dtype is not used
        a = -torch.exp(self.A_log.float())  # (c, state)
        a_heads = -torch.exp(self.A_log_heads)
        dt = F.softplus(x + self.dt_bias)
        h = torch.exp(dt[..., None] * a).sum(-1) + dt * a_heads
        h = h + (x[..., :1, None] + self.mix_bias.view(2, 2)).mean((-1, -2))[..., None]
        return h + x * self.D


class Tokens(nn.Module):
    """cls token (1,1,C), register tokens (1,R,C), learned queries (C,) and (Q,C), a raw bias table."""

    def __init__(self, c: int, registers: int, queries: int, buckets: int, heads: int) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.register_tokens = nn.Parameter(torch.zeros(1, registers, c))
        self.query = nn.Parameter(torch.zeros(c))
        self.queries = nn.Parameter(torch.zeros(queries, c))
        self.proj = nn.Linear(c, c)
        self.relative_attention_bias = nn.Parameter(torch.zeros(buckets, heads))
        self.t5_style = nn.Embedding(buckets, heads)  # the same role, as T5 keeps it
        self.position_table = nn.Parameter(torch.zeros(heads, 4, 4))  # added to the tokens: varies along them
        self.sinks = nn.Parameter(torch.zeros(heads))  # one more logit per head (GPT-OSS attention sinks)
        self.mask_token = nn.Parameter(torch.zeros(c))  # written over masked positions (wav2vec2, BEiT)
        self.register_buffer("buckets", torch.zeros(4, 4, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x = x.clone()
        x[:, 0] = self.mask_token
        x = torch.cat([self.cls_token.expand(b, -1, -1), self.register_tokens.expand(b, -1, -1), x], 1)
        pooled = self.proj(self.query) + self.proj(self.queries).sum(0)
        relative = self.relative_attention_bias[self.buckets].permute(2, 0, 1)  # (heads, 4, 4), as Swin lays it out
        q = x[:, None, :4]
        scores = (q @ q.mT) * x.shape[-1] ** -0.5 + relative + self.t5_style(self.buckets).permute(2, 0, 1)
        scores = scores + (x[:, :1, :1, None] + self.position_table)
        sinks = self.sinks.reshape(1, -1, 1, 1).expand(scores.shape[0], -1, scores.shape[-2], 1)
        scores = torch.cat([scores, sinks], dim=-1)
        return x + pooled + scores.mean()


class Zoo(nn.Module):
    def __init__(self, heads: int = 2, head_dim: int = 3, branches: int = 2, experts: int = 3, state: int = 4,
                 registers: int = 4, queries: int = 3, buckets: int = 5) -> None:
        super().__init__()
        c = heads * head_dim
        self.block = Block(heads, head_dim, branches, experts)
        self.ssm = SSM(c, state)
        self.tokens = Tokens(c, registers, queries, buckets, heads)
        self.norm = nn.LayerNorm(c)
        self.c = c

    def example_inputs(self) -> torch.Tensor:
        return torch.zeros(2, 3, self.c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.tokens(self.ssm(self.block(x))))


EXPECTED = {  # name -> (role, decayed) by use, whatever the shapes
    "block.qk_gain.gain": ("norm", False),
    "block.scale": ("scale", False),
    "block.w_raw": ("weight", True),
    "block.w_at": ("weight", True),
    "block.router": ("weight", True),
    "block.experts": ("weight", True),
    "block.experts_bias": ("bias", False),
    "block.log_weight": ("weight", True),
    "block.picked_experts": ("weight", True),
    "block.picked_bias": ("bias", False),
    "ssm.A_log": ("state", False),
    "ssm.A_log_heads": ("state", False),
    "ssm.D": ("scale", False),
    "ssm.dt_bias": ("bias", False),
    "ssm.mix_bias": ("bias", False),
    "tokens.cls_token": ("token", True),
    "tokens.register_tokens": ("token", True),
    "tokens.query": ("token", True),
    "tokens.mask_token": ("token", True),
    "tokens.queries": ("token", True),
    "tokens.relative_attention_bias": ("bias", False),  # added to attention scores, as an attn_mask is
    "tokens.t5_style.weight": ("embedding", True),
    "tokens.position_table": ("position", True),
    "tokens.sinks": ("bias", False),
}


@settings(max_examples=25, deadline=None)
@given(heads=DIMS, head_dim=DIMS, branches=DIMS, experts=DIMS, state=DIMS, registers=DIMS, queries=DIMS)
def test_decisions_follow_the_use_whatever_the_shape(heads, head_dim, branches, experts, state, registers, queries):
    with torch.device("meta"):  # the trace never needs real memory
        model = Zoo(heads, head_dim, branches, experts, state, registers, queries)
    p = decaykit.plan(model, 0.1, example_inputs="auto")
    got = {name: (p[name].role, p[name].decay) for name in EXPECTED}
    assert got == EXPECTED
    for name in EXPECTED:
        assert p[name].reason.endswith("(traced)"), (name, p[name].reason)
    assert p.conflicts == []
    # one decision per role, whatever the shapes
    by_role: dict[str, set[bool]] = {}
    for d in p.trainable:
        by_role.setdefault(d.role, set()).add(d.decay)
    assert all(len(v) == 1 for v in by_role.values()), by_role


def test_reasons_say_what_was_seen():
    p = decaykit.plan(Zoo(), 0.1, example_inputs="auto")
    assert p["block.qk.weight"].reason == "matrix operand of F.linear (traced)"
    assert p["block.qk_gain.gain"].reason == "multiplies normalised activations in mul: a norm gain (traced)"
    assert p["ssm.A_log"].reason == "fed alone through exp: a state parameter (traced)"
    assert p["tokens.cls_token"].reason == "joined to activations in cat: a learned token (traced)"
    assert "decay_embeddings=False" in decaykit.plan(Zoo(), 0.1, example_inputs="auto",
                                                       decay_embeddings=False)["tokens.register_tokens"].reason


def test_by_default_a_model_that_makes_its_input_is_decided_by_use():
    """No ``example_inputs``: where the structure would guess (raw parameters outside known layers)
    the plan traces on the input the model makes itself, and decides as an explicit trace does."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DecayWarning)  # nothing is left to shape: no warning
        default = decaykit.plan(Zoo(), 0.1)
    traced = decaykit.plan(Zoo(), 0.1, example_inputs="auto")
    assert [(d.name, d.decay, d.reason) for d in default] == [(d.name, d.decay, d.reason) for d in traced]
    assert default.note is None and {name: (default[name].role, default[name].decay) for name in EXPECTED} == EXPECTED


def test_a_model_of_known_layers_only_is_not_traced():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    assert all(not d.reason.endswith(")") for d in decaykit.plan(model, 0.1))  # structural reasons, no trace


def test_without_an_input_the_structure_decides_and_says_so():
    plain = decaykit.plan(Zoo(), 0.1, example_inputs=False)
    assert all("traced" not in d.reason and "structural" not in d.reason for d in plain)

    class Opaque(nn.Module):  # nothing tells what its input is: its first weight layer takes no plain tensor
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(4, 4)
            self.gain = nn.Parameter(torch.ones(3, 4))

        def forward(self, x):
            return self.rnn(x)[0] * self.gain

    with pytest.warns(DecayWarning, match=r"\(gain\) decided by shape, not by use: Opaque has no example_inputs"):
        p = decaykit.plan(Opaque(), 0.1, example_inputs="auto")
    assert all("(structural: no example input" in d.reason for d in p) and "pass example_inputs=" in p.note
    with pytest.warns(DecayWarning, match=r"1 tensor outside the layers decaykit knows \(gain\) decided by shape"):
        default = decaykit.plan(Opaque(), 0.1)
    assert default["gain"].decay and "shape rule" in default["gain"].reason  # the guess, said as one
    assert "decided by shape" in default.note and f"note: {default.note}" in default.summary_text()
    assert default.to_dict()["note"] == default.note
    with warnings.catch_warnings():
        warnings.simplefilter("error", DecayWarning)  # a tensor a rule decides is not left to its shape
        ruled = decaykit.plan(Opaque(), 0.1, rules=["gain:wd=0"])
    assert ruled.note is None and not ruled["gain"].decay


class Optional(nn.Module):
    """A gain only used when the forward is asked to (``use_extra=True``): an input can miss it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.extra_gain = nn.Parameter(torch.ones(2, 2))

    def forward(self, x: torch.Tensor, use_extra: bool = False) -> torch.Tensor:
        h = self.lin(x)
        return (h.unflatten(-1, (2, 2)) * self.extra_gain).flatten(-2) if use_extra else h


@pytest.mark.parametrize("given", ["tensor", "auto"])
def test_a_tensor_the_given_input_does_not_reach_is_named_in_a_warning_and_the_note(given):
    inputs = torch.zeros(2, 4) if given == "tensor" else "auto"
    with pytest.warns(DecayWarning, match=r"1 tensor outside the layers decaykit knows \(extra_gain\) decided by "
                                          r"shape, not by use: the traced forward did not reach it; give it rules="):
        p = decaykit.plan(Optional(), 0.1, example_inputs=inputs)
    assert "extra_gain" in p.note and "pass example_inputs=" not in p.note  # it was passed
    assert "(structural: not reached by the traced forward)" in p["extra_gain"].reason
    with warnings.catch_warnings():
        warnings.simplefilter("error", DecayWarning)
        reached = decaykit.plan(Optional(), 0.1, example_inputs=(torch.zeros(2, 4), True))
    assert reached.note is None and not reached["extra_gain"].decay


def test_the_default_trace_leaves_the_model_as_it_was():
    """What a forward pass stores on the model (a cache, a counter) is undone; the random stream is untouched."""

    class Caching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.gain = nn.Parameter(torch.ones(2, 2))
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            self.last = torch.rand(3) + self.fc(x)[..., :1]
            self.register_buffer("seen", x.sum(), persistent=False)
            return self.fc(x).view(-1, 2, 2) * self.gain

    model = Caching()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    p = decaykit.plan(model, 0.1)
    assert torch.equal(torch.rand(3), expected)
    assert p["gain"].reason.endswith("(traced)") and not p["gain"].decay
    assert model.calls == 0 and not hasattr(model, "last") and "seen" not in model._buffers


def test_forward_hooks_are_skipped_and_put_back():
    """FSDP2 all-gathers in a forward pre-hook; on fake tensors that would run collectives. A user's
    hook would keep fake tensors. Both are left out of the pass and restored in their order."""
    import functools

    from decaykit.policy import tracing

    calls: list[str] = []

    def distributed(module, args):
        calls.append("distributed")

    distributed.__module__ = "torch.distributed.fsdp._fully_shard._fsdp_state"

    model = Zoo()
    first = model.register_forward_pre_hook(functools.partial(distributed))
    model.register_forward_pre_hook(lambda module, args: calls.append("user"))
    before = list(model._forward_pre_hooks)
    hook = model._forward_pre_hooks[first.id]  # seen through the partial, as torch.distributed's, so switched off
    assert tracing._hook_module(hook).startswith("torch.distributed") and not tracing._computes_weight(hook)
    decaykit.plan(model, 0.1)
    assert calls == [] and list(model._forward_pre_hooks) == before
    model(model.example_inputs())
    assert calls == ["distributed", "user"]


def test_the_trace_runs_no_hook_and_leaves_what_the_forward_fills_as_it_was():
    """A user's forward hook, a global one (in the tracing thread only) and lists and dicts the forward
    appends to: none keeps a fake tensor. Torch's own weight_norm pre-hook still computes the weight."""

    class Recording(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.gain = nn.Linear(4, 4), nn.Parameter(torch.ones(2, 2))
            self.history: list[torch.Tensor] = []
            self.stats = {"calls": 0, "seen": {"shapes": []}}

        def forward(self, x):
            h = (self.lin(x).unflatten(-1, (2, 2)) * self.gain).flatten(-2)
            self.history.append(h)
            self.stats["calls"] += 1
            self.stats["last"] = h
            self.stats["seen"]["shapes"].append(h.shape)
            return h

    model, captured = Recording(), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        nn.utils.weight_norm(model.lin)  # the old API: a forward pre-hook computes lin.weight
    model.lin.register_forward_hook(lambda module, args, out: captured.append(out))
    handle = nn.modules.module.register_module_forward_hook(lambda module, args, out: captured.append(out))
    try:
        p = decaykit.plan(model, 0.1)
        assert captured == [] and model.history == [] and model.stats == {"calls": 0, "seen": {"shapes": []}}
        # the gain is reached after lin, whose weight only torch's own weight_norm pre-hook computes: that hook ran
        assert p["gain"].reason.endswith("(traced)") and not p["gain"].decay
        assert not p["lin.weight_g"].decay and p["lin.weight_v"].decay
        model(torch.zeros(1, 4))
        assert len(captured) == 3  # the hooks are back: the layer's own, the global one on lin and on the model
    finally:
        handle.remove()
    assert len(model.history) == 1 and model.history[0].device.type == "cpu"


def test_a_trace_silences_global_forward_hooks_in_its_own_thread_only():
    """A forward in another thread while plan() traces (training in threads) still runs the global hooks."""
    import threading

    inside, resume = threading.Event(), threading.Event()

    class Waits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            inside.set()
            assert resume.wait(10)
            return self.lin(x)

    other, seen = nn.Linear(4, 4), []
    handle = nn.modules.module.register_module_forward_hook(lambda module, args, out: seen.append(module))
    tracing = threading.Thread(target=decaykit.plan, args=(Waits(), 0.1), kwargs={"example_inputs": torch.zeros(1, 4)})
    try:
        tracing.start()
        assert inside.wait(10)
        other(torch.zeros(1, 4))  # this thread, during the traced pass
        resume.set()
        tracing.join(10)
        assert seen == [other]  # the traced pass's modules are not seen, this thread's forward is
    finally:
        resume.set()
        handle.remove()


def test_a_forward_that_stops_keeps_what_it_saw():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.gain = nn.Parameter(torch.ones(2, 2))

        def forward(self, x):
            x = self.a(x)
            x = x[x > 0]  # a shape that depends on values: a fake tensor has none
            return x * self.gain.flatten()

    with pytest.warns(DecayWarning, match="stopped at"):
        p = decaykit.plan(DataDependent(), 0.1, example_inputs=torch.zeros(1, 4))
    assert p["a.weight"].reason == "matrix operand of F.linear (traced)"
    assert "structural: not reached: the traced forward stopped at" in p["gain"].reason


def test_the_trace_does_no_real_compute():
    big = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    before = [q.detach().clone() for q in big.state_dict().values()]
    seen = run_trace(big, torch.full((3, 4), float("nan")))
    assert seen.stopped is None and len(seen.uses) == 6
    assert all(torch.equal(a, b) for a, b in zip(before, big.state_dict().values()))  # running stats too
    with torch.device("meta"):
        huge = nn.Linear(1 << 20, 1 << 20)  # 4 TiB of float32 if it were real
    assert run_trace(huge, torch.zeros(1, 1 << 20, device="meta")).stopped is None


def test_a_hook_that_splits_a_role_is_a_conflict():
    class ViTWithRegisters(Zoo):
        def no_weight_decay(self) -> set[str]:
            return {"tokens.cls_token"}  # timm's ViT lists cls_token, not its register tokens

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DecayWarning)
        p = decaykit.plan(ViTWithRegisters(), 0.1, example_inputs="auto")
    (conflict,) = p.conflicts
    assert isinstance(conflict, RoleConflict) and conflict.role == "token"
    assert "tokens.cls_token" in conflict.names and "tokens.register_tokens" in conflict.decayed
    assert "role 'token' split" in str(conflict) and str(conflict) in p.summary_text()


def test_presets_ignore_the_trace():
    model = Zoo()
    for preset in ("timm", "hf", "nanogpt", "seed", "torch"):
        traced = decaykit.plan(model, 0.1, policy=preset, example_inputs="auto")
        plain = decaykit.plan(model, 0.1, policy=preset)
        assert [(d.name, d.weight_decay, d.reason) for d in traced] == [(d.name, d.weight_decay, d.reason) for d in plain]


def test_param_groups_take_example_inputs():
    model = Zoo()
    groups = decaykit.param_groups(model, 0.1, example_inputs=model.example_inputs())
    undecayed = {n for g in groups if g["weight_decay"] == 0 for n in g["param_names"]}
    assert {"block.scale", "ssm.A_log", "block.qk_gain.gain"} <= undecayed
    with pytest.raises(decaykit.DecayError, match="example_inputs"):
        decaykit.plan(model, 0.1, example_inputs="yes")
    with pytest.raises(decaykit.DecayError, match="example_inputs=True is not an input"):
        decaykit.plan(model, 0.1, example_inputs=True)


def test_a_parameter_reshaped_or_normalised_on_its_own_keeps_its_role():
    class StandardisedConv(nn.Conv2d):  # BiT's weight standardisation: the weight goes through batch_norm
        def forward(self, x):
            w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, eps=1e-6)
            return F.conv2d(x, w.reshape_as(self.weight), self.bias)

    class Masked(nn.Module):  # a weight masked by a buffer is still a weight (MADE, causal convs)
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(4, 4))
            self.register_buffer("mask", torch.ones(4, 4).tril())

        def forward(self, x):
            return F.linear(x, self.weight * self.mask)

    class SelfAttention(nn.MultiheadAttention):
        def forward(self, x):
            return super().forward(x, x, x)[0]

    model = nn.Sequential(StandardisedConv(3, 4, 3), nn.Flatten(), nn.Linear(36, 4), Masked(),
                          nn.Unflatten(1, (1, 4)), SelfAttention(4, 2, batch_first=True, add_bias_kv=True))
    p = decaykit.plan(model, 0.1, example_inputs=torch.zeros(1, 3, 5, 5))
    assert p["0.weight"].decay and p["0.weight"].reason == "matrix operand of F.conv2d (traced)"
    assert p["3.weight"].decay and p["3.weight"].reason == "matrix operand of F.linear (traced)"
    mha = {n: (p[f"5.{n}"].decay, p[f"5.{n}"].reason.endswith("(traced)")) for n in
           ("in_proj_weight", "out_proj.weight", "in_proj_bias", "bias_k", "out_proj.bias")}
    assert mha == {"in_proj_weight": (True, True), "out_proj.weight": (True, True), "in_proj_bias": (False, True),
                   "bias_k": (False, True), "out_proj.bias": (False, True)}


@pytest.mark.parametrize("name", ["resnet50", "convnext", "vit", "gpt", "mlp"])
def test_inspect_example_traces_every_built_in_model(capsys, name):
    import json

    from decaykit.cli.main import main
    from decaykit.models import DEMO_MODELS

    assert main(["inspect", name, "--example", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    hooked = {d["name"] for d in out["parameters"] if d["source"] == "hook"}
    assert all(d["reason"].endswith("(traced)") for d in out["parameters"] if d["name"] not in hooked)
    assert out["conflicts"] == []
    plain = {d.name: d.decay for d in decaykit.plan(DEMO_MODELS[name](), 0.05)}
    assert {d["name"]: d["decay"] for d in out["parameters"]} == plain  # the built-ins were already right


def test_a_check_on_values_and_several_modalities_do_not_stop_the_trace():
    class TwoTowers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.patch = nn.Conv2d(3, 4, 2, 2)
            self.gain = nn.Parameter(torch.ones(2, 2))

        def forward(self, input_ids=None, pixel_values=None):
            if input_ids is not None and pixel_values is not None:
                raise ValueError("image tokens do not match the image")  # as multimodal models check
            x = self.embed(input_ids) if input_ids is not None else self.patch(pixel_values).flatten(2).mT
            if torch.isnan(x).any():  # a value read: the fake tensor has none, a stand-in answers
                raise ValueError("nan")
            return x * self.gain.flatten()

    model = TwoTowers()
    inputs = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "pixel_values": torch.zeros(1, 3, 4, 4)}
    with pytest.warns(DecayWarning, match="stopped at ValueError: image tokens"):
        p = decaykit.plan(model, 0.1, example_inputs=inputs)
    assert all(d.reason.endswith("(traced)") for d in p), [d.reason for d in p]
    assert not p["gain"].decay and p["patch.weight"].decay and p["embed.weight"].role == "embedding"


def test_the_audit_names_a_role_split_for_what_it_is():
    class ViTWithRegisters(Zoo):
        def no_weight_decay(self) -> set[str]:
            return {"tokens.cls_token"}

    model = ViTWithRegisters()
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DecayWarning)
        report = decaykit.audit(model, opt, example_inputs="auto")
    codes = {f.code for f in report.findings}
    assert "role-conflict" in codes and "tied-conflict" not in codes


def test_inspect_traces_by_default_where_the_structure_guesses(capsys):
    """``inspect convnext`` (a (C,1,1) layer scale on a custom block) traces without --example;
    ``--no-trace`` gives the structural reasons; ``inspect resnet50`` (known layers only) is not traced."""
    import json

    from decaykit.cli.main import main

    def reasons(*argv: str) -> dict[str, str]:
        assert main(["inspect", *argv, "--json"]) == 0
        return {d["name"]: d["reason"] for d in json.loads(capsys.readouterr().out)["parameters"]}

    default, structural = reasons("convnext"), reasons("convnext", "--no-trace")
    gammas = [n for n in default if n.endswith(".gamma")]
    assert gammas and all(default[n].endswith("(traced)") and "shape rule" in structural[n] for n in gammas)
    assert not any(r.endswith("(traced)") for r in reasons("resnet50").values())
    assert main(["inspect", "convnext", "--example", "--no-trace"]) == 2


def test_one_trace_per_model_while_its_tensors_stay(monkeypatch):
    """param_groups, audit and a Monitor plan one model in turn: it is traced once, and again
    only once its tensors change (a layer replaced)."""
    from decaykit.policy import tracing

    calls = []
    real = tracing.run_trace
    monkeypatch.setattr(tracing, "run_trace", lambda *a: calls.append(1) or real(*a))
    model = Zoo()
    first = decaykit.plan(model, 0.1)
    decaykit.plan(model, 0.1, example_inputs="auto")
    assert len(calls) == 1
    model.block.scale = nn.Parameter(torch.randn(model.block.scale.shape))
    again = decaykit.plan(model, 0.1)
    assert len(calls) == 2 and again["block.scale"].reason == first["block.scale"].reason


def test_a_norm_over_tokens_that_are_not_activations_keeps_its_gain_a_gain():
    """Pegasus-X normalises global tokens looked up by a constant index, BLIP-2 its learned queries:
    neither input derives from the example input, yet the norm's weight and bias are a norm's."""

    class GlobalTokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Embedding(4, 8)
            self.queries = nn.Parameter(torch.zeros(1, 3, 8))
            self.ln_table, self.ln_queries, self.fc = nn.LayerNorm(8), nn.LayerNorm(8), nn.Linear(8, 8)
            self.register_buffer("ids", torch.arange(4))

        def forward(self, x):
            tokens = self.ln_table(self.table(self.ids)).expand(x.shape[0], -1, -1)
            queries = self.ln_queries(self.queries).expand(x.shape[0], -1, -1)
            return self.fc(torch.cat([tokens, queries, x], 1))

    p = decaykit.plan(GlobalTokens(), 0.1, example_inputs=torch.zeros(2, 5, 8))
    for name in ("ln_table.weight", "ln_table.bias", "ln_queries.weight", "ln_queries.bias"):
        assert p[name].role == "norm" and not p[name].decay, (name, p[name].reason)
    assert p["queries"].role == "token" and p["fc.weight"].decay


def test_a_model_that_wants_targets_in_training_is_traced_in_eval_mode_and_left_training():
    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.scale_weight = nn.Parameter(torch.ones(1, 4))  # SSD's L2-norm scale

        def forward(self, x, targets=None):
            if self.training and targets is None:
                raise AssertionError("targets should not be none when in training mode")
            return self.fc(x) * self.scale_weight

        def example_inputs(self):
            return torch.zeros(2, 4)

    model = Detector().train()
    p = decaykit.plan(model, 0.1)
    assert p["scale_weight"].reason.endswith("(traced)") and not p["scale_weight"].decay and p.note is None
    assert model.training and all(m.training for m in model.modules())


def test_a_mask_token_is_reached_through_a_masked_image():
    """DINOv2 uses its mask token only where ``bool_masked_pos`` masks patches: a second pass with a
    (fake) mask reaches it, and it gets the decision of the model's other learned tokens."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                                       patch_size=14, intermediate_size=64)
    with torch.device("meta"):
        model = transformers.Dinov2Model(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DecayWarning)
        p = decaykit.plan(model, 0.1)
    mask, cls = p["embeddings.mask_token"], p["embeddings.cls_token"]
    assert mask.reason.endswith("(traced)") and (mask.role, mask.decay) == (cls.role, cls.decay) == ("token", True)


class HeadBiases(nn.Module):
    """Per-head biases (heads, head_dim) added to the queries, as Transformer-XL's ``r_w_bias``: one
    named like a bias, one not; ``seq_first`` takes (T, B, C) like Transformer-XL and XLNet."""

    def __init__(self, seq_first: bool = False) -> None:
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.head_bias = nn.Parameter(torch.zeros(2, 4))
        self.u = nn.Parameter(torch.zeros(2, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q(x).unflatten(-1, (2, 4))
        return ((q + self.head_bias) * (q + self.u)).flatten(-2)


@pytest.mark.parametrize("shape", [(2, 5, 8), (1, 5, 8), (5, 2, 8)])
def test_a_per_head_bias_is_a_bias_where_the_input_has_tokens(shape):
    p = decaykit.plan(HeadBiases(), 0.1, example_inputs=torch.zeros(shape, device="meta"))
    for name in ("head_bias", "u"):
        assert (p[name].role, p[name].decay, p[name].reason) == ("bias", False, "added to activations in add: a bias (traced)")


@pytest.mark.parametrize("shape", [(2, 8), (5, 1, 8)])  # feature vectors; or sequence first with a batch of 1
def test_a_per_head_bias_is_no_position_table_where_the_trace_cannot_tell_the_tokens(shape):
    """(B, C) has no token axis, and in (T, 1, C) either axis may be the batch: the structure decides."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DecayWarning)
        p = decaykit.plan(HeadBiases(), 0.1, example_inputs=torch.zeros(shape, device="meta"))
    assert (p["head_bias"].role, p["head_bias"].decay) == ("bias", False)
    assert p["u"].role != "position" and p["u"].reason.startswith("2-D tensor on HeadBiases (shape rule")
    assert all("(structural: added to activations in add as a (2,4) tensor" in p[n].reason for n in ("head_bias", "u"))
    default = decaykit.plan(HeadBiases(), 0.1)  # the input decaykit makes from the first Linear: (2, 8)
    assert (default["head_bias"].role, default["head_bias"].decay) == ("bias", False)


def test_xlnet_content_and_position_biases_are_biases():
    """XLNet is traced with a batch of 1 and lays out its queries (T, B, H, D): ``r_w_bias`` and
    ``r_r_bias`` are constant along the tokens, the first axis."""
    transformers = pytest.importorskip("transformers")
    config = transformers.XLNetConfig(d_model=32, n_layer=1, n_head=2, d_inner=64, vocab_size=96)
    with torch.device("meta"):
        model = transformers.XLNetModel(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DecayWarning)
        p = decaykit.plan(model, 0.1)
    for name in ("layer.0.rel_attn.r_w_bias", "layer.0.rel_attn.r_r_bias"):
        assert (p[name].role, p[name].decay) == ("bias", False) and p[name].reason.endswith("(traced)"), p[name].reason


class RelativePositionAttention(nn.Module):
    """Swin / BEiT / LeViT: a table gathered by a constant index and added to the attention scores,
    eagerly or as the ``attn_mask`` of ``F.scaled_dot_product_attention``. Its name says nothing."""

    def __init__(self, eager: bool, n: int = 4, heads: int = 2) -> None:
        super().__init__()
        self.eager, self.heads = eager, heads
        self.qkv = nn.Linear(8, 24)
        self.table = nn.Parameter(torch.zeros(2 * n - 1, heads))
        self.register_buffer("index", torch.arange(n)[:, None] - torch.arange(n)[None, :] + n - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        bias = self.table[self.index.view(-1)].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if not self.eager:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        scores = (q @ k.mT) * q.shape[-1] ** -0.5 + bias
        return scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("eager", [True, False])
def test_a_table_added_to_attention_scores_is_a_bias_however_attention_is_written(eager):
    p = decaykit.plan(RelativePositionAttention(eager), 0.1, example_inputs=torch.zeros(2, 4, 8, device="meta"))
    assert (p["table"].role, p["table"].decay) == ("bias", False) and p["table"].reason.endswith("(traced)")


class Gains(nn.Module):
    """Gains written with ``einsum`` (JAX ports, SSM code) or a diagonal matrix, beside true contractions."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.gain = nn.Parameter(torch.ones(8))
        self.head_gain = nn.Parameter(torch.ones(2, 4))
        self.D = nn.Parameter(torch.ones(2))
        self.diagonal = nn.Parameter(torch.ones(8))
        self.experts = nn.Parameter(torch.randn(2, 4, 4))
        self.pool = nn.Parameter(torch.randn(2, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.einsum("btd,d->btd", self.proj(x), self.gain) @ torch.diag(self.diagonal)
        q = torch.einsum("...hd,hd->...hd", x.unflatten(-1, (2, 4)), self.head_gain)
        q = q + torch.einsum("bthd,h->bthd", q, self.D)
        return torch.einsum("bthd,hde->bthe", q, self.experts).flatten(-2) + torch.einsum("bthd,hd", q, self.pool)[..., None]


def test_an_einsum_that_sums_out_none_of_a_parameters_indices_multiplies_by_it():
    p = decaykit.plan(Gains(), 0.1, example_inputs=torch.zeros(2, 3, 8, device="meta"))
    got = {n: (p[n].role, p[n].decay) for n in ("gain", "head_gain", "D", "diagonal", "experts", "pool")}
    assert got == {"gain": ("scale", False), "head_gain": ("scale", False), "D": ("scale", False),
                   "diagonal": ("scale", False), "experts": ("weight", True), "pool": ("weight", True)}
    assert p["gain"].reason == "multiplies activations in einsum: a scale (traced)"


class WeightNormed(nn.Module):
    """A weight norm written by hand (EDM2's MPConv): a per-output gain times a unit-norm direction; and a
    rank-1 weight made of two factors, each broadcast along the other."""

    def __init__(self) -> None:
        super().__init__()
        self.v, self.g = nn.Parameter(torch.randn(4, 8)), nn.Parameter(torch.ones(4, 1))
        self.left, self.right = nn.Parameter(torch.randn(4, 1)), nn.Parameter(torch.randn(1, 4))

    def example_inputs(self) -> torch.Tensor:
        return torch.zeros(2, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.g * self.v / self.v.norm(dim=1, keepdim=True)), self.left * self.right)


def test_a_gain_multiplied_into_a_weight_is_a_scale_of_it():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DecayWarning)
        p = decaykit.plan(WeightNormed(), 0.1)  # traced by default: v and g are outside the layers decaykit knows
    got = {n: (p[n].role, p[n].decay) for n in ("v", "g", "left", "right")}
    assert got == {"v": ("weight", True), "g": ("scale", False), "left": ("weight", True), "right": ("weight", True)}
    assert p["g"].reason == "scales a weight in mul, broadcast along its axes: a gain (traced)"
    assert decaykit.plan(WeightNormed(), 0.1, example_inputs=False)["g"].decay is False  # as the structure says
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated, still in published code
        old = nn.utils.weight_norm(nn.Linear(8, 4))  # the old API computes the weight in a forward pre-hook
    traced = decaykit.plan(old, 0.1, example_inputs=torch.zeros(2, 8))
    assert (traced["weight_g"].role, traced["weight_g"].decay, traced["weight_v"].decay) == ("scale", False, True)


class AdaLNSingle(nn.Module):
    """diffusers' adaLN-single (PixArt-α, Sana, Wan): a learned (K, D) ``scale_shift_table`` added to the
    timestep embedding, whose rows then shift, scale and gate the tokens, ``x * (1 + scale) + shift``.
    The block's table meets an embedding of the same (B, 6, D) shape (PixArt's ``timestep.reshape``),
    the final layer's a (B, 1, D) one (``temb[:, None]``); ``cut`` is how the sum is cut into rows.
    Beside them, a position table added to the tokens. No name says what a tensor is."""

    def __init__(self, cut: str, d: int = 8, tokens: int = 5) -> None:
        super().__init__()
        self.cut = cut
        self.t_embed = nn.Linear(4, 6 * d)
        self.table = nn.Parameter(torch.randn(6, d) / d**0.5)  # the block's
        self.final_table = nn.Parameter(torch.randn(2, d) / d**0.5)  # the final layer's
        self.positions = nn.Parameter(torch.zeros(1, tokens, d))
        self.norm = nn.LayerNorm(d, elementwise_affine=False)
        self.fc, self.out = nn.Linear(d, d), nn.Linear(d, 2)

    def rows(self, summed: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
        if self.cut == "chunk":
            return summed.chunk(k, dim=1)
        if self.cut == "unbind":
            return tuple(r[:, None] for r in summed.unbind(1))
        return tuple(summed[:, i : i + 1] if self.cut == "slice" else summed[:, i][:, None] for i in range(k))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # x (B, N, D), t (B, 4)
        temb = self.t_embed(t)
        x = x + self.positions
        shift, scale, gate, *_ = self.rows(self.table[None] + temb.reshape(x.shape[0], 6, -1), 6)
        x = x + gate * self.fc(self.norm(x) * (1 + scale) + shift)
        shift, scale = self.rows(self.final_table[None] + temb[:, None, : x.shape[-1]], 2)
        return self.out(self.norm(x) * (1 + scale.to(x.dtype)) + shift)


@pytest.mark.parametrize("cut", ["chunk", "unbind", "index"])
def test_a_table_whose_rows_shift_and_scale_the_tokens_is_a_modulation_bias(cut):
    p = decaykit.plan(AdaLNSingle(cut), 0.1, example_inputs=(torch.zeros(2, 5, 8), torch.zeros(2, 4)))
    for name in ("table", "final_table"):
        assert (p[name].role, p[name].decay) == ("bias", False), p[name].reason
        assert p[name].reason.endswith("into rows that scale and shift other activations: a modulation's bias (traced)")
    assert (p["positions"].role, p["positions"].decay) == ("position", True)  # it varies along the tokens


def test_a_table_is_a_modulation_bias_only_where_its_sum_is_cut_into_single_rows():
    """Tokens cut in two halves that multiply are no rows of a modulation; ``[:, i : i + 1]`` is one row."""

    class Halves(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.positions = nn.Parameter(torch.zeros(1, 4, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            left, right = (x + self.positions).chunk(2, dim=1)
            return left * right

    p = decaykit.plan(Halves(), 0.1, example_inputs=torch.zeros(2, 4, 8))
    assert (p["positions"].role, p["positions"].decay) == ("position", True)
    p = decaykit.plan(AdaLNSingle("slice"), 0.1, example_inputs=(torch.zeros(2, 5, 8), torch.zeros(2, 4)))
    assert (p["table"].role, p["table"].decay) == ("bias", False)


class SpectralDelta(nn.Module):
    """PEFT's FourierFT: a vector of spectral coefficients written into a dense (out, in) spectrum at fixed
    frequencies (``dense[idx] = spectrum``), turned into a weight by an inverse FFT and used through
    ``F.linear``; ``in_place=True`` writes with ``index_put_`` instead."""

    def __init__(self, in_place: bool = False) -> None:
        super().__init__()
        self.in_place = in_place
        self.base = nn.Linear(8, 8)
        self.spectrum = nn.Parameter(torch.randn(6))
        self.register_buffer("frequencies", torch.tensor([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense = torch.zeros(8, 8, dtype=self.spectrum.dtype, device=x.device)
        if self.in_place:
            dense.index_put_((self.frequencies[0], self.frequencies[1]), self.spectrum)
        else:
            dense[self.frequencies[0], self.frequencies[1]] = self.spectrum
        return self.base(x) + F.linear(x, torch.fft.ifft2(dense).real)


@pytest.mark.parametrize("in_place", [False, True])
def test_a_parameter_written_into_a_weight_is_part_of_that_weight(in_place):
    p = decaykit.plan(SpectralDelta(in_place), 0.1, example_inputs=torch.zeros(2, 8))
    assert (p["spectrum"].role, p["spectrum"].decay, p["spectrum"].reason) == (
        "weight", True, "matrix operand of F.linear (traced)")


class KroneckerAdapter(nn.Module):
    """PEFT's LoKr / LoHa (``lycoris_utils``): the adapter, a Kronecker product of two small factors used as
    a weight, runs only where ``(not self.training) or (self.training and torch.rand(1) > module_dropout)``:
    a test of a tensor's value, which fake tensors cannot answer; ``module_dropout`` is 0, so it always runs.
    ``gain``, a (2, 2) gain the structure would call a matrix, is used only where a value test is false; a
    loop on values must end."""

    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(4, 4)
        self.w1, self.w2 = nn.Parameter(torch.randn(2, 1)), nn.Parameter(torch.randn(2, 4))
        self.gain = nn.Parameter(torch.ones(2, 2))
        self.module_dropout = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        while (out.abs() > 1e3).any():
            out = out / 2
        if (not self.training) or (self.training and torch.rand(1) > self.module_dropout):
            out = out + F.linear(x, torch.kron(self.w1, self.w2))
        if out.isnan().any():
            return out
        return out * self.gain.flatten()


def test_a_branch_on_a_value_is_traced_both_ways_and_a_decision_that_rests_on_one_way_says_so():
    model = KroneckerAdapter().train()
    p = decaykit.plan(model, 0.1, example_inputs=torch.zeros(2, 4))
    test = "where '(not self.training) or (self.training and torch.rand(1) > self.module_dropout)' (test_usage_trace.py:"
    assert [(p[n].role, p[n].decay) for n in ("w1", "w2")] == [("weight", True)] * 2  # (2, 1) was left per-channel
    assert p["w1"].reason.startswith(f"matrix operand of F.linear, {test}") and p["w1"].reason.endswith(
        ") is true (traced)"), p["w1"].reason
    assert p["w2"].reason == "matrix operand of F.linear (traced)"  # by its shape, a matrix too: it rests on nothing
    assert p["gain"].reason.startswith("multiplies activations in mul: a scale, where 'out.isnan().any()'")
    assert p["gain"].reason.endswith(") is false (traced)") and p.note is None
    model.eval()  # no value test before the adapter: nothing to say
    assert decaykit.plan(model, 0.1, example_inputs=torch.zeros(2, 4))["w1"].reason == "matrix operand of F.linear (traced)"


class LearnedStep(nn.Module):
    """torch's LSQ fake quantizer (``_LearnableFakeQuantize``) on a weight: a learned step size and zero point
    meet the weight in a function decaykit does not know, where ``self.fake_quant_enabled[0] == 1``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4))
        self.scale, self.zero_point = nn.Parameter(torch.tensor([0.1])), nn.Parameter(torch.tensor([0.0]))
        self.register_buffer("fake_quant_enabled", torch.tensor([1], dtype=torch.uint8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self.fake_quant_enabled[0] == 1:
            w = torch._fake_quantize_learnable_per_tensor_affine(w, self.scale, self.zero_point, -128, 127, 1.0)
        return F.linear(x, w)


def test_what_meets_a_weight_in_a_function_decaykit_does_not_know_is_no_part_of_the_matrix():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DecayWarning)  # the step size's use does not tell what it is
        p = decaykit.plan(LearnedStep(), 0.1, example_inputs=torch.zeros(2, 4))
    assert p["weight"].decay and p["weight"].reason == "matrix operand of F.linear (traced)"
    for name in ("scale", "zero_point"):  # reached (not "not reached"), and decided by the structure
        assert not p[name].decay and p[name].reason.startswith("scalar on LearnedStep (shape rule) (structural: used "
                                                               "with a weight in _fake_quantize_learnable_per_tensor_affine")


class LearnedKeyValue(nn.Module):
    """What ``nn.MultiheadAttention(add_bias_kv=True)`` does inside ``F.multi_head_attention_forward``, by hand
    (as fairseq and lucidrains' ``null_kv`` write it): a learned key and value joined to the keys and values
    with ``torch.cat``, read by ``F.scaled_dot_product_attention`` or by eager attention."""

    def __init__(self, eager: bool, d: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.eager, self.heads = eager, heads
        self.in_proj, self.out_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.bias_k, self.bias_v = nn.Parameter(torch.zeros(1, 1, d)), nn.Parameter(torch.zeros(1, 1, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.in_proj(x).chunk(3, -1)
        k = torch.cat([k, self.bias_k.expand(x.shape[0], 1, -1)], 1)
        v = torch.cat([v, self.bias_v.expand(x.shape[0], 1, -1)], 1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        if self.eager:
            out = ((q @ k.mT) * q.shape[-1] ** -0.5).softmax(-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class TorchKeyValue(nn.MultiheadAttention):
    def forward(self, x):
        return super().forward(x, x, x)[0]


@pytest.mark.parametrize(("model", "read_as", "joined_in"), [
    (LearnedKeyValue(eager=False), ("keys", "values"), "cat"),
    (LearnedKeyValue(eager=True), ("keys or values", "keys or values"), "cat"),  # a product: q @ k.mT or p @ v
    (TorchKeyValue(8, 2, batch_first=True, add_bias_kv=True), ("keys", "values"), "F.multi_head_attention_forward"),
], ids=["sdpa", "eager", "torch"])
def test_a_learned_key_and_value_joined_to_attention_are_its_biases_however_written(model, read_as, joined_in):
    for example in (False, torch.zeros(2, 5, 8)):  # by the structure (their names), then traced
        p = decaykit.plan(model, 0.1, example_inputs=example)
        assert [(p[n].role, p[n].decay) for n in ("bias_k", "bias_v")] == [("bias", False)] * 2, p["bias_k"].reason
    for name, what in zip(("bias_k", "bias_v"), read_as):
        assert p[name].reason == f"joined to the {what} of attention in {joined_in}: a learned key/value, a bias (traced)"


class SparseAdapter(nn.Module):
    """PEFT's SHiRA: a vector of trainable entries written into a sparse weight beside the frozen base layer."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.values = nn.Parameter(torch.zeros(4))
        self.register_buffer("where", torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = torch.zeros(self.base.out_features, self.base.in_features, dtype=x.dtype, device=x.device)
        delta[self.where[0], self.where[1]] = self.values
        return self.base(x) + F.linear(x, delta)


class PassesOn(nn.Module):
    """PEFT's ``PeftModel`` and its tuner: ``forward(*args, **kwargs)`` hands the input to the model it wraps,
    a transformers model whose config says what its input is, which the wrapper may expose or not."""

    def __init__(self, model: nn.Module, config: object = None) -> None:
        super().__init__()
        self.model = model
        if config is not None:
            self.config = config

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


@pytest.mark.parametrize("config", [True, False])
def test_a_wrapper_that_passes_its_input_on_gets_the_input_of_the_model_it_wraps(config):
    transformers = pytest.importorskip("transformers")
    gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50,
                                                               n_positions=16))
    gpt.transformer.h[0].mlp.c_fc = SparseAdapter(nn.Linear(16, 64))
    model = PassesOn(PassesOn(gpt), config=gpt.config if config else None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DecayWarning)  # nothing left to its shape
        p = decaykit.plan(model, 0.1)
    name = "model.model.transformer.h.0.mlp.c_fc.values"
    assert (p[name].decay, p[name].reason, p.note) == (True, "matrix operand of F.linear (traced)", None)


def test_a_model_whose_config_fixes_no_input_it_takes_says_so():
    class Configured(nn.Module):  # a config, but an input the config cannot make
        def __init__(self) -> None:
            super().__init__()
            self.config = pytest.importorskip("transformers").GPT2Config()
            self.gain = nn.Parameter(torch.ones(3, 4))

        def forward(self, x):
            return x * self.gain

    with pytest.warns(DecayWarning, match=r"Configured's GPT2Config fixes no input its forward \(x\) takes"):
        decaykit.plan(Configured(), 0.1)

    class Composite(nn.Module):  # transformers' BarkModel: a config, submodels, and no forward of its own
        def __init__(self) -> None:
            super().__init__()
            self.config = pytest.importorskip("transformers").GPT2Config()
            self.semantic = KroneckerAdapter()

    with pytest.warns(DecayWarning, match="Composite has a GPT2Config, but no forward of its own that takes an input"):
        decaykit.plan(Composite(), 0.1)


def test_the_added_operand_of_addcmul_is_a_bias_and_the_multiplied_one_a_scale():
    class Affine(nn.Module):  # ResMLP's Affine, fused: beta + alpha * x
        def __init__(self) -> None:
            super().__init__()
            self.alpha, self.beta = nn.Parameter(torch.ones(1, 1, 8)), nn.Parameter(torch.zeros(1, 1, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.addcmul(self.beta, self.alpha, x)

    p = decaykit.plan(Affine(), 0.1, example_inputs=torch.zeros(2, 5, 8))
    assert (p["beta"].role, p["beta"].decay, p["beta"].reason) == ("bias", False, "added to activations in addcmul: a bias (traced)")
    assert (p["alpha"].role, p["alpha"].reason) == ("scale", "multiplies activations in addcmul: a scale (traced)")


def test_steps_of_a_sequence_unbound_one_by_one_are_no_rows_of_a_modulation():
    """A position table added to the tokens, then the tokens taken one by one into a recurrence: each
    step meets a state of its own size, not broadcast over tokens, and the table stays a position table."""

    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.positions = nn.Parameter(torch.zeros(1, 4, 8))
            self.cell = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, 4, 8)
            h = self.cell(x[:, 0])
            for step in (x + self.positions).unbind(1):
                h = h * torch.sigmoid(self.cell(h)) + step
            return h

    p = decaykit.plan(Recurrent(), 0.1, example_inputs=torch.zeros(2, 4, 8))
    assert (p["positions"].role, p["positions"].decay) == ("position", True), p["positions"].reason


def test_a_decision_that_rests_on_one_answer_names_the_test_it_came_after():
    """The modulation table is used after the first value test and decided once the trace has seen what its
    sum feeds, after the second: its reason names the first."""

    class Gated(AdaLNSingle):
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if x.isnan().any():
                return x
            temb = self.t_embed(t)
            shift, scale, *_ = self.rows(self.table[None] + temb.reshape(x.shape[0], 6, -1), 6)
            x = self.norm(x) * (1 + scale) + shift
            if x.isinf().any():
                return x
            return self.out(x)

    p = decaykit.plan(Gated("chunk"), 0.1, example_inputs=(torch.zeros(2, 5, 8), torch.zeros(2, 4)))
    line = Gated.forward.__code__.co_firstlineno + 1
    assert p["table"].role == "bias" and p["table"].reason.endswith(
        f"a modulation's bias, where 'x.isnan().any()' (test_usage_trace.py:{line}) is false (traced)"), p["table"].reason


class MulSum(nn.Module):
    """A weight vector applied as ``(x * a).sum(-1)`` (GAT's attention vector), a weight matrix as the sum of
    products over its inputs (KAN's ``scale_base``, through a masked sum of two products), and for contrast
    a layer scale whose product feeds a residual sum and a hand-written norm's mean over the channels, and
    a (C,1,1) gain whose product is pooled over the positions alone."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.att = nn.Parameter(torch.randn(1, 2, 4))
        self.scale_base, self.scale_sp = nn.Parameter(torch.randn(8, 3)), nn.Parameter(torch.randn(8, 3))
        self.mask = nn.Parameter(torch.ones(8, 3), requires_grad=False)
        self.layer_scale = nn.Parameter(torch.full((8,), 1e-5))
        self.gain = nn.Parameter(torch.ones(8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)  # (B, 8)
        score = (h.view(-1, 2, 4) * self.att).sum(dim=-1)  # (B, 2)
        y = self.scale_base[None] * F.silu(h)[:, :, None] + self.scale_sp[None] * h[:, :, None]
        y = torch.sum(self.mask[None] * y.clone(), dim=1)  # (B, 3)
        r = h + self.layer_scale * F.gelu(h)
        r = r - r.mean(-1, keepdim=True)
        pooled = (h[:, :, None, None].expand(-1, -1, 2, 2) * self.gain).mean((-2, -1))
        return torch.cat([score, y, r, pooled], dim=-1)


@pytest.mark.parametrize("example", [torch.zeros(2, 8), torch.zeros(2, 8, device="meta")])
def test_a_product_summed_over_the_parameters_own_axis_is_a_contraction(example):
    p = decaykit.plan(MulSum(), 0.1, example_inputs=example)
    for name in ("att", "scale_base", "scale_sp"):
        assert (p[name].role, p[name].decay) == ("weight", True), (name, p[name].reason)
    assert p["att"].reason == ("multiplies activations in mul, then summed over its own axis by sum: a matrix "
                               "operand (traced)")
    for name in ("layer_scale", "gain"):
        assert (p[name].role, p[name].decay) == ("scale", False), (name, p[name].reason)
    assert p["gain"].reason == "multiplies activations in mul: a scale (traced)"


class SlotsAndKernel(nn.Module):
    """Slot Attention's initial slots ``mu + exp(logsigma) * noise`` and an S4D-like kernel in which the
    output matrix ``C`` multiplies ``exp`` of the state parameters: only what went through ``exp`` is
    said to have."""

    def __init__(self) -> None:
        super().__init__()
        self.slots_mu, self.slots_logsigma = nn.Parameter(torch.randn(1, 1, 8)), nn.Parameter(torch.zeros(1, 1, 8))
        self.C, self.log_dt = nn.Parameter(torch.randn(8, 4)), nn.Parameter(torch.zeros(8, 1))
        self.to_q = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 8)
        slots = self.slots_mu + self.slots_logsigma.exp() * torch.randn(x.shape[0], 3, 8)
        kernel = self.C * torch.exp(self.log_dt)
        return self.to_q(slots).sum(1) + F.linear(x, kernel.T)


def test_a_parameter_is_after_exp_only_where_it_went_through_exp_itself():
    p = decaykit.plan(SlotsAndKernel(), 0.1, example_inputs=torch.zeros(2, 8))
    assert (p["slots_mu"].role, p["slots_mu"].decay) == ("token", True)
    assert p["slots_mu"].reason == "input of F.linear: a learned token (traced)"
    assert (p["slots_logsigma"].role, p["slots_logsigma"].decay) == ("state", False), p["slots_logsigma"].reason
    assert p["C"].reason == "matrix operand of F.linear (traced)" and p["C"].decay
    assert (p["log_dt"].role, p["log_dt"].decay) == ("state", False), p["log_dt"].reason


class ChannelsFirstToken(nn.Module):
    """A learned token joined as one more column to channels-first activations (B, C, N), repeated over the
    batch (SepViT's window token), beside one more logit per head expanded over the queries and joined to
    attention scores along their last axis (GPT-OSS's sinks)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 1)
        self.window_token = nn.Parameter(torch.randn(8))
        self.sinks = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 8, N)
        x = self.conv(x)
        x = torch.cat((self.window_token[None, :, None].repeat(x.shape[0], 1, 1), x), dim=-1)
        q = x.transpose(1, 2).unflatten(-1, (2, 4)).transpose(1, 2)  # (B, 2, N + 1, 4)
        scores = q @ q.mT
        sinks = self.sinks.reshape(1, -1, 1, 1).expand(x.shape[0], -1, scores.shape[-2], 1)
        return torch.cat([scores, sinks], dim=-1).softmax(-1)


def test_a_column_joined_to_channels_first_activations_is_not_called_a_bias():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = decaykit.plan(ChannelsFirstToken(), 0.1, example_inputs=torch.zeros(2, 8, 5))
    assert p["window_token"].role != "bias" and "(structural: joined to activations along their last axis in cat, " \
        "varying along the axes before it: a bias if that axis holds channels, a learned token if tokens)" in \
        p["window_token"].reason, p["window_token"].reason
    assert any("window_token" in str(w.message) for w in caught if issubclass(w.category, DecayWarning))
    assert p["sinks"].reason == "joined to activations along their last axis in cat: a bias (traced)"


def test_a_warning_after_the_models_own_input_told_nothing_does_not_ask_for_an_input():
    class OwnInput(ChannelsFirstToken):
        def example_inputs(self) -> torch.Tensor:
            return torch.zeros(2, 8, 5)

    for example in (None, torch.zeros(2, 8, 5)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            decaykit.plan(OwnInput(), 0.1, example_inputs=example)
        told = [str(w.message) for w in caught if issubclass(w.category, DecayWarning)]
        assert len(told) == 1 and told[0].endswith("its use in the traced forward did not tell what it is; give it "
                                                   "rules= where its shape misleads"), told


class Inducing(nn.Module):
    """A sparse GP's inducing points (gpytorch's VariationalStrategy): joined to the raw inputs, before any layer,
    they are points in the data's own space; beside them a class token joined after a layer is a token."""

    def __init__(self) -> None:
        super().__init__()
        self.points = nn.Parameter(torch.randn(8, 3))
        self.proj = nn.Linear(3, 4)
        self.cls = nn.Parameter(torch.zeros(1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        full = torch.cat([self.points, x.view(-1, 3)], dim=-2)
        return torch.cat([self.cls, self.proj(full)], dim=-2)


def test_a_parameter_joined_to_the_raw_inputs_is_not_called_a_token_for_sure():
    """The inducing points were "joined to activations in cat: a learned token (traced)": a guess given as a fact."""
    with pytest.warns(DecayWarning, match=r"points"):
        p = decaykit.plan(Inducing(), 0.1, example_inputs=torch.zeros(5, 3))
    assert "joined to the raw inputs along their first axis in cat, before any layer" in p["points"].reason
    assert "(traced)" not in p["points"].reason
    assert (p["cls"].role, p["cls"].decay) == ("token", True) and p["cls"].reason.endswith("(traced)")


class LongConv(nn.Module):
    """S4D's kernel (state-spaces/s4, without its ``_optim`` hints), applied as an FFT convolution as S4, H3 and
    Hyena do, and GFNet's global filter, a kernel learned in the frequency domain. The output matrix C and the
    filter are the convolution's weights; log_dt, log_A_real and A_imag reach the kernel through exp: state."""

    def __init__(self, h: int = 4, n: int = 4) -> None:
        super().__init__()
        self.c = nn.Parameter(torch.randn(h, n, 2))
        self.log_dt = nn.Parameter(torch.zeros(h))
        self.log_a_real = nn.Parameter(torch.zeros(h, n))
        self.a_imag = nn.Parameter(torch.ones(h, n))
        self.filter = nn.Parameter(torch.randn(h, 5, 2))

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # u (B, H, L)
        length = u.shape[-1]
        dt = torch.exp(self.log_dt)
        a = -torch.exp(self.log_a_real) + 1j * self.a_imag
        dta = a * dt.unsqueeze(-1)
        c = torch.view_as_complex(self.c) * (torch.exp(dta) - 1.0) / a
        k = 2 * torch.einsum("hn,hnl->hl", c, torch.exp(dta.unsqueeze(-1) * torch.arange(length))).real
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * length) * torch.fft.rfft(k, n=2 * length), n=2 * length)
        y = y[..., :length]
        return torch.fft.irfft(torch.fft.rfft(y) * torch.view_as_complex(self.filter), n=length)


def test_a_kernel_multiplied_into_transformed_activations_and_transformed_back_is_a_convolution_weight():
    """S4D's C was "multiplies activations in mul: a scale" (then "fed alone through exp": a state), undecayed,
    where the s4 reference decays it; what went through exp into the kernel stays a state."""
    p = decaykit.plan(LongConv(), 0.1, example_inputs=torch.zeros(2, 4, 8))
    got = {n: (p[n].role, p[n].decay) for n in ("c", "filter", "log_dt", "log_a_real", "a_imag")}
    assert got == {"c": ("weight", True), "filter": ("weight", True), "log_dt": ("state", False),
                   "log_a_real": ("state", False), "a_imag": ("state", False)}
    assert p["c"].reason == ("multiplies transformed activations in mul, then transformed back by fft_irfft: a "
                             "convolution kernel (traced)")


class FoldedPositions(nn.Module):
    """A learned position table added to tokens whose batch axis was folded with another one: a video's
    frames (B*T, N, D), as TimeSformer's and ViViT's spatial stages do, or a series' channels (B*C, n, d),
    as PatchTST's channel independence does; or added to (B, C, n, d), the channels folded into the batch
    only after it, as transformers' PatchTST does (``fold="after"``); or (``fold=None``) (B, N, D)."""

    def __init__(self, fold: str | None, tokens: int = 4, d: int = 8, extra: int = 3) -> None:
        super().__init__()
        self.fold, self.extra = fold, extra
        self.proj = nn.Linear(2, d)
        self.table = nn.Parameter(torch.zeros(tokens, d) if fold in ("channels", "after") else torch.zeros(1, tokens, d))
        self.head = nn.Linear(d, 1)

    def example_inputs(self) -> torch.Tensor:
        return self.input(2)

    def input(self, batch: int) -> torch.Tensor:
        tokens = self.table.shape[-2]
        return torch.zeros((batch, self.extra, tokens, 2) if self.fold == "frames" else
                           (batch, tokens * 2, self.extra) if self.fold in ("channels", "after") else (batch, tokens, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fold == "frames":  # (B, T, N, 2) -> (B*T, N, D)
            x = self.proj(x.flatten(0, 1))
        elif self.fold == "channels":  # (B, L, C) -> patches of 2 per channel, (B*C, n, D)
            patches = x.permute(0, 2, 1).unfold(-1, 2, 2)
            x = self.proj(patches).reshape(-1, patches.shape[2], self.table.shape[-1])
        elif self.fold == "after":  # (B, C, n, D) + table, then (B*C, n, D) for attention along the patches
            x = self.proj(x.permute(0, 2, 1).unfold(-1, 2, 2))
            x = F.dropout(x + self.table, 0.1, self.training)
            return self.head(x.view(-1, *x.shape[2:]))
        else:
            x = self.proj(x)
        return self.head(x + self.table)


@pytest.mark.parametrize("fold", ["frames", "channels", "after", None])
@pytest.mark.parametrize("batch", [1, 2, 5])
@pytest.mark.parametrize("extra", [2, 3])
def test_a_position_table_stays_one_where_another_axis_is_folded_into_the_batch(fold, batch, extra):
    """PatchTST's ``W_pos`` and TimeSformer's position embeddings were "added to activations in add: a bias",
    undecayed: no axis of (B*C, n, d) has the batch size, so the folded one counted as a token axis the
    table is broadcast over. It is the batch, and the table varies along every token."""
    model = FoldedPositions(fold, extra=extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DecayWarning)
        plans = [decaykit.plan(model, 0.1, example_inputs=how) for how in (False, None, model.input(batch))]
    assert all(p["table"].decay for p in plans), [p["table"].reason for p in plans]
    for p in plans[1:]:
        assert p["table"].role == "position" and p["table"].reason.startswith("added to activations in add as a "), \
            p["table"].reason
        assert fold != "after" or p["table"].reason.endswith("table, the same along axes that view then folds into the "
                                                             "batch (traced)"), p["table"].reason


def test_patchtst_position_encoding_is_a_position_table():
    """transformers' PatchTST adds its learned table to (B, C, n, d) and folds the channels into the batch after."""
    transformers = pytest.importorskip("transformers")
    config = transformers.PatchTSTConfig(num_input_channels=3, context_length=32, patch_length=8, patch_stride=8,
                                         d_model=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
                                         prediction_length=8, positional_encoding_type="random")
    model = transformers.PatchTSTForPrediction(config)
    p = decaykit.plan(model, 0.1, example_inputs={"past_values": torch.zeros(5, 32, 3)})
    table = p["model.encoder.positional_encoder.position_enc"]
    assert (table.role, table.decay) == ("position", True) and table.reason.endswith("(traced)"), table.reason


def test_timesformer_position_and_time_embeddings_are_position_tables():
    """TimeSformer adds its spatial table to (B*T, N, D) frames and its time table to (B*N, T, D) patches."""
    transformers = pytest.importorskip("transformers")
    config = transformers.TimesformerConfig(image_size=16, patch_size=4, num_frames=3, hidden_size=16,
                                            num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    with torch.device("meta"):
        model = transformers.TimesformerModel(config)
    p = decaykit.plan(model, 0.1, example_inputs={"pixel_values": torch.zeros(2, 3, 3, 16, 16, device="meta")})
    for name in ("embeddings.position_embeddings", "embeddings.time_embeddings"):
        assert (p[name].role, p[name].decay) == ("position", True) and p[name].reason.endswith("(traced)"), p[name].reason


class ModulatedKernel(nn.Module):
    """StyleGAN2's modulated convolution, folded into the kernel (rosinality's ``ModulatedConv2d``, the fused path
    of NVlabs' ``modulated_conv2d``): ``weight * style`` (demodulated or not) is the kernel of a grouped
    ``F.conv2d``; ``kind="bmm"``: a per-example modulated matrix of a linear map. Beside it, ``gain`` scales
    the activations before a matmul: the operand broadcast along the other's axes is the gain."""

    def __init__(self, kind: str, demodulate: bool, cin: int = 4, cout: int = 6, k: int = 3) -> None:
        super().__init__()
        self.kind, self.demodulate, self.k = kind, demodulate, k
        self.weight = nn.Parameter(torch.randn((1, cout, cin, k, k) if kind == "conv" else (1, cout, cin)))
        self.modulation = nn.Linear(8, cin)
        self.gain = nn.Parameter(torch.ones(cout))
        self.keys = nn.Linear(cout, cout)

    def example_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs(2)

    def inputs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        cin = self.weight.shape[2]
        return torch.zeros((batch, cin, 5, 5) if self.kind == "conv" else (batch, 5, cin)), torch.zeros(batch, 8)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        b, cout, cin = x.shape[0], self.weight.shape[1], self.weight.shape[2]
        s = self.modulation(style)
        w = self.weight * (s.view(b, 1, cin, 1, 1) if self.kind == "conv" else s.view(b, 1, cin))
        if self.demodulate:
            axes = [2, 3, 4] if self.kind == "conv" else [2]
            w = w * torch.rsqrt(w.pow(2).sum(axes) + 1e-8).view(b, cout, *([1] * (w.ndim - 2)))
        if self.kind == "conv":
            y = F.conv2d(x.reshape(1, b * cin, *x.shape[2:]), w.view(b * cout, cin, self.k, self.k), padding=1, groups=b)
            y = y.view(b, cout, -1).mT
        else:
            y = torch.bmm(x, w.mT)
        return (y * self.gain) @ self.keys(y).mT


@pytest.mark.parametrize("kind", ["conv", "bmm"])
@pytest.mark.parametrize("demodulate", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_a_kernel_modulated_per_example_is_a_weight(kind, demodulate, batch):
    """The modulated kernel was "multiplies activations in mul: a scale (traced)", undecayed, where the same
    layer with the style applied to the input instead (``F.conv2d(x * s, weight)``) is a weight: the style
    is broadcast along the kernel's own axes, and the product is the matrix operand of the convolution."""
    model = ModulatedKernel(kind, demodulate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DecayWarning)
        plans = [decaykit.plan(model, 0.1, example_inputs=how) for how in (False, None, model.inputs(batch))]
    assert all(p["weight"].decay for p in plans), [p["weight"].reason for p in plans]
    for p in plans[1:]:
        assert p["weight"].role == "weight" and p["weight"].reason == (
            f"multiplied in mul by activations broadcast along its axes, then matrix operand of "
            f"{'F.conv2d' if kind == 'conv' else 'bmm'}: a kernel modulated per example (traced)"), p["weight"].reason
        assert (p["gain"].role, p["gain"].decay) == ("scale", False), p["gain"].reason


class FeatureTokenizer(nn.Module):
    """FT-Transformer's numerical tokenizer: ``x[..., None] * W + b``, one ``Linear(1, d)`` per feature, as rtdl
    writes it (``form="mul"``) or as ``torch.addcmul(b, W, x[..., None])`` (rtdl_num_embeddings); with
    ``categorical``, tokens of looked-up categories joined after it, as FTTransformer takes ``(x_cont, x_cat)``.
    Beside it a Planar flow's ``u * tanh(w·z + b0)``: ``u`` maps one number per example to a vector."""

    def __init__(self, form: str, features: int, d: int, categorical: bool) -> None:
        super().__init__()
        self.form, self.categorical = form, categorical
        self.weight = nn.Parameter(torch.randn(features, d))
        self.bias = nn.Parameter(torch.randn(features, d))
        self.categories = nn.Embedding(5, d)
        self.w = nn.Parameter(torch.randn(1, d))
        self.u = nn.Parameter(torch.randn(1, d))

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return self.inputs(2)

    def inputs(self, batch: int) -> tuple[torch.Tensor, ...]:
        x = torch.zeros(batch, self.weight.shape[0])
        return (x, torch.zeros(batch, 2, dtype=torch.long)) if self.categorical else (x,)

    def forward(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.form == "mul":
            tokens = x[..., None] * self.weight + self.bias[None]
        else:
            tokens = torch.addcmul(self.bias, self.weight, x[..., None])
        if ids is not None:
            tokens = torch.cat([tokens, self.categories(ids)], dim=1)
        z = tokens.mean(1)
        return z + self.u * torch.tanh((z * self.w).sum(-1, keepdim=True))


@pytest.mark.parametrize("form", ["mul", "addcmul"])
@pytest.mark.parametrize(("features", "d"), [(1, 4), (3, 2), (3, 5)])
@pytest.mark.parametrize("categorical", [False, True])
def test_an_outer_product_with_activations_makes_a_weight_and_its_bias(form, features, d, categorical):
    """The tokenizer's weight was "multiplies activations in mul: a scale", undecayed, and with categorical
    tokens its bias "a (1,F,d) table": a position table, decayed; Planar's u "a scale" beside its decayed
    w. Each entry of the activations is broadcast along the parameter's last axis: a map R -> R^d per
    feature, whose weight decays and whose bias does not, as for ``Linear(1, d)``."""
    model = FeatureTokenizer(form, features, d, categorical)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DecayWarning)
        plans = [decaykit.plan(model, 0.1, example_inputs=how) for how in (False, None, model.inputs(3))]
    # one feature: a (1, d) weight the shape alone cannot tell from a gain, left undecayed without a trace
    traced = plans[1:] if features == 1 else plans
    assert all(p["weight"].decay and not p["bias"].decay for p in traced), [p["weight"].reason for p in plans]
    for p in plans[1:]:
        assert (p["weight"].role, p["bias"].role, p["u"].role, p["w"].role) == ("weight", "bias", "weight", "weight")
        outer = ("multiplies activations in {} that have one entry along its last axis: an outer product, the weight "
                 "of a map from each entry (x[..., None] * W) (traced)")
        assert (p["weight"].reason, p["u"].reason) == (outer.format(form), outer.format("mul"))
        mapped = (f"added in {'add' if form == 'mul' else form} to the outer product of activations and a weight, "
                  "along that weight's axes: its bias (traced)")
        per_channel = "added to activations in add: a bias (traced)"  # one feature: a (1, d) bias, per channel
        assert p["bias"].reason in ((mapped, per_channel) if features == 1 else (mapped,)), p["bias"].reason


class PickedRows(nn.Module):
    """Rows of a table picked by ``table[idx]``, then met by an elementwise op: a hash grid's features hashed
    from the input's coordinates and blended by interpolation weights (instant-NGP, nerfstudio's torch
    fallback), per-task vectors added to x, a biased matrix factorisation's per-user bias, a VQ-VAE
    codebook's nearest rows behind the straight-through estimator (``z + (z_q - z).detach()``). Beside them
    an expert's bias picked by a router's choice, which stays a bias."""

    def __init__(self, rows: int, d: int, raw_codebook: bool) -> None:
        super().__init__()
        self.grid = nn.Parameter(torch.randn(rows, d))
        self.tasks = nn.Parameter(torch.randn(3, d))
        self.user_bias = nn.Parameter(torch.zeros(rows))
        self.codebook = nn.Parameter(torch.randn(rows, d)) if raw_codebook else nn.Embedding(rows, d)
        self.encoder = nn.Linear(d, d)
        self.router = nn.Linear(d, 3)
        self.expert_bias = nn.Parameter(torch.zeros(3, d))

    def example_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.inputs(2)

    def inputs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.grid.shape[1]
        return torch.zeros(batch, 5, d), torch.zeros(batch, dtype=torch.long), torch.zeros(batch, dtype=torch.long)

    def forward(self, x: torch.Tensor, task: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        codebook = self.codebook if isinstance(self.codebook, torch.Tensor) else self.codebook.weight
        cell = torch.floor(x * 4).long()
        hashed = (cell[..., 0] * 2654435761 ^ cell[..., -1] * 805459861) % self.grid.shape[0]
        offset = (x * 4 - torch.floor(x * 4))[..., :1]
        features = self.grid[hashed] * offset + self.grid[(hashed + 1) % self.grid.shape[0]] * (1 - offset)
        h = x + features + self.tasks[task][:, None]
        z = self.encoder(h)
        nearest = torch.cdist(z.flatten(0, 1), codebook).argmin(-1)
        z_q = codebook[nearest].view_as(z)
        z = z + (z_q - z).detach()
        choice = self.router(z).argmax(-1)
        return z + self.expert_bias[choice] + self.user_bias[user][:, None, None]


@pytest.mark.parametrize(("rows", "d"), [(8, 4), (16, 3)])
@pytest.mark.parametrize("raw_codebook", [False, True])
def test_rows_picked_by_an_index_from_the_inputs_or_the_table_itself_are_a_lookup(rows, d, raw_codebook):
    """The hash grid was "multiplies activations in mul: a scale", the task table and the per-user bias "a
    bias", the codebook (an nn.Embedding) "added to activations in sub: a bias", all undecayed, where the
    same lookups written with F.embedding are embeddings: one role whatever the spelling of the pick."""
    model = PickedRows(rows, d, raw_codebook)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DecayWarning)
        plans = [decaykit.plan(model, 0.1, example_inputs=how) for how in (None, model.inputs(3))]
    codebook = "codebook" if raw_codebook else "codebook.weight"
    inputs = "rows picked by an index computed from the inputs alone, then used in {}: an embedding lookup (traced)"
    for p in plans:
        assert {n: (p[n].role, p[n].decay) for n in ("grid", "tasks", "user_bias", codebook, "expert_bias")} == {
            "grid": ("embedding", True), "tasks": ("embedding", True), "user_bias": ("embedding", True),
            codebook: ("embedding", True), "expert_bias": ("bias", False)}
        assert (p["grid"].reason, p["tasks"].reason) == (inputs.format("mul"), inputs.format("add"))
        assert p[codebook].reason.startswith("rows picked by an index computed from the table itself (its rows "
                                             "nearest to activations), then used in "), p[codebook].reason
    assert not decaykit.plan(model, 0.1, decay_embeddings=False, example_inputs=model.inputs(2))["grid"].decay
    structure = decaykit.plan(model, 0.1, example_inputs=False)  # the shape alone: an nn.Embedding is one too
    assert raw_codebook or (structure[codebook].role, structure[codebook].decay) == ("embedding", True)


class VectorIntoMatrix(nn.Module):
    """Vectors fed alone through a nonlinear map, then laid into a matrix: Glow's LU 1x1 conv keeps the
    log-scales ``w_s`` of its diagonal (``U + diag(exp(w_s))``), nflows' LULinear an inverse-softplus
    diagonal, a learned rotation its angle through cos and sin. Beside them a whole matrix ``exp(log_w)``,
    a positive weight, and the LU factors themselves."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.lower = nn.Parameter(torch.randn(c, c))
        self.upper = nn.Parameter(torch.randn(c, c))
        self.w_s = nn.Parameter(torch.zeros(c))
        self.diag = nn.Parameter(torch.zeros(c))
        self.theta = nn.Parameter(torch.zeros(1))
        self.log_w = nn.Parameter(torch.zeros(c, c))

    def example_inputs(self) -> torch.Tensor:
        return torch.zeros(2, self.w_s.shape[0], 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.w_s.shape[0]
        lower = self.lower.tril(-1) + torch.eye(c)
        glow = lower @ (self.upper.triu(1) + torch.diag(torch.exp(self.w_s)))
        y = F.conv2d(x, glow[..., None, None]).flatten(2).mT  # (B, HW, C)
        y = F.linear(y, self.upper.triu(1) + torch.diag(F.softplus(self.diag)))
        cos, sin = torch.cos(self.theta), torch.sin(self.theta)
        rotation = torch.stack([torch.cat([cos, -sin]), torch.cat([sin, cos])])
        y = torch.cat([y[..., :2] @ rotation.T, y[..., 2:]], -1) if c >= 2 else y
        return F.linear(y, self.log_w.exp())


@pytest.mark.parametrize("c", [2, 3, 5])
def test_a_vector_through_a_nonlinear_map_into_a_matrix_is_a_state(c):
    """``w_s``, the softplus diagonal and the angle were "matrix operand of F.conv2d, after exp (traced)", decayed
    toward |s| = 1, a diagonal of softplus(0) and a rotation of 0, none of them "off"."""
    model = VectorIntoMatrix(c)
    for how in (None, torch.zeros(3, c, 4, 4)):
        p = decaykit.plan(model, 0.1, example_inputs=how)
        assert {n: (p[n].role, p[n].decay) for n in ("w_s", "diag", "theta", "lower", "upper", "log_w")} == {
            "w_s": ("state", False), "diag": ("state", False), "theta": ("state", False), "lower": ("weight", True),
            "upper": ("weight", True), "log_w": ("weight", True)}, [p[n].reason for n in ("w_s", "diag", "theta")]
        assert p["log_w"].reason == "matrix operand of F.linear, after exp (traced)"
    structure = decaykit.plan(model, 0.1, example_inputs=False)  # per channel: the shape leaves them undecayed too
    assert not any(structure[n].decay for n in ("w_s", "diag", "theta"))


class VmapEnsemble(nn.Module):
    """PyTorch's model-ensembling recipe: members stacked by ``torch.func.stack_module_state``, registered as
    parameters so an optimizer trains them, and run at once by ``torch.vmap(functional_call(...))``."""

    def __init__(self, members: int, use_vmap: bool = True) -> None:
        super().__init__()
        models = [nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 1)) for _ in range(members)]
        stacked, _ = torch.func.stack_module_state(models)
        self.params = nn.ParameterDict({k.replace(".", "_"): nn.Parameter(v) for k, v in stacked.items()})
        self.skeleton = [models[0].to("meta")]  # a list: no parameters of its own
        self.use_vmap = use_vmap

    def example_inputs(self) -> torch.Tensor:
        return torch.zeros(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = {k.replace("_", ".", 1): v for k, v in self.params.items()}
        def call(params, inputs):
            return torch.func.functional_call(self.skeleton[0], params, (inputs,))
        if self.use_vmap:
            return torch.vmap(call, in_dims=(0, None))(state, x)
        return torch.stack([call({k: v[i] for k, v in state.items()}, x) for i in range(self.params["0_weight"].shape[0])])


@pytest.mark.parametrize("members", [2, 3])
@pytest.mark.parametrize("use_vmap", [True, False])
def test_an_ensemble_run_under_vmap_is_traced_through_it(members, use_vmap):
    """Under vmap every stacked tensor was "(structural: not reached by the traced forward)", with a warning that
    the forward did not reach them, and the stacked LayerNorm gains (E, C) were decayed by their shape."""
    model = VmapEnsemble(members, use_vmap)
    for how in (None, torch.zeros(5, 4)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", DecayWarning)
            p = decaykit.plan(model, 0.1, example_inputs=how)
        assert {n: (p[n].role, p[n].decay) for n in ("params.0_weight", "params.0_bias", "params.1_weight", "params.1_bias", "params.3_weight")} == {
            "params.0_weight": ("weight", True), "params.0_bias": ("bias", False), "params.1_weight": ("norm", False),
            "params.1_bias": ("norm", False), "params.3_weight": ("weight", True)}, [d.reason for d in p]
        assert all(d.reason.endswith("(traced)") for d in p)


@pytest.mark.parametrize("task", [torch.tensor(1), torch.tensor([1]), torch.tensor(2, dtype=torch.int32)])
@pytest.mark.parametrize("checks", [False, True])
def test_a_0d_index_and_an_assert_on_values_do_not_stop_the_trace(task, checks):
    """A 0-d task id stopped the pass at "Tensor.item() cannot be called on meta tensors"; an assert on the
    input's values, answered False, at its own message ("t must be strictly increasing"): both blamed a valid input."""
    model = TaskTable(checks)
    for how in (None, (torch.zeros(4, 8), task)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", DecayWarning)
            p = decaykit.plan(model, 0.1, example_inputs=how)
        assert (p["tasks"].role, p["tasks"].decay, p["rate"].role) == ("embedding", True, "scale"), p["tasks"].reason
        assert p["tasks"].reason.endswith("(traced)") and p["rate"].reason.endswith("(traced)")


def test_a_stop_right_after_a_test_of_a_value_names_that_test():
    """The pass answers a test of a value False; what the model raises on that made-up answer names the test."""
    class Checked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not (x > -1e9).all():
                raise ValueError("inputs out of range")
            return self.fc(x)

    stopped = run_trace(Checked(), torch.zeros(2, 4)).stopped
    assert stopped is not None and stopped.startswith("ValueError: inputs out of range, raised right after a test of a "
                                                      "tensor's value, 'not (x > -1e9).all()' (test_usage_trace.py:")
    assert stopped.endswith("that the pass answered False (fake tensors hold no values)"), stopped


def test_a_gain_spread_by_activations_then_multiplied_elementwise_by_einsum_stays_a_gain():
    """Only a matrix operand makes a modulated product a kernel: an einsum that sums out none of its indices
    (``"btc,btc->btc"``) multiplies elementwise, and the per-channel gain stays a gain."""
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.gain = nn.Parameter(torch.ones(4, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            gate = self.fc(x).mean(1, keepdim=True)  # (B, 1, 4): broadcast along the gain's rows
            return torch.einsum("bcn,bcn->bcn", self.gain * gate, x.expand(-1, 4, -1))

    p = decaykit.plan(Gated(), 0.1, example_inputs=torch.zeros(2, 1, 4))
    assert (p["gain"].role, p["gain"].decay) == ("scale", False), p["gain"].reason


@pytest.mark.parametrize("experts", [2, 4])
def test_a_per_expert_bias_stays_a_bias_when_the_expert_outputs_are_flattened(experts):
    """Batched experts (E, capacity, C) with a bias (E, 1, C), their outputs then flattened to (E*capacity, C):
    the bias varies along the experts, no table of the tokens, though its sum is folded like PatchTST's."""
    class Experts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(experts, 4, 4))
            self.b = nn.Parameter(torch.zeros(experts, 1, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, 4), dispatched as (E, B*T // E, 4)
            h = torch.bmm(x.reshape(experts, -1, 4), self.w) + self.b
            return h.view(-1, 4).view_as(x)

    for batch in (2, 4):
        p = decaykit.plan(Experts(), 0.1, example_inputs=torch.zeros(batch, 6, 4))
        assert (p["b"].role, p["b"].decay, p["w"].role) == ("bias", False, "weight"), p["b"].reason


class LearnedQueryPool(nn.Module):
    """Attention pooling with a learned query and a hand-written qk-norm (MONAI's and lucidrains' NaViT):
    ``F.normalize(x) * scale * gamma`` on the query, computed from parameters alone, and on the keys."""

    def __init__(self, d: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.randn(d))
        self.to_q, self.to_kv = nn.Linear(d, d, bias=False), nn.Linear(d, 2 * d, bias=False)
        self.q_gamma, self.k_gamma = nn.Parameter(torch.ones(heads, 1, d // heads)), nn.Parameter(torch.ones(heads, 1, d // heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731
        q = F.normalize(split(self.to_q(self.query.expand(x.shape[0], 1, -1))), dim=-1) * 2.0 * self.q_gamma
        k, v = map(split, self.to_kv(x).chunk(2, -1))
        return F.scaled_dot_product_attention(q, F.normalize(k, dim=-1) * 2.0 * self.k_gamma, v)


class HandNormLatents(nn.Module):
    """Learned latents through a norm written out (Llama's / T5's RMSNorm, or a LayerNorm by hand) before they
    become queries (a Perceiver resampler)."""

    def __init__(self, rms: bool, d: int = 8) -> None:
        super().__init__()
        self.rms = rms
        self.latents, self.g, self.b = nn.Parameter(torch.randn(4, d)), nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))
        self.q, self.kv = nn.Linear(d, d), nn.Linear(d, 2 * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.latents
        if self.rms:
            z = self.g * (z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + 1e-6))
        else:
            z = (z - z.mean(-1, keepdim=True)) / torch.sqrt(z.var(-1, keepdim=True) + 1e-5) * self.g + self.b
        k, v = self.kv(x).chunk(2, -1)
        return F.scaled_dot_product_attention(self.q(z).expand(x.shape[0], -1, -1), k, v)


def test_a_norm_written_out_on_parameters_is_a_norm():
    """A gain on a query normalised from parameters alone was "a learned token" (or, with ``q @ k.mT``, "matrix
    operand"), decayed, while the key side's was a norm gain; latents behind a hand-written RMSNorm were "fed alone
    through pow: a state parameter", undecayed, where ``nn.RMSNorm`` makes them learned tokens."""
    pool = decaykit.plan(LearnedQueryPool(), 0.1, example_inputs=torch.zeros(2, 5, 8))
    for name in ("q_gamma", "k_gamma"):
        assert (pool[name].role, pool[name].decay) == ("norm", False), pool[name].reason
    for rms in (True, False):
        p = decaykit.plan(HandNormLatents(rms), 0.1, example_inputs=torch.zeros(2, 5, 8))
        assert (p["latents"].role, p["latents"].decay) == ("token", True), p["latents"].reason
        assert not p["g"].decay, p["g"].reason
        if not rms:  # was "input of F.linear: a learned token", decayed
            assert (p["b"].role, p["b"].decay) == ("norm", False), p["b"].reason


class AxialTables(nn.Module):
    """Learned position tables that vary along one axis of a grid and are broadcast along another: an MSA's row
    table (1, R, 1, D) on embedded (B, R, L) ids (ESM-MSA), a video's time table (1, T, 1, D) on (B, T, N, D),
    and a conv grid's (1, C, H, 1) and (1, C, 1, W) (axial_attention); beside them a per-channel (1, C, 1, 1)
    bias and a per-head (H, D) bias on heads split from the channels, which stay biases."""

    def __init__(self, kind: str, d: int = 8) -> None:
        super().__init__()
        self.kind = kind
        self.embed, self.inp, self.conv = nn.Embedding(10, d), nn.Linear(4, d), nn.Conv2d(3, d, 1)
        self.row, self.time = nn.Parameter(torch.zeros(1, 16, 1, d)), nn.Parameter(torch.zeros(1, 3, 1, d))
        self.height, self.width = nn.Parameter(torch.zeros(1, d, 4, 1)), nn.Parameter(torch.zeros(1, d, 1, 6))
        self.channel, self.head = nn.Parameter(torch.zeros(1, d, 1, 1)), nn.Parameter(torch.zeros(2, d // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "msa":  # x: (B, R, L) ids
            h = self.embed(x) + self.row[:, : x.shape[1]]
        elif self.kind == "video":  # x: (B, T, N, 4)
            h = self.inp(x) + self.time
        else:  # x: (B, 3, H, W)
            h = (self.conv(x) + self.height + self.width + self.channel).permute(0, 2, 3, 1)
        return (h.unflatten(-1, (2, -1)) + self.head).flatten(-2)


@pytest.mark.parametrize("kind, example", [("msa", torch.zeros(2, 3, 5, dtype=torch.long)),
                                           ("video", torch.zeros(2, 3, 5, 4)), ("grid", torch.zeros(2, 3, 4, 6))])
def test_an_axial_position_table_is_a_position_table(kind, example):
    """A table broadcast along one token axis of the activations and varying along another was "a bias",
    undecayed, where the same table flattened with the grid is a position table."""
    p = decaykit.plan(AxialTables(kind), 0.1, example_inputs=example)
    tables = {"msa": ["row"], "video": ["time"], "grid": ["height", "width"]}[kind]
    for name in tables:
        assert (p[name].role, p[name].decay) == ("position", True), p[name].reason
        assert p[name].reason.endswith("an axial position table (traced)"), p[name].reason
    assert (p["head"].role, p["head"].decay) == ("bias", False), p["head"].reason
    if kind == "grid":
        assert (p["channel"].role, p["channel"].decay) == ("bias", False), p["channel"].reason


def test_a_distribution_built_in_forward_does_not_stop_the_trace():
    """``Normal(...)`` checks its arguments' values; on tensors that hold none it found them "invalid" and the pass
    stopped, so what came after was decided by shape, with a message blaming the input."""
    class Actor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mu, self.log_std = nn.Linear(4, 2), nn.Parameter(torch.zeros(2))
            self.head, self.log_temp = nn.Parameter(torch.randn(2, 3)), nn.Parameter(torch.zeros(2, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = torch.distributions.Normal(self.mu(x), self.log_std.exp(), validate_args=None).rsample()
            return (a @ self.head)[:, None] * self.log_temp.exp()

    before = torch.distributions.Distribution._validate_args
    with warnings.catch_warnings():
        warnings.simplefilter("error", DecayWarning)
        p = decaykit.plan(Actor(), 0.1, example_inputs=torch.zeros(5, 4))
    assert {n: (p[n].role, p[n].decay) for n in ("head", "log_temp")} == {"head": ("weight", True),
                                                                         "log_temp": ("state", False)}, [d.reason for d in p]
    assert torch.distributions.Distribution._validate_args == before


@pytest.mark.parametrize("form", ["mm", "linear"])
def test_a_log_std_squared_against_squared_activations_is_a_state(form):
    """gSDE's ``mm(latent ** 2, exp(log_std) ** 2)`` (stable-baselines3) and the local reparametrisation's
    ``F.linear(x ** 2, exp(log_sigma) ** 2)`` propagate variances: ``log_std`` was "matrix operand of mm, after pow",
    decayed toward std = 1, and its reason had lost the ``exp``."""
    class Noise(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.latent, self.log_std = nn.Linear(4, 6), nn.Parameter(torch.zeros(6, 2))
            self.log_w = nn.Parameter(torch.zeros(2, 6))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.latent(x)
            var = torch.mm(h ** 2, self.log_std.exp() ** 2) if form == "mm" else F.linear(h ** 2, self.log_std.mT.exp() ** 2)
            return var + F.linear(h, self.log_w.exp())  # a positive weight stays a weight

    p = decaykit.plan(Noise(), 0.1, example_inputs=torch.zeros(3, 4))
    assert (p["log_std"].role, p["log_std"].decay) == ("state", False), p["log_std"].reason
    assert "exp" in p["log_std"].reason and (p["log_w"].role, p["log_w"].decay) == ("weight", True), p["log_w"].reason


class PairwiseCP(nn.Module):
    """A CP-factorised weight W[i,o,x,y] = sum_r A[i,r] B[o,r] C[x,r] D[y,r] applied along opt_einsum's pairwise
    path for ``'bixy,ir,or,xr,yr->boxy'`` (neuraloperator's TFNO, tensorly): C and D multiply the activations
    elementwise first, the rank axis is summed only by the last ``tensordot``. Beside it gains that a later
    contraction with a weight does not make factors: a per-channel ``g`` before ``@ W``, a per-head ``h`` before a
    per-head weight."""

    def __init__(self, c: int = 4, r: int = 5) -> None:
        super().__init__()
        self.A, self.B = nn.Parameter(torch.randn(c, r)), nn.Parameter(torch.randn(c, r))
        self.C, self.D = nn.Parameter(torch.randn(3, r)), nn.Parameter(torch.randn(2, r))
        self.g, self.W = nn.Parameter(torch.ones(c)), nn.Parameter(torch.randn(c, c))
        self.h, self.per_head = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.randn(2, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (b, i, x, y)
        ax = torch.tensordot(self.A, x, dims=((0,), (1,)))  # (r, b, x, y)
        dc = torch.einsum("ca,ba->cab", self.D, self.C)  # (y, r, x)
        prod = torch.einsum("dbc,bacd->dbca", dc, ax)  # (y, r, x, b)
        y = torch.tensordot(self.B, prod, dims=((1,), (1,))).permute(3, 0, 2, 1)  # (b, o, x, y)
        t = y.flatten(2).mT  # (b, n, c)
        heads = (t * self.g).unflatten(-1, (2, 2)) * self.h
        return torch.einsum("bnhd,hde->bnhe", heads, self.per_head).flatten(-2) + (t * self.g) @ self.W


def test_cp_factors_contracted_pairwise_are_weights():
    """C and D were "multiplies activations in einsum: a scale", undecayed, where A and B (and the one-call einsum)
    were weights."""
    model = PairwiseCP()
    model(torch.zeros(2, 4, 3, 2))  # runs for real
    p = decaykit.plan(model, 0.1, example_inputs=torch.zeros(2, 4, 3, 2))
    assert all(d.reason.endswith("(traced)") for d in p), [d.reason for d in p]
    got = {n: (p[n].role, p[n].decay) for n in ("A", "B", "C", "D", "g", "h", "W")}
    assert got == {"A": ("weight", True), "B": ("weight", True), "C": ("weight", True), "D": ("weight", True),
                   "g": ("scale", False), "h": ("scale", False), "W": ("weight", True)}, [d.reason for d in p]


def test_a_stop_with_a_bare_message_on_the_made_input_says_what_was_fed():
    """A model that refused decaykit's own input with an empty assert or a bare key ("AssertionError: ", "KeyError:
    2", MONAI's UNETR, ESM's MSA Transformer) left the user with nothing to act on: the input's shapes say why."""
    class Picky(nn.Module):
        def __init__(self, error: type[Exception]) -> None:
            super().__init__()
            self.error, self.fc, self.gain = error, nn.Linear(32, 4), nn.Parameter(torch.ones(4, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.ndim != 3:
                raise self.error() if self.error is AssertionError else self.error(2)
            return self.fc(x) @ self.gain

    for error in (AssertionError, KeyError):
        with pytest.warns(DecayWarning) as caught:
            decaykit.plan(Picky(error), 0.1)
        text = " ".join(str(w.message) for w in caught)
        assert f"{error.__name__}:" in text and "on the input decaykit made for it: (2, 32) float32" in text, text


class StoreBacked(nn.Module):
    """A module whose forward fetches its tensors from a store outside its attributes (pyro's param store hands
    back the very tensor the module registered); with ``replaced``, a different tensor in their place."""

    def __init__(self, replaced: bool) -> None:
        super().__init__()
        self.scale_raw = nn.Parameter(torch.zeros(3, 4))
        self.store = {"scale_raw": nn.Parameter(torch.zeros(3, 4)) if replaced else self.scale_raw}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.softplus(self.store["scale_raw"])


def test_a_tensor_fetched_past_the_module_attributes_is_traced_as_itself():
    """pyro's AutoNormal scales were "not reached by the traced forward" (decided by shape, a (16, 3) one decayed):
    the forward used the real tensor, not the shape-only one decaykit put in the module's place."""
    p = decaykit.plan(StoreBacked(replaced=False), 0.1, example_inputs=torch.zeros(2, 3, 4))
    assert (p["scale_raw"].role, p["scale_raw"].decay) == ("state", False) and p["scale_raw"].reason.endswith("(traced)")
    with pytest.warns(DecayWarning, match="it used 1 learnable tensors that are not the model's own in their place"):
        decaykit.plan(StoreBacked(replaced=True), 0.1, example_inputs=torch.zeros(2, 3, 4))


def test_a_tensor_used_only_among_learned_tensors_is_not_called_unreached():
    """A pyro guide's ``loc`` makes its sample with its scale and noise, never with the input: the trace said "not
    reached by the traced forward", and a user looked for an unused branch."""
    class Guide(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.loc, self.scale_raw = nn.Parameter(torch.zeros(3, 4)), nn.Parameter(torch.zeros(3, 4))

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"w": self.loc + torch.randn_like(self.loc) * F.softplus(self.scale_raw)}

    with pytest.warns(DecayWarning, match="used them only with learned tensors and constants, never with its input"):
        p = decaykit.plan(Guide(), 0.1, example_inputs=torch.zeros(2, 4))
    assert "used by the traced forward only with learned tensors and constants" in p["loc"].reason, p["loc"].reason


def test_a_dict_whose_keys_are_no_arguments_is_the_one_argument_and_a_refused_list_says_how_it_was_passed():
    """An observation dict is the model's one argument (its keys are not forward's parameters): it is passed whole,
    where a dict of keyword arguments (input_ids=...) is spread. A list is positional arguments; where the model
    refuses that, the warning says how it was passed and to give (example_inputs,)."""
    class Policy(nn.Module):
        def __init__(self):
            super().__init__()
            self.vec, self.img = nn.Linear(4, 8), nn.Linear(6, 8)
            self.temperature = nn.Parameter(torch.zeros(8))

        def forward(self, obs):
            parts = obs.values() if isinstance(obs, dict) else obs
            return sum(layer(x) for layer, x in zip((self.vec, self.img), parts)) * self.temperature.exp()

    obs = {"vec": torch.zeros(2, 4), "img": torch.zeros(2, 6)}
    assert decaykit.plan(Policy(), 0.1, example_inputs=obs)["temperature"].reason.endswith("(traced)")

    class Spread(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)
            self.temperature = nn.Parameter(torch.zeros(4))

        def forward(self, vec, goal):
            return self.proj(vec + goal) * self.temperature.exp()

    spread = {"vec": torch.zeros(2, 4), "goal": torch.zeros(2, 4)}
    assert decaykit.plan(Spread(), 0.1, example_inputs=spread)["temperature"].role == "state"  # keywords, spread
    with warnings.catch_warnings():  # a collated batch's key the forward does not take is left out
        warnings.simplefilter("error", decaykit.DecayWarning)
        batch = {**spread, "labels": torch.zeros(2, dtype=torch.long)}
        assert decaykit.plan(Spread(), 0.1, example_inputs=batch)["temperature"].role == "state"
    with pytest.warns(decaykit.DecayWarning, match=r"example_inputs was passed a list, as positional arguments, "
                                                   r"model\(\*example_inputs\): give \(example_inputs,\)"):
        decaykit.plan(Policy(), 0.1, example_inputs=list(obs.values()))
    assert decaykit.plan(Policy(), 0.1, example_inputs=(list(obs.values()),))["temperature"].role == "state"


def test_an_rms_norm_written_with_a_power_of_minus_a_half_is_a_norm():
    """Gemma3n's RMSNorm: x * torch.pow(x.pow(2).mean(-1) + eps, -0.5), then the gain: rsqrt written as a power."""
    class PowNorm(nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x):
            return x * torch.pow(x.pow(2).mean(-1, keepdim=True) + 1e-6, -0.5) * self.weight

    model = nn.Sequential(nn.Linear(8, 8), PowNorm(8), nn.Linear(8, 2))
    d = decaykit.plan(model, 0.1, example_inputs=torch.zeros(2, 8))["1.weight"]
    assert (d.role, d.decay, d.reason) == ("norm", False, "multiplies normalised activations in mul: a norm gain (traced)")
