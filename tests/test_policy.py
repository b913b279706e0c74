"""The default policy decides from what each parameter is, on models nobody here wrote."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import decaykit
from decaykit import DecayError, DecayWarning
from decaykit.models import ConvNeXt, TinyGPT, TinyViT, resnet50

from hf_models import HF_MODELS, bert, gpt2, llama, t5


def decayed(p: decaykit.Plan) -> dict[str, bool]:
    return {d.name: d.decay for d in p if d.trainable}


def reasons(p: decaykit.Plan) -> dict[str, str]:
    return {d.name: d.reason for d in p}


# --- real third-party models -------------------------------------------------------------


def test_gpt2_decisions_conv1d_layernorm_tied_head():
    p = decaykit.plan(gpt2(), 0.1)
    for d in p:
        if d.module_type == "LayerNorm":
            assert not d.decay and d.reason == "norm:LayerNorm", d.name
        elif d.module_type == "Conv1D":
            assert d.decay == d.name.endswith(".weight"), d.name
        elif d.module_type == "Embedding":
            assert d.decay and d.role == "embedding", d.name
    wte = p["transformer.wte.weight"]
    assert wte.aliases == ("lm_head.weight",)  # tied head: one tensor, listed once
    assert p["lm_head.weight"] is wte
    assert sum(d.name == "lm_head.weight" for d in p) == 0
    assert {d.module_type for d in p} == {"Embedding", "LayerNorm", "Conv1D"}
    text, html = str(p), p._repr_html_()  # the text and the notebook view say it too, not only --json
    line = "tied: transformer.wte.weight is also lm_head.weight (one tensor, listed and counted once)"
    assert line in text.splitlines() and line in html


@pytest.mark.parametrize("tied", [False, True])
def test_llama_rmsnorm_never_decayed(tied):
    model = llama(tied=tied)
    p = decaykit.plan(model, 0.1)
    norms = [d for d in p if d.module_type == "LlamaRMSNorm"]
    assert len(norms) == 2 * 2 + 1  # two per layer + the final norm
    assert all(not d.decay and d.reason == "norm:LlamaRMSNorm" for d in norms)
    linears = [d for d in p if d.module_type == "Linear"]
    assert linears and all(d.decay and d.weight_decay == 0.1 for d in linears)
    embed = p["model.embed_tokens.weight"]
    assert embed.decay and embed.aliases == (("lm_head.weight",) if tied else ())
    # every tensor exactly once, however often it is named
    ids = [id(d.param) for d in p]
    assert len(ids) == len(set(ids)) == len({id(q) for q in model.parameters()})


def test_t5_relative_attention_bias_is_an_embedding_and_t5layernorm_a_norm():
    p = decaykit.plan(t5(), 0.1)
    rel = [d for d in p if "relative_attention_bias" in d.name]
    assert len(rel) == 2  # first block of encoder and of decoder
    assert all(d.role == "embedding" and d.decay for d in rel)  # HF's bare 'bias' regex gets this wrong
    norms = [d for d in p if d.module_type == "T5LayerNorm"]
    assert norms and all(not d.decay for d in norms)
    shared = p["shared.weight"]
    assert set(shared.aliases) >= {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    # with embeddings excluded, the relative attention table follows (it is a table, not a bias)
    q = decaykit.plan(t5(), 0.1, decay_embeddings=False)
    assert all(not q[d.name].decay for d in rel)
    assert all(q[d.name].decay for d in p if d.module_type == "Linear")


def test_bert_layernorm_named_LayerNorm_and_prediction_bias():
    p = decaykit.plan(bert(), 0.1)
    for d in p:
        if d.module_type == "LayerNorm":
            assert not d.decay
        if d.module_type == "Linear":
            assert d.decay == d.name.endswith(".weight"), d.name
    head_bias = p["cls.predictions.bias"]
    assert not head_bias.decay and head_bias.role == "bias"
    assert p["bert.embeddings.word_embeddings.weight"].aliases == ("cls.predictions.decoder.weight",)


@pytest.mark.parametrize("name", sorted(HF_MODELS))
def test_every_hf_parameter_is_decided_once_and_explained(name):
    model = HF_MODELS[name]()
    p = decaykit.plan(model, 0.05)
    assert len(p) == len(list(model.parameters()))
    for d in p:
        assert d.reason and d.role in {"weight", "bias", "norm", "embedding", "scale", "matrix"}
        assert d.weight_decay == (0.05 if d.decay else 0.0)
        # nothing 1-D is ever decayed, nothing that is a 2-D+ weight of a known layer escapes
        if len(d.shape) <= 1:
            assert not d.decay, d.name


# --- models written here ---------------------------------------------------------------


def test_seed_scenario_resnet50_every_batchnorm_and_bias_undecayed():
    model = resnet50()
    for policy in ("seed", "decaykit"):
        p = decaykit.plan(model, 2e-5, policy=policy)
        for d in p:
            if d.module_type == "BatchNorm2d" or d.name.endswith(".bias"):
                assert not d.decay, (policy, d.name)
            else:
                assert d.module_type in {"Conv2d", "Linear"} and d.decay, (policy, d.name)
        assert sum(d.decay for d in p) == 53 + 1  # 53 convolutions and the fc weight


def test_seed_bug_reproduced_and_fixed():
    """The notebook's `if` sits outside the loop: only the last parameter is classified."""
    model = resnet50()

    def seed_as_printed(net, l2_value, skip_list=()):
        decay, no_decay = [], []
        for name, param in net.named_parameters():  # noqa: B007 (the bug itself)
            if not param.requires_grad:
                continue
        if len(param.shape) == 1 or name.endswith(".bias") or name in skip_list:
            no_decay.append(param)
        else:
            decay.append(param)
        return [{"params": no_decay, "weight_decay": 0}, {"params": decay, "weight_decay": l2_value}]

    buggy = seed_as_printed(model, 2e-5)
    assert sum(len(g["params"]) for g in buggy) == 1  # 160 of 161 tensors silently dropped
    fixed = decaykit.param_groups(model, 2e-5, policy="seed")
    assert sum(len(g["params"]) for g in fixed) == 161


