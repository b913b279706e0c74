"""decaykit.Policy: one validated value for the policy, read the same way by every entry point."""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import warnings
from typing import Any

import pytest
import torch
from torch import nn

import decaykit
from decaykit import DecayError, DecayWarning, Policy, Rule
from decaykit.cli.common import add_policy_arguments, policy_from_args, policy_options
from decaykit.integrations.lightning import configure_optimizers
from decaykit.policy.presets import PRESETS


class Tiny(nn.Module):
    """Norms, biases, an embedding tied to the head, a hook-exempted parameter: every kind of decision."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.pos = nn.Parameter(torch.zeros(4, 8))
        self.body = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.embed.weight

    def no_weight_decay(self) -> set[str]:
        return {"pos"}


# Options that change decisions in every way a plan can: preset, rules, exclude, embeddings, tied,
# layer-wise LR decay with an explicit layer map.
OPTION_SETS: list[dict[str, Any]] = [
    {},
    {"policy": "timm"},
    {"policy": "hf", "exclude": "body.bias"},
    {"decay_embeddings": False},
    {"decay_embeddings": False, "tied": "decay"},
    {"rules": ["head.weight:wd=0.01", "type:LayerNorm:lr_scale=2"], "exclude": ["body.*"]},
    {"layer_decay": 0.5, "layer_of": {"embed.weight": 0, "body.weight": 1, "body.bias": 1, "norm.weight": 2}},
    {"policy": "nanogpt", "rules": [{"regex": "^norm\\.", "decay_mult": 0.5}], "strict": True},
]


def decisions(p: decaykit.Plan) -> list[tuple[Any, ...]]:
    return [(d.name, d.role, d.weight_decay, d.lr_scale, d.reason, d.source, d.layer, d.aliases) for d in p]


def whole(p: decaykit.Plan) -> tuple[Any, ...]:
    return decisions(p), [str(c) for c in p.conflicts], p.unmatched, p.policy, p.layer_decay


def group_view(groups: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(g["param_names"], g["weight_decay"], g["lr_scale"], g.get("lr")) for g in groups]


# --- the value ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "message"), [
    ({"preset": "keras"}, "unknown policy 'keras'; choose one of: decaykit, timm, hf"),
    ({"preset": 3}, "unknown policy 3"),
    ({"tied": "both"}, "tied must be 'first', 'decay' or 'no_decay', got 'both'"),
    ({"layer_decay": 0}, "layer_decay must be a finite number > 0, got 0.0"),
    ({"layer_decay": 1.5}, "layer_decay must be <= 1.0, got 1.5"),
    ({"layer_decay": "0.5"}, "layer_decay must be a finite number > 0, got '0.5'"),
    ({"layer_decay": float("nan")}, "layer_decay must be a finite number > 0, got nan"),
    ({"rules": ["head:speed=3"]}, "cannot read 'speed=3'"),
    ({"rules": [3]}, r"rules\[0\] must be a Rule, a 'glob:wd=X' string or a dict, got 3"),
    ({"rules": ["a:wd=0", "a:wd=1"]}, r"rules\[1\] .* contradicts rules\[0\]"),
    ({"exclude": 3}, "exclude must be a name or glob, or a list of them, got 3"),
    ({"decay_embeddings": "no"}, "decay_embeddings must be True or False, got 'no'"),
    ({"strict": None}, "strict must be True or False, got None"),
    ({"layer_of": 3}, "layer_of must be a mapping name -> layer or a callable name -> layer .*got int"),
])
def test_each_bad_field_names_the_argument_and_the_value(fields, message):
    with pytest.raises(DecayError, match=message):
        Policy(**fields)
    keyword = {("policy" if k == "preset" else k): v for k, v in fields.items()}
    with pytest.raises(DecayError, match=message):  # the same check, the same words, from plan()
        decaykit.plan(Tiny(), 0.1, **keyword)


def test_unknown_options_are_named_with_the_valid_ones():
    with pytest.raises(DecayError, match=r"unknown policy option\(s\) 'wd'; the options are: rules, exclude, "
                                         r"decay_embeddings, layer_decay, layer_of, tied, strict$"):
        Policy.of("timm", wd=0.1)
    with pytest.raises(DecayError, match=r"unknown policy option\(s\) 'lr', 'wd'; the options are: policy, rules"):
        Policy.of({"policy": "timm", "wd": 0.1, "lr": 1})
    with pytest.raises(DecayError, match="the preset is named by the key 'policy'"):
        Policy.of(preset="timm")


def full_policy() -> Policy:
    return Policy(preset="timm", rules=(Rule("head.*", weight_decay=0.0), Rule(module="LayerNorm", lr_scale=2.0)),
                  exclude=("pos",), decay_embeddings=False, layer_decay=0.5, layer_of={"body.weight": 1},
                  tied="decay", strict=True)


def test_every_accepted_form_gives_one_equal_policy():
    expected = full_policy()
    options = {"rules": ["head.*:wd=0", {"module": "LayerNorm", "lr_scale": 2}], "exclude": "pos",
               "decay_embeddings": False, "layer_decay": 0.5, "layer_of": {"body.weight": 1}, "tied": "decay",
               "strict": True}
    forms = [
        Policy.of("timm", **options),
        Policy.of(policy="timm", **options),
        Policy.of({"policy": "timm", **options}),
        Policy.of({"policy": "timm"}, **options),
        Policy.of(PRESETS["timm"], **options),
        Policy.of(Policy(preset="timm"), **options),
        Policy.of(dataclasses.replace(expected, exclude=("x",)), exclude=["pos"]),
        Policy.of(expected.to_dict()),
        Policy.of(json.loads(json.dumps(expected.to_dict()))),
    ]
    assert all(form == expected for form in forms), [f for f in forms if f != expected]
    assert len({hash(f) for f in forms}) == 1
    assert Policy.of(expected) is expected
    assert Policy.of() == Policy() == Policy.of("decaykit") == Policy.of({}) == Policy.of(None)


def test_a_policy_is_frozen_and_holds_no_reference_to_what_it_was_given():
    layer_of = {"body.weight": 1}
    rules = ["head.*:wd=0"]
    p = Policy(rules=rules, layer_of=layer_of)  # type: ignore[arg-type]
    layer_of["body.weight"] = 5
    rules.append("x:wd=1")
    assert dict(p.layer_of) == {"body.weight": 1} and len(p.rules) == 1  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.preset = "hf"  # type: ignore[misc]
    with pytest.raises(TypeError):
        p.layer_of["body.weight"] = 2  # type: ignore[index]
    assert isinstance(p.rules, tuple) and isinstance(p.exclude, tuple)


def test_a_callable_layer_of_compares_by_identity():
    def by_depth(name: str) -> int | None:
        return 1 if name.startswith("body") else None

    def same_rule(name: str) -> int | None:
        return 1 if name.startswith("body") else None

    assert Policy(layer_of=by_depth) == Policy(layer_of=by_depth)
    assert Policy(layer_of=by_depth) != Policy(layer_of=same_rule)
    assert hash(Policy(layer_of=by_depth)) == hash(Policy(layer_of=by_depth))
    assert Policy(layer_of=by_depth).to_dict()["layer_of"].endswith("by_depth")


def test_describe_is_the_name_alone_until_something_else_is_set():
    assert Policy().describe() == "decaykit"
    assert Policy.of("timm", decay_embeddings=True, tied="first", strict=False).describe() == "timm"
    assert Policy.of("hf", exclude="head.*").describe() == '{"exclude": ["head.*"], "policy": "hf"}'
    text = full_policy().describe()
    assert json.loads(text) == {"policy": "timm", "rules": ["head.*:wd=0", "type:LayerNorm:lr_scale=2"],
                                "exclude": ["pos"], "decay_embeddings": False, "layer_decay": 0.5,
                                "layer_of": {"body.weight": 1}, "tied": "decay", "strict": True}
    assert Policy.of(json.loads(text)) == full_policy()


@pytest.mark.parametrize("given", [
    "decaykit",
    "timm",
    {"policy": "timm"},
    {"policy": "hf", "exclude": ["head.*"]},
    {"policy": "decaykit", "exclude": ["head.*", "*.bias"]},
    {"policy": "nanogpt", "rules": ["head.*:wd=0", "re:^blocks\\.0\\.:mult=0.5,lr_scale=0.1"]},
    {"policy": "timm", "decay_embeddings": False},
    {"policy": "decaykit", "layer_decay": 0.65, "strict": True, "tied": "no_decay"},
    {"policy": "seed", "exclude": [], "rules": [], "layer_decay": None, "strict": False},
])
def test_describe_gives_the_sweep_header_text_for_the_same_input(given):
    from decaykit.sweeps.describe import policy_text

    assert Policy.of(given).describe() == policy_text(given)


@pytest.mark.parametrize("given", [
    {"policy": "timm", "exclude": ["head.*"]},
    {"policy": "timm", "exclude": "head.*", "decay_embeddings": True, "tied": "first", "layer_of": None},
    {"policy": "timm", "exclude": ["head.*"], "rules": [], "decay_embeddings": True, "layer_decay": None,
     "strict": False},  # what the CLI's flags give
])
def test_one_policy_one_text_however_it_was_written(given):
    # the sweep's policy_text echoes its input, so these three differ there; a Policy is one value
    assert Policy.of(given).describe() == '{"exclude": ["head.*"], "policy": "timm"}'
    assert Policy.of(exclude=["*.bias"]).describe() == '{"exclude": ["*.bias"], "policy": "decaykit"}'
    assert Policy.of(rules="head.*").describe() == '{"policy": "decaykit", "rules": ["head.*:wd=0"]}'


# --- every entry point takes a Policy ----------------------------------------------------------


def quiet_plan(*args: Any, **kwargs: Any) -> decaykit.Plan:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DecayWarning)
        return decaykit.plan(*args, **kwargs)


@pytest.mark.parametrize("options", OPTION_SETS)
def test_a_policy_gives_plan_and_param_groups_exactly_the_keyword_decisions(options):
    model = Tiny()
    by_keywords = quiet_plan(model, 0.1, **options)
    by_policy = quiet_plan(model, 0.1, policy=Policy.of(options))
    assert whole(by_policy) == whole(by_keywords)
    assert group_view(decaykit.param_groups(model, 0.1, lr=1e-3, policy=Policy.of(options))) == \
        group_view(decaykit.param_groups(model, 0.1, lr=1e-3, **options))


def test_the_small_model_exercises_every_source_of_a_decision():
    p = quiet_plan(Tiny(), 0.1, decay_embeddings=False, exclude="body.bias", rules=["norm.bias:wd=0.2"])
    assert {d.source for d in p} == {"policy", "hook", "exclude", "rule"}
    assert p["pos"].reason == "model.no_weight_decay() 'pos'" and p["embed.weight"].aliases == ("head.weight",)
    assert [c.names for c in p.conflicts] == [("embed.weight", "head.weight")]


def test_keywords_beside_a_policy_replace_its_fields_and_defaults_leave_them():
    model = Tiny()
    base = Policy(preset="timm", decay_embeddings=False)
    mixed = quiet_plan(model, 0.1, policy=base, exclude=["body.*"])
    assert whole(mixed) == whole(quiet_plan(model, 0.1, policy="timm", decay_embeddings=False, exclude=["body.*"]))
    kept = quiet_plan(model, 0.1, policy=Policy(decay_embeddings=False, tied="decay"), decay_embeddings=True,
                      tied="first")  # the defaults: the policy's own settings stand
    assert whole(kept) == whole(quiet_plan(model, 0.1, decay_embeddings=False, tied="decay"))
    assert decaykit.plan(model, 0.1, policy={"policy": "hf"}).policy == "hf"  # a mapping works too


def test_audit_takes_a_policy():
    model = Tiny()
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1, rules=["body.weight:wd=0.3"]), lr=1e-3)
    by_keywords = decaykit.audit(model, opt, weight_decay=0.1, policy="timm", decay_embeddings=False)
    by_policy = decaykit.audit(model, opt, weight_decay=0.1, policy=Policy(preset="timm", decay_embeddings=False))
    assert by_policy.to_dict() == by_keywords.to_dict()
    assert by_policy.policy == "timm" and by_policy.findings


def test_probe_takes_a_policy():
    model = Tiny()
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-3)
    for group in opt.param_groups:  # a framework's override: every group decays
        group["weight_decay"] = 0.1
    settings = Policy(decay_embeddings=False)
    by_policy = decaykit.probe(opt, model=model, policy=settings)
    by_plan = decaykit.probe(opt, model=model, policy=decaykit.plan(model, 1.0, decay_embeddings=False))
    disagree = [(e.name, e.note) for e in by_policy.disagreements]
    assert disagree == [(e.name, e.note) for e in by_plan.disagreements]
    assert "embed.weight" in {name for name, _ in disagree}
    with pytest.raises(DecayError, match="needs model="):
        decaykit.probe(opt, policy=settings)


def test_lightning_configure_optimizers_takes_a_policy():
    options = OPTION_SETS[5]
    model = Tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DecayWarning)
        by_policy = configure_optimizers(model, 0.1, lr=1e-3, policy=Policy.of(options))
        by_keywords = configure_optimizers(model, 0.1, lr=1e-3, **options)
    assert group_view(by_policy.param_groups) == group_view(by_keywords.param_groups)  # type: ignore[union-attr]


def test_hf_integration_takes_a_policy(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import transformers

    from decaykit.integrations import hf

    model = Tiny()
    options = {"policy": "timm", "decay_embeddings": False, "exclude": ["body.bias"]}
    settings = Policy.of(options)
    assert hf.decay_parameter_names(model, policy=settings) == hf.decay_parameter_names(model, **options)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), weight_decay=0.1, learning_rate=1e-3,
                                          use_cpu=True, report_to=[])
    _, by_policy = hf.optimizer_cls_and_kwargs(model, args, policy=settings)
    _, by_keywords = hf.optimizer_cls_and_kwargs(model, args, **options)
    assert group_view(by_policy["params"]) == group_view(by_keywords["params"])
    for decay_options in (settings, {"policy": settings}, options):
        trainer = hf.DecayTrainer(model=model, args=args, decay_options=decay_options)
        assert trainer.decay_options == {"policy": settings}
        assert whole(trainer.decay_plan()) == whole(decaykit.plan(model, 0.1, **options))
    with pytest.raises(DecayError, match=r"decay_options must be a decaykit\.Policy or a dict"):
        hf.DecayTrainer(model=model, args=args, decay_options=["timm"])
    with pytest.raises(DecayError, match="tied must be"):  # checked when the Trainer is made
        hf.DecayTrainer(model=model, args=args, decay_options={"tied": "both"})


# --- the CLI flags ------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_policy_arguments(parser)
    return parser.parse_args(list(argv))


def test_policy_from_args_reads_every_flag():
    args = parse("--policy", "timm", "--exclude", "pos", "--exclude", "body.*", "--rule", "head.*:wd=0",
                 "--no-decay-embeddings", "--layer-decay", "0.5", "--strict")
    assert policy_from_args(args) == Policy(preset="timm", rules=(Rule("head.*", weight_decay=0.0),),
                                            exclude=("pos", "body.*"), decay_embeddings=False, layer_decay=0.5,
                                            strict=True)
    assert policy_from_args(parse()) == Policy()
    # the dict the other commands still take is unchanged, and names the same policy
    assert policy_options(parse()) == {"policy": "decaykit", "exclude": [], "rules": [], "decay_embeddings": True,
                                       "layer_decay": None, "strict": False}
    assert Policy.of(policy_options(args)) == policy_from_args(args)
    with pytest.raises(DecayError, match="cannot read 'speed=3'"):
        policy_from_args(parse("--rule", "head:speed=3"))


def test_inspect_checks_the_flags_before_loading_the_model(capsys):
    from decaykit.cli.main import main

    code = main(["inspect", "no.such.module:make", "--rule", "head:speed=3"])
    assert code == 2 and "cannot read 'speed=3'" in capsys.readouterr().err


# --- rules as text, over many generated rules (seeded: hypothesis is not a dependency here) ------

_NUMBERS = [0.0, 1.0, 0.1, 0.3, 2.5, 1e-20, 5e-324, 1e300, 123456789.0, 0.1 + 0.2]


def _number(rng: random.Random) -> float:
    return rng.choice([rng.choice(_NUMBERS), float(rng.randint(0, 10**6)), rng.uniform(0, 1e6), rng.random()])


def _rules(count: int, seed: int = 0) -> list[Rule]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        kind = rng.choice(["match", "regex", "module"])
        matcher = "".join(rng.choice("abch_.*?[]0:=,") for _ in range(rng.randint(1, 12)))
        matcher = re.escape(matcher) if kind == "regex" else matcher
        action = rng.choice(["weight_decay", "decay_mult", None])
        values = {action: _number(rng)} if action else {}
        if action is None or rng.random() < 0.5:
            values["lr_scale"] = _number(rng)
        out.append(Rule(**{kind: matcher}, **values))
    return out


@pytest.mark.parametrize("rule", _rules(300), ids=repr)
def test_a_rule_reads_back_from_its_text(rule):
    text = rule.text()
    if rule.match is not None and rule.match.startswith(("re:", "type:")):
        assert text is None  # it would read back as a regex or a module type
        return
    assert text is not None and Rule.parse(text) == rule
    assert Policy.of(rules=[text]) == Policy(rules=(rule,))
    assert json.loads(Policy(rules=(rule,)).describe())["rules"] == [text]


@pytest.mark.parametrize("seed", range(100))
def test_a_rule_string_gives_the_policy_of_its_rule(seed):
    rng = random.Random(seed)
    glob = "".join(rng.choice("abch_.*?[]0") for _ in range(rng.randint(1, 12)))
    key = rng.choice(["wd", "weight_decay", "mult", "decay_mult", "lr_scale", "lr"])
    text = f"{glob}:{key}={_number(rng)!r}"
    p = Policy.of("hf", rules=text)
    assert p.rules == (Rule.parse(text),)
    assert Policy.of(p.to_dict()) == p


def test_rules_without_a_text_form_are_described_by_their_fields():
    labelled = Rule("head.*", weight_decay=0.0, label="head")
    both = Rule("h*", regex="^h", lr_scale=0.5)
    by_class = Rule(module=nn.LayerNorm, weight_decay=0.0)
    assert labelled.text() is None and both.text() is None and Rule("re:x", lr_scale=1.0).text() is None
    assert by_class.text() == "type:LayerNorm:wd=0"
    p = Policy(rules=(labelled, both))
    assert p.to_dict()["rules"] == [{"match": "head.*", "weight_decay": 0.0, "label": "head"},
                                    {"match": "h*", "regex": "^h", "lr_scale": 0.5}]
    assert Policy.of(p.to_dict()) == p
