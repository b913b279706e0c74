"""``decaykit verify`` and ``decaykit probe`` on the command line: output, JSON, exit status."""

from __future__ import annotations

import json

import pytest

from decaykit.cli.main import main
from decaykit.verify import CLOSED_FORMS, Closed

# The rows exactly as the founding notebook printed them (torch's 4-decimal tensor print).
SEED_ROWS = [
    "[ 0.4386,  0.0597,  0.3980,  0.7380,  0.1825]",
    "[ 0.2489, -0.1300,  0.2084,  0.5483, -0.0072]",
    "[ 0.0317,  0.0972,  0.4345, -0.1044,  0.2372]",
    "[ 0.2050, -0.1360,  0.1686,  0.4745, -0.0254]",
    "[ 0.0478,  0.3683,  0.3685,  0.4608,  0.6544]",
    "[ 0.4969,  0.3948,  0.4951,  0.1356,  0.1705]",
    "[ 0.0089,  0.0678,  0.3714, -0.1136,  0.1938]",
]


def test_verify_prints_the_seed_tensors_and_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify"]) == 0
    out = capsys.readouterr().out
    for row in SEED_ROWS:
        assert row in out
    assert "SGD: equals the tensors the founding notebook printed" in out
    assert out.count("torch matches the closed form") == 3
    assert "coupled vs decoupled" in out and "result: 3 optimizer(s) match" in out


def test_verify_at_another_weight_decay_says_only_the_step_without_decay_met_the_notebook(capsys) -> None:
    """The notebook printed weight_decay 0 and 1; at --wd 0.5 only the first was compared, and the line claimed
    the SGD tensors 'equal the tensors the founding notebook printed'."""
    assert main(["verify", "--wd", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "the tensors the founding notebook printed" not in out
    assert "SGD: equals the founding notebook's weight_decay=0 tensors" in out and "not 0.5" in out


def test_verify_json_with_every_optimizer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--json", "--optimizer", "all", "--foreach", "off", "--lr", "0.05", "--wd", "0.2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["seed_match"] is None and data["lr"] == 0.05
    assert [c["optimizer"] for c in data["checks"]] == ["SGD", "Adam", "AdamW", "RMSprop"]
    assert all(c["max_error"] <= 1e-12 for c in data["checks"])


def test_verify_exits_nonzero_when_a_check_fails(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CLOSED_FORMS, "adamw", Closed("AdamW", "decoupled", "θ ← θ(1 − λ)", "AdamW",
                                                    lambda t, g, lr, wd: t * (1 - wd)))
    assert main(["verify", "--optimizer", "adamw"]) == 1
    assert "result: FAILED: AdamW" in capsys.readouterr().out


def test_verify_bad_option_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--wd", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "decaykit verify: error: weight_decay must be a finite number >= 0, got -1.0"


def test_probe_policy_groups_agree(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "mlp", "--optimizer", "adamw", "--weight-decay", "0.05", "--lr", "1e-3"]) == 0
    out = capsys.readouterr().out
    assert "0.99995" in out and "0 disagreement(s)" in out


def test_probe_plain_parameters_show_decayed_norms(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "gpt", "--no-policy"]) == 1
    out = capsys.readouterr().out
    assert "h.0.ln_1.weight: the policy says no decay (norm:RMSNorm) but it shrinks by 0.99995 per step" in out
    assert "... and 5 more (see the table)" in out
    assert "model.parameters()" in out


def test_probe_json_adam_with_state_is_coupled(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "mlp", "--optimizer", "adam", "--state-steps", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    decayed = [e for e in data["entries"] if e["expected_kind"] != "none"]
    assert decayed and {e["kind"] for e in decayed} == {"coupled"}
    assert any("state already built" in n for n in data["notes"])


def test_probe_engine_mode_and_frozen(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "mlp", "--mode", "lr_independent", "--lr", "0.01", "--wd", "1e-4"]) == 0  # an lr_independent λ
    assert "WeightDecay(AdamW(" in capsys.readouterr().out
    assert main(["probe", "mlp", "--frozen", "0.weight"]) == 1
    assert "0.weight: frozen (listed as frozen)" in capsys.readouterr().out


def test_probe_bad_options_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "mlp", "--momentum", "0.9"]) == 2
    assert "--momentum has no effect with --optimizer adamw" in capsys.readouterr().err
    assert main(["probe", "no_such_model"]) == 2


@pytest.mark.parametrize("momentum", ["1.5", "1"])
def test_probe_refuses_momentum_of_1_or_more(momentum: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "mlp", "--optimizer", "sgd", "--momentum", momentum]) == 2
    assert f"--momentum must be in [0, 1), got {float(momentum)!r}" in capsys.readouterr().err
    assert main(["probe", "mlp", "--optimizer", "sgd", "--momentum", "0.9"]) == 0
