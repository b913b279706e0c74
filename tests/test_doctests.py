"""Every docstring example in ``src/decaykit`` runs, so the plain ``python -m pytest -x`` checks them.

A test per module rather than ``--doctest-modules``: the modules are found from the files (a new
module is picked up with no list to edit), ``__main__.py`` is never imported (it starts the CLI),
and the examples run under this folder's ``conftest.py`` (seeded), like every other test.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "decaykit"


def _module_name(path: Path) -> str:
    parts = ["decaykit", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# only modules whose source holds an example: importing the others proves nothing here
MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py") if p.name != "__main__.py" and ">>>" in p.read_text())


def test_the_package_has_docstring_examples():
    assert len(MODULES) >= 10, MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder().find(module, name) if t.examples]
    assert tests, f"{name} has '>>>' in its source but no docstring example doctest can find"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)  # pytest's --doctest-modules default
    report: list[str] = []
    for test in tests:
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
