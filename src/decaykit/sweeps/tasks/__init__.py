"""What a sweep trains: a model factory, its data and the settings that suit them.

Four tasks are built in and run offline (``digits.py``, the default, ``ridge.py`` and the two
MNIST-1D tasks of ``mnist1d.py``); any other
task wraps the user's model factory and data (``task_from_user``): a factory, a class or a
``pkg.mod:attr`` string for the model, and the data itself, a function returning it, or a
``pkg.mod:attr`` string (the forms :func:`decaykit.sweeps.data.resolve_data` accepts).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from decaykit.errors import DecayError
from decaykit.sweeps.tasks import digits, mnist1d, ridge
from decaykit.sweeps.tasks.task import Task, with_overrides
from decaykit.sweeps.tasks.user import make_model_fn, task_from_user

__all__ = [
    "BUILTIN_TASKS",
    "DEFAULT_TASK",
    "TASK_NAMES",
    "Task",
    "builtin_task",
    "make_model_fn",
    "resolve_task",
    "task_from_user",
    "with_overrides",
]

#: the built-in tasks by name, each a factory taking the task's options
BUILTIN_TASKS: dict[str, Callable[..., Task]] = {
    "digits-noisy-labels": digits.task,
    "ridge": ridge.task,
    "mnist1d-mlp": mnist1d.task_mlp,
    "mnist1d-cnn": mnist1d.task_cnn,
}
TASK_NAMES: tuple[str, ...] = tuple(BUILTIN_TASKS)
DEFAULT_TASK = "digits-noisy-labels"


def builtin_task(name: str, **options: Any) -> Task:
    """The built-in task ``name`` with its options (``train_size``, ``data_seed``; digits: ``label_noise``,
    ``hidden``; ridge: ``noise_std``, ``dim``)."""
    factory = BUILTIN_TASKS.get(name)
    if factory is None:
        raise DecayError(f"task={name!r} is not a built-in task; choose one of {', '.join(TASK_NAMES)}")
    takes = inspect.signature(factory).parameters
    unknown = sorted(k for k in options if k not in takes)
    if unknown:
        raise DecayError(f"task {name!r} does not take {', '.join(unknown)}; its options are {', '.join(takes)}",
                         argument="task_options")
    return factory(**{k: v for k, v in options.items() if v is not None})


def resolve_task(model: Any, data: Any, task: str | None, options: Mapping[str, Any] | None) -> Task:
    """The task a sweep trains: the built-in ``task`` (default :data:`DEFAULT_TASK`) with its ``options``
    when no ``model`` and ``data`` are given, else the user's own model and data."""
    if model is None and data is None:
        return builtin_task(task or DEFAULT_TASK, **dict(options or {}))
    if task is not None:
        raise DecayError(f"give either a built-in task ({task!r}) or your own model and data, not both")
    if options:
        raise DecayError(f"task_options ({', '.join(sorted(options))}) apply to built-in tasks only, not to your own "
                         "model and data; drop them", argument="task_options")
    return task_from_user(model, data)
