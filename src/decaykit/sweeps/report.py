"""From finished trials to the table, the best λ, and an honest sentence about whether decay helped.

Each λ's row holds, for every metric, the mean over the seeds that did not diverge and the
sample standard deviation beside it (``test_accuracy`` and ``test_accuracy_std``), and how many
seeds *failed* (did not train, ``sanity.py``) with the first reason. The best λ maximises (or
minimises) the objective's mean among rows where every seed trained; when λ = 0 itself fails
the setup does not train, and no λ is recommended. Decay is said to help only when the gain over
λ = 0 exceeds both twice its standard error, √(s²_best/n_best + s²_0/n_0), and a minimal size
(half a point of accuracy, 1% of a loss): otherwise the report says the gain is within
seed-to-seed noise. By the same test, the λ next to the best whose objective is within twice the
standard error of the difference form ``range``, the λ the noise cannot tell from the best; the
best λ is written with no more digits than that range, or the grid's own spacing, supports.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from decaykit._render import format_table

__all__ = [
    "METRIC_ORDER",
    "aggregate",
    "best_range",
    "choose_best",
    "format_report",
    "results_cells",
    "rounded_in",
    "table_names",
    "trained",
    "verdict",
]

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
        failing = [r for r in group if _failure_of(r) is not None]
        row: dict[str, Any] = {"weight_decay": wd, "seeds": len(group), "diverged": len(group) - len(ok),
                               "failed": len(failing), "failure": _failure_of(failing[0]) if failing else None,
                               "failure_seed": failing[0]["seed"] if failing else None}  # fmt: skip
        undefined: dict[str, int] = {}
        for name in names:
            values = [r["metrics"].get(name) for r in ok]
            values = [float(v) for v in values if v is not None and math.isfinite(v)]
            row[name] = statistics.fmean(values) if values else None
            row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
            missing = sum(1 for r in ok if name in r["metrics"] and not _defined(r["metrics"][name]))
            if missing:
                undefined[name] = missing
        row["undefined"] = undefined  # per metric, the seeds that trained but on which it is NaN (a user's 0/0)
        rows.append(row)
    return rows


def _defined(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def undefined_at(row: Mapping[str, Any], name: str) -> int:
    """How many of the row's trained seeds have ``name`` undefined (NaN: a user's metric such as the
    precision of a class the model never predicts, 0/0)."""
    return int(row.get("undefined", {}).get(name, 0))


def _rankable(row: Mapping[str, Any], objective: str) -> bool:
    """The row trained and its objective is defined on every seed: a mean over fewer seeds is not comparable."""
    return trained(row) and row.get(objective) is not None and not undefined_at(row, objective)


def _failure_of(record: Mapping[str, Any]) -> dict[str, str] | None:
    """A trial's failure; a diverged trial stored before failures were recorded counts as diverged."""
    failure = record.get("failure")
    if failure is None and record["diverged"]:
        return {"kind": "diverged", "reason": "the loss became non-finite (NaN or inf)"}
    return failure


def trained(row: Mapping[str, Any]) -> bool:
    """Every seed of the row trained (none diverged or failed): the row may be compared and chosen."""
    return row["diverged"] == 0 and row.get("failed", 0) == 0


def _row(rows: Sequence[Mapping[str, Any]], wd: float) -> Mapping[str, Any] | None:
    return next((r for r in rows if r["weight_decay"] == wd), None)


def _stderr(a: Mapping[str, Any], b: Mapping[str, Any], objective: str) -> float:
    """Standard error of the difference of two rows' means of ``objective``."""
    return math.sqrt(a[f"{objective}_std"] ** 2 / a["seeds"] + b[f"{objective}_std"] ** 2 / b["seeds"])


def best_range(rows: Sequence[Mapping[str, Any]], best: Mapping[str, Any], objective: str) -> tuple[float, float]:
    """The λ next to ``best`` (a contiguous run of rows that trained) whose objective is within twice the
    standard error of its difference from the best's: the seeds cannot tell them from the best. A λ between
    them that failed or cannot be ranked ends the run: "anything in 0.1–3" must not span a λ that failed."""
    ordered = sorted(rows, key=lambda r: r["weight_decay"])
    i = next(j for j, r in enumerate(ordered) if r["weight_decay"] == best["weight_decay"])

    def close(r: Mapping[str, Any]) -> bool:
        return _rankable(r, objective) and abs(r[objective] - best[objective]) <= 2 * _stderr(r, best, objective)

    lo = hi = i
    while lo > 0 and close(ordered[lo - 1]):
        lo -= 1
    while hi + 1 < len(ordered) and close(ordered[hi + 1]):
        hi += 1
    return ordered[lo]["weight_decay"], ordered[hi]["weight_decay"]


