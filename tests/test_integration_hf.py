"""decaykit inside a real ``transformers.Trainer`` run: tiny models built from configs, no download.

The one-step tests pin what the Trainer's optimizer really did: after one AdamW step from the same
weights and batch, a run with weight decay λ and one with λ = 0 differ by exactly −lr·λ·θ₀ on the
decayed tensors and not at all on the others (θ(1 − lr·λ) − lr·u against θ − lr·u).
"""

from __future__ import annotations

import copy
import runpy
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import decaykit
from decaykit import schedules
from decaykit.errors import DecayError, DecayWarning
from decaykit.integrations import hf

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

from hf_models import llama  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LR = 1e-2


class RandomImages(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return {"pixel_values": torch.randn(3, 16, 16, generator=g), "labels": torch.tensor(i % 3)}


class RandomTokens(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(1, 96, (8,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids}


def resnet() -> nn.Module:
    """HF's ResNet: its BatchNorm layers are called ``normalization``, which HF's rule decays."""
    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                       layer_type="basic", num_labels=3)
    return transformers.ResNetForImageClassification(config)


def training_args(tmp_path: Path, **overrides) -> transformers.TrainingArguments:
    settings = dict(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=LR,
                    weight_decay=0.1, lr_scheduler_type="constant", use_cpu=True, report_to=[],
                    save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0, data_seed=0)
    settings.update(overrides)
    return transformers.TrainingArguments(**settings)


def inner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer inside accelerate's AcceleratedOptimizer."""
    return getattr(optimizer, "optimizer", optimizer)


def names_by_decay(optimizer: torch.optim.Optimizer) -> dict[float, set[str]]:
    out: dict[float, set[str]] = {}
    for g in optimizer.param_groups:
        out.setdefault(float(g["weight_decay"]), set()).update(g["param_names"])
    return out


def bn_weights(model: nn.Module) -> set[str]:
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def one_step(trainer_cls, base: nn.Module, tmp_path: Path, weight_decay: float, **kwargs) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DecayWarning)  # λ = 0 is meant here
        trainer = trainer_cls(model=model, args=training_args(tmp_path, max_steps=1, weight_decay=weight_decay),
                              train_dataset=RandomImages(), **kwargs)
        trainer.train()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_decay_trainer_builds_decaykit_groups_and_trains(tmp_path):
    model = resnet()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rule = decaykit.Rule("classifier.1.weight", weight_decay=0.3)
    trainer = hf.DecayTrainer(model=model, args=training_args(tmp_path), train_dataset=RandomImages(),
                              decay_options={"rules": [rule]})
    trainer.train()

    opt = inner(trainer.optimizer)
    assert type(opt) is torch.optim.AdamW  # the class args.optim picks, with decaykit's groups
    groups = names_by_decay(opt)
    assert set(groups) == {0.1, 0.3, 0.0}
    assert groups[0.3] == {"classifier.1.weight"}
    assert groups[0.1] == {n for n, p in model.named_parameters() if p.dim() == 4}  # every conv weight
    assert bn_weights(model) <= groups[0.0]
    assert {n for n, _ in model.named_parameters() if n.endswith(".bias")} <= groups[0.0]
    held = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(held) == sorted(id(p) for p in model.parameters())  # each tensor exactly once
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())  # it trained

    # HF's own rule decays the BatchNorm weights; decaykit's names for HF's code paths do not
    plain = transformers.Trainer(model=resnet(), args=training_args(tmp_path), train_dataset=RandomImages())
    assert bn_weights(model) <= set(plain.get_decay_parameter_names(plain.model))
    assert set(trainer.get_decay_parameter_names(model)) == groups[0.1] | groups[0.3]
    assert trainer.decay_plan()["resnet.embedder.embedder.normalization.weight"].reason == "norm:BatchNorm2d"

    # the audit agrees with the groups, and finds HF's mistake in the plain Trainer's optimizer
    assert decaykit.audit(model, opt, rules=[rule]).ok
    plain_opt = plain.create_optimizer()
    report = decaykit.audit(plain.model, plain_opt)
    assert not report.ok
    assert "decayed-norm" in {f.code for f in report.findings}


