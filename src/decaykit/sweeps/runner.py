"""``decaykit.sweep``: train a model over a grid (or search) of λ and seeds, and report the best λ.

>>> result = decaykit.sweep()                      # the built-in noisy-label digits demo  # doctest: +SKIP
>>> result = decaykit.sweep(lambda: MyNet(), load_my_data, weight_decays=[0, 0.01, 0.1, 1],
...                         seeds=3, epochs=50)    # doctest: +SKIP
>>> print(result); result.best["weight_decay"]     # doctest: +SKIP

:func:`sweep` takes flat keyword arguments and builds three settings values from them
(``settings.py``: :class:`Trials`, :class:`Training`, :class:`Execution`); :func:`run_sweep` takes
the values and runs the phases, in order: prepare (``prepare.py``: settings resolved against the
task, data loaded, model checked); open the store; decide whether to stack; train the trials; build
the result.

Work is split into fixed chunks of (λ, seed) trials, in grid order. Each chunk is claimed in
the store, trained as one stacked model when the model allows it (``batched.py``) or one model
after another (``trainer.py``), and each finished trial is written to the store at once. Run the
same call again after an interruption, or in several processes or machines sharing one store,
and only the trials not yet finished are trained.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from decaykit._loading import raised_by_decaykit
from decaykit.errors import DecayError
from decaykit.policy.options import Policy
from decaykit.sweeps import checks, describe
from decaykit.sweeps.batched import check_batchable, stacking_is_timed, stacking_pays
from decaykit.sweeps.prepare import Prepared, prepare
from decaykit.sweeps.progress import Progress
from decaykit.sweeps.report import aggregate, choose_best
from decaykit.sweeps.result import SweepResult
from decaykit.sweeps.settings import Execution, Training, Trials
from decaykit.sweeps.store import Store, TrialKey, open_store
from decaykit.sweeps.tasks import Task, resolve_task
from decaykit.sweeps.timing import ThreadChoice, one_thread, threads_text
from decaykit.sweeps.worker import Worker

__all__ = ["run_sweep", "sweep"]

Callback = Callable[[dict[str, Any]], None]


def sweep(
    model: Any = None,
    data: Any = None,
    *,
    task: str | None = None,
    task_options: Mapping[str, Any] | None = None,
    weight_decays: Iterable[float] | None = None,
    seeds: int | Iterable[int] | None = None,
    search: tuple[float, float] | None = None,
    rounds: int = 3,
    points: int = 8,
    optimizer: str | Callable[..., torch.optim.Optimizer] | None = None,
    lr: float | None = None,
    momentum: float | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    mode: str | None = None,
    policy: str | Policy | Mapping[str, Any] = "decaykit",
    loss: str | Callable[[Tensor, Tensor], Tensor] | None = None,
    metrics: Mapping[str, Callable[[Tensor, Tensor], Any]] | None = None,
    metric: str | None = None,
    maximize: bool | None = None,
    callbacks: Sequence[Callback] = (),
    batched: bool | str = "auto",
    chunk_size: int = 16,
    storage: Any = None,
    out: str | None = None,
    study_name: str | None = None,
    plots: bool | None = None,
    wait: bool = True,
    progress: str | bool = False,
    threads: int | None = None,
    stale_after: float = 300.0,
    heartbeat_every: float = 30.0,
    curve_points: int = 25,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> SweepResult:
    """Train ``model`` on ``data`` for every λ in ``weight_decays`` and every seed; find the best λ.

    With no ``model`` and ``data`` the built-in ``task`` runs (default ``"digits-noisy-labels"``;
    also ``"ridge"``; ``task_options`` e.g. ``{"label_noise": 0.0}``). Otherwise ``model`` is a
    function (or class, or ``"pkg.mod:factory"``) building a fresh model, called after
    ``torch.manual_seed(seed)``, and ``data`` is ``(x_train, y_train, x_test, y_test)``, a function
    returning it, or any form :func:`decaykit.sweeps.tasks.resolve_data` accepts.

    Decay: decaykit's ``policy`` (a name, a :class:`decaykit.Policy`, or :func:`decaykit.param_groups`
    options such as ``{"policy": "timm", "exclude": ["head.*"]}``) picks the parameters that decay; the engine applies λ per ``mode``
    (``lr_coupled``: torch AdamW's θ ← θ(1 − ηλ); ``coupled_l2``: g ← g + λθ; see
    :class:`decaykit.WeightDecay`). ``search=(low, high)`` replaces the grid by ``rounds`` rounds
    of ``points`` log-spaced values zooming in on the best.

    Speed and safety: ``batched="auto"`` trains up to ``chunk_size`` trials as one stacked model,
    falling back to one by one (with a note) for models that cannot be stacked. ``storage``
    (a journal file, an Optuna URL, ``"memory"``; default a journal file in ``out``) keeps every
    finished trial, so a rerun trains only what is missing and several workers can share it (a claim of a
    worker on another machine with no heartbeat for ``stale_after`` seconds is taken over).
    ``metrics`` adds ``{name: fn(outputs, targets)}`` measured on train and test; ``metric``
    picks the objective (default ``test_accuracy``, or ``test_loss`` for regression);
    ``callbacks`` are called with each finished trial's record.

    The arguments group into :class:`Trials` (what to try), :class:`Training` (how to train) and
    :class:`Execution` (how to run), where each is documented; :func:`run_sweep` takes those values.
    """
    return run_sweep(
        resolve_task(model, data, task, task_options),
        Trials(weight_decays=weight_decays, seeds=seeds, search=search, rounds=rounds, points=points),
        Training(
            optimizer=optimizer, lr=lr, momentum=momentum, epochs=epochs, batch_size=batch_size, mode=mode,
            policy=policy, loss=loss, metrics=metrics, metric=metric, maximize=maximize,
            curve_points=curve_points, dtype=dtype, device=device,
        ),
        Execution(
            batched=batched, chunk_size=chunk_size, storage=storage, out=out, study_name=study_name, plots=plots,
            wait=wait, progress=progress, threads=threads, stale_after=stale_after, heartbeat_every=heartbeat_every,
        ),
        callbacks=callbacks,
    )  # fmt: skip


def run_sweep(
    task: Task,
    trials: Trials | None = None,
    training: Training | None = None,
    execution: Execution | None = None,
    *,
    callbacks: Sequence[Callback] = (),
) -> SweepResult:
    """Sweep ``task`` over ``trials``, each trained per ``training``, run per ``execution``.

    ``task``: a built-in one (:func:`decaykit.sweeps.tasks.builtin_task`) or your own model and data
    (:func:`decaykit.sweeps.tasks.task_from_user`). Values left out take their defaults (the task's
    grid, seeds and training settings; a memory store). ``callbacks`` are called with each finished
    trial's record.

    >>> run_sweep(builtin_task("ridge"), Trials(weight_decays=[0.1, 1]), Training(epochs=500))  # doctest: +SKIP
    """
    started = time.perf_counter()
    if not isinstance(task, Task):
        raise DecayError(
            f"task must be a Task, got {task!r}; make one with builtin_task('ridge') or "
            "task_from_user(model_fn, data) from decaykit.sweeps"
        )
    execution = execution or Execution()
    prepared = prepare(task, trials or Trials(), training or Training())
    store, study = _open_store(prepared, execution)
    try:
        stacked, notes = _decide_stacking(prepared, execution, store)
        worker = Worker(prepared, execution, store, stacked=stacked, callbacks=callbacks,
                        progress=Progress(0, mode=execution.progress_mode()),
                        threads=_threads(prepared, execution, store, stacked))  # fmt: skip
        wanted = _train_trials(prepared, worker)
    except (DecayError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a user's model ran (the stacking check, the timings, training): its own failure
        if not prepared.task.users or raised_by_decaykit(exc):
            raise  # a built-in task's model, or decaykit's own code, failing: an internal error to report
        raise prepared.task.training_failed(exc) from exc
    finally:
        store.close()
    result = _build_result(prepared, execution, worker, wanted, notes, study, started, worker.threads.describe())
    if execution.plots_wanted and result.results:
        result.plot(execution.out)
    return result


def _open_store(prepared: Prepared, execution: Execution) -> tuple[Store, str]:
    """The store and the study's name: the given ``study_name``, or the task's name and a hash of the
    sweep's settings, to which a kept store adds the digest of its fingerprint (settings, initial weights,
    data, version), so a rerun finds its finished trials and a changed model or data never reuses them."""
    config = describe.identity(prepared.task, prepared.training)
    digest = hashlib.sha256(json.dumps(describe.study_name_identity(prepared), sort_keys=True).encode()).hexdigest()[:12]
    study = execution.study_name or f"decaykit-sweep-{prepared.task.name}-{digest}"
    store = open_store(execution.storage, execution.out, study_name=study, maximize=bool(prepared.training.maximize),
                       config=config, fingerprint=lambda: describe.fingerprint(prepared),
                       automatic=execution.study_name is None, stale_after=execution.stale_after,
                       heartbeat_every=execution.heartbeat_every)  # fmt: skip
    return store, store.study_name


def _decide_stacking(prepared: Prepared, execution: Execution, store: Store) -> tuple[bool, list[str]]:
    """Whether to train chunks as stacked models, and the notes that say why not."""
    if execution.stacking == "never":
        return False, ["trained one model at a time, as asked"]
    with one_thread():  # a step of two members on two samples
        reason = check_batchable(prepared.task.model_fn, prepared.data, prepared.training)
    if reason is not None:
        if execution.stacking == "always":
            raise DecayError(f"batched=True but the model cannot be trained as a stack: {reason}")
        return False, [f"trained one model at a time: {reason}"]
    members = _members(prepared, execution, stacked=True)
    if execution.stacking == "auto" and members > 1 and stacking_is_timed(prepared.probe):
        faster, detail = _stacking_decision(store, prepared, members, execution.threads)
        if not faster:
            return False, [f"trained one model at a time: stacking measured slower ({detail})"]
    return True, []


def _stacking_decision(store: Store, prepared: Prepared, members: int, threads: int | None) -> tuple[bool, str]:
    """Time stacked against one-by-one steps, once per study: a rerun or another worker reuses the
    decision, so every trial of the sweep runs the same kernels (and a resumed report is identical).
    On the thread count asked for (``threads``), the one training will run on; otherwise on the caller's."""
    known = store.recall("stacked")
    if known is not None:
        return bool(known["stacked"]), str(known["detail"])
    with _cpu_settings(threads or torch.get_num_threads()):
        faster, detail = stacking_pays(prepared.task.model_fn, prepared.data, prepared.training, members)
        detail += f", on {threads_text(torch.get_num_threads())}"
    store.remember("stacked", {"stacked": faster, "detail": detail})
    return faster, detail


