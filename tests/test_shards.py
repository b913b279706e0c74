"""WeightDecay on DTensor parameters (FSDP2), every path, in this process: no torchrun.

- FSDP2 for real: ``fully_shard`` over a one-process gloo group. Parameters, gradients and Adam's
  state are DTensors, so every op the engine runs meets DTensor (``_foreach_copy_`` has no sharding
  strategy); the result must equal a plain run.
- Uneven shards: a (3, ...) stack over two ranks holds rows [0, 2) on rank 0 and [2, 3) on rank 1,
  each rank's per-member λ must be its own rows. Ranks are played in turn on torch's fake process
  group (no communication happens in the engine), each with its own mesh name so that DTensor's
  caches, keyed by mesh, do not carry one rank's local shapes to the other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from torch import nn

from decaykit import WeightDecay, schedules
from decaykit.engine.cautious import cautious_decay_, cautious_moment_decay_
from decaykit.engine.modes import MODES, l2_gradients

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")


@contextlib.contextmanager
def process_group(backend: str, rank: int = 0, world: int = 1) -> Iterator[object]:
    if backend == "fake":
        fake_pg = pytest.importorskip("torch.testing._internal.distributed.fake_pg")
        store = fake_pg.FakeStore()
    else:
        store = dist.HashStore()
    dist.init_process_group(backend, store=store, rank=rank, world_size=world)
    try:
        yield dist.device_mesh.init_device_mesh("cpu", (world,), mesh_dim_names=(f"{backend}_rank{rank}",))
    finally:
        dist.destroy_process_group()


class ThirdParty(torch.optim.AdamW):
    """Unknown to decaykit: decoupled modes take the extra pass, coupled_l2 the L2 gradients."""


INNERS = {
    "AdamW": lambda g: torch.optim.AdamW(g, lr=3e-2),  # inner kernel, cautious from the first moment
    "SGD": lambda g: torch.optim.SGD(g, lr=3e-2, momentum=0.9),  # extra pass, cautious copy of θ
    "NAdam": lambda g: torch.optim.NAdam(g, lr=3e-2),  # cautious copy of θ
    "ThirdParty": lambda g: ThirdParty(g, lr=3e-2),  # extra pass, L2 gradients
}


class Stacked(nn.Module):
    """K = 3 stacked two-layer nets: every parameter has leading dim 3, for per-member λ."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(3, 8, 4, generator=g) * 0.5)
        self.b1 = nn.Parameter(torch.zeros(3, 8))
        self.w2 = nn.Parameter(torch.randn(3, 2, 8, generator=g) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(x @ self.w1.transpose(-1, -2) + self.b1.unsqueeze(-2))
        return (h @ self.w2.transpose(-1, -2)).pow(2).mean(dim=(-1, -2)).sum()


def lambdas(mode: str, per_member: bool) -> tuple[object, float]:
    base = 1e-3 if mode == "lr_independent" else 0.2
    return (torch.tensor([base, 0.0, 3 * base]) if per_member else base), 0.0


def fit(model: nn.Module, inner: str, mode: str, per_member: bool, foreach: bool | None) -> WeightDecay:
    decay, none = lambdas(mode, per_member)
    groups = [{"params": [model.w1, model.w2], "weight_decay": decay}, {"params": [model.b1], "weight_decay": none}]
    opt = WeightDecay(INNERS[inner](groups), mode=mode, schedule=schedules.cosine(1.0, 2.0, 4), foreach=foreach)
    x = torch.randn(4, 5, 4, generator=torch.Generator().manual_seed(1))
    for t in range(4):
        opt.zero_grad()
        model(x[t]).backward()
        opt.step()
    return opt


@pytest.mark.parametrize("foreach", [None, False])
@pytest.mark.parametrize("per_member", [False, True])
@pytest.mark.parametrize("inner", sorted(INNERS))
def test_fully_shard_equals_a_plain_run_on_every_path(inner, per_member, foreach):
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    paths = set()
    with process_group("gloo") as mesh:
        for mode in MODES:
            plain, sharded = Stacked(), fully_shard(Stacked(), mesh=mesh)
            assert all(isinstance(p, DTensor) for p in sharded.parameters())
            expected = fit(plain, inner, mode, per_member, foreach).paths()
            assert fit(sharded, inner, mode, per_member, foreach).paths() == expected
            paths.add(expected[0])
            for a, b in zip(plain.parameters(), sharded.parameters()):
                torch.testing.assert_close(b.full_tensor(), a.detach(), rtol=0, atol=1e-7, msg=mode)
            assert not torch.equal(plain.w1.detach(), Stacked().w1)
    assert "cautious" in paths and ("extra_pass" in paths or not per_member)


@pytest.mark.parametrize("inner", ["AdamW", "SGD", "ThirdParty"])
@pytest.mark.parametrize("mode", ["lr_coupled", "cautious", "coupled_l2"])
def test_uneven_shards_decay_their_own_members(inner, mode):
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    lam = torch.tensor([0.5, 0.0, 2.0])
    g = torch.Generator().manual_seed(2)
    start = [torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, generator=g)]
    grads = [[torch.randn(t.shape, generator=g) for t in start] for _ in range(4)]

    def run(wrap):
        ps = [nn.Parameter(wrap(t.clone(), i)) for i, t in enumerate(start)]
        opt = WeightDecay(INNERS[inner]([{"params": ps, "weight_decay": lam}]), mode=mode)
        for step in grads:
            for i, (p, grad) in enumerate(zip(ps, step)):
                p.grad = wrap(grad.clone(), i)
            opt.step()
        return ps, opt.paths()

    plain, paths = run(lambda t, i: t)
    layout = [[Shard(0)], [Replicate()]]  # the weight sharded on dim 0, the bias replicated: both take their λ rows
    for rank, rows in ((0, slice(0, 2)), (1, slice(2, 3))):
        with process_group("fake", rank, 2) as mesh:
            sharded, sharded_paths = run(lambda t, i, mesh=mesh: distribute_tensor(t, mesh, layout[i], src_data_rank=None))
            assert sharded_paths == paths
            assert sharded[0].to_local().shape[0] == rows.stop - rows.start
            torch.testing.assert_close(sharded[0].to_local(), plain[0].detach()[rows], rtol=0, atol=0)
            torch.testing.assert_close(sharded[1].to_local(), plain[1].detach(), rtol=0, atol=0)


