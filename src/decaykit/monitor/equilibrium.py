"""The decay each param group really gets per step, and where its tensors should settle.

Every decayed tensor shrinks by a rate r per step: θ ← θ(1 − r) − η·u. Its timescale is τ = 1/r
steps (Wang & Aitchison 2024); r is read from what the optimizer or the engine really applies
(:func:`decaykit.probe.expectations.expectations`, which asks :class:`decaykit.WeightDecay`'s
``expected_decay()`` and the registry :mod:`decaykit.optimizers`):

=====================================  ==========================================================
decay                                  effective rate r
=====================================  ==========================================================
decoupled (AdamW, the engine's modes)  r as applied: η_t·λ, (η_t/η_max)·λ, (η_t²/η_max)·λ
coupled L2 on SGD                      η_t·λ·S, S = Σ_k c_k the momentum's total weight on one
                                       gradient (1/(1 − α) for plain momentum; AdamW paper, Prop. 1)
coupled L2 on Adam-like optimizers     per coordinate η_t·λ/(√v̂ + ε); τ from η_t·λ/RMS(√v̂)
                                       (Prop. 2, the ``adam_l2`` convention of :mod:`decaykit.convert`);
                                       RAdam's times its rectification r_t, η_t·λ while ρ_t ≤ 5
=====================================  ==========================================================

Rotational equilibrium (Kosson et al. 2024). A scale-invariant weight (a layer followed by a
normalisation) gets gradients orthogonal to itself; the update grows ‖θ‖, the decay shrinks it,
and the two balance. With an update η·Σ_k c_k·g_{t−k} of independent gradients, S = Σ c_k and
Q = Σ c_k², the balance is ‖θ‖² = η²‖ĝ‖²S²/(2r) and the angle per step √(2r·Q/S²):

- Adam/AdamW (ĝ = g/√v̂, ‖ĝ‖² ≈ C the tensor's real coordinates: its size, twice that for a
  complex tensor, which torch's Adam normalises as its real view; c_k = (1 − β1)β1^k):
  ‖θ‖ = η√(C/(2r)) = √(ηC/(2λ)) and angle √(2r(1 − β1)/(1 + β1)) = √(2ηλ(1 − β1)/(1 + β1));
- SGD with momentum α (c_k = α^k, ‖g‖ = G/‖θ‖ with G = ‖g‖·‖θ‖ scale-free):
  ‖θ‖ = (η²G²S²/(2r))^¼ and angle √(2r(1 − α)/(1 + α)) = √(2ηλ/(1 + α)) with L2 decay.

They are leading order in r and hold for scale-invariant tensors; elsewhere they are a yardstick.
No prediction is made for other optimizers, AMSGrad, cautious decay or Adam with L2 decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from decaykit.engine.checks import PEAK_MODES, scheduler_peak
from decaykit.optimizers import info
from decaykit.probe.expectations import expectations

__all__ = ["GroupDecay", "adaptive_denominator", "group_decays", "known_peak_lr", "lr_power", "momentum_fill",
           "momentum_sums", "predicted_angle", "predicted_norm", "real_view", "rectification"]


@dataclass(frozen=True)
class GroupDecay:
    """How one param group is decayed at the current step.

    ``kind``: ``decoupled``, ``coupled``, ``cautious``, ``unknown`` or ``none``; ``rate``: the
    per-step shrink r, or None where it is per coordinate (``adaptive``: coupled L2 behind √v̂)
    or unknown; ``family``: ``"adam"`` or ``"sgd"`` where an equilibrium is predicted, else None;
    ``sums``: (S, Q) of the update's momentum weights; ``lr_power``: r ∝ η_t^lr_power; ``peak_lr``:
    an η_max that bounds the LR of every step (:func:`known_peak_lr`), or None where it is not known.
    """

    kind: str
    rate: float | None
    weight_decay: float
    lr: float
    peak_lr: float | None
    family: str | None = None
    sums: tuple[float, float] = (1.0, 1.0)
    adaptive: bool = False
    lr_power: int = 1
    fused: bool = False  # the decay is computed in the optimizer's fused kernel with the update, rounded once with it

    @property
    def decays(self) -> bool:
        return self.kind != "none"

    def peak_rate(self) -> float | None:
        """r at the known peak LR: a bound on every step's r at this λ; None where the peak is not known, r is
        per coordinate, or the LR is 0 (or already above the "peak", which then bounds nothing)."""
        if self.rate is None or self.peak_lr is None or not self.lr > 0 or self.lr > self.peak_lr * (1 + 1e-6):
            return None
        return self.rate * (self.peak_lr / self.lr) ** self.lr_power


def momentum_sums(momentum: float, dampening: float = 0.0, nesterov: bool = False) -> tuple[float, float]:
    """(S, Q) = (Σ c_k, Σ c_k²) of torch SGD's weights c_k on the gradient of k steps ago.

    buf ← α·buf + (1 − d)·g; the step is buf, or g + α·buf with Nesterov. Plain momentum gives
    S = 1/(1 − α), Q = 1/(1 − α²).

    >>> momentum_sums(0.0)
    (1.0, 1.0)
    >>> [round(v, 6) for v in momentum_sums(0.9)]
    [10.0, 5.263158]
    """
    a, b = momentum, 1.0 - dampening
    if a == 0:
        return 1.0, 1.0
    if not nesterov:  # c_k = b·α^k
        return b / (1 - a), b * b / (1 - a * a)
    # c_0 = 1 + α·b, c_k = b·α^(k+1) for k ≥ 1
    c0 = 1 + a * b
    return c0 + b * a * a / (1 - a), c0 * c0 + b * b * a**4 / (1 - a * a)


def momentum_fill(momentum: float, dampening: float, nesterov: bool, steps: int) -> float:
    """The share of its steady-state decay that torch SGD's step carries when its momentum buffer is ``steps``
    steps old (1 = just created: it holds one gradient, undamped), for L2 decay through the momentum.

    The buffer's weight on λθ after n steps is α^(n−1) + (1 − d)(1 − α^(n−1))/(1 − α) (θ taken as constant over
    them), (1 − d)/(1 − α) in the steady state; Nesterov's step adds 1 + α times it.

    >>> round(momentum_fill(0.9, 0.0, False, 1), 6), round(momentum_fill(0.9, 0.0, False, 10**6), 6)
    (0.1, 1.0)
    """
    a, b = momentum, 1.0 - dampening
    if a == 0:
        return 1.0
    held = a ** (steps - 1) + b * (1 - a ** (steps - 1)) / (1 - a)
    steady = b / (1 - a)
    if nesterov:
        held, steady = 1 + a * held, 1 + a * steady
    return held / steady


def _inner(optimizer: Any) -> Any:
    """The optimizer whose kernel makes the update: the engine's inner one, or itself."""
    from decaykit.engine.weight_decay import WeightDecay

    return optimizer.optimizer if isinstance(optimizer, WeightDecay) else optimizer


