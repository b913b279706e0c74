"""Carry a weight decay λ across conventions, and read it as an EMA timescale.

Every convention decays θ by a per-step rate r = c·λ, with c = η^a · η_max^b · k:

==================  ==================================================  =========================  ==========
convention          per-step decay                                      source                     exact?
==================  ==================================================  =========================  ==========
``lr_coupled``      θ ← θ(1 − η_t·λ)                                    torch/optax AdamW          yes
``lr_independent``  θ ← θ(1 − (η_t/η_max)·λ)                            Composer, optimi,          yes
                                                                        Wortsman et al. 2023
``paper``           θ ← θ − s_t(α·u + λθ), s_t = η_t/α, α = η_max       Loshchilov & Hutter 2019   yes
``normalized``      paper λ = λ_norm·√(b/(B·T)) = λ_norm/√steps         Loshchilov & Hutter 2019   yes
``corrected``       θ ← θ(1 − (η_t²/η_max)·λ)                           AdamC, Defazio 2025        yes
``sgd_l2``          SGD(weight_decay=λ, momentum=μ, dampening=δ): ≈ θ(1 − η_t·λ·(1−δ)/(1−μ))  AdamW paper Prop. 1  μ = 0: yes
``adam_l2``         Adam(weight_decay=λ): ≈ θ(1 − η_t·λ/RMS(g))          Prop. 2: no exact match    no
==================  ==================================================  =========================  ==========

``convert`` matches r at the LR ``lr`` (default: ``max_lr``, the peak), so λ_to = λ_from·c_from/c_to;
η and η_max are needed only where they do not cancel. ``timescale`` reads a ``lr_coupled`` λ as
the EMA timescale τ = 1/(η·λ) steps (Wang & Aitchison 2024): AdamW's weights average the last τ
updates, and the best τ in epochs, τ_epoch = τ/⌈N/B⌉ (≈ B/(η·λ·N) when B divides N; an epoch
is one pass over the N examples in ⌈N/B⌉ steps, ⌊N/B⌋ with ``drop_last``), stays roughly
constant across model and data size.
"""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from decaykit import optimizers
from decaykit._render import Cell, Report, html_lines, html_report
from decaykit._validate import check_int, check_number, check_rates
from decaykit.errors import DecayError, DecayWarning

__all__ = [
    "ALIASES",
    "CONVENTIONS",
    "Convention",
    "Timescale",
    "convert",
    "steps_per_epoch",
    "timescale",
    "weight_decay_for_timescale",
]


@dataclass(frozen=True)
class Convention:
    """How a convention's λ turns into a per-step decay rate r = η^lr_power · η_max^max_lr_power · k·λ."""

    name: str
    rule: str
    source: str
    lr_power: int
    max_lr_power: int
    exact: bool = True


CONVENTIONS: dict[str, Convention] = {
    c.name: c
    for c in (
        Convention("lr_coupled", "θ ← θ(1 − η_t·λ)", "torch/optax AdamW", 1, 0),
        Convention("lr_independent", "θ ← θ(1 − (η_t/η_max)·λ)", "Composer, optimi, Wortsman et al. 2023", 1, -1),
        Convention("paper", "θ ← θ − s_t(α·u + λθ), s_t = η_t/α, α = η_max", "Loshchilov & Hutter 2019", 1, -1),
        Convention("normalized", "paper λ = λ_norm/√steps", "Loshchilov & Hutter 2019, normalized decay", 1, -1),
        Convention("corrected", "θ ← θ(1 − (η_t²/η_max)·λ)", "AdamC, Defazio 2025", 2, -1),
        Convention("sgd_l2", "g ← g + λθ in SGD(momentum μ, dampening δ): θ(1 − η_t·λ·(1−δ)/(1−μ))",
                   "L2 penalty; AdamW paper Prop. 1", 1, 0),
        Convention(
            "adam_l2", "g ← g + λθ in Adam: ≈ θ(1 − η_t·λ/RMS(g)) per step", "L2 penalty; AdamW paper Prop. 2", 1, 0, False
        ),
    )
}


