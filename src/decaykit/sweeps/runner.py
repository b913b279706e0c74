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
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from decaykit.errors import DecayError
from decaykit.sweeps import grid as grids
from decaykit.sweeps.batched import StackedMembers, check_batchable, stack_path, stacking_pays
from decaykit.sweeps.metrics import resolve_loss
from decaykit.sweeps.optim import decay_plan, describe_optimizer
from decaykit.sweeps.progress import Progress
from decaykit.sweeps.report import aggregate, choose_best
from decaykit.sweeps.result import SweepResult
from decaykit.sweeps.store import Store, TrialKey, open_store
from decaykit.sweeps.tasks import (
    DEFAULT_TASK,
    SweepData,
    Task,
    builtin_task,
    check_finite_positive,
    resolve_data,
    task_from_user,
    with_overrides,
)
from decaykit.sweeps.trainer import TrainSettings, TrialOutcome, build_member, seeded_model, train

__all__ = ["sweep"]

_POLL_SECONDS = 2.0


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
    the_task = _resolve_task(model, data, task, task_options, loss)
    the_task = with_overrides(
        the_task, optimizer=optimizer, lr=lr, momentum=momentum, epochs=epochs, mode=mode, dtype=dtype
    )
    if batch_size is not None:
        the_task = with_overrides(the_task, batch_size=_check_int(batch_size, "batch_size", minimum=0) or None)
    _check_settings(the_task, chunk_size, curve_points, rounds, points)
    seed_list = grids.check_seeds(the_task.seeds if seeds is None else seeds)
    if search is not None:
        low, high = grids.check_range(*search)
        wd_grid: list[float] | None = None
    else:
        wd_grid = grids.check_weight_decays(the_task.weight_decays if weight_decays is None else weight_decays)
    _check_shrink(the_task, wd_grid if wd_grid is not None else [high])
    torch_device = torch.device(device)
    the_data = _load_data(the_task, torch_device)
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
    probe_model = _check_model(the_task, the_data, settings)
    _check_objective(objective, kind, settings)

    config = _identity(the_task, settings, objective)
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
    threads = _threads_for(probe_model, the_data, settings, members)
    bar = Progress(0, mode=_progress_mode(progress))
    runner = _Runner(the_task, the_data, settings, store, objective, stackable, chunk_size, wait, bar, callbacks)
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
        if flush_denormal:
            torch.set_flush_denormal(False)
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

    header = _header(the_task, the_data, settings, seed_list, search, rounds, points)
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
        settings=_public_settings(the_task, settings, seed_list, wd_grid, search, objective, policy),
        run=run,
    )
    if plots is None:
        plots = out is not None
    if plots and rows:
        if out is None:
            raise DecayError("plots=True needs out=DIR to write the PNG files into")
        result.plot(out)
    return result


class _Runner:
    """Claims chunks of trials from the store, trains them, and writes each one back as it finishes."""

    def __init__(
        self,
        task: Task,
        data: SweepData,
        settings: TrainSettings,
        store: Store,
        objective: str,
        stackable: bool,
        chunk_size: int,
        wait: bool,
        bar: Progress,
        callbacks: Sequence[Callable[[dict[str, Any]], None]],
    ) -> None:
        self.task, self.data, self.settings, self.store = task, data, settings, store
        self.objective, self.stackable, self.wait, self.bar = objective, stackable, wait, bar
        self.chunk_size = chunk_size if stackable else 1
        self.callbacks = callbacks
        self.trained = 0
        self.path: str | None = None  # "layers" or "vmap", once a stack has trained

    def records(self) -> dict[TrialKey, dict[str, Any]]:
        return self.store.completed()

    def run(self, keys: Sequence[TrialKey]) -> None:
        keys = sorted(set(keys))
        # equal chunks of at most chunk_size (30 trials → 15 + 15, not 16 + 14), fixed by the grid alone
        # so that a rerun or another worker cuts the same chunks
        size = math.ceil(len(keys) / max(1, math.ceil(len(keys) / self.chunk_size))) if keys else 1
        chunks = [keys[i : i + size] for i in range(0, len(keys), size)]
        self.bar.add_total(sum(1 for k in keys if k not in self.store.completed()) * self.settings.epochs)
        while True:
            done = self.store.completed()
            todo = [k for k in keys if k not in done]
            if not todo:
                return
            busy = self.store.busy_elsewhere()
            free = {k for k in todo if k not in busy}
            if not free:
                if not self.wait:
                    return
                self.bar.status = f"waiting for {len(todo)} trials running in other workers"
                self.bar.advance(0)
                time.sleep(_POLL_SECONDS)
                continue
            self.bar.status = f"{len(keys) - len(todo)}/{len(keys)} trials done"
            chunk = next(c for c in chunks if any(k in free for k in c))
            claimed = self.store.claim([k for k in chunk if k in free])
            if not claimed:
                continue
            # A kill between the writes of one chunk's results leaves it partly finished. Its finished
            # members train again beside the missing ones (their stored results are kept, not replaced),
            # so every member sees the same stacked computation as in an uninterrupted run: stacked
            # matmuls are not bit-for-bit independent of the batch they are in.
            passengers = [k for k in chunk if k in done] if self.chunk_size > 1 else []
            members = sorted({*claimed, *passengers})
            try:
                outcomes = self._train(members)
            except BaseException:
                self.store.release(claimed, "interrupted before it finished")
                raise
            mine = set(claimed)
            for outcome in outcomes:
                key = (outcome.weight_decay, outcome.seed)
                if key not in mine:
                    continue
                record = outcome.to_record()
                value = record["metrics"].get(self.objective)
                if value is None:
                    value = float("-inf") if self.objective.endswith("accuracy") else float("inf")
                self.store.complete(key, record, float(value))
                self.trained += 1
                for callback in self.callbacks:
                    callback(record)
            if self.bar.mode == "log":
                self.bar.message(
                    f"decaykit sweep: finished {len(mine)} trials (λ = "
                    f"{', '.join(sorted({f'{wd:g}' for wd, _ in mine}, key=float))})"
                )

    def _train(self, keys: Sequence[TrialKey]) -> list[TrialOutcome]:
        self.bar.status += f", training {len(keys)}" + (" stacked" if self.stackable and len(keys) > 1 else "")
        try:
            if self.stackable and len(keys) > 1:
                models = [seeded_model(self.task.model_fn, s, self.settings.dtype, self.settings.device) for _, s in keys]
                members = StackedMembers(models, [wd for wd, _ in keys], self.settings)
                self.path = members.path
                return train(members, keys, self.data, self.settings, on_epoch=self.bar.advance)
            outcomes = []
            for wd, seed in keys:
                member = build_member(self.task.model_fn, wd, seed, self.settings)
                outcomes += train(member, [(wd, seed)], self.data, self.settings, on_epoch=self.bar.advance)
            return outcomes
        except (DecayError, KeyboardInterrupt):
            raise
        except Exception as exc:
            lams = ", ".join(f"{wd:g}" for wd, _ in keys)
            raise DecayError(f"training failed (λ = {lams}): {type(exc).__name__}: {exc}") from exc


