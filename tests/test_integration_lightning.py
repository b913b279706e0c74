"""decaykit inside a real ``lightning.Trainer(fast_dev_run=...)`` run on CPU.

As for the HF Trainer, the one-step test pins what Lightning's optimizer did: from the same weights
and batch, runs with λ and with 0 differ by exactly −lr·λ·θ₀ on decayed tensors and not at all on
BatchNorm, an ``nn.RMSNorm`` called ``ln_1`` and the biases.
"""

from __future__ import annotations

import copy
import runpy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import decaykit
from decaykit import schedules
from decaykit.errors import DecayError, DecayWarning
from decaykit.integrations.lightning import configure_optimizers

L = pytest.importorskip("lightning")
# Lightning 2.6 on torch 2.13 warns about its own use of torch's pytree API
pytestmark = pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LR = 1e-2


class Net(L.LightningModule):
    def __init__(self, weight_decay: float = 0.1, by_hand: bool = False, **options) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.ln_1 = nn.RMSNorm(16)  # a norm no name rule catches
        self.head = nn.Linear(16, 3)
        self.weight_decay, self.by_hand, self.options = weight_decay, by_hand, options

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_1(torch.relu(self.bn(self.stem(x)))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g))
        return torch.utils.data.DataLoader(data, batch_size=8)

    def configure_optimizers(self):
        if self.by_hand:  # what most code does: every tensor decayed
            return torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=self.weight_decay)
        return configure_optimizers(self, self.weight_decay, lr=LR, **self.options)


def fit(module: L.LightningModule, steps: int, callbacks=()) -> L.Trainer:
    trainer = L.Trainer(fast_dev_run=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))
    trainer.fit(module)
    return trainer


def one_step(base: Net, weight_decay: float, **kwargs) -> dict[str, torch.Tensor]:
    module = copy.deepcopy(base)
    module.weight_decay = weight_decay
    for key, value in kwargs.items():
        setattr(module, key, value)
    fit(module, 1)
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_one_step_only_weights_are_decayed():
    base = Net()
    theta0 = {n: p.detach().clone() for n, p in base.named_parameters()}
    lam = 0.5
    decayed, free, by_hand = one_step(base, lam), one_step(base, 0.0), one_step(base, lam, by_hand=True)
    decided = decaykit.plan(base, lam)
    assert {d.name for d in decided if d.decay} == {"stem.weight", "head.weight"}
    for d in decided:
        if d.decay:
            torch.testing.assert_close(decayed[d.name] - free[d.name], -LR * lam * theta0[d.name], atol=1e-6, rtol=0)
        else:
            assert torch.equal(decayed[d.name], free[d.name]), d.name
    for name in ("bn.weight", "ln_1.weight", "head.bias"):  # the hand-built optimizer decays them all
        torch.testing.assert_close(by_hand[name] - free[name], -LR * lam * theta0[name], atol=1e-6, rtol=0)


