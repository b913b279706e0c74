"""The training loop every trial runs, for one model or for K stacked models alike.

A trial is fixed by (λ, seed): ``torch.manual_seed(seed)`` before the model factory fixes the
initial weights, and a generator seeded with ``seed`` draws each epoch's sample order, so a
trial gives the same numbers whether it is trained alone, batched with others, or re-run after
an interruption. Members that diverge (a non-finite loss) are marked and keep going without
disturbing the others: they share no parameters.

The loop talks to its models through :class:`Members` (``K`` models that take ``(K, b, ...)``
batches): :class:`SingleMember` here wraps one ``nn.Module``; ``batched.StackedMembers`` holds K
models as stacked tensors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from decaykit.errors import DecayError
from decaykit.sweeps.data import SweepData
from decaykit.sweeps.metrics import evaluate, member_losses
from decaykit.sweeps.optim import build_optimizer, decay_plan

__all__ = ["Members", "SingleMember", "TrainSettings", "TrialOutcome", "build_member", "curve_epochs", "train"]


@dataclass(frozen=True)
class TrainSettings:
    optimizer: Any
    lr: float
    momentum: float
    epochs: int
    batch_size: int | None
    mode: str
    policy: Any  # a policy name or param_groups options
    loss: Any
    kind: str
    dtype: torch.dtype
    device: torch.device
    curve_points: int = 25
    metrics: Mapping[str, Callable[[Tensor, Tensor], Any]] = field(default_factory=dict)
    final_metrics: Callable[[nn.Module, float, SweepData], dict[str, float]] | None = None


@dataclass
class TrialOutcome:
    """What one (λ, seed) trial produced: final metrics, curves over training, and how it ran."""

    weight_decay: float
    seed: int
    metrics: dict[str, float | None]
    curves: dict[str, list[float | None]]
    diverged: bool
    batched: bool
    members: int
    seconds: float

    def to_record(self) -> dict[str, Any]:
        return {
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            "metrics": self.metrics,
            "curves": self.curves,
            "diverged": self.diverged,
            "batched": self.batched,
            "members": self.members,
            "seconds": self.seconds,
        }


class Members(Protocol):
    """K models trained in lockstep; every tensor they exchange has the members in dim 0."""

    size: int
    batched: bool
    optimizer: torch.optim.Optimizer
    loss: Any  # a loss name of metrics.LOSSES or a callable

    def train_forward(self, x: Tensor) -> Tensor: ...  # (K, b, ...) -> (K, b, ...)

    def forward_backward(self, x: Tensor, y: Tensor) -> Tensor: ...  # .grad of Σ_k L_k written; (K,) losses

    def eval_forward(self, x: Tensor, rows: Tensor | None = None) -> Tensor: ...  # (n, ...) shared -> (K, n, ...)

    def same_start(self, i: int, j: int) -> bool: ...  # members i and j hold equal parameters (and buffers)

    def decayed_norm(self) -> Tensor: ...  # (K,) L2 norm of the parameters that decay

    def member_module(self, k: int) -> nn.Module: ...  # member k as a plain model


def seeded_model(model_fn: Callable[[], nn.Module], seed: int, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """The model for ``seed``: built right after ``torch.manual_seed(seed)``, the caller's RNG left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_fn()
    return model.to(device=device, dtype=dtype)


