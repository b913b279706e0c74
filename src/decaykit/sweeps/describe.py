"""How a sweep names and describes itself: its identity in the store, its settings, its header."""

from __future__ import annotations

import json
from typing import Any

from decaykit.sweeps.data import SweepData
from decaykit.sweeps.optim import describe_optimizer
from decaykit.sweeps.tasks import Task
from decaykit.sweeps.trainer import TrainSettings

__all__ = ["header", "identity", "policy_text", "public_settings"]


def policy_text(policy: Any) -> str:
    if isinstance(policy, str):
        return policy
    options = {k: v for k, v in dict(policy).items() if v not in (None, [], (), False) or k == "decay_embeddings"}
    if set(options) <= {"policy", "decay_embeddings"} and options.get("decay_embeddings", True):
        return str(options.get("policy", "decaykit"))
    return json.dumps(options, sort_keys=True, default=repr)


def _qual(obj: Any) -> Any:
    if callable(obj):
        return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__name__)}"
    return obj


def identity(task: Task, settings: TrainSettings, objective: str) -> dict[str, Any]:
    """Everything that changes a trial's numbers except (λ, seed): the store's study name hashes it."""
    return {
        "task": task.identity,
        "optimizer": _qual(settings.optimizer),
        "lr": settings.lr,
        "momentum": settings.momentum,
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "mode": settings.mode,
        "policy": policy_text(settings.policy),
        "loss": _qual(settings.loss),
        "dtype": str(settings.dtype),
        "curve_points": settings.curve_points,
        "metrics": sorted(settings.metrics),
        "objective": objective,
    }


def public_settings(
    task: Task,
    settings: TrainSettings,
    seeds: list[int],
    wd_grid: list[float] | None,
    search: tuple[float, float] | None,
    objective: str,
    policy: Any,
) -> dict[str, Any]:
    return {
        "task": task.name,
        "model": task.model_description or task.identity,
        "optimizer": _qual(settings.optimizer),
        "lr": settings.lr,
        "momentum": settings.momentum,
        "mode": settings.mode,
        "policy": policy_text(policy),
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "seeds": seeds,
        "weight_decays": wd_grid,
        "search": list(search) if search is not None else None,
        "metric": objective,
        "dtype": str(settings.dtype).replace("torch.", ""),
    }


def header(
    task: Task,
    data: SweepData,
    settings: TrainSettings,
    seeds: list[int],
    search: tuple[float, float] | None,
    rounds: int,
    points: int,
) -> list[str]:
    batch = "full batch" if settings.batch_size is None else f"batch {settings.batch_size}"
    if len(seeds) == 1:
        seed_text = f"seed {seeds[0]}"
    elif seeds == list(range(seeds[0], seeds[-1] + 1)):
        seed_text = f"seeds {seeds[0]}-{seeds[-1]}"
    else:
        seed_text = f"seeds {seeds}"
    what = (
        f"λ in [{search[0]:g}, {search[1]:g}]: {rounds} rounds of {points} log-spaced values zooming in on the best, "
        "plus λ = 0"
        if search is not None
        else None
    )
    lines = [
        f"decaykit sweep: {task.name}",
        f"data:   {data.description}",
        f"model:  {task.model_description or task.identity}; "
        f"{describe_optimizer(settings.optimizer, settings.lr, settings.momentum, settings.mode)}; "
        f"policy {policy_text(settings.policy)}",
        f"train:  {settings.epochs} epochs, {batch}, {seed_text} (a seed fixes the initial weights and the "
        "sample order)",
        ("table:  mean ± std over seeds; gap = " if len(seeds) > 1 else "table:  gap = ")
        + ("train − test accuracy" if settings.kind == "classification" else "test − train loss")
        + "; ‖w‖ = L2 norm of the parameters that decay (the policy's choice)",
    ]
    if what:
        lines.append(f"search: {what}")
    return lines