def lr_power(optimizer: Any) -> int:
    """p of r ∝ η_t^p: 2 for the engine's ``corrected`` mode (η_t²/η_max), 1 for every other decay."""
    return 2 if getattr(optimizer, "mode", None) == "corrected" else 1


def known_peak_lr(optimizer: Any, index: int, group: dict[str, Any]) -> float | None:
    """An η_max that no step's LR exceeds, where one is known: ``WeightDecay(max_lr=...)``, the group's
    ``max_lr`` (OneCycleLR's peak), or the η_max of an engine mode that divides by it (the engine refuses a
    step above it). None otherwise: a scheduler's ``initial_lr`` is its base LR, which CyclicLR, a LambdaLR
    factor above 1 or an LR set by hand each step (nanoGPT's warm-up) all exceed."""
    from decaykit.engine.weight_decay import WeightDecay

    engine = isinstance(optimizer, WeightDecay)
    given = optimizer._given_max_lr(index) if engine else None  # the engine's own η_max, as the user gave it
    if given is not None:
        return given
    found = scheduler_peak(group)
    if found is not None and found[0] == "max_lr":
        return found[1]
    if engine and optimizer.mode in PEAK_MODES and index < len(optimizer._max_lrs):
        return optimizer._max_lrs[index]
    return None


def _family(name: str | None, group: dict[str, Any], kind: str) -> tuple[str | None, tuple[float, float]]:
    """Which equilibrium applies to this optimizer's update, and its momentum sums."""
    if name in ("Adam", "AdamW") and kind == "decoupled" and not group.get("amsgrad", False):
        beta1 = float(group["betas"][0])
        return "adam", (1.0, (1 - beta1) / (1 + beta1))
    if name == "SGD" and kind in ("decoupled", "coupled"):
        return "sgd", momentum_sums(float(group.get("momentum", 0.0)), float(group.get("dampening", 0.0)),
                                    bool(group.get("nesterov", False)))
    return None, (1.0, 1.0)


