"""audit(): each mistake users make with weight decay is found, with a severity and a fix."""

from __future__ import annotations

import pytest
import torch

import decaykit
from decaykit.models import TinyGPT, TinyViT

from hf_models import llama


def codes(report) -> dict[str, str]:
    return {f.code: f.severity for f in report.findings}


def test_plain_adamw_decays_norms_and_biases():
    model = llama()
    report = decaykit.audit(model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1))
    assert codes(report) == {"decayed-norm": "error"}  # Llama has no biases; its 5 RMSNorms are decayed
    (finding,) = report.findings
    assert len(finding.params) == 5 and "norm:LlamaRMSNorm" in finding.message
    assert "decaykit.param_groups" in finding.fix
    assert not report.ok


def test_decaykit_groups_audit_clean():
    model = TinyGPT()
    report = decaykit.audit(model, torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-3))
    assert report.findings == [] and report.ok
    assert "no problems found" in str(report)


def test_hook_declared_tokens_decayed_is_an_error():
    model = TinyViT(depth=1)
    report = decaykit.audit(model, torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4))
    hook = next(f for f in report.findings if f.code == "decayed-hook")
    assert hook.severity == "error" and set(hook.params) == {"pos_embed", "cls_token"}


def test_missing_frozen_and_duplicate():
    model = TinyGPT(depth=2)
    for p in model.h[0].parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-3)
    opt.param_groups[0]["params"].pop()  # lose one trainable tensor
    opt.param_groups[1]["params"].append(opt.param_groups[0]["params"][0])  # and repeat another
    # a frozen one, decayed (torch wants names in every group once one group has them)
    opt.add_param_group({"params": [model.h[0].attn.qkv.weight], "param_names": ["h.0.attn.qkv.weight"],
                         "weight_decay": 0.1})
    report = decaykit.audit(model, opt)
    found = codes(report)
    assert found["missing"] == "error" and found["duplicate"] == "error"
    assert found["frozen-in-optimizer"] == "error"  # decoupled decay on a frozen tensor shrinks it
    frozen = next(f for f in report.findings if f.code == "frozen-in-optimizer")
    assert frozen.params == ("h.0.attn.qkv.weight",)


@pytest.mark.parametrize(("make", "flagged"), [
    (lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=0.01), True),
    (lambda p: torch.optim.RMSprop(p, lr=1e-3, weight_decay=0.01), True),
    (lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=0.01, decoupled_weight_decay=True), False),
    (lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01), False),
    (lambda p: torch.optim.SGD(p, lr=1e-3, weight_decay=0.01), False),  # L2 = decay for plain SGD
    (lambda p: torch.optim.Adam([q for g in p for q in g["params"]], lr=1e-3), False),  # no decay at all
])
def test_coupled_adaptive_decay_flagged(make, flagged):
    model = TinyGPT(depth=1)
    report = decaykit.audit(model, make(decaykit.param_groups(model, 0.01)), weight_decay=0.01)
    assert ("coupled-adaptive" in codes(report)) == flagged


def test_tied_conflict_and_policy_difference():
    model = TinyGPT(depth=1)
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1, rules=["h.0.mlp.*.weight:wd=0.2"]), lr=1e-3)
    report = decaykit.audit(model, opt, weight_decay=0.1, decay_embeddings=False)
    found = codes(report)
    assert found["tied-conflict"] == "warning"
    assert found["policy-difference"] == "info"
    assert found["decayed-embedding"] == "warning"  # wte decayed although embeddings should not be


