"""The training loop every trial runs, for one model or for K stacked models alike.

A trial is fixed by (λ, seed): ``torch.manual_seed(seed)`` before the model factory fixes the
initial weights, a generator seeded with ``seed`` draws each epoch's sample order, and torch's
global generator, which the model's own randomness draws from (Dropout's masks), starts each
training from a state fixed by the seed too (the caller's state is put back after), so a trial
gives the same numbers whether it is trained alone, batched with others, or re-run after an
interruption. Members that diverge (a non-finite loss) are marked and keep going without
disturbing the others: they share no parameters. Every finished trial is judged (``sanity.py``): one
that diverged, overflowed, did not lower its loss or ends no better than chance is *failed*, with
the reason, and is never chosen as the best λ.

The loop talks to its models through :class:`Members` (``K`` models that take ``(K, b, ...)``
batches): :class:`SingleMember` here wraps one ``nn.Module``; ``batched.StackedMembers`` holds K
models as stacked tensors.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from decaykit.errors import DecayError
from decaykit.sweeps.data import SweepData
from decaykit.sweeps.metrics import evaluate, member_losses
from decaykit.sweeps.optim import build_optimizer, decay_plan
from decaykit.sweeps.sanity import Chance, chance_level, judge

if TYPE_CHECKING:
    from decaykit.sweeps.settings import Training
    from decaykit.sweeps.timing import ThreadChoice

__all__ = ["FinalMetrics", "Members", "SingleMember", "TrialOutcome", "build_member", "curve_epochs", "train", "training_step"]

# per-member extra metrics computed once at the end (a task's): (model, weight_decay, data) -> {name: value}
FinalMetrics = Callable[[nn.Module, float, SweepData], dict[str, float]]


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
    failure: dict[str, str] | None = None  # {"kind", "reason"} when the trial did not train (sanity.judge)

    def to_record(self) -> dict[str, Any]:
        """The record the store keeps and callbacks receive: the fields, in order, as a plain dict."""
        return asdict(self)


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
        _manual_seed(seed)
        model = model_fn()
    return model.to(device=device, dtype=dtype)


def _manual_seed(seed: int) -> None:
    """``torch.manual_seed(seed)``, without its lazy seeding of accelerators this machine does not have (it
    records a stack trace per backend: 0.36 ms a call against 1.3 µs for the CPU generator alone, and a sweep
    builds a model per member)."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is None or accelerator.is_available():
        torch.manual_seed(seed)
    else:
        torch.random.default_generator.manual_seed(seed)


class SingleMember:
    """One ``nn.Module`` seen as K = 1 members."""

    batched = False
    size = 1

    def __init__(self, model: nn.Module, weight_decay: float, training: Training) -> None:
        self.model = model
        plan = decay_plan(model, weight_decay, training.policy)
        named = {n: p for n, p in _named_trainable(model)}
        self.optimizer = build_optimizer(
            named, [plan], optimizer=training.optimizer, lr=training.lr, momentum=training.momentum, mode=training.mode
        )
        decayed = decayed_names(model, training.policy)
        self._decayed = [p for n, p in named.items() if n in decayed]
        self.loss = training.loss

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
    from decaykit.policy.names import namer

    canonical = namer(model)
    return [(canonical(n), p) for n, p in model.named_parameters() if p.requires_grad]


def decayed_names(model: nn.Module, policy: Any) -> set[str]:
    """Names of the parameters the policy decays (asked with λ = 1, so λ = 0 members report the same norm)."""
    return {n for n, (wd, _) in decay_plan(model, 1.0, policy).items() if wd > 0}


def build_member(
    model_fn: Callable[[], nn.Module], weight_decay: float, seed: int, training: Training
) -> SingleMember:
    """Trial (λ, seed) as one model: the seed's initial weights, the policy's groups, the engine."""
    return SingleMember(seeded_model(model_fn, seed, training.dtype, training.device), weight_decay, training)


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
    training: Training,
    *,
    final_metrics: FinalMetrics | None = None,
    on_epoch: Callable[[int], None] | None = None,
    threads: ThreadChoice | None = None,
) -> list[TrialOutcome]:
    """Train the K members (member k is ``configs[k] = (λ_k, seed_k)``) and measure them.

    Each epoch member k sees the training set in the order drawn by its seed's generator,
    in batches of ``training.batch_size`` (the last one smaller), or all at once. The curves are
    measured at the epochs :func:`curve_epochs` picks; ``final_metrics`` (a task's) adds metrics of
    each finished member; ``on_epoch(K)`` is called after every epoch (the progress bar). ``threads``: a
    thread count still being timed runs its trial on the first training steps (``timing.ThreadChoice``).
    """
    if len(configs) != members.size:
        raise ValueError(f"{len(configs)} configs for {members.size} members")
    seeds = [seed for _, seed in configs]
    curves = _Curves(members, data, training)
    start = time.perf_counter()
    with _training_rng(seeds[0], training.device):
        curves.measure(0, _distinct_starts(members, seeds))
        diverged = _train_epochs(members, seeds, data, training, curves, on_epoch, threads)
    seconds = time.perf_counter() - start
    series = curves.stacked()
    verdict = _Verdict(chance_level(data, training.loss), training)
    return [
        _outcome(members, k, key, series, bool(diverged[k]), data, final_metrics, seconds, verdict)
        for k, key in enumerate(configs)
    ]


