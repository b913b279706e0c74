"""No silent wrong answer on the command line: exit statuses, one-line errors, the ``--json`` error
object, the user's own code failing, flags that would do nothing, and numbers written like ``-1e-3``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decaykit.cli.main import main
from decaykit.errors import DecayError, DecayWarning, UserCodeError

SRC = Path(__file__).resolve().parents[1] / "src"

# What can go wrong in the user's module, each as (module source, factory name, the error's type).
USER_CODE_FAILURES = {
    "factory raises": ("def build():\n    raise RuntimeError('no GPU here')\n", "build", "RuntimeError"),
    "factory calls sys.exit": ("import sys\ndef build():\n    sys.exit(3)\n", "build", "SystemExit"),
    "factory fails inside": ("def build():\n    return len(5)\n", "build", "TypeError"),
    "syntax error": ("def build(:\n    pass\n", "build", "SyntaxError"),
    "missing dependency": ("import not_a_real_dependency_xyz\ndef build():\n    pass\n", "build",
                           "ModuleNotFoundError"),
    "raises on import": ("raise ImportError('libfoo.so not found')\n", "build", "ImportError"),
    "sys.exit on import": ("import sys\nsys.exit('bye')\n", "build", "SystemExit"),
}
GOOD_MODULE = "import torch\ndef build():\n    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))\n"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_object(out: str) -> dict[str, object]:
    data = json.loads(out)
    assert set(data) == {"error"} and set(data["error"]) == {"kind", "argument", "message"}
    return data["error"]


def make_package(folder: Path, source: str) -> str:
    """A package in ``folder`` holding ``model.py``; its (unique) name, so no test sees another's import."""
    name = f"userpkg_{uuid.uuid4().hex[:12]}"
    (folder / name).mkdir()
    (folder / name / "__init__.py").write_text("")
    (folder / name / "model.py").write_text(source)
    return name


@pytest.mark.parametrize("failure", sorted(USER_CODE_FAILURES))
@pytest.mark.parametrize("command", ["inspect", "audit", "probe"])
def test_user_code_failures_are_one_line_naming_the_factory(command, failure, tmp_path, monkeypatch, capsys):
    source, factory, error_type = USER_CODE_FAILURES[failure]
    monkeypatch.chdir(tmp_path)  # the CLI imports from the current folder
    spec = f"{make_package(tmp_path, source)}.model:{factory}"
    code, out, err = run(capsys, command, spec, "--json")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"decaykit {command}: error: MODEL={spec!r}") and error_type in err
    assert "--traceback" in err and "Traceback" not in err
    if error_type == "SyntaxError":
        assert str(tmp_path) in err and "line 1" in err
    error = error_object(out)
    assert error["kind"] == "user-code" and error["argument"] == "MODEL" and error_type in error["message"]


