"""The sweep's thread count: asked for, one for small steps, else the faster of 1 and N threads, timed on its first steps."""

from __future__ import annotations

import math
import re
import statistics
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from decaykit import DecayError, sweep
from decaykit.cli.main import build_parser
from decaykit.cli.sweep_cmd import settings_from_args
from decaykit.sweeps.checks import step_flops, threads_for
from decaykit.sweeps.data import SweepData
from decaykit.sweeps.settings import Execution, Training
from decaykit.sweeps.timing import ThreadChoice, choose_threads, interleaved

DATA = SweepData(torch.zeros(64, 8), torch.zeros(64, dtype=torch.long), torch.zeros(8, 8),
                 torch.zeros(8, dtype=torch.long), "classification", 2, "")  # fmt: skip


def _large():
    return nn.Sequential(nn.Linear(8, 4000), nn.ReLU(), nn.Linear(4000, 2))  # 6 · 44k params · 64: above 1e7


def _small():
    return nn.Linear(8, 2)


# a Training as the sweep resolves it for a task: every setting concrete
TRAINING = Training(optimizer="adamw", lr=1e-3, momentum=0.0, epochs=1, batch_size=64, mode="lr_coupled",
                    policy="decaykit", loss="cross_entropy", dtype=torch.float32, device=torch.device("cpu"))  # fmt: skip

durations = st.lists(st.floats(1e-5, 1.0), min_size=1, max_size=7)


@settings(max_examples=50, deadline=None)
@given(timings=st.dictionaries(st.integers(1, 64), durations, min_size=1, max_size=3))
def test_the_thread_count_with_the_lowest_median_wins_and_the_header_names_every_figure(timings):
    threads, why = choose_threads(timings)
    medians = {n: statistics.median(t) for n, t in timings.items()}
    assert medians[threads] == min(medians.values())
    assert threads == min(n for n, m in medians.items() if m == medians[threads])  # a tie: the fewer threads
    assert why.startswith(f"{threads} thread{'s' if threads > 1 else ''} (timed: ")
    for n, m in medians.items():
        figure = re.search(rf"\b{n} threads? ([\d.]+) ms/step", why)  # plain decimals, never e-notation
        assert figure and float(figure[1]) == pytest.approx(m * 1e3, rel=6e-3)


def test_a_faster_single_thread_is_chosen_even_against_many_threads():
    assert choose_threads({1: [3.1e-3, 3.0e-3, 9.0e-3], 2: [9.8e-3, 9.9e-3, 2.0e-3]}) == (
        1, "1 thread (timed: 1 thread 3.1 ms/step vs 2 threads 9.8 ms/step)",
    )  # fmt: skip


def test_interleaved_runs_take_turns_each_after_its_setting():
    calls: list[str] = []
    seen = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=4, warmup=1,
                       before=lambda key: calls.append(f"set {key}"))  # fmt: skip
    assert calls[:4] == ["set a", "a", "set b", "b"] and len(calls) == 5 * 4
    assert {key: len(t) for key, t in seen.items()} == {"a": 4, "b": 4}


def _paced(seconds: dict[int, float], seen: list[int]):
    """A step that takes ``seconds[threads]`` on the thread count in effect, and records that count."""

    def step():
        threads = torch.get_num_threads()
        seen.append(threads)
        time.sleep(seconds[threads])
        return threads

    return step


def test_the_trial_runs_the_first_steps_in_turns_then_every_step_on_the_faster_count():
    saved, seen = torch.get_num_threads(), []
    step = _paced({1: 8e-3, 2: 1e-3}, seen)
    choice = ThreadChoice([1, 2], steps=10**9, reps=3, budget=math.inf)
    try:
        for _ in range(10):
            choice.run(step)
    finally:
        torch.set_num_threads(saved)
    assert seen == [1, 1, 2, 1, 2, 1, 2, 2, 2, 2]  # a warm step on the fewest, 3 rounds in turns, then the faster
    assert choice.threads == 2 and {n: len(t) for n, t in choice.times.items()} == {1: 3, 2: 3}
    assert re.fullmatch(r"2 threads \(timed: 1 thread [\d.]+ ms/step vs 2 threads [\d.]+ ms/step\)", choice.describe())


