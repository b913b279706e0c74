"""The one validator of numbers: every argument that must be a finite number, a count or rates.

One message shape everywhere, naming the argument and the value:

>>> check_number(-1.0, "weight_decay")
Traceback (most recent call last):
...
decaykit.errors.DecayError: weight_decay must be a finite number >= 0, got -1.0
>>> check_number(0, "lr", allow_zero=False)
Traceback (most recent call last):
...
decaykit.errors.DecayError: lr must be a finite number > 0, got 0.0
>>> check_int(0, "epochs", minimum=1)
Traceback (most recent call last):
...
decaykit.errors.DecayError: epochs must be an integer >= 1, got 0
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from decaykit.errors import DecayError

__all__ = ["check_int", "check_number", "check_rates"]


def check_number(
    value: Any, argument: str, *, allow_zero: bool = True, upper: float | None = None, strict_type: bool = False
) -> float:
    """A finite real number >= 0 (> 0 without ``allow_zero``, <= ``upper`` if given), as a float.

    ``strict_type`` refuses anything that is not a real number already (a string, a one-element
    tensor); otherwise whatever ``float()`` takes is read, booleans and strings excepted.
    """
    bound = ">= 0" if allow_zero else "> 0"
    refused = DecayError(f"{argument} must be a finite number {bound}, got {value!r} ({type(value).__name__})")
    if isinstance(value, (bool, str)) or (strict_type and not isinstance(value, numbers.Real)):
        raise refused
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise refused from None
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise DecayError(f"{argument} must be a finite number {bound}, got {number!r}")
    if upper is not None and number > upper:
        raise DecayError(f"{argument} must be <= {upper}, got {number!r}")
    return number


def check_int(value: Any, argument: str, *, minimum: int = 0, what: str = "an integer") -> int:
    """A Python integer >= ``minimum`` (booleans refused); ``what`` names the unit in the message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise DecayError(f"{argument} must be {what} >= {minimum}, got {value!r}")
    return int(value)


def check_rates(value: torch.Tensor, argument: str) -> torch.Tensor:
    """A 1-D real tensor of finite numbers >= 0 (one per stacked member), as float64 on the CPU."""
    if value.dim() != 1 or value.dtype == torch.bool or value.is_complex():
        raise DecayError(
            f"{argument} must be a float or a 1-D real tensor with one value per stacked member, got a "
            f"{value.dtype} tensor of shape {tuple(value.shape)}"
        )
    values = value.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
        raise DecayError(f"{argument} must hold finite numbers >= 0, got [{', '.join(f'{v:g}' for v in values.tolist())}]")
    return values
