"""The tour notebook runs in a real Jupyter kernel and shows what its text says; it is stored clean."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

import decaykit
from decaykit.verify import SEED_PRINTED

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "weight_decay_tour.ipynb"
KERNEL = "decaykit-tour-test"


def test_stored_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {i} stores stale output"


def _kernel_dir(root: Path) -> Path:
    """A kernelspec running this very interpreter with this checkout's code, so a fresh venv needs no
    ``ipykernel install`` and the kernel cannot pick up another decaykit."""
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    spec.joinpath("kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "decaykit tour (test)", "language": "python",
        "env": {"PYTHONPATH": path, "MPLBACKEND": "Agg"},
    }))
    return root


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> nbformat.NotebookNode:
    root = _kernel_dir(tmp_path_factory.mktemp("jupyter"))
    work = tmp_path_factory.mktemp("run")  # the notebook's working folder: anything it writes lands here
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(root), os.environ.get("JUPYTER_PATH")])))
        client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": str(work)}})
        client.execute()
    return nb


def _printed(nb: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream")


def _numbers_after(text: str, label: str) -> list[str]:
    """The numbers of the tensor printed after ``label``, as printed."""
    block = text.split(label, 1)[1].split("dtype", 1)[0]
    return re.findall(r"-?\d+\.\d+", block)


def test_the_one_step_experiment_prints_the_founding_notebooks_tensors(executed: nbformat.NotebookNode) -> None:
    text = _printed(executed)
    for wd, label in ((0.0, "weight decay 0 tensor("), (1.0, "weight decay 1 tensor(")):
        expected = [f"{v:.4f}" for row in SEED_PRINTED[wd] for v in row]
        assert _numbers_after(text, label) == expected, label
    assert "matches every closed form: True | equals the notebook's printed tensors: True" in text


def test_the_resnet50_split_is_decaykits_plan(executed: nbformat.NotebookNode) -> None:
    text = _printed(executed)
    plan = decaykit.plan(decaykit.models.resnet50(), 1e-4)
    decayed = [d for d in plan if d.decay]
    assert f"{len(plan)} tensors: {len(decayed)} decay, {len(plan) - len(decayed)} do not" in text
    assert "norm:BatchNorm2d" in text and "weight of Conv2d" in text
    # the founding helper's bug, shown, then fixed
    assert f"tensors per group: [1, 0] of {len(plan)}" in text
    assert "same split: True" in text


def test_the_sweep_finds_a_best_lambda_in_its_range(executed: nbformat.NotebookNode) -> None:
    found = re.search(r"best λ = ([0-9.e+-]+), helps: (True|False)", _printed(executed))
    assert found is not None
    assert 1.0 <= float(found.group(1)) <= 10.0 and found.group(2) == "True"


def test_reports_and_figures_display_inline(executed: nbformat.NotebookNode) -> None:
    html = [o.data["text/html"] for c in executed.cells if c.cell_type == "code" for o in c.outputs
            if "data" in o and "text/html" in o.data]
    shown = " ".join(html)
    for title in ("plan: policy", "audit of SGD", "decaykit verify", "decaykit sweep"):
        assert title in shown, title
    sweep = next(h for h in html if "decaykit sweep" in h)
    assert "data:image/png;base64," in sweep  # the metrics figure travels inside the notebook
    pngs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if "data" in o and "image/png" in o.data]
    assert len(pngs) == 2  # learning curves and weight norm
