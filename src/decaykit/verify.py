"""The founding notebook's experiment, reproduced, and each optimizer's step checked against its formula.

>>> report = verify()
>>> report.ok, report.seed_match
(True, True)
>>> [c.name for c in report.checks]
['sgd', 'adam', 'adamw']

The seed (``np.random.seed(123)``; ``x`` of shape (3, 4) and ``w`` of shape (4, 5) drawn with
``np.random.random`` in float64; loss ``(x @ w).sum()``; one ``torch.optim.SGD`` step with
``lr=0.1``, ``weight_decay`` 0 and 1) printed its weights; ``verify`` reproduces them and puts the
closed form of one step from a fresh optimizer next to torch's result. With ĝ = g + λθ:

    SGD      θ₁ = θ₀ − η·ĝ                               coupled L2, proportional shrink
    Adam     θ₁ = θ₀ − η·ĝ / (|ĝ| + ε)                   coupled, through the adaptive denominator
    AdamW    θ₁ = θ₀·(1 − ηλ) − η·g / (|g| + ε)          decoupled (Loshchilov & Hutter 2019)
    RMSprop  θ₁ = θ₀ − η·ĝ / (√(1 − α)·|ĝ| + ε)          coupled, through the adaptive denominator

(Adam's first step from zero moments has m̂ = ĝ and v̂ = ĝ², torch.optim's documented update.)
numpy is not needed: ``np.random.random`` after ``np.random.seed(s)`` is MT19937 seeded with
``init_genrand(s)`` and 53-bit doubles, the same generator and draw as Python's ``random``; only
the seeding differs, so the state is built here and handed to ``random.Random``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from decaykit import optimizers
from decaykit._render import Cell, Report, html_lines, html_pre, html_report
from decaykit._validate import check_number
from decaykit.errors import DecayError

__all__ = ["CLOSED_FORMS", "DEFAULT_ULPS", "SEED_PRINTED", "Closed", "OptimizerCheck", "VerifyReport", "numpy_random", "verify"]

Tensor = torch.Tensor


Step = Callable[[Tensor, Tensor, float, float], Tensor]


def _terms(theta: Tensor, grad: Tensor, lr: float, wd: float) -> Tensor:
    # every closed form adds at most these: θ, lr·λ·θ, lr·g and an adaptive step of size <= 10·lr
    return theta.abs() * (1 + lr * wd) + lr * (grad.abs() + wd * theta.abs() + 10)


@dataclass(frozen=True)
class Closed:
    """One optimizer's first step from a fresh state, as a formula, and the torch class it checks.

    ``size`` gives, per weight, the sum of the magnitudes of the terms the step adds: each rounding
    in torch's step is relative to one of them, so |torch − formula| is compared with eps·size.
    ``peak`` gives the largest value torch holds on the way (ĝ² in Adam's second moment): above
    the dtype's largest float the step overflows and there is nothing to compare.
    """

    label: str
    kind: str  # "coupled" or "decoupled": the torch class's convention in decaykit.optimizers
    rule: str
    torch_class: str
    step: Step
    size: Step = _terms
    peak: Step | None = None


def _sgd(theta: Tensor, grad: Tensor, lr: float, wd: float) -> Tensor:
    return theta - lr * (grad + wd * theta)


def _adam(theta: Tensor, grad: Tensor, lr: float, wd: float, eps: float = 1e-8) -> Tensor:
    g = grad + wd * theta
    return theta - lr * g / (g.abs() + eps)


def _adamw(theta: Tensor, grad: Tensor, lr: float, wd: float, eps: float = 1e-8) -> Tensor:
    return theta * (1 - lr * wd) - lr * grad / (grad.abs() + eps)


def _rmsprop(theta: Tensor, grad: Tensor, lr: float, wd: float, alpha: float = 0.99, eps: float = 1e-8) -> Tensor:
    g = grad + wd * theta
    return theta - lr * g / ((1 - alpha) ** 0.5 * g.abs() + eps)


def _sgd_size(theta: Tensor, grad: Tensor, lr: float, wd: float) -> Tensor:
    return theta.abs() + lr * (grad.abs() + wd * theta.abs())


def _adaptive_size(bound: float) -> Step:
    """θ plus an adaptive step: ĝ/(c·|ĝ| + ε) is at most ``bound`` in size, whatever ĝ is."""
    def size(theta: Tensor, grad: Tensor, lr: float, wd: float) -> Tensor:
        return theta.abs() + lr * bound
    return size


def _adamw_size(theta: Tensor, grad: Tensor, lr: float, wd: float) -> Tensor:
    return theta.abs() * (1 + lr * wd) + lr


def _coupled_square(theta: Tensor, grad: Tensor, lr: float, wd: float) -> Tensor:
    return (grad.abs() + wd * theta.abs()) ** 2  # the second moment holds ĝ²


def _square(theta: Tensor, grad: Tensor, lr: float, wd: float) -> Tensor:
    return grad.abs() ** 2


def _closed(torch_class: str, rule: str, step: Step, size: Step, peak: Step | None = None) -> Closed:
    entry = optimizers.info(torch_class)
    if entry is None:  # pragma: no cover - the registry lists every torch.optim class
        raise DecayError(f"decaykit.optimizers has no entry for {torch_class}")
    return Closed(torch_class, entry.decay_in(), rule, torch_class, step, size, peak)


CLOSED_FORMS: dict[str, Closed] = {
    "sgd": _closed("SGD", "θ ← θ − lr·(g + λθ)", _sgd, _sgd_size),
    "adam": _closed("Adam", "θ ← θ − lr·ĝ/(|ĝ| + ε), ĝ = g + λθ", _adam, _adaptive_size(1.0), _coupled_square),
    "adamw": _closed("AdamW", "θ ← θ·(1 − lr·λ) − lr·g/(|g| + ε)", _adamw, _adamw_size, _square),
    "rmsprop": _closed("RMSprop", "θ ← θ − lr·ĝ/(√(1−α)·|ĝ| + ε), ĝ = g + λθ", _rmsprop,
                       _adaptive_size(0.01 ** -0.5), _coupled_square),
}
#: roundings allowed in one step, in units of the dtype's eps times the size of the terms
DEFAULT_ULPS = 16.0
DEFAULT_OPTIMIZERS = ("sgd", "adam", "adamw")

# What the founding notebook printed for SGD (seed 123, lr 0.1), 4 decimals: weight_decay -> weights.
SEED_PRINTED: dict[float, tuple[tuple[float, ...], ...]] = {
    0.0: ((0.2489, -0.1300, 0.2084, 0.5483, -0.0072), (0.0653, 0.4214, 0.4217, 0.5243, 0.7393),
          (0.5694, 0.4559, 0.5674, 0.1679, 0.2067), (0.0317, 0.0972, 0.4345, -0.1044, 0.2372)),
    1.0: ((0.2050, -0.1360, 0.1686, 0.4745, -0.0254), (0.0478, 0.3683, 0.3685, 0.4608, 0.6544),
          (0.4969, 0.3948, 0.4951, 0.1356, 0.1705), (0.0089, 0.0678, 0.3714, -0.1136, 0.1938)),
}


def numpy_random(seed: int, n: int) -> list[float]:
    """The first ``n`` values of ``np.random.random`` after ``np.random.seed(seed)``, without numpy."""
    state = [seed & 0xFFFFFFFF]
    for i in range(1, 624):  # MT19937 init_genrand, as numpy's legacy RandomState seeds an int
        prev = state[-1]
        state.append((1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF)
    rng = random.Random()
    rng.setstate((3, (*state, 624), None))
    return [rng.random() for _ in range(n)]


@dataclass
class OptimizerCheck:
    """torch's step against the closed form, without and with decay, for one optimizer.

    The closed form is evaluated in float64 from the very inputs torch got (``dtype``'s values);
    ``ulps`` is max |torch − formula| / (eps(dtype)·size), size being the sum of the magnitudes
    of the step's terms (:attr:`Closed.size`), so the tolerance scales with lr, λ and θ.
    """

    name: str
    closed: Closed
    without: Tensor  # torch, weight_decay=0
    with_decay: Tensor  # torch, weight_decay=λ
    expected_without: Tensor
    expected_with: Tensor
    error: float  # max |torch − formula| over both steps
    ulps: float  # the same, in units of eps(dtype)·size, weight by weight
    allowed: float  # the largest ulps that agrees
    effect: Tensor  # (θ_λ − θ_0) / θ₀: what the decay did to each weight, relative to itself
    effect_tol: Tensor  # the rounding of two steps in ``effect``, per weight
    size: Tensor  # Closed.size with decay: what one rounding is relative to, per weight
    dtype: torch.dtype = torch.float64
    overflow: str = ""  # why the values do not fit in dtype, or ""

    @property
    def agrees(self) -> bool:
        return not self.overflow and self.ulps <= self.allowed

    @property
    def tol(self) -> float:
        """The largest allowed |torch − formula|, for the largest weight."""
        return self.allowed * torch.finfo(self.dtype).eps * float(self.size.max())

    @property
    def line(self) -> str:
        if self.overflow:
            return f"{self.closed.label}: cannot be checked: {self.overflow}"
        verdict = "matches" if self.agrees else "DOES NOT match"
        return (f"{self.closed.label}: torch {verdict} the closed form (max |torch − formula| = {self.error:.1e}, "
                f"{self.ulps:.2g} eps·size in {_dtype_name(self.dtype)}; allowed {self.allowed:g})")

    def to_dict(self) -> dict[str, Any]:
        return {"optimizer": self.closed.torch_class, "kind": self.closed.kind, "rule": self.closed.rule,
                "agrees": self.agrees, "max_error": self.error, "tolerance": self.tol, "ulps": self.ulps,
                "allowed_ulps": self.allowed, "dtype": _dtype_name(self.dtype), "overflow": self.overflow or None,
                "torch_without_decay": self.without, "closed_form_without_decay": self.expected_without,
                "torch_with_decay": self.with_decay, "closed_form_with_decay": self.expected_with,
                "decay_effect_relative": self.effect}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class VerifyReport(Report):
    """The experiment's inputs, one :class:`OptimizerCheck` per optimizer, and the comparison with the notebook's printed tensors."""

    seed: int
    lr: float
    weight_decay: float
    x: Tensor
    w0: Tensor
    grad: Tensor
    checks: list[OptimizerCheck]
    seed_match: bool | None = None  # SGD equals the notebook's printed tensors (None: not the notebook's setup)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.agrees for c in self.checks) and self.seed_match is not False

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "lr": self.lr, "weight_decay": self.weight_decay, "ok": self.ok,
                "seed_match": self.seed_match, "x": self.x, "w0": self.w0, "grad": self.grad,
                "checks": [c.to_dict() for c in self.checks], "notes": list(self.notes)}

    def __str__(self) -> str:
        return render(self)

    def _repr_html_(self) -> str:
        """The tensors side by side as printed, each optimizer's verdict coloured, for notebooks."""
        return render_html(self)


def _torch_step(closed: Closed, w0: Tensor, x: Tensor, lr: float, wd: float, foreach: bool | None) -> Tensor:
    cls = getattr(torch.optim, closed.torch_class)
    w = w0.clone().requires_grad_(True)
    opt = cls([w], lr=lr, weight_decay=wd, foreach=foreach)
    (x @ w).sum().backward()
    opt.step()
    return w.detach()


def _seed_match(seed: int, lr: float, weight_decay: float, checks: Sequence[OptimizerCheck]) -> bool | None:
    sgd = next((c for c in checks if c.name == "sgd"), None)
    if sgd is None or seed != 123 or lr != 0.1:
        return None
    printed = [(0.0, sgd.without)] + ([(1.0, sgd.with_decay)] if weight_decay == 1.0 else [])
    return all([[f"{v:.4f}" for v in row] for row in got.tolist()] ==
               [[f"{v:.4f}" for v in row] for row in SEED_PRINTED[wd]] for wd, got in printed)


def _seed_text(report: VerifyReport) -> str:
    """What the SGD step was compared with: the notebook printed weight_decay 0 and 1 only."""
    verdict = "equals" if report.seed_match else "DOES NOT equal"
    if report.weight_decay == 1.0:
        return f"{verdict} the tensors the founding notebook printed (weight_decay 0 and 1), to its 4 decimals"
    return (f"{verdict} the founding notebook's weight_decay=0 tensors, to its 4 decimals (it printed weight_decay=1, "
            f"not {report.weight_decay:g}: that step is checked against the closed form only)")


_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _check_dtype(dtype: Any) -> torch.dtype:
    found = _DTYPES.get(dtype) if isinstance(dtype, str) else dtype if dtype in _DTYPES.values() else None
    if found is None:
        raise DecayError(f"dtype must be torch.float64 or torch.float32 (or their names), got {dtype!r}")
    return found


def _overflow(closed: Closed, w0: Tensor, grad: Tensor, lr: float, wd: float, dtype: torch.dtype) -> str:
    """Why the step's values do not fit in ``dtype`` (largest float), or "" if they do."""
    biggest = torch.finfo(dtype).max
    peaks = [closed.size(w0, grad, lr, wd)] + ([closed.peak(w0, grad, lr, wd)] if closed.peak else [])
    peak = max(float(t.max()) for t in peaks)
    if peak <= biggest:  # also False for nan
        return ""
    return (f"with lr={lr:g} and weight_decay={wd:g} the step's values reach {peak:.3g}, beyond "
            f"{_dtype_name(dtype)}'s largest {biggest:.3g} (overflow); lower lr or weight_decay")


def _torch_steps(closed: Closed, w0: Tensor, x: Tensor, lr: float, wd: float, foreach: bool | None,
                 overflow: str) -> tuple[Tensor, Tensor]:
    """torch's step without and with decay; nan where the values overflow and torch refuses to step."""
    try:
        return _torch_step(closed, w0, x, lr, 0.0, foreach), _torch_step(closed, w0, x, lr, wd, foreach)
    except RuntimeError as exc:  # torch: "value cannot be converted to type float without overflow"
        if overflow:
            nan = torch.full_like(w0, math.nan)
            return nan, nan.clone()
        raise DecayError(f"torch.optim.{closed.torch_class} failed at lr={lr:g}, weight_decay={wd:g}: {exc}") from exc


def _check(name: str, w0: Tensor, x: Tensor, grad: Tensor, lr: float, wd: float, foreach: bool | None,
           allowed: float) -> OptimizerCheck:
    closed = CLOSED_FORMS[name]
    dtype = w0.dtype
    with torch.no_grad():
        w64, g64 = w0.double(), grad.double()  # the formula in float64, from torch's own inputs
        exp_without, exp_with = closed.step(w64, g64, lr, 0.0), closed.step(w64, g64, lr, wd)
        size = torch.maximum(closed.size(w64, g64, lr, 0.0), closed.size(w64, g64, lr, wd))
    overflow = _overflow(closed, w64, g64, lr, wd, dtype)
    without, with_decay = _torch_steps(closed, w0, x, lr, wd, foreach, overflow)
    diffs = [(without.double() - exp_without).abs(), (with_decay.double() - exp_with).abs()]
    error = max(float(d.max()) for d in diffs)
    eps = torch.finfo(dtype).eps
    unit = (eps * size).clamp_min(torch.finfo(torch.float64).tiny)  # a weight with no term at all: exact
    ulps = math.inf if overflow else max(float((d / unit).max()) for d in diffs)
    if math.isnan(ulps):  # a nan from torch with no overflow foreseen: a disagreement, not a pass
        ulps = math.inf
    nonzero = w64 != 0
    effect = torch.where(nonzero, (with_decay.double() - without.double()) / w64, torch.zeros_like(w64))
    # two steps' rounding relative to each weight: how equal "the same factor for every weight" can be
    effect_tol = torch.where(nonzero, 2 * allowed * eps * size / w64.abs(), torch.full_like(w64, math.inf))
    return OptimizerCheck(name, closed, without, with_decay, exp_without, exp_with, error, ulps, allowed,
                          effect, effect_tol, size, dtype, overflow)


def verify(
    *,
    lr: float = 0.1,
    weight_decay: float = 1.0,
    seed: int = 123,
    optimizers: Iterable[str] = DEFAULT_OPTIMIZERS,
    foreach: bool | None = None,
    dtype: torch.dtype | str = torch.float64,
    ulps: float = DEFAULT_ULPS,
) -> VerifyReport:
    """Run the founding notebook's experiment with each optimizer and check torch against the closed forms.

    Args:
        lr, weight_decay, seed: the experiment's settings (the notebook's: 0.1, 1, 123).
        optimizers: names from :data:`CLOSED_FORMS` (``sgd``, ``adam``, ``adamw``, ``rmsprop``).
        foreach: passed to the torch optimizers (None: torch's default implementation).
        dtype: what torch computes in, ``torch.float64`` (the notebook's) or ``torch.float32``; the
            closed form is always evaluated in float64 from the same (rounded) inputs.
        ulps: allowed |torch − formula| per weight, in units of eps(dtype) times the sum of the
            magnitudes of the step's terms (θ, lr·g, lr·λ·θ, ...), so it holds at any lr and λ.
    """
    lr = check_number(lr, "lr", allow_zero=False)
    weight_decay = check_number(weight_decay, "weight_decay")
    ulps = check_number(ulps, "ulps", allow_zero=False)
    dtype = _check_dtype(dtype)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise DecayError(f"seed must be an int in [0, 2**32 - 1] (as numpy's), got {seed!r}")
    names = [optimizers] if isinstance(optimizers, str) else list(optimizers)
    unknown = [n for n in names if n not in CLOSED_FORMS]
    if not names or unknown:
        raise DecayError(f"optimizers must be among {', '.join(CLOSED_FORMS)}, got {names!r}")
    draws = numpy_random(seed, 12 + 20)  # x first, then w, as the notebook drew them
    x = torch.tensor(draws[:12], dtype=torch.float64).reshape(3, 4).to(dtype)
    w0 = torch.tensor(draws[12:], dtype=torch.float64).reshape(4, 5).to(dtype)
    grad = x.t() @ torch.ones(3, 5, dtype=dtype)  # ∂(x @ w).sum()/∂w = xᵀ·1
    checks = [_check(name, w0, x, grad, lr, weight_decay, foreach, ulps) for name in dict.fromkeys(names)]
    notes = [] if foreach is None else [f"torch optimizers run with foreach={foreach}"]
    if dtype != torch.float64:
        notes.append(f"torch runs in {_dtype_name(dtype)}; the closed form in float64 from the same rounded inputs")
    return VerifyReport(seed, lr, weight_decay, x, w0, grad, checks, _seed_match(seed, lr, weight_decay, checks), notes)


# -- plain-text rendering: the tensors side by side, and why they differ ---------------------------
def _rows(t: torch.Tensor) -> list[str]:
    # torch printed the notebook's tensors with 4 decimals; so do we, to compare by eye
    return ["[" + ", ".join(f"{v:7.4f}" for v in row) + "]" for row in t.tolist()]


def _side_by_side(left: torch.Tensor, right: torch.Tensor, titles: tuple[str, str], indent: str = "  ") -> list[str]:
    a, b = _rows(left), _rows(right)
    width = max(len(titles[0]), *(len(r) for r in a))
    lines = [f"{indent}{titles[0].ljust(width)}   {titles[1]}"]
    lines += [f"{indent}{x.ljust(width)}   {y}" for x, y in zip(a, b)]
    return lines


def explain(check: OptimizerCheck, lr: float, weight_decay: float) -> str:
    """One line: what the decay did to the weights, relative to themselves, and why."""
    effect = check.effect
    lo, hi = float(effect.min()), float(effect.max())
    target = -lr * weight_decay
    label = f"{check.closed.label:<8} {check.closed.kind:<10}"
    if check.overflow:
        return f"{label} not compared: the values overflow {_dtype_name(check.dtype)}"
    if weight_decay == 0:
        return f"{label} no decay asked (weight_decay=0): both steps are the same"
    # "the same factor for every weight" up to the rounding of two steps, weight by weight
    uniform = bool(((effect - target).abs() <= check.effect_tol).all())
    if uniform and bool((abs(target) <= check.effect_tol).all()):
        return (f"{label} lr·λ = {lr * weight_decay:.3g} is below {_dtype_name(check.dtype)} resolution next to "
                "these weights: the decay cannot be seen in one step")
    if uniform and check.closed.kind == "decoupled":
        return (f"{label} every weight moved by {target:+.4g} × itself (= −lr·λ): θ·(1 − lr·λ) is applied "
                "next to the adaptive step, so the gradient's scale does not matter")
    if uniform:
        return (f"{label} every weight moved by {target:+.4g} × itself (= −lr·λ): λθ joined the gradient, and "
                "SGD's step is proportional to the gradient, so coupled L2 equals θ·(1 − lr·λ) here")
    return (f"{label} weights moved by {lo:+.3g} .. {hi:+.3g} × themselves instead of {target:+.4g}: λθ joined "
            "the gradient and was divided by the adaptive denominator with the rest of it")


def render(report: VerifyReport) -> str:
    lam = f"{report.weight_decay:g}"
    lines = [
        "decaykit verify: the founding notebook's experiment, one optimizer step from the same weights",
        f"  np.random.seed({report.seed}); x = np.random.random((3, 4)); w = np.random.random((4, 5)); "
        f"{_dtype_name(report.w0.dtype)}",
        "  loss = (x @ w).sum(), so g = ∂loss/∂w = xᵀ·1 (row i of g is the sum of column i of x)",
        f"  lr = {report.lr:g}, λ = weight_decay = {lam}",
        "",
        *_side_by_side(report.w0, report.grad, ("original weights θ₀", "gradient g")),
    ]
    for check in report.checks:
        c = check.closed
        lines += ["", f"{c.label}, {c.kind}: {c.rule}"]
        lines += _side_by_side(check.without, check.expected_without, ("weight_decay=0: torch", "closed form"))
        lines += _side_by_side(check.with_decay, check.expected_with, (f"weight_decay={lam}: torch", "closed form"))
        lines.append(f"  {check.line}")
        if check.name == "sgd" and report.seed_match is not None:
            lines.append(f"  SGD: {_seed_text(report)}")
    lines += ["", "coupled vs decoupled, with these numbers: (θ_λ − θ_0)/θ₀, what the decay did to each weight"]
    lines += [f"  {explain(c, report.lr, report.weight_decay)}" for c in report.checks]
    lines.append("  coupled: λθ is added to the gradient, so it goes wherever the gradient goes; "
                 "decoupled: θ shrinks by lr·λ of itself whatever the gradient is")
    lines += [f"note: {n}" for n in report.notes]
    failed = [c.closed.label for c in report.checks if not c.agrees and not c.overflow]
    overflow = [c.closed.label for c in report.checks if c.overflow]
    if overflow:
        failed.append(f"{', '.join(overflow)} not checked, the values overflow {_dtype_name(report.w0.dtype)}")
    if report.seed_match is False:
        failed.append("founding notebook's printed tensors")
    lines += ["", f"result: {len(report.checks)} optimizer(s) match their closed forms" if not failed
              else f"result: FAILED: {', '.join(failed)}"]
    return "\n".join(lines)


def render_html(report: VerifyReport) -> str:
    """:func:`render`'s content as notebook HTML: the same tensors in ``<pre>``, the verdicts coloured."""
    lam = f"{report.weight_decay:g}"
    setup = [f"np.random.seed({report.seed}); x = np.random.random((3, 4)); w = np.random.random((4, 5)); "
             f"{_dtype_name(report.w0.dtype)}; loss = (x @ w).sum(); lr = {report.lr:g}, λ = {lam}"]
    inputs = _side_by_side(report.w0, report.grad, ("original weights θ₀", "gradient g"), "")
    parts = [html_lines(setup), html_pre("\n".join(inputs))]
    for check in report.checks:
        c = check.closed
        tensors = _side_by_side(check.without, check.expected_without, ("weight_decay=0: torch", "closed form"), "")
        tensors += _side_by_side(check.with_decay, check.expected_with, (f"weight_decay={lam}: torch", "closed form"),
                                 "")
        verdicts = [Cell(check.line, "good" if check.agrees else "bad")]
        if check.name == "sgd" and report.seed_match is not None:
            verdicts.append(Cell("SGD " + _seed_text(report), "good" if report.seed_match else "bad"))
        parts += [html_lines([Cell(f"{c.label}, {c.kind}: {c.rule}", bold=True)]), html_pre("\n".join(tensors)),
                  html_lines(verdicts)]
    parts.append(html_lines([Cell("coupled vs decoupled: (θ_λ − θ_0)/θ₀, what the decay did to each weight", bold=True),
                             *(explain(c, report.lr, report.weight_decay) for c in report.checks),
                             *(f"note: {n}" for n in report.notes)]))
    title = Cell("decaykit verify: the founding notebook's experiment, " +
                 ("every optimizer matches its closed form" if report.ok else "FAILED (see below)"),
                 "good" if report.ok else "bad")
    return html_report(title, *parts)
