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

import logging
import warnings
from collections.abc import Callable
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
            ``{"optimizer": ..., "lr_scheduler": {"scheduler": ..., "interval": interval}}``.
        plan_options: :func:`decaykit.plan`'s keyword arguments: ``policy=`` a preset name or a
            :class:`decaykit.Policy`, ``rules=``, ``layer_decay=`` ...
    """
    if not (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)):
        raise DecayError(f"optimizer must be a torch.optim.Optimizer subclass such as torch.optim.AdamW, got {optimizer!r}")
    if interval not in ("step", "epoch"):
        raise DecayError(f"interval must be 'step' or 'epoch', got {interval!r}")
    decided = plan(module, weight_decay, **plan_options)
    opt: torch.optim.Optimizer = optimizer(decided.groups(lr=lr), **(optimizer_kwargs or {}))
    if decay_engine is not None:
        from decaykit.engine.weight_decay import WeightDecay

        opt = WeightDecay(opt, **decay_engine)
    logger.info("decaykit param groups (%s policy): %s", decided.policy, "; ".join(
        f"weight_decay={r['weight_decay']:g}: {r['tensors']} tensors, {r['parameters']:,} parameters"
        for r in decided.summary() if not r.get("frozen")))
    if scheduler is None:
        return opt
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler(opt), "interval": interval}}


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

    The reports are kept in ``self.reports``, one per optimizer; rank zero logs them.
    """

    def __init__(self, *, strict: bool = False, measure: bool = False, **plan_options: Any) -> None:
        super().__init__()
        self.strict, self.measure, self.plan_options = strict, measure, plan_options
        self.reports: list[Any] = []

    def on_fit_start(self, trainer: Any, pl_module: nn.Module) -> None:
        from decaykit.audit import audit

        self.reports = [audit(pl_module, opt, measure=self.measure, **self.plan_options) for opt in trainer.optimizers]
        bad = [(i, r) for i, r in enumerate(self.reports) if not r.ok]
        if trainer.is_global_zero:
            for r in self.reports:
                logger.info("%s", r)
        if not bad:
            return
        message = "; ".join(
            f"optimizer {i} ({r.optimizer}): " + ", ".join(f"{f.code} ({len(f.params)} tensors)"
                                                           for f in r.findings if f.severity == "error")
            for i, r in bad)
        fix = "build it with decaykit.integrations.lightning.configure_optimizers(self, weight_decay, lr=...)"
        if self.strict:
            raise DecayError(f"decaykit audit at fit start: {message}; {fix}")
        warnings.warn(f"decaykit audit at fit start: {message}; {fix}", DecayWarning, stacklevel=2)


class _DecayMonitor:
    """Watch the decay while Lightning trains (:class:`decaykit.Monitor`), logging through the module's loggers.

    Args:
        every: record the first step and every ``every``-th (optimizer steps).
        sink: where the monitor also writes (a ``.jsonl`` / ``.csv`` path, a callable ...).
        per_tensor: log every tensor's fields too, not only the per-group summaries.
        monitor_options: :class:`decaykit.Monitor`'s other keyword arguments (``policy=``).

    At fit start one monitor per optimizer (``self.monitors``); after each recorded step the
    latest scalars (:meth:`decaykit.Monitor.latest_metrics`) go to ``trainer.loggers`` at the
    global step, and each new finding is logged once (rank zero) as a one-line warning.
    """

    def __init__(self, every: int = 50, sink: Any = None, *, per_tensor: bool = False, **monitor_options: Any) -> None:
        super().__init__()
        self.every, self.sink, self.per_tensor, self.monitor_options = every, sink, per_tensor, monitor_options
        self.monitors: list[Any] = []
        self._seen: list[tuple[int, int]] = []  # per monitor: records and findings already logged

    def on_fit_start(self, trainer: Any, pl_module: nn.Module) -> None:
        from decaykit.monitor import Monitor

        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.monitors = [Monitor(pl_module, opt, self.every, total, self.sink if i == 0 else None,
                                 start_step=trainer.global_step, **self.monitor_options)
                         for i, opt in enumerate(trainer.optimizers)]
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

    @property
    def monitor(self) -> Any:
        """The monitor of the first optimizer (the only one, usually)."""
        return self.monitors[0] if self.monitors else None


_CALLBACKS = {"DecayAuditCallback": _DecayAudit, "DecayMonitorCallback": _DecayMonitor}


def __getattr__(name: str) -> Any:
    # the callbacks must subclass Lightning's Callback, so they are made on first use
    if name in _CALLBACKS:
        base = _CALLBACKS[name]
        cls = type(name, (base, _callback_base()), {"__module__": __name__, "__doc__": base.__doc__})
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
