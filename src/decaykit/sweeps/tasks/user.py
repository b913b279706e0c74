"""A task around the user's own model factory and data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from decaykit._loading import load_object, model_factory, qualname
from decaykit.errors import DecayError
from decaykit.models import DEMO_MODELS
from decaykit.sweeps.data import SweepData, checksum, resolve_data
from decaykit.sweeps.tasks.task import Task

__all__ = ["make_model_fn", "task_from_user"]


def make_model_fn(spec: Any, *, argument: str = "model") -> tuple[Callable[[], nn.Module], str]:
    """Return ``(factory, identity)`` for a factory, a class or a ``pkg.mod:factory`` string.

    A sweep builds one fresh model per seed, so it needs a factory, not a model instance.
    """
    if isinstance(spec, nn.Module):
        raise DecayError(
            f"{argument}={type(spec).__name__} is a model instance; a sweep trains one fresh model per seed, so "
            "pass a function or class that builds it (in Python: lambda: MyNet())"
        )
    return model_factory(spec, argument=argument, named=DEMO_MODELS)


def task_from_user(
    model: Any,
    data: Any,
    *,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "auto",
) -> Task:
    """A task around the user's model factory and data (a factory, a ``pkg.mod:attr`` or the data itself)."""
    if model is None or data is None:
        missing = "model" if model is None else "data"
        raise DecayError(f"a sweep of your own model needs both model and data; {missing} is missing", argument=missing)
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
