"""How a sweep names and describes itself: its identity and fingerprint in the store, its settings, its header."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from decaykit.errors import DecayError
from decaykit.policy.options import Policy
from decaykit.sweeps.code_digest import code_digest
from decaykit.sweeps.data import SweepData, checksum
from decaykit.sweeps.optim import describe_optimizer
from decaykit.sweeps.prepare import Prepared
from decaykit.sweeps.settings import Training, Trials
from decaykit.sweeps.tasks import Task
from decaykit.sweeps.trainer import seeded_model

__all__ = ["fingerprint", "header", "identity", "policy_text", "public_settings", "study_name_identity"]


def policy_text(policy: Any) -> str:
    """How the header and the store's identity name the policy.

    A ``Policy`` names itself (:meth:`decaykit.Policy.describe`); a name or a mapping is written as
    given, as earlier versions did, so a rerun finds the trials they stored.
    """
    if isinstance(policy, Policy):
        return policy.describe()
    if isinstance(policy, str):
        return policy
    options = {k: v for k, v in dict(policy).items() if v not in (None, [], (), False) or k == "decay_embeddings"}
    if set(options) <= {"policy", "decay_embeddings"} and options.get("decay_embeddings", True):
        return str(options.get("policy", "decaykit"))
    return json.dumps(options, sort_keys=True, default=repr)


def _qual(obj: Any) -> Any:
    if callable(obj):
        return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__name__)}"
    return obj


def identity(task: Task, training: Training) -> dict[str, Any]:
    """Everything that changes a trial's numbers except (λ, seed): the store's study name hashes it.
    The objective is not in it: it only ranks the finished trials, so ranking by another reuses them all.

    ``training`` is resolved (:meth:`Training.for_data`). The keys and values must not change from one
    release to the next: a changed identity starts a new study, and a rerun could no longer resume.
    """
    return {
        "task": task.identity,
        "optimizer": _qual(training.optimizer),
        "lr": training.lr,
        "momentum": training.momentum,
        "epochs": training.epochs,
        "batch_size": training.batch_size or None,  # None: a full batch, as stores have always written it
        "mode": training.mode,
        "policy": policy_text(training.policy),
        "loss": _qual(training.loss),
        "dtype": str(training.dtype),
        "curve_points": training.curve_points,
        "metrics": sorted(training.metrics),
    }


def study_name_identity(prepared: Prepared) -> dict[str, Any]:
    """What the automatic study name hashes: :func:`identity` as earlier releases wrote it, when it held the
    objective. The data's default objective stands in for whichever is chosen, so the names of default runs
    stay those already in users' stores, and ranking by another metric finds the same trials."""
    default = "test_accuracy" if prepared.data.kind == "classification" else "test_loss"
    return {**identity(prepared.task, prepared.training), "objective": default}


def fingerprint(prepared: Prepared) -> dict[str, str]:
    """Everything that decides a trial's numbers, hashed by part: a stored trial is reused only when all match.

    ``settings``: :func:`identity` and the code of the functions it names (optimizer, loss, metrics);
    ``model``: the initial ``state_dict`` of the reference seed's model, built as the trainer builds it,
    and the code of every module class in it; ``data``: the train and test tensors; ``task``; decaykit's ``version``.
    """
    from decaykit import __version__

    task, training = prepared.task, prepared.training
    functions = {"optimizer": training.optimizer, "loss": training.loss, **{f"metric {k}": f for k, f in
                 training.metrics.items()}}  # fmt: skip
    settings = {"identity": {k: v for k, v in identity(task, training).items() if k != "task"},  # a part of its own
                "code": {k: code_digest(f) for k, f in functions.items() if callable(f)}}  # fmt: skip
    return {
        "settings": _sha(json.dumps(settings, sort_keys=True, default=repr).encode()),
        "model": _model_digest(prepared),
        "data": checksum(prepared.data),
        "task": _sha(f"{task.name}\n{task.identity}".encode()),
        "version": __version__,
    }


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# the seed whose model stands for the model in the fingerprint: one seed, the same whatever seeds the sweep
# runs, so adding a seed reuses the trials of the others (the initial weights are a function of the code and
# the seed: a change to the model shows at seed 0 as at any other)
REFERENCE_SEED = 0


