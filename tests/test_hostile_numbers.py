"""Issue 10, numbers that must be true: verify at any lr/λ, convert and timescale never silently wrong."""

from __future__ import annotations

import itertools
import math
import sys
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from decaykit import DecayError, DecayWarning
from decaykit.convert import CONVENTIONS, convert, steps_per_epoch, timescale, weight_decay_for_timescale
from decaykit.verify import CLOSED_FORMS, Closed, verify

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


def _log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(math.log10(lo), math.log10(hi)).map(lambda e: 10.0**e)


# -- verify: the tolerance scales with the values and the dtype, and stays tight ----------------------
@SETTINGS
@given(lr=_log_uniform(1e-8, 1e5), wd=_log_uniform(1e-8, 1e5), dtype=st.sampled_from(["float32", "float64"]))
def test_verify_agrees_with_torch_at_any_lr_and_lambda(lr: float, wd: float, dtype: str) -> None:
    report = verify(lr=lr, weight_decay=wd, optimizers=list(CLOSED_FORMS), dtype=dtype)
    assert report.ok, str(report).splitlines()[-1]
    for c in report.checks:
        assert c.ulps <= c.allowed and not c.overflow
        assert c.with_decay.dtype == getattr(torch, dtype)


@SETTINGS
@given(lr=_log_uniform(1e-8, 1e5), wd=_log_uniform(1e-8, 1e5), dtype=st.sampled_from(["float32", "float64"]))
def test_verify_tolerance_is_still_tight(lr: float, wd: float, dtype: str) -> None:
    # a formula off by 100 roundings of the step's own size must fail, whatever the magnitudes
    true = CLOSED_FORMS["sgd"]
    eps = torch.finfo(getattr(torch, dtype)).eps
    off = Closed(true.label, true.kind, true.rule, true.torch_class,
                 lambda t, g, lr_, wd_: true.step(t, g, lr_, wd_) + 100 * eps * true.size(t, g, lr_, wd_),
                 true.size, true.peak)
    saved, CLOSED_FORMS["sgd"] = CLOSED_FORMS["sgd"], off
    try:
        report = verify(lr=lr, weight_decay=wd, optimizers=["sgd"], dtype=dtype)
    finally:
        CLOSED_FORMS["sgd"] = saved
    assert not report.ok and "DOES NOT match" in str(report)


@pytest.mark.parametrize(("dtype", "value"), [("float32", 1e30), ("float32", 1e200), ("float64", 1e200)])
def test_verify_says_the_values_overflow(dtype: str, value: float) -> None:
    report = verify(lr=value, weight_decay=value, optimizers=list(CLOSED_FORMS), dtype=dtype)
    assert not report.ok
    assert all("overflow" in c.overflow and not c.agrees for c in report.checks)
    text = str(report)
    assert f"overflow {dtype}" in text and "DOES NOT match" not in text


def test_verify_bad_dtype_and_ulps_are_decay_errors() -> None:
    with pytest.raises(DecayError, match=r"dtype must be torch\.float64 or torch\.float32"):
        verify(dtype=torch.float16)
    with pytest.raises(DecayError, match="ulps must be a finite number > 0"):
        verify(ulps=0)


# -- convert: every result is a usable number, or a DecayError -----------------------------------------
PAIRS = list(itertools.permutations(CONVENTIONS, 2))


@SETTINGS
@given(pair=st.sampled_from(PAIRS), lam=_log_uniform(1e-8, 1e3), max_lr=_log_uniform(1e-8, 1.0),
       frac=st.floats(1e-3, 1.0), steps=st.integers(1, 10**7), momentum=st.floats(0.0, 0.99),
       grad_rms=_log_uniform(1e-8, 10.0))
def test_convert_round_trips(pair: tuple[str, str], lam: float, max_lr: float, frac: float, steps: int,
                             momentum: float, grad_rms: float) -> None:
    kw = {"lr": max_lr * frac, "max_lr": max_lr, "steps": steps, "momentum": momentum, "grad_rms": grad_rms}
    there = convert(lam, from_=pair[0], to=pair[1], **kw)
    assert math.isfinite(there) and there > 0
    assert convert(there, from_=pair[1], to=pair[0], **kw) == pytest.approx(lam, rel=1e-12)


