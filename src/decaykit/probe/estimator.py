"""The probe's arithmetic: from a tensor before and after its twins' steps to a verdict.

For one tensor θ (rows = stacked models, else one row), with θ_λ stepped as configured, θ_0
stepped with ``weight_decay=0`` and optionally θ_g stepped with ``weight_decay=0`` and gradient
λθ (the coupled-L2 twin), all from the same state and zero gradients:

    Δ = θ_λ − θ_0                   the decay's own effect on the next step
    s = 1 + ⟨Δ, θ⟩ / ⟨θ, θ⟩          least-squares shrink factor, Δ ≈ (s − 1)·θ
    proportional  ⇔  ‖Δ − (s − 1)θ‖ ≤ 5%·‖Δ‖ + tol
    decoupled r   ⇔  ‖Δ + r·θ‖ ≤ tol
    cautious r    ⇔  ‖Δ + r·𝟙(u·θ ≥ 0)·θ‖ ≤ tol, u ∝ θ − θ_0 (Chen et al. 2025)
    coupled       ⇔  ‖θ_λ − θ_g‖ ≤ tol
    tol = 8·eps(dtype)·(‖θ‖ + ‖θ_0 − θ‖), the rounding of two steps in the parameter's dtype

An unknown optimizer's pair is stepped again with a nonzero gradient (``Rows.gradient``); its rate
r_g = −⟨Δ_g, θ⟩/⟨θ, θ⟩, or −⟨Δ_g, θ_0⟩/⟨θ_0, θ_0⟩ for a decay applied after the update, must be the
zero-gradient r within 5% (+ tol/‖θ‖), else the decay depends on the gradient.

Sums run over blocks of 2^20 values in the tensor's dtype (float32 for half types) and are added
up in Python floats, so a 100M-parameter tensor never gets a full-size temporary.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from decaykit.probe.expectations import Expectation, rate_text
from decaykit.probe.rounding import coupled_loss, decoupled_loss

__all__ = ["PROPORTIONAL_SLACK", "RowResult", "Rows", "measure_rows", "overshoot_note"]

PROPORTIONAL_SLACK = 0.05
_BLOCK = 2**20


def _flat(x: torch.Tensor, members: int) -> torch.Tensor:
    x = x.detach()
    if x.is_complex():  # torch optimizers step complex parameters as their real view too
        x = torch.view_as_real(x)
    return x.reshape(members, -1)


def _rates(rate: float | torch.Tensor, members: int) -> list[float]:
    if isinstance(rate, torch.Tensor):
        return [float(v) for v in rate.detach().to("cpu", torch.float64).reshape(members)]
    return [float(rate)] * members


def _blocks(members: int, *tensors: torch.Tensor) -> Iterator[tuple[int, list[torch.Tensor]]]:
    """(row, 1-D blocks) in a working dtype: the tensors' own for float32/64 (differences of nearby
    values are exact there), float32 for half types. Partial sums go to Python floats."""
    flats = [_flat(x, members) for x in tensors]
    work = torch.float64 if flats[0].dtype == torch.float64 else torch.float32
    for k in range(members):
        for s in range(0, flats[0].shape[1], _BLOCK):
            yield k, [f[k, s:s + _BLOCK].to(work) for f in flats]


def _sq(x: torch.Tensor) -> float:
    norm = float(torch.linalg.vector_norm(x))
    if not math.isfinite(norm) and bool(torch.isfinite(x).all()):  # squares beyond float32, values within
        norm = float(torch.linalg.vector_norm(x, dtype=torch.float64))
    return norm**2


def _dot(x: torch.Tensor, y: torch.Tensor) -> float:
    out = float(torch.dot(x, y))
    if not math.isfinite(out) and bool(torch.isfinite(x).all() and torch.isfinite(y).all()):
        out = float(torch.dot(x.double(), y.double()))
    return out


def _plus_scaled(d: torch.Tensor, t: torch.Tensor, rate: float) -> torch.Tensor:
    """d + rate·t; in float64 when the rate itself is beyond the block's dtype (torch refuses such an alpha)."""
    if abs(rate) <= torch.finfo(t.dtype).max:
        return torch.add(d, t, alpha=rate)
    return torch.add(d.double(), t.double(), alpha=rate)


