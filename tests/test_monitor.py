"""decaykit.Monitor against the truth measured beside it, on a scale-invariant toy (Kosson et al. 2024).

The toy is a Linear layer followed by a LayerNorm without affine parameters, so its weight W is
scale-invariant: the loss sees W/‖W‖ only. Inputs and output weights are fresh Gaussian draws every
step, so the gradients are independent noise, as the equilibrium theory assumes. The run lasts more
than 5τ (τ = 1/r, r the effective decay per step), starts 1.5x off its equilibrium, and beside the
monitor the test measures ‖W‖ and the angle of every step itself (through acos of the cosine, not
the monitor's formula).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decaykit
from decaykit.errors import DecayError
from decaykit.monitor.equilibrium import momentum_sums
from decaykit.monitor.record import FIELDS

pytestmark = pytest.mark.usefixtures("one_thread")

IN, OUT, BATCH = 16, 32, 8


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(IN, OUT, bias=False)
        self.norm = torch.nn.LayerNorm(OUT, elementwise_affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


def _toy(start_norm: float | None, seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    model = Toy()
    if start_norm is not None:
        with torch.no_grad():
            model.proj.weight.mul_(start_norm / model.proj.weight.norm())
    return model


def _truth_run(model: Toy, opt, mon, steps: int, seed: int = 1) -> dict[int, tuple[float, float]]:
    """Train the toy; return {step: (‖W‖, angle)} measured beside the monitor at every step."""
    g = torch.Generator().manual_seed(seed)
    w = model.proj.weight
    truth = {}
    for step in range(1, steps + 1):
        x = torch.randn(BATCH, IN, generator=g)
        y = torch.randn(BATCH, OUT, generator=g)
        (model(x) * y).sum().backward()
        before = w.detach().double().clone()
        opt.step()
        opt.zero_grad()
        after = w.detach().double()
        cos = float((before * after).sum() / (before.norm() * after.norm()))
        truth[step] = (float(after.norm()), math.acos(min(1.0, cos)))
    return truth


def _window(history, name: str, since: int) -> list[dict]:
    return [r for r in history if r["name"] == name and r["step"] >= since]


def _check_truth_and_prediction(mon, truth, steps: int, tau: float) -> None:
    records = [r for r in mon.history if r["name"] == "proj.weight"]
    assert [r["step"] for r in records] == [1, *range(mon.every, steps + 1, mon.every)]
    for r in records:  # exact records: within 2% of what was measured beside (in fact to float rounding)
        norm, angle = truth[r["step"]]
        assert r["norm"] == pytest.approx(norm, rel=0.02)
        assert r["angular_update"] == pytest.approx(angle, rel=0.02)
        assert r["timescale_steps"] == pytest.approx(tau, rel=1e-9)
    assert steps >= 5 * tau
    late = _window(mon.history, "proj.weight", steps - 2 * tau)  # the last 2τ, after 3τ of settling
    mean = lambda key: sum(r[key] for r in late) / len(late)  # noqa: E731
    assert mean("norm") == pytest.approx(mean("predicted_norm"), rel=0.10)
    assert mean("angular_update") == pytest.approx(mean("predicted_angular_update"), rel=0.10)
    assert mean("equilibrium") == pytest.approx(1.0, rel=0.10)
    assert late[-1]["cumulative_decay"] == pytest.approx(steps / tau, rel=0.05)


def test_adamw_records_match_the_truth_and_the_equilibrium():
    lr, lam, betas = 1e-2, 1.0, (0.5, 0.99)
    tau = 1 / (lr * lam)
    predicted = math.sqrt(lr * OUT * IN / (2 * lam))
    model = _toy(1.5 * predicted)
    opt = torch.optim.AdamW(decaykit.param_groups(model, lam), lr=lr, betas=betas)
    mon = decaykit.Monitor(model, opt, every=10, total_steps=600)
    truth = _truth_run(model, opt, mon, 600)
    _check_truth_and_prediction(mon, truth, 600, tau)
    r = mon.history[-1]
    assert r["predicted_norm"] == pytest.approx(predicted, rel=1e-9)
    assert r["predicted_angular_update"] == pytest.approx(math.sqrt(2 * lr * lam * (1 - betas[0]) / (1 + betas[0])))
    assert set(FIELDS) <= set(r) and r["group"] == 0
    assert mon.findings == []  # a healthy run
    mon.close()


def test_sgd_with_momentum_records_match_the_truth_and_the_equilibrium():
    lr, lam, alpha = 0.1, 1e-2, 0.9
    tau = (1 - alpha) / (lr * lam)  # L2 decay through the momentum: r = ηλ/(1 − α)
    model = _toy(None)
    opt = torch.optim.SGD(decaykit.param_groups(model, lam), lr=lr, momentum=alpha)
    with decaykit.Monitor(model, opt, every=10, total_steps=800) as mon:
        truth = _truth_run(model, opt, mon, 800)
    _check_truth_and_prediction(mon, truth, 800, tau)
    assert mon.history[-1]["predicted_angular_update"] == pytest.approx(math.sqrt(2 * lr * lam / (1 + alpha)))
    assert mon.findings == []


def test_the_engine_modes_use_the_engines_own_rate():
    """lr_independent: r = (η_t/η_max)·λ, read from WeightDecay.expected_decay()."""
    lr, lam = 1e-2, 1e-2  # an lr_independent λ: r = λ at the peak LR
    model = _toy(None)
    inner = torch.optim.AdamW(decaykit.param_groups(model, lam), lr=lr, betas=(0.5, 0.99))
    opt = decaykit.WeightDecay(inner, mode="lr_independent")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 if step >= 5 else 1.0)
    mon = decaykit.Monitor(model, opt, every=5)
    for _ in range(10):
        model(torch.randn(BATCH, IN)).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    rates = {r["step"]: r["decay_rate"] for r in mon.history}
    assert rates == pytest.approx({1: lam, 5: lam, 10: lam / 2})
    mon.close()


@settings(max_examples=30, deadline=None)
@given(st.floats(0.0, 0.95), st.floats(0.0, 0.9), st.booleans())
def test_momentum_sums_are_the_sums_of_the_step_weights(alpha, dampening, nesterov):
    """(S, Q) against the weights of torch SGD's step on one unit gradient, summed over 800 steps."""
    if nesterov:
        dampening = 0.0
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=1.0, momentum=alpha, dampening=dampening, nesterov=nesterov and alpha > 0)
    weights = []
    for k in range(800):
        p.grad = torch.ones_like(p) if k == 1 else torch.zeros_like(p)  # step 0 primes the buffer (no dampening)
        before = float(p.detach())
        opt.step()
        weights.append(before - float(p.detach()))
    s, q = momentum_sums(alpha, dampening, nesterov and alpha > 0)
    assert sum(weights) == pytest.approx(s, rel=1e-6, abs=1e-9)
    assert sum(w * w for w in weights) == pytest.approx(q, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("kwargs, argument", [({"every": 0}, "every"), ({"total_steps": 0}, "total_steps"),
                                              ({"every": 2.5}, "every"), ({"start_step": -1}, "start_step")])
def test_bad_settings_name_the_argument(kwargs, argument):
    model = _toy(None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(DecayError) as info:
        decaykit.Monitor(model, opt, **kwargs)
    assert info.value.argument == argument


def test_close_removes_the_hooks():
    model = _toy(None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mon = decaykit.Monitor(model, opt, every=1)
    model(torch.randn(2, IN)).sum().backward()
    opt.step()
    mon.close()
    opt.step()
    assert [r["step"] for r in mon.history] == [1]


@pytest.mark.parametrize("mode", ["lr_coupled", "lr_independent", "corrected", "cautious", "coupled_l2"])
def test_every_engine_mode_is_recorded_with_the_rate_it_applies(mode):
    lr, lam = 1e-2, 1e-2 if mode == "lr_independent" else 0.5
    model = _toy(None)
    opt = decaykit.WeightDecay(torch.optim.AdamW(decaykit.param_groups(model, lam), lr=lr), mode=mode)
    expected = opt.expected_decay()[0]
    mon = decaykit.Monitor(model, opt, every=1)
    model(torch.randn(BATCH, IN)).sum().backward()
    opt.step()
    (r,) = mon.history
    assert r["name"] == "proj.weight" and math.isfinite(r["decay_to_update"])
    if mode == "coupled_l2":  # λθ behind Adam's √v̂: r ≈ ηλ/RMS(√v̂), no equilibrium predicted
        state = opt.state[model.proj.weight]
        rms = float((state["exp_avg_sq"] / (1 - 0.999)).mean().sqrt())
        assert r["decay_rate"] == pytest.approx(lr * lam / rms, rel=1e-3)
        assert r["predicted_norm"] is None and r["predicted_angular_update"] is None
    elif mode == "cautious":  # r on the share of θ² where the update and θ agree (checked by twins elsewhere)
        assert 0 < r["decay_rate"] < expected["rate"] and r["predicted_norm"] is None
    else:
        assert r["decay_rate"] == pytest.approx(expected["rate"])
        assert r["predicted_norm"] is not None
    mon.close()


def test_tensorboard_by_folder_writes_events_or_says_what_to_install(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(DecayError, match=r"pip install 'decaykit\[tensorboard\]'"):
            decaykit.monitor.TensorBoardSink(tmp_path / "tb")
        return
    model = _toy(None)
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-2)
    mon = decaykit.Monitor(model, opt, every=1, sink=decaykit.monitor.TensorBoardSink(tmp_path / "tb"))
    model(torch.randn(BATCH, IN)).sum().backward()
    opt.step()
    mon.close()
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_a_tensor_the_step_skips_is_not_recorded():
    """torch's optimizers leave a tensor without a gradient alone: no decay happened, so no record."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 4, bias=False))
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-2)
    mon = decaykit.Monitor(model, opt, every=1)
    model[0](torch.randn(2, 4)).sum().backward()   # the second layer gets no gradient
    opt.step()
    assert [r["name"] for r in mon.history] == ["0.weight"]
    mon.close()


def _warmup_truth(steps: int, lr: float, rate_of) -> list[float]:
    """Σ r after each step 1..steps, summed by hand: η_t = lr·t/steps (LambdaLR's linear warm-up), r_t = rate_of(t, η_t)."""
    sums, done = [], 0.0
    for t in range(1, steps + 1):
        done += rate_of(t, lr * t / steps)
        sums.append(done)
    return sums


@pytest.mark.parametrize("case", ["adamw", "sgd_momentum", "engine_schedule"])
def test_cumulative_decay_sums_the_rate_of_every_step(case):
    """Σ r at each record against η_t·λ_t summed by hand over every step of a warm-up: holding each record's rate
    over the steps before it (as the monitor did) counted 50-100% too much while the LR rises."""
    lr, lam, steps = 1e-2, 0.5, 100
    model = _toy(None)
    if case == "sgd_momentum":  # L2 through momentum 0.9: r_t = η_t·λ/(1 − 0.9)
        opt = torch.optim.SGD(decaykit.param_groups(model, lam), lr=lr, momentum=0.9)
        rate_of = lambda t, eta: eta * lam * 10  # noqa: E731
    elif case == "engine_schedule":  # λ_t = s(t)·λ, s rising 1 → 4 over the run (index t − 1 for step t)
        opt = decaykit.WeightDecay(torch.optim.AdamW(decaykit.param_groups(model, lam), lr=lr),
                                   schedule=decaykit.schedules.linear(1.0, 4.0, steps=steps))
        rate_of = lambda t, eta: eta * lam * (1 + 3 * (t - 1) / steps)  # noqa: E731
    else:
        opt = torch.optim.AdamW(decaykit.param_groups(model, lam), lr=lr)
        rate_of = lambda t, eta: eta * lam  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / steps)
    mon = decaykit.Monitor(model, opt, every=25)
    for _ in range(steps):
        model(torch.randn(BATCH, IN)).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    mon.close()
    truth = _warmup_truth(steps, lr, rate_of)
    recorded = {r["step"]: r["cumulative_decay"] for r in mon.history}
    assert list(recorded) == [1, 25, 50, 75, 100]
    assert recorded == pytest.approx({step: truth[step - 1] for step in recorded}, rel=1e-9)


@pytest.mark.parametrize(("every", "engine"), [(25, False), (7, False), (25, True)])
def test_cumulative_decay_leaves_out_the_steps_a_tensor_had_no_gradient(every, engine):
    """A branch used one step in ten (a task head, an MoE expert): torch's AdamW, and the engine, skip a tensor
    whose grad is None, decay included, so its Σ r is a tenth of the others'. It was the others' (10x)."""
    lr, lam, steps = 1e-2, 0.5, 100
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 4), "b": torch.nn.Linear(4, 4)})
    groups = [{"params": [model["a"].weight, model["b"].weight], "weight_decay": lam}]
    opt = torch.optim.AdamW(groups, lr=lr)
    opt = decaykit.WeightDecay(opt, mode="lr_coupled") if engine else opt
    mon = decaykit.Monitor(model, opt, every=every)
    for t in range(1, steps + 1):
        x = torch.randn(2, 4)
        out = model["a"](x) + (model["b"](x) if t % 10 == 0 else 0)
        out.pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    mon.close()
    stepped = {"a.weight": lambda step: step, "b.weight": lambda step: step // 10}  # steps with a gradient so far
    seen = {r["name"] for r in mon.history}
    assert seen == set(stepped)  # b is recorded at the recorded steps it was stepped in
    for r in mon.history:
        assert r["cumulative_decay"] == pytest.approx(stepped[r["name"]](r["step"]) * lr * lam, rel=1e-9), r


@pytest.mark.parametrize(("nesterov", "dampening"), [(False, 0.0), (True, 0.0), (False, 0.5)])
def test_decay_to_update_under_sgd_momentum_follows_the_buffer_as_it_fills(nesterov, dampening):
    """L2 through SGD's momentum: the decay's step is lr·D_n with D_n = α·D_(n−1) + (1 − d)·λθ_n (D_1 = λθ_1, torch's
    first buffer is undamped), plus λθ_n + α·D_n for Nesterov. The monitor took the steady state 1/(1 − α) at every
    step: its first record (always taken) said the decay was 3x the rest of a fine-tuning step when it was 0.36x."""
    torch.manual_seed(0)
    lr, lam, mu = 1e-2, 1e-3, 0.9
    model = torch.nn.Linear(16, 16, bias=False)
    with torch.no_grad():
        model.weight.normal_(0, 1.0)  # a trained layer: large next to the step
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=mu, weight_decay=lam, nesterov=nesterov,
                          dampening=dampening)
    mon = decaykit.Monitor(model, opt, every=1)
    held, truth = torch.zeros(16, 16), []
    for n in range(1, 8):
        theta = model.weight.detach().clone()
        (model(torch.randn(8, 16)) * torch.randn(8, 16) * 5e-4).sum().backward()
        held = lam * theta if n == 1 else mu * held + (1 - dampening) * lam * theta
        d = lr * (lam * theta + mu * held if nesterov else held)
        opt.step()
        opt.zero_grad()
        truth.append(float(d.norm() / (model.weight.detach() - theta + d).norm()))
    mon.close()
    measured = [r["decay_to_update"] for r in mon.history]
    assert measured == pytest.approx(truth, rel=1e-3)


