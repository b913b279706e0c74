"""The store reuses a finished trial only for the same sweep: same settings, initial weights, code, data, version."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

optuna = pytest.importorskip("optuna")

from decaykit import sweep  # noqa: E402
from decaykit.errors import DecayError, DecayWarning  # noqa: E402
from decaykit.sweeps import builtin_task, describe  # noqa: E402
from decaykit.sweeps.prepare import prepare  # noqa: E402
from decaykit.sweeps.settings import Training, Trials  # noqa: E402
from decaykit.sweeps.store import JOURNAL_NAME  # noqa: E402
from decaykit.sweeps.tasks import task_from_user  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")

FACTORY = """
import torch
from torch import nn

WIDTH = 8
SCALE = 1.0

def act(t):
    return torch.relu(t)

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 2))

    def forward(self, x):
        return act(self.body(x)) * SCALE

def model():
    return Net()

def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return x[:24], y[:24], x[24:], y[24:]
"""

# each edit of the user's module, and the part of the fingerprint it must change (None: nothing)
EDITS = {
    "initial weights": ("        self.body = nn.Sequential(", "        torch.manual_seed(7)\n        self.body = nn.Sequential(",
                        "model"),
    "a constant": ("WIDTH = 8", "WIDTH = 6", "model"),
    # what forward calls or reads, not forward's own code: same weights, another model
    "a helper forward calls": ("return torch.relu(t)", "return torch.sigmoid(t)", "model"),
    "a constant forward reads": ("SCALE = 1.0", "SCALE = 10.0", "model"),
    "a parameter-free layer": ("nn.ReLU()", "nn.Tanh()", "model"),
    "the data": ("manual_seed(0)", "manual_seed(1)", "data"),
    "a comment only": ("WIDTH = 8", "WIDTH = 8  # the hidden width", None),
}
KW = dict(weight_decays=[0.0, 0.1], seeds=1, epochs=3, batch_size=8, plots=False)


def _write(folder: Path, text: str) -> None:
    (folder / "userfactory.py").write_text(text)
    sys.modules.pop("userfactory", None)
    importlib.invalidate_caches()


@pytest.fixture
def factory(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # an edit within the same second must not hit a stale .pyc
    _write(tmp_path, FACTORY)
    yield tmp_path
    sys.modules.pop("userfactory", None)


def _run(out: Path, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = sweep("userfactory:model", "userfactory:data", out=str(out), **{**KW, **kw})
    return result, [str(w.message) for w in caught if issubclass(w.category, DecayWarning)]


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edited_factory_module_is_retrained_and_the_change_named(factory, edit):
    old, new, part = EDITS[edit]
    out = factory / "out"
    first, _ = _run(out)
    _write(factory, FACTORY.replace(old, new, 1))
    again, said = _run(out)
    if part is None:
        assert (again.run["trained"], again.run["reused"]) == (0, 2) and not said
        assert again.results == first.results
        return
    assert (again.run["trained"], again.run["reused"]) == (2, 0), f"stale results reused after editing {edit}"
    assert again.run["study"] != first.run["study"]
    store_lines = [s for s in said if s.startswith("store:")]
    assert len(store_lines) == 1 and "\n" not in store_lines[0]
    assert describe_part(part) in store_lines[0] and first.run["study"] in store_lines[0]


def describe_part(part: str) -> str:
    return {"model": "the model", "data": "the data"}[part]


def _net(width: int, act: type[nn.Module]):
    return lambda: nn.Sequential(nn.Linear(4, width), act(), nn.Linear(width, 2))


def _data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(32, 4, generator=g)
    return x[:20], (x[:20, 0] > 0).long(), x[20:], (x[20:, 0] > 0).long()


def test_two_lambdas_of_one_qualname_never_share_results(tmp_path):
    a, b = _net(8, nn.ReLU), _net(8, nn.Tanh)
    assert a.__qualname__ == b.__qualname__
    first = sweep(a, _data, out=str(tmp_path), **KW)
    with pytest.warns(DecayWarning, match="the model .* changed since study"):
        second = sweep(b, _data, out=str(tmp_path), **KW)
    assert second.run["trained"] == 2 and second.results != first.results
    same = sweep(_net(8, nn.ReLU), _data, out=str(tmp_path), **KW)  # another lambda object, the same model: reused
    assert (same.run["trained"], same.run["reused"]) == (0, 2) and same.results == first.results


_ACTS = [nn.ReLU, nn.Tanh, nn.GELU]


@settings(max_examples=25, deadline=None)
@given(
    one=st.tuples(st.integers(1, 6), st.sampled_from(_ACTS), st.integers(0, 3)),
    other=st.tuples(st.integers(1, 6), st.sampled_from(_ACTS), st.integers(0, 3)),
)
def test_the_fingerprint_changes_exactly_when_the_model_or_data_does(one, other):
    def fingerprint(width: int, act: type[nn.Module], data_seed: int) -> dict[str, str]:
        g = torch.Generator().manual_seed(data_seed)
        x = torch.randn(12, 4, generator=g)
        task = task_from_user(_net(width, act), (x[:8], (x[:8, 0] > 0).long(), x[8:], (x[8:, 0] > 0).long()))
        return describe.fingerprint(prepare(task, Trials(weight_decays=[0.1], seeds=2), Training(epochs=1)))

    a, b = fingerprint(*one), fingerprint(*other)
    assert (a["model"] == b["model"]) == (one[:2] == other[:2])
    assert (a["data"] == b["data"]) == (one[2] == other[2])
    assert a["settings"] == b["settings"] and a["version"] == b["version"]


def test_an_explicit_study_name_refuses_results_of_other_settings(tmp_path):
    kw = dict(task="ridge", weight_decays=[0.1], out=str(tmp_path), plots=False, study_name="mine")
    two = sweep(epochs=2, **kw)
    assert sweep(epochs=2, **kw).run["reused"] == 1  # the same sweep: reused
    with pytest.raises(DecayError, match=r"study_name='mine' .*epochs: 2 → 5.*another study_name") as err:
        sweep(epochs=5, **kw)
    assert "\n" not in str(err.value)
    five = sweep(epochs=5, **{**kw, "study_name": "mine-5"})
    assert five.run["trained"] == 1 and five.results != two.results


def test_an_explicit_study_name_refuses_results_of_another_model(tmp_path):
    kw = dict(out=str(tmp_path), study_name="mine", **KW)
    sweep(_net(8, nn.ReLU), _data, **kw)
    with pytest.raises(DecayError, match=r"the model \(its initial weights or code\) changed"):
        sweep(_net(8, nn.Tanh), _data, **kw)


def _old_study(journal: Path, name: str) -> None:
    """A study as decaykit wrote it before fingerprints: a finished trial, no fingerprint."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize")
    study.add_trial(optuna.trial.create_trial(value=1.0, system_attrs={"decaykit:key": "weight_decay=0.1 seed=0"},
                                              user_attrs={"decaykit:record": json.dumps({"stale": True})}))  # fmt: skip


