"""``decaykit audit MODEL``: check an optimizer (saved in a checkpoint, or built here) against a policy."""

from __future__ import annotations

import argparse
from typing import Any

from decaykit._render import print_json
from decaykit.cli.common import (
    DEFAULT_WEIGHT_DECAY,
    OPTIMIZERS,
    add_policy_arguments,
    no_effect,
    policy_from_args,
)
from decaykit.errors import DecayError

__all__ = ["DESCRIPTION", "HELP", "OPTIMIZERS", "add_arguments", "run"]


HELP = "find parameters decayed that should not be, missing from the optimizer, frozen inside it ..."
DESCRIPTION = ("Audit the optimizer saved in --checkpoint (a torch.save'd optimizer state_dict or a dict with "
    "key 'optimizer') against MODEL; without --checkpoint, audit an optimizer built here, by default the "
    f"common plain one: OPTIMIZER(model.parameters(), weight_decay=λ), λ = {DEFAULT_WEIGHT_DECAY:g}. Exit status 1 "
    "if an error is found.")

# the flags that choose the optimizer built here: with --checkpoint there is none to build
_BUILD_FLAGS = {"optimizer": "--optimizer", "groups": "--groups", "lr": "--lr"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("--checkpoint", metavar="FILE", help="saved optimizer state_dict or checkpoint dict")
    parser.add_argument("--key", default=None, help="with --checkpoint: key of the optimizer state in a checkpoint "
                        "dict, a dotted path into lists too (default: optimizer; Lightning's optimizer_states.0)")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default=None,
                        help="optimizer to build when no checkpoint is given (default: adamw)")
    parser.add_argument("--groups", choices=("plain", "decaykit"), default=None,
                        help="build it from model.parameters() (plain, default) or decaykit.param_groups")
    parser.add_argument("--lr", type=float, default=None, help="LR of the optimizer built here (default: 1e-3)")
    add_policy_arguments(parser, weight_decay=None)
    parser.add_argument("--weight-decay", "--wd", type=float, default=None, metavar="λ",
                        help="λ the policy expects (default: the largest weight decay in the optimizer; "
                             f"{DEFAULT_WEIGHT_DECAY:g} for an optimizer built here)")
    parser.add_argument("--measure", action="store_true", help="also measure the decay with a probe step on a copy")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from decaykit._loading import build_model
    from decaykit._validate import check_number
    from decaykit.audit import audit
    from decaykit.models import DEMO_MODELS

    if args.weight_decay is not None:
        args.weight_decay = check_number(args.weight_decay, "--weight-decay")
    _check_flags(args)
    policy = policy_from_args(args)
    model = build_model(args.model, named=DEMO_MODELS)
    optimizer = _saved_optimizer(args) if args.checkpoint else _built_optimizer(args, model, policy)
    report = audit(model, optimizer, weight_decay=args.weight_decay, policy=policy, measure=args.measure)
    if args.json:
        print_json(report.to_dict())
    else:
        print(report)
        if report.probe is not None:
            print()
            print(report.probe)
    return 0 if report.ok else 1


def _check_flags(args: argparse.Namespace) -> None:
    """No flag that would be ignored: the build flags need no --checkpoint, --key needs one."""
    if args.checkpoint is None:
        if args.key is not None:
            raise no_effect("--key", "without --checkpoint (it names the optimizer's entry in a checkpoint dict)",
                            "add --checkpoint FILE, or drop --key")
        return
    for dest, flag in _BUILD_FLAGS.items():
        if getattr(args, dest) is not None:
            raise no_effect(flag, "with --checkpoint (the optimizer is read from the file, not built here)",
                            f"drop {flag}, or drop --checkpoint to audit an optimizer built here")
    if args.measure:
        raise DecayError("--measure needs a live optimizer; it cannot step a state_dict read from --checkpoint",
                         argument="--measure")


def _saved_optimizer(args: argparse.Namespace) -> Any:
    from decaykit._loading import read_checkpoint

    state = read_checkpoint(args.checkpoint)
    if not isinstance(state, dict) or "param_groups" in state:
        return state
    key = args.key or ("optimizer" if "optimizer" in state or "optimizer_states" not in state else "optimizer_states")
    if key in state:  # a key with dots of its own is taken whole
        state = state[key]
    else:
        for depth, part in enumerate(key.split(".")):
            if isinstance(state, dict) and part in state:
                state = state[part]
            elif isinstance(state, (list, tuple)) and part.isdigit() and int(part) < len(state):
                state = state[int(part)]
            else:
                where = ".".join(key.split(".")[:depth]) or "the checkpoint"
                holds = (f"keys: {', '.join(map(str, state))}" if isinstance(state, dict) else
                         f"a list of {len(state)}, indices 0..{len(state) - 1}" if isinstance(state, (list, tuple))
                         else type(state).__name__)
                raise DecayError(f"--checkpoint {args.checkpoint!r}: {where} has no {part!r} ({holds}); pass --key "
                                 "with the path to the optimizer's state, dotted (optimizer_states.0)", argument="--key")
    if isinstance(state, (list, tuple)):
        raise DecayError(f"--checkpoint {args.checkpoint!r}: --key {key} holds a list of {len(state)} entries (Lightning "
                         f"keeps one state per optimizer); pick one with --key {key}.0", argument="--key")
    return state


def _built_optimizer(args: argparse.Namespace, model: Any, policy: Any) -> Any:
    import torch

    from decaykit._validate import check_number
    from decaykit.policy.plan import param_groups

    lam = DEFAULT_WEIGHT_DECAY if args.weight_decay is None else args.weight_decay
    lr = 1e-3 if args.lr is None else check_number(args.lr, "--lr", allow_zero=False)
    cls = getattr(torch.optim, OPTIMIZERS[args.optimizer or "adamw"])
    params = param_groups(model, lam, policy=policy) if args.groups == "decaykit" else model.parameters()
    return cls(params, lr=lr, weight_decay=lam)
