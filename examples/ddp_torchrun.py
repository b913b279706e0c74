"""DDP: build the groups from the wrapped model; names and no_weight_decay() are the bare model's.

Building the optimizer after ``DistributedDataParallel(model)`` used to lose the model's
``no_weight_decay()`` hook (deit #39) and prefix every name with ``module.``; decaykit looks through
the wrapper, so the ViT's ``pos_embed`` and ``cls_token`` stay undecayed either way.

    torchrun --standalone --nproc_per_node=2 examples/ddp_torchrun.py --steps 20
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import decaykit
from decaykit import schedules
from decaykit.models import TinyViT


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    opts = parser.parse_args(argv)

    owner = not dist.is_initialized()  # the test suite runs this inside its own process group
    if owner:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank()
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
    try:
        torch.manual_seed(0)  # same initial weights on every rank
        model = DDP(TinyViT(image=8, patch=4, dim=32, depth=2, heads=2).to(device))
        # the groups come from the wrapped model; λ rises 1x -> 4x over the run (cosine)
        optimizer = decaykit.WeightDecay(
            torch.optim.AdamW(decaykit.param_groups(model, 0.05, lr=1e-3)),
            schedule=schedules.cosine(1.0, 4.0, steps=opts.steps),
        )
        g = torch.Generator().manual_seed(rank)  # each rank its own data
        for step in range(1, opts.steps + 1):
            x = torch.randn(16, 3, 8, 8, generator=g).to(device)
            y = torch.randint(0, 10, (16,), generator=g).to(device)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if rank == 0 and step in (1, opts.steps):
                print(f"step {step}: loss {loss.item():.4f}")
        if rank == 0:
            for group in optimizer.param_groups:
                names = group["param_names"]
                print(f"weight_decay={group['weight_decay']:g}: {len(names)} tensors, e.g. {names[:3]}")
            print(decaykit.audit(model, optimizer))
    finally:
        if owner:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
