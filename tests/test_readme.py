"""The README, held to what it says: its Python examples run, its layout is the package's, it points
at nothing outside the repository, and ``import decaykit`` is as light as it promises.

Each ```python block of the README runs on its own, in a fresh namespace, as a reader who copies
one block would run it: every block carries its own imports and builds its own small model. Blocks
run in a temporary folder (what they write, such as ``runs/``, lands there) with the Hugging Face
hub offline. A block that starts a process group (DDP, FSDP2) gets the variables torchrun would set,
for a world of one, and its group is destroyed afterwards.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PACKAGE = ROOT / "src" / "decaykit"


def _blocks(language: str) -> list[tuple[int, str]]:
    """(line number of the opening fence, source) of every ```<language> block of the README."""
    blocks: list[tuple[int, str]] = []
    start, body = 0, None
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        if body is None and line.strip() == f"```{language}":
            start, body = number, []
        elif body is not None and line.strip() == "```":
            blocks.append((start, "\n".join(body) + "\n"))
            body = None
        elif body is not None:
            body.append(line)
    assert body is None, f"README.md:{start}: a ```{language} block is never closed"
    return blocks


PYTHON_BLOCKS = _blocks("python")


def test_the_readme_has_its_python_examples():
    assert len(PYTHON_BLOCKS) >= 10, [line for line, _ in PYTHON_BLOCKS]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.usefixtures("one_thread")  # small models: one thread is faster, and unmoved by other jobs
@pytest.mark.parametrize("line, source", PYTHON_BLOCKS, ids=[f"README.md:{line}" for line, _ in PYTHON_BLOCKS])
def test_python_block_runs(line, source, tmp_path, monkeypatch):
    code = compile(source, f"README.md:{line}", "exec")  # a block that does not parse fails here
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    if "init_process_group" in source:  # only there: HF and Lightning read these as "distributed run"
        for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                            "MASTER_PORT": str(_free_port())}.items():
            monkeypatch.setenv(name, value)
    try:
        exec(code, {"__name__": f"readme_line_{line}"})
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _layout_tree() -> set[str]:
    """The paths the README's layout tree names under ``src/decaykit/`` (folders end with ``/``)."""
    (tree,) = [source for _, source in _blocks("text") if source.startswith("src/decaykit/\n")]
    paths: set[str] = set()
    folders: list[str] = []
    for row in tree.splitlines()[1:]:
        entry = re.search(r"── (\S+)", row)
        if not entry:
            break  # the top-level folders after the package
        depth = entry.start() // 4
        folders[depth:] = []
        path = "".join(folders) + entry.group(1)
        paths.add(path)
        if path.endswith("/"):
            folders.append(entry.group(1))
    return paths


def test_the_readme_layout_names_every_module():
    named = _layout_tree()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if path.name == "__init__.py" and rel != "__init__.py":
            rel = rel[: -len("__init__.py")]  # a package's __init__ is its folder's line
        if rel not in named:
            missing.append(rel)
    assert not missing, f"README.md's layout tree does not name: {missing}"


# A path into a folder beside the repository (the working notes it was built from), or a note kept there.
OUTSIDE = re.compile(r"\bshared[/\\]|RESEARCH[.]md")


def _repository_files() -> list[Path]:
    """Tracked files, and new ones git does not ignore; without git, the folders that ship."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=ROOT, capture_output=True, check=True, timeout=60).stdout.decode()
        return [ROOT / name for name in listed.split("\0") if name]
    except (OSError, subprocess.SubprocessError):
        top = [ROOT / "README.md", ROOT / "pyproject.toml"]
        return top + [p for d in ("src", "tests", "benchmarks", "examples") for p in (ROOT / d).rglob("*")]


def test_nothing_points_outside_the_repository():
    found = []
    for path in _repository_files():
        rel = path.relative_to(ROOT)
        if rel.parts[0] == ".ci" or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        found += [f"{rel}:{n}: {row.strip()}" for n, row in enumerate(text.splitlines(), 1) if OUTSIDE.search(row)]
    assert not found, "these lines name files outside the repository:\n" + "\n".join(found)


def test_import_is_light_and_documented_submodules_resolve():
    code = textwrap.dedent("""
        import json, sys
        import decaykit
        heavy = ("optuna", "matplotlib", "transformers", "lightning")
        loaded = sorted({m.split(".")[0] for m in sys.modules} & set(heavy))
        names = ("schedules", "models", "sweeps", "integrations")
        resolved = {name: getattr(decaykit, name).__name__ for name in names}
        print(json.dumps({"file": decaykit.__file__, "loaded": loaded, "resolved": resolved}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(facts["file"]).resolve().is_relative_to(PACKAGE)  # this tree, not an installed copy
    assert facts["loaded"] == [], f"import decaykit imported {facts['loaded']}"
    assert facts["resolved"] == {
        "schedules": "decaykit.engine.schedules",
        "models": "decaykit.models",
        "sweeps": "decaykit.sweeps",
        "integrations": "decaykit.integrations",
    }
