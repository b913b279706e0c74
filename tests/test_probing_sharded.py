"""decaykit.probe on DTensor parameters (FSDP2's ``fully_shard``), in one process, without torchrun.

Two process groups stand in for a launch: gloo with one rank, where FSDP2 trains for real and a
model mixes sharded and plain tensors; and torch's in-process ``fake`` backend as rank 1 of 2,
which holds the short end of uneven shards (rows 6..10 of an (11, 6) table, nothing of a (1,)
tensor). Collectives on ``fake`` do nothing, so there the state is built by stepping the real
optimizer on gradients set by hand; the probe itself runs no collective. Two real processes
are ``tests/test_distributed.py``'s torchrun launch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

import decaykit
from decaykit import DecayError, probe

if not dist.is_available():
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from deep_equal import same

LR, WD = 0.05, 0.1
# FSDP2 warns that a wrapped Linear returns a view (in-place ops on it would skip a hook): none here
pytestmark = pytest.mark.filterwarnings("ignore:FSDP2-wrapped module:UserWarning")

OPTIMIZERS: dict[str, Callable[[list[dict]], torch.optim.Optimizer]] = {
    "adamw": lambda g: torch.optim.AdamW(g),
    "adam-coupled": lambda g: torch.optim.Adam(g),
    "sgd-momentum": lambda g: torch.optim.SGD(g, momentum=0.9),
    "engine-cautious": lambda g: decaykit.WeightDecay(torch.optim.AdamW(g), mode="cautious", foreach=False),
}


class Net(nn.Module):
    """An embedding of 11 rows (uneven over 2 ranks), a (1,) temperature (empty on rank 1), norm, head."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(11, 6)
        self.fc = nn.Linear(6, 6)
        self.ln = nn.LayerNorm(6)
        self.temperature = nn.Parameter(torch.ones(1))
        self.head = nn.Linear(6, 11)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln(torch.tanh(self.fc(self.wte(idx))))) / self.temperature


@pytest.fixture
def group(request: pytest.FixtureRequest) -> Iterator[int]:
    """A default process group for one test: ``gloo`` (rank 0 of 1) or ``fake`` (rank 1 of 2)."""
    assert not dist.is_initialized(), "another test left a process group behind"
    if request.param == "gloo":
        dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    else:
        fake_pg = pytest.importorskip("torch.testing._internal.distributed.fake_pg")
        dist.init_process_group("fake", rank=1, world_size=2, store=fake_pg.FakeStore())
    try:
        yield dist.get_world_size()
    finally:
        dist.destroy_process_group()