def test_convnext_layer_scale_c11_is_not_a_matrix():
    p = decaykit.plan(ConvNeXt(), 0.05)
    gammas = [d for d in p if d.name.endswith(".gamma")]
    assert gammas and all(d.shape[1:] == (1, 1) for d in gammas)
    assert all(not d.decay and d.role == "scale" and "multiplies activations" in d.reason for d in gammas)
    by_shape = decaykit.plan(ConvNeXt(), 0.05, example_inputs=False)  # the structural rule agrees
    assert all(not by_shape[d.name].decay and "(shape rule)" in by_shape[d.name].reason for d in gammas)
    assert all(not d.decay for d in p if d.module_type == "LayerNorm2d")  # custom norm subclass
    # depthwise kernels (C,1,7,7) are convolution weights: decayed
    assert all(d.decay for d in p if d.name.endswith("dwconv.weight"))
    # the shape-only rules get the layer scale wrong: it has 3 dims
    nano = decaykit.plan(ConvNeXt(), 0.05, policy="nanogpt")
    assert all(nano[d.name].decay for d in gammas)


def test_no_weight_decay_hook_and_keywords_on_submodules():
    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = TinyViT(depth=1)
            self.rel_table = nn.Parameter(torch.zeros(7, 4))
            self.proj = nn.Linear(4, 4)

        def no_weight_decay_keywords(self):
            return {"rel_table"}

    p = decaykit.plan(Backbone(), 0.1)
    assert not p["vit.pos_embed"].decay and p["vit.pos_embed"].source == "hook"
    assert "vit.no_weight_decay() 'pos_embed'" in p["vit.pos_embed"].reason
    assert not p["vit.cls_token"].decay
    assert not p["rel_table"].decay and "no_weight_decay_keywords" in p["rel_table"].reason
    assert p["proj.weight"].decay
    # without the hook, the 2-D position table would be decayed by the shape rule
    assert decaykit.plan(Backbone(), 0.1, policy="torch")["vit.pos_embed"].decay


def test_unknown_module_falls_back_to_shape_rule_and_says_so():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.zeros(5, 3))
            self.temperature = nn.Parameter(torch.tensor(1.0))
            self.shift = nn.Parameter(torch.zeros(1, 1, 8))
            self.extra_bias = nn.Parameter(torch.zeros(8))

    p = decaykit.plan(Odd(), 0.1)
    assert p["table"].decay and "shape rule" in p["table"].reason
    assert not p["temperature"].decay and p["temperature"].reason.startswith("scalar")
    assert not p["shift"].decay and "per-channel (1,1,8)" in p["shift"].reason
    assert not p["extra_bias"].decay and p["extra_bias"].role == "bias"


