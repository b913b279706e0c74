"""What a sweep trains: a model factory, its data and the settings that suit them.

Two tasks are built in and run offline (``digits.py``, the default, and ``ridge.py``); any other
task wraps the user's model factory and data (``task_from_user``): a factory, a class or a
``pkg.mod:attr`` string for the model, and the data itself, a function returning it, or a
``pkg.mod:attr`` string (the forms :func:`decaykit.sweeps.data.resolve_data` accepts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from decaykit.errors import DecayError
from decaykit.loading import load_object, model_factory, qualname
from decaykit.sweeps.data import SweepData, checksum, resolve_data

__all__ = ["DEFAULT_TASK", "TASK_NAMES", "Task", "builtin_task", "make_model_fn", "task_from_user", "with_overrides"]


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


# ---------------------------------------------------------------- built-in task: noisy-label digits


TASK_NAMES: tuple[str, ...] = ("digits-noisy-labels", "ridge")
DEFAULT_TASK = "digits-noisy-labels"


def _builtin_factories() -> dict[str, Callable[..., Task]]:
    from decaykit.sweeps import digits, ridge  # they define their tasks with this module's Task

    return {"digits-noisy-labels": digits.task, "ridge": ridge.task}


def builtin_task(name: str, **options: Any) -> Task:
    """The built-in task ``name`` with its options (``train_size``, ``data_seed``; digits: ``label_noise``,
    ``hidden``; ridge: ``noise_std``, ``dim``)."""
    factory = _builtin_factories().get(name)
    if factory is None:
        raise DecayError(f"task={name!r} is not a built-in task; choose one of {', '.join(TASK_NAMES)}")
    try:
        return factory(**{k: v for k, v in options.items() if v is not None})
    except TypeError as exc:
        raise DecayError(f"task {name!r} does not take these options: {sorted(options)} ({exc})") from None


# ---------------------------------------------------------------- the user's model and data


def make_model_fn(spec: Any, *, argument: str = "model") -> tuple[Callable[[], nn.Module], str]:
    """Return ``(factory, identity)`` for a factory, a class or a ``pkg.mod:factory`` string.

    A sweep builds one fresh model per seed, so it needs a factory, not a model instance.
    """
    if isinstance(spec, nn.Module):
        raise DecayError(
            f"{argument}={type(spec).__name__} is a model instance; a sweep trains one fresh model per seed, so "
            "pass a function or class that builds it (in Python: lambda: MyNet())"
        )
    return model_factory(spec, argument=argument)


def task_from_user(
    model: Any,
    data: Any,
    *,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "auto",
) -> Task:
    """A task around the user's model factory and data (a factory, a ``pkg.mod:attr`` or the data itself)."""
    if model is None or data is None:
        missing = "model" if model is None else "data"
        raise DecayError(f"a sweep of your own model needs both model and data; {missing} is missing")
    model_fn, model_id = make_model_fn(model)
    data_fn, data_id = _data_fn(data)
    return Task(
        name="custom",
        model_fn=model_fn,
        data_fn=data_fn,
        identity=f"custom(model={model_id},data={data_id})",
        model_description=model_id,
        loss=loss,
    )


def _data_fn(spec: Any) -> tuple[Callable[[], Any], str]:
    if isinstance(spec, str):
        obj = load_object(spec, argument="DATA")
        identity = spec
        if callable(obj):
            return obj, identity
        return (lambda: obj), identity
    if callable(spec) and not isinstance(spec, (Tensor, SweepData)):
        return spec, qualname(spec)
    # data given directly: its identity is its content's shape and checksum, so a store never mixes data sets
    data = resolve_data(spec)
    digest = checksum(data)
    return (lambda: data), f"data:{digest}"


def with_overrides(task: Task, **overrides: Any) -> Task:
    """``task`` with the given settings replaced (``None`` keeps the task's own)."""
    return replace(task, **{k: v for k, v in overrides.items() if v is not None})