def test_one_step_norms_and_biases_are_not_decayed(tmp_path):
    base = resnet()
    theta0 = {n: p.detach().clone() for n, p in base.named_parameters()}
    lam = 0.5
    decayed = one_step(hf.DecayTrainer, base, tmp_path, lam)
    free = one_step(hf.DecayTrainer, base, tmp_path, 0.0)
    plain = one_step(transformers.Trainer, base, tmp_path, lam)
    decided = decaykit.plan(base, lam)
    assert any(not d.decay for d in decided) and any(d.decay for d in decided)
    for d in decided:
        if d.decay:
            torch.testing.assert_close(decayed[d.name] - free[d.name], -LR * lam * theta0[d.name], atol=1e-6, rtol=0)
        else:  # bit for bit: the decay never touched it
            assert torch.equal(decayed[d.name], free[d.name]), d.name
    for name in bn_weights(base):  # the same check catches HF's rule decaying BatchNorm
        torch.testing.assert_close(plain[name] - free[name], -LR * lam * theta0[name], atol=1e-6, rtol=0)
        assert not torch.equal(plain[name], free[name])


def test_decay_engine_inside_the_trainer(tmp_path):
    base = resnet()
    theta0 = {n: p.detach().clone() for n, p in base.named_parameters()}
    lam = 0.02  # TrainingArguments' λ is torch AdamW's; lr_independent gets λ·η_max, the same decay at the peak LR
    engine = {"mode": "lr_independent", "schedule": schedules.linear(1.0, 0.5, steps=10)}
    decayed = one_step(hf.DecayTrainer, base, tmp_path, lam, decay_engine=engine)
    free = one_step(hf.DecayTrainer, base, tmp_path, 0.0, decay_engine=engine)
    for d in decaykit.plan(base, lam):
        if d.decay:
            torch.testing.assert_close(decayed[d.name] - free[d.name], -LR * lam * theta0[d.name], atol=1e-6, rtol=0)
        else:
            assert torch.equal(decayed[d.name], free[d.name]), d.name

    with pytest.warns(DecayWarning, match=r"weight_decay=0.02 is a lr_coupled λ.*0.02 -> 0.0002 at η_max 0.01"):
        trainer = hf.DecayTrainer(model=resnet(), args=training_args(tmp_path, weight_decay=lam),
                                  train_dataset=RandomImages(), decay_engine=engine)
        trainer.train()
    opt = inner(trainer.optimizer)
    assert isinstance(opt, decaykit.WeightDecay) and opt.steps_taken == 3
    kinds = [(e["kind"], e["rate"]) for e in opt.expected_decay()]
    assert kinds == [("decoupled", pytest.approx(LR * lam * (1 - 0.5 * 3 / 10))), ("none", 0.0)]
    assert trainer.lr_scheduler.optimizer is trainer.optimizer  # HF's scheduler drives the engine


@pytest.mark.parametrize(("engine", "rate"), [
    ({"mode": "lr_independent", "convention": "lr_independent"}, 1e-3),  # the number is already lr_independent
    ({"mode": "lr_coupled"}, LR * 1e-3),  # torch AdamW's convention: nothing to convert, nothing to warn
    ({"mode": "corrected"}, LR * 1e-3),  # AdamC's λ decays as AdamW's at the peak LR: the same number
])
def test_decay_engine_conversion_only_where_the_conventions_differ(tmp_path, engine, rate):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DecayWarning)
        trainer = hf.DecayTrainer(model=resnet(), args=training_args(tmp_path, weight_decay=1e-3),
                                  train_dataset=RandomImages(), decay_engine=engine)
        trainer.create_optimizer()
    assert trainer.optimizer.expected_decay()[0]["rate"] == pytest.approx(rate)  # the engine, not yet wrapped


def test_decay_engine_refuses_an_unknown_convention_when_the_trainer_is_made(tmp_path):
    with pytest.raises(DecayError, match="unknown weight-decay convention 'hf'"):
        hf.DecayTrainer(model=resnet(), args=training_args(tmp_path), train_dataset=RandomImages(),
                        decay_engine={"mode": "lr_independent", "convention": "hf"})


