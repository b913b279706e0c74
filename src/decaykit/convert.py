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
``sgd_l2``          SGD(weight_decay=λ, momentum=μ): ≈ θ(1 − η_t·λ/(1−μ))  Prop. 1 of the AdamW paper  μ = 0: yes
``adam_l2``         Adam(weight_decay=λ): ≈ θ(1 − η_t·λ/RMS(g))          Prop. 2: no exact match    no
==================  ==================================================  =========================  ==========

``convert`` matches r at the LR ``lr`` (default: ``max_lr``, the peak), so λ_to = λ_from·c_from/c_to;
η and η_max are needed only where they do not cancel. ``timescale`` reads a ``lr_coupled`` λ as
the EMA timescale τ = 1/(η·λ) steps (Wang & Aitchison 2024): AdamW's weights average the last τ
updates, and the best τ in epochs, τ_epoch = B/(η·λ·N), stays roughly constant across model and
data size.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from decaykit import optimizers
from decaykit._render import Report
from decaykit._validate import check_int, check_number, check_rates
from decaykit.errors import DecayError

__all__ = [
    "ALIASES",
    "CONVENTIONS",
    "Convention",
    "Timescale",
    "convert",
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
        Convention("sgd_l2", "g ← g + λθ in SGD: θ(1 − η_t·λ/(1 − momentum)) per step", "L2 penalty; AdamW paper Prop. 1", 1, 0),
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


def canonical_convention(name: str) -> str:
    key = str(name).lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in CONVENTIONS:
        known = ", ".join([*CONVENTIONS, *ALIASES])
        raise DecayError(f"unknown weight-decay convention {name!r}; known: {known}")
    return key


def _positive(name: str, value: Any) -> float:
    return check_number(value, name, allow_zero=False, strict_type=True)


def _coefficient(conv: str, *, steps: Any, momentum: Any, grad_rms: Any) -> float:
    """The constant k of r = η^a·η_max^b·k·λ."""
    if conv == "normalized":
        if steps is None:
            raise DecayError("convention 'normalized' needs steps= (the total number of optimizer steps, B·T/b)")
        return 1.0 / math.sqrt(_positive("steps", steps))
    if conv == "sgd_l2":
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0 <= momentum < 1:
            raise DecayError(f"momentum must be a number in [0, 1), got {momentum!r}")
        return 1.0 / (1.0 - momentum)
    if conv == "adam_l2":
        if grad_rms is None:
            raise DecayError(
                "convention 'adam_l2' needs grad_rms=: no L2 coefficient reproduces decoupled decay in Adam "
                "(AdamW paper, Prop. 2), but λθ/√v̂ decays at about η·λ/RMS(g); pass the gradients' RMS "
                "(√ of the mean of Adam's exp_avg_sq)"
            )
        return 1.0 / _positive("grad_rms", grad_rms)
    return 1.0


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
) -> float | Tensor:
    """The λ in convention ``to`` that decays as much per step as ``weight_decay`` does in ``from_``.

    Conventions (and aliases): ``lr_coupled`` (adamw, torch), ``lr_independent`` (composer,
    independent), ``paper``, ``normalized``, ``corrected`` (adamc), ``sgd_l2`` (sgd), ``adam_l2``
    (adam). Rates are matched at LR ``lr`` (default ``max_lr``); ``steps`` is the run's total step
    count (``normalized``), ``momentum`` SGD's (``sgd_l2``), ``grad_rms`` the gradients' RMS
    (``adam_l2``, approximate).

    >>> convert(0.1, from_="lr_coupled", to="lr_independent", max_lr=1e-3)  # λ_indep = η_max·λ_torch
    0.0001
    >>> convert(1e-4, from_="composer", to="adamw", max_lr=1e-3)
    0.1
    """
    src, dst = canonical_convention(from_), canonical_convention(to)
    if isinstance(weight_decay, Tensor):
        check_rates(weight_decay.flatten(), "weight_decay")
    else:
        check_number(weight_decay, "weight_decay", strict_type=True)
    a, b = CONVENTIONS[src], CONVENTIONS[dst]
    factor = _coefficient(src, steps=steps, momentum=momentum, grad_rms=grad_rms) / _coefficient(
        dst, steps=steps, momentum=momentum, grad_rms=grad_rms
    )
    lr_power, max_power = a.lr_power - b.lr_power, a.max_lr_power - b.max_lr_power
    if max_power:
        if max_lr is None:
            raise DecayError(
                f"converting {src} -> {dst} needs max_lr= (the peak LR η_max, e.g. the optimizer's initial lr)"
            )
        factor *= _positive("max_lr", max_lr) ** max_power
    if lr_power:
        at = lr if lr is not None else max_lr
        if at is None:
            raise DecayError(f"converting {src} -> {dst} needs lr= (the LR to match the decay at) or max_lr=")
        factor *= _positive("lr", at) ** lr_power
    result = weight_decay * factor
    return result if isinstance(result, Tensor) else float(result)