@contextlib.contextmanager
def _training_rng(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global generator (and the device's) seeded from the trial's ``seed`` while it trains, and put back
    after: the model's own random draws (Dropout's masks) are then the trial's, not whatever the process drew
    before (earlier trials, the caller's code, torch's random start in each process). K stacked members draw
    none (stacking refuses random layers), so the first member's seed serves them all. The state differs from
    the one that built the initial weights, so the masks are not the weights' random numbers again."""
    derived = int.from_bytes(hashlib.sha256(f"decaykit training {seed}".encode()).digest()[:8], "little") >> 1
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(derived)
        if devices:
            torch.cuda.manual_seed(derived)
        yield


def _distinct_starts(members: Members, seeds: Sequence[int]) -> list[int]:
    """For each member, the first member with the same initial state, whose start is measured for both.

    Members of one seed start from the same model (seeded_model): the start is measured once per
    distinct initial state, found by comparing the members' tensors, not assumed from the seed."""
    starts: list[int] = []
    for k, seed in enumerate(seeds):
        starts.append(next((j for j in starts if seeds[j] == seed and members.same_start(j, k)), k))
    return starts


class _SampleOrder:
    """Each epoch's sample order per member: one generator per distinct seed, shared by that seed's members."""

    def __init__(self, seeds: Sequence[int], samples: int) -> None:
        self.unique = sorted(set(seeds))
        self.generators = {s: torch.Generator().manual_seed(s) for s in self.unique}
        self.row_of = torch.tensor([self.unique.index(s) for s in seeds])
        self.samples = samples

    def draw(self) -> Tensor:
        """(K, n) sample indices for the next epoch."""
        orders = [torch.randperm(self.samples, generator=self.generators[s]) for s in self.unique]
        return torch.stack(orders)[self.row_of]


def _train_epochs(
    members: Members,
    seeds: Sequence[int],
    data: SweepData,
    training: Training,
    curves: _Curves,
    on_epoch: Callable[[int], None] | None,
    threads: ThreadChoice | None,
) -> Tensor:
    """Every epoch of training, measured at the curve's epochs; returns which members diverged, (K,) bool."""
    k_members, n = members.size, data.train_size
    batch = training.batch_for(n)
    order = _SampleOrder(seeds, n)
    checkpoints = set(curve_epochs(training.epochs, training.curve_points))
    bad = torch.zeros(k_members, dtype=torch.bool, device=training.device)
    for epoch in range(1, training.epochs + 1):
        orders = order.draw() if batch < n else torch.arange(n).expand(k_members, n)
        bad |= ~torch.isfinite(_one_epoch(members, data, orders, batch, threads))
        if epoch in checkpoints:
            curves.measure(epoch)
        if on_epoch is not None:
            on_epoch(k_members)
    return bad


def _one_epoch(members: Members, data: SweepData, orders: Tensor, batch: int, threads: ThreadChoice | None) -> Tensor:
    """One pass over the training set in ``orders`` (K, n); each member's summed loss, (K,) float64."""
    x_train, y_train = data.x_train, data.y_train
    epoch_loss = torch.zeros(members.size, dtype=torch.float64, device=x_train.device)
    orders = orders.to(x_train.device)
    for lo in range(0, orders.shape[1], batch):
        idx = orders[:, lo : lo + batch]
        rows = idx.reshape(-1)  # index_select of the flat rows: 18 µs where x_train[idx] took 48 (K = 16, b = 32)
        x = x_train.index_select(0, rows).view(*idx.shape, *x_train.shape[1:])
        y = y_train.index_select(0, rows).view(*idx.shape, *y_train.shape[1:])
        step = functools.partial(training_step, members, x, y)
        epoch_loss += step() if threads is None else threads.run(step)  # NaN and inf stick in a sum
    return epoch_loss


def training_step(members: Members, x: Tensor, y: Tensor) -> Tensor:
    """One training step: forward and backward into ``.grad``, then the optimizer; the (K,) losses."""
    losses = members.forward_backward(x, y)
    members.optimizer.step()
    return losses


class _Curves:
    """Every member's metrics at each measured epoch: per name, a list of (K,) tensors."""

    def __init__(self, members: Members, data: SweepData, training: Training) -> None:
        self.members, self.data, self.training = members, data, training
        self.series: dict[str, list[Tensor]] = {}

    def measure(self, epoch: int, rows: list[int] | None = None) -> None:
        """Every member's metrics; with ``rows``, only those members run and member k takes row ``rows[k]``'s."""
        k_members, data = self.members.size, self.data
        self._add("epoch", torch.full((k_members,), float(epoch), dtype=torch.float64))
        run = None if rows is None else torch.tensor(sorted(set(rows)))
        take = None if run is None else torch.tensor([run.tolist().index(r) for r in rows])  # type: ignore[union-attr]
        size = k_members if run is None else len(run)

        def forward(x: Tensor) -> Tensor:
            return self.members.eval_forward(x, run)

        for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
            values = evaluate(forward, x, y, kind=data.kind, loss=self.training.loss, chunk=_eval_chunk(data, size),
                              extra=self.training.metrics)  # fmt: skip
            for name, value in values.items():
                self._add(f"{split}_{name}", value if take is None else value[take])
        self._add("weight_norm", self.members.decayed_norm())

    def _add(self, name: str, value: Tensor) -> None:
        self.series.setdefault(name, []).append(value)

    def stacked(self) -> dict[str, Tensor]:
        """Per name, a (K, points) tensor."""
        return {name: torch.stack(values, dim=1) for name, values in self.series.items()}


def _outcome(
    members: Members,
    k: int,
    key: tuple[float, int],
    series: Mapping[str, Tensor],
    bad: bool,
    data: SweepData,
    final_metrics: FinalMetrics | None,
    seconds: float,
    verdict: _Verdict,
) -> TrialOutcome:
    """Member k's trial: the last curve point of each metric (None if it diverged, or a user's metric
    that is undefined, NaN), the gap, the task's extras, and whether it trained (``failure``)."""
    weight_decay, seed = key
    last = {name: float(values[k, -1]) for name, values in series.items() if name != "epoch"}
    first = {name: float(values[k, 0]) for name, values in series.items() if name != "epoch"}
    # divergence is the loss's and the weights' to decide: a user's metric may be undefined (precision
    # of a class never predicted is 0/0) on a model that trained well; it is then None, the trial kept
    own_last = {name: v for name, v in last.items() if name not in verdict.user_metrics}
    own_first = {name: v for name, v in first.items() if name not in verdict.user_metrics}
    diverged = bad or not all(math.isfinite(v) for v in own_last.values())
    failure = verdict.judge(own_first, own_last, diverged)
    metrics: dict[str, float | None] = {name: (None if diverged else _finite(value)) for name, value in last.items()}
    metrics["gap"] = None if diverged else _gap(metrics, data.kind)
    if final_metrics is not None and not diverged:
        metrics.update(_final_metrics(final_metrics, members.member_module(k), weight_decay, data))
    return TrialOutcome(
        weight_decay=weight_decay,
        seed=seed,
        metrics=metrics,
        curves={name: [_finite(float(v)) for v in values[k]] for name, values in series.items()},
        diverged=diverged,
        batched=members.batched,
        members=members.size,
        seconds=seconds,
        failure=failure,
    )


class _Verdict:
    """Judges each finished member against the data's chance level (once per call of :func:`train`)."""

    def __init__(self, chance: Chance | None, training: Training) -> None:
        self.chance, self.lr = chance, training.lr
        self.user_metrics = {f"{split}_{name}" for name in training.metrics for split in ("train", "test")}
        self.dtype = training.dtype or torch.get_default_dtype()

    def judge(self, first: Mapping[str, float], last: Mapping[str, float], diverged: bool) -> dict[str, str] | None:
        failure = judge(first, last, chance=self.chance, dtype=self.dtype, lr=self.lr)
        if diverged and (failure is None or failure["kind"] not in ("broken", "diverged")):
            # non-finite on a step between two measured epochs, finite again by the end
            failure = judge(first, {**last, "train_loss": math.nan}, chance=None, dtype=self.dtype, lr=self.lr)
        return failure


def _gap(metrics: Mapping[str, float | None], kind: str) -> float:
    """The generalisation gap: train − test accuracy for classification, test − train loss otherwise."""
    if kind == "classification":
        return metrics["train_accuracy"] - metrics["test_accuracy"]  # type: ignore[operator]
    return metrics["test_loss"] - metrics["train_loss"]  # type: ignore[operator]


def _final_metrics(fn: FinalMetrics, model: nn.Module, weight_decay: float, data: SweepData) -> dict[str, float]:
    try:
        extra = fn(model, weight_decay, data)
    except DecayError:
        raise
    except Exception as exc:
        raise DecayError(f"final metrics failed for weight_decay={weight_decay}: {exc}") from exc
    return {name: float(v) for name, v in extra.items()}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
