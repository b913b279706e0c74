"""The sweep's figures read at a glance: what each axis holds, measured on the figures themselves."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("matplotlib")

from decaykit.sweeps import plots
from decaykit.sweeps.plots import figures, shown_weight_decays, write_plots

LAMS = [0.0, 0.001, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]
EPOCHS = [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]


def _ridge_rows(seeds: int = 1) -> list[dict]:
    """Shaped like the ridge task's table: train loss from 1e-16 up, test loss with a shallow minimum."""
    rows = []
    for i, lam in enumerate(LAMS):
        test = 7.1 - 0.6 * math.exp(-((i - 4) ** 2) / 4) + (20 if lam >= 10 else 0)
        rows.append({"weight_decay": lam, "seeds": seeds, "diverged": 0, "failed": 0, "failure": None,
                     "train_loss": 1e-16 if lam == 0 else lam * 0.1, "train_loss_std": 0.0,
                     "test_loss": test, "test_loss_std": 0.0,
                     "closed_form_test_loss": test, "closed_form_test_loss_std": 0.0,
                     "weight_norm": 11 - i * 0.3, "weight_norm_std": 0.0})
    return rows


def _digits_rows(seeds: int = 3) -> list[dict]:
    """Shaped like the noisy-label digits: train accuracy falls below test accuracy at large λ."""
    rows = []
    for i, lam in enumerate(LAMS):
        train, test = 1.0 - 0.05 * i, 0.77 + 0.02 * i
        rows.append({"weight_decay": lam, "seeds": seeds, "diverged": 0, "failed": 1 if lam == 30 else 0,
                     "failure": None, "train_accuracy": train, "train_accuracy_std": 0.01,
                     "test_accuracy": test, "test_accuracy_std": 0.01, "train_loss": 0.1 + 0.2 * i,
                     "train_loss_std": 0.01, "test_loss": 0.8 - 0.01 * i, "test_loss_std": 0.01,
                     "weight_norm": 40 - 3 * i, "weight_norm_std": 0.1})
    return rows


def _trials(seeds: int, classification: bool) -> list[dict]:
    main = "accuracy" if classification else "loss"
    out = []
    for lam in LAMS:
        for seed in range(seeds):
            rise = [1 - 0.5 ** (e + 1) - 0.01 * lam + 0.001 * seed for e in range(len(EPOCHS))]
            curve = rise if classification else [100 * 0.5 ** e + lam for e in range(len(EPOCHS))]
            out.append({"weight_decay": lam, "seed": seed, "diverged": False,
                        "curves": {"epoch": EPOCHS, f"train_{main}": curve, f"test_{main}": curve,
                                   "weight_norm": [0.0] + [15 / (1 + lam) + e for e in range(len(EPOCHS) - 1)]}})
    return out


def _best(rows: list[dict], metric: str, maximize: bool) -> dict:
    row = (max if maximize else min)(rows, key=lambda r: r[metric])
    return {"weight_decay": row["weight_decay"], "metric": metric, "value": row[metric], "maximize": maximize}


def _ridge(seeds: int = 1) -> dict:
    rows = _ridge_rows(seeds)
    return figures(rows, _trials(seeds, False), best=_best(rows, "test_loss", False), title="t", classification=False)


def _digits(seeds: int = 3) -> dict:
    rows = _digits_rows(seeds)
    return figures(rows, _trials(seeds, True), best=_best(rows, "test_accuracy", True), title="t", classification=True)


def _lines(ax) -> dict[str, object]:
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_regression_test_loss_has_an_axis_of_its_own_where_its_minimum_shows() -> None:
    test_ax, train_ax = _ridge()["metrics"].axes
    assert "train loss" not in _lines(test_ax) and "train loss" in _lines(train_ax)
    values = [r["test_loss"] for r in _ridge_rows()]
    low, high = test_ax.get_ylim()
    # the axis spans about the test values, not the 16 decades of the training loss
    assert test_ax.get_yscale() == "linear" and low > 0.5 * min(values) and high < 1.5 * max(values)
    assert train_ax.get_yscale() == "log"


def test_closed_form_line_is_drawn_over_the_test_line_and_distinct() -> None:
    lines = _lines(_ridge()["metrics"].axes[0])
    sgd, closed = lines["test loss"], lines["closed-form ridge solution"]
    assert closed.get_zorder() > sgd.get_zorder()
    assert closed.get_linestyle() != sgd.get_linestyle() and closed.get_linewidth() < sgd.get_linewidth()