@dataclass(frozen=True)
class Timescale(Report):
    """The EMA timescale of decoupled weight decay: θ averages roughly the last τ updates.

    ``iterations`` = 1/(η·λ) steps; ``epochs`` = B/(η·λ·N) when ``dataset_size`` N and
    ``batch_size`` B are known, else ``None``. Infinite when λ = 0 (no forgetting).
    """

    iterations: float
    epochs: float | None
    lr: float
    weight_decay: float
    dataset_size: int | None = None
    batch_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "epochs": self.epochs, "lr": self.lr, "weight_decay": self.weight_decay,
                "dataset_size": self.dataset_size, "batch_size": self.batch_size}

    def __str__(self) -> str:
        if math.isinf(self.iterations):
            return "τ = ∞ (no weight decay: the weights never forget)"
        text = f"τ = 1/(η·λ) = {self.iterations:,.4g} steps"
        if self.epochs is not None:
            text += f" = {self.epochs:,.4g} epochs (N = {self.dataset_size:,}, B = {self.batch_size:,})"
        return text


def _size(name: str, value: Any) -> int | None:
    if value is None:
        return None
    return check_int(value, name, minimum=1, what="a whole number")


def timescale(
    lr: float, weight_decay: float, *, dataset_size: int | None = None, batch_size: int | None = None
) -> Timescale:
    """τ_iter = 1/(η·λ) steps and τ_epoch = B/(η·λ·N) for a ``lr_coupled`` (torch AdamW) λ.

    Wang & Aitchison (2024): AdamW's weights are an EMA of −u/λ with this timescale; keep τ_epoch
    fixed to carry λ across model and data size. Convert other conventions first with :func:`convert`.

    >>> print(timescale(1e-3, 0.1, dataset_size=50_000, batch_size=100))
    τ = 1/(η·λ) = 1e+04 steps = 20 epochs (N = 50,000, B = 100)
    """
    eta = _positive("lr", lr)
    check_number(weight_decay, "weight_decay", strict_type=True)
    n, b = _size("dataset_size", dataset_size), _size("batch_size", batch_size)
    if (n is None) != (b is None):
        raise DecayError("give both dataset_size and batch_size to get τ in epochs, or neither")
    iterations = math.inf if weight_decay == 0 else 1.0 / (eta * weight_decay)
    epochs = None if n is None or b is None else iterations * b / n
    return Timescale(iterations, epochs, eta, float(weight_decay), n, b)


def weight_decay_for_timescale(
    lr: float,
    *,
    iterations: float | None = None,
    epochs: float | None = None,
    dataset_size: int | None = None,
    batch_size: int | None = None,
) -> float:
    """The ``lr_coupled`` λ whose timescale is ``iterations`` steps, or ``epochs`` epochs: λ = B/(η·τ_epoch·N).

    >>> weight_decay_for_timescale(1e-3, epochs=20, dataset_size=50_000, batch_size=100)
    0.1
    """
    eta = _positive("lr", lr)
    if (iterations is None) == (epochs is None):
        raise DecayError("give exactly one of iterations= (τ in steps) or epochs= (τ in epochs)")
    if epochs is not None:
        n, b = _size("dataset_size", dataset_size), _size("batch_size", batch_size)
        if n is None or b is None:
            raise DecayError("a timescale in epochs needs dataset_size= and batch_size=")
        iterations = _positive("epochs", epochs) * n / b
    return 1.0 / (eta * _positive("iterations", iterations))