def _state(model: nn.Module, opt: torch.optim.Optimizer) -> list[Any]:
    """Copies of every parameter and state tensor (this rank's shards), and of the group settings."""
    def local(t: Any) -> Any:
        if isinstance(t, DTensor):
            return ("dtensor", t.placements, t.to_local().detach().clone())
        return t.detach().clone() if isinstance(t, torch.Tensor) else copy.deepcopy(t)

    return [[local(p) for p in model.parameters()],
            [{k: local(v) for k, v in s.items()} for s in opt.state.values()],
            [{k: local(v) for k, v in g.items() if k != "params"} for g in opt.param_groups]]


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 2) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        model(torch.randint(0, 11, (4, 3), generator=gen)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("group", ["gloo"], indirect=True)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_sharded_and_plain_tensors_measure_as_the_bare_model(group: int, name: str) -> None:
    torch.manual_seed(0)
    bare = Net()
    model = copy.deepcopy(bare)
    fully_shard(model.fc)
    fully_shard(model.head)  # wte, ln and temperature stay plain tensors
    kinds = {n: isinstance(p, DTensor) for n, p in model.named_parameters()}
    assert kinds["fc.weight"] and kinds["head.bias"] and not kinds["wte.weight"]
    opt, bare_opt = (OPTIMIZERS[name](decaykit.param_groups(m, WD, lr=LR)) for m in (model, bare))
    _train(model, opt)
    _train(bare, bare_opt)
    assert any(isinstance(v, DTensor) for s in opt.state.values() for v in s.values())
    before = _state(model, opt)

    report, expected = probe(opt, model=model), probe(bare_opt, model=bare)

    assert same(before, _state(model, opt))  # the real parameters and DTensor state never moved
    assert report.ok, str(report)
    got, want = {e.name: e for e in report.entries}, {e.name: e for e in expected.entries}
    assert got.keys() == want.keys()
    for n, e in got.items():
        assert (e.shape, e.kind, e.expected_kind, e.agrees, e.numel) == (
            want[n].shape, want[n].kind, want[n].expected_kind, want[n].agrees, want[n].numel), n
        assert e.measured == pytest.approx(want[n].measured, abs=1e-6), n
    decays = {"adamw": "decoupled", "adam-coupled": "coupled", "sgd-momentum": "coupled", "engine-cautious": "cautious"}
    assert {e.kind for e in report.entries} == {"none", decays[name]}
    assert any("4 sharded tensors" in n and "rank 0 of 1" in n for n in report.notes), report.notes
    assert decaykit.audit(model, opt, measure=True).ok
    compiled = probe(opt, model=torch.compile(model))  # names through _orig_mod.; nothing is compiled
    assert [(e.name, e.measured) for e in compiled.entries] == [(e.name, e.measured) for e in report.entries]


def _shard_on_rank_one(world: int) -> Net:
    torch.manual_seed(0)
    model = Net()
    mesh = init_device_mesh("cpu", (world,))
    fully_shard(model.fc, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _step_with_grads(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 2) -> None:
    """Real optimizer steps on DTensor gradients made from this rank's random shard."""
    gen = torch.Generator().manual_seed(2)
    for _ in range(steps):
        for p in model.parameters():
            local = torch.randn(p.to_local().shape, generator=gen)
            p.grad = DTensor.from_local(local, p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
        opt.step()
    opt.zero_grad()


@pytest.mark.parametrize("group", ["fake"], indirect=True)
@pytest.mark.parametrize("name", ["adamw", "adam-coupled"])
def test_rank_one_of_two_measures_its_uneven_and_empty_shards(group: int, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _shard_on_rank_one(group)
    local = {n: tuple(p.to_local().shape) for n, p in model.named_parameters()}
    assert local["wte.weight"] == (5, 6) and local["temperature"] == (0,)  # 6 + 5 rows, 1 + 0
    decayed = ("wte.weight", "fc.weight", "head.weight", "temperature")  # so its empty entry expects a shrink
    params = dict(model.named_parameters())
    opt = OPTIMIZERS[name]([{"params": [params[n] for n in decayed], "weight_decay": WD, "lr": LR},
                            {"params": [p for n, p in params.items() if n not in decayed], "weight_decay": 0.0, "lr": LR}])
    _step_with_grads(model, opt)
    before = _state(model, opt)
    stepped: list[type] = []  # what the twins hold: plain shards, so no collective, each rank alone
    real_step = type(opt).step

    def recording(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        stepped.extend(type(p) for g in self.param_groups for p in g["params"])
        stepped.extend(type(v) for s in self.state.values() for v in s.values() if isinstance(v, torch.Tensor))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(type(opt), "step", recording)
    report = probe(opt, model=model)
    monkeypatch.undo()

    assert same(before, _state(model, opt))
    assert report.ok, str(report)
    assert stepped and not any(issubclass(t, DTensor) for t in stepped)
    by_name = {e.name: e for e in report.entries}
    assert sorted(by_name) == sorted(n for n, _ in model.named_parameters())
    wte, temp = by_name["wte.weight"], by_name["temperature"]
    assert (wte.shape, wte.numel, temp.shape, temp.numel) == ((11, 6), 66, (1,), 1)  # global, not the shard's
    assert (temp.kind, temp.measured, temp.agrees) == ("empty", None, True)
    if name == "adamw":
        assert (temp.expected_kind, temp.expected) == ("decoupled", pytest.approx(1 - LR * WD))
        assert wte.kind == "decoupled" and wte.measured == pytest.approx(1 - LR * WD, abs=1e-6)
    else:
        assert (temp.expected_kind, temp.expected) == ("coupled", None)
        assert wte.kind == "coupled"  # checked exactly on the shard by the λθ-gradient twin
    assert by_name["ln.weight"].kind == "none"
    assert any("rank 1 of 2" in n and "1 hold no elements" in n for n in report.notes), report.notes
    assert "empty, no elements on this rank" in str(report)


@pytest.mark.parametrize("group", ["fake"], indirect=True)
def test_stacked_members_split_over_ranks_are_refused(group: int) -> None:
    model = _shard_on_rank_one(group)
    opt = torch.optim.AdamW([model.fc.weight], lr=LR)  # (6, 6): 6 stacked models of 6, 3 rows here
    opt.param_groups[0]["weight_decay"] = torch.linspace(0.1, 0.6, 6)
    with pytest.raises(DecayError, match="holds 3 of its rows"):
        probe(opt, model=model)


@pytest.mark.parametrize("group", ["gloo"], indirect=True)
def test_optimizer_built_before_fully_shard_is_caught(group: int) -> None:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    fully_shard(model)  # swaps in new DTensor parameters: opt now trains tensors the model no longer uses
    report = probe(opt, model=model)
    missing = [e for e in report.entries if e.kind == "missing"]
    assert not report.ok and len(missing) == len(list(model.parameters()))
    assert all("built before fully_shard" in e.note for e in missing)