def test_the_trial_stops_when_its_extra_cost_passes_a_share_of_the_sweep():
    saved, seen = torch.get_num_threads(), []
    choice = ThreadChoice([1, 2], steps=30, reps=5)  # 30 steps of 1 ms allow 1.5 ms: one round's 9 ms is too much
    try:
        for _ in range(6):
            choice.run(_paced({1: 10e-3, 2: 1e-3}, seen))
    finally:
        torch.set_num_threads(saved)
    assert seen == [1, 1, 2, 2, 2, 2]
    # equal counts cost little extra (a 300-step sweep of 1 ms steps allows 15 ms): all the rounds run
    even = ThreadChoice([1, 2], steps=300, reps=2, budget=math.inf)
    try:
        for _ in range(5):
            even.run(_paced({1: 1e-3, 2: 1e-3}, []))
    finally:
        torch.set_num_threads(saved)
    assert {n: len(t) for n, t in even.times.items()} == {1: 2, 2: 2} and even.threads is not None


def test_a_sweep_that_ends_before_its_trial_settles_says_so():
    saved = torch.get_num_threads()
    choice = ThreadChoice([1, 2], steps=10**9, reps=5, budget=math.inf)
    assert choice.describe() == ""  # nothing timed: nothing to say
    try:
        for _ in range(3):
            choice.run(lambda: None)
    finally:
        torch.set_num_threads(saved)
    assert choice.threads is None
    assert re.fullmatch(r"1 and 2 threads in turns \(timed: 1 thread [\d.]+ ms/step vs 2 threads [\d.]+ ms/step; "
                        r"too few steps to settle\)", choice.describe())  # fmt: skip
    fixed = ThreadChoice.fixed(3, "3 threads (as asked)")
    assert fixed.run(lambda: "ran") == "ran" and fixed.describe() == "3 threads (as asked)" and fixed.start == 3


def test_large_steps_are_timed_with_one_thread_and_torch_default(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    for members in (1, 3):
        choice = threads_for(_large(), DATA, TRAINING, members, steps=1000)
        assert choice.candidates == [1, 4] and choice.threads is None and choice.start == 4
    # too few steps to be worth a trial, one thread only, or small steps: no trial
    assert threads_for(_large(), DATA, TRAINING, 1, steps=10).describe() == "4 threads"
    assert threads_for(_small(), DATA, TRAINING, 1).describe() == "1 thread (small steps)"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert threads_for(_large(), DATA, TRAINING, 1).describe() == "1 thread"


def _conv():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 256, 4))


def test_a_convolution_counts_its_flops_at_every_position_not_once_per_weight(monkeypatch):
    model, x = _conv(), torch.zeros(2, 3, 16, 16)
    conv = 2 * (3 * 9) * 16 * 256 + 16 * 256  # multiply-adds at each of the 16 x 16 positions (and its bias)
    dense = 2 * 16 * 256 * 4
    assert step_flops(model, x) == pytest.approx(3 * (conv + dense), rel=0.05)
    assert step_flops(model, x) > 7 * 6 * sum(p.numel() for p in model.parameters())
    images = SweepData(torch.zeros(64, 3, 16, 16), torch.zeros(64, dtype=torch.long), torch.zeros(8, 3, 16, 16),
                       torch.zeros(8, dtype=torch.long), "classification", 4, "")  # fmt: skip
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    # by its parameters alone (6 · 16.8k · 64 = 6.5e6 FLOPs a step) this would be "small steps" on one thread
    assert threads_for(model, images, TRAINING, 1, steps=1000).threads is None  # timed
    assert step_flops(_Unfollowable(), x) == 6 * 4  # a forward the counter cannot run: the dense count