def _scaled_run(fused: bool, every: int) -> decaykit.Monitor:
    """12 calls of GradScaler.step, 3 of them on an overflow (inputs with inf)."""
    torch.manual_seed(0)
    model = _toy(None)
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-2, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)  # the same code path as "cuda"
    mon = decaykit.Monitor(model, opt, every=every)
    g = torch.Generator().manual_seed(1)
    for call in range(12):
        x = torch.randn(BATCH, IN, generator=g)
        if call in (2, 3, 7):
            x[0, 0] = math.inf
        scaler.scale((model(x) * torch.randn(BATCH, OUT, generator=g)).sum()).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    mon.close()
    return mon


@pytest.mark.parametrize("every", [1, 4])
def test_steps_gradscaler_skips_on_a_fused_optimizer_are_not_counted(every):
    """With fused=True, GradScaler calls step() on an overflow too (optimizer.found_inf set) and the kernel changes
    nothing: the monitor must read that run as the same loop with fused=False, where step() is not called. They were
    counted as decayed steps (cumulative_decay too high, a false decay-dominates, the step numbers drifting)."""
    fused, plain = _scaled_run(True, every), _scaled_run(False, every)
    assert fused.step == plain.step == 9  # 12 calls, 3 skipped
    steps = [r["step"] for r in fused.history]
    assert steps == [r["step"] for r in plain.history] == ([1, 4, 8] if every == 4 else list(range(1, 10)))
    # Σ r = k·η·λ after k applied steps
    assert [r["cumulative_decay"] for r in fused.history] == pytest.approx([k * 1e-3 for k in steps], rel=1e-9)
    assert fused.findings == plain.findings == []