def _model_digest(prepared: Prepared) -> str:
    """The reference seed's model as the trainer builds it: its tensors' bytes and its module classes' code."""
    h = hashlib.sha256()
    training = prepared.training
    seed = REFERENCE_SEED  # built afresh, not prepared.probe: the checks before training ran it
    try:
        model = seeded_model(prepared.task.model_fn, seed, training.dtype, training.device)
    except Exception as exc:
        raise DecayError(f"building the model for seed {seed} failed: {type(exc).__name__}: {exc}") from exc
    for name, value in model.state_dict().items():
        h.update(f"{seed}:{name}".encode())  # the bytes earlier releases hashed for seed 0: stored trials still match
        h.update(_tensor_bytes(value))
    classes: dict[type, str] = {}  # a class's digest follows what its methods use: once per class
    for name, module in model.named_modules():
        cls = type(module)
        if cls not in classes:
            classes[cls] = code_digest(cls)
        h.update(f"{name}:{classes[cls]}".encode())
    h.update(code_digest(prepared.task.model_fn).encode())
    return h.hexdigest()[:16]


def _tensor_bytes(t: Any) -> bytes:
    if not isinstance(t, torch.Tensor) or torch.nn.parameter.is_lazy(t):
        return repr(type(t)).encode()
    head = f"{tuple(t.shape)}:{t.dtype}".encode()
    try:
        return head + t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    except (RuntimeError, TypeError, NotImplementedError):  # a sparse, quantized or meta tensor: its values if it has any
        try:
            return head + repr(t.detach().to("cpu").to_dense().reshape(-1).tolist()).encode()
        except (RuntimeError, TypeError, NotImplementedError):
            return head


def public_settings(task: Task, trials: Trials, training: Training) -> dict[str, Any]:
    """The settings a result reports (``--json``'s ``settings``), from the resolved values."""
    return {
        "task": task.name,
        "model": task.model_description or task.identity,
        "optimizer": _qual(training.optimizer),
        "lr": training.lr,
        "momentum": training.momentum,
        "mode": training.mode,
        "policy": policy_text(training.policy),
        "epochs": training.epochs,
        "batch_size": training.batch_size or None,
        "seeds": trials.seed_list,
        "weight_decays": None if trials.weight_decays is None else list(trials.weight_decays),
        "search": None if trials.search is None else list(trials.search),
        "metric": training.metric,
        "dtype": str(training.dtype).replace("torch.", ""),
    }


def header(task: Task, data: SweepData, trials: Trials, training: Training) -> list[str]:
    """The report's first lines: the task, the data, the model and optimizer, the training, the table's legend."""
    seeds, search = trials.seed_list, trials.search
    batch = "full batch" if not training.batch_size else f"batch {training.batch_size}"
    if len(seeds) == 1:
        seed_text = f"seed {seeds[0]}"
    elif seeds == list(range(seeds[0], seeds[-1] + 1)):
        seed_text = f"seeds {seeds[0]}-{seeds[-1]}"
    else:
        seed_text = f"seeds {seeds}"
    lines = [
        f"decaykit sweep: {task.name}",
        f"data:   {data.description}",
        f"model:  {task.model_description or task.identity}; "
        f"{describe_optimizer(training.optimizer, training.lr, training.momentum, training.mode)}; "
        f"policy {policy_text(training.policy)}",
        f"train:  {training.epochs} epochs, {batch}, {seed_text} (a seed fixes the initial weights and the "
        "sample order)",
        ("table:  mean ± std over seeds; gap = " if len(seeds) > 1 else "table:  gap = ")
        + ("train − test accuracy" if data.kind == "classification" else "test − train loss")
        + "; ‖w‖ = L2 norm of the parameters that decay (the policy's choice)",
    ]
    if search is not None:
        lines.append(
            f"search: λ in [{search[0]:g}, {search[1]:g}]: {trials.rounds} rounds of {trials.points} log-spaced "
            "values zooming in on the best, plus λ = 0"
        )
    return lines
