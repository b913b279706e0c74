"""Rows, the best λ and the verdict: means and stds over seeds, and honesty about noise."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from decaykit._render import print_json
from decaykit.sweeps import SweepResult
from decaykit.sweeps.report import aggregate, choose_best, format_report


def record(wd: float, seed: int, test_acc: float | None, train_acc: float = 1.0, diverged: bool = False) -> dict:
    metrics = {"train_accuracy": train_acc, "test_accuracy": test_acc, "train_loss": 0.1, "test_loss": 1.0 - (test_acc or 0),
               "weight_norm": 10.0 / (1 + wd), "gap": train_acc - (test_acc or 0)}  # fmt: skip
    if diverged:
        metrics = dict.fromkeys(metrics)
    return {"weight_decay": wd, "seed": seed, "metrics": metrics, "curves": {}, "diverged": diverged}


def test_rows_hold_means_and_sample_stds_over_the_seeds_that_did_not_diverge():
    recs = [record(0.0, 0, 0.70), record(0.0, 1, 0.80), record(1.0, 0, 0.9), record(1.0, 1, None, diverged=True)]
    rows = aggregate(recs)
    assert [r["weight_decay"] for r in rows] == [0.0, 1.0]
    assert rows[0]["test_accuracy"] == pytest.approx(0.75) and rows[0]["test_accuracy_std"] == pytest.approx(
        statistics.stdev([0.7, 0.8])
    )
    assert rows[1]["diverged"] == 1 and rows[1]["seeds"] == 2 and rows[1]["test_accuracy"] == pytest.approx(0.9)
    assert rows[1]["test_accuracy_std"] == 0.0


def _rows(gains: dict[float, list[float]]) -> list[dict]:
    return aggregate([record(wd, s, acc) for wd, accs in gains.items() for s, acc in enumerate(accs)])


def test_a_clear_gain_is_reported_as_helping():
    rows = _rows({0.0: [0.77, 0.78, 0.76], 1.0: [0.85, 0.86, 0.84], 3.0: [0.90, 0.91, 0.89], 100.0: [0.1, 0.12, 0.11]})
    best = choose_best(rows, "test_accuracy", True)
    assert best["weight_decay"] == 3.0 and best["helps"] is True
    assert best["gain"] == pytest.approx(0.13) and best["baseline"] == pytest.approx(0.77)
    text = format_report(rows, best, header=["h"], notes=[], files={})
    assert "best λ = 3: test accuracy 90.0% ± 1.0 vs 77.0% ± 1.0 at λ = 0 (+13.0 ± 0.8 points" in text
    assert "verdict: weight decay helps here; use λ ≈ 3." in text
    assert "too much decay hurts: at λ = 100 test accuracy is 11.0%" in text
    assert "← best" in text.splitlines()[5] and text.splitlines()[5].lstrip().startswith("3 ")  # the λ = 3 row


def test_a_gain_within_seed_noise_is_not_called_help():
    # clean labels: every λ within noise of λ = 0
    rows = _rows({0.0: [0.95, 0.97, 0.96], 0.1: [0.97, 0.95, 0.97], 1.0: [0.94, 0.96, 0.95]})
    best = choose_best(rows, "test_accuracy", True)
    assert best["weight_decay"] == 0.1 and best["helps"] is False and best["gain"] > 0
    text = format_report(rows, best, header=[], notes=[], files={})
    assert "verdict: weight decay does not measurably help here" in text


def test_lambda_zero_best_says_decay_does_not_help_and_ties_go_to_the_smaller_lambda():
    rows = _rows({0.0: [0.9, 0.9], 0.1: [0.9, 0.9], 1.0: [0.5, 0.5]})
    best = choose_best(rows, "test_accuracy", True)
    assert best["weight_decay"] == 0.0 and best["helps"] is False
    assert "verdict: weight decay does not help here." in format_report(rows, best, header=[], notes=[], files={})


def test_minimised_metric_and_edge_of_grid_hint():
    recs = [dict(record(wd, 0, 0.5), metrics={"test_loss": loss}) for wd, loss in ((0.0, 10.0), (0.1, 5.0), (1.0, 2.0))]
    rows = aggregate(recs)
    best = choose_best(rows, "test_loss", False)
    assert best["weight_decay"] == 1.0 and best["helps"] is True and best["gain"] == pytest.approx(8.0)
    text = format_report(rows, best, header=[], notes=[], files={})
    assert "80% lower" in text and "the best λ is the largest one tried" in text


def test_everything_diverged_gives_no_best():
    rows = aggregate([record(1.0, 0, None, diverged=True)])
    assert choose_best(rows, "test_accuracy", True) is None
    assert "every λ diverged" in format_report(rows, None, header=[], notes=[], files={})


def test_json_is_one_object_with_results_and_best_first_and_no_nan():
    rows = _rows({0.0: [0.7], 1.0: [0.8]})
    rows[1]["extra"] = math.nan
    result = SweepResult(task="t", results=rows, best=choose_best(rows, "test_accuracy", True), trials=[])
    import io

    buf = io.StringIO()
    print_json(result.to_dict(), stream=buf)
    parsed = json.loads(buf.getvalue())
    assert list(parsed)[:2] == ["results", "best"]
    assert parsed["results"][1]["extra"] is None
    assert parsed["best"]["weight_decay"] == 1.0 and "test_accuracy_std" in parsed["results"][0]


def _loss_record(wd: float, test_loss: float, norm: float, failure: dict | None = None) -> dict:
    metrics = {"train_loss": test_loss / 2, "test_loss": test_loss, "weight_norm": norm, "gap": test_loss / 2}
    return {"weight_decay": wd, "seed": 0, "metrics": metrics, "curves": {}, "diverged": False, "failure": failure}


def test_too_much_decay_never_says_shrunk_of_weights_that_exploded():
    blew_up = {"kind": "blew_up", "reason": "the training loss blew up (160 → 1.4e+161, ‖w‖ = 1.9e+80)"}
    rows = aggregate([_loss_record(0.0, 6.5, 11.0), _loss_record(0.1, 6.4, 11.0), _loss_record(300.0, 3.7e160, 1.9e80, blew_up)])
    text = format_report(rows, choose_best(rows, "test_loss", maximize=False), header=[], notes=[], files={})
    assert "shrunk" not in text and "too much decay hurts" not in text
    # a row that trained but whose weights grew: worse, and said so, without the shrinking story
    rows = aggregate([_loss_record(0.0, 6.5, 11.0), _loss_record(0.1, 6.4, 11.0), _loss_record(300.0, 30.0, 50.0)])
    text = format_report(rows, choose_best(rows, "test_loss", maximize=False), header=[], notes=[], files={})
    assert "too much decay hurts: at λ = 300 test loss is 30, ‖w‖ = 50" in text and "shrunk" not in text
    rows = aggregate([_loss_record(0.0, 6.5, 11.0), _loss_record(0.1, 6.4, 11.0), _loss_record(300.0, 30.0, 0.5)])
    text = format_report(rows, choose_best(rows, "test_loss", maximize=False), header=[], notes=[], files={})
    assert "at λ = 300 test loss is 30, ‖w‖ = 0.5 (the weights are shrunk towards zero" in text


def test_a_loss_that_blew_up_is_failed_for_that_reason():
    from decaykit.sweeps.sanity import judge

    failure = judge({"train_loss": 160.0}, {"train_loss": 1.4e161, "weight_norm": 1.9e80}, chance=None,
                    dtype=torch.float64, lr=0.007)  # fmt: skip
    assert failure == {"kind": "blew_up", "reason": "the training loss blew up (160 → 1.4e+161, ‖w‖ = 1.9e+80): "
                                                    "unstable steps at lr 0.007"}  # fmt: skip


def test_the_table_has_no_bookkeeping_columns():
    failed = {"kind": "chance", "reason": "no better than chance"}
    rows = aggregate([{**record(0.0, 0, 0.7), "failure": None}, {**record(1.0, 0, 0.1), "failure": failed}])
    text = format_report(rows, None, header=[], notes=[], files={})
    assert "failure_seed" not in text and "undefined" not in text.split("\n\n")[0]


def test_a_metric_of_the_users_own_needs_its_direction_and_the_report_says_it():
    """Recall, F1, AUC: higher is better, but decaykit cannot know it of a function it is handed; minimising by
    default chose the λ where recall collapsed and called it the best."""
    import decaykit
    from decaykit.errors import DecayError

    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 5, generator=g)
    y = x[:, :3].argmax(1)
    data = (x[:80], y[:80], x[80:], y[80:])

    def recall_0(outputs, targets):
        return (outputs.argmax(1)[targets == 0] == 0).float().mean()

    kw = dict(weight_decays=[0.0, 0.1], seeds=1, epochs=10, lr=1e-2, batch_size=16, metrics={"recall_0": recall_0},
              storage="memory", plots=False, progress=False)  # fmt: skip
    with pytest.raises(DecayError, match=r"test_recall_0.*is your own metric.*maximize=True") as caught:
        decaykit.sweep(lambda: torch.nn.Linear(5, 3), data, metric="test_recall_0", **kw)
    assert caught.value.argument == "maximize"
    result = decaykit.sweep(lambda: torch.nn.Linear(5, 3), data, metric="test_recall_0", maximize=True, **kw)
    assert result.best["maximize"] is True and "test recall 0 (higher is better)" in str(result)
    values = {r["weight_decay"]: r["test_recall_0"] for r in result.results}
    assert result.best["value"] == max(values.values())
    plain = decaykit.sweep(lambda: torch.nn.Linear(5, 3), data, **kw)  # decaykit's own objective: no need
    assert plain.best is None or "is better" not in str(plain)