def test_a_transformer_layer_is_counted_as_it_trains_and_its_modes_are_left_as_they_were():
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True)
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(12 * 32, 2)).eval()
    model[2].train()  # a mixed state, to be put back exactly
    x = torch.randn(2, 12, 32)
    rng = torch.get_rng_state()
    flops = step_flops(model, x)
    # in evaluation mode the layer takes a fused fast path the counter does not see; training mode is counted:
    # attention and feed-forward matmuls at each of the 12 positions, well above 6 per parameter
    assert flops > 4 * 6 * sum(p.numel() for p in model.parameters())
    assert [m.training for m in model.modules()] == [False] * (len(list(model.modules())) - 1) + [True]
    assert torch.equal(torch.get_rng_state(), rng)  # dropout drew from a forked generator
    bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 36, 2)).eval()
    step_flops(bn, torch.randn(2, 3, 8, 8) * 5 + 3)
    assert torch.equal(bn[1].running_mean, torch.zeros(4)) and int(bn[1].num_batches_tracked) == 0


class _Unfollowable(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4))

    def forward(self, x):
        raise RuntimeError("no")


def test_a_requested_count_wins():
    choice = threads_for(_large(), DATA, TRAINING, 1, requested=3)
    assert (choice.threads, choice.describe()) == (3, "3 threads (as asked)")


def _wide():
    return nn.Sequential(nn.Linear(32, 512), nn.ReLU(), nn.Linear(512, 4))


def _blobs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(320, 32, generator=g)
    y = (x[:, :2] > 0).long() @ torch.tensor([1, 2])
    return x[:256], y[:256], x[256:], y[256:]


def test_the_header_names_the_timed_choice_and_a_rerun_with_nothing_to_train_times_nothing(tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    timed: list[int] = []
    run = ThreadChoice.run

    def counted(self, step):
        if self.threads is not None:
            return run(self, step)

        def recorded():
            timed.append(torch.get_num_threads())  # the count the trial set for this step
            return step()

        return run(self, recorded)

    monkeypatch.setattr(ThreadChoice, "run", counted)
    kw = dict(weight_decays=[0.0, 0.1], seeds=1, epochs=60, batch_size=64, storage=str(tmp_path / "j.log"))
    saved = torch.get_num_threads()
    torch.set_num_threads(2)  # two candidates even on a one-core machine
    try:
        result = sweep(_wide, _blobs, **kw)
        after = torch.get_num_threads()
        again = sweep(_wide, _blobs, **kw)
        one = sweep(_wide, _blobs, **{**kw, "storage": "memory", "threads": 1})
    finally:
        torch.set_num_threads(saved)
    assert after == 2
    chosen = re.search(r" on (\d) threads? \(timed: 1 thread [\d.]+ ms/step vs 2 threads [\d.]+ ms/step\)",
                       result.header[-1])  # fmt: skip
    assert chosen, result.header[-1]
    assert chosen.group(1) in ("1", "2")
    assert timed[:3] == [1, 1, 2]  # the sweep's own first steps: a warm one on 1 thread, then in turns
    assert again.run["trained"] == 0 and again.results == result.results and "timed" not in again.header[-1]
    assert len(timed) <= 11  # the rerun timed nothing
    # the steps the trial ran in turns on 1 and 2 threads trained the same numbers as a run on one thread
    for mine, theirs in zip(result.trials, one.trials):
        assert mine["metrics"] == pytest.approx(theirs["metrics"], rel=1e-5, abs=1e-6)


def test_the_header_says_how_many_threads_and_the_flag_sets_them():
    result = sweep(task="ridge", weight_decays=[0.1], seeds=1, epochs=5, threads=1, storage="memory")
    assert "on 1 thread (as asked)" in result.header[-1]
    assert torch.get_num_threads() >= 1
    args = build_parser().parse_args(["sweep", "--task", "ridge", "--threads", "2", "--no-store"])
    assert settings_from_args(args)[2].threads == 2
    with pytest.raises(DecayError, match="threads"):
        Execution(threads=0, storage="memory")
