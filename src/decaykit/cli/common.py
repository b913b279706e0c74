"""What the subcommands share: the default λ, the policy flags, the optimizers a command can build, and
the refusal of a flag that has no effect where it is given."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from decaykit.errors import DecayError
from decaykit.optimizers import by_cli_name, cli_choices

if TYPE_CHECKING:
    from decaykit.policy.options import Policy

__all__ = [
    "DEFAULT_WEIGHT_DECAY",
    "OPTIMIZERS",
    "add_policy_arguments",
    "no_effect",
    "policy_from_args",
    "policy_options",
    "show_defaults",
]

#: λ of inspect, audit and probe when --weight-decay is not given: the README's, and AdamW's usual range
DEFAULT_WEIGHT_DECAY = 0.05

#: CLI name -> torch.optim class name, for every optimizer the registry says the CLI can build
OPTIMIZERS: dict[str, str] = {name: by_cli_name(name).name for name in cli_choices()}


def add_policy_arguments(parser: Any, *, weight_decay: float | None = DEFAULT_WEIGHT_DECAY) -> None:
    """The flags that choose which parameters decay, shared by inspect, audit, probe and sweep."""
    from decaykit.policy.presets import PRESETS

    parser.add_argument("--policy", default="decaykit", choices=sorted(PRESETS),
                        help="which rule decides the decay (default: decaykit, from what each parameter is)")
    if weight_decay is not None:
        parser.add_argument("--weight-decay", "--wd", type=float, default=weight_decay, metavar="λ",
                            help=f"weight decay of decayed tensors (default: {weight_decay:g})")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="no decay for these names or globs (repeatable), the founding notebook's skip list")
    parser.add_argument("--rule", action="append", default=[], metavar="SPEC",
                        help="override, first match wins: 'head.*:wd=0', 're:^blocks\\.0\\.:lr_scale=0.1', "
                             "'type:Embedding:mult=0.1' (repeatable)")
    parser.add_argument("--no-decay-embeddings", action="store_true", help="do not decay embedding tables")
    parser.add_argument("--layer-decay", type=float, default=None, metavar="D",
                        help="layer-wise LR decay: lr_scale = D ** (max_layer - layer)")
    parser.add_argument("--strict", action="store_true", help="a rule or exclude that matches nothing is an error")


def policy_options(args: Any) -> dict[str, Any]:
    """The keyword arguments of decaykit.plan / param_groups chosen by add_policy_arguments' flags."""
    return {
        "policy": args.policy,
        "exclude": list(args.exclude),
        "rules": list(args.rule),
        "decay_embeddings": not args.no_decay_embeddings,
        "layer_decay": args.layer_decay,
        "strict": args.strict,
    }


def policy_from_args(args: Any) -> Policy:
    """The :class:`decaykit.Policy` chosen by add_policy_arguments' flags, validated (a bad ``--rule``
    fails here, before any model is built)."""
    from decaykit.policy.options import Policy

    return Policy.of(policy_options(args))


def no_effect(flag: str, why: str, fix: str) -> DecayError:
    """The error for a flag that would be ignored: ``--key has no effect without --checkpoint (...); fix``."""
    return DecayError(f"{flag} has no effect {why}; {fix}", argument=flag)


def show_defaults(parser: Any) -> None:
    """Every flag that takes a value says its default in ``--help`` (the shared policy flags included)."""
    for action in parser._actions:
        if action.nargs == 0 or not action.option_strings or "default" in (action.help or ""):
            continue
        shown = "none" if action.default in (None, [], ()) else action.default
        action.help = f"{action.help or ''} (default: {shown})".strip()