class SingleMember:
    """One ``nn.Module`` seen as K = 1 members."""

    batched = False
    size = 1

    def __init__(self, model: nn.Module, weight_decay: float, settings: TrainSettings) -> None:
        self.model = model
        plan = decay_plan(model, weight_decay, settings.policy)
        named = {n: p for n, p in _named_trainable(model)}
        self.optimizer = build_optimizer(
            named, [plan], optimizer=settings.optimizer, lr=settings.lr, momentum=settings.momentum, mode=settings.mode
        )
        decayed = decayed_names(model, settings.policy)
        self._decayed = [p for n, p in named.items() if n in decayed]
        self.loss = settings.loss

    def train_forward(self, x: Tensor) -> Tensor:
        self.model.train()
        return self.model(x[0]).unsqueeze(0)

    def forward_backward(self, x: Tensor, y: Tensor) -> Tensor:
        return autograd_step(self, x, y)

    def eval_forward(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        self.model.eval()
        return self.model(x).unsqueeze(0)

    def same_start(self, i: int, j: int) -> bool:
        return i == j

    def decayed_norm(self) -> Tensor:
        with torch.no_grad():
            total = sum((p.double().square().sum() for p in self._decayed), torch.zeros((), dtype=torch.float64))
        return total.sqrt().reshape(1)

    def member_module(self, k: int) -> nn.Module:
        return self.model


def autograd_step(members: Members, x: Tensor, y: Tensor) -> Tensor:
    """Each member's loss on its own batch, and its gradient in ``.grad`` by one ``backward`` of the sum."""
    members.optimizer.zero_grad(set_to_none=True)
    losses = member_losses(members.loss, members.train_forward(x), y)
    losses.sum().backward()
    return losses.detach()


def _named_trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    from decaykit.policy.names import canonical_name

    return [(canonical_name(n), p) for n, p in model.named_parameters() if p.requires_grad]


def decayed_names(model: nn.Module, policy: Any) -> set[str]:
    """Names of the parameters the policy decays (asked with λ = 1, so λ = 0 members report the same norm)."""
    return {n for n, (wd, _) in decay_plan(model, 1.0, policy).items() if wd > 0}


def build_member(
    model_fn: Callable[[], nn.Module], weight_decay: float, seed: int, settings: TrainSettings
) -> SingleMember:
    return SingleMember(seeded_model(model_fn, seed, settings.dtype, settings.device), weight_decay, settings)


def curve_epochs(epochs: int, points: int) -> list[int]:
    """The epochs after which the curves are measured: 0 (the initial model) and the last, with about
    ``points`` in between, half spaced evenly and half geometrically, so the early rise (and the
    early-stopping peak of an overfitting run) is resolved as well as the long tail."""
    points = max(1, min(points, epochs))
    n_geometric = points // 2 if points >= 4 else 0
    n_even = points - n_geometric
    even = {round(epochs * i / n_even) for i in range(1, n_even + 1)}
    geometric = {round(epochs ** (i / n_geometric)) for i in range(1, n_geometric + 1)}
    return sorted({0, epochs, *even, *(e for e in geometric if 1 <= e <= epochs)})


def _eval_chunk(data: SweepData, members: int) -> int:
    """Samples per evaluation forward: K x chunk rows of activations small enough to stay in cache
    (the demo's test set evaluates 2x faster in chunks of 256 than in one piece), inputs under 64 MiB."""
    per_sample = max(1, math.prod(data.x_train.shape[1:]))
    return max(1, min(max(16, 4096 // members), (1 << 24) // (members * per_sample)))


def train(
    members: Members,
    configs: Sequence[tuple[float, int]],
    data: SweepData,
    settings: TrainSettings,
    *,
    on_epoch: Callable[[int], None] | None = None,
) -> list[TrialOutcome]:
    """Train the K members (member k is ``configs[k] = (λ_k, seed_k)``) and measure them.

    Each epoch member k sees the training set in the order drawn by its seed's generator,
    in batches of ``settings.batch_size`` (the last one smaller), or all at once.
    """
    k_members = members.size
    if len(configs) != k_members:
        raise ValueError(f"{len(configs)} configs for {k_members} members")
    n = data.train_size
    batch = n if settings.batch_size is None else min(settings.batch_size, n)
    x_train, y_train = data.x_train, data.y_train
    seeds = [seed for _, seed in configs]
    unique_seeds = sorted(set(seeds))
    generators = {s: torch.Generator().manual_seed(s) for s in unique_seeds}
    row_of = torch.tensor([unique_seeds.index(s) for s in seeds])
    checkpoints = set(curve_epochs(settings.epochs, settings.curve_points))
    curves: dict[str, list[Tensor]] = {}
    bad = torch.zeros(k_members, dtype=torch.bool, device=settings.device)
    start = time.perf_counter()

    def measure(epoch: int, rows: list[int] | None = None) -> None:
        """Every member's metrics; with ``rows``, only those members run and member k takes row ``rows[k]``'s."""
        curves.setdefault("epoch", []).append(torch.full((k_members,), float(epoch), dtype=torch.float64))
        run = None if rows is None else torch.tensor(sorted(set(rows)))
        take = None if run is None else torch.tensor([run.tolist().index(r) for r in rows])
        size = k_members if run is None else len(run)

        def forward(x: Tensor) -> Tensor:
            return members.eval_forward(x, run)

        for split, x, y in (("train", x_train, y_train), ("test", data.x_test, data.y_test)):
            values = evaluate(
                forward, x, y, kind=settings.kind, loss=settings.loss, chunk=_eval_chunk(data, size), extra=settings.metrics
            )
            for name, value in values.items():
                curves.setdefault(f"{split}_{name}", []).append(value if take is None else value[take])
        curves.setdefault("weight_norm", []).append(members.decayed_norm())

    # members of one seed start from the same model (seeded_model): the start is measured once per
    # distinct initial state, found by comparing the members' tensors, not assumed from the seed
    starts: list[int] = []
    for k, seed in enumerate(seeds):
        starts.append(next((j for j in starts if seeds[j] == seed and members.same_start(j, k)), k))
    measure(0, starts)
    opt = members.optimizer
    for epoch in range(1, settings.epochs + 1):
        if batch < n:
            orders = torch.stack([torch.randperm(n, generator=generators[s]) for s in unique_seeds])[row_of]
        else:
            orders = torch.arange(n).expand(k_members, n)
        epoch_loss = torch.zeros(k_members, dtype=torch.float64, device=settings.device)
        for lo in range(0, n, batch):
            idx = orders[:, lo : lo + batch]
            epoch_loss += members.forward_backward(x_train[idx], y_train[idx])  # NaN and inf stick in a sum
            opt.step()
        bad |= ~torch.isfinite(epoch_loss)
        if epoch in checkpoints:
            measure(epoch)
        if on_epoch is not None:
            on_epoch(k_members)
    seconds = time.perf_counter() - start

    stacked = {name: torch.stack(values, dim=1) for name, values in curves.items()}  # (K, points)
    outcomes = []
    for k, (weight_decay, seed) in enumerate(configs):
        last = {name: float(series[k, -1]) for name, series in stacked.items() if name != "epoch"}
        diverged = bool(bad[k]) or not all(math.isfinite(v) for v in last.values())
        metrics: dict[str, float | None] = {name: (None if diverged else value) for name, value in last.items()}
        if settings.kind == "classification" and not diverged:
            metrics["gap"] = metrics["train_accuracy"] - metrics["test_accuracy"]  # type: ignore[operator]
        elif not diverged:
            metrics["gap"] = metrics["test_loss"] - metrics["train_loss"]  # type: ignore[operator]
        else:
            metrics["gap"] = None
        if settings.final_metrics is not None and not diverged:
            try:
                extra = settings.final_metrics(members.member_module(k), weight_decay, data)
            except DecayError:
                raise
            except Exception as exc:
                raise DecayError(f"final metrics failed for weight_decay={weight_decay}: {exc}") from exc
            metrics.update({name: float(v) for name, v in extra.items()})
        outcomes.append(
            TrialOutcome(
                weight_decay=weight_decay,
                seed=seed,
                metrics=metrics,
                curves={name: [_finite(float(v)) for v in series[k]] for name, series in stacked.items()},
                diverged=diverged,
                batched=members.batched,
                members=k_members,
                seconds=seconds,
            )
        )
    return outcomes


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