def test_a_study_from_before_fingerprints_is_never_reused(tmp_path):
    journal = tmp_path / JOURNAL_NAME
    probe = sweep(task="ridge", weight_decays=[0.1], epochs=2, storage="memory")
    base = probe.run["study"]  # the automatic name's settings part, which earlier releases used alone
    _old_study(journal, base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh = sweep(task="ridge", weight_decays=[0.1], epochs=2, storage=str(journal), plots=False)
    assert fresh.run["trained"] == 1 and fresh.run["study"].startswith(base + "-")
    lines = [str(w.message) for w in caught if "earlier decaykit" in str(w.message)]
    assert len(lines) == 1 and base in lines[0]
    with pytest.raises(DecayError, match="earlier decaykit"):
        sweep(task="ridge", weight_decays=[0.1], epochs=2, storage=str(journal), study_name=base)


def test_the_fingerprint_is_the_same_in_every_process(factory):
    code = ("import json; from decaykit.sweeps import describe; from decaykit.sweeps.prepare import prepare; "
            "from decaykit.sweeps.settings import Training, Trials; from decaykit.sweeps.tasks import task_from_user; "
            "t = task_from_user('userfactory:model', 'userfactory:data', loss=lambda o, y: (o - o).sum()); "
            "print(json.dumps(describe.fingerprint(prepare(t, Trials(seeds=2), Training(epochs=1)))))")  # fmt: skip
    prints = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(factory), SRC]), "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        prints.append(json.loads(done.stdout))
    assert prints[0] == prints[1]


def test_unchanged_builtin_sweep_keeps_its_study(tmp_path):
    task = builtin_task("ridge")
    a = describe.fingerprint(prepare(task, Trials(seeds=1), Training(epochs=3)))
    b = describe.fingerprint(prepare(task, Trials(seeds=1), Training(epochs=3)))
    c = describe.fingerprint(prepare(task, Trials(seeds=1), Training(epochs=3, lr=0.001)))
    assert a == b and c["settings"] != a["settings"] and c["model"] == a["model"]



def test_a_library_patching_torch_classes_at_import_does_not_make_a_stored_trial_foreign(monkeypatch):
    """transformers adds ``smart_apply`` to ``nn.Module`` when it loads: a digest over torch's own methods
    changed with what else the process had imported, and a rerun in another process retrained everything."""
    from decaykit.sweeps.code_digest import code_digest

    before = code_digest(torch.nn.Linear)
    monkeypatch.setattr(torch.nn.Module, "added_by_another_library", lambda self: None, raising=False)
    assert code_digest(torch.nn.Linear) == before

    class Mine(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    class Edited(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x) * 3

    Edited.__qualname__ = Mine.__qualname__
    assert code_digest(Mine) != code_digest(Edited)


def test_more_seeds_or_another_objective_reuse_every_stored_trial(factory, tmp_path):
    out = tmp_path / "store"
    first, _ = _run(out, seeds=2)
    assert first.run["trained"] == 4
    more, said = _run(out, seeds=3)
    assert (more.run["trained"], more.run["reused"], more.run["study"]) == (2, 4, first.run["study"]) and said == []
    ranked, said = _run(out, seeds=2, metric="test_loss")
    assert (ranked.run["trained"], ranked.run["reused"], ranked.run["study"]) == (0, 4, first.run["study"]) and said == []


def test_a_changed_training_setting_retrains_and_names_the_setting(factory, tmp_path):
    out = tmp_path / "store"
    _run(out)
    again, said = _run(out, lr=0.003)
    assert again.run["reused"] == 0
    assert len(said) == 1 and "the settings (lr: 0.001 → 0.003) changed since study" in said[0], said
