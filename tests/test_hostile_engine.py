"""Issue 10, the decay engine: no load, λ or gradient it cannot honour passes silently.

- a checkpoint whose groups do not fit is refused before anything changes;
- a λ implausible for its mode is refused with its meaning and the converted value;
- the HF integration converts TrainingArguments' torch-AdamW λ, and the result steps as torch's AdamW;
- coupled_l2 with sparse gradients is refused on every path, before anything moves.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.optim import optimizer as torch_optimizer

import decaykit
from decaykit import WeightDecay, schedules
from decaykit.convert import convert
from decaykit.errors import DecayError, DecayWarning

pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.Linear(8, 8), nn.Linear(8, 2))


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 5, generator=g), torch.randn(16, 2, generator=g)
        opt.zero_grad()
        (model(x) - y).pow(2).mean().backward()
        opt.step()


def engine(model: nn.Module, *, reverse: bool = False, names: bool = True, lam: float = 0.05) -> WeightDecay:
    groups = decaykit.param_groups(model, lam)
    if reverse:
        groups = groups[::-1]
    if not names:
        for g in groups:
            g.pop("param_names")
    return WeightDecay(torch.optim.AdamW(groups, lr=1e-2), schedule=schedules.linear(1.0, 0.5, steps=10))


def same(a, b) -> bool:
    """Deep equality of nested state (tensors compared exactly)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


# -- checkpoints: refused before anything changes --------------------------------------------------


def _reordered(saved: dict) -> dict:
    saved["param_groups"] = saved["param_groups"][::-1]  # the same groups in another order
    return saved


def _one_group_fewer(saved: dict) -> dict:
    saved["param_groups"] = saved["param_groups"][:1]
    return saved


def _names_swapped(saved: dict) -> dict:
    names = saved["param_groups"][0]["param_names"]
    names[0], names[1] = names[1], names[0]
    return saved


def _negative_lambda(saved: dict) -> dict:
    saved["param_groups"][0]["weight_decay"] = -0.1
    return saved


def _other_mode(saved: dict) -> dict:
    saved["decaykit"]["mode"] = "corrected"
    return saved


def _bad_schedule_state(saved: dict) -> dict:
    saved["decaykit"]["schedule"] = {"type": "Linear"}  # its fields missing: fails inside the schedule's load
    return saved


@pytest.mark.parametrize("spoil, message", [
    (_reordered, r"param_groups\[0\] (of the state_dict holds|was saved with)"),
    (_one_group_fewer, r"the state_dict has 1 param groups but this optimizer has 2"),
    (_names_swapped, r"param_groups\[0\] was saved with '2.weight' in place 0 but this optimizer has '0.weight'"),
    (_negative_lambda, r"param_groups\[0\]\['weight_decay'\] must be a finite number >= 0, got -0.1"),
    (_other_mode, r"saved with mode='corrected'"),
    (_bad_schedule_state, r"\['schedule'\] cannot be loaded into linear"),
])
def test_a_checkpoint_that_does_not_fit_is_refused_and_nothing_changes(spoil, message):
    model = make_model()
    source = engine(model)
    train(model, source, 3)
    saved = spoil(copy.deepcopy(source.state_dict()))
    target_model = make_model(1)
    target = engine(target_model)
    train(target_model, target, 1, seed=5)
    before, step, params = copy.deepcopy(target.state_dict()), target.steps_taken, copy.deepcopy(target.param_groups)
    with pytest.raises(DecayError, match=message):
        target.load_state_dict(saved)
    assert same(target.state_dict(), before) and target.steps_taken == step
    assert all(same({k: v for k, v in a.items() if k != "params"}, {k: v for k, v in b.items() if k != "params"})
               for a, b in zip(target.param_groups, params))