# ---------------------------------------------------------------- checks and descriptions


def _resolve_task(
    model: Any, data: Any, task: str | None, options: Mapping[str, Any] | None, loss: Any
) -> Task:
    if model is None and data is None:
        return builtin_task(task or DEFAULT_TASK, **dict(options or {}))
    if task is not None:
        raise DecayError(f"give either a built-in task ({task!r}) or your own model and data, not both")
    if options:
        raise DecayError("task_options apply to built-in tasks only")
    return task_from_user(model, data, loss=loss if loss is not None else "auto")


def _check_int(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DecayError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_settings(task: Task, chunk_size: int, curve_points: int, rounds: int, points: int) -> None:
    check_finite_positive(task.lr, "lr")
    _check_int(task.epochs, "epochs", minimum=1)
    _check_int(chunk_size, "chunk_size", minimum=1)
    _check_int(curve_points, "curve_points", minimum=1)
    _check_int(rounds, "rounds", minimum=1)
    _check_int(points, "points", minimum=1)
    if not 0.0 <= float(task.momentum) < 1.0:
        raise DecayError(f"momentum must be in [0, 1), got {task.momentum}")
    try:
        from decaykit.modes import MODES
    except ImportError:  # the engine validates the mode itself
        return
    if task.mode not in MODES:
        raise DecayError(f"mode must be one of {', '.join(MODES)}, got {task.mode!r}")


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


def _check_shrink(task: Task, weight_decays: Sequence[float]) -> None:
    """Refuse λ whose decoupled shrink θ ← θ(1 − r) has r > 1 (it flips every weight's sign each step)."""
    if task.mode == "coupled_l2":
        return
    per_lambda = 1.0 if task.mode == "lr_independent" else task.lr  # r = λ·η/η_max or λ·η (constant LR)
    bad = [wd for wd in weight_decays if wd * per_lambda > 1]
    if bad:
        formula = "λ" if task.mode == "lr_independent" else f"lr·λ = {task.lr:g}·λ"
        raise DecayError(
            f"weight decay {', '.join(f'{wd:g}' for wd in bad)} with mode {task.mode!r} shrinks the weights by "
            f"r = {formula} > 1 per step, which flips every weight's sign; drop those λ or lower the LR"
        )


def _load_data(task: Task, device: torch.device) -> SweepData:
    try:
        raw = task.data_fn()
    except DecayError:
        raise
    except Exception as exc:
        raise DecayError(f"the data factory of task {task.name!r} failed: {type(exc).__name__}: {exc}") from exc
    data = resolve_data(raw, source="data" if task.name == "custom" else task.name)
    floating = task.dtype

    def move(t: Tensor) -> Tensor:
        return t.to(device=device, dtype=floating if t.dtype.is_floating_point else t.dtype)

    description = data.description or (
        f"{data.train_size} training and {data.test_size} test samples, {data.kind}"
        + (f", {data.num_classes} classes" if data.num_classes else "")
    )
    return SweepData(
        move(data.x_train), move(data.y_train), move(data.x_test), move(data.y_test),
        data.kind, data.num_classes, description,
    )  # fmt: skip


# Below this many FLOPs per training step, one thread is faster: waking a second one costs more than it
# saves, and on a machine busy with other work its barrier can stall each op for a time slice (measured
# here: a ridge sweep of 2 members, 800 steps, 0.36 s on 1 thread vs 6-18 s on 2 threads under load).
_SMALL_STEP_FLOPS = 1e7


def _threads_for(model: torch.nn.Module, data: SweepData, settings: TrainSettings, members: int) -> int:
    params = sum(p.numel() for p in model.parameters())
    batch = data.train_size if settings.batch_size is None else min(settings.batch_size, data.train_size)
    flops = 6.0 * params * batch * members  # forward + backward of a dense model, per step
    return 1 if flops < _SMALL_STEP_FLOPS or settings.device.type != "cpu" else torch.get_num_threads()


def _check_model(task: Task, data: SweepData, settings: TrainSettings) -> torch.nn.Module:
    """Build the seed-0 model and push two samples through it: shapes and targets must fit the loss."""
    try:
        model = seeded_model(task.model_fn, 0, settings.dtype, settings.device)
    except DecayError:
        raise
    except Exception as exc:
        raise DecayError(f"building the model failed: {type(exc).__name__}: {exc}") from exc
    if not any(p.requires_grad for p in model.parameters()):
        raise DecayError("the model has no trainable parameters: nothing to sweep")
    decay_plan(model, 1.0, settings.policy)  # an unknown policy or a bad rule fails here, before any training
    x = data.x_train[:2]
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as exc:
        raise DecayError(
            f"the model cannot take the data: input of shape {tuple(x.shape)} (2 samples) raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(out, Tensor):
        raise DecayError(f"the model must return a tensor, got {type(out).__name__}")
    if callable(settings.loss):
        return model
    if settings.kind == "classification":
        if out.dim() != 2 or out.shape[0] != 2:
            raise DecayError(
                f"for classification the model must return logits of shape (batch, classes); "
                f"got {tuple(out.shape)} for a batch of 2"
            )
        if out.shape[1] < (data.num_classes or 0):
            raise DecayError(
                f"the model returns {out.shape[1]} logits per sample but the labels go up to "
                f"{(data.num_classes or 0) - 1}; the last layer needs at least {data.num_classes} outputs"
            )
    elif out.shape != data.y_train[:2].shape:
        raise DecayError(
            f"the model returns shape {tuple(out.shape)} for 2 samples but the targets have shape "
            f"{tuple(data.y_train[:2].shape)}; make them match (e.g. targets of shape (n, 1))"
        )
    return model


def _check_objective(objective: str, kind: str, settings: TrainSettings) -> None:
    names = {"train_loss", "test_loss", "weight_norm", "gap"}
    if kind == "classification":
        names |= {"train_accuracy", "test_accuracy"}
    names |= {f"{split}_{m}" for m in settings.metrics for split in ("train", "test")}
    if settings.final_metrics is not None:
        names |= {"closed_form_test_loss", "distance_to_closed_form"}
    if objective not in names:
        raise DecayError(f"metric={objective!r} is not measured; choose one of {', '.join(sorted(names))}")


def _policy_text(policy: Any) -> str:
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


def _identity(task: Task, settings: TrainSettings, objective: str) -> dict[str, Any]:
    """Everything that changes a trial's numbers except (λ, seed): the store's study name hashes it."""
    return {
        "task": task.identity,
        "optimizer": _qual(settings.optimizer),
        "lr": settings.lr,
        "momentum": settings.momentum,
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "mode": settings.mode,
        "policy": _policy_text(settings.policy),
        "loss": _qual(settings.loss),
        "dtype": str(settings.dtype),
        "curve_points": settings.curve_points,
        "metrics": sorted(settings.metrics),
        "objective": objective,
    }


def _public_settings(
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
        "policy": _policy_text(policy),
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "seeds": seeds,
        "weight_decays": wd_grid,
        "search": list(search) if search is not None else None,
        "metric": objective,
        "dtype": str(settings.dtype).replace("torch.", ""),
    }


def _header(
    task: Task,
    data: SweepData,
    settings: TrainSettings,
    seeds: list[int],
    search: tuple[float, float] | None,
    rounds: int,
    points: int,
) -> list[str]:
    batch = "full batch" if settings.batch_size is None else f"batch {settings.batch_size}"
    seed_text = f"seeds {seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else f"seeds {seeds}"
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
        f"policy {_policy_text(settings.policy)}",
        f"train:  {settings.epochs} epochs, {batch}, {seed_text} (a seed fixes the initial weights and the "
        "sample order)",
        "table:  mean ± std over seeds; gap = "
        + ("train − test accuracy" if settings.kind == "classification" else "test − train loss")
        + "; ‖w‖ = L2 norm of the parameters that decay (the policy's choice)",
    ]
    if what:
        lines.append(f"search: {what}")
    return lines


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

