"""No silent wrong answer from a sweep: bad data, trials that did not train, false digits, flags without effect.

One test per class of problem; the numbers are drawn by Hypothesis where they can be.
"""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from decaykit import sweep
from decaykit.cli.main import build_parser, main
from decaykit.errors import DecayError, DecayWarning
from decaykit.sweeps import Execution, Training, Trials
from decaykit.sweeps.data import resolve_data
from decaykit.sweeps.grid import parse_weight_decays
from decaykit.sweeps.report import aggregate, choose_best, format_report, rounded_in

SPLITS = ("x_train", "y_train", "x_test", "y_test")


def regression_data(n: int = 40, d: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, 1, generator=g)
    half = n // 2
    return {"x_train": x[:half], "y_train": y[:half], "x_test": x[half:], "y_test": y[half:]}


# ---------------------------------------------------------------- 1. bad data is refused before training


@settings(max_examples=50, deadline=None)
@given(split=st.sampled_from(SPLITS), row=st.integers(0, 19), col=st.integers(0, 2),
       bad=st.sampled_from([math.nan, math.inf, -math.inf]))  # fmt: skip
def test_nan_or_inf_in_any_tensor_is_refused_naming_the_tensor_and_row(split, row, col, bad):
    data = regression_data()
    data[split] = data[split].clone()
    data[split][row, min(col, data[split].shape[1] - 1)] = bad
    with pytest.raises(DecayError) as info:
        resolve_data(data)
    message = str(info.value)
    assert f"{split} has 1 {'NaN' if math.isnan(bad) else 'infinite value'} at row {row}" in message
    assert "drop or fill those rows" in message and "lr" not in message and "\n" not in message


def test_bad_data_stops_the_sweep_before_any_training_even_when_it_overflows_only_in_the_training_dtype():
    data = regression_data()
    data["y_train"] = data["y_train"].clone()
    data["y_train"][17, 0] = math.nan
    with pytest.raises(DecayError, match="y_train has 1 NaN at row 17"):
        sweep(lambda: nn.Linear(3, 1), data, weight_decays=[0, 1], seeds=1, epochs=1)
    wide = {k: v.double() for k, v in regression_data().items()}
    wide["x_test"][3, 1] = 1e39  # finite in float64, inf in float32
    with pytest.raises(DecayError, match="x_test has 1 infinite value at row 3 once converted to float32"):
        sweep(lambda: nn.Linear(3, 1), wide, weight_decays=[0], seeds=1, epochs=1, dtype=torch.float32)


# ---------------------------------------------------------------- 2. trials that did not train are failed


def test_a_setup_that_does_not_train_recommends_no_lambda_and_claims_no_gain():
    # SGD at lr 1e7: the loss stays finite but the weights blow up and accuracy is at chance
    result = sweep(task="digits-noisy-labels", task_options={"train_size": 100, "hidden": 32},
                   weight_decays=[0, 1e-9], seeds=1, epochs=2, optimizer="sgd", lr=1e7)  # fmt: skip
    assert result.best is None and result.best_range is None
    assert all(r["failed"] == r["seeds"] for r in result.results)
    assert {t["failure"]["kind"] for t in result.trials} <= {"overflow", "chance", "no_progress", "diverged"}
    text = str(result)
    assert "the setup does not train: at λ = 0" in text and "lower the learning rate" in text
    assert "best λ =" not in text and "lower)" not in text and "use λ" not in text


def test_regression_no_better_than_predicting_the_mean_fails():
    data = regression_data(n=200)
    result = sweep(lambda: nn.Linear(3, 1), data, weight_decays=[0, 0.1], seeds=1, epochs=1, lr=1e-9,
                   optimizer="sgd", batch_size=0)  # fmt: skip
    assert result.best is None
    assert {t["failure"]["kind"] for t in result.trials} <= {"chance", "no_progress"}
    trained = sweep(lambda: nn.Linear(3, 1), data, weight_decays=[0, 0.1], seeds=1, epochs=60, lr=0.05)
    assert all(t["failure"] is None for t in trained.trials) and trained.best is not None


