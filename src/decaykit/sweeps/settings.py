"""A sweep's settings as three frozen values: what to try, how to train, how to run.

>>> from decaykit.sweeps import Execution, Training, Trials, run_sweep
>>> from decaykit.sweeps.tasks import builtin_task
>>> trials = Trials(weight_decays=[0, 0.01, 0.1], seeds=3)
>>> training = Training(epochs=50, lr=1e-3)
>>> result = run_sweep(builtin_task("ridge"), trials, training, Execution(storage="memory"))  # doctest: +SKIP

Each value checks its fields once, when it is made: a bad value raises :class:`DecayError` naming the
argument and the value, before anything is loaded or trained. ``None`` in a field means "the task's
own choice"; :meth:`Trials.for_task` and :meth:`Training.for_task` fill those in, and
:meth:`Training.for_data` settles what depends on the targets (the loss, the objective). The CLI
builds the same values from its flags (:meth:`from_options`), so both ends share one set of names
and defaults.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor

from decaykit._validate import check_int, check_number
from decaykit.engine.modes import MODES
from decaykit.errors import DecayError, DecayWarning
from decaykit.policy.options import Policy
from decaykit.sweeps import grid as grids
from decaykit.sweeps.metrics import LOSSES, resolve_loss
from decaykit.sweeps.optim import INNER_OPTIMIZERS, as_policy
from decaykit.sweeps.store import TrialKey

if TYPE_CHECKING:
    from decaykit.sweeps.tasks import Task

__all__ = ["TASK_CHOICES", "Execution", "Training", "Trials"]

_S = TypeVar("_S", bound="_Options")

#: the training settings a task chooses when the caller leaves them None (Task has a field of each name)
TASK_CHOICES: tuple[str, ...] = ("optimizer", "lr", "momentum", "epochs", "batch_size", "mode", "loss", "dtype")


class _Options:
    """``from_options``: a settings value from a mapping whose keys are named like its fields."""

    @classmethod
    def from_options(cls: type[_S], options: Mapping[str, Any], **given: Any) -> _S:
        """The value from ``options`` (e.g. ``vars()`` of the CLI's parsed flags, whose names are the
        fields'); ``given`` replaces the entries of its names, and a missing or None entry keeps the
        field's default. Entries that name no field are ignored.

        >>> Trials.from_options({"rounds": 2, "seeds": None, "other": 1}).rounds
        2
        """
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        values = {**{name: options.get(name) for name in names}, **given}
        return cls(**{name: value for name, value in values.items() if value is not None})


def _set(value: object, name: str, new: Any) -> None:
    object.__setattr__(value, name, new)  # normalising a frozen value's own field, in __post_init__


@dataclass(frozen=True)
class Trials(_Options):
    """What a sweep tries: λ values and seeds. A trial is one (λ, seed) pair.

    - ``weight_decays``: the λ grid, kept sorted and distinct (None: the task's grid; unused with ``search``).
    - ``seeds``: a count n (seeds 0 … n−1) or the seeds themselves, kept as a sorted tuple (None: the task's
      count). A seed fixes a trial's initial weights and its sample order.
    - ``search``: ``(low, high)`` with 0 < low < high: search that log range instead of a grid, in
      ``rounds`` rounds of ``points`` log-spaced λ, each zooming in on the best so far (plus λ = 0).
    """

    weight_decays: Sequence[float] | None = None
    seeds: int | Sequence[int] | None = None
    search: tuple[float, float] | None = None
    rounds: int = 3
    points: int = 8

    def __post_init__(self) -> None:
        if self.weight_decays is not None:
            _set(self, "weight_decays", tuple(grids.check_weight_decays(self.weight_decays)))
        if self.seeds is not None:
            _set(self, "seeds", tuple(grids.check_seeds(self.seeds)))
        if self.search is not None:
            try:
                low, high = self.search
            except (TypeError, ValueError):
                raise DecayError(f"search must be a pair (low, high), e.g. (1e-3, 10); got {self.search!r}") from None
            _set(self, "search", grids.check_range(low, high))
            if self.weight_decays is not None:
                warnings.warn(
                    f"weight_decays={list(self.weight_decays)} has no effect with search={self.search}: the search "
                    "picks its own λ; give one or the other", DecayWarning, stacklevel=3,
                )  # fmt: skip
        check_int(self.rounds, "rounds", minimum=1)
        check_int(self.points, "points", minimum=1)

    def for_task(self, task: Task) -> Trials:
        """These trials with the task's grid and seed count where none were given (no grid with a search)."""
        grid = self.weight_decays if self.weight_decays is not None else task.weight_decays
        seeds = self.seeds if self.seeds is not None else task.seeds
        return replace(self, weight_decays=None if self.search is not None else grid, seeds=seeds)

    @property
    def seed_list(self) -> list[int]:
        """The seeds (of trials resolved by :meth:`for_task`)."""
        if self.seeds is None:
            raise DecayError("these trials have no seeds yet: resolve them with Trials.for_task(task)")
        return list(self.seeds)  # type: ignore[arg-type]

    @property
    def extent(self) -> list[float]:
        """The λ a sweep may train that a shrink check must accept: the grid, or the search's upper end."""
        if self.search is not None:
            return [self.search[1]]
        return list(self.weight_decays or ())

    @property
    def first_round_size(self) -> int:
        """Trials in the first round: the whole grid, or the search's first ``points`` λ and λ = 0, per seed."""
        values = len(self.weight_decays) if self.search is None and self.weight_decays is not None else self.points + 1
        return values * len(self.seed_list)

    def trial_rounds(self, best_of: Callable[[Sequence[float]], float | None]) -> Iterator[list[TrialKey]]:
        """The trials to train, round by round: the grid in one round, or each search round's new λ
        (``best_of(tried)`` reads the finished trials between rounds, see :func:`grid.search_rounds`)."""
        seeds = self.seed_list
        if self.search is None:
            yield [(wd, s) for wd in self.weight_decays or () for s in seeds]
            return
        low, high = self.search
        for new in grids.search_rounds(low, high, self.points, self.rounds, best_of):
            yield [(wd, s) for wd in new for s in seeds]


@dataclass(frozen=True)
class Training(_Options):
    """How each trial trains and is measured. None: the task's choice (see :data:`TASK_CHOICES`).

    - ``optimizer``: ``"adamw"``, ``"adam"``, ``"sgd"``, or a function ``(param_groups, lr=...)`` returning a
      torch optimizer; its own decay is off, the engine applies λ per ``mode``. ``lr`` > 0; ``momentum``
      in [0, 1) (SGD).
    - ``epochs`` >= 1; ``batch_size``: samples per step, 0 = the whole training set at once.
    - ``mode``: the decay engine's mode (:data:`decaykit.engine.modes.MODES`).
    - ``policy``: which parameters decay, a preset name, a :class:`decaykit.Policy`, or
      :func:`decaykit.param_groups` options (``{"policy": "timm", "exclude": ["head.*"]}``), validated
      here through ``Policy.of``; kept as given, so the store names it as earlier versions did.
    - ``loss``: ``"auto"`` (cross-entropy for class labels, mse otherwise), a name of
      :data:`metrics.LOSSES`, or ``fn(outputs, targets) -> scalar``.
    - ``metrics``: extra ``{name: fn(outputs, targets)}`` measured on train and test.
    - ``metric``: the objective the best λ is chosen by (None: ``test_accuracy``, or ``test_loss`` for
      regression); ``maximize``: its direction (None: decaykit's own metrics' direction, accuracies up,
      losses, ``gap``, ``weight_norm`` and ``distance_to_closed_form`` down; a metric of ``metrics`` needs it).
    - ``curve_points``: about how many points each learning curve has.
    - ``dtype``: the models' and data's floating dtype; ``device``: where they train.
    """

    optimizer: str | Callable[..., torch.optim.Optimizer] | None = None
    lr: float | None = None
    momentum: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    mode: str | None = None
    policy: str | Policy | Mapping[str, Any] = "decaykit"
    loss: str | Callable[[Tensor, Tensor], Tensor] | None = None
    metrics: Mapping[str, Callable[[Tensor, Tensor], Any]] = field(default_factory=lambda: MappingProxyType({}))
    metric: str | None = None
    maximize: bool | None = None
    curve_points: int = 25
    dtype: torch.dtype | None = None
    device: str | torch.device = "cpu"

    def __post_init__(self) -> None:
        _check_optimizer(self.optimizer)
        if self.lr is not None:
            check_number(self.lr, "lr", allow_zero=False)
        if self.momentum is not None and check_number(self.momentum, "momentum") >= 1.0:
            raise DecayError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.epochs is not None:
            check_int(self.epochs, "epochs", minimum=1)
        if self.batch_size is not None:
            _set(self, "batch_size", check_int(self.batch_size, "batch_size", minimum=0))
        _check_mode(self.mode)
        as_policy(self.policy)  # a bad policy fails here; its rules' names fail on the model
        _check_loss(self.loss)
        _set(self, "metrics", _checked_metrics(self.metrics))
        if self.metric is not None and not isinstance(self.metric, str):
            raise DecayError(f"metric must be the name of a measured metric, got {self.metric!r}")
        if self.maximize is not None and not isinstance(self.maximize, bool):
            raise DecayError(f"maximize must be True, False or None, got {self.maximize!r}")
        check_int(self.curve_points, "curve_points", minimum=1)
        if self.dtype is not None and not isinstance(self.dtype, torch.dtype):
            raise DecayError(f"dtype must be a torch.dtype such as torch.float64, got {self.dtype!r}")
        _set(self, "device", _checked_device(self.device))

    def for_task(self, task: Task) -> Training:
        """These settings with the task's choice wherever None was given (a full batch becomes 0)."""
        chosen = {name: getattr(task, name) for name in TASK_CHOICES if getattr(self, name) is None}
        if "batch_size" in chosen and chosen["batch_size"] is None:
            chosen["batch_size"] = 0
        optimizer = chosen.get("optimizer", self.optimizer)
        if self.momentum is not None and optimizer != "sgd":
            used = optimizer if isinstance(optimizer, str) else "a function of (param_groups, lr)"
            raise DecayError(
                f"momentum={self.momentum} has no effect with optimizer {used!r}: only 'sgd' takes it; "
                "drop momentum (--momentum) or choose optimizer='sgd' (--optimizer sgd)"
            )
        return replace(self, **chosen)

    def for_data(self, kind: str) -> Training:
        """These settings for targets of ``kind`` (``"classification"`` or ``"regression"``): the loss named,
        the objective and its direction chosen."""
        if self.loss is None:
            raise DecayError("resolve the training settings with Training.for_task(task) before for_data")
        metric = self.metric or ("test_accuracy" if kind == "classification" else "test_loss")
        maximize = self.maximize
        if maximize is None and metric.partition("_")[2] not in self.metrics:  # a user's metric: no guess
            maximize = metric.endswith("accuracy")
        return replace(self, loss=resolve_loss(self.loss, kind), metric=metric, maximize=maximize)

    def batch_for(self, samples: int) -> int:
        """Samples per training step for a training set of ``samples``: 0 (or more than there are) is all."""
        return samples if not self.batch_size else min(self.batch_size, samples)


def _check_optimizer(optimizer: Any) -> None:
    if optimizer is not None and not callable(optimizer) and optimizer not in INNER_OPTIMIZERS:
        raise DecayError(f"optimizer must be one of {', '.join(INNER_OPTIMIZERS)} or a function, got {optimizer!r}")


def _check_mode(mode: Any) -> None:
    if mode is not None and mode not in MODES:
        raise DecayError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def _check_loss(loss: Any) -> None:
    if loss is not None and not callable(loss) and loss != "auto" and loss not in LOSSES:
        raise DecayError(f"loss must be 'auto', one of {', '.join(LOSSES)} or a function, got {loss!r}")


def _checked_metrics(metrics: Any) -> Mapping[str, Callable[[Tensor, Tensor], Any]]:
    """A read-only copy (the value stays frozen when the caller's dict changes); None is no extra metrics."""
    metrics = {} if metrics is None else metrics
    if not isinstance(metrics, Mapping) or not all(isinstance(k, str) and callable(f) for k, f in metrics.items()):
        raise DecayError(f"metrics must be a dict {{name: fn(outputs, targets)}}, got {metrics!r}")
    return MappingProxyType(dict(metrics))


def _checked_device(device: Any) -> torch.device:
    """A device that holds data and computes: a tiny sum is run on it now, so a device that cannot train
    (``meta``, a CUDA device on a machine without one) fails here, in one line, not in the first step."""
    try:
        checked = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DecayError(f"device must be a torch device or its name ('cpu', 'cuda:0'), got {device!r}") from exc
    if checked.type == "meta":
        raise DecayError(f"device={device!r} holds no values (shapes only), so nothing can train on it; use 'cpu' or 'cuda'")
    try:
        float(torch.ones(2, device=checked).sum().cpu())
    except Exception as exc:  # torch raises RuntimeError, AssertionError or others for a missing backend
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise DecayError(f"device={device!r} cannot train here ({type(exc).__name__}: {first}); use 'cpu' or an available device") from None
    return checked


def _check_out(out: Any) -> None:
    """``out`` must be a folder that exists or can be made, and be writable: checked before any training."""
    if out is None:
        return
    try:
        path = os.path.abspath(os.fspath(out))
    except TypeError:
        raise DecayError(f"out must be a folder path, got {out!r}", argument="out") from None
    if os.path.exists(path) and not os.path.isdir(path):
        raise DecayError(f"out={os.fspath(out)!r} is a file, not a folder; give a folder for the plots and the store (--out DIR)", argument="out")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise DecayError(f"out={os.fspath(out)!r} cannot be made: {existing!r} is a file; give another folder (--out DIR)", argument="out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DecayError(f"out={os.fspath(out)!r} is not writable ({existing!r} is not); give a folder you can write to (--out DIR)", argument="out")


_BATCHED = ("auto", "off")
_PROGRESS = ("auto", "bar", "log", "off")


@dataclass(frozen=True)
class Execution(_Options):
    """How a sweep runs: stacking, the store, outputs, waiting and progress. None of it changes a result.

    - ``batched``: ``"auto"`` stacks up to ``chunk_size`` trials into one model when the model allows it
      (and, off the Linear-chain fast path, when a timing says it pays); ``True`` always (an error if the
      model cannot be stacked); ``False`` or ``"off"``: one model at a time.
    - ``storage``: where finished trials are kept: a journal file, an Optuna URL or storage, ``"memory"``;
      None: a journal file in ``out`` (memory without ``out``). ``study_name``: None names the study
      after the task and a hash of everything that changes a trial's numbers.
    - ``out``: the folder for the plots and the default store; ``plots``: write the PNG figures
      (None: when ``out`` is given).
    - ``wait``: wait for trials other workers are training (False: report without them).
    - ``progress``: ``"auto"`` (a bar on a terminal, log lines otherwise), ``"bar"``, ``"log"``,
      ``"off"``, or True (bar) / False (off).
    - ``threads``: CPU threads to train with; None: one for small steps, else the faster of one thread and
      torch's default, timed on the sweep's own training step just before it trains.
    - ``stale_after``: seconds without a heartbeat after which a trial claimed by a worker on another
      machine counts as abandoned and is trained again here (a worker on this machine is checked by its
      process id at once). ``heartbeat_every``: how often this worker says its claims are alive; at most
      half of ``stale_after``, so one late beat never loses a live claim. Another worker waits at least
      two of this worker's beats, whatever its own ``stale_after``.
    """

    batched: bool | str = "auto"
    chunk_size: int = 16
    storage: Any = None
    out: str | os.PathLike[str] | None = None
    study_name: str | None = None
    plots: bool | None = None
    wait: bool = True
    progress: str | bool = False
    threads: int | None = None
    stale_after: float = 300.0
    heartbeat_every: float = 30.0

    def __post_init__(self) -> None:
        if self.threads is not None:
            check_int(self.threads, "threads", minimum=1)
        _set(self, "stale_after", check_number(self.stale_after, "stale_after", allow_zero=False))
        _set(self, "heartbeat_every", check_number(self.heartbeat_every, "heartbeat_every", allow_zero=False))
        if self.stale_after < 2 * self.heartbeat_every:
            raise DecayError(
                f"stale_after must be at least twice heartbeat_every, got stale_after={self.stale_after:g} and "
                f"heartbeat_every={self.heartbeat_every:g}; a live worker's claims would be taken between two of "
                f"its heartbeats: raise stale_after or lower heartbeat_every (e.g. {self.stale_after / 10:g})"
            )
        if not isinstance(self.batched, bool) and self.batched not in _BATCHED:
            raise DecayError(f"batched must be 'auto', True, False or 'off', got {self.batched!r}")
        check_int(self.chunk_size, "chunk_size", minimum=1)
        if self.study_name is not None and not isinstance(self.study_name, str):
            raise DecayError(f"study_name must be a string, got {self.study_name!r}")
        if self.plots is not None and not isinstance(self.plots, bool):
            raise DecayError(f"plots must be True, False or None, got {self.plots!r}")
        if self.plots_wanted or self.storage is None:  # out holds the plots or the default store
            _check_out(self.out)
        if self.plots and self.out is None:
            raise DecayError("plots=True needs out=DIR to write the PNG files into")
        if not isinstance(self.wait, bool):
            raise DecayError(f"wait must be True or False, got {self.wait!r}")
        if not isinstance(self.progress, bool) and self.progress not in _PROGRESS:
            raise DecayError(f"progress must be 'auto', 'bar', 'log', 'off', True or False; got {self.progress!r}")

    @property
    def stacking(self) -> str:
        """``"always"``, ``"never"`` or ``"auto"``: what ``batched`` asks for."""
        if self.batched is True:
            return "always"
        return "never" if self.batched is False or self.batched == "off" else "auto"

    @property
    def plots_wanted(self) -> bool:
        return self.out is not None if self.plots is None else self.plots

    def progress_mode(self) -> str:
        """``"bar"``, ``"log"`` or ``"off"``; ``"auto"`` is read from stderr now (a terminal or not)."""
        if isinstance(self.progress, bool):
            return "bar" if self.progress else "off"
        if self.progress == "auto":
            return "bar" if sys.stderr.isatty() else "log"
        return self.progress