def _optimizer_convention(name: str) -> str:
    """The convention an optimizer's own weight_decay follows by default, from :mod:`decaykit.optimizers`."""
    entry = optimizers.info(name)
    if entry is None or entry.convention not in CONVENTIONS:  # pragma: no cover - tests/test_optimizers.py
        raise DecayError(f"decaykit.optimizers gives {name} no convention of decaykit.convert")
    return entry.convention


#: other names people use for the same conventions; output always uses the canonical name. An
#: optimizer's name means the convention its own weight_decay follows (decaykit.optimizers).
ALIASES: dict[str, str] = {
    "adamw": _optimizer_convention("AdamW"),
    "torch": "lr_coupled",
    "optax": "lr_coupled",
    "independent": "lr_independent",
    "composer": _optimizer_convention("DecoupledAdamW"),
    "optimi": "lr_independent",
    "loshchilov": "paper",
    "adamc": _optimizer_convention("AdamC"),
    "sgd": _optimizer_convention("SGD"),
    "adam": _optimizer_convention("Adam"),
}


def canonical_convention(name: str, argument: str = "convention") -> str:
    """The convention ``name`` stands for (an alias resolved); an unknown one is refused naming ``argument``."""
    key = str(name).lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in CONVENTIONS:
        known = ", ".join([*CONVENTIONS, *ALIASES])
        raise DecayError(f"unknown weight-decay convention {name!r} for {argument}; known: {known}", argument=argument)
    return key


def _positive(name: str, value: Any) -> float:
    return check_number(value, name, allow_zero=False, strict_type=True)


def _coefficient(conv: str, *, steps: Any, momentum: Any, grad_rms: Any, dampening: Any = 0.0) -> float:
    """The constant k of r = η^a·η_max^b·k·λ."""
    if conv == "normalized":
        if steps is None:
            raise DecayError("convention 'normalized' needs steps= (the total number of optimizer steps, B·T/b)")
        return 1.0 / math.sqrt(_positive("steps", steps))
    if conv == "sgd_l2":
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0 <= momentum < 1:
            raise DecayError(f"momentum must be a number in [0, 1), got {momentum!r}", argument="momentum")
        if isinstance(dampening, bool) or not isinstance(dampening, numbers.Real) or not 0 <= dampening < 1:
            raise DecayError(f"dampening must be a number in [0, 1), got {dampening!r}", argument="dampening")
        # the buffer sums (1 − δ)·λθ over μ^k: (1 − δ)/(1 − μ) in all once θ moves slowly
        return (1.0 - dampening) / (1.0 - momentum)
    if conv == "adam_l2":
        if grad_rms is None:
            raise DecayError(
                "convention 'adam_l2' needs grad_rms=: no L2 coefficient reproduces decoupled decay in Adam "
                "(AdamW paper, Prop. 2), but λθ/√v̂ decays at about η·λ/RMS(g); pass the gradients' RMS "
                "(√ of the mean of Adam's exp_avg_sq)"
            )
        return 1.0 / _positive("grad_rms", grad_rms)
    return 1.0


def _learning_rates(lr: Any, max_lr: Any) -> tuple[float | None, float | None]:
    """``lr`` and ``max_lr`` checked whenever given, needed or not: a negative or a peak below
    the LR is a mistake in any conversion."""
    eta = None if lr is None else _positive("lr", lr)
    peak = None if max_lr is None else _positive("max_lr", max_lr)
    if eta is not None and peak is not None and eta > peak:
        raise DecayError(
            f"lr must be <= max_lr (η_max is the schedule's peak LR), got lr={eta!r} > max_lr={peak!r}; "
            "pass the peak as max_lr, or an lr at or below it to match the decay at"
        )
    return eta, peak