def test_groups_saved_in_another_order_without_names_are_caught_by_the_moments_shapes():
    def unnamed(model: nn.Module, order: list[list[str]]) -> WeightDecay:
        params = dict(model.named_parameters())
        groups = [{"params": [params[n] for n in names], "weight_decay": 0.05 * (i + 1)} for i, names in enumerate(order)]
        return WeightDecay(torch.optim.AdamW(groups, lr=1e-2))

    model = make_model()
    source = unnamed(model, [["0.weight", "2.weight"], ["3.weight", "0.bias"]])
    train(model, source, 2)
    target = unnamed(make_model(), [["3.weight", "0.bias"], ["0.weight", "2.weight"]])  # same sizes, other tensors
    with pytest.raises(DecayError, match=r"'exp_avg' for param_groups\[0\]\['params'\]\[0\] has shape \(8, 5\)"):
        target.load_state_dict(source.state_dict())
    assert target.state == {} and target.param_groups[0]["weight_decay"] == 0.05


def test_a_fitting_checkpoint_still_loads_and_resumes_bit_for_bit():
    model, twin = make_model(), make_model()
    a = engine(model)
    train(model, a, 3)
    twin.load_state_dict(model.state_dict())
    b = engine(twin)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    train(model, a, 2, seed=9)
    train(twin, b, 2, seed=9)
    assert b.steps_taken == a.steps_taken == 5
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


# -- λ implausible for its mode ----------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(lam=st.floats(1e-7, 10.0), lr=st.floats(1e-5, 0.5))
def test_an_lr_independent_lambda_above_one_percent_per_step_is_refused_with_the_converted_value(lam, lr):
    model = make_model()
    build = lambda **kw: WeightDecay(torch.optim.AdamW(decaykit.param_groups(model, lam), lr=lr),  # noqa: E731
                                     mode="lr_independent", **kw)
    if lam <= 0.01 * (1 + 1e-9):  # the limit, with room for a converted 1% that rounds above it
        assert build().expected_decay()[0]["rate"] == pytest.approx(lam)  # r = λ at the peak LR
        return
    with pytest.raises(DecayError) as caught:
        build()
    text = str(caught.value)
    assert f"{lam:g}" in text and f"{100 * lam:.3g}%" in text
    assert f"{convert(lam, from_='lr_coupled', to='lr_independent', max_lr=lr):.6g}" in text
    if lam <= 1:  # kept on purpose; r > 1 still refused when the step is planned
        assert build(allow_large_decay=True).expected_decay()[0]["rate"] == pytest.approx(lam)


@settings(max_examples=50, deadline=None)
@given(lam=st.floats(1e-3, 100.0), lr=st.floats(1e-4, 1.0), mode=st.sampled_from(["lr_coupled", "corrected", "cautious"]))
def test_a_rate_that_zeroes_or_flips_the_weights_is_refused_when_the_engine_is_built(lam, lr, mode):
    model = make_model()
    groups = decaykit.param_groups(model, lam)
    if lr * lam < 1:
        WeightDecay(torch.optim.AdamW(groups, lr=lr), mode=mode)
        return
    with pytest.raises(DecayError, match=rf"{mode}.*>= 1 per step.*zeroes or flips the sign"):
        WeightDecay(torch.optim.AdamW(groups, lr=lr), mode=mode)


def test_add_param_group_and_load_refuse_an_implausible_lambda_and_roll_back():
    model, extra = make_model(), nn.Linear(3, 3)
    opt = WeightDecay(torch.optim.AdamW(decaykit.param_groups(model, 1e-4), lr=1e-3), mode="lr_independent")
    with pytest.raises(DecayError, match=r"param_groups\[2\]\['weight_decay'\] = 0.05 in mode 'lr_independent'"):
        opt.add_param_group({"params": [extra.weight], "param_names": ["extra"], "weight_decay": 0.05})
    assert len(opt.param_groups) == 2 and len(opt.state_dict()["decaykit"]["max_lr"]) == 2
    saved = opt.state_dict()
    saved["param_groups"][0]["weight_decay"] = 0.1
    with pytest.raises(DecayError, match=r"0\.1 in mode 'lr_independent'"):
        opt.load_state_dict(saved)
    assert opt.param_groups[0]["weight_decay"] == 1e-4


