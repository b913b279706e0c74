"""Built-in task ``ridge``: weight decay as the ridge penalty, with an exact answer to check against.

A linear teacher y = xᵀβ + σε, d = 100, n = d (the double-descent peak), trained with full-batch
SGD (heavy ball) on ½‖Xb − y‖² with coupled L2 decay, whose fixed point is the ridge solution
b* = (XᵀX + λI)⁻¹Xᵀy. Each trial reports its distance to b* and b*'s own test loss; the best λ
is about σ² (Krogh & Hertz 1992).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from decaykit.errors import DecayError
from decaykit.sweeps.data import SweepData
from decaykit.sweeps.tasks.task import Task

__all__ = ["ridge_solution", "ridge_teacher", "task"]


def ridge_teacher(
    dim: int = 100, train_size: int | None = None, noise_std: float = 0.5, test_size: int = 2000, seed: int = 0
) -> SweepData:
    """A linear teacher y = xᵀβ + σε with β, x, ε standard normal; ``train_size`` defaults to ``dim``.

    Test targets are the teacher's noiseless outputs, so the test mean squared error of a
    weight vector b estimates ‖b − β‖² (x is isotropic). Float64: the test compares SGD with
    the closed form to 1e-4.
    """
    n = dim if train_size is None else train_size
    if dim < 1 or n < 1 or test_size < 1:
        raise DecayError(f"ridge needs dim, train_size and test_size >= 1, got {dim}, {n}, {test_size}")
    gen = torch.Generator().manual_seed(seed)
    beta = torch.randn(dim, 1, generator=gen, dtype=torch.float64)
    x_train = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    y_train = x_train @ beta + noise_std * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    x_test = torch.randn(test_size, dim, generator=gen, dtype=torch.float64)
    return SweepData(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=x_test @ beta,
        kind="regression",
        description=(
            f"linear teacher y = xᵀβ + σε, d = {dim} inputs, n = {n} training samples, σ = {noise_std} "
            f"(σ² = {noise_std**2:g}); test targets are noiseless, so test loss ≈ ‖b − β‖²"
        ),
    )


def ridge_solution(data: SweepData, weight_decay: float) -> Tensor:
    """b* = (XᵀX + λI)⁻¹Xᵀy, the minimiser of ½‖Xb − y‖² + ½λ‖b‖² (least squares for λ = 0)."""
    x, y = data.x_train.double(), data.y_train.double()
    gram = x.T @ x + weight_decay * torch.eye(x.shape[1], dtype=x.dtype)
    if weight_decay == 0:  # gelsd (SVD): the minimum-norm solution, and the same bits on every call (gelsy's are not)
        return torch.linalg.lstsq(gram, x.T @ y, driver="gelsd").solution
    return torch.linalg.solve(gram, x.T @ y)


def _ridge_final_metrics(model: nn.Module, weight_decay: float, data: SweepData) -> dict[str, float]:
    b = model.weight.detach().double().reshape(-1, 1)
    exact = ridge_solution(data, weight_decay)
    return {
        "closed_form_test_loss": float(((data.x_test.double() @ exact - data.y_test.double()) ** 2).mean()),
        "distance_to_closed_form": float((b - exact).abs().max()),
    }


def _ridge_notes(
    rows: Sequence[Mapping[str, Any]], data: SweepData, *, noise_std: float, data_seed: int, draws: int = 100
) -> list[str]:
    notes = []
    far = [r for r in rows if (r.get("distance_to_closed_form") or 0.0) > 1e-3]
    if far:
        lams = ", ".join(f"{r['weight_decay']:g}" for r in far)
        notes.append(
            f"not converged to the closed form at λ = {lams} (small λ leaves directions of XᵀX with "
            "eigenvalues near 0 that gradient descent barely moves in): those rows are early-stopped "
            "gradient descent, which itself regularises; the closed_form_test_loss column is the exact ridge"
        )
    # One draw of X says little about λ = 0 here: σ²·tr((XᵀX)⁻¹), the least-squares error, is heavy-tailed
    # over draws when n is near d (the double-descent peak). Put this draw beside many others.
    n, d = data.x_train.shape
    s2 = noise_std**2
    gen = torch.Generator().manual_seed(10_000 + data_seed)
    err0, err_s2 = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 100x100 solves: a second thread only adds waiting (0.13 s vs 0.49 s here)
    try:
        _draws(gen, draws, n, d, noise_std, err0, err_s2)
    finally:
        torch.set_num_threads(threads)
    med0, mean0 = float(torch.tensor(err0).median()), sum(err0) / draws

    med_s2, mean_s2 = float(torch.tensor(err_s2).median()), sum(err_s2) / draws
    smallest = float(torch.linalg.eigvalsh(data.x_train.T @ data.x_train).min())
    zero = next((r for r in rows if r["weight_decay"] == 0 and r.get("closed_form_test_loss") is not None), None)
    this = f": its least-squares test loss is {zero['closed_form_test_loss']:.3g}" if zero else ""
    notes.append(
        f"this draw of X (data seed {data_seed}) has λ_min(XᵀX) = {smallest:.2g}{this}. Over {draws} other draws "
        f"the least-squares error ‖b − β‖² has median {med0:.3g} and mean {mean0:.3g} "
        f"({'heavy-tailed at n = d, the double-descent peak' if n == d else 'λ = 0'}), against median "
        f"{med_s2:.3g} and mean {mean_s2:.3g} at λ = σ² = {s2:g}; --data-seed picks another draw"
    )
    return notes


def _draws(
    gen: torch.Generator, draws: int, n: int, d: int, noise_std: float, err0: list[float], err_s2: list[float]
) -> None:
    """‖b − β‖² of least squares and of ridge at λ = σ², for ``draws`` fresh draws of (β, X, ε)."""
    for _ in range(draws):
        beta = torch.randn(d, 1, generator=gen, dtype=torch.float64)
        x = torch.randn(n, d, generator=gen, dtype=torch.float64)
        y = x @ beta + noise_std * torch.randn(n, 1, generator=gen, dtype=torch.float64)
        err0.append(float((torch.linalg.lstsq(x, y, driver="gelsd").solution - beta).square().sum()))
        ridge = torch.linalg.solve(x.T @ x + noise_std**2 * torch.eye(d, dtype=torch.float64), x.T @ y)
        err_s2.append(float((ridge - beta).square().sum()))


def task(train_size: int | None = None, noise_std: float = 0.5, dim: int = 100, data_seed: int = 0) -> Task:
    n = dim if train_size is None else train_size

    def model_fn() -> nn.Module:
        model = nn.Linear(dim, 1, bias=False)
        nn.init.zeros_(model.weight)  # from zero, gradient descent stays in the row space of X
        return model.double()

    return Task(
        name="ridge",
        model_fn=model_fn,
        data_fn=lambda: ridge_teacher(dim, n, noise_std, seed=data_seed),
        identity=f"ridge(dim={dim},train_size={n},noise_std={noise_std},data_seed={data_seed})",
        optimizer="sgd",
        # heavy ball near its optimum for XᵀX's spectrum (≈ [0.04, 400] here): every λ in the grid reaches
        # the closed form to 1e-6 within ~1800 steps; stable while lr·(‖X‖² + λ) < 2(1 + momentum)
        lr=7e-3,
        momentum=0.95,
        epochs=2000,
        batch_size=None,
        mode="coupled_l2",
        loss="half_sum_squares",
        weight_decays=(0.0, 0.001, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0),
        seeds=1,
        dtype=torch.float64,
        model_description=f"linear model b ∈ R^{dim} (no bias), zero init, loss ½‖Xb − y‖², full batch",
        final_metrics=_ridge_final_metrics,
        notes=lambda rows, data: _ridge_notes(rows, data, noise_std=noise_std, data_seed=data_seed),
        extra={"noise_std": noise_std, "dim": dim, "train_size": n, "data_seed": data_seed},
    )
