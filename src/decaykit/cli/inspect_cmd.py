"""``decaykit inspect MODEL``: every parameter with its decay decision and reason, then a summary."""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

from decaykit._render import format_table, print_json
from decaykit.cli.common import add_policy_arguments, no_effect, policy_from_args

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]


HELP = "list every parameter with its decay decision and reason"
DESCRIPTION = ("List every parameter of MODEL (name, shape, numel, owner module, decayed or not, weight "
    "decay, lr scale, reason) and a per-group summary. MODEL is a built-in demo (resnet50, convnext, vit, "
    "gpt, mlp) or an import path 'package.module:factory', e.g. torchvision.models:resnet50. Where a tensor "
    "sits outside the layers decaykit knows, one forward pass on fake tensors (no real compute or memory) shows "
    "how each tensor is used, and the decision follows the use (--example: always, --no-trace: never). With --diff, exit status 1 if the two policies decide any tensor differently.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL")
    add_policy_arguments(parser)
    from decaykit.policy.presets import PRESETS

    parser.add_argument("--diff", metavar="POLICY", choices=sorted(PRESETS),
                        help="show where POLICY decides differently, parameter by parameter (exit status 1 if "
                             "anywhere)")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate: adds the EMA timescale τ = 1/(lr·lr_scale·λ) of each group of "
                             "decayed tensors (for a torch-AdamW λ) to the summary")
    parser.add_argument("--dataset-size", type=int, default=None, metavar="N", help="with --lr: τ in epochs too")
    parser.add_argument("--batch-size", type=int, default=None, metavar="B", help="with --lr: τ in epochs too")
    trace = parser.add_mutually_exclusive_group()
    trace.add_argument("--example", action="store_true",
                       help="trace one forward pass on an input the model makes itself (its example_inputs(), a "
                            "transformers config's vocabulary, its first weight layer) even when every tensor is in a "
                            "known layer, and decide from how each tensor is used; what the pass does not reach is "
                            "decided from the structure")
    trace.add_argument("--no-trace", action="store_true",
                       help="decide from the structure alone (owning module, name, shape), with no traced pass")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def run(args: argparse.Namespace) -> int:
    from decaykit._loading import build_model
    from decaykit.models import DEMO_MODELS
    from decaykit.policy.plan import plan

    _check_flags(args)
    settings = policy_from_args(args)
    model = build_model(args.model, named=DEMO_MODELS)
    example = "auto" if args.example else (False if args.no_trace else None)
    decided = plan(model, args.weight_decay, policy=settings, example_inputs=example)
    other = None
    if args.diff is not None:
        other = plan(model, args.weight_decay, policy=dataclasses.replace(settings, preset=args.diff),
                     example_inputs=example)
    diff = [] if other is None else _diff_rows(decided, other)
    timescales = _timescales(args, decided)
    if args.json:
        out: dict[str, Any] = {"model": args.model, **decided.to_dict()}
        if other is not None:
            out["diff"] = {"policy": other.policy, "parameters": diff}
        if timescales is not None:
            out["timescale"] = _timescale_json(args.lr, timescales)
        print_json(out)
    elif other is None:
        print(decided)
    else:
        _print_diff(decided, other, diff)
    if timescales is not None and not args.json:
        print(_timescale_text(timescales))
    return 1 if diff else 0


def _check_flags(args: argparse.Namespace) -> None:
    """Numbers in range, and no flag that would be ignored."""
    import warnings

    from decaykit._validate import check_int, check_number
    from decaykit.errors import DecayWarning

    args.weight_decay = check_number(args.weight_decay, "--weight-decay")
    if args.lr is not None:
        args.lr = check_number(args.lr, "--lr", allow_zero=False)
    for flag, value in (("--dataset-size", args.dataset_size), ("--batch-size", args.batch_size)):
        if value is None:
            continue
        check_int(value, flag, minimum=1)
        if args.lr is None:
            raise no_effect(flag, "without --lr (it turns the timescale τ = 1/(lr·λ) into epochs)", "add --lr")
    if (args.dataset_size is None) != (args.batch_size is None):
        given, missing = ("--dataset-size", "--batch-size") if args.batch_size is None else ("--batch-size", "--dataset-size")
        raise no_effect(given, f"without {missing} (τ in epochs = B/(lr·λ·N) needs both)", f"add {missing}")
    if args.diff is not None and args.diff == args.policy:
        warnings.warn(f"--diff {args.diff} compares policy {args.policy!r} with itself: no differences to show",
                      DecayWarning, stacklevel=2)