def record(wd: float, seed: int, loss: float, failure: dict | None = None) -> dict:
    metrics = {"train_loss": loss / 2, "test_loss": loss, "weight_norm": 1.0}
    return {"weight_decay": wd, "seed": seed, "metrics": metrics, "curves": {}, "diverged": False, "failure": failure}


@settings(max_examples=50, deadline=None)
@given(losses=st.lists(st.floats(0.1, 10.0), min_size=3, max_size=6), failed=st.data())
def test_a_failed_lambda_is_never_best_and_never_in_a_gain_claim(losses, failed):
    which = failed.draw(st.sets(st.integers(1, len(losses) - 1), min_size=1))
    reason = {"kind": "chance", "reason": "test loss no better than chance"}
    records = [record(float(i), s, loss * (1 + 0.01 * s), reason if i in which else None)
               for i, loss in enumerate(losses) for s in range(2)]  # fmt: skip
    rows = aggregate(records)
    best = choose_best(rows, "test_loss", False)
    assert best is not None and best["weight_decay"] not in which
    text = format_report(rows, best, header=[], notes=[], files={})
    for line in text.splitlines():
        if "lower" in line and "λ =" in line:  # a gain claim names only λ that trained
            assert not any(f"λ = {w:g}:" in line or f"λ = {w:.4g}:" in line for w in which), line
    assert sum("failed 2/2 seeds" in line for line in text.splitlines()) == len(which)


def test_a_row_names_the_seed_its_failure_reason_comes_from():
    """The reason is one seed's (its accuracy, not the mean in the table): the note must say which."""
    reason = {"kind": "chance", "reason": "test accuracy 10.0% is no better than chance"}
    rows = aggregate([record(1.0, 0, 1.0, None), record(1.0, 1, 1.0, reason), record(1.0, 2, 1.0, reason)])
    assert rows[0]["failed"] == 2 and rows[0]["failure_seed"] == 1 and rows[0]["failure"] == reason


# ---------------------------------------------------------------- 3. --wd parsing

finite_lams = st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=6)


@settings(max_examples=50, deadline=None)
@given(values=finite_lams)
def test_valid_lambda_lists_round_trip(values):
    assert parse_weight_decays(",".join(repr(v) for v in values)) == sorted(set(values))


@settings(max_examples=50, deadline=None)
@given(values=finite_lams, bad=st.sampled_from(["", " ", "-1", "-0.5", "nan", "inf", "-inf", "abc"]),
       at=st.integers(0, 6))  # fmt: skip
def test_an_empty_negative_or_non_finite_item_is_refused_naming_the_flag(values, bad, at):
    items = [repr(v) for v in values]
    items.insert(min(at, len(items)), bad)
    text = ",".join(items)
    with pytest.raises(DecayError) as info:
        parse_weight_decays(text)
    assert str(info.value).startswith("--wd ") and repr(text) in str(info.value) and "e.g. --wd 0,0.01" in str(info.value)


