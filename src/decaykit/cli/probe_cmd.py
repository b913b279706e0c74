"""``decaykit probe MODEL``: build an optimizer for MODEL and measure the decay it applies per tensor."""

from __future__ import annotations

import argparse
import inspect
from typing import Any

from decaykit._render import print_json
from decaykit.cli.common import OPTIMIZERS, add_policy_arguments, no_effect, policy_from_args
from decaykit.errors import DecayError

__all__ = ["DESCRIPTION", "HELP", "OPTIMIZERS", "add_arguments", "run"]


HELP = "measure the weight decay an optimizer really applies, per tensor"
DESCRIPTION = ("Build OPTIMIZER for MODEL (groups from decaykit.param_groups, or model.parameters() with "
    "--no-policy), step copies of it with zero gradients and report, per tensor, the shrink factor the decay "
    "applies per step next to the one expected, and the tensors the policy says should not decay but do. "
    "MODEL is a built-in demo (resnet50, convnext, vit, gpt, mlp) or 'package.module:factory'. "
    "Exit status 1 if any tensor disagrees.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from decaykit.engine.modes import MODES

    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adamw", help="torch.optim class (default: adamw)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    parser.add_argument("--momentum", type=float, default=None, help="momentum, for sgd and rmsprop")
    add_policy_arguments(parser)
    parser.add_argument("--no-policy", action="store_true",
                        help="build the optimizer from plain model.parameters() (every tensor decays), and check it "
                             "against --policy")
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="wrap the optimizer in decaykit.WeightDecay with this decay mode (default: the "
                             "optimizer's own weight_decay)")
    parser.add_argument("--state-steps", type=int, default=0, metavar="N",
                        help="first take N real steps on random gradients so momentum and moments exist (default: 0)")
    parser.add_argument("--frozen", action="append", default=[], metavar="GLOB",
                        help="names meant to stay fixed (e.g. gradients you zero), repeatable: decay on them is an error")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def run(args: argparse.Namespace) -> int:
    import torch

    from decaykit._loading import build_model
    from decaykit._validate import check_number
    from decaykit.models import DEMO_MODELS
    from decaykit.policy.plan import param_groups
    from decaykit.probe.probe import probe
    from decaykit.probe.warmup import check_state_steps, warm_up

    lr = check_number(args.lr, "--lr", allow_zero=False)
    weight_decay = check_number(args.weight_decay, "--weight-decay")
    check_state_steps(args.state_steps, "--state-steps")
    cls = getattr(torch.optim, OPTIMIZERS[args.optimizer])
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if args.momentum is not None:
        if "momentum" not in inspect.signature(cls).parameters:
            takes = ", ".join(n for n, c in OPTIMIZERS.items()
                              if "momentum" in inspect.signature(getattr(torch.optim, c)).parameters)
            raise no_effect("--momentum", f"with --optimizer {args.optimizer} ({cls.__name__} takes no momentum)",
                            f"drop --momentum, or pick an --optimizer that takes one ({takes})")
        kwargs["momentum"] = check_number(args.momentum, "--momentum")
        if kwargs["momentum"] >= 1:  # the buffer then grows instead of averaging; sweep refuses it too
            raise DecayError(f"--momentum must be in [0, 1), got {args.momentum!r}: at 1 or above the momentum "
                             "buffer grows without bound instead of averaging the gradients", argument="--momentum")
    policy = policy_from_args(args)
    model = build_model(args.model, named=DEMO_MODELS)
    if args.no_policy:
        params: Any = [p for p in model.parameters() if p.requires_grad]
    else:
        params = param_groups(model, weight_decay, policy=policy)
    optimizer = cls(params, **kwargs)
    if args.mode is not None:
        from decaykit.engine.weight_decay import WeightDecay

        optimizer = WeightDecay(optimizer, mode=args.mode)
    warm_up(optimizer, args.state_steps)
    # check against a plan made with the same options, so --no-policy shows what the policy would exclude
    from decaykit.policy.plan import plan

    intent = plan(model, weight_decay, policy=policy) if weight_decay > 0 else None
    report = probe(optimizer, model=model, policy=intent, frozen=args.frozen)
    if args.json:
        print_json({"model": args.model, "optimizer": args.optimizer, "mode": args.mode, "lr": lr,
                    "weight_decay": weight_decay,
                    "groups": "plain" if args.no_policy else args.policy, **report.to_dict()})
    else:
        built = "model.parameters()" if args.no_policy else f"decaykit.param_groups(policy={args.policy!r})"
        made = f"{OPTIMIZERS[args.optimizer]}({built}, lr={lr:g}, weight_decay={weight_decay:g})"
        if args.mode is not None:
            made = f"WeightDecay({made}, mode={args.mode!r})"
        print(f"model {args.model}: {made}"
              + (f", after {args.state_steps} steps on random gradients" if args.state_steps else ""))
        print(report)
    return 0 if report.ok else 1
