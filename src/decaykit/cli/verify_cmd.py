"""``decaykit verify``: the founding notebook's experiment, each optimizer's step next to its closed form."""

from __future__ import annotations

import argparse

from decaykit._render import print_json

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]


HELP = "reproduce the founding notebook's weight-decay experiment and check torch against the formulas"
DESCRIPTION = ("np.random.seed(SEED); x (3, 4) and w (4, 5) from np.random.random in float64; loss (x @ w).sum(); "
    "one optimizer step without and with weight decay. Prints the weights from torch next to the closed form "
    "of each optimizer's step, says whether they match, and what coupled and decoupled decay did to the "
    "weights. With the defaults, SGD must print the founding notebook's tensors. Exit status 1 if a check fails.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from decaykit.verify import CLOSED_FORMS, DEFAULT_OPTIMIZERS

    parser.add_argument("--lr", type=float, default=0.1, help="learning rate (default: 0.1, the notebook's)")
    parser.add_argument("--weight-decay", "--wd", type=float, default=1.0, metavar="λ",
                        help="weight decay of the second step (default: 1, the notebook's)")
    parser.add_argument("--seed", type=int, default=123, help="numpy seed (default: 123, the notebook's)")
    parser.add_argument("--optimizer", action="append", choices=[*CLOSED_FORMS, "all"], default=None,
                        help=f"optimizer to check, repeatable (default: {', '.join(DEFAULT_OPTIMIZERS)})")
    parser.add_argument("--foreach", choices=("default", "on", "off"), default="default",
                        help="torch's foreach implementation (default: torch's choice)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                        help="dtype torch runs the step in; the tolerance follows its eps (default: float64)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from decaykit.verify import CLOSED_FORMS, DEFAULT_OPTIMIZERS, verify

    names = args.optimizer or list(DEFAULT_OPTIMIZERS)
    if "all" in names:
        names = list(CLOSED_FORMS)
    foreach = {"default": None, "on": True, "off": False}[args.foreach]
    report = verify(lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, optimizers=names, foreach=foreach,
                    dtype=args.dtype)
    if args.json:
        print_json(report.to_dict())
    else:
        print(report)
    return 0 if report.ok else 1