def group_decays(optimizer: Any) -> list[GroupDecay]:
    """One :class:`GroupDecay` per param group, for the step about to be taken."""
    inner = _inner(optimizer)
    entry = info(inner)
    name = entry.name if entry is not None and entry.module == "torch.optim" else None
    power = lr_power(optimizer)
    out = []
    for i, (group, expect) in enumerate(zip(optimizer.param_groups, expectations(optimizer))):
        kind = expect.kind
        lr, peak = float(expect.lr), known_peak_lr(optimizer, i, group)
        raw = expect.rate
        if isinstance(raw, Tensor):  # per-member λ of stacked models: no one rate per tensor
            out.append(GroupDecay(kind if kind == "none" else "unknown", None, 0.0, lr, peak))
            continue
        lam = float(expect.weight_decay) if not isinstance(expect.weight_decay, Tensor) else 0.0
        family, sums = _family(name, group, kind)
        adaptive = False
        rate: float | None
        if kind in ("decoupled", "cautious"):
            rate = float(raw)
        elif kind == "coupled" and family == "sgd":
            rate = lr * float(raw) * sums[0]
        elif kind == "coupled" and entry is not None and entry.adaptive:
            rate, adaptive = None, True
        else:
            rate = None
        out.append(GroupDecay(kind, rate, lam if kind != "coupled" else float(raw), lr, peak, family, sums,
                              adaptive, power, expect.fused))
    return out


def real_view(x: Tensor) -> Tensor:
    """A complex tensor as the real coordinates torch's optimizers update (``view_as_real``); others as they are."""
    return torch.view_as_real(x) if x.is_complex() else x


def adaptive_denominator(optimizer: Any, param: Tensor, group: dict[str, Any]) -> Tensor | None:
    """√v̂ + ε of an Adam-like optimizer's state for ``param`` (after its step), per real coordinate, or None.

    With ``amsgrad`` the step divides by the running maximum of v (``max_exp_avg_sq``), not v itself.
    """
    state = _inner(optimizer).state.get(param, {})
    v = state.get("max_exp_avg_sq" if group.get("amsgrad") else "exp_avg_sq")
    if v is None or "step" not in state:
        return None
    v = real_view(v)  # a complex tensor's state is complex too, each part the moment of one real coordinate
    beta2 = float(group.get("betas", (0.9, 0.999))[1])
    step = float(state["step"])
    correction = 1 - beta2**step if step > 0 else 1.0
    return (v / correction).sqrt().add_(float(group.get("eps", 1e-8)))


def rectification(optimizer: Any, param: Tensor, group: dict[str, Any]) -> float:
    """The factor torch's RAdam puts on its adaptive step at the step just taken, r_t (Liu et al. 2020), 0.0 where
    that step had no adaptive denominator (ρ_t ≤ 5: θ −= η·m̂); 1.0 for every other optimizer. Its coupled L2 rate
    η·λ/RMS(√v̂) carries it: r_t is 0.026 at the 6th step with β2 = 0.999, 0.65 at the 1000th."""
    inner = _inner(optimizer)
    if type(inner) is not torch.optim.RAdam:
        return 1.0
    step = float(inner.state.get(param, {}).get("step", 0))
    beta2 = float(group.get("betas", (0.9, 0.999))[1])
    if step <= 0 or not 0 < beta2 < 1:
        return 1.0
    rho_inf = 2 / (1 - beta2) - 1
    rho = rho_inf - 2 * step * beta2**step / (1 - beta2**step)
    if rho <= 5:
        return 0.0
    return math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))


def predicted_angle(decay: GroupDecay, rate: float | None) -> float | None:
    """√(2r·Q/S²): the angle per step at equilibrium, or None where no prediction applies."""
    if decay.family is None or rate is None or rate <= 0:
        return None
    s, q = decay.sums
    return math.sqrt(2 * rate * q / (s * s))


def predicted_norm(decay: GroupDecay, rate: float | None, coordinates: int, grad_norm: float,
                   norm: float) -> float | None:
    """‖θ‖ at equilibrium: η√(C/(2r)) for Adam, C the tensor's real ``coordinates`` (2·numel for a complex
    tensor), and (η²G²S²/(2r))^¼ for SGD (G = ‖g‖·‖θ‖)."""
    if decay.family is None or rate is None or rate <= 0:
        return None
    if decay.family == "adam":
        return decay.lr * math.sqrt(coordinates / (2 * rate))
    g = grad_norm * norm
    if not math.isfinite(g) or g == 0:
        return None
    return (decay.lr**2 * g * g * decay.sums[0] ** 2 / (2 * rate)) ** 0.25

