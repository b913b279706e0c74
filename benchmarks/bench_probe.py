"""What a probe costs on a ~100M-parameter model: time and peak memory, next to a real optimizer step.

A GPT-2-small-shaped stack (token embedding 32000x768, 11 blocks of qkv/proj/MLP Linear layers
and LayerNorms; ~103M float32 parameters) with AdamW whose state is built by one real step. Then,
in this one process and one after the other:

- ``step``:   one real ``optimizer.step()`` (what training pays anyway);
- ``probe``:  ``decaykit.probe(optimizer, model=model)`` with the default chunking;
- ``whole``:  the same with ``chunk_bytes=None`` (one twin of every parameter and its state).

Interleaved ``--repeats`` times; times are medians, wall and CPU (user + system: less sensitive
than wall time to the other processes on a shared CPU), peaks the largest seen.

Peak memory is the kernel's high-water mark of resident memory (VmHWM in /proc/self/status),
reset before each case by writing 5 to /proc/self/clear_refs, so ``extra`` = peak − resident
before the case, which counts what torch allocates (tracemalloc would not). ``params+state`` is
the parameters plus AdamW's two moments.

Run: python benchmarks/bench_probe.py [--blocks 11] [--dim 768] [--vocab 32000] [--repeats 3]
Last line: ratio=<probe extra peak / (params + state)> (at most 1: no more than one extra copy).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable

import torch
from _machine import load_line, machine_line, positive_int
from torch import nn

import decaykit


def build(blocks: int, dim: int, vocab: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Embedding(vocab, dim)]
    for _ in range(blocks):
        layers += [nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim),
                   nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)]
    layers.append(nn.LayerNorm(dim))
    return nn.Sequential(*layers)


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(fn: Callable[[], object]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, extra peak bytes over the resident memory before ``fn``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident size
    before = _status("VmRSS")
    start, cpu = time.perf_counter(), _cpu()
    fn()
    seconds, cpu = time.perf_counter() - start, _cpu() - cpu
    return seconds, cpu, _status("VmHWM") - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=positive_int, default=11)
    parser.add_argument("--dim", type=positive_int, default=768)
    parser.add_argument("--vocab", type=positive_int, default=32000)
    parser.add_argument("--repeats", type=positive_int, default=3)
    args = parser.parse_args()
    print(machine_line())
    torch.manual_seed(0)
    model = build(args.blocks, args.dim, args.vocab)
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    groups = decaykit.param_groups(model, 0.1)
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()  # builds exp_avg and exp_avg_sq
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values())
    base = n * 4 + state
    print(f"model: {n / 1e6:.1f}M parameters in {len(params)} tensors; params+state = {base / 2**30:.2f} GiB; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = {}
    cases = (("step", lambda: optimizer.step()),
             ("probe", lambda: results.__setitem__("report", decaykit.probe(optimizer, model=model))),
             ("whole", lambda: decaykit.probe(optimizer, model=model, chunk_bytes=None)))
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    cpus: dict[str, list[float]] = {name: [] for name, _ in cases}
    peaks: dict[str, int] = dict.fromkeys(times, 0)
    for _ in range(args.repeats):  # interleaved, so a busy moment of the shared CPU hits all cases alike
        for name, fn in cases:
            seconds, cpu, extra = measure(fn)
            times[name].append(seconds)
            cpus[name].append(cpu)
            peaks[name] = max(peaks[name], extra)
    wall = {name: statistics.median(v) for name, v in times.items()}
    cpu = {name: statistics.median(v) for name, v in cpus.items()}
    for name in times:
        print(f"{name:6s} median {wall[name]:6.2f} s wall, {cpu[name]:6.2f} s CPU   extra peak "
              f"{peaks[name] / 2**20:7.1f} MiB = {peaks[name] / base:.2f} x params+state")
    report = results["report"]
    assert report.ok, "\n".join(report.summary())
    print(f"probe: {report.cost['twin_steps']} twin steps in {report.cost['chunks']} chunks, "
          f"{wall['probe'] / wall['step']:.1f}x the wall time and {cpu['probe'] / cpu['step']:.1f}x the CPU time of "
          f"one real step; whole copy: {cpu['whole'] / cpu['step']:.1f}x the CPU time, "
          f"{peaks['whole'] / base:.2f} x params+state")
    print(load_line())
    print(f"ratio={peaks['probe'] / base:.2f}")


if __name__ == "__main__":
    main()
