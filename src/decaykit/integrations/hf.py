"""``transformers.Trainer`` with decaykit's policy: norms, biases and scales never decayed.

HF's Trainer decides from names and one class (``Trainer.get_decay_parameter_names``): no decay
inside ``nn.LayerNorm`` or when the name matches ``bias`` / ``layernorm`` / ``rmsnorm`` /
``norm``. A BatchNorm called ``normalization`` (HF's own ResNet), an ``nn.RMSNorm`` called
``ln_1`` or a ``(C,1,1)`` layer scale is decayed, and with exactly two groups there is no room
for per-group weight decay, layer-wise LR decay or a decay schedule. Here decaykit builds the
groups instead, from what each parameter is (:func:`decaykit.plan`), with λ =
``args.weight_decay`` and lr = the optimizer's own ``lr`` keyword where one is given
(``optimizer_cls_and_kwargs``), else ``args.learning_rate`` (times each group's ``lr_scale``).

One line, three ways::

    from decaykit.integrations.hf import DecayTrainer, DecayTrainerMixin, optimizer_cls_and_kwargs

    trainer = DecayTrainer(model=model, args=args, train_dataset=ds)        # drop-in for Trainer

    class MySFTTrainer(DecayTrainerMixin, SFTTrainer): ...                 # any Trainer subclass

    trainer = Trainer(model=model, args=args, train_dataset=ds,            # a plain Trainer
                      optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(model, args))

``DecayTrainer`` / the mixin also take ``decay_options`` (a :class:`decaykit.Policy`, or keyword
arguments of :func:`decaykit.plan`: ``rules=``, ``exclude=``, ``layer_decay=``, ``policy=`` ...) and
``decay_engine`` (keyword arguments of :class:`decaykit.WeightDecay`: ``mode=``, ``schedule=``;
the optimizer HF picks from ``args.optim`` is then wrapped by the decay engine). The mixin builds
the groups when HF creates the optimizer, from the model as HF holds it then (wrapped by DDP or
sharded by FSDP2), so it is the robust choice; ``optimizer_cls_and_kwargs`` holds the tensors of
the model it is given and suits single-device and DDP runs. transformers is an optional extra
(``pip install 'decaykit[hf]'``), imported only when needed.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import torch
from torch import nn

from decaykit._dtensor import is_sharded
from decaykit.convert import canonical_convention, convert
from decaykit.errors import DecayError, DecayWarning
from decaykit.policy.options import OPTIONS, Policy
from decaykit.policy.plan import Plan, plan

# DecayTrainer and DecayMonitorCallback are made on first access (module __getattr__ below), so
# transformers stays optional
__all__ = ["DecayMonitorCallback", "DecayTrainer", "DecayTrainerMixin", "decay_parameter_names",  # noqa: F822
           "optimizer_cls_and_kwargs"]

logger = logging.getLogger(__name__)

# Keys with which an HF optimizer handler says it builds the parameter groups itself
# (GaLore, Apollo: "params"; LOMO: "model"; layer-wise optimizers: "optimizer_dict").
_HF_OWN_GROUPS = ("params", "model", "optimizer_dict")
_PLAN_OPTIONS = frozenset(OPTIONS)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise DecayError(
            "decaykit.integrations.hf needs transformers, which is not installed: pip install 'decaykit[hf]'"
        ) from exc
    return transformers


def _check_options(options: Any, argument: str) -> dict[str, Any]:
    """``{"policy": Policy}``: the plan's keyword arguments, validated here, when the Trainer is made."""
    if options is None or isinstance(options, Policy):
        return {"policy": Policy.of(options)}
    if not isinstance(options, dict):
        raise DecayError(f"{argument} must be a decaykit.Policy or a dict of keyword arguments, got {type(options).__name__}")
    options = dict(options)
    example_inputs = options.pop("example_inputs", None)  # not a policy setting: how the plan looks at the model
    unknown = sorted(set(options) - _PLAN_OPTIONS)
    if unknown:
        choices = ", ".join(sorted({*_PLAN_OPTIONS, "example_inputs"}))
        raise DecayError(
            f"{argument} has unknown key(s) {', '.join(map(repr, unknown))}; choose from: {choices} "
            "(the weight decay itself is TrainingArguments(weight_decay=...))"
        )
    checked: dict[str, Any] = {"policy": Policy.of(options)}
    if example_inputs is not None:
        checked["example_inputs"] = example_inputs
    return checked


