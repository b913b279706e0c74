"""torch.compile: build the groups from the compiled model, decay with the engine, train.

The compiled module calls its parameters ``_orig_mod.<name>``; decaykit's groups carry the bare
names, so rules, ``no_weight_decay()`` and checkpoints keep working.

    python examples/compile_step.py --steps 50
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import decaykit
from decaykit import schedules


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager builds no C++)")
    opts = parser.parse_args(argv)

    torch.manual_seed(0)
    model = torch.compile(nn.Sequential(nn.Linear(8, 64), nn.RMSNorm(64), nn.GELU(), nn.Linear(64, 1)),
                          backend=opts.backend)
    # λ = 0.1 on the two weight matrices, rising 1x -> 3x over the run (a DINO-style schedule)
    optimizer = decaykit.WeightDecay(torch.optim.AdamW(decaykit.param_groups(model, 0.1, lr=1e-2)),
                                     mode="lr_coupled", schedule=schedules.cosine(1.0, 3.0, steps=opts.steps))
    for group in optimizer.param_groups:
        print(f"weight_decay={group['weight_decay']:g}: {len(group['params'])} tensors {group['param_names']}")

    x = torch.randn(256, 8)
    y = x[:, :1] * x[:, 1:2]
    for step in range(1, opts.steps + 1):
        loss = (model(x) - y).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == opts.steps or step % 10 == 0:
            print(f"step {step}: loss {loss.item():.4f}, decay this step {optimizer.expected_decay()[0]['rate']:.2e}")


if __name__ == "__main__":
    main()