def test_bias_and_embedding_named_tables_on_unknown_modules():
    class Experts(nn.Module):  # MoE experts stored as stacked tensors, with stacked biases
        def __init__(self):
            super().__init__()
            self.gate_up_proj = nn.Parameter(torch.zeros(4, 8, 16))
            self.gate_up_proj_bias = nn.Parameter(torch.zeros(4, 16))
            self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
            self.pos_embed = nn.Parameter(torch.zeros(1, 5, 8))

    p = decaykit.plan(Experts(), 0.1)
    assert p["gate_up_proj"].decay and p["gate_up_proj"].role == "matrix"
    assert not p["gate_up_proj_bias"].decay and p["gate_up_proj_bias"].reason == "bias-named (4,16) table on Experts"
    assert not p["relative_position_bias_table"].decay
    assert p["pos_embed"].decay and p["pos_embed"].role == "embedding"
    assert not decaykit.plan(Experts(), 0.1, decay_embeddings=False)["pos_embed"].decay


def test_tensor_attribute_no_weight_decay():
    mixer = nn.Module()
    mixer.A_log = nn.Parameter(torch.zeros(8, 4))
    mixer.A_log._no_weight_decay = True
    mixer.proj = nn.Linear(4, 4)
    p = decaykit.plan(mixer, 0.1)
    assert not p["A_log"].decay and p["A_log"].reason == "tensor attribute _no_weight_decay=True"
    assert p["proj.weight"].decay
    assert decaykit.plan(mixer, 0.1, policy="nanogpt")["A_log"].decay  # replicas ignore it, as the anchor does


def test_torch_layers_of_every_kind():
    model = nn.ModuleDict({
        "conv1d": nn.Conv1d(2, 3, 3), "conv3d": nn.Conv3d(2, 3, 3), "deconv": nn.ConvTranspose2d(3, 2, 3),
        "bilinear": nn.Bilinear(3, 4, 5), "lstm": nn.LSTM(4, 6), "mha": nn.MultiheadAttention(8, 2, add_bias_kv=True),
        "gn": nn.GroupNorm(2, 4), "inorm": nn.InstanceNorm2d(4, affine=True), "rms": nn.RMSNorm(4),
        "bag": nn.EmbeddingBag(10, 3), "bn1": nn.BatchNorm1d(4),
    })
    p = decaykit.plan(model, 0.1)
    for d in p:
        leaf = d.name.rsplit(".", 1)[-1]
        if d.module_type in {"GroupNorm", "InstanceNorm2d", "RMSNorm", "BatchNorm1d"}:
            assert not d.decay and d.role == "norm", d.name
        elif "bias" in leaf:
            assert not d.decay and d.role == "bias", d.name
        else:
            assert d.decay, d.name
    assert p["mha.in_proj_weight"].decay and not p["mha.bias_k"].decay
    assert p["lstm.weight_hh_l0"].decay and not p["lstm.bias_ih_l0"].decay