def _factor(src: str, dst: str, *, lr: float | None, max_lr: float | None, steps: Any, momentum: Any,
            grad_rms: Any, dampening: Any = 0.0) -> float:
    """c_from/c_to, so that λ_to = λ_from·c_from/c_to; inf where it overflows."""
    a, b = CONVENTIONS[src], CONVENTIONS[dst]
    given = {"steps": steps, "momentum": momentum, "grad_rms": grad_rms, "dampening": dampening}
    factor = _coefficient(src, **given) / _coefficient(dst, **given)
    lr_power, max_power = a.lr_power - b.lr_power, a.max_lr_power - b.max_lr_power
    if max_power and max_lr is None:
        raise DecayError(f"converting {src} -> {dst} needs max_lr= (the peak LR η_max, e.g. the optimizer's initial lr)")
    at = lr if lr is not None else max_lr
    if lr_power and at is None:
        raise DecayError(f"converting {src} -> {dst} needs lr= (the LR to match the decay at) or max_lr=")
    try:
        return factor * (max_lr ** max_power if max_power else 1.0) * (at ** lr_power if lr_power else 1.0)  # type: ignore[operator]
    except OverflowError:
        return math.inf


def _refuse_unrepresentable(weight_decay: float | Tensor, result: float | Tensor, src: str, dst: str,
                            factor: float) -> None:
    """A λ > 0 that converts to inf, nan or below the smallest normal float is no answer: refuse it."""
    if isinstance(result, Tensor):
        tiny = torch.finfo(result.dtype).tiny if result.is_floating_point() else 0.0
        value = result.detach().abs().double()
        given = weight_decay.detach().double() if isinstance(weight_decay, Tensor) else torch.tensor(weight_decay)
        bad = ~torch.isfinite(value) | ((given != 0) & (value < tiny))
        if not bool(bad.any()):
            return
        shown, kind = float(result.detach().flatten()[bad.flatten()][0]), str(result.dtype).removeprefix("torch.")
    else:
        if math.isfinite(result) and (weight_decay == 0 or abs(result) >= sys.float_info.min):
            return
        shown, kind = result, "float64"
    what = "overflows" if not math.isfinite(shown) or abs(shown) >= 1 else "underflows"
    raise DecayError(
        f"converting weight_decay from {src} to {dst} {what} {kind} (λ × {factor:.3g} = {shown!r}): the settings "
        "(lr, max_lr, steps, grad_rms) are too far apart to give a usable λ; check their units"
    )


def convert(
    weight_decay: float | Tensor,
    *,
    from_: str,
    to: str,
    lr: float | None = None,
    max_lr: float | None = None,
    steps: int | None = None,
    momentum: float = 0.0,
    grad_rms: float | None = None,
    dampening: float = 0.0,
) -> float | Tensor:
    """The λ in convention ``to`` that decays as much per step as ``weight_decay`` does in ``from_``.

    Conventions (and aliases): ``lr_coupled`` (adamw, torch), ``lr_independent`` (composer,
    independent), ``paper``, ``normalized``, ``corrected`` (adamc), ``sgd_l2`` (sgd), ``adam_l2``
    (adam). Rates are matched at LR ``lr`` (default ``max_lr``, and never above it); ``steps`` is
    the run's total step count (``normalized``), ``momentum`` and ``dampening`` SGD's (``sgd_l2``), ``grad_rms`` the
    gradients' RMS (``adam_l2``, approximate). A result that overflows (or underflows) the float
    type is refused, never returned as inf or 0.

    >>> convert(0.1, from_="lr_coupled", to="lr_independent", max_lr=1e-3)  # λ_indep = η_max·λ_torch
    0.0001
    >>> convert(1e-4, from_="composer", to="adamw", max_lr=1e-3)
    0.1
    """
    src, dst = canonical_convention(from_, "from_"), canonical_convention(to, "to")
    if isinstance(weight_decay, Tensor):
        check_rates(weight_decay.flatten(), "weight_decay")
    else:
        weight_decay = check_number(weight_decay, "weight_decay", strict_type=True)
    eta, peak = _learning_rates(lr, max_lr)
    factor = _factor(src, dst, lr=eta, max_lr=peak, steps=steps, momentum=momentum, grad_rms=grad_rms,
                     dampening=dampening)
    if isinstance(weight_decay, Tensor):
        result: float | Tensor = torch.where(weight_decay == 0, torch.zeros_like(weight_decay), weight_decay * factor)
    else:
        result = 0.0 if weight_decay == 0 else weight_decay * factor  # no decay is no decay in every convention
    _refuse_unrepresentable(weight_decay, result, src, dst, factor)
    return result