def _members(prepared: Prepared, execution: Execution, *, stacked: bool) -> int:
    """Models trained together in the first round's chunks: 1 one by one."""
    return min(execution.chunk_size, prepared.trials.first_round_size) if stacked else 1


def _threads(prepared: Prepared, execution: Execution, store: Store, stacked: bool) -> ThreadChoice:
    """The thread count and why; a thread trial sizes itself by the trials left to train."""
    members = _members(prepared, execution, stacked=stacked)
    training, trials = prepared.training, prepared.trials
    todo = trials.first_round_size
    if trials.search is None:  # a grid: one round, of which the store may hold some or all
        done = store.completed()
        todo = sum(key not in done for key in next(trials.trial_rounds(lambda tried: None)))
        if todo == 0 and execution.threads is None:
            return ThreadChoice.fixed(torch.get_num_threads(), "")  # nothing to train: nothing to time
    steps = training.epochs * math.ceil(prepared.data.train_size / training.batch_for(prepared.data.train_size))
    steps *= math.ceil(todo / members)  # the chunks left of the first round, at the least
    return checks.threads_for(prepared.probe, prepared.data, training, members, requested=execution.threads,
                              steps=steps)  # fmt: skip


def _train_trials(prepared: Prepared, worker: Worker) -> list[TrialKey]:
    """Train every trial of every round (one round for a grid); returns the trials the sweep wanted."""
    wanted: list[TrialKey] = []
    training = prepared.training

    def best_of(tried: Sequence[float]) -> float | None:
        rows = aggregate([r for k, r in worker.records().items() if k[0] in set(tried)])
        chosen = choose_best(rows, training.metric, bool(training.maximize))
        return None if chosen is None else chosen["weight_decay"]

    try:
        with _cpu_settings(worker.threads.start):
            for keys in prepared.trials.trial_rounds(best_of):
                wanted += keys
                worker.run(keys)
    except KeyboardInterrupt:
        worker.bar.close()
        print("decaykit sweep: interrupted; finished trials are kept in the store, run the same command "
              "again to train only the rest", file=sys.stderr)  # fmt: skip
        raise
    finally:
        worker.bar.close()
    return wanted