class NormedLinear(nn.Linear):
    """TD-MPC2's block: a Linear whose output its child LayerNorm normalises, then Mish."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__(n_in, n_out)
        self.ln = nn.LayerNorm(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.mish(self.ln(super().forward(x)))


class CosineNormScorer(nn.Module):
    """A normalised scoring head that declares its map and uses its weight as F.linear's matrix."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.in_features, self.out_features = n_in, n_out
        self.weight = nn.Parameter(torch.randn(n_out, n_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(nn.functional.normalize(x, dim=-1), nn.functional.normalize(self.weight, dim=-1))


@pytest.mark.parametrize("layer", [NormedLinear, CosineNormScorer])
@pytest.mark.parametrize("outputs", [1, 4])
@pytest.mark.parametrize("how", [False, None, "input"])
def test_a_weight_layer_named_norm_keeps_a_weight_of_one_output(layer, outputs, how):
    """NormedLinear(16, 1)'s (1, 16) weight was "norm:NormedLinear", undecayed: the norm-by-name rule fired on a
    per-channel shape before the weight-layer rule. It is the matrix of a Linear, as with 4 outputs."""
    model = nn.Sequential(nn.Linear(3, 16), layer(16, outputs))
    p = decaykit.plan(model, 0.1, example_inputs=torch.zeros(2, 3) if how == "input" else how)
    assert (p["1.weight"].role, p["1.weight"].decay) == ("weight", True), p["1.weight"].reason
    if layer is NormedLinear:
        assert not p["1.bias"].decay and not p["1.ln.weight"].decay and p["1.ln.weight"].role == "norm"


def test_weight_norm_parametrization_magnitude_and_direction():
    lin = torch.nn.utils.parametrizations.weight_norm(nn.Linear(4, 3))
    p = decaykit.plan(lin, 0.1)
    assert not p["weight.original0"].decay  # the per-row magnitude g, shape (3,1)
    assert p["weight.original1"].decay  # the direction v


def test_meta_device_model_is_planned_without_memory():
    with torch.device("meta"):
        model = resnet50()
    p = decaykit.plan(model, 1e-4)
    assert sum(d.decay for d in p) == 54


# --- frozen, tied, wrapped ----------------------------------------------------------------


def test_frozen_parameters_reported_and_left_out_of_groups():
    model = TinyGPT()
    for q in model.h[0].parameters():
        q.requires_grad_(False)
    p = decaykit.plan(model, 0.1)
    frozen = [d for d in p if not d.trainable]
    assert len(frozen) == len(list(model.h[0].parameters()))
    assert all(d.source == "frozen" and d.weight_decay == 0 for d in frozen)
    in_groups = {id(t) for g in p.groups() for t in g["params"]}
    assert not in_groups & {id(d.param) for d in frozen}
    for q in model.parameters():
        q.requires_grad_(False)
    with pytest.raises(DecayError, match="no trainable parameters"):
        decaykit.param_groups(model, 0.1)


def test_tied_conflict_is_explicit_and_reported():
    p = decaykit.plan(TinyGPT(), 0.1, decay_embeddings=False)
    head = p["wte.weight"]
    assert not head.decay  # "first": the embedding's decision
    (conflict,) = p.conflicts
    assert conflict.names == ("wte.weight", "lm_head.weight") and conflict.kept == "wte.weight"
    assert decaykit.plan(TinyGPT(), 0.1, decay_embeddings=False, tied="decay")["wte.weight"].decay
    # a user rule on either name outranks the automatic decisions
    ruled = decaykit.plan(TinyGPT(), 0.1, rules=["lm_head.weight:wd=0.01"])
    assert ruled["wte.weight"].weight_decay == 0.01 and ruled["wte.weight"].source == "rule"


def test_the_text_lists_rules_that_changed_nothing_as_the_notebook_view_does():
    with pytest.warns(DecayWarning):
        p = decaykit.plan(TinyGPT(), 0.1, exclude=["no_such_layer"])
    assert p.unmatched and all(f"changed nothing: {u}" in str(p).splitlines() for u in p.unmatched)


def test_wrapped_models_give_the_same_decisions():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    model = TinyViT(depth=2)
    bare = decaykit.plan(model, 0.1)
    model.blocks[0] = checkpoint_wrapper(model.blocks[0])
    compiled = torch.compile(model)

    class DistributedDataParallel(nn.Module):  # what DDP looks like to a name: module. prefix
        def __init__(self, module):
            super().__init__()
            self.module = module

    wrapped = DistributedDataParallel(compiled)
    assert any(n.startswith("module._orig_mod.") for n, _ in wrapped.named_parameters())
    p = decaykit.plan(wrapped, 0.1)
    assert [(d.name, d.weight_decay, d.reason) for d in p] == [(d.name, d.weight_decay, d.reason) for d in bare]
    assert not p["pos_embed"].decay  # the hook is found through the wrappers (deit #39)
    timm_like = decaykit.plan(wrapped, 0.1, policy="timm")
    assert not timm_like["pos_embed"].decay


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "0.1", True])
def test_bad_weight_decay(bad):
    with pytest.raises(DecayError, match="weight_decay"):
        decaykit.plan(nn.Linear(2, 2), bad)


