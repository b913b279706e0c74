"""A zoo of real architectures, built on the meta device from configs (no download, no weights),
held to what deciding by use promises.

For every model: the default plan (no ``example_inputs``) is the traced one wherever the
structure would have to guess; no traced gain, scale or state parameter is decayed; every tensor used as a
matrix operand is; one role gets one decision; every name in the plan and its groups is a key of
``named_parameters()``; the ``timm`` and ``hf`` presets still equal their anchors' rules.

The default run takes a representative slice (small configs of one model per family the policy
has to tell apart: GPT-2, Llama, T5, BERT, Mamba, Mamba2, Mixtral, Qwen3, DINOv2 with
registers, ViT, CLIP, Swin, and the hand-built families of ``test_usage_trace``). ``DECAYKIT_ZOO=all`` runs
every transformers architecture that builds from its default config (slow: minutes).
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

import decaykit
from decaykit import DecayWarning
from decaykit.policy import RoleConflict
from decaykit.policy.own_input import example_inputs_for
from decaykit.policy.tracing import run_trace
from test_presets import timm_rule
from test_usage_trace import Zoo

from hf_models import HF_MODELS

transformers = pytest.importorskip("transformers")
T = transformers
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 96}


def _configs() -> dict[str, object]:
    return {
        "mamba": lambda: T.MambaForCausalLM(T.MambaConfig(hidden_size=32, state_size=8, num_hidden_layers=2,
                                                           vocab_size=96)),
        "mamba2": lambda: T.Mamba2ForCausalLM(T.Mamba2Config(hidden_size=32, state_size=8, num_hidden_layers=2,
                                                              vocab_size=96, num_heads=4, head_dim=16, n_groups=1)),
        "mixtral": lambda: T.MixtralForCausalLM(T.MixtralConfig(num_key_value_heads=1, num_local_experts=4,
                                                                 num_experts_per_tok=2, **SMALL)),
        "qwen3": lambda: T.Qwen3ForCausalLM(T.Qwen3Config(num_key_value_heads=1, head_dim=16, **SMALL)),
        "dinov2_registers": lambda: T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14,
            num_register_tokens=4)),
        "vit": lambda: T.ViTForImageClassification(T.ViTConfig(hidden_size=32, num_hidden_layers=2,
                                                                num_attention_heads=2, intermediate_size=64,
                                                                image_size=28, patch_size=14)),
        "clip": lambda: T.CLIPModel(T.CLIPConfig(
            text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                         "vocab_size": 96},
            vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "image_size": 28, "patch_size": 14}, projection_dim=16)),
        "swin": lambda: T.SwinModel(T.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                                 num_heads=[1, 2], window_size=4)),
        "hand_built": Zoo,
        **HF_MODELS,
    }


def _everything() -> dict[str, object]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    def build(kind: str):
        return lambda: T.AutoModel.from_config(T.AutoConfig.for_model(kind))

    return {kind: build(kind) for kind in sorted(CONFIG_MAPPING_NAMES)}


ZOO = _everything() if os.environ.get("DECAYKIT_ZOO") == "all" else _configs()


def _build(name: str) -> torch.nn.Module:
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ZOO[name]()
    except Exception as exc:
        if os.environ.get("DECAYKIT_ZOO") != "all":
            raise  # the slice always builds
        pytest.skip(f"{name} does not build from its default config: {type(exc).__name__}")


def decided_by_shape_alone(model: torch.nn.Module, name: str) -> bool:
    from decaykit.policy.collect import collect_params
    from decaykit.policy.roles import decided_by_shape

    return any(decided_by_shape(i) for infos in collect_params(model).values() for i in infos if i.name == name)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_the_zoo_keeps_the_promises_of_deciding_by_use(name):
    model = _build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DecayWarning)  # a pass that stops early is allowed; its decisions are checked
        p = decaykit.plan(model, 0.1, example_inputs="auto")
    traced = [d for d in p.trainable if d.reason.endswith("(traced)")]
    # with no example_inputs, a model the structure would have to guess about is traced all the same
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DecayWarning)
        default = decaykit.plan(model, 0.1)
    if any(d.source == "policy" and decided_by_shape_alone(model, d.name) for d in default.trainable):
        assert [(d.name, d.role, d.decay) for d in default] == [(d.name, d.role, d.decay) for d in p]
    if name in _configs():  # the slice traces; only tensors of optional inputs (DINOv2's mask token) are missed
        assert len(traced) >= 0.95 * len([d for d in p.trainable if d.source == "policy"]), name
    wrong = [(d.name, d.reason) for d in traced if d.decay == (d.role in ("norm", "scale", "state", "bias"))]
    assert wrong == []
    # every matrix operand is decayed, even where another use decided its role; a parametrization's
    # pieces feed the matrix together and are decided per piece (weight_norm's per-channel magnitude is a scale)
    uses = run_trace(model, example_inputs_for(model)).uses if traced else {}
    by_id = {id(d.param): d for d in p.trainable if d.source == "policy" and ".parametrizations." not in d.name}
    undecayed = [by_id[pid].name for pid, seen in uses.items()
                 if pid in by_id and any(u.kind == "matmul" for u in seen) and not by_id[pid].decay]
    assert undecayed == []
    # one role, one decision
    assert [str(c) for c in p.conflicts if isinstance(c, RoleConflict)] == []
    roles: dict[str, set[bool]] = {}
    for d in p.trainable:
        if d.source == "policy":
            roles.setdefault(d.role, set()).add(d.decay)
    assert {r: v for r, v in roles.items() if len(v) > 1} == {}
    # names round-trip
    real = dict(model.named_parameters(remove_duplicate=False))
    names = [n for d in p for n in (d.name, *d.aliases)] + [n for g in p.groups() for n in g["param_names"]]
    assert [n for n in names if n not in real] == []


@pytest.mark.parametrize("name", sorted(ZOO))
def test_the_zoo_keeps_the_presets_equal_to_their_anchors(name):
    model = _build(name)
    decayed = {d.name for d in decaykit.plan(model, 0.1, policy="timm", example_inputs="auto") if d.decay}
    assert decayed == timm_rule(model)
    theirs = set(transformers.Trainer.get_decay_parameter_names(None, model))
    # the Trainer's optimizer takes only tensors that require grad (Whisper's sinusoidal positions do not)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {d.name for d in decaykit.plan(model, 0.1, policy="hf") if d.decay} == theirs & trained