@pytest.mark.parametrize("text", ["", "   ", ",", "0,,1"])
@pytest.mark.parametrize("flag", ["--wd", "--weight-decays"])
def test_empty_wd_on_the_command_line_is_an_error_not_the_default_grid(capsys, text, flag):
    """The error names the flag as typed: --weight-decays was told "--wd must be ..." (the README's name is the long one)."""
    assert main(["sweep", flag, text, "--epochs", "1", "--seeds", "1", "--no-store", "--no-plots", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"error: {flag} " in err and "empty" in err


# ---------------------------------------------------------------- 4. the best λ with the digits its noise supports


def noisy_rows(means: dict[float, float], spread: float) -> list[dict]:
    recs = [record(wd, s, m + spread * d) for wd, m in means.items() for s, d in enumerate((-1.0, 0.0, 1.0))]
    return aggregate(recs)


def test_the_best_range_holds_the_lambdas_within_noise_and_rounds_the_best_to_it():
    means = {0.0: 5.0, 0.5: 3.1, 1.2: 2.05, 2.0: 2.0, 3.44515: 1.98, 8.9: 2.02, 20.0: 4.0, 50.0: 9.0}
    best = choose_best(noisy_rows(means, 0.1), "test_loss", False)
    assert best["weight_decay"] == 3.44515 and best["range"] == [1.2, 8.9] and best["rounded"] == "3"
    text = format_report(noisy_rows(means, 0.1), best, header=[], notes=[], files={})
    assert "use λ ≈ 3 (anything in 1.2–8.9 is within noise of the best)" in text and "best λ = 3: " in text
    exact = choose_best(noisy_rows(means, 0.0), "test_loss", False)  # no noise: only the grid's spacing limits it
    assert exact["range"] == [3.44515, 3.44515] and exact["rounded"] == "3"
    assert rounded_in(3.44515, 3.3, 3.5) == "3.4"
    assert rounded_in(30.0, 25.0, 40.0) == "30"  # not 3e+01


def test_the_rounded_best_stays_inside_the_range_printed_beside_it():
    """The best at the edge of its noise range: the grid would allow "5" for 4.642 (up to the midpoint 6.8 to
    the next λ), but the verdict prints "anything in 2.2–4.6" beside it, so the λ it names must be in there."""
    means = {0.0: 5.0, 1.0: 3.0, 2.154: 2.02, 4.642: 2.0, 10.0: 3.0}
    best = choose_best(noisy_rows(means, 0.1), "test_loss", False)
    assert best["weight_decay"] == 4.642 and best["range"] == [2.154, 4.642] and best["rounded"] == "4.6"
    text = format_report(noisy_rows(means, 0.1), best, header=[], notes=[], files={})
    assert "use λ ≈ 4.6 (anything in 2.2–4.6 is within noise of the best)" in text


def test_a_search_exposes_its_range_within_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    result = sweep(lambda: nn.Linear(5, 2), (x[:48], y[:48], x[48:], y[48:]), search=(0.01, 10.0), rounds=2,
                   points=3, seeds=2, epochs=30, lr=0.05)  # fmt: skip
    low, high = result.best_range
    assert low <= result.best_weight_decay <= high
    inside = [r for r in result.results if low <= r["weight_decay"] <= high]
    best = result.best
    for r in inside:  # every λ in the range is within twice the standard error of the best
        se = math.sqrt(r["test_accuracy_std"] ** 2 / r["seeds"] + best["std"] ** 2 / best["seeds"])
        assert abs(r["test_accuracy"] - best["value"]) <= 2 * se + 1e-12


# ---------------------------------------------------------------- 5. settings the sweep cannot act on


def test_every_sweep_flag_shows_its_default_in_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if getattr(a, "choices", None) and "sweep" in a.choices).choices["sweep"]
    for action in sub._actions:
        if action.option_strings and action.nargs != 0:
            assert "default" in (action.help or ""), action.option_strings


def test_out_that_is_a_file_or_under_a_file_is_one_line_before_training(tmp_path, capsys):
    afile = tmp_path / "results.txt"
    afile.write_text("not a folder")
    for out in (afile, afile / "sub"):
        with pytest.raises(DecayError, match=r"out=.*(is a file|cannot be made)"):
            Execution(out=str(out))
        assert main(["sweep", "--out", str(out), "--epochs", "1", "--seeds", "1", "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(out) in err
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(DecayError, match="is not writable"):
            Execution(out=str(locked / "sweep"))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"device": "meta"}, "device='meta' holds no values"),
        ({"seeds": 1.5}, "seeds must be a count or a list of integers, got 1.5"),
        ({"momentum": 0.9, "optimizer": "adamw"}, "momentum=0.9 has no effect with optimizer 'adamw'"),
        ({"momentum": 0.9, "optimizer": lambda groups, lr: torch.optim.SGD(groups, lr=lr)}, "has no effect"),
    ],
)
def test_settings_that_cannot_train_or_have_no_effect_are_one_line_errors(kwargs, match):
    with pytest.raises(DecayError, match=match) as info:
        sweep(task="ridge", weight_decays=[0], epochs=1, **kwargs)
    assert "\n" not in str(info.value)


