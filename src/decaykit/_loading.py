"""Turn a ``package.module:factory`` string, or a name from a table of factories, into a live object.

The CLI takes models and data sets as import paths so a user's own code can be inspected,
probed and swept without writing a wrapper script.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from decaykit.errors import DecayError

__all__ = ["build_model", "load_object", "model_factory", "qualname"]


def load_object(spec: str, *, argument: str = "MODEL") -> Any:
    """Import ``package.module:attr`` (``attr`` may be dotted) and return the attribute.

    >>> load_object("torch.nn:Linear")
    <class 'torch.nn.modules.linear.Linear'>
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise DecayError(
            f"{argument} must look like 'package.module:factory' (or be a built-in demo name), got {spec!r}"
        )
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise DecayError(f"{argument} must look like 'package.module:factory', got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise DecayError(
            f"{argument}={spec!r}: cannot import module {module_name!r} ({exc}); "
            "check the spelling and that the package is installed in this environment"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise DecayError(f"{argument}={spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    return obj


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
                "nor an import path like 'torchvision.models:resnet50'"
            )
        else:
            obj = load_object(spec, argument=argument)
    if isinstance(obj, nn.Module) or not callable(obj):
        raise DecayError(f"{argument}={identity!r} is a {type(obj).__name__}, not a function that builds a model")

    def factory() -> nn.Module:
        try:
            with torch.device("cpu"):
                model = obj()
        except TypeError as exc:
            raise DecayError(
                f"{argument}={identity!r}: the factory could not be called with no arguments ({exc}); "
                "point to a function that builds the model with its defaults"
            ) from exc
        if not isinstance(model, nn.Module):
            raise DecayError(
                f"{argument}={identity!r} returned a {type(model).__name__}, not a torch.nn.Module; "
                "point to a class or function that returns the model"
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
