"""Run under ``torchrun --nproc_per_node=2`` (CPU, gloo) by ``tests/test_distributed.py``.

One launch does every multi-process check, because starting torchrun costs seconds:

1. DDP: groups built from ``DDP(model)`` (also around / inside ``torch.compile`` and activation
   checkpointing) against the bare model's; N steps of ``WeightDecay`` with a λ schedule against a
   single-process run on the whole batch; audit and probe of the wrapped model.
2. FSDP2 (``fully_shard`` per block and at the root): the same, with DTensor parameters whose
   global shapes must be what the policy sees, uneven shards included; and an engine saved part way
   with ``torch.distributed.checkpoint`` from both ranks, loaded into a fresh sharded model and engine,
   and trained on, against the uninterrupted sharded run.
3. The examples ``examples/ddp_torchrun.py`` and ``examples/fsdp2_torchrun.py``, in this process
   group, their output captured.

Each rank writes ``<out>/rank<r>.json`` with facts (names, numbers, errors); the test asserts on
them, so a failure reads as a pytest failure rather than a crashed worker.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import io
import json
import os
import runpy
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import decaykit
from decaykit import schedules

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4
BATCH = 8  # split evenly over the ranks
OUT = Path(".")  # --out: the per-rank facts, and the checkpoint both ranks write
# (mode, inner optimizer, foreach): the engine's inner-kernel, cautious-snapshot (foreach kernels and
# the single-tensor loop) and extra-foreach-pass paths
ENGINES = [("lr_coupled", "AdamW", None), ("cautious", "AdamW", None), ("cautious", "AdamW", False),
           ("lr_independent", "SGD", None)]


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln_1 = nn.RMSNorm(d)  # a norm no name rule catches
        self.fc = nn.Linear(d, d)
        self.gamma = nn.Parameter(torch.full((d,), 0.5))  # layer scale on a custom module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * torch.tanh(self.fc(self.ln_1(x)))


class Toy(nn.Module):
    """Tied embedding/head, a no_weight_decay() hook, a (C,1,1) scale, a (1,) temperature, uneven shards (11 rows)."""

    def __init__(self, vocab: int = 11, d: int = 6, depth: int = 2, seq: int = 4) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.pos_embed = nn.Parameter(torch.randn(1, seq, d) * 0.1)
        self.blocks = nn.ModuleList([Block(d) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(d)
        self.scale = nn.Parameter(torch.ones(d, 1, 1))
        self.temperature = nn.Parameter(torch.ones(1))  # fully_shard refuses 0-d parameters
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x) * self.scale.reshape(1, 1, -1)
        return self.head(x) / self.temperature


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    idx = torch.randint(0, 11, (STEPS, BATCH, 4), generator=g)
    return idx, torch.roll(idx, -1, dims=-1)


def loss_fn(model: nn.Module, idx: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(idx).flatten(0, 1), target.flatten())


def optimizer_for(model: nn.Module, mode: str, inner: str, foreach: bool | None = None) -> decaykit.WeightDecay:
    lam = 0.1 * 0.05 if mode == "lr_independent" else 0.1  # λ = 0.1 at the peak LR, in the mode's convention
    groups = decaykit.param_groups(model, lam, lr=0.05)
    opt = torch.optim.AdamW(groups) if inner == "AdamW" else torch.optim.SGD(groups, momentum=0.9)
    return decaykit.WeightDecay(opt, mode=mode, schedule=schedules.cosine(1.0, 3.0, steps=STEPS), foreach=foreach)


def train(model: nn.Module, opt: torch.optim.Optimizer, rows: slice, steps: range = range(STEPS),
          lr: Any = None) -> None:
    """The batches ``steps``; each process sees ``rows`` of every batch (all of it for the reference)."""
    lr = lr or torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    idx, target = data()
    for s in steps:
        loss_fn(model, idx[s, rows], target[s, rows]).backward()
        opt.step()
        opt.zero_grad()
        lr.step()


def decision_facts(p: decaykit.Plan) -> list[list[Any]]:
    """What must not change when a model is wrapped: the decision itself."""
    return [[d.name, list(d.shape), d.numel, d.role, d.decay, d.weight_decay, d.lr_scale, d.source, list(d.aliases)]
            for d in p]


def reason_facts(p: decaykit.Plan) -> list[list[str]]:
    return [[d.name, d.module_type, d.reason] for d in p]


def full(p: torch.Tensor) -> torch.Tensor:
    return p.full_tensor() if hasattr(p, "full_tensor") else p


def max_diff(model: nn.Module, reference: nn.Module) -> float:
    ref = dict(reference.named_parameters())
    out = 0.0
    for n, p in model.named_parameters():
        name = decaykit.canonical_name(n)
        out = max(out, float((full(p.detach()) - ref[name].detach()).abs().max()))
    return out


def train_engines(bare: nn.Module, wrap: Any, rank: int, world: int) -> tuple[dict[str, Any], nn.Module, Any]:
    """Each engine: N steps on this rank's rows of the batch against one process on all of them."""
    rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    out: dict[str, Any] = {}
    kept = None
    for mode, inner_name, foreach in ENGINES:
        key = f"{mode}/{inner_name}" + ("/loop" if foreach is False else "")
        torch.manual_seed(0)
        reference = Toy()
        train(reference, optimizer_for(reference, mode, inner_name, foreach), slice(None))
        torch.manual_seed(0)
        model = wrap(Toy())
        try:  # every rank fails alike (same code, same shapes), so no collective is left waiting
            opt = optimizer_for(model, mode, inner_name, foreach)
            train(model, opt, rows)
        except Exception as exc:
            out[key] = {"error": f"{type(exc).__name__}: {exc}"[:300], "trace": traceback.format_exc()[-1500:]}
            continue
        out[key] = {"max_diff": max_diff(model, reference), "moved": max_diff(model, bare),
                    "steps": opt.steps_taken, "paths": opt.paths()}
        kept = (model, opt)
    assert kept is not None, out
    return out, kept[0], kept[1]


