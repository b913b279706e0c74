"""Training-step time with decaykit.Monitor attached vs without, on a transformer-shaped model on CPU.

Two identical TinyGPT models (4 blocks, width 256, 4 heads, a 256-token vocabulary, context 64),
each with ``torch.optim.AdamW(decaykit.param_groups(model, 0.1))``; one has
``decaykit.Monitor(model, opt, every=10)`` on its optimizer. A round is ``every`` full training
steps (forward, backward, step, zero_grad) on the same batches, so each monitored round holds
exactly one recorded step, the copy and the measurements included; plain and monitored rounds
alternate, and ratio = median(monitored round) / median(plain round). With one thread (the
default) a round's time is that thread's CPU time, which other processes do not inflate.

Run: python benchmarks/bench_monitor.py [--rounds 15] [--every 10] [--threads 1]
Last line: ratio=<monitored/plain>; goal ≤ 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _machine import load_line, machine_line, positive_int

import decaykit


def _setup(monitored: bool, every: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    torch.manual_seed(0)
    model = decaykit.models.TinyGPT(vocab=256, block=64, dim=256, depth=4, heads=4)
    opt = torch.optim.AdamW(decaykit.param_groups(model, 0.1), lr=1e-3)
    mon = decaykit.Monitor(model, opt, every=every) if monitored else None
    return model, opt, mon


def _round(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: list[torch.Tensor], clock) -> float:
    start = clock()
    for tokens in batches:
        logits = model(tokens[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad()
    return clock() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive_int, default=15)
    parser.add_argument("--every", type=positive_int, default=10)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--batch", type=positive_int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    print(machine_line())
    plain, monitored = _setup(False, args.every), _setup(True, args.every)
    n = sum(p.numel() for p in plain[0].parameters())
    print(f"model: TinyGPT 4 blocks, width 256, {n:,} parameters; batch {args.batch} x 64 tokens; "
          f"every={args.every}; {args.rounds} rounds of {args.every} steps each, interleaved")
    g = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {"plain": [], "monitored": []}
    for r in range(args.rounds + 1):  # round 0 warms both up and is not counted
        batches = [torch.randint(0, 256, (args.batch, 65), generator=g) for _ in range(args.every)]
        for name, (model, opt, _) in (("plain", plain), ("monitored", monitored)):
            spent = _round(model, opt, batches, clock)
            if r:
                times[name].append(spent)
    mon = monitored[2]
    plain_ms = statistics.median(times["plain"]) * 1e3 / args.every
    mon_ms = statistics.median(times["monitored"]) * 1e3 / args.every
    print(f"plain step {plain_ms:.2f} ms, monitored step {mon_ms:.2f} ms (median per step over rounds); "
          f"{len(mon.history)} records of {len({r['name'] for r in mon.history})} tensors")
    print(load_line())
    print(f"ratio={mon_ms / plain_ms:.3f}")


if __name__ == "__main__":
    main()
