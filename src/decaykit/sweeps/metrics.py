"""Losses and metrics for K models at once: every tensor here has the members in its first dimension.

A training batch is ``(K, b, ...)``: member k's inputs, outputs and targets. A loss returns one
value per member, shape ``(K,)``; the sweep sums them and calls ``backward`` once, which gives
each member the gradient of its own loss (the members share no parameters).

Reported losses are means over samples whatever the training objective: cross-entropy for
classification, mean squared error for regression (the ridge task trains on ½ the sum of
squares, whose scale is not comparable across data sizes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from decaykit.errors import DecayError, UserCodeError

__all__ = ["LOSSES", "evaluate", "member_losses", "resolve_loss"]

LossFn = Callable[[Tensor, Tensor], Tensor]

# training objectives decaykit knows by name; a callable ``loss(output, target) -> scalar`` works too
LOSSES: tuple[str, ...] = ("cross_entropy", "mse", "half_sum_squares")


def resolve_loss(loss: str | LossFn, kind: str) -> str | LossFn:
    """``"auto"`` is cross-entropy for classification and mean squared error for regression."""
    if callable(loss):
        return loss
    if loss == "auto":
        return "cross_entropy" if kind == "classification" else "mse"
    if loss not in LOSSES:
        raise DecayError(f"loss must be one of {', '.join(LOSSES)} or a function, got {loss!r}")
    if loss == "cross_entropy" and kind != "classification":
        raise DecayError("loss='cross_entropy' needs integer class labels, but the targets are floating point")
    if loss != "cross_entropy" and kind == "classification":
        raise DecayError(f"loss={loss!r} needs floating-point targets, but the targets are integer class labels")
    return loss


def member_losses(loss: str | LossFn, output: Tensor, target: Tensor) -> Tensor:
    """Each member's training loss on its own batch: ``(K, b, ...)`` outputs → ``(K,)``."""
    k = output.shape[0]
    if callable(loss):
        if k == 1:
            return loss(output[0], target[0]).reshape(1)
        return torch.func.vmap(loss)(output, target)
    if loss == "cross_entropy":
        per_sample = F.cross_entropy(output.flatten(0, 1), target.flatten(0, 1), reduction="none")
        return per_sample.view(k, -1).mean(1)
    diff = (output - target).reshape(k, -1)
    if loss == "mse":
        return diff.square().mean(1)
    return 0.5 * diff.square().sum(1)  # half_sum_squares


def evaluate(
    forward: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    kind: str,
    loss: str | LossFn,
    chunk: int,
    extra: Mapping[str, Callable[[Tensor, Tensor], Any]] | None = None,
) -> dict[str, Tensor]:
    """Loss (and accuracy, and the user's metrics) of every member on the whole of ``x, y``.

    ``forward`` maps a chunk ``(n, ...)`` shared by all members to outputs ``(K, n, ...)``.
    Returns ``{name: tensor of shape (K,)}`` in float64.
    """
    total_loss: Tensor | None = None
    correct: Tensor | None = None
    outputs: list[Tensor] = []
    n = x.shape[0]
    with torch.no_grad():
        for start in range(0, n, chunk):
            xb, yb = x[start : start + chunk], y[start : start + chunk]
            out = forward(xb)
            yk = yb.unsqueeze(0).expand(out.shape[0], *yb.shape)
            if not callable(loss):  # a mean over samples: the chunks' means, weighted by their sizes
                if kind == "classification":
                    part = member_losses("cross_entropy", out, yk).double() * len(xb)
                else:
                    part = (out - yk).reshape(out.shape[0], -1).double().square().mean(1) * len(xb)
                total_loss = part if total_loss is None else total_loss + part
            if kind == "classification":
                hits = (out.argmax(-1) == yk).reshape(out.shape[0], -1).sum(1).double()
                correct = hits if correct is None else correct + hits
            if extra or callable(loss):
                outputs.append(out)
    full = torch.cat(outputs, dim=1) if outputs else None
    if full is not None and callable(loss):
        # the user's loss on the whole set at once, as they would call it: it may sum, or not decompose at all
        result = {"loss": member_losses(loss, full, y.unsqueeze(0).expand(full.shape[0], *y.shape)).double()}
    else:
        assert total_loss is not None
        result = {"loss": total_loss / n}
    if correct is not None:
        result["accuracy"] = correct / n
    if extra:
        assert full is not None
        for name, fn in extra.items():
            values = []
            for k in range(full.shape[0]):
                try:
                    values.append(float(fn(full[k], y)))
                except Exception as exc:
                    from decaykit._loading import describe_exception

                    raise UserCodeError(f"metrics: {name!r} failed: {describe_exception(exc)}; a metric is "
                                        "fn(outputs, targets) -> number", argument="metrics") from exc  # fmt: skip
            result[name] = torch.tensor(values, dtype=torch.float64)
    return result