def overshoot_note(factor: float, rate: float | None = None) -> str:
    """Why a per-step factor <= 0 is wrong, whatever the settings say: θ changes sign every step."""
    why = f" (a decay rate of {rate:.4g} >= 1 per step)" if rate is not None and rate >= 1 else ""
    return (f"the decay overshoots: each step multiplies θ by {factor:.4g} <= 0{why}, so θ changes sign every "
            "step instead of shrinking; lower lr or weight_decay")


@dataclass
class RowResult:
    kind: str
    measured: float
    expected: float | None
    expected_kind: str
    settings_ok: bool  # the measured decay is the one the settings configure
    note: str
    overshoots: bool = False  # a factor <= 0, set or measured: no decay, whether configured or not


class Rows:
    """Float64 sums per row; :meth:`row` turns them into a verdict."""

    def __init__(self, members: int, eps: float, dtype: torch.dtype) -> None:
        self.members, self.eps, self.dtype = members, eps, dtype
        self.tt, self.dd, self.dt, self.zz = [0.0] * members, [0.0] * members, [0.0] * members, [0.0] * members
        self.err: dict[str, list[float]] = {}  # candidate -> Σ(Δ − expected Δ)²
        self.masked = [0.0] * members  # Σ 𝟙(u·θ ≥ 0)·θ², for the cautious expected factor
        self.zt = [0.0] * members  # Σ(θ_0 − θ)·θ: how the no-decay twin itself moved
        self.dz = [0.0] * members  # Σ(θ_λ − θ_0)·(θ_0 − θ), for the factor against θ_0 (a decay after the update)
        self.gradient: Rows | None = None  # the same pair of twins stepped with a nonzero gradient (unknown kinds)
        self.gradient_source = ""  # which gradient that was, for messages
        self.rates: dict[str, list[float]] = {}
        self.coupled: tuple[list[float], list[float], list[float]] | None = None  # Σ(θ_λ−θ_g)², Σ(θ_g−θ_0)θ, Σ(θ_g−θ_0)²
        # Σθ² over the values the expected decoupled/cautious decay should move: all, those it left
        # unmoved (θ_λ = θ_0 exactly), and those that rounding θ·(1 − r) to the dtype gives back unchanged
        self.acting, self.unmoved, self.rounds = [0.0] * members, [0.0] * members, [0.0] * members
        self.coupled_unmoved = [0.0] * members  # Σθ² where adding λθ to the gradient moved nothing (θ_g = θ_0)

    def _tol(self, k: int) -> float:
        return 8 * self.eps * (self.tt[k] ** 0.5 + self.zz[k] ** 0.5) + 1e-300

    def _basic(self, k: int) -> tuple[float, float, bool, bool]:
        tt, dd, dt = self.tt[k], self.dd[k], self.dt[k]
        tt = tt if tt > 0 else 1e-300
        s = 1 + dt / tt
        resid = max(dd - dt * dt / tt, 0.0) ** 0.5
        tol = self._tol(k)
        none = dd**0.5 <= tol
        return s, tol, none, resid <= PROPORTIONAL_SLACK * dd**0.5 + tol

    def _matches(self, k: int, tol: float) -> dict[str, bool]:
        out = {name: e[k] ** 0.5 <= tol for name, e in self.err.items()}
        if self.coupled is not None:
            out["coupled"] = self.coupled[0][k] ** 0.5 <= tol
        return out

    def proportional(self, k: int) -> bool:
        """Whether member ``k``'s decay is θ times one factor; not where it is rescaled per coordinate (coupled L2
        through an adaptive denominator), whose factor is then a least-squares fit."""
        return self._basic(k)[3]

    def base_shrink(self, k: int) -> float | None:
        """Shrink factor of the twin stepped with weight_decay=0 and zero gradients, if it moved at all
        (None for non-finite values: a NaN weight "moves" without any decay)."""
        if not all(math.isfinite(v) for v in (self.tt[k], self.zz[k], self.zt[k])) or self.zz[k] ** 0.5 <= self._tol(k):
            return None
        return 1 + self.zt[k] / max(self.tt[k], 1e-300)

    def needs_coupled_twin(self, expected_kind: str) -> bool:
        """Whether the coupled-L2 twin is needed: to check coupled or unknown settings, or to name
        what a decay that matches neither none nor the expected decoupled/cautious rate is."""
        if expected_kind in ("coupled", "unknown"):
            return True
        for k in range(self.members):
            _, tol, none, _ = self._basic(k)
            if not (none or self._matches(k, tol).get(expected_kind)):
                return True
        return False

    def needs_gradient_twins(self, expected_kind: str) -> bool:
        """Whether to step the pair again with a nonzero gradient: for an unknown optimizer whose zero-gradient
        decay is proportional to θ (coupled L2 too: a trust ratio that is 1 where the gradient is 0) or nothing,
        which a branch taken only on a zero gradient could explain (a projection for scale-invariant weights).
        Coupled L2 rescaled per coordinate depends on the gradient by its nature: ``coupled-adaptive`` says so."""
        if expected_kind != "unknown":
            return False
        kinds = [(self._kind(k)[0], k) for k in range(self.members)]
        return any(kind in ("decoupled", "none") or (kind == "coupled" and self.proportional(k)) for kind, k in kinds)

    def add_coupled(self, theta: torch.Tensor, decayed: torch.Tensor, base: torch.Tensor, coupled: torch.Tensor) -> None:
        m = self.members
        ab, bt, bb = [0.0] * m, [0.0] * m, [0.0] * m
        for k, (t, a, z, g) in _blocks(m, theta, decayed, base, coupled):
            gz = g - z
            ab[k] += _sq(a - g)
            self.coupled_unmoved[k] += _sq(torch.where(gz == 0, t, 0.0))
            bt[k] += _dot(gz, t)
            bb[k] += _sq(gz)
        self.coupled = (ab, bt, bb)

    def any_kind(self, kind: str) -> bool:
        return any(self._kind(k)[0] == kind for k in range(self.members))

    def non_proportional(self) -> bool:
        return any(not self.proportional(k) for k in range(self.members))

    def _kind(self, k: int) -> tuple[str, float, float, dict[str, bool]]:
        s, tol, none, prop = self._basic(k)
        match = self._matches(k, tol)
        if none:
            kind = "none"
        elif match.get("coupled"):
            kind = "coupled"
        elif match.get("cautious"):
            kind = "cautious"
        else:
            kind = "decoupled" if prop else "other"
        return kind, s, tol, match

    def row(self, k: int, expect: Expectation) -> RowResult:
        """The verdict for row ``k``. A factor <= 0, set (:meth:`Expectation.factor`) or measured, overshoots:
        ``overshoots`` is set, also where the measured factor is the one configured (``settings_ok``)."""
        result = self._row(k, expect)
        factor = expect.factor()
        set_factor = None if factor is None else _rates(factor, self.members)[k]
        factors = [f for f in (set_factor, result.expected, result.measured if result.kind != "none" else None)
                   if f is not None and f <= 0]
        if factors:
            expected = result.expected if result.expected is not None else set_factor
            note = overshoot_note(min(factors), None if set_factor is None else 1 - set_factor)
            if not result.settings_ok and result.note:
                note += f"; {result.note}"
            return RowResult(result.kind, result.measured, expected, result.expected_kind, result.settings_ok, note,
                             overshoots=True)
        return result

    def _row(self, k: int, expect: Expectation) -> RowResult:
        if not all(math.isfinite(v) for v in (self.tt[k], self.dd[k], self.dt[k], self.zz[k])):
            return RowResult("other", math.nan, None, expect.kind, False,
                             "non-finite values (inf/nan) in the parameter or its step: nothing can be measured")
        kind, s, tol, match = self._kind(k)
        tt = max(self.tt[k], 1e-300)
        factors: dict[str, float] = {n: 1 - r[k] for n, r in self.rates.items()}
        if "cautious" in self.rates:
            factors["cautious"] = 1 - self.rates["cautious"][k] * self.masked[k] / tt
        if self.coupled is not None:
            factors["coupled"] = 1 + self.coupled[1][k] / tt
        exp_kind = expect.kind
        note = ""
        if exp_kind == "none":
            ok, expected = kind == "none", 1.0
        elif exp_kind == "unknown":
            found = [n for n in ("coupled", "decoupled", "lr-independent") if match.get(n)]
            readings = {"coupled": "coupled L2 (λθ added to the gradient)", "decoupled": "decoupled θ·(1 − lr·λ)",
                        "lr-independent": "decoupled θ·(1 − λ), independent of the LR"}
            ok = bool(found) or (kind == "none" and self._tiny(k, tol, factors, list(readings)))
            expected = factors[found[0]] if found else None
            lam = _rates(expect.weight_decay, self.members)[k]
            if found:
                note = f"{expect.source}; its decay behaves as {readings[found[0]]}"
            elif kind == "decoupled" and lam > 0:
                # proportional, at a rate set by something the group does not show (an internal step
                # size, a schedule): a decoupled decay all the same
                ok = True
                note = (f"{expect.source}; its decay is decoupled, θ·(1 − r) with r = {1 - s:.4g} = λ × "
                        f"{(1 - s) / lam:.4g} (the optimizer's own step size or schedule?)")
            else:
                note = f"{expect.source}; its decay matches none of coupled L2, θ·(1 − lr·λ), θ·(1 − λ)"
            depends = self._gradient_note(k, kind, s, tol, expect)
            if depends is not None:
                return RowResult(kind, s, None, exp_kind, False, depends)
        else:
            ok = bool(match.get(exp_kind)) or (kind == "none" and self._tiny(k, tol, factors, [exp_kind]))
            expected = factors.get(exp_kind)
        rounded = self._rounded(k, expect) if ok else None
        if rounded is not None:
            ok, note = rounded
        elif ok and kind == "none" and exp_kind == "cautious" and self.masked[k] == 0:
            note = ("no coordinate has its update and θ of the same sign now: cautious decay skips them all "
                    "this step")
        elif ok and kind == "none" and exp_kind == "coupled" and self._squares_overflow(k, expect):
            ok, note = False, (f"λθ (λ = {rate_text(expect.rate)}) squared is beyond {str(self.dtype)[6:]}'s range: an "
                               "adaptive optimizer's second moment overflows and its step comes out 0; lower weight_decay")
        elif ok and kind == "none" and exp_kind == "coupled" and self.coupled is not None and (
                warning := coupled_loss(self.coupled_unmoved[k], self.tt[k], rate_text(expect.rate), self.dtype)):
            note = warning
        elif ok and kind == "none" and exp_kind == "coupled":
            note = (f"adding λθ (λ = {rate_text(expect.rate)}) to the gradient moves nothing measurable in one step "
                    f"here: below {str(self.dtype)[6:]} resolution, or lost inside the optimizer's step")
        elif ok and kind == "none" and exp_kind == "unknown":
            note = self._unseen_note(k, tol, factors, expect)
        elif ok and kind == "none" and exp_kind != "none":
            note = (f"a decay of {rate_text(expect.rate)} per step is within {str(self.dtype)[6:]} rounding of one "
                    "step here: it moved the values, but one step cannot tell by how much")
        elif not ok and exp_kind != "unknown":
            note = (f"settings say {expect.source} (expected {expected if expected is None else f'{expected:.8g}'}), "
                    f"measured {kind} {s:.8g}")
        return RowResult(kind, s, expected, "coupled" if exp_kind == "coupled" else exp_kind, ok, note)

    def _gradient_rate(self, k: int) -> tuple[str, float, float] | None:
        """(kind, rate against θ, rate against θ_0) of the pair stepped with a nonzero gradient; None without one.
        A decay applied after the update shrinks θ_0 = θ − u rather than θ: the second rate reads it exactly."""
        g = self.gradient
        if g is None or not all(math.isfinite(v) for v in (g.tt[k], g.dd[k], g.dt[k], g.zz[k], g.zt[k], g.dz[k])):
            return None
        s, _, none, prop = g._basic(k)
        kind = "none" if none else "decoupled" if prop else "other"
        base = g.tt[k] + 2 * g.zt[k] + g.zz[k]  # ‖θ_0‖²
        return kind, 1 - s, -(g.dt[k] + g.dz[k]) / max(base, 1e-300)

    def _gradient_note(self, k: int, kind: str, s: float, tol: float, expect: Expectation) -> str | None:
        """A note when the decay measured with a nonzero gradient is not the zero-gradient one (an optimizer that
        scales its decay when the gradient is orthogonal to θ, as a zero gradient is); None when they agree."""
        found = self._gradient_rate(k)
        if found is None or kind not in ("decoupled", "coupled", "none"):
            return None
        g_kind, rate, after = found
        zero = 1 - s if kind != "none" else 0.0
        size = max(self.tt[k], 1e-300) ** 0.5
        slack = PROPORTIONAL_SLACK * max(abs(zero), abs(rate)) + (tol + self.gradient._tol(k)) / size  # type: ignore[union-attr]
        if g_kind != "other" and min(abs(rate - zero), abs(after - zero)) <= slack:
            return None
        with_zero = ("nothing measurable" if kind == "none" else f"θ·(1 − r) with r = {zero:.4g}"
                     + (" (as coupled L2)" if kind == "coupled" else ""))
        with_grad = {"decoupled": f"θ·(1 − r) with r = {rate:.4g}", "none": "nothing measurable",
                     "other": f"a change not proportional to θ (least-squares factor {1 - rate:.8g})"}[g_kind]
        return (f"{expect.source}; its decay depends on the gradient: with a zero gradient {with_zero}, with "
                f"{self.gradient_source} {with_grad} (twins with weight_decay as set and 0 from the same state). A zero "
                "gradient is orthogonal to θ, and some optimizers change their decay on that branch (scale-invariant "
                "weights): which rate a real step applies depends on its gradient")

    def _unseen_note(self, k: int, tol: float, factors: dict[str, float], expect: Expectation) -> str:
        """Why an unknown optimizer's ``weight_decay`` changed nothing measurable in one step: what moved, and
        which of its possible readings would be too small to see (so the step is no evidence against it)."""
        dtype = str(self.dtype)[6:]
        lam = rate_text(expect.weight_decay)
        if self.zz[k] ** 0.5 <= tol:
            moved = (f"with zero gradients the step moved the values by no more than {dtype} rounding, with "
                     f"weight_decay={lam} or with 0"
                     + (" or with λθ added to the gradient" if self.coupled is not None else ""))
            why = ("the optimizer skipped this step or its step size is about 0 (a warm-up, a rectified Adam's "
                   "first steps, an internal step size that starts tiny)")
            return f"{expect.source}; {moved}: {why}, so one step cannot show its decay; probe again after more steps"
        size = max(self.tt[k], 1e-300) ** 0.5
        small = []
        if self.coupled is not None and self.coupled[2][k] ** 0.5 <= tol:
            small.append("as coupled L2, adding λθ to the gradient moves nothing measurable here either (the "
                         "optimizer's own step size is about 0?)")
        for name, text in (("decoupled", "θ·(1 − lr·λ)"), ("lr-independent", "θ·(1 − λ)")):
            if name in factors and abs(1 - factors[name]) * size <= tol:
                small.append(f"as {text}, a rate of {1 - factors[name]:.3g} is below {dtype} resolution")
        return (f"{expect.source}; the step moved the values, but with weight_decay={lam} they land where they do "
                f"with 0, within {dtype} rounding: " + "; ".join(small) + ", so one step cannot show this decay")

    def _rounded(self, k: int, expect: Expectation) -> tuple[bool, str] | None:
        """(agrees, note) when rounding to the dtype swallows the expected decoupled/cautious decay."""
        if expect.kind not in ("decoupled", "cautious"):
            return None
        rate = _rates(expect.rate, self.members)[k]
        return decoupled_loss(self.unmoved[k], self.rounds[k], self.acting[k], rate, self.dtype, fused=expect.fused)

    def _squares_overflow(self, k: int, expect: Expectation) -> bool:
        lam = _rates(expect.rate, self.members)[k]
        return lam * lam * self.tt[k] > torch.finfo(self.dtype).max

    def _tiny(self, k: int, tol: float, factors: dict[str, float], names: list[str]) -> bool:
        """True if an expected decay is too small to see at this dtype (so 'none' is no evidence)."""
        size = self.tt[k] ** 0.5
        for n in names:
            if n == "coupled" and self.coupled is not None:
                effect = self.coupled[2][k] ** 0.5
            elif n in factors and n != "coupled":
                effect = abs(1 - factors[n]) * size
            else:
                continue
            if effect <= tol:
                return True
        return False


