"""A sweep's first phase: the settings resolved against the task, the data loaded, the model checked.

Everything that can fail on the user's input fails here, before a store is opened or a model trained.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from decaykit.sweeps import checks
from decaykit.sweeps.data import SweepData
from decaykit.sweeps.settings import Training, Trials
from decaykit.sweeps.tasks import Task

__all__ = ["Prepared", "prepare"]


@dataclass(frozen=True)
class Prepared:
    """A sweep ready to train: the task, its data on the training device, and every setting concrete.

    ``trials`` has its grid (or search) and seeds; ``training`` has the task's choices filled in, the loss
    named and the objective chosen; ``probe`` is the seed-0 model, built once to check the model
    against the data (and reused to size the thread count and the stacked path).
    """

    task: Task
    data: SweepData
    trials: Trials
    training: Training
    probe: nn.Module


def prepare(task: Task, trials: Trials, training: Training) -> Prepared:
    """Resolve ``trials`` and ``training`` against ``task``, load its data and check the model on it."""
    training = training.for_task(task)
    trials = trials.for_task(task)
    checks.check_shrink(training, trials.extent)  # before the data loads: a bad λ fails at once
    data = checks.load_data(task, training)
    training = training.for_data(data.kind)
    probe = checks.check_model(task, data, training)
    checks.check_objective(training, data.kind, task)
    return Prepared(task=task, data=data, trials=trials, training=training, probe=probe)