@contextlib.contextmanager
def _cpu_settings(threads: int) -> Iterator[None]:
    """``threads`` threads and denormals flushed to zero while training; the caller's settings after."""
    was_flushing = _flushing_denormals()
    flush_denormal = torch.set_flush_denormal(True)  # huge λ fills weights with denormals that crawl on CPUs
    saved_threads = torch.get_num_threads()
    if threads != saved_threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if flush_denormal and not was_flushing:
            torch.set_flush_denormal(False)  # as the caller had it
        torch.set_num_threads(saved_threads)


def _flushing_denormals() -> bool:
    """Whether denormals are flushed to zero now: torch can set the mode but not report it, so multiply one."""
    return float(torch.tensor([1e-40], dtype=torch.float32) * 1.0) == 0.0


def _build_result(
    prepared: Prepared,
    execution: Execution,
    worker: Worker,
    wanted: Sequence[TrialKey],
    notes: list[str],
    study: str,
    started: float,
    threads: str = "",
) -> SweepResult:
    """The table, the best λ, the notes and how the run went, from the store's finished trials."""
    records = worker.records()
    trials = [records[k] for k in sorted(set(wanted)) if k in records]
    rows = aggregate(trials) if trials else []
    training = prepared.training
    best = choose_best(rows, training.metric, bool(training.maximize)) if rows else None
    reused = len(trials) - worker.trained
    run = {
        "seconds": round(time.perf_counter() - started, 3),
        "trained": worker.trained,
        "reused": reused,
        "store": worker.store.location,
        "study": study,
        "batched": worker.stacked if worker.trained else None,  # None: this run trained nothing
        "path": (worker.path if worker.stacked else "one-by-one") if worker.trained else None,
    }
    header = describe.header(prepared.task, prepared.data, prepared.trials, training)
    header.append(
        f"run:    {worker.trained} trials trained in {run['seconds']:.1f} s"
        + (f" on {threads}" if threads and worker.trained else "")
        + (f", {reused} reused from the store" if reused else "")
        + f"; store: {worker.store.location}"
    )
    return SweepResult(
        task=prepared.task.name,
        results=rows,
        best=best,
        trials=trials,
        header=header,
        notes=_notes(prepared, execution, worker, notes, len(set(wanted)), trials, rows),
        settings=describe.public_settings(prepared.task, prepared.trials, training),
        run=run,
    )


