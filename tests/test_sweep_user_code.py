"""What the user's own code does wrong during a sweep is the user's error (exit 2), named, one line, chained;
arguments at fault are named; a store's credentials are never shown."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from torch import nn

from decaykit import sweep
from decaykit.cli.main import main
from decaykit.errors import DecayError, UserCodeError
from decaykit.sweeps.store import masked_url

FAST = dict(weight_decays=[0, 0.1], seeds=1, epochs=1, batch_size=16, storage="memory", progress=False, plots=False)

MODULE = """
import torch
from torch import nn

class Late(nn.Module):
    calls = 0

    def __init__(self):
        super().__init__()
        self.l = nn.Linear(6, 3)

    def forward(self, x):
        Late.calls += 1
        if Late.calls > 5:
            raise ValueError("my model broke at call 6")
        return self.l(x)

class Narrow(nn.Module):  # right on the 2-sample check, 2 logits for 3 classes on larger batches
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(6, 3)

    def forward(self, x):
        return self.l(x)[:, :2] if x.shape[0] > 2 else self.l(x)

def late():
    return Late()

def narrow():
    return Narrow()

def fine():
    return nn.Linear(6, 3)

def data():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(48) % 3
    x = torch.randn(48, 6, generator=g) + y[:, None]
    return x[:32], y[:32], x[32:], y[32:]
"""


def blobs():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(48) % 3
    x = torch.randn(48, 6, generator=g) + y[:, None]
    return x[:32], y[:32], x[32:], y[32:]


def linear() -> nn.Module:
    return nn.Linear(6, 3)


@pytest.fixture
def usermodels(tmp_path, monkeypatch):
    name = f"um_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


@pytest.mark.parametrize(("factory", "cause"), [("late", "ValueError: my model broke at call 6"),
                                                ("narrow", "IndexError: Target 2 is out of bounds")])  # fmt: skip
def test_a_model_failing_during_training_is_a_user_code_error(usermodels, capsys, factory, cause):
    code = main(["sweep", "--model", f"{usermodels}:{factory}", "--data", f"{usermodels}:data", "--wd", "0,0.1",
                 "--seeds", "1", "--epochs", "2", "--no-store", "--no-plots", "-q", "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    error = json.loads(out)["error"]
    assert code == 2 and error["kind"] == "user-code" and error["argument"] == "--model"
    assert f"model='{usermodels}:{factory}': training failed" in error["message"] and cause in error["message"]
    assert err.count("\n") == 1 and "internal error" not in err


def test_user_code_errors_in_python_are_chained_and_name_their_argument():
    def broken(outputs, targets):
        raise ZeroDivisionError("0/0")

    with pytest.raises(UserCodeError, match=r"^metrics: 'm' failed: ZeroDivisionError: 0/0") as err:
        sweep(linear, blobs, metrics={"m": broken}, **FAST)
    assert err.value.argument == "metrics" and isinstance(err.value.__cause__, ZeroDivisionError)

    def callback(record):
        raise RuntimeError("my callback broke")

    with pytest.raises(UserCodeError, match=r"^callbacks: .*callback raised on the trial λ = 0, seed 0: Runtime") as err:
        sweep(linear, blobs, callbacks=[callback], **FAST)
    assert err.value.argument == "callbacks" and isinstance(err.value.__cause__, RuntimeError)


@pytest.mark.parametrize(("options", "argument", "text"), [
    (dict(weight_decays="0,0.1"), "weight_decays", "must be a list of numbers, got the string '0,0.1'"),
    (dict(weight_decays=[]), "weight_decays", "is empty"),
    (dict(weight_decays=[0, 2000]), "weight_decays", "flips every weight's sign"),
    (dict(policy="nope"), "policy", "unknown policy 'nope'"),
    (dict(weight_decays=None, search=(1, 0.1)), "search", "0 < low < high"),
    (dict(storage=5), "storage", "storage must be a journal file path, an Optuna storage URL, 'memory' or an Optuna "
                                 "storage, got 5 (int)"),
])  # fmt: skip
def test_bad_arguments_are_named(options, argument, text):
    with pytest.raises(DecayError) as err:
        sweep(linear, blobs, **{**FAST, **options})
    assert err.value.argument == argument and text in str(err.value) and "\n" not in str(err.value)


def test_a_value_below_the_smallest_float_is_refused_not_read_as_zero(capsys):
    code = main(["sweep", "--task", "ridge", "--wd", "0,1e-400", "--epochs", "1", "--no-store", "-q", "--json"])
    error = json.loads(capsys.readouterr().out)["error"]
    assert code == 2 and error["argument"] == "--wd" and "'1e-400' is below the smallest float" in error["message"]


URL = "postgresql+psycopg://alice:s3cretpw@127.0.0.1:9/sweeps"


def test_a_store_url_never_shows_its_password():
    assert masked_url(URL) == "postgresql+psycopg://alice:***@127.0.0.1:9/sweeps"
    assert masked_url("sqlite:///a.db") == "sqlite:///a.db" and masked_url("runs/sweep.journal") == "runs/sweep.journal"


def test_a_store_that_cannot_open_is_one_line_naming_storage_without_the_password(tmp_path, capsys):
    pytest.importorskip("optuna")
    not_db = tmp_path / "notdb.db"
    not_db.write_text("not a database")
    for storage in (f"sqlite:///{not_db}", URL):
        code = main(["sweep", "--task", "ridge", "--wd", "0,1", "--epochs", "1", "--storage", storage, "--no-plots", "-q",
                     "--json"])  # fmt: skip
        out, err = capsys.readouterr()
        error = json.loads(out)["error"]
        assert code == 2 and error["argument"] == "--storage" and err.count("\n") == 1, err
        assert "s3cretpw" not in out + err and "[SQL:" not in err and "Background on this error" not in err
    assert "alice:***@127.0.0.1:9/sweeps" in error["message"]


def test_a_bug_in_decaykits_own_training_code_is_an_internal_error_not_the_models(usermodels, capsys, monkeypatch):
    """The model and data are fine; decaykit's sample order breaks. Blaming the model would send the user
    hunting in correct code: the CLI says internal error (exit 3, please report it)."""
    from decaykit.sweeps import trainer

    monkeypatch.setattr(trainer, "curve_epochs", None)  # decaykit's own line then fails: None is not callable
    with pytest.raises(TypeError, match="not callable"):
        sweep(linear, blobs, **FAST)
    code = main(["sweep", "--model", f"{usermodels}:fine", "--data", f"{usermodels}:data", "--wd", "0,0.1",
                 "--seeds", "1", "--epochs", "1", "--no-store", "--no-plots", "-q", "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 3 and json.loads(out)["error"]["kind"] == "internal" and "please report it" in err
    assert "training failed" not in err and "TypeError" in err
