"""Whether a finished trial trained at all: a trial that did not is *failed*, and never the best λ.

A trial fails, first reason found, when

1. ``broken``: its loss is already non-finite on the initial model (the model or the loss, not the LR);
2. ``diverged``: its loss became non-finite during training;
3. ``overflow``: its weights overflowed, ‖w‖ > √(largest float of the dtype), so ‖w‖² is not representable
   (SGD at lr 1e7 reaches ‖w‖ ≈ 1e26 in float32 with every loss still finite);
4. ``blew_up``: its final training loss is over a hundred times the initial model's (unstable steps, the
   weights growing, though not yet to an overflow);
   ``no_progress``: otherwise, its final training loss is not below the initial model's;
5. ``chance``: it scores no better on the test set than a model that learnt nothing. Classification:
   the best constant prediction (the commonest test label) is right on a share p₀ ≥ 1/classes of the
   test set; test accuracy must exceed p₀ by more than two binomial standard errors, 2√(p₀(1 − p₀)/n).
   Regression (with a named loss): predicting the training targets' mean has test MSE m₀, per-sample
   errors eᵢ; test MSE must be below m₀ by more than two standard errors of their mean, 2·sd(e)/√n.
   Two standard errors: a model that learnt nothing lands within them about 95% of the time. On a test set
   too small for that, the margin is capped at half the way to a perfect score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from decaykit.sweeps.data import SweepData

__all__ = ["ADVICE", "Chance", "chance_level", "judge"]

#: what to change when λ = 0 itself fails, per failure kind
ADVICE: dict[str, str] = {
    "broken": "check the model's forward pass and the loss (the learning rate is not the cause)",
    "diverged": "lower the learning rate (--lr)",
    "overflow": "lower the learning rate (--lr)",
    "blew_up": "lower the learning rate (--lr)",
    "no_progress": "lower the learning rate (--lr) or train longer (--epochs)",
    "chance": "train longer (--epochs) or raise the learning rate (--lr), and check that the labels match the inputs",
}


@dataclass(frozen=True)
class Chance:
    """What a model that learnt nothing scores on the test set, and the line a trained one must pass."""

    metric: str  # "test_accuracy" (higher is better) or "test_loss" (lower is better)
    value: float
    threshold: float
    text: str


def chance_level(data: SweepData, loss: Any) -> Chance | None:
    """The test set's chance level (see the module docstring); None for a regression with a custom loss,
    whose scale decaykit cannot compare with a mean predictor's."""
    n = data.test_size
    if data.kind == "classification":
        p0 = float(torch.bincount(data.y_test.flatten().cpu()).max()) / n
        margin = min(2 * math.sqrt(p0 * (1 - p0) / n), (1 - p0) / 2)  # capped: a tiny test set still passes a perfect score
        return Chance("test_accuracy", p0, p0 + margin, f"predicting the commonest class scores {p0:.1%}")
    if callable(loss):
        return None
    mean = data.y_train.double().mean(0)
    errors = (data.y_test.double() - mean).square().reshape(n, -1).mean(1)
    m0 = float(errors.mean())
    margin = min(2 * float(errors.std()) / math.sqrt(n), m0 / 2) if n > 1 else 0.0
    return Chance("test_loss", m0, m0 - margin, f"predicting the mean scores {m0:.4g}")


def judge(
    first: Mapping[str, float],
    last: Mapping[str, float],
    *,
    chance: Chance | None,
    dtype: torch.dtype,
    lr: float | None,
) -> dict[str, str] | None:
    """``{"kind", "reason"}`` when the trial failed (see the module docstring), else None.

    ``first`` and ``last`` are the trial's metrics on the initial and the final model.
    """
    at_lr = f" at lr {lr:g}" if lr else ""
    start, end = first.get("train_loss", math.nan), last.get("train_loss", math.nan)
    if not math.isfinite(start):
        return _failure("broken", "the loss is non-finite on the initial model, before any training")
    if not all(math.isfinite(v) for v in last.values()):
        return _failure("diverged", f"the loss became non-finite (NaN or inf){at_lr}")
    norm = last.get("weight_norm", 0.0)
    if norm > math.sqrt(torch.finfo(dtype).max):
        return _failure("overflow", f"the weights overflowed (‖w‖ = {norm:.3g}){at_lr}")
    if end > 100 * start > 0:
        grown = f", ‖w‖ = {norm:.3g}" if "weight_norm" in last else ""
        return _failure("blew_up", f"the training loss blew up ({start:.4g} → {end:.4g}{grown}): unstable steps{at_lr}")
    if not end < start:
        return _failure("no_progress", f"the training loss did not fall ({start:.4g} → {end:.4g}){at_lr}")
    if chance is not None and chance.metric in last:
        value = last[chance.metric]
        if chance.metric == "test_accuracy" and value <= chance.threshold:
            return _failure("chance", f"test accuracy {value:.1%} is no better than chance ({chance.text})")
        if chance.metric == "test_loss" and value >= chance.threshold:
            return _failure("chance", f"test loss {value:.4g} is no better than chance ({chance.text})")
    return None


def _failure(kind: str, reason: str) -> dict[str, str]:
    return {"kind": kind, "reason": reason}
