"""convert / timescale: the algebra, its meaning checked on real optimizers, and the CLI."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from decaykit import WeightDecay, convert, timescale, weight_decay_for_timescale
from decaykit.cli.main import main
from decaykit.convert import CONVENTIONS
from decaykit.errors import DecayError

ALL = {"lr": 3e-4, "max_lr": 1e-3, "steps": 10_000, "momentum": 0.9, "grad_rms": 0.02}


def test_the_three_decoupled_conventions_and_adamc():
    # λ_indep = η_max·λ_torch (Wortsman et al.), λ_torch = λ_paper/α with α = η_max (Loshchilov & Hutter)
    assert convert(0.1, from_="lr_coupled", to="lr_independent", max_lr=1e-3) == pytest.approx(1e-4)
    assert convert(1e-4, from_="composer", to="adamw", max_lr=1e-3) == pytest.approx(0.1)
    assert convert(0.1, from_="lr_coupled", to="paper", max_lr=2e-3) == pytest.approx(2e-4)
    # AdamC decays by η²/η_max·λ: the same λ at the peak, twice the λ to match at half the peak
    assert convert(0.1, from_="lr_coupled", to="corrected", max_lr=1e-3) == pytest.approx(0.1)
    assert convert(0.1, from_="lr_coupled", to="corrected", max_lr=1e-3, lr=5e-4) == pytest.approx(0.2)
    assert convert(0.05, from_="normalized", to="paper", max_lr=1e-3, steps=10_000) == pytest.approx(0.05 / 100)


def test_l2_conventions():
    # SGD: an L2 λ through momentum μ decays ηλ/(1 − μ) per step at steady state
    assert convert(0.1, from_="lr_coupled", to="sgd_l2", momentum=0.9) == pytest.approx(0.01)
    assert convert(0.1, from_="lr_coupled", to="sgd_l2") == pytest.approx(0.1)
    # Adam: λθ is divided by √v̂ ≈ RMS(g)
    assert convert(0.03, from_="adam", to="adamw", grad_rms=0.01) == pytest.approx(3.0)
    assert not CONVENTIONS["adam_l2"].exact


@pytest.mark.parametrize(("a", "b"), list(itertools.permutations(CONVENTIONS, 2)))
def test_every_pair_round_trips(a, b):
    there = convert(0.07, from_=a, to=b, **ALL)
    assert convert(there, from_=b, to=a, **ALL) == pytest.approx(0.07, rel=1e-12)


def test_tensor_lambdas_convert_elementwise():
    out = convert(torch.tensor([0.1, 0.2]), from_="lr_coupled", to="lr_independent", max_lr=1e-3)
    torch.testing.assert_close(out, torch.tensor([1e-4, 2e-4]))


def test_converted_lambda_gives_the_same_training_run():
    """λ_torch in torch AdamW and convert(λ_torch → lr_independent) in the engine: the same weights."""
    torch.manual_seed(0)
    ref, ours = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    ours.load_state_dict(ref.state_dict())
    lam = convert(0.2, from_="adamw", to="lr_independent", max_lr=0.05)
    a = torch.optim.AdamW(ref.parameters(), lr=0.05, weight_decay=0.2)
    b = WeightDecay(torch.optim.Adam(ours.parameters(), lr=0.05, weight_decay=lam), mode="lr_independent")
    sa, sb = (torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20) for o in (a, b))
    x = torch.randn(8, 5)
    for _ in range(20):
        for m, o, s in ((ref, a, sa), (ours, b, sb)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
            s.step()
    torch.testing.assert_close(ours.weight, ref.weight, rtol=0, atol=1e-6)


def test_sgd_l2_is_exact_for_plain_sgd():
    torch.manual_seed(0)
    ref, ours = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    ours.load_state_dict(ref.state_dict())
    lam = convert(0.3, from_="sgd_l2", to="lr_coupled")
    a = torch.optim.SGD(ref.parameters(), lr=0.1, weight_decay=0.3)
    b = WeightDecay(torch.optim.SGD(ours.parameters(), lr=0.1, weight_decay=lam), mode="lr_coupled")
    x = torch.randn(8, 5)
    for _ in range(10):
        for m, o in ((ref, a), (ours, b)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    torch.testing.assert_close(ours.weight, ref.weight, rtol=0, atol=1e-6)



@pytest.mark.parametrize(("momentum", "dampening"), [(0.9, 0.0), (0.9, 0.5), (0.5, 0.9)])
def test_sgd_l2_with_momentum_and_dampening_matches_torch_s_decay_once_it_settles(momentum, dampening):
    """The momentum buffer sums (1 − δ)·λθ over μ^k: the settled decay per step is η·λ·(1 − δ)/(1 − μ). The
    dampening was left out, so a dampened SGD's λ converted to twice (δ = 0.5) to ten times (δ = 0.9) its decay."""
    lr, lam = 0.01, 0.001  # r = ηλ/(1 − μ) to first order in ηλ: 1e-5, so the next order is 1e-4 of it
    w = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    sgd = torch.optim.SGD([w], lr=lr, weight_decay=lam, momentum=momentum, dampening=dampening)
    for _ in range(300):  # zero gradients: the decay alone
        w.grad = torch.zeros(4, dtype=torch.float64)
        before = w.detach().clone()
        sgd.step()
    settled = 1 - float(w.detach()[0] / before[0])
    as_adamw = convert(lam, from_="sgd_l2", to="lr_coupled", momentum=momentum, dampening=dampening)
    assert lr * as_adamw == pytest.approx(settled, rel=1e-3)
    assert convert(as_adamw, from_="lr_coupled", to="sgd_l2", momentum=momentum, dampening=dampening) \
        == pytest.approx(lam)

