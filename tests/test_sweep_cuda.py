"""The sweep on a GPU: stacked equals one by one there too (run where CUDA is); without one, one clear line."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from decaykit import sweep
from decaykit.cli.main import main
from test_sweep_batched import FAST, Residual, assert_same, blobs, mlp

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.is_available() is False")
without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")


def conv() -> nn.Module:
    """A 1-D convolution over the 12 features: the stacked conv1d path."""
    return nn.Sequential(nn.Unflatten(1, (1, 12)), nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(48, 4))  # fmt: skip


@needs_cuda
@pytest.mark.parametrize("model,path", [(mlp, "layers"), (Residual, "vmap"), (conv, "layers")])
def test_stacked_equals_one_by_one_on_cuda(model, path):
    kw = dict(FAST, weight_decays=[0.0, 0.3, 3.0], lr=1e-2, device="cuda")
    stacked = sweep(model, blobs(), batched=True, **kw)
    alone = sweep(model, blobs(), batched=False, **kw)
    assert stacked.run["path"] == path and alone.run["path"] == "one-by-one"
    assert "cuda" in stacked.header[-1]
    assert_same(stacked, alone)


@without_cuda
def test_cuda_without_a_gpu_is_one_line_and_exit_2(capsys):
    assert main(["sweep", "--task", "ridge", "--device", "cuda", "--no-store", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "device='cuda' cannot train here" in err


@without_cuda
def test_bench_sweep_on_cuda_fails_at_once_in_one_line():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_sweep.py"), "--device", "cuda", "--k", "64"],
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT / "src"),
                                                                           "PATH": ""})  # fmt: skip
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "device='cuda' cannot train here" in done.stderr


def test_bench_sweep_takes_k_in_multiples_of_the_grid_and_counts_from_one(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as when run as a script: _machine.py beside it
    spec = importlib.util.spec_from_file_location("bench_sweep", ROOT / "benchmarks" / "bench_sweep.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.parse_args(["--k", "64", "--device", "cpu"]).k == 64
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(["--k", "12"])
    assert exit_.value.code == 2
    for bad in (["--also", "0"], ["--repeats", "-1"], ["--epochs", "two"]):  # one line, not a traceback later
        with pytest.raises(SystemExit) as exit_:
            bench.parse_args(bad)
        assert exit_.value.code == 2 and "expected a whole number >= 1" in capsys.readouterr().err
