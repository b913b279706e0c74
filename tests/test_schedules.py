"""λ schedules: their values, their saved state, their errors, and how the engine uses them."""

from __future__ import annotations

import math

import pytest
import torch

from decaykit import WeightDecay, schedules
from decaykit.errors import DecayError


def test_constant_linear_and_cosine_values():
    assert [schedules.constant(2.0)(t) for t in (0, 10**6)] == [2.0, 2.0]
    lin = schedules.linear(1.0, 0.0, steps=10)
    assert [lin(t) for t in (0, 5, 10, 11)] == [1.0, 0.5, 0.0, 0.0]
    cos = schedules.cosine(0.04, 0.4, steps=100)  # DINO's weight-decay schedule, in absolute terms
    assert cos(0) == pytest.approx(0.04) and cos(100) == pytest.approx(0.4) and cos(500) == pytest.approx(0.4)
    assert cos(50) == pytest.approx(0.22)  # halfway in time is halfway in value
    assert cos(25) == pytest.approx(0.4 + (0.04 - 0.4) * (1 + math.cos(math.pi / 4)) / 2)
    assert all(cos(t) <= cos(t + 1) for t in range(100))


def test_warmup_ramps_into_the_following_schedule():
    s = schedules.warmup(4, start=0.0, then=schedules.linear(1.0, 3.0, steps=2))
    assert [s(t) for t in range(8)] == [0.0, 0.25, 0.5, 0.75, 1.0, 2.0, 3.0, 3.0]
    assert [schedules.warmup(2)(t) for t in range(4)] == [0.0, 0.5, 1.0, 1.0]


def test_piecewise_switches_at_the_boundaries():
    s = schedules.piecewise([10, 20], [1.0, 0.5, 0.0])  # early-only decay (Golatkar et al. 2019)
    assert [s(t) for t in (0, 9, 10, 19, 20, 10**9)] == [1.0, 1.0, 0.5, 0.5, 0.0, 0.0]


@pytest.mark.parametrize(
    ("saved", "fresh"),
    [
        (schedules.constant(0.3), schedules.constant(1.0)),
        (schedules.linear(0.5, 2.0, 7), schedules.linear(1.0, 1.0, 1)),
        (schedules.cosine(1.0, 10.0, 9), schedules.cosine(0.0, 1.0, 100)),
        (schedules.warmup(3, start=0.1, then=schedules.cosine(1.0, 0.0, 5)),
         schedules.warmup(1, then=schedules.cosine(2.0, 2.0, 1))),
        (schedules.piecewise([2, 5], [1.0, 0.5, 0.25]), schedules.piecewise([1, 9], [0.0, 0.0, 3.0])),
    ],
)
def test_state_dict_round_trip_restores_the_settings(saved, fresh):
    assert [fresh(t) for t in range(12)] != [saved(t) for t in range(12)]
    fresh.load_state_dict(saved.state_dict())
    assert [fresh(t) for t in range(12)] == [saved(t) for t in range(12)]
    assert fresh.state_dict() == saved.state_dict() and repr(fresh) == repr(saved)


def test_loading_another_schedule_type_is_refused():
    with pytest.raises(DecayError, match="cannot load a 'Cosine' weight-decay schedule into Linear"):
        schedules.linear(1.0, 2.0, 3).load_state_dict(schedules.cosine(1.0, 2.0, 3).state_dict())


def test_callables_are_wrapped_and_numbers_refused():
    wrapped = schedules.as_schedule(lambda t: 0.5 * t)
    assert isinstance(wrapped, schedules.FromCallable) and wrapped(4) == 2.0
    assert wrapped.state_dict()["type"] == "FromCallable"
    assert schedules.as_schedule(None)(123) == 1.0
    with pytest.raises(DecayError, match="got the number 2"):
        schedules.as_schedule(2)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: schedules.linear(-1.0, 1.0, 10), r"linear\(start\) must be a finite number >= 0, got -1.0"),
        (lambda: schedules.cosine(1.0, float("nan"), 10), r"cosine\(end\) must be a finite number >= 0, got nan"),
        (lambda: schedules.linear(1.0, 0.0, 0), r"linear\(steps\) must be a whole number of steps >= 1, got 0"),
        (lambda: schedules.warmup(2.5), r"warmup\(steps\) must be a whole number of steps >= 1, got 2.5"),
        (lambda: schedules.piecewise([5], [1.0]), "one more value than boundaries, got 1 boundaries and 1 values"),
        (lambda: schedules.piecewise([5, 5], [1.0, 0.5, 0.0]), "must strictly increase, got \\[5, 5\\]"),
        (lambda: schedules.from_callable("cosine"), "got 'cosine'"),
    ],
)
def test_bad_settings_are_refused(make, message):
    with pytest.raises(DecayError, match=message):
        make()


def test_the_engine_multiplies_each_groups_lambda_and_composes_with_lr_schedulers():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    inner = torch.optim.SGD([{"params": [a], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.3}], lr=0.1)
    opt = WeightDecay(inner, mode="lr_coupled", schedule=schedules.linear(1.0, 3.0, steps=4))
    lr_sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for t in range(6):
        lr, s = 0.1 * 0.5**t, 1.0 + 2.0 * min(t, 4) / 4
        assert [d["rate"] for d in opt.expected_decay()] == pytest.approx([lr * s * 0.1, lr * s * 0.3])
        before = a.detach().clone()
        a.grad, b.grad = torch.zeros(3), torch.zeros(3)
        opt.step()
        lr_sched.step()
        torch.testing.assert_close(a.detach(), before * (1 - lr * s * 0.1))
    assert opt.steps_taken == 6


def test_resumed_engine_continues_the_schedule_where_it_stopped():
    p = torch.nn.Parameter(torch.ones(2))
    make = lambda: WeightDecay(torch.optim.AdamW([p], lr=0.1, weight_decay=0.1), schedule=schedules.cosine(1.0, 5.0, 10))  # noqa: E731
    opt = make()
    for _ in range(4):
        p.grad = torch.zeros(2)
        opt.step()
    resumed = make()
    resumed.load_state_dict(opt.state_dict())
    assert resumed.steps_taken == 4
    assert resumed.expected_decay()[0]["rate"] == pytest.approx(0.1 * 0.1 * schedules.cosine(1.0, 5.0, 10)(4))
