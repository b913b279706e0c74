"""Built-in tasks and the data/model contract: the ridge oracle, the noisy digits, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from decaykit import DecayError, sweep
from decaykit.sweeps.data import resolve_data
from decaykit.sweeps.tasks import make_model_fn
from decaykit.sweeps.tasks.digits import digits_noisy_labels
from decaykit.sweeps.tasks.ridge import ridge_teacher


def test_sgd_with_weight_decay_converges_to_the_closed_form_ridge():
    """Full-batch SGD on ½‖Xb − y‖² with L2 decay λ has the ridge solution (XᵀX + λI)⁻¹Xᵀy as fixed point."""
    result = sweep(task="ridge", weight_decays=[0.25, 1.0], epochs=800, progress=False)
    data = ridge_teacher()
    x, y = data.x_train, data.y_train
    for trial in result.trials:
        lam = trial["weight_decay"]
        exact = torch.linalg.solve(x.T @ x + lam * torch.eye(100, dtype=torch.float64), x.T @ y)
        exact_test = float(((data.x_test @ exact - data.y_test) ** 2).mean())
        assert trial["metrics"]["distance_to_closed_form"] < 1e-4, trial["metrics"]
        assert abs(trial["metrics"]["test_loss"] - exact_test) < 1e-4 * exact_test
        assert abs(trial["metrics"]["closed_form_test_loss"] - exact_test) < 1e-9 * exact_test


def test_ridge_best_weight_decay_is_about_the_noise_variance():
    # Krogh & Hertz: the best λ of ½‖Xb − y‖² + ½λ‖b‖² with β ~ N(0, I) is σ² = 0.25
    result = sweep(task="ridge", weight_decays=[0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0], progress=False)
    assert 0.1 <= result.best["weight_decay"] <= 0.3
    closed = {t["weight_decay"]: t["metrics"]["closed_form_test_loss"] for t in result.trials}
    assert 0.1 <= min(closed, key=closed.get) <= 0.3
    assert closed[10.0] > 1.5 * closed[0.3]


def test_noisy_digits_flip_exactly_the_stated_share_and_keep_test_labels_clean():
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = digits_noisy_labels(train_size=500, label_noise=0.3)
    assert data.train_size == 500 and data.test_size == 1297 and data.num_classes == 10
    true = torch.tensor(digits.target)
    images = torch.tensor(digits.data, dtype=torch.float32) / 16
    # find each image's true label by matching pixels (the split is a permutation of the data set)
    index = {tuple(row.tolist()): int(label) for row, label in zip(images, true)}
    train_true = torch.tensor([index[tuple(r.tolist())] for r in data.x_train])
    test_true = torch.tensor([index[tuple(r.tolist())] for r in data.x_test])
    assert int((train_true != data.y_train).sum()) == 150
    assert torch.equal(test_true, data.y_test)
    clean = digits_noisy_labels(label_noise=0.0)
    assert torch.equal(clean.x_train, data.x_train) and int((clean.y_train != data.y_train).sum()) == 150


def _xy(n=8, d=3, classes=True):
    x = torch.randn(n, d)
    y = torch.randint(0, 2, (n,)) if classes else torch.randn(n, 1)
    return x, y


def test_data_forms_accepted():
    x, y = _xy()
    for raw in (
        (x, y, x, y),
        {"x_train": x, "y_train": y, "x_test": x, "y_test": y},
        {"train": (x, y), "test": (x, y)},
        (TensorDataset(x, y), TensorDataset(x, y)),
        (x.numpy(), y.numpy(), x.numpy(), y.numpy()),
    ):
        data = resolve_data(raw)
        assert data.kind == "classification" and data.num_classes == 2 and data.train_size == 8
    assert resolve_data(_xy(classes=False) * 2).kind == "regression"


@pytest.mark.parametrize(
    "raw,match",
    [
        ((torch.randn(8, 3), torch.zeros(7, dtype=torch.long), torch.randn(4, 3), torch.zeros(4, dtype=torch.long)),
         "x_train has 8 samples but y_train has 7"),
        ((torch.randn(8, 3), torch.zeros(8, dtype=torch.long), torch.randn(4, 5), torch.zeros(4, dtype=torch.long)),
         r"differ in shape per sample: \(3,\) vs \(5,\)"),
        ((torch.randn(8, 3), -torch.ones(8, dtype=torch.long), torch.randn(4, 3), torch.zeros(4, dtype=torch.long)),
         "labels must be >= 0"),
        ((torch.full((8, 3), float("nan")), torch.zeros(8, dtype=torch.long), torch.randn(4, 3),
          torch.zeros(4, dtype=torch.long)), "NaN"),
        ((torch.randn(0, 3), torch.zeros(0, dtype=torch.long), torch.randn(4, 3), torch.zeros(4, dtype=torch.long)),
         "empty"),
        ((torch.randint(0, 9, (8, 3)), torch.zeros(8, dtype=torch.long), torch.randn(4, 3),
          torch.zeros(4, dtype=torch.long)), "x_train is torch.int64 but x_test is torch.float32; use one kind of input"),
        ((torch.randn(8, 3, dtype=torch.complex64), torch.zeros(8, dtype=torch.long),
          torch.randn(4, 3, dtype=torch.complex64), torch.zeros(4, dtype=torch.long)), "inputs must be real"),
        ("not data", "expected \\(x_train, y_train, x_test, y_test\\)"),
        ({"x": 1}, "keys x_train, y_train, x_test, y_test"),
    ],
)
def test_bad_data_is_a_clear_error(raw, match):
    with pytest.raises(DecayError, match=match):
        resolve_data(raw)


def test_integer_inputs_stay_integers_for_a_model_that_embeds_them():
    ids = torch.randint(0, 9, (8, 3))
    data = resolve_data((ids, torch.zeros(8, dtype=torch.long), ids[:4], torch.zeros(4, dtype=torch.long)))
    assert data.x_train.dtype == torch.int64 and torch.equal(data.x_train, ids)
    # a model that cannot take them says what they are
    with pytest.raises(DecayError, match=r"the inputs are int64, passed as they are .* give floating point inputs"):
        sweep(lambda: nn.Linear(3, 2), (ids, torch.zeros(8, dtype=torch.long), ids[:4], torch.zeros(4, dtype=torch.long)),
              weight_decays=[0.0], seeds=1, epochs=1, storage="memory", plots=False, progress=False)  # fmt: skip


def test_boolean_inputs_are_features():
    g = torch.Generator().manual_seed(0)
    flags = torch.rand(80, 6, generator=g) > 0.5
    labels = flags[:, 0].long()
    result = sweep(lambda: nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2)),
                   (flags[:64], labels[:64], flags[64:], labels[64:]), weight_decays=[0.0], seeds=1, epochs=40,
                   lr=0.02, storage="memory", plots=False, progress=False)  # fmt: skip
    assert result.results[0]["test_accuracy"] == 1.0  # the first flag is the label: an MLP on the flags as 0/1 floats


def test_model_contract_errors():
    with pytest.raises(DecayError, match="model instance"):
        make_model_fn(nn.Linear(3, 2))
    factory, _ = make_model_fn(lambda: "not a model")
    with pytest.raises(DecayError, match=r"returned a str, not a torch\.nn\.Module"):
        factory()
    with pytest.raises(DecayError, match=r"cannot import module 'no_such_pkg\.models'"):
        make_model_fn("no_such_pkg.models:net")
    data = _xy()
    with pytest.raises(DecayError, match="returns 1 logits per sample but the labels go up to 1"):
        sweep(lambda: nn.Linear(3, 1), data * 2, epochs=1, seeds=1, weight_decays=[0.0])
    with pytest.raises(DecayError, match="cannot take the data"):
        sweep(lambda: nn.Linear(5, 2), data * 2, epochs=1, seeds=1, weight_decays=[0.0])
    with pytest.raises(DecayError, match="targets have shape"):
        sweep(lambda: nn.Linear(3, 2), _xy(classes=False) * 2, epochs=1, seeds=1, weight_decays=[0.0])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"weight_decays": []}, "empty"),
        ({"weight_decays": [0.0, -1.0]}, "finite numbers >= 0, got -1.0"),
        ({"weight_decays": [float("nan")]}, "finite numbers >= 0"),
        ({"seeds": 0}, "seeds must be >= 1"),
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"lr": -1.0}, "lr must be a finite number > 0"),
        ({"mode": "sideways"}, "mode must be one of"),
        ({"policy": "nope"}, "unknown policy 'nope'"),
        ({"search": (1.0, 0.1)}, "0 < low < high"),
        ({"metric": "test_f1"}, "metric='test_f1' is not measured"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, match):
    with pytest.raises(DecayError, match=match):
        sweep(lambda: nn.Linear(3, 2), _xy() * 2, **{"epochs": 1, "seeds": 1, "weight_decays": [0.0], **kwargs})


def test_user_metrics_and_callbacks():
    seen = []

    def top_class_share(out, y):
        return float((out.argmax(-1) == 0).float().mean())

    result = sweep(
        lambda: nn.Linear(3, 2),
        _xy(n=16) * 2,
        weight_decays=[0.0, 0.1],
        seeds=2,
        epochs=2,
        metrics={"top": top_class_share},
        callbacks=[seen.append],
    )
    assert len(seen) == 4 and {(r["weight_decay"], r["seed"]) for r in seen} == {(0.0, 0), (0.0, 1), (0.1, 0), (0.1, 1)}
    assert "test_top" in result.results[0] and "train_top_std" in result.results[0]


def test_the_ridge_closed_form_is_the_same_bits_on_every_call():
    """A stored λ = 0 trial must equal a retrained one; LAPACK's default gelsy gave other last digits per call."""
    from decaykit.sweeps.tasks.ridge import ridge_solution

    data = ridge_teacher()
    first = ridge_solution(data, 0.0)
    assert all(torch.equal(first, ridge_solution(data, 0.0)) for _ in range(5))