def test_a_device_that_cannot_compute_is_refused():
    if not torch.cuda.is_available():
        with pytest.raises(DecayError, match="device='cuda' cannot train here"):
            Training(device="cuda")
    with pytest.raises(DecayError, match="holds no values"):
        Training(device=torch.device("meta"))


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--no-store", "--storage", "x.journal"], "--storage x.journal has no effect with --no-store"),
        (["--rounds", "2"], "--rounds applies to --search only"),
        (["--points", "4"], "--points applies to --search only"),
        (["--search", "0.1:1", "--wd", "0,1"], "--wd has no effect with --search"),
        (["--one-by-one", "--chunk-size", "4"], "--chunk-size has no effect with --one-by-one"),
        (["--no-store", "--no-wait"], "--no-wait has no effect with --no-store"),
        (["--momentum", "0.9"], "momentum=0.9 has no effect with optimizer 'adamw'"),
    ],
)
def test_cli_flags_without_effect_together_are_refused(capsys, argv, match):
    assert main(["sweep", *argv, "--epochs", "1", "--seeds", "1", "--no-plots", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err


def test_a_grid_given_with_a_search_warns_in_one_line():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trials(weight_decays=[0, 1], search=(0.1, 1.0))
    messages = [str(w.message) for w in caught if issubclass(w.category, DecayWarning)]
    assert len(messages) == 1 and "has no effect with search" in messages[0] and "\n" not in messages[0]


def test_an_lr_independent_lambda_above_one_percent_per_step_is_swept_with_a_warning():
    """The engine refuses such a λ in training code (a torch-AdamW λ in the wrong mode); a sweep sets it on
    purpose, so it trains it and says in one line what the number means."""
    with pytest.warns(DecayWarning, match=r"0\.1 with mode 'lr_independent' shrinks the weights by more than 1%"):
        result = sweep(task="ridge", weight_decays=[0.0, 0.1], mode="lr_independent", seeds=1)
    assert [row["weight_decay"] for row in result.results] == [0.0, 0.1]
    assert result.results[1]["weight_norm"] < result.results[0]["weight_norm"]


def test_the_range_within_noise_never_spans_a_lambda_that_failed():
    """Rows 0.1 and 3 alike, 1 failed on every seed: "anything in 0.1–3 is within noise" would recommend the
    failed λ = 1 too; the range stops at it."""
    reason = {"kind": "chance", "reason": "test loss no better than chance"}
    records = [record(wd, s, 2.0 + 0.01 * s, reason if wd == 1.0 else None) for wd in (0.0, 0.1, 1.0, 3.0)
               for s in range(3)]  # fmt: skip
    rows = aggregate(records)
    best = choose_best(rows, "test_loss", False)
    assert best["weight_decay"] in (0.0, 0.1) and best["range"][1] <= 0.1, best
    text = format_report(rows, best, header=[], notes=[], files={})
    assert "–3 is within noise" not in text


def test_a_one_sample_training_set_is_checked_as_one_sample():
    x, y = torch.randn(1, 4), torch.tensor([1])
    with pytest.raises(DecayError, match=r"got \(3,\) for a batch of 1$"):
        sweep(lambda: nn.Sequential(nn.Linear(4, 3), nn.Flatten(0)), (x, y, x, y), weight_decays=[0.0], seeds=1,
              epochs=1, storage="memory", plots=False)  # fmt: skip


def test_a_loss_that_returns_a_vector_or_raises_is_told_before_training():
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))

    def per_sample(out, target):
        return nn.functional.cross_entropy(out, target, reduction="none")

    def broken(out, target):
        raise ValueError("my loss broke")

    kw = dict(weight_decays=[0.0], seeds=1, epochs=1, storage="memory", plots=False)
    with pytest.raises(DecayError, match=r"loss=.*per_sample must return one number for the batch .*got shape \(2,\)"):
        sweep(lambda: nn.Linear(4, 3), (x, y, x, y), loss=per_sample, **kw)
    from decaykit.errors import UserCodeError

    with pytest.raises(UserCodeError, match="broken raised ValueError: my loss broke") as err:
        sweep(lambda: nn.Linear(4, 3), (x, y, x, y), loss=broken, **kw)
    assert err.value.argument == "loss"