@pytest.mark.parametrize("per_member", [False, True])
def test_operands_laid_out_differently_are_left_to_dtensor(per_member):
    """Parameters sharded, gradients and θ copies replicated: the kernels run on DTensors, not on shards."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    rate = torch.tensor([0.1, 0.0, 0.3]) if per_member else 0.2
    g = torch.Generator().manual_seed(3)
    theta, grad, moment, before = (torch.randn(3, 6, generator=g) for _ in range(4))
    want_moment, want_change = theta.clone(), theta.clone()
    cautious_moment_decay_([want_moment], [grad], [moment], rate, beta1=0.9)
    cautious_decay_([want_change], [before], rate)
    want_l2 = l2_gradients([theta], [grad], rate)[0]
    for rank, rows in ((0, slice(0, 2)), (1, slice(2, 3))):
        with process_group("fake", rank, 2) as mesh:
            def shard(t):
                return distribute_tensor(t.clone(), mesh, [Shard(0)], src_data_rank=None)

            def whole(t):
                return distribute_tensor(t.clone(), mesh, [Replicate()], src_data_rank=None)

            p = shard(theta)
            cautious_moment_decay_([p], [whole(grad)], [whole(moment)], rate, beta1=0.9)
            torch.testing.assert_close(p.to_local(), want_moment[rows], rtol=1e-6, atol=1e-7)
            p = shard(theta)
            cautious_decay_([p], [whole(before)], rate)
            torch.testing.assert_close(p.to_local(), want_change[rows], rtol=1e-6, atol=1e-7)
            new = l2_gradients([shard(theta)], [whole(grad)], rate)[0]
            local = new.redistribute(mesh, [Shard(0)]).to_local()  # Replicate → Shard: no communication
            torch.testing.assert_close(local, want_l2[rows], rtol=1e-6, atol=1e-7)
