"""``decaykit.sweep``: train a model over a grid (or search) of λ and seeds, and report the best λ.

>>> result = decaykit.sweep()                      # the built-in noisy-label digits demo  # doctest: +SKIP
>>> result = decaykit.sweep(lambda: MyNet(), load_my_data, weight_decays=[0, 0.01, 0.1, 1],
...                         seeds=3, epochs=50)    # doctest: +SKIP
>>> print(result); result.best["weight_decay"]     # doctest: +SKIP

Work is split into fixed chunks of (λ, seed) trials, in grid order. Each chunk is claimed in
the store, trained as one stacked model when the model allows it (``batched.py``) or one model
after another (``trainer.py``), and each finished trial is written to the store at once. Run the
same call again after an interruption, or in several processes or machines sharing one store,
and only the trials not yet finished are trained.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from decaykit._validate import check_int
from decaykit.errors import DecayError
from decaykit.sweeps import checks, describe
from decaykit.sweeps import grid as grids
from decaykit.sweeps.batched import check_batchable, stack_path, stacking_pays
from decaykit.sweeps.data import SweepData
from decaykit.sweeps.metrics import resolve_loss
from decaykit.sweeps.progress import Progress
from decaykit.sweeps.report import aggregate, choose_best
from decaykit.sweeps.result import SweepResult
from decaykit.sweeps.store import Store, open_store
from decaykit.sweeps.tasks import Task, with_overrides
from decaykit.sweeps.trainer import TrainSettings
from decaykit.sweeps.worker import Worker

__all__ = ["sweep"]

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
    policy: str | Mapping[str, Any] = "decaykit",
    loss: str | Callable[[Tensor, Tensor], Tensor] | None = None,
    metrics: Mapping[str, Callable[[Tensor, Tensor], Any]] | None = None,
    metric: str | None = None,
    maximize: bool | None = None,
    callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
    batched: bool | str = "auto",
    chunk_size: int = 16,
    storage: Any = None,
    out: str | None = None,
    study_name: str | None = None,
    plots: bool | None = None,
    wait: bool = True,
    progress: str | bool = False,
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

    Decay: decaykit's ``policy`` (a name, or :func:`decaykit.param_groups` options such as
    ``{"policy": "timm", "exclude": ["head.*"]}``) picks the parameters that decay; the engine applies λ per ``mode``
    (``lr_coupled``: torch AdamW's θ ← θ(1 − ηλ); ``coupled_l2``: g ← g + λθ; see
    :class:`decaykit.WeightDecay`). ``search=(low, high)`` replaces the grid by ``rounds`` rounds
    of ``points`` log-spaced values zooming in on the best.

    Speed and safety: ``batched="auto"`` trains up to ``chunk_size`` trials as one stacked model,
    falling back to one by one (with a note) for models that cannot be stacked. ``storage``
    (a journal file, an Optuna URL, ``"memory"``; default a journal file in ``out``) keeps every
    finished trial, so a rerun trains only what is missing and several workers can share it.
    ``metrics`` adds ``{name: fn(outputs, targets)}`` measured on train and test; ``metric``
    picks the objective (default ``test_accuracy``, or ``test_loss`` for regression);
    ``callbacks`` are called with each finished trial's record.
    """
    started = time.perf_counter()
    the_task = checks.resolve_task(model, data, task, task_options, loss)
    the_task = with_overrides(
        the_task, optimizer=optimizer, lr=lr, momentum=momentum, epochs=epochs, mode=mode, dtype=dtype
    )
    if batch_size is not None:
        the_task = with_overrides(the_task, batch_size=check_int(batch_size, "batch_size", minimum=0) or None)
    checks.check_settings(the_task, chunk_size, curve_points, rounds, points)
    seed_list = grids.check_seeds(the_task.seeds if seeds is None else seeds)
    if search is not None:
        low, high = grids.check_range(*search)
        wd_grid: list[float] | None = None
    else:
        wd_grid = grids.check_weight_decays(the_task.weight_decays if weight_decays is None else weight_decays)
    checks.check_shrink(the_task, wd_grid if wd_grid is not None else [high])
    torch_device = torch.device(device)
    the_data = checks.load_data(the_task, torch_device)
    kind = the_data.kind
    the_loss = resolve_loss(the_task.loss, kind)
    objective = metric or ("test_accuracy" if kind == "classification" else "test_loss")
    if maximize is None:
        maximize = objective.endswith("accuracy")
    settings = TrainSettings(
        optimizer=the_task.optimizer,
        lr=the_task.lr,
        momentum=the_task.momentum,
        epochs=the_task.epochs,
        batch_size=the_task.batch_size,
        mode=the_task.mode,
        policy=policy,
        loss=the_loss,
        kind=kind,
        dtype=the_task.dtype,
        device=torch_device,
        curve_points=curve_points,
        metrics=dict(metrics or {}),
        final_metrics=the_task.final_metrics,
    )
    probe_model = checks.check_model(the_task, the_data, settings)
    checks.check_objective(objective, kind, settings)

    config = describe.identity(the_task, settings, objective)
    name = study_name or f"decaykit-sweep-{the_task.name}-{hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]}"
    store = open_store(storage, out, study_name=name, maximize=maximize, config=config)

    notes: list[str] = []
    members = min(chunk_size, len(wd_grid or [0.0] * (points + 1)) * len(seed_list))
    if batched is False or batched == "off":
        stackable = False
        notes.append("trained one model at a time, as asked")
    else:
        reason = check_batchable(the_task.model_fn, the_data, settings)
        stackable = reason is None
        if reason is not None:
            if batched is True:
                raise DecayError(f"batched=True but the model cannot be trained as a stack: {reason}")
            notes.append(f"trained one model at a time: {reason}")
        elif batched == "auto" and members > 1 and stack_path(probe_model) == "vmap":
            stackable, detail = _stacking_decision(store, the_task, the_data, settings, members)
            if not stackable:
                notes.append(f"trained one model at a time: stacking measured slower ({detail})")
    if not stackable:
        members = 1
    threads = checks.threads_for(probe_model, the_data, settings, members)
    bar = Progress(0, mode=_progress_mode(progress))
    runner = Worker(the_task, the_data, settings, store, objective, stackable, chunk_size, wait, bar, callbacks)
    was_flushing = _flushing_denormals()
    flush_denormal = torch.set_flush_denormal(True)  # huge λ fills weights with denormals that crawl on CPUs
    saved_threads = torch.get_num_threads()
    if threads < saved_threads:
        torch.set_num_threads(threads)
    try:
        if wd_grid is not None:
            wanted = [(wd, s) for wd in wd_grid for s in seed_list]
            runner.run(wanted)
        else:
            wanted = []

            def best_of(tried: Sequence[float]) -> float | None:
                rows = aggregate([r for k, r in runner.records().items() if k[0] in set(tried)])
                chosen = choose_best(rows, objective, maximize)
                return None if chosen is None else chosen["weight_decay"]

            for new in grids.search_rounds(low, high, points, rounds, best_of):
                keys = [(wd, s) for wd in new for s in seed_list]
                wanted += keys
                runner.run(keys)
    except KeyboardInterrupt:
        bar.close()
        print("decaykit sweep: interrupted; finished trials are kept in the store, run the same command "
              "again to train only the rest", file=sys.stderr)  # fmt: skip
        raise
    finally:
        if flush_denormal and not was_flushing:
            torch.set_flush_denormal(False)  # as the caller had it
        torch.set_num_threads(saved_threads)
        bar.close()
        store.close()

    records = runner.records()
    trials = [records[k] for k in sorted(set(wanted)) if k in records]
    missing = len(set(wanted)) - len(trials)
    rows = aggregate(trials) if trials else []
    best = choose_best(rows, objective, maximize) if rows else None
    if runner.trained and stackable:
        notes.insert(0, f"trained up to {chunk_size} trials at a time as one stacked model ({runner.path} path)")
    reused = len(trials) - runner.trained
    if reused > 0:
        notes.append(f"{reused} of {len(trials)} trials were already in the store ({store.location}) and were reused")
    if missing:
        notes.append(f"{missing} trials are still running in other workers and are not in this report")
    for r in rows:
        if r["diverged"]:
            notes.append(
                f"λ = {r['weight_decay']:g}: {r['diverged']} of {r['seeds']} seeds diverged (non-finite loss); "
                "left out of the means"
            )
    if the_task.notes is not None and rows:
        notes.extend(the_task.notes(rows, the_data))

    header = describe.header(the_task, the_data, settings, seed_list, search, rounds, points)
    run = {
        "seconds": round(time.perf_counter() - started, 3),
        "trained": runner.trained,
        "reused": reused,
        "store": store.location,
        "study": name,
        "batched": stackable,
        "path": (runner.path if stackable else "one-by-one") if runner.trained else None,
    }
    header.append(
        f"run:    {runner.trained} trials trained in {run['seconds']:.1f} s"
        + (f", {reused} reused from the store" if reused else "")
        + f"; store: {store.location}"
    )
    result = SweepResult(
        task=the_task.name,
        results=rows,
        best=best,
        trials=trials,
        header=header,
        notes=notes,
        settings=describe.public_settings(the_task, settings, seed_list, wd_grid, search, objective, policy),
        run=run,
    )
    if plots is None:
        plots = out is not None
    if plots and rows:
        if out is None:
            raise DecayError("plots=True needs out=DIR to write the PNG files into")
        result.plot(out)
    return result


def _stacking_decision(
    store: Store, task: Task, data: SweepData, settings: TrainSettings, members: int
) -> tuple[bool, str]:
    """Time stacked against one-by-one steps, once per study: a rerun or another worker reuses the
    decision, so every trial of the sweep runs the same kernels (and a resumed report is identical)."""
    known = store.recall("stacked")
    if known is not None:
        return bool(known["stacked"]), str(known["detail"])
    faster, detail = stacking_pays(task.model_fn, data, settings, members)
    store.remember("stacked", {"stacked": faster, "detail": detail})
    return faster, detail


def _flushing_denormals() -> bool:
    """Whether denormals are flushed to zero now: torch can set the mode but not report it, so multiply one."""
    return float(torch.tensor([1e-40], dtype=torch.float32) * 1.0) == 0.0


def _progress_mode(progress: str | bool) -> str:
    if progress is True:
        return "bar"
    if progress is False or progress == "off":
        return "off"
    if progress == "auto":
        return "bar" if sys.stderr.isatty() else "log"
    if progress in ("bar", "log"):
        return str(progress)
    raise DecayError(f"progress must be 'auto', 'bar', 'log', 'off', True or False; got {progress!r}")
