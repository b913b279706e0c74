"""Plain-text rendering of a :class:`decaykit.VerifyReport`: the tensors side by side, and why they differ."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from decaykit.verification import OptimizerCheck, VerifyReport

__all__ = ["explain", "render"]


def _rows(t: torch.Tensor) -> list[str]:
    # torch prints the seed's tensors with 4 decimals; so do we, to compare by eye
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
    uniform = abs(hi - lo) <= 1e-9 * max(1.0, abs(target)) and abs(lo - target) <= 1e-9 * max(1.0, abs(target))
    label = f"{check.closed.label:<8} {check.closed.kind:<10}"
    if weight_decay == 0:
        return f"{label} no decay asked (weight_decay=0): both steps are the same"
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
        "decaykit verify: the seed notebook's experiment, one optimizer step from the same weights",
        f"  np.random.seed({report.seed}); x = np.random.random((3, 4)); w = np.random.random((4, 5)); float64",
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
            verdict = "equals" if report.seed_match else "DOES NOT equal"
            lines.append(f"  SGD: {verdict} the tensors the seed notebook printed, to its 4 decimals")
    lines += ["", "coupled vs decoupled, with these numbers: (θ_λ − θ_0)/θ₀, what the decay did to each weight"]
    lines += [f"  {explain(c, report.lr, report.weight_decay)}" for c in report.checks]
    lines.append("  coupled: λθ is added to the gradient, so it goes wherever the gradient goes; "
                 "decoupled: θ shrinks by lr·λ of itself whatever the gradient is")
    lines += [f"note: {n}" for n in report.notes]
    failed = [c.closed.label for c in report.checks if not c.agrees]
    if report.seed_match is False:
        failed.append("seed notebook's printed tensors")
    lines += ["", f"result: {len(report.checks)} optimizer(s) match their closed forms" if not failed
              else f"result: FAILED: {', '.join(failed)}"]
    return "\n".join(lines)