def test_scheduler_engine_and_audit_callback_in_a_fit():
    from decaykit.integrations.lightning import DecayAuditCallback

    audit = DecayAuditCallback(strict=True, measure=True)
    engine = {"mode": "lr_coupled", "schedule": schedules.linear(1.0, 0.0, steps=4)}
    module = Net(0.1, decay_engine=engine,
                 scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    trainer = fit(module, 3, callbacks=[audit])
    (opt,) = trainer.optimizers
    assert isinstance(opt, decaykit.WeightDecay) and opt.steps_taken == 3
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([LR * 0.5**3] * 2)  # stepped every batch
    assert [(g["weight_decay"], sorted(g["param_names"])) for g in opt.param_groups] == [
        (0.1, ["head.weight", "stem.weight"]),
        (0.0, ["bn.bias", "bn.weight", "head.bias", "ln_1.weight", "stem.bias"]),
    ]
    # λ_3 = 0.1·(1 − 3/4), times the LR now
    assert opt.expected_decay()[0]["rate"] == pytest.approx(LR * 0.5**3 * 0.1 * 0.25)
    (report,) = audit.reports
    assert report.ok and report.probe is not None and report.probe.ok


def test_audit_callback_catches_a_hand_built_optimizer():
    from decaykit.integrations.lightning import DecayAuditCallback

    with pytest.raises(DecayError, match=r"decayed-norm \(3 tensors\)"):
        fit(Net(0.1, by_hand=True), 1, callbacks=[DecayAuditCallback(strict=True)])
    with pytest.warns(DecayWarning, match="decayed-norm"):
        fit(Net(0.1, by_hand=True), 1, callbacks=[DecayAuditCallback()])


def test_bad_input_is_a_decay_error():
    with pytest.raises(DecayError, match=r"torch\.optim\.Optimizer subclass"):
        configure_optimizers(Net(), 0.1, lr=LR, optimizer=dict)
    with pytest.raises(DecayError, match="interval must be"):
        configure_optimizers(Net(), 0.1, lr=LR, interval="batch")
    with pytest.raises(DecayError, match="weight_decay must be"):
        configure_optimizers(Net(), -1.0, lr=LR)


def test_example_lightning_module_runs(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["lightning_module.py", "--steps", "2"])
    runpy.run_path(str(EXAMPLES / "lightning_module.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "weight_decay=0.05: 2 tensors" in out and "weight_decay=0: 5 tensors" in out
    assert "audit: no problems found" in out


class GAN(L.LightningModule):
    """Lightning's GAN recipe: two optimizers under manual optimization, each meant for its own network."""

    def __init__(self, generator_over: str = "G") -> None:
        super().__init__()
        self.automatic_optimization = False
        self.G = nn.Sequential(nn.Linear(4, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 8))
        self.D = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 1))
        self.extra = nn.Linear(2, 2)  # in neither optimizer unless generator_over names it
        self.generator_over = generator_over

    def training_step(self, batch, batch_idx):
        (x,) = batch
        og, od = self.optimizers()
        fake = self.G(torch.randn(x.shape[0], 4))
        loss_d = F.softplus(self.D(fake.detach())).mean() + F.softplus(-self.D(x)).mean()
        od.zero_grad()
        self.manual_backward(loss_d)
        od.step()
        og.zero_grad()
        self.manual_backward(F.softplus(-self.D(fake)).mean())
        og.step()

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(16, 8, generator=torch.Generator().manual_seed(0)))
        return torch.utils.data.DataLoader(data, batch_size=8)

    def configure_optimizers(self):
        over = {"G": [self.G, self.extra], "self": [self], "G-only": [self.G]}[self.generator_over]
        groups = [g for m in over for g in decaykit.param_groups(m, 0.05, lr=1e-3)]
        return torch.optim.AdamW(groups), torch.optim.AdamW(decaykit.param_groups(self.D, 0.05, lr=1e-3))


def test_audit_callback_judges_several_optimizers_together():
    """A GAN's optimizers each hold one network: each was audited against the whole module, so every tensor of
    the other network was `missing` and strict=True stopped a correct run, telling it to build one optimizer."""
    from decaykit.integrations.lightning import DecayAuditCallback

    audit = DecayAuditCallback(strict=True)
    fit(GAN("G"), 1, callbacks=[audit])
    assert [r.ok for r in audit.reports] == [True, True] and audit.findings == []
    with pytest.warns(DecayWarning, match="the 2 optimizers together: missing") as told:
        fit(GAN("G-only"), 1, callbacks=[audit := DecayAuditCallback()])
    assert [(f.code, f.params) for f in audit.findings] == [("missing", ("extra.weight", "extra.bias"))]
    assert "configure_optimizers(self" not in str(told[0].message)