def test_a_group_added_through_the_inner_optimizer_or_a_changed_lambda_is_judged_at_the_next_step():
    model, extra = make_model(), nn.Linear(3, 3)
    opt = WeightDecay(torch.optim.AdamW(decaykit.param_groups(model, 1e-4), lr=1e-3), mode="lr_independent")
    opt.optimizer.add_param_group({"params": [extra.weight], "param_names": ["extra.weight"], "weight_decay": 0.5})
    before = [p.detach().clone() for p in model.parameters()]
    for p in [*model.parameters(), extra.weight]:
        p.grad = torch.zeros_like(p)
    with pytest.raises(DecayError, match=r"param_groups\[2\]\['weight_decay'\] = 0.5 in mode 'lr_independent'"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    opt.param_groups[2]["weight_decay"] = 1e-4
    opt.step()
    opt.param_groups[0]["weight_decay"] = 0.05  # a torch AdamW λ set into a running lr_independent engine
    with pytest.raises(DecayError, match=r"param_groups\[0\]\['weight_decay'\] = 0.05.*equivalent at η_max"):
        opt.expected_decay()
    kept = WeightDecay(torch.optim.AdamW(decaykit.param_groups(make_model(), 1e-4), lr=1e-3), mode="lr_independent",
                       allow_large_decay=True)
    kept.param_groups[0]["weight_decay"] = 0.05
    assert kept.expected_decay()[0]["rate"] == pytest.approx(0.05)


def test_lambda_is_judged_again_at_a_peak_a_scheduler_writes_later():
    opt = WeightDecay(torch.optim.AdamW(decaykit.param_groups(make_model(), 0.1), lr=1e-3), mode="lr_coupled")
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=20.0, total_steps=10)  # η_max·λ = 2 at the peak
    with pytest.raises(DecayError, match=r"= 0.1 with peak lr 20 in mode 'lr_coupled'.*η·λ = 2 >= 1"):
        opt.step()


def test_the_hf_conversion_steps_exactly_as_torch_adamw_with_the_trainers_lambda():
    """TrainingArguments(weight_decay=0.05) + mode lr_independent: the engine gets 0.05·η_max per group
    (layer-wise LR scales included), so the weights follow torch's AdamW(weight_decay=0.05)."""
    from decaykit.integrations.hf import _wrap_in_engine

    lam, lr = 0.05, 1e-2
    ours, theirs = make_model(), make_model()
    with pytest.warns(DecayWarning, match=r"weight_decay=0.05 is a lr_coupled λ.*0.05 -> 0.0005 at η_max 0.01"):
        opt = _wrap_in_engine(torch.optim.AdamW(decaykit.param_groups(ours, lam, lr=lr, rules=["2.*:lr_scale=0.5"]),
                                                lr=lr), {"mode": "lr_independent"}, lam)
    oracle = torch.optim.AdamW(decaykit.param_groups(theirs, lam, lr=lr, rules=["2.*:lr_scale=0.5"]), lr=lr)
    train(ours, opt, 5)
    train(theirs, oracle, 5)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DecayWarning)  # already in the mode's convention: nothing converted
        kept = _wrap_in_engine(torch.optim.AdamW(decaykit.param_groups(make_model(), 1e-4), lr=lr),
                               {"mode": "lr_independent", "convention": "composer"}, 1e-4)
    assert kept.param_groups[0]["weight_decay"] == 1e-4


# -- damaged or wrong checkpoints ----------------------------------------------------------------------


def _damaged(entry: str, value):
    def damage(saved):
        saved["decaykit"][entry] = value
        return saved
    return damage


