"""From finished trials to the table, the best λ, and an honest sentence about whether decay helped.

Each λ's row holds, for every metric, the mean over the seeds that did not diverge and the
sample standard deviation beside it (``test_accuracy`` and ``test_accuracy_std``). The best λ
maximises (or minimises) the objective's mean among rows where no seed diverged. Decay is said
to help only when the gain over λ = 0 exceeds both twice its standard error,
√(s²_best/n_best + s²_0/n_0), and a minimal size (half a point of accuracy, 1% of a loss):
otherwise the report says the gain is within seed-to-seed noise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from decaykit._render import format_table

__all__ = ["METRIC_ORDER", "aggregate", "choose_best", "format_report"]

# the columns every report starts with, in this order; other metrics follow alphabetically
METRIC_ORDER: tuple[str, ...] = (
    "train_accuracy", "test_accuracy", "gap", "train_loss", "test_loss", "weight_norm",
)  # fmt: skip

_HEADERS = {
    "train_accuracy": "train acc %",
    "test_accuracy": "test acc %",
    "gap": "gap",
    "train_loss": "train loss",
    "test_loss": "test loss",
    "weight_norm": "‖w‖",
    "closed_form_test_loss": "closed form test loss",
    "distance_to_closed_form": "max|b − b*|",
}


def _is_accuracy(name: str) -> bool:
    return name.endswith("accuracy")


def metric_names(records: Sequence[Mapping[str, Any]]) -> list[str]:
    names = {n for r in records for n in r["metrics"]}
    return [n for n in METRIC_ORDER if n in names] + sorted(names - set(METRIC_ORDER))


def aggregate(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per λ, ascending: seeds, diverged seeds, and each metric's mean and std over the rest."""
    names = metric_names(records)
    by_wd: dict[float, list[Mapping[str, Any]]] = {}
    for r in records:
        by_wd.setdefault(float(r["weight_decay"]), []).append(r)
    rows = []
    for wd in sorted(by_wd):
        group = sorted(by_wd[wd], key=lambda r: r["seed"])
        ok = [r for r in group if not r["diverged"]]
        row: dict[str, Any] = {"weight_decay": wd, "seeds": len(group), "diverged": len(group) - len(ok)}
        for name in names:
            values = [r["metrics"].get(name) for r in ok]
            values = [float(v) for v in values if v is not None and math.isfinite(v)]
            row[name] = statistics.fmean(values) if values else None
            row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        rows.append(row)
    return rows


def _row(rows: Sequence[Mapping[str, Any]], wd: float) -> Mapping[str, Any] | None:
    return next((r for r in rows if r["weight_decay"] == wd), None)


def choose_best(rows: Sequence[Mapping[str, Any]], objective: str, maximize: bool) -> dict[str, Any] | None:
    """The best λ, its gain over λ = 0, and the verdict; None when every λ diverged."""
    usable = [r for r in rows if r["diverged"] == 0 and r.get(objective) is not None]
    if not usable:
        return None
    sign = 1.0 if maximize else -1.0
    # ties go to the smaller λ: the least intervention that does as well
    best = max(usable, key=lambda r: (sign * r[objective], -r["weight_decay"]))
    out: dict[str, Any] = {
        "weight_decay": best["weight_decay"],
        "metric": objective,
        "maximize": maximize,
        "value": best[objective],
        "std": best[f"{objective}_std"],
        "seeds": best["seeds"],
    }
    base = _row(rows, 0.0)
    if base is None or base.get(objective) is None or base["diverged"]:
        out.update(baseline=None, gain=None, gain_stderr=None, helps=None)
        return out
    gain = sign * (best[objective] - base[objective])
    stderr = math.sqrt(best[f"{objective}_std"] ** 2 / best["seeds"] + base[f"{objective}_std"] ** 2 / base["seeds"])
    floor = 0.005 if _is_accuracy(objective) else 0.01 * abs(base[objective])
    out.update(
        baseline=base[objective],
        baseline_std=base[f"{objective}_std"],
        gain=gain,
        gain_stderr=stderr,
        helps=bool(best["weight_decay"] > 0 and gain > 2 * stderr and gain > floor),
    )
    return out


# ---------------------------------------------------------------- text


def _fmt(value: float | None, std: float | None, percent: bool, show_std: bool = True) -> str:
    if value is None:
        return "-"
    if percent:
        return f"{value * 100:.1f} ± {(std or 0.0) * 100:.1f}" if show_std else f"{value * 100:.1f}"
    return f"{value:.4g} ± {(std or 0.0):.2g}" if show_std else f"{value:.4g}"


def _lam(value: float) -> str:
    return "0" if value == 0 else f"{value:.4g}"


def results_table(rows: Sequence[Mapping[str, Any]], names: Sequence[str], best: float | None) -> str:

    gap_is_accuracy = "train_accuracy" in names
    show_std = any(r["seeds"] - r["diverged"] > 1 for r in rows)  # one seed: no spread to show
    headers = ["λ", *(_HEADERS.get(n, n) if n != "gap" or not gap_is_accuracy else "gap %" for n in names), ""]
    body = []
    for r in rows:
        cells = [_lam(r["weight_decay"])]
        for n in names:
            percent = _is_accuracy(n) or (n == "gap" and gap_is_accuracy)
            cells.append(_fmt(r.get(n), r.get(f"{n}_std"), percent, show_std))
        mark = []
        if best is not None and r["weight_decay"] == best:
            mark.append("← best")
        if r["diverged"]:
            mark.append(f"diverged {r['diverged']}/{r['seeds']} seeds")
        cells.append(", ".join(mark))
        body.append(cells)
    return format_table(headers, body, align="r" * (len(headers) - 1) + "l")


