"""Turn a ``package.module:factory`` string, or a name from a table of factories, into a live object.

The CLI takes models and data sets as import paths so a user's own code can be inspected,
probed and swept without writing a wrapper script. The user's code can fail in any way (a syntax
error, an import inside it, an exception or ``sys.exit`` in the factory): each failure becomes one
:class:`~decaykit.errors.UserCodeError` naming the spec and the original error, which it chains.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from decaykit.errors import DecayError, UserCodeError

__all__ = [
    "build_model", "describe_exception", "load_object", "model_factory", "on_import_path", "qualname", "read_checkpoint",
]


_PACKAGE = os.path.dirname(os.path.abspath(__file__))
# what a Python statement of decaykit's raises when decaykit is wrong; a torch op it calls on the user's tensors
# raises RuntimeError or IndexError from C, with decaykit's line as the innermost frame, which says nothing
_BUG_TYPES = (AssertionError, AttributeError, KeyError, NameError, TypeError, ValueError)


def raised_by_decaykit(exc: BaseException) -> bool:
    """Whether ``exc`` is a bug of decaykit's own code, not the user's: a Python error (not a DecayError) whose
    innermost frame is in the decaykit package."""
    tb = exc.__traceback__
    if tb is None or not isinstance(exc, _BUG_TYPES) or isinstance(exc, DecayError):
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE + os.sep)


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` of ``exc`` on one line; a SyntaxError with its file and line, ``sys.exit`` as such.

    >>> describe_exception(SystemExit(3))
    'SystemExit: sys.exit(3) was called'
    >>> describe_exception(SyntaxError("invalid syntax", ("m.py", 2, 5, "def f(:")))
    'SyntaxError: invalid syntax (m.py, line 2)'
    """
    name = type(exc).__name__
    if isinstance(exc, SystemExit):
        return f"{name}: sys.exit({exc.code!r}) was called"
    if isinstance(exc, SyntaxError):
        return f"{name}: {exc.msg} ({exc.filename}, line {exc.lineno})"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return name
    return f"{name}: {lines[0]}" + (" ..." if len(lines) > 1 else "")


def _user_code_failed(argument: str, spec: str, what: str, exc: BaseException) -> UserCodeError:
    return UserCodeError(
        f"{argument}={spec!r}: {what} failed with {describe_exception(exc)}", argument=argument
    )


def on_import_path(folder: str) -> bool:
    """Whether ``folder`` is on ``sys.path`` (as itself, a link to it, or "" for the current folder)."""
    here = os.path.realpath(folder)
    return any(os.path.realpath(entry or os.curdir) == here for entry in sys.path)


def _not_found(module_name: str, missing: str, argument: str, spec: str) -> DecayError:
    """The module itself (or a package above it) is missing: say where it was looked for."""
    head = f"{argument}={spec!r}: cannot import module {module_name!r}"
    parent, _, leaf = missing.rpartition(".")
    if parent:
        folders = list(getattr(sys.modules.get(parent), "__path__", []) or ["?"])
        return DecayError(f"{head}: package {parent!r} (in {folders[0]}) has no module {leaf!r}; check the spelling",
                          argument=argument)
    cwd = os.getcwd()
    searched = (f"in the current folder {cwd}" if on_import_path(cwd)
                else f"on the import path (which does not hold the current folder {cwd})")
    return DecayError(
        f"{head}: no module named {missing!r} {searched} nor among the packages of this Python ({sys.prefix}); "
        f"check the spelling, and run from the folder that holds {missing}/ or {missing}.py",
        argument=argument,
    )


def _import_user_module(module_name: str, argument: str, spec: str) -> Any:
    if module_name.startswith("."):
        raise DecayError(f"{argument}={spec!r}: the module must be an absolute import path, not {module_name!r}",
                         argument=argument)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # exc.name is the module that was missing: the one asked for (or a package above it), or
        # something the user's module imports, which is a failure of the user's code
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise _not_found(module_name, exc.name, argument, spec) from None
        raise _user_code_failed(argument, spec, f"importing module {module_name!r}", exc) from exc
    except (Exception, SystemExit) as exc:
        raise _user_code_failed(argument, spec, f"importing module {module_name!r}", exc) from exc