def monitor_facts(wrap: Any, rank: int, world: int) -> dict[str, Any]:
    """The Monitor's records on the wrapped model against one process's: under FSDP2 each rank holds a shard of
    every tensor, and a norm of the shard is not the tensor's."""
    rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    records = []
    for model, part in ((Toy, slice(None)), (lambda: wrap(Toy()), rows)):
        torch.manual_seed(0)
        built = model()
        opt = torch.optim.AdamW(decaykit.param_groups(built, 0.1), lr=0.05)
        monitor = decaykit.Monitor(built, opt, every=1)
        train(built, opt, part)
        monitor.close()
        records.append({(r["step"], r["name"]): r for r in monitor.history})
    reference, wrapped = records
    keys = ("norm", "angular_update", "decay_to_update", "predicted_norm", "numel")
    worst = max((abs(wrapped[k][f] - r[f]) / max(abs(r[f]), 1e-12) for k, r in reference.items() for f in keys
                 if k in wrapped and isinstance(r[f], (int, float))), default=float("inf"))  # fmt: skip
    return {"monitor_same_records": sorted(reference) == sorted(wrapped), "monitor_max_rel": worst}


def audit_facts(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    report = decaykit.audit(model, opt)
    facts["audit_ok"], facts["audit_codes"] = report.ok, sorted({f.code for f in report.findings})
    naive = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)  # decays everything
    bad = decaykit.audit(model, naive)
    facts["naive_codes"] = sorted({f.code for f in bad.findings})
    facts["naive_norms"] = sorted(next((f.params for f in bad.findings if f.code == "decayed-norm"), ()))
    try:
        probe = decaykit.probe(opt, model=model)
        facts["probe_ok"], facts["probe_names"] = probe.ok, [e.name for e in probe.entries]
        measured = decaykit.audit(model, opt, measure=True)
        facts["measured_audit_ok"] = measured.ok
    except Exception as exc:  # the test reports it; the other checks still run
        facts["probe_error"] = f"{type(exc).__name__}: {exc}"[:300]
        facts["probe_trace"] = traceback.format_exc()[-1500:]
    return facts


def check_ddp(rank: int, world: int) -> dict[str, Any]:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    from torch.nn.parallel import DistributedDataParallel as DDP

    facts: dict[str, Any] = {}
    torch.manual_seed(0)
    bare = Toy()
    expected = decaykit.plan(bare, 0.1)
    facts["bare"] = decision_facts(expected)
    facts["bare_reasons"] = reason_facts(expected)
    ddp = DDP(copy.deepcopy(bare))
    facts["raw_names"] = [n for n, _ in ddp.named_parameters()]
    facts["ddp"] = decision_facts(decaykit.plan(ddp, 0.1))
    facts["ddp_reasons"] = reason_facts(decaykit.plan(ddp, 0.1))
    groups = decaykit.param_groups(ddp, 0.1)
    facts["ddp_groups"] = [[g["weight_decay"], g["param_names"]] for g in groups]
    facts["groups_hold_ddp_tensors"] = all(
        any(p is q for q in ddp.module.parameters()) for g in groups for p in g["params"])
    # other wrappers stacked with DDP: compiled outside or inside, checkpointed blocks inside
    inner = copy.deepcopy(bare)
    for i, block in enumerate(inner.blocks):
        inner.blocks[i] = checkpoint_wrapper(block)
    stacked = {
        "compile(DDP)": torch.compile(DDP(copy.deepcopy(bare))),
        "DDP(compile)": DDP(torch.compile(copy.deepcopy(bare))),
        "DDP(checkpoint)": DDP(inner),
    }
    facts["stacked_raw"] = {k: [n for n, _ in m.named_parameters()][:3] for k, m in stacked.items()}
    facts["stacked"] = {k: decision_facts(decaykit.plan(m, 0.1)) for k, m in stacked.items()}

    facts["train"], model, opt = train_engines(bare, DDP, rank, world)
    facts.update(audit_facts(model, opt))
    facts.update(monitor_facts(DDP, rank, world))
    return facts


