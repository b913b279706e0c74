"""Lightning: decaykit's param groups in ``configure_optimizers``, and an audit at fit start.

A ``LightningModule`` is an ``nn.Module``, so the recipe is one line in ``configure_optimizers``::

    import decaykit

    class Model(lightning.LightningModule):
        def configure_optimizers(self):
            return torch.optim.AdamW(decaykit.param_groups(self, 0.05, lr=1e-3))

:func:`configure_optimizers` does the same and more (the decay engine, an LR scheduler in
Lightning's dict format, a printed summary)::

    from decaykit.integrations.lightning import configure_optimizers

        def configure_optimizers(self):
            return configure_optimizers(self, 0.05, lr=1e-3,
                                        scheduler=lambda opt: CosineAnnealingLR(opt, T_max=1000))

Lightning calls ``configure_optimizers`` after ``configure_model`` and after a strategy has
sharded the module (FSDP2 ``ModelParallelStrategy``, FSDP with ``use_orig_params=True``), so the
groups see the parameters the optimizer will step; decaykit reads their bare names and global
shapes. :class:`DecayAuditCallback` runs :func:`decaykit.audit` on every optimizer Lightning
ends up with, at fit start: ``Trainer(callbacks=[DecayAuditCallback()])`` warns about (or, with
``strict=True``, stops on) decayed norms, duplicates and missing parameters in optimizers built
by hand. Lightning is an optional extra (``pip install 'decaykit[lightning]'``), imported only by
the callback.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from decaykit.errors import DecayError, DecayWarning
from decaykit.policy.plan import plan

# DecayAuditCallback and DecayMonitorCallback are made on first access (module __getattr__ below), so Lightning stays optional
__all__ = ["DecayAuditCallback", "DecayMonitorCallback", "configure_optimizers"]  # noqa: F822

logger = logging.getLogger(__name__)

SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def configure_optimizers(
    module: nn.Module,
    weight_decay: float,
    *,
    lr: float,
    optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW,
    optimizer_kwargs: dict[str, Any] | None = None,
    decay_engine: dict[str, Any] | None = None,
    scheduler: SchedulerFactory | None = None,
    interval: str = "step",
    scheduler_options: dict[str, Any] | None = None,
    **plan_options: Any,
) -> torch.optim.Optimizer | dict[str, Any]:
    """What ``LightningModule.configure_optimizers`` returns, with decaykit's groups.

    Args:
        module: the LightningModule (``self``), or the submodule to optimize.
        weight_decay: λ for the tensors the policy decays; norms, biases, scales get 0.
        lr: base learning rate; each group gets ``lr * lr_scale`` (layer-wise LR decay).
        optimizer: the ``torch.optim.Optimizer`` class, ``optimizer_kwargs`` its other arguments.
        decay_engine: keyword arguments of :class:`decaykit.WeightDecay` (``mode=``,
            ``schedule=``); when given, the optimizer is wrapped by the decay engine.
        scheduler: ``optimizer -> LR scheduler``; the result is then Lightning's
            ``{"optimizer": ..., "lr_scheduler": {"scheduler": ..., "interval": interval}}``;
            ``scheduler_options`` the other keys of that dict (``monitor="val_loss"`` for a ``ReduceLROnPlateau``,
            ``frequency``, ``name``).
        plan_options: :func:`decaykit.plan`'s keyword arguments: ``policy=`` a preset name or a
            :class:`decaykit.Policy`, ``rules=``, ``layer_decay=`` ...

    Every group carries ``param_names``, and torch then refuses a group added without them; the
    optimizer returned here takes one all the same (``BackboneFinetuning``, gradual unfreezing:
    ``opt.add_param_group({"params": self.backbone.parameters(), "lr": 1e-4})``): it names the
    tensors as ``module`` does and splits them as the policy decides, λ = the group's
    ``weight_decay`` or ``weight_decay`` here for the decayed ones, 0 for norms and biases.
    """
    if not (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)):
        raise DecayError(f"optimizer must be a torch.optim.Optimizer subclass such as torch.optim.AdamW, got {optimizer!r}")
    if interval not in ("step", "epoch"):
        raise DecayError(f"interval must be 'step' or 'epoch', got {interval!r}")
    options = scheduler_options if isinstance(scheduler_options, dict) else {}
    if not isinstance(scheduler_options, (dict, type(None))) or {"scheduler", "interval"} & options.keys():
        raise DecayError(f"scheduler_options must be a dict of Lightning's other lr_scheduler keys (monitor, frequency, "
                         f"name, strict), got {scheduler_options!r}; pass the scheduler and interval as their own arguments")
    if options and scheduler is None:
        raise DecayError("scheduler_options has no effect without scheduler=; pass the scheduler factory too")
    decided = plan(module, weight_decay, **plan_options)
    opt: torch.optim.Optimizer = optimizer(decided.groups(lr=lr), **(optimizer_kwargs or {}))
    if decay_engine is not None:
        from decaykit.engine.weight_decay import WeightDecay

        opt = WeightDecay(opt, **decay_engine)
    # torch refuses a group without names once the groups carry them (BackboneFinetuning adds one at its unfreeze
    # epoch): this optimizer's add_param_group names the tensors and splits them as the policy decides
    opt.add_param_group = functools.partial(_add_planned_group, opt, weakref.ref(module), weight_decay, plan_options)  # type: ignore[method-assign]
    logger.info("decaykit param groups (%s policy): %s", decided.policy, "; ".join(
        f"weight_decay={r['weight_decay']:g}: {r['tensors']} tensors, {r['parameters']:,} parameters"
        for r in decided.summary() if not r.get("frozen")))
    if scheduler is None:
        return opt
    return {"optimizer": opt, "lr_scheduler": {**options, "scheduler": scheduler(opt), "interval": interval}}


def _add_planned_group(optimizer: torch.optim.Optimizer, module_ref: Callable[[], nn.Module | None],
                       weight_decay: float, plan_options: dict[str, Any], param_group: dict[str, Any]) -> None:
    """``optimizer.add_param_group`` for an optimizer :func:`configure_optimizers` built: a group given without
    names (Lightning's ``BackboneFinetuning``, gradual unfreezing) is named as the module names its tensors and
    split as the policy decides, norms and biases into a ``weight_decay=0`` group; the group's other settings
    (``lr``) go to each part, and its ``weight_decay``, where given, is the λ of the decayed tensors."""
    add = type(optimizer).add_param_group
    module = module_ref()
    params = param_group.get("params")
    params = [params] if isinstance(params, torch.Tensor) else list(params) if params is not None else []
    if module is None or "param_names" in param_group or any(isinstance(p, tuple) for p in params):
        add(optimizer, param_group)
        return
    decided = plan(module, param_group.get("weight_decay", weight_decay), **plan_options)
    by_tensor = {id(d.param): d for d in decided.decisions}
    foreign = [tuple(p.shape) for p in params if id(p) not in by_tensor]
    if foreign:
        raise DecayError(
            f"add_param_group: {len(foreign)} tensors (shapes {foreign[:3]}) are not parameters of the "
            f"{type(module).__name__} the optimizer was built for, so they cannot be named as its groups are; "
            "pass them with names: {'params': [(name, tensor), ...]}")
    parts: dict[float, dict[str, Any]] = {}
    for p in params:
        d = by_tensor[id(p)]
        part = parts.setdefault(d.weight_decay, {**param_group, "params": [], "param_names": [],
                                                  "weight_decay": d.weight_decay})
        part["params"].append(p)
        part["param_names"].append(d.name)
    for part in parts.values() or [{**param_group, "params": [], "param_names": []}]:
        add(optimizer, part)


def _callback_base() -> type:
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback  # the standalone package of Lightning 1.x / 2.x
        except ImportError as exc:
            raise DecayError(
                "DecayAuditCallback needs Lightning, which is not installed: pip install 'decaykit[lightning]'"
            ) from exc
    return Callback


class _DecayAudit:
    """Audit every optimizer of the run at fit start (:func:`decaykit.audit`).

    Args:
        strict: raise a ``DecayError`` on findings of severity ``error`` (decayed norms,
            parameters in no group, tensors in two groups) instead of warning.
        measure: also step copies of each optimizer with zero gradients (:func:`decaykit.probe`),
            so the decay reported is measured, not read from the settings.
        plan_options: :func:`decaykit.audit`'s keyword arguments (``weight_decay=``, ``policy=`` a
            preset name or a :class:`decaykit.Policy`, ``exclude=`` ...).

    The reports are kept in ``self.reports``, one per optimizer; rank zero logs them. With several
    optimizers (a GAN, actor-critic) each trains its own part of the module, so ``missing`` is judged
    over all of them and a tensor held by two of them (``shared-across-optimizers``: the generator's
    optimizer built over the discriminator too) is an error; both are in ``self.findings``.
    """

    def __init__(self, *, strict: bool = False, measure: bool = False, **plan_options: Any) -> None:
        super().__init__()
        self.strict, self.measure, self.plan_options = strict, measure, plan_options
        self.reports: list[Any] = []
        self.findings: list[Any] = []  # about the optimizers together: missing from all, held by two

    def on_fit_start(self, trainer: Any, pl_module: nn.Module) -> None:
        from decaykit.audit import audit

        opts = list(trainer.optimizers)
        self.reports = [audit(pl_module, opt, measure=self.measure, **self.plan_options) for opt in opts]
        self.findings = _across_optimizers(pl_module, opts, self.reports) if len(opts) > 1 else []
        if trainer.is_global_zero:
            for r in self.reports:
                logger.info("%s", r)
            for f in self.findings:
                logger.info("decaykit audit of the %d optimizers together: %s", len(opts), f)
        told = [f"optimizer {i} ({r.optimizer}): " + _errors(r.findings) for i, r in enumerate(self.reports) if not r.ok]
        if any(f.severity == "error" for f in self.findings):
            told.append(f"the {len(opts)} optimizers together: " + _errors(self.findings))
        if not told:
            return
        own = [f.fix for r in self.reports for f in r.findings if f.severity == "error" and f.fix]
        if any(_built_here(opt) for opt in opts):  # already the helper's groups: each finding's own fix says more
            fix = "; ".join(dict.fromkeys(own + [f.fix for f in self.findings if f.severity == "error" and f.fix]))
        elif len(opts) == 1:
            fix = "build it with decaykit.integrations.lightning.configure_optimizers(self, weight_decay, lr=...)"
        else:
            fix = ("build each optimizer from decaykit.param_groups(<the submodule it trains>, weight_decay, lr=...), "
                   "so that every trainable tensor is in exactly one of them")
        message = f"decaykit audit at fit start: {'; '.join(told)}; {fix}"
        if self.strict:
            raise DecayError(message)
        warnings.warn(message, DecayWarning, stacklevel=2)


def _built_here(optimizer: Any) -> bool:
    """Whether :func:`configure_optimizers` built ``optimizer`` (it gave it its own ``add_param_group``)."""
    from decaykit.optimizers import unwrap

    add = vars(unwrap(optimizer)).get("add_param_group")
    return isinstance(add, functools.partial) and add.func is _add_planned_group


def _errors(findings: list[Any]) -> str:
    return ", ".join(f"{f.code} ({len(f.params)} tensors)" for f in findings if f.severity == "error")


def _across_optimizers(module: nn.Module, opts: list[Any], reports: list[Any]) -> list[Any]:
    """``missing`` over all the optimizers, taken out of each one's report, and the tensors held by two or more.

    Each report judged its optimizer alone against the whole module, so the other networks' tensors were
    ``missing`` from it; a tensor is missing only when no optimizer holds it.
    """
    from decaykit.audit import Finding
    from decaykit.optimizers import unwrap
    from decaykit.policy.collect import collect_params

    held: dict[int, list[int]] = {}
    for i, opt in enumerate(opts):
        for pid in dict.fromkeys(id(p) for g in unwrap(opt, sharing=True).param_groups for p in g["params"]):
            held.setdefault(pid, []).append(i)
    names = collect_params(module)
    tensor_of = {info.name: pid for pid, infos in names.items() for info in infos}
    missing: dict[str, None] = {}
    for report in reports:
        for f in report.findings:
            if f.code == "missing":
                missing.update((n, None) for n in f.params if tensor_of.get(n) not in held)
        report.findings[:] = [f for f in report.findings if f.code != "missing"]
    out = []
    if missing:
        out.append(Finding("error", "missing", f"{len(missing)} trainable parameters are in none of the {len(opts)} "
                           "optimizers and will never be updated", "add them to the optimizer of the network they "
                           "belong to (decaykit.param_groups(<that submodule>, ...))", tuple(missing)))
    shared = {infos[0].name: held[pid] for pid, infos in names.items() if len(held.get(pid, ())) > 1}
    if shared:
        by = sorted({tuple(v) for v in shared.values()})
        out.append(Finding(
            "error", "shared-across-optimizers",
            f"{len(shared)} tensors are held by more than one optimizer ("
            + "; ".join(f"optimizers {', '.join(map(str, o))}" for o in by)
            + "), so each of them updates and decays them: the network one optimizer should leave alone is "
            "trained by it too (a GAN's generator optimizer built over the whole module)",
            "build each optimizer from the submodule it trains, decaykit.param_groups(self.generator, ...), not "
            "from self", tuple(shared)))
    return out


class _DecayMonitor:
    """Watch the decay while Lightning trains (:class:`decaykit.Monitor`), logging through the module's loggers.

    Args:
        every: record the first step and every ``every``-th (optimizer steps).
        sink: where the monitor also writes (a ``.jsonl`` / ``.csv`` path, a callable ...). With several
            optimizers each monitor writes its own file, ``run.optimizer0.jsonl``, ``run.optimizer1.jsonl``
            ...; a callable or a ``SummaryWriter`` gets the entries of every optimizer.
        per_tensor: log every tensor's fields too, not only the per-group summaries.
        total_steps: the steps each optimizer takes in the whole run, an int or one per optimizer; by
            default ``trainer.estimated_stepping_batches`` (``max_steps``, or ``max_epochs`` times the
            batches), shared out equally among several optimizers under ``max_steps``.
        monitor_options: :class:`decaykit.Monitor`'s other keyword arguments (``policy=``).

    At train start (after a resumed run's checkpoint is restored) one monitor per optimizer
    (``self.monitors``), each with ``start_step`` = the steps it took before; after each recorded step
    the latest scalars (:meth:`decaykit.Monitor.latest_metrics`) go to ``trainer.loggers`` at the
    global step, and each new finding is logged once (rank zero) as a one-line warning.

    Several optimizers run under manual optimization, where Lightning's ``global_step`` counts the
    steps of all of them: ``max_steps=200`` with two optimizers stepped once per batch is 100 steps
    each. Where they step at other ratios (a critic stepped 5 times per generator step), pass
    ``total_steps=[...]``.
    """

    def __init__(self, every: int = 50, sink: Any = None, *, per_tensor: bool = False,
                 total_steps: int | Sequence[int] | None = None, **monitor_options: Any) -> None:
        super().__init__()
        self.every, self.sink, self.per_tensor, self.monitor_options = every, sink, per_tensor, monitor_options
        self.total_steps = _check_total_steps(total_steps)
        self.monitors: list[Any] = []
        self._seen: list[tuple[int, int]] = []  # per monitor: records and findings already logged

    def on_train_start(self, trainer: Any, pl_module: nn.Module) -> None:
        # not on_fit_start: Lightning restores a resumed run's global step and optimizer states after it
        from decaykit.monitor import Monitor

        opts = list(trainer.optimizers)
        totals = _totals(self.total_steps, trainer, len(opts))
        self.monitors = [Monitor(pl_module, opt, self.every, totals[i], _sink_for(self.sink, i, len(opts)),
                                 start_step=_steps_before(trainer, opt, len(opts)), **self.monitor_options)
                         for i, opt in enumerate(opts)]
        self._seen = [(0, 0)] * len(self.monitors)

    def on_train_batch_end(self, trainer: Any, pl_module: nn.Module, *args: Any, **kwargs: Any) -> None:
        for i, mon in enumerate(self.monitors):
            records, findings = self._seen[i]
            if len(mon.history) == records:
                continue
            prefix = "" if len(self.monitors) == 1 else f"optimizer{i}/"
            metrics = {f"{prefix}{k}": v for k, v in mon.latest_metrics(per_tensor=self.per_tensor).items()}
            for lg in trainer.loggers:
                lg.log_metrics(metrics, step=trainer.global_step)
            if trainer.is_global_zero:
                for finding in mon.findings[findings:]:
                    warnings.warn(f"decaykit monitor: {finding}", DecayWarning, stacklevel=2)
            self._seen[i] = (len(mon.history), len(mon.findings))

    def on_fit_end(self, trainer: Any, pl_module: nn.Module) -> None:
        for i, mon in enumerate(self.monitors):
            mon.close()  # may find more (lr-zero)
            if trainer.is_global_zero:
                for finding in mon.findings[self._seen[i][1]:]:
                    warnings.warn(f"decaykit monitor: {finding}", DecayWarning, stacklevel=2)
        if len(self.monitors) > 1:  # a file sink they shared is closed once all are done, as one monitor closes its own
            from decaykit.monitor.sinks import CsvSink, JsonLinesSink

            for sink in self.sink if isinstance(self.sink, (list, tuple)) else [self.sink]:
                if isinstance(sink, (JsonLinesSink, CsvSink)):
                    sink.close()

    @property
    def monitor(self) -> Any:
        """The monitor of the first optimizer (the only one, usually)."""
        return self.monitors[0] if self.monitors else None


def _check_total_steps(given: Any) -> int | list[int] | None:
    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    if given is None or whole(given):
        return given
    if isinstance(given, Sequence) and not isinstance(given, str) and given and all(whole(v) for v in given):
        return list(given)
    raise DecayError(f"total_steps must be an int >= 1 or a list of them, one per optimizer of the run, got {given!r}; "
                     "leave it out to take the run's length from the Trainer")


def _totals(given: int | list[int] | None, trainer: Any, count: int) -> list[int | None]:
    """Each optimizer's ``total_steps``: ``given`` (one for all, or one each), else the run's length in its steps."""
    if given is None:
        return [_steps_per_optimizer(trainer, count)] * count
    if isinstance(given, int):
        return [given] * count
    if len(given) != count:
        raise DecayError(f"total_steps={given!r} has {len(given)} entries, but the run has {count} optimizers; give "
                         "one per optimizer, in the order configure_optimizers returns them")
    return list(given)


def _steps_per_optimizer(trainer: Any, count: int) -> int | None:
    """How many steps each optimizer takes in the whole run, resumed steps included; None when not known.

    ``estimated_stepping_batches`` is ``max_steps``, or ``max_epochs`` times the batches (per accumulation),
    the smaller where both are set. Under manual optimization ``global_step``, and so ``max_steps``, counts
    the steps of every optimizer, which share it; one step each per batch is assumed.
    """
    try:
        total = float(trainer.estimated_stepping_batches)
    except Exception:  # Lightning cannot estimate under an accumulation schedule that changes between epochs
        total = float(trainer.max_steps)
    if count > 1 and trainer.max_steps > 0:
        total = min(total, math.ceil(trainer.max_steps / count))
    return int(total) if math.isfinite(total) and total > 0 else None


def _steps_before(trainer: Any, optimizer: Any, count: int) -> int:
    """The steps ``optimizer`` took before this fit (a resumed run): ``global_step`` with one optimizer; with
    several, the optimizer's own step count where its state keeps one (Adam's ``step``), else an equal share."""
    if count == 1:
        return int(trainer.global_step)
    from decaykit.optimizers import unwrap

    counts = [int(s["step"]) for s in unwrap(optimizer).state.values() if isinstance(s, dict) and "step" in s]
    return max(counts) if counts else trainer.global_step // count


def _sink_for(sink: Any, index: int, count: int) -> Any:
    """Optimizer ``index``'s sink: with several, a path gets the optimizer's number before its suffix, and a
    callable is shared (the first monitor to close must not close it under the others)."""
    if count == 1 or sink is None:
        return sink
    if isinstance(sink, (list, tuple)):
        return [_sink_for(s, index, count) for s in sink]
    if isinstance(sink, (str, os.PathLike)):
        path = Path(sink)
        return path.with_name(f"{path.stem}.optimizer{index}{path.suffix}")
    return sink if hasattr(sink, "add_scalar") or not callable(sink) else _SharedSink(sink)


class _SharedSink:
    """A callable sink several monitors write to: entries and flushes pass through, ``close`` is left to the owner."""

    def __init__(self, sink: Callable[[dict[str, Any]], None]) -> None:
        self.sink = sink

    def __call__(self, entry: dict[str, Any]) -> None:
        self.sink(entry)

    def flush(self) -> None:
        if callable(getattr(self.sink, "flush", None)):
            self.sink.flush()


_CALLBACKS = {"DecayAuditCallback": _DecayAudit, "DecayMonitorCallback": _DecayMonitor}


def __getattr__(name: str) -> Any:
    # the callbacks must subclass Lightning's Callback, so they are made on first use
    if name in _CALLBACKS:
        base = _CALLBACKS[name]
        cls = type(name, (base, _callback_base()), {"__module__": __name__, "__doc__": base.__doc__})
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