def decay_parameter_names(model: nn.Module, **plan_options: Any) -> list[str]:
    """Names of the tensors decaykit decays, spelled as ``model.named_parameters()`` spells them.

    The answer HF's ``Trainer.get_decay_parameter_names`` should give: names keep any wrapper
    prefix (``module.``, ``_orig_mod.``) because HF matches them against the model it holds; a
    tied tensor is listed under each of its names. ``plan_options`` go to :func:`decaykit.plan`
    (``policy=`` a preset name or a :class:`decaykit.Policy`, ``rules=``, ``exclude=`` ...).
    """
    # λ = 1 only to learn which tensors decay; the size of the decay is the optimizer's business
    decided = plan(model, 1.0, **_check_options(plan_options, "plan_options"))
    decays = {id(d.param) for d in decided.trainable if d.weight_decay > 0}
    return [n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in decays]


def _builds_own_groups(optimizer_cls: Any, kwargs: dict[str, Any]) -> bool:
    factory = not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer))
    return factory or any(k in kwargs for k in _HF_OWN_GROUPS)


def _split_by_mesh(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each device mesh its own copy of a group, as the Trainer does: a fused or foreach
    kernel cannot span DTensors of different meshes (FSDP2 on a 2-D mesh, expert parallelism)."""
    out = []
    for group in groups:
        by_mesh: dict[Any, dict[str, Any]] = {}
        for p, name in zip(group["params"], group["param_names"]):
            mesh = p.device_mesh if is_sharded(p) else None
            part = by_mesh.setdefault(mesh, {**group, "params": [], "param_names": []})
            part["params"].append(p)
            part["param_names"].append(name)
        out.extend(by_mesh.values())
    return out


def _summary(decided: Plan) -> str:
    rows = [f"weight_decay={r['weight_decay']:g}" + (f" lr_scale={r['lr_scale']:g}" if r["lr_scale"] != 1 else "")
            + f": {r['tensors']} tensors, {r['parameters']:,} parameters"
            for r in decided.summary() if not r.get("frozen")]
    return f"decaykit param groups ({decided.policy} policy): " + "; ".join(rows)


def _groups_for(model: nn.Module, weight_decay: float, lr: float, options: dict[str, Any]) -> tuple[Plan, list[dict[str, Any]]]:
    decided = plan(model, weight_decay, **options)
    # judged from the plan: a rule with its own λ decays its tensors whatever TrainingArguments says
    if weight_decay == 0 and not any(d.weight_decay > 0 for d in decided.trainable):
        warnings.warn(
            "TrainingArguments.weight_decay is 0 (HF's default), so no parameter decays; "
            "set TrainingArguments(weight_decay=...) to the λ the decayed tensors should get",
            DecayWarning,
            stacklevel=3,
        )
    return decided, _split_by_mesh(decided.groups(lr=lr))


def optimizer_cls_and_kwargs(
    model: nn.Module,
    args: Any,
    *,
    optimizer_cls: type[torch.optim.Optimizer] | None = None,
    optimizer_kwargs: dict[str, Any] | None = None,
    **plan_options: Any,
) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """``Trainer(..., optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(model, args))``.

    Returns the optimizer class HF picks from ``args.optim`` (or ``optimizer_cls``) and its
    keyword arguments with ``params`` set to decaykit's groups for ``model`` (λ =
    ``args.weight_decay``, lr = ``lr_scale`` times ``optimizer_kwargs["lr"]`` if given, else
    ``args.learning_rate``); the Trainer uses a
    ``params`` entry instead of its own two groups. The groups hold ``model``'s tensors, so pass
    the model the Trainer trains; under FSDP, where the Trainer swaps the tensors for shards,
    use :class:`DecayTrainer` instead.
    """
    transformers = _transformers()
    if not isinstance(args, transformers.TrainingArguments):
        raise DecayError(
            f"args must be the transformers.TrainingArguments given to the Trainer, got {type(args).__name__}"
        )
    options = _check_options(plan_options, "plan_options")
    if optimizer_cls is None:
        optimizer_cls, kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(args, model)
        if _builds_own_groups(optimizer_cls, kwargs):
            raise DecayError(
                f"args.optim={args.optim!r} builds its own parameter groups, so they cannot be replaced here; "
                "use decaykit.integrations.hf.DecayTrainer (HF then asks decaykit which tensors decay) or pick "
                "an optimizer such as optim='adamw_torch'"
            )
    elif not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
        raise DecayError(f"optimizer_cls must be a torch.optim.Optimizer subclass, got {optimizer_cls!r}")
    else:
        kwargs = {"lr": args.learning_rate}
    kwargs = {**kwargs, **(optimizer_kwargs or {})}
    _, groups = _groups_for(model, args.weight_decay, _base_lr(kwargs, args), options)
    return optimizer_cls, {**kwargs, "params": groups}


def _base_lr(kwargs: dict[str, Any], args: Any) -> float:
    """The LR the groups scale: the optimizer's own ``lr`` keyword where one is given (a plain Trainer's
    optimizer then runs at it, as its groups set none), else ``args.learning_rate``. A group's own ``lr``
    overrides the keyword, so taking ``args.learning_rate`` there would train at another LR, silently."""
    lr = kwargs.get("lr", args.learning_rate)
    return float(lr) if isinstance(lr, (int, float)) else lr


class DecayTrainerMixin:
    """Put before ``transformers.Trainer`` (or a subclass of it) in the bases: the optimizer gets
    decaykit's param groups.

    Keyword arguments, taken off before the Trainer's own ``__init__`` sees them:
      ``decay_options``: a :class:`decaykit.Policy`, or keyword arguments of :func:`decaykit.plan`
      (``rules``, ``exclude``, ``layer_decay``, ``policy``, ``decay_embeddings`` ...), validated
      here and kept as ``{"policy": Policy}``; ``example_inputs`` (``"auto"``: token ids or pixels made
      from the model's config) decides each tensor from how the forward pass uses it;
      ``decay_engine``: keyword arguments of :class:`decaykit.WeightDecay` (``mode``,
      ``schedule``, ``max_lr``); when given, the optimizer HF picks is wrapped by the engine,
      which then applies each group's λ (HF's LR scheduler drives it like any optimizer).
      ``TrainingArguments.weight_decay`` is a torch AdamW (``lr_coupled``) λ, as HF's own
      optimizers use it; for ``mode="lr_independent"`` it is converted (λ·η_max per group, the same
      decay per step at the peak LR) with a one-line :class:`DecayWarning` showing both numbers.
      The key ``convention`` (any name :func:`decaykit.convert` knows) says the number is already
      in another convention: ``{"mode": "lr_independent", "convention": "lr_independent"}``.

    Optimizers that HF builds with their own grouping (GaLore, Apollo, LOMO, layer-wise, and the
    Muon / Dion factories) keep HF's path unchanged: decaykit's decisions reach them only where
    HF asks :meth:`get_decay_parameter_names` (one λ), and ``decay_engine`` is refused for them.
    BitsAndBytes' 8-bit embedding override, which HF applies inside its own group building, is
    skipped.
    """

    def __init__(
        self,
        *args: Any,
        decay_options: Policy | dict[str, Any] | None = None,
        decay_engine: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.decay_options = _check_options(decay_options, "decay_options")
        if decay_engine is not None and not isinstance(decay_engine, dict):
            raise DecayError(
                f"decay_engine must be a dict of decaykit.WeightDecay keyword arguments (mode=, schedule=), "
                f"got {type(decay_engine).__name__}"
            )
        self.decay_engine = None if decay_engine is None else dict(decay_engine)
        if self.decay_engine is not None:
            canonical_convention(self.decay_engine.get("convention", _HF_CONVENTION), "decay_engine['convention']")  # refused now, not at train()
        given = kwargs.get("optimizers", (None, None))
        if isinstance(given, (tuple, list)) and given and given[0] is not None:
            if decay_options is not None or decay_engine is not None:
                raise DecayError(
                    "the Trainer was given its optimizer (optimizers=(optimizer, ...)), so decay_options and "
                    "decay_engine would be dropped: build that optimizer from decaykit.param_groups(model, ...) "
                    "(and wrap it in decaykit.WeightDecay) yourself, or leave optimizers= out and DecayTrainer "
                    "builds it", argument="optimizers")  # fmt: skip
            warnings.warn("the Trainer was given its optimizer (optimizers=(optimizer, ...)): its groups are used as "
                          "they are, not decaykit's; check them with decaykit.audit(model, optimizer)",
                          DecayWarning, stacklevel=2)  # fmt: skip
        super().__init__(*args, **kwargs)

    def decay_plan(self, model: nn.Module | None = None) -> Plan:
        """The decisions the optimizer is (or will be) built from, with reasons: print it."""
        return plan(self.model if model is None else model, self.args.weight_decay, **self.decay_options)  # type: ignore[attr-defined]

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        return decay_parameter_names(model, **self.decay_options)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        opt_model = self.model if model is None else model  # type: ignore[attr-defined]
        if self.optimizer is None:  # type: ignore[has-type]
            given = getattr(self, "optimizer_cls_and_kwargs", None)
            optimizer_cls, kwargs = given if given is not None else self.get_optimizer_cls_and_kwargs(self.args, opt_model)  # type: ignore[attr-defined]
            if isinstance(kwargs.get("params"), list) and all(isinstance(g, dict) and "param_names" in g
                                                               for g in kwargs["params"]):
                kwargs = {k: v for k, v in kwargs.items() if k != "params"}  # decaykit's own groups: made again here
            if _builds_own_groups(optimizer_cls, kwargs):
                if self.decay_engine is not None:
                    raise DecayError(
                        f"decay_engine cannot wrap {getattr(optimizer_cls, '__name__', optimizer_cls)}: that optimizer "
                        "builds its own parameter groups; choose an optimizer such as optim='adamw_torch'"
                    )
                return super().create_optimizer(model)  # type: ignore[misc]
            decided, groups = _groups_for(opt_model, self.args.weight_decay, _base_lr(kwargs, self.args), self.decay_options)  # type: ignore[attr-defined]
            optimizer = optimizer_cls(groups, **kwargs)
            if self.decay_engine is not None:
                optimizer = _wrap_in_engine(optimizer, self.decay_engine, self.args.weight_decay)  # type: ignore[attr-defined]
            self.optimizer = optimizer
            if self.is_world_process_zero():  # type: ignore[attr-defined]
                logger.info(_summary(decided))
        # with self.optimizer set, HF's own method only adds its wrappers (SageMaker model parallel)
        return super().create_optimizer(model)  # type: ignore[misc]


#: the convention of TrainingArguments.weight_decay: HF hands it to torch's AdamW
_HF_CONVENTION = "lr_coupled"
#: the convention of each engine mode's λ, where decaykit.convert has one (cautious decays as η·λ)
_MODE_CONVENTION = {"lr_coupled": "lr_coupled", "lr_independent": "lr_independent", "corrected": "corrected",
                    "cautious": "lr_coupled"}


def _wrap_in_engine(optimizer: torch.optim.Optimizer, decay_engine: dict[str, Any], weight_decay: float) -> Any:
    """``WeightDecay(optimizer, **decay_engine)``, each group's λ first carried into the mode's convention."""
    from decaykit.engine.checks import check_max_lr, group_peak_lr, lr_scale_on_top
    from decaykit.engine.weight_decay import WeightDecay

    options = dict(decay_engine)
    source = canonical_convention(options.pop("convention", _HF_CONVENTION), "decay_engine['convention']")
    target = _MODE_CONVENTION.get(options.get("mode", "lr_coupled"))
    given = check_max_lr(options.get("max_lr"), len(optimizer.param_groups))
    changed = []
    for i, group in enumerate(optimizer.param_groups):
        lam = group.get("weight_decay", 0.0)
        if target is None or source == target or isinstance(lam, torch.Tensor) or not lam:
            continue
        peak = (given[i] if isinstance(given, list) else given if given is not None
                else group_peak_lr(group, lr_scale_on_top(optimizer.param_groups)))
        converted = convert(lam, from_=source, to=target, max_lr=peak)
        if not math.isclose(converted, lam, rel_tol=1e-9):  # corrected decays as lr_coupled at the peak LR
            group["weight_decay"] = converted
            changed.append((lam, converted, peak))
    if changed:
        shown = "; ".join(f"{a:g} -> {b:.6g} at η_max {p:g}" for a, b, p in dict.fromkeys(changed))
        warnings.warn(
            f"TrainingArguments.weight_decay={weight_decay:g} is a {source} λ; decay_engine mode "
            f"{options.get('mode')!r} reads λ as {target}, so the engine gets the λ with the same decay per step at "
            f"the peak LR ({shown}); pass decay_engine={{..., 'convention': {target!r}}} if the number already is one",
            DecayWarning,
            stacklevel=4,
        )
    return WeightDecay(optimizer, **options)


def _make_decay_trainer() -> type:
    transformers = _transformers()
    return type(
        "DecayTrainer",
        (DecayTrainerMixin, transformers.Trainer),
        {
            "__module__": __name__,
            "__doc__": "``transformers.Trainer`` whose optimizer gets decaykit's param groups; "
            "see :class:`DecayTrainerMixin` for ``decay_options`` and ``decay_engine``.",
        },
    )


class _DecayMonitor:
    """Watch the decay while the Trainer trains (:class:`decaykit.Monitor`), through its ``report_to`` loggers.

    ``Trainer(..., callbacks=[DecayMonitorCallback(every=50)])``. Args:
        every: record the first step and every ``every``-th (optimizer steps).
        sink: where the monitor also writes (a ``.jsonl`` / ``.csv`` path, a callable ...).
        per_tensor: log every tensor's fields too, not only the per-group summaries.
        monitor_options: :class:`decaykit.Monitor`'s other keyword arguments (``policy=``).

    At train begin it monitors the Trainer's model and optimizer (``self.monitor``, with
    ``total_steps`` = ``max_steps``). Whenever the Trainer logs, the latest scalars
    (:meth:`decaykit.Monitor.latest_metrics`) are added to the logs, so every ``report_to``
    logger (TensorBoard, W&B, MLflow ...) records them; each new finding is logged once.
    """

    def __init__(self, every: int = 50, sink: Any = None, *, per_tensor: bool = False, **monitor_options: Any) -> None:
        self.every, self.sink, self.per_tensor, self.monitor_options = every, sink, per_tensor, monitor_options
        self.monitor: Any = None
        self._logged = (0, 0)  # records and findings already logged

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        from decaykit.monitor import Monitor

        self.monitor = Monitor(model, optimizer, self.every, state.max_steps if state.max_steps > 0 else None,
                               self.sink, start_step=state.global_step, **self.monitor_options)
        self._logged = (0, 0)
        _run_before_the_loggers(self)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self.monitor is None or logs is None or len(self.monitor.history) == self._logged[0]:
            return
        logs.update(self.monitor.latest_metrics(per_tensor=self.per_tensor))
        if state.is_world_process_zero:
            for finding in self.monitor.findings[self._logged[1]:]:
                logger.warning("decaykit monitor: %s", finding)
        self._logged = (len(self.monitor.history), len(self.monitor.findings))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()  # may find more (lr-zero)
            if state.is_world_process_zero:
                for finding in self.monitor.findings[self._logged[1]:]:
                    logger.warning("decaykit monitor: %s", finding)


def _run_before_the_loggers(callback: Any) -> None:
    """Move ``callback`` to the front of the Trainer's callback list, so its ``on_log`` adds to the
    logs before the ``report_to`` callbacks (which the Trainer puts before the user's) read them.

    The handler is the caller of ``on_train_begin`` (``CallbackHandler.call_event``); a callback is
    not given it. Moving an earlier-called entry to the front keeps the running loop's order.
    """
    import inspect

    handler_cls = _transformers().trainer_callback.CallbackHandler
    frame = inspect.currentframe()
    while frame is not None and not isinstance(frame.f_locals.get("self"), handler_cls):
        frame = frame.f_back
    if frame is None:
        warnings.warn("DecayMonitorCallback: could not reach the Trainer's callback list to run before the report_to "
                      "loggers, so they may not see its metrics; the monitor's history and sink still hold them",
                      DecayWarning, stacklevel=3)
        return
    callbacks = frame.f_locals["self"].callbacks
    del frame
    if callback in callbacks:
        callbacks.remove(callback)
        callbacks.insert(0, callback)


def _make_monitor_callback() -> type:
    transformers = _transformers()
    return type("DecayMonitorCallback", (_DecayMonitor, transformers.TrainerCallback),
                {"__module__": __name__, "__doc__": _DecayMonitor.__doc__})


_LAZY_CLASSES = {"DecayTrainer": _make_decay_trainer, "DecayMonitorCallback": _make_monitor_callback}


def __getattr__(name: str) -> Any:
    # DecayTrainer subclasses transformers.Trainer and DecayMonitorCallback its TrainerCallback, so
    # they are made on first use: importing this module never imports transformers.
    if name in _LAZY_CLASSES:
        cls = _LAZY_CLASSES[name]()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
