"""``decaykit inspect MODEL``: every parameter with its decay decision and reason, then a summary."""

from __future__ import annotations

import argparse
import dataclasses
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
                        help="peak learning rate: adds the EMA timescale τ = 1/(lr·λ) of decayed tensors (for a "
                             "torch-AdamW λ) to the summary")
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
    timescale = _timescale(args)
    if args.json:
        out: dict[str, Any] = {"model": args.model, **decided.to_dict()}
        if other is not None:
            out["diff"] = {"policy": other.policy, "parameters": diff}
        if timescale is not None:
            out["timescale"] = {"lr": args.lr, "iterations": timescale.iterations, "epochs": timescale.epochs}
        print_json(out)
    elif other is None:
        print(decided)
    else:
        _print_diff(decided, other, diff)
    if timescale is not None and not args.json:
        print(f"timescale: {timescale}")
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


def _timescale(args: argparse.Namespace) -> Any:
    if args.lr is None:
        return None
    from decaykit.convert import timescale

    return timescale(args.lr, args.weight_decay, dataset_size=args.dataset_size, batch_size=args.batch_size)
