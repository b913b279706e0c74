"""A sweep's task: a model factory, its data, and the training settings that suit them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from decaykit.errors import UserCodeError
from decaykit.sweeps.data import SweepData

__all__ = ["Task", "with_overrides"]


@dataclass(frozen=True)
class Task:
    """A model factory, its data, and the training settings a sweep uses unless told otherwise.

    ``identity`` names everything that changes results apart from λ and the seed; the store keys
    finished trials on it, so a changed setting never reuses a stale result.
    """

    name: str
    model_fn: Callable[[], nn.Module]
    data_fn: Callable[[], Any]
    identity: str
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.0
    epochs: int = 100
    batch_size: int | None = 64
    mode: str = "lr_coupled"
    loss: str | Callable[[Tensor, Tensor], Tensor] = "auto"
    weight_decays: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0)
    seeds: int = 3
    dtype: torch.dtype = torch.float32
    model_description: str = ""
    # per-member extra metrics computed once at the end: (model, weight_decay, data) -> {name: value}
    final_metrics: Callable[[nn.Module, float, SweepData], dict[str, float]] | None = None
    # notes about the finished table that only the task can make: (rows, data) -> [sentences]
    notes: Callable[[Sequence[Mapping[str, Any]], SweepData], list[str]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def users(self) -> bool:
        """The model and data are the user's own (``task_from_user``), not a built-in task's."""
        return self.name == "custom"

    def training_failed(self, exc: BaseException, where: str = "") -> UserCodeError:
        """``exc`` raised while training this user task's model: the user's code failing (its forward, its
        loss, or outputs the loss cannot take), named with the model."""
        from decaykit._loading import describe_exception

        return UserCodeError(f"model={self.model_description!r}: training failed{where}: {describe_exception(exc)} "
                             "(raised by the model's forward or on its outputs)", argument="model")  # fmt: skip


def with_overrides(task: Task, **overrides: Any) -> Task:
    """``task`` with the given settings replaced (``None`` keeps the task's own)."""
    return replace(task, **{k: v for k, v in overrides.items() if v is not None})
