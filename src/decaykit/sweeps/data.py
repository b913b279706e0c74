"""The data contract: what a sweep's data factory may return, checked and normalised.

A sweep trains many models on the same data, so it is held in memory as tensors. Accepted:
a :class:`SweepData`, a tuple ``(x_train, y_train, x_test, y_test)``, a pair of ``TensorDataset`` s,
or a dict with the keys ``x_train, y_train, x_test, y_test`` (or ``train=(x, y), test=(x, y)``);
numpy arrays work wherever tensors do. Floating and boolean inputs are features (cast to the training
dtype); integer inputs are passed as they are, for a model that embeds them (token ids, category codes).
Integer targets mean classification (cross-entropy, accuracy), floating targets regression (mean
squared error).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from decaykit.errors import DecayError
from decaykit.sweeps.timing import one_thread

__all__ = ["SweepData", "check_finite", "checksum", "keeps_dtype", "resolve_data"]


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
    for x, split in ((x_train, "train"), (x_test, "test")):
        if x.dtype.is_complex:
            raise DecayError(f"{source}: x_{split} is {x.dtype}; inputs must be real: floating point features, or "
                             "integers (token ids, category codes) for a model that embeds them")
    if keeps_dtype(x_train) != keeps_dtype(x_test):
        raise DecayError(f"{source}: x_train is {x_train.dtype} but x_test is {x_test.dtype}; use one kind of input")
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
    data = SweepData(x_train, y_train, x_test, y_test, kind, num_classes, description)
    check_finite(data, source)
    return data


def keeps_dtype(t: Tensor) -> bool:
    """Whether ``t`` trains in its own dtype: integers (an embedding's ids, class labels) and complex values;
    floating and boolean tensors are features or values, cast to the training dtype."""
    return not t.dtype.is_floating_point and t.dtype != torch.bool


def check_finite(data: SweepData, source: str, *, after: str = "") -> None:
    """Refuse NaN or infinite inputs and targets, naming the tensor, the count and the first row.

    Checked before any training, so a bad value is blamed on the data, never on the learning rate
    (a NaN target makes every trial's loss NaN, which would otherwise read as divergence).
    """
    for name in ("x_train", "y_train", "x_test", "y_test"):
        t: Tensor = getattr(data, name)
        if not t.dtype.is_floating_point:
            continue
        with one_thread():
            bad = ~torch.isfinite(t)
            if not bool(bad.any()):
                continue
        rows = bad.reshape(t.shape[0], -1).any(1).nonzero().flatten()
        nans, infs = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        parts = [f"{count} {word}{'s' if count != 1 and word != 'NaN' else ''}"
                 for count, word in ((nans, "NaN"), (infs, "infinite value")) if count]  # fmt: skip
        where = f"at row {int(rows[0])}" if len(rows) == 1 else f"in {len(rows)} rows, first at row {int(rows[0])}"
        raise DecayError(
            f"{source}: {name} has {' and '.join(parts)} {where}{after}; a sweep cannot train on them: "
            "drop or fill those rows before the sweep"
        )


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


def checksum(data: SweepData) -> str:
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
