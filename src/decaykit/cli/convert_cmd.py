"""``decaykit convert LAMBDA --from CONV``: the same weight decay in every convention, and its timescale."""

from __future__ import annotations

import argparse
import math
from typing import Any

from decaykit._render import format_table, print_json
from decaykit.cli.common import no_effect
from decaykit.convert import ALIASES, CONVENTIONS

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]


_NAMES = ", ".join(CONVENTIONS)
_ALIASES = ", ".join(f"{a}={c}" for a, c in ALIASES.items())
HELP = "carry a weight decay across conventions (AdamW, Composer, AdamC, L2) and show its EMA timescale"
DESCRIPTION = (f"Print LAMBDA, given in convention --from, in every convention ({_NAMES}; aliases "
    f"{_ALIASES}), matched so each decays as much per step at LR --lr (default --max-lr), and the EMA "
    "timescale tau = 1/(lr * lambda) of the torch-AdamW value. With --to, print only that number. "
    "With --tau-steps or --tau-epochs, start from the lambda that gives that timescale instead.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weight_decay", metavar="LAMBDA", nargs="?", type=float, help="the weight decay to convert")
    parser.add_argument("--from", dest="from_", default=None, metavar="CONV",
                        help="convention LAMBDA is given in (default: lr_coupled, torch AdamW)")
    parser.add_argument("--to", default=None, metavar="CONV", help="print only the value in this convention")
    parser.add_argument("--lr", type=float, default=None, help="LR at which to match the decay (default: --max-lr)")
    parser.add_argument("--max-lr", type=float, default=None, help="peak LR eta_max of the schedule")
    parser.add_argument("--steps", type=int, default=None, help="total optimizer steps (convention 'normalized')")
    parser.add_argument("--momentum", type=float, default=None, help="SGD momentum (convention 'sgd_l2', default 0)")
    parser.add_argument("--dampening", type=float, default=None, help="SGD dampening (convention 'sgd_l2', default 0)")
    parser.add_argument("--grad-rms", type=float, default=None,
                        help="RMS of the gradients, sqrt(mean(exp_avg_sq)) (convention 'adam_l2', approximate)")
    parser.add_argument("--dataset-size", type=int, default=None, help="training examples N, for tau in epochs")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size B, for tau in epochs")
    parser.add_argument("--drop-last", action="store_true",
                        help="the loader drops the last partial batch: an epoch is floor(N/B) steps, not ceil(N/B)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--tau-steps", type=float, default=None, help="start from the lambda with this timescale in steps")
    target.add_argument("--tau-epochs", type=float, default=None,
                        help="start from the lambda with this timescale in epochs (needs --dataset-size, --batch-size)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def run(args: argparse.Namespace) -> int:
    from decaykit.convert import (
        CONVENTIONS,
        canonical_convention,
        convert,
        timescale,
        weight_decay_for_timescale,
    )
    from decaykit.errors import DecayError

    eta = args.lr if args.lr is not None else args.max_lr
    starts_from_tau = args.tau_steps is not None or args.tau_epochs is not None
    if starts_from_tau:
        if args.weight_decay is not None:
            raise DecayError("give LAMBDA or --tau-steps/--tau-epochs, not both", argument="LAMBDA")
        if args.from_ is not None:
            raise no_effect("--from", "with --tau-steps/--tau-epochs (they give a torch-AdamW λ, convention "
                            "lr_coupled)", "drop --from")
        if eta is None:
            raise DecayError("a timescale needs --lr (or --max-lr): lambda = 1/(lr * tau)", argument="--lr")
        source = "lr_coupled"
    elif args.weight_decay is None:
        raise DecayError("give LAMBDA (the weight decay to convert), or --tau-steps / --tau-epochs", argument="LAMBDA")
    else:
        source = canonical_convention(args.from_ or "lr_coupled", "--from")
    target = None if args.to is None else canonical_convention(args.to, "--to")
    _check_flags(args, source, target, starts_from_tau)
    if starts_from_tau:
        weight_decay = weight_decay_for_timescale(
            eta, iterations=args.tau_steps, epochs=args.tau_epochs,
            dataset_size=args.dataset_size, batch_size=args.batch_size, drop_last=args.drop_last,
        )
    else:
        weight_decay = args.weight_decay
    options = dict(lr=args.lr, max_lr=args.max_lr, steps=args.steps,
                   momentum=0.0 if args.momentum is None else args.momentum, grad_rms=args.grad_rms,
                   dampening=0.0 if args.dampening is None else args.dampening)

    if args.to is not None:
        value = convert(weight_decay, from_=source, to=target, **options)
        if args.json:
            print_json({"from": source, "to": target, "weight_decay": weight_decay, "value": value})
        else:
            print(f"{value:.6g}")
        return 0

    values: dict[str, float | None] = {}
    missing: dict[str, str] = {}
    for name in CONVENTIONS:
        try:
            values[name] = float(convert(weight_decay, from_=source, to=name, **options))
        except DecayError as exc:
            values[name], missing[name] = None, str(exc)
    if values[source] is None:  # the input itself lacks a setting: say which, once
        raise DecayError(missing[source])
    tau = None
    if eta is not None and values["lr_coupled"] is not None:
        tau = timescale(eta, values["lr_coupled"], dataset_size=args.dataset_size, batch_size=args.batch_size,
                        drop_last=args.drop_last)

    _print_all(args, source, weight_decay, values, missing, tau, eta)
    return 0


def _print_all(args: argparse.Namespace, source: str, weight_decay: float, values: dict[str, float | None],
               missing: dict[str, str], tau: Any, eta: float | None) -> None:
    """The value in every convention (or what each lacks) and the timescale, as a table or JSON."""
    from decaykit.convert import CONVENTIONS

    if args.json:
        print_json({
            "from": source,
            "weight_decay": weight_decay,
            "conventions": values,
            "missing": missing,
            "timescale": None if tau is None else {
                "iterations": None if math.isinf(tau.iterations) else tau.iterations,
                "epochs": tau.epochs, "lr": tau.lr,
            },
        })
        return
    rows = []
    for name, conv in CONVENTIONS.items():
        value = values[name]
        shown = "needs " + _needs(missing[name]) if value is None else f"{'≈ ' if not conv.exact else ''}{value:.6g}"
        rows.append([name + (" *" if name == source else ""), shown, conv.rule, conv.source])
    print(format_table(["convention", "weight_decay", "per-step decay", "source"], rows, align="lrll"))
    print(f"* given. Matched at lr = {eta:g}." if eta is not None else "* given.")
    if tau is not None:
        print(f"timescale of the torch-AdamW value: {tau}")


def _check_flags(args: argparse.Namespace, source: str, target: str | None, starts_from_tau: bool) -> None:
    """Numbers in range, named by their flags, and no flag that the conversion asked for would ignore
    (``target`` None: the table of every convention)."""
    from decaykit._validate import check_number

    for flag, value in (("--lr", args.lr), ("--max-lr", args.max_lr), ("--grad-rms", args.grad_rms),
                        ("--tau-steps", args.tau_steps), ("--tau-epochs", args.tau_epochs)):
        if value is not None:
            check_number(value, flag, allow_zero=False)
    shown = set(CONVENTIONS) if target is None else {source, target}
    for flag, value, convention in (("--momentum", args.momentum, "sgd_l2"), ("--dampening", args.dampening, "sgd_l2"),
                                    ("--steps", args.steps, "normalized"), ("--grad-rms", args.grad_rms, "adam_l2")):
        if value is not None and convention not in shown:
            raise no_effect(flag, f"converting {source} -> {target} (only convention {convention!r} uses it)",
                            f"drop {flag}")
    if target is not None and not starts_from_tau:
        a, b = CONVENTIONS[source], CONVENTIONS[target]
        uses_lr = a.lr_power != b.lr_power
        uses_max_lr = a.max_lr_power != b.max_lr_power or (uses_lr and args.lr is None)
        for flag, value, used, which in (("--lr", args.lr, uses_lr, "current"),
                                         ("--max-lr", args.max_lr, uses_max_lr, "peak")):
            if value is not None and not used:
                fix = f"drop {flag}"
                if flag == "--lr" and uses_max_lr and args.max_lr is None:
                    fix += f", and give the peak LR as --max-lr {args.lr:g} if that is what it is"
                raise no_effect(flag, f"converting {source} -> {target} (both scale with the {which} LR alike)", fix)
    in_epochs = args.tau_epochs is not None or (target is None and (args.lr is not None or args.max_lr is not None))
    for flag, value in (("--dataset-size", args.dataset_size), ("--batch-size", args.batch_size),
                        ("--drop-last", args.drop_last or None)):
        if value is not None and not in_epochs:
            why = "with --to" if target is not None else "without --lr or --max-lr"
            raise no_effect(flag, f"{why} (it turns the timescale into epochs, and none is shown)",
                            "drop it, or add --lr and drop --to")


def _needs(message: str) -> str:
    for flag in ("max_lr", "lr", "steps", "grad_rms"):
        if f"needs {flag}=" in message:
            return "--" + flag.replace("_", "-")
    return "more settings"
