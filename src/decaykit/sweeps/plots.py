"""PNG figures of a sweep (``pip install 'decaykit[plot]'``): the picture the table describes.

* ``metrics.png``: train and test accuracy (or loss) and loss against λ, mean ± std over seeds.
  λ = 0 sits on a symmetric-log axis left of the smallest λ, so the baseline shares the plot.
* ``learning_curves.png``: test and train metric over training, one line per λ (mean over seeds).
* ``weight_norm.png``: the L2 norm of the decayed weights over training, one line per λ.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from decaykit.errors import DecayError

__all__ = ["write_plots"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise DecayError("plots need matplotlib: pip install 'decaykit[plot]' (or pass --no-plots)") from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _xaxis(ax: Any, lams: Sequence[float]) -> None:
    positive = [v for v in lams if v > 0]
    if positive:
        low = min(positive)
        ax.set_xscale("symlog", linthresh=low, linscale=0.5)
        # λ < 0 means nothing: start just left of λ = 0 (symlog's default margin shows negative decades)
        ax.set_xlim(-0.3 * low if 0.0 in lams else low / 1.5, max(positive) * 1.5)
    ax.set_xlabel("weight decay λ")
    ax.grid(True, alpha=0.3)


def _band(ax: Any, rows: Sequence[Mapping[str, Any]], name: str, label: str, color: str) -> None:
    pts = [(r["weight_decay"], r[name], r[f"{name}_std"] or 0.0) for r in rows if r.get(name) is not None]
    if not pts:
        return
    x, y, s = zip(*pts)
    ax.plot(x, y, "o-", color=color, label=label, ms=4)
    ax.fill_between(x, [a - b for a, b in zip(y, s)], [a + b for a, b in zip(y, s)], color=color, alpha=0.2)


def _mean_curve(trials: Sequence[Mapping[str, Any]], name: str) -> tuple[list[float], list[float]] | None:
    ok = [t for t in trials if not t["diverged"] and name in t["curves"]]
    if not ok:
        return None
    epochs = ok[0]["curves"]["epoch"]
    series = [t["curves"][name] for t in ok]
    mean = []
    for i in range(len(epochs)):
        vals = [s[i] for s in series if i < len(s) and s[i] is not None]
        mean.append(sum(vals) / len(vals) if vals else float("nan"))
    return epochs, mean


def write_plots(
    out: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    trials: Sequence[Mapping[str, Any]],
    *,
    best: Mapping[str, Any] | None,
    title: str,
    classification: bool,
) -> dict[str, str]:
    """Write the three figures into ``out``; return ``{figure: path}``."""
    plt = _pyplot()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    lams = [r["weight_decay"] for r in rows]
    files: dict[str, str] = {}
    main = "accuracy" if classification else "loss"

    fig, axes = plt.subplots(1, 2 if classification else 1, figsize=(11 if classification else 6, 4.2), squeeze=False)
    panels = [("accuracy", axes[0][0]), ("loss", axes[0][1])] if classification else [("loss", axes[0][0])]
    for metric, ax in panels:
        _band(ax, rows, f"train_{metric}", f"train {metric}", "tab:blue")
        _band(ax, rows, f"test_{metric}", f"test {metric}", "tab:red")
        if metric == "loss" and any(r.get("closed_form_test_loss") is not None for r in rows):
            _band(ax, rows, "closed_form_test_loss", "test loss, closed-form ridge", "tab:green")
        if metric == "loss" and not classification:
            ax.set_yscale("log")
        if best is not None:
            ax.axvline(best["weight_decay"], color="gray", ls="--", lw=1, label=f"best λ = {best['weight_decay']:g}")
        _xaxis(ax, lams)
        ax.set_ylabel(metric)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    files["metrics"] = str(folder / "metrics.png")
    fig.savefig(files["metrics"], dpi=110)
    plt.close(fig)

    cmap = plt.get_cmap("viridis")
    by_wd: dict[float, list[Mapping[str, Any]]] = {}
    for t in trials:
        by_wd.setdefault(float(t["weight_decay"]), []).append(t)
    colors = {wd: cmap(i / max(1, len(by_wd) - 1)) for i, wd in enumerate(sorted(by_wd))}

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), squeeze=False)
    for ax, split in zip(axes[0], ("test", "train")):
        for wd in sorted(by_wd):
            curve = _mean_curve(by_wd[wd], f"{split}_{main}")
            if curve is not None:
                ax.plot(*curve, color=colors[wd], label=f"λ = {wd:g}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{split} {main}")
        if not classification:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{title}: learning curves (mean over seeds)", fontsize=10)
    fig.tight_layout()
    files["learning_curves"] = str(folder / "learning_curves.png")
    fig.savefig(files["learning_curves"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for wd in sorted(by_wd):
        curve = _mean_curve(by_wd[wd], "weight_norm")
        if curve is not None:
            ax.plot(*curve, color=colors[wd], label=f"λ = {wd:g}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("‖w‖ of the decayed weights")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"{title}: weight norm over training", fontsize=10)
    fig.tight_layout()
    files["weight_norm"] = str(folder / "weight_norm.png")
    fig.savefig(files["weight_norm"], dpi=110)
    plt.close(fig)
    return files