def test_plain_trainer_with_optimizer_cls_and_kwargs_tied_llama_layer_decay(tmp_path):
    torch.manual_seed(0)
    model = llama(tied=True)
    args = training_args(tmp_path, max_steps=2)
    cls, kwargs = hf.optimizer_cls_and_kwargs(model, args, layer_decay=0.8)
    assert cls is torch.optim.AdamW and kwargs["betas"] == (args.adam_beta1, args.adam_beta2)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=RandomTokens(),
                                   optimizer_cls_and_kwargs=(cls, kwargs))
    trainer.train()
    opt = inner(trainer.optimizer)
    held = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(held) == len(set(held)) == len(list(model.parameters()))  # the tied table once
    decided = decaykit.plan(model, 0.1, layer_decay=0.8)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(LR * g["lr_scale"])  # HF's scheduler kept the per-group LRs
        for name in g["param_names"]:
            assert (decided[name].weight_decay, decided[name].lr_scale) == (g["weight_decay"], g["lr_scale"])
    assert len({g["lr_scale"] for g in opt.param_groups}) == 4  # embeddings, 2 layers, head/final norm
    norms = {n for n, m in model.named_modules() if "RMSNorm" in type(m).__name__}
    assert {d.name.rsplit(".", 1)[0] for d in decided if d.role == "norm"} == norms
    assert all(decided[f"{n}.weight"].weight_decay == 0 for n in norms)


def test_mixin_on_a_trainer_subclass_uses_the_given_optimizer_class(tmp_path):
    class LoggingTrainer(transformers.Trainer):
        def compute_loss(self, model, inputs, **kwargs):
            self.seen = getattr(self, "seen", 0) + 1
            return super().compute_loss(model, inputs, **kwargs)

    class MyTrainer(hf.DecayTrainerMixin, LoggingTrainer):
        pass

    trainer = MyTrainer(model=resnet(), args=training_args(tmp_path, max_steps=2), train_dataset=RandomImages(),
                        optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": LR, "momentum": 0.9}))
    trainer.train()
    opt = inner(trainer.optimizer)
    assert type(opt) is torch.optim.SGD and trainer.seen == 2
    assert set(names_by_decay(opt)) == {0.1, 0.0}
    assert bn_weights(trainer.model) <= names_by_decay(opt)[0.0]


def test_bad_input_is_a_decay_error(tmp_path):
    with pytest.raises(DecayError, match=r"decay_options has unknown key.*'wd'"):
        hf.DecayTrainer(model=resnet(), args=training_args(tmp_path), decay_options={"wd": 0.1})
    with pytest.raises(DecayError, match="decay_engine must be a dict"):
        hf.DecayTrainer(model=resnet(), args=training_args(tmp_path), decay_engine="lr_independent")
    with pytest.raises(DecayError, match="TrainingArguments"):
        hf.optimizer_cls_and_kwargs(resnet(), {"weight_decay": 0.1})
    with pytest.raises(DecayError, match="optimizer_cls must be"):
        hf.optimizer_cls_and_kwargs(resnet(), training_args(tmp_path), optimizer_cls=dict)
    with pytest.warns(DecayWarning, match="weight_decay is 0"):
        hf.optimizer_cls_and_kwargs(resnet(), training_args(tmp_path, weight_decay=0.0))
    with pytest.raises(AttributeError):
        hf.NoSuchTrainer  # noqa: B018


def test_importing_the_module_does_not_import_transformers():
    code = ("import sys, decaykit.integrations.hf, decaykit.integrations.lightning; "
            "assert 'transformers' not in sys.modules and 'lightning' not in sys.modules")
    import os
    import subprocess

    src = str(Path(__file__).resolve().parents[1] / "src")  # this tree, as pytest's pythonpath
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=env)


