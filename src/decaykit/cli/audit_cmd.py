"""``decaykit audit MODEL``: check an optimizer (saved in a checkpoint, or built here) against a policy."""

from __future__ import annotations

import argparse
from typing import Any

from decaykit._render import print_json
from decaykit.cli.common import OPTIMIZERS, add_policy_arguments, policy_from_args

__all__ = ["DESCRIPTION", "HELP", "OPTIMIZERS", "add_arguments", "run"]


HELP = "find parameters decayed that should not be, missing from the optimizer, frozen inside it ..."
DESCRIPTION = ("Audit the optimizer saved in --checkpoint (a torch.save'd optimizer state_dict or a dict with "
    "key 'optimizer') against MODEL; without --checkpoint, audit an optimizer built here, by default the "
    "common plain one: OPTIMIZER(model.parameters(), weight_decay=λ). Exit status 1 if an error is found.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("--checkpoint", metavar="FILE", help="saved optimizer state_dict or checkpoint dict")
    parser.add_argument("--key", default="optimizer", help="key of the optimizer state in a checkpoint dict")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adamw",
                        help="optimizer to build when no checkpoint is given (default: adamw)")
    parser.add_argument("--groups", choices=("plain", "decaykit"), default="plain",
                        help="build it from model.parameters() (plain, default) or decaykit.param_groups")
    parser.add_argument("--lr", type=float, default=1e-3)
    add_policy_arguments(parser, weight_decay=None)
    parser.add_argument("--weight-decay", "--wd", type=float, default=None, metavar="λ",
                        help="λ the policy expects (default: the largest weight decay in the optimizer; "
                             "0.05 for an optimizer built here)")
    parser.add_argument("--measure", action="store_true", help="also measure the decay with a probe step on a copy")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    import torch

    from decaykit._loading import build_model
    from decaykit.audit import audit
    from decaykit.errors import DecayError
    from decaykit.models import DEMO_MODELS
    from decaykit.policy.plan import param_groups

    policy = policy_from_args(args)
    model = build_model(args.model, named=DEMO_MODELS)
    if args.checkpoint:
        try:
            state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise DecayError(f"--checkpoint {args.checkpoint!r}: no such file") from None
        except Exception as exc:
            raise DecayError(f"--checkpoint {args.checkpoint!r} could not be read by torch.load: {exc}") from None
        if isinstance(state, dict) and "param_groups" not in state:
            if args.key not in state:
                raise DecayError(f"--checkpoint {args.checkpoint!r} has no key {args.key!r} (keys: "
                                 f"{', '.join(map(str, state))}); pass --key with the optimizer's key")
            state = state[args.key]
        optimizer: Any = state
        if args.measure:
            raise DecayError("--measure needs a live optimizer; it cannot step a state_dict read from --checkpoint")
    else:
        lam = 0.05 if args.weight_decay is None else args.weight_decay
        cls = getattr(torch.optim, OPTIMIZERS[args.optimizer])
        params = model.parameters() if args.groups == "plain" else param_groups(model, lam, policy=policy)
        optimizer = cls(params, lr=args.lr, weight_decay=lam)
    report = audit(model, optimizer, weight_decay=args.weight_decay, policy=policy, measure=args.measure)
    if args.json:
        print_json(report.to_dict())
    else:
        print(report)
        if report.probe is not None:
            print()
            print(report.probe)
    return 0 if report.ok else 1
