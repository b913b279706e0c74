"""decaykit.verify: the founding notebook's numbers, and the closed forms against torch.optim as oracle."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from decaykit import DecayError, VerifyReport, verify
from decaykit.verify import CLOSED_FORMS, Closed, numpy_random

# Typed in from the founding notebook's output, exactly as it printed them.
SEED_ORIGINAL = [
    "0.4386 0.0597 0.3980 0.7380 0.1825",
    "0.1755 0.5316 0.5318 0.6344 0.8494",
    "0.7245 0.6110 0.7224 0.3230 0.3618",
    "0.2283 0.2937 0.6310 0.0921 0.4337",
]
SEED_WD0 = [
    "0.2489 -0.1300 0.2084 0.5483 -0.0072",
    "0.0653 0.4214 0.4217 0.5243 0.7393",
    "0.5694 0.4559 0.5674 0.1679 0.2067",
    "0.0317 0.0972 0.4345 -0.1044 0.2372",
]
SEED_WD1 = [
    "0.2050 -0.1360 0.1686 0.4745 -0.0254",
    "0.0478 0.3683 0.3685 0.4608 0.6544",
    "0.4969 0.3948 0.4951 0.1356 0.1705",
    "0.0089 0.0678 0.3714 -0.1136 0.1938",
]


def _printed(t: torch.Tensor) -> list[str]:
    return [" ".join(f"{v:.4f}" for v in row) for row in t.tolist()]


@pytest.fixture(scope="module")
def seed_report() -> VerifyReport:
    return verify()


def test_reproduces_the_seed_notebook_to_its_four_decimals(seed_report: VerifyReport) -> None:
    sgd = seed_report.checks[0]
    assert sgd.name == "sgd"
    assert _printed(seed_report.w0) == SEED_ORIGINAL
    assert _printed(sgd.without) == SEED_WD0
    assert _printed(sgd.with_decay) == SEED_WD1
    assert seed_report.seed_match is True
    assert seed_report.ok


def test_draws_equal_numpy_legacy_random() -> None:
    np = pytest.importorskip("numpy")
    for seed in (0, 123, 2**32 - 1):
        np.random.seed(seed)
        assert numpy_random(seed, 64) == np.random.random(64).tolist()


def test_runs_without_numpy() -> None:
    code = ("import sys; sys.modules['numpy'] = None\n"
            "import warnings; warnings.simplefilter('ignore')\n"
            "import decaykit; r = decaykit.verify(); print(r.ok, r.seed_match, sys.modules['numpy'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "None"]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_closed_forms_equal_torch_on_random_tensors(name: str, foreach: bool) -> None:
    closed = CLOSED_FORMS[name]
    gen = torch.Generator().manual_seed(7)
    for wd in (0.0, 0.3, 2.0):
        theta = torch.randn(7, 3, generator=gen, dtype=torch.float64)
        grad = torch.randn(7, 3, generator=gen, dtype=torch.float64)
        p = theta.clone().requires_grad_(True)
        p.grad = grad.clone()
        getattr(torch.optim, closed.torch_class)([p], lr=0.05, weight_decay=wd, foreach=foreach).step()
        assert (p.detach() - closed.step(theta, grad, 0.05, wd)).abs().max() <= 1e-12


@pytest.mark.parametrize("foreach", [False, True])
def test_verify_checks_every_optimizer_both_kernels(foreach: bool) -> None:
    report = verify(optimizers=list(CLOSED_FORMS), foreach=foreach, lr=0.03, weight_decay=0.5, seed=5)
    assert [c.name for c in report.checks] == list(CLOSED_FORMS)
    assert all(c.error <= 1e-12 for c in report.checks)
    assert report.seed_match is None  # not the seed's setup, so nothing to compare with
    assert report.ok


def test_coupled_and_decoupled_differ_as_explained(seed_report: VerifyReport) -> None:
    by = {c.name: c for c in seed_report.checks}
    # SGD (coupled, proportional step) and AdamW (decoupled) shrink every weight by lr·λ = 0.1 of itself
    for name in ("sgd", "adamw"):
        assert torch.allclose(by[name].effect, torch.full((4, 5), -0.1, dtype=torch.float64), rtol=0, atol=1e-12)
    # Adam divides λθ by |g + λθ|: on its first step the decay all but vanishes
    assert by["adam"].effect.abs().max() < 1e-8
    text = str(seed_report)
    assert "every weight moved by -0.1 × itself" in text
    assert "instead of -0.1" in text
    assert text.count("matches the closed form") == 3


def test_a_wrong_formula_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = Closed("SGD", "decoupled", "θ ← θ·(1 − lr·λ) − 2·lr·g", "SGD",
                   lambda t, g, lr, wd: t * (1 - lr * wd) - 2 * lr * g)
    monkeypatch.setitem(CLOSED_FORMS, "sgd", wrong)
    report = verify(optimizers=["sgd"])
    assert not report.ok
    assert report.checks[0].error > 0.1
    assert "DOES NOT match" in str(report)
    assert report.to_dict()["checks"][0]["agrees"] is False


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"lr": -1.0}, "lr must be"), ({"weight_decay": float("nan")}, "weight_decay must be"),
     ({"seed": -3}, "seed must be"), ({"optimizers": ["lbfgs"]}, "optimizers must be among"),
     ({"optimizers": []}, "optimizers must be among")],
)
def test_bad_input_is_a_decay_error(kwargs: dict, fragment: str) -> None:
    with pytest.raises(DecayError, match=fragment):
        verify(**kwargs)
