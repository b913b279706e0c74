"""The figures of a sweep (``pip install 'decaykit[plot]'``): the picture the table describes.

One set of figures serves the PNG files (:func:`write_plots`) and the notebook (:func:`figures`,
:func:`decaykit._render.png`; ``SweepResult._repr_html_`` embeds the first):

* ``metrics``: the metrics against λ, mean ± std over seeds. Classification: accuracy (in %, as in
  the table) and loss, train and test. Regression: test loss (beside the closed-form answer where
  the task has one) and train loss on axes of their own, since a training loss near 0 would flatten
  the test loss whose minimum the sweep is looking for. λ = 0 sits on a symmetric-log axis left of
  the smallest λ, the best λ is starred, failed rows are crossed out.
* ``learning_curves``: test and train metric over training for a handful of λ (λ = 0, the best,
  the largest and some between), mean ± std over seeds, epochs on a log axis as they were recorded.
* ``weight_norm``: the L2 norm of the decayed weights over training, for the same λ.

Figures are built with matplotlib's object API, not pyplot, so drawing them never switches the
backend of a notebook or a script that uses pyplot itself.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from decaykit._render import new_figure, png

__all__ = ["FIGURES", "figures", "shown_weight_decays", "write_plots"]

FIGURES: tuple[str, ...] = ("metrics", "learning_curves", "weight_norm")
_SHOWN = 5  # learning curves drawn at most: more lines than this cannot be told apart
_LOG_SPAN = 100.0  # a positive series spanning more than this factor goes on a log axis
_TRAIN_BELOW_TEST = ("where train < test: train accuracy is scored on the training labels as given, so\n"
                     "a model that decay stops from memorising wrong (noisy) labels counts them as errors")


def _seeds_text(rows: Sequence[Mapping[str, Any]]) -> str:
    n = max((r["seeds"] for r in rows), default=0)
    return "1 seed" if n == 1 else f"mean ± std over {n} seeds"


def _xaxis(ax: Any, lams: Sequence[float]) -> None:
    positive = [v for v in lams if v > 0]
    if positive:
        low = min(positive)
        ax.set_xscale("symlog", linthresh=low, linscale=0.5)
        # λ < 0 means nothing: start just left of λ = 0 (symlog's default margin shows negative decades)
        ax.set_xlim(-0.3 * low if 0.0 in lams else low / 1.5, max(positive) * 1.5)
    ax.set_xlabel("weight decay λ")
    ax.grid(True, alpha=0.3)


def _yscale(ax: Any, values: Sequence[float], span: float = _LOG_SPAN) -> None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > span:
        ax.set_yscale("log")


def _scale(name: str) -> float:
    return 100.0 if name.endswith("accuracy") else 1.0


def _failed(row: Mapping[str, Any]) -> bool:
    return bool(row.get("failed") or row["diverged"])


def _band(ax: Any, rows: Sequence[Mapping[str, Any]], name: str, label: str, color: str,
          **style: Any) -> tuple[list[float], list[float]]:
    """Mean ± std of ``name`` against λ; returns the values drawn for rows that trained and for rows that
    did not (for the axis' range)."""
    k = _scale(name)
    pts = [(r["weight_decay"], k * r[name], k * (r.get(f"{name}_std") or 0.0), _failed(r)) for r in rows
           if r.get(name) is not None and math.isfinite(r[name])]
    if not pts:
        return [], []
    x, y, s, failed = zip(*pts)
    ax.plot(x, y, color=color, label=label, **{"marker": "o", "ms": 4, **style})
    if any(s):
        ax.fill_between(x, [a - b for a, b in zip(y, s)], [a + b for a, b in zip(y, s)], color=color, alpha=0.2, lw=0)
    kept = [(a, b) for a, b, f in zip(y, s, failed) if not f]
    drawn = [*(a for a, _ in kept), *(a - b for a, b in kept if a - b > 0), *(a + b for a, b in kept)]
    return drawn, [a for a, f in zip(y, failed) if f]


def _in_reach(trained: Sequence[float], failed: Sequence[float]) -> list[float]:
    """The values the axis spans: the rows that trained, and failed rows near them (a run at chance
    accuracy is part of the picture; a loss that blew up to 1e178 would flatten the rest)."""
    if not trained:
        return list(failed)
    low, high = min(trained), max(trained)
    reach = 2 * (high - low) or abs(high) or 1.0
    return [*trained, *(v for v in failed if low - reach <= v <= high + reach)]


def _fit(ax: Any, values: Sequence[float]) -> None:
    if not values:
        return
    low, high = min(values), max(values)
    if ax.get_yscale() == "log":
        ax.set_ylim(low / 1.5, high * 1.5)
    else:
        pad = 0.06 * (high - low) or 0.06 * abs(high) or 1.0
        ax.set_ylim(low - pad, high + pad)


def _marks(ax: Any, rows: Sequence[Mapping[str, Any]], name: str, best: Mapping[str, Any] | None) -> None:
    """The best λ starred on its objective, failed rows crossed out (at the axis' edge when their value is
    beyond it): what the table says beside them."""
    k, (low, high) = _scale(name), ax.get_ylim()
    failed = [(r["weight_decay"], min(max(k * r[name], low), high)) for r in rows
              if _failed(r) and r.get(name) is not None and not math.isnan(r[name])]
    if failed:
        ax.plot(*zip(*failed), "x", color="black", ms=8, mew=1.5, ls="none", label="did not train (never the best)",
                clip_on=False)
    if best is not None and best["metric"] == name:
        ax.plot([best["weight_decay"]], [k * best["value"]], "*", color="gold", mec="black", ms=15, ls="none",
                zorder=5, label=f"best λ = {best.get('rounded') or format(best['weight_decay'], 'g')}")
    if best is not None:
        ax.axvline(best["weight_decay"], color="gray", ls="--", lw=1)


def _panel(ax: Any, rows: Sequence[Mapping[str, Any]], series: Sequence[tuple[str, str, str, dict[str, Any]]],
           best: Mapping[str, Any] | None, ylabel: str) -> None:
    trained: list[float] = []
    failed: list[float] = []
    for name, label, color, style in series:
        ok, bad = _band(ax, rows, name, label, color, **style)
        trained, failed = trained + ok, failed + bad
    shown = _in_reach(trained, failed)
    _yscale(ax, shown)
    _fit(ax, shown)
    for name, *_ in series:  # after every series, so the legend lists the series first
        _marks(ax, rows, name, best)
    _xaxis(ax, [r["weight_decay"] for r in rows])
    ax.set_ylabel(ylabel)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))  # a mark drawn for two series is listed once
    ax.legend(unique.values(), unique.keys(), fontsize=8)


