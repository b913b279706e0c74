"""``decaykit sweep`` on the command line: the report, --json, plots, and one-line errors."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from decaykit.cli.main import main

HELPER = textwrap.dedent(
    """
    import torch
    from torch import nn

    def model():
        return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def data():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(90, 6, generator=g)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
        return x[:60], y[:60], x[60:], y[60:]

    def short_labels():
        x, y, xt, yt = data()
        return x, y[:-1], xt, yt

    def not_a_model():
        return "a string"

    def nan_model():
        class NaN(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(6, 3)

            def forward(self, x):
                return self.lin(x) * float("nan")

        return NaN()
    """
)
TINY = ["--epochs", "2", "--seeds", "1", "--no-plots", "-q", "--no-store"]


@pytest.fixture
def helper(tmp_path, monkeypatch):
    (tmp_path / "clihelp.py").write_text(HELPER)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("clihelp", None)
    return tmp_path


def test_json_prints_exactly_one_object_with_results_and_best(helper, capsys):
    code = main(["sweep", "--model", "clihelp:model", "--data", "clihelp:data", "--weight-decays", "0,0.1,1",
                 "--json", *TINY, "--epochs", "30", "--lr", "0.01"])  # fmt: skip (enough steps to train)
    out = capsys.readouterr().out
    assert code == 0
    parsed = json.loads(out)  # the whole of stdout is one JSON document
    assert list(parsed)[:2] == ["results", "best"]
    assert [r["weight_decay"] for r in parsed["results"]] == [0.0, 0.1, 1.0]
    for key in ("train_accuracy", "test_accuracy", "train_loss", "test_loss", "weight_norm", "gap"):
        assert key in parsed["results"][0] and f"{key}_std" in parsed["results"][0]
    assert parsed["best"]["metric"] == "test_accuracy" and "gain" in parsed["best"]


def test_default_demo_prints_the_report_and_writes_plots(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["sweep", "--epochs", "2", "--seeds", "1", "--weight-decays", "0,1,100", "--out", str(out), "-q"])
    text = capsys.readouterr().out
    assert code == 0
    assert text.startswith("decaykit sweep: digits-noisy-labels")
    assert "150 of them (30%) relabelled with a wrong class" in text and "best λ = " in text
    for name in ("metrics.png", "learning_curves.png", "weight_norm.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "sweep.journal").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "nopkg.nomod:net", "--data", "clihelp:data"], "cannot import module 'nopkg.nomod'"),
        (["--model", "clihelp:missing", "--data", "clihelp:data"], "has no attribute 'missing'"),
        (["--model", "clihelp:not_a_model", "--data", "clihelp:data"], "returned a str, not a torch.nn.Module"),
        (["--model", "clihelp:model", "--data", "clihelp:short_labels"], "x_train has 60 samples but y_train has 59"),
        (["--model", "clihelp:model"], "--model needs --data"),
        (["--data", "clihelp:data"], "--data needs --model"),
        (["--model", "clihelp:model", "--data", "clihelp:data", "--train-size", "10"],
         "--train-size sets an option of a built-in task, and has no effect on your own --model"),
        (["--task", "ridge", "--label-noise", "0.2"], "--label-noise has no effect with --task ridge"),
        (["--weight-decays", "0,-1"], "finite numbers >= 0, got -1"),
        (["--weight-decays", ","], "is empty"),
        (["--weight-decays", "0,abc"], "comma-separated numbers, got 'abc'"),
        (["--search", "10:1"], "0 < low < high"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(helper, capsys, argv, message):
    code = main(["sweep", *argv, *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("decaykit sweep: error: ")
    assert message in err


def test_nan_model_is_marked_diverged_and_the_sweep_finishes(helper, capsys):
    code = main(["sweep", "--model", "clihelp:nan_model", "--data", "clihelp:data", "--weight-decays", "0,1", *TINY])
    text = capsys.readouterr().out
    assert code == 0
    assert "the setup does not train" in text and "non-finite on the initial model" in text
    assert "diverged 1/1 seeds" in text and "learning rate is not the cause" in text


def test_a_store_folder_that_cannot_be_made_is_bad_input_naming_its_flag(tmp_path, capsys, monkeypatch):
    """A journal path under a file, or an --out on a file system that refuses folders (/proc, read-only):
    exit 2 naming the flag, not decaykit's internal error."""
    (tmp_path / "afile").write_text("")
    argv = ["sweep", "--task", "ridge", "--epochs", "1", "--seeds", "1", "--no-plots", "-q", "--json"]
    assert main([*argv, "--storage", str(tmp_path / "afile" / "sub" / "x.journal")]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["kind"] == "bad-input" and error["argument"] == "--storage" and "cannot be made" in error["message"]
    from pathlib import Path

    def refuse(self, *args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert main([*argv, "--out", str(tmp_path / "new")]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["argument"] == "--out" and "Read-only file system" in error["message"]


@pytest.mark.parametrize("argv,flag", [
    (["--model", "clihelp:model"], "--data"),
    (["--model", "clihelp:model", "--data", "clihelp:data", "--data-seed", "3"], "--data-seed"),
    (["--task", "ridge", "--label-noise", "0.2"], "--label-noise"),
])  # fmt: skip
def test_a_task_flag_error_names_the_flag_typed(helper, capsys, argv, flag):
    assert main(["sweep", *argv, *TINY, "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["argument"] == flag


def test_the_python_api_names_the_task_option_it_refuses():
    from decaykit.errors import DecayError
    from decaykit.sweeps.tasks import builtin_task, resolve_task

    with pytest.raises(DecayError, match="task 'ridge' does not take label_noise; its options are train_size") as e:
        builtin_task("ridge", label_noise=0.2)
    assert e.value.argument == "task_options"
    with pytest.raises(DecayError, match=r"task_options \(train_size\) apply to built-in tasks only") as e:
        resolve_task(lambda: None, lambda: None, None, {"train_size": 3})
    assert e.value.argument == "task_options"