def _notes(
    prepared: Prepared,
    execution: Execution,
    worker: Worker,
    stacking: list[str],
    wanted: int,
    trials: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
) -> list[str]:
    """The notes under the report: how the trials ran, what was reused or missing, what diverged."""
    notes = list(prepared.notes)
    if worker.trained and worker.stacked:
        notes.append(f"trained up to {execution.chunk_size} trials at a time as one stacked model ({worker.path} path)")
    if worker.trained:  # how this run trains: nothing to say of trials that all came from the store
        notes += stacking
    reused = len(trials) - worker.trained
    if reused > 0:
        notes.append(f"{reused} of {len(trials)} trials were already in the store ({worker.store.location}) and were reused")
    if wanted > len(trials):
        notes.append(f"{wanted - len(trials)} trials are still running in other workers and are not in this report")
    for r in rows:
        if r["diverged"]:
            notes.append(
                f"λ = {r['weight_decay']:g}: {r['diverged']} of {r['seeds']} seeds diverged (non-finite loss); "
                "left out of the means and never the best λ"
            )
        elif r.get("failed"):
            notes.append(
                f"λ = {r['weight_decay']:g}: {r['failed']} of {r['seeds']} seeds failed; seed {r['failure_seed']}: "
                f"{r['failure']['reason']}; "
                "never the best λ"
            )
    for r in rows:
        for name, count in sorted(r.get("undefined", {}).items()):
            trained = r["seeds"] - r["diverged"]
            rest = "n/a in the table" if count == trained else "its mean is over the other seeds"
            notes.append(f"λ = {r['weight_decay']:g}: {name} is undefined (NaN) on {count} of {trained} seeds; {rest}")
    if prepared.task.notes is not None and rows:
        notes.extend(prepared.task.notes(rows, prepared.data))
    return notes
