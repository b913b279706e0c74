"""A decay smaller than the parameter's dtype can hold: the step rounds it away.

A float with spacing ulp(x) = 2^⌊log2|x|⌋·eps between neighbouring values returns θ·(1 − r) as θ
when r·|θ| is below half that spacing, a fraction eps/4 to eps/2 of |θ|: for every value when
r < eps/4, for none when r ≥ eps/2, in between for values in the low part of their power-of-2
range, which the decay then carries down until they stall there too. bfloat16 has eps = 2^-7, so
AdamW at lr 1e-3, λ 0.05 (r = 5e-5 < eps/4 ≈ 0.002) leaves every bfloat16 weight as it is, forever.

The probe measures it rather than assume it: ``unmoved`` is the share of the tensor (weighted by
θ²) that the decayed twin left exactly where the twin without decay landed, and ``rounds`` the
share for which rounding θ·(1 − r) to the dtype gives θ back, the cause it names.
"""

from __future__ import annotations

import torch

__all__ = ["LOST", "NOTICED", "coupled_loss", "decoupled_loss", "rounded_away", "rounded_share", "rounding_fix",
           "rounds_every_value"]

LOST = 0.5  # more of the tensor than this left unmoved: the decay configured is not applied
NOTICED = 0.01  # more than this: partly lost, a warning


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _spacing(dtype: torch.dtype) -> str:
    eps = torch.finfo(dtype).eps
    return f"half the spacing between {_name(dtype)} values, {eps / 4:.2g} to {eps / 2:.2g} of the value"


def rounding_fix(dtype: torch.dtype) -> str:
    """What to do where a decay rounds away in ``dtype``."""
    eps = torch.finfo(dtype).eps
    if torch.finfo(dtype).bits <= 16:
        keep = (f"keep the parameters in float32 (fp32 master weights, torch.autocast(dtype=torch.{_name(dtype)}) for "
                "the compute) or use stochastic rounding")
    else:
        keep = "keep the parameters in a wider dtype"
    return f"{keep}; lr·λ above {eps / 2:.2g} would act too, but is a far larger decay"


def rounds_every_value(rate: float, dtype: torch.dtype) -> bool:
    """Whether θ·(1 − ``rate``) rounds back to θ for every value of ``dtype``: a rate below a quarter of its spacing."""
    return rate < torch.finfo(dtype).eps / 4


def rounded_share(param: torch.Tensor, rate: float) -> tuple[float, float] | None:
    """(Σθ² over the values of ``param`` for which θ·(1 − ``rate``) rounds back to θ in its dtype, Σθ² over all):
    what rounding predicts a decay apart from the update leaves unmoved; None where no value can round away (a
    rate of half the dtype's spacing or more) or there are no values to read here."""
    if (not param.is_floating_point() or param.device.type == "meta" or not param.numel() or rate <= 0
            or type(param) not in (torch.Tensor, torch.nn.Parameter) or param.layout != torch.strided):
        return None  # meta, sparse, a DTensor's shards (the probe measures those): no values to read here
    if rate >= torch.finfo(param.dtype).eps / 2:
        return None
    values = param.detach()
    # as torch's step computes it: half precision in float32, then rounded back (param.mul_(1 - lr·λ))
    work = values.float() if values.element_size() < 4 else values
    kept = (work * (1 - rate)).to(values.dtype) == values
    squares = values.double().square()
    return float(squares[kept & (values != 0)].sum()), float(squares.sum())


def rounded_away(param: torch.Tensor, rate: float) -> tuple[bool, str] | None:
    """:func:`decoupled_loss` of a decay applied apart from the update, as rounding predicts it from ``param``'s
    values (the audit and the monitor; the probe measures it): (whether it can still agree, note), or None."""
    share = rounded_share(param, rate)
    return None if share is None else decoupled_loss(share[0], *share, rate, param.dtype)


def decoupled_loss(unmoved: float, rounds: float, acting: float, rate: float,
                   dtype: torch.dtype, *, fused: bool = False) -> tuple[bool, str] | None:
    """(whether the entry can still agree, note) when rounding swallows θ·(1 − rate); None when it does not.

    ``unmoved``, ``rounds`` and ``acting`` are Σθ² over the values the decay should move and was
    measured to leave unmoved, that rounding predicts to come back unchanged, and in all. ``fused``: the
    optimizer computes the decay with the update in one kernel and rounds once (``fused=True`` AdamW),
    so with real gradients the decay still tips some roundings: a warning, not a disagreement.
    """
    if acting <= 0 or rate <= 0:
        return None
    lost, predicted = unmoved / acting, rounds / acting
    if lost <= NOTICED or predicted <= NOTICED:  # moved, or unmoved for a reason other than rounding
        return None
    name = _name(dtype)
    where = "every value of this tensor" if lost >= 0.995 else f"{lost:.0%} of this tensor (by θ²)"
    later = (", on every step" if rounds_every_value(rate, dtype) else
             ", and the rest stalls once the decay has carried it to the low end of its power-of-2 range")
    cause = (f"θ·(1 − {rate:.3g}) rounds back to θ in {name} for {where}: a change below {_spacing(dtype)}, "
             f"is rounded away{later}")
    if fused and lost > LOST:
        return True, (f"warning: the decay is mostly lost to rounding: {cause} when the step has no update; this "
                      "optimizer's fused kernel rounds the decay together with the update, so with real gradients it "
                      f"acts only where it tips that rounding; {rounding_fix(dtype)}")
    if lost > LOST:
        return False, f"the decay configured is not applied: {cause}; {rounding_fix(dtype)}"
    return True, f"warning: the decay is partly lost to rounding: {cause}; {rounding_fix(dtype)}"


def coupled_loss(unmoved: float, total: float, weight_decay: str, dtype: torch.dtype) -> str | None:
    """A warning when adding λθ to a zero gradient changed no value (coupled L2 rounded away), else None.

    Not a disagreement: with real gradients λθ joins a larger update and still tips its rounding.
    """
    if total <= 0 or unmoved / total < 0.995:
        return None
    name = _name(dtype)
    return (f"warning: adding λθ (λ = {weight_decay}) to a zero gradient changes no value of this {name} tensor: "
            f"the change is rounded away in {name} (below {_spacing(dtype)}, or in the optimizer's buffers). With "
            f"real gradients it acts only through the rounding of the whole update, so much of it is lost; "
            f"{rounding_fix(dtype)}")
