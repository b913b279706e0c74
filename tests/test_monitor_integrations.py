"""decaykit.Monitor inside a real ``transformers.Trainer`` and ``lightning.Trainer`` run (tiny models, CPU):
the metrics reach the frameworks' own loggers, the history holds the canonical names, findings are told."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

import decaykit

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
L = pytest.importorskip("lightning")

from hf_models import llama  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")


class RandomTokens(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(1, 96, (8,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids}


def test_hf_callback_logs_through_the_report_to_loggers(tmp_path):
    from decaykit.integrations.hf import DecayMonitorCallback, DecayTrainer

    class Reporter(transformers.TrainerCallback):  # stands for a report_to logger: it comes before ours
        def __init__(self):
            self.logs = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs))

    reporter, monitor = Reporter(), DecayMonitorCallback(every=2, sink=tmp_path / "run.jsonl")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2, weight_decay=0.1,
        use_cpu=True, report_to=[], save_strategy="no", logging_steps=2, lr_scheduler_type="constant", disable_tqdm=True, seed=0)
    trainer = DecayTrainer(model=llama(), args=args, train_dataset=RandomTokens(), callbacks=[reporter, monitor])
    trainer.train()
    mon = monitor.monitor
    assert mon.total_steps == 4 and sorted({r["step"] for r in mon.history}) == [1, 2, 4]
    names = {r["name"] for r in mon.history}
    assert "model.layers.0.self_attn.q_proj.weight" in names and not any("norm" in n for n in names)
    logged = [log for log in reporter.logs if "decay/group0/timescale_steps" in log]
    assert len(logged) == 2 and logged[0]["decay/group0/timescale_steps"] == pytest.approx(1 / (1e-2 * 0.1))
    # τ = 1/(ηλ) = 1000 steps against a 4-step run: the one finding, told once
    assert [(f.code, f.name) for f in mon.findings] == [("timescale-exceeds-run", "group 0")]
    assert (tmp_path / "run.jsonl").exists()


class Net(L.LightningModule):
    def __init__(self, by_hand: bool) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)
        self.by_hand = by_hand

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.head(self.norm(self.stem(x))), y)

    def configure_optimizers(self):
        params = self.parameters() if self.by_hand else decaykit.param_groups(self, 0.1)
        return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)


class Logger(L.pytorch.loggers.Logger):
    def __init__(self):
        super().__init__()
        self.metrics = []

    name, version = "capture", 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))


@pytest.mark.parametrize("by_hand", [False, True])
def test_lightning_callback_logs_through_the_modules_logger(by_hand):
    from decaykit.errors import DecayWarning
    from decaykit.integrations.lightning import DecayMonitorCallback

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    logger, callback = Logger(), DecayMonitorCallback(every=2)
    trainer = L.Trainer(max_steps=4, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback])
    with pytest.warns(DecayWarning, match="decaykit monitor: step 4: ") as told:  # each finding told once
        trainer.fit(Net(by_hand), torch.utils.data.DataLoader(data, batch_size=16))
    mon = callback.monitor
    assert sorted({r["step"] for r in mon.history}) == [1, 2, 4] and mon.total_steps == 4
    steps = [step for step, m in logger.metrics if "decay/group0/timescale_steps" in m]
    assert steps == [1, 2, 4]
    codes = {f.code for f in mon.findings}
    # Σ r = 4·ηλ = 0.004 over the 4-step run either way, told at fit end, where it is measured (no scheduler: the LR
    # could have been raised by hand at any step, so step 1 could not know it)
    assert codes == {"timescale-exceeds-run"} | ({"decayed-norm", "decayed-bias"} if by_hand else set())
    assert [f.step for f in mon.findings if f.code == "timescale-exceeds-run"] == [4]
    assert len([w for w in told if "decaykit monitor" in str(w.message)]) == len(mon.findings)



def test_a_monitor_on_lightnings_wrapper_watches_the_optimizer_inside():
    """Lightning renames its wrapper's class after the optimizer inside (LightningAdamW): the monitor looked the
    wrapper up by class name and refused it; one table of wrappers (decaykit.optimizers) serves every tool."""
    pytest.importorskip("lightning")
    from lightning.pytorch.core.optimizer import LightningOptimizer

    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.LayerNorm(4, elementwise_affine=False))
    inner = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-2)
    mon = decaykit.Monitor(model, LightningOptimizer(inner), every=1)
    assert mon.optimizer is inner
    for _ in range(2):
        model(torch.randn(3, 4)).pow(3).sum().backward()
        inner.step()
        inner.zero_grad()
    assert [r["step"] for r in mon.history] == [1, 2]
    mon.close()


class GAN(L.LightningModule):
    """Two optimizers under manual optimization, each stepped once per batch: Lightning's global_step counts both."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.G = nn.Linear(4, 8)
        self.D = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        og, od = self.optimizers()
        fake = self.G(torch.randn(x.shape[0], 4))
        od.zero_grad()
        self.manual_backward(nn.functional.softplus(self.D(fake.detach())).mean() + self.D(x).pow(2).mean())
        od.step()
        og.zero_grad()
        self.manual_backward(nn.functional.softplus(-self.D(fake)).mean())
        og.step()

    def configure_optimizers(self):
        return (torch.optim.AdamW(decaykit.param_groups(self.G, 0.1), lr=1e-2),
                torch.optim.AdamW(decaykit.param_groups(self.D, 0.1), lr=1e-2))