def _print_diff(decided: Any, other: Any, diff: list[dict[str, Any]]) -> None:
    print(f"{len(diff)} of {len(decided)} tensors are decided differently by {decided.policy!r} and {other.policy!r}")
    if diff:
        rows = [[r["name"], r["shape"], r["module_type"], r["a"]["weight_decay"], r["a"]["reason"],
                 r["b"]["weight_decay"], r["b"]["reason"]] for r in diff]
        print(format_table(["name", "shape", "module", f"wd {decided.policy}", "why",
                            f"wd {other.policy}", "why"], rows, align="lllrlrl"))
    print()
    print(decided.summary_text())


def _shape(shape: tuple[int, ...]) -> str:
    return str(tuple(shape))


def _diff_rows(a: Any, b: Any) -> list[dict[str, Any]]:
    rows = []
    for da, db in zip(a, b):
        if (da.weight_decay, da.lr_scale) != (db.weight_decay, db.lr_scale):
            rows.append({"name": da.name, "shape": _shape(da.shape), "module_type": da.module_type,
                         "a": {"policy": a.policy, "weight_decay": da.weight_decay, "reason": da.reason},
                         "b": {"policy": b.policy, "weight_decay": db.weight_decay, "reason": db.reason}})
    return rows


def _timescales(args: argparse.Namespace, decided: Any) -> list[tuple[dict[str, Any], Any]] | None:
    """(group row, its timescale) per group of decayed tensors: τ = 1/(η·λ) with the group's own η = lr·lr_scale and
    λ (--layer-decay and --rule change both); one row of λ = 0 when nothing decays."""
    if args.lr is None:
        return None
    from decaykit.convert import timescale

    sizes = {"dataset_size": args.dataset_size, "batch_size": args.batch_size}
    rows = [r for r in decided.summary() if not r.get("frozen") and r["weight_decay"] > 0]
    if not rows:
        return [({"weight_decay": 0.0, "lr_scale": 1.0, "tensors": 0, "parameters": 0},
                 timescale(args.lr, 0.0, **sizes))]
    # an lr_scale of 0 never steps its tensors, so it never decays them: τ = ∞, as for λ = 0
    return [(r, timescale(args.lr * r["lr_scale"] if r["lr_scale"] > 0 else args.lr,
                          r["weight_decay"] if r["lr_scale"] > 0 else 0.0, **sizes)) for r in rows]


def _timescale_json(lr: float, timescales: list[tuple[dict[str, Any], Any]]) -> dict[str, Any]:
    """One entry per group of decayed tensors; ``iterations`` and ``epochs`` at the top only when all share one τ."""
    groups = [{"weight_decay": r["weight_decay"], "lr_scale": r["lr_scale"], "lr": lr * r["lr_scale"],
               "tensors": r["tensors"], "parameters": r["parameters"], "iterations": t.iterations, "epochs": t.epochs}
              for r, t in timescales]
    one = len({t.iterations for _, t in timescales}) == 1
    first = timescales[0][1]
    return {"lr": lr, "iterations": first.iterations if one else None, "epochs": first.epochs if one else None,
            "dataset_size": first.dataset_size, "batch_size": first.batch_size,
            "steps_per_epoch": first.steps_per_epoch, "groups": groups}


def _timescale_text(timescales: list[tuple[dict[str, Any], Any]]) -> str:
    """One line when every decayed tensor has the same τ, else the range and a row per group."""
    first = timescales[0][1]
    per_epoch = "" if first.epochs is None else (
        f" (N = {first.dataset_size:,}, B = {first.batch_size:,}, {first.steps_per_epoch:,} steps per epoch)")
    if len({t.iterations for _, t in timescales}) == 1:
        row = timescales[0][0]
        if row["weight_decay"] > 0 and row["lr_scale"] == 0:
            return "timescale: τ = ∞ (lr_scale 0: the decayed tensors are never stepped, so never decayed)"
        scaled = f" at η = lr·lr_scale = {first.lr:g}" if row["lr_scale"] != 1 and row["weight_decay"] > 0 else ""
        return f"timescale: {first}{scaled}"
    steps = [t.iterations for _, t in timescales]
    text = f"timescale: τ = 1/(lr·lr_scale·λ) = {_number(min(steps))} .. {_number(max(steps))} steps"
    if first.epochs is not None:
        epochs = [t.epochs for _, t in timescales]
        text += f" = {_number(min(epochs))} .. {_number(max(epochs))} epochs{per_epoch}"
    rows = [[r["weight_decay"], round(r["lr_scale"], 6), r["tensors"], r["parameters"], _number(t.iterations)]
            + ([] if t.epochs is None else [_number(t.epochs)]) for r, t in timescales]
    head = ["weight_decay", "lr_scale", "tensors", "parameters", "τ steps"] + ([] if first.epochs is None else
                                                                              ["τ epochs"])
    return f"{text}, per group of decayed tensors:\n{format_table(head, rows, align='r' * len(head))}"


def _number(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:,.4g}"