@pytest.mark.parametrize(("damage", "message"), [
    (lambda saved: None, r"state_dict must be an optimizer state_dict .*got None \(NoneType\)"),
    (lambda saved: [], r"state_dict must be an optimizer state_dict .*got \[\] \(list\)"),
    (_damaged("max_lr", 1e-3), r"\['max_lr'\] must be a list of η_max, one per param group \(2\), got 0.001 \(float\)"),
    (_damaged("max_lr", [1e-3]), r"\['max_lr'\] must be a list of η_max, one per param group \(2\), got \[0.001\]"),
    (_damaged("max_lr", [0.0, 1e-3]), r"\['max_lr'\]\[0\] is 0 but the saved group's lr is 0.01.*divides by η_max"),
    (_damaged("max_lr", ["0.01", 1e-3]), r"\['max_lr'\]\[0\] must be a finite number >= 0, got '0.01'"),
    (_damaged("schedule", None), r"\['schedule'\] must be the dict Schedule.state_dict\(\) saves.*got None"),
    (_damaged("step", -1), r"\['step'\] must be an integer >= 0, got -1"),
    (lambda saved: {**saved, "decaykit": 3}, r"state_dict\['decaykit'\] must be the dict WeightDecay.state_dict\(\) saves"),
])
def test_a_damaged_checkpoint_is_refused_with_what_is_wrong_and_nothing_changes(damage, message):
    model = make_model()
    opt = WeightDecay(torch.optim.AdamW(decaykit.param_groups(model, 1e-4), lr=1e-2), mode="lr_independent",
                      schedule=schedules.linear(1.0, 0.5, steps=10))
    train(model, opt, 2)
    saved = damage(copy.deepcopy(opt.state_dict()))
    fresh = WeightDecay(torch.optim.AdamW(decaykit.param_groups(make_model(), 1e-4), lr=1e-2), mode="lr_independent",
                        schedule=schedules.linear(1.0, 0.5, steps=10))
    before = copy.deepcopy(fresh.state_dict())
    with pytest.raises(DecayError, match=message):
        fresh.load_state_dict(saved)
    assert same(fresh.state_dict(), before)


def test_a_checkpoint_of_a_group_built_at_lr_zero_keeps_its_zero_eta_max():
    opt = WeightDecay(torch.optim.SGD(decaykit.param_groups(make_model(), 1e-4), lr=0.0), mode="lr_independent")
    saved = opt.state_dict()
    assert saved["decaykit"]["max_lr"] == [0.0, 0.0]
    opt.load_state_dict(saved)
    assert opt.paths() == ["none", "none"]


# -- a failed inner step -----------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("lam", [0.1, torch.tensor([0.1, 0.3])], ids=["float", "members"])
def test_an_inner_step_that_raises_leaves_the_extra_pass_undone(lam, foreach):
    """RMSprop refuses sparse gradients after the extra pass has decayed θ: a retry must decay once."""
    def build():
        torch.manual_seed(0)
        emb = nn.Embedding(2, 3, sparse=True)
        inner = torch.optim.RMSprop([{"params": list(emb.parameters()), "weight_decay": lam}], lr=0.1)
        return emb, WeightDecay(inner, mode="lr_coupled", foreach=foreach)

    emb, opt = build()
    assert opt.paths() == ["extra_pass"]
    before = emb.weight.detach().clone()
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="RMSprop does not support sparse gradients"):
        opt.step()
    torch.testing.assert_close(emb.weight.detach(), before, rtol=2**-23, atol=0)  # within one rounding
    assert opt.steps_taken == 0 and opt.param_groups[0]["weight_decay"] is lam
    emb.weight.grad = emb.weight.grad.to_dense()  # the retry
    opt.step()
    twin, twin_opt = build()
    twin(torch.tensor([1])).sum().backward()
    twin.weight.grad = twin.weight.grad.to_dense()
    twin_opt.step()
    assert torch.equal(emb.weight, twin.weight)  # float32: decaying the undone θ again gives the same θ(1 − r)