@pytest.mark.parametrize("seeds", [1, 3])
def test_titles_say_how_many_seeds(seeds: int) -> None:
    for name, fig in _ridge(seeds).items():
        title = fig._suptitle.get_text() if fig._suptitle else fig.axes[0].get_title()
        if seeds == 1:
            assert "1 seed" in title and "seeds" not in title, name
        else:
            assert f"over {seeds} seeds" in title, name


def test_accuracy_is_in_percent_like_the_table() -> None:
    acc_ax = _digits()["metrics"].axes[0]
    assert "%" in acc_ax.get_ylabel()
    train = _lines(acc_ax)["train accuracy"].get_ydata()
    assert max(train) == pytest.approx(100.0) and min(train) > 1.0
    curves_ax = _digits()["learning_curves"].axes[0]
    assert "%" in curves_ax.get_ylabel() and max(max(line.get_ydata()) for line in curves_ax.get_lines()) > 1.0


def test_train_below_test_is_explained_only_when_it_happens() -> None:
    rows = _digits_rows()
    fig = figures(rows, [], best=None, title="t", classification=True)["metrics"]
    assert "noisy" in fig.axes[0].get_title(loc="left")
    for r in rows:
        r["train_accuracy"] = r["test_accuracy"] + 0.01
    fig = figures(rows, [], best=None, title="t", classification=True)["metrics"]
    assert fig.axes[0].get_title(loc="left") == ""


def test_best_is_starred_and_failed_rows_crossed() -> None:
    acc_ax = _digits()["metrics"].axes[0]
    labels = _lines(acc_ax)
    star = next(v for k, v in labels.items() if k.startswith("best λ"))
    assert star.get_marker() == "*" and list(star.get_xdata()) == [_best(_digits_rows(), "test_accuracy", True)["weight_decay"]]
    crosses = [x for line in acc_ax.get_lines() if line.get_label() == "did not train (never the best)"
               for x in line.get_xdata()]
    assert crosses == [30.0, 30.0]  # on the train and the test series


def test_learning_curves_show_a_few_lambdas_with_bands() -> None:
    fig = _digits(seeds=3)["learning_curves"]
    for ax in fig.axes:
        shown = [k for k in _lines(ax)]
        assert len(shown) <= 5 and "λ = 0" in shown and any("(best)" in k for k in shown)
        assert len(ax.collections) == len(shown)  # one ± std band per line
    single = _digits(seeds=1)["learning_curves"]
    assert all(len(ax.collections) == 0 for ax in single.axes)  # one seed: no spread to draw


def test_weight_norm_shows_its_start() -> None:
    ax = _ridge()["weight_norm"].axes[0]
    low, high = ax.get_ylim()
    for line in ax.get_lines():
        y = [v for v in line.get_ydata() if math.isfinite(v)]
        assert low <= min(y) and max(y) <= high  # the zero-init start and the peak are inside the axis


def test_write_plots_writes_pngs_without_pyplot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    def no_backend_switch(*args: object, **kwargs: object) -> None:
        raise AssertionError("plots must not switch the caller's matplotlib backend")

    monkeypatch.setattr(matplotlib, "use", no_backend_switch)
    rows = _ridge_rows()
    files = write_plots(tmp_path, rows, _trials(1, False), best=_best(rows, "test_loss", False), title="t",
                        classification=False)
    assert set(files) == set(plots.FIGURES)
    for path in files.values():
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@settings(max_examples=50, deadline=None)
@given(lams=st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=30, unique=True),
       pick=st.integers(0, 29), most=st.integers(3, 8))
def test_shown_lambdas_keep_the_ends_and_the_best(lams: list[float], pick: int, most: int) -> None:
    best = sorted(lams)[pick % len(lams)]
    shown = shown_weight_decays(lams, best, most)
    assert shown == sorted(shown) and set(shown) <= set(lams)
    assert len(shown) == min(most, len(lams))
    assert {min(lams), max(lams), best} <= set(shown)


def test_a_run_that_blew_up_does_not_flatten_the_rest() -> None:
    rows = _ridge_rows()
    rows[-1].update(failed=1, test_loss=1e178, train_loss=1e179, closed_form_test_loss=1e178)
    test_ax, train_ax = figures(rows, [], best=_best(rows[:-1], "test_loss", False), title="t",
                                classification=False)["metrics"].axes
    for ax, name in ((test_ax, "test_loss"), (train_ax, "train_loss")):
        assert ax.get_ylim()[1] < 2 * max(r[name] for r in rows[:-1])
    crosses = [line for line in test_ax.get_lines() if line.get_label() == "did not train (never the best)"]
    assert crosses and all(y <= test_ax.get_ylim()[1] for line in crosses for y in line.get_ydata())  # at the edge