@SETTINGS
@given(pair=st.sampled_from(PAIRS), lam=_log_uniform(1e-300, 1e300), max_lr=_log_uniform(1e-300, 1e300),
       frac=_log_uniform(1e-300, 1.0), grad_rms=_log_uniform(1e-300, 1e300), tensor=st.booleans())
def test_convert_never_returns_inf_nan_or_zero_silently(pair: tuple[str, str], lam: float, max_lr: float,
                                                        frac: float, grad_rms: float, tensor: bool) -> None:
    kw = {"lr": max_lr * frac or None, "max_lr": max_lr, "steps": 1000, "grad_rms": grad_rms}
    given_lam: float | torch.Tensor = torch.tensor([lam, 0.0], dtype=torch.float64) if tensor else lam
    try:
        out = convert(given_lam, from_=pair[0], to=pair[1], **kw)
    except DecayError as exc:
        assert "flows" in str(exc) or "must be" in str(exc)
        return
    value = float(out[0]) if isinstance(out, torch.Tensor) else out
    assert math.isfinite(value) and value >= sys.float_info.min
    if isinstance(out, torch.Tensor):
        assert float(out[1]) == 0.0  # no decay stays no decay


@pytest.mark.parametrize("pair", [("adamw", "composer"), ("adamw", "adamw"), ("sgd", "corrected")])
def test_lr_above_max_lr_and_negative_rates_are_refused(pair: tuple[str, str]) -> None:
    with pytest.raises(DecayError, match=r"lr must be <= max_lr .* got lr=0.002 > max_lr=0.001"):
        convert(0.1, from_=pair[0], to=pair[1], lr=2e-3, max_lr=1e-3)
    for name in ("lr", "max_lr"):
        with pytest.raises(DecayError, match=rf"^{name} must be a finite number > 0, got -0.001"):
            convert(0.1, from_=pair[0], to=pair[1], **{name: -1e-3})


# -- timescale: an epoch is ceil(N/B) steps, and τ is a finite number or an error ------------------------
@SETTINGS
@given(n=st.integers(1, 10**6), b=st.integers(1, 10**5), drop_last=st.booleans(), lr=_log_uniform(1e-6, 1e-1),
       lam=_log_uniform(1e-6, 1.0))
def test_timescale_epochs_count_the_dataloaders_steps(n: int, b: int, drop_last: bool, lr: float, lam: float) -> None:
    if drop_last and b > n:
        with pytest.raises(DecayError, match="drop_last=True: every batch is dropped"):
            timescale(lr, lam, dataset_size=n, batch_size=b, drop_last=drop_last)
        return
    loader = torch.utils.data.DataLoader(range(n), batch_size=b, drop_last=drop_last)  # the oracle: len()
    assert steps_per_epoch(n, b, drop_last=drop_last) == len(loader) >= 1
    tau = timescale(lr, lam, dataset_size=n, batch_size=b, drop_last=drop_last)
    assert tau.epochs == pytest.approx(tau.iterations / len(loader), rel=1e-12)
    assert tau.epochs <= tau.iterations  # a batch larger than the data is still one step per epoch
    back = weight_decay_for_timescale(lr, epochs=tau.epochs, dataset_size=n, batch_size=b, drop_last=drop_last)
    assert back == pytest.approx(lam, rel=1e-9)


@pytest.mark.parametrize(("lr", "value"), [(1e-300, 1e-300), (5e-324, 1.0), (1e10, 1e300), (1.0, 1e308)])
def test_timescale_refuses_a_non_finite_tau(lr: float, value: float) -> None:
    if lr * value < 1e-200:
        with pytest.raises(DecayError, match="not a finite number of steps"):
            timescale(lr, value)
    else:  # τ so long that λ = 1/(lr·τ) overflows to 0 or below the smallest normal float
        with pytest.raises(DecayError, match="not a usable number"):
            weight_decay_for_timescale(lr, iterations=value)


def test_timescale_warns_when_the_decay_overshoots() -> None:
    with pytest.warns(DecayWarning, match=r"lr·weight_decay = 5 >= 1: each step multiplies θ by 1 − lr·λ = -4"):
        timescale(1.0, 5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        timescale(1e-3, 0.1)
    with pytest.raises(DecayError, match=r"at least 1 step, got 0\.5 steps"):
        weight_decay_for_timescale(1.0, iterations=0.5)
