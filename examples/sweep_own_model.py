"""Sweep weight decay for your own model and data, from Python or from the command line.

Python:
    python examples/sweep_own_model.py

Command line (from the repository root; ``python -m`` puts the current folder on the import path):
    python -m decaykit sweep --model examples.sweep_own_model:model --data examples.sweep_own_model:data \\
        --weight-decays 0,0.1,1,3,10 --epochs 40 --out runs/cnn

The data factory returns ``(x_train, y_train, x_test, y_test)``: integer targets mean classification
(cross-entropy, accuracy), float targets regression (mean squared error). The model factory is called
once per seed, right after ``torch.manual_seed(seed)``. A CNN is not a chain of Linear layers, so the
sweep stacks it with ``torch.func.vmap`` (the report's note says which path ran).
"""

from __future__ import annotations

from torch import nn


def model() -> nn.Module:
    """A small CNN for 1x8x8 images."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 10),
    )  # fmt: skip


def data(train_size: int = 400, label_noise: float = 0.3):
    """scikit-learn digits as 1x8x8 images, with a share of the training labels made wrong."""
    from decaykit.sweeps.tasks.digits import digits_noisy_labels

    d = digits_noisy_labels(train_size=train_size, label_noise=label_noise)
    return d.x_train.view(-1, 1, 8, 8), d.y_train, d.x_test.view(-1, 1, 8, 8), d.y_test


if __name__ == "__main__":
    import decaykit

    result = decaykit.sweep(
        model,
        data,
        weight_decays=[0.0, 0.1, 1.0, 3.0, 10.0],
        seeds=2,
        epochs=40,
        lr=1e-3,
        progress=True,
    )
    print(result)
    print("best λ:", result.best["weight_decay"])
