"""What a sweep trains: the data contract, the built-in tasks, and loading the user's model and data.

A task is a model factory, a data set and the training settings that make sense for them.
Two are built in and run offline:

* ``digits-noisy-labels`` (the default): scikit-learn's bundled 8x8 ``digits`` (1,797 images),
  500 training images of which 30% carry a wrong label, a 512-wide MLP trained with AdamW.
  With λ = 0 the MLP memorises the wrong labels (train accuracy → 100%) and test accuracy
  suffers; a good λ ignores them; a huge λ shrinks the weights to nothing.
* ``ridge``: a linear teacher y = xᵀβ + σε, d = 100, n = d (the double-descent peak), trained
  with full-batch SGD on ½‖Xb − y‖² with coupled L2 decay, whose fixed point is the ridge
  solution b* = (XᵀX + λI)⁻¹Xᵀy (Krogh & Hertz 1992: the best λ is about σ²).

The user's own data is anything :func:`resolve_data` accepts: a :class:`SweepData`, a tuple
``(x_train, y_train, x_test, y_test)``, a pair of ``TensorDataset`` s or a dict with the keys
``x_train, y_train, x_test, y_test`` (or ``train=(x, y), test=(x, y)``). Integer targets mean
classification (cross-entropy, accuracy); floating targets mean regression (mean squared error).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from decaykit.errors import DecayError

__all__ = [
    "DEFAULT_TASK",
    "TASKS",
    "SweepData",
    "Task",
    "digits_noisy_labels",
    "make_model_fn",
    "resolve_data",
    "ridge_teacher",
    "task_from_user",
]


@dataclass(frozen=True)
class SweepData:
    """Train and test tensors, held in memory (a sweep trains many models on the same data)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    kind: str  # "classification" or "regression"
    num_classes: int | None = None
    description: str = ""

    @property
    def train_size(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def test_size(self) -> int:
        return int(self.x_test.shape[0])


@dataclass(frozen=True)
class Task:
    """A model factory, its data, and the training settings a sweep uses unless told otherwise.

    ``identity`` names everything that changes results apart from λ and the seed; the store keys
    finished trials on it, so a changed setting never reuses a stale result.
    """

    name: str
    description: str
    model_fn: Callable[[], nn.Module]
    data_fn: Callable[[], Any]
    identity: str
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.0
    epochs: int = 100
    batch_size: int | None = 64
    mode: str = "lr_coupled"
    loss: str | Callable[[Tensor, Tensor], Tensor] = "auto"
    weight_decays: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0)
    seeds: int = 3
    dtype: torch.dtype = torch.float32
    model_description: str = ""
    # per-member extra metrics computed once at the end: (model, weight_decay, data) -> {name: value}
    final_metrics: Callable[[nn.Module, float, SweepData], dict[str, float]] | None = None
    # notes about the finished table that only the task can make: (rows, data) -> [sentences]
    notes: Callable[[Sequence[Mapping[str, Any]], SweepData], list[str]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- built-in task: noisy-label digits


def digits_noisy_labels(train_size: int = 500, label_noise: float = 0.3, seed: int = 0) -> SweepData:
    """scikit-learn's ``digits`` split into ``train_size`` training images and the rest for testing.

    Exactly ``round(label_noise * train_size)`` training labels are replaced by a different class,
    drawn uniformly from the nine wrong ones; the test labels stay clean, so test accuracy
    measures what was learnt about digits, not about the noise. Pixels are scaled to [0, 1].
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DecayError(
            "the digits task needs scikit-learn (its bundled digits data): pip install 'decaykit[data]'"
        ) from exc
    if not 0.0 <= label_noise < 1.0:
        raise DecayError(f"label_noise must be in [0, 1), got {label_noise}")
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    if not 10 <= train_size <= len(x) - 100:
        raise DecayError(f"train_size must be between 10 and {len(x) - 100} for digits, got {train_size}")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    train, test = order[:train_size], order[train_size:]
    y_train = y[train].clone()
    n_flip = round(label_noise * train_size)
    flipped = torch.randperm(train_size, generator=gen)[:n_flip]
    shift = torch.randint(1, 10, (n_flip,), generator=gen)  # never 0: the new label is always wrong
    y_train[flipped] = (y_train[flipped] + shift) % 10
    if n_flip:
        noise = f"{n_flip} of them ({label_noise:.0%}) relabelled with a wrong class at random"
    else:
        noise = "clean labels"
    return SweepData(
        x_train=x[train],
        y_train=y_train,
        x_test=x[test],
        y_test=y[test],
        kind="classification",
        num_classes=10,
        description=(
            f"scikit-learn digits (8x8 images): {train_size} training images, {noise}; "
            f"tested on the other {len(test)} images with their true labels"
        ),
    )


def digits_mlp(hidden: int = 512) -> nn.Sequential:
    """64 → ``hidden`` → 10 with a ReLU: wide enough to memorise 500 noisy labels."""
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def _digits_notes(rows: Sequence[Mapping[str, Any]], data: SweepData, *, label_noise: float) -> list[str]:
    zero = next((r for r in rows if r["weight_decay"] == 0.0 and r.get("train_accuracy") is not None), None)
    if zero is None or zero["train_accuracy"] < 0.97 or label_noise == 0:
        return []
    return [
        f"at λ = 0 the MLP fits {zero['train_accuracy']:.1%} of the training labels, wrong ones included: "
        "it has memorised the noise"
    ]


def _digits_task(train_size: int = 500, label_noise: float = 0.3, hidden: int = 512, data_seed: int = 0) -> Task:
    return Task(
        name="digits-noisy-labels",
        description="",  # filled from the data's description when the data is built
        model_fn=lambda: digits_mlp(hidden),
        data_fn=lambda: digits_noisy_labels(train_size, label_noise, seed=data_seed),
        identity=(
            f"digits-noisy-labels(train_size={train_size},label_noise={label_noise},hidden={hidden},"
            f"data_seed={data_seed})"
        ),
        optimizer="adamw",
        lr=1e-3,
        epochs=200,
        batch_size=32,
        mode="lr_coupled",
        weight_decays=(0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
        seeds=3,
        model_description=f"MLP 64-{hidden}-10 (ReLU)",
        notes=lambda rows, data: _digits_notes(rows, data, label_noise=label_noise),
        extra={"train_size": train_size, "label_noise": label_noise, "data_seed": data_seed},
    )


# ---------------------------------------------------------------- built-in task: ridge regression


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
    return torch.linalg.lstsq(gram, x.T @ y).solution if weight_decay == 0 else torch.linalg.solve(gram, x.T @ y)


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
        err0.append(float((torch.linalg.lstsq(x, y).solution - beta).square().sum()))
        ridge = torch.linalg.solve(x.T @ x + noise_std**2 * torch.eye(d, dtype=torch.float64), x.T @ y)
        err_s2.append(float((ridge - beta).square().sum()))


def _ridge_task(train_size: int | None = None, noise_std: float = 0.5, dim: int = 100, data_seed: int = 0) -> Task:
    n = dim if train_size is None else train_size

    def model_fn() -> nn.Module:
        model = nn.Linear(dim, 1, bias=False)
        nn.init.zeros_(model.weight)  # from zero, gradient descent stays in the row space of X
        return model.double()

    return Task(
        name="ridge",
        description="",
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


TASKS: dict[str, Callable[..., Task]] = {
    "digits-noisy-labels": _digits_task,
    "ridge": _ridge_task,
}
DEFAULT_TASK = "digits-noisy-labels"


def builtin_task(name: str, **options: Any) -> Task:
    """The built-in task ``name`` with its options (``train_size``, ``data_seed``; digits: ``label_noise``,
    ``hidden``; ridge: ``noise_std``, ``dim``)."""
    factory = TASKS.get(name)
    if factory is None:
        raise DecayError(f"task={name!r} is not a built-in task; choose one of {', '.join(TASKS)}")
    try:
        return factory(**{k: v for k, v in options.items() if v is not None})
    except TypeError as exc:
        raise DecayError(f"task {name!r} does not take these options: {sorted(options)} ({exc})") from None


# ---------------------------------------------------------------- the user's model and data


def make_model_fn(spec: Any, *, argument: str = "model") -> tuple[Callable[[], nn.Module], str]:
    """Return ``(factory, identity)`` for a factory, a class or a ``pkg.mod:factory`` string.

    A sweep builds one fresh model per seed, so it needs a factory, not a model instance.
    """
    from decaykit.loading import load_object

    identity = spec if isinstance(spec, str) else _qualname(spec)
    obj = spec
    if isinstance(spec, str):
        demo = _demo_models().get(spec)
        obj = demo if demo is not None else load_object(spec, argument=argument.upper())
    if isinstance(obj, nn.Module):
        raise DecayError(
            f"{argument}={identity!r} is a model instance; a sweep trains one fresh model per seed, so pass "
            "a function or class that builds it (in Python: lambda: MyNet())"
        )
    if not callable(obj):
        raise DecayError(f"{argument}={identity!r} is a {type(obj).__name__}, not a function that builds a model")

    def factory() -> nn.Module:
        try:
            model = obj()
        except TypeError as exc:
            raise DecayError(
                f"{argument}={identity!r}: calling it with no arguments failed ({exc}); "
                "point to a function that builds the model with its defaults"
            ) from exc
        if not isinstance(model, nn.Module):
            raise DecayError(
                f"{argument}={identity!r} returned a {type(model).__name__}, not a torch.nn.Module; "
                "the factory must return a new model"
            )
        return model

    return factory, identity


def _demo_models() -> Mapping[str, Callable[[], nn.Module]]:
    try:
        from decaykit.models import DEMO_MODELS
    except ImportError:
        return {}
    return DEMO_MODELS


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    return f"{module}:{name}"


def _tensor(value: Any, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach()
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DecayError(f"data: {name} must be a tensor or an array, got {type(value).__name__}") from exc


def resolve_data(raw: Any, *, source: str = "data") -> SweepData:
    """Check and normalise whatever the data factory returned (see the module docstring)."""
    if isinstance(raw, SweepData):
        parts = (raw.x_train, raw.y_train, raw.x_test, raw.y_test)
        description = raw.description
    else:
        parts = _split_parts(raw, source)
        description = ""
    x_train, y_train, x_test, y_test = (_tensor(v, n) for v, n in zip(parts, ("x_train", "y_train", "x_test", "y_test")))
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if x.dim() < 1 or x.shape[0] == 0:
            raise DecayError(f"{source}: x_{split} is empty; a sweep needs at least one {split} sample")
        if y.dim() < 1 or y.shape[0] != x.shape[0]:
            raise DecayError(
                f"{source}: x_{split} has {x.shape[0]} samples but y_{split} has "
                f"{y.shape[0] if y.dim() else 'no'} (shapes {tuple(x.shape)} and {tuple(y.shape)}); "
                "inputs and targets must have one row per sample"
            )
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DecayError(
            f"{source}: train and test inputs differ in shape per sample: {tuple(x_train.shape[1:])} vs "
            f"{tuple(x_test.shape[1:])}"
        )
    if y_train.dtype.is_floating_point != y_test.dtype.is_floating_point:
        raise DecayError(f"{source}: y_train is {y_train.dtype} but y_test is {y_test.dtype}; use one kind of target")
    if not (x_train.dtype.is_floating_point and x_test.dtype.is_floating_point):
        raise DecayError(f"{source}: inputs must be floating point, got {x_train.dtype} and {x_test.dtype}")
    if y_train.dtype.is_floating_point or y_train.dtype.is_complex:
        kind, num_classes = "regression", None
        if y_train.shape[1:] != y_test.shape[1:]:
            raise DecayError(
                f"{source}: regression targets differ in shape per sample: {tuple(y_train.shape[1:])} vs "
                f"{tuple(y_test.shape[1:])}"
            )
    else:
        kind = "classification"
        y_train, y_test = y_train.long(), y_test.long()
        if y_train.dim() != 1 or y_test.dim() != 1:
            raise DecayError(
                f"{source}: class labels must be one integer per sample (1-D), got shapes "
                f"{tuple(y_train.shape)} and {tuple(y_test.shape)}"
            )
        low = int(min(y_train.min(), y_test.min()))
        if low < 0:
            raise DecayError(f"{source}: class labels must be >= 0, found {low}")
        num_classes = int(max(y_train.max(), y_test.max())) + 1
    for t, n in ((x_train, "x_train"), (x_test, "x_test")):
        if not torch.isfinite(t).all():
            raise DecayError(f"{source}: {n} contains NaN or infinite values")
    return SweepData(x_train, y_train, x_test, y_test, kind, num_classes, description)


def _split_parts(raw: Any, source: str) -> tuple[Any, Any, Any, Any]:
    if isinstance(raw, Mapping):
        if {"x_train", "y_train", "x_test", "y_test"} <= set(raw):
            return raw["x_train"], raw["y_train"], raw["x_test"], raw["y_test"]
        if {"train", "test"} <= set(raw):
            return (*_pair(raw["train"], source, "train"), *_pair(raw["test"], source, "test"))
        raise DecayError(
            f"{source}: a dict must have keys x_train, y_train, x_test, y_test (or train, test), got {sorted(raw)}"
        )
    if isinstance(raw, (tuple, list)):
        if len(raw) == 4:
            return raw[0], raw[1], raw[2], raw[3]
        if len(raw) == 2:
            return (*_pair(raw[0], source, "train"), *_pair(raw[1], source, "test"))
    raise DecayError(
        f"{source} returned a {type(raw).__name__}; expected (x_train, y_train, x_test, y_test), "
        "(train_dataset, test_dataset), a dict with those keys, or decaykit.sweeps.SweepData"
    )


def _pair(value: Any, source: str, split: str) -> tuple[Any, Any]:
    tensors = getattr(value, "tensors", None)  # torch.utils.data.TensorDataset
    if tensors is not None:
        value = tensors
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return value[0], value[1]
    raise DecayError(f"{source}: the {split} part must be (x, y) or a TensorDataset of (x, y), got {type(value).__name__}")


def task_from_user(
    model: Any,
    data: Any,
    *,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "auto",
) -> Task:
    """A task around the user's model factory and data (a factory, a ``pkg.mod:attr`` or the data itself)."""
    if model is None or data is None:
        missing = "model" if model is None else "data"
        raise DecayError(f"a sweep of your own model needs both model and data; {missing} is missing")
    model_fn, model_id = make_model_fn(model)
    data_fn, data_id = _data_fn(data)
    return Task(
        name="custom",
        description="",
        model_fn=model_fn,
        data_fn=data_fn,
        identity=f"custom(model={model_id},data={data_id})",
        model_description=model_id,
        loss=loss,
    )


def _data_fn(spec: Any) -> tuple[Callable[[], Any], str]:
    from decaykit.loading import load_object

    if isinstance(spec, str):
        obj = load_object(spec, argument="DATA")
        identity = spec
        if callable(obj):
            return obj, identity
        return (lambda: obj), identity
    if callable(spec) and not isinstance(spec, (Tensor, SweepData)):
        return spec, _qualname(spec)
    # data given directly: its identity is its content's shape and checksum, so a store never mixes data sets
    data = resolve_data(spec)
    digest = _checksum(data)
    return (lambda: data), f"data:{digest}"


def _checksum(data: SweepData) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in (data.x_train, data.y_train, data.x_test, data.y_test):
        t = t.detach().contiguous().cpu()
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(_raw_bytes(t))
    return h.hexdigest()[:12]


def _raw_bytes(t: Tensor) -> bytes:
    try:
        return t.reshape(-1).view(torch.uint8).numpy().tobytes()
    except (RuntimeError, TypeError):  # no numpy, or a dtype numpy lacks: slower but exact
        return repr(t.reshape(-1).tolist()).encode()


def with_overrides(task: Task, **overrides: Any) -> Task:
    """``task`` with the given settings replaced (``None`` keeps the task's own)."""
    return replace(task, **{k: v for k, v in overrides.items() if v is not None})


def check_finite_positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DecayError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise DecayError(f"{name} must be a finite number {bound}, got {value!r}")
    return number
