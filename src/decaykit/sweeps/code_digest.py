"""A digest of what a function or class does, for the store's fingerprint: edit the code, get a new digest.

``pkg.mod:fn`` names a function but not its body, and every lambda is ``<lambda>``. The digest covers
the compiled code (bytecode, constants, the names it uses, nested functions), its defaults and closure,
the simple global values and same-module functions and classes it refers to, and, for a class, every
method (and property) of every class in its MRO, digested the same way: a helper or a constant that
``forward`` uses counts as much as ``forward`` itself. Comments, blank lines and line numbers do not count, and the digest is the
same in every process (sets are sorted, hash randomisation does not enter). Code from an installed
package (torch, the standard library) counts as its name and the package's version: libraries patch
each other's classes at import (transformers adds a method to ``nn.Module``), which must not make a
stored trial look foreign.

>>> code_digest(lambda: 1) != code_digest(lambda: 2)
True
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import sys
import sysconfig
import types
from collections.abc import Iterator
from typing import Any

__all__ = ["code_digest"]

_SIMPLE = (int, float, complex, str, bytes, bool, type(None))
_DEPTH = 3  # how far references to other functions are followed


def code_digest(obj: Any) -> str:
    """A short hex digest of ``obj``'s code (a function, method, partial, class or callable instance)."""
    h = hashlib.sha256()
    for part in _parts(obj, _DEPTH, set()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _parts(obj: Any, depth: int, seen: set[int]) -> Iterator[bytes]:
    if id(obj) in seen:
        yield b"<seen>"
        return
    seen.add(id(obj))
    if isinstance(obj, functools.partial):
        yield from _parts(obj.func, depth, seen)
        yield from _values((obj.args, obj.keywords), depth, seen)
    elif isinstance(obj, (types.MethodType, staticmethod, classmethod)):
        yield from _parts(obj.__func__, depth, seen)
    elif isinstance(obj, types.FunctionType):
        yield from _function(obj, depth, seen)
    elif isinstance(obj, type):
        yield from _class(obj, depth, seen)
    else:  # a callable instance, a builtin: what its type does
        yield _name(type(obj)).encode()
        if not isinstance(obj, types.BuiltinFunctionType):
            yield from _class(type(obj), depth, seen)


def _function(fn: types.FunctionType, depth: int, seen: set[int]) -> Iterator[bytes]:
    yield _name(fn).encode()
    version = _library_version(getattr(fn, "__module__", None) or "")
    if version is not None:
        yield version.encode()
        return
    yield from _code(fn.__code__)
    yield from _values((fn.__defaults__, fn.__kwdefaults__), depth, seen)
    cells = tuple(c.cell_contents for c in fn.__closure__ or () if _filled(c))
    yield from _values(cells, depth, seen)
    for name in _names(fn.__code__):  # the globals it refers to: constants, and its module's own functions
        value = fn.__globals__.get(name, None)
        if isinstance(value, _SIMPLE):
            yield f"{name}={value!r}".encode()
        elif depth > 0 and isinstance(value, (types.FunctionType, type)) and value.__module__ == fn.__module__:
            yield name.encode()
            yield from _parts(value, depth - 1, seen)


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:  # a cell not yet assigned
        return False
    return True


def _names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


def _code(code: types.CodeType) -> Iterator[bytes]:
    yield code.co_code
    yield repr(code.co_names).encode()
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code(const)
        else:
            yield _const_text(const).encode()


def _const_text(value: Any) -> str:
    if isinstance(value, (frozenset, set)):
        return "{" + ",".join(sorted(_const_text(v) for v in value)) + "}"
    if isinstance(value, tuple):
        return "(" + ",".join(_const_text(v) for v in value) + ")"
    return repr(value) if isinstance(value, _SIMPLE) else type(value).__name__


def _values(values: Any, depth: int, seen: set[int]) -> Iterator[bytes]:
    """Default and closure values: simple ones as written, callables by their code, the rest by type."""
    if isinstance(values, (tuple, list)):
        for v in values:
            yield from _values(v, depth, seen)
    elif isinstance(values, dict):
        for k in sorted(values, key=repr):
            yield repr(k).encode()
            yield from _values(values[k], depth, seen)
    elif isinstance(values, _SIMPLE):
        yield repr(values).encode()
    elif callable(values) and depth > 0:
        yield from _parts(values, depth - 1, seen)
    else:
        yield _name(type(values)).encode()


def _class(cls: type, depth: int, seen: set[int]) -> Iterator[bytes]:
    """Every function defined in ``cls`` and its bases (``object`` aside), each as :func:`_function` digests it
    (with the globals and same-module functions it uses): a class is what its methods do."""
    yield _name(cls).encode()
    for klass in cls.__mro__[:-1]:
        version = _library_version(klass.__module__)
        if version is not None:
            yield f"{_name(klass)}@{version}".encode()
            continue
        for attr, value in sorted(vars(klass).items()):
            if isinstance(value, (staticmethod, classmethod)):
                func = value.__func__
            else:
                func = value.fget if isinstance(value, property) else value
            if isinstance(func, types.FunctionType):
                yield attr.encode()
                yield from _parts(func, depth, seen)


def _name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__name__)}"


@functools.lru_cache(maxsize=256)
def _library_version(module: str) -> str | None:
    """``package version`` when ``module`` comes from the standard library or an installed package; None
    for the user's own code (and an editable checkout), whose bytecode is what counts."""
    top = module.partition(".")[0]
    if top in sys.stdlib_module_names or top in ("builtins", ""):
        return f"python {sys.version.split()[0]}"
    file = getattr(sys.modules.get(top), "__file__", None) or ""
    installed = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    if not any(file.startswith(folder) for folder in installed):
        return None
    dists = importlib.metadata.packages_distributions().get(top) or [top]
    try:
        return f"{dists[0]} {importlib.metadata.version(dists[0])}"
    except importlib.metadata.PackageNotFoundError:
        return f"{top} (installed)"