def _describe_value(name: str, value: float, std: float | None) -> str:
    if _is_accuracy(name):
        return f"{value:.1%}" + (f" ± {std * 100:.1f}" if std else "")
    return f"{value:.4g}" + (f" ± {std:.2g}" if std else "")


def verdict(best: Mapping[str, Any] | None, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The sentences under the table: what the best λ is, and whether it beats λ = 0 beyond noise."""
    if best is None:
        return ["every λ diverged (non-finite loss) for at least one seed: no best λ; lower the learning rate"]
    name = best["metric"].replace("_", " ")
    lam = _lam(best["weight_decay"])
    seeds = best["seeds"]
    seed_text = f"{seeds} seed{'s' if seeds != 1 else ''}"
    value = _describe_value(best["metric"], best["value"], best["std"])
    lines = []
    if best.get("gain") is None:
        lines.append(f"best λ = {lam}: {name} {value} ({seed_text}); no λ = 0 run to compare with")
    else:
        base = _describe_value(best["metric"], best["baseline"], best["baseline_std"])
        if _is_accuracy(best["metric"]):
            gain = f"{best['gain'] * 100:+.1f} ± {best['gain_stderr'] * 100:.1f} points"
        else:
            rel = best["gain"] / abs(best["baseline"]) if best["baseline"] else float("nan")
            better = "lower" if not best["maximize"] else "higher"
            gain = f"{rel:.0%} {better}" if math.isfinite(rel) else f"{best['gain']:+.3g}"
        if best["weight_decay"] == 0:
            lines.append(f"best λ = 0: no weight decay tried beats none on {name} ({base}, {seed_text}).")
            lines.append("verdict: weight decay does not help here.")
        elif best["helps"]:
            lines.append(f"best λ = {lam}: {name} {value} vs {base} at λ = 0 ({gain}, {seed_text} each).")
            caveat = " (one seed: no measure of seed-to-seed noise; use --seeds 3 unless training is deterministic)"
            lines.append(f"verdict: weight decay helps here; use λ ≈ {lam}." + (caveat if seeds < 2 else ""))
        else:
            lines.append(f"best λ = {lam}: {name} {value} vs {base} at λ = 0 ({gain}, {seed_text} each).")
            if best["gain"] <= 2 * best["gain_stderr"]:
                why = "the gain is within seed-to-seed noise (less than twice its standard error)"
            else:
                why = "the gain is below " + ("half a point" if _is_accuracy(best["metric"]) else "1%")
            lines.append(f"verdict: weight decay does not measurably help here: {why}.")
    if best["metric"] == "test_accuracy":
        lines += _loss_line(rows)
    positive = [r for r in rows if r["weight_decay"] > 0]
    if positive and best["weight_decay"] == positive[-1]["weight_decay"] and len(positive) > 1:
        lines.append(f"the best λ is the largest one tried: try larger values (e.g. up to {best['weight_decay'] * 10:g})")
    top = rows[-1]
    if top["weight_decay"] > best["weight_decay"] and top.get(best["metric"]) is not None:
        worse = (best["value"] - top[best["metric"]]) * (1 if best["maximize"] else -1)
        big = worse > (0.1 if _is_accuracy(best["metric"]) else 0.5 * abs(best["value"]))
        if big:
            norm = top.get("weight_norm")
            norm_text = f", ‖w‖ = {norm:.3g}" if norm is not None else ""
            lines.append(
                f"too much decay hurts: at λ = {_lam(top['weight_decay'])} {name} is "
                f"{_describe_value(best['metric'], top[best['metric']], top[best['metric'] + '_std'])}"
                f"{norm_text} (the weights are shrunk towards zero faster than the data can grow them)"
            )
    return lines


def _loss_line(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Accuracy is the objective; say where the test loss is best too, when decay moves it (calibration)."""
    usable = [r for r in rows if r["diverged"] == 0 and r.get("test_loss") is not None]
    base = _row(rows, 0.0)
    if not usable or base is None or base.get("test_loss") is None:
        return []
    best = min(usable, key=lambda r: (r["test_loss"], r["weight_decay"]))
    if best["weight_decay"] == 0 or best["test_loss"] > 0.99 * base["test_loss"]:
        return []
    change = 1 - best["test_loss"] / base["test_loss"]
    return [
        f"test loss is lowest at λ = {_lam(best['weight_decay'])}: {best['test_loss']:.3g} vs "
        f"{base['test_loss']:.3g} at λ = 0 ({change:.0%} lower)"
    ]


def format_report(
    rows: Sequence[Mapping[str, Any]],
    best: Mapping[str, Any] | None,
    *,
    header: Sequence[str],
    notes: Sequence[str],
    files: Mapping[str, str],
) -> str:
    records_names = [n for n in METRIC_ORDER if any(n in r for r in rows)]
    extra = sorted({k for r in rows for k in r} - set(METRIC_ORDER) - {"weight_decay", "seeds", "diverged"})
    extra = [k for k in extra if not k.endswith("_std")]
    names = records_names + extra
    lines = [*header, "", results_table(rows, names, None if best is None else best["weight_decay"]), ""]
    lines += verdict(best, rows)
    lines += [f"note: {n}" for n in notes]
    if files:
        lines.append("plots: " + ", ".join(files.values()))
    return "\n".join(lines)