# -- sparse gradients with coupled_l2 ------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.01),  # the inner path: SGD's own weight_decay
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
    lambda p: torch.optim.Adagrad(p, lr=0.1, weight_decay=0.01),
    lambda p: torch.optim.SGD([{"params": p, "weight_decay": torch.tensor([0.01, 0.02])}], lr=0.1),  # l2_gradient
])
def test_coupled_l2_with_sparse_gradients_is_refused_before_anything_moves(make):
    emb = nn.Embedding(2, 3, sparse=True)
    opt = WeightDecay(make(list(emb.parameters())), mode="coupled_l2")
    emb(torch.tensor([1])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(DecayError, match=r"param_groups\[0\] has sparse gradients.*coupled_l2.*dense"):
        opt.step()
    assert torch.equal(emb.weight, before) and emb.weight.grad.is_sparse
    assert opt.param_groups[0]["weight_decay"] is not None and opt.steps_taken == 0


def test_global_step_hooks_run_once_per_engine_step_and_the_inner_optimizers_own_hooks_still_run():
    """A global step counter or profiler (torch.optim.optimizer.register_optimizer_step_*_hook) counts one step
    per engine step, seen as the engine; hooks on the inner optimizer run as before; handles still remove."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    model = make_model()
    opt = WeightDecay(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4), mode="lr_independent")
    seen: list[tuple[str, object]] = []
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: seen.append(("pre", o))),
        register_optimizer_step_post_hook(lambda o, a, k: seen.append(("post", o))),
    ]
    opt.optimizer.register_step_pre_hook(lambda o, a, k: seen.append(("inner pre", o)))
    try:
        train(model, opt, 3)
        assert seen == [("pre", opt), ("inner pre", opt.optimizer), ("post", opt)] * 3
        handles[0].remove()
        seen.clear()
        train(model, opt, 1)
        assert seen == [("inner pre", opt.optimizer), ("post", opt)]
    finally:
        for handle in handles:
            handle.remove()
    seen.clear()
    torch.optim.SGD(model.parameters(), lr=0.1).step()  # the tables are torch's own again: a plain step sees none
    assert seen == []


def test_a_step_in_another_thread_keeps_its_global_hooks_while_an_engine_steps():
    """The pause is this thread's: training in threads (Optuna's n_jobs) must not lose another run's global
    hooks, such as a Monitor's, while an engine's inner optimizer steps."""
    import threading

    from torch.optim.optimizer import register_optimizer_step_post_hook

    model, other = make_model(), make_model()
    opt = WeightDecay(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4), mode="lr_independent")
    plain = torch.optim.SGD(other.parameters(), lr=0.1)
    inside, resume = threading.Event(), threading.Event()
    seen: list[object] = []

    def hold(o, a, k):  # the inner optimizer's own hook: the engine's pause is open while it waits
        inside.set()
        assert resume.wait(10)

    opt.optimizer.register_step_pre_hook(hold)
    handle = register_optimizer_step_post_hook(lambda o, a, k: seen.append(o))
    try:
        engine_thread = threading.Thread(target=train, args=(model, opt, 1))
        engine_thread.start()
        assert inside.wait(10)
        train(other, plain, 1)  # in this thread, during the engine's inner step
        resume.set()
        engine_thread.join(10)
        assert seen == [plain, opt]
        train(other, plain, 1)
        assert seen[-1] is plain
    finally:
        resume.set()
        handle.remove()
    assert not any(type(h).__name__ == "_StandIn" for h in torch_optimizer._global_optimizer_post_hooks.values())


class _HessianSGD(torch.optim.Optimizer):
    """θ ← θ − lr·(g + 0.1·Hv), v = 1: a Hessian-vector product through the gradient's graph, as AdaHessian and
    SophiaH take one (their loops call loss.backward(create_graph=True))."""

    def __init__(self, params, lr: float = 0.1, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        with torch.enable_grad():
            hv = torch.autograd.grad([p.grad for p in params], params, [torch.ones_like(p) for p in params])
        products = {id(p): h for p, h in zip(params, hv)}
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.sub_(p.grad + g["weight_decay"] * p + 0.1 * products[id(p)], alpha=g["lr"])


def test_a_decay_before_a_hessian_step_is_refused_with_the_fix_and_coupled_l2_runs():
    """Gradients with a graph (create_graph=True): shrinking θ in place before the inner step broke the Hessian-vector
    product with a bare "modified by an inplace operation" RuntimeError at the first step."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    x = torch.randn(8, 4)
    for mode in ("lr_coupled", "lr_independent", "coupled_l2"):
        engine = WeightDecay(_HessianSGD(decaykit.param_groups(model, 0.01), lr=0.1), mode=mode)
        before = [p.detach().clone() for p in model.parameters()]
        model(x).pow(2).mean().backward(create_graph=True)
        if mode == "coupled_l2":  # λθ joins the gradient, graph and all: the step is that of loss + (λ/2)‖θ‖²
            twin = copy.deepcopy(model)
            for q in twin.parameters():
                q.grad = None
            decayed = {id(p) for g in engine.param_groups if g["weight_decay"] for p in g["params"]}
            penalty = sum(q.pow(2).sum() for p, q in zip(model.parameters(), twin.parameters()) if id(p) in decayed)
            (twin(x).pow(2).mean() + 0.005 * penalty).backward(create_graph=True)
            _HessianSGD(twin.parameters(), lr=0.1).step()
            engine.step()
            assert not torch.equal(before[0], model[0].weight)
            for p, q in zip(model.parameters(), twin.parameters()):
                torch.testing.assert_close(p, q)
        else:
            with pytest.raises(DecayError, match=r"carry an autograd graph.*create_graph=True.*mode='coupled_l2'"):
                engine.step()
            assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
        engine.zero_grad()


