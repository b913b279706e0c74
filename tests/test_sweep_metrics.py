"""User metrics that are undefined (NaN) for some models: the trial still trained, the metric is n/a; a user's loss is
measured as the user would call it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from decaykit import sweep
from decaykit.sweeps.report import aggregate, choose_best, format_report

FAST = dict(seeds=2, epochs=2, batch_size=16, curve_points=2, storage="memory", progress=False)


def blobs():
    g = torch.Generator().manual_seed(0)
    centers = 2.0 * torch.randn(3, 6, generator=g)
    y_train, y_test = torch.randint(0, 3, (48,), generator=g), torch.randint(0, 3, (48,), generator=g)
    return centers[y_train] + torch.randn(48, 6, generator=g), y_train, centers[y_test] + torch.randn(48, 6, generator=g), y_test


def linear() -> nn.Module:
    return nn.Linear(6, 3)


def never_defined(outputs, targets) -> float:
    return float("nan")


def test_a_nan_user_metric_does_not_make_a_trial_diverge():
    result = sweep(linear, blobs, weight_decays=[0, 0.1], lr=0.05, metrics={"m": never_defined}, **FAST)
    for trial in result.trials:
        assert not trial["diverged"] and trial["failure"] is None
        assert trial["metrics"]["test_m"] is None and trial["metrics"]["test_accuracy"] is not None
    assert [r["diverged"] for r in result.results] == [0, 0]
    assert result.best is not None  # ranked by test accuracy, which is defined
    text = str(result)
    assert "non-finite" not in text and "lower the learning rate" not in text
    assert "n/a" in text and "test_m is undefined (NaN) on 2 of 2 seeds" in text


def test_ranking_by_an_undefined_metric_says_so_and_picks_nothing():
    result = sweep(linear, blobs, weight_decays=[0, 0.1], lr=0.05, metrics={"m": never_defined}, metric="test_m",
                   maximize=True, **FAST)
    assert result.best is None
    assert "verdict: no best λ: test m is undefined (NaN)" in str(result)


def _record(wd: float, seed: int, prec: float | None, acc: float) -> dict:
    metrics = {"train_accuracy": 1.0, "test_accuracy": acc, "train_loss": 0.1, "test_loss": 1 - acc, "weight_norm": 1.0,
               "gap": 1 - acc, "test_prec": prec}  # fmt: skip
    return {"weight_decay": wd, "seed": seed, "metrics": metrics, "curves": {}, "diverged": False, "failure": None}


def test_a_row_whose_objective_is_undefined_on_one_seed_is_not_ranked():
    records = [_record(0.0, 0, 0.5, 0.7), _record(0.0, 1, 0.5, 0.7), _record(1.0, 0, 0.9, 0.9), _record(1.0, 1, None, 0.9)]
    rows = aggregate(records)
    assert rows[1]["undefined"] == {"test_prec": 1} and rows[1]["test_prec"] == 0.9  # the defined seed's value
    best = choose_best(rows, "test_prec", maximize=True)
    assert best is not None and best["weight_decay"] == 0.0 and best["unranked"] == [1.0]
    text = format_report(rows, best, header=[], notes=[], files={}, objective="test_prec")
    assert "test prec is undefined (NaN) on some seeds at λ = 1" in text and "not ranked" in text


@pytest.mark.parametrize("name", ["sum", "rmse"])
def test_a_loss_of_the_users_own_is_measured_on_the_whole_set_however_it_reduces(name):
    """A loss that sums over the batch, or one that does not split into a mean of parts (RMSE), is evaluated as the
    user would call it on the whole test set: chunked evaluation weighted each chunk as a mean, and the reported
    loss changed with the number of stacked members (1,747 stacked against 3,335 one by one)."""
    from decaykit.sweeps.metrics import evaluate

    fn = {"sum": lambda out, t: torch.nn.functional.mse_loss(out, t, reduction="sum"),
          "rmse": lambda out, t: torch.nn.functional.mse_loss(out, t).sqrt()}[name]  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 4, generator=g), torch.randn(50, 1, generator=g)
    weights = torch.randn(3, 4, 1, generator=g)

    def forward(xb):  # three members, each a linear map
        return torch.einsum("ni,kio->kno", xb, weights)

    got = evaluate(forward, x, y, kind="regression", loss=fn, chunk=16)["loss"]
    expected = torch.stack([fn(x @ weights[k], y) for k in range(3)]).double()
    torch.testing.assert_close(got, expected)
