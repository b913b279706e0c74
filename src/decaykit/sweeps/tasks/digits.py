"""Built-in task ``digits-noisy-labels`` (the default): watch a wide MLP memorise wrong labels.

scikit-learn's bundled 8x8 ``digits`` (1,797 images, no download): 500 training images of which 30%
carry a wrong label, a 512-wide MLP trained with AdamW. With λ = 0 the MLP fits every training
label, the wrong ones too (train accuracy → 100%), and test accuracy suffers; a good λ ignores
the noise; a huge λ shrinks the weights to nothing. With ``label_noise=0`` decay barely helps,
and the report says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from decaykit.errors import DecayError
from decaykit.sweeps.data import SweepData
from decaykit.sweeps.tasks.task import Task

__all__ = ["digits_mlp", "digits_noisy_labels", "task"]


def digits_noisy_labels(train_size: int = 500, label_noise: float = 0.3, seed: int = 0) -> SweepData:
    """scikit-learn's ``digits`` split into ``train_size`` training images and the rest for testing.

    Exactly ``round(label_noise * train_size)`` training labels are replaced by a different class,
    drawn uniformly from the nine wrong ones; the test labels stay clean, so test accuracy
    measures what was learnt about digits, not about the noise. Pixels are scaled to [0, 1].
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DecayError(
            "the digits task needs scikit-learn (its bundled digits data): pip install 'decaykit[data]'"
        ) from exc
    if not 0.0 <= label_noise < 1.0:
        raise DecayError(f"label_noise must be in [0, 1), got {label_noise}")
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    if not 10 <= train_size <= len(x) - 100:
        raise DecayError(f"train_size must be between 10 and {len(x) - 100} for digits, got {train_size}")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    train, test = order[:train_size], order[train_size:]
    y_train = y[train].clone()
    n_flip = round(label_noise * train_size)
    flipped = torch.randperm(train_size, generator=gen)[:n_flip]
    shift = torch.randint(1, 10, (n_flip,), generator=gen)  # never 0: the new label is always wrong
    y_train[flipped] = (y_train[flipped] + shift) % 10
    if n_flip:
        noise = f"{n_flip} of them ({label_noise:.0%}) relabelled with a wrong class at random"
    else:
        noise = "clean labels"
    return SweepData(
        x_train=x[train],
        y_train=y_train,
        x_test=x[test],
        y_test=y[test],
        kind="classification",
        num_classes=10,
        description=(
            f"scikit-learn digits (8x8 images): {train_size} training images, {noise}; "
            f"tested on the other {len(test)} images with their true labels"
        ),
    )


def digits_mlp(hidden: int = 512) -> nn.Sequential:
    """64 → ``hidden`` → 10 with a ReLU: wide enough to memorise 500 noisy labels."""
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def _digits_notes(rows: Sequence[Mapping[str, Any]], data: SweepData, *, label_noise: float) -> list[str]:
    zero = next((r for r in rows if r["weight_decay"] == 0.0 and r.get("train_accuracy") is not None), None)
    if zero is None or zero["train_accuracy"] < 0.97 or label_noise == 0:
        return []
    return [
        f"at λ = 0 the MLP fits {zero['train_accuracy']:.1%} of the training labels, wrong ones included: "
        "it has memorised the noise"
    ]


def task(train_size: int = 500, label_noise: float = 0.3, hidden: int = 512, data_seed: int = 0) -> Task:
    return Task(
        name="digits-noisy-labels",
        model_fn=lambda: digits_mlp(hidden),
        data_fn=lambda: digits_noisy_labels(train_size, label_noise, seed=data_seed),
        identity=(
            f"digits-noisy-labels(train_size={train_size},label_noise={label_noise},hidden={hidden},"
            f"data_seed={data_seed})"
        ),
        optimizer="adamw",
        lr=1e-3,
        epochs=200,
        batch_size=32,
        mode="lr_coupled",
        weight_decays=(0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
        seeds=3,
        model_description=f"MLP 64-{hidden}-10 (ReLU)",
        notes=lambda rows, data: _digits_notes(rows, data, label_noise=label_noise),
        extra={"train_size": train_size, "label_noise": label_noise, "data_seed": data_seed},
    )


# ---------------------------------------------------------------- built-in task: ridge regression