def test_bad_model_and_options():
    with pytest.raises(DecayError, match=r"model.parameters\(\)"):
        decaykit.param_groups(nn.Linear(2, 2).parameters(), 0.1)
    with pytest.raises(DecayError, match=r"torch\.nn\.Module, got dict"):
        decaykit.plan({}, 0.1)
    with pytest.raises(DecayError, match="no parameters"):
        decaykit.plan(nn.ReLU(), 0.1)
    with pytest.raises(DecayError, match=r"unknown policy .keras.*decaykit, timm, hf"):
        decaykit.plan(nn.Linear(2, 2), 0.1, policy="keras")
    with pytest.raises(DecayError, match="tied"):
        decaykit.plan(nn.Linear(2, 2), 0.1, tied="both")
    with pytest.raises(DecayError, match="layer_decay"):
        decaykit.plan(nn.Linear(2, 2), 0.1, layer_decay=0)
    with pytest.raises(DecayError, match="layer_decay"):
        decaykit.plan(nn.Linear(2, 2), 0.1, layer_decay=1.5)


def test_exclude_that_matches_nothing_warns_or_fails_in_strict_mode():
    with pytest.warns(DecayWarning, match="exclude 'fc.bias'"):
        p = decaykit.plan(nn.Linear(2, 2), 0.1, exclude=["fc.bias"])
    assert p.unmatched == ["exclude 'fc.bias'"]
    with pytest.raises(DecayError, match="matched no parameter"):
        decaykit.plan(nn.Linear(2, 2), 0.1, exclude="fc.bias", strict=True)


def test_hook_that_raises_is_reported_with_its_owner():
    class Broken(nn.Linear):
        def no_weight_decay(self):
            raise KeyError("pos")

    with pytest.raises(DecayError, match=r"Broken.no_weight_decay\(\) raised KeyError"):
        decaykit.plan(Broken(2, 2), 0.1)


