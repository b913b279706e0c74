"""Batched sweeps equal one-by-one sweeps; models that cannot be stacked fall back with a note."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from decaykit import DecayError, sweep

FAST = dict(seeds=2, epochs=4, batch_size=16, curve_points=2, progress=False)


def blobs(n_train: int = 64, n_test: int = 96, dim: int = 12, classes: int = 4, flip: float = 0.25):
    """Gaussian clusters with a share of training labels flipped: small, and it overfits."""
    g = torch.Generator().manual_seed(0)
    centers = 1.5 * torch.randn(classes, dim, generator=g)
    y_train = torch.randint(0, classes, (n_train,), generator=g)
    y_test = torch.randint(0, classes, (n_test,), generator=g)
    x_train = centers[y_train] + torch.randn(n_train, dim, generator=g)
    x_test = centers[y_test] + torch.randn(n_test, dim, generator=g)
    noisy = torch.rand(n_train, generator=g) < flip
    y_train[noisy] = (y_train[noisy] + 1) % classes
    return x_train, y_train, x_test, y_test


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))


class Residual(nn.Module):
    """Not a Sequential: runs through torch.func.vmap."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(12, 24)
        self.norm = nn.LayerNorm(24)
        self.block = nn.Linear(24, 24)
        self.head = nn.Linear(24, 4)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        h = h + torch.tanh(self.block(self.norm(h)))
        return self.head(h)


def assert_same(a, b, tol: float = 1e-4) -> None:
    """Every final metric and every curve point of every trial agrees to ``tol``."""
    assert [(t["weight_decay"], t["seed"]) for t in a.trials] == [(t["weight_decay"], t["seed"]) for t in b.trials]
    for ta, tb in zip(a.trials, b.trials):
        assert ta["diverged"] == tb["diverged"]
        assert ta["metrics"].keys() == tb["metrics"].keys()
        for name, va in ta["metrics"].items():
            vb = tb["metrics"][name]
            assert (va is None) == (vb is None), name
            if va is not None:
                assert abs(va - vb) <= tol * max(1.0, abs(vb)), (name, ta["weight_decay"], va, vb)
        for name, series in ta["curves"].items():
            for va, vb in zip(series, tb["curves"][name]):
                if va is not None and vb is not None:
                    assert abs(va - vb) <= tol * max(1.0, abs(vb)), (name, ta["weight_decay"], va, vb)
    for ra, rb in zip(a.results, b.results):
        for key, va in ra.items():
            if isinstance(va, float):
                assert abs(va - rb[key]) <= tol * max(1.0, abs(rb[key])), key
    assert (a.best or {}).get("weight_decay") == (b.best or {}).get("weight_decay")


@pytest.mark.parametrize(
    "optimizer,mode,lr",
    [("adamw", "lr_coupled", 1e-2), ("sgd", "coupled_l2", 0.05), ("adamw", "cautious", 1e-2), ("adam", "corrected", 1e-2)],
)
def test_batched_equals_one_by_one(optimizer, mode, lr):
    kw = dict(FAST, weight_decays=[0.0, 0.1, 1.0, 5.0], optimizer=optimizer, mode=mode, lr=lr, momentum=0.9 if optimizer == "sgd" else None)
    batched = sweep(mlp, blobs(), **kw)
    alone = sweep(mlp, blobs(), batched=False, **kw)
    assert batched.run["path"] == "layers" and alone.run["path"] == "one-by-one"
    assert_same(batched, alone)
    # the decay did something: larger λ, smaller weights
    norms = [r["weight_norm"] for r in batched.results]
    assert norms == sorted(norms, reverse=True)


def test_vmap_path_equals_one_by_one():
    kw = dict(FAST, weight_decays=[0.0, 0.5, 3.0], lr=1e-2)
    batched = sweep(Residual, blobs(), batched=True, **kw)
    alone = sweep(Residual, blobs(), batched=False, **kw)
    assert batched.run["path"] == "vmap"
    assert_same(batched, alone)


def test_members_in_a_chunk_do_not_depend_on_each_other():
    """A trial gives the same numbers whichever trials it is stacked with."""
    kw = dict(FAST, lr=1e-2)
    wide = sweep(mlp, blobs(), weight_decays=[0.0, 0.3, 3.0], chunk_size=6, **kw)
    narrow = sweep(mlp, blobs(), weight_decays=[0.3], chunk_size=6, **kw)
    pick = [t for t in wide.trials if t["weight_decay"] == 0.3]
    for a, b in zip(pick, narrow.trials):
        for name, v in a["metrics"].items():
            assert abs(v - b["metrics"][name]) <= 1e-5, name


class WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)


class WithDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(12, 16), nn.Linear(16, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.b(self.drop(torch.relu(self.a(x))))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(12, 4), nn.Linear(12, 4)

    def forward(self, x):
        return self.a(x) if x.sum() > 0 else self.b(x)  # data-dependent Python control flow


@pytest.mark.parametrize("model,why", [(WithBatchNorm, "BatchNorm1d"), (WithDropout, "vmap"), (Branchy, "vmap")])
def test_unbatchable_models_fall_back_with_a_note(model, why):
    result = sweep(model, blobs(), **dict(FAST, weight_decays=[0.0, 1.0], seeds=1, epochs=2))
    assert result.run["path"] == "one-by-one" and not result.run["batched"]
    assert any("one model at a time" in n and why in n for n in result.notes), result.notes
    assert len(result.trials) == 2 and all(t["metrics"]["test_accuracy"] is not None for t in result.trials)
    with pytest.raises(DecayError, match="cannot be trained as a stack"):
        sweep(model, blobs(), batched=True, **dict(FAST, weight_decays=[0.0, 1.0], seeds=1, epochs=1))


def test_diverged_member_is_marked_and_the_others_are_untouched():
    # SGD with the L2 term 1000·θ and lr 0.5: θ ← θ(1 − 500) − …, which explodes to inf, then NaN
    kw = dict(FAST, weight_decays=[0.0, 0.01, 1000.0], optimizer="sgd", lr=0.5, mode="coupled_l2")
    batched = sweep(mlp, blobs(), **kw)
    alone = sweep(mlp, blobs(), batched=False, **kw)
    assert_same(batched, alone)
    rows = {r["weight_decay"]: r for r in batched.results}
    assert rows[1000.0]["diverged"] == 2 and rows[1000.0]["test_accuracy"] is None
    assert rows[0.0]["diverged"] == 0 and math.isfinite(rows[0.0]["test_accuracy"])
    assert batched.best["weight_decay"] != 1000.0
    assert any("diverged" in n for n in batched.notes)
    assert "diverged 2/2 seeds" in str(batched)


def test_a_shrink_beyond_one_is_refused_before_training():
    with pytest.raises(DecayError, match=r"1000 .* flips every weight's sign"):
        sweep(mlp, blobs(), **dict(FAST, weight_decays=[0.0, 1000.0], optimizer="sgd", lr=0.5, mode="lr_coupled"))


def test_vmap_stacking_that_measures_slower_falls_back_once_per_study(tmp_path, monkeypatch):
    import decaykit.sweeps.runner as runner

    calls = []

    def slower(*args, **kwargs):
        calls.append(1)
        return False, "9 ms per stacked step of 2 models vs 2 x 1 ms one at a time"

    monkeypatch.setattr(runner, "stacking_pays", slower)
    kw = dict(FAST, weight_decays=[0.0, 1.0], seeds=1, epochs=1, out=str(tmp_path), plots=False)
    first = sweep(Residual, blobs(), **kw)
    assert first.run["path"] == "one-by-one" and calls == [1]
    assert any("stacking measured slower (9 ms per stacked step" in n for n in first.notes)
    more = sweep(Residual, blobs(), **{**kw, "weight_decays": [0.0, 1.0, 3.0]})
    assert calls == [1] and more.run["path"] == "one-by-one"  # the study's decision is reused
    assert sweep(mlp, blobs(), **kw).run["path"] == "layers" and calls == [1]  # Linear chains are not timed


def test_the_stacking_trial_runs_on_the_thread_count_asked_for(monkeypatch):
    """threads=1: the timing that decides stacked or one by one must be of 1-thread steps, as training will run."""
    import decaykit.sweeps.runner as runner

    seen = []

    def timed(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return False, "9 ms per stacked step of 2 models vs 2 x 1 ms one at a time"

    monkeypatch.setattr(runner, "stacking_pays", timed)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = sweep(Residual, blobs(), **dict(FAST, weight_decays=[0.0, 1.0], seeds=1, epochs=1, threads=1,
                                                   storage="memory", plots=False))  # fmt: skip
    finally:
        torch.set_num_threads(saved)
    assert seen == [1] and any("one at a time, on 1 thread)" in n for n in result.notes)


class TokenClassifier(nn.Module):
    """Token ids in, class logits out: an embedding, the mean over positions, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(30, 16), nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(ids).mean(1)))


def test_token_ids_train_as_they_are_and_stacked_equals_one_by_one():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30, (120, 6), generator=g)
    labels = ids[:, 0] % 3
    data = (ids[:96], labels[:96], ids[96:], labels[96:])
    kw = dict(FAST, weight_decays=[0.0, 0.1, 1.0], lr=0.05)
    stacked, alone = sweep(TokenClassifier, data, batched=True, **kw), sweep(TokenClassifier, data, batched=False, **kw)
    assert stacked.run["path"] == "vmap" and alone.run["path"] == "one-by-one"
    assert_same(stacked, alone)
    assert max(r["train_accuracy"] for r in stacked.results) > 0.5  # it learns from the ids (chance: 1/3)


def test_the_stacking_trial_stops_once_the_answer_is_clear(monkeypatch):
    import decaykit.sweeps.batched as batched
    from decaykit.sweeps.data import SweepData
    from decaykit.sweeps.settings import Training

    paces = {"stacked": 1.0, "single": 1.0}  # seconds a step takes, per side, as the fake clock reports it
    rounds: list[int] = []

    def clocked(runs, *, reps, warmup):
        for run in runs.values():
            run()  # the real steps still run
        rounds.append(warmup)
        return {key: [paces[key]] * reps for key in runs}

    monkeypatch.setattr(batched, "interleaved", clocked)
    x, y, xt, yt = blobs()
    data = SweepData(x, y, xt, yt, "classification", 4, "")
    training = Training(optimizer="adamw", lr=1e-3, momentum=0.0, epochs=1, batch_size=16, mode="lr_coupled",
                        policy="decaykit", loss="cross_entropy", dtype=torch.float32, device=torch.device("cpu"))  # fmt: skip
    paces.update(stacked=1.0, single=1.0)  # 4 members stacked 4x faster than one by one: clear after 2 rounds
    assert batched.stacking_pays(mlp, data, training, 4)[0] and rounds == [1, 0]
    rounds.clear()
    paces.update(stacked=3.5, single=1.0)  # 3.5 against 4 x 1: close, every round runs, and stacking wins
    assert batched.stacking_pays(mlp, data, training, 4)[0] and rounds == [1, 0, 0, 0, 0]
    rounds.clear()
    paces.update(stacked=9.0, single=1.0)  # 9 against 4 x 1: clearly slower
    faster, detail = batched.stacking_pays(mlp, data, training, 4)
    assert not faster and rounds == [1, 0] and detail == "9000.00 ms per stacked step of 4 models vs 4 x 1000.00 ms one at a time"


def test_an_optimizer_factory_gets_the_policy_groups_and_the_engine_applies_lambda():
    kw = dict(FAST, weight_decays=[0.0, 1.0], lr=0.05, mode="coupled_l2")
    by_name = sweep(mlp, blobs(), optimizer="sgd", momentum=0.9, **kw)
    by_factory = sweep(mlp, blobs(), optimizer=lambda groups, lr: torch.optim.SGD(groups, lr=lr, momentum=0.9), **kw)
    assert_same(by_name, by_factory, tol=1e-6)
    norms = [r["weight_norm"] for r in by_factory.results]
    assert norms[1] < 0.95 * norms[0]  # λ = 1 really decayed


def test_a_convex_problem_agrees_to_rounding_over_a_long_run():
    """Ridge is convex, so rounding differences between the stacked and the plain kernels do not grow:
    after 600 full-batch steps every metric agrees to 1e-9 (non-convex nets drift chaotically instead)."""
    kw = dict(task="ridge", weight_decays=[0.1, 1.0, 10.0], epochs=600, curve_points=2)
    stacked, alone = sweep(**kw), sweep(batched=False, **kw)
    assert stacked.run["path"] == "layers"
    assert_same(stacked, alone, tol=1e-9)


def test_the_caller_s_flush_denormal_mode_is_left_as_it_was():
    from decaykit.sweeps.runner import _flushing_denormals

    kw = dict(FAST, weight_decays=[0.0, 1.0], seeds=1, epochs=1)
    try:
        for mode in (True, False):
            torch.set_flush_denormal(mode)
            assert _flushing_denormals() is mode
            sweep(mlp, blobs(), **kw)
            assert _flushing_denormals() is mode
    finally:
        torch.set_flush_denormal(False)


@settings(max_examples=40, deadline=None)
@given(
    channels=st.integers(1, 3),
    out=st.integers(1, 4),
    kernel=st.integers(1, 5),
    stride=st.integers(1, 3),
    padding=st.integers(0, 3),
    length=st.integers(3, 12),
    bias=st.booleans(),
    flatten_start=st.sampled_from([1, -2]),
)
def test_stacked_convolutions_with_a_linear_head_equal_each_member_s_own(
    channels, out, kernel, stride, padding, length, bias, flatten_start
):
    """Two stacked Conv1d (padding wider than the kernel's reach included), a Flatten and a Linear read
    unit-major: outputs and every gradient equal each member's own model."""
    mid = (length + 2 * padding - kernel) // stride + 1
    last = (mid + 2 * padding - kernel) // stride + 1 if mid > 0 else 0
    assume(last > 0)
    torch.manual_seed(0)
    models = [
        nn.Sequential(
            nn.Conv1d(channels, out, kernel, stride=stride, padding=padding, bias=bias), nn.ReLU(),
            nn.Conv1d(out, out, kernel, stride=stride, padding=padding, bias=bias), nn.Tanh(),
            nn.Flatten(flatten_start), nn.Linear(out * last, 3, bias=bias),
        ).double()
        for _ in range(3)
    ]  # fmt: skip
    assert_stacked_equals_members(models, torch.randn(len(models), 4, channels, length, dtype=torch.float64))


def assert_stacked_equals_members(models: list[nn.Module], x: torch.Tensor) -> None:
    """The stacked layer path on ``x`` (one batch per member) gives each member's own outputs, input
    gradient and parameter gradients."""
    from decaykit.sweeps.batched import _run_layers, layer_plan

    steps = layer_plan(models[0])
    assert steps is not None
    params = {
        name: torch.stack([dict(m.named_parameters())[name].detach() for m in models]).requires_grad_()
        for name, _ in models[0].named_parameters()
    }
    x = x.detach().requires_grad_()
    stacked = _run_layers(steps, params, x)
    weights = torch.randn_like(stacked)
    (stacked * weights).sum().backward()
    for k, model in enumerate(models):
        xk = x[k].detach().requires_grad_()
        own = model(xk)
        torch.testing.assert_close(stacked[k], own)
        (own * weights[k]).sum().backward()
        torch.testing.assert_close(x.grad[k], xk.grad)
        for name, p in model.named_parameters():
            torch.testing.assert_close(params[name].grad[k], p.grad)


def test_a_seeded_model_is_the_one_torch_manual_seed_builds_and_the_callers_rng_is_untouched():
    """A trial's start is fixed by (λ, seed) as the README says: torch.manual_seed(seed), then the factory."""
    from decaykit.sweeps.trainer import seeded_model

    def factory() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Dropout(0.1), torch.nn.Linear(7, 3))

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    for seed in (0, 7):
        torch.manual_seed(123)
        model = seeded_model(factory, seed, torch.float64, torch.device("cpu"))
        assert torch.equal(torch.rand(3), expected_next)  # the caller's stream goes on as if nothing ran
        torch.manual_seed(seed)
        reference = factory().double()
        for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
            assert torch.equal(a, b)


def test_a_model_that_draws_random_numbers_gives_each_trial_the_same_numbers_however_it_is_run():
    """Dropout's masks come from torch's global generator: a trial must not depend on what ran before it (other
    trials, the caller's seed, the process's random start), or a resumed sweep reports other numbers."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 3
    x = torch.randn(120, 6, generator=g) + y[:, None]
    data = (x[:80], y[:80], x[80:], y[80:])

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))

    kw = dict(seeds=[0], epochs=3, batch_size=16, lr=1e-2, storage="memory", plots=False, progress=False, threads=1)
    together = sweep(net, data, weight_decays=[0.0, 1.0], **kw)
    torch.manual_seed(123)
    caller_next = torch.rand(2)
    torch.manual_seed(123)
    alone = sweep(net, data, weight_decays=[1.0], **kw)
    assert torch.equal(torch.rand(2), caller_next)  # the caller's stream is where it was
    pick = [next(t["metrics"] for t in r.trials if t["weight_decay"] == 1.0) for r in (together, alone)]
    assert pick[0] == pick[1]
    assert pick[0]["train_loss"] != next(t["metrics"] for t in together.trials if t["weight_decay"] == 0)["train_loss"]


def test_a_run_that_trained_nothing_says_nothing_of_how_it_trained(tmp_path):
    """Every trial reused from a stacked run: "trained one model at a time, as asked" would be false."""
    kw = dict(FAST, weight_decays=[0.0, 1.0], seeds=1, epochs=1, out=str(tmp_path), plots=False)
    first = sweep(mlp, blobs(), **kw)
    assert first.run["batched"] is True and first.run["path"] == "layers"
    again = sweep(mlp, blobs(), batched=False, **kw)
    assert again.run["trained"] == 0 and again.run["batched"] is None and again.run["path"] is None
    assert not any("one model at a time" in n for n in again.notes)
