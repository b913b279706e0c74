"""decaykit.optimizers: the registry is measured against torch, and every consumer agrees with it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import decaykit
from decaykit import DecayError, WeightDecay, optimizers
from decaykit.convert import ALIASES, CONVENTIONS
from decaykit.engine.cautious import FIRST_MOMENT_SIGN
from decaykit.optimizers import REGISTRY, OptimizerInfo
from decaykit.probe.expectations import expectations
from decaykit.verify import CLOSED_FORMS

SRC = Path(__file__).resolve().parents[1] / "src" / "decaykit"
LR, WD = 0.01, 0.5
TORCH_ENTRIES = [e for e in REGISTRY.values() if e.torch_class() is not None]
THIRD_PARTY = [e for e in REGISTRY.values() if e.module != "torch.optim"]
# Optimizer class names found in the wild, beyond the registry's own: a name of these that the
# package mentions must be in the registry. (hf.py's GaLore, APOLLO and LOMO are HF optimizer
# families that build their own groups; decaykit leaves their decay alone.)
WELL_KNOWN = ("LAMB", "Lamb", "LARS", "Lars", "Sophia", "SophiaG", "Prodigy", "SOAP", "Shampoo", "AdEMAMix",
              "Adam8bit", "AdamW8bit", "PagedAdamW", "PagedAdamW8bit", "PagedLion", "FusedAdam", "FusedLAMB",
              "FusedSGD", "MADGRAD", "AdaBelief", "NovoGrad", "Adan", "LaProp", "StableAdamW", "AdamWScheduleFree",
              "SGDScheduleFree", "RAdamScheduleFree", "GaLoreAdamW", "GaLoreAdafactor", "APOLLOAdamW", "AdaLomo",
              "Dion2", "NorMuon", "LionW", "DecoupledLionW", "Yogi", "AdamP", "SGDP", "Ranger", "Lookahead", "CAME",
              "Tiger", "AdaHessian", "AdaBound", "AdaMod", "DiffGrad", "QHAdam", "SGDW", "NAdamW", "MARS", "Kron")


def _torch_optimizer_classes() -> list[type]:
    return [c for c in vars(torch.optim).values()
            if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer]


def _params(seed: int = 0) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)  # 2-D only: Muon takes nothing else
    return [nn.Parameter(torch.randn(6, 4, generator=gen)), nn.Parameter(torch.randn(3, 5, generator=gen))]


def _build(entry: OptimizerInfo, params: Any, weight_decay: float = WD, **settings: Any) -> torch.optim.Optimizer:
    cls = entry.torch_class()
    assert cls is not None
    if entry.decay == "none":
        return cls(params, lr=LR)
    return cls(params, lr=LR, weight_decay=weight_decay, **settings)


def _train(opt: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


# every (entry, group settings) pair a torch optimizer's weight_decay can take
WITH_DECAY = [e for e in TORCH_ENTRIES if e.decay != "none"]
SETTINGS = [(e, {}) for e in WITH_DECAY] + [
    (e, {"decoupled_weight_decay": not e.flag_default}) for e in WITH_DECAY if e.decay == "flag" and e.name != "AdamW"
]


def _id(case: Any) -> str:
    entry, settings = case
    return entry.name + "".join(f"-{k}={v}" for k, v in settings.items())


# ---- coverage -----------------------------------------------------------------------------------

def test_every_torch_optimizer_class_has_an_entry_of_its_own() -> None:
    classes = _torch_optimizer_classes()
    assert {"SGD", "AdamW", "Adafactor", "Muon", "LBFGS", "SparseAdam"} <= {c.__name__ for c in classes}
    for cls in classes:
        entry = optimizers.info(cls)
        assert entry is not None and entry.module == "torch.optim" and entry.torch_class() is cls, cls
    assert {e.name for e in TORCH_ENTRIES} == {c.__name__ for c in classes}


def test_every_optimizer_the_package_names_is_in_the_registry() -> None:
    text = "\n".join(p.read_text() for p in sorted(SRC.rglob("*.py")) if p.name != "optimizers.py")
    dotted = set(re.findall(r"torch\.optim\.([A-Z]\w*)", text)) - {"Optimizer"}
    assert dotted and dotted <= {e.name for e in TORCH_ENTRIES}, dotted
    vocabulary = {e.name for e in REGISTRY.values()} | set(WELL_KNOWN)
    named = {n for n in vocabulary if re.search(rf"(?<![\w.]){n}(?!\w)", text)}
    assert {"AdamW", "AdamC", "Adafactor", "DecoupledAdamW", "Muon", "Dion"} <= named
    assert named <= {e.name for e in REGISTRY.values()}, named - {e.name for e in REGISTRY.values()}


def test_entries_are_well_formed_and_match_torch_settings() -> None:
    for entry in REGISTRY.values():
        assert entry.evidence and REGISTRY[entry.key] is entry
        assert entry.convention is None or entry.convention in CONVENTIONS, entry
        assert entry.cli_name is None or (entry.cli_name == entry.name.lower() and entry.torch_class() is not None)
    for entry in TORCH_ENTRIES:
        defaults = _build(entry, _params()).defaults
        assert ("weight_decay" in defaults) == (entry.decay != "none"), entry.name
        assert ("decoupled_weight_decay" in defaults) == (entry.decay == "flag"), entry.name
    with pytest.raises(DecayError, match=r"only torch\.optim"):
        OptimizerInfo("Foo", "foo", "decoupled", engine="inner", evidence="-")
    with pytest.raises(DecayError, match="refusal"):
        OptimizerInfo("Foo", decay="none", engine="refused")


def test_lookup_by_object_class_and_name() -> None:
    adamw = REGISTRY["AdamW"]
    assert optimizers.info(torch.optim.AdamW(_params())) is adamw
    assert optimizers.info("AdamW") is optimizers.info("adamw") is adamw
    assert optimizers.info("transformers.optimization.Adafactor").module == "transformers.optimization"
    assert optimizers.info("Adafactor") is REGISTRY["Adafactor"]  # torch's, on a name shared with HF's
    assert optimizers.info("nope") is None

    class Custom(torch.optim.AdamW):  # may override step(): not AdamW's entry
        pass

    assert optimizers.info(Custom) is None
    assert optimizers.info(WeightDecay(torch.optim.AdamW(_params()))) is None
    lion = type("Lion", (torch.optim.SGD,), {"__module__": "lion_pytorch.lion_pytorch"})
    assert optimizers.info(lion) is REGISTRY["lion_pytorch.Lion"]
    # another package's class of the same name may decay otherwise (pytorch_optimizer's Lion can be coupled)
    assert optimizers.info(type("Lion", (torch.optim.SGD,), {"__module__": "pytorch_optimizer.optimizer.lion"})) is None
    assert optimizers.info(type("Adafactor", (torch.optim.SGD,), {"__module__": "transformers.optimization"})) \
        is REGISTRY["transformers.optimization.Adafactor"]
    assert optimizers.by_cli_name("radam") is REGISTRY["RAdam"]
    with pytest.raises(DecayError, match=r"optimizer must be one of adadelta, .*sgd, got 'muon'"):
        optimizers.by_cli_name("muon")


def test_cli_choices_keep_every_name_the_commands_took() -> None:
    from decaykit.cli import audit_cmd, probe_cmd

    before = {"sgd", "adam", "adamw", "rmsprop", "adagrad", "nadam", "radam", "adamax"}
    assert before <= set(optimizers.cli_choices())
    for table in (audit_cmd.OPTIMIZERS, probe_cmd.OPTIMIZERS):
        assert table == {n: optimizers.by_cli_name(n).name for n in optimizers.cli_choices()}


# ---- the facts, measured against torch ----------------------------------------------------------

@pytest.mark.parametrize("case", SETTINGS, ids=_id)
def test_the_probe_measures_the_registered_convention(case: tuple[OptimizerInfo, dict]) -> None:
    entry, settings = case
    opt = _build(entry, _params(), **settings)
    _train(opt, 2)  # moments and momentum built: the decay is isolated from them
    report = decaykit.probe(opt)
    want = entry.decay_in(opt.param_groups[0])
    assert report.ok, str(report)
    assert {(e.kind, e.expected_kind) for e in report.entries} == {(want, want)}
    if want == "decoupled":
        assert all(e.measured == pytest.approx(1 - LR * WD, abs=1e-6) for e in report.entries)


@pytest.mark.parametrize(("name", "settings"), [
    ("Adafactor", {}), ("Adafactor", {"beta2_decay": -0.5, "foreach": True}),
    ("Muon", {}), ("Muon", {"adjust_lr_fn": "match_rms_adamw", "nesterov": False}),
])
@pytest.mark.parametrize("lr", [0.01, 0.1])
def test_adafactor_and_muon_decay_by_one_minus_lr_lambda(name: str, settings: dict, lr: float) -> None:
    # the measurement the registry records: zero gradients, λ > 0 against λ = 0, a few steps
    if getattr(torch.optim, name, None) is None:
        pytest.skip(f"torch {torch.__version__} has no {name}")
    ratios = {}
    for wd in (0.0, 0.5, 2.0):
        params = _params()
        opt = getattr(torch.optim, name)(params, lr=lr, weight_decay=wd, **settings)
        steps = []
        for _ in range(3):
            before = [p.detach().clone() for p in params]
            for p in params:
                p.grad = torch.zeros_like(p)
            opt.step()
            steps.append(torch.cat([(p.detach() / b).flatten() for p, b in zip(params, before)]))
        ratios[wd] = torch.stack(steps)
    for wd, r in ratios.items():
        torch.testing.assert_close(r, torch.full_like(r, 1 - lr * wd), rtol=0, atol=1e-6)
    assert REGISTRY[name].decay == "decoupled" and REGISTRY[name].convention == "lr_coupled"


@pytest.mark.parametrize("entry", [e for e in TORCH_ENTRIES if e.engine != "refused"], ids=lambda e: e.name)
def test_other_decay_is_the_only_setting_that_moves_a_fresh_optimizer_without_weight_decay(entry: OptimizerInfo) -> None:
    # zero gradients, weight_decay=0, no state: nothing moves a tensor but a second decay (ASGD's lambd)
    def factor(**settings: Any) -> torch.Tensor:
        params = _params()
        before = [p.detach().clone() for p in params]
        opt = _build(entry, params, weight_decay=0.0, **settings)
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
        return torch.cat([(p.detach() / b).flatten() for p, b in zip(params, before)])

    if not entry.other_decay:
        assert torch.equal(factor(), torch.ones_like(factor())), entry.name
        return
    torch.testing.assert_close(factor(**{entry.other_decay: 0.01}), torch.full((39,), 1 - LR * 0.01), rtol=0, atol=1e-7)
    assert torch.equal(factor(**{entry.other_decay: 0.0}), torch.ones(39))


@pytest.mark.parametrize("entry", [e for e in TORCH_ENTRIES if "betas" in _build(e, _params()).defaults
                                   and e.engine != "refused"], ids=lambda e: e.name)
def test_first_moment_sign_is_the_update_sign(entry: OptimizerInfo) -> None:
    opt = _build(entry, _params(), weight_decay=0.0)
    gen = torch.Generator().manual_seed(2)
    agree = True
    for step in range(6):
        params = [p for g in opt.param_groups for p in g["params"]]
        before = [p.detach().clone() for p in params]
        for p in params:  # gradients that flip sign, so m_t and g_t often disagree
            p.grad = torch.randn(p.shape, generator=gen) * (-3.0) ** step
        opt.step()
        for p, b in zip(params, before):
            moved, moment = b - p.detach(), opt.state[p]["exp_avg"]
            agree &= bool((torch.sign(moved) == torch.sign(moment))[moved != 0].all())
    assert agree == entry.first_moment_sign
    assert (type(opt) in FIRST_MOMENT_SIGN) == entry.first_moment_sign


# ---- every consumer agrees with the registry ----------------------------------------------------

ENGINE_PATHS = {  # (decay, mode) -> the engine's path for the group
    ("flag", "lr_coupled"): "inner", ("decoupled", "lr_coupled"): "inner", ("coupled", "lr_coupled"): "extra_pass",
    ("none", "lr_coupled"): "extra_pass", ("flag", "coupled_l2"): "inner", ("coupled", "coupled_l2"): "inner",
    ("decoupled", "coupled_l2"): "l2_gradient", ("none", "coupled_l2"): "l2_gradient",
}


@pytest.mark.parametrize("entry", TORCH_ENTRIES, ids=lambda e: e.name)
def test_the_engine_drives_each_optimizer_as_registered(entry: OptimizerInfo) -> None:
    opt = _build(entry, _params())
    if entry.engine == "refused":
        with pytest.raises(DecayError, match=re.escape(entry.refusal)):
            WeightDecay(opt)
        return
    opt.param_groups[0].setdefault("weight_decay", WD)  # Rprop has no setting: the engine reads λ anyway
    for mode in ("lr_coupled", "coupled_l2"):
        engine = WeightDecay(opt, mode=mode)
        assert engine.paths()[0] == ENGINE_PATHS[entry.decay, mode], mode
        assert engine.expected_decay()[0]["kind"] == ("coupled_l2" if mode == "coupled_l2" else "decoupled")
    # the inner path, with λ rescaled; WD = 0.5 read as lr_independent is large on purpose (a 25% shrink to measure)
    engine = WeightDecay(opt, mode="lr_independent", max_lr=2 * LR, allow_large_decay=True)
    _train(engine, 1)
    report = decaykit.probe(engine)
    assert report.ok and {e.kind for e in report.entries} == {"decoupled"}, str(report)
    assert all(e.measured == pytest.approx(1 - WD / 2, abs=1e-6) for e in report.entries)


def _audit_view(opt: torch.optim.Optimizer, model: nn.Module) -> tuple[bool, bool]:
    """(decoupled?, coupled-adaptive?) as the audit sees the optimizer: a frozen decayed tensor is an
    error only under decoupled decay."""
    report = decaykit.audit(model, opt, weight_decay=WD)
    found = {f.code: f.severity for f in report.findings}
    return found["frozen-in-optimizer"] == "error", "coupled-adaptive" in found


def _frozen_model() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(4, 6, bias=False), nn.Linear(6, 3, bias=False))
    model[1].weight.requires_grad_(False)
    return model


@pytest.mark.parametrize("case", SETTINGS, ids=_id)
def test_probe_expectation_and_audit_agree_with_the_registry(case: tuple[OptimizerInfo, dict]) -> None:
    entry, settings = case
    model = _frozen_model()
    opt = _build(entry, model.parameters(), **settings)
    want = entry.decay_in(opt.param_groups[0])
    assert {e.kind for e in expectations(opt)} == {want}
    assert _audit_view(opt, model) == (want == "decoupled", entry.adaptive and want == "coupled")


@pytest.mark.parametrize("entry", THIRD_PARTY, ids=lambda e: e.key)
def test_third_party_classes_are_matched_by_name_and_package(entry: OptimizerInfo) -> None:
    # the package itself is never imported: a stand-in of the class's name, in a module of that package
    stand_in = type(entry.name, (torch.optim.SGD,), {"__module__": f"{entry.module}.stand_in"})
    model = _frozen_model()
    opt = stand_in(model.parameters(), lr=LR, weight_decay=WD)
    assert optimizers.info(opt) is entry
    # the audit takes its convention; the probe measures it, as the rate may hang on the class's own settings
    assert _audit_view(opt, model)[0] == (entry.decay == "decoupled")
    (expected,) = {e.kind for e in expectations(opt)}
    assert expected == "unknown" and entry.module in expectations(opt)[0].source


def test_a_saved_state_dict_is_read_as_its_class() -> None:
    for entry, settings in SETTINGS:
        model = _frozen_model()
        opt = _build(entry, model.parameters(), **settings)
        group = {**opt.state_dict()["param_groups"][0], "lr_scale": 1.0, "initial_lr": LR}
        found = optimizers.from_settings(group)
        assert found is not None and found.decay_in(group) == entry.decay_in(opt.param_groups[0])
        assert found is entry or {found.name, entry.name} == {"Adam", "AdamW"}
        report = decaykit.audit(model, opt.state_dict(), weight_decay=WD)
        assert report.optimizer == f"{found.name} (state_dict)"
    assert optimizers.from_settings({"lr": 0.1, "weight_decay": 0.0, "momentum": 0.9}) is None


def test_verify_and_convert_read_the_registry() -> None:
    for closed in CLOSED_FORMS.values():
        assert closed.kind == optimizers.info(closed.torch_class).decay_in()
    for name in ("adamw", "adam", "sgd", "adamc", "composer"):
        assert ALIASES[name] == optimizers.info("DecoupledAdamW" if name == "composer" else name).convention


def test_unwrap_finds_the_optimizer_inside_the_frameworks_wrappers() -> None:
    pytest.importorskip("lightning")
    from lightning.fabric.wrappers import _FabricOptimizer

    adam = torch.optim.Adam(_params(), lr=LR, weight_decay=WD)
    assert optimizers.unwrap(adam) is adam and optimizers.wrapper_name(adam) is None
    from lightning.pytorch.core.optimizer import LightningOptimizer

    wrapped = LightningOptimizer(adam)
    assert type(wrapped).__name__ == "LightningAdam"  # Lightning renames the wrapper's class after the inside
    assert optimizers.wrapper_name(wrapped) == "LightningOptimizer" and optimizers.unwrap(wrapped) is adam
    assert optimizers.unwrap(_FabricOptimizer(wrapped, strategy=None)) is adam  # nested: all the way in

    class AcceleratedOptimizer(torch.optim.Optimizer):  # accelerate's, which needs an Accelerator to build
        def __init__(self, optimizer: torch.optim.Optimizer) -> None:
            self.optimizer = optimizer

    assert optimizers.unwrap(AcceleratedOptimizer(adam)) is adam
    # a WeightDecay engine decays by its own mode: it is what gets audited, not looked through
    engine = WeightDecay(torch.optim.AdamW(_params(), lr=LR, weight_decay=WD))
    assert optimizers.unwrap(LightningOptimizer(engine)) is engine and optimizers.unwrap(engine) is engine