def test_audit_of_a_saved_state_dict(tmp_path):
    model = TinyGPT(depth=1)
    named = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-3)
    torch.save({"optimizer": named.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    report = decaykit.audit(model, state)
    assert report.ok and report.optimizer == "AdamW (state_dict)"
    plain = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=0.1).state_dict()
    report = decaykit.audit(model, plain)
    assert {"decayed-norm", "coupled-adaptive"} <= set(codes(report))
    assert report.mapping == "by position" and "BY POSITION" in str(report).splitlines()[0]
    assert codes(report)["decayed-norm"] == "error"  # one group holding every tensor: the order cannot matter


def test_a_saved_optimizer_holding_fewer_tensors_than_the_model_trains_is_missing_some_for_sure():
    """By position, which tensors are missing is uncertain, but that some are is not: 3 saved of 43 was a
    warning (exit 0) while the live optimizer's audit said error."""
    model = TinyGPT(depth=1)
    few = torch.optim.AdamW(list(model.parameters())[:3], lr=1e-3, weight_decay=0.05)
    saved, live = decaykit.audit(model, few.state_dict()), decaykit.audit(model, few)
    assert saved.mapping == "by position" and codes(saved)["missing"] == "error" and not saved.ok
    assert codes(live)["missing"] == "error"


def test_audit_bad_input():
    with pytest.raises(decaykit.DecayError, match="optimizer must be"):
        decaykit.audit(TinyGPT(depth=1), [1, 2])
    with pytest.raises(decaykit.DecayError, match="model must be"):
        decaykit.audit("gpt", torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1))


def test_measured_audit_reports_what_the_probe_sees():
    model = TinyGPT(depth=1)
    opt = torch.optim.AdamW(list(model.parameters())[:-1], lr=1e-3, weight_decay=0.1)
    report = decaykit.audit(model, opt, measure=True)
    found = codes(report)
    assert found["measured-decay-on-excluded"] == "error" and found["missing"] == "error"
    assert "measured-mismatch" not in found  # the missing tensor is not a second, measured problem
    shrink = next(f for f in report.findings if f.code == "measured-decay-on-excluded")
    assert "h.0.ln_1.weight" in shrink.params and "0.9999" in shrink.message  # 1 - lr·λ, measured
    clean = decaykit.audit(model, torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-3), measure=True)
    assert clean.ok and clean.findings == [] and clean.probe.ok


def _small():
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))


def test_measured_audit_reports_a_decay_that_weight_decay_cannot_switch_off():
    # ASGD's lambd shrinks every tensor by (1 − lambd·lr) per step, norms and biases in weight_decay=0 groups too
    model = _small()
    report = decaykit.audit(model, torch.optim.ASGD(decaykit.param_groups(model, 0.1), lr=1.0, lambd=1e-2), measure=True)
    assert not report.ok and codes(report) == {"measured-uncontrolled-decay": "error"}
    (finding,) = report.findings
    assert set(finding.params) == {n for n, _ in model.named_parameters()}
    assert "down to 0.99 per step" in finding.message and "ASGD's lambd" in finding.message
    assert "4 of them are tensors the policy excludes" in finding.message and "norm:LayerNorm" in finding.message
    assert finding.fix.startswith("set lambd=0")
    assert "measured-uncontrolled-decay" in str(report.probe)  # the probe's all-clear line names the error
    # the same with weight_decay=0 everywhere: the audit's λ is 0, so nothing should shrink
    plain = decaykit.audit(model, torch.optim.ASGD(model.parameters(), lr=1.0, lambd=1e-2), measure=True)
    assert not plain.ok and "weight_decay is 0, so none of them should shrink" in plain.findings[0].message
    # on weights the policy decays only, it is a warning: the decay they get is not the weight_decay set
    bare = torch.nn.Linear(4, 4, bias=False)
    found = codes(decaykit.audit(bare, torch.optim.ASGD(bare.parameters(), lr=1.0, lambd=1e-2, weight_decay=0.1),
                                 measure=True))
    assert found == {"measured-uncontrolled-decay": "warning"}
    off = decaykit.audit(model, torch.optim.ASGD(decaykit.param_groups(model, 0.1), lr=1.0, lambd=0.0), measure=True)
    assert off.ok and off.findings == []