@dataclass(frozen=True)
class Timescale(Report):
    """The EMA timescale of decoupled weight decay: θ averages roughly the last τ updates.

    ``iterations`` = 1/(η·λ) steps; ``epochs`` = iterations / steps per epoch when
    ``dataset_size`` N and ``batch_size`` B are known, else ``None``. An epoch is one pass over
    the data: ⌈N/B⌉ optimizer steps (a DataLoader's ``len``: the last, short batch is a step too),
    ⌊N/B⌋ with ``drop_last``. Infinite when λ = 0 (no forgetting).
    """

    iterations: float
    epochs: float | None
    lr: float
    weight_decay: float
    dataset_size: int | None = None
    batch_size: int | None = None
    steps_per_epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "epochs": self.epochs, "lr": self.lr, "weight_decay": self.weight_decay,
                "dataset_size": self.dataset_size, "batch_size": self.batch_size,
                "steps_per_epoch": self.steps_per_epoch}

    def __str__(self) -> str:
        if math.isinf(self.iterations):
            return "τ = ∞ (no weight decay: the weights never forget)"
        text = f"τ = 1/(η·λ) = {self.iterations:,.4g} steps"
        if self.epochs is not None:
            text += f" = {self.epochs:,.4g} epochs (N = {self.dataset_size:,}, B = {self.batch_size:,}"
            exact = self.dataset_size is not None and self.batch_size is not None and \
                self.dataset_size % self.batch_size == 0
            steps = f"{self.steps_per_epoch:,} step{'s' if self.steps_per_epoch != 1 else ''}"
            text += ")" if exact else f", {steps} per epoch)"
        return text

    def _repr_html_(self) -> str:
        """The timescale line, with the λ and LR it comes from, for notebooks."""
        source = f"torch-AdamW λ = {self.weight_decay:g} at lr = {self.lr:g}"
        return html_report(Cell(str(self), "muted" if math.isinf(self.iterations) else None), html_lines([source]))


def _size(name: str, value: Any) -> int | None:
    if value is None:
        return None
    return check_int(value, name, minimum=1, what="a whole number")


def steps_per_epoch(dataset_size: int, batch_size: int, *, drop_last: bool = False) -> int:
    """Optimizer steps in one pass over ``dataset_size`` examples: ⌈N/B⌉, or ⌊N/B⌋ with ``drop_last``.

    >>> steps_per_epoch(50_000, 128), steps_per_epoch(50_000, 128, drop_last=True), steps_per_epoch(10, 64)
    (391, 390, 1)
    """
    n, b = check_int(dataset_size, "dataset_size", minimum=1), check_int(batch_size, "batch_size", minimum=1)
    if not isinstance(drop_last, bool):
        raise DecayError(f"drop_last must be True or False, got {drop_last!r}")
    if drop_last and b > n:
        raise DecayError(f"batch_size={b} > dataset_size={n} with drop_last=True: every batch is dropped and an "
                         "epoch has no step; use drop_last=False or a batch_size <= dataset_size")
    return n // b if drop_last else -(-n // b)


def _epoch_steps(dataset_size: Any, batch_size: Any, drop_last: bool) -> tuple[int | None, int | None, int | None]:
    n, b = _size("dataset_size", dataset_size), _size("batch_size", batch_size)
    if n is None or b is None:
        return n, b, None
    return n, b, steps_per_epoch(n, b, drop_last=drop_last)