def _resolution(rows: Sequence[Mapping[str, Any]], wd: float) -> tuple[float, float]:
    """The λ the grid cannot tell from ``wd``: up to the geometric midpoints to its tried neighbours
    (a λ between two tried values is only known to be nearer one of them)."""
    tried = sorted(r["weight_decay"] for r in rows if r["weight_decay"] > 0)
    if wd <= 0 or wd not in tried:
        return wd, wd
    i = tried.index(wd)
    low = math.sqrt(tried[i - 1] * wd) if i > 0 else wd
    high = math.sqrt(wd * tried[i + 1]) if i + 1 < len(tried) else wd
    return low, high


def rounded_in(value: float, low: float, high: float, most: int = 4) -> str:
    """``value`` with the fewest significant digits (at most ``most``) whose rounding stays in [low, high].

    >>> rounded_in(3.44515, 1.2, 8.9), rounded_in(3.44515, 3.3, 3.5), rounded_in(3.44515, 3.44515, 3.44515)
    ('3', '3.4', '3.445')
    """
    if value == 0:
        return "0"
    for digits in range(1, most):
        text = f"{value:.{digits}g}"
        if low <= float(text) <= high:
            return f"{float(text):g}"  # 30, not 3e+01
    return f"{float(f'{value:.{most}g}'):g}"


def choose_best(rows: Sequence[Mapping[str, Any]], objective: str, maximize: bool) -> dict[str, Any] | None:
    """The best λ, its range within noise, its gain over λ = 0, and the verdict; None when no λ trained
    or λ = 0 itself failed (the setup does not train: no λ is recommended). A row whose objective is
    undefined (NaN) on some seed is not ranked, and ``unranked`` lists it."""
    usable = [r for r in rows if _rankable(r, objective)]
    base = _row(rows, 0.0)
    if not usable or (base is not None and not trained(base)):
        return None
    sign = 1.0 if maximize else -1.0
    # ties go to the smaller λ: the least intervention that does as well
    best = max(usable, key=lambda r: (sign * r[objective], -r["weight_decay"]))
    low, high = best_range(rows, best, objective)
    # rounded within the range the verdict prints beside it (the seeds' noise), or, where no other λ is within
    # noise, within what the grid cannot tell apart: "use λ ≈ 5 (anything in 2.2–4.6 ...)" contradicted itself
    span = (low, high) if low != high else _resolution(rows, best["weight_decay"])
    out: dict[str, Any] = {
        "weight_decay": best["weight_decay"],
        "range": [low, high],
        "rounded": rounded_in(best["weight_decay"], *span),
        "metric": objective,
        "maximize": maximize,
        "value": best[objective],
        "std": best[f"{objective}_std"],
        "seeds": best["seeds"],
        "unranked": [r["weight_decay"] for r in rows if trained(r) and not _rankable(r, objective)],
    }
    if base is None or not _rankable(base, objective):
        out.update(baseline=None, gain=None, gain_stderr=None, helps=None)
        return out
    gain = sign * (best[objective] - base[objective])
    stderr = _stderr(best, base, objective)
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
    headers, body, align = results_cells(rows, names, best)
    return format_table(headers, body, align=align)


def results_cells(
    rows: Sequence[Mapping[str, Any]], names: Sequence[str], best: float | None
) -> tuple[list[str], list[list[str]], str]:
    """The table's headers, its cells as text (one row per λ, the last cell its marks) and its alignment:
    the one content the text report and the notebook's HTML table both show."""
    gap_is_accuracy = "train_accuracy" in names
    show_std = any(r["seeds"] - r["diverged"] > 1 for r in rows)  # one seed: no spread to show
    headers = ["λ", *(_HEADERS.get(n, n) if n != "gap" or not gap_is_accuracy else "gap %" for n in names), ""]
    body = []
    for r in rows:
        cells = [_lam(r["weight_decay"])]
        for n in names:
            percent = _is_accuracy(n) or (n == "gap" and gap_is_accuracy)
            undefined = r.get(n) is None and undefined_at(r, n) > 0
            cells.append("n/a" if undefined else _fmt(r.get(n), r.get(f"{n}_std"), percent, show_std))
        mark = []
        if best is not None and r["weight_decay"] == best:
            mark.append("← best")
        if r["diverged"]:
            mark.append(f"diverged {r['diverged']}/{r['seeds']} seeds")
        elif r.get("failed"):
            mark.append(f"failed {r['failed']}/{r['seeds']} seeds")
        cells.append(", ".join(mark))
        body.append(cells)
    return headers, body, "r" * (len(headers) - 1) + "l"