def test_example_hf_trainer_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["hf_trainer.py", "--steps", "2", "--output-dir", str(tmp_path)])
    namespace = runpy.run_path(str(EXAMPLES / "hf_trainer.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "weight_decay=0.05: 7 tensors" in out and "weight_decay=0: 13 tensors" in out
    assert "HF's own rule would have decayed, left alone here: 6" in out
    assert "main" in namespace


def test_decay_options_take_example_inputs_and_decide_by_use():
    """HF's Mamba port drops the reference's `_no_weight_decay` on A_log (d_inner, d_state): by shape a
    matrix, by use an exponent. `example_inputs="auto"` reaches the plan through the integration."""
    from transformers import MambaConfig, MambaForCausalLM

    with torch.device("meta"):
        model = MambaForCausalLM(MambaConfig(num_hidden_layers=1, hidden_size=32, state_size=4, vocab_size=64))
    structural = hf.decay_parameter_names(model, example_inputs=False)
    traced = hf.decay_parameter_names(model, example_inputs="auto")
    a_log = "backbone.layers.0.mixer.A_log"
    assert a_log in structural and a_log not in traced
    assert hf.decay_parameter_names(model) == traced  # by default: the model makes its input, and is traced
    assert "backbone.layers.0.mixer.in_proj.weight" in traced
    with pytest.raises(DecayError, match="example_inputs"):
        hf.decay_parameter_names(model, example_input="auto")  # a typo is named, with the right key listed


def test_the_optimizer_s_own_lr_is_the_lr_its_groups_get(tmp_path):
    """``optimizer_cls_and_kwargs=(SGD, {"lr": 0.1})``: a plain Trainer trains at 0.1 (its groups set no lr);
    decaykit's groups carried args.learning_rate, which overrides the keyword, so it trained at HF's default
    silently. The keyword's lr is now the one the groups scale."""
    args = training_args(tmp_path, learning_rate=5e-5)
    given = (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9})
    plain = transformers.Trainer(model=resnet(), args=args, train_dataset=RandomImages(), optimizer_cls_and_kwargs=given)
    ours = hf.DecayTrainer(model=resnet(), args=args, train_dataset=RandomImages(), optimizer_cls_and_kwargs=given)
    for trainer in (plain, ours):
        assert {g["lr"] for g in inner(trainer.create_optimizer()).param_groups} == {0.1}
    cls, kwargs = hf.optimizer_cls_and_kwargs(resnet(), args, optimizer_cls=torch.optim.SGD, optimizer_kwargs={"lr": 0.1})
    assert {g["lr"] for g in cls(**kwargs).param_groups} == {0.1}


def test_a_given_optimizer_with_decay_settings_is_refused_and_decaykit_s_own_kwargs_are_taken(tmp_path):
    args = training_args(tmp_path)
    model = resnet()
    mine = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1)
    with pytest.raises(DecayError, match="would be dropped") as err:  # was: the engine dropped without a word
        hf.DecayTrainer(model=model, args=args, optimizers=(mine, None), decay_engine={"mode": "lr_coupled"})
    assert err.value.argument == "optimizers"
    with pytest.warns(DecayWarning, match="its groups are used as they are"):
        hf.DecayTrainer(model=model, args=args, optimizers=(mine, None))
    # decaykit's own optimizer_cls_and_kwargs with decay_engine: was refused as "builds its own parameter groups"
    given = hf.optimizer_cls_and_kwargs(model, args)
    trainer = hf.DecayTrainer(model=model, args=args, optimizer_cls_and_kwargs=given, decay_engine={"mode": "lr_coupled"})
    assert type(trainer.create_optimizer()) is decaykit.WeightDecay


def test_audit_and_probe_read_the_optimizer_inside_the_trainer_s_wrapper(tmp_path):
    """trainer.optimizer is accelerate's AcceleratedOptimizer: audited as itself, coupled L2 in the Adam it
    steps was "no problems found" and the probe's expectation "unknown"."""
    model = resnet()
    adam = torch.optim.Adam(decaykit.param_groups(model, 0.05), lr=LR)
    trainer = transformers.Trainer(model=model, args=training_args(tmp_path, max_steps=1),
                                   train_dataset=RandomImages(), optimizers=(adam, None))
    trainer.train()
    assert type(trainer.optimizer).__name__ == "AcceleratedOptimizer"
    report = decaykit.audit(model, trainer.optimizer)
    assert {f.code for f in report.findings} == {"coupled-adaptive"}
    assert report.optimizer == "Adam (inside AcceleratedOptimizer)"
    assert {e.expected_kind for e in decaykit.probe(trainer.optimizer, model=model).entries} == {"coupled", "none"}


def test_weight_decay_0_warns_only_when_no_group_decays(tmp_path):
    """An absolute rule sets its own λ, so with TrainingArguments.weight_decay=0 its tensors still decay: the
    warning that nothing decays was told from the 0 alone."""
    args = training_args(tmp_path, weight_decay=0.0)
    rule = decaykit.Rule("classifier.*", weight_decay=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DecayWarning)
        _, kwargs = hf.optimizer_cls_and_kwargs(resnet(), args, rules=[rule])
    assert {g["weight_decay"] for g in kwargs["params"]} == {0.0, 0.1}
    with pytest.warns(DecayWarning, match="weight_decay is 0"):  # no rule: nothing decays, as the warning says
        hf.optimizer_cls_and_kwargs(resnet(), args)