def test_sys_exit_anywhere_in_user_code_is_one_line_with_where(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    source = GOOD_MODULE + textwrap.dedent("""
        import sys

        class Exits(torch.nn.Linear):
            def no_weight_decay(self):
                sys.exit(4)

        def exits_later():
            return Exits(3, 4)
    """)
    spec = f"{make_package(tmp_path, source)}.model:exits_later"
    code, out, err = run(capsys, "inspect", spec, "--json")
    assert code == 2 and err.count("\n") == 1 and "sys.exit(4)" in err and "Traceback" not in err
    assert "sys.exit(4)" in error_object(out)["message"]


@pytest.mark.parametrize("where", ["before the command", "after the command", "environment"])
def test_traceback_flag_or_variable_prints_the_trace(where, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = f"{make_package(tmp_path, USER_CODE_FAILURES['factory raises'][0])}.model:build"
    argv = {"before the command": ["--traceback", "inspect", spec], "after the command": ["inspect", spec, "--traceback"],
            "environment": ["inspect", spec]}[where]
    if where == "environment":
        monkeypatch.setenv("DECAYKIT_TRACEBACK", "1")
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "Traceback (most recent call last)" in err and "raise RuntimeError('no GPU here')" in err


def test_internal_errors_exit_3_with_one_line_and_json(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(importlib.import_module("decaykit.policy.plan"), "plan", broken)
    code, out, err = run(capsys, "inspect", "mlp", "--json")
    assert code == 3 and err.count("\n") == 1
    assert err.startswith("decaykit inspect: internal error: ZeroDivisionError: float division by zero")
    assert "please report it" in err
    assert error_object(out) == {"kind": "internal", "argument": None, "message": "ZeroDivisionError: float division by zero"}


def test_interrupted_exits_130(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("decaykit.policy.plan"), "plan", interrupted)
    code, _, err = run(capsys, "inspect", "mlp")
    assert code == 130 and err == "decaykit inspect: interrupted\n"


@pytest.mark.parametrize("argv", [
    ("inspect", "gpt", "--diff", "hf"),
    ("inspect", "gpt", "--diff", "hf", "--json"),
    ("audit", "gpt", "--json"),
    ("probe", "mlp", "--frozen", "0.weight"),
])
def test_problems_found_exit_1_with_a_report_not_an_error(argv, capsys):
    code, out, err = run(capsys, *argv)
    assert code == 1 and "error:" not in err
    if "--json" in argv:
        assert "error" not in json.loads(out)


@pytest.mark.parametrize("argv, flag", [
    (("inspect", "mlp", "--dataset-size", "100"), "--dataset-size"),
    (("inspect", "mlp", "--lr", "1e-3", "--batch-size", "10"), "--batch-size"),
    (("audit", "mlp", "--key", "opt"), "--key"),
    (("audit", "mlp", "--checkpoint", "never-read.pt", "--lr", "1e-3"), "--lr"),
    (("audit", "mlp", "--checkpoint", "never-read.pt", "--optimizer", "sgd"), "--optimizer"),
    (("audit", "mlp", "--checkpoint", "never-read.pt", "--groups", "plain"), "--groups"),
    (("probe", "mlp", "--momentum", "0.9"), "--momentum"),
    (("probe", "mlp", "--optimizer", "adam", "--momentum", "0.9"), "--momentum"),
    (("convert", "0.1", "--to", "composer", "--max-lr", "1e-3", "--momentum", "0.9"), "--momentum"),
    (("convert", "0.1", "--to", "composer", "--max-lr", "1e-3", "--dampening", "0.5"), "--dampening"),
    (("convert", "0.1", "--to", "composer", "--max-lr", "1e-3", "--steps", "100"), "--steps"),
    (("convert", "0.1", "--to", "sgd", "--lr", "1e-3"), "--lr"),
    (("convert", "0.1", "--to", "composer", "--max-lr", "1e-3", "--dataset-size", "10", "--batch-size", "2"),
     "--dataset-size"),
    (("convert", "--tau-steps", "1000", "--lr", "1e-3", "--from", "composer"), "--from"),
    (("convert", "0.1", "--to", "composer", "--max-lr", "1e-3", "--drop-last"), "--drop-last"),
])
def test_a_flag_with_no_effect_is_an_error_naming_it(argv, flag, capsys):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 2 and err.count("\n") == 1 and f"{flag} has no effect" in err, err
    error = error_object(out)
    assert error["kind"] == "bad-input" and error["argument"] == flag


def test_diff_against_the_same_policy_warns(capsys):
    with pytest.warns(DecayWarning, match=r"^--diff decaykit compares policy 'decaykit' with itself") as caught:
        code, _, _ = run(capsys, "inspect", "mlp", "--diff", "decaykit")
    assert code == 0 and "\n" not in str(caught[0].message)


_scientific = st.builds(lambda m, e: f"-{m:.3g}e{e}", st.floats(0.1, 9.9), st.integers(-8, 3))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(_scientific, st.floats(1e-9, 1e3).map(lambda v: f"{-v!r}")), case=st.sampled_from([
    ("inspect", "mlp", "--lr"), ("audit", "mlp", "--wd"), ("probe", "mlp", "--weight-decay"),
    ("convert", "0.1", "--max-lr"), ("verify", "--lr"),
]))
def test_negative_numbers_are_values_refused_under_their_flag(value, case, capsys):
    *head, flag = case
    code, _, err = run(capsys, *head, flag, value)
    assert code == 2 and err.count("\n") == 1
    assert "expected one argument" not in err and f"got {float(value)!r}" in err


def test_negative_positional_is_a_value(capsys):
    code, _, err = run(capsys, "convert", "-1e-3")
    assert code == 2 and "weight_decay must be a finite number >= 0, got -0.001" in err


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern=st.sampled_from(["0.*", "*.bias", "re:^2\\.", "type:Linear"]),
       actions=st.sampled_from([("wd=0", "lr_scale=0.5"), ("mult=0.1", "lr_scale=2"), ("wd=0.1", "lr=0.5")])
       .flatmap(st.permutations))  # wd and mult together are refused for another reason
def test_rule_actions_after_a_second_colon_all_apply(pattern, actions, capsys):
    """'0.*:wd=0:lr_scale=2' once dropped its second action as part of the pattern; ':' and ',' now read alike."""
    plans = []
    for sep in (":", ","):
        code, out, _ = run(capsys, "inspect", "mlp", "--json", "--rule", f"{pattern}:{sep.join(actions)}")
        assert code == 0
        plans.append(json.loads(out)["parameters"])
    assert plans[0] == plans[1]
    baseline = json.loads(run(capsys, "inspect", "mlp", "--json")[1])["parameters"]
    assert plans[0] != baseline


def test_usage_errors_exit_2_and_print_the_json_error(capsys):
    code, out, err = run(capsys, "probe", "mlp", "--json", "--mode", "nope")
    assert code == 2 and "invalid choice" in err
    error = error_object(out)
    assert error["kind"] == "bad-input" and error["argument"] == "--mode"


def _checkpoints(folder: Path) -> dict[str, Path]:
    files = {name: folder / f"{name}.pt" for name in ("empty", "text", "truncated", "object")}
    files["empty"].write_bytes(b"")
    files["text"].write_text("hello, not a checkpoint")
    torch.save({"optimizer": {"state": {}, "param_groups": []}}, folder / "whole.pt")
    whole = (folder / "whole.pt").read_bytes()
    files["truncated"].write_bytes(whole[: len(whole) // 2])
    torch.save({"optimizer": argparse.Namespace(lr=1)}, files["object"])  # any class: refused unpickled
    files["folder"] = folder
    files["missing"] = folder / "missing.pt"
    return files


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "object", "folder", "missing"])
def test_unreadable_checkpoints_are_one_line_with_the_reason(kind, tmp_path, capsys):
    path = _checkpoints(tmp_path)[kind]
    code, out, err = run(capsys, "audit", "mlp", "--checkpoint", str(path), "--json")
    assert code == 2 and err.count("\n") == 1 and str(path) in err
    reason = err.split("could not be read: ", 1)[1].strip()
    assert len(reason) > 10 and "weights_only=False" not in err and "\x1b" not in err
    if kind == "object":
        assert "not plain tensors" in reason and "Namespace" in reason
    assert error_object(out)["argument"] == "--checkpoint"


def test_the_console_script_imports_from_the_current_folder(tmp_path):
    script = Path(sys.executable).with_name("decaykit")
    if not script.exists():
        pytest.skip("no decaykit console script next to this Python")
    name = make_package(tmp_path, GOOD_MODULE)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("DECAYKIT_TRACEBACK", None)
    ok = subprocess.run([str(script), "inspect", f"{name}.model:build", "--json"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert {p["name"] for p in json.loads(ok.stdout)["parameters"]} == {"0.weight", "0.bias", "1.weight", "1.bias"}
    missing = subprocess.run([str(script), "inspect", "no_such_pkg_here.model:build"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, check=False)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert f"in the current folder {tmp_path}" in missing.stderr and "install" not in missing.stderr


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_a_reader_that_leaves_early_does_not_change_the_exit_status(tmp_path, json_flag):
    """`decaykit audit ... | head`: the output ends where the reader left, the verdict does not (an audit that
    finds an error exits 1, an inspect 0), and no error about the closed pipe reaches stderr."""
    name = make_package(tmp_path, GOOD_MODULE)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    torch.save(torch.optim.AdamW(model.parameters(), weight_decay=0.1).state_dict(), tmp_path / "bad.pt")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("DECAYKIT_TRACEBACK", None)
    for command, expected in (["audit", "--checkpoint", "bad.pt"], 1), (["inspect"], 0):
        argv = [sys.executable, "-m", "decaykit", *command, f"{name}.model:build", *json_flag]
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()  # the reader is gone before the first line
        err = proc.stderr.read().decode()
        assert proc.wait() == expected, err
        assert "Broken" not in err and "Exception ignored" not in err, err


def test_the_current_folder_leaves_the_import_path_after_the_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    name = make_package(tmp_path, GOOD_MODULE)
    assert run(capsys, "inspect", f"{name}.model:build")[0] == 0
    assert sys.path == before


@settings(max_examples=50, deadline=None)
@given(name=st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True).filter(lambda n: n != "must"),
       flag=st.from_regex(r"--[a-z][a-z0-9-]{0,15}", fullmatch=True))
def test_decay_error_names_its_argument(name, flag):
    assert DecayError(f"{name} must be a finite number >= 0, got -1.0").argument == name
    assert DecayError(f"{flag} has no effect without --lr").argument == flag
    assert DecayError(f"{name.upper()}='pkg.mod:fn' is a Linear").argument == name.upper()
    assert DecayError(f"give {name} or {flag}, not both").argument is None
    assert DecayError("anything at all", argument=flag).argument == flag


def test_decay_error_stays_a_value_error_and_pickles_with_its_argument():
    error = pickle.loads(pickle.dumps(UserCodeError("the factory failed", argument="MODEL")))
    assert isinstance(error, DecayError) and isinstance(error, ValueError)
    assert (str(error), error.argument, error.kind) == ("the factory failed", "MODEL", "user-code")
    assert DecayError("x").kind == "bad-input" and DecayError().argument is None


def test_library_callers_get_the_chained_original_error(tmp_path, monkeypatch):
    from decaykit._loading import build_model

    monkeypatch.syspath_prepend(str(tmp_path))
    name = make_package(tmp_path, textwrap.dedent(USER_CODE_FAILURES["factory raises"][0]))
    with pytest.raises(UserCodeError, match=r"factory failed with RuntimeError: no GPU here") as info:
        build_model(f"{name}.model:build")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_the_library_settings_of_issue_10_reach_the_command_line(capsys):
    """probe's state-step bound, verify's dtype and convert's drop_last are flags, not library-only."""
    code, out, err = run(capsys, "probe", "mlp", "--state-steps", "100000000", "--json")
    assert code == 2 and error_object(out)["argument"] == "--state-steps" and "<= 10000" in err
    code, out, _ = run(capsys, "verify", "--dtype", "float32", "--json")
    assert code == 0 and "float32" in out
    ceil = run(capsys, "convert", "0.05", "--lr", "1e-3", "--dataset-size", "100", "--batch-size", "64", "--json")[1]
    floor = run(capsys, "convert", "0.05", "--lr", "1e-3", "--dataset-size", "100", "--batch-size", "64",
                "--drop-last", "--json")[1]
    epochs = [json.loads(text)["timescale"]["epochs"] for text in (ceil, floor)]
    assert epochs[0] == pytest.approx(2e4 / 2) and epochs[1] == pytest.approx(2e4)


@pytest.mark.parametrize("argv,flag", [
    (["convert", "0.1", "--to", "sgd", "--momentum", "1.5"], "--momentum"),
    (["convert", "0.1", "--to", "sgd", "--dampening", "1.5"], "--dampening"),
    (["inspect", "gpt", "--layer-decay", "2"], "--layer-decay"),
    (["convert", "-1"], "LAMBDA"),
    (["convert", "0.1", "--to", "nope"], "--to"),
    (["convert", "0.1", "--from", "nope"], "--from"),
    (["probe", "mlp", "--mode", "lr_independent"], "--weight-decay"),  # 0.05 is no lr_independent λ
    (["probe", "mlp", "--mode", "lr_coupled", "--lr", "10", "--wd", "0.5"], "--weight-decay"),  # lr·λ = 5
])  # fmt: skip
def test_the_json_error_names_the_flag_not_the_python_keyword(argv, flag, capsys):
    """The API's errors name its keyword (momentum, layer_decay, weight_decay); on the command line the argument
    at fault is the flag or positional the user typed."""
    assert main([*argv, "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["argument"] == flag
