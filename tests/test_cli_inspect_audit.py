"""`decaykit inspect` and `decaykit audit` on the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import decaykit
from decaykit.cli.main import main
from decaykit.models import TinyGPT


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_table_lists_every_parameter_with_reason(capsys):
    code, out, _ = run(capsys, "inspect", "resnet50")
    assert code == 0
    assert "layer1.0.downsample.1.weight" in out and "norm:BatchNorm2d" in out
    assert out.count("\n") > 161
    assert "summary: policy 'decaykit', weight_decay 0.05, 161 tensors, 25,557,032 parameters" in out


def test_inspect_json_diff_and_timescale(capsys):
    code, out, _ = run(capsys, "inspect", "gpt", "--json", "--diff", "hf", "--weight-decay", "0.1", "--lr", "1e-3")
    data = json.loads(out)
    assert code == 1 and data["policy"] == "decaykit"  # the policies disagree
    diff = {r["name"] for r in data["diff"]["parameters"]}
    assert "h.0.ln_1.weight" in diff and "ln_f.weight" in diff
    assert data["timescale"]["iterations"] == 10000 and data["timescale"]["epochs"] is None
    code, out, _ = run(capsys, "inspect", "mlp", "--weight-decay", "0.1", "--lr", "1e-3", "--dataset-size", "50000",
                       "--batch-size", "100")
    assert code == 0 and "timescale: τ = 1/(η·λ) = 1e+04 steps = 20 epochs (N = 50,000, B = 100)" in out


def test_inspect_timescale_is_per_group_of_decayed_tensors(capsys):
    """--layer-decay and --rule give the decayed groups their own η = lr·lr_scale and λ: one τ = 1/(lr·λ) printed
    "of the decayed tensors" held for the head's 640 parameters only."""
    argv = ["inspect", "vit", "--lr", "1e-3", "--weight-decay", "0.1", "--layer-decay", "0.5",
            "--rule", "pos_embed:wd=0.5", "--dataset-size", "50000", "--batch-size", "100"]
    data = json.loads(run(capsys, *argv, "--json")[1])
    truth: dict[float, int] = {}
    for p in data["parameters"]:
        if p["decay"] and p["trainable"]:
            tau = 1 / (1e-3 * p["lr_scale"] * p["weight_decay"])
            truth[round(tau)] = truth.get(round(tau), 0) + p["numel"]
    groups = data["timescale"]["groups"]
    found: dict[float, int] = {}
    for g in groups:
        assert g["iterations"] == pytest.approx(1 / (g["lr"] * g["weight_decay"])) and g["epochs"] == g["iterations"] / 500
        found[round(g["iterations"])] = found.get(round(g["iterations"]), 0) + g["parameters"]
    assert found == truth and truth[10_000] == 640 and truth[320_000] == 3072 and truth[64_000] == 4160
    assert data["timescale"]["iterations"] is None  # no one τ holds for them all
    out = run(capsys, *argv)[1]
    assert "timescale: τ = 1/(lr·lr_scale·λ) = 1e+04 .. 3.2e+05 steps = 20 .. 640 epochs" in out
    assert "0.5   0.03125        1        4160  6.4e+04       128" in out


def test_inspect_options_change_decisions(capsys):
    _, out, _ = run(capsys, "inspect", "vit", "--json", "--exclude", "head.weight", "--rule", "blocks.0.*:lr_scale=0.5")
    params = {p["name"]: p for p in json.loads(out)["parameters"]}
    assert params["head.weight"]["weight_decay"] == 0 and params["blocks.0.norm1.weight"]["lr_scale"] == 0.5


def test_inspect_errors_are_one_line_with_exit_2(capsys):
    code, _, err = run(capsys, "inspect", "no.such.module:make")
    assert code == 2 and err.count("\n") == 1 and "cannot import module 'no.such.module'" in err
    code, _, err = run(capsys, "inspect", "mlp", "--weight-decay", "-1")
    assert code == 2 and "--weight-decay must be a finite number >= 0, got -1.0" in err
    code, _, err = run(capsys, "inspect", "torch.nn:Linear")
    assert code == 2 and "could not be called with no arguments" in err


def test_audit_exit_code_and_checkpoint(capsys, tmp_path):
    code, out, _ = run(capsys, "audit", "gpt")
    assert code == 1 and "decayed-norm" in out
    code, out, _ = run(capsys, "audit", "gpt", "--groups", "decaykit")
    assert code == 0 and "no problems found" in out
    model = TinyGPT()
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-3)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "ckpt.pt")
    code, out, _ = run(capsys, "audit", "gpt", "--checkpoint", str(tmp_path / "ckpt.pt"), "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    code, _, err = run(capsys, "audit", "gpt", "--checkpoint", str(tmp_path / "ckpt.pt"), "--key", "opt")
    assert code == 2 and "the checkpoint has no 'opt' (keys: model, optimizer)" in err


def test_a_lightning_checkpoints_list_of_optimizer_states_is_reached_by_a_dotted_key(capsys, tmp_path):
    """Lightning keeps ckpt["optimizer_states"], one state per optimizer: --key optimizer_states.0 audits the first,
    and the list itself (the default where no 'optimizer' key is there) says how to pick one."""
    model = TinyGPT()
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-3)
    torch.save({"state_dict": model.state_dict(), "optimizer_states": [opt.state_dict()]}, tmp_path / "run.ckpt")
    code, out, _ = run(capsys, "audit", "gpt", "--checkpoint", str(tmp_path / "run.ckpt"), "--key", "optimizer_states.0",
                       "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    code, out, _ = run(capsys, "audit", "gpt", "--checkpoint", str(tmp_path / "run.ckpt"), "--json")
    error = json.loads(out)["error"]
    assert code == 2 and error["argument"] == "--key"
    assert "--key optimizer_states holds a list of 1 entries (Lightning keeps one state per optimizer); pick one with " \
           "--key optimizer_states.0" in error["message"]
    code, _, err = run(capsys, "audit", "gpt", "--checkpoint", str(tmp_path / "run.ckpt"), "--key", "optimizer_states.3")
    assert code == 2 and "optimizer_states has no '3' (a list of 1, indices 0..0)" in err


def test_console_entry_point_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "decaykit", "inspect", "mlp"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0 and "weight of Linear" in proc.stdout