def measure_rows(
    theta: torch.Tensor,
    decayed: torch.Tensor,
    base: torch.Tensor,
    members: int,
    candidates: dict[str, float | torch.Tensor],
) -> Rows:
    """Sums for :class:`Rows` from θ, θ_λ, θ_0 and the decoupled rates to test (name -> r)."""
    real = _flat(theta, 1).dtype
    rows = Rows(members, torch.finfo(real).eps, real)
    rows.rates = {n: _rates(r, members) for n, r in candidates.items()}
    rows.err = {n: [0.0] * members for n in rows.rates}
    # the expected decoupled/cautious rate, whose rounding in the dtype is checked (not both readings of "unknown")
    watched = next(iter(rows.rates)) if list(rows.rates) in (["decoupled"], ["cautious"]) else None
    for k, (t, a, z) in _blocks(members, theta, decayed, base):
        d = a - z
        zt = z - t
        rows.tt[k] += _sq(t)
        rows.dd[k] += _sq(d)
        rows.dt[k] += _dot(d, t)
        rows.zz[k] += _sq(zt)
        rows.zt[k] += _dot(zt, t)
        rows.dz[k] += _dot(d, zt)
        for n, r in rows.rates.items():
            if n == "cautious":
                masked = (zt * t <= 0).to(t.dtype).mul_(t)  # 𝟙(u·θ ≥ 0)·θ, u ∝ θ − θ_0 = −zt
                rows.err[n][k] += _sq(_plus_scaled(d, masked, r[k]))
                rows.masked[k] += _dot(masked, t)
            else:
                rows.err[n][k] += _sq(_plus_scaled(d, t, r[k]))
        if watched is not None:
            _add_rounding(rows, k, t, d, zt, real, rows.rates[watched][k], watched == "cautious")
    return rows


def _add_rounding(rows: Rows, k: int, t: torch.Tensor, d: torch.Tensor, zt: torch.Tensor, real: torch.dtype,
                  rate: float, cautious: bool) -> None:
    """Add a block's Σθ² to ``rows.acting``, ``.unmoved`` and ``.rounds`` (see :mod:`decaykit.probe.rounding`)."""
    acts = zt * t <= 0 if cautious else torch.ones_like(t, dtype=torch.bool)
    back = (t.double() * (1 - rate)).to(real).to(t.dtype) == t  # θ·(1 − r) rounded to the dtype is θ again
    rows.acting[k] += _sq(torch.where(acts, t, 0.0))
    rows.unmoved[k] += _sq(torch.where(acts & (d == 0), t, 0.0))
    rows.rounds[k] += _sq(torch.where(acts & back, t, 0.0))