def test_audit_callback_finds_a_tensor_held_by_two_optimizers():
    """The real GAN bug: the generator's optimizer built over the whole module steps the discriminator too.
    Audited one by one, that optimizer passed and the right one was blamed (`missing`)."""
    from decaykit.integrations.lightning import DecayAuditCallback

    with pytest.raises(DecayError, match=r"the 2 optimizers together: shared-across-optimizers \(6 tensors\)"):
        fit(GAN("self"), 1, callbacks=[audit := DecayAuditCallback(strict=True)])
    ((finding),) = audit.findings
    assert set(finding.params) == {n for n, _ in GAN().D.named_parameters(prefix="D")}
    assert [r.ok for r in audit.reports] == [True, True]


class Finetuned(L.LightningModule):
    """A backbone that Lightning's BackboneFinetuning keeps frozen until epoch 1, then adds in a group of its own."""

    def __init__(self, **options) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU())
        self.head = nn.Linear(16, 3)
        self.options = options

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.head(self.backbone(x)), y)

    def train_dataloader(self):
        return Net().train_dataloader()

    def configure_optimizers(self):
        return configure_optimizers(self, 0.1, lr=LR, **self.options)


@pytest.mark.parametrize("engine", [None, {"mode": "lr_coupled"}], ids=["AdamW", "engine"])
def test_backbone_finetuning_adds_its_group_to_decaykits_groups(engine):
    """Every group decaykit builds carries param_names, and torch then refuses a group without them: the run
    crashed at the unfreeze epoch. The group is named as the module names its tensors and split by the policy."""
    from lightning.pytorch.callbacks import BackboneFinetuning

    module = Finetuned(decay_engine=engine)
    start = module.backbone[0].weight.detach().clone()
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[BackboneFinetuning(unfreeze_backbone_at_epoch=1)])
    trainer.fit(module)
    (opt,) = trainer.optimizers
    added = [(g["weight_decay"], g["param_names"]) for g in opt.param_groups[2:]]
    assert added == [(0.1, ["backbone.0.weight"]),
                     (0.0, ["backbone.0.bias", "backbone.1.weight", "backbone.1.bias"])]
    assert not torch.equal(module.backbone[0].weight, start)
    assert decaykit.audit(module, opt).ok


def test_a_plateau_scheduler_gets_its_monitor_through_scheduler_options():
    """Lightning refuses a ReduceLROnPlateau without the metric it watches: scheduler_options= carries it (and
    Lightning's other lr_scheduler keys); misuse is one DecayError."""
    class Logged(Net):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss)
            return loss

    plateau = lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)  # noqa: E731
    module = Logged(0.1, scheduler=plateau, interval="epoch", scheduler_options={"monitor": "train_loss", "name": "lr"})
    config = module.configure_optimizers()
    assert config["lr_scheduler"]["monitor"] == "train_loss" and config["lr_scheduler"]["interval"] == "epoch"
    fit(module, 2)
    with pytest.raises(DecayError, match=r"scheduler_options must be a dict .*pass the scheduler and interval"):
        configure_optimizers(Net(), 0.1, lr=LR, scheduler=plateau, scheduler_options={"interval": "step"})
    with pytest.raises(DecayError, match="scheduler_options has no effect without scheduler="):
        configure_optimizers(Net(), 0.1, lr=LR, scheduler_options={"monitor": "train_loss"})


def test_the_audit_callback_gives_each_findings_own_fix_where_the_helper_already_built_the_optimizer():
    """A module whose optimizer the helper built, with tensors frozen since (BackboneFinetuning's freeze on resume):
    'build it with configure_optimizers' is no fix; the finding's own is."""
    from decaykit.integrations.lightning import DecayAuditCallback

    class FrozenAfter(Net):
        def configure_optimizers(self):
            built = super().configure_optimizers()
            self.stem.requires_grad_(False)
            return built

    with pytest.warns(DecayWarning, match=r"frozen-in-optimizer \(2 tensors\); leave frozen parameters out") as told:
        fit(FrozenAfter(0.1), 1, callbacks=[DecayAuditCallback()])
    assert not any("configure_optimizers(self" in str(w.message) for w in told)