def test_a_vector_on_an_unknown_module_is_left_undecayed_by_shape_and_the_reason_says_what_it_may_be():
    """A ViT's cls token (1,1,C) has the shape of ResMLP's gain: the structure cannot tell them apart and says
    so; traced, the token is joined to the tokens and decays."""

    class ViTStem(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
            self.gamma = nn.Parameter(torch.ones(8, 1, 1))  # a layer scale in conv layout

        def forward(self, x):  # x (B, T, 8)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
            return x * self.gamma.flatten()

    structural = decaykit.plan(ViTStem(), 0.1, example_inputs=False)
    assert not structural["cls_token"].decay and structural["cls_token"].reason == (
        "per-channel (1,1,8) on ViTStem: a gain, a bias, a learned token...? the shape cannot tell (shape rule)")
    assert structural["gamma"].reason == (
        "per-channel (8,1,1) on ViTStem: a gain, a bias...? the shape cannot tell (shape rule)")
    traced = decaykit.plan(ViTStem(), 0.1, example_inputs=torch.zeros(2, 3, 8))
    assert (traced["cls_token"].role, traced["cls_token"].decay, traced["gamma"].decay) == ("token", True, False)


def test_tensor_attribute_optim_without_weight_decay():
    """The state-spaces repositories (S4, S5, Hyena, safari) mark their SSM parameters with
    ``_optim = {"weight_decay": 0.0}``, which their ``setup_optimizer`` reads."""
    kernel = nn.Module()
    kernel.log_A_real = nn.Parameter(torch.zeros(8, 4))
    kernel.log_A_real._optim = {"weight_decay": 0.0, "lr": 1e-3}
    kernel.C = nn.Parameter(torch.zeros(8, 4))
    kernel.C._optim = {"lr": 1e-3}  # a learning rate of its own, its decay left to the policy
    p = decaykit.plan(kernel, 0.1)
    assert not p["log_A_real"].decay and p["log_A_real"].reason == "tensor attribute _optim={'weight_decay': 0.0}"
    assert p["C"].decay


def test_a_parametrized_weight_s_pieces_are_told_by_size_not_shape():
    """The direction of weight_norm(Linear(16, 1)) is (1, 16), one row: it was taken for a per-channel gain and
    left undecayed in every mode, as was each factor of a rank-1 A @ B; the magnitude stays a gain."""
    import warnings

    from torch.nn.utils import parametrize

    class Rank1(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a @ b

        def right_inverse(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return w[:, :1].clone(), torch.ones(1, w.shape[1])

    head = torch.nn.utils.parametrizations.weight_norm(nn.Linear(16, 1))
    whole = torch.nn.utils.parametrizations.weight_norm(nn.Linear(16, 1), dim=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        old = torch.nn.utils.weight_norm(nn.Linear(16, 1))
    low = nn.Linear(8, 6)
    parametrize.register_parametrization(low, "weight", Rank1(), unsafe=True)
    for given in (False, None, torch.zeros(2, 16)):
        for model, direction, magnitude in ((head, "weight.original1", "weight.original0"),
                                            (whole, "weight.original1", "weight.original0"),
                                            (old, "weight_v", "weight_g")):
            p = decaykit.plan(model, 0.1, example_inputs=given)
            assert p[direction].decay and "its direction (1,16)" in p[direction].reason
            assert not p[magnitude].decay and p[magnitude].role == "scale"
    p = decaykit.plan(low, 0.1, example_inputs=False)
    assert p["weight.original0"].decay and p["weight.original1"].decay
    assert "its factor (6,1)" in p["weight.original0"].reason
    big = decaykit.plan(torch.nn.utils.parametrizations.weight_norm(nn.Linear(4, 3)), 0.1)  # g (3,1), v (3,4)
    assert (big["weight.original0"].decay, big["weight.original1"].decay) == (False, True)


def test_a_layer_that_declares_its_sizes_is_a_weight_layer_whatever_its_package():
    """PyG's own Linear (behind its MLP and most of its convolutions) was an unknown module: a (1, F) head's weight
    was "per-channel ... a gain?" and not decayed unless traced. Its in/out sizes say what its weight is."""

    class Linear(nn.Module):  # torch_geometric.nn.Linear, as it stores itself
        def __init__(self, in_channels: int, out_channels: int) -> None:
            super().__init__()
            self.in_channels, self.out_channels = in_channels, out_channels
            self.weight = nn.Parameter(torch.randn(out_channels, in_channels))
            self.bias = nn.Parameter(torch.zeros(out_channels))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(x, self.weight, self.bias)

    class Grouped(nn.Module):  # a convolution of some other package: (out, in / groups, k)
        def __init__(self) -> None:
            super().__init__()
            self.in_channels, self.out_channels = 8, 4
            self.weight = nn.Parameter(torch.randn(4, 2, 3))

    class Sized(nn.Module):  # sizes that are not its weight's axes: no claim
        def __init__(self) -> None:
            super().__init__()
            self.in_features, self.out_features = 8, 4
            self.weight = nn.Parameter(torch.randn(1, 8))

    model = nn.Sequential(Linear(8, 16), nn.ReLU(), Linear(16, 1), Grouped(), Sized())
    p = decaykit.plan(model, 0.1, example_inputs=False)
    assert (p["2.weight"].decay, p["2.weight"].reason) == (True, "weight of Linear")
    assert (p["2.bias"].role, p["2.bias"].decay) == ("bias", False)
    assert p["3.weight"].reason == "weight of Grouped"
    assert not p["4.weight"].decay and "the shape cannot tell" in p["4.weight"].reason


class _TimmStyleEma(nn.Module):
    """timm's ModelEmaV3 in a few lines: a deep copy averaged into by ``update``, never stepped."""

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        super().__init__()
        self.module, self.decay = copy.deepcopy(model), decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema, p in zip(self.module.parameters(), model.parameters()):
            ema.lerp_(p, 1 - self.decay)


@pytest.mark.parametrize("kind", ["swa", "timm"])
def test_an_averaged_copy_on_the_model_is_left_out_like_a_frozen_tensor(kind):
    """``self.ema = AveragedModel(self.net)`` keeps requires_grad=True copies: they were planned trainable, decayed,
    put into the optimizer by param_groups(module), and an optimizer that rightly left them out was audited 'missing'."""
    net = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 2))
    model = nn.Module()
    model.net = net
    model.ema = torch.optim.swa_utils.AveragedModel(net) if kind == "swa" else _TimmStyleEma(net)
    p = decaykit.plan(model, 0.1, example_inputs=False)
    copies = [d for d in p if d.name.startswith("ema.")]
    assert len(copies) == 6 and not any(d.trainable or d.decay for d in copies)
    assert all("updated by averaging" in d.reason for d in copies), copies[0].reason
    assert len(p.trainable) == 6 and all(d.name.startswith("net.") for d in p.trainable)
    held = {id(t) for g in decaykit.param_groups(model, 0.1) for t in g["params"]}
    assert held == {id(t) for t in net.parameters()}
    report = decaykit.audit(model, torch.optim.AdamW(decaykit.param_groups(net, 0.1)))
    assert "missing" not in {f.code for f in report.findings}, report.findings
    assert decaykit.plan(model.ema, 0.1, example_inputs=False).trainable  # planned on its own, it is the model
