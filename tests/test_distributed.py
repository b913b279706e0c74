"""Multi-process training on PyTorch's own engines: DDP and FSDP2, two CPU processes over gloo.

``tests/distributed/check_wrapped.py`` runs every check in one ``torchrun --nproc_per_node=2``
launch (start-up costs seconds) and writes per-rank facts; the tests here assert on them. The
single-process tests at the top pin the same wrapper behaviour without a process group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import decaykit
from decaykit.models import TinyViT

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "distributed" / "check_wrapped.py"
# (WeightDecay mode / inner optimizer[/loop: foreach=False]) -> the engine path its decayed group takes
ENGINES = {"lr_coupled/AdamW": "inner", "cautious/AdamW": "cautious", "cautious/AdamW/loop": "cautious",
           "lr_independent/SGD": "extra_pass"}


def decisions(p: decaykit.Plan) -> list[tuple]:
    return [(d.name, d.shape, d.role, d.decay, d.weight_decay, d.reason, d.source) for d in p]


def test_data_parallel_keeps_no_weight_decay_hook():
    """deit #39: the optimizer built after wrapping must still honour ``no_weight_decay()``.

    ``nn.DataParallel`` names its child ``module`` exactly as DDP does, and runs without a GPU or a
    process group. The hook is found on the module at path ``module``, whose own name must
    canonicalise to the root ("") for the hook's patterns to match ``pos_embed``.
    """
    model = TinyViT(depth=1)
    wrapped = nn.DataParallel(model)
    assert decaykit.canonical_name("module") == ""
    assert decisions(decaykit.plan(wrapped, 0.1)) == decisions(decaykit.plan(model, 0.1))
    groups = {g["weight_decay"]: g["param_names"] for g in decaykit.param_groups(wrapped, 0.1)}
    assert {"pos_embed", "cls_token"} <= set(groups[0.0])


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # torch's own ZeRO module, on import
def test_zero_redundancy_optimizer_is_audited_probed_and_watched_as_the_optimizer_it_shards(tmp_path):
    """torch's ZeroRedundancyOptimizer steps an optimizer of its optimizer_class (``optim``) over this rank's shard.
    Adam inside it is coupled L2 (the audit said "no facts on ZeroRedundancyOptimizer"), the probe could not copy
    its process group, and the monitor took the inner step for another optimizer updating every tensor twice."""
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2))
        adam = ZeroRedundancyOptimizer(decaykit.param_groups(model, 0.1), optimizer_class=torch.optim.Adam, lr=1e-2)
        report = decaykit.audit(model, adam)
        assert [f.code for f in report.findings] == ["coupled-adaptive"]
        assert "ZeroRedundancyOptimizer over Adam" in str(report)
        adamw = ZeroRedundancyOptimizer(decaykit.param_groups(model, 0.1), optimizer_class=torch.optim.AdamW, lr=1e-2)
        assert decaykit.audit(model, adamw).ok
        probed = decaykit.probe(adamw, model=model)
        assert probed.ok and {e.name: e.measured for e in probed.entries}["0.weight"] == pytest.approx(1 - 1e-3)
        monitor = decaykit.Monitor(model, adamw, every=1)
        for _ in range(2):
            model(torch.randn(4, 8)).pow(2).sum().backward()
            adamw.step()
            adamw.zero_grad()
        monitor.close()
        assert monitor.findings == [] and {r["step"] for r in monitor.history} == {1, 2}
        assert [r["timescale_steps"] for r in monitor.history] == pytest.approx([1000.0] * len(monitor.history))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict[str, Any]]:
    """Launch the checks once, on 2 processes; a hang fails after the timeout instead of blocking CI."""
    out = tmp_path_factory.mktemp("torchrun")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(SCRIPT), "--out", str(out)]
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"torchrun did not finish in {exc.timeout} s:\n{exc.stderr}")
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def facts(ranks: list[dict[str, Any]], engine: str) -> list[dict[str, Any]]:
    for r in ranks:
        assert "error" not in r[engine], f"rank {r['rank']} {engine} check crashed:\n{r[engine]['error']}"
    return [r[engine] for r in ranks]


def test_ddp_groups_are_the_bare_models(ranks):
    for f in facts(ranks, "ddp"):
        assert all(n.startswith("module.") for n in f["raw_names"])
        assert f["ddp"] == f["bare"]
        assert f["ddp_reasons"] == f["bare_reasons"]
        no_decay = next(names for wd, names in f["ddp_groups"] if wd == 0)
        assert {"pos_embed", "scale", "temperature", "blocks.0.ln_1.weight", "blocks.0.gamma", "ln_f.weight"} <= set(no_decay)
        assert f["groups_hold_ddp_tensors"]
        for wrapper in ("compile(DDP)", "DDP(compile)", "DDP(checkpoint)"):
            assert f["stacked"][wrapper] == f["bare"], wrapper
        assert f["stacked_raw"]["compile(DDP)"][0] == "_orig_mod.module.pos_embed"


def test_fsdp2_groups_decide_on_global_shapes(ranks):
    for f in facts(ranks, "fsdp2"):
        assert f["all_dtensor"]
        assert f["fsdp2"] == f["bare"]  # names, global shapes, numel, role, decay, λ, source, aliases
        shapes = {d[0]: d[1] for d in f["bare"]}
        assert shapes["wte.weight"] == [11, 6] and f["local_shapes"]["wte.weight"] in ([6, 6], [5, 6])  # uneven
        assert f["local_shapes"]["scale"] == [3, 1, 1] and shapes["scale"] == [6, 1, 1]
        assert f["same_groups_on_every_rank"]
        no_decay = next(names for wd, names in f["fsdp2_groups"] if wd == 0)
        assert {"pos_embed", "scale", "temperature", "blocks.1.ln_1.weight", "blocks.1.fc.bias"} <= set(no_decay)


def test_fsdp2_reasons_name_the_users_classes(ranks):
    for f in facts(ranks, "fsdp2"):
        assert f["fsdp2_reasons"] == f["bare_reasons"]


@pytest.mark.parametrize(
    ("wrapper", "engine"),
    [("ddp", e) for e in ENGINES]
    + [("fsdp2", e) for e in ENGINES],
)
def test_weight_decay_engine_matches_a_single_process_run(ranks, wrapper, engine):
    for f in facts(ranks, wrapper):
        run = f["train"][engine]
        assert "error" not in run, f"{wrapper} {engine}: {run.get('trace')}"
        assert run["steps"] == 4
        assert run["moved"] > 1e-2, f"{wrapper} {engine}: the parameters did not train"
        assert run["max_diff"] < 1e-5, f"{wrapper} {engine}: {run['max_diff']:.3g} from the single-process run"
        assert sorted(run["paths"]) == sorted(["none", ENGINES[engine]])  # the no-decay group, the decayed one


@pytest.mark.parametrize("engine", ["ddp", "fsdp2"])
def test_audit_on_the_wrapped_model(ranks, engine):
    for f in facts(ranks, engine):  # the audit of the last engine's optimizer, and of a naive AdamW
        assert f["audit_ok"] and f["audit_codes"] == []
        assert {"decayed-norm", "decayed-bias", "decayed-scale"} <= set(f["naive_codes"])
        assert f["naive_norms"] == ["blocks.0.ln_1.weight", "blocks.1.ln_1.weight", "ln_f.bias", "ln_f.weight"]


def test_probe_on_ddp(ranks):
    for f in facts(ranks, "ddp"):
        assert "probe_error" not in f, f.get("probe_trace")
        assert f["probe_ok"] and f["measured_audit_ok"]
        assert sorted(f["probe_names"]) == sorted(d[0] for d in f["bare"])  # bare names, no "module."


def test_probe_on_fsdp2(ranks):
    for f in facts(ranks, "fsdp2"):
        assert "probe_error" not in f, f.get("probe_trace")
        assert f["probe_ok"] and f["measured_audit_ok"]


def test_an_engine_saved_with_torch_distributed_checkpoint_from_two_ranks_resumes_bit_for_bit(ranks):
    """Each rank saves its shards of the model and the engine's state mid-run; a fresh sharded model and engine
    loaded from them go on exactly as the uninterrupted run, with the λ schedule at the saved step, silently."""
    for f in facts(ranks, "fsdp2"):
        run = f["dcp"]
        assert run["loaded_at"] == run["half"] == 2 and run["steps"] == 4
        assert run["moved"] > 1e-2 and run["max_diff"] == 0.0, run
        assert run["warnings"] == []


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp2"])
def test_the_monitor_records_the_whole_tensor_on_every_rank(ranks, wrapper):
    """Under FSDP2 a rank holds a shard: the monitor's norms, angles and ratios must be the tensor's, as one
    process records them (they were the shard's: up to 40% off in this test, 76% in an outside run)."""
    for f in facts(ranks, wrapper):
        assert f["monitor_same_records"]
        assert f["monitor_max_rel"] < 1e-4, f"{wrapper}: {f['monitor_max_rel']:.3g}"


def test_examples_run_under_torchrun(ranks):
    for r in ranks:
        for name, result in r["examples"].items():
            assert result["ok"], f"rank {r['rank']} {name}:\n{result.get('error')}"
    ddp, fsdp2 = ranks[0]["examples"]["ddp_torchrun.py"]["stdout"], ranks[0]["examples"]["fsdp2_torchrun.py"]["stdout"]
    assert "'cls_token', 'pos_embed'" in ddp or "'pos_embed', 'cls_token'" in ddp  # the hook survived DDP
    assert "no problems found" in ddp and "no problems found" in fsdp2
    assert "h.0.mlp.0.weight: global (128, 32), this rank holds (64, 32)" in fsdp2
    assert ranks[1]["examples"]["ddp_torchrun.py"]["stdout"] == ""  # only rank 0 prints
    assert torch.distributed.is_available()