def _metricsnew_figure(rows: Sequence[Mapping[str, Any]], best: Mapping[str, Any] | None, title: str,
                    classification: bool) -> Any:
    fig = new_figure(11, 4.6)
    left, right = fig.subplots(1, 2)
    if classification:
        _panel(left, rows, [("train_accuracy", "train accuracy", "tab:blue", {}),
                            ("test_accuracy", "test accuracy", "tab:red", {})], best, "accuracy (%)")
        _panel(right, rows, [("train_loss", "train loss", "tab:blue", {}), ("test_loss", "test loss", "tab:red", {})],
               best, "loss")
        if any(r.get("train_accuracy") is not None and r.get("test_accuracy") is not None
               and r["train_accuracy"] < r["test_accuracy"] for r in rows):
            left.set_title(_TRAIN_BELOW_TEST, fontsize=8, loc="left")
    else:
        # drawn after the test loss, thin and dashed, so a closed form that SGD reaches does not hide it
        closed = ("closed_form_test_loss", "closed-form ridge solution", "tab:green",
                  {"ls": "--", "lw": 1.2, "marker": "x", "ms": 6, "zorder": 3})
        _panel(left, rows, [("test_loss", "test loss", "tab:red", {"lw": 2.5, "ms": 6}), closed], best, "test loss")
        _panel(right, rows, [("train_loss", "train loss", "tab:blue", {})], best, "train loss")
        left.set_title("test loss: lower is better", fontsize=9, loc="left")
    fig.suptitle(f"{title}: metrics against λ ({_seeds_text(rows)})", fontsize=10)
    return fig