def test_a_schedule_free_optimizers_train_and_eval_are_answered_through_the_engine():
    """schedule-free optimizers move θ between their train and eval points on optimizer.train() / .eval(), which a
    loop (and the HF Trainer, when the optimizer has them) calls: the engine raised AttributeError. An optimizer
    without them still has none through the engine."""

    class ScheduleFree(torch.optim.SGD):
        def train(self) -> None:
            self.param_groups[0]["train_mode"] = True

        def eval(self) -> None:
            self.param_groups[0]["train_mode"] = False

    model = make_model()
    engine = WeightDecay(ScheduleFree(model.parameters(), lr=0.1, weight_decay=0.01), mode="lr_coupled")
    engine.eval()
    assert engine.param_groups[0]["train_mode"] is False
    engine.train()
    train(model, engine, 2)
    assert engine.param_groups[0]["train_mode"] is True and engine.steps_taken == 2
    plain = WeightDecay(torch.optim.AdamW(model.parameters(), lr=0.1))
    assert not hasattr(plain, "train") and not hasattr(plain, "eval")
    assert copy.deepcopy(engine).optimizer.param_groups[0]["train_mode"] is True


def _scheduled_engine() -> tuple[nn.Module, WeightDecay]:
    model = make_model()
    return model, WeightDecay(torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-2),
                              schedule=schedules.linear(1, 10, steps=10))  # fmt: skip