@pytest.mark.parametrize(("inner", "mode", "flagged"), [
    (torch.optim.Adam, "lr_coupled", False),  # the engine decays decoupled, whatever Adam's own convention
    (torch.optim.Adam, "cautious", False),
    (torch.optim.AdamW, "coupled_l2", True),  # λθ through Adam's denominator
    (torch.optim.RMSprop, "coupled_l2", True),
    (torch.optim.SGD, "coupled_l2", False),  # L2 = decay for plain SGD
])
def test_an_engine_is_audited_by_its_mode_live_and_saved(inner, mode, flagged):
    model = _small()
    engine = decaykit.WeightDecay(inner(decaykit.param_groups(model, 0.1), lr=1e-3), mode=mode)
    for target in (engine, engine.state_dict()):
        report = decaykit.audit(model, target)
        assert f"WeightDecay(mode={mode!r}) over {inner.__name__}" in report.optimizer
        assert ("coupled-adaptive" in codes(report)) == flagged, str(report)
        if flagged:
            (finding,) = report.findings
            assert "mode 'coupled_l2'" in finding.message and "param_groups[0]" in finding.message
            assert "mode='lr_coupled'" in finding.fix
    assert any(f"mode={mode!r}" in n for n in decaykit.audit(model, engine.state_dict()).notes)


def _two_groups(model, first: dict, second: dict) -> list[dict]:
    named = dict(model.named_parameters())
    return [{"params": [named[n] for n in names], "param_names": list(names), **settings}
            for names, settings in ((("1.weight", "1.bias", "0.bias", "2.bias"), first),
                                    (("0.weight", "2.weight"), second))]


@pytest.mark.parametrize("coupled", [0, 1])
def test_coupled_adaptive_is_decided_per_group_and_names_the_group(coupled):
    model = _small()
    flags = [{"weight_decay": 0.0, "decoupled_weight_decay": True}, {"weight_decay": 0.1, "decoupled_weight_decay": True}]
    flags[coupled] = {"weight_decay": 0.1, "decoupled_weight_decay": False}
    opt = torch.optim.Adam(_two_groups(model, *flags), lr=1e-3)
    for target in (opt, opt.state_dict()):
        finding = next(f for f in decaykit.audit(model, target, weight_decay=0.1).findings
                       if f.code == "coupled-adaptive")
        assert finding.severity == "warning"
        assert f"param_groups[{coupled}] (weight_decay=0.1)" in finding.message
        assert f"param_groups[{1 - coupled}]" not in finding.message
        assert f"set decoupled_weight_decay=True in param_groups[{coupled}]" in finding.fix


def test_a_decayed_frozen_tensor_is_an_error_by_its_own_group():
    # decoupled decay shrinks a frozen tensor once its grad is a zero tensor; coupled L2 through Adam barely does
    model = _small()
    model[0].weight.requires_grad_(False)
    rest = [p for n, p in model.named_parameters() if n not in ("0.weight", "2.weight")]

    def frozen_finding(frozen_decoupled: bool) -> str:
        opt = torch.optim.Adam([
            {"params": [model[2].weight], "weight_decay": 0.1, "decoupled_weight_decay": not frozen_decoupled},
            {"params": [model[0].weight], "weight_decay": 0.1, "decoupled_weight_decay": frozen_decoupled},
            {"params": rest, "weight_decay": 0.0}], lr=1e-3)
        return codes(decaykit.audit(model, opt, weight_decay=0.1))["frozen-in-optimizer"]

    assert frozen_finding(True) == "error" and frozen_finding(False) == "warning"


def test_asgds_lambd_is_measured_after_training_too_and_not_mistaken_for_momentum():
    """ASGD has no momentum, so its zero-gradient step reads lambd at any step; Adam's momentum after training is not
    a hidden decay (its moments move θ with zero gradients)."""
    model = _small()
    opt = torch.optim.ASGD(decaykit.param_groups(model, 0.1), lr=0.5, lambd=1e-2)
    for _ in range(5):
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    assert all(opt.state[p] for p in model.parameters())
    eta = float(opt.state[model[1].weight]["eta"])  # ASGD's step size now: θ ← θ(1 − lambd·η_t)
    report = decaykit.audit(model, opt, measure=True)
    assert codes(report) == {"measured-uncontrolled-decay": "error"}
    norm = next(e for e in report.probe.entries if e.name == "1.weight")
    assert norm.other_decay == pytest.approx(1 - 1e-2 * eta, abs=1e-6) and "ASGD's lambd" in norm.note
    adam = torch.optim.Adam(decaykit.param_groups(model, 0.0), lr=1e-2)
    for _ in range(3):
        model(torch.randn(8, 4)).pow(2).mean().backward()
        adam.step()
        adam.zero_grad()
    assert all(e.other_decay is None for e in decaykit.probe(adam, model=model).entries)


