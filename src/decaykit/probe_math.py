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

Sums are accumulated in float64 over blocks, so a 100M-parameter tensor never gets a float64 copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decaykit.conventions import Expectation, rate_text

__all__ = ["PROPORTIONAL_SLACK", "RowResult", "Rows", "measure_rows"]

PROPORTIONAL_SLACK = 0.05
_BLOCK = 2**20


def _flat(x: torch.Tensor, members: int) -> torch.Tensor:
    x = x.detach()
    if x.is_complex():  # torch optimizers step complex parameters as their real view too
        x = torch.view_as_real(x)
    return x.reshape(members, -1)


def _as_rows(rate: float | torch.Tensor, members: int) -> torch.Tensor:
    if isinstance(rate, torch.Tensor):
        return rate.detach().to("cpu", torch.float64).reshape(members, 1)
    return torch.full((members, 1), float(rate), dtype=torch.float64)


@dataclass
class RowResult:
    kind: str
    measured: float
    expected: float | None
    expected_kind: str
    settings_ok: bool
    note: str


class Rows:
    """Float64 sums per row; :meth:`row` turns them into a verdict."""

    def __init__(self, members: int, eps: float, dtype: torch.dtype) -> None:
        zeros = torch.zeros(members, dtype=torch.float64)
        self.members, self.eps, self.dtype = members, eps, dtype
        self.tt, self.dd, self.dt, self.zz = zeros.clone(), zeros.clone(), zeros.clone(), zeros.clone()
        self.err: dict[str, torch.Tensor] = {}  # candidate -> Σ(Δ − expected Δ)²
        self.masked = zeros.clone()  # Σ 𝟙(u·θ ≥ 0)·θ², for the cautious expected factor
        self.rates: dict[str, torch.Tensor] = {}
        self.coupled: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # Σ(θ_λ−θ_g)², Σ(θ_g−θ_0)θ, Σ(θ_g−θ_0)²

    def _tol(self, k: int) -> float:
        return 8 * self.eps * (float(self.tt[k].sqrt()) + float(self.zz[k].sqrt())) + 1e-300

    def _basic(self, k: int) -> tuple[float, float, bool, bool]:
        tt, dd, dt = float(self.tt[k]), float(self.dd[k]), float(self.dt[k])
        tt = tt if tt > 0 else 1e-300
        s = 1 + dt / tt
        resid = max(dd - dt * dt / tt, 0.0) ** 0.5
        tol = self._tol(k)
        none = dd**0.5 <= tol
        return s, tol, none, resid <= PROPORTIONAL_SLACK * dd**0.5 + tol

    def _matches(self, k: int, tol: float) -> dict[str, bool]:
        out = {name: float(e[k]) ** 0.5 <= tol for name, e in self.err.items()}
        if self.coupled is not None:
            out["coupled"] = float(self.coupled[0][k]) ** 0.5 <= tol
        return out

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

    def add_coupled(self, theta: torch.Tensor, decayed: torch.Tensor, base: torch.Tensor, coupled: torch.Tensor) -> None:
        m = self.members
        th, a, z, g = (_flat(x, m) for x in (theta, decayed, base, coupled))
        zeros = torch.zeros(m, dtype=torch.float64)
        ab, bt, bb = zeros.clone(), zeros.clone(), zeros.clone()
        for s in range(0, th.shape[1], _BLOCK):
            t, gz = th[:, s:s + _BLOCK].double(), g[:, s:s + _BLOCK].double() - z[:, s:s + _BLOCK].double()
            ab += (a[:, s:s + _BLOCK].double() - g[:, s:s + _BLOCK].double()).square().sum(1)
            bt += (gz * t).sum(1)
            bb += gz.square().sum(1)
        self.coupled = (ab, bt, bb)

    def any_kind(self, kind: str) -> bool:
        return any(self._kind(k)[0] == kind for k in range(self.members))

    def non_proportional(self) -> bool:
        return any(not self._basic(k)[3] for k in range(self.members))

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
        kind, s, tol, match = self._kind(k)
        tt = max(float(self.tt[k]), 1e-300)
        factors: dict[str, float] = {n: 1 - float(r[k, 0]) for n, r in self.rates.items()}
        if "cautious" in self.rates:
            factors["cautious"] = 1 - float(self.rates["cautious"][k, 0]) * float(self.masked[k]) / tt
        if self.coupled is not None:
            factors["coupled"] = 1 + float(self.coupled[1][k]) / tt
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
            note = (f"{expect.source}; its decay behaves as {readings[found[0]]}" if found else
                    f"{expect.source}; its decay matches none of coupled L2, θ·(1 − lr·λ), θ·(1 − λ)")
        else:
            ok = bool(match.get(exp_kind)) or (kind == "none" and self._tiny(k, tol, factors, [exp_kind]))
            expected = factors.get(exp_kind)
        if ok and kind == "none" and exp_kind == "cautious" and float(self.masked[k]) == 0:
            note = ("no coordinate has its update and θ of the same sign now: cautious decay skips them all "
                    "this step")
        elif ok and kind == "none" and exp_kind != "none":
            note = (f"a decay of {rate_text(expect.rate)} per step is below {str(self.dtype)[6:]} resolution "
                    "here: in one step it cannot be told apart from none")
        elif not ok and exp_kind != "unknown":
            note = (f"settings say {expect.source} (expected {expected if expected is None else f'{expected:.8g}'}), "
                    f"measured {kind} {s:.8g}")
        return RowResult(kind, s, expected, "coupled" if exp_kind == "coupled" else exp_kind, ok, note)

    def _tiny(self, k: int, tol: float, factors: dict[str, float], names: list[str]) -> bool:
        """True if an expected decay is too small to see at this dtype (so 'none' is no evidence)."""
        size = float(self.tt[k].sqrt())
        for n in names:
            if n == "coupled" and self.coupled is not None:
                effect = float(self.coupled[2][k].sqrt())
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
    th, a, z = (_flat(x, members) for x in (theta, decayed, base))
    real = th.dtype
    rows = Rows(members, torch.finfo(real).eps, real)
    rows.rates = {n: _as_rows(r, members) for n, r in candidates.items()}
    for n in rows.rates:
        rows.err[n] = torch.zeros(members, dtype=torch.float64)
    for s in range(0, th.shape[1], _BLOCK):
        t, zb = th[:, s:s + _BLOCK].double(), z[:, s:s + _BLOCK].double()
        d = a[:, s:s + _BLOCK].double() - zb
        rows.tt += t.square().sum(1)
        rows.dd += d.square().sum(1)
        rows.dt += (d * t).sum(1)
        rows.zz += (zb - t).square().sum(1)
        for n, r in rows.rates.items():
            if n == "cautious":
                mask = ((t - zb) * t >= 0).to(torch.float64)  # u·θ ≥ 0 with u ∝ θ − θ_0
                rows.err[n] += (d + r * mask * t).square().sum(1)
                rows.masked += (mask * t.square()).sum(1)
            else:
                rows.err[n] += (d + r * t).square().sum(1)
    return rows
