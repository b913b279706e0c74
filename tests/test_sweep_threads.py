"""The sweep's thread count: asked for, one for small steps, else the cores the load leaves idle."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from decaykit import DecayError, sweep
from decaykit.cli.main import build_parser
from decaykit.cli.sweep_cmd import settings_from_args
from decaykit.sweeps.checks import threads_for
from decaykit.sweeps.data import SweepData
from decaykit.sweeps.settings import Execution, Training

DATA = SweepData(torch.zeros(64, 8), torch.zeros(64, dtype=torch.long), torch.zeros(8, 8),
                 torch.zeros(8, dtype=torch.long), "classification", 2, "")  # fmt: skip
LARGE = nn.Linear(1000, 1000)  # 6 · 1e6 params · 64 samples: far above the small-step threshold
SMALL = nn.Linear(8, 2)


@settings(max_examples=50, deadline=None)
@given(load=st.floats(0.0, 40.0), cpus=st.integers(1, 64), default=st.integers(1, 64))
def test_large_steps_use_the_cores_the_load_leaves_idle(load, cpus, default):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "get_num_threads", lambda: default)  # torch's default on a machine of any size
        threads, why = threads_for(LARGE, DATA, Training(batch_size=64), 1, load=load, cpus=cpus)
    assert 1 <= threads <= default
    assert threads <= max(1, math.floor(cpus - load + 0.5))  # never more threads than idle cores (but at least one)
    if cpus - load >= default:
        assert threads == default  # an idle machine keeps torch's default
    assert why.startswith(f"{threads} thread")
    if threads < default:
        assert f"load average {load:.1f} on {cpus} cores" in why


def test_small_steps_use_one_thread_and_a_requested_count_wins():
    assert threads_for(SMALL, DATA, Training(batch_size=64), 1, load=0.0, cpus=64)[0] == 1
    assert threads_for(LARGE, DATA, Training(batch_size=64), 1, requested=3, load=50.0, cpus=2) == (
        3, "3 threads (as asked)",
    )  # fmt: skip


def test_the_header_says_how_many_threads_and_the_flag_sets_them():
    result = sweep(task="ridge", weight_decays=[0.1], seeds=1, epochs=5, threads=1, storage="memory")
    assert "on 1 thread (as asked)" in result.header[-1]
    assert torch.get_num_threads() >= 1
    args = build_parser().parse_args(["sweep", "--task", "ridge", "--threads", "2", "--no-store"])
    assert settings_from_args(args)[2].threads == 2
    with pytest.raises(DecayError, match="threads"):
        Execution(threads=0, storage="memory")


def test_the_measured_load_leaves_out_this_process_own_work(monkeypatch):
    """A script that trained for a minute before its sweep raised the load average itself: that is not
    other work, and on an otherwise idle 2-core machine the sweep keeps both threads."""
    import os

    from decaykit.sweeps import checks

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.9, 1.0, 0.5))
    monkeypatch.setattr(checks, "_usable_cpus", lambda: 2)
    monkeypatch.setattr(checks, "_own_load", lambda: 1.8)
    assert threads_for(LARGE, DATA, Training(batch_size=64), 1)[0] == 2
    monkeypatch.setattr(checks, "_own_load", lambda: 0.0)  # the same load from other processes: one thread
    assert threads_for(LARGE, DATA, Training(batch_size=64), 1) == (1, "1 thread (load average 1.9 on 2 cores)")


def test_own_load_counts_the_cpu_this_process_used():
    from decaykit.sweeps.checks import _own_load

    before = _own_load()
    x = torch.randn(300, 300)
    for _ in range(200):
        x = torch.tanh(x @ x)  # keep this process busy for a moment
    assert _own_load() > before >= 0.0