def test_audit_and_probe_look_through_a_framework_s_wrapper():
    """Lightning hands the training step a LightningOptimizer: audited as the wrapper, coupled L2 in Adam was
    not found ("no problems"), and the probe's expectation was "unknown"."""
    pytest.importorskip("lightning")
    from lightning.pytorch.core.optimizer import LightningOptimizer

    model = TinyGPT(depth=1)
    adam = torch.optim.Adam(decaykit.param_groups(model, 0.05), lr=1e-3)
    wrapped = LightningOptimizer(adam)
    report = decaykit.audit(model, wrapped)
    assert codes(report) == codes(decaykit.audit(model, adam)) == {"coupled-adaptive": "warning"}
    assert report.optimizer == "Adam (inside LightningOptimizer)"
    measured = decaykit.probe(wrapped, model=model)
    assert measured.optimizer == "Adam (inside LightningOptimizer)"
    assert {e.expected_kind for e in measured.entries} == {"coupled", "none"} and measured.ok
    both = decaykit.audit(model, wrapped, measure=True)
    assert codes(both) == {"coupled-adaptive": "warning"} and both.probe.optimizer == measured.optimizer


class _Adapted(torch.nn.Module):
    """A frozen base layer and a trainable low-rank adapter beside it, as peft's LoRA builds them."""

    def __init__(self) -> None:
        super().__init__()
        self.base = torch.nn.Linear(8, 8).requires_grad_(False)
        self.lora_a = torch.nn.Linear(8, 2, bias=False)
        self.lora_b = torch.nn.Linear(2, 8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_b(self.lora_a(x))


def test_frozen_tensors_without_a_grad_are_not_measured_as_decayed():
    """AdamW(model.parameters()) holding a frozen base: torch skips tensors whose .grad is None, so they never
    move; the audit said they were measured shrinking and decayed otherwise than their group says."""
    torch.manual_seed(0)
    model = _Adapted()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    base = [p.detach().clone() for p in model.base.parameters()]
    for _ in range(3):
        model(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
    assert all(torch.equal(p, b) and p.grad is None for p, b in zip(model.base.parameters(), base))
    report = decaykit.audit(model, opt, measure=True)
    assert codes(report) == {"frozen-in-optimizer": "error"}  # what happens once their .grad is a zero tensor
    frozen = next(f for f in report.findings if f.code == "frozen-in-optimizer")
    assert set(frozen.params) == {"base.weight", "base.bias"} and "skips them while their .grad is None" in frozen.message
    assert {e.name for e in report.probe.entries if e.latent} == {"base.weight", "base.bias"}
    # given a zero .grad, the same tensors do shrink, and that is measured
    for p in model.base.parameters():
        p.grad = torch.zeros_like(p)
    stepped = decaykit.audit(model, opt, measure=True)
    shrink = next(f for f in stepped.findings if f.code == "measured-decay-on-excluded")
    assert set(shrink.params) == {"base.weight", "base.bias"} and "0.999 per step" in shrink.message
    # 0.999 is what their group's weight_decay=0.1 says: frozen, not decayed otherwise than configured
    assert codes(stepped) == {"frozen-in-optimizer": "error", "measured-decay-on-excluded": "error"}


@pytest.mark.parametrize("cls", [torch.optim.AdamW, torch.optim.SGD])
def test_a_decay_that_flips_the_sign_every_step_is_an_error(cls):
    """lr·λ = 1.5: each step multiplies θ by −0.5 (AdamW's θ(1 − lr·λ), SGD's −lr·λθ in its step). The audit said
    "no problems found", and with measure=True only measured-mismatch, although −0.5 is what the groups say."""
    model = _small()
    opt = cls(decaykit.param_groups(model, 15.0), lr=0.1)
    for report in (decaykit.audit(model, opt), decaykit.audit(model, opt.state_dict()),
                   decaykit.audit(model, opt, measure=True)):
        assert codes(report) == {"decay-overshoots": "error"}
        (finding,) = report.findings
        assert "param_groups[0] multiplies θ by -0.5 per step" in finding.message
        assert set(finding.params) == {"0.weight", "2.weight"}
    measured = {e.name: e for e in report.probe.entries}["0.weight"]
    assert measured.configured and not measured.agrees
    assert measured.measured == pytest.approx(-0.5, abs=1e-6) and measured.expected == pytest.approx(-0.5)
    assert codes(decaykit.audit(model, cls(decaykit.param_groups(model, 9.0), lr=0.1))) == {}  # lr·λ = 0.9


def test_a_decay_overshoot_is_found_per_stacked_member_and_not_through_adam():
    stacked = torch.nn.Module()
    stacked.w = torch.nn.Parameter(torch.randn(3, 4, 4))
    inner = torch.optim.AdamW([{"params": [stacked.w], "weight_decay": torch.tensor([0.1, 5.0, 10.0])}], lr=0.1)
    engine = decaykit.WeightDecay(inner, mode="lr_coupled", allow_large_decay=True)
    report = decaykit.audit(stacked, engine, measure=True, example_inputs=False)
    assert codes(report) == {"decay-overshoots": "error"} and report.findings[0].params == ("w[2]",)  # r = 1: zeroed
    # through Adam's denominator λθ is no factor of θ: the settings fix none, but a step can be measured
    model = _small()
    adam = torch.optim.Adam(decaykit.param_groups(model, 0.1), lr=1.0)  # a first step of ±lr on weights within ±0.5
    assert codes(decaykit.audit(model, adam)) == {"coupled-adaptive": "warning"}
    measured = decaykit.audit(model, adam, measure=True)
    assert codes(measured) == {"coupled-adaptive": "warning", "measured-decay-overshoots": "error"}
    flipped = next(f for f in measured.findings if f.code == "measured-decay-overshoots")
    factors = {e.name: e.measured for e in measured.probe.entries}
    assert set(flipped.params) == {"0.weight", "2.weight"} and all(factors[n] < 0 for n in flipped.params)


class _Lookahead(torch.optim.Optimizer):
    """pytorch_optimizer's Lookahead as it is built: it holds the optimizer it was given and hands out its
    param_groups list; its step() steps that optimizer, then pulls slow weights toward the fast ones."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}
        self.optimizer, self.defaults, self.state = optimizer, optimizer.defaults, {}

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def step(self, closure=None):
        return self.optimizer.step(closure)


class _Sam(torch.optim.Optimizer):
    """SAM as pytorch_optimizer builds it: the base optimizer is made from its own groups, which it then shares."""

    def __init__(self, params, base, **kwargs) -> None:
        super().__init__(params, {"rho": 0.05, **kwargs})
        self.base_optimizer = base(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups


def test_a_wrapper_sharing_the_groups_of_the_optimizer_it_holds_is_audited_as_that_optimizer():
    """Lookahead, SAM and OrthoGrad around Adam with coupled L2: "no problems found", where Adam alone is warned."""
    model = TinyGPT(depth=1)
    adam = torch.optim.Adam(decaykit.param_groups(model, 0.05), lr=1e-3)
    assert codes(decaykit.audit(model, adam)) == {"coupled-adaptive": "warning"}
    for wrapped in (_Lookahead(adam), _Sam(decaykit.param_groups(model, 0.05), torch.optim.Adam, lr=1e-3)):
        name = type(wrapped).__name__
        report = decaykit.audit(model, wrapped)
        assert codes(report) == {"coupled-adaptive": "warning"}, name
        assert report.optimizer == f"Adam (inside {name})"
        assert any(f"what {name} does around Adam's step is its own" in n for n in report.notes)
    # an optimizer holding another whose groups it does not share is no such wrapper
    other = _Lookahead(adam)
    other.__class__ = type("Holder", (torch.optim.Optimizer,), {"param_groups": [], "step": lambda self, c=None: None})
    assert decaykit.optimizers.unwrap(other) is other


def test_an_optimizer_decaykit_has_no_facts_on_is_said_unknown_not_passed():
    """An unknown class's weight_decay may be coupled or decoupled: the audit says so rather than "no problems",
    and a second setting named like a decay (a weight_decay_1d for 1-D tensors) is named where weight_decay=0."""

    class Custom(torch.optim.Optimizer):
        def __init__(self, params, lr=1e-3, weight_decay=0.0, weight_decay_1d=0.1, lr_decay=0.5):
            super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "weight_decay_1d": weight_decay_1d,
                                      "lr_decay": lr_decay})

        def step(self, closure=None):
            return None

    model = TinyGPT(depth=1)
    report = decaykit.audit(model, Custom(decaykit.param_groups(model, 0.05)))
    assert codes(report) == {"unread-decay-setting": "warning", "unknown-convention": "info"}
    unknown = next(f for f in report.findings if f.code == "unknown-convention")
    assert "param_groups [0]" in unknown.message and "measure=True" in unknown.fix
    unread = next(f for f in report.findings if f.code == "unread-decay-setting")
    assert "weight_decay_1d=0.1 in param_groups [0, 1]" in unread.message and "lr_decay" not in unread.message
    assert "param_groups [1] have weight_decay=0" in unread.message
    quiet = Custom(decaykit.param_groups(model, 0.05), weight_decay_1d=0.0)
    assert codes(decaykit.audit(model, quiet)) == {"unknown-convention": "info"}
    # a torch class is known: none of these
    assert codes(decaykit.audit(model, torch.optim.AdamW(decaykit.param_groups(model, 0.05)))) == {}


def test_measured_audit_says_how_an_unknown_optimizer_decays_and_warns_coupled_l2_rescaled_per_coordinate():
    """torch_optimizer's Yogi and AdaBelief add λθ to the gradient ahead of their adaptive denominator: the audit
    said "no problems found" even with measure=True, whose own probe table saw coupled L2 through a denominator."""

    class Adaptive(torch.optim.Adam):  # a subclass: the registry's Adam facts do not apply to it
        pass

    class Plain(torch.optim.SGD):
        pass

    found = {}
    for cls in (Adaptive, Plain):
        torch.manual_seed(0)
        model = TinyGPT(depth=1)
        opt = cls(decaykit.param_groups(model, 0.05), lr=1e-3)
        model(torch.randint(0, 64, (2, 8))).sum().backward()
        opt.step()
        assert codes(decaykit.audit(model, opt)) == {"unknown-convention": "info"}
        report = decaykit.audit(model, opt, measure=True)
        found[cls.__name__] = report
        assert "unknown-convention" not in codes(report)
        told = next(f for f in report.findings if f.code == "measured-convention")
        assert f"no facts on {cls.__name__}" in told.message
    assert codes(found["Adaptive"]) == {"coupled-adaptive": "warning", "measured-convention": "info"}
    assert "varies per coordinate" in str(found["Adaptive"]) and "WeightDecay(Adaptive(...)" in str(found["Adaptive"])
    assert codes(found["Plain"]) == {"measured-convention": "info"}
    assert "coupled L2 (λθ added to the gradient) in param_groups [0]" in str(found["Plain"])

    class Decoupled(torch.optim.AdamW):  # torch's decoupled_weight_decay=True in its groups says how it decays
        pass

    model = TinyGPT(depth=1)
    assert codes(decaykit.audit(model, Decoupled(decaykit.param_groups(model, 0.05), lr=1e-3), measure=True)) == {}


def test_a_decay_under_a_second_setting_is_named_by_the_setting_the_probe_measured():
    """A weight_decay_1d that decays 1-D tensors whatever weight_decay says (MARS-like): the measured finding names
    the setting and the fix sets it to 0, where it said "a setting other than weight_decay"."""
    from test_probing import SecondDecay

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    opt = SecondDecay(decaykit.param_groups(model, 0.05), lr=3e-3)
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    before = decaykit.audit(model, opt)
    assert codes(before) == {"unread-decay-setting": "warning", "unknown-convention": "info"}
    report = decaykit.audit(model, opt, measure=True)
    uncontrolled = next(f for f in report.findings if f.code == "measured-uncontrolled-decay")
    assert uncontrolled.severity == "error" and "'weight_decay_1d'" in uncontrolled.message
    assert uncontrolled.fix.startswith("set weight_decay_1d=0 in their param groups")
    assert {"0.bias", "1.weight", "1.bias", "2.bias"} == set(uncontrolled.params)
    assert not report.ok


class _SlowWeights(_Lookahead):
    """Lookahead with k = 1: after its optimizer's step, θ ← slow + α(θ − slow) and slow ← θ (Zhang et al. 2019)."""

    def __init__(self, optimizer: torch.optim.Optimizer, alpha: float = 0.5) -> None:
        super().__init__(optimizer)
        self.alpha, self.slow = alpha, {}

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                self.slow.setdefault(p, p.detach().clone())
        out = self.optimizer.step(closure)
        for p, slow in self.slow.items():
            p.copy_(slow.add_(p - slow, alpha=self.alpha))
        return out


def test_the_probe_steps_a_sharing_wrapper_itself_where_the_audit_reads_its_optimizer_s_settings():
    """A sharing wrapper's step is more than its optimizer's: Lookahead keeps α of each step, the decay included.
    The audit reads AdamW's settings through it; the probe measures what the wrapper's step does."""
    model = torch.nn.Linear(8, 4, bias=False)
    lr, lam = 0.01, 0.1
    wrapped = _SlowWeights(torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=lam))
    assert decaykit.audit(model, wrapped).optimizer == "AdamW (inside _SlowWeights)"
    measured = decaykit.probe(wrapped, model=model)
    (entry,) = measured.entries
    assert measured.optimizer == "_SlowWeights" and entry.measured == pytest.approx(1 - 0.5 * lr * lam, rel=1e-6)


def test_a_weight_decay_the_optimizers_step_never_reads_is_a_warning_and_the_tensors_count_as_undecayed():
    """torch's Rprop has no weight decay: a group's weight_decay=0.01 changes nothing (bit for bit)."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    report = decaykit.audit(model, torch.optim.Rprop(decaykit.param_groups(model, 0.01), lr=1e-2))
    assert [(f.severity, f.code) for f in report.findings] == [("warning", "unread-weight-decay")]
    assert "param_groups[0] (weight_decay=0.01)" in report.findings[0].message
    assert "decaykit.WeightDecay(Rprop(...)" in report.findings[0].fix
    engine = decaykit.WeightDecay(torch.optim.Rprop(decaykit.param_groups(model, 0.01), lr=1e-2))
    assert decaykit.audit(model, engine).ok and not decaykit.audit(model, engine).findings  # the engine applies it


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_decay_that_rounds_back_to_theta_in_low_precision_is_found_from_the_values(dtype):
    """θ·(1 − lr·λ) in bf16/fp16 rounds back to θ for every value when lr·λ < eps/4: the decay never acts. An error
    for a decay apart from the update; an info for a fused kernel, which rounds it with the update (how much acts then
    depends on the updates); silent where lr·λ is large enough."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 2)).to(dtype)
    eps = torch.finfo(dtype).eps
    lost = decaykit.audit(model, torch.optim.AdamW(decaykit.param_groups(model, 0.05), lr=eps / 8 / 0.05))
    assert [(f.severity, f.code, f.params) for f in lost.findings] == [("error", "decay-rounded-away",
                                                                       ("0.weight", "2.weight"))]
    fused = decaykit.audit(model, torch.optim.AdamW(decaykit.param_groups(model, 0.05), lr=eps / 8 / 0.05, fused=True))
    assert [(f.severity, f.code) for f in fused.findings] == [("info", "decay-rounded-away")] and fused.ok
    assert decaykit.audit(model, torch.optim.AdamW(decaykit.param_groups(model, 0.05), lr=eps / 0.05)).ok
    stray = torch.nn.Linear(4, 4).to(dtype)  # tensors the model does not have are named by their group
    codes = [f.code for f in decaykit.audit(model, torch.optim.AdamW(stray.parameters(), lr=eps / 8 / 0.05,
                                                                      weight_decay=0.05)).findings]
    assert "decay-rounded-away" in codes and "not-in-model" in codes
    before = model[0].weight.detach().clone()  # the claim, checked: a real step of the decay alone moves nothing
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.05), lr=eps / 8 / 0.05, eps=1e-3)  # 1e-8 is 0 in fp16
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(model[0].weight.detach(), before)