# decaykit's own metrics (their split prefix aside), whose direction goes without saying
_OWN_METRICS = ("accuracy", "loss", "gap", "weight_norm", "distance_to_closed_form")


def _describe_value(name: str, value: float, std: float | None) -> str:
    if _is_accuracy(name):
        return f"{value:.1%}" + (f" ± {std * 100:.1f}" if std else "")
    return f"{value:.4g}" + (f" ± {std:.2g}" if std else "")


def verdict(best: Mapping[str, Any] | None, rows: Sequence[Mapping[str, Any]], objective: str | None = None) -> list[str]:
    """The sentences under the table: what the best λ is, and whether it beats λ = 0 beyond noise.
    ``objective``: the metric the best λ is chosen by (to say why there is none)."""
    if best is None:
        return _no_best(rows, objective)
    name = best["metric"].replace("_", " ")
    if not best["metric"].endswith(_OWN_METRICS):  # a metric of the user's: say which way it was ranked
        name += f" ({'higher' if best['maximize'] else 'lower'} is better)"
    lam = best.get("rounded") or _lam(best["weight_decay"])
    within = _within_noise(best)
    seeds = best["seeds"]
    seed_text = f"{seeds} seed{'s' if seeds != 1 else ''}"
    value = _describe_value(best["metric"], best["value"], best["std"])
    lines = []
    base_row = _row(rows, 0.0)
    if best.get("gain") is None and base_row is not None and undefined_at(base_row, best["metric"]):
        lines.append(f"best λ = {lam}: {name} {value} ({seed_text}); at λ = 0 {name} is undefined (NaN), "
                     "so decay cannot be judged against it")  # fmt: skip
    elif best.get("gain") is None:
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
            lines.append(f"verdict: weight decay helps here; use λ ≈ {lam}{within}." + (caveat if seeds < 2 else ""))
        else:
            lines.append(f"best λ = {lam}: {name} {value} vs {base} at λ = 0 ({gain}, {seed_text} each).")
            if best["gain"] <= 2 * best["gain_stderr"]:
                why = "the gain is within seed-to-seed noise (less than twice its standard error)"
            else:
                why = "the gain is below " + ("half a point" if _is_accuracy(best["metric"]) else "1%")
            lines.append(f"verdict: weight decay does not measurably help here: {why}.")
    if within and not best.get("helps"):
        lines.append(f"λ ≈ {lam}{within}")
    if best.get("unranked"):
        lines.append(_unranked_line(best["metric"], best["unranked"]))
    if best["metric"] == "test_accuracy":
        lines += _loss_line(rows)
    positive = [r for r in rows if r["weight_decay"] > 0]
    if positive and best["weight_decay"] == positive[-1]["weight_decay"] and len(positive) > 1:
        lines.append(f"the best λ is the largest one tried: try larger values (e.g. up to {best['weight_decay'] * 10:g})")
    lines += _too_much_decay(best, rows)
    return lines


