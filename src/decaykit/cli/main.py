"""Entry point of the ``decaykit`` command.

Each subcommand lives in ``decaykit/cli/<name>_cmd.py`` and exposes ``HELP``, ``DESCRIPTION``,
``add_arguments(parser)`` and ``run(args) -> int`` (and ``FORMATTER`` when its description is laid
out by hand); :func:`build_parser` registers them all the same way.

Exit status, for every command: 0 ok; 1 a problem found (an audit error, a probe or verify
mismatch, policies that differ under ``inspect --diff``); 2 bad input (a ``DecayError``, a usage
error, the user's own model code failing); 3 an internal error; 130 interrupted. Each error is one
line on stderr (``--traceback`` or ``DECAYKIT_TRACEBACK=1``: the full trace instead) and, with
``--json``, also one JSON object ``{"error": {"kind", "argument", "message"}}`` on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from decaykit import __version__
from decaykit._render import print_json
from decaykit.cli.common import show_defaults
from decaykit.errors import DecayError

__all__ = ["COMMANDS", "EXIT_BAD_INPUT", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PROBLEMS",
           "build_parser", "main"]

# The order here is the order ``decaykit --help`` lists them in.
COMMANDS: tuple[str, ...] = ("sweep", "inspect", "audit", "verify", "probe", "convert", "monitor")

EXIT_OK, EXIT_PROBLEMS, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# argparse reads "-1e-3" as an option (its own pattern knows only -1 and -1.5); a value is any number
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)
_ARGPARSE_ARGUMENT = re.compile(r"^argument ([^:/ ]+)")


class _UsageError(SystemExit):
    """A usage error, already printed the argparse way; carries the message for ``--json``."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_BAD_INPUT)
        self.message = message


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="decaykit", description="Weight decay in PyTorch made correct, visible and measurable.")
    parser.add_argument("--version", action="version", version=f"decaykit {__version__}")
    trace_help = "on an error, print the full Python trace instead of one line (also: DECAYKIT_TRACEBACK=1)"
    parser.add_argument("--traceback", action="store_true", help=trace_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        command = importlib.import_module(f"decaykit.cli.{name}_cmd")
        formatter = getattr(command, "FORMATTER", argparse.HelpFormatter)
        parser_ = sub.add_parser(name, help=command.HELP, description=command.DESCRIPTION, formatter_class=formatter)
        command.add_arguments(parser_)
        show_defaults(parser_)
        # SUPPRESS: a subcommand's default must not undo `decaykit --traceback COMMAND`
        parser_.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help=trace_help)
        parser_.set_defaults(func=command.run)
    return parser


def _one_line_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> str:
    return f"decaykit: warning: {message}\n"


class _Stdout:
    """``sys.stdout`` for a command, where a reader that leaves early (``decaykit audit ... | head``) ends
    the output, not the command: the rest is dropped, and the command still ends with its own exit status
    (an audit that found errors exits 1 even when ``head`` took only its first lines)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return int(self.stream.write(text))
            except BrokenPipeError:
                self.reader_gone = True
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self.reader_gone = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def _cli_session() -> Iterator[None]:
    """Warnings on one line, the current folder first on the import path, as ``python -m`` has it,
    so ``decaykit audit my_pkg.model:build`` finds ``./my_pkg`` under the console script too, and
    stdout through :class:`_Stdout`."""
    from decaykit._loading import on_import_path

    cwd = os.getcwd()
    added = not on_import_path(cwd)
    if added:
        sys.path.insert(0, cwd)
    previous = warnings.formatwarning
    warnings.formatwarning = _one_line_warning  # type: ignore[assignment]
    stdout = sys.stdout = _Stdout(sys.stdout)
    try:
        yield
    finally:
        stdout.flush()
        sys.stdout = stdout.stream
        if stdout.reader_gone:  # what is still buffered goes nowhere, not into an error at exit
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        warnings.formatwarning = previous
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _classify(exc: BaseException) -> tuple[int, str, str | None, str]:
    """(exit status, kind, argument, message) of an exception that ended a command."""
    from decaykit._loading import describe_exception

    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted", None, "interrupted"
    if isinstance(exc, DecayError):
        return EXIT_BAD_INPUT, exc.kind, exc.argument, str(exc)
    if isinstance(exc, SystemExit):  # decaykit never exits from inside a command: the user's code did
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" in {frames[-1].name}() at {frames[-1].filename}, line {frames[-1].lineno}" if frames else ""
        return EXIT_BAD_INPUT, "user-code", None, f"the user's code called sys.exit({exc.code!r}){where}"
    return EXIT_INTERNAL, "internal", None, describe_exception(exc)


def _report(command: str, exc: BaseException, *, json_out: bool, trace: bool,
            parser: argparse.ArgumentParser | None = None) -> int:
    status, kind, argument, message = _classify(exc)
    if parser is not None:  # the API names its keyword (momentum); the command line has a flag (--momentum)
        argument = _flag_for(parser, command, argument)
    if trace:
        traceback.print_exception(exc)
    elif kind == "interrupted":
        print(f"decaykit {command}: interrupted", file=sys.stderr)
    elif kind == "internal":
        print(f"decaykit {command}: internal error: {message} (rerun with --traceback for the trace; "
              "please report it)", file=sys.stderr)
    else:
        hint = " (rerun with --traceback for the trace)" if kind == "user-code" else ""
        print(f"decaykit {command}: error: {message}{hint}", file=sys.stderr)
    if json_out:
        _print_error(kind, argument, message)
    return status


def _print_error(kind: str, argument: str | None, message: str) -> None:
    with contextlib.suppress(OSError):
        print_json({"error": {"kind": kind, "argument": argument, "message": message}})


def _wants_trace(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "traceback", False)) or os.environ.get("DECAYKIT_TRACEBACK", "") not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        if "--json" in argv:
            named = _ARGPARSE_ARGUMENT.match(exc.message)
            _print_error("bad-input", named.group(1) if named else None, exc.message)
        return EXIT_BAD_INPUT
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    with _cli_session():
        try:
            return int(args.func(args) or EXIT_OK)
        except (Exception, KeyboardInterrupt, SystemExit) as exc:
            return _report(args.command, exc, json_out=bool(getattr(args, "json", False)), trace=_wants_trace(args),
                           parser=parser)


def _flag_for(parser: argparse.ArgumentParser, command: str, argument: str | None) -> str | None:
    """The command's flag (``--momentum``) or positional (``LAMBDA``) for the Python keyword an error names."""
    if argument is None or argument.startswith("-"):
        return argument
    subparsers = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    sub = subparsers.choices.get(command) if subparsers is not None else None
    for action in sub._actions if sub is not None else ():
        if action.dest == argument.replace("-", "_"):
            longs = [o for o in action.option_strings if o.startswith("--")]
            if longs or action.option_strings:
                return (longs or action.option_strings)[0]
            return str(action.metavar or action.dest.upper())
    return argument


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