def test_tensors_sharing_memory_are_an_error_named_as_aliased_and_a_true_tie_is_not():
    """A head tied to the embedding through .data is two Parameters over one memory: a real zero-gradient step
    shrinks it by (1 − lr·λ)², once per alias. Views that do not overlap, and a true tie (one Parameter), are fine."""
    class LM(torch.nn.Module):
        def __init__(self, tie_data: bool):
            super().__init__()
            self.wte, self.ln, self.head = torch.nn.Embedding(50, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 50, bias=False)
            if tie_data:
                self.head.weight.data = self.wte.weight.data
            else:
                self.head.weight = self.wte.weight

    model = LM(tie_data=True)
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-2)
    report = decaykit.audit(model, opt)
    assert [(f.code, sorted(f.params)) for f in report.findings] == [("aliased", ["head.weight", "wte.weight"])]
    before = model.wte.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(model.wte.weight.detach(), before * (1 - 1e-3) ** 2)  # decayed twice, as said
    tied = LM(tie_data=False)
    assert decaykit.audit(tied, torch.optim.AdamW(decaykit.param_groups(tied, 0.1))).ok
    flat = torch.zeros(20)
    halves = torch.nn.ParameterList([torch.nn.Parameter(flat[:10]), torch.nn.Parameter(flat[10:].view(2, 5))])
    assert not [f for f in decaykit.audit(halves, torch.optim.AdamW(halves.parameters())).findings if f.code == "aliased"]