def lightning_fit(module, callback, ckpt_path=None, **length) -> L.Trainer:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    if isinstance(module, GAN):
        data = torch.utils.data.TensorDataset(torch.randn(64, 8))
    trainer = L.Trainer(**length, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback])
    with warnings.catch_warnings():  # the findings are the monitors' business here, not the tests'
        warnings.simplefilter("ignore", decaykit.errors.DecayWarning)
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=16), ckpt_path=ckpt_path)
    return trainer


def test_lightning_callback_counts_each_optimizers_own_steps(tmp_path):
    """max_steps counts the steps of every optimizer under manual optimization: each monitor was told the whole
    max_steps (twice its run), and only the first got the sink."""
    from decaykit.integrations.lightning import DecayMonitorCallback

    entries: list[dict] = []
    callback = DecayMonitorCallback(every=2, sink=[tmp_path / "run.jsonl", entries.append])
    lightning_fit(GAN(), callback, max_steps=8)
    assert [(m.total_steps, m.step) for m in callback.monitors] == [(4, 4), (4, 4)]
    assert {e["name"] for e in entries if e["kind"] == "tensor"} == {"G.weight", "D.weight"}  # a callable gets all
    for i, name in enumerate(("G.weight", "D.weight")):
        lines = (tmp_path / f"run.optimizer{i}.jsonl").read_text().splitlines()
        assert {json.loads(line).get("name") for line in lines[1:]} == {name, "group 0"}  # records, then the finding


@pytest.mark.parametrize("module", [lambda: Net(False), GAN], ids=["one optimizer", "two"])
def test_lightning_callback_takes_the_run_length_from_max_epochs(module):
    """Lightning runs are usually sized by max_epochs: total_steps was None there, so timescale-exceeds-run was never
    told. 64 samples in batches of 16 for 2 epochs: 8 steps of each optimizer."""
    from decaykit.integrations.lightning import DecayMonitorCallback

    callback = DecayMonitorCallback(every=4)
    lightning_fit(module(), callback, max_epochs=2)
    assert {(m.total_steps, m.step) for m in callback.monitors} == {(8, 8)}


@pytest.mark.parametrize("module", [lambda: Net(False), GAN], ids=["one optimizer", "two"])
def test_lightning_callback_on_a_resumed_fit_starts_at_the_restored_step(tmp_path, module):
    """Lightning restores a resumed run's global step after on_fit_start, where the monitors read 0."""
    from decaykit.integrations.lightning import DecayMonitorCallback

    first = lightning_fit(module(), DecayMonitorCallback(every=2), max_steps=4)
    first.save_checkpoint(tmp_path / "last.ckpt")
    callback = DecayMonitorCallback(every=2)
    lightning_fit(module(), callback, ckpt_path=tmp_path / "last.ckpt", max_steps=8)
    per_optimizer = 4 // len(callback.monitors)
    assert {(m.start_step, m.step) for m in callback.monitors} == {(per_optimizer, 2 * per_optimizer)}
    assert {r["step"] for r in callback.monitor.history} == {s for s in range(per_optimizer + 1, 2 * per_optimizer + 1)
                                                            if s == per_optimizer + 1 or s % 2 == 0}


def test_lightning_callback_takes_total_steps_per_optimizer():
    """Optimizers stepped at other ratios than one each per batch (a critic stepped 5 times per generator step)
    cannot be told apart from the Trainer's settings: the user gives each its run length."""
    from decaykit.errors import DecayError
    from decaykit.integrations.lightning import DecayMonitorCallback

    callback = DecayMonitorCallback(every=4, total_steps=[6, 2])
    lightning_fit(GAN(), callback, max_steps=8)
    assert [m.total_steps for m in callback.monitors] == [6, 2]
    with pytest.raises(DecayError, match=r"total_steps must be an int >= 1 or a list of them.*got 0"):
        DecayMonitorCallback(total_steps=0)
    with pytest.raises(DecayError, match=r"has 3 entries, but the run has 2 optimizers"):
        lightning_fit(GAN(), DecayMonitorCallback(total_steps=[1, 2, 3]), max_steps=2)
