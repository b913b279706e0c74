"""Checks a sweep makes before it trains anything, so bad input fails fast with one clear line.

The λ grid against the decay mode, the data factory, the model against the data (shapes,
classes, targets), the objective; plus the thread count that suits the step size. Each
setting on its own is checked where it is made (``settings.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from decaykit.engine.checks import PLAUSIBLE_SHRINK
from decaykit.errors import DecayError, DecayWarning, UserCodeError
from decaykit.sweeps.data import SweepData, check_finite, keeps_dtype, resolve_data
from decaykit.sweeps.optim import decay_plan
from decaykit.sweeps.settings import Training
from decaykit.sweeps.tasks import Task
from decaykit.sweeps.timing import ThreadChoice, one_thread, threads_text
from decaykit.sweeps.trainer import seeded_model

__all__ = ["check_model", "check_objective", "check_shrink", "load_data", "step_flops", "threads_for"]


def check_shrink(training: Training, weight_decays: Sequence[float]) -> None:
    """Refuse λ whose decoupled shrink θ ← θ(1 − r) has r > 1 (it flips every weight's sign each step)."""
    mode, lr = training.mode, float(training.lr or 0.0)
    if mode == "coupled_l2":
        return
    per_lambda = 1.0 if mode == "lr_independent" else lr  # r = λ·η/η_max or λ·η (constant LR)
    bad = [wd for wd in weight_decays if wd * per_lambda > 1]
    if bad:
        formula = "λ" if mode == "lr_independent" else f"lr·λ = {lr:g}·λ"
        raise DecayError(
            f"weight decay {', '.join(f'{wd:g}' for wd in bad)} with mode {mode!r} shrinks the weights by "
            f"r = {formula} > 1 per step, which flips every weight's sign; drop those λ or lower the LR",
            argument="weight_decays",
        )
    large = [wd for wd in weight_decays if mode == "lr_independent" and wd > PLAUSIBLE_SHRINK]
    if large:
        converted = f" = {', '.join(f'{wd * lr:.3g}' for wd in large[:3])}" if lr > 0 else ""
        warnings.warn(
            f"weight decay {', '.join(f'{wd:g}' for wd in large)} with mode 'lr_independent' shrinks the weights by "
            f"more than {100 * PLAUSIBLE_SHRINK:g}% per step (an lr_independent λ is typically 1e-5 .. 1e-3; a torch "
            f"AdamW λ converts to λ·lr_max{converted}); swept as given",
            DecayWarning, stacklevel=3,
        )


def load_data(task: Task, training: Training) -> SweepData:
    """The task's data, checked, with floating (and boolean) tensors in ``training.dtype`` on ``training.device``."""
    try:
        raw = task.data_fn()
    except DecayError:
        raise
    except Exception as exc:
        raise DecayError(f"the data factory of task {task.name!r} failed: {type(exc).__name__}: {exc}") from exc
    data = resolve_data(raw, source="data" if task.name == "custom" else task.name)
    device, floating = training.device, training.dtype

    def move(t: Tensor) -> Tensor:
        return t.to(device=device, dtype=t.dtype if keeps_dtype(t) else floating)

    description = data.description or (
        f"{data.train_size} training and {data.test_size} test samples, {data.kind}"
        + (f", {data.num_classes} classes" if data.num_classes else "")
    )
    moved = SweepData(
        move(data.x_train), move(data.y_train), move(data.x_test), move(data.y_test),
        data.kind, data.num_classes, description,
    )  # fmt: skip
    # a value finite in the source dtype can overflow in the training one (1e39 in float32)
    check_finite(moved, "data", after=f" once converted to {str(floating).replace('torch.', '')}")
    return moved


# Below this many FLOPs per training step, one thread is faster: waking a second one costs more than it
# saves, and on a machine busy with other work its barrier can stall each op for a time slice (measured
# here: a ridge sweep of 2 members, 800 steps, 0.36 s on 1 thread vs 6-18 s on 2 threads under load).
_SMALL_STEP_FLOPS = 1e7
# A thread trial runs on the sweep's first steps: a warm one, then a round of one step per count, up to five
# rounds (timing.ThreadChoice). A sweep of fewer steps keeps torch's default count untimed.
_TIMED_MIN_STEPS = 24


def threads_for(
    model: torch.nn.Module,
    data: SweepData,
    training: Training,
    members: int,
    *,
    requested: int | None = None,
    steps: int | None = None,
) -> ThreadChoice:
    """The number of CPU threads to train with, and why, for the sweep's header.

    ``requested`` (the ``threads`` setting) wins. Otherwise: one thread for small steps; else the faster
    of one thread and torch's default, timed on the sweep's own first training steps of ``members``
    models (:class:`decaykit.sweeps.timing.ThreadChoice`). The machine's load decides this and changes by
    the minute, which the load average follows a minute late (measured on a 2-core machine at load 3-6:
    the default sweep 264-307 s with torch's 2 threads, 43 s with one). ``model``: one model of the
    sweep, to count a step's FLOPs with (:func:`step_flops`); ``steps``: the training steps the sweep will
    take; fewer than a trial needs keep torch's default untimed.
    """
    if requested is not None:
        return ThreadChoice.fixed(requested, f"{threads_text(requested)} (as asked)")
    default = torch.get_num_threads()
    if training.device.type != "cpu":
        return ThreadChoice.fixed(default, training.device.type)
    flops = step_flops(model, data.x_train[:2]) * training.batch_for(data.train_size) * members
    if flops < _SMALL_STEP_FLOPS:
        return ThreadChoice.fixed(1, "1 thread (small steps)")
    if default == 1 or (steps is not None and steps < _TIMED_MIN_STEPS):
        return ThreadChoice.fixed(default, threads_text(default))
    return ThreadChoice([1, default], steps=steps)


def step_flops(model: torch.nn.Module, x: Tensor) -> float:
    """FLOPs of one training step per sample: three times the forward's (the backward costs about two), as
    torch's FLOP counter counts it on the samples ``x``, and never under 6 per parameter (each weight used
    once per sample, as in a dense layer). A convolution reuses its weights at every position: counted
    from its parameters alone, the 2-D CNN of the tests would be 7.5x too small. The model is left as it
    was: its modules' modes, its buffers and the RNG."""
    from torch.utils.flop_counter import FlopCounterMode

    dense = 6.0 * sum(p.numel() for p in model.parameters())
    modes = [(module, module.training) for module in model.modules()]
    buffers = [(b, b.clone()) for b in model.buffers()]  # a BatchNorm's statistics move in training mode
    try:
        # in training mode, as the step it sizes: in evaluation mode nn.TransformerEncoderLayer takes a fused
        # fast path the counter does not see; the RNG is forked, so dropout draws nothing from the sweep's
        model.train()
        with torch.random.fork_rng(devices=[]), torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    except Exception:  # a model the counter cannot follow: the dense count alone
        return dense
    finally:
        for module, training in modes:
            module.training = training
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
    return max(dense, 3.0 * counter.get_total_flops() / max(1, len(x)))


def _check_loss(loss: Any, out: Tensor, y: Tensor) -> None:
    """A loss function takes the model's output and the targets and returns one number for the batch (each
    member's loss is then its own): a vector came out later as a size mismatch deep in training."""
    name = getattr(loss, "__qualname__", type(loss).__name__)
    try:
        with torch.no_grad():
            value = loss(out, y)
    except Exception as exc:
        raise UserCodeError(f"loss={name} raised {type(exc).__name__}: {exc} on the model's output of shape "
                            f"{tuple(out.shape)} and targets of shape {tuple(y.shape)}", argument="loss") from exc  # fmt: skip
    if not isinstance(value, Tensor) or value.dim() != 0:
        got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise DecayError(f"loss={name} must return one number for the batch (a 0-dim tensor, e.g. the mean over "
                         f"its samples); got {got} for a batch of {len(out)}", argument="loss")  # fmt: skip


def check_model(task: Task, data: SweepData, training: Training) -> torch.nn.Module:
    """Build the seed-0 model and push two samples through it: shapes and targets must fit the loss."""
    with one_thread():
        return _check_model(task, data, training)


def _check_model(task: Task, data: SweepData, training: Training) -> torch.nn.Module:
    try:
        model = seeded_model(task.model_fn, 0, training.dtype, training.device)
    except DecayError:
        raise
    except Exception as exc:
        raise DecayError(f"building the model failed: {type(exc).__name__}: {exc}") from exc
    if not any(p.requires_grad for p in model.parameters()):
        raise DecayError("the model has no trainable parameters: nothing to sweep")
    decay_plan(model, 1.0, training.policy)  # an unknown policy or a bad rule fails here, before any training
    x = data.x_train[:2]
    n = x.shape[0]  # 2, or 1 for a one-sample training set
    samples = f"{n} sample{'s' if n > 1 else ''}"
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as exc:
        hint = "" if x.dtype.is_floating_point else (
            f"; the inputs are {str(x.dtype).replace('torch.', '')}, passed as they are for a model that embeds them "
            "(token ids): for features, give floating point inputs"
        )
        raise DecayError(
            f"the model cannot take the data: input of shape {tuple(x.shape)} ({samples}) raised "
            f"{type(exc).__name__}: {exc}{hint}"
        ) from exc
    if not isinstance(out, Tensor):
        raise DecayError(f"the model must return a tensor, got {type(out).__name__}")
    if callable(training.loss):
        _check_loss(training.loss, out, data.y_train[:n])
        return model
    if data.kind == "classification":
        if out.dim() != 2 or out.shape[0] != n:
            raise DecayError(
                f"for classification the model must return logits of shape (batch, classes); "
                f"got {tuple(out.shape)} for a batch of {n}"
            )
        if out.shape[1] < (data.num_classes or 0):
            raise DecayError(
                f"the model returns {out.shape[1]} logits per sample but the labels go up to "
                f"{(data.num_classes or 0) - 1}; the last layer needs at least {data.num_classes} outputs"
            )
    elif out.shape != data.y_train[:2].shape:
        raise DecayError(
            f"the model returns shape {tuple(out.shape)} for {samples} but the targets have shape "
            f"{tuple(data.y_train[:2].shape)}; make them match (e.g. targets of shape (n, 1))"
        )
    return model


def check_objective(training: Training, kind: str, task: Task) -> None:
    """The objective ``training.metric`` must be one of the metrics a trial of ``task`` reports."""
    names = {"train_loss", "test_loss", "weight_norm", "gap"}
    if kind == "classification":
        names |= {"train_accuracy", "test_accuracy"}
    names |= {f"{split}_{m}" for m in training.metrics for split in ("train", "test")}
    if task.final_metrics is not None:
        names |= {"closed_form_test_loss", "distance_to_closed_form"}
    if training.metric not in names:
        raise DecayError(f"metric={training.metric!r} is not measured; choose one of {', '.join(sorted(names))}")
    if training.maximize is None:  # one of the user's metrics, whose direction only the user knows
        raise DecayError(
            f"metric={training.metric!r} is your own metric, and whether a higher value is better is yours to say: "
            "add maximize=True or maximize=False; the best λ is chosen by it",
            argument="maximize",
        )