def _too_much_decay(best: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The largest λ measured, when it is far worse than the best. "Shrunk" is said only when its weights are
    smaller than the best λ's; a failed row whose weights did not shrink (they exploded) is left to its
    failure's own note."""
    metric = best["metric"]
    measured = [r for r in rows if r["diverged"] == 0 and r.get(metric) is not None and not undefined_at(r, metric)]
    top = measured[-1] if measured else None
    if top is None or top["weight_decay"] <= best["weight_decay"]:
        return []
    worse = (best["value"] - top[metric]) * (1 if best["maximize"] else -1)
    if not worse > (0.1 if _is_accuracy(metric) else 0.5 * abs(best["value"])):
        return []
    norm, best_norm = top.get("weight_norm"), (_row(rows, best["weight_decay"]) or {}).get("weight_norm")
    shrunk = norm is not None and best_norm is not None and norm < best_norm
    if not shrunk and not trained(top):
        return []
    norm_text = f", ‖w‖ = {norm:.3g}" if norm is not None else ""
    why = " (the weights are shrunk towards zero faster than the data can grow them)" if shrunk else ""
    return [f"too much decay hurts: at λ = {_lam(top['weight_decay'])} {metric.replace('_', ' ')} is "
            f"{_describe_value(metric, top[metric], top[metric + '_std'])}{norm_text}{why}"]  # fmt: skip


def _unranked_line(metric: str, lams: Sequence[float]) -> str:
    at = ", ".join(_lam(wd) for wd in lams)
    return (f"{metric.replace('_', ' ')} is undefined (NaN) on some seeds at λ = {at} (a metric such as a class's "
            "precision is 0/0 when the model never predicts that class): those λ are not ranked")


def _within_noise(best: Mapping[str, Any]) -> str:
    """`` (anything in 1.2–8.9 is within noise)`` when other λ tried are as good within the seeds' noise."""
    low, high = best.get("range") or (best["weight_decay"], best["weight_decay"])
    if low == high:
        return ""
    return f" (anything in {_lam_short(low)}–{_lam_short(high)} is within noise of the best)"


def _lam_short(value: float) -> str:
    return "0" if value == 0 else f"{value:.2g}"


def _no_best(rows: Sequence[Mapping[str, Any]], objective: str | None = None) -> list[str]:
    """Why there is no best λ: λ = 0 itself does not train, or no λ does, or the objective is undefined."""
    from decaykit.sweeps.sanity import ADVICE

    base = _row(rows, 0.0)
    failing = base if base is not None and not trained(base) else next((r for r in rows if not trained(r)), None)
    unranked = [r["weight_decay"] for r in rows if trained(r) and objective and undefined_at(r, objective)]
    if unranked and (base is None or trained(base)):
        return [f"verdict: no best λ: {_unranked_line(objective or '', unranked)}; rank by another metric (--metric)"]
    if failing is None or failing.get("failure") is None:
        return ["no λ was measured: no best λ"]
    failure = failing["failure"]
    advice = ADVICE.get(failure["kind"], "check the model, the data and the learning rate")
    seeds = f"{failing['failed']} of {failing['seeds']} seed{'s' if failing['seeds'] != 1 else ''}"
    if failing is base:
        return [
            f"verdict: the setup does not train: at λ = 0, {seeds} failed: {failure['reason']}; {advice}. "
            "No λ is recommended: decay cannot be judged against a baseline that does not train."
        ]
    if all(r["diverged"] for r in rows):
        return [f"every λ diverged (non-finite loss) for at least one seed: no best λ; {advice}"]
    return [f"verdict: no λ trained on every seed (e.g. λ = {_lam(failing['weight_decay'])}, {seeds}: "
            f"{failure['reason']}); no best λ; {advice}"]  # fmt: skip


def _loss_line(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Accuracy is the objective; say where the test loss is best too, when decay moves it (calibration).
    Only rows whose every seed trained are compared: a failed run's loss says nothing about decay."""
    usable = [r for r in rows if trained(r) and r.get("test_loss") is not None]
    base = _row(rows, 0.0)
    if not usable or base is None or not trained(base) or base.get("test_loss") is None:
        return []
    best = min(usable, key=lambda r: (r["test_loss"], r["weight_decay"]))
    if best["weight_decay"] == 0 or best["test_loss"] > 0.99 * base["test_loss"]:
        return []
    change = 1 - best["test_loss"] / base["test_loss"]
    return [
        f"test loss is lowest at λ = {_lam(best['weight_decay'])}: {best['test_loss']:.3g} vs "
        f"{base['test_loss']:.3g} at λ = 0 ({change:.0%} lower)"
    ]


# row keys that are not metric columns
_NOT_METRICS = frozenset({"weight_decay", "seeds", "diverged", "failed", "failure", "failure_seed", "undefined"})


def table_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metrics the table shows, in its column order: :data:`METRIC_ORDER`, then the others by name."""
    records_names = [n for n in METRIC_ORDER if any(n in r for r in rows)]
    extra = sorted({k for r in rows for k in r} - set(METRIC_ORDER) - _NOT_METRICS)
    extra = [k for k in extra if not k.endswith("_std")]
    return records_names + extra


def format_report(
    rows: Sequence[Mapping[str, Any]],
    best: Mapping[str, Any] | None,
    *,
    header: Sequence[str],
    notes: Sequence[str],
    files: Mapping[str, str],
    objective: str | None = None,
) -> str:
    names = table_names(rows)
    lines = [*header, "", results_table(rows, names, None if best is None else best["weight_decay"]), ""]
    lines += verdict(best, rows, objective)
    lines += [f"note: {n}" for n in notes]
    if files:
        lines.append("plots: " + ", ".join(files.values()))
    return "\n".join(lines)