def timescale(
    lr: float,
    weight_decay: float,
    *,
    dataset_size: int | None = None,
    batch_size: int | None = None,
    drop_last: bool = False,
) -> Timescale:
    """τ_iter = 1/(η·λ) steps and τ_epoch = τ_iter/⌈N/B⌉ for a ``lr_coupled`` (torch AdamW) λ.

    Wang & Aitchison (2024): AdamW's weights are an EMA of −u/λ with this timescale; keep τ_epoch
    fixed to carry λ across model and data size. Convert other conventions first with :func:`convert`.
    With ``drop_last`` an epoch is ⌊N/B⌋ steps. Warns when η·λ ≥ 1: each step multiplies θ by
    1 − η·λ ≤ 0, an overshoot, not an average.

    >>> print(timescale(1e-3, 0.1, dataset_size=50_000, batch_size=100))
    τ = 1/(η·λ) = 1e+04 steps = 20 epochs (N = 50,000, B = 100)
    """
    eta = _positive("lr", lr)
    lam = check_number(weight_decay, "weight_decay", strict_type=True)
    if (dataset_size is None) != (batch_size is None):
        raise DecayError("give both dataset_size and batch_size to get τ in epochs, or neither")
    n, b, per_epoch = _epoch_steps(dataset_size, batch_size, drop_last)
    rate = eta * lam
    if lam > 0 and not (0 < rate < math.inf and math.isfinite(1.0 / rate)):
        raise DecayError(f"τ = 1/(lr·weight_decay) is not a finite number of steps for lr={eta!r}, weight_decay={lam!r} "
                         f"(lr·weight_decay = {rate!r}); check their units")
    if rate >= 1:
        warnings.warn(f"lr·weight_decay = {rate:.3g} >= 1: each step multiplies θ by 1 − lr·λ = {1 - rate:.3g} <= 0 "
                      "(the decay overshoots and θ changes sign), so τ is no averaging horizon; lower lr or "
                      "weight_decay", DecayWarning, stacklevel=2)
    iterations = math.inf if lam == 0 else 1.0 / rate
    epochs = None if per_epoch is None else iterations / per_epoch
    return Timescale(iterations, epochs, eta, lam, n, b, per_epoch)


def weight_decay_for_timescale(
    lr: float,
    *,
    iterations: float | None = None,
    epochs: float | None = None,
    dataset_size: int | None = None,
    batch_size: int | None = None,
    drop_last: bool = False,
) -> float:
    """The ``lr_coupled`` λ whose timescale is ``iterations`` steps, or ``epochs`` epochs of ⌈N/B⌉ steps.

    λ = 1/(η·τ_iter), τ_iter = τ_epoch·⌈N/B⌉ (⌊N/B⌋ with ``drop_last``). A timescale below one
    step (λ·η > 1, a decay that flips θ's sign) or a λ that overflows is refused.

    >>> weight_decay_for_timescale(1e-3, epochs=20, dataset_size=50_000, batch_size=100)
    0.1
    """
    eta = _positive("lr", lr)
    if (iterations is None) == (epochs is None):
        raise DecayError("give exactly one of iterations= (τ in steps) or epochs= (τ in epochs)")
    if epochs is not None:
        per_epoch = _epoch_steps(dataset_size, batch_size, drop_last)[2]
        if per_epoch is None:
            raise DecayError("a timescale in epochs needs dataset_size= and batch_size=")
        iterations = _positive("epochs", epochs) * per_epoch
    tau = _positive("iterations", iterations)
    if tau < 1:
        raise DecayError(f"the timescale must be at least 1 step, got {tau!r} steps: below that 1 − lr·λ < 0 and "
                         "the decay flips θ's sign every step; ask for a longer timescale")
    lam = 1.0 / (eta * tau)
    if not math.isfinite(lam) or lam < sys.float_info.min:
        raise DecayError(f"λ = 1/(lr·τ) is not a usable number for lr={eta!r} and τ={tau!r} steps "
                         f"(lr·τ = {eta * tau!r}); check their units")
    return lam
