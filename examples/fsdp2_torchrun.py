"""FSDP2 (``fully_shard``): groups from the sharded model, decided on the global shapes.

Every parameter is a DTensor shard after ``fully_shard``; a rule reading the local piece would see
other shapes (FSDP1's flat parameters made every tensor 1-D, pytorch #101343). decaykit reads the
global shape and the bare name, so a sharded GPT gets the same groups as the bare one.

    torchrun --standalone --nproc_per_node=2 examples/fsdp2_torchrun.py --steps 20
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import decaykit
from decaykit.models import TinyGPT


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    opts = parser.parse_args(argv)

    owner = not dist.is_initialized()  # the test suite runs this inside its own process group
    if owner:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    try:
        torch.manual_seed(0)
        model = TinyGPT(vocab=64, block=16, dim=32, depth=2, heads=2).to(device)
        mesh = init_device_mesh(device, (world,))
        for block in model.h:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)  # the tied embedding / head live in the root unit
        # after sharding: every parameter a DTensor, names unchanged, decisions on global shapes
        # 1e-4 is an lr_independent λ: the decay of torch AdamW(weight_decay=0.1) at the peak LR 1e-3
        optimizer = decaykit.WeightDecay(torch.optim.AdamW(decaykit.param_groups(model, 1e-4, lr=1e-3)),
                                         mode="lr_independent")
        g = torch.Generator().manual_seed(rank)
        for step in range(1, opts.steps + 1):
            idx = torch.randint(0, 64, (8, 16), generator=g).to(device)
            loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if rank == 0 and step in (1, opts.steps):
                print(f"step {step}: loss {loss.item():.4f}")
        if rank == 0:
            fc = model.h[0].mlp[0].weight
            print(f"h.0.mlp.0.weight: global {tuple(fc.shape)}, this rank holds {tuple(fc.to_local().shape)}")
            for group in optimizer.param_groups:
                print(f"weight_decay={group['weight_decay']:g}: {len(group['params'])} tensors")
            print(decaykit.audit(model, optimizer))
    finally:
        if owner:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