def load_object(spec: str, *, argument: str = "MODEL") -> Any:
    """Import ``package.module:attr`` (``attr`` may be dotted) and return the attribute.

    >>> load_object("torch.nn:Linear")
    <class 'torch.nn.modules.linear.Linear'>
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise DecayError(
            f"{argument} must look like 'package.module:factory' (or be a built-in demo name), got {spec!r}",
            argument=argument,
        )
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise DecayError(f"{argument} must look like 'package.module:factory', got {spec!r}", argument=argument)
    obj: Any = _import_user_module(module_name, argument, spec)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise DecayError(f"{argument}={spec!r}: module {module_name!r} has no attribute {attr!r}",
                             argument=argument) from None
    return obj


def _call_factory(obj: Callable[[], Any], argument: str, identity: str) -> Any:
    try:
        with torch.device("cpu"):
            return obj()
    except DecayError:
        raise
    except TypeError as exc:
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
            # raised by the call itself, before any line of the factory ran: its signature wants arguments
            raise DecayError(
                f"{argument}={identity!r}: the factory could not be called with no arguments ({exc}); "
                "point to a function that builds the model with its defaults",
                argument=argument,
            ) from exc
        raise _user_code_failed(argument, identity, "the factory", exc) from exc
    except (Exception, SystemExit) as exc:
        raise _user_code_failed(argument, identity, "the factory", exc) from exc


def model_factory(
    spec: str | Callable[[], Any], *, argument: str = "MODEL", named: Mapping[str, Callable[[], Any]] | None = None
) -> tuple[Callable[[], nn.Module], str]:
    """Return ``(factory, identity)`` for a name in ``named``, a ``pkg.mod:factory`` string, a function or a class.

    The factory builds a new model at each call and checks that it is an ``nn.Module``;
    ``identity`` names it in messages and stores (the string as given, or ``module:qualname``).
    ``named`` holds the factories a bare name may pick (the CLI passes the demo models).
    """
    named = named or {}
    identity = spec if isinstance(spec, str) else qualname(spec)
    obj: Any = spec
    if isinstance(spec, str):
        if spec in named:
            obj = named[spec]
        elif ":" not in spec:
            names = f"a built-in demo model ({', '.join(sorted(named))}) " if named else "an import path "
            raise DecayError(
                f"{argument}={spec!r} is neither {names}"
                "nor an import path like 'torchvision.models:resnet50'",
                argument=argument,
            )
        else:
            obj = load_object(spec, argument=argument)
    if isinstance(obj, nn.Module) or not callable(obj):
        raise DecayError(f"{argument}={identity!r} is a {type(obj).__name__}, not a function that builds a model",
                         argument=argument)

    def factory() -> nn.Module:
        model = _call_factory(obj, argument, identity)
        if not isinstance(model, nn.Module):
            raise DecayError(
                f"{argument}={identity!r} returned a {type(model).__name__}, not a torch.nn.Module; "
                "point to a class or function that returns the model",
                argument=argument,
            )
        return model

    return factory, identity


def build_model(
    spec: str | nn.Module | Callable[[], Any], *, argument: str = "MODEL", named: Mapping[str, Callable[[], Any]] | None = None
) -> nn.Module:
    """Return an ``nn.Module`` from a name in ``named``, an import path, a factory or a module.

    A factory is called with no arguments; whatever it returns must be an ``nn.Module``.
    """
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, str) and ":" in spec:
        obj = load_object(spec, argument=argument)
        if isinstance(obj, nn.Module):  # a module-level model instance
            return obj
    return model_factory(spec, argument=argument, named=named)[0]()


def qualname(obj: Any) -> str:
    """``module:qualname`` of a function or class, to name it in messages and stores."""
    module = getattr(obj, "__module__", None) or "?"
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    return f"{module}:{name}"


_UNSAFE = re.compile(r"Unsupported global: GLOBAL (\S+)")


def _unreadable(path: str, argument: str, exc: Exception) -> DecayError:
    text = str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror.lower()
    elif isinstance(exc, EOFError):
        reason = "the file is empty or cut short"
    elif "Weights only load failed" in text:
        # torch's advice, weights_only=False, would unpickle arbitrary objects and so run arbitrary code
        found = _UNSAFE.search(text)
        what = f" (a {found.group(1)})" if found else ""
        reason = (f"it holds objects that are not plain tensors, numbers, strings, lists or dicts{what}, and "
                  "decaykit does not unpickle those (it could run code); save optimizer.state_dict(), or a dict "
                  "of state_dicts, instead")
    else:
        reason = f"it is not a file torch.save wrote, or it is damaged ({describe_exception(exc).split('. ')[0]})"
    return DecayError(f"{argument} {path!r} could not be read: {reason}", argument=argument)


def read_checkpoint(path: str, *, argument: str = "--checkpoint") -> Any:
    """What ``torch.save`` wrote to ``path``, read with ``weights_only=True`` onto the CPU.

    Any failure is one :class:`DecayError` naming the file and the reason.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols are not the user's concern
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _unreadable(path, argument, exc) from exc
