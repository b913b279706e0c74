"""How a sweep names and describes itself: its identity in the store, its settings, its header."""

from __future__ import annotations

import json
from typing import Any

from decaykit.policy.options import Policy
from decaykit.sweeps.data import SweepData
from decaykit.sweeps.optim import describe_optimizer
from decaykit.sweeps.settings import Training, Trials
from decaykit.sweeps.tasks import Task

__all__ = ["header", "identity", "policy_text", "public_settings"]


def policy_text(policy: Any) -> str:
    """How the header and the store's identity name the policy.

    A ``Policy`` names itself (:meth:`decaykit.Policy.describe`); a name or a mapping is written as
    given, as earlier versions did, so a rerun finds the trials they stored.
    """
    if isinstance(policy, Policy):
        return policy.describe()
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


def identity(task: Task, training: Training) -> dict[str, Any]:
    """Everything that changes a trial's numbers except (λ, seed): the store's study name hashes it.

    ``training`` is resolved (:meth:`Training.for_data`). The keys and values must not change from one
    release to the next: a changed identity starts a new study, and a rerun could no longer resume.
    """
    return {
        "task": task.identity,
        "optimizer": _qual(training.optimizer),
        "lr": training.lr,
        "momentum": training.momentum,
        "epochs": training.epochs,
        "batch_size": training.batch_size or None,  # None: a full batch, as stores have always written it
        "mode": training.mode,
        "policy": policy_text(training.policy),
        "loss": _qual(training.loss),
        "dtype": str(training.dtype),
        "curve_points": training.curve_points,
        "metrics": sorted(training.metrics),
        "objective": training.metric,
    }


def public_settings(task: Task, trials: Trials, training: Training) -> dict[str, Any]:
    """The settings a result reports (``--json``'s ``settings``), from the resolved values."""
    return {
        "task": task.name,
        "model": task.model_description or task.identity,
        "optimizer": _qual(training.optimizer),
        "lr": training.lr,
        "momentum": training.momentum,
        "mode": training.mode,
        "policy": policy_text(training.policy),
        "epochs": training.epochs,
        "batch_size": training.batch_size or None,
        "seeds": trials.seed_list,
        "weight_decays": None if trials.weight_decays is None else list(trials.weight_decays),
        "search": None if trials.search is None else list(trials.search),
        "metric": training.metric,
        "dtype": str(training.dtype).replace("torch.", ""),
    }


def header(task: Task, data: SweepData, trials: Trials, training: Training) -> list[str]:
    """The report's first lines: the task, the data, the model and optimizer, the training, the table's legend."""
    seeds, search = trials.seed_list, trials.search
    batch = "full batch" if not training.batch_size else f"batch {training.batch_size}"
    if len(seeds) == 1:
        seed_text = f"seed {seeds[0]}"
    elif seeds == list(range(seeds[0], seeds[-1] + 1)):
        seed_text = f"seeds {seeds[0]}-{seeds[-1]}"
    else:
        seed_text = f"seeds {seeds}"
    lines = [
        f"decaykit sweep: {task.name}",
        f"data:   {data.description}",
        f"model:  {task.model_description or task.identity}; "
        f"{describe_optimizer(training.optimizer, training.lr, training.momentum, training.mode)}; "
        f"policy {policy_text(training.policy)}",
        f"train:  {training.epochs} epochs, {batch}, {seed_text} (a seed fixes the initial weights and the "
        "sample order)",
        ("table:  mean ± std over seeds; gap = " if len(seeds) > 1 else "table:  gap = ")
        + ("train − test accuracy" if data.kind == "classification" else "test − train loss")
        + "; ‖w‖ = L2 norm of the parameters that decay (the policy's choice)",
    ]
    if search is not None:
        lines.append(
            f"search: λ in [{search[0]:g}, {search[1]:g}]: {trials.rounds} rounds of {trials.points} log-spaced "
            "values zooming in on the best, plus λ = 0"
        )
    return lines
