"""Entry point of the ``decaykit`` command.

Each subcommand lives in ``decaykit/cli/<name>_cmd.py`` and exposes ``HELP``, ``DESCRIPTION``,
``add_arguments(parser)`` and ``run(args) -> int`` (and ``FORMATTER`` when its description is laid
out by hand); :func:`build_parser` registers them all the same way. Errors the user can fix
(``DecayError``) end the program with one readable line and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

from decaykit import __version__
from decaykit.errors import DecayError

__all__ = ["COMMANDS", "build_parser", "main"]

# The order here is the order ``decaykit --help`` lists them in.
COMMANDS: tuple[str, ...] = ("sweep", "inspect", "audit", "verify", "probe", "convert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="decaykit",
        description="Weight decay in PyTorch made correct, visible and measurable.",
    )
    parser.add_argument("--version", action="version", version=f"decaykit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        command = importlib.import_module(f"decaykit.cli.{name}_cmd")
        formatter = getattr(command, "FORMATTER", argparse.HelpFormatter)
        parser_ = sub.add_parser(name, help=command.HELP, description=command.DESCRIPTION, formatter_class=formatter)
        command.add_arguments(parser_)
        parser_.set_defaults(func=command.run)
    return parser


def _one_line_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> str:
    return f"decaykit: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    previous = warnings.formatwarning
    warnings.formatwarning = _one_line_warning  # type: ignore[assignment]
    try:
        return int(args.func(args) or 0)
    except DecayError as exc:
        print(f"decaykit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"decaykit {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `decaykit inspect ... | head`
        return 0
    finally:
        warnings.formatwarning = previous


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
