"""Rotational equilibrium (Kosson et al. 2024) on a scale-invariant toy, to 3 significant digits.

A weight w ∈ R^C that the loss only sees through w/‖w‖ (as a layer followed by a normalisation)
gets gradients orthogonal to w with norm ∝ 1/‖w‖. The updates make ‖w‖ grow, the decay shrinks
it, and the two balance at a norm and an angular update per step that depend only on η, λ, C and
the momentum; which is why they catch a decay applied in the wrong place or by the wrong amount:

- AdamW (β1): ‖w‖ = √(ηC/(2λ)), angular update √(2ηλ(1 − β1)/(1 + β1));
- SGD with momentum α and L2 decay (torch's ``weight_decay``): angular update √(2ηλ/(1 + α)),
  ‖w‖ = (ηC/(2λ(1 − α)))^¼.

The toy: loss = Σ x_t·w/‖w‖ with fresh Rademacher signs x_t ∈ {±1}^C every step (seeded), so
Adam's second moment is nearly exact and its noise does not bias the result. The formulas are
leading order in ηλ; the corrections are about ηλ·β1/(1 − β1), so β1 = 0.5 and ηλ = 1e-3 keep
them near 4e-4. β2 = 0.99 lets v̂ follow ‖w‖ fast enough that the norm settles in a few thousand
steps (with 0.999 the coupled ‖w‖–v̂ dynamics relax 5x slower). The run starts 1.5x away from
equilibrium and averages ‖w‖² and the angle over a window after it has settled. Measured in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from decaykit import WeightDecay, convert

C = 16384
STEPS, WINDOW = 7000, 3000
TOLERANCE = 1e-3  # 3 significant digits: |measured/predicted − 1| < 0.001


pytestmark = pytest.mark.usefixtures("one_thread")


def equilibrium(make_opt, start_norms: list[float], *, seed: int = 0, steps: int = STEPS, window: int = WINDOW):
    """Train the toy; return per row (one row per stacked member) the RMS ‖w‖ and mean angle per step."""
    g = torch.Generator().manual_seed(seed)
    k = len(start_norms)
    w0 = torch.randn(k, C, generator=g, dtype=torch.float64)
    w0 *= torch.tensor(start_norms, dtype=torch.float64).unsqueeze(1) / w0.norm(dim=1, keepdim=True)
    w = torch.nn.Parameter(w0)
    opt = make_opt(w)
    norm2 = torch.zeros(k, dtype=torch.float64)
    angle = torch.zeros(k, dtype=torch.float64)
    for t in range(steps):
        x = torch.randint(0, 2, (k, C), generator=g, dtype=torch.float64).mul_(2).sub_(1)
        opt.zero_grad()
        unit = w / w.norm(dim=1, keepdim=True)
        (x * unit).sum().backward()
        opt.step()
        if t >= steps - window:
            with torch.no_grad():
                n = w.norm(dim=1)
                norm2 += n**2
                chord = (w / n.unsqueeze(1) - unit.detach()).norm(dim=1)
                angle += 2 * torch.asin(chord / 2)
    return (norm2 / window).sqrt().tolist(), (angle / window).tolist()


def adamw_norm(lr, lam):
    return math.sqrt(lr * C / (2 * lam))


def adamw_angle(lr, lam, beta1):
    return math.sqrt(2 * lr * lam * (1 - beta1) / (1 + beta1))


def assert_3_digits(measured, predicted):
    assert abs(measured / predicted - 1) < TOLERANCE, f"measured {measured:.5g}, predicted {predicted:.5g}"


LR, LAM, BETAS = 1e-3, 1.0, (0.5, 0.99)


@pytest.mark.parametrize(
    "path",
    [
        "adamw_fused_lr_coupled",  # λ reaches AdamW's own fused kernel
        "adam_lr_independent",  # Adam's flag, λ converted to the Composer convention
        "per_member_extra_pass",  # a (K,) tensor λ: the engine's own foreach pass, two members at once
    ],
)
def test_adamw_settles_at_the_predicted_norm_and_angular_update(path):
    if path == "adamw_fused_lr_coupled":
        lams = [LAM]
        make = lambda w: WeightDecay(torch.optim.AdamW([w], lr=LR, betas=BETAS, weight_decay=LAM, fused=True))  # noqa: E731
    elif path == "adam_lr_independent":
        lams = [LAM]
        lam_indep = convert(LAM, from_="lr_coupled", to="lr_independent", max_lr=LR)
        make = lambda w: WeightDecay(torch.optim.Adam([w], lr=LR, betas=BETAS, weight_decay=lam_indep),  # noqa: E731
                                     mode="lr_independent")
    else:
        lams = [LAM, LAM / 2]
        make = lambda w: WeightDecay(  # noqa: E731
            torch.optim.AdamW([{"params": [w], "weight_decay": torch.tensor(lams)}], lr=LR, betas=BETAS, foreach=True)
        )
    # member 0 must settle from 1.5x; member 1 (relaxing 2x slower) must stay at its own equilibrium,
    # which it would leave within a few thousand steps if it were given member 0's λ
    starts = [1.5 * adamw_norm(LR, lams[0]), adamw_norm(LR, lams[-1])]
    norms, angles = equilibrium(make, starts[: len(lams)])
    for lam, norm, angle in zip(lams, norms, angles):
        assert_3_digits(norm, adamw_norm(LR, lam))
        assert_3_digits(angle, adamw_angle(LR, lam, BETAS[0]))


def test_sgd_with_momentum_and_l2_settles_at_the_predicted_angular_update():
    lr, lam, alpha = 1e-2, 0.1, 0.9
    make = lambda w: WeightDecay(torch.optim.SGD([w], lr=lr, momentum=alpha, weight_decay=lam), mode="coupled_l2")  # noqa: E731
    predicted_norm = (lr * C / (2 * lam * (1 - alpha))) ** 0.25
    (norm,), (angle,) = equilibrium(make, [1.5 * predicted_norm], steps=5000)
    assert_3_digits(angle, math.sqrt(2 * lr * lam / (1 + alpha)))
    assert_3_digits(norm, predicted_norm)


def test_the_toy_tells_decay_in_the_wrong_place_apart():
    """Adam with the decay as an L2 gradient (through √v̂) does not settle at AdamW's equilibrium."""
    make = lambda w: WeightDecay(torch.optim.Adam([w], lr=LR, betas=BETAS, weight_decay=LAM), mode="coupled_l2")  # noqa: E731
    (norm,), (angle,) = equilibrium(make, [adamw_norm(LR, LAM)], steps=3000, window=1000)
    assert abs(norm / adamw_norm(LR, LAM) - 1) > 0.05
    assert abs(angle / adamw_angle(LR, LAM, BETAS[0]) - 1) > 0.05