@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"from_": "lr_coupled", "to": "composer"}, "needs max_lr="),
        ({"from_": "lr_coupled", "to": "corrected", "max_lr": 1e-3, "lr": -1.0}, "lr must be a finite number > 0, got -1.0"),
        ({"from_": "normalized", "to": "paper", "max_lr": 1e-3}, "needs steps="),
        ({"from_": "adam", "to": "adamw"}, "Prop. 2"),
        ({"from_": "sgd", "to": "adamw", "momentum": 1.0}, r"momentum must be a number in \[0, 1\), got 1.0"),
        ({"from_": "sgd", "to": "adamw", "dampening": 1.0}, r"dampening must be a number in \[0, 1\), got 1.0"),
        ({"from_": "adamw", "to": "lion"}, "unknown weight-decay convention 'lion' for to"),
        ({"from_": "lion", "to": "adamw"}, "unknown weight-decay convention 'lion' for from_"),
    ],
)
def test_conversion_errors_name_what_is_missing(kwargs, message):
    with pytest.raises(DecayError, match=message) as caught:
        convert(0.1, **kwargs)
    if "lion" in message:
        assert caught.value.argument == message.split()[-1]
    with pytest.raises(DecayError, match=r"weight_decay must be a finite number >= 0, got -0.1"):
        convert(-0.1, from_="adamw", to="adamw")


def test_timescale_in_steps_and_epochs():
    tau = timescale(1e-3, 0.1, dataset_size=50_000, batch_size=100)
    assert tau.iterations == pytest.approx(1e4) and tau.epochs == pytest.approx(20.0)
    assert str(tau) == "τ = 1/(η·λ) = 1e+04 steps = 20 epochs (N = 50,000, B = 100)"
    bare = timescale(1e-3, 0.1)
    assert bare.epochs is None and "epochs" not in str(bare)
    assert math.isinf(timescale(1e-3, 0.0).iterations) and "∞" in str(timescale(1e-3, 0.0))
    with pytest.raises(DecayError, match="both dataset_size and batch_size"):
        timescale(1e-3, 0.1, dataset_size=10)
    with pytest.raises(DecayError, match="lr must be a finite number > 0, got 0"):
        timescale(0, 0.1)


def test_timescale_is_the_decay_ema_horizon():
    """With a zero update, AdamW's θ shrinks to 1/e of itself after about τ steps."""
    p = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.AdamW([p], lr=1e-2, weight_decay=0.5)
    tau = timescale(1e-2, 0.5).iterations
    for _ in range(round(tau)):
        p.grad = torch.zeros(1)
        opt.step()
    assert p.item() == pytest.approx(math.exp(-1), rel=5e-3)


def test_weight_decay_for_timescale_inverts_timescale():
    lam = weight_decay_for_timescale(2e-3, epochs=5, dataset_size=60_000, batch_size=128)
    assert timescale(2e-3, lam, dataset_size=60_000, batch_size=128).epochs == pytest.approx(5)
    assert weight_decay_for_timescale(1e-3, iterations=1e4) == pytest.approx(0.1)
    with pytest.raises(DecayError, match=r"exactly one of iterations= .* or epochs="):
        weight_decay_for_timescale(1e-3)
    with pytest.raises(DecayError, match="needs dataset_size= and batch_size="):
        weight_decay_for_timescale(1e-3, epochs=3)


def test_cli_prints_every_convention_and_the_timescale(capsys):
    assert main(["convert", "0.1", "--from", "adamw", "--max-lr", "1e-3", "--dataset-size", "50000",
                 "--batch-size", "100"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:3] for line in out.splitlines()[1:8]}
    assert rows["lr_coupled"][0] == "*" and rows["lr_independent"][0] == "0.0001"
    assert rows["normalized"] == ["needs", "--steps"] and rows["adam_l2"] == ["needs", "--grad-rms"]
    assert "τ = 1/(η·λ) = 1e+04 steps = 20 epochs" in out


def test_cli_to_prints_one_number_and_json_is_valid(capsys):
    assert main(["convert", "1e-4", "--from", "composer", "--to", "adamw", "--max-lr", "1e-3"]) == 0
    assert float(capsys.readouterr().out) == pytest.approx(0.1)
    assert main(["convert", "0.1", "--from", "sgd", "--to", "adamw", "--momentum", "0.9", "--dampening", "0.5"]) == 0
    assert capsys.readouterr().out.strip() == "0.5"  # (1 − 0.5)/(1 − 0.9) = 5 times the SGD λ
    assert main(["convert", "--tau-epochs", "20", "--lr", "1e-3", "--dataset-size", "50000", "--batch-size", "100",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["weight_decay"] == pytest.approx(0.1) and data["timescale"]["iterations"] == pytest.approx(1e4)
    assert data["conventions"]["lr_independent"] is None and "max_lr" in data["missing"]["lr_independent"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["convert", "-1"], "weight_decay must be a finite number >= 0, got -1.0"),
        (["convert", "0.1", "--from", "lion"], "unknown weight-decay convention 'lion' for --from"),
        (["convert", "0.1", "--to", "lion", "--max-lr", "1e-3"], "unknown weight-decay convention 'lion' for --to"),
        (["convert"], "give LAMBDA"),
        (["convert", "--tau-steps", "100"], "needs --lr"),
        (["convert", "0.1", "--from", "normalized"], "needs steps="),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("decaykit convert: error:") and message in err and err.count("\n") == 1