def test_column_blocks_of_one_matrix_interleave_in_memory_but_share_no_element_and_are_not_aliased():
    """A fused (out, 3·in) matrix cut into three column blocks: their byte spans interleave, no element is shared,
    so each value is stepped once. Overlapping strided views of it (two windows sharing a column) are aliased."""
    fused = torch.randn(16, 48)
    blocks = torch.nn.ParameterList([torch.nn.Parameter(b) for b in fused.chunk(3, dim=1)])
    assert not [f for f in decaykit.audit(blocks, torch.optim.AdamW(blocks.parameters())).findings if f.code == "aliased"]
    windows = torch.nn.ParameterList([torch.nn.Parameter(fused[:, :20]), torch.nn.Parameter(fused[:, 19:30])])
    (found,) = [f for f in decaykit.audit(windows, torch.optim.AdamW(windows.parameters())).findings if f.code == "aliased"]
    assert sorted(found.params) == ["0", "1"]


def test_a_saved_optimizer_named_relative_to_a_submodule_says_which_and_the_fix():
    """A GAN's generator optimizer built from param_groups(self.G): its saved names are the generator's, which the
    whole module names G.*: the audit says so rather than blame the architecture."""
    gan = torch.nn.ModuleDict({"G": torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8)),
                               "D": torch.nn.Linear(8, 1)})
    saved = torch.optim.AdamW(decaykit.param_groups(gan["G"], 0.1)).state_dict()
    with pytest.raises(decaykit.DecayError, match=r"relative to the model's submodule 'G' \(0.weight is G.0.weight\)"):
        decaykit.audit(gan, saved)
    assert decaykit.audit(gan["G"], saved).ok
