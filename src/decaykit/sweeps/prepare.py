"""A sweep's first phase: the settings resolved against the task, the data loaded, the model checked.

Everything that can fail on the user's input fails here, before a store is opened or a model trained.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    notes: tuple[str, ...] = ()  # what preparing changed that the report should say


def prepare(task: Task, trials: Trials, training: Training) -> Prepared:
    """Resolve ``trials`` and ``training`` against ``task``, load its data and check the model on it."""
    training = training.for_task(task)
    notes: tuple[str, ...] = ()
    if trials.weight_decays is None and trials.search is None and training.mode == "lr_independent" and training.lr:
        trials, notes = _independent_grid(trials.for_task(task), float(training.lr))
    else:
        trials = trials.for_task(task)
    checks.check_shrink(training, trials.extent)  # before the data loads: a bad λ fails at once
    data = checks.load_data(task, training)
    training = training.for_data(data.kind)
    probe = checks.check_model(task, data, training)
    checks.check_objective(training, data.kind, task)
    return Prepared(task=task, data=data, trials=trials, training=training, probe=probe, notes=notes)


def _independent_grid(trials: Trials, lr: float) -> tuple[Trials, tuple[str, ...]]:
    """The task's default grid, written as torch AdamW λ, in ``lr_independent``'s convention (λ·lr at a constant
    LR, :func:`decaykit.convert`): as it stands, its λ = 10 would shrink every weight by 1000% per step."""
    from decaykit.convert import convert

    grid = tuple(float(f"{convert(wd, from_='lr_coupled', to='lr_independent', max_lr=lr):.12g}")
                 for wd in trials.weight_decays or ())  # fmt: skip
    shown = ", ".join(f"{wd:g}" for wd in grid)
    note = (f"mode 'lr_independent': the task's default λ grid (torch AdamW λ) converted to this mode's, λ·lr = {shown} "
            "(the same decay per step); give --weight-decays to sweep others")
    return replace(trials, weight_decays=grid), (note,)