def test_a_torch_distributed_checkpoint_resumes_the_engine_bit_for_bit(tmp_path):
    """FSDP2's checkpoint route: get_optimizer_state_dict keeps "state" and "param_groups" only, and
    set_optimizer_state_dict first fills an empty state with a step at lr 0. The engine's schedule lost its step
    (and counted that filling step): a resumed run went on from step 1, not 4, with a warning that blamed a
    plain optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    model, engine = _scheduled_engine()
    train(model, engine, 4, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # DCP: "no process group, loading in a single process"
        dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, engine)},
                 checkpoint_id=str(tmp_path))  # fmt: skip
        train(model, engine, 3, seed=1)
        resumed_model, resumed = _scheduled_engine()
        state = {"model": get_model_state_dict(resumed_model), "optim": get_optimizer_state_dict(resumed_model, resumed)}
        assert resumed.steps_taken == 0  # the filling step is no step
        dcp.load(state, checkpoint_id=str(tmp_path))
        set_model_state_dict(resumed_model, state["model"])
        warnings.simplefilter("error", DecayWarning)
        set_optimizer_state_dict(resumed_model, resumed, state["optim"])
    assert resumed.steps_taken == 4 and "decaykit" not in resumed.param_groups[0]
    train(resumed_model, resumed, 3, seed=1)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)


def test_the_entrys_copy_that_a_plain_optimizer_carried_and_trained_past_is_not_believed():
    """engine -> plain AdamW (which keeps the copy in its group) -> more training -> engine: the copy's step is
    stale, so the engine says so and keeps its own, instead of resuming the schedule at the old step."""
    model, engine = _scheduled_engine()
    train(model, engine, 3)
    plain = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-2)
    plain.load_state_dict(engine.state_dict())
    train(model, plain, 2)
    _, again = _scheduled_engine()
    with pytest.warns(DecayWarning, match="param_groups\\[0\\] is from optimizer step 3 but the state is at 5"):
        again.load_state_dict(plain.state_dict())
    assert again.steps_taken == 0
    fresh = WeightDecay(torch.optim.AdamW(decaykit.param_groups(make_model(), 0.1), lr=1e-2),
                        schedule=schedules.linear(1, 10, steps=10))  # fmt: skip
    fresh.load_state_dict(engine.state_dict())  # the engine's own checkpoint: no warning, the step restored
    assert fresh.steps_taken == 3


def test_the_audit_reads_the_engines_mode_from_a_checkpoint_that_kept_only_state_and_groups():
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model = make_model()
    engine = WeightDecay(torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-2), mode="coupled_l2")
    train(model, engine, 2)
    saved = get_optimizer_state_dict(model, engine)
    assert set(saved) == {"state", "param_groups"}
    report = decaykit.audit(model, saved)
    assert "coupled-adaptive" in {f.code for f in report.findings}  # coupled L2 through Adam, by the saved mode


def test_a_framework_wrapper_that_steps_only_on_some_calls_is_refused_and_the_engine_goes_inside_it():
    """accelerate's AcceleratedOptimizer steps its optimizer only at a gradient-accumulation boundary: an engine
    around it would decay at every micro-batch (4x the decay with 4 accumulation steps)."""
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState, GradientState

    def run(inside: bool) -> None:
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        adamw = torch.optim.AdamW(decaykit.param_groups(model, 0.1, lr=0.05))
        acc = accelerate.Accelerator(gradient_accumulation_steps=4, cpu=True)
        if inside:
            model, opt = acc.prepare(model, WeightDecay(adamw))
        else:
            model, opt = acc.prepare(model, adamw)
            with pytest.raises(DecayError, match=r"cannot wrap AcceleratedOptimizer .*build WeightDecay\(optimizer\) "
                                                 r"first .*accelerator\.prepare\(model, engine\)"):
                WeightDecay(opt)
            return
        for i in range(16):
            with acc.accumulate(model):
                model(torch.full((3, 4), 0.1 * i)).square().mean().backward()
                opt.step()
                opt.zero_grad()
        assert opt.optimizer.steps_taken == 4  # one decay per optimizer step, not per micro-batch

    try:
        run(inside=False)
        run(inside=True)
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_decay_below_a_quarter_of_the_dtypes_spacing_is_warned_when_the_engine_is_built(dtype):
    """θ·(1 − r) with r < eps/4 is θ for every value: the engine's decay never acts, as a real run shows."""
    torch.manual_seed(0)
    model = nn.Linear(16, 16).to(dtype)
    lr = torch.finfo(dtype).eps / 8 / 0.05
    with pytest.warns(DecayWarning, match=rf"rounds back to θ for every value .*param_groups\[0\] .*{str(dtype)[6:]}"):
        engine = WeightDecay(torch.optim.SGD(decaykit.param_groups(model, 0.05), lr=lr))
    before = model.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    engine.step()
    assert torch.equal(model.weight.detach(), before)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DecayWarning)
        WeightDecay(torch.optim.SGD(decaykit.param_groups(model.float(), 0.05), lr=lr))  # float32: it acts


def test_a_fused_kernel_that_rounds_the_decay_with_the_update_gets_no_never_acts_warning_but_a_pass_of_its_own_does():
    """bf16 fused AdamW decays inside its kernel with the update: with real gradients much of the decay acts, so no
    'never acts' warning. The engine's own pass around a fused SGD (extra_pass) rounds the decay alone: warned."""
    model = nn.Linear(16, 16).to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DecayWarning)
        WeightDecay(torch.optim.AdamW(decaykit.param_groups(model, 0.05), lr=1e-3, fused=True))
    with pytest.warns(DecayWarning, match="rounds back to θ for every value"):
        engine = WeightDecay(torch.optim.SGD(decaykit.param_groups(model, 0.05), lr=1e-3, fused=True))
    assert engine.paths()[0] == "extra_pass"