def dcp_resume_facts(wrap: Any, rank: int, world: int, folder: Path) -> dict[str, Any]:
    """FSDP2's checkpoint route on two processes: an engine with a λ schedule saved after half the steps with
    ``torch.distributed.checkpoint`` (each rank writes its shards), a fresh sharded model and engine loaded from
    it, trained on; against the same sharded run uninterrupted. The LR scheduler's state is kept in memory."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    rows, half = slice(rank * BATCH // world, (rank + 1) * BATCH // world), STEPS // 2

    def fresh() -> tuple[nn.Module, decaykit.WeightDecay, Any]:
        torch.manual_seed(0)
        model = wrap(Toy())
        opt = optimizer_for(model, "lr_independent", "AdamW")
        return model, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)

    whole, whole_opt, whole_lr = fresh()
    train(whole, whole_opt, rows, range(STEPS), whole_lr)
    model, opt, lr = fresh()
    train(model, opt, rows, range(half), lr)
    model_state, optim_state = get_state_dict(model, opt)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder))
    lr_state = lr.state_dict()
    train(model, opt, rows, range(half, STEPS), lr)  # the run went on past its checkpoint
    resumed, resumed_opt, resumed_lr = fresh()
    model_state, optim_state = get_state_dict(resumed, resumed_opt)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(folder))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", decaykit.DecayWarning)
        set_state_dict(resumed, resumed_opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    resumed_lr.load_state_dict(lr_state)
    loaded_at = resumed_opt.steps_taken
    train(resumed, resumed_opt, rows, range(half, STEPS), resumed_lr)
    torch.manual_seed(0)
    start, theirs = Toy(), dict(whole.named_parameters())
    diff = max(float((full(p.detach()) - full(theirs[n].detach())).abs().max()) for n, p in resumed.named_parameters())
    return {"loaded_at": loaded_at, "half": half, "steps": resumed_opt.steps_taken, "max_diff": diff,
            "moved": max_diff(resumed, start),
            "warnings": [str(w.message) for w in caught if issubclass(w.category, decaykit.DecayWarning)]}


def check_fsdp2(rank: int, world: int) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    mesh = init_device_mesh("cpu", (world,))

    def shard(model: Toy) -> Toy:
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    facts: dict[str, Any] = {}
    torch.manual_seed(0)
    bare = Toy()
    expected = decaykit.plan(bare, 0.1)
    facts["bare"] = decision_facts(expected)
    facts["bare_reasons"] = reason_facts(expected)
    sharded = shard(copy.deepcopy(bare))
    facts["raw_names"] = [n for n, _ in sharded.named_parameters()]
    facts["all_dtensor"] = all(isinstance(p, DTensor) for p in sharded.parameters())
    facts["local_shapes"] = {n: list(p.to_local().shape) for n, p in sharded.named_parameters()}
    decided = decaykit.plan(sharded, 0.1)
    facts["fsdp2"] = decision_facts(decided)
    facts["fsdp2_reasons"] = reason_facts(decided)
    groups = decaykit.param_groups(sharded, 0.1)
    facts["fsdp2_groups"] = [[g["weight_decay"], g["param_names"]] for g in groups]
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, facts["fsdp2_groups"])
    facts["same_groups_on_every_rank"] = all(x == everyone[0] for x in everyone)

    facts["train"], model, opt = train_engines(bare, shard, rank, world)
    facts.update(audit_facts(model, opt))
    facts.update(monitor_facts(shard, rank, world))
    facts["dcp"] = dcp_resume_facts(shard, rank, world, OUT / "dcp")
    return facts


def run_example(name: str, argv: list[str]) -> dict[str, Any]:
    out = io.StringIO()
    old = sys.argv
    sys.argv = [name, *argv]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(ROOT / "examples" / name), run_name="__main__")
        return {"ok": True, "stdout": out.getvalue()}
    except BaseException as exc:  # SystemExit from argparse included
        return {"ok": False, "stdout": out.getvalue(), "error": traceback.format_exc()[-2000:], "exc": repr(exc)}
    finally:
        sys.argv = old


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    global OUT
    OUT = Path(args.out)
    # a lost peer fails the collectives after this long instead of hanging CI
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    results: dict[str, Any] = {"rank": rank, "world": world}
    for name, check in (("ddp", check_ddp), ("fsdp2", check_fsdp2)):
        try:
            results[name] = check(rank, world)
        except Exception:
            results[name] = {"error": traceback.format_exc()[-3000:]}
        dist.barrier()
    results["examples"] = {
        "ddp_torchrun.py": run_example("ddp_torchrun.py", ["--steps", "3"]),
        "fsdp2_torchrun.py": run_example("fsdp2_torchrun.py", ["--steps", "3"]),
    }
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(results, indent=1, default=str))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