def shown_weight_decays(lams: Sequence[float], best: float | None, most: int = _SHOWN) -> list[float]:
    """At most ``most`` of the λ: the smallest (λ = 0), the best and the largest, then the middle of
    the widest gap between those already kept, in grid order, until ``most`` are kept.

    >>> shown_weight_decays([0, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100], 3)
    [0, 0.1, 3, 10, 100]
    """
    ordered = sorted(set(lams))
    if len(ordered) <= most:
        return ordered
    kept = sorted({0, len(ordered) - 1, *([ordered.index(best)] if best in ordered else [])})
    while len(kept) < most:
        gap, at = max((b - a, a) for a, b in itertools.pairwise(kept))
        kept = sorted({*kept, at + gap // 2})
    return [ordered[i] for i in kept]


def _curve(trials: Sequence[Mapping[str, Any]], name: str) -> tuple[list[float], list[float], list[float]] | None:
    """Epochs, mean and std over the seeds that did not diverge, of one recorded curve."""
    ok = [t for t in trials if not t["diverged"] and name in t["curves"]]
    if not ok:
        return None
    epochs = ok[0]["curves"]["epoch"]
    means, stds = [], []
    for i in range(len(epochs)):
        vals = [s[i] for s in (t["curves"][name] for t in ok) if i < len(s) and s[i] is not None]
        mean = sum(vals) / len(vals) if vals else math.nan
        means.append(mean)
        stds.append(math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0)
    return epochs, means, stds


def _colors(shown: Sequence[float]) -> dict[float, Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]  # ordered like λ; stops before the yellow end, which fades on white
    return {wd: cmap(0.85 * i / max(1, len(shown) - 1)) for i, wd in enumerate(shown)}


def _curves(ax: Any, by_wd: Mapping[float, Sequence[Mapping[str, Any]]], shown: Sequence[float], name: str,
            best: float | None) -> None:
    colors, k, drawn = _colors(shown), _scale(name), []
    for wd in shown:
        curve = _curve(by_wd[wd], name)
        if curve is None:
            continue
        epochs, mean, std = curve
        y, s = [k * v for v in mean], [k * v for v in std]
        label = f"λ = {wd:g}" + (" (best)" if wd == best else "")
        ax.plot(epochs, y, color=colors[wd], label=label, lw=2.5 if wd == best else 1.5)
        if any(s):
            ax.fill_between(epochs, [a - b for a, b in zip(y, s)], [a + b for a, b in zip(y, s)], color=colors[wd],
                            alpha=0.15, lw=0)
        drawn += y
    # a loss falls by decades over training: on a log axis the λ still differ where the curves flatten
    _yscale(ax, drawn, 10.0 if name.endswith("loss") else _LOG_SPAN)
    ax.set_xscale("symlog", linthresh=1.0, linscale=0.3)  # curves are recorded at log-spaced epochs
    ax.set_xlim(left=0)
    ax.set_xlabel("epoch (log scale)")
    ax.grid(True, alpha=0.3)


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:  # no trial recorded a curve: nothing to name
        ax.legend(fontsize=8)


def _by_weight_decay(trials: Sequence[Mapping[str, Any]]) -> dict[float, list[Mapping[str, Any]]]:
    by_wd: dict[float, list[Mapping[str, Any]]] = {}
    for t in trials:
        by_wd.setdefault(float(t["weight_decay"]), []).append(t)
    return by_wd


def _shown_text(shown: Sequence[float], by_wd: Mapping[float, Any]) -> str:
    return "" if len(shown) == len(by_wd) else f", {len(shown)} of the {len(by_wd)} λ"


def _learningnew_figure(rows: Sequence[Mapping[str, Any]], trials: Sequence[Mapping[str, Any]], best: float | None,
                     title: str, classification: bool) -> Any:
    main = "accuracy" if classification else "loss"
    by_wd = _by_weight_decay(trials)
    shown = shown_weight_decays(list(by_wd), best)
    fig = new_figure(11, 4.4)
    for ax, split in zip(fig.subplots(1, 2), ("test", "train")):
        _curves(ax, by_wd, shown, f"{split}_{main}", best)
        ax.set_ylabel(f"{split} {main}" + (" (%)" if classification else ""))
        _legend(ax)
    fig.suptitle(f"{title}: learning curves ({_seeds_text(rows)}{_shown_text(shown, by_wd)})", fontsize=10)
    return fig


def _normnew_figure(rows: Sequence[Mapping[str, Any]], trials: Sequence[Mapping[str, Any]], best: float | None,
                 title: str) -> Any:
    by_wd = _by_weight_decay(trials)
    shown = shown_weight_decays(list(by_wd), best)
    fig = new_figure(6.5, 4.4)
    ax = fig.subplots()
    _curves(ax, by_wd, shown, "weight_norm", best)
    if ax.get_yscale() == "linear":  # a norm starts from 0 (zero init) or near it: show the whole climb
        ax.set_ylim(bottom=0)
    ax.set_ylabel("‖w‖ of the decayed weights")
    _legend(ax)
    ax.set_title(f"{title}: weight norm over training\n({_seeds_text(rows)}{_shown_text(shown, by_wd)})", fontsize=10)
    return fig


def figures(
    rows: Sequence[Mapping[str, Any]],
    trials: Sequence[Mapping[str, Any]],
    *,
    best: Mapping[str, Any] | None,
    title: str,
    classification: bool,
) -> dict[str, Any]:
    """The three figures as matplotlib ``Figure`` objects, keyed as :data:`FIGURES`."""
    best_wd = None if best is None else best["weight_decay"]
    return {
        "metrics": _metricsnew_figure(rows, best, title, classification),
        "learning_curves": _learningnew_figure(rows, trials, best_wd, title, classification),
        "weight_norm": _normnew_figure(rows, trials, best_wd, title),
    }


def write_plots(
    out: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    trials: Sequence[Mapping[str, Any]],
    *,
    best: Mapping[str, Any] | None,
    title: str,
    classification: bool,
) -> dict[str, str]:
    """Write the three figures into ``out`` as PNG files; return ``{figure: path}``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for name, fig in figures(rows, trials, best=best, title=title, classification=classification).items():
        files[name] = str(folder / f"{name}.png")
        Path(files[name]).write_bytes(png(fig))
    return files