@pytest.mark.filterwarnings("ignore:1 tensor outside the layers decaykit knows")
def test_a_complex_tensor_is_measured_in_its_real_coordinates():
    """torch's Adam normalises a complex tensor as its real view, 2·numel coordinates: the predicted norm is
    √(η·2·numel/(2λ)) (numel gave one √2 too small), and L2's rate reads √v̂ per real coordinate (the complex
    moments made the monitor's hook fail the training step)."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 4, dtype=torch.cfloat))
    holder = torch.nn.Module()
    holder.w = w
    lr, lam = 1e-2, 0.5
    for opt in (torch.optim.AdamW([w], lr=lr, weight_decay=lam), torch.optim.Adam([w], lr=lr, weight_decay=lam)):
        with decaykit.Monitor(holder, opt, every=1) as mon:
            for _ in range(3):
                (w.abs() ** 2 * torch.randn(8, 4)).sum().backward()
                opt.step()
                opt.zero_grad()
        r = mon.history[-1]
        if isinstance(opt, torch.optim.AdamW):
            assert r["predicted_norm"] == pytest.approx(lr * math.sqrt(2 * w.numel() / (2 * lr * lam)), rel=1e-9)
        else:  # coupled L2 behind Adam's denominator: η·λ/RMS(√v̂) over the 64 real coordinates
            v = torch.view_as_real(opt.state[w]["exp_avg_sq"]) / (1 - 0.999**3)
            assert r["decay_rate"] == pytest.approx(lr * lam / float(v.mean().sqrt()), rel=1e-6)


@pytest.mark.filterwarnings("ignore:1 tensor outside the layers decaykit knows")
def test_a_complex_scale_invariant_weight_settles_on_its_prediction():
    """A complex weight followed by a normalisation, 5τ of AdamW: at its equilibrium, and no finding (it was told
    far-from-equilibrium, 1.41x a prediction that counted numel coordinates)."""

    class Complex(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(OUT, IN, dtype=torch.cfloat) * 0.05)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = x @ self.w.T
            return z / torch.linalg.vector_norm(z, dim=-1, keepdim=True)

    torch.manual_seed(0)
    model = Complex()
    lr, lam = 1e-2, 2.0  # τ = 50 steps
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=lam, betas=(0.5, 0.99))
    with decaykit.Monitor(model, opt, every=10) as mon:
        for _ in range(250):
            x, y = torch.randn(BATCH, IN, dtype=torch.cfloat), torch.randn(BATCH, OUT, dtype=torch.cfloat)
            (model(x) * y.conj()).real.sum().backward()
            opt.step()
            opt.zero_grad()
    late = [r["norm"] / r["predicted_norm"] for r in mon.history if r["step"] >= 150]
    assert mon.history[-1]["predicted_norm"] == pytest.approx(math.sqrt(lr * 2 * OUT * IN / (2 * lam)))
    assert sum(late) / len(late) == pytest.approx(1.0, rel=0.1)
    assert mon.findings == []


@pytest.mark.filterwarnings("ignore:1 tensor outside the layers decaykit knows")
def test_adam_l2_with_amsgrad_is_rated_by_the_maximum_it_divides_by():
    """amsgrad divides by √max v̂ (max_exp_avg_sq), not √v̂: with gradients that shrink, the rate read from
    exp_avg_sq was several times too high."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 4))
    holder = torch.nn.Module()
    holder.w = w
    lr, lam = 1e-2, 0.5
    opt = torch.optim.Adam([w], lr=lr, weight_decay=lam, amsgrad=True, betas=(0.9, 0.9))
    with decaykit.Monitor(holder, opt, every=1) as mon:
        for step in range(30):
            w.grad = torch.randn(8, 4) * (10.0 if step < 5 else 0.1)
            opt.step()
    state = opt.state[w]
    assert not torch.allclose(state["max_exp_avg_sq"], state["exp_avg_sq"])
    v = state["max_exp_avg_sq"] / (1 - 0.9**30)
    assert mon.history[-1]["decay_rate"] == pytest.approx(lr * lam / float(v.mean().sqrt()), rel=1e-4)
